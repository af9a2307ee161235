r"""Figures of token-by-token BiLRP explanations of sentence similarity (matplotlib).

- :func:`plot_text_pairs`: the two sentences as two rows of tokens, a line joining each of the strongest token
  pairs :math:`(t, t')` (top-:math:`k` by :math:`|R_{tt'}|`), red for positive and blue for negative relevance,
  width and opacity growing with :math:`|R_{tt'}|`; each token is shaded by its marginal
  :math:`\sum_{t'} R_{tt'}` (or :math:`\sum_t R_{tt'}`) on a symmetric scale.
- :func:`plot_text_matrix`: the matrix :math:`R_{tt'}` with the tokens as labels and a colorbar (symmetric scale,
  Zennit's ``bwr`` map).
- :func:`plot_text_bilrp`: both, one above the other, with the similarity and :math:`\sum R` in the title;
  :func:`plot_text_stack`: several explanations, one below the other, on one figure.

All take a :class:`~zennit_bilrp.models.text.TextExplanation` (or anything with ``relevance`` ``(L_a, L_b)``,
``tokens_a``, ``tokens_b`` and ``similarity``) and return the matplotlib ``Figure`` (or draw into a given axes).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .viz import THEMES, zennit_colormap

__all__ = ['plot_text_pairs', 'plot_text_matrix', 'plot_text_bilrp', 'plot_text_stack', 'SPECIAL_TOKENS']

#: tokens that :func:`plot_text_bilrp` leaves out with ``hide_special=True``
SPECIAL_TOKENS = ('[CLS]', '[SEP]', '<s>', '</s>', '[PAD]', '<pad>')


def _matrix(explanation) -> np.ndarray:
    relevance = explanation.relevance
    matrix = relevance.detach().cpu().double().numpy() if hasattr(relevance, 'detach') else np.asarray(relevance)
    if matrix.ndim != 2 or matrix.shape != (len(explanation.tokens_a), len(explanation.tokens_b)):
        raise ValueError(f'relevance of shape {matrix.shape} does not fit {len(explanation.tokens_a)} x '
                         f'{len(explanation.tokens_b)} tokens')
    return matrix


def _view(explanation, hide_special: bool) -> tuple:
    """(matrix, tokens_a, tokens_b) with special tokens left out if asked."""
    matrix = _matrix(explanation)
    keep_a = [i for i, t in enumerate(explanation.tokens_a) if not (hide_special and t in SPECIAL_TOKENS)]
    keep_b = [j for j, t in enumerate(explanation.tokens_b) if not (hide_special and t in SPECIAL_TOKENS)]
    if not keep_a or not keep_b:
        raise ValueError('no tokens left to show once the special tokens are hidden')
    return (matrix[np.ix_(keep_a, keep_b)], [explanation.tokens_a[i] for i in keep_a],
            [explanation.tokens_b[j] for j in keep_b])


def _positions(tokens: Sequence[str], width: float) -> tuple:
    """Token centers and box widths along a row of length ``width`` (box width grows with the token length)."""
    sizes = np.array([max(len(token), 2) + 1.8 for token in tokens], dtype=float)
    scale = width / sizes.sum()
    edges = np.concatenate([[0.0], np.cumsum(sizes * scale)])
    return (edges[:-1] + edges[1:]) / 2, sizes * scale


def _row_inches(tokens_a: Sequence[str], tokens_b: Sequence[str]) -> float:
    """Figure width (inches) that fits the longer token row at about 11 pt."""
    return 0.8 + 0.115 * max(sum(max(len(t), 2) + 1.8 for t in tokens) for tokens in (tokens_a, tokens_b))


def _bound(values: np.ndarray) -> float:
    bound = float(np.abs(values).max()) if values.size else 0.0
    return bound if bound > 0 else 1.0


def plot_text_pairs(explanation, k: int = 12, ax=None, hide_special: bool = False, background: str = 'light',
                    linewidth: tuple = (0.6, 5.0), alpha: tuple = (0.3, 0.95), fontsize: float = 11.0,
                    labels: Sequence[str] = ('A', 'B'), scale: Optional[float] = None,
                    shade_scale: Optional[float] = None):
    """The two sentences as rows of tokens with lines between the ``k`` strongest token pairs.

    Parameters
    ----------
    explanation : TextExplanation
        The explanation.
    k : int
        Number of pairs drawn (by :math:`|R|`).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default a new figure).
    hide_special : bool
        Leave out ``[CLS]``, ``[SEP]`` and the like (:data:`SPECIAL_TOKENS`).
    background : {'light', 'dark'}
        Color theme.
    linewidth, alpha : tuple of float
        Ranges mapped from :math:`|R| = 0` to the largest drawn :math:`|R|`.
    fontsize : float
        Token font size.
    labels : sequence of str
        Row labels of the two sentences.
    scale : float, optional
        The :math:`|R|` drawn with the widest line (default the largest drawn one); give the same value to
        several pictures to compare them.
    shade_scale : float, optional
        The marginal shaded with the full color (default the largest marginal of this pair).

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    if k < 1:
        raise ValueError(f'k must be positive, got {k}')
    colors = THEMES[background]
    matrix, tokens_a, tokens_b = _view(explanation, hide_special)
    if ax is None:
        width = max(6.0, _row_inches(tokens_a, tokens_b))
        _, ax = plt.subplots(figsize=(width, 2.4), facecolor=colors['face'])
    ax.set_facecolor(colors['face'])
    rows = [{'tokens': tokens, 'y': y, 'marginal': matrix.sum(axis=axis), 'label': label}
            for tokens, y, axis, label in ((tokens_a, _ROW_Y[0], 1, labels[0]), (tokens_b, _ROW_Y[1], 0, labels[1]))]
    for row in rows:
        row['centers'], row['widths'] = _positions(row['tokens'], 1.0)
    _draw_token_lines(ax, matrix, rows, k, scale, colors, linewidth, alpha)
    bound = shade_scale if shade_scale else _bound(np.concatenate([row['marginal'] for row in rows]))
    for row in rows:
        _draw_token_row(ax, row, bound, colors, fontsize)
    ax.set_xlim(-0.05, 1.0 + 0.005)
    ax.set_ylim(_ROW_Y[1] - 0.17, _ROW_Y[0] + 0.17)
    ax.axis('off')
    return ax


#: heights of the two sentence rows and half the height of a token box (axes units)
_ROW_Y, _HALF = (1.0, 0.0), 0.15


def _draw_token_lines(ax, matrix: np.ndarray, rows: list, k: int, scale: Optional[float], colors: dict,
                      linewidth: tuple, alpha: tuple) -> None:
    """Lines between the ``k`` strongest token pairs, width and opacity growing with :math:`|R|` up to ``scale``."""
    flat = matrix.reshape(-1)
    order = np.argsort(-np.abs(flat))[:min(k, flat.size)]
    top = scale if scale is not None else (float(np.abs(flat[order]).max()) if order.size else 1.0)
    top = top if top > 0 else 1.0
    for index in order[::-1]:  # strongest drawn last (on top)
        i, j = divmod(int(index), matrix.shape[1])
        value = float(flat[index])
        strength = min(abs(value) / top, 1.0)
        ax.plot([rows[0]['centers'][i], rows[1]['centers'][j]], [rows[0]['y'] - _HALF, rows[1]['y'] + _HALF],
                color=colors['positive'] if value > 0 else colors['negative'],
                linewidth=linewidth[0] + strength * (linewidth[1] - linewidth[0]),
                alpha=alpha[0] + strength * (alpha[1] - alpha[0]), solid_capstyle='round', zorder=1)


def _draw_token_row(ax, row: dict, bound: float, colors: dict, fontsize: float) -> None:
    """A sentence as boxes of tokens shaded by their marginal relevance (symmetric up to ``bound``), labelled."""
    from matplotlib.patches import FancyBboxPatch

    cmap = zennit_colormap(colors['cmap'])
    y = row['y']
    for token, center, box, value in zip(row['tokens'], row['centers'], row['widths'], row['marginal']):
        color = cmap(0.5 + 0.5 * float(np.clip(value / bound, -1.0, 1.0)))
        ax.add_patch(FancyBboxPatch((center - 0.46 * box, y - _HALF), 0.92 * box, 2 * _HALF,
                                    boxstyle='square,pad=0', facecolor=color,
                                    edgecolor=colors['text'], linewidth=0.4, zorder=2))
        ax.text(center, y, token, ha='center', va='center', fontsize=fontsize, color='#111111', zorder=3)
    ax.text(-0.015, y, row['label'], ha='right', va='center', fontsize=fontsize, fontweight='bold',
            color=colors['text'])


def plot_text_matrix(explanation, ax=None, hide_special: bool = False, background: str = 'light',
                     cmap: Optional[str] = None, colorbar: bool = True, fontsize: float = 10.0,
                     labels: Sequence[str] = ('sentence A', 'sentence B')):
    """The token-by-token relevance matrix with token labels and a colorbar (symmetric color scale).

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    theme = THEMES[background]
    matrix, tokens_a, tokens_b = _view(explanation, hide_special)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * len(tokens_b) + 2.5, 0.4 * len(tokens_a) + 1.5),
                             facecolor=theme['face'])
    bound = _bound(matrix)
    image = ax.imshow(matrix, cmap=zennit_colormap(cmap or theme['cmap']), vmin=-bound, vmax=bound,
                      interpolation='nearest', aspect='auto')
    ax.set_xticks(range(len(tokens_b)), tokens_b, rotation=55, ha='right', rotation_mode='anchor',
                  fontsize=fontsize, color=theme['text'])
    ax.set_yticks(range(len(tokens_a)), tokens_a, fontsize=fontsize, color=theme['text'])
    ax.set_xlabel(labels[1], color=theme['text'], fontsize=fontsize)
    ax.set_ylabel(labels[0], color=theme['text'], fontsize=fontsize)
    ax.tick_params(colors=theme['text'], length=2)
    for spine in ax.spines.values():
        spine.set_color(theme['text'])
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label(r'relevance $R_{tt^\prime}$', color=theme['text'], fontsize=fontsize)
        bar.ax.tick_params(colors=theme['text'], labelsize=fontsize - 1)
    return ax


def _title(explanation, shown: np.ndarray, hide_special: bool) -> str:
    total = float(_matrix(explanation).sum())
    text = f'cosine similarity y = {explanation.similarity:.3f}, sum of all R = {total:.3f}'
    if hide_special:
        text += f' (shown without special tokens: {float(shown.sum()):.3f})'
    return text


def plot_text_bilrp(explanation, k: int = 12, hide_special: bool = False, background: str = 'light',
                    title: Optional[str] = None, fontsize: float = 11.0):
    """Token pairs (:func:`plot_text_pairs`) above the relevance matrix (:func:`plot_text_matrix`), with the
    similarity and the total relevance in the title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    theme = THEMES[background]
    matrix, tokens_a, tokens_b = _view(explanation, hide_special)
    width = max(7.0, _row_inches(tokens_a, tokens_b),
                0.42 * len(tokens_b) + 3.0)
    height_matrix = 0.36 * len(tokens_a) + 1.6
    fig = plt.figure(figsize=(width, 1.7 + height_matrix), facecolor=theme['face'])
    grid = fig.add_gridspec(2, 2, height_ratios=(1.3, height_matrix), width_ratios=(1, 0.9), hspace=0.1,
                            top=1.0 - 0.5 / (1.7 + height_matrix), left=0.08, right=0.98)
    plot_text_pairs(explanation, k=k, ax=fig.add_subplot(grid[0, :]), hide_special=hide_special,
                    background=background, fontsize=fontsize)
    plot_text_matrix(explanation, ax=fig.add_subplot(grid[1, 0]), hide_special=hide_special,
                     background=background, fontsize=fontsize - 1)
    legend = fig.add_subplot(grid[1, 1])
    legend.axis('off')
    listed = min(k, matrix.size, 10)
    lines = [f'strongest {listed} token pairs (A - B: R):']
    for i, j in zip(*np.unravel_index(np.argsort(-np.abs(matrix), axis=None)[:listed], matrix.shape)):
        lines.append(f'  {tokens_a[i]} - {tokens_b[j]}: {matrix[i, j]:+.3f}')
    lines.append('')
    lines.append(f'lines: top {min(k, matrix.size)} pairs by |R|,')
    lines.append('  red +, blue -, width by |R|')
    lines.append('token shading: marginal relevance')
    legend.text(0.22, 1.0, '\n'.join(lines), va='top', ha='left', fontsize=fontsize - 1, color=theme['text'],
                family='monospace', transform=legend.transAxes)
    fig.suptitle(title if title is not None else _title(explanation, matrix, hide_special), color=theme['text'],
                 fontsize=fontsize + 1)
    return fig


def plot_text_stack(explanations: Sequence, titles: Optional[Sequence[str]] = None, k: int = 8,
                    hide_special: bool = False, background: str = 'light', fontsize: float = 11.0):
    """Several token-pair pictures (:func:`plot_text_pairs`), one below the other, each with its own title, on
    shared scales (line widths and token shading comparable across the pairs).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if not len(explanations):
        raise ValueError('plot_text_stack needs at least one explanation')
    if titles is not None and len(titles) != len(explanations):
        raise ValueError(f'{len(titles)} titles for {len(explanations)} explanations')
    theme = THEMES[background]
    views = [_view(e, hide_special) for e in explanations]
    width = max(7.0, max(_row_inches(a, b) for _, a, b in views))
    fig, axes = plt.subplots(len(explanations), 1, figsize=(width, 2.3 * len(explanations)), facecolor=theme['face'],
                             squeeze=False)
    scale = max(_bound(matrix) for matrix, _, _ in views)
    shade = max(_bound(np.concatenate([m.sum(axis=1), m.sum(axis=0)])) for m, _, _ in views)
    for row, (explanation, ax) in enumerate(zip(explanations, axes[:, 0])):
        plot_text_pairs(explanation, k=k, ax=ax, hide_special=hide_special, background=background,
                        fontsize=fontsize, scale=scale, shade_scale=shade)
        label = titles[row] if titles is not None else _title(explanation, views[row][0], hide_special)
        ax.set_title(label, color=theme['text'], fontsize=fontsize)
    fig.tight_layout()
    return fig
