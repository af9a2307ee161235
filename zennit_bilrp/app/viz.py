r"""Figures of BiLRP explanations (matplotlib).

- :func:`plot_bilrp`: the standard BiLRP picture. The two images side by side, a line joining each of the most
  relevant patch pairs :math:`(p, p')` (top-:math:`k` by :math:`|R_{pp'}|`, or all above a relative threshold),
  red for positive and blue for negative relevance, width and opacity growing with :math:`|R_{pp'}|`; below
  them the two first-order marginals :math:`\sum_{i'} R_{ii'}` and :math:`\sum_{i} R_{ii'}` as heatmaps in
  Zennit's color maps (``bwr`` on light, ``coldnhot`` on dark backgrounds).
  ``style='paper'`` draws the BiLRP paper's version: all pairs as arcs, relevance divided by
  :math:`(\operatorname{mean} R^4)^{1/4}`, values below 0.25 dropped, clipped to 1, opacity growing with the value.
- :func:`plot_relevance_matrix`: the pooled pairwise relevance as a patch-by-patch matrix;
  :func:`plot_relevance_tensor`: the same as a 4-D mosaic (one block per patch of :math:`x`).
- :func:`plot_bilrp_stack`: several BiLRP pictures in one figure, one above the other.
- :func:`plot_pair_grid`: one query against several images (e.g. its nearest neighbors), one row per pair, on
  shared scales.
- :func:`plot_critical_paths`: a critical-path graph of relevance flowing between the channels of layers.
- :func:`draw_pairs` draws the lines into an existing axes; :func:`save_figure` writes PNG, SVG or PDF;
  :func:`save_heatmap` writes a heatmap as an image file (with Pillow, without Zennit's ``imgify``).

All figure functions take the engine's :class:`~zennit_bilrp.core.results.BiLRPResult` (or plain tensors), return
a matplotlib ``Figure`` for further composition and never call ``plt.show()`` unless ``show=True``.
Images are tensors ``(N, C, H, W)``/``(C, H, W)`` or arrays ``(H, W, C)``/``(H, W)`` with values in [0, 1]; inputs
normalized with a mean and standard deviation are shown with ``denormalize=`` (values outside [0, 1] are refused,
never silently rescaled). Results pooled on a feature map
(:func:`~zennit_bilrp.scale.approximations.explain_at_layer`) are placed over the input images
(:func:`upsample_grid`).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    'plot_bilrp', 'plot_bilrp_stack', 'plot_relevance_matrix', 'plot_relevance_tensor', 'plot_pair_grid',
    'plot_critical_paths', 'draw_pairs', 'select_pairs', 'upsample_grid', 'heatmap_image', 'save_heatmap',
    'save_figure', 'zennit_colormap', 'PairSelection', 'THEMES', 'SAVE_FORMATS',
]

#: colors of the two backgrounds: figure face, text, positive and negative lines, Zennit heatmap color map
THEMES = {
    'light': {'face': '#ffffff', 'text': '#222222', 'positive': '#d62020', 'negative': '#1f4fd6', 'cmap': 'bwr'},
    'dark': {'face': '#111111', 'text': '#eeeeee', 'positive': '#ff5040', 'negative': '#40a0ff',
             'cmap': 'coldnhot'},
}
#: file suffixes :func:`save_figure` writes
SAVE_FORMATS = ('.png', '.svg', '.pdf')


@dataclass
class PairSelection:
    """Patch pairs chosen for drawing: centers ``(n, 2)`` as (row, col) in each image and signed values ``(n,)``."""
    centers_a: np.ndarray
    centers_b: np.ndarray
    values: np.ndarray


def zennit_colormap(name: str = 'bwr', level: float = 1.0):
    """A matplotlib colormap built from Zennit's color map ``name`` (see :data:`zennit.image.CMAPS`)."""
    from matplotlib.colors import ListedColormap
    from zennit.image import palette

    return ListedColormap(palette(name, level=level) / 255.0, name=f'zennit_{name}')


def _theme(background: str) -> dict:
    if background not in THEMES:
        raise ValueError(f"background must be one of {sorted(THEMES)}, got {background!r}")
    return THEMES[background]


def _mean_std(denormalize) -> tuple:
    """``(mean, std)`` arrays of 3 values from ``denormalize``: ``'imagenet'``, a pair ``(mean, std)``, or a
    torchvision transform (e.g. ``weights.transforms()``) with ``mean`` and ``std`` attributes."""
    if isinstance(denormalize, str):
        if denormalize != 'imagenet':
            raise ValueError(f"denormalize must be 'imagenet', (mean, std) or a transform with mean/std, got "
                             f"{denormalize!r}")
        from ..lrp.composites import IMAGENET_MEAN, IMAGENET_STD

        denormalize = (IMAGENET_MEAN, IMAGENET_STD)
    if hasattr(denormalize, 'mean') and hasattr(denormalize, 'std') and not isinstance(denormalize, (tuple, list)):
        denormalize = (denormalize.mean, denormalize.std)
    try:
        mean, std = (np.asarray(v, dtype=np.float64).reshape(-1) for v in denormalize)
    except (TypeError, ValueError):
        raise ValueError(f"denormalize must be 'imagenet', (mean, std) or a transform with mean/std attributes, got "
                         f'{type(denormalize).__name__}') from None
    if mean.size not in (1, 3) or std.size not in (1, 3) or (std <= 0).any():
        raise ValueError(f'denormalize: mean and std need 1 or 3 values and std > 0, got {mean} and {std}')
    return mean, std


#: values this far outside [0, 1] (resampling overshoot, rounding) are clipped without a complaint
_RANGE_SLACK = 1e-3


def _as_image(x, index: int = 0, name: str = 'image', denormalize=None) -> np.ndarray:
    """An image as a float array ``(H, W, 3)`` in [0, 1] (batch entry ``index`` of 4-D tensors).

    ``denormalize`` undoes a normalisation ``(x - mean) / std`` first (see :func:`_mean_std`). Values outside
    [0, 1] are refused, never silently rescaled."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double()
        if x.dim() == 4:
            index = 0 if x.shape[0] == 1 else index
            if not 0 <= index < x.shape[0]:
                raise IndexError(f'{name}: index {index} out of range for a batch of {x.shape[0]}')
            x = x[index]
        if x.dim() == 3:
            x = x.permute(1, 2, 0)
        x = x.numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise ValueError(f'{name}: expected an image (C, H, W) / (H, W, C) with 1, 3 or 4 channels, got {x.shape}')
    x = x[..., :3]
    if not np.isfinite(x).all():
        raise ValueError(f'{name} contains NaN or inf values')
    if denormalize is not None:
        mean, std = _mean_std(denormalize)
        if x.shape[2] != 3 and (mean.size == 3 or std.size == 3):
            raise ValueError(f'{name}: a 3-channel denormalize for a {x.shape[2]}-channel image')
        x = x * std + mean
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    low, high = float(x.min()), float(x.max())
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        hint = ('; it looks ImageNet-normalized: pass denormalize="imagenet" (or weights.transforms())'
                if low < -0.5 and denormalize is None else '')
        raise ValueError(f'{name} has values in [{low:.3g}, {high:.3g}], outside [0, 1]; pass the image in [0, 1] '
                         f'or give denormalize=(mean, std) / a torchvision transform to undo a normalization{hint}')
    return np.clip(x, 0.0, 1.0)


def _heat(x, index: int = 0) -> np.ndarray:
    """A relevance map as a 2-D array (channels summed)."""
    x = x.detach().cpu().double() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=float))
    if x.dim() == 4:
        x = x[index]
    if x.dim() == 3:
        x = x.sum(0)
    if x.dim() != 2:
        raise ValueError(f'a heatmap must be (H, W), (C, H, W) or (N, C, H, W), got {tuple(x.shape)}')
    return x.numpy()


def _relevance_matrix(result, index: int) -> np.ndarray:
    rel = result.relevance if hasattr(result, 'relevance') else result
    rel = torch.as_tensor(rel).detach().cpu().double()
    if rel.dim() == 3:
        if not 0 <= index < rel.shape[0]:
            raise IndexError(f'index {index} out of range for {rel.shape[0]} explained pairs')
        rel = rel[index]
    if rel.dim() != 2:
        raise ValueError(f'pairwise relevance must be (P_a, P_b) or (B, P_a, P_b), got {tuple(rel.shape)}')
    return rel.numpy()


def upsample_grid(grid, size: Sequence[int]):
    """The patch grid ``grid`` (e.g. of a feature map, from :func:`~zennit_bilrp.scale.approximations.explain_at_layer`)
    placed over an input of spatial ``size = (H, W)``: the same patches, each ``H / g_h x W / g_w`` input pixels.

    Returns
    -------
    PatchGrid
        With ``input_shape = (C, H, W)`` (``C`` of the grid's input) and the patch size in input pixels.
    """
    from ..core.pooling import PatchGrid

    size = tuple(int(v) for v in size)
    if len(grid.grid) != len(size):
        raise ValueError(f'a {len(grid.grid)}-D patch grid cannot be placed over a {len(size)}-D input')
    if any(s % g for s, g in zip(size, grid.grid)):
        raise ValueError(f'the {grid.grid} patch grid does not divide the input size {size}')
    channels = tuple(grid.input_shape[:len(grid.input_shape) - len(size)])
    return PatchGrid(channels + size, tuple(grid.grid), tuple(s // g for s, g in zip(size, grid.grid)),
                     grid.channels_summed)


def _grids(result, patch, image_a: np.ndarray, image_b: np.ndarray, upsample: Union[bool, str] = 'auto'):
    """Patch grids of both sides: from the result, or resolved from ``patch`` and the image shapes; with
    ``upsample`` (``'auto'``: for results of :func:`~zennit_bilrp.scale.approximations.explain_at_layer`) grids of
    another resolution are placed over the images (:func:`upsample_grid`)."""
    from ..core.pooling import PatchGrid, Pooling

    if hasattr(result, 'grid_a'):
        grids = result.grid_a, result.grid_b
    elif isinstance(patch, PatchGrid):
        grids = patch, patch
    elif isinstance(patch, (tuple, list)) and len(patch) == 2 and all(isinstance(p, PatchGrid) for p in patch):
        grids = patch[0], patch[1]
    elif patch is None:
        raise ValueError('plotting a relevance tensor needs `patch` (the patch size or PatchGrid(s) used)')
    else:
        pool = Pooling.ensure(patch)
        return (pool.resolve((3,) + image_a.shape[:2]), pool.resolve((3,) + image_b.shape[:2]))
    if upsample == 'auto':
        upsample = 'layer' in getattr(result, 'extras', {})
    if upsample:
        grids = tuple(grid if tuple(grid.input_shape[-2:]) == image.shape[:2] else upsample_grid(grid, image.shape[:2])
                      for grid, image in zip(grids, (image_a, image_b)))
    return grids


def _clamp_k(k: Optional[int], n_pairs: int, stacklevel: int = 3) -> Optional[int]:
    """``k`` at most the number of patch pairs, with a warning when clamped."""
    if k is None:
        return None
    if int(k) < 1:
        raise ValueError(f'k must be positive, got {k}')
    if int(k) > n_pairs:
        warnings.warn(f'k = {k} is more than the {n_pairs} patch pairs; drawing all {n_pairs}', UserWarning,
                      stacklevel=stacklevel)
        return n_pairs
    return int(k)


def select_pairs(relevance, grid_a, grid_b, k: Optional[int] = 20, threshold: Optional[float] = None,
                 by: str = 'abs', max_pairs: int = 500, style: str = 'lines') -> PairSelection:
    r"""Choose the patch pairs to draw from a pooled relevance matrix ``(P_a, P_b)``.

    Parameters
    ----------
    relevance : array or torch.Tensor
        Pooled pairwise relevance of one pair.
    grid_a, grid_b : PatchGrid
        Patch geometry of both images (gives the centers).
    k : int, optional
        Number of pairs, ranked by ``by`` (ignored when ``threshold`` is given).
    threshold : float, optional
        Relative threshold in (0, 1]: all pairs with :math:`|R_{pp'}| \ge t \max |R|`, at most ``max_pairs``.
    by : {'abs', 'value', 'negative'}
        Ranking for ``k``: magnitude, largest positive, or most negative first.
    max_pairs : int
        Most pairs returned with ``threshold`` or ``style='paper'``.
    style : {'lines', 'paper'}
        ``'paper'``: the BiLRP paper's selection, ignoring ``k`` and ``threshold``: the relevance is divided by
        :math:`(\operatorname{mean} R^4)^{1/4}` (over all patch pairs), values below 0.25 in magnitude are dropped
        and the rest clipped to 1; the returned values are these normalised ones, strongest first.

    A ``k`` larger than the number of patch pairs is clamped to it with a warning.
    """
    rel = torch.as_tensor(np.asarray(relevance, dtype=np.float64))
    if rel.shape != (grid_a.num_patches, grid_b.num_patches):
        raise ValueError(f'relevance of shape {tuple(rel.shape)} does not match the grids '
                         f'({grid_a.num_patches} x {grid_b.num_patches} patches)')
    flat = rel.reshape(-1)
    if style not in ('lines', 'paper'):
        raise ValueError(f"style must be 'lines' or 'paper', got {style!r}")
    if style == 'paper':
        scale = float(flat.pow(4).mean().pow(0.25))
        normed = (flat / (scale if scale > 0 else 1.0)).clamp(-1.0, 1.0)
        order = torch.argsort(normed.abs(), descending=True)
        keep = order[normed.abs()[order] >= 0.25][:max_pairs]
        n_b = grid_b.num_patches
        return PairSelection(grid_a.patch_centers()[keep // n_b].numpy(), grid_b.patch_centers()[keep % n_b].numpy(),
                             normed[keep].numpy())
    if threshold is not None:
        if not 0 < threshold <= 1:
            raise ValueError(f'threshold must be in (0, 1] (relative to the largest |R|), got {threshold}')
        peak = flat.abs().max()
        order = torch.argsort(flat.abs(), descending=True)
        keep = order[flat.abs()[order] >= threshold * peak][:max_pairs]
    else:
        if k is None:
            raise ValueError('give k (number of pairs), threshold, or style="paper"')
        k = _clamp_k(k, flat.numel())
        keys = {'abs': flat.abs(), 'value': flat, 'negative': -flat}
        if by not in keys:
            raise ValueError(f"by must be 'abs', 'value' or 'negative', got {by!r}")
        keep = keys[by].topk(int(k)).indices
    n_b = grid_b.num_patches
    centers_a = grid_a.patch_centers()[keep // n_b].numpy()
    centers_b = grid_b.patch_centers()[keep % n_b].numpy()
    return PairSelection(centers_a, centers_b, flat[keep].numpy())


def draw_pairs(ax, image_a, image_b, pairs: PairSelection, gap: Optional[int] = None, background: str = 'light',
               fade: float = 0.35, linewidth: tuple = (0.5, 2.5), alpha: tuple = (0.35, 0.95), vmax=None,
               markers: bool = True, curve: float = 0.0, denormalize=None):
    r"""Draw two images side by side on ``ax`` and a line per patch pair.

    The first image occupies data coordinates ``[-0.5, W_a - 0.5] x [H_a - 0.5, -0.5]``, the second is shifted
    right by ``W_a + gap``. Pair :math:`j` with value :math:`v_j` is drawn with width
    :math:`w_0 + (w_1 - w_0)|v_j|/v_{max}` and opacity :math:`a_0 + (a_1 - a_0)|v_j|/v_{max}`, red if
    :math:`v_j > 0`, blue otherwise; the lines are the only ``Line2D`` artists added (``ax.lines``).

    Parameters
    ----------
    fade : float
        Blend the images towards the background color by this fraction so that the lines stand out.
    vmax : float, optional
        Magnitude of full width/opacity (default the largest drawn ``|v|``); pass the same value to several axes to
        make their lines comparable.
    curve : float
        Draw arcs instead of straight lines: quadratic Bezier curves whose middle is displaced by ``curve`` times
        the horizontal distance, towards the vertical middle of the images (so arcs stay inside the picture).
    denormalize : optional
        Undo an input normalization before display (see :func:`plot_bilrp`).
    """
    theme = _theme(background)
    image_a = _as_image(image_a, name='image_a', denormalize=denormalize)
    image_b = _as_image(image_b, name='image_b', denormalize=denormalize)
    (h_a, w_a), (h_b, w_b) = image_a.shape[:2], image_b.shape[:2]
    gap = max(2, round(0.04 * max(w_a, w_b))) if gap is None else int(gap)
    face = np.array([int(theme['face'][i:i + 2], 16) / 255 for i in (1, 3, 5)])
    if not 0 <= fade < 1:
        raise ValueError(f'fade must be in [0, 1), got {fade}')
    shown_a, shown_b = (img * (1 - fade) + face * fade for img in (image_a, image_b))
    offset = w_a + gap
    ax.imshow(shown_a, extent=(-0.5, w_a - 0.5, h_a - 0.5, -0.5), interpolation='antialiased')
    ax.imshow(shown_b, extent=(offset - 0.5, offset + w_b - 0.5, h_b - 0.5, -0.5), interpolation='antialiased')
    ax.set_xlim(-0.5, offset + w_b - 0.5)
    ax.set_ylim(max(h_a, h_b) - 0.5, -0.5)
    ax.set_facecolor(theme['face'])
    ax.set_axis_off()
    values = np.asarray(pairs.values, dtype=float)
    scale = float(vmax) if vmax is not None else (float(np.abs(values).max()) if values.size else 1.0)
    scale = scale if scale > 0 else 1.0
    order = np.argsort(np.abs(values))  # strongest lines on top
    middle = (max(h_a, h_b) - 1) / 2
    for j in order:
        (ra, ca), (rb, cb), v = pairs.centers_a[j], pairs.centers_b[j], values[j]
        m = min(abs(v) / scale, 1.0)
        color = theme['positive'] if v > 0 else theme['negative']
        xs, ys = _path(ca, ra, cb + offset, rb, curve, middle)
        ax.plot(xs, ys, color=color, solid_capstyle='round',
                linewidth=linewidth[0] + (linewidth[1] - linewidth[0]) * m, alpha=alpha[0] + (alpha[1] - alpha[0]) * m)
    if markers and values.size:
        colors = [theme['positive'] if v > 0 else theme['negative'] for v in values]
        ax.scatter(np.concatenate([pairs.centers_a[:, 1], pairs.centers_b[:, 1] + offset]),
                   np.concatenate([pairs.centers_a[:, 0], pairs.centers_b[:, 0]]), s=6, c=colors * 2,
                   edgecolors='none', zorder=3)
    return ax


def _path(x0: float, y0: float, x1: float, y1: float, curve: float, middle: float, n: int = 24) -> tuple:
    """A straight segment, or with ``curve`` a quadratic Bezier arc bending towards the row ``middle``."""
    if not curve:
        return [x0, x1], [y0, y1]
    mid_y = (y0 + y1) / 2
    bend = curve * abs(x1 - x0) * (1.0 if mid_y < middle else -1.0)  # image rows grow downwards
    cx, cy = (x0 + x1) / 2, mid_y + 2 * bend  # control point: the curve's middle moves by `bend`
    t = np.linspace(0.0, 1.0, n)
    xs = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t ** 2 * x1
    ys = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t ** 2 * y1
    return xs, ys


def _heatmap(ax, heat: np.ndarray, background: str, cmap: Optional[str] = None, level: float = 1.0,
             bound: Optional[float] = None, under: Optional[np.ndarray] = None, opacity: float = 0.75):
    """Draw ``heat`` with a symmetric color scale ``[-bound, bound]`` (default its own largest ``|value|``); with
    ``under`` (an image ``(H, W, 3)``) the heatmap is blended over its gray version."""
    theme = _theme(background)
    bound = bound if bound is not None and bound > 0 else (float(np.abs(heat).max()) or 1.0)
    extent = (-0.5, heat.shape[1] - 0.5, heat.shape[0] - 0.5, -0.5)
    if under is not None:
        gray = under.mean(axis=2)
        ax.imshow(gray, cmap='gray', vmin=0, vmax=1, interpolation='antialiased', extent=extent)
    image = ax.imshow(heat, cmap=zennit_colormap(cmap or theme['cmap'], level), vmin=-bound, vmax=bound,
                      interpolation='nearest', extent=extent, alpha=opacity if under is not None else None)
    ax.set_axis_off()
    return image


def _colorbar(fig, image, cax, theme: dict, label: str, orientation: str = 'horizontal'):
    bar = fig.colorbar(image, cax=cax, orientation=orientation)
    low, high = image.get_clim()
    bar.set_ticks([low, 0.0, high], labels=[f'{low:.2g}', '0', f'{high:.2g}'])  # three labels never collide
    bar.ax.tick_params(colors=theme['text'], labelsize=6, length=2, pad=1)
    bar.outline.set_edgecolor(theme['text'])
    bar.outline.set_linewidth(0.4)
    bar.set_label(label, color=theme['text'], fontsize=7, labelpad=1)
    bar.ax.xaxis.get_offset_text().set_fontsize(6)
    return bar


def _new_figure(fig, figsize, background, pyplot: bool = False):
    """A new figure (not registered with pyplot unless ``pyplot``), or ``fig`` with the theme's face color."""
    theme = _theme(background)
    if fig is not None:
        fig.set_facecolor(theme['face'])
        return fig
    if pyplot:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, facecolor=theme['face'])
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, facecolor=theme['face'])
    FigureCanvasAgg(fig)  # a canvas so that savefig works; pyplot keeps no reference
    return fig


def _upsampled_marginal(marginal_patches: np.ndarray, grid, shape) -> np.ndarray:
    patches = marginal_patches.reshape(grid.grid)
    heat = np.kron(patches, np.ones(grid.patch)) / float(np.prod(grid.patch))
    return heat[:shape[0], :shape[1]]


#: margin (inches) around the BiLRP picture; height (inches) per title line of 9 pt and the title paddings
_MARGIN = 0.04
_LINE = 9 * 1.22 / 72


#: line widths, opacities (at normalised relevance 0 and 1) and arc height of ``style='paper'``
_PAPER_LINEWIDTH, _PAPER_ALPHA, _PAPER_CURVE = (0.1, 1.1), (0.0, 0.9), 0.06
#: height (inches) of a marginal's colorbar with its tick labels and label
_COLORBAR = 0.42


def _bilrp_layout(shape_a, shape_b, marginals: bool = True, title: Optional[str] = None,
                  colorbar: bool = True) -> dict:
    """Geometry of :func:`plot_bilrp`: the pixel extent (scaled by the figure) and the fixed parts in inches."""
    (h_a, w_a), (h_b, w_b) = shape_a, shape_b
    gap = max(2, round(0.04 * max(w_a, w_b)))
    row = max(h_a, h_b)
    title_h = (len(title.splitlines()) * _LINE + 6 / 72) if title else 0.0
    marginal_title = (_LINE + 5 / 72) if marginals else 0.0
    bar = _COLORBAR if marginals and colorbar else 0.0
    return {'gap': gap, 'row_px': row, 'pixels_w': w_a + gap + w_b, 'pixels_h': row * (2 if marginals else 1),
            'title': title_h, 'marginal_title': marginal_title, 'colorbar': bar, 'fixed_w': 2 * _MARGIN,
            'fixed_h': 2 * _MARGIN + title_h + marginal_title + bar}


def _bilrp_figsize(shape_a, shape_b, marginals: bool = True, title: Optional[str] = None,
                   width: float = 7.0, colorbar: bool = True) -> tuple:
    """The size (inches) of a :func:`plot_bilrp` figure ``width`` wide with no empty space: height from the aspect
    of the images plus the title lines."""
    layout = _bilrp_layout(shape_a, shape_b, marginals, title, colorbar)
    scale = (width - layout['fixed_w']) / layout['pixels_w']
    return (width, layout['fixed_h'] + scale * layout['pixels_h'])


def plot_bilrp(result, x_a, x_b, index: int = 0, k: Optional[int] = 20, threshold: Optional[float] = None,
               by: str = 'abs', marginals: bool = True, patch=None, background: str = 'light',
               title: Union[None, str, bool] = True, fig=None, figsize: Optional[tuple] = None, fade: float = 0.35,
               linewidth: tuple = (0.5, 2.5), alpha: tuple = (0.35, 0.95), cmap: Optional[str] = None,
               show: bool = False, denormalize=None, style: str = 'lines', colorbar: bool = True,
               upsample: Union[bool, str] = 'auto', curve: Optional[float] = None):
    r"""The standard BiLRP picture of pair ``index``: both images with lines for the top patch pairs, and the
    two marginal heatmaps below, each with a colorbar.

    Parameters
    ----------
    result : BiLRPResult or torch.Tensor
        The engine's result, or a pooled relevance ``(P_a, P_b)``/``(B, P_a, P_b)`` (then give ``patch``).
    x_a, x_b : torch.Tensor or array
        The explained images (batches or single images), values in [0, 1] unless ``denormalize`` is given (values
        outside [0, 1] are refused, never rescaled).
    index : int
        Which pair of a batch.
    k : int, optional
        Number of lines (top-``k`` by ``by``); ignored when ``threshold`` is given; more than the number of patch
        pairs is clamped to it with a warning.
    threshold : float, optional
        Draw all pairs with ``|R| >= threshold * max|R|`` instead of a fixed ``k``.
    by : {'abs', 'value', 'negative'}
        Ranking of pairs for ``k``.
    marginals : bool
        Add the marginal heatmaps (the exact input-resolution marginals of the result when present, else the
        pooled ones).
    patch : int or PatchGrid, optional
        Patch size/grid, only needed when ``result`` is a tensor.
    background : {'light', 'dark'}
        Color theme.
    title : str or bool
        A title; ``True`` states similarity and total relevance (from a BiLRPResult).
    fig : matplotlib Figure or SubFigure, optional
        Draw into this (sub)figure instead of a new one.
    show : bool
        Call ``plt.show()`` at the end.
    denormalize : {'imagenet'} or (mean, std) or transform, optional
        Undo the input normalization ``(x - mean) / std`` for display: ImageNet's constants, explicit per-channel
        values, or a torchvision preprocessing transform with ``mean``/``std`` (e.g. ``weights.transforms()``).
    style : {'lines', 'paper'}
        ``'paper'``: the BiLRP paper's figure style: all patch pairs as arcs, relevance divided by
        :math:`(\operatorname{mean} R^4)^{1/4}`, values below 0.25 dropped, clipped to 1, opacity and width growing
        with the value (``k`` and ``threshold`` are ignored; see :func:`select_pairs`).
    colorbar : bool
        A colorbar under each marginal heatmap.
    upsample : bool or 'auto'
        Place a relevance pooled on another resolution (a feature map, from
        :func:`~zennit_bilrp.scale.approximations.explain_at_layer`) over the images (:func:`upsample_grid`);
        ``'auto'``: for results that name their ``extras['layer']``.
    curve : float, optional
        Arc height of the lines relative to their length (default 0 for ``'lines'``, 0.12 for ``'paper'``).

    Returns
    -------
    matplotlib.figure.Figure
        The figure; its axes are labelled ``'pairs'``, ``'marginal_a'``, ``'marginal_b'`` and the colorbars
        ``'colorbar_a'``, ``'colorbar_b'`` (``ax.get_label()``).
    """
    theme = _theme(background)
    image_a = _as_image(x_a, index, 'x_a', denormalize=denormalize)
    image_b = _as_image(x_b, index, 'x_b', denormalize=denormalize)
    grid_a, grid_b = _grids(result, patch, image_a, image_b, upsample)
    _check_pooled_sizes((image_a, grid_a, 'x_a'), (image_b, grid_b, 'x_b'))
    matrix = _relevance_matrix(result, index)
    pairs = select_pairs(matrix, grid_a, grid_b, k=k, threshold=threshold, by=by, style=style)
    title = _bilrp_title(title, result, matrix, pairs, index, threshold, style)
    heats = _marginal_heats(result, matrix, (image_a, image_b), (grid_a, grid_b), index) if marginals else []
    shape_a, shape_b = image_a.shape[:2], image_b.shape[:2]
    if figsize is None and fig is None:
        figsize = _bilrp_figsize(shape_a, shape_b, marginals=marginals, title=title, colorbar=colorbar)
    fig = _new_figure(fig, figsize, background, pyplot=show)
    placement = _BiLRPPlacement(fig, _bilrp_layout(shape_a, shape_b, marginals=marginals, title=title,
                                                   colorbar=colorbar))
    ax = fig.add_axes(placement.pairs_rect(), label='pairs')
    paper = style == 'paper'
    draw_pairs(ax, image_a, image_b, pairs, gap=placement.layout['gap'], background=background, fade=fade,
               linewidth=_PAPER_LINEWIDTH if paper else linewidth, alpha=_PAPER_ALPHA if paper else alpha,
               vmax=1.0 if paper else None, curve=(_PAPER_CURVE if paper else 0.0) if curve is None else curve,
               markers=not paper)
    # the rectangles already have the images' aspect: 'auto' keeps every axes exactly in its rectangle, so that the
    # marginals stay under their images even if a layout engine resizes the (sub)figure afterwards
    ax.set_aspect('auto')
    for side, heat, column in zip('ab', heats, (0, shape_a[1] + placement.layout['gap'])):
        hax = fig.add_axes(placement.marginal_rect(column, heat.shape), label=f'marginal_{side}')
        image = _heatmap(hax, heat, background, cmap)
        hax.set_aspect('auto')
        hax.set_title(f"marginal of x{'' if side == 'a' else chr(39)}", color=theme['text'], fontsize=9, pad=3)
        if colorbar:
            cax = fig.add_axes(placement.colorbar_rect(column, heat.shape), label=f'colorbar_{side}')
            _colorbar(fig, image, cax, theme, 'relevance')
    if title is not None:
        ax.set_title(title, color=theme['text'], fontsize=9, pad=4)
    if show:
        _show(fig)
    return fig


def _check_pooled_sizes(*sides) -> None:
    """Each ``(image, grid, name)``: the image has the size the relevance was pooled on."""
    for image, grid, name in sides:
        if tuple(image.shape[:2]) != tuple(grid.input_shape[-2:]):
            raise ValueError(f'{name} has size {image.shape[:2]} but the relevance was pooled on inputs of size '
                             f'{tuple(grid.input_shape[-2:])}')


def _bilrp_title(title, result, matrix: np.ndarray, pairs: PairSelection, index: int,
                 threshold: Optional[float], style: str = 'lines') -> Optional[str]:
    """The title of :func:`plot_bilrp`: ``title`` if a string; for ``True`` similarity, total and the pairs drawn
    (when ``result`` has similarities); else none."""
    if isinstance(title, str):
        return title
    if title is not True or not hasattr(result, 'similarity'):
        return None
    head = f'similarity y = {float(result.similarity[index]):.3f}, sum of R = {float(matrix.sum()):.3f}; '
    if style == 'paper':
        return head + f'{len(pairs.values)} patch pairs with |R| / (mean R^4)^(1/4) >= 0.25 (red +, blue -)'
    what = 'strongest' if threshold is None else f'|R| >= {threshold:g} max'
    layer = getattr(result, 'extras', {}).get('layer')
    if layer is not None:
        head = f'explained at layer {layer!r}: ' + head
    return head + f'{len(pairs.values)} {what} patch pairs (red +, blue -)'



def _marginal_heats(result, matrix: np.ndarray, images: tuple, grids: tuple, index: int) -> list:
    r"""The two marginal heatmaps: the result's exact ones where present, else the pooled marginals
    :math:`\sum_{p'} R_{pp'}` and :math:`\sum_p R_{pp'}` spread evenly over each patch."""
    heats = []
    for side, image, grid, axis in zip('ab', images, grids, (1, 0)):
        exact = getattr(result, f'marginal_{side}', None)
        if exact is not None:
            heats.append(_heat(exact, index))
        else:
            heats.append(_upsampled_marginal(matrix.sum(axis=axis), grid, image.shape[:2]))
    return heats


class _BiLRPPlacement:
    """Axes rectangles of :func:`plot_bilrp` in a (sub)figure, at one data scale (inches per pixel) for all axes,
    centered: the marginals have exactly the size of their images and sit right below them."""

    def __init__(self, fig, layout: dict):
        self.layout = layout
        self.width, self.height = fig.bbox.width / fig.dpi, fig.bbox.height / fig.dpi
        self.scale = min((self.width - layout['fixed_w']) / layout['pixels_w'],
                         (self.height - layout['fixed_h']) / layout['pixels_h'])
        if self.scale <= 0:
            raise ValueError(f'a figure of {self.width:.2f} x {self.height:.2f} inches is too small for the BiLRP '
                             'picture')
        self.left = (self.width - layout['fixed_w'] - self.scale * layout['pixels_w']) / 2 + _MARGIN
        self.top = (self.height - (self.height - layout['fixed_h'] - self.scale * layout['pixels_h']) / 2 - _MARGIN
                    - layout['title'])

    def rect(self, x0: float, y_top: float, w: float, h: float) -> tuple:
        """Inches from the left / bottom edge to (sub)figure fractions."""
        return (x0 / self.width, (y_top - h) / self.height, w / self.width, h / self.height)

    def pairs_rect(self) -> tuple:
        return self.rect(self.left, self.top, self.layout['pixels_w'] * self.scale,
                         self.layout['row_px'] * self.scale)

    def marginal_rect(self, column: int, shape: tuple) -> tuple:
        """The rectangle of a heatmap of ``shape`` (pixels) starting at pixel column ``column`` of the pair row."""
        y_top = self.top - self.layout['row_px'] * self.scale - self.layout['marginal_title']
        return self.rect(self.left + column * self.scale, y_top, shape[1] * self.scale, shape[0] * self.scale)

    def colorbar_rect(self, column: int, shape: tuple) -> tuple:
        """A thin horizontal bar under the heatmap of :meth:`marginal_rect`, 70% of its width, centered."""
        y_top = (self.top - self.layout['row_px'] * self.scale - self.layout['marginal_title']
                 - self.layout['row_px'] * self.scale - 0.05)
        width = 0.7 * shape[1] * self.scale
        return self.rect(self.left + column * self.scale + 0.15 * shape[1] * self.scale, y_top, width, 0.07)


def plot_bilrp_stack(items: Sequence[tuple], k: Optional[int] = 20, background: str = 'light', width: float = 7.0,
                     spacing: float = 0.1, show: bool = False, **kwargs):
    """Several :func:`plot_bilrp` pictures stacked in one figure, each exactly as high as its images and title
    need (no empty band between them).

    Parameters
    ----------
    items : sequence of tuple
        ``(result, x_a, x_b, title)`` per picture (``title`` a string, or None/True as in :func:`plot_bilrp`).
    k : int, optional
        Lines per picture.
    background : {'light', 'dark'}
        Color theme.
    width : float
        Figure width (inches).
    spacing : float
        Space between the pictures (inches).
    **kwargs
        Passed on to :func:`plot_bilrp` (e.g. ``threshold``, ``by``, ``marginals``).

    Returns
    -------
    matplotlib.figure.Figure
        One subfigure per picture (``fig.subfigs[::2]``), separated by empty ones of height ``spacing``.
    """
    if not items:
        raise ValueError('plot_bilrp_stack needs at least one (result, x_a, x_b, title) item')
    marginals = kwargs.get('marginals', True)
    heights = []
    for number, item in enumerate(items):
        if len(item) != 4:
            raise ValueError(f'item {number} must be (result, x_a, x_b, title), got {len(item)} entries')
        _, x_a, x_b, title = item
        shapes = _as_image(x_a, name='x_a').shape[:2], _as_image(x_b, name='x_b').shape[:2]
        heights.append(_bilrp_figsize(*shapes, marginals=marginals, title=title if isinstance(title, str) else None,
                                     width=width, colorbar=kwargs.get('colorbar', True))[1])
    ratios = [value for height in heights for value in (height, spacing)][:-1]
    fig = _new_figure(None, (width, sum(ratios)), background, pyplot=show)
    subfigs = fig.subfigures(len(ratios), 1, height_ratios=ratios, hspace=0) if len(ratios) > 1 else [fig]
    for subfig, (result, x_a, x_b, title) in zip(subfigs[::2], items):
        plot_bilrp(result, x_a, x_b, k=k, fig=subfig, background=background, title=title, **kwargs)
    if show:
        _show(fig)
    return fig


def plot_relevance_matrix(result, index: int = 0, ax=None, background: str = 'light', cmap: Optional[str] = None,
                          colorbar: bool = True, grid_lines: bool = True, show: bool = False):
    r"""The pooled pairwise relevance :math:`R_{pp'}` of pair ``index`` as a matrix (rows: patches of ``x`` in
    row-major order, columns: patches of ``x'``), with a symmetric Zennit color map.

    Returns
    -------
    matplotlib.figure.Figure
        The figure; the matrix is in the axes labelled ``'relevance_matrix'`` (or ``ax``).
    """
    theme = _theme(background)
    matrix = _relevance_matrix(result, index)
    if ax is None:
        fig = _new_figure(None, (5.2, 4.4), background, pyplot=show)
        ax = fig.add_subplot(1, 1, 1, label='relevance_matrix')
    bound = float(np.abs(matrix).max()) or 1.0
    image = ax.imshow(matrix, cmap=zennit_colormap(cmap or theme['cmap']), vmin=-bound, vmax=bound,
                      interpolation='nearest', aspect='auto')
    if grid_lines and hasattr(result, 'grid_a'):
        # light separators between rows of patches of each image
        for grid, axis in ((result.grid_a, 'y'), (result.grid_b, 'x')):
            if len(grid.grid) == 2 and grid.grid[0] > 1:
                for r in range(1, grid.grid[0]):
                    pos = r * grid.grid[1] - 0.5
                    (ax.axhline if axis == 'y' else ax.axvline)(pos, color=theme['text'], lw=0.3, alpha=0.25)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # patch indices
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("patch of x' (row-major)", color=theme['text'])
    ax.set_ylabel('patch of x (row-major)', color=theme['text'])
    ax.tick_params(colors=theme['text'], labelsize=7)
    ax.set_facecolor(theme['face'])
    for spine in ax.spines.values():
        spine.set_color(theme['text'])
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
        bar.ax.tick_params(colors=theme['text'], labelsize=7)
        bar.set_label('R', color=theme['text'])
    if show:
        _show(ax.figure)
    return ax.figure


def plot_pair_grid(result, x_query, x_others, k: int = 10, threshold: Optional[float] = None, by: str = 'abs',
                   marginals: bool = True, labels: Optional[Sequence[str]] = None, patch=None,
                   background: str = 'light', fade: float = 0.35, row_height: Optional[float] = None, fig=None,
                   sort: bool = False, show: bool = False, names: Optional[Sequence[str]] = None,
                   query_name: str = 'query', overlay: bool = False, colorbar: bool = True,
                   headers: bool = True, denormalize=None, upsample: Union[bool, str] = 'auto'):
    """One query against several images (e.g. its nearest neighbors), one row per pair, all rows on one scale.

    The line widths and opacities (one :math:`|R|_{max}` over all drawn pairs of all rows) and the marginal
    heatmaps (one symmetric color range over all rows and both columns) share their scales, so that the rows
    (e.g. the top-1 and the top-3 match) are comparable; one colorbar gives the heatmap scale.

    Parameters
    ----------
    result : BiLRPResult or torch.Tensor
        Explanation of the ``B`` pairs ``(query, x_others[i])`` (e.g. ``bilrp(query.expand(B, ...), x_others)``, or
        one result of :meth:`FactorCache.query <zennit_bilrp.scale.cache.FactorCache.query>`), or their pooled
        relevance ``(B, P_a, P_b)`` (then give ``patch``).
    x_query : torch.Tensor or array
        The query image (one image, or a batch of ``B`` copies).
    x_others : torch.Tensor
        The ``B`` other images ``(B, C, H, W)``.
    k, threshold, by :
        Pair selection per row (see :func:`plot_bilrp`); ``k`` is clamped to the number of patch pairs.
    marginals : bool
        Add each row's two marginal heatmaps.
    labels : sequence of str, optional
        Row titles, one per pair in the given order (default: query and match names with the similarity).
    names : sequence of str, optional
        Names of the ``B`` other images (e.g. file names or cache keys) for the default row titles.
    query_name : str
        Name of the query in the titles and column headers.
    overlay : bool
        Draw the marginal heatmaps over (gray versions of) their images.
    colorbar : bool
        One colorbar for all marginal heatmaps, under the last row.
    headers : bool
        Column headers above the first row.
    sort : bool
        Order the rows by decreasing similarity (needs a :class:`~zennit_bilrp.core.results.BiLRPResult`); default: the
        order of ``x_others``.
    denormalize, upsample :
        As in :func:`plot_bilrp`.

    Returns
    -------
    matplotlib.figure.Figure
        Row ``r`` has the axes labelled ``'pairs_r'`` (and ``'marginal_a_r'``, ``'marginal_b_r'``); the colorbar is
        labelled ``'colorbar'``.
    """
    theme = _theme(background)
    rel, others = _check_grid_inputs(result, x_others, labels, sort)
    n = rel.shape[0]
    if names is not None and len(names) != n:
        raise ValueError(f'{len(names)} names for {n} rows')
    order = (torch.argsort(result.similarity.detach().cpu(), descending=True).tolist() if sort else list(range(n)))
    images = [(_as_image(x_query, i, 'x_query', denormalize), _as_image(others, i, 'x_others', denormalize))
              for i in range(n)]
    grids = _grids(result, patch, *images[0], upsample)
    _check_pooled_sizes((images[0][0], grids[0], 'x_query'), (images[0][1], grids[1], 'x_others'))
    k = None if threshold is not None else _clamp_k(k, grids[0].num_patches * grids[1].num_patches)
    matrices = [rel[i].detach().cpu().double().numpy() for i in range(n)]
    selections = [select_pairs(matrices[i], *grids, k=k, threshold=threshold, by=by) for i in range(n)]
    line_scale = max((float(np.abs(sel.values).max()) for sel in selections if sel.values.size), default=1.0)
    heats = [_marginal_heats(result, matrices[i], images[i], grids, i) for i in range(n)] if marginals else []
    heat_bound = max((float(np.abs(h).max()) for pair in heats for h in pair), default=1.0) or 1.0
    image_q, image_0 = images[0]
    h = max(image_q.shape[0], image_0.shape[0])
    w_pair = image_q.shape[1] + image_0.shape[1] + max(2, round(0.04 * max(image_q.shape[1], image_0.shape[1])))
    widths = [w_pair] + ([image_q.shape[1], image_0.shape[1]] if marginals else [])
    width = 9.0 if marginals else 6.0
    row_height = row_height or width * h / sum(widths) + 0.3
    header_h, bar_h = (0.3 if headers else 0.0), (0.5 if marginals and colorbar else 0.0)
    total_h = row_height * n + header_h + bar_h
    fig = _new_figure(fig, (width, total_h), background, pyplot=show)
    spec = fig.add_gridspec(n, len(widths), width_ratios=widths, hspace=0.25, wspace=0.04,
                            top=1 - header_h / total_h, bottom=bar_h / total_h, left=0.01, right=0.99)
    image = None
    for row, i in enumerate(order):
        ax = fig.add_subplot(spec[row, 0], label=f'pairs_{row}')
        draw_pairs(ax, *images[i], selections[i], background=background, fade=fade, vmax=line_scale)
        ax.set_title(_row_label(result, labels, names, query_name, row, i), color=theme['text'], fontsize=8, pad=2,
                     loc='left')
        if headers and row == 0:
            _header(fig, ax, f'{query_name} | match: strongest patch pairs (red +, blue -)', theme, total_h)
        if marginals:
            for col, (side, heat) in enumerate(zip('ab', heats[i]), 1):
                hax = fig.add_subplot(spec[row, col], label=f'marginal_{side}_{row}')
                image = _heatmap(hax, heat, background, bound=heat_bound,
                                 under=images[i][col - 1] if overlay else None)
                if headers and row == 0:
                    _header(fig, hax, f'marginal of {query_name}' if side == 'a' else 'marginal of match', theme,
                            total_h)
    if image is not None and colorbar:
        left = spec[n - 1, 1].get_position(fig).x0
        right = spec[n - 1, len(widths) - 1].get_position(fig).x1
        cax = fig.add_axes((left + 0.15 * (right - left), 0.55 * bar_h / total_h, 0.7 * (right - left),
                            0.1 / total_h), label='colorbar')
        _colorbar(fig, image, cax, theme, 'marginal relevance (one scale for all rows)')
    if show:
        _show(fig)
    return fig


def _header(fig, ax, text: str, theme: dict, total_h: float) -> None:
    """A column header centered over ``ax`` in the band above the first row (a figure text labelled 'header')."""
    box = ax.get_position()
    fig.text((box.x0 + box.x1) / 2, 1 - 0.13 / total_h, text, ha='center', va='center', fontsize=8,
             fontweight='bold', color=theme['text'], label='header')


def _check_grid_inputs(result, x_others, labels: Optional[Sequence[str]], sort: bool) -> tuple:
    """The relevance ``(B, P_a, P_b)`` and the other images ``(B, C, H, W)`` of :func:`plot_pair_grid`, checked."""
    rel = result.relevance if hasattr(result, 'relevance') else torch.as_tensor(result)
    if rel.dim() != 3:
        raise ValueError(f'plot_pair_grid needs B pairs: relevance (B, P_a, P_b), got {tuple(rel.shape)}')
    n = rel.shape[0]
    others = x_others if isinstance(x_others, torch.Tensor) else torch.as_tensor(np.asarray(x_others))
    if others.dim() != 4 or others.shape[0] != n:
        raise ValueError(f'x_others must be a batch of {n} images (B, C, H, W), got {tuple(others.shape)}')
    if labels is not None and len(labels) != n:
        raise ValueError(f'{len(labels)} labels for {n} rows')
    if sort and not hasattr(result, 'similarity'):
        raise ValueError('sort=True needs the similarities: pass the BiLRPResult, not a relevance tensor')
    return rel, others


def _row_label(result, labels: Optional[Sequence[str]], names: Optional[Sequence[str]], query_name: str, row: int,
               index: int) -> str:
    """Title of row ``row`` (pair ``index``): the given label, else the names of query and match (default
    ``x'[index]``) and the similarity."""
    if labels is not None:
        return labels[index]
    name = names[index] if names is not None else f"x'[{index}]"
    text = f'{query_name} vs {name}'
    if hasattr(result, 'similarity'):
        text += f': y = {float(result.similarity[index]):.3f}'
    return text


def plot_critical_paths(graph, ax=None, show_other: bool = True, min_share: float = 0.02, title: Optional[str] = None,
                        background: str = 'light', show: bool = False):
    """Draw a critical-path graph (:class:`~zennit_bilrp.analysis.critical_path.CriticalPathGraph`).

    Layers run left (input side) to right, their top channels top-down by rank, labelled with the channel and its
    share of the layer's relevance. Node color (Zennit's ``bwr`` map, symmetric) and area grow with the node's
    relevance; edge width grows with the flow :math:`|F_{ij}|` as :math:`0.2 + 5 (|F_{ij}| / F_{max})^{1.5}` (red
    positive, blue negative), :math:`F_{max}` the largest flow among the top channels of the same two layers. The
    ``other`` node of each layer (gray, bottom) and its flows (gray, dashed, scaled separately) gather the
    remaining channels. The nodes of ``graph.critical_chain()`` are outlined.

    Parameters
    ----------
    graph : CriticalPathGraph
        Read through its public attributes ``layers``, ``channels``, ``relevance``, ``flows``, ``n_channels`` and
        its ``critical_chain()``.
    ax : matplotlib.axes.Axes, optional
        Draw into this axes instead of a new figure.
    show_other : bool
        Draw the ``other`` nodes and their flows.
    min_share : float
        Hide edges whose absolute flow is below this share of the largest absolute flow of their kind between the
        same two layers.
    title : str, optional
        Title (default: the number of top channels and what the outline means).
    background : {'light', 'dark'}
        Color theme.
    show : bool
        Call ``plt.show()`` at the end.

    Returns
    -------
    matplotlib.figure.Figure
        The figure; the graph is drawn in the axes labelled ``'critical_paths'``.
    """
    theme = _theme(background)
    if len(graph.layers) < 2 or len(graph.flows) != len(graph.layers) - 1:
        raise ValueError(f'a critical-path graph needs at least two layers and one flow matrix between each two, got '
                         f'{len(graph.layers)} layers and {len(graph.flows)} flow matrices')
    if ax is None:
        fig = _new_figure(None, (2.3 * len(graph.layers) + 1, 4.8), background, pyplot=show)
        ax = fig.add_subplot(1, 1, 1, label='critical_paths')
    top = max(len(c) for c in graph.channels)
    geometry = {'top': top, 'other_y': -0.8}
    for depth, flow in enumerate(graph.flows):
        _draw_flows(ax, graph, depth, np.asarray(flow, dtype=float), geometry, show_other, min_share, theme)
    _draw_nodes(ax, graph, geometry, show_other, theme, background)
    ax.set_xticks(range(len(graph.layers)))
    ax.set_xticklabels([f'{name}\n({n} ch)' for name, n in zip(graph.layers, graph.n_channels)], fontsize=8,
                       color=theme['text'])
    ax.set_yticks([])
    ax.set_xlim(-0.5, len(graph.layers) - 0.5)
    ax.set_ylim(geometry['other_y'] - 1.0 if show_other else 0.3, top + 0.8)
    ax.set_facecolor(theme['face'])
    for side in ('left', 'right', 'top'):
        ax.spines[side].set_visible(False)
    ax.spines['bottom'].set_color(theme['text'])
    ax.tick_params(colors=theme['text'])
    ax.set_title(title or f'critical paths (top {top} channels per layer; outlined: strongest chain)', fontsize=9,
                 color=theme['text'])
    if show:
        _show(ax.figure)
    return ax.figure


def _node_position(graph, geometry: dict, depth: int, node: int) -> tuple:
    """Plot coordinates of node ``node`` of layer ``depth``: top channels by rank, ``other`` at the bottom."""
    if node < len(graph.channels[depth]):
        return depth, geometry['top'] - node
    return depth, geometry['other_y']


def _draw_flows(ax, graph, depth: int, matrix: np.ndarray, geometry: dict, show_other: bool, min_share: float,
                theme: dict) -> None:
    """The edges between layers ``depth`` and ``depth + 1`` (top-channel flows and ``other`` flows scaled apart)."""
    n_low, n_up = len(graph.channels[depth]), len(graph.channels[depth + 1])
    is_other = np.ones(matrix.shape, dtype=bool)
    is_other[:n_low, :n_up] = False
    largest = {kind: float(np.abs(matrix[is_other == kind]).max(initial=0.0)) or 1.0 for kind in (False, True)}
    for i, j in np.ndindex(*matrix.shape):
        other = bool(is_other[i, j])
        value = float(matrix[i, j])
        if (other and not show_other) or abs(value) < min_share * largest[other]:
            continue
        (x0, y0), (x1, y1) = (_node_position(graph, geometry, depth, i),
                              _node_position(graph, geometry, depth + 1, j))
        color = 'gray' if other else (theme['positive'] if value > 0 else theme['negative'])
        ax.plot([x0, x1], [y0, y1], color=color, linestyle='--' if other else '-',
                linewidth=0.2 + (1.5 if other else 5.0) * (abs(value) / largest[other]) ** 1.5,
                alpha=0.35 if other else 0.6, zorder=1)


def _draw_nodes(ax, graph, geometry: dict, show_other: bool, theme: dict, background: str) -> None:
    """The nodes of every layer with their labels; the critical chain outlined."""
    from matplotlib.colors import TwoSlopeNorm

    values = [abs(v) for depth, layer in enumerate(graph.relevance) for v in layer[:len(graph.channels[depth])]]
    vmax = max(values) if values and max(values) > 0 else 1.0
    norm = TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    cmap = zennit_colormap('bwr')
    chain = set(graph.critical_chain())
    outline = theme['text']
    for depth, layer in enumerate(graph.layers):
        total = sum(graph.relevance[depth])
        n_top = len(graph.channels[depth])
        for node in range(n_top + (1 if show_other else 0)):
            value = graph.relevance[depth][node]
            share = f'{100 * value / total:.1f}%' if total else ''
            x, y = _node_position(graph, geometry, depth, node)
            if node >= n_top:
                ax.scatter([x], [y], s=260, c='lightgray', edgecolors='gray', zorder=2)
                ax.annotate(f'other {graph.n_channels[depth] - n_top} ch\n{share}', (x, y), xytext=(0, -24),
                            textcoords='offset points', ha='center', fontsize=7, color='gray')
                continue
            in_chain = (layer, graph.channels[depth][node]) in chain
            ax.scatter([x], [y], s=60 + 500 * abs(value) / vmax, c=[cmap(norm(value))],
                       edgecolors=outline if in_chain else 'gray', linewidths=2.0 if in_chain else 0.5, zorder=2)
            ax.annotate(f'{graph.channels[depth][node]} ({share})', (x, y), xytext=(0, 11),
                        textcoords='offset points', ha='center', fontsize=7, color=theme['text'])


def plot_relevance_tensor(result, index: int = 0, background: str = 'light', cmap: Optional[str] = None,
                          colorbar: bool = True, x_a=None, x_b=None, denormalize=None, show: bool = False):
    r"""The 4-D patch-by-patch view of pair ``index``: the relevance :math:`R_{(r, c), (r', c')}` as a mosaic of
    small maps, one block per patch :math:`(r, c)` of :math:`x` at its place in the grid, showing its relevance to
    every patch :math:`(r', c')` of :math:`x'` at their places. One symmetric color scale for all blocks.

    Parameters
    ----------
    result : BiLRPResult
        A result with 2-D patch grids on both sides.
    index : int
        Which pair of a batch.
    x_a, x_b : torch.Tensor or array, optional
        The images, shown next to the mosaic (with the patch grids drawn on them) when given.
    denormalize :
        As in :func:`plot_bilrp`.

    Returns
    -------
    matplotlib.figure.Figure
        The mosaic is in the axes labelled ``'relevance_tensor'``; its image array has shape
        ``(g_a[0] * g_b[0], g_a[1] * g_b[1])``.
    """
    theme = _theme(background)
    if not hasattr(result, 'grid_a'):
        raise ValueError('plot_relevance_tensor needs a BiLRPResult (it reads the patch grids)')
    grid_a, grid_b = result.grid_a, result.grid_b
    if len(grid_a.grid) != 2 or len(grid_b.grid) != 2:
        raise ValueError(f'the 4-D view needs 2-D patch grids, got {grid_a.grid} and {grid_b.grid}')
    matrix = _relevance_matrix(result, index)
    (ha, wa), (hb, wb) = grid_a.grid, grid_b.grid
    mosaic = matrix.reshape(ha, wa, hb, wb).transpose(0, 2, 1, 3).reshape(ha * hb, wa * wb)
    images = [] if x_a is None or x_b is None else [_as_image(x_a, index, 'x_a', denormalize),
                                                    _as_image(x_b, index, 'x_b', denormalize)]
    n_cols = 1 + len(images)
    widths = [wa * wb] + [ha * hb * img.shape[1] / img.shape[0] for img in images]
    fig = _new_figure(None, (2.6 * n_cols + 4.4, 4.2), background, pyplot=show)
    spec = fig.add_gridspec(1, n_cols, width_ratios=widths, wspace=0.15, left=0.06, right=0.94)
    ax = fig.add_subplot(spec[0, 0], label='relevance_tensor')
    bound = float(np.abs(mosaic).max()) or 1.0
    image = ax.imshow(mosaic, cmap=zennit_colormap(cmap or theme['cmap']), vmin=-bound, vmax=bound,
                      interpolation='nearest')
    for r in range(1, ha):
        ax.axhline(r * hb - 0.5, color=theme['text'], lw=0.8)
    for c in range(1, wa):
        ax.axvline(c * wb - 0.5, color=theme['text'], lw=0.8)
    ax.set_xticks([c * wb + (wb - 1) / 2 for c in range(wa)], [str(c) for c in range(wa)])
    ax.set_yticks([r * hb + (hb - 1) / 2 for r in range(ha)], [str(r) for r in range(ha)])
    ax.tick_params(colors=theme['text'], labelsize=7, length=0)
    ax.set_xlabel('patch column of x (block); inside a block: the patches of x\'', color=theme['text'], fontsize=8)
    ax.set_ylabel('patch row of x (block)', color=theme['text'], fontsize=8)
    ax.set_title(f"pairwise relevance of pair {index}\nblock (r, c): a patch of x; inside it: every patch of x'",
                 color=theme['text'], fontsize=8)
    for spine in ax.spines.values():
        spine.set_color(theme['text'])
    if colorbar:
        bar = fig.colorbar(image, ax=ax, orientation='horizontal', fraction=0.05, pad=0.16, shrink=0.8)
        bar.ax.tick_params(colors=theme['text'], labelsize=7)
        bar.set_label('R', color=theme['text'], fontsize=8)
    for col, (img, grid, name) in enumerate(zip(images, (grid_a, grid_b), ('x', "x'")), 1):
        iax = fig.add_subplot(spec[0, col], label=f'image_{"ab"[col - 1]}')
        iax.imshow(img, interpolation='antialiased')
        for r in range(1, grid.grid[0]):
            iax.axhline(r * grid.patch[0] - 0.5, color='white', lw=0.5, alpha=0.8)
        for c in range(1, grid.grid[1]):
            iax.axvline(c * grid.patch[1] - 0.5, color='white', lw=0.5, alpha=0.8)
        iax.set_axis_off()
        iax.set_title(f'{name} ({grid.grid[0]} x {grid.grid[1]} patches)', color=theme['text'], fontsize=8)
    if show:
        _show(fig)
    return fig


def heatmap_image(heat, cmap: str = 'bwr', level: float = 1.0, bound: Optional[float] = None) -> np.ndarray:
    """A relevance map as an RGB image: Zennit's color map ``cmap`` over the symmetric range ``[-bound, bound]``
    (default the largest ``|value|``), zero at the middle color.

    Parameters
    ----------
    heat : torch.Tensor or array
        ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)`` (first entry; channels summed).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array ``(H, W, 3)``.
    """
    from zennit.image import palette

    heat = _heat(heat)
    bound = float(np.abs(heat).max()) if bound is None else float(bound)
    bound = bound if bound > 0 else 1.0
    colors = palette(cmap, level=level)  # (256, 3) uint8
    index = np.clip(np.round((heat / bound + 1.0) * 127.5), 0, 255).astype(np.intp)
    return np.asarray(colors, dtype=np.uint8)[index]


def save_heatmap(heat, path: Union[str, os.PathLike], cmap: str = 'bwr', level: float = 1.0,
                 bound: Optional[float] = None) -> Path:
    """Write a relevance map as an image file (PNG, JPEG, ... by the suffix) with Pillow: :func:`heatmap_image`
    saved as a plain RGB image (works with current Pillow, unlike palette images with ``mode=``).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(heatmap_image(heat, cmap, level, bound)).save(path)
    return path


def save_figure(fig, path: Union[str, Path], dpi: int = 150, **kwargs) -> Path:
    """Save ``fig`` as PNG, SVG or PDF (chosen by the suffix), keeping its background color.

    Parameters
    ----------
    fig : matplotlib.figure.Figure or matplotlib.axes.Axes
        The figure, or an axes of it: its whole figure is saved.
    path : str or pathlib.Path
        Where to write; the suffix picks the format (``.png``, ``.svg``, ``.pdf``). Missing folders are created.
    dpi : int
        Resolution of raster output.
    **kwargs
        Passed on to :meth:`matplotlib.figure.Figure.savefig`.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    fig = getattr(fig, 'figure', fig) if not hasattr(fig, 'savefig') else fig
    path = Path(path)
    if path.suffix.lower() not in SAVE_FORMATS:
        raise ValueError(f'cannot save a figure as {path.suffix or "(no suffix)"!r}; use one of {SAVE_FORMATS}')
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor=fig.get_facecolor(), bbox_inches='tight', pad_inches=0.05, **kwargs)
    return path


def _show(fig) -> None:
    import matplotlib.pyplot as plt

    plt.show()
