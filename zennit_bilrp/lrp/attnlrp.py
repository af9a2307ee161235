r"""The rules of AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024) as Zennit rules, for the modules of :mod:`~zennit_bilrp.lrp.attention`.

- **Products of input-dependent factors** (the scores :math:`S = \tau QK^\top`, the mix :math:`c = Pv`, a gate
  :math:`a \odot b`): the epsilon rule followed by the uniform rule (the paper's Proposition 3.3),
  :class:`UniformEpsilon`. For :math:`z = f(x)` bilinear in the packed factors :math:`x`,

  .. math::

      R(x) = \frac{1}{K}\, x \odot \nabla_x \big(z \cdot R(z) / (z + \epsilon\,\mathrm{sign}(z))\big),

  with :math:`K` the number of input-dependent factors: each factor gets :math:`1/K` of the relevance
  (:math:`x \cdot \nabla_x z = K z` for a product of :math:`K` factors, so the rule conserves up to
  :math:`\epsilon`). With one input-dependent factor (a constant query or gate) it is LRP-:math:`\epsilon`.
- **Softmax** :math:`s = \mathrm{softmax}(x + B)` (:math:`B` a constant): the Taylor decomposition at the input with
  bias (Proposition 3.1), :class:`SoftmaxTaylor`,

  .. math::

      R(x_i) = x_i \Big(R(s_i) - s_i \sum_j R(s_j)\Big).

  It does not conserve: the bias term of the expansion absorbs :math:`\sum_j R(s_j) - \sum_i R(x_i)`.
- **LayerNorm**: the identity rule on the division by the (detached) standard deviation and on the scale, the
  epsilon rule on the centring and the shift; together this is LRP-:math:`\epsilon` on the LayerNorm with its
  standard deviation held constant, the rule of the conservative family too
  (:func:`~zennit_bilrp.lrp.attention.layer_norm_constant_std`). Elementwise activations take the identity rule
  (Zennit's ``Pass``), linear layers LRP-:math:`\epsilon`.

Both rules are linear in the output relevance and differentiable in it (the backward pass builds a graph when the
relevance requires grad), so the engine's patch-major path applies.
"""
from __future__ import annotations

import torch
from zennit.core import BasicHook, Hook, Stabilizer
from zennit.rules import NoMod

__all__ = ['UniformEpsilon', 'SoftmaxTaylor']


class UniformEpsilon(BasicHook):
    r"""The epsilon rule followed by the uniform rule, for a module that multiplies ``operands`` input-dependent
    factors packed into its one input: :math:`R(x) = x \odot \nabla_x (z \cdot R(z)/z_\epsilon) / K`.

    Parameters
    ----------
    epsilon : float
        Stabilizer :math:`\epsilon` of the denominator (added with the sign of :math:`z`).
    operands : int
        :math:`K`, the number of input-dependent factors (2 for :math:`QK^\top` and :math:`Pv`; 1 when one factor is
        a constant, which makes this LRP-:math:`\epsilon`).
    """

    def __init__(self, epsilon: float = 1e-6, operands: int = 2):
        if operands not in (1, 2):
            raise ValueError(f'operands must be 1 or 2, got {operands}')
        stabilize = Stabilizer.ensure(epsilon)
        self.epsilon, self.operands = epsilon, operands
        super().__init__(
            input_modifiers=[lambda input: input],
            param_modifiers=[NoMod(param_keys=[])],
            output_modifiers=[lambda output: output],
            gradient_mapper=(lambda out_grad, outputs: out_grad / stabilize(outputs[0])),
            reducer=(lambda inputs, gradients: inputs[0] * gradients[0] / operands),
        )


class SoftmaxTaylor(Hook):
    r"""AttnLRP's softmax rule: :math:`R(x_i) = x_i (R(s_i) - s_i \sum_j R(s_j))` over the module's last axis.

    For a module computing :math:`s = \mathrm{softmax}(x + B)` of its input :math:`x` (:math:`B` a constant inside
    the module, e.g. :class:`~zennit_bilrp.lrp.attention.AttentionSoftmax`). Equivalently
    :math:`x \odot J^\top (R/s)`, gradient times input with the relevance divided by the output, computed without
    the division.
    """

    def forward(self, module: torch.nn.Module, input: tuple, output: torch.Tensor) -> None:
        """Store the input (the rule recomputes the output from it)."""
        self.stored_tensors['input'] = input

    def backward(self, module: torch.nn.Module, grad_input: tuple, grad_output: tuple) -> tuple:
        """The input relevance from the output relevance ``grad_output[0]``."""
        scores = self.stored_tensors['input'][0].detach()
        relevance = grad_output[0]
        with torch.no_grad():
            probabilities = module.forward(scores)
        with torch.set_grad_enabled(relevance.requires_grad):
            result = scores * (relevance - probabilities * relevance.sum(dim=-1, keepdim=True))
        return tuple(result if original.shape == result.shape else None for original in grad_input)
