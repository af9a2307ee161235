r"""Patch pairs as lines: which pairs to draw (:func:`select_pairs`: top-:math:`k`, a relative threshold, or the
BiLRP paper's normalisation) and the drawing itself (:func:`draw_pairs`: two images side by side, a line per pair,
styled by :class:`~zennit_bilrp.app.viz.style.PairStyle`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from .inputs import as_image
from .style import PAPER_CUTOFF, PairStyle

__all__ = ['PairSelection', 'select_pairs', 'draw_pairs', 'clamp_k']


@dataclass
class PairSelection:
    """Patch pairs chosen for drawing: centers ``(n, 2)`` as (row, col) in each image and signed values ``(n,)``."""
    centers_a: np.ndarray
    centers_b: np.ndarray
    values: np.ndarray


def clamp_k(k: Optional[int], n_pairs: int, stacklevel: int = 3) -> Optional[int]:
    """``k`` at most the number of patch pairs ``n_pairs``, with a warning when clamped (``None`` stays)."""
    if k is None:
        return None
    if int(k) < 1:
        raise ValueError(f'k must be positive, got {k}')
    if int(k) > n_pairs:
        warnings.warn(f'k = {k} is more than the {n_pairs} patch pairs; drawing all {n_pairs}', UserWarning,
                      stacklevel=stacklevel)
        return n_pairs
    return int(k)


def _chosen(flat: torch.Tensor, k: Optional[int], threshold: Optional[float], by: str, max_pairs: int
            ) -> torch.Tensor:
    """Flat indices of the pairs chosen by ``threshold`` (relative) or the top ``k`` by ``by``."""
    if threshold is not None:
        if not 0 < threshold <= 1:
            raise ValueError(f'threshold must be in (0, 1] (relative to the largest |R|), got {threshold}')
        peak = flat.abs().max()
        order = torch.argsort(flat.abs(), descending=True)
        return order[flat.abs()[order] >= threshold * peak][:max_pairs]
    if k is None:
        raise ValueError('give k (number of pairs), threshold, or style="paper"')
    k = clamp_k(k, flat.numel(), stacklevel=4)
    keys = {'abs': flat.abs(), 'value': flat, 'negative': -flat}
    if by not in keys:
        raise ValueError(f"by must be 'abs', 'value' or 'negative', got {by!r}")
    return keys[by].topk(int(k)).indices


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
        flat = (flat / (scale if scale > 0 else 1.0)).clamp(-1.0, 1.0)
        order = torch.argsort(flat.abs(), descending=True)
        keep = order[flat.abs()[order] >= PAPER_CUTOFF][:max_pairs]
    else:
        keep = _chosen(flat, k, threshold, by, max_pairs)
    n_b = grid_b.num_patches
    return PairSelection(grid_a.patch_centers()[keep // n_b].numpy(), grid_b.patch_centers()[keep % n_b].numpy(),
                         flat[keep].numpy())


def draw_pairs(ax, image_a, image_b, pairs: PairSelection, gap: Optional[int] = None, vmax=None, denormalize=None,
               style: Union[None, str, PairStyle] = None, **style_fields):
    r"""Draw two images side by side on ``ax`` and a line per patch pair.

    The first image occupies data coordinates ``[-0.5, W_a - 0.5] x [H_a - 0.5, -0.5]``, the second is shifted
    right by ``W_a + gap``. Pair :math:`j` with value :math:`v_j` is drawn with width
    :math:`w_0 + (w_1 - w_0)|v_j|/v_{max}` and opacity :math:`a_0 + (a_1 - a_0)|v_j|/v_{max}`, red if
    :math:`v_j > 0`, blue otherwise; the lines are the only ``Line2D`` artists added (``ax.lines``).

    Parameters
    ----------
    gap : int, optional
        Pixels between the images (default 4% of the wider one, at least 2).
    vmax : float, optional
        Magnitude of full width/opacity (default the largest drawn ``|v|``); pass the same value to several axes to
        make their lines comparable.
    denormalize : optional
        Undo an input normalization before display (see :func:`~zennit_bilrp.app.viz.bilrp_figure.plot_bilrp`).
    style : PairStyle or {'lines', 'paper'}, optional
        The look: ``background``, ``fade``, ``linewidth`` :math:`(w_0, w_1)`, ``alpha`` :math:`(a_0, a_1)`,
        ``curve`` (arcs: quadratic Bezier curves whose middle is displaced by ``curve`` times the horizontal
        distance, towards the vertical middle of the images) and ``markers``.
    **style_fields
        Fields of :class:`~zennit_bilrp.app.viz.style.PairStyle` that override ``style`` (e.g. ``fade=0.5``).
    """
    style = PairStyle.of(style, **style_fields)
    colors = style.colors
    image_a = as_image(image_a, name='image_a', denormalize=denormalize)
    image_b = as_image(image_b, name='image_b', denormalize=denormalize)
    (h_a, w_a), (h_b, w_b) = image_a.shape[:2], image_b.shape[:2]
    gap = max(2, round(0.04 * max(w_a, w_b))) if gap is None else int(gap)
    face = np.array([int(colors['face'][i:i + 2], 16) / 255 for i in (1, 3, 5)])
    shown_a, shown_b = (img * (1 - style.fade) + face * style.fade for img in (image_a, image_b))
    offset = w_a + gap
    ax.imshow(shown_a, extent=(-0.5, w_a - 0.5, h_a - 0.5, -0.5), interpolation='antialiased')
    ax.imshow(shown_b, extent=(offset - 0.5, offset + w_b - 0.5, h_b - 0.5, -0.5), interpolation='antialiased')
    ax.set_xlim(-0.5, offset + w_b - 0.5)
    ax.set_ylim(max(h_a, h_b) - 0.5, -0.5)
    ax.set_facecolor(colors['face'])
    ax.set_axis_off()
    _draw_lines(ax, pairs, offset, (max(h_a, h_b) - 1) / 2, vmax, style)
    return ax


def _draw_lines(ax, pairs: PairSelection, offset: float, middle: float, vmax, style: PairStyle) -> None:
    """One line per pair (strongest on top) from image a to image b shifted by ``offset``; markers on request."""
    colors, (w_0, w_1), (a_0, a_1) = style.colors, style.line_widths, style.line_alphas
    values = np.asarray(pairs.values, dtype=float)
    scale = float(vmax) if vmax is not None else (float(np.abs(values).max()) if values.size else 1.0)
    scale = scale if scale > 0 else 1.0
    for j in np.argsort(np.abs(values)):  # strongest lines on top
        (ra, ca), (rb, cb), v = pairs.centers_a[j], pairs.centers_b[j], values[j]
        m = min(abs(v) / scale, 1.0)
        xs, ys = _path(ca, ra, cb + offset, rb, style.arc, middle)
        ax.plot(xs, ys, color=colors['positive'] if v > 0 else colors['negative'], solid_capstyle='round',
                linewidth=w_0 + (w_1 - w_0) * m, alpha=a_0 + (a_1 - a_0) * m)
    if style.draw_markers and values.size:
        marks = [colors['positive'] if v > 0 else colors['negative'] for v in values]
        ax.scatter(np.concatenate([pairs.centers_a[:, 1], pairs.centers_b[:, 1] + offset]),
                   np.concatenate([pairs.centers_a[:, 0], pairs.centers_b[:, 0]]), s=6, c=marks * 2,
                   edgecolors='none', zorder=3)


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
