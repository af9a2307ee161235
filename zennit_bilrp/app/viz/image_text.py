r"""The picture of an image–caption explanation (:func:`plot_image_text`): BiLRP of the similarity of an image and a
caption under a CLIP-style model, patch by token
(:class:`~zennit_bilrp.models.clip.ImageTextExplanation`).

Top left, the image with the model's patch grid and the caption's tokens in a column beside it; a line joins each of
the strongest patch–token pairs :math:`(p, t)` (top-:math:`k` by :math:`|R_{pt}|`) from the patch's center to the
token, red for positive and blue for negative relevance, width and opacity growing with :math:`|R_{pt}|` (the
:class:`~zennit_bilrp.app.viz.style.PairStyle` formula); each token is shaded by its marginal :math:`\sum_p R_{pt}`.
Top right, the patch marginal :math:`\sum_t R_{pt}` over the image. Below, one heatmap per token: :math:`R_{pt}` over
the patches, on the gray image, all on one symmetric color scale with one colorbar, so that the panels compare.

A trailing run of one repeated token (SigLIP pads its captions to a fixed length with one token) is shown as one
column, ``token ×n``, whose relevance is the run's sum (``merge_repeats``), so nothing is left out of the totals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from .canvas import add_colorbar, draw_heatmap, new_figure, show_figure
from .inputs import as_image
from .style import PairStyle, zennit_colormap

__all__ = ['plot_image_text', 'display_token', 'TokenColumns', 'token_columns']

#: tokenizer spellings shortened for display
_SHORT = {'<|startoftext|>': '<SOT>', '<|endoftext|>': '<EOT>', '<start_of_text>': '<SOT>',
          '<end_of_text>': '<EOT>'}
#: layout (inches): outer margin, gap between panels, height of a title line, of a panel title, of a colorbar row
_MARGIN, _GAP, _LINE, _PANEL_TITLE, _BAR = 0.12, 0.12, 0.2, 0.24, 0.5
#: the token column beside the image: gap and box width as fractions of the image width
_COLUMN_GAP, _COLUMN_WIDTH = 0.32, 0.5


def display_token(token: str) -> str:
    """A token as the figure writes it: BPE and SentencePiece word marks removed (``'cat</w>'`` -> ``'cat'``,
    ``'Ġcat'``/``'▁cat'`` -> ``'cat'``), CLIP's start and end of text as ``<SOT>``/``<EOT>``."""
    token = str(token)
    if token in _SHORT:
        return _SHORT[token]
    shown = token[:-4] if token.endswith('</w>') else token
    shown = shown.lstrip('Ġ▁')
    return shown if shown.strip() else repr(token)


@dataclass
class TokenColumns:
    """The caption's tokens as the figure shows them.

    Attributes
    ----------
    matrix : numpy.ndarray
        Patch-by-column relevance ``(P, T)``, float64 (a merged run: the sum of its tokens' columns).
    labels : list of str
        One label per column (:func:`display_token`; a merged run ``'token ×n'``).
    positions : list of list of int
        The token positions of each column.
    """
    matrix: np.ndarray
    labels: list
    positions: list


def token_columns(explanation, merge_repeats: bool = True) -> TokenColumns:
    """The columns of :func:`plot_image_text`: one per token, a trailing run of a repeated token (padding) merged
    into one when ``merge_repeats``.

    Raises
    ------
    ValueError
        If the relevance does not fit the tokens and the patch grid.
    """
    relevance = explanation.relevance
    matrix = relevance.detach().cpu().double().numpy() if hasattr(relevance, 'detach') else np.asarray(
        relevance, dtype=np.float64)
    tokens = list(explanation.tokens)
    rows, cols = explanation.grid
    if matrix.shape != (rows * cols, len(tokens)):
        raise ValueError(f'relevance of shape {matrix.shape} does not fit {rows} x {cols} patches and '
                         f'{len(tokens)} tokens')
    if not np.isfinite(matrix).all():
        raise ValueError('the relevance contains NaN or inf values')
    start = len(tokens)
    if merge_repeats:
        while start > 1 and tokens[start - 1] == tokens[-1]:
            start -= 1
        start = len(tokens) if len(tokens) - start < 2 else start
    positions = [[i] for i in range(start)] + ([list(range(start, len(tokens)))] if start < len(tokens) else [])
    labels = [display_token(tokens[group[0]]) + (f' ×{len(group)}' if len(group) > 1 else '') for group in positions]
    merged = np.stack([matrix[:, group].sum(axis=1) for group in positions], axis=1)
    return TokenColumns(merged, labels, positions)


def _check_image(explanation) -> np.ndarray:
    image = as_image(explanation.image, name='explanation.image')
    rows, cols = explanation.grid
    size = (rows * explanation.patch_size[0], cols * explanation.patch_size[1])
    if image.shape[:2] != size:
        raise ValueError(f'the image is {image.shape[0]} x {image.shape[1]} pixels but the {rows} x {cols} grid of '
                         f'{explanation.patch_size[0]} x {explanation.patch_size[1]} patches covers {size[0]} x '
                         f'{size[1]}')
    return image


def _panels(view: TokenColumns, tokens: Optional[Sequence[int]], max_panels: int) -> tuple:
    """Columns that get a heatmap panel (in caption order) and a note when some are left out."""
    if tokens is not None:
        wanted = [int(t) for t in tokens]
        known = {p: c for c, group in enumerate(view.positions) for p in group}
        bad = [t for t in wanted if t not in known]
        if bad:
            raise ValueError(f'tokens {bad} are not positions of the {sum(map(len, view.positions))} tokens')
        chosen = sorted({known[t] for t in wanted})
    else:
        chosen = list(range(len(view.labels)))
    if max_panels < 1:
        raise ValueError(f'max_panels must be positive, got {max_panels}')
    if len(chosen) > max_panels:
        strength = np.abs(view.matrix).sum(axis=0)
        chosen = sorted(sorted(chosen, key=lambda c: -strength[c])[:max_panels])
    left_out = len(view.labels) - len(chosen)
    return chosen, (f'{len(chosen)} of {len(view.labels)} token columns shown as heatmaps' if left_out else '')


def _select(matrix: np.ndarray, k: int, by: str) -> np.ndarray:
    """Flat indices of the ``k`` strongest patch–column pairs (strongest first)."""
    if k < 1:
        raise ValueError(f'k must be positive, got {k}')
    keys = {'abs': np.abs(matrix), 'value': matrix, 'negative': -matrix}
    if by not in keys:
        raise ValueError(f"by must be 'abs', 'value' or 'negative', got {by!r}")
    flat = keys[by].reshape(-1)
    return np.argsort(-flat, kind='stable')[:min(int(k), flat.size)]


class _Layout:
    """Axes rectangles (figure fractions) of :func:`plot_image_text`, placed in inches from the top."""

    def __init__(self, width: float, image_shape: tuple, title_lines: int, panels: int, columns: int):
        height_px, width_px = image_shape
        self.width = width
        inner = width - 2 * _MARGIN
        self.pairs_w = 0.62 * inner
        self.pairs_h = self.pairs_w * height_px / (width_px * (1 + _COLUMN_GAP + _COLUMN_WIDTH))
        self.marginal_w = min(inner - self.pairs_w - 2 * _GAP, (self.pairs_h - _BAR) * width_px / height_px)
        self.marginal_h = self.marginal_w * height_px / width_px
        self.columns = max(1, min(columns, panels))
        self.panel_w = (inner - (self.columns - 1) * _GAP) / self.columns
        self.panel_h = self.panel_w * height_px / width_px
        self.panel_rows = -(-panels // self.columns)
        self.title = title_lines * _LINE + (0.08 if title_lines else 0.0)
        self.top = _MARGIN + self.title + _PANEL_TITLE + self.pairs_h + 0.15
        self.height = self.top + _LINE + self.panel_rows * (_PANEL_TITLE + self.panel_h + _GAP) + _BAR + _MARGIN

    def rect(self, left: float, top: float, width: float, height: float) -> tuple:
        """Inches (left edge, distance from the figure's top) to figure fractions."""
        return (left / self.width, 1 - (top + height) / self.height, width / self.width, height / self.height)

    def pairs(self) -> tuple:
        return self.rect(_MARGIN, _MARGIN + self.title + _PANEL_TITLE, self.pairs_w, self.pairs_h)

    def marginal(self) -> tuple:
        left = self.width - _MARGIN - self.marginal_w - _GAP
        return self.rect(left, _MARGIN + self.title + _PANEL_TITLE, self.marginal_w, self.marginal_h)

    def marginal_bar(self) -> tuple:
        left = self.width - _MARGIN - self.marginal_w - _GAP
        top = _MARGIN + self.title + _PANEL_TITLE + self.marginal_h + 0.08
        return self.rect(left + 0.15 * self.marginal_w, top, 0.7 * self.marginal_w, 0.08)

    def panel(self, index: int) -> tuple:
        row, col = divmod(index, self.columns)
        top = self.top + _LINE + row * (_PANEL_TITLE + self.panel_h + _GAP) + _PANEL_TITLE
        return self.rect(_MARGIN + col * (self.panel_w + _GAP), top, self.panel_w, self.panel_h)

    def colorbar(self) -> tuple:
        top = self.top + _LINE + self.panel_rows * (_PANEL_TITLE + self.panel_h + _GAP) + 0.05
        inner = self.width - 2 * _MARGIN
        return self.rect(_MARGIN + 0.25 * inner, top, 0.5 * inner, 0.1)

    def section_label(self) -> tuple:
        """Figure fractions (x, y) of the heading above the token panels."""
        return _MARGIN / self.width, 1 - (self.top + 0.7 * _LINE) / self.height


def _faded(image: np.ndarray, style: PairStyle) -> np.ndarray:
    face = np.array([int(style.colors['face'][i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return image * (1 - style.fade) + face * style.fade


def _grid_lines(ax, grid: tuple, patch: tuple, color: str, alpha: float) -> None:
    """The model's patch grid as thin lines over the image only (pixel edges at ``-0.5``)."""
    rows, cols = grid
    height, width = rows * patch[0], cols * patch[1]
    ax.hlines([r * patch[0] - 0.5 for r in range(1, rows)], -0.5, width - 0.5, colors=color, linewidth=0.4,
              alpha=alpha, zorder=1.5)
    ax.vlines([c * patch[1] - 0.5 for c in range(1, cols)], -0.5, height - 0.5, colors=color, linewidth=0.4,
              alpha=alpha, zorder=1.5)


def _token_boxes(ax, view: TokenColumns, x0: float, box: float, height: float, style: PairStyle,
                 fontsize: float) -> np.ndarray:
    """The token column: boxes shaded by the token marginal (symmetric scale), labels; returns the box centers (y)."""
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Rectangle

    marginal = view.matrix.sum(axis=0)
    bound = float(np.abs(marginal).max()) or 1.0
    cmap = zennit_colormap(style.cmap or style.colors['cmap'])
    step = height / len(view.labels)
    centers = (np.arange(len(view.labels)) + 0.5) * step - 0.5
    points = ax.figure.bbox.height / ax.figure.dpi * ax.get_position().height * 72 * step / height
    size = min(fontsize, 0.62 * points)
    for label, center, value in zip(view.labels, centers, marginal):
        color = cmap(0.5 + 0.5 * float(np.clip(value / bound, -1, 1)))
        ax.add_patch(Rectangle((x0, center - 0.42 * step), box, 0.84 * step, facecolor=color,
                               edgecolor=style.colors['text'], linewidth=0.4, zorder=2))
        light = np.dot(to_rgb(color), (0.299, 0.587, 0.114)) > 0.5
        ax.text(x0 + box / 2, center, label, ha='center', va='center', fontsize=size, zorder=3,
                color='#111111' if light else '#eeeeee', clip_on=True)
    return centers


def _draw_pairs_panel(ax, explanation, image: np.ndarray, view: TokenColumns, chosen: np.ndarray,
                      style: PairStyle, fontsize: float) -> None:
    """Image, patch grid, token column and one line per chosen patch–column pair."""
    height, width = image.shape[:2]
    colors = style.colors
    x0, box = width * (1 + _COLUMN_GAP) - 0.5, width * _COLUMN_WIDTH
    ax.imshow(_faded(image, style), extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation='antialiased')
    _grid_lines(ax, explanation.grid, explanation.patch_size, colors['text'], 0.35)
    ax.set_xlim(-0.5, x0 + box + 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_aspect('auto')
    ax.set_axis_off()
    centers = _token_boxes(ax, view, x0, box, height, style, fontsize)
    (w_0, w_1), (a_0, a_1) = style.line_widths, style.line_alphas
    n_cols = view.matrix.shape[1]
    values = view.matrix.reshape(-1)[chosen]
    scale = float(np.abs(values).max()) if values.size else 1.0
    scale = scale if scale > 0 else 1.0
    patch_h, patch_w = explanation.patch_size
    grid_cols = explanation.grid[1]
    dots = []
    for index in chosen[::-1]:  # strongest drawn last (on top)
        patch, column = divmod(int(index), n_cols)
        row, col = divmod(patch, grid_cols)
        x, y = (col + 0.5) * patch_w - 0.5, (row + 0.5) * patch_h - 0.5
        value = float(view.matrix[patch, column])
        strength = min(abs(value) / scale, 1.0)
        color = colors['positive'] if value > 0 else colors['negative']
        ax.plot([x, x0], [y, centers[column]], color=color, linewidth=w_0 + (w_1 - w_0) * strength,
                alpha=a_0 + (a_1 - a_0) * strength, solid_capstyle='round', zorder=2.5)
        dots.append((x, y, color))
    if style.draw_markers and dots:
        xs, ys, marks = zip(*dots)
        ax.scatter(xs, ys, s=8, c=list(marks), edgecolors='none', zorder=3)


def _upsampled(heat: np.ndarray, patch: tuple) -> np.ndarray:
    return np.kron(heat, np.ones(patch))


def _title(explanation, title, view: TokenColumns, k_drawn: int, note: Optional[str], extra: str) -> list:
    if isinstance(title, str):
        lines = title.splitlines()
    elif title:
        lines = [f'"{explanation.caption}"'] if getattr(explanation, 'caption', '') else []
        lines.append(f'cosine similarity y = {float(explanation.similarity):.3f}, sum of R = '
                     f'{float(view.matrix.sum()):.3f}; lines: the {k_drawn} strongest patch-token pairs '
                     '(red +, blue -)')
    else:
        lines = []
    lines += [line for line in (extra, note) if line]
    return lines


def _line_style(style: Union[None, str, PairStyle], fields: dict) -> PairStyle:
    """The :class:`~zennit_bilrp.app.viz.style.PairStyle` of :func:`plot_image_text`, which draws straight lines."""
    style = PairStyle.of(style, **fields)
    if style.paper or style.arc:
        raise ValueError("plot_image_text draws straight lines: style='paper' and curve are for image pairs")
    return style


@dataclass
class _Canvas:
    """The figure being drawn by :func:`plot_image_text` and what each of its panels needs."""

    fig: object
    layout: _Layout
    explanation: object
    image: np.ndarray
    view: TokenColumns
    style: PairStyle
    fontsize: float

    def heatmap(self, ax, values: np.ndarray, title: str, pad: float, bound: Optional[float] = None):
        """``values`` (one per patch) over the gray image in ``ax``, titled; returns the image artist."""
        rows, cols = self.explanation.grid
        heat = _upsampled(values.reshape(rows, cols), tuple(self.explanation.patch_size))
        artist = draw_heatmap(ax, heat, self.style.background, self.style.cmap, bound=bound, under=self.image,
                              opacity=0.8)
        ax.set_aspect('auto')
        ax.set_title(title, fontsize=self.fontsize, color=self.style.colors['text'], pad=pad)
        return artist


def _draw(canvas: _Canvas, lines: list, chosen: np.ndarray, panels: Sequence[int]) -> None:
    """Title, pairs panel, patch marginal and token panels of :func:`plot_image_text`."""
    fig, layout, style, fontsize = canvas.fig, canvas.layout, canvas.style, canvas.fontsize
    colors = style.colors
    if lines:
        fig.text(0.5, 1 - (_MARGIN + 0.75 * _LINE) / layout.height, '\n'.join(lines), ha='center', va='top',
                 fontsize=fontsize + 1, color=colors['text'], linespacing=1.3)
    ax = fig.add_axes(layout.pairs(), label='pairs')
    ax.set_title(f'image ({canvas.explanation.grid[0]} x {canvas.explanation.grid[1]} patches) and caption tokens',
                 fontsize=fontsize, color=colors['text'], pad=3)
    _draw_pairs_panel(ax, canvas.explanation, canvas.image, canvas.view, chosen, style, fontsize)
    heat = canvas.heatmap(fig.add_axes(layout.marginal(), label='patch_marginal'), canvas.view.matrix.sum(axis=1),
                          'patch marginal (sum over tokens)', pad=3)
    if style.colorbar:
        add_colorbar(fig, heat, fig.add_axes(layout.marginal_bar(), label='colorbar_patch_marginal'), colors,
                     'relevance')
    _draw_token_panels(canvas, panels)


def _draw_token_panels(canvas: _Canvas, panels: Sequence[int]) -> None:
    """One heatmap per token column, on one color scale, with its heading and colorbar."""
    fig, layout, view, colors = canvas.fig, canvas.layout, canvas.view, canvas.style.colors
    bound = float(np.abs(view.matrix[:, panels]).max()) or 1.0
    x, y = layout.section_label()
    fig.text(x, y, 'relevance of each token over the image (one color scale; after the token: its sum over the '
             'patches)', fontsize=canvas.fontsize, color=colors['text'], va='center')
    image_artist = None
    for index, column in enumerate(panels):
        pax = fig.add_axes(layout.panel(index), label=f'token_{view.positions[column][0]}')
        values = view.matrix[:, column]
        image_artist = canvas.heatmap(pax, values, f'{view.labels[column]}: {values.sum():+.2g}', pad=2, bound=bound)
    if canvas.style.colorbar and image_artist is not None:
        add_colorbar(fig, image_artist, fig.add_axes(layout.colorbar(), label='colorbar'), colors,
                     r'relevance $R_{pt}$ of patch p and token t')


def plot_image_text(explanation, k: int = 12, by: str = 'abs', tokens: Optional[Sequence[int]] = None,
                    merge_repeats: bool = True, max_panels: int = 24, columns: int = 6,
                    title: Union[bool, str] = True, note: Optional[str] = None,
                    style: Union[None, str, PairStyle] = None, width: float = 10.0, fontsize: float = 9.0,
                    fig=None, show: bool = False, **style_fields):
    r"""The picture of an image–caption explanation: patch–token pairs, the patch marginal and one heatmap per token.

    Parameters
    ----------
    explanation : ImageTextExplanation
        From :func:`~zennit_bilrp.models.clip.explain_image_text` (or anything with ``relevance`` ``(P, L)``,
        ``tokens``, ``grid``, ``patch_size``, ``image`` ``(C, H, W)`` in [0, 1], ``similarity`` and ``caption``).
    k : int
        Patch–token pairs drawn as lines.
    by : {'abs', 'value', 'negative'}
        Their ranking: by :math:`|R_{pt}|`, largest positive first, or most negative first.
    tokens : sequence of int, optional
        Token positions that get a heatmap panel (default all).
    max_panels : int
        At most this many panels: the strongest columns by :math:`\sum_p |R_{pt}|`, kept in caption order, the
        title saying how many were left out.
    merge_repeats : bool
        Show a trailing run of one repeated token (padding) as one column with the run's summed relevance.
    columns : int
        Heatmap panels per row.
    title : bool or str
        ``True``: the caption, the similarity, :math:`\sum R` and what the lines show; a string replaces it.
    note : str, optional
        One more title line (e.g. that the model's weights are random).
    style : PairStyle or 'lines', optional
        ``background``, ``fade``, ``linewidth``, ``alpha``, ``markers``, ``cmap`` and ``colorbar`` are used (the
        paper's look and arcs are for image pairs and are refused); fields may also be given as keywords.
    width : float
        Figure width in inches (the height follows).
    fontsize : float
        Font size of the labels (the title one point larger; token labels shrink to fit their boxes).
    fig : matplotlib.figure.Figure, optional
        Draw into this (sub)figure (of the size the layout needs: ``width`` by the height it computes).
    show : bool
        Call ``plt.show()``.

    Returns
    -------
    matplotlib.figure.Figure
        Axes labelled ``'pairs'``, ``'patch_marginal'`` (and ``'colorbar_patch_marginal'``), one ``'token_<i>'``
        per heatmap panel (``i``: the first token position of its column) and ``'colorbar'`` (shared by the panels).
    """
    style = _line_style(style, style_fields)
    image, view = _check_image(explanation), token_columns(explanation, merge_repeats)
    chosen = _select(view.matrix, k, by)
    panels, extra = _panels(view, tokens, max_panels)
    lines = _title(explanation, title, view, len(chosen), note, extra)
    layout = _Layout(width, image.shape[:2], len(lines), len(panels), columns)
    fig = new_figure(fig, (width, layout.height), style.background, pyplot=show)
    _draw(_Canvas(fig, layout, explanation, image, view, style, fontsize), lines, chosen, panels)
    if show:
        show_figure(fig)
    return fig
