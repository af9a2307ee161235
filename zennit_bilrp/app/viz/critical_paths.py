"""A critical-path graph of relevance flowing between the channels of layers (:func:`plot_critical_paths`), drawn
from a :class:`~zennit_bilrp.analysis.critical_path.CriticalPathGraph`."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .canvas import new_figure, show_figure
from .style import theme, zennit_colormap

__all__ = ['plot_critical_paths']


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
    colors = theme(background)
    if len(graph.layers) < 2 or len(graph.flows) != len(graph.layers) - 1:
        raise ValueError(f'a critical-path graph needs at least two layers and one flow matrix between each two, got '
                         f'{len(graph.layers)} layers and {len(graph.flows)} flow matrices')
    if ax is None:
        fig = new_figure(None, (2.3 * len(graph.layers) + 1, 4.8), background, pyplot=show)
        ax = fig.add_subplot(1, 1, 1, label='critical_paths')
    top = max(len(c) for c in graph.channels)
    geometry = {'top': top, 'other_y': -0.8}
    for depth, flow in enumerate(graph.flows):
        _draw_flows(ax, graph, depth, np.asarray(flow, dtype=float), geometry, show_other, min_share, colors)
    _draw_nodes(ax, graph, geometry, show_other, colors, background)
    _layer_axis(ax, graph, geometry, show_other, colors)
    ax.set_title(title or f'critical paths (top {top} channels per layer; outlined: strongest chain)', fontsize=9,
                 color=colors['text'])
    if show:
        show_figure(ax.figure)
    return ax.figure


def _layer_axis(ax, graph, geometry: dict, show_other: bool, colors: dict) -> None:
    """The layers as x ticks (name and number of channels), no y axis, limits around the nodes."""
    ax.set_xticks(range(len(graph.layers)))
    ax.set_xticklabels([f'{name}\n({n} ch)' for name, n in zip(graph.layers, graph.n_channels)], fontsize=8,
                       color=colors['text'])
    ax.set_yticks([])
    ax.set_xlim(-0.5, len(graph.layers) - 0.5)
    ax.set_ylim(geometry['other_y'] - 1.0 if show_other else 0.3, geometry['top'] + 0.8)
    ax.set_facecolor(colors['face'])
    for side in ('left', 'right', 'top'):
        ax.spines[side].set_visible(False)
    ax.spines['bottom'].set_color(colors['text'])
    ax.tick_params(colors=colors['text'])


def _node_position(graph, geometry: dict, depth: int, node: int) -> tuple:
    """Plot coordinates of node ``node`` of layer ``depth``: top channels by rank, ``other`` at the bottom."""
    if node < len(graph.channels[depth]):
        return depth, geometry['top'] - node
    return depth, geometry['other_y']


def _draw_flows(ax, graph, depth: int, matrix: np.ndarray, geometry: dict, show_other: bool, min_share: float,
                colors: dict) -> None:
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
        color = 'gray' if other else (colors['positive'] if value > 0 else colors['negative'])
        ax.plot([x0, x1], [y0, y1], color=color, linestyle='--' if other else '-',
                linewidth=0.2 + (1.5 if other else 5.0) * (abs(value) / largest[other]) ** 1.5,
                alpha=0.35 if other else 0.6, zorder=1)


def _draw_nodes(ax, graph, geometry: dict, show_other: bool, colors: dict, background: str) -> None:
    """The nodes of every layer with their labels; the critical chain outlined."""
    from matplotlib.colors import TwoSlopeNorm

    values = [abs(v) for depth, layer in enumerate(graph.relevance) for v in layer[:len(graph.channels[depth])]]
    vmax = max(values) if values and max(values) > 0 else 1.0
    norm = TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    cmap = zennit_colormap('bwr')
    chain = set(graph.critical_chain())
    outline = colors['text']
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
                        textcoords='offset points', ha='center', fontsize=7, color=colors['text'])
