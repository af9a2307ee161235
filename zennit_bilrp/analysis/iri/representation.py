"""The representation an IRI matches: the layer (:func:`resolve_layer`), the flattened representation
:math:`g(x)` at it (:func:`representation`) and the normalized distance of two representations
(:func:`representation_distance`)."""
from __future__ import annotations

from typing import Optional

import torch

from ...core.checks import check_input
from ...lrp.layers import CaptureLayer, get_layer

__all__ = ['resolve_layer', 'representation', 'representation_distance', 'normalized_distance', 'check_images']


def resolve_layer(model: torch.nn.Module, layer: Optional[str] = None) -> str:
    """The module name of the representation layer.

    ``None`` picks the penultimate pooled representation: a module named ``avgpool`` (torchvision ResNets, the
    demo encoder), else the last adaptive average-pooling module, else the model output (``''``). A given name
    must be one of ``model.named_modules()`` (``''`` is the model output).
    """
    names = dict(model.named_modules())
    if layer is None:
        if 'avgpool' in names:
            return 'avgpool'
        pools = [name for name, module in names.items() if isinstance(
            module, (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d))]
        return pools[-1] if pools else ''
    get_layer(model, layer)
    return layer


def check_images(x: torch.Tensor, name: str) -> torch.Tensor:
    """:func:`~zennit_bilrp.core.checks.check_input`, plus what IRIs need: 4-D images with values in [0, 1]."""
    check_input(x, name)
    if x.dim() != 4:
        raise ValueError(f'{name} has shape {tuple(x.shape)}; expected a non-empty image batch (N, C, H, W)')
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f'{name} has values in [{lo:.4g}, {hi:.4g}]; images must lie in [0, 1] (undo any '
                         'normalization and put it inside the model)')
    return x


@torch.no_grad()
def representation(model: torch.nn.Module, x: torch.Tensor, layer: Optional[str] = None,
                   batch_size: Optional[int] = None) -> torch.Tensor:
    """The flattened representation ``g(x)`` at ``layer`` (default: :func:`resolve_layer`), ``(N, h)``."""
    with CaptureLayer(model, resolve_layer(model, layer), flatten=True) as capture:
        if batch_size is None:
            return capture(x)
        return torch.cat([capture(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def normalized_distance(rep: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    r""":math:`\|r - r_\mathrm{ref}\|_2 / \|r_\mathrm{ref}\|_2` per row of two ``(N, h)`` representations."""
    return (rep - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(torch.finfo(ref.dtype).tiny)


@torch.no_grad()
def representation_distance(model: torch.nn.Module, x: torch.Tensor, reference: torch.Tensor,
                            layer: Optional[str] = None) -> torch.Tensor:
    r"""Normalized representation distance :math:`\|g(x) - g(x_\mathrm{ref})\|_2 / \|g(x_\mathrm{ref})\|_2`,
    ``(N,)``."""
    if x.shape != reference.shape:
        raise ValueError(f'x {tuple(x.shape)} and reference {tuple(reference.shape)} differ in shape')
    with CaptureLayer(model, resolve_layer(model, layer), flatten=True) as capture:
        return normalized_distance(capture(x), capture(reference))
