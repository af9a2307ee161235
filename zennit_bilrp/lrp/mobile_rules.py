r"""An LRP rule for depthwise convolutions: :math:`z^+` where it has a positive contribution, else :math:`w^2`.

A depthwise convolution (MobileNet, EfficientNet) computes each output channel from one input channel in a
:math:`k \times k` window. After BatchNorm is merged into it, many of its outputs have no positive contribution at
all: whole kernels are non-positive (a negative BatchNorm scale), or the window's inputs are zero where the
weights are positive, and the output is active only through the merged shift (a bias, which
``zero_params=['bias']`` removes from the rule). :math:`z^+` drops the relevance of such outputs; on the pretrained
EfficientNet-Lite0 this loses about 99 % of a BiLRP explanation (see
:class:`~zennit_bilrp.lrp.mobile_composites.MobileComposite`). :class:`ZPlusWSquare` keeps :math:`z^+` where it is
defined and spreads the rest by :math:`w^2`:

.. math::

    z_j = \sum_i \big(x_i^+ w_{ij}^+ + x_i^- w_{ij}^-\big), \qquad
    R_i = \sum_{j:\, z_j > \tau} \frac{x_i^+ w_{ij}^+ + x_i^- w_{ij}^-}{z_j} R_j
        + \sum_{j:\, z_j \le \tau} \frac{w_{ij}^2}{\sum_{i'} w_{i'j}^2 + \epsilon} R_j .

Both parts conserve (every coefficient is non-negative and they sum to one over :math:`i`, up to the
:math:`\epsilon` of the :math:`w^2` part), the :math:`z^+` part cannot amplify (each :math:`R_i \le R_j`), and the
rule is linear in :math:`R` because the split depends on the forward input only. Padding must happen inside the
module (as in torchvision and :class:`~zennit_bilrp.models.efficientnet.SameConv2d`), so that padded zeros get no
:math:`w^2` share.
"""
from __future__ import annotations

import torch
from zennit.core import BasicHook, ParamMod, Stabilizer

from .explicit import layer_forward, layer_transpose, supports_explicit
from .fast_rules import vanishes_where

__all__ = ['ZPlusWSquare', 'ExplicitGamma', 'GammaWSquare', 'ExplicitZPlus']


def _init_with_fallback(hook: BasicHook, fallback: BasicHook, stabilizer, zero_params) -> None:
    """Initialize an explicit rule ``hook`` with the modifiers of Zennit's ``fallback`` rule (what it runs on modules
    :func:`~zennit_bilrp.lrp.explicit.supports_explicit` refuses) and its own stabilizer and ``zero_params``."""
    BasicHook.__init__(hook, input_modifiers=fallback.input_modifiers, param_modifiers=fallback.param_modifiers,
                       output_modifiers=fallback.output_modifiers, gradient_mapper=fallback.gradient_mapper,
                       reducer=fallback.reducer)
    hook.stabilizer = stabilizer
    hook.zero_params = None if zero_params is None else list(zero_params)
    hook._stabilize = Stabilizer.ensure(stabilizer)


def _explicit_inputs(hook: BasicHook, module: torch.nn.Module, grad_output: tuple) -> tuple:
    """What an explicit rule's backward reads: the layer's stored input (a copy), the output relevance, and the
    weight and bias (detached; the bias ``None`` where the layer has none)."""
    bias = getattr(module, 'bias', None)
    return (hook.stored_tensors['input'][0].clone(), grad_output[0], module.weight.detach(),
            None if bias is None else bias.detach())


def _signed_parts(x: torch.Tensor) -> tuple:
    """``(x^+, x^-, whether x has a negative entry)``."""
    return x.clamp(min=0), x.clamp(max=0), bool((x < 0).any())


class ZPlusWSquare(BasicHook):
    r""":math:`z^+` for outputs with a positive contribution :math:`z_j > \tau`, :math:`w^2` for the others.

    Parameters
    ----------
    threshold : float
        :math:`\tau`: outputs with :math:`z_j \le \tau` take the :math:`w^2` rule.
    stabilizer : float
        :math:`\epsilon` added to the :math:`w^2` denominators.
    zero_params : list of str, optional
        Parameters set to zero in the rule (default ``['bias']``; the rule never uses the bias).
    """

    def __init__(self, threshold: float = 1e-9, stabilizer: float = 1e-12, zero_params=('bias',)):
        zero_params = None if zero_params is None else list(zero_params)
        super().__init__(
            input_modifiers=[lambda x: x.clamp(min=0), lambda x: x.clamp(max=0), torch.ones_like],
            param_modifiers=[ParamMod(lambda w, _: w.clamp(min=0), zero_params=zero_params),
                             ParamMod(lambda w, _: w.clamp(max=0), zero_params=zero_params),
                             ParamMod(lambda w, _: w ** 2, zero_params=zero_params)],
            output_modifiers=[lambda output: output] * 3,
            gradient_mapper=None,
            reducer=None,
        )
        self.threshold = float(threshold)
        self.stabilizer = float(stabilizer)
        self.zero_params = zero_params

    def copy(self) -> ZPlusWSquare:
        return type(self)(threshold=self.threshold, stabilizer=self.stabilizer, zero_params=self.zero_params)

    def backward(self, module, grad_input, grad_output):
        original = self.stored_tensors['input'][0].clone()
        relevance_out = grad_output[0]
        if supports_explicit(module):
            relevance = self._explicit_backward(module, original, relevance_out)
            return tuple(relevance if orig.shape == relevance.shape else None for orig in grad_input)
        inputs, outputs = [], []
        for in_mod, param_mod in zip(self.input_modifiers, self.param_modifiers):
            inp = in_mod(original).detach().requires_grad_()
            with param_mod(module) as modified, torch.autograd.enable_grad():
                outputs.append(modified.forward(inp))
            inputs.append(inp)
        with torch.no_grad():
            z = outputs[0] + outputs[1]
            live = z > self.threshold
            scale_plus = torch.where(live, 1.0 / torch.where(live, z, torch.ones_like(z)), torch.zeros_like(z))
            scale_square = torch.where(live, torch.zeros_like(z), 1.0 / (outputs[2] + self.stabilizer))
        grads = torch.autograd.grad(outputs, inputs,
                                    grad_outputs=[relevance_out * scale_plus, relevance_out * scale_plus,
                                                  relevance_out * scale_square],
                                    create_graph=relevance_out.requires_grad)
        relevance = inputs[0] * grads[0] + inputs[1] * grads[1] + grads[2]
        return tuple(relevance if orig.shape == relevance.shape else None for orig in grad_input)

    def _explicit_backward(self, module, original: torch.Tensor, relevance_out: torch.Tensor) -> torch.Tensor:
        """The same relevance with the forward maps and their transposes as explicit layers
        (:mod:`~zennit_bilrp.lrp.explicit`): one transposed convolution per branch, cheap to differentiate."""
        weight = module.weight.detach()
        w_plus, w_minus, w_square = weight.clamp(min=0), weight.clamp(max=0), weight ** 2
        x_plus, x_minus = original.clamp(min=0), original.clamp(max=0)
        negative = bool((original < 0).any())
        with torch.no_grad():
            z = layer_forward(module, x_plus, w_plus)
            if negative:
                z = z + layer_forward(module, x_minus, w_minus)
            live = z > self.threshold
            scale_plus = torch.where(live, 1.0 / torch.where(live, z, torch.ones_like(z)), torch.zeros_like(z))
            square = layer_forward(module, torch.ones_like(original), w_square)
            scale_square = torch.where(live, torch.zeros_like(z), 1.0 / (square + self.stabilizer))
        shape = original.shape
        mapped = relevance_out * scale_plus
        relevance = x_plus * layer_transpose(module, mapped, w_plus, shape)
        if negative:
            relevance = relevance + x_minus * layer_transpose(module, mapped, w_minus, shape)
        return relevance + layer_transpose(module, relevance_out * scale_square, w_square, shape)


class ExplicitGamma(BasicHook):
    r"""Zennit's generalized LRP-:math:`\gamma` (:class:`zennit.rules.Gamma`) with explicit transposed layers.

    With :math:`W^{\gamma\pm} = W + \gamma W^{\pm}`, :math:`b^{\gamma\pm} = b + \gamma b^{\pm}` (the bias only if
    not in ``zero_params``) and :math:`z_0 = W x + b` the layer's own output,

    .. math::

        z^{\uparrow} = W^{\gamma+} x^+ + W^{\gamma-} x^- + b^{\gamma+}, \qquad
        z^{\downarrow} = W^{\gamma-} x^+ + W^{\gamma+} x^- + b^{\gamma-},

        R = x^+ \odot \big(W^{\gamma+\top} s^{\uparrow} + W^{\gamma-\top} s^{\downarrow}\big)
          + x^- \odot \big(W^{\gamma-\top} s^{\uparrow} + W^{\gamma+\top} s^{\downarrow}\big), \quad
        s^{\uparrow} = [z_0 > 0]\, R_{\text{out}} / z^{\uparrow}, \;
        s^{\downarrow} = [z_0 < 0]\, R_{\text{out}} / z^{\downarrow},

    stabilized as Zennit does (:math:`z + \epsilon\,\mathrm{sign}(z)`). The transposes are explicit layers
    (:func:`~zennit_bilrp.lrp.explicit.layer_transpose`), so that the engine's second-order passes through grouped
    (depthwise) convolutions cost one grouped convolution instead of one per group; branches that vanish (no
    negative inputs, no output relevance where :math:`z_0 < 0`) are skipped. Modules that
    :func:`~zennit_bilrp.lrp.explicit.supports_explicit` refuses take Zennit's rule.

    Parameters
    ----------
    gamma : float
        :math:`\gamma \ge 0` (0 gives LRP-0/:math:`\epsilon`, with the bias in the denominator unless zeroed).
    stabilizer : float
        :math:`\epsilon`.
    zero_params : list of str, optional
        Parameters set to zero in the rule (e.g. ``['bias']``).
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6, zero_params=None):
        from zennit.rules import Gamma

        if gamma < 0:
            raise ValueError(f'gamma must be non-negative, got {gamma}')
        _init_with_fallback(self, Gamma(gamma=gamma, stabilizer=stabilizer, zero_params=zero_params), stabilizer,
                            zero_params)
        self.gamma = float(gamma)

    def copy(self) -> ExplicitGamma:
        return type(self)(gamma=self.gamma, stabilizer=self.stabilizer, zero_params=self.zero_params)

    def backward(self, module, grad_input, grad_output):
        if not supports_explicit(module):
            return super().backward(module, grad_input, grad_output)
        original, relevance_out, weight, bias = _explicit_inputs(self, module, grad_output)
        x_plus, x_minus, negative = _signed_parts(original)
        zero_bias = bias is None or 'bias' in (self.zero_params or [])
        up_w, down_w = weight + self.gamma * weight.clamp(min=0), weight + self.gamma * weight.clamp(max=0)

        def shaped(b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return b.reshape(1, -1, *([1] * (like.dim() - 2)))

        with torch.no_grad():
            plain = layer_forward(module, original, weight, bias)
            if self.gamma == 0:
                up = layer_forward(module, original, weight)
                down = up
            else:
                up = layer_forward(module, x_plus, up_w)
                down = layer_forward(module, x_plus, down_w)
                if negative:
                    up = up + layer_forward(module, x_minus, down_w)
                    down = down + layer_forward(module, x_minus, up_w)
            if not zero_bias:
                up = up + shaped(bias + self.gamma * bias.clamp(min=0), up)
                down = down + shaped(bias + self.gamma * bias.clamp(max=0), down)
            scale_up = (plain > 0) / self._stabilize(up)
            scale_down = (plain < 0) / self._stabilize(down)
        shape = original.shape
        if self.gamma == 0:  # one weight for both branches: LRP-epsilon, one transposed layer
            return self._result(grad_input, original * layer_transpose(
                module, relevance_out * (scale_up + scale_down), weight, shape))
        s_up = relevance_out * scale_up
        relevance = x_plus * layer_transpose(module, s_up, up_w, shape)
        if negative:
            relevance = relevance + x_minus * layer_transpose(module, s_up, down_w, shape)
        if not vanishes_where(relevance_out, plain < 0):
            s_down = relevance_out * scale_down
            relevance = relevance + x_plus * layer_transpose(module, s_down, down_w, shape)
            if negative:
                relevance = relevance + x_minus * layer_transpose(module, s_down, up_w, shape)
        return self._result(grad_input, relevance)

    @staticmethod
    def _result(grad_input, relevance: torch.Tensor) -> tuple:
        return tuple(relevance if orig.shape == relevance.shape else None for orig in grad_input)


class GammaWSquare(BasicHook):
    r"""Bias-free LRP-:math:`\gamma` where its denominator is safely away from zero, :math:`w^2` elsewhere.

    With :math:`W^{\gamma\pm} = W + \gamma W^{\pm}`, the layer's own output :math:`z_0 = W x + b` (bias included: it
    decides which branch an output takes) and the bias-free contributions

    .. math::

        z^{\uparrow} = W^{\gamma+} x^+ + W^{\gamma-} x^-, \quad
        m^{\uparrow} = |W^{\gamma+}|\, x^+ + |W^{\gamma-}|\, |x^-|, \qquad
        z^{\downarrow} = W^{\gamma-} x^+ + W^{\gamma+} x^-, \quad
        m^{\downarrow} = |W^{\gamma-}|\, x^+ + |W^{\gamma+}|\, |x^-|,

    an output :math:`j` with :math:`z_{0j} > 0` and :math:`z^{\uparrow}_j > \max(\rho\, m^{\uparrow}_j, \tau)` shares
    its relevance by :math:`\gamma` as in :class:`zennit.rules.Gamma`, one with :math:`z_{0j} < 0` and
    :math:`z^{\downarrow}_j < -\max(\rho\, m^{\downarrow}_j, \tau)` likewise by the negative branch, and every other
    output by :math:`w^2`, :math:`R_i \mathrel{+}= w_{ij}^2 / (\sum_{i'} w_{i'j}^2 + \epsilon)\, R_j`:

    .. math::

        R = x^+ \odot (W^{\gamma+\top} s^{\uparrow} + W^{\gamma-\top} s^{\downarrow})
          + x^- \odot (W^{\gamma-\top} s^{\uparrow} + W^{\gamma+\top} s^{\downarrow})
          + (W^{\odot 2})^\top s^{2}.

    Every output's shares sum to one, so relevance is conserved without the bias (which, for merged BatchNorm
    shifts, would absorb it), and no share exceeds :math:`1/\rho` in magnitude (the ratio bound :math:`\rho` keeps
    outputs whose contributions nearly cancel from amplifying relevance; :math:`\rho = 0` only requires a positive
    denominator). For :math:`\gamma \to \infty` the :math:`\gamma` branch tends to :math:`z^+`; small
    :math:`\gamma` keeps the negative contributions (as LRP-0 does) and with them what distinguishes one output's
    explanation from another's. The rule is linear in the output relevance (the branches depend on the forward
    input only) and its transposes are explicit layers (:mod:`~zennit_bilrp.lrp.explicit`).

    Parameters
    ----------
    gamma : float
        :math:`\gamma \ge 0`.
    ratio : float
        :math:`\rho \in [0, 1)`.
    threshold : float
        :math:`\tau`, the smallest denominator the :math:`\gamma` branch accepts.
    stabilizer : float
        :math:`\epsilon` of the :math:`w^2` denominators.
    zero_params : list of str, optional
        Accepted for the composites' uniform interface; the rule never uses the bias in its shares.
    """

    def __init__(self, gamma: float = 0.25, ratio: float = 0.0, threshold: float = 1e-9, stabilizer: float = 1e-12,
                 zero_params=None):
        if gamma < 0:
            raise ValueError(f'gamma must be non-negative, got {gamma}')
        if not 0 <= ratio < 1:
            raise ValueError(f'ratio must be in [0, 1), got {ratio}')
        super().__init__(input_modifiers=[], param_modifiers=[], output_modifiers=[], gradient_mapper=None,
                         reducer=None)
        self.gamma, self.ratio = float(gamma), float(ratio)
        self.threshold, self.stabilizer = float(threshold), float(stabilizer)
        self.zero_params = None if zero_params is None else list(zero_params)

    def copy(self) -> GammaWSquare:
        return type(self)(gamma=self.gamma, ratio=self.ratio, threshold=self.threshold, stabilizer=self.stabilizer,
                          zero_params=self.zero_params)

    def backward(self, module, grad_input, grad_output):
        if not supports_explicit(module):
            raise TypeError(f'GammaWSquare needs a Linear or zero-padded convolution, got {type(module).__name__}')
        original = self.stored_tensors['input'][0].clone()
        relevance_out = grad_output[0]
        weight = module.weight.detach()
        bias = getattr(module, 'bias', None)
        up_w, down_w = weight + self.gamma * weight.clamp(min=0), weight + self.gamma * weight.clamp(max=0)
        x_plus, x_minus = original.clamp(min=0), original.clamp(max=0)
        negative = bool((original < 0).any())
        with torch.no_grad():
            plain = layer_forward(module, original, weight, None if bias is None else bias.detach())
            up = layer_forward(module, x_plus, up_w)
            down = layer_forward(module, x_plus, down_w)
            up_mag = layer_forward(module, x_plus, up_w.abs())
            down_mag = layer_forward(module, x_plus, down_w.abs())
            if negative:
                up = up + layer_forward(module, x_minus, down_w)
                down = down + layer_forward(module, x_minus, up_w)
                up_mag = up_mag + layer_forward(module, -x_minus, down_w.abs())
                down_mag = down_mag + layer_forward(module, -x_minus, up_w.abs())
            live_up = (plain > 0) & (up > (self.ratio * up_mag).clamp(min=self.threshold))
            live_down = (plain < 0) & (down < -(self.ratio * down_mag).clamp(min=self.threshold))
            dead = ~(live_up | live_down)
            one = torch.ones_like(up)
            scale_up = torch.where(live_up, 1.0 / torch.where(live_up, up, one), torch.zeros_like(up))
            scale_down = torch.where(live_down, 1.0 / torch.where(live_down, down, one), torch.zeros_like(up))
            square = layer_forward(module, torch.ones_like(original), weight ** 2)
            scale_square = torch.where(dead, 1.0 / (square + self.stabilizer), torch.zeros_like(up))
        shape = original.shape
        s_up = relevance_out * scale_up
        relevance = x_plus * layer_transpose(module, s_up, up_w, shape)
        if negative:
            relevance = relevance + x_minus * layer_transpose(module, s_up, down_w, shape)
        if not vanishes_where(relevance_out, live_down):
            s_down = relevance_out * scale_down
            relevance = relevance + x_plus * layer_transpose(module, s_down, down_w, shape)
            if negative:
                relevance = relevance + x_minus * layer_transpose(module, s_down, up_w, shape)
        relevance = relevance + layer_transpose(module, relevance_out * scale_square, weight ** 2, shape)
        return tuple(relevance if orig.shape == relevance.shape else None for orig in grad_input)


class ExplicitZPlus(BasicHook):
    r"""Zennit's :math:`z^+` rule (:class:`zennit.rules.ZPlus`) with explicit transposed layers.

    .. math::

        z = W^+ x^+ + W^- x^- \,(+\, b^+), \qquad
        R = x^+ \odot W^{+\top} (R_{\text{out}} / z) + x^- \odot W^{-\top} (R_{\text{out}} / z),

    stabilized as Zennit does, the bias term only when the bias is not in ``zero_params``. The same relevance as
    Zennit's rule; in the engine's second-order passes each transposed layer is differentiated by one convolution
    instead of PyTorch's convolution double backward (which, for the 1x1 convolutions of EfficientNet-Lite0, took
    about 40 % of a second-order pass). Modules that :func:`~zennit_bilrp.lrp.explicit.supports_explicit` refuses
    take Zennit's rule.

    Parameters
    ----------
    stabilizer : float or callable
        :math:`\epsilon` of the denominator.
    zero_params : list of str, optional
        Parameters set to zero in the rule (e.g. ``['bias']``).
    """

    def __init__(self, stabilizer=1e-6, zero_params=None):
        from zennit.rules import ZPlus

        _init_with_fallback(self, ZPlus(stabilizer=stabilizer, zero_params=zero_params), stabilizer, zero_params)

    def copy(self) -> ExplicitZPlus:
        return type(self)(stabilizer=self.stabilizer, zero_params=self.zero_params)

    def backward(self, module, grad_input, grad_output):
        if not supports_explicit(module):
            return super().backward(module, grad_input, grad_output)
        original, relevance_out, weight, bias = _explicit_inputs(self, module, grad_output)
        x_plus, x_minus, negative = _signed_parts(original)
        w_plus, w_minus = weight.clamp(min=0), weight.clamp(max=0)
        with torch.no_grad():
            z = layer_forward(module, x_plus, w_plus)
            if negative:
                z = z + layer_forward(module, x_minus, w_minus)
            if bias is not None and 'bias' not in (self.zero_params or []):
                z = z + bias.clamp(min=0).reshape(1, -1, *([1] * (z.dim() - 2)))
            scale = 1.0 / self._stabilize(z)
        mapped = relevance_out * scale
        shape = original.shape
        relevance = x_plus * layer_transpose(module, mapped, w_plus, shape)
        if negative:
            relevance = relevance + x_minus * layer_transpose(module, mapped, w_minus, shape)
        return tuple(relevance if orig.shape == relevance.shape else None for orig in grad_input)
