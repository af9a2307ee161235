"""One query against several images (e.g. its nearest neighbors), one row per pair, on shared scales
(:func:`plot_pair_grid`)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from .bilrp_figure import marginal_heats
from .canvas import add_colorbar, draw_heatmap, new_figure, show_figure
from .inputs import as_image, check_pooled_sizes, patch_grids
from .pairs import clamp_k, draw_pairs, select_pairs
from .style import PairStyle

__all__ = ['plot_pair_grid']


def plot_pair_grid(result, x_query, x_others, k: int = 10, threshold: Optional[float] = None, by: str = 'abs', *,
                   style: Union[None, str, PairStyle] = None, labels: Optional[Sequence[str]] = None,
                   names: Optional[Sequence[str]] = None, query_name: str = 'query', sort: bool = False,
                   overlay: bool = False, headers: bool = True, patch=None, row_height: Optional[float] = None,
                   fig=None, denormalize=None, upsample: Union[bool, str] = 'auto', show: bool = False,
                   **style_fields):
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
    x_query, x_others : torch.Tensor or array
        The query image (one image, or a batch of ``B`` copies) and the ``B`` other images ``(B, C, H, W)``.
    k, threshold, by, style, patch, fig, denormalize, upsample, show, **style_fields :
        As in :func:`~zennit_bilrp.app.viz.bilrp_figure.plot_bilrp` (the rows share one scale, so the paper's
        per-pair normalisation is refused); ``colorbar``: one colorbar for all heatmaps, under the last row.
    labels, names, query_name :
        Row titles in the given order; or names of the ``B`` other images and of the query (default ``'query'``,
        also in the column headers) for the default titles, which add the similarity.
    sort, overlay, headers : bool
        Order the rows by decreasing similarity (needs a BiLRPResult; default: the order of ``x_others``); draw the
        heatmaps over gray versions of their images; column headers above the first row.
    row_height : float, optional
        Height of a row in inches (default: from the images' aspect).

    Returns
    -------
    matplotlib.figure.Figure
        Row ``r`` has the axes labelled ``'pairs_r'`` (and ``'marginal_a_r'``, ``'marginal_b_r'``); the colorbar is
        labelled ``'colorbar'``.
    """
    style = PairStyle.of(style, **style_fields)
    rel, others = _check_grid_inputs(result, x_others, labels, names, sort, style)
    n = rel.shape[0]
    images = [(as_image(x_query, i, 'x_query', denormalize), as_image(others, i, 'x_others', denormalize))
              for i in range(n)]
    grids = patch_grids(result, patch, *images[0], upsample)
    check_pooled_sizes((images[0][0], grids[0], 'x_query'), (images[0][1], grids[1], 'x_others'))
    k = None if threshold is not None else clamp_k(k, grids[0].num_patches * grids[1].num_patches)
    rows = [{'images': images[i], 'title': _row_label(result, labels, names, query_name, i)} for i in range(n)]
    scales = _fill_rows(rows, result, rel, grids, {'k': k, 'threshold': threshold, 'by': by}, style.marginals)
    fig, spec, geometry = _grid_figure(fig, images[0], n, style, headers, row_height, show)
    order, image = torch.argsort(result.similarity.detach().cpu(), descending=True).tolist() if sort else range(n), None
    for number, i in enumerate(order):
        image = _draw_row(fig, spec, number, rows[i], scales, style, overlay, query_name if headers else None,
                          geometry)
    if image is not None and style.colorbar:
        _grid_colorbar(fig, spec, image, n, style, geometry)
    if show:
        show_figure(fig)
    return fig


def _fill_rows(rows: list, result, rel, grids: tuple, selection: dict, marginals: bool) -> dict:
    """Add each row's selected pairs and marginal heatmaps; return the shared scales of lines and heatmaps."""
    for i, row in enumerate(rows):
        matrix = rel[i].detach().cpu().double().numpy()
        row['pairs'] = select_pairs(matrix, *grids, **selection)
        row['heats'] = marginal_heats(result, matrix, row['images'], grids, i) if marginals else []
    lines = max((float(np.abs(row['pairs'].values).max()) for row in rows if row['pairs'].values.size), default=1.0)
    heats = max((float(np.abs(h).max()) for row in rows for h in row['heats']), default=1.0) or 1.0
    return {'lines': lines, 'heats': heats}


def _draw_row(fig, spec, number: int, row: dict, scales: dict, style: PairStyle, overlay: bool,
              header_name: Optional[str], geometry: dict):
    """Row ``number``: the pair with its lines and title, the marginal heatmaps; the column headers above row 0
    (with ``header_name``, the query's name). Returns the last heatmap's image (for the colorbar)."""
    ax = fig.add_subplot(spec[number, 0], label=f'pairs_{number}')
    draw_pairs(ax, *row['images'], row['pairs'], vmax=scales['lines'], style=style)
    ax.set_title(row['title'], color=style.colors['text'], fontsize=8, pad=2, loc='left')
    headers = header_name is not None and number == 0
    if headers:
        _header(fig, ax, f'{header_name} | match: strongest patch pairs (red +, blue -)', style, geometry)
    image = None
    for col, heat in enumerate(row['heats'], 1):
        hax = fig.add_subplot(spec[number, col], label=f'marginal_{"ab"[col - 1]}_{number}')
        image = draw_heatmap(hax, heat, style.background, style.cmap, bound=scales['heats'],
                             under=row['images'][col - 1] if overlay else None)
        if headers:
            _header(fig, hax, f'marginal of {header_name}' if col == 1 else 'marginal of match', style, geometry)
    return image


def _grid_figure(fig, first: tuple, n: int, style: PairStyle, headers: bool, row_height: Optional[float],
                 show: bool) -> tuple:
    """The figure and grid spec of :func:`plot_pair_grid` (``n`` rows shaped like the ``first`` pair of images),
    and its geometry: the total height and the bands of the headers and the colorbar (inches)."""
    image_q, image_0 = first
    h = max(image_q.shape[0], image_0.shape[0])
    w_pair = image_q.shape[1] + image_0.shape[1] + max(2, round(0.04 * max(image_q.shape[1], image_0.shape[1])))
    widths = [w_pair] + ([image_q.shape[1], image_0.shape[1]] if style.marginals else [])
    width = 9.0 if style.marginals else 6.0
    row_height = row_height or width * h / sum(widths) + 0.3
    header_h, bar_h = (0.3 if headers else 0.0), (0.5 if style.marginals and style.colorbar else 0.0)
    total_h = row_height * n + header_h + bar_h
    fig = new_figure(fig, (width, total_h), style.background, pyplot=show)
    spec = fig.add_gridspec(n, len(widths), width_ratios=widths, hspace=0.25, wspace=0.04,
                            top=1 - header_h / total_h, bottom=bar_h / total_h, left=0.01, right=0.99)
    return fig, spec, {'total_h': total_h, 'bar_h': bar_h, 'columns': len(widths)}


def _grid_colorbar(fig, spec, image, n: int, style: PairStyle, geometry: dict) -> None:
    """One colorbar for all marginal heatmaps, centered under the last row's heatmaps."""
    total_h, bar_h = geometry['total_h'], geometry['bar_h']
    left = spec[n - 1, 1].get_position(fig).x0
    right = spec[n - 1, geometry['columns'] - 1].get_position(fig).x1
    cax = fig.add_axes((left + 0.15 * (right - left), 0.55 * bar_h / total_h, 0.7 * (right - left), 0.1 / total_h),
                       label='colorbar')
    add_colorbar(fig, image, cax, style.colors, 'marginal relevance (one scale for all rows)')


def _header(fig, ax, text: str, style: PairStyle, geometry: dict) -> None:
    """A column header centered over ``ax`` in the band above the first row (a figure text labelled 'header')."""
    box = ax.get_position()
    fig.text((box.x0 + box.x1) / 2, 1 - 0.13 / geometry['total_h'], text, ha='center', va='center', fontsize=8,
             fontweight='bold', color=style.colors['text'], label='header')


def _check_grid_inputs(result, x_others, labels: Optional[Sequence[str]], names: Optional[Sequence[str]],
                       sort: bool, style: PairStyle) -> tuple:
    """The relevance ``(B, P_a, P_b)`` and the other images ``(B, C, H, W)`` of :func:`plot_pair_grid`, checked."""
    if style.paper:
        raise ValueError("plot_pair_grid draws its rows on one scale; the 'paper' style normalises each pair on its "
                         "own: use plot_bilrp(..., style='paper') per pair")
    rel = result.relevance if hasattr(result, 'relevance') else torch.as_tensor(result)
    if rel.dim() != 3:
        raise ValueError(f'plot_pair_grid needs B pairs: relevance (B, P_a, P_b), got {tuple(rel.shape)}')
    n = rel.shape[0]
    others = x_others if isinstance(x_others, torch.Tensor) else torch.as_tensor(np.asarray(x_others))
    if others.dim() != 4 or others.shape[0] != n:
        raise ValueError(f'x_others must be a batch of {n} images (B, C, H, W), got {tuple(others.shape)}')
    if labels is not None and len(labels) != n:
        raise ValueError(f'{len(labels)} labels for {n} rows')
    if names is not None and len(names) != n:
        raise ValueError(f'{len(names)} names for {n} rows')
    if sort and not hasattr(result, 'similarity'):
        raise ValueError('sort=True needs the similarities: pass the BiLRPResult, not a relevance tensor')
    return rel, others


def _row_label(result, labels: Optional[Sequence[str]], names: Optional[Sequence[str]], query_name: str,
               index: int) -> str:
    """Title of the row of pair ``index``: the given label, else the names of query and match (default
    ``x'[index]``) and the similarity."""
    if labels is not None:
        return labels[index]
    name = names[index] if names is not None else f"x'[{index}]"
    text = f'{query_name} vs {name}'
    if hasattr(result, 'similarity'):
        text += f': y = {float(result.similarity[index]):.3f}'
    return text
