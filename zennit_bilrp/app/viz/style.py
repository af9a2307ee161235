r"""How the figures look: the two color themes, Zennit's color maps, and :class:`PairStyle`, the one style object of
the pair figures (:func:`~zennit_bilrp.app.viz.bilrp_figure.plot_bilrp`,
:func:`~zennit_bilrp.app.viz.bilrp_figure.plot_bilrp_stack`, :func:`~zennit_bilrp.app.viz.pair_grid.plot_pair_grid`
and :func:`~zennit_bilrp.app.viz.pairs.draw_pairs`).

A style is given once and shared::

    style = PairStyle(background='dark', fade=0.5, colorbar=False)
    plot_bilrp(result, x_a, x_b, style=style)
    plot_pair_grid(result, query, neighbors, style=style)

or by its field names as keywords (``plot_bilrp(..., background='dark')``), which override the fields of
``style``. ``style='paper'`` is ``PairStyle(paper=True)``: the BiLRP paper's look.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Union

__all__ = ['THEMES', 'theme', 'zennit_colormap', 'PairStyle', 'PAPER_CUTOFF']

#: colors of the two backgrounds: figure face, text, positive and negative lines, Zennit heatmap color map
THEMES = {
    'light': {'face': '#ffffff', 'text': '#222222', 'positive': '#d62020', 'negative': '#1f4fd6', 'cmap': 'bwr'},
    'dark': {'face': '#111111', 'text': '#eeeeee', 'positive': '#ff5040', 'negative': '#40a0ff',
             'cmap': 'coldnhot'},
}
#: the BiLRP paper's look: line widths, opacities (at normalised relevance 0 and 1) and arc height
_PAPER = {'linewidth': (0.1, 1.1), 'alpha': (0.0, 0.9), 'curve': 0.06, 'markers': False}
#: the default look: line widths, opacities (at relevance 0 and the largest drawn one), straight lines with markers
_LINES = {'linewidth': (0.5, 2.5), 'alpha': (0.35, 0.95), 'curve': 0.0, 'markers': True}
#: the paper's normalisation: relevance divided by (mean R^4)^(1/4), values below this dropped, the rest clipped to 1
PAPER_CUTOFF = 0.25


def theme(background: str) -> dict:
    """The colors of ``background`` (``'light'`` or ``'dark'``, see :data:`THEMES`)."""
    if background not in THEMES:
        raise ValueError(f"background must be one of {sorted(THEMES)}, got {background!r}")
    return THEMES[background]


def zennit_colormap(name: str = 'bwr', level: float = 1.0):
    """A matplotlib colormap built from Zennit's color map ``name`` (see :data:`zennit.image.CMAPS`)."""
    from matplotlib.colors import ListedColormap
    from zennit.image import palette

    return ListedColormap(palette(name, level=level) / 255.0, name=f'zennit_{name}')


def _pair_of_numbers(value, name: str) -> Optional[tuple]:
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f'PairStyle: {name} must be two numbers (at relevance 0 and at full relevance), got '
                         f'{value!r}') from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f'PairStyle: {name} must be finite, got {value!r}')
    return low, high


@dataclass(frozen=True)
class PairStyle:
    r"""The look of the pair figures, shared by :func:`~zennit_bilrp.app.viz.bilrp_figure.plot_bilrp`,
    :func:`~zennit_bilrp.app.viz.bilrp_figure.plot_bilrp_stack`, :func:`~zennit_bilrp.app.viz.pair_grid.plot_pair_grid`
    and :func:`~zennit_bilrp.app.viz.pairs.draw_pairs`.

    A line for a patch pair of value :math:`v` has width :math:`w_0 + (w_1 - w_0)|v|/v_{max}` and opacity
    :math:`a_0 + (a_1 - a_0)|v|/v_{max}`, red for :math:`v > 0`, blue otherwise. Fields left ``None`` take the
    default of the look (:attr:`paper` or not).

    Attributes
    ----------
    background : {'light', 'dark'}
        Color theme (:data:`THEMES`).
    paper : bool
        The BiLRP paper's figure: all patch pairs whose relevance divided by :math:`(\operatorname{mean} R^4)^{1/4}`
        is at least 0.25 in magnitude, clipped to 1, drawn as arcs (``k`` and ``threshold`` are ignored; see
        :func:`~zennit_bilrp.app.viz.pairs.select_pairs`). Default ``False``: the top pairs as straight lines.
    fade : float
        Blend the images towards the background color by this fraction in [0, 1), so that the lines stand out.
    linewidth : (float, float), optional
        Line widths :math:`(w_0, w_1)` (default (0.5, 2.5); paper (0.1, 1.1)).
    alpha : (float, float), optional
        Opacities :math:`(a_0, a_1)` (default (0.35, 0.95); paper (0.0, 0.9)).
    curve : float, optional
        Arc height of the lines relative to their length (default 0: straight; paper 0.06).
    markers : bool, optional
        Dots at the patch centers (default True; paper False).
    cmap : str, optional
        Zennit color map of the marginal heatmaps (default: the theme's, ``bwr`` or ``coldnhot``).
    marginals : bool
        Draw the two first-order marginal heatmaps.
    colorbar : bool
        Draw colorbars for the marginal heatmaps.
    """
    background: str = 'light'
    paper: bool = False
    fade: float = 0.35
    linewidth: Optional[tuple] = None
    alpha: Optional[tuple] = None
    curve: Optional[float] = None
    markers: Optional[bool] = None
    cmap: Optional[str] = None
    marginals: bool = True
    colorbar: bool = True

    def __post_init__(self):
        theme(self.background)
        if not 0 <= self.fade < 1:
            raise ValueError(f'fade must be in [0, 1), got {self.fade}')
        for name in ('linewidth', 'alpha'):
            object.__setattr__(self, name, _pair_of_numbers(getattr(self, name), name))
        if self.curve is not None and not math.isfinite(self.curve):
            raise ValueError(f'PairStyle: curve must be a finite number, got {self.curve!r}')

    @classmethod
    def of(cls, style: Union[None, str, PairStyle] = None, **fields) -> PairStyle:
        """The style ``style`` (a :class:`PairStyle`; ``'lines'`` or ``None``: the default; ``'paper'``: the
        paper's look) with the given ``fields`` replaced.

        Raises
        ------
        TypeError
            For a keyword that is no field of :class:`PairStyle` (naming it and the fields).
        """
        if style is None or style == 'lines':
            base = cls()
        elif style == 'paper':
            base = cls(paper=True)
        elif isinstance(style, cls):
            base = style
        else:
            raise ValueError(f"style must be 'lines', 'paper' or a PairStyle, got {style!r}")
        unknown = sorted(set(fields) - set(cls.field_names()))
        if unknown:
            raise TypeError(f'unexpected keyword argument(s) {", ".join(map(repr, unknown))}; the style fields are '
                            f'{", ".join(cls.field_names())}')
        return dataclasses.replace(base, **fields) if fields else base

    @classmethod
    def field_names(cls) -> tuple:
        """The names of the fields (the keywords the pair figures accept in place of a style object)."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def split(cls, kwargs: dict) -> tuple[dict, dict]:
        """``kwargs`` split into ``(style fields, the rest)``."""
        names = set(cls.field_names())
        return ({k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names})

    def _look(self, name: str):
        value = getattr(self, name)
        return value if value is not None else (_PAPER if self.paper else _LINES)[name]

    @property
    def colors(self) -> dict:
        """The theme's colors (:func:`theme` of :attr:`background`)."""
        return theme(self.background)

    @property
    def line_widths(self) -> tuple:
        """:math:`(w_0, w_1)` in effect."""
        return self._look('linewidth')

    @property
    def line_alphas(self) -> tuple:
        """:math:`(a_0, a_1)` in effect."""
        return self._look('alpha')

    @property
    def arc(self) -> float:
        """Arc height in effect (0: straight lines)."""
        return float(self._look('curve'))

    @property
    def draw_markers(self) -> bool:
        """Whether dots mark the patch centers."""
        return bool(self._look('markers'))

    @property
    def selection(self) -> str:
        """The pair selection of :func:`~zennit_bilrp.app.viz.pairs.select_pairs`: ``'paper'`` or ``'lines'``."""
        return 'paper' if self.paper else 'lines'
