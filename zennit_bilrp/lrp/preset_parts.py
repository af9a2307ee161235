r"""The parts the composite presets share (:mod:`~zennit_bilrp.lrp.composites` and
:mod:`~zennit_bilrp.lrp.mobile_composites`): the bounds of ImageNet-normalized pixels for :math:`z^{\mathcal{B}}`,
the lookup of Zennit's base rules, the position of a weight layer in registration order, and two denominator
stabilizers.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from zennit.core import Hook
from zennit.types import Convolution, Linear

from .layers import Normalize

__all__ = [
    'IMAGENET_MEAN', 'IMAGENET_STD', 'imagenet_bounds', 'base_rule', 'weight_layer_index', 'ShiftStabilizer',
    'RelativeStabilizer',
]

#: channel means of torchvision's ImageNet input normalization
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: channel standard deviations of torchvision's ImageNet input normalization
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_bounds(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The bounds of ImageNet-normalized pixels: :math:`l = (0 - \mu) / \sigma`, :math:`h = (1 - \mu) / \sigma`.

    Returns
    -------
    tuple of torch.Tensor
        ``(low, high)``, each of shape ``(1, 3, 1, 1)``, for :math:`z^{\mathcal{B}}` on normalized inputs.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype).reshape(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def base_rule(base: Sequence[tuple], module: torch.nn.Module) -> Optional[Hook]:
    """The rule of Zennit's base layer map (``zennit.composites.layer_map_base()``: activations, pooling, sums) for
    ``module``, or ``None``."""
    return next((hook for types, hook in base if isinstance(module, types)), None)


def weight_layer_index(ctx: dict, module: torch.nn.Module) -> Optional[int]:
    """Position of ``module`` among the convolutional/linear layers in registration order (counted in ``ctx``), or
    ``None`` for any other module (and for :class:`~zennit_bilrp.lrp.layers.Normalize`)."""
    if isinstance(module, Normalize) or not isinstance(module, (Convolution, Linear)):
        return None
    index = ctx.get('layer_index', 0)
    ctx['layer_index'] = index + 1
    return index


class ShiftStabilizer:
    r"""Denominator stabilizer :math:`z \mapsto z + \epsilon`, whatever the sign of :math:`z`.

    This is the stabilizer of the BiLRP authors' LRP-0 (``z = z + 1e-9``); Zennit's own moves :math:`z` away
    from zero (:math:`z + \epsilon\, \mathrm{sign}(z)`), which differs where :math:`z < 0`. An exact zero
    :math:`z + \epsilon = 0` is replaced by :math:`\epsilon`.

    Parameters
    ----------
    epsilon : float
        The shift.
    """

    def __init__(self, epsilon: float = 1e-9):
        self.epsilon = float(epsilon)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        shifted = z + self.epsilon
        return torch.where(shifted == 0, torch.full_like(shifted, self.epsilon), shifted)

    def __repr__(self) -> str:
        return f'ShiftStabilizer(epsilon={self.epsilon:g})'


class RelativeStabilizer:
    r"""Denominator stabilizer :math:`z \mapsto z + \epsilon\, \overline{|z|}\, \mathrm{sign}(z)`, with
    :math:`\overline{|z|}` the mean absolute denominator of each sample (over all its outputs in the layer).

    LRP-:math:`\epsilon` with this stabilizer (the "relative" :math:`\epsilon` of the LRP overview, Montavon et al.
    2019, who set :math:`\epsilon` to a fraction of the activations' spread) absorbs the relevance of outputs whose
    contributions nearly cancel, whatever the layer's scale: with merged BatchNorm the scales differ by orders of
    magnitude between layers, so one absolute :math:`\epsilon` is either negligible or dominant. The mean is taken per
    sample, so one input's relevance never depends on the others in its batch. Zero maps to
    :math:`\epsilon\, \overline{|z|}` (or to the dtype's smallest normal number when the whole layer is zero).

    Parameters
    ----------
    epsilon : float
        :math:`\epsilon \ge 0`, relative to the mean absolute denominator.
    """

    def __init__(self, epsilon: float = 0.25):
        if epsilon < 0:
            raise ValueError(f'epsilon must be non-negative, got {epsilon}')
        self.epsilon = float(epsilon)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, z.dim()))
        scale = z.abs().mean(dim=dims, keepdim=True) if dims else z.abs()
        shift = (self.epsilon * scale).clamp(min=torch.finfo(z.dtype).tiny)
        return z + torch.where(z >= 0, shift, -shift)

    def __repr__(self) -> str:
        return f'RelativeStabilizer(epsilon={self.epsilon:g})'

