r"""The standard BiLRP picture (:func:`plot_bilrp`) and several of them stacked (:func:`plot_bilrp_stack`).

The two images side by side, a line joining each of the most relevant patch pairs :math:`(p, p')` (top-:math:`k`
by :math:`|R_{pp'}|`, or all above a relative threshold), red for positive and blue for negative relevance, width
and opacity growing with :math:`|R_{pp'}|`; below them the two first-order marginals :math:`\sum_{i'} R_{ii'}` and
:math:`\sum_{i} R_{ii'}` as heatmaps in Zennit's color maps (``bwr`` on light, ``coldnhot`` on dark backgrounds).
``style='paper'`` draws the BiLRP paper's version: all pairs as arcs, relevance divided by
:math:`(\operatorname{mean} R^4)^{1/4}`, values below 0.25 dropped, clipped to 1, opacity growing with the value.
The look is one :class:`~zennit_bilrp.app.viz.style.PairStyle`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .canvas import add_colorbar, draw_heatmap, new_figure, show_figure
from .inputs import as_heatmap, as_image, check_pooled_sizes, patch_grids, relevance_matrix
from .pairs import PairSelection, draw_pairs, select_pairs
from .style import PairStyle

__all__ = ['plot_bilrp', 'plot_bilrp_stack', 'marginal_heats', 'bilrp_figsize']

#: margin (inches) around the BiLRP picture; height (inches) per title line of 9 pt
_MARGIN = 0.04
_LINE = 9 * 1.22 / 72
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


def bilrp_figsize(shape_a, shape_b, marginals: bool = True, title: Optional[str] = None,
                  width: float = 7.0, colorbar: bool = True) -> tuple:
    """The size (inches) of a :func:`plot_bilrp` figure ``width`` wide with no empty space, for images of spatial
    shapes ``shape_a`` and ``shape_b``: the height from their aspect plus the title lines."""
    return (width, _height(_bilrp_layout(shape_a, shape_b, marginals, title, colorbar), width))


def _height(layout: dict, width: float) -> float:
    """The height (inches) of a picture of ``layout`` that is ``width`` inches wide with no empty space."""
    return layout['fixed_h'] + (width - layout['fixed_w']) / layout['pixels_w'] * layout['pixels_h']


def plot_bilrp(result, x_a, x_b, index: int = 0, k: Optional[int] = 20, threshold: Optional[float] = None,
               by: str = 'abs', *, style: Union[None, str, PairStyle] = None, patch=None,
               title: Union[None, str, bool] = True, fig=None, figsize: Optional[tuple] = None, denormalize=None,
               upsample: Union[bool, str] = 'auto', show: bool = False, **style_fields):
    r"""The standard BiLRP picture of pair ``index``: both images with lines for the top patch pairs, and the
    two marginal heatmaps below, each with a colorbar.

    Parameters
    ----------
    result : BiLRPResult or torch.Tensor
        The engine's result, or a pooled relevance ``(P_a, P_b)``/``(B, P_a, P_b)`` (then give ``patch``, the patch
        size or PatchGrid(s)).
    x_a, x_b : torch.Tensor or array
        The explained images (batches or single images), values in [0, 1] unless ``denormalize`` is given: ImageNet's
        constants (``'imagenet'``), ``(mean, std)``, or a torchvision transform such as ``weights.transforms()``
        (values outside [0, 1] are refused, never rescaled).
    index : int
        Which pair of a batch.
    k, threshold, by :
        The top-``k`` pairs by ``by`` (``'abs'``, ``'value'``, ``'negative'``; clamped to the number of patch pairs
        with a warning), or all pairs with ``|R| >= threshold * max|R|``.
    style : PairStyle or {'lines', 'paper'}, optional
        The look (:class:`~zennit_bilrp.app.viz.style.PairStyle`); ``'paper'``: the BiLRP paper's arcs, relevance
        divided by :math:`(\operatorname{mean} R^4)^{1/4}`, values below 0.25 dropped (``k``, ``threshold`` ignored).
    title : str or bool
        A title; ``True`` states similarity and total relevance (from a BiLRPResult).
    fig, figsize, show :
        Draw into this (sub)figure, or a new one of ``figsize`` (default: :func:`bilrp_figsize`); ``plt.show()``.
    upsample : bool or 'auto'
        Place a relevance pooled on a feature map (:func:`~zennit_bilrp.scale.approximations.explain_at_layer`)
        over the images; ``'auto'``: for results that name their ``extras['layer']``.
    **style_fields
        :class:`~zennit_bilrp.app.viz.style.PairStyle` fields overriding ``style``: ``background``, ``fade``,
        ``linewidth``, ``alpha``, ``curve``, ``markers``, ``cmap``, ``marginals``, ``colorbar``.

    Returns
    -------
    matplotlib.figure.Figure
        Axes labelled ``'pairs'``, ``'marginal_a'``, ``'marginal_b'``, ``'colorbar_a'``, ``'colorbar_b'``.
    """
    style = PairStyle.of(style, **style_fields)
    image_a = as_image(x_a, index, 'x_a', denormalize=denormalize)
    image_b = as_image(x_b, index, 'x_b', denormalize=denormalize)
    grid_a, grid_b = patch_grids(result, patch, image_a, image_b, upsample)
    check_pooled_sizes((image_a, grid_a, 'x_a'), (image_b, grid_b, 'x_b'))
    matrix = relevance_matrix(result, index)
    pairs = select_pairs(matrix, grid_a, grid_b, k=k, threshold=threshold, by=by, style=style.selection)
    title = _bilrp_title(title, result, matrix, pairs, index, threshold, style.selection)
    heats = marginal_heats(result, matrix, (image_a, image_b), (grid_a, grid_b), index) if style.marginals else []
    layout = _bilrp_layout(image_a.shape[:2], image_b.shape[:2], style.marginals, title, style.colorbar)
    fig, placement, ax = _bilrp_canvas(fig, figsize, layout, style, show)
    draw_pairs(ax, image_a, image_b, pairs, gap=layout['gap'], vmax=1.0 if style.paper else None, style=style)
    ax.set_aspect('auto')  # see _bilrp_canvas
    _draw_marginals(fig, placement, heats, (0, image_a.shape[1] + layout['gap']), style)
    if title is not None:
        ax.set_title(title, color=style.colors['text'], fontsize=9, pad=4)
    if show:
        show_figure(fig)
    return fig


def _bilrp_canvas(fig, figsize: Optional[tuple], layout: dict, style: PairStyle, show: bool) -> tuple:
    """The (sub)figure (new: ``figsize``, default 7 inches wide with no empty space), the placement of the axes, and
    the axes of the pairs.

    The rectangles already have the images' aspect: drawing with aspect ``'auto'`` keeps every axes exactly in its
    rectangle, so that the marginals stay under their images even if a layout engine resizes the (sub)figure."""
    if figsize is None and fig is None:
        figsize = (7.0, _height(layout, 7.0))
    fig = new_figure(fig, figsize, style.background, pyplot=show)
    placement = _BiLRPPlacement(fig, layout)
    return fig, placement, fig.add_axes(placement.pairs_rect(), label='pairs')


def _draw_marginals(fig, placement: _BiLRPPlacement, heats: list, columns: tuple, style: PairStyle) -> None:
    """The marginal heatmaps under their images, each titled and with a colorbar on request."""
    colors = style.colors
    for side, heat, column in zip('ab', heats, columns):
        hax = fig.add_axes(placement.marginal_rect(column, heat.shape), label=f'marginal_{side}')
        image = draw_heatmap(hax, heat, style.background, style.cmap)
        hax.set_aspect('auto')
        hax.set_title(f"marginal of x{'' if side == 'a' else chr(39)}", color=colors['text'], fontsize=9, pad=3)
        if style.colorbar:
            cax = fig.add_axes(placement.colorbar_rect(column, heat.shape), label=f'colorbar_{side}')
            add_colorbar(fig, image, cax, colors, 'relevance')


def _bilrp_title(title, result, matrix: np.ndarray, pairs: PairSelection, index: int,
                 threshold: Optional[float], selection: str = 'lines') -> Optional[str]:
    """The title of :func:`plot_bilrp`: ``title`` if a string; for ``True`` similarity, total and the pairs drawn
    (when ``result`` has similarities); else none."""
    if isinstance(title, str):
        return title
    if title is not True or not hasattr(result, 'similarity'):
        return None
    head = f'similarity y = {float(result.similarity[index]):.3f}, sum of R = {float(matrix.sum()):.3f}; '
    if selection == 'paper':
        return head + f'{len(pairs.values)} patch pairs with |R| / (mean R^4)^(1/4) >= 0.25 (red +, blue -)'
    what = 'strongest' if threshold is None else f'|R| >= {threshold:g} max'
    layer = getattr(result, 'extras', {}).get('layer')
    if layer is not None:
        head = f'explained at layer {layer!r}: ' + head
    return head + f'{len(pairs.values)} {what} patch pairs (red +, blue -)'


def _upsampled_marginal(marginal_patches: np.ndarray, grid, shape) -> np.ndarray:
    patches = marginal_patches.reshape(grid.grid)
    heat = np.kron(patches, np.ones(grid.patch)) / float(np.prod(grid.patch))
    return heat[:shape[0], :shape[1]]


def marginal_heats(result, matrix: np.ndarray, images: tuple, grids: tuple, index: int) -> list:
    r"""The two marginal heatmaps of pair ``index``: the result's exact ones where present, else the pooled
    marginals :math:`\sum_{p'} R_{pp'}` and :math:`\sum_p R_{pp'}` of ``matrix`` spread evenly over each patch."""
    heats = []
    for side, image, grid, axis in zip('ab', images, grids, (1, 0)):
        exact = getattr(result, f'marginal_{side}', None)
        if exact is not None:
            heats.append(as_heatmap(exact, index))
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


def plot_bilrp_stack(items: Sequence[tuple], k: Optional[int] = 20, background: Optional[str] = None,
                     width: float = 7.0, spacing: float = 0.1, show: bool = False, **kwargs):
    """Several :func:`plot_bilrp` pictures stacked in one figure, each exactly as high as its images and title
    need (no empty band between them).

    Parameters
    ----------
    items : sequence of tuple
        ``(result, x_a, x_b, title)`` per picture (``title`` a string, or None/True as in :func:`plot_bilrp`).
    k : int, optional
        Lines per picture.
    background : {'light', 'dark'}, optional
        Color theme (default: the style's, ``'light'``).
    width : float
        Figure width (inches).
    spacing : float
        Space between the pictures (inches).
    **kwargs
        Passed on to :func:`plot_bilrp` (e.g. ``threshold``, ``by``, ``style`` or style fields such as
        ``marginals``).

    Returns
    -------
    matplotlib.figure.Figure
        One subfigure per picture (``fig.subfigs[::2]``), separated by empty ones of height ``spacing``.
    """
    if not items:
        raise ValueError('plot_bilrp_stack needs at least one (result, x_a, x_b, title) item')
    fields, kwargs = PairStyle.split(kwargs)
    if background is not None:
        fields['background'] = background
    style = PairStyle.of(kwargs.pop('style', None), **fields)
    heights = []
    for number, item in enumerate(items):
        if len(item) != 4:
            raise ValueError(f'item {number} must be (result, x_a, x_b, title), got {len(item)} entries')
        _, x_a, x_b, title = item
        shapes = as_image(x_a, name='x_a').shape[:2], as_image(x_b, name='x_b').shape[:2]
        heights.append(bilrp_figsize(*shapes, marginals=style.marginals, title=title if isinstance(title, str)
                                     else None, width=width, colorbar=style.colorbar)[1])
    ratios = [value for height in heights for value in (height, spacing)][:-1]
    fig = new_figure(None, (width, sum(ratios)), style.background, pyplot=show)
    subfigs = fig.subfigures(len(ratios), 1, height_ratios=ratios, hspace=0) if len(ratios) > 1 else [fig]
    for subfig, (result, x_a, x_b, title) in zip(subfigs[::2], items):
        plot_bilrp(result, x_a, x_b, k=k, fig=subfig, title=title, style=style, **kwargs)
    if show:
        show_figure(fig)
    return fig
