r"""One function that picks the LRP rules for a model: :func:`composite_for`.

Every entry point that needs a composite and was given none (the engine :class:`~zennit_bilrp.core.engine.BiLRP`,
the command line, the demo, the pretrained loader, :class:`~zennit_bilrp.analysis.neurons.NeuronLRP` and
:func:`~zennit_bilrp.analysis.reconstruction.reconstruct`) asks this function, so one model gets one set of rules
wherever it is explained. The choice depends on the architecture (what the model contains) and on what is known of
the input range (``bounds``); a BatchNorm network never gets a composite without the canonizers that merge it.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from zennit.core import Composite

from .canonizers import canonizers_for
from .composites import DepthGamma
from .mobile_composites import MobileEpsilon, is_depthwise, mobile_composite
from .preset_parts import imagenet_bounds

__all__ = ['composite_for', 'NoRulesError', 'BOUNDS', 'resolve_bounds', 'MOBILE_TOP', 'MOBILE_EPSILON']

#: relative depth from which :func:`composite_for` gives mobile networks LRP-epsilon (``benchmarks/rules_study.py``)
MOBILE_TOP = 0.4
#: relative epsilon of those top layers (``benchmarks/rules_study.py``)
MOBILE_EPSILON = 0.03

#: named input ranges ``bounds=`` understands: ImageNet-normalized pixels and raw pixels in [0, 1]
BOUNDS = ('imagenet', 'unit')

#: module types no vision composite has a rule for (the engine's strict mode would refuse them later)
_UNRULED = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.MultiheadAttention, torch.nn.InstanceNorm1d,
            torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d, torch.nn.LocalResponseNorm, torch.nn.RNNBase,
            torch.nn.Transformer, torch.nn.TransformerEncoderLayer)


class NoRulesError(TypeError):
    """:func:`composite_for` has no good set of rules for this model; the message names the module and what to pass."""


BoundsLike = Union[None, str, tuple]


def resolve_bounds(bounds: BoundsLike, dtype: torch.dtype = torch.float64) -> Optional[tuple]:
    """``(low, high)`` for ``bounds`` (``None``, ``'imagenet'``, ``'unit'`` or a ``(low, high)`` pair), or ``None``.

    Raises
    ------
    ValueError
        For an unknown name or a pair that is not two bounds.
    """
    if bounds is None:
        return None
    if isinstance(bounds, str):
        if bounds == 'imagenet':
            return imagenet_bounds(dtype)
        if bounds == 'unit':
            return 0.0, 1.0
        raise ValueError(f'unknown bounds {bounds!r}; give one of {BOUNDS}, a (low, high) pair or None')
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f'bounds must be None, one of {BOUNDS} or a (low, high) pair, got {bounds!r}')
    return tuple(bounds)


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float64)


def _is_transformer(model: torch.nn.Module) -> bool:
    """A Hugging Face model (``config.model_type``), a torchvision or timm vision transformer, or a module holding
    one (e.g. :class:`~zennit_bilrp.lrp.towers.ImageEncoder`)."""
    from .transformers import is_transformer

    return is_transformer(model)


def _unruled(model: torch.nn.Module) -> Optional[str]:
    for name, module in model.named_modules():
        if isinstance(module, _UNRULED):
            return f"'{name}' ({type(module).__name__})" if name else f'the model itself ({type(module).__name__})'
    return None


def _transformer_composite(model: torch.nn.Module) -> Composite:
    """:class:`~zennit_bilrp.lrp.transformers.TransformerLRP` for a supported transformer (else a clear error)."""
    from .transformers import TransformerLRP, check_supported

    check_supported(model)
    return TransformerLRP()


def _check_ruled(model: torch.nn.Module) -> None:
    """Raise :class:`NoRulesError` if ``model`` holds a layer no vision composite has a rule for."""
    where = _unruled(model)
    if where is not None:
        raise NoRulesError(
            f'composite_for has no rules for layer {where}: pass composite= explicitly (a Zennit composite with a '
            'rule for every layer, and the canonizers the model needs), e.g. TransformerLRP() for supported '
            'Hugging Face encoders'
        )


def _convolutional_composite(model: torch.nn.Module, bounds: BoundsLike, canonizers: Optional[Sequence],
                             conservative: bool) -> Composite:
    """The choice of :func:`composite_for` for convolutional/linear networks (depthwise or not)."""
    low_high = resolve_bounds(bounds, _model_dtype(model))
    low, high = (None, None) if low_high is None else low_high
    chosen = canonizers_for(model) if canonizers is None else list(canonizers)
    if any(is_depthwise(module) for module in model.modules()):
        if conservative:
            return mobile_composite(model, imagenet=False, low=low, high=high, canonizers=chosen)
        return MobileEpsilon(low=low, high=high, top=MOBILE_TOP, epsilon=MOBILE_EPSILON, canonizers=chosen)
    if low_high is None:
        return DepthGamma(zero_params=['bias'], canonizers=chosen)
    return DepthGamma(first='zbox', low=low, high=high, zero_params=['bias'], canonizers=chosen)


def composite_for(model: torch.nn.Module, bounds: BoundsLike = None,
                  canonizers: Optional[Sequence] = None, conservative: bool = False) -> Composite:
    r"""The recommended LRP composite for ``model``, with the canonizers it needs.

    - Transformer encoders (BERT-family text encoders, ViT, DINOv2, CLIP and SigLIP towers, torchvision and timm
      vision transformers; wrapped or not): :class:`~zennit_bilrp.lrp.transformers.TransformerLRP` (its own
      canonizers, the default rule family).
    - Networks with depthwise convolutions (EfficientNet, EfficientNet-Lite, MobileNetV2/V3):
      :class:`~zennit_bilrp.lrp.mobile_composites.MobileEpsilon` (``top`` :data:`MOBILE_TOP`, ``epsilon``
      :data:`MOBILE_EPSILON`): :math:`z^{\mathcal{B}}` at the pixels without the stem's stride grid, :math:`z^+` below,
      LRP-:math:`\epsilon` with the biases in the top layers. Chosen on the correspondence benchmark
      (``benchmarks/rules_study.py``): on the pretrained EfficientNet-Lite0 its explanations point at truly matching
      image parts far more often than :math:`z^+` everywhere, whose explanations hardly depend on the embedding unit
      (top singular share of the factors about 0.9). Relevance is not conserved exactly (the biases absorb part of
      it); with ``conservative=True``, :func:`~zennit_bilrp.lrp.mobile_composites.mobile_composite` (:math:`z^+`), which
      conserves.
    - Other convolutional/linear networks (ResNet, VGG, plain CNNs and MLPs):
      :class:`~zennit_bilrp.lrp.composites.DepthGamma` with biases excluded from the rules and
      :math:`z^{\mathcal{B}}` at the pixels when ``bounds`` is known.

    Parameters
    ----------
    model : torch.nn.Module
        The model to be explained (inspected, never changed).
    bounds : None, {'imagenet', 'unit'} or (low, high)
        The range of the input features: ``'imagenet'`` for ImageNet-normalized pixels, ``'unit'`` for pixels in
        :math:`[0, 1]`, a pair of floats or tensors, or ``None`` if unknown (then the first layer takes the rule of
        the layers after it).
    canonizers : sequence, optional
        Canonizers to use instead of :func:`~zennit_bilrp.lrp.canonizers.canonizers_for` ``(model)`` (pass ``[]``
        for none; ignored for transformers, which bring their own).
    conservative : bool
        Prefer rules that conserve relevance exactly (:math:`\sum R = y` up to rounding) over the more informative
        default, where the two differ (networks with depthwise convolutions), e.g. for methods that compare
        relevance totals layer by layer.

    Returns
    -------
    zennit.core.Composite
        A fresh composite (not yet registered).

    Raises
    ------
    NoRulesError
        If the model holds a layer none of these composites has a rule for (LayerNorm, GroupNorm, attention outside
        a supported transformer, recurrent layers); the message names the layer and what to pass instead.
    TypeError
        If ``model`` is not a :class:`torch.nn.Module`.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    if _is_transformer(model):
        return _transformer_composite(model)
    _check_ruled(model)
    return _convolutional_composite(model, bounds, canonizers, conservative)
