r"""Composite presets for BiLRP, registered the Zennit way.

- :class:`BiLRPGamma` (registered as ``'bilrp_gamma'``) reproduces the rules of the BiLRP authors' VGG-16 code
  (Eberle et al., "Building and Interpreting Deep Similarity Models", TPAMI 2022; code:
  ``oeberle/BiLRP_explain_similarity``, ``model/bilrp.py``): :math:`z^{\mathcal{B}}` in the first convolution,
  LRP-:math:`\gamma` with :math:`\gamma` set by the layer's index in torchvision's VGG ``features``, LRP-0 in the
  projection on top. Its rules are keyed on that index, so heads added after ``features`` do not move them.
- :class:`DepthGamma` (registered as ``'depth_gamma'``) is a generic schedule for any network: the :math:`i`-th
  of :math:`n` convolutional/linear layers (registration order) gets the :math:`\gamma` found at the same
  relative depth in :data:`DEPTH_GAMMAS`. :func:`bilrp_composite`, the engine's default, is this preset.
- :class:`~zennit_bilrp.lrp.mobile_composites.MobileComposite` (``'mobile'``) and
  :class:`~zennit_bilrp.lrp.mobile_composites.MobileEpsilon` (``'mobile_epsilon'``), the presets for networks with
  depthwise convolutions, live in :mod:`~zennit_bilrp.lrp.mobile_composites`; the parts all presets share (ImageNet
  input bounds, denominator stabilizers) in :mod:`~zennit_bilrp.lrp.preset_parts`. This module re-exports both
  modules' public names, so ``from zennit_bilrp.lrp.composites import MobileComposite, imagenet_bounds`` keeps
  working; they are documented where they are defined.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from zennit.composites import layer_map_base, register_composite
from zennit.core import Composite
from zennit.rules import Epsilon, Flat, Gamma, Pass, WSquare, ZBox
from zennit.types import Convolution, Linear

from ..torch_private import forward_pre_hooks
from .fast_rules import FastGamma, FastZBox
from .layers import Normalize
from .mobile_composites import DEPTHWISE_RULES as DEPTHWISE_RULES
from .mobile_composites import MobileComposite as MobileComposite
from .mobile_composites import MobileEpsilon as MobileEpsilon
from .mobile_composites import is_depthwise as is_depthwise
from .mobile_composites import mobile_composite as mobile_composite
from .preset_parts import IMAGENET_MEAN as IMAGENET_MEAN
from .preset_parts import IMAGENET_STD as IMAGENET_STD
from .preset_parts import RelativeStabilizer as RelativeStabilizer
from .preset_parts import ShiftStabilizer, base_rule, imagenet_bounds, weight_layer_index

#: the names defined here; the re-exported ones (see above) are in the ``__all__`` of their own modules
__all__ = [
    'BiLRPGamma', 'DepthGamma', 'bilrp_composite', 'gamma_schedule', 'register_similarity_rules', 'vgg16_gamma',
    'vgg_feature_indices', 'DEPTH_GAMMAS', 'VGG16_GAMMAS', 'VGG16_CONV_INDICES',
]

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
    theirs does; the projection, whose outputs have either sign, uses
    :class:`~zennit_bilrp.lrp.preset_parts.ShiftStabilizer`. ReLU, flatten and the other layers pass relevance on
    (Zennit's base map). Two differences of the authors' code are not rules and
    stay with the caller: they average-pool 8x8 patches (the engine sum-pools) and loop over units at batch 1.

    Parameters
    ----------
    low, high : torch.Tensor or float, optional
        Bounds of the input for :math:`z^{\mathcal{B}}` (default
        :func:`~zennit_bilrp.lrp.preset_parts.imagenet_bounds`, their :math:`(0 - \mu)/\sigma` and
        :math:`(1 - \mu)/\sigma` for ImageNet-normalized pixels).
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
        return base_rule(self.base, module)


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
        index = weight_layer_index(ctx, module)
        if index is None:
            return Pass() if isinstance(module, Normalize) else base_rule(self.base, module)
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
