r"""Composite presets for mobile inverted-residual networks (EfficientNet, EfficientNet-Lite, MobileNetV2/V3), whose
depthwise convolutions need rules of their own.

- :class:`MobileComposite` (registered as ``'mobile'``; :func:`mobile_composite`): :math:`z^+` everywhere, except
  that depthwise convolution outputs without a positive contribution take the :math:`w^2` rule, so that relevance
  is conserved on trained networks.
- :class:`MobileEpsilon` (registered as ``'mobile_epsilon'``) layers the rules as the LRP overview recommends:
  :math:`z^{\mathcal{B}}` at the pixels (:class:`~zennit_bilrp.lrp.stride_rules.SpreadZBox`, without the stem's
  stride grid), :math:`z^+` below and LRP-:math:`\epsilon` with the biases
  (:class:`~zennit_bilrp.lrp.preset_parts.RelativeStabilizer`) in the top layers;
  :func:`~zennit_bilrp.lrp.choose.composite_for` gives it to networks with depthwise convolutions, where it shows
  which image parts match far better than :math:`z^+` everywhere (``benchmarks/rules_study.py``).

The generic presets (:class:`~zennit_bilrp.lrp.composites.DepthGamma`, the paper's
:class:`~zennit_bilrp.lrp.composites.BiLRPGamma`) are in :mod:`~zennit_bilrp.lrp.composites`, which re-exports
these names.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from zennit.composites import layer_map_base, register_composite
from zennit.core import Composite
from zennit.rules import Epsilon, Flat, Pass, WSquare, ZPlus
from zennit.types import Convolution, ConvolutionStandard, Linear

from .explicit import supports_explicit
from .fast_rules import FastZBox
from .layers import Normalize
from .mobile_rules import ExplicitGamma, ExplicitZPlus, ZPlusWSquare
from .preset_parts import RelativeStabilizer, base_rule, imagenet_bounds, weight_layer_index
from .stride_rules import SpreadZBox

__all__ = ['MobileComposite', 'mobile_composite', 'MobileEpsilon', 'is_depthwise', 'DEPTHWISE_RULES']


def is_depthwise(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a depthwise convolution: a (non-transposed) convolution with ``groups > 1`` and one
    input channel per group, so that every output channel reads a single input channel."""
    return (isinstance(module, ConvolutionStandard) and module.groups > 1
            and module.in_channels == module.groups)


#: rules :class:`MobileComposite` can give the depthwise convolutions
DEPTHWISE_RULES = ('zplus_wsquare', 'wsquare', 'flat', 'zplus', 'epsilon')


@register_composite('mobile')
class MobileComposite(Composite):
    r"""LRP rules that conserve relevance on trained mobile inverted-residual networks.

    EfficientNet, EfficientNet-Lite and MobileNetV2/V3 blocks are a 1x1 expansion, a :math:`k \times k` depthwise
    convolution and a 1x1 projection, each followed by BatchNorm. :math:`z^+` (as in Zennit's
    :class:`~zennit.composites.EpsilonPlus`) redistributes the relevance :math:`R_j` of an output by
    :math:`R_i = x_i w_{ij}^+ / \sum_{i'} x_{i'} w_{i'j}^+ \, R_j` and drops it wherever the denominator is zero. In a
    1x1 convolution over hundreds of channels that almost never happens, but a depthwise output reads one channel
    in a :math:`k \times k` window: after the BatchNorm merge (whose scale may be negative) whole kernels are
    non-positive, and many active outputs are positive only through the merged shift (the bias, excluded from the
    rule by ``zero_params=['bias']``) over a window of zero inputs. Measured on the pretrained
    :func:`~zennit_bilrp.models.efficientnet.efficientnet_lite0` (float64, 128x128, cat photo): 277 of the 1152
    kernels of the last depthwise convolution are non-positive, that layer alone drops 64 % of the relevance, and
    :math:`\sum R / y` of a whole BiLRP explanation is 0.003-0.01. LRP-:math:`\epsilon` there conserves but its
    denominators, without the bias, are near zero and of either sign (:math:`\sum R / y` from -152 to 40); keeping
    the biases absorbs nearly everything.

    The :math:`w^2` rule (Montavon et al., Pattern Recognition 2017), :math:`R_i = \sum_j w_{ij}^2 / \sum_{i'}
    w_{i'j}^2 \, R_j`, conserves whatever the input, but on every depthwise layer it also spreads relevance over
    inactive positions: the heatmaps become a nearly uniform blur with a stride-2 grid. This composite therefore
    gives the depthwise convolutions :class:`~zennit_bilrp.lrp.mobile_rules.ZPlusWSquare`: :math:`z^+` for every
    output that has a positive contribution, :math:`w^2` (within the output's window of its channel) only for those
    that have none. The heatmaps look like those of :math:`z^+` and the relevance is conserved. Which channels are
    relevant is decided by the :math:`z^+` rules of the 1x1 convolutions. Measured with this composite on the
    pretrained EfficientNet-Lite0 (float64, cosine, four skimage photo pairs, 128 and 224 px): :math:`\sum R / y`
    between 0.99990 and 0.99996 (0.9995-0.9998 with plain :math:`w^2`).

    Rules: the first convolution (registration order) :math:`z^{\mathcal{B}}` with bounds ``low``, ``high`` if given
    (e.g. :func:`~zennit_bilrp.lrp.preset_parts.imagenet_bounds` for ImageNet-normalized pixels), else :math:`z^+`;
    depthwise convolutions (:func:`is_depthwise`) ``depthwise``; other convolutions :math:`z^+`; linear layers
    LRP-:math:`\epsilon`; residual sums and average pooling Zennit's ``Norm``
    (:math:`R_i = x_i / \sum_{i'} x_{i'} \, R`), activations and BatchNorm pass-through. The canonizers default to
    :func:`~zennit_bilrp.lrp.canonizers.canonizers_for` of the model the composite is registered to (BatchNorm
    merge, residual sums, constant squeeze-and-excitation gates).

    Parameters
    ----------
    low, high : torch.Tensor or float, optional
        Input bounds for :math:`z^{\mathcal{B}}` in the first layer (both or neither).
    depthwise : {'zplus_wsquare', 'wsquare', 'flat', 'zplus', 'epsilon'}
        Rule of the depthwise convolutions (default ``'zplus_wsquare'``; ``'wsquare'`` and ``'flat'`` conserve but
        blur; ``'zplus'`` and ``'epsilon'`` reproduce the losses above, for comparison).
    epsilon : float
        :math:`\epsilon` of the linear layers (and of ``depthwise='epsilon'``).
    stabilizer : float
        Denominator stabilizer of the other rules.
    zero_params : list of str, optional
        Parameters set to zero in the rules (default ``['bias']``: merged BatchNorm shifts must not absorb
        relevance).
    canonizers : list, optional
        Zennit canonizers; default ``canonizers_for(model)`` at registration.

    Examples
    --------
    >>> from torchvision.models import mobilenet_v3_small
    >>> model = mobilenet_v3_small().eval()
    >>> composite = MobileComposite(*imagenet_bounds())
    """

    def __init__(
        self,
        low: Union[None, float, torch.Tensor] = None,
        high: Union[None, float, torch.Tensor] = None,
        depthwise: str = 'zplus_wsquare',
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        zero_params: Optional[list] = ('bias',),
        canonizers: Optional[list] = None,
    ):
        if (low is None) != (high is None):
            raise ValueError('give both input bounds `low` and `high` (z^B in the first layer), or neither (z+)')
        if depthwise not in DEPTHWISE_RULES:
            raise ValueError(f'depthwise must be one of {", ".join(map(repr, DEPTHWISE_RULES))}, got {depthwise!r}')
        self.low, self.high = low, high
        self.depthwise = depthwise
        self.epsilon = epsilon
        self.stabilizer = stabilizer
        self.zero_params = None if zero_params is None else list(zero_params)
        self.auto_canonizers = canonizers is None
        self.base = layer_map_base(stabilizer)
        super().__init__(module_map=self.mapping, canonizers=canonizers)

    def register(self, module: torch.nn.Module) -> None:
        """Choose the canonizers for ``module`` (unless given), apply them and register the rules."""
        if self.auto_canonizers:
            from .canonizers import canonizers_for

            self.canonizers = canonizers_for(module)
        super().register(module)

    def _depthwise_rule(self):
        kwargs = {'zero_params': self.zero_params}
        if self.depthwise == 'zplus_wsquare':
            return ZPlusWSquare(zero_params=self.zero_params)
        if self.depthwise == 'wsquare':
            return WSquare(stabilizer=self.stabilizer, **kwargs)
        if self.depthwise == 'flat':
            return Flat(stabilizer=self.stabilizer, **kwargs)
        if self.depthwise == 'zplus':
            return ZPlus(stabilizer=self.stabilizer, **kwargs)
        return Epsilon(epsilon=self.epsilon, **kwargs)

    def mapping(self, ctx: dict, name: str, module: torch.nn.Module):
        """The rule of module ``name``: base map, then first layer, depthwise, convolution or linear rule."""
        index = weight_layer_index(ctx, module)
        if index is None:
            return Pass() if isinstance(module, Normalize) else base_rule(self.base, module)
        if index == 0 and self.low is not None:
            return FastZBox(low=self.low, high=self.high, stabilizer=self.stabilizer, zero_params=self.zero_params)
        return self.mapping_below(module)

    def mapping_below(self, module: torch.nn.Module):
        r"""The rule of a convolutional/linear layer other than the first: ``depthwise`` on depthwise convolutions,
        LRP-:math:`\epsilon` on linear layers, :math:`z^+` elsewhere (biases as ``zero_params``)."""
        kwargs = {'zero_params': self.zero_params}
        if is_depthwise(module):
            return self._depthwise_rule()
        if isinstance(module, torch.nn.Linear):
            return Epsilon(epsilon=self.epsilon, **kwargs)
        return ZPlus(stabilizer=self.stabilizer, **kwargs)


def mobile_composite(model: Optional[torch.nn.Module] = None, imagenet: bool = True, **kwargs) -> MobileComposite:
    """:class:`MobileComposite` for ImageNet-normalized pixel inputs (:math:`z^{\\mathcal{B}}` with
    :func:`~zennit_bilrp.lrp.preset_parts.imagenet_bounds` in the first layer) when ``imagenet``, else :math:`z^+`
    there.

    Parameters
    ----------
    model : torch.nn.Module, optional
        If given, the canonizers are chosen for it now (:func:`~zennit_bilrp.lrp.canonizers.canonizers_for`);
        otherwise when the composite is registered.
    imagenet : bool
        Inputs are normalized with :data:`~zennit_bilrp.lrp.preset_parts.IMAGENET_MEAN` and
        :data:`~zennit_bilrp.lrp.preset_parts.IMAGENET_STD`.
    **kwargs
        Further arguments of :class:`MobileComposite`.
    """
    if imagenet and 'low' not in kwargs and 'high' not in kwargs:
        dtype = torch.float64
        if model is not None:
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), dtype)
        kwargs['low'], kwargs['high'] = imagenet_bounds(dtype)
    if model is not None and kwargs.get('canonizers') is None:
        from .canonizers import canonizers_for

        kwargs['canonizers'] = canonizers_for(model)
    return MobileComposite(**kwargs)


@register_composite('mobile_epsilon')
class MobileEpsilon(MobileComposite):
    r"""The LRP overview's layering (Montavon et al. 2019) for mobile inverted-residual networks:
    :math:`z^{\mathcal{B}}` at the pixels, :math:`z^+` in the lower layers, LRP-:math:`\epsilon` with the biases in
    the top layers.

    The :math:`i`-th of the :math:`n` convolutional/linear layers (registration order) is in the *top* when
    :math:`i / (n - 1) \ge` ``top``. Rules:

    - the first layer: :class:`~zennit_bilrp.lrp.stride_rules.SpreadZBox` with bounds ``low``, ``high`` (the
      :math:`z^{\mathcal{B}}` rule without the stride grid of a strided stem), or :math:`z^+` without bounds;
    - lower layers as :class:`MobileComposite`: :math:`z^+` with the biases excluded
      (:class:`~zennit_bilrp.lrp.mobile_rules.ExplicitZPlus`, Zennit's rule with explicit transposes), ``depthwise``
      on depthwise convolutions (default :class:`~zennit_bilrp.lrp.mobile_rules.ZPlusWSquare`), conserving;
    - top layers (depthwise, pointwise, head and linear alike): LRP-:math:`\epsilon`
      :math:`R_i = \sum_j a_i w_{ij} / (z_j + \epsilon \overline{|z|} \mathrm{sign}(z_j)) \, R_j` with the bias in
      :math:`z_j` and the relative stabilizer :class:`~zennit_bilrp.lrp.preset_parts.RelativeStabilizer`
      (``epsilon`` times the layer's mean :math:`|z|`), as :class:`~zennit_bilrp.lrp.mobile_rules.ExplicitGamma`
      with :math:`\gamma = 0`.

    Why: :math:`z^+` in every layer conserves (:class:`MobileComposite`) but its explanations hardly depend on which
    embedding unit is explained (the known pitfall of :math:`z^+` everywhere): in the top blocks of EfficientNet-Lite0
    (5x5 depthwise kernels on a 4 x 6 map at 128 x 192 px) it draws every unit's relevance to the same salient
    region, so the factors :math:`F` keep about 92 % of their energy in one singular direction and BiLRP is nearly
    the outer product of its marginals. Signed LRP-:math:`\epsilon` in the top keeps the relevance of each unit where
    that unit's evidence is; the biases stay in its denominators because without them (merged BatchNorm shifts)
    the denominators vanish and relevance explodes, and the relative :math:`\epsilon` absorbs outputs whose
    contributions cancel. The price is conservation: the biases and :math:`\epsilon` absorb part of the relevance
    (:math:`\sum R / y` below 1). The defaults were chosen on the correspondence benchmark
    (``benchmarks/rules_study.py``).

    Parameters
    ----------
    low, high : torch.Tensor or float, optional
        Input bounds of the first layer's :math:`z^{\mathcal{B}}` (both or neither).
    top : float
        Relative depth in :math:`[0, 1]` from which layers take LRP-:math:`\epsilon` (1: only the last layer; above
        1: none, which gives :class:`MobileComposite` with the spread stem).
    epsilon : float
        Relative :math:`\epsilon` of the top layers (:class:`~zennit_bilrp.lrp.preset_parts.RelativeStabilizer`).
    depthwise : str
        Rule of the depthwise convolutions below the top (see :class:`MobileComposite`).
    spread : bool
        :class:`~zennit_bilrp.lrp.stride_rules.SpreadZBox` (default) or :math:`z^{\mathcal{B}}` as Zennit's
        :class:`~zennit.rules.ZBox` in the first layer.
    top_bias : bool
        Keep the biases in the top layers' denominators (default; ``False`` zeroes them, for comparison).
    stabilizer : float
        Denominator stabilizer of the lower layers' rules.
    canonizers : list, optional
        Zennit canonizers; default ``canonizers_for(model)`` at registration.
    """

    def __init__(
        self,
        low: Union[None, float, torch.Tensor] = None,
        high: Union[None, float, torch.Tensor] = None,
        top: float = 0.4,
        epsilon: float = 0.03,
        depthwise: str = 'zplus_wsquare',
        spread: bool = True,
        top_bias: bool = True,
        stabilizer: float = 1e-6,
        canonizers: Optional[list] = None,
    ):
        if not top >= 0:
            raise ValueError(f'top must be a relative depth >= 0, got {top}')
        super().__init__(low=low, high=high, depthwise=depthwise, stabilizer=stabilizer, canonizers=canonizers)
        self.top = float(top)
        self.top_epsilon = RelativeStabilizer(epsilon)
        self.spread = bool(spread)
        self.top_bias = bool(top_bias)
        self.layer_count = 0

    def register(self, module: torch.nn.Module) -> None:
        """Count the convolutional/linear layers, choose the canonizers (unless given) and register the rules."""
        self.layer_count = sum(isinstance(m, (Convolution, Linear)) and not isinstance(m, Normalize)
                               for m in module.modules())
        super().register(module)

    def is_top(self, index: int) -> bool:
        r"""Whether layer ``index`` (of :attr:`layer_count`) takes the top layers' LRP-:math:`\epsilon`."""
        depth = index / (self.layer_count - 1) if self.layer_count > 1 else 1.0
        return depth >= self.top

    def mapping(self, ctx: dict, name: str, module: torch.nn.Module):
        """The rule of module ``name``: base map, first layer, top LRP-epsilon, depthwise, convolution or linear."""
        index = weight_layer_index(ctx, module)
        if index is None:
            return Pass() if isinstance(module, Normalize) else base_rule(self.base, module)
        if index == 0 and self.low is not None:
            if self.spread and isinstance(module, Convolution) and supports_explicit(module):
                return SpreadZBox(low=self.low, high=self.high, stabilizer=self.stabilizer)
            return FastZBox(low=self.low, high=self.high, stabilizer=self.stabilizer, zero_params=self.zero_params)
        if self.is_top(index):
            zero = None if self.top_bias else ['bias']
            return ExplicitGamma(gamma=0.0, stabilizer=self.top_epsilon, zero_params=zero)
        rule = self.mapping_below(module)
        if type(rule) is ZPlus:  # the same relevance, cheaper to differentiate (patch-major passes)
            return ExplicitZPlus(stabilizer=self.stabilizer, zero_params=self.zero_params)
        return rule
