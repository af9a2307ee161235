r"""The pooled pairwise relevance :math:`R_{pp'}` of one pair as a patch-by-patch matrix
(:func:`plot_relevance_matrix`) or as a 4-D mosaic, one block per patch of :math:`x` at its place in the grid
(:func:`plot_relevance_tensor`)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .canvas import new_figure, show_figure
from .inputs import as_image, relevance_matrix
from .style import theme, zennit_colormap

__all__ = ['plot_relevance_matrix', 'plot_relevance_tensor']


def plot_relevance_matrix(result, index: int = 0, ax=None, background: str = 'light', cmap: Optional[str] = None,
                          colorbar: bool = True, grid_lines: bool = True, show: bool = False):
    r"""The pooled pairwise relevance :math:`R_{pp'}` of pair ``index`` as a matrix (rows: patches of ``x`` in
    row-major order, columns: patches of ``x'``), with a symmetric Zennit color map.

    Returns
    -------
    matplotlib.figure.Figure
        The figure; the matrix is in the axes labelled ``'relevance_matrix'`` (or ``ax``).
    """
    from matplotlib.ticker import MaxNLocator

    colors = theme(background)
    matrix = relevance_matrix(result, index)
    if ax is None:
        fig = new_figure(None, (5.2, 4.4), background, pyplot=show)
        ax = fig.add_subplot(1, 1, 1, label='relevance_matrix')
    bound = float(np.abs(matrix).max()) or 1.0
    image = ax.imshow(matrix, cmap=zennit_colormap(cmap or colors['cmap']), vmin=-bound, vmax=bound,
                      interpolation='nearest', aspect='auto')
    if grid_lines and hasattr(result, 'grid_a'):
        # light separators between rows of patches of each image
        for grid, axis in ((result.grid_a, 'y'), (result.grid_b, 'x')):
            if len(grid.grid) == 2 and grid.grid[0] > 1:
                for r in range(1, grid.grid[0]):
                    pos = r * grid.grid[1] - 0.5
                    (ax.axhline if axis == 'y' else ax.axvline)(pos, color=colors['text'], lw=0.3, alpha=0.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # patch indices
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("patch of x' (row-major)", color=colors['text'])
    ax.set_ylabel('patch of x (row-major)', color=colors['text'])
    ax.tick_params(colors=colors['text'], labelsize=7)
    ax.set_facecolor(colors['face'])
    for spine in ax.spines.values():
        spine.set_color(colors['text'])
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
        bar.ax.tick_params(colors=colors['text'], labelsize=7)
        bar.set_label('R', color=colors['text'])
    if show:
        show_figure(ax.figure)
    return ax.figure


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
        As in :func:`~zennit_bilrp.app.viz.bilrp_figure.plot_bilrp`.

    Returns
    -------
    matplotlib.figure.Figure
        The mosaic is in the axes labelled ``'relevance_tensor'``; its image array has shape
        ``(g_a[0] * g_b[0], g_a[1] * g_b[1])``.
    """
    colors = theme(background)
    if not hasattr(result, 'grid_a'):
        raise ValueError('plot_relevance_tensor needs a BiLRPResult (it reads the patch grids)')
    grid_a, grid_b = result.grid_a, result.grid_b
    if len(grid_a.grid) != 2 or len(grid_b.grid) != 2:
        raise ValueError(f'the 4-D view needs 2-D patch grids, got {grid_a.grid} and {grid_b.grid}')
    (ha, wa), (hb, wb) = grid_a.grid, grid_b.grid
    mosaic = relevance_matrix(result, index).reshape(ha, wa, hb, wb).transpose(0, 2, 1, 3).reshape(ha * hb, wa * wb)
    images = [] if x_a is None or x_b is None else [as_image(x_a, index, 'x_a', denormalize),
                                                    as_image(x_b, index, 'x_b', denormalize)]
    widths = [wa * wb] + [ha * hb * img.shape[1] / img.shape[0] for img in images]
    fig = new_figure(None, (2.6 * len(widths) + 4.4, 4.2), background, pyplot=show)
    spec = fig.add_gridspec(1, len(widths), width_ratios=widths, wspace=0.15, left=0.06, right=0.94)
    ax = fig.add_subplot(spec[0, 0], label='relevance_tensor')
    _draw_mosaic(fig, ax, mosaic, (ha, wa), (hb, wb), index, colors, cmap, colorbar)
    for col, (img, grid, name) in enumerate(zip(images, (grid_a, grid_b), ('x', "x'")), 1):
        _draw_gridded_image(fig.add_subplot(spec[0, col], label=f'image_{"ab"[col - 1]}'), img, grid, name, colors)
    if show:
        show_figure(fig)
    return fig


def _draw_mosaic(fig, ax, mosaic: np.ndarray, grid_a: tuple, grid_b: tuple, index: int, colors: dict,
                 cmap: Optional[str], colorbar: bool) -> None:
    """The mosaic with block separators, axis labels and a colorbar."""
    (ha, wa), (hb, wb) = grid_a, grid_b
    bound = float(np.abs(mosaic).max()) or 1.0
    image = ax.imshow(mosaic, cmap=zennit_colormap(cmap or colors['cmap']), vmin=-bound, vmax=bound,
                      interpolation='nearest')
    for r in range(1, ha):
        ax.axhline(r * hb - 0.5, color=colors['text'], lw=0.8)
    for c in range(1, wa):
        ax.axvline(c * wb - 0.5, color=colors['text'], lw=0.8)
    ax.set_xticks([c * wb + (wb - 1) / 2 for c in range(wa)], [str(c) for c in range(wa)])
    ax.set_yticks([r * hb + (hb - 1) / 2 for r in range(ha)], [str(r) for r in range(ha)])
    ax.tick_params(colors=colors['text'], labelsize=7, length=0)
    ax.set_xlabel('patch column of x (block); inside a block: the patches of x\'', color=colors['text'], fontsize=8)
    ax.set_ylabel('patch row of x (block)', color=colors['text'], fontsize=8)
    ax.set_title(f"pairwise relevance of pair {index}\nblock (r, c): a patch of x; inside it: every patch of x'",
                 color=colors['text'], fontsize=8)
    for spine in ax.spines.values():
        spine.set_color(colors['text'])
    if colorbar:
        bar = fig.colorbar(image, ax=ax, orientation='horizontal', fraction=0.05, pad=0.16, shrink=0.8)
        bar.ax.tick_params(colors=colors['text'], labelsize=7)
        bar.set_label('R', color=colors['text'], fontsize=8)


def _draw_gridded_image(iax, img: np.ndarray, grid, name: str, colors: dict) -> None:
    """An input image with its patch grid drawn on it."""
    iax.imshow(img, interpolation='antialiased')
    for r in range(1, grid.grid[0]):
        iax.axhline(r * grid.patch[0] - 0.5, color='white', lw=0.5, alpha=0.8)
    for c in range(1, grid.grid[1]):
        iax.axvline(c * grid.patch[1] - 0.5, color='white', lw=0.5, alpha=0.8)
    iax.set_axis_off()
    iax.set_title(f'{name} ({grid.grid[0]} x {grid.grid[1]} patches)', color=colors['text'], fontsize=8)
