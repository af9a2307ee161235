"""Canonizers for mobile inverted-residual networks: MobileNetV2/V3, EfficientNet and EfficientNet-Lite.

Zennit ships canonizers for ResNets and VGGs only. A mobile inverted-residual block (Sandler et al., CVPR 2018;
Howard et al., ICCV 2019; Tan and Le, ICML 2019) computes ``y = x + h(x)`` with
``h = project o [SE] o depthwise o expand``, each convolution followed by BatchNorm. For LRP with conservation
``sum_i R_i(x) = sum_j R_j(y)`` the canonical form needs:

- **BatchNorm merged** into the preceding (1x1 or depthwise) convolution: ``w' = w * gamma / sigma``,
  ``b' = (b - mu) * gamma / sigma + beta`` (:class:`zennit.canonizers.SequentialMergeBatchNorm`, per output
  channel, which for a depthwise convolution is per input channel too);
- **the residual addition as a module**: ``y = Sum(stack(x, h))``, which composites map to Zennit's ``Norm`` rule
  ``R(x) = x / (x + h) R(y)``, ``R(h) = h / (x + h) R(y)`` (the pattern of Zennit's ``ResNetCanonizer``); a plain
  ``x + h`` is invisible to hooks and its gradient copies ``R(y)`` to both summands, doubling relevance;
- **squeeze-and-excitation gates as constants**: ``y = s(x) * x`` with the gate ``s`` (sigmoid or hard sigmoid of
  a pooled two-layer branch) held fixed is an elementwise linear map with no bias, whose LRP-0/epsilon rule is the
  identity ``R(x_i) = x_i s_i / (x_i s_i) R(y_i) = R(y_i)``; relevance flows through the gated path only, none into
  the gate branch (:func:`constant_gate`);
- the activations (ReLU6, Hardswish, SiLU, Hardsigmoid) are elementwise; Zennit's composites give them the
  ``Pass`` rule (relevance passed on unchanged), so each activation must be a module called once per forward;
- **stochastic depth** is the identity in eval mode; a model in training mode with stochastic depth is refused;
- for torchvision's MobileNetV2, the functional average pooling of its ``forward`` becomes an
  ``AdaptiveAvgPool2d`` module, which composites map to ``Norm`` (relevance in proportion to the activations).

All changes are made through :class:`zennit.canonizers.AttributeCanonizer` (instance attributes ``forward`` and
``canonizer_*`` modules, deleted on removal) and :class:`~zennit.canonizers.MergeBatchNorm` (parameters restored
on removal), so the model is exactly as before once the canonizers are removed.
"""
from __future__ import annotations

from typing import Optional

import torch
from torchvision.models.efficientnet import FusedMBConv, MBConv
from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
from torchvision.ops import StochasticDepth
from torchvision.ops.misc import SqueezeExcitation
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.layer import Sum

__all__ = [
    'constant_gate',
    'InvertedResidualSumCanonizer',
    'SqueezeExcitationCanonizer',
    'MobileNetV2PoolCanonizer',
    'InvertedResidualCanonizer',
    'INVERTED_RESIDUAL_TYPES',
    'is_inverted_residual_model',
]

#: torchvision block types whose residual addition :class:`InvertedResidualSumCanonizer` rewrites.
INVERTED_RESIDUAL_TYPES = (InvertedResidualV2, InvertedResidualV3, MBConv, FusedMBConv)


class _ConstantGate(torch.autograd.Function):
    """``y = x * s`` in the forward pass; the backward pass gives ``x`` the incoming gradient and ``s`` none."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return input * gate

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


def constant_gate(input: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Gate ``input`` elementwise with ``gate`` held constant, as an LRP layer.

    Forward: ``y = input * gate`` (broadcast). Backward: the incoming relevance (which is what flows between
    Zennit's hooked layers) is passed to ``input`` unchanged and nothing to ``gate``. This is the LRP-0 rule of the
    bias-free elementwise map ``y_i = s_i x_i`` with ``s`` fixed, ``R(x_i) = x_i s_i / y_i R(y_i) = R(y_i)``; a plain
    product would instead multiply the relevance by ``s`` and send gradient into the gate branch.

    Parameters
    ----------
    input : torch.Tensor
        The gated activations ``(N, C, H, W)``.
    gate : torch.Tensor
        The gate, broadcastable to ``input`` (e.g. ``(N, C, 1, 1)``); detached.

    Returns
    -------
    torch.Tensor
        ``input * gate``.
    """
    try:
        shape = torch.broadcast_shapes(gate.shape, input.shape)
    except RuntimeError:
        shape = None
    if shape != input.shape:
        raise ValueError(f'gate of shape {tuple(gate.shape)} does not broadcast to input {tuple(input.shape)}')
    return _ConstantGate.apply(input, gate.detach())


def _check_stochastic_depth_eval(module: torch.nn.Module, name: str) -> None:
    for sub_name, sub in module.named_modules():
        if isinstance(sub, StochasticDepth) and sub.training and sub.p > 0:
            raise RuntimeError(
                f"stochastic depth '{'.'.join(filter(None, (name, sub_name)))}' is in training mode (it would drop "
                'residual branches at random); call model.eval() first'
            )


class InvertedResidualSumCanonizer(AttributeCanonizer):
    """Route the residual addition of torchvision's inverted-residual blocks through a :class:`zennit.layer.Sum`.

    Applies to MobileNetV2 and MobileNetV3 ``InvertedResidual`` and EfficientNet ``MBConv``/``FusedMBConv``
    blocks that have a residual connection: their ``forward`` becomes ``Sum(stack(x, h(x)))`` (with stochastic
    depth on ``h``, the identity in eval mode). Blocks without a residual connection are left alone.

    Raises
    ------
    RuntimeError
        On :meth:`apply`, if a block's stochastic depth is in training mode.
    """

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: torch.nn.Module) -> Optional[dict]:
        if not isinstance(module, INVERTED_RESIDUAL_TYPES) or not module.use_res_connect:
            return None
        _check_stochastic_depth_eval(module, name)
        forward = cls.forward_v2 if isinstance(module, InvertedResidualV2) else cls.forward_block
        return {'forward': forward.__get__(module), 'canonizer_sum': Sum()}

    @staticmethod
    def forward_v2(self, x: torch.Tensor) -> torch.Tensor:
        """Canonized forward of MobileNetV2's block: ``Sum(stack(x, conv(x)))``."""
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))

    @staticmethod
    def forward_block(self, x: torch.Tensor) -> torch.Tensor:
        """Canonized forward of MobileNetV3/EfficientNet blocks: ``Sum(stack(x, stochastic_depth(block(x))))``."""
        out = self.block(x)
        depth = getattr(self, 'stochastic_depth', None)
        if depth is not None:
            out = depth(out)
        return self.canonizer_sum(torch.stack([x, out], dim=-1))


class SqueezeExcitationCanonizer(AttributeCanonizer):
    """Treat torchvision's squeeze-and-excitation gates as constants: ``forward(x) = constant_gate(x, s(x))``.

    Relevance passes through the gate unchanged to the gated activations (see :func:`constant_gate`); the gate
    branch (pooling, two 1x1 convolutions, activations) receives none, and its layers' rules never run.
    """

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: torch.nn.Module) -> Optional[dict]:
        if isinstance(module, SqueezeExcitation):
            return {'forward': cls.forward.__get__(module)}
        return None

    @staticmethod
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Canonized squeeze-and-excitation forward: ``input * s(input)`` with the gate ``s`` held constant."""
        return constant_gate(input, self._scale(input.detach()))


class MobileNetV2PoolCanonizer(AttributeCanonizer):
    """Give torchvision's :class:`~torchvision.models.MobileNetV2` an ``AdaptiveAvgPool2d`` module.

    Its ``forward`` pools with ``nn.functional.adaptive_avg_pool2d``, whose plain gradient spreads each unit's
    relevance uniformly over the positions; as a module, composites give it the ``Norm`` rule (relevance in
    proportion to the activations, as for the other networks' ``avgpool``).
    """

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: torch.nn.Module) -> Optional[dict]:
        if isinstance(module, MobileNetV2):
            return {'forward': cls.forward.__get__(module), 'canonizer_avgpool': torch.nn.AdaptiveAvgPool2d(1)}
        return None

    @staticmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Canonized MobileNetV2 forward: features, pooling module, flatten, classifier."""
        x = self.canonizer_avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class InvertedResidualCanonizer(CompositeCanonizer):
    """Canonizer for mobile inverted-residual networks.

    Covers torchvision ``mobilenet_v2``, ``mobilenet_v3_small``/``large``, ``efficientnet_b0``-``b7`` and
    ``efficientnet_v2_*``, and :class:`zennit_bilrp.models.efficientnet.EfficientNetLite` (which already adds its
    residuals with :class:`zennit.layer.Sum` and only needs the BatchNorm merge). Combines
    :class:`~zennit.canonizers.SequentialMergeBatchNorm`, :class:`InvertedResidualSumCanonizer`,
    :class:`SqueezeExcitationCanonizer` and :class:`MobileNetV2PoolCanonizer`. Conservation needs, as for
    ResNets, a rule on ``Sum`` (all Zennit composites have one) and ``zero_params=['bias']`` in the composite.

    Examples
    --------
    >>> from torchvision.models import mobilenet_v3_small
    >>> from zennit.composites import EpsilonPlus
    >>> model = mobilenet_v3_small().eval()
    >>> composite = EpsilonPlus(zero_params=['bias'], canonizers=[InvertedResidualCanonizer()])
    """

    def __init__(self):
        super().__init__((
            SequentialMergeBatchNorm(),
            InvertedResidualSumCanonizer(),
            SqueezeExcitationCanonizer(),
            MobileNetV2PoolCanonizer(),
        ))


def is_inverted_residual_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` contains torchvision inverted-residual blocks, squeeze-and-excitation modules or a
    torchvision MobileNetV2 (the models :class:`InvertedResidualCanonizer` changes)."""
    types = INVERTED_RESIDUAL_TYPES + (SqueezeExcitation, MobileNetV2)
    return any(isinstance(module, types) for module in model.modules())
