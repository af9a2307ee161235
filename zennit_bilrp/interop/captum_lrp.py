r"""A Captum-native reference path: BiLRP assembled from :class:`captum.attr.LRP`, one call per embedding unit.

For every embedding unit :math:`m`, ``captum.attr.LRP(model).attribute(x, target=m)`` gives :math:`R_m(x)`, the LRP
explanation started from :math:`\phi_m(x)`. Pooled to patches these are the factors :math:`F(x)` of the engine
(:class:`zennit_bilrp.core.results.Factors`), and the pairwise relevance is formed by the engine's own
:func:`~zennit_bilrp.core.results.pairwise_relevance`, :math:`R = c\,F(x)^\top G\,F(x')`. Only the per-unit LRP comes
from
Captum, so comparing with :class:`~zennit_bilrp.core.engine.BiLRP` cross-checks the engine's batched Zennit LRP against
an independent implementation. It costs ``h`` forward+backward passes per batch (two forwards inside each Captum
call), so it is a reference, not a fast path.

Where Captum's and Zennit's LRP differ
--------------------------------------
The two agree (to rounding, float64) when every linear/convolutional layer uses the epsilon rule with the same
epsilon, pooling layers use the proportional rule, there is no BatchNorm and no skip connection
(:func:`zennit_epsilon_composite` is the matching Zennit composite). Otherwise:

- *Rule assignment*: Captum reads a ``module.rule`` attribute per leaf layer and **deletes it after every call**
  (so this module re-attaches rules before each call); Zennit composites map layer types/names to rules.
- *Defaults*: Captum's ``EpsilonRule`` has epsilon ``1e-9``, Zennit's ``Epsilon`` ``1e-6``; Captum's default for
  BatchNorm is the epsilon rule, Zennit composites pass relevance through BatchNorm (or merge it with a canonizer).
- *Canonizers*: Captum has none. BatchNorm is not merged into convolutions, and an in-place ``out += identity``
  skip connection is invisible to Captum (relevance splits by the gradient), so it does not conserve on ResNets;
  Zennit's ``ResNetCanonizer`` + ``Norm`` rule on ``Sum`` does.
- *Gamma and z+*: Captum's ``GammaRule`` adds :math:`\gamma w^+` to the weights and keeps the bias unless
  ``set_bias_to_zero``; Zennit's ``Gamma`` is the generalised, sign-aware rule (identical for positive inputs and
  outputs) with ``zero_params`` for biases. Captum's ``Alpha1_Beta0_Rule`` clamps the weights only; Zennit's
  ``ZPlus`` also splits inputs into positive/negative parts (identical for non-negative inputs).
- *Unsupported layers*: Captum raises ``TypeError`` for leaf modules without a rule (``nn.Flatten``, Zennit's
  ``Sum``, ``nn.Identity``, ...) and refuses modules used twice in one forward; Zennit gives unmapped layers the
  plain gradient (the engine's ``strict`` mode refuses parametrised ones).
- *Heads*: this path needs a model returning the embedding ``(N, h)`` (``target`` selects a unit).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from captum.attr import LRP
from captum.attr._utils.lrp_rules import EpsilonRule, PropagationRule
from torch import nn

from ..core.pooling import Pooling
from ..core.results import Factors, pairwise_relevance
from ..core.similarity import Similarity, get_similarity
from ..lrp.restore import ModelGuard

__all__ = ['captum_factors', 'captum_bilrp', 'epsilon_rules', 'zennit_epsilon_composite']

RuleFactory = Callable[[nn.Module], Optional[PropagationRule]]

_RULE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def epsilon_rules(epsilon: float = 1e-9) -> RuleFactory:
    """Rule factory: Captum's ``EpsilonRule(epsilon)`` for linear, convolutional and average-pooling layers."""
    def factory(module: nn.Module) -> Optional[PropagationRule]:
        return EpsilonRule(epsilon=epsilon) if isinstance(module, _RULE_LAYERS) else None
    return factory


def zennit_epsilon_composite(epsilon: float = 1e-9):
    """The Zennit composite that matches :func:`epsilon_rules`: epsilon on linear/conv layers, the proportional
    ``Norm`` rule (same stabiliser) on average pooling, pass-through on activations."""
    from zennit.composites import LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon
    from zennit.types import Convolution, Linear

    return LayerMapComposite(layer_map=layer_map_base(stabilizer=epsilon) + [
        (Convolution, Epsilon(epsilon=epsilon)),
        (Linear, Epsilon(epsilon=epsilon)),
    ])


def _leaves(model: nn.Module):
    return [module for module in model.modules() if not any(True for _ in module.children())]


def captum_factors(model: nn.Module, x: torch.Tensor, pooling: Union[None, int, Pooling] = None,
                   rules: Optional[RuleFactory] = None, units: Optional[torch.Tensor] = None) -> Factors:
    """Per-unit LRP explanations from ``captum.attr.LRP`` (one call per unit), pooled to factors.

    Parameters
    ----------
    model : nn.Module
        Embedding model returning ``(N, h)``, built from layers Captum's LRP supports.
    x : torch.Tensor
        Inputs ``(N, ...)``.
    pooling : int or Pooling, optional
        Patch pooling (``None``: per position, channels summed).
    rules : callable, optional
        ``rules(module) -> PropagationRule or None``, re-attached before every call (Captum deletes them after).
        Default :func:`epsilon_rules`.
    units : torch.Tensor, optional
        Indices of the explained units (default all).

    Returns
    -------
    Factors
        ``relevance`` of shape ``(N, K, P)``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError('captum_factors: x must be a floating-point tensor')
    rules = epsilon_rules() if rules is None else rules
    grid = Pooling.ensure(pooling).resolve(x.shape[1:])
    with torch.no_grad():
        embedding = model(x)
    if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2:
        raise ValueError('captum_factors: the model must return embeddings of shape (N, h), got '
                         f'{getattr(embedding, "shape", type(embedding).__name__)}')
    index = torch.arange(embedding.shape[1]) if units is None else torch.as_tensor(units)
    pooled = []
    with ModelGuard(model):
        for unit in index.tolist():
            for module in _leaves(model):
                rule = rules(module)
                if rule is not None:
                    module.rule = rule
            with torch.enable_grad():
                relevance = LRP(model).attribute(x.detach().clone().requires_grad_(True), target=int(unit))
            pooled.append(Pooling.apply(relevance.detach(), grid, 1))
    relevance = torch.stack(pooled, dim=1)
    return Factors(embedding.detach(), relevance, grid, None if units is None else index.to(embedding.device))


def captum_bilrp(model: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor,
                 similarity: Union[str, Similarity, torch.Tensor] = 'dot', pooling: Union[None, int, Pooling] = None,
                 rules: Optional[RuleFactory] = None) -> torch.Tensor:
    """Pooled BiLRP ``(B, P_a, P_b)`` of aligned pairs from Captum's LRP (see the module docstring).

    Both inputs of all pairs go through each Captum call together (``2B`` samples, ``h`` calls).
    """
    if x_a.shape != x_b.shape:
        raise ValueError(f'captum_bilrp: x_a {tuple(x_a.shape)} and x_b {tuple(x_b.shape)} must have equal shapes')
    both = captum_factors(model, torch.cat([x_a, x_b]), pooling=pooling, rules=rules)
    n = x_a.shape[0]
    return pairwise_relevance(both[:n], both[n:], get_similarity(similarity))
