r"""Faster, numerically identical versions of Zennit rules for the batched BiLRP backward passes.

Zennit's generalised LRP-:math:`\gamma` rule (:class:`zennit.rules.Gamma`) re-runs the layer five times in every
backward pass and back-propagates through all five outputs:

.. math::

    z^{\pm} = W^{\gamma\pm}_{+} x^{+} + W^{\gamma\mp}_{-} x^{-}, \qquad
    R_{\text{in}} = x^{+} \odot \big(W^{\gamma+\top} s^{+} + W^{\gamma-\top} s^{-}\big)
                  + x^{-} \odot \big(W^{\gamma-\top} s^{+} + W^{\gamma+\top} s^{-}\big),

with :math:`W^{\gamma\pm} = W + \gamma W^{\pm}` (:math:`W^{\pm}` the positive/negative parts),
:math:`s^{\pm} = [z_0 \gtrless 0]\, R_{\text{out}} / z^{\pm}` and :math:`z_0 = Wx` the plain output, whose
gradient is multiplied by zero. :class:`FastGamma` computes exactly the same relevance but

- evaluates the plain output :math:`z_0` without building a graph (its gradient is always zero), and
- skips the two :math:`x^{-}` branches when the layer input is non-negative (after a ReLU): then
  :math:`x^{-} = 0`, their outputs are exactly zero (no bias) and their input-times-gradient terms vanish.

After a ReLU this is two transposed convolutions per backward pass instead of five, which matters most in the
batched backward passes of exact BiLRP (one per embedding unit). Results equal Zennit's rule (the dropped terms
are exact zeros; only the sign of a zero can differ).
"""
from __future__ import annotations

import torch
from zennit.core import ParamMod, Stabilizer
from zennit.rules import Gamma

__all__ = ['FastGamma']


class FastGamma(Gamma):
    """Drop-in replacement for :class:`zennit.rules.Gamma` with the same parameters and the same relevance."""

    def __init__(self, gamma: float = 0.25, stabilizer=1e-6, zero_params=None):
        super().__init__(gamma=gamma, stabilizer=stabilizer, zero_params=zero_params)
        self.gamma, self.stabilizer, self.zero_params = gamma, stabilizer, zero_params
        self._stabilize = Stabilizer.ensure(stabilizer)

    def copy(self) -> FastGamma:
        return type(self)(gamma=self.gamma, stabilizer=self.stabilizer, zero_params=self.zero_params)

    def backward(self, module, grad_input, grad_output):
        original = self.stored_tensors['input'][0].clone()
        non_negative = bool((original >= 0).all())
        branches = (0, 2) if non_negative else (0, 1, 2, 3)
        with torch.no_grad(), ParamMod.ensure(self.param_modifiers[4])(module) as plain:
            sign = plain.forward(self.input_modifiers[4](original))
        inputs, outputs = {}, {}
        for i in branches:
            inp = self.input_modifiers[i](original).requires_grad_()
            with ParamMod.ensure(self.param_modifiers[i])(module) as modified, torch.autograd.enable_grad():
                outputs[i] = self.output_modifiers[i](modified.forward(inp))
            inputs[i] = inp
        out_grad = grad_output[0]
        zero = torch.zeros_like(outputs[0])
        den_pos = outputs[0] + outputs.get(1, zero)
        den_neg = outputs[2] + outputs.get(3, zero)
        mapped = {
            0: (sign > 0.) * out_grad / self._stabilize(den_pos),
            2: (sign < 0.) * out_grad / self._stabilize(den_neg),
        }
        if not non_negative:
            mapped[1], mapped[3] = mapped[0], mapped[2]
        gradients = torch.autograd.grad(
            [outputs[i] for i in branches], [inputs[i] for i in branches],
            grad_outputs=[mapped[i] for i in branches], create_graph=out_grad.requires_grad,
        )
        relevance = sum(inputs[i] * grad for i, grad in zip(branches, gradients))
        return tuple(relevance if orig.shape == relevance.shape else None for orig in grad_input)
