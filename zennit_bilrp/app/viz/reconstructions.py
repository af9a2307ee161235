"""DeconvNet reconstructions beside LRP heatmaps of selected channels (:func:`plot_reconstructions`), from a
:class:`~zennit_bilrp.analysis.reconstruction.Reconstruction`."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ['plot_reconstructions']


def _normalize_rgb(image: torch.Tensor) -> torch.Tensor:
    """Map a signed ``(3, H, W)`` reconstruction to ``[0, 1]`` around gray (as in Zeiler and Fergus' figures)."""
    scale = float(image.abs().max())
    return (0.5 + 0.5 * image / scale).clamp(0, 1) if scale > 0 else torch.full_like(image, 0.5)


def plot_reconstructions(images: torch.Tensor, result, sample: int = 0, axes=None,
                         title: Optional[str] = None):
    """One column per channel: the DeconvNet reconstruction (top) and the LRP heatmap (bottom, red positive),
    with the input image on the left.

    Parameters
    ----------
    images : torch.Tensor
        The inputs ``(N, C, H, W)`` that were reconstructed (shown when they have 3 channels).
    result : Reconstruction
        From :func:`~zennit_bilrp.analysis.reconstruction.reconstruct`.
    sample : int
        Which input of the batch.
    axes : 2-D array of matplotlib axes, optional
        Draw into these (rows: deconvolution and LRP; columns: the input and one per channel).
    title : str, optional
        Figure title (default: the layer and the seeding mode).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    k = len(result.channels)
    rows = 2 if result.lrp is not None else 1
    if axes is None:
        aspect = images.shape[-2] / images.shape[-1] if images.dim() >= 3 else 1.0
        fig, axes = plt.subplots(rows, k + 1, figsize=(1.9 * (k + 1), 1.9 * aspect * rows + 0.7), squeeze=False)
    else:
        fig = axes[0][0].figure
    image = images[sample].detach().cpu().float()
    for row in range(rows):
        shown = image.permute(1, 2, 0).clamp(0, 1).numpy() if image.dim() == 3 and image.shape[0] == 3 else None
        if shown is not None:
            axes[row][0].imshow(shown)
        axes[row][0].set_title('input' if row == 0 else '', fontsize=8)
        axes[row][0].axis('off')
    for col, channel in enumerate(result.channels.tolist()):
        recon = result.deconv[sample, col].detach().cpu().float()
        ax = axes[0][col + 1]
        if recon.dim() == 3 and recon.shape[0] == 3:
            ax.imshow(_normalize_rgb(recon).permute(1, 2, 0).numpy())
        else:
            ax.imshow((recon.reshape(recon.shape[-2:]) if recon.dim() >= 2 else recon[None]).numpy(), cmap='gray')
        ax.set_title(f'ch {channel}: deconv', fontsize=8)
        ax.axis('off')
        if result.lrp is not None:
            heat = result.lrp[sample, col].detach().cpu().float()
            heat = heat.sum(0) if heat.dim() == 3 else heat
            vmax = float(heat.abs().max()) or 1.0
            axes[1][col + 1].imshow(heat.numpy(), cmap='bwr', vmin=-vmax, vmax=vmax)
            axes[1][col + 1].set_title(f'ch {channel}: LRP', fontsize=8)
            axes[1][col + 1].axis('off')
    fig.suptitle(title or f'{result.layer}: DeconvNet reconstruction and LRP of the channel ({result.mode})',
                 fontsize=9)
    return fig
