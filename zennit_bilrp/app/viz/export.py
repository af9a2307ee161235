"""Figures and heatmaps to files: :func:`save_figure` writes PNG, SVG or PDF keeping the background;
:func:`save_heatmap` writes a relevance map as an image file with Pillow (:func:`heatmap_image`, without Zennit's
``imgify``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .inputs import as_heatmap

__all__ = ['save_figure', 'save_heatmap', 'heatmap_image', 'SAVE_FORMATS']

#: file suffixes :func:`save_figure` writes
SAVE_FORMATS = ('.png', '.svg', '.pdf')


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

    heat = as_heatmap(heat)
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
