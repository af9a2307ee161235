"""Drawing primitives every figure uses: a new figure in a theme (not registered with pyplot unless shown), a
heatmap with a symmetric color scale, a compact colorbar, and ``plt.show()`` on request."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .style import theme, zennit_colormap

__all__ = ['new_figure', 'draw_heatmap', 'add_colorbar', 'show_figure']


def new_figure(fig, figsize, background: str, pyplot: bool = False):
    """A new figure of ``figsize`` inches (not registered with pyplot unless ``pyplot``), or ``fig`` (a figure or
    subfigure to draw into) with the theme's face color."""
    colors = theme(background)
    if fig is not None:
        fig.set_facecolor(colors['face'])
        return fig
    if pyplot:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, facecolor=colors['face'])
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, facecolor=colors['face'])
    FigureCanvasAgg(fig)  # a canvas so that savefig works; pyplot keeps no reference
    return fig


def draw_heatmap(ax, heat: np.ndarray, background: str, cmap: Optional[str] = None, level: float = 1.0,
                 bound: Optional[float] = None, under: Optional[np.ndarray] = None, opacity: float = 0.75):
    """Draw ``heat`` with a symmetric color scale ``[-bound, bound]`` (default its own largest ``|value|``); with
    ``under`` (an image ``(H, W, 3)``) the heatmap is blended over its gray version.

    Returns
    -------
    matplotlib.image.AxesImage
        The heatmap's image (for a colorbar).
    """
    colors = theme(background)
    bound = bound if bound is not None and bound > 0 else (float(np.abs(heat).max()) or 1.0)
    extent = (-0.5, heat.shape[1] - 0.5, heat.shape[0] - 0.5, -0.5)
    if under is not None:
        gray = under.mean(axis=2)
        ax.imshow(gray, cmap='gray', vmin=0, vmax=1, interpolation='antialiased', extent=extent)
    image = ax.imshow(heat, cmap=zennit_colormap(cmap or colors['cmap'], level), vmin=-bound, vmax=bound,
                      interpolation='nearest', extent=extent, alpha=opacity if under is not None else None)
    ax.set_axis_off()
    return image


def add_colorbar(fig, image, cax, colors: dict, label: str, orientation: str = 'horizontal'):
    """A colorbar of ``image`` in the axes ``cax``, labelled at its two ends and zero, in the theme ``colors``."""
    bar = fig.colorbar(image, cax=cax, orientation=orientation)
    low, high = image.get_clim()
    bar.set_ticks([low, 0.0, high], labels=[f'{low:.2g}', '0', f'{high:.2g}'])  # three labels never collide
    bar.ax.tick_params(colors=colors['text'], labelsize=6, length=2, pad=1)
    bar.outline.set_edgecolor(colors['text'])
    bar.outline.set_linewidth(0.4)
    bar.set_label(label, color=colors['text'], fontsize=7, labelpad=1)
    bar.ax.xaxis.get_offset_text().set_fontsize(6)
    return bar


def show_figure(fig) -> None:
    """``plt.show()`` (the figures call it only with ``show=True``)."""
    import matplotlib.pyplot as plt

    plt.show()
