r"""Image and caption towers as maps of one tensor, for the BiLRP engine: :class:`ImageEncoder` and
:class:`CaptionEncoder`.

:class:`ImageEncoder` maps images ``(N, C, H, W)`` to embeddings ``(N, h)`` with a vision transformer (Hugging Face
ViT, DINOv2 with or without registers, the CLIP and SigLIP vision towers, torchvision and timm vision
transformers). Its forward is the model's: the patch embedding as a
:class:`~zennit_bilrp.lrp.attention.PatchEmbedding` (one linear map per patch, the patches' position embeddings a
constant added, i.e. a bias), the class and register tokens (constants: they carry no relevance) in front of the
patch tokens, the model's own blocks, norms, pooling head and projection. The relevance arrives at the pixels; the
patch grid of the model (:meth:`ImageEncoder.grid`, :meth:`ImageEncoder.pooling`) sums it per patch, so patch
``p`` of the engine's grid is token ``num_prefix + p`` of the sequence (row-major, as the patch convolution is
flattened); class and register tokens are not on the grid.

:class:`CaptionEncoder` maps the text tower's token input ``(N, H + 1, L)`` (embedding outputs and the attention mask,
as :func:`~zennit_bilrp.lrp.text_transformers.token_input`) to the caption embedding ``(N, h)``: the CLIP or SigLIP
text encoder with its final LayerNorm, pooled token and projection. Both towers return the embedding, so a
two-tower engine uses ``head='none'``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .attention import PatchEmbedding, TokenMean
from .text_transformers import split_token_input, token_input
from .vision_transformers import pre_norm_block

__all__ = ['POOLINGS', 'VisionParts', 'vision_parts', 'ImageEncoder', 'CaptionEncoder']

#: pooling of :class:`ImageEncoder`: the model's own, the class token, the mean of the patch tokens (class and
#: register tokens excluded), or both concatenated
POOLINGS = ('model', 'cls', 'mean', 'cls_mean')


@dataclass
class VisionParts:
    """What :class:`ImageEncoder` uses of one vision model (the modules are the model's own).

    Attributes
    ----------
    kind : str
        ``'vit'``, ``'dinov2'``, ``'clip'``, ``'siglip'``, ``'torchvision'``, ``'timm'`` or ``'open_clip'``.
    conv : torch.nn.Conv2d
        The patch convolution.
    blocks : torch.nn.Module
        The transformer blocks, in order.
    constants : callable
        ``(height, width) -> (prefix, positions)``: the prefix tokens ``(1, num_prefix, h)`` with their position
        embeddings (or None) and the position embeddings of the patch tokens ``(1, P, h)`` (or None).
    num_prefix : int
        Class and register tokens in front of the patch tokens.
    has_cls : bool
        Whether token 0 is a class token.
    model_pooling : str
        The model's own pooling: ``'cls'``, ``'mean'`` or ``'head'`` (an attention-pooling head).
    image_size : tuple or None
        The only input size the model takes, or None (any multiple of the patch size).
    stages : dict
        The model's modules by role (missing or None: the model has none): ``'pre'`` the norm before the blocks,
        ``'post'`` the norm of all tokens after them, ``'pooled'`` the norm of the pooled token, ``'head'`` an
        attention-pooling head, ``'projection'`` the projection into the joint image-text space.
    """
    kind: str
    conv: torch.nn.Conv2d
    blocks: torch.nn.Module
    constants: Callable[[int, int], tuple]
    num_prefix: int
    has_cls: bool
    model_pooling: str
    image_size: Optional[tuple] = None
    stages: dict = field(default_factory=dict)


def _zeros(conv: torch.nn.Conv2d, tokens: int) -> torch.Tensor:
    return conv.weight.new_zeros(1, tokens, conv.out_channels)


def _grid_tokens(conv: torch.nn.Conv2d, height: int, width: int) -> int:
    return (height // conv.kernel_size[0]) * (width // conv.kernel_size[1])


def _hf_vit(model, kind: str) -> VisionParts:
    """Hugging Face ViT and DINOv2 (with registers): class token, optional registers, learned positions."""
    emb = model.embeddings
    conv = emb.patch_embeddings.projection
    registers = getattr(emb, 'register_tokens', None)

    def constants(height, width):
        dummy = _zeros(conv, 1 + _grid_tokens(conv, height, width))
        if kind == 'vit' and (height, width) == tuple(emb.image_size):
            positions = emb.position_embeddings
        else:
            positions = emb.interpolate_pos_encoding(dummy, height, width)
        prefix = emb.cls_token + positions[:, :1]
        if registers is not None:
            prefix = torch.cat([prefix, registers], dim=1)
        return prefix.detach(), positions[:, 1:].detach()

    blocks = model.layers if hasattr(model, 'layers') else model.encoder.layer
    count = 1 + (0 if registers is None else registers.shape[1])
    return VisionParts(kind, conv, blocks, constants, count, True, 'cls', stages={'post': model.layernorm})


def _hf_clip_siglip(model, kind: str, projection) -> VisionParts:
    """Hugging Face CLIP and SigLIP vision towers (CLIP: class token, pre-LN, post-LN on the pooled token;
    SigLIP: no class token, post-LN on all tokens, attention-pooling head)."""
    emb = model.embeddings
    conv = emb.patch_embedding
    clip = kind == 'clip'

    def constants(height, width):
        tokens = _grid_tokens(conv, height, width)
        if (height, width) == (emb.image_size, emb.image_size):
            positions = emb.position_embedding.weight[None]
        else:
            positions = emb.interpolate_pos_encoding(_zeros(conv, tokens + clip), height, width)
        if not clip:
            return None, positions.detach()
        prefix = emb.class_embedding[None, None] + positions[:, :1]
        return prefix.detach(), positions[:, 1:].detach()

    stages = {'pre': model.pre_layrnorm, 'pooled': model.post_layernorm} if clip else {'post': model.post_layernorm}
    head = getattr(model, 'head', None) if not clip and getattr(model, 'use_head', False) else None
    stages.update({'head': head, 'projection': projection})
    return VisionParts(kind, conv, model.encoder.layers, constants, int(clip), clip, 'cls' if clip else
                       'head' if head is not None else 'mean', stages=stages)


def _torchvision(model) -> VisionParts:
    """torchvision ``VisionTransformer``: class token, learned positions, fixed image size."""
    conv = model.conv_proj
    if not isinstance(conv, torch.nn.Conv2d):
        raise TypeError('torchvision VisionTransformer with a convolutional stem: only the patch convolution '
                        '(conv_proj as one Conv2d) is supported')
    positions = model.encoder.pos_embedding

    def constants(height, width):
        return (model.class_token + positions[:, :1]).detach(), positions[:, 1:].detach()

    return VisionParts('torchvision', conv, model.encoder.layers, constants, 1, True, 'cls',
                       (model.image_size, model.image_size), stages={'post': model.encoder.ln})


def _timm(model) -> VisionParts:
    """timm ``VisionTransformer`` (global pool 'token' or 'avg'; no attention pooling)."""
    embed = model.patch_embed
    if not isinstance(embed.norm, torch.nn.Identity) or getattr(embed, 'dynamic_img_pad', False):
        raise TypeError('timm VisionTransformer with a normalized or padded patch embedding is not supported')
    if model.attn_pool is not None or model.global_pool not in ('token', 'avg'):
        raise TypeError(f'timm VisionTransformer with global_pool={model.global_pool!r} is not supported (only '
                        "'token' and 'avg')")
    if model.global_pool == 'avg' and getattr(model, 'pool_include_prefix', False):
        raise TypeError('timm VisionTransformer pooling the prefix tokens (pool_include_prefix) is not supported')
    prefix_params = [p for p in (model.cls_token, model.reg_token) if p is not None]
    count = sum(p.shape[1] for p in prefix_params)

    def constants(height, width):
        grid = (height // embed.patch_size[0], width // embed.patch_size[1])
        positions = model.pos_embed
        if positions is not None and model.dynamic_img_size:
            from timm.layers import resample_abs_pos_embed

            positions = resample_abs_pos_embed(positions, new_size=grid, old_size=embed.grid_size,
                                               num_prefix_tokens=0 if model.no_embed_class else count)
        prefix = torch.cat([p for p in prefix_params], dim=1) if prefix_params else None
        if positions is not None and not model.no_embed_class and prefix is not None:
            prefix, positions = prefix + positions[:, :count], positions[:, count:]
        return (None if prefix is None else prefix.detach()), (None if positions is None else positions.detach())

    size = None if model.dynamic_img_size or not embed.strict_img_size else tuple(embed.img_size)
    return VisionParts('timm', embed.proj, model.blocks, constants, count, model.cls_token is not None,
                       'cls' if model.global_pool == 'token' else 'mean', size,
                       stages={'pre': model.norm_pre, 'post': model.norm, 'pooled': model.fc_norm})


def linear_from_matrix(matrix: torch.Tensor) -> torch.nn.Linear:
    """A bias-free :class:`torch.nn.Linear` computing ``x @ matrix`` (an OpenCLIP projection parameter ``(in, out)``)
    with the matrix's storage (a transposed view, not a copy), so that the projection has a module and a rule."""
    linear = torch.nn.Linear(matrix.shape[0], matrix.shape[1], bias=False, device=matrix.device, dtype=matrix.dtype)
    linear.weight = torch.nn.Parameter(matrix.t(), matrix.requires_grad)
    return linear


def _open_clip(visual, project: bool) -> VisionParts:
    """OpenCLIP ``VisionTransformer``: class token, learned (or fixed sin-cos) positions, fixed image size."""
    if type(visual).__name__ != 'VisionTransformer':
        raise TypeError(f'OpenCLIP {type(visual).__name__} image towers are not supported (only VisionTransformer)')
    if visual.attn_pool is not None or visual.pool_type not in ('tok', 'avg'):
        raise TypeError('OpenCLIP VisionTransformer with attentional pooling or pool_type "none" is not supported')
    positions = visual.positional_embedding

    def constants(height, width):
        prefix = visual.class_embedding[None, None] + positions[None, :1]
        return prefix.detach(), positions[None, 1:].detach()

    stages = {'pre': visual.ln_pre, 'pooled' if visual.final_ln_after_pool else 'post': visual.ln_post}
    if project and visual.proj is not None:
        stages['projection'] = linear_from_matrix(visual.proj)
    return VisionParts('open_clip', visual.conv1, visual.transformer.resblocks, constants, 1, True,
                       'cls' if visual.pool_type == 'tok' else 'mean', tuple(visual.image_size), stages=stages)


def vision_parts(model: torch.nn.Module, project: bool = True) -> VisionParts:
    """The :class:`VisionParts` of a supported vision model.

    Parameters
    ----------
    model : torch.nn.Module
        ``ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``CLIPVisionModel``,
        ``CLIPVisionModelWithProjection``, ``CLIPModel``, ``SiglipVisionModel``, ``SiglipModel`` (Hugging Face),
        torchvision's or timm's ``VisionTransformer``, OpenCLIP's ``CLIP`` or its ``VisionTransformer``.
    project : bool
        Include the model's projection into the joint image-text space (CLIP, OpenCLIP), where it has one.

    Raises
    ------
    TypeError
        For any other model, naming its class.
    """
    import torchvision

    if isinstance(model, torchvision.models.VisionTransformer):
        return _torchvision(model)
    if type(model).__module__.startswith('timm.') and type(model).__name__ == 'VisionTransformer':
        return _timm(model)
    if type(model).__module__.startswith('open_clip.'):
        return _open_clip(getattr(model, 'visual', model), project)
    projection = getattr(model, 'visual_projection', None) if project else None
    tower = getattr(model, 'vision_model', model)
    model_type = getattr(getattr(tower, 'config', None), 'model_type', None)
    if model_type in ('vit', 'dinov2', 'dinov2_with_registers'):
        return _hf_vit(tower, 'vit' if model_type == 'vit' else 'dinov2')
    if model_type in ('clip_vision_model', 'siglip_vision_model'):
        return _hf_clip_siglip(tower, model_type.split('_')[0], projection)
    raise TypeError(f'{type(model).__name__} is not a supported vision model: ImageEncoder takes Hugging Face '
                    'ViTModel, Dinov2Model, Dinov2WithRegistersModel, CLIP and SigLIP vision towers (or the '
                    'two-tower models), torchvision or timm VisionTransformer, and OpenCLIP ViT models')


class ImageEncoder(torch.nn.Module):
    """A vision transformer as a map from images ``(N, C, H, W)`` to embeddings ``(N, h)``, for the BiLRP engine.

    Its sub-modules are the model's blocks, norms, pooling head and projection (so the composite gives them their
    rules) and its own :class:`~zennit_bilrp.lrp.attention.PatchEmbedding` (sharing the patch convolution's
    parameters) and :class:`~zennit_bilrp.lrp.attention.TokenMean`; the rest of the model is not touched.

    Parameters
    ----------
    model : torch.nn.Module
        A supported vision model (see :func:`vision_parts`), in eval mode.
    pooling : {'model', 'cls', 'mean', 'cls_mean'}
        The embedding: the model's own pooled output (CLIP: class token, post-LayerNorm; SigLIP: its
        attention-pooling head; ViT, DINOv2, torchvision: the class token after the final norm; timm: its
        ``global_pool``), the class token, the mean of the patch tokens (class and register tokens excluded), or the
        class token and the patch mean concatenated (DINOv2's linear-probe features).
    project : bool
        Apply the model's projection into the joint image-text space (CLIP) where it has one.

    Raises
    ------
    TypeError
        For an unsupported model (naming its class).
    ValueError
        For a pooling the model does not have (e.g. ``'cls'`` without a class token).
    """

    def __init__(self, model: torch.nn.Module, pooling: str = 'model', project: bool = True):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f'unknown pooling {pooling!r}; choose one of {POOLINGS}')
        parts = vision_parts(model, project)
        self.kind = parts.kind
        self.pooling = parts.model_pooling if pooling == 'model' else pooling
        if self.pooling in ('cls', 'cls_mean') and not parts.has_cls:
            raise ValueError(f"pooling {pooling!r}: the {parts.kind} model has no class token; use 'mean' or 'model'")
        if self.pooling == 'cls_mean' and parts.stages.get('pooled') is not None:
            raise ValueError(f"pooling 'cls_mean': the {parts.kind} model normalizes its pooled token; use 'cls' or "
                             "'mean'")
        self.patch_embedding = PatchEmbedding(parts.conv)
        self.token_mean = TokenMean()
        self.blocks = parts.blocks
        self.pre_norm, self.post_norm = parts.stages.get('pre'), parts.stages.get('post')
        self.pooled_norm, self.head = parts.stages.get('pooled'), parts.stages.get('head')
        self.projection = parts.stages.get('projection')
        self.num_prefix = parts.num_prefix
        self.has_cls = parts.has_cls
        self.image_size = parts.image_size
        object.__setattr__(self, 'constants', parts.constants)  # a function of the model's parameters
        object.__setattr__(self, 'model', model)  # not a sub-module: the unused parts get no rules

    @property
    def patch_size(self) -> tuple:
        """The model's patch size ``(height, width)`` in pixels."""
        return self.patch_embedding.patch_size

    def grid(self, height: int, width: int) -> tuple:
        """The patch grid ``(rows, columns)`` of an image of ``height`` x ``width`` pixels (checked)."""
        rows, cols = self.patch_size
        if height % rows or width % cols:
            raise ValueError(f'image of {height} x {width} pixels: the patch size {self.patch_size} must divide it')
        if self.image_size is not None and (height, width) != tuple(self.image_size):
            raise ValueError(f'image of {height} x {width} pixels: the {self.kind} model takes '
                             f'{self.image_size[0]} x {self.image_size[1]} only')
        return height // rows, width // cols

    def patch_pooling(self, height: int, width: int) -> tuple:
        """The engine's ``pooling`` for images of ``height`` x ``width`` pixels: the model's patch size, so that the
        relevance is summed over the channels and each model patch (patch ``p`` is token ``num_prefix + p``)."""
        self.grid(height, width)
        return self.patch_size

    def token_layout(self, height: int, width: int) -> list:
        """What each token of the sequence is: ``('cls', None)``, ``('register', None)`` or ``('patch', (top, left,
        bottom, right))`` with the patch's pixel box (rows ``top:bottom``, columns ``left:right``)."""
        rows, cols = self.grid(height, width)
        kinds = [('cls', None)] if self.has_cls else []
        kinds += [('register', None)] * (self.num_prefix - len(kinds))
        size_r, size_c = self.patch_size
        return kinds + [('patch', (r * size_r, c * size_c, (r + 1) * size_r, (c + 1) * size_c))
                        for r in range(rows) for c in range(cols)]

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """The token sequence entering the first block, ``(N, num_prefix + P, h)``: prefix tokens (constants),
        then the patch tokens in row-major patch order."""
        if pixels.dim() != 4:
            raise ValueError(f'ImageEncoder input of shape {tuple(pixels.shape)}; expected images (N, C, H, W)')
        self.grid(pixels.shape[2], pixels.shape[3])
        prefix, positions = self.constants(pixels.shape[2], pixels.shape[3])
        self.patch_embedding.offset = positions
        patches = self.patch_embedding(pixels)
        return patches if prefix is None else torch.cat([prefix.expand(len(pixels), -1, -1), patches], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(pixels)
        if self.pre_norm is not None:
            tokens = self.pre_norm(tokens)
        for block in self.blocks:
            # Hugging Face CLIP and SigLIP blocks take the attention mask as a required argument (None: no mask)
            tokens = block(tokens, None) if self.kind in ('clip', 'siglip') else block(tokens)
        if self.post_norm is not None:
            tokens = self.post_norm(tokens)
        return self._pool(tokens)

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pooling == 'head':
            pooled = self.head(tokens)
        elif self.pooling == 'cls':
            pooled = tokens[:, 0]
        else:
            pooled = self.token_mean(tokens[:, self.num_prefix:])
            if self.pooling == 'cls_mean':
                pooled = torch.cat([tokens[:, 0], pooled], dim=1)
        if self.pooled_norm is not None:
            pooled = self.pooled_norm(pooled)
        return pooled if self.projection is None else self.projection(pooled)

    def extra_repr(self) -> str:
        return f'kind={self.kind!r}, pooling={self.pooling!r}, patch_size={self.patch_size}, ' \
               f'num_prefix={self.num_prefix}'


def _text_tower(model: torch.nn.Module, project: bool) -> tuple:
    """``(kind, tower, blocks, final norm, projection, pooling, causal, hidden size)`` of a supported text tower."""
    if type(model).__module__.startswith('open_clip.'):
        tower = getattr(model, 'text', model)  # CustomTextCLIP holds a TextTransformer; CLIP has its parts itself
        pooling = getattr(tower, 'text_pool_type', getattr(tower, 'pool_type', None))
        if not hasattr(tower, 'token_embedding') or getattr(tower, 'cls_emb', None) is not None or pooling not in (
                'argmax', 'eos', 'last', 'first'):
            raise TypeError(f'OpenCLIP text tower {type(tower).__name__} is not supported (a TextTransformer without '
                            'class embedding, pooled at the end-of-text, first or last token)')
        projection = tower.text_projection
        if isinstance(projection, torch.nn.Parameter):
            projection = linear_from_matrix(projection)
        return ('open_clip', tower, tower.transformer.resblocks, tower.ln_final, projection if project else None,
                'end' if pooling in ('argmax', 'eos') else pooling, tower.attn_mask is not None,
                int(tower.transformer.width))
    tower = getattr(model, 'text_model', model)
    model_type = getattr(getattr(tower, 'config', None), 'model_type', None)
    if model_type not in ('clip_text_model', 'siglip_text_model'):
        raise TypeError(f'{type(model).__name__} is not a supported text tower: CaptionEncoder takes CLIP and SigLIP '
                        'models (CLIPModel, CLIPTextModel(WithProjection), SiglipModel, SiglipTextModel) and OpenCLIP '
                        'models')
    clip = model_type == 'clip_text_model'
    projection = getattr(model, 'text_projection', None) if clip else tower.head
    return ('clip' if clip else 'siglip', tower, tower.encoder.layers, tower.final_layer_norm,
            projection if project else None, 'end' if clip else 'last', clip, int(tower.config.hidden_size))


class CaptionEncoder(torch.nn.Module):
    """The text tower of CLIP, SigLIP or OpenCLIP as a map from token inputs ``(N, H + 1, L)`` to caption
    embeddings ``(N, h)``, for the BiLRP engine.

    The input is :func:`~zennit_bilrp.lrp.text_transformers.token_input` of the text embedding layer's output
    (token plus position embeddings; :meth:`embed`) and the attention mask. The forward is the model's: its blocks
    (CLIP and OpenCLIP: causal attention; padding masked out), the final LayerNorm, the pooled token and the
    projection. CLIP and OpenCLIP pool the end-of-text token, which their tokenizers put last: here the last position
    with mask 1 (:meth:`embed` builds such a mask from the token ids); SigLIP pools the last position (padding or
    not), as the model does.

    Parameters
    ----------
    model : torch.nn.Module
        ``CLIPModel``, ``CLIPTextModel``, ``CLIPTextModelWithProjection``, ``SiglipModel``, ``SiglipTextModel``, or
        an OpenCLIP ``CLIP`` / ``CustomTextCLIP``.
    project : bool
        Apply the projection into the joint space (CLIP's ``text_projection``, SigLIP's text ``head``, OpenCLIP's
        ``text_projection``).
    """

    def __init__(self, model: torch.nn.Module, project: bool = True):
        super().__init__()
        kind, tower, blocks, final_norm, projection, pooling, causal, hidden = _text_tower(model, project)
        self.kind, self.pooled_position, self.causal, self.hidden_size = kind, pooling, causal, hidden
        self.blocks, self.final_norm, self.projection = blocks, final_norm, projection
        object.__setattr__(self, 'model', tower)  # the embedding layer stays outside (no rules)

    def _mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The additive attention mask ``(N, 1, L, L)`` (padding, and causal where the model is causal)."""
        allowed = mask.bool()[:, None, None, :]
        if self.causal:
            length = mask.shape[1]
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed,
                                                                                      torch.finfo(dtype).min)

    def _run(self, block: torch.nn.Module, hidden: torch.Tensor, additive: torch.Tensor) -> torch.Tensor:
        if self.kind != 'open_clip':
            return block(hidden, additive)
        if getattr(block.forward, '__func__', None) is pre_norm_block:  # canonized: (N, 1, L, L) broadcasts
            return block(hidden, attention_mask=additive)
        heads = block.attn.num_heads  # the plain nn.MultiheadAttention takes (N * heads, L, L)
        return block(hidden, attn_mask=additive.expand(-1, heads, -1, -1).flatten(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, mask = split_token_input(x, self.hidden_size, 'CaptionEncoder')
        additive = self._mask(mask, x.dtype)
        for block in self.blocks:
            hidden = self._run(block, hidden, additive)
        hidden = self.final_norm(hidden)
        if self.pooled_position == 'end':
            index = (mask.sum(dim=-1) - 1).long()
        else:
            index = torch.full_like(mask[:, 0], 0 if self.pooled_position == 'first' else hidden.shape[1] - 1).long()
        pooled = hidden[torch.arange(len(hidden), device=x.device), index]
        return pooled if self.projection is None else self.projection(pooled)

    def end_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The position of the end-of-text token in each row of ``input_ids`` (OpenCLIP: the highest id, or the first
        ``eos_id``, as the model pools; Hugging Face CLIP: the first ``eos_token_id``)."""
        if self.kind == 'open_clip':
            pool = getattr(self.model, 'text_pool_type', getattr(self.model, 'pool_type', None))
            eos = getattr(self.model, 'text_eos_id', getattr(self.model, 'eos_id', None))
        else:  # Hugging Face CLIP takes the highest id for configurations with the legacy end-of-text id 2
            eos = self.model.config.eos_token_id
            pool = 'argmax' if eos == 2 else 'eos'
        return input_ids.argmax(dim=-1) if pool == 'argmax' else (input_ids == eos).int().argmax(dim=-1)

    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The input ``(N, H + 1, L)`` of token ids ``(N, L)``: token plus position embeddings, and the mask (default:
        1 up to the end-of-text token (:meth:`end_positions`) where the model pools it, else all ones)."""
        if attention_mask is None and self.pooled_position == 'end':
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            attention_mask = (positions[None] <= self.end_positions(input_ids)[:, None]).long()
        elif attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.no_grad():
            if self.kind == 'open_clip':
                length = input_ids.shape[1]
                embeddings = self.model.token_embedding(input_ids) + self.model.positional_embedding[:length]
            else:
                embeddings = self.model.embeddings(input_ids=input_ids)
        return token_input(embeddings, attention_mask)

    def extra_repr(self) -> str:
        return f'kind={self.kind!r}, hidden_size={self.hidden_size}, pooled={self.pooled_position!r}'
