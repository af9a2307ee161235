r"""Attention, LayerNorm and gating as modules, so that Zennit rules can explain transformers.

A Zennit rule belongs to one module that maps one tensor to one tensor. Transformers compute their attention,
residual sums and normalizations inline; the canonizers (:mod:`~zennit_bilrp.lrp.text_transformers`,
:mod:`~zennit_bilrp.lrp.vision_transformers`) route them through the modules of this file. How attention is
explained is the *rule family* (:data:`FAMILIES`):

- ``'conservative'`` (Ali et al., ICML 2022; Vasileiou and Eberle, NAACL 2024): the attention probabilities
  :math:`P = \mathrm{softmax}(QK^\top/\sqrt{d} + M)` are held constant, so the head output :math:`c = Pv` is linear
  in the values and all relevance flows through them (:class:`AttentionMix`);
- ``'attnlrp'`` (Achtibat et al., ICML 2024): the scores :math:`S = QK^\top/\sqrt d` (:class:`AttentionScores`),
  the softmax (:class:`AttentionSoftmax`) and the mix :math:`c = Pv` (:class:`AttentionValues`) are modules of
  their own; the two products take the epsilon rule followed by the uniform rule (half of the relevance to each
  operand) and the softmax the Taylor rule with bias (:mod:`~zennit_bilrp.lrp.attnlrp`), so queries and keys get
  relevance too.

In both families LayerNorm holds its standard deviation constant (:func:`layer_norm_constant_std`: the layer is then
affine in its input and takes the epsilon rule, which is also AttnLRP's identity-on-the-division rule), and a
product of two input-dependent factors (a SwiGLU gate) is a :class:`GatedProduct`. Every module that the rules need
is created by a canonizer and removed with it. Constants that a module needs (probabilities, masks) are set right
before each call, like the inputs Zennit's rules store: they describe the latest forward pass.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ['FAMILIES', 'check_family', 'AttentionMix', 'AttentionScores', 'AttentionSoftmax', 'AttentionValues',
           'GatedProduct', 'TokenMean', 'PatchEmbedding', 'attention_modules', 'attend', 'additive_mask',
           'layer_norm_constant_std', 'is_canonical_layer_norm', 'MultiheadSelfAttention']

#: the rule families for attention: probabilities held constant, or AttnLRP's rules
FAMILIES = ('conservative', 'attnlrp')


def check_family(family: str) -> str:
    """``family`` if it is one of :data:`FAMILIES`, else a ``ValueError`` naming them."""
    if family not in FAMILIES:
        raise ValueError(f'unknown rule family {family!r}; choose one of {FAMILIES}')
    return family


class AttentionMix(torch.nn.Module):
    r"""The attention-weighted sum of the values, :math:`c = P v`, with the probabilities :math:`P` held constant.

    The canonized attention sets :attr:`probabilities` (detached, shape ``(N, heads, L_q, L_k)``) right before each
    call. With :math:`P` constant the map is linear in ``value`` (``(N, heads, L_k, d)``) and has no bias, so
    LRP-:math:`\epsilon` conserves.
    """

    def __init__(self):
        super().__init__()
        self.probabilities: Optional[torch.Tensor] = None

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        if self.probabilities is None:
            raise RuntimeError('AttentionMix has no attention probabilities: it is called by the canonized attention '
                               'forward, which sets them first')
        return torch.matmul(self.probabilities, value)


class AttentionScores(torch.nn.Module):
    r"""The attention scores :math:`S = \tau\, Q K^\top` of queries and keys packed into one tensor.

    Input ``stack([q, k], -1)`` of shape ``(N, heads, L, d, 2)`` (self-attention), or the keys ``(N, heads, L_k, d)``
    alone when the query is a constant (:attr:`constant_query`, e.g. the learned probe of an attention-pooling head;
    set :attr:`query` before each call). :attr:`scaling` is :math:`\tau`. The rule is the epsilon-uniform rule over
    :attr:`operands` input-dependent operands.
    """

    def __init__(self, constant_query: bool = False):
        super().__init__()
        self.constant_query = constant_query
        self.query: Optional[torch.Tensor] = None
        self.scaling: float = 1.0

    @property
    def operands(self) -> int:
        """Number of input-dependent factors of the product (1 with a constant query, else 2)."""
        return 1 if self.constant_query else 2

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        if self.constant_query:
            if self.query is None:
                raise RuntimeError('AttentionScores has no constant query: the canonized forward sets it first')
            query, key = self.query, packed
        else:
            query, key = packed.unbind(-1)
        return torch.matmul(query, key.transpose(-1, -2)) * self.scaling


class AttentionSoftmax(torch.nn.Module):
    r"""The attention probabilities :math:`P = \mathrm{softmax}(S + B)` over the last axis.

    :attr:`offset` :math:`B` is a constant added to the scores :math:`S` (the attention mask, a relative position
    bias; ``None`` for none), set before each call. Keeping it inside the module makes the Taylor rule multiply by
    the scores alone, so masked positions get exactly no relevance.
    """

    def __init__(self):
        super().__init__()
        self.offset: Optional[torch.Tensor] = None

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        if self.offset is not None:
            scores = scores + self.offset
        return torch.softmax(scores, dim=-1)


class AttentionValues(torch.nn.Module):
    r"""The attention output :math:`c = P v` with both factors input-dependent (AttnLRP).

    Input ``cat([P.flatten(-2), v.flatten(-2)], -1)``: the probabilities ``(N, heads, L_q, L_k)`` and the values
    ``(N, heads, L_k, d)``, flattened over their last two axes and concatenated (:meth:`pack`), so that one tensor
    carries both (the rule's epsilon-uniform split then gives each half of the relevance).
    """

    def __init__(self):
        super().__init__()
        self.shape: Optional[tuple] = None

    def pack(self, probabilities: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The module input for ``probabilities`` and ``value`` (remembers the shape of the probabilities)."""
        self.shape = tuple(probabilities.shape[-2:])
        return torch.cat([probabilities.flatten(-2), value.flatten(-2)], dim=-1)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        queries, keys = self.shape
        probabilities = packed[..., :queries * keys].unflatten(-1, (queries, keys))
        value = packed[..., queries * keys:].unflatten(-1, (keys, -1))
        return torch.matmul(probabilities, value)


class GatedProduct(torch.nn.Module):
    r"""The elementwise product :math:`a \odot b` of a gate and a value, packed as ``stack([a, b], -1)``.

    With :attr:`constant_gate` (the conservative family) the gate :math:`a` is held constant and all relevance goes
    to :math:`b`; otherwise (AttnLRP) both get half (the uniform rule).
    """

    def __init__(self, constant_gate: bool = False):
        super().__init__()
        self.constant_gate = constant_gate

    @property
    def operands(self) -> int:
        """Number of input-dependent factors (1 with a constant gate, else 2)."""
        return 1 if self.constant_gate else 2

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        gate, value = packed.unbind(-1)
        return (gate.detach() if self.constant_gate else gate) * value


class TokenMean(torch.nn.Module):
    r"""The mean over the token axis (axis 1) of ``(N, T, h)`` tokens: :math:`\phi_c = \frac1T \sum_t A_{t,c}`.

    With the epsilon rule the relevance is the proportional one, :math:`R_{t,c} = A_{t,c} / (T \phi_c)\, R_c`.
    """

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)


class PatchEmbedding(torch.nn.Module):
    r"""The patch embedding of a vision transformer: a convolution with stride = kernel (one linear map per patch),
    flattened to tokens ``(N, P, h)`` in row-major patch order, plus a constant :attr:`offset` ``(1, P, h)``.

    The offset is the position embedding of the patch tokens, set before each call: a constant added, which the
    epsilon rule treats like the bias (relevance in proportion to each summand). :attr:`weight` and :attr:`bias`
    are the convolution's own parameters (shared, not copied).

    Parameters
    ----------
    conv : torch.nn.Conv2d
        The model's patch convolution (kernel = stride, no padding, dilation 1, one group).
    """

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        if not isinstance(conv, torch.nn.Conv2d):
            raise TypeError(f'the patch embedding must be a torch.nn.Conv2d, got {type(conv).__name__}')
        padding = conv.padding if isinstance(conv.padding, tuple) else (0, 0) if conv.padding == 'valid' else None
        if (tuple(conv.kernel_size) != tuple(conv.stride) or padding != (0, 0) or tuple(conv.dilation) != (1, 1)
                or conv.groups != 1):
            raise TypeError(f'unsupported patch embedding {conv}: explained are non-overlapping patches (kernel = '
                            'stride, no padding, dilation 1, one group)')
        self.weight = conv.weight
        self.bias = conv.bias
        self.patch_size = tuple(int(s) for s in conv.kernel_size)
        self.offset: Optional[torch.Tensor] = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.conv2d(pixels, self.weight, self.bias, stride=self.patch_size)
        out = out.flatten(2).transpose(1, 2)
        return out if self.offset is None else out + self.offset

    def extra_repr(self) -> str:
        return f'patch_size={self.patch_size}, hidden={self.weight.shape[0]}'


def attention_modules(family: str, constant_query: bool = False) -> dict:
    """The modules a canonized attention needs in ``family``, by attribute name (``canonizer_...``)."""
    if check_family(family) == 'conservative':
        return {'canonizer_mix': AttentionMix()}
    return {'canonizer_scores': AttentionScores(constant_query), 'canonizer_softmax': AttentionSoftmax(),
            'canonizer_values': AttentionValues()}


def additive_mask(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """An additive float mask (0 where attended, very negative elsewhere); boolean masks mean True = attend."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask.to(dtype)


def attend(owner: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           mask: Optional[torch.Tensor], scaling: float, bias: Optional[torch.Tensor] = None) -> tuple:
    r"""Multi-head attention through the modules that a canonizer gave ``owner`` (:func:`attention_modules`).

    Parameters
    ----------
    owner : torch.nn.Module
        The canonized attention module: with ``canonizer_mix`` (conservative) or ``canonizer_scores``,
        ``canonizer_softmax`` and ``canonizer_values`` (AttnLRP).
    query, key, value : torch.Tensor
        ``(N, heads, L, d)``; with a constant-query :class:`AttentionScores`, ``query`` is a constant
        ``(N or 1, heads, L_q, d)``.
    mask : torch.Tensor, optional
        Additive or boolean attention mask broadcastable to ``(N, heads, L_q, L_k)``.
    scaling : float
        :math:`\tau` of the scores :math:`\tau QK^\top`.
    bias : torch.Tensor, optional
        A constant added to the scores (e.g. MPNet's relative position bias).

    Returns
    -------
    tuple of torch.Tensor
        ``(P v, P)`` with heads on axis 1 (``P`` detached).
    """
    mask = additive_mask(mask, query.dtype)
    offset = mask if bias is None else bias if mask is None else bias + mask
    if hasattr(owner, 'canonizer_mix'):
        with torch.no_grad():
            scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
            probabilities = torch.softmax(scores if offset is None else scores + offset, dim=-1)
        owner.canonizer_mix.probabilities = probabilities
        return owner.canonizer_mix(value), probabilities
    scorer, softmax, mixer = owner.canonizer_scores, owner.canonizer_softmax, owner.canonizer_values
    scorer.scaling = scaling
    if scorer.constant_query:
        scorer.query = query.detach()
        scores = scorer(key)
    else:
        scores = scorer(torch.stack([query, key], dim=-1))
    softmax.offset = offset
    probabilities = softmax(scores)
    return mixer(mixer.pack(probabilities, value)), probabilities.detach()


def layer_norm_constant_std(self, input: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis with the standard deviation held constant (the mean is not); a method body for
    :class:`torch.nn.LayerNorm` instances (bound by the canonizers)."""
    centered = input - input.mean(dim=-1, keepdim=True)
    std = (centered.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt().detach()
    out = centered / std
    if self.weight is not None:
        out = out * self.weight
    if self.bias is not None:
        out = out + self.bias
    return out


def is_canonical_layer_norm(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a LayerNorm whose standard deviation a canonizer holds constant."""
    forward = module.__dict__.get('forward')
    return isinstance(module, torch.nn.LayerNorm) and getattr(forward, '__func__', None) is layer_norm_constant_std


class MultiheadSelfAttention(torch.nn.Module):
    r"""A :class:`torch.nn.MultiheadAttention` (batch first, one input projection for queries, keys and values)
    rewritten with :class:`torch.nn.Linear` projections, so that every product has a module with a rule.

    The projections share the parameters of the original module (views, not copies). ``forward(hidden)`` is
    self-attention; ``forward(hidden, query=probe)`` attends from a constant query ``(1, L_q, E)`` (an
    attention-pooling probe), whose projection is then a constant too.

    Parameters
    ----------
    attention : torch.nn.MultiheadAttention
        The module to rewrite.
    family : {'conservative', 'attnlrp'}
        The rule family (which attention modules are created, :func:`attention_modules`).
    constant_query : bool
        Whether the query is a constant (attention pooling).
    """

    def __init__(self, attention: torch.nn.MultiheadAttention, family: str, constant_query: bool = False):
        super().__init__()
        check_multihead(attention)
        embed = attention.embed_dim
        weight, bias = attention.in_proj_weight, attention.in_proj_bias
        for index, name in enumerate(('q_proj', 'k_proj', 'v_proj')):
            linear = torch.nn.Linear(embed, embed, bias=bias is not None, device=weight.device, dtype=weight.dtype)
            linear.weight = torch.nn.Parameter(weight[index * embed:(index + 1) * embed], weight.requires_grad)
            if bias is not None:
                linear.bias = torch.nn.Parameter(bias[index * embed:(index + 1) * embed], bias.requires_grad)
            setattr(self, name, linear)
        self.out_proj = attention.out_proj
        self.num_heads = attention.num_heads
        self.head_dim = embed // attention.num_heads
        self.constant_query = constant_query
        for name, module in attention_modules(family, constant_query).items():
            setattr(self, name, module)

    def forward(self, hidden: torch.Tensor, query: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        if (query is not None) != self.constant_query:
            raise ValueError('MultiheadSelfAttention: pass query= exactly when the query is constant')

        def heads(tensor):
            return tensor.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

        if self.constant_query:
            with torch.no_grad():
                queries = heads(torch.nn.functional.linear(query, self.q_proj.weight, self.q_proj.bias))
        else:
            queries = heads(self.q_proj(hidden))
        context, _ = attend(self, queries, heads(self.k_proj(hidden)), heads(self.v_proj(hidden)), attention_mask,
                            self.head_dim ** -0.5)
        return self.out_proj(context.transpose(1, 2).flatten(-2))


def check_multihead(attention: torch.nn.MultiheadAttention) -> None:
    """Refuse :class:`torch.nn.MultiheadAttention` configurations that :class:`MultiheadSelfAttention` does not
    rewrite (naming the option)."""
    problems = [name for name, bad in (
        ('batch_first=False', not attention.batch_first),
        ('separate query/key/value projection weights', attention.in_proj_weight is None),
        ('bias_k/bias_v', attention.bias_k is not None or attention.bias_v is not None),
        ('add_zero_attn', attention.add_zero_attn),
    ) if bad]
    if problems:
        raise TypeError(f'unsupported nn.MultiheadAttention ({", ".join(problems)}): the canonizer rewrites '
                        'batch-first attention with one input projection only')
