"""Canonizers for similarity models, and automatic selection for torchvision architectures.

Zennit's :class:`~zennit.torchvision.ResNetCanonizer` is the recipe for torchvision ResNets: it merges BatchNorm
into the preceding convolutions and replaces each block's in-place ``out += identity`` by a
:class:`zennit.layer.Sum` module, which composites map to the ``Norm`` rule. Exact conservation on ResNets
needs all three: the canonizer, a rule on ``Sum`` (all Zennit composites have one) and ``zero_params=['bias']``
in the composite. Mobile inverted-residual networks (MobileNetV2/V3, EfficientNet) need the same plus constant
squeeze-and-excitation gates: :class:`~zennit_bilrp.lrp.mobile_canonizers.InvertedResidualCanonizer`.
:func:`canonizers_for` picks the right canonizers for a model.
"""
from __future__ import annotations

import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

from ..torch_private import BATCH_NORM
from .mobile_canonizers import InvertedResidualCanonizer, is_inverted_residual_model

__all__ = ['canonizers_for', 'exact_batch_norm_merge', 'ResNetCanonizer', 'VGGCanonizer', 'SequentialMergeBatchNorm',
           'InvertedResidualCanonizer']


def canonizers_for(model: torch.nn.Module) -> list:
    """Canonizers suited to ``model``.

    torchvision ResNets get :class:`ResNetCanonizer`, torchvision VGGs :class:`VGGCanonizer`, torchvision
    MobileNetV2/V3 and EfficientNets :class:`InvertedResidualCanonizer`, any other model with BatchNorm layers
    :class:`SequentialMergeBatchNorm` (merges BatchNorm that directly follows a linear or convolutional layer in
    registration order; this is all that :class:`zennit_bilrp.models.efficientnet.EfficientNetLite` needs, its
    residuals already go through :class:`zennit.layer.Sum`); models without BatchNorm need none.

    Parameters
    ----------
    model : torch.nn.Module
        The model to be explained.

    Returns
    -------
    list
        Fresh canonizer instances, to pass to a composite (``canonizers=``) or to the engine.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    modules = list(model.modules())
    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in modules):
        return [ResNetCanonizer()]
    from torchvision.models import VGG

    if any(isinstance(m, VGG) for m in modules):
        return [VGGCanonizer()]
    if is_inverted_residual_model(model):
        return [InvertedResidualCanonizer()]
    if any(isinstance(m, BATCH_NORM) for m in modules):
        return [SequentialMergeBatchNorm()]
    return []


class _RestoreEps:
    def __init__(self, saved):
        self.saved = saved

    def remove(self) -> None:
        for module, eps in self.saved:
            module.eps = eps
        self.saved = []


def exact_batch_norm_merge(handles) -> _RestoreEps:
    """Make BatchNorm layers merged by Zennit canonizers exact identities.

    Zennit's :class:`~zennit.canonizers.MergeBatchNorm` folds BatchNorm into the preceding layer and sets the
    BatchNorm to weight 1, bias 0, mean 0, variance 1; it then still computes ``x / sqrt(1 + eps)``, so the
    canonized model differs from the original by a factor ``(1 + eps)^(-1/2)`` per merged layer (about 5e-6 with
    the default ``eps = 1e-5``). This sets ``eps = 0`` on exactly the merged layers (found through the canonizer
    instances in ``handles``) so that the canonized model computes the original function.

    Returns
    -------
    object
        A handle whose ``remove()`` restores the original ``eps`` values.
    """
    from zennit.canonizers import MergeBatchNorm
    from zennit.core import Composite

    saved, seen = [], set()

    def walk(obj):
        if isinstance(obj, MergeBatchNorm):
            batch_norm = obj.batch_norm
            if batch_norm is not None and id(batch_norm) not in seen:
                seen.add(id(batch_norm))
                saved.append((batch_norm, batch_norm.eps))
                batch_norm.eps = 0.0
        elif isinstance(obj, Composite):
            walk(obj.handles)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)

    walk(list(handles))
    return _RestoreEps(saved)
