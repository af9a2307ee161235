r"""Composite presets for BiLRP, registered the Zennit way.

- :class:`BiLRPGamma` (registered as ``'bilrp_gamma'``) reproduces the rules of the BiLRP authors' VGG-16 code
  (Eberle et al., "Building and Interpreting Deep Similarity Models", TPAMI 2022; code:
  ``oeberle/BiLRP_explain_similarity``, ``model/bilrp.py``): :math:`z^{\mathcal{B}}` in the first convolution,
  LRP-:math:`\gamma` with :math:`\gamma` set by the layer's index in torchvision's VGG ``features``, LRP-0 in the
  projection on top. Its rules are keyed on that index, so heads added after ``features`` do not move them.
- :class:`DepthGamma` (registered as ``'depth_gamma'``) is a generic schedule for any network: the :math:`i`-th
  of :math:`n` convolutional/linear layers (registration order) gets the :math:`\gamma` found at the same
  relative depth in :data:`DEPTH_GAMMAS`. :func:`bilrp_composite`, the engine's default, is this preset.
- :class:`MobileComposite` (registered as ``'mobile'``; :func:`mobile_composite`) is for mobile inverted-residual
  networks (EfficientNet, EfficientNet-Lite, MobileNetV2/V3): :math:`z^+` everywhere, except that depthwise
  convolution outputs without a positive contribution take the :math:`w^2` rule, so that relevance is conserved
  on trained networks.
- :class:`MobileEpsilon` (registered as ``'mobile_epsilon'``) layers the rules as the LRP overview recommends:
  :math:`z^{\mathcal{B}}` at the pixels (:class:`~zennit_bilrp.lrp.stride_rules.SpreadZBox`, without the stem's
  stride grid), :math:`z^+` below and LRP-:math:`\epsilon` with the biases (:class:`RelativeStabilizer`) in the top
  layers; :func:`~zennit_bilrp.lrp.choose.composite_for` gives it to networks with depthwise convolutions, where it
  shows which image parts match far better than :math:`z^+` everywhere (``benchmarks/rules_study.py``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from zennit.composites import layer_map_base, register_composite
from zennit.core import Composite
from zennit.rules import Epsilon, Flat, Gamma, Pass, WSquare, ZBox, ZPlus
from zennit.types import Convolution, ConvolutionStandard, Linear

from ..torch_private import forward_pre_hooks
from .explicit import supports_explicit
from .fast_rules import FastGamma, FastZBox
from .layers import Normalize
from .mobile_rules import ExplicitGamma, ExplicitZPlus, ZPlusWSquare
from .stride_rules import SpreadZBox

__all__ = [
    'BiLRPGamma', 'DepthGamma', 'bilrp_composite', 'gamma_schedule', 'register_similarity_rules', 'vgg16_gamma',
    'vgg_feature_indices', 'imagenet_bounds', 'ShiftStabilizer', 'DEPTH_GAMMAS', 'VGG16_GAMMAS',
    'VGG16_CONV_INDICES', 'IMAGENET_MEAN', 'IMAGENET_STD', 'MobileComposite', 'mobile_composite', 'is_depthwise',
    'DEPTHWISE_RULES', 'RelativeStabilizer', 'MobileEpsilon',
]

#: channel means of torchvision's ImageNet input normalization
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: channel standard deviations of torchvision's ImageNet input normalization
IMAGENET_STD = (0.229, 0.224, 0.225)
#: indices of the 13 convolutions in torchvision's ``vgg16().features``
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
#: default schedule of :class:`DepthGamma`, read at relative depth (four bands over 13 steps)
DEPTH_GAMMAS = (0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0)


def vgg16_gamma(index: int) -> float:
    r"""The BiLRP authors' :math:`\gamma` for the layer at ``index`` in torchvision's VGG ``features``.

    .. math::

        \gamma(i) = \begin{cases} 0.5 & i \le 10 \\ 0.25 & 11 \le i \le 17 \\ 0.1 & 18 \le i \le 24 \\
        0 & i > 24 \end{cases}

    On VGG-16 these are blocks 1-3 up to conv3_1 (0.5), conv3_2 to conv4_1 (0.25), conv4_2 to conv5_1 (0.1) and
    conv5_2, conv5_3 (0, i.e. LRP-0); ``features[0]`` takes :math:`z^{\mathcal{B}}` instead.

    Parameters
    ----------
    index : int
        Position of the layer in the ``features`` :class:`torch.nn.Sequential` (non-negative).

    Returns
    -------
    float
        The :math:`\gamma` of that layer.
    """
    if index < 0:
        raise ValueError(f'a features index must be non-negative, got {index}')
    if index <= 10:
        return 0.5
    if index <= 17:
        return 0.25
    if index <= 24:
        return 0.1
    return 0.0


#: :math:`\gamma` of each VGG-16 convolution in :class:`BiLRPGamma` (the first one takes :math:`z^{\mathcal{B}}`)
VGG16_GAMMAS = tuple(vgg16_gamma(i) for i in VGG16_CONV_INDICES)


def gamma_schedule(index: int, count: int, gammas: Sequence[float] = DEPTH_GAMMAS) -> float:
    r"""Gamma for layer ``index`` of ``count`` layers, read from ``gammas`` at the same relative depth.

    The layer gets ``gammas[round(index / (count - 1) * (len(gammas) - 1))]`` (the first entry if ``count <= 1``).
    """
    if count <= 1:
        return float(gammas[0])
    position = index / (count - 1) * (len(gammas) - 1)
    return float(gammas[int(round(position))])


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


def vgg_feature_indices(model: torch.nn.Module) -> dict[str, int]:
    """The layers of every VGG-style ``features`` block of ``model``, with their index in it.

    A ``features`` block is a :class:`torch.nn.Sequential` named ``features`` (or ``<prefix>.features``, e.g.
    inside a wrapper), as in torchvision's VGG models.

    Parameters
    ----------
    model : torch.nn.Module
        The model (searched recursively).

    Returns
    -------
    dict
        ``{qualified module name: index in its features block}`` for the direct children of each block; empty if
        the model has none.
    """
    indices = {}
    for name, module in model.named_modules():
        if name.rsplit('.', 1)[-1] == 'features' and isinstance(module, torch.nn.Sequential):
            for child_name, _ in module.named_children():
                indices[f'{name}.{child_name}'] = int(child_name)
    return indices


def _base_rule(base: list, module: torch.nn.Module):
    """The rule of Zennit's base layer map (activations, pooling, sums) for ``module``, or ``None``."""
    return next((hook for types, hook in base if isinstance(module, types)), None)


def _weight_layer_index(ctx: dict, module: torch.nn.Module) -> Optional[int]:
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


_MAX_POOLS = (torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.MaxPool3d)


@register_composite('bilrp_gamma')
class BiLRPGamma(Composite):
    r"""The rules of the BiLRP paper on VGG: :math:`z^{\mathcal{B}}`, LRP-:math:`\gamma` by ``features`` index,
    winner-take-all max pooling and LRP-0 on top.

    Reproduces ``VggLayers.lrp`` of the authors' code (``oeberle/BiLRP_explain_similarity``, ``model/bilrp.py``;
    Eberle et al., TPAMI 2022), with :math:`a` the layer input, :math:`R` the relevance and :math:`j` the outputs:

    - ``features[0]``, :math:`z^{\mathcal{B}}` (Montavon et al., Pattern Recognition 2017, eq. for bounded
      inputs) with :math:`l \le x \le h`:
      :math:`R_i = \sum_j \frac{x_i w_{ij} - l_i w_{ij}^+ - h_i w_{ij}^-}
      {\sum_{i'} (x_{i'} w_{i'j} - l_{i'} w_{i'j}^+ - h_{i'} w_{i'j}^-) + \epsilon_B} R_j`,
      :math:`\epsilon_B =` ``zbox_stabilizer`` (their 1e-6); the bias cancels.
    - every other convolution/linear layer ``features[i]``, LRP-:math:`\gamma` (Montavon et al., "Layer-wise
      relevance propagation: an overview", 2019) with the bias kept in the denominator:
      :math:`R_i = \sum_j \frac{a_i (w_{ij} + \gamma w_{ij}^+)}
      {\sum_{i'} a_{i'} (w_{i'j} + \gamma w_{i'j}^+) + b_j + \gamma b_j^+ + \epsilon} R_j`,
      :math:`\gamma =` ``gamma(i)`` (default :func:`vgg16_gamma`), :math:`\epsilon =` ``stabilizer`` (their 1e-9).
    - max pooling in ``features``, the same ratio without weights, which sends each output's relevance to the
      input that won: :math:`R_i = [i = \arg\max] \, \frac{a_i}{a_j + \epsilon} R_j`.
    - convolution/linear layers outside ``features`` (the projection), LRP-0:
      :math:`R_i = \sum_j \frac{a_i w_{ij}}{z_j + \epsilon} R_j` with :math:`z_j = \sum_i a_i w_{ij} + b_j`.

    Where relevance flows (inputs and outputs of positive ReLU neurons) all denominators but the projection's are
    non-negative, so Zennit's stabilizer (:math:`z + \epsilon\,\mathrm{sign}(z)`) adds :math:`\epsilon` exactly as
    theirs does; the projection, whose outputs have either sign, uses :class:`ShiftStabilizer`. ReLU, flatten and
    the other layers pass relevance on (Zennit's base map). Two differences of the authors' code are not rules and
    stay with the caller: they average-pool 8x8 patches (the engine sum-pools) and loop over units at batch 1.

    Parameters
    ----------
    low, high : torch.Tensor or float, optional
        Bounds of the input for :math:`z^{\mathcal{B}}` (default :func:`imagenet_bounds`, their
        :math:`(0 - \mu)/\sigma` and :math:`(1 - \mu)/\sigma` for ImageNet-normalized pixels).
    gamma : callable
        ``features`` index to :math:`\gamma` (default :func:`vgg16_gamma`).
    stabilizer : float
        :math:`\epsilon` of the gamma, max-pooling and projection rules.
    zbox_stabilizer : float
        :math:`\epsilon_B` of the first layer.
    zero_params : list of str, optional
        Parameters set to zero in the rules (default none: the authors keep the biases).
    canonizers : list, optional
        Zennit canonizers applied before the rules.
    fast : bool
        Use :class:`~zennit_bilrp.lrp.fast_rules.FastGamma` and :class:`~zennit_bilrp.lrp.fast_rules.FastZBox`
        (the same relevance as Zennit's rules, up to rounding, with fewer passes; default True).

    Raises
    ------
    ValueError
        At registration, if the model has no ``features`` :class:`torch.nn.Sequential` (use :class:`DepthGamma`).
    """

    def __init__(
        self,
        low: Union[None, float, torch.Tensor] = None,
        high: Union[None, float, torch.Tensor] = None,
        gamma: Callable[[int], float] = vgg16_gamma,
        stabilizer: float = 1e-9,
        zbox_stabilizer: float = 1e-6,
        zero_params: Optional[list] = None,
        canonizers: Optional[list] = None,
        fast: bool = True,
    ):
        if (low is None) != (high is None):
            raise ValueError('give both input bounds `low` and `high`, or neither (ImageNet-normalized pixels)')
        if low is None:
            low, high = imagenet_bounds()
        if not callable(gamma):
            raise TypeError(f'gamma must map a features index to a float, got {type(gamma).__name__}')
        self.low, self.high = low, high
        self.gamma = gamma
        self.stabilizer = stabilizer
        self.zbox_stabilizer = zbox_stabilizer
        self.zero_params = zero_params
        self.fast = fast
        self.base = layer_map_base(stabilizer)
        self.feature_indices: dict[str, int] = {}
        super().__init__(module_map=self.mapping, canonizers=canonizers)

    def register(self, module: torch.nn.Module) -> None:
        """Find the ``features`` blocks of ``module``, then apply the canonizers and register the rules."""
        indices = vgg_feature_indices(module)
        if not indices:
            raise ValueError(
                f"BiLRPGamma (the BiLRP paper's VGG rules) assigns rules by the index of each layer in a VGG "
                f"`features` nn.Sequential, and {type(module).__name__} has no submodule named 'features'; use "
                "DepthGamma ('depth_gamma') for other architectures"
            )
        self.feature_indices = indices
        super().register(module)

    def mapping(self, ctx: dict, name: str, module: torch.nn.Module):
        """The rule of module ``name``: by its ``features`` index, else LRP-0 for the projection layers."""
        if isinstance(module, Normalize):
            return Pass()
        index = self.feature_indices.get(name)
        kwargs = {'zero_params': self.zero_params}
        if isinstance(module, (Convolution, Linear)):
            if index is None:
                return Epsilon(epsilon=ShiftStabilizer(self.stabilizer), **kwargs)
            if index == 0:
                return (FastZBox if self.fast else ZBox)(low=self.low, high=self.high,
                                                         stabilizer=self.zbox_stabilizer, **kwargs)
            return (FastGamma if self.fast else Gamma)(gamma=float(self.gamma(index)), stabilizer=self.stabilizer,
                                                       **kwargs)
        if index is not None and isinstance(module, _MAX_POOLS):
            return Epsilon(epsilon=self.stabilizer)
        return _base_rule(self.base, module)


@register_composite('depth_gamma')
class DepthGamma(Composite):
    r"""LRP-:math:`\gamma` with a :math:`\gamma` that decreases with relative depth, for any architecture.

    The :math:`i`-th of the :math:`n` convolutional/linear layers (registration order) gets
    :math:`\gamma_i =` :func:`gamma_schedule` :math:`(i, n)`, the entry of ``gammas`` at the same relative depth.
    The LRP-:math:`\gamma` rule (Montavon et al., 2019) is
    :math:`R_i = \sum_j \frac{a_i (w_{ij} + \gamma w_{ij}^+)}{\sum_{i'} a_{i'} (w_{i'j} + \gamma w_{i'j}^+) + \epsilon}
    R_j` (with the bias in the denominator unless ``zero_params=['bias']``). Unlike :class:`BiLRPGamma`, the
    schedule depends on every layer of the model: a head added on top moves it.

    Parameters
    ----------
    gammas : sequence of float
        Schedule read at relative depth (default :data:`DEPTH_GAMMAS`).
    first : {'gamma', 'zbox', 'flat', 'wsquare'}
        Rule of the first convolutional/linear layer. ``'zbox'`` needs ``low`` and ``high``.
    low, high : torch.Tensor or float, optional
        Input bounds for ``'zbox'``.
    stabilizer : float
        Denominator stabilizer of the rules.
    epsilon : float, optional
        If given, linear (fully connected) layers use LRP-:math:`\epsilon` instead of the schedule.
    zero_params : list of str, optional
        Parameters set to zero in the rules. ``['bias']`` makes every layer conserve, which is exact on
        networks with small biases (e.g. freshly initialized torchvision models), but on trained networks with
        large biases (merged BatchNorm) it removes from the gamma/LRP-0 denominators the bias that made a neuron
        active, so they can vanish and relevance explodes (measured on the shipped synthetic SmallResNet in the
        composites how-to, ``docs/howto/code/composites_canonizers.py``: ``EpsilonPlus(zero_params=['bias'])``,
        whose z+ denominators cannot vanish, stays closest to conserving there). The engine warns
        (:class:`~zennit_bilrp.core.results.ConservationWarning`) when relevance is amplified more than tenfold.
    canonizers : list, optional
        Zennit canonizers applied before the rules (e.g. ``[ResNetCanonizer()]``).
    fast : bool
        Use :class:`~zennit_bilrp.lrp.fast_rules.FastGamma` and :class:`~zennit_bilrp.lrp.fast_rules.FastZBox`,
        which give the relevance of Zennit's :class:`~zennit.rules.Gamma` and :class:`~zennit.rules.ZBox` (up to
        rounding) with one transposed convolution per backward pass instead of five and three (default True).
    """

    def __init__(
        self,
        gammas: Sequence[float] = DEPTH_GAMMAS,
        first: str = 'gamma',
        low: Union[None, float, torch.Tensor] = None,
        high: Union[None, float, torch.Tensor] = None,
        stabilizer: float = 1e-6,
        epsilon: Optional[float] = None,
        zero_params: Optional[list] = None,
        canonizers: Optional[list] = None,
        fast: bool = True,
    ):
        if first not in ('gamma', 'zbox', 'flat', 'wsquare'):
            raise ValueError(f"first must be 'gamma', 'zbox', 'flat' or 'wsquare', got {first!r}")
        if first == 'zbox' and (low is None or high is None):
            raise ValueError("first='zbox' needs the input bounds `low` and `high`")
        self.gammas = tuple(float(g) for g in gammas)
        self.first = first
        self.low, self.high = low, high
        self.stabilizer = stabilizer
        self.epsilon = epsilon
        self.zero_params = zero_params
        self.fast = fast
        self.base = layer_map_base(stabilizer)
        self.layer_count = 0
        super().__init__(module_map=self.mapping, canonizers=canonizers)

    def register(self, module: torch.nn.Module) -> None:
        """Count the convolutional/linear layers of ``module``, then apply the canonizers and register the rules."""
        self.layer_count = sum(isinstance(m, (Convolution, Linear)) for m in module.modules())
        super().register(module)

    def mapping(self, ctx: dict, name: str, module: torch.nn.Module):
        """Assign rules: shared base map, then the depth schedule for convolutional/linear layers."""
        index = _weight_layer_index(ctx, module)
        if index is None:
            return Pass() if isinstance(module, Normalize) else _base_rule(self.base, module)
        kwargs = {'zero_params': self.zero_params}
        if index == 0 and self.first != 'gamma':
            if self.first == 'zbox':
                return (FastZBox if self.fast else ZBox)(low=self.low, high=self.high, stabilizer=self.stabilizer,
                                                         **kwargs)
            if self.first == 'flat':
                return Flat(stabilizer=self.stabilizer, **kwargs)
            return WSquare(stabilizer=self.stabilizer, **kwargs)
        if self.epsilon is not None and isinstance(module, torch.nn.Linear):
            return Epsilon(epsilon=self.epsilon, **kwargs)
        gamma = gamma_schedule(index, self.layer_count, self.gammas)
        return (FastGamma if self.fast else Gamma)(gamma=gamma, stabilizer=self.stabilizer, **kwargs)


def bilrp_composite(**kwargs) -> DepthGamma:
    """The engine's default composite: :class:`DepthGamma` with ``kwargs``, which applies to any architecture.

    For the BiLRP paper's own VGG-16 rules use :class:`BiLRPGamma`.
    """
    return DepthGamma(**kwargs)


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
    (e.g. :func:`imagenet_bounds` for ImageNet-normalized pixels), else :math:`z^+`; depthwise convolutions
    (:func:`is_depthwise`) ``depthwise``; other convolutions :math:`z^+`; linear layers LRP-:math:`\epsilon`;
    residual sums and average pooling Zennit's ``Norm`` (:math:`R_i = x_i / \sum_{i'} x_{i'} \, R`), activations and
    BatchNorm pass-through. The canonizers default to :func:`~zennit_bilrp.lrp.canonizers.canonizers_for` of the
    model the composite is registered to (BatchNorm merge, residual sums, constant squeeze-and-excitation gates).

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
        index = _weight_layer_index(ctx, module)
        if index is None:
            return Pass() if isinstance(module, Normalize) else _base_rule(self.base, module)
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
    :func:`imagenet_bounds` in the first layer) when ``imagenet``, else :math:`z^+` there.

    Parameters
    ----------
    model : torch.nn.Module, optional
        If given, the canonizers are chosen for it now (:func:`~zennit_bilrp.lrp.canonizers.canonizers_for`);
        otherwise when the composite is registered.
    imagenet : bool
        Inputs are normalized with :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`.
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
      :math:`z_j` and the relative stabilizer :class:`RelativeStabilizer` (``epsilon`` times the layer's mean
      :math:`|z|`), as :class:`~zennit_bilrp.lrp.mobile_rules.ExplicitGamma` with :math:`\gamma = 0`.

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
        Relative :math:`\epsilon` of the top layers (:class:`RelativeStabilizer`).
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
        index = _weight_layer_index(ctx, module)
        if index is None:
            return Pass() if isinstance(module, Normalize) else _base_rule(self.base, module)
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


def register_similarity_rules(model: torch.nn.Module) -> list:
    """Give :class:`~zennit_bilrp.lrp.layers.Normalize` modules the pass-through rule where no rule is registered.

    Returns
    -------
    list
        Handles with a ``remove()`` method.
    """
    handles = []
    for module in model.modules():
        if isinstance(module, Normalize) and not forward_pre_hooks(module):
            handles.append(Pass().register(module))
    return handles
