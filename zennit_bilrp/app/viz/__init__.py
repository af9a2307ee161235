r"""Figures of BiLRP explanations (matplotlib), one idea per module; every name is importable from here too
(``from zennit_bilrp.app.viz import plot_bilrp``).

- :mod:`~zennit_bilrp.app.viz.bilrp_figure`: :func:`plot_bilrp`, the standard BiLRP picture (the two images side
  by side, a line per top patch pair, the two marginal heatmaps below), and :func:`plot_bilrp_stack`, several in
  one figure.
- :mod:`~zennit_bilrp.app.viz.pair_grid`: :func:`plot_pair_grid`, one query against several images, one row per
  pair, on shared scales.
- :mod:`~zennit_bilrp.app.viz.image_text`: :func:`plot_image_text`, an image and a caption (CLIP, SigLIP): lines
  between image patches and caption tokens, the patch marginal, one heatmap per token on one color scale.
- :mod:`~zennit_bilrp.app.viz.matrices`: :func:`plot_relevance_matrix` (patch by patch) and
  :func:`plot_relevance_tensor` (a 4-D mosaic).
- :mod:`~zennit_bilrp.app.viz.critical_paths`: :func:`plot_critical_paths`, relevance flowing between channels.
- :mod:`~zennit_bilrp.app.viz.selection_curve` and :mod:`~zennit_bilrp.app.viz.reconstructions`: the figures of
  neuron selection (:func:`plot_selection_curve`) and feature-map reconstruction (:func:`plot_reconstructions`).
- :mod:`~zennit_bilrp.app.viz.export`: :func:`save_figure` (PNG, SVG, PDF) and :func:`save_heatmap` (with
  Pillow).
- The parts the figures share: :mod:`~zennit_bilrp.app.viz.style` (:class:`PairStyle`, the one style object of
  the pair figures; :data:`THEMES`), :mod:`~zennit_bilrp.app.viz.pairs` (:func:`select_pairs`,
  :func:`draw_pairs`), :mod:`~zennit_bilrp.app.viz.inputs` (images and relevance checked and converted,
  :func:`upsample_grid`) and :mod:`~zennit_bilrp.app.viz.canvas` (figures, heatmaps, colorbars).

All figure functions take the engine's :class:`~zennit_bilrp.core.results.BiLRPResult` (or plain tensors), return
a matplotlib ``Figure`` for further composition and never call ``plt.show()`` unless ``show=True``.
Images are tensors ``(N, C, H, W)``/``(C, H, W)`` or arrays ``(H, W, C)``/``(H, W)`` with values in [0, 1]; inputs
normalized with a mean and standard deviation are shown with ``denormalize=`` (values outside [0, 1] are refused,
never silently rescaled). Results pooled on a feature map
(:func:`~zennit_bilrp.scale.approximations.explain_at_layer`) are placed over the input images.
"""
from .bilrp_figure import plot_bilrp, plot_bilrp_stack
from .critical_paths import plot_critical_paths
from .export import SAVE_FORMATS, heatmap_image, save_figure, save_heatmap
from .image_text import plot_image_text
from .inputs import upsample_grid
from .matrices import plot_relevance_matrix, plot_relevance_tensor
from .pair_grid import plot_pair_grid
from .pairs import PairSelection, draw_pairs, select_pairs
from .reconstructions import plot_reconstructions
from .selection_curve import plot_selection_curve
from .style import THEMES, PairStyle, zennit_colormap

__all__ = [
    'plot_bilrp', 'plot_bilrp_stack', 'plot_image_text', 'plot_relevance_matrix', 'plot_relevance_tensor',
    'plot_pair_grid', 'plot_critical_paths', 'plot_selection_curve', 'plot_reconstructions', 'draw_pairs',
    'select_pairs', 'upsample_grid', 'heatmap_image', 'save_heatmap', 'save_figure', 'zennit_colormap', 'PairSelection',
    'PairStyle', 'THEMES', 'SAVE_FORMATS',
]
