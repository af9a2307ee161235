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
  :math:`x^{-} = 0`, their outputs are exactly zero (no bias) and their input-times-gradient terms vanish;
- and there, for linear and ungrouped convolutional layers, runs the two remaining branches as one layer with
  the weights :math:`[W^{\gamma+}; W^{\gamma-}]` stacked along the outputs, so that the backward pass is a single
  transposed convolution over :math:`[s^{+}; s^{-}]` which also sums the branches.

After a ReLU this is one (twice as wide) transposed convolution per backward pass instead of five, which matters
most in the batched backward passes of exact BiLRP (one per embedding unit). Results equal Zennit's rule up to
rounding (the dropped terms are exact zeros; sums are taken in a different order).

:func:`register_rule_shortcuts` removes a cost that every Zennit rule pays: Zennit lets the ordinary gradient
flow through a hooked layer (e.g. a transposed convolution) and then *replaces* the result by the rule's
relevance, so that gradient is computed and thrown away in every backward pass. The shortcut gives the layer's
output a backward node that hands zeros to the layer's input instead; the rule then replaces those zeros exactly
as before. One transposed convolution fewer per layer and per unit, the same relevance.
"""
from __future__ import annotations

import torch
from zennit.core import BasicHook, ParamMod, Stabilizer, expand
from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, WSquare, ZBox, ZPlus

__all__ = ['FastGamma', 'FastZBox', 'register_rule_shortcuts']


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
        with torch.no_grad(), ParamMod.ensure(self.param_modifiers[4])(module) as plain:
            sign = plain.forward(self.input_modifiers[4](original))
        out_grad = grad_output[0]
        if non_negative and _stackable(module):
            relevance = self._stacked_backward(module, original, sign, out_grad)
        else:
            relevance = self._branch_backward(module, original, sign, out_grad, non_negative)
        return tuple(relevance if orig.shape == relevance.shape else None for orig in grad_input)

    def _stacked_backward(self, module, original, sign, out_grad):
        """After a ReLU (x = x+), for a linear or ungrouped convolutional layer: both branches as one layer with
        the weights ``[W^{gamma+}; W^{gamma-}]`` stacked along the outputs, so the backward pass is a single
        transposed convolution over ``[s+; s-]`` that also sums the two branches."""
        weights, biases = [], []
        for i in (0, 2):
            with ParamMod.ensure(self.param_modifiers[i])(module) as modified:
                weights.append(modified.weight.detach())
                biases.append(None if modified.bias is None else modified.bias.detach())
        bias = None if biases[0] is None else torch.cat(biases)
        inp = original.requires_grad_()
        with torch.autograd.enable_grad():
            out = _stacked_forward(module, inp, torch.cat(weights), bias)
        channels = weights[0].shape[0]
        with torch.no_grad():
            den = torch.stack([out[:, :channels], out[:, channels:]], 1)
            # (N, 2, C, ...): per-position factors, independent of the (batched) output gradient
            scale = torch.stack([sign > 0., sign < 0.], 1) / self._stabilize(den)
        mapped = (out_grad.unsqueeze(1) * scale).reshape(out.shape)
        gradient, = torch.autograd.grad(out, inp, grad_outputs=mapped, create_graph=out_grad.requires_grad)
        return inp * gradient

    def _branch_backward(self, module, original, sign, out_grad, non_negative):
        """The rule branch by branch (any layer type; the x- branches only for inputs with negative entries)."""
        branches = (0, 2) if non_negative else (0, 1, 2, 3)
        inputs, outputs = {}, {}
        for i in branches:
            inp = self.input_modifiers[i](original).requires_grad_()
            with ParamMod.ensure(self.param_modifiers[i])(module) as modified, torch.autograd.enable_grad():
                outputs[i] = self.output_modifiers[i](modified.forward(inp))
            inputs[i] = inp
        with torch.no_grad():
            zero = torch.zeros_like(outputs[0])
            scale_pos = (sign > 0.) / self._stabilize(outputs[0] + outputs.get(1, zero))
            scale_neg = (sign < 0.) / self._stabilize(outputs[2] + outputs.get(3, zero))
        mapped = {0: out_grad * scale_pos, 1: out_grad * scale_pos, 2: out_grad * scale_neg, 3: out_grad * scale_neg}
        gradients = torch.autograd.grad(
            [outputs[i] for i in branches], [inputs[i] for i in branches],
            grad_outputs=[mapped[i] for i in branches], create_graph=out_grad.requires_grad,
        )
        return sum(inputs[i] * grad for i, grad in zip(branches, gradients))


class FastZBox(ZBox):
    r"""Drop-in replacement for :class:`zennit.rules.ZBox` with the same parameters and the same relevance.

    Zennit's rule back-propagates through three layers (weights :math:`W, W^+, W^-` on the input :math:`x` and
    the box bounds :math:`l, h`). For linear and ungrouped convolutional layers this rule evaluates the
    denominator :math:`z = Wx - W^+ l - W^- h` as one layer on the stacked input :math:`[x; l; h]` with the weights
    :math:`[W, -W^+, -W^-]` side by side, so the backward pass is one (three times as wide) transposed
    convolution; other layers take Zennit's path.
    """

    def __init__(self, low, high, stabilizer=1e-6, zero_params=None):
        super().__init__(low=low, high=high, stabilizer=stabilizer, zero_params=zero_params)
        self.low, self.high, self.stabilizer, self.zero_params = low, high, stabilizer, zero_params
        self._stabilize = Stabilizer.ensure(stabilizer)

    def copy(self) -> FastZBox:
        return type(self)(low=self.low, high=self.high, stabilizer=self.stabilizer, zero_params=self.zero_params)

    def backward(self, module, grad_input, grad_output):
        if not _stackable(module):
            return super().backward(module, grad_input, grad_output)
        original = self.stored_tensors['input'][0].clone()
        low = expand(self.low, original.shape, cut_batch_dim=True).to(original)
        high = expand(self.high, original.shape, cut_batch_dim=True).to(original)
        weights, biases = [], []
        for sign, param_mod in zip((1., -1., -1.), self.param_modifiers):
            with ParamMod.ensure(param_mod)(module) as modified:
                weights.append(sign * modified.weight.detach())
                biases.append(None if modified.bias is None else sign * modified.bias.detach())
        bias = None if biases[0] is None else sum(biases)
        dim = -1 if isinstance(module, torch.nn.Linear) else 1
        stacked = torch.cat([original, low, high], dim).requires_grad_()
        with torch.autograd.enable_grad():
            out = _stacked_forward(module, stacked, torch.cat(weights, dim=1), bias)
        out_grad = grad_output[0]
        with torch.no_grad():
            scale = 1. / self._stabilize(out)
        gradient, = torch.autograd.grad(out, stacked, grad_outputs=out_grad * scale,
                                        create_graph=out_grad.requires_grad)
        products = stacked * gradient
        size = original.shape[dim]
        relevance = products.narrow(dim, 0, size) + products.narrow(dim, size, size) \
            + products.narrow(dim, 2 * size, size)
        return tuple(relevance if orig.shape == relevance.shape else None for orig in grad_input)


_CONVOLUTIONS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _stackable(module: torch.nn.Module) -> bool:
    """Whether stacking weights along the outputs gives the layer's outputs side by side."""
    if type(module) is torch.nn.Linear:
        return True
    return type(module) in _CONVOLUTIONS and module.groups == 1


def _stacked_forward(module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor, bias):
    if isinstance(module, torch.nn.Linear):
        return torch.nn.functional.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


class _DiscardedGradient(torch.autograd.Function):
    """The layer output as a new node whose backward gives the layer input zeros instead of the true gradient
    (which the layer's rule replaces anyway), so the layer's own backward (e.g. a transposed convolution) is
    never run."""

    @staticmethod
    def forward(ctx, inp, out):
        ctx.input_shape = inp.shape
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.new_zeros(()).expand(ctx.input_shape), None


def _replacing_hook(module: torch.nn.Module):
    """The Zennit rule hooked to ``module`` whose backward replaces the layer's gradient, if any."""
    for hook in module._forward_hooks.values():
        owner = getattr(hook, '__self__', None)
        if isinstance(owner, BasicHook) and getattr(hook, '__name__', '') == 'post_forward':
            return owner
    return None


#: Zennit rules whose reducer is a weighted sum of ``inputs[i] * gradients[i]`` (exact types only: subclasses may
#: reduce otherwise)
_PRODUCT_RULES = (Epsilon, ZPlus, AlphaBeta, Gamma, ZBox, Flat, WSquare, Norm)
#: branches whose gradient the rule's reducer never reads (Gamma's fifth branch only supplies the output signs)
_UNUSED_BRANCHES = {Gamma: (4,)}


def _pruned_backward(self, module, grad_input, grad_output):
    """:meth:`zennit.core.BasicHook.backward` without the gradients of branches whose input is all zeros (their
    ``input * gradient`` term is zero) or that the reducer does not read; the relevance is the same."""
    original = self.stored_tensors['input'][0].clone()
    unused = _UNUSED_BRANCHES.get(type(self), ())
    inputs, outputs, live = [], [], []
    for i, (in_mod, param_mod, out_mod) in enumerate(zip(self.input_modifiers, self.param_modifiers,
                                                          self.output_modifiers)):
        inp = in_mod(original)
        live.append(i not in unused and bool(inp.any()))
        inp = inp.requires_grad_() if live[-1] else inp
        with ParamMod.ensure(param_mod)(module) as modified, torch.autograd.enable_grad():
            outputs.append(out_mod(modified.forward(inp)))
        inputs.append(inp)
    grad_outputs = self.gradient_mapper(grad_output[0], outputs)
    if isinstance(grad_outputs, torch.Tensor):  # single-branch rules (Epsilon, Norm) map to one tensor
        grad_outputs = (grad_outputs,)
    index = [i for i, keep in enumerate(live) if keep]
    computed = torch.autograd.grad([outputs[i] for i in index], [inputs[i] for i in index],
                                   grad_outputs=[grad_outputs[i] for i in index],
                                   create_graph=grad_output[0].requires_grad) if index else ()
    gradients = [torch.zeros_like(inp) for inp in inputs]
    for i, gradient in zip(index, computed):
        gradients[i] = gradient
    relevance = self.reducer(inputs, gradients)
    return tuple(relevance if orig.shape == relevance.shape else None for orig in grad_input)


class _PrunedBackward:
    """Handle that gives a Zennit rule :func:`_pruned_backward` until ``remove()``."""

    def __init__(self, rule: BasicHook):
        self.rule = rule
        rule.backward = _pruned_backward.__get__(rule)

    def remove(self) -> None:
        self.rule.__dict__.pop('backward', None)


def register_rule_shortcuts(model: torch.nn.Module) -> list:
    """Skip the gradients that Zennit's rules compute and then discard, in every layer of ``model`` that has a
    rule (a :class:`zennit.core.BasicHook`, which all of Zennit's LRP rules are).

    Call after the composite is registered. Only layers called with a single tensor input take the shortcut
    (the rule's relevance then always replaces the layer's gradient); the relevance is unchanged.

    Parameters
    ----------
    model : torch.nn.Module
        A model with a Zennit composite registered.

    Returns
    -------
    list of torch.utils.hooks.RemovableHandle
        Call ``remove()`` on each to undo (before the composite is removed).
    """
    handles = []

    def shortcut(module, args, output):
        inp = args[0] if len(args) == 1 else None
        if (not torch.is_grad_enabled() or not isinstance(inp, torch.Tensor) or not inp.requires_grad
                or not isinstance(output, torch.Tensor) or output.grad_fn is None):
            return None
        rule = _replacing_hook(module)
        if rule is None or not rule.active:  # e.g. inside Zennit's ``composite.inactive()``: keep the gradient
            return None
        return _DiscardedGradient.apply(inp, output.detach())

    for module in model.modules():
        rule = _replacing_hook(module)
        if rule is not None:
            # prepend: the rule's own output hook must attach to the new node, so it has to run after this one
            handles.append(module.register_forward_hook(shortcut, prepend=True))
            if type(rule) in _PRODUCT_RULES and 'backward' not in rule.__dict__:
                handles.append(_PrunedBackward(rule))
    return handles
