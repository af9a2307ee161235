"""Canonizers for similarity models, and automatic selection for torchvision architectures.

Zennit's :class:`~zennit.torchvision.ResNetCanonizer` is the recipe for torchvision ResNets: it merges BatchNorm
into the preceding convolutions and replaces each block's in-place ``out += identity`` by a
:class:`zennit.layer.Sum` module, which composites map to the ``Norm`` rule. Exact conservation on ResNets
needs all three: the canonizer, a rule on ``Sum`` (all Zennit composites have one) and ``zero_params=['bias']``
in the composite. :func:`canonizers_for` picks the right canonizers for a model.
"""
from __future__ import annotations

import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

__all__ = ['canonizers_for', 'ResNetCanonizer', 'VGGCanonizer', 'SequentialMergeBatchNorm']


def canonizers_for(model: torch.nn.Module) -> list:
    """Canonizers suited to ``model``.

    torchvision ResNets get :class:`ResNetCanonizer`, torchvision VGGs :class:`VGGCanonizer`, any other model
    with BatchNorm layers :class:`SequentialMergeBatchNorm` (merges BatchNorm that directly follows a linear or
    convolutional layer inside an ``nn.Sequential``); models without BatchNorm need none.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    modules = list(model.modules())
    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in modules):
        return [ResNetCanonizer()]
    from torchvision.models import VGG

    if any(isinstance(m, VGG) for m in modules):
        return [VGGCanonizer()]
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in modules):
        return [SequentialMergeBatchNorm()]
    return []
