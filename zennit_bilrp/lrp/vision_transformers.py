r"""Pre-LayerNorm transformer blocks (vision transformers, CLIP/SigLIP towers): canonized forwards and the table of
covered classes.

The covered blocks all compute :math:`h \leftarrow h + \gamma_1 \odot \mathrm{attn}(\mathrm{LN}_1(h))`,
:math:`h \leftarrow h + \gamma_2 \odot \mathrm{mlp}(\mathrm{LN}_2(h))` (layer scale :math:`\gamma` where the model
has it, DINOv2 and timm with ``init_values``). The canonized block forward (:func:`pre_norm_block`) runs exactly
this with both sums as :class:`zennit.layer.Sum` modules; dropout and drop-path are skipped (the identity in eval
mode; the canonized forward refuses training mode). The canonized attention forwards compute attention with the
modules of :mod:`~zennit_bilrp.lrp.attention`, never through the attention implementation the model was loaded with
(eager, sdpa, flash or flex attention: all are canonized the same way). Covered:

- Hugging Face ``ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel`` (layouts with ``q_proj``/``k_proj``/
  ``v_proj``, transformers 5), ``CLIPVisionModel``/``CLIPTextModel`` and ``SiglipVisionModel``/``SiglipTextModel``
  (both towers share the block class), SigLIP's attention-pooling head (a learned probe attends over the tokens:
  a constant query), DINOv2's SwiGLU feed-forward (the gate product as a
  :class:`~zennit_bilrp.lrp.attention.GatedProduct`);
- torchvision's ``VisionTransformer`` (``vit_b_16`` and friends), whose :class:`torch.nn.MultiheadAttention` is
  swapped for a :class:`~zennit_bilrp.lrp.attention.MultiheadSelfAttention` with the same parameters while the
  canonizer is applied;
- timm's ``VisionTransformer`` blocks (``Block`` with ``Attention``: fused ``qkv`` projection, optional query/key
  normalization, layer scale), when timm is installed;
- OpenCLIP's ``ResidualAttentionBlock`` (both towers of ``open_clip.CLIP``; its :class:`torch.nn.MultiheadAttention`
  is swapped as torchvision's; quick-GELU and layer scale take the identity rule), when open_clip is installed.

:func:`vision_problem` names what a model holds that none of this covers.
"""
from __future__ import annotations

from typing import Optional

import torch

from .attention import GatedProduct, MultiheadSelfAttention, attend, attention_modules, check_multihead

__all__ = ['BLOCK_LAYOUTS', 'ATTENTION_LAYOUTS', 'MULTIHEAD_SLOTS', 'LAYER_SCALES', 'ACTIVATIONS', 'pre_norm_block',
           'block_layout', 'attention_layout', 'multihead_slot', 'is_layer_scale', 'is_covered', 'vision_attributes',
           'vision_problem', 'swap_multihead']

_HF = 'transformers.models.'
_TIMM_BLOCK = ('timm.models.vision_transformer', 'Block')
_OPEN_CLIP_BLOCK = ('open_clip.transformer', 'ResidualAttentionBlock')

#: pre-LN block classes ``(defining module, class name)`` -> attribute names ``(norm1, attention, scale1, norm2,
#: mlp, scale2)`` (``None``: the block has no layer scale)
BLOCK_LAYOUTS = {
    (_HF + 'vit.modeling_vit', 'ViTLayer'): ('layernorm_before', 'attention', None, 'layernorm_after', 'mlp', None),
    (_HF + 'dinov2.modeling_dinov2', 'Dinov2Layer'): ('norm1', 'attention', 'layer_scale1', 'norm2', 'mlp',
                                                      'layer_scale2'),
    (_HF + 'dinov2_with_registers.modeling_dinov2_with_registers', 'Dinov2WithRegistersLayer'):
        ('norm1', 'attention', 'layer_scale1', 'norm2', 'mlp', 'layer_scale2'),
    (_HF + 'clip.modeling_clip', 'CLIPEncoderLayer'): ('layer_norm1', 'self_attn', None, 'layer_norm2', 'mlp', None),
    (_HF + 'siglip.modeling_siglip', 'SiglipEncoderLayer'): ('layer_norm1', 'self_attn', None, 'layer_norm2', 'mlp',
                                                             None),
    ('torchvision.models.vision_transformer', 'EncoderBlock'): ('ln_1', 'self_attention', None, 'ln_2', 'mlp', None),
    _TIMM_BLOCK: ('norm1', 'attn', 'ls1', 'norm2', 'mlp', 'ls2'),
    _OPEN_CLIP_BLOCK: ('ln_1', 'attn', 'ls_1', 'ln_2', 'mlp', 'ls_2'),
}

#: Hugging Face attention classes -> ``(output projection, scaling attribute)``; all have ``q_proj``, ``k_proj``,
#: ``v_proj`` and ``head_dim``
ATTENTION_LAYOUTS = {
    (_HF + 'vit.modeling_vit', 'ViTAttention'): ('o_proj', 'scaling'),
    (_HF + 'dinov2.modeling_dinov2', 'Dinov2Attention'): ('o_proj', 'scaling'),
    (_HF + 'dinov2_with_registers.modeling_dinov2_with_registers', 'Dinov2WithRegistersAttention'):
        ('o_proj', 'scaling'),
    (_HF + 'clip.modeling_clip', 'CLIPAttention'): ('out_proj', 'scale'),
    (_HF + 'siglip.modeling_siglip', 'SiglipAttention'): ('out_proj', 'scale'),
}
_TIMM_ATTENTION = ('timm.layers.attention', 'Attention')

#: classes holding a :class:`torch.nn.MultiheadAttention` that the canonizer swaps: ``(defining module, class name)``
#: -> ``(attribute, constant query)``
MULTIHEAD_SLOTS = {
    ('torchvision.models.vision_transformer', 'EncoderBlock'): ('self_attention', False),
    (_HF + 'siglip.modeling_siglip', 'SiglipMultiheadAttentionPoolingHead'): ('attention', True),
    _OPEN_CLIP_BLOCK: ('attn', False),
}

_SWIGLU = {(_HF + 'dinov2.modeling_dinov2', 'Dinov2SwiGLUFFN'),
           (_HF + 'dinov2_with_registers.modeling_dinov2_with_registers', 'Dinov2WithRegistersSwiGLUFFN')}
_POOL_HEAD = (_HF + 'siglip.modeling_siglip', 'SiglipMultiheadAttentionPoolingHead')

#: layer-scale classes (an elementwise constant scale: the identity rule)
LAYER_SCALES = {(_HF + 'dinov2.modeling_dinov2', 'Dinov2LayerScale'),
                (_HF + 'dinov2_with_registers.modeling_dinov2_with_registers', 'Dinov2WithRegistersLayerScale'),
                ('timm.layers.layer_scale', 'LayerScale'), ('open_clip.transformer', 'LayerScale')}
#: elementwise activations defined outside torch and Hugging Face (the identity rule)
ACTIVATIONS = {('open_clip.transformer', 'QuickGELU')}


def _key(module: torch.nn.Module) -> tuple:
    return type(module).__module__, type(module).__name__


def block_layout(module: torch.nn.Module) -> Optional[tuple]:
    """The :data:`BLOCK_LAYOUTS` entry of ``module``'s class, or None."""
    return BLOCK_LAYOUTS.get(_key(module))


def attention_layout(module: torch.nn.Module) -> Optional[tuple]:
    """``(output projection, scaling attribute)`` of a covered attention class (``('proj', 'scale')`` for timm's
    ``Attention``), or None."""
    if _key(module) == _TIMM_ATTENTION:
        return 'proj', 'scale'
    return ATTENTION_LAYOUTS.get(_key(module))


def multihead_slot(module: torch.nn.Module) -> Optional[tuple]:
    """``(attribute, constant query)`` of the :class:`torch.nn.MultiheadAttention` that ``module`` holds and the
    canonizer swaps, or None."""
    return MULTIHEAD_SLOTS.get(_key(module))


def is_layer_scale(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a covered layer scale (an elementwise constant scale, :data:`LAYER_SCALES`) or one of
    the :data:`ACTIVATIONS`: modules that take the identity rule."""
    return _key(module) in LAYER_SCALES or _key(module) in ACTIVATIONS


def _refuse_training(module: torch.nn.Module) -> None:
    if module.training:
        raise RuntimeError(f'{type(module).__name__} is in training mode: the canonized block skips dropout and '
                           'drop-path, which is exact in eval mode only; call model.eval() first')


def pre_norm_block(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *args,
                   **kwargs) -> torch.Tensor:
    """Canonized pre-LN block: ``h + s1(attn(n1(h)))`` and ``h + s2(mlp(n2(h)))`` with the sums as modules
    (``self.canonizer_layout`` names the parts, :data:`BLOCK_LAYOUTS`)."""
    _refuse_training(self)
    norm1, attention, scale1, norm2, mlp, scale2 = (None if name is None else getattr(self, name)
                                                    for name in self.canonizer_layout)
    if kwargs.get('is_causal') or kwargs.get('k_x') is not None or kwargs.get('v_x') is not None:
        raise TypeError(f'{type(self).__name__}: the canonized block explains self-attention with an explicit '
                        'additive mask only (no is_causal, no cross-attention)')
    attention_mask = kwargs.get('attn_mask') if attention_mask is None else attention_mask  # OpenCLIP's name
    branch = attention(norm1(hidden_states), attention_mask=attention_mask)
    branch = branch[0] if isinstance(branch, tuple) else branch
    branch = branch if scale1 is None else scale1(branch)
    hidden = self.canonizer_sum_attention(torch.stack([branch, hidden_states], dim=-1))
    branch = mlp(norm2(hidden))
    branch = branch if scale2 is None else scale2(branch)
    return self.canonizer_sum_mlp(torch.stack([branch, hidden], dim=-1))


def _split_heads(tensor: torch.Tensor, head_dim: int) -> torch.Tensor:
    return tensor.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def _hf_attention(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """Canonized Hugging Face self-attention (ViT, DINOv2, CLIP, SigLIP): ``(output, probabilities)``."""
    output, scaling = attention_layout(self)
    query, key, value = (_split_heads(getattr(self, name)(hidden_states), self.head_dim)
                         for name in ('q_proj', 'k_proj', 'v_proj'))
    context, probabilities = attend(self, query, key, value, attention_mask, getattr(self, scaling))
    return getattr(self, output)(context.transpose(1, 2).flatten(-2)), probabilities


def _timm_attention(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                    attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Canonized timm ``Attention``: fused ``qkv`` projection, optional query/key and output normalization."""
    if is_causal or attn_mask is not None:
        raise TypeError('timm Attention: masks and causal attention are not supported by the canonized forward')
    batch, tokens, _ = x.shape
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.unbind(0)
    query, key = self.q_norm(query), self.k_norm(key)
    context, _ = attend(self, query, key, value, attention_mask, self.scale)
    return self.proj(self.norm(context.transpose(1, 2).reshape(batch, tokens, self.attn_dim)))


def _swiglu(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """Canonized DINOv2 SwiGLU feed-forward: ``down(gate(act(g(x)), u(x)))`` with the product as a module."""
    gate = self.act_fn(self.gate_proj(hidden_states))
    return self.down_proj(self.canonizer_gate(torch.stack([gate, self.up_proj(hidden_states)], dim=-1)))


def _pool_head(self, hidden_state: torch.Tensor) -> torch.Tensor:
    """Canonized SigLIP attention-pooling head: the probe attends over the tokens (a constant query), then
    ``Sum(a, mlp(LN(a)))``; returns the pooled ``(N, h)``."""
    _refuse_training(self)
    attended = self.attention(hidden_state, query=self.probe)
    pooled = self.canonizer_sum(torch.stack([attended, self.mlp(self.layernorm(attended))], dim=-1))
    return pooled[:, 0]


def vision_attributes(module: torch.nn.Module, family: str, table: str) -> Optional[dict]:
    """The attributes a canonizer sets on ``module`` (its canonized ``forward`` and the modules it needs), for the
    ``table`` ``'attention'`` (attention and gate products, in rule ``family``) or ``'residual'`` (residual
    blocks and the pooling head); None if ``module`` is not covered by that table."""
    if table == 'attention':
        if attention_layout(module) is not None:
            method = _timm_attention if _key(module) == _TIMM_ATTENTION else _hf_attention
            return {'forward': method.__get__(module), **attention_modules(family)}
        if _key(module) in _SWIGLU:
            return {'forward': _swiglu.__get__(module), 'canonizer_gate': GatedProduct(family == 'conservative')}
        return None
    layout = block_layout(module)
    if layout is not None:
        return {'forward': pre_norm_block.__get__(module), 'canonizer_layout': layout,
                'canonizer_sum_attention': _sum(), 'canonizer_sum_mlp': _sum()}
    if _key(module) == _POOL_HEAD:
        return {'forward': _pool_head.__get__(module), 'canonizer_sum': _sum()}
    return None


def is_covered(module: torch.nn.Module) -> bool:
    """Whether a canonizer of this module canonizes ``module`` (block, attention, gate, pooling head or
    MultiheadAttention slot)."""
    return (block_layout(module) is not None or attention_layout(module) is not None
            or multihead_slot(module) is not None or _key(module) in _SWIGLU or _key(module) == _POOL_HEAD)


def _sum() -> torch.nn.Module:
    from zennit.layer import Sum

    return Sum()


def swap_multihead(module: torch.nn.Module, family: str) -> Optional[tuple]:
    """Swap the :class:`torch.nn.MultiheadAttention` of a :data:`MULTIHEAD_SLOTS` module for a
    :class:`~zennit_bilrp.lrp.attention.MultiheadSelfAttention` with the same parameters; returns ``(attribute,
    original)`` to swap back, or None if ``module`` holds none."""
    slot = multihead_slot(module)
    if slot is None:
        return None
    name, constant_query = slot
    original = getattr(module, name)
    if not isinstance(original, torch.nn.MultiheadAttention):
        return None
    setattr(module, name, MultiheadSelfAttention(original, family, constant_query))
    return name, original


def _missing(module: torch.nn.Module, names) -> list:
    return [name for name in names if name is not None and not hasattr(module, name)]


def vision_problem(name: str, module: torch.nn.Module, parent: Optional[torch.nn.Module]) -> Optional[str]:
    """Why the canonizers cannot explain ``module`` (qualified ``name``, its ``parent``), or None if it is covered
    or not an attention module of a vision/CLIP architecture."""
    where = f"'{name}' ({type(module).__name__})" if name else f'the model itself ({type(module).__name__})'
    if isinstance(module, torch.nn.MultiheadAttention):
        if parent is None or multihead_slot(parent) is None:
            return (f'unsupported layer {where}: nn.MultiheadAttention is canonized only inside torchvision\'s '
                    'EncoderBlock and the SigLIP attention-pooling head')
        try:
            check_multihead(module)
        except TypeError as error:
            return f'unsupported layer {where}: {error}'
        return None
    layout = block_layout(module)
    attention = attention_layout(module)
    missing = _missing(module, layout or ()) + _missing(module, ('q_proj', 'k_proj', 'v_proj', 'head_dim')
                                                        if attention is not None and _key(module) != _TIMM_ATTENTION
                                                        else ())
    if missing:
        return (f'unsupported layer {where}: it lacks {missing}; the canonizers cover the layouts of transformers 5 '
                '(q_proj/k_proj/v_proj attention) and timm >= 1.0')
    if _key(module) == _OPEN_CLIP_BLOCK and hasattr(module, 'ln_1_kv'):
        return f'unsupported layer {where}: OpenCLIP cross-attention blocks are not covered'
    if _key(module) == _TIMM_ATTENTION and getattr(module, 'gate', None) is not None:
        return f'unsupported layer {where}: gated timm attention (an input-dependent sigmoid gate) has no rule here'
    return None
