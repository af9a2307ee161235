"""Tiny random vision and image-text transformers (float64, eval mode) built from the libraries' config classes, and
a per-unit Zennit loop as the reference of the engine."""
import importlib.util

import torch
from zennit.attribution import Gradient

#: the vision architectures the tests cover (timm only when installed)
VISION_KINDS = ('vit', 'dinov2', 'dinov2_swiglu', 'dinov2_registers', 'clip', 'siglip', 'torchvision', 'timm',
                'open_clip')
#: the optional packages some kinds need
OPTIONAL = {'timm': 'timm', 'open_clip': 'open_clip'}
HIDDEN = 16


def has_timm() -> bool:
    return importlib.util.find_spec('timm') is not None


def missing_package(kind: str):
    """The optional package that ``kind`` needs and that is not installed, or None."""
    package = OPTIONAL.get(kind)
    return package if package is not None and importlib.util.find_spec(package) is None else None


def _hf(kind: str, image_size, attn_implementation: str):
    import transformers

    common = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
                  patch_size=4, num_channels=3, attn_implementation=attn_implementation)
    if kind == 'vit':
        return transformers.ViTModel(transformers.ViTConfig(intermediate_size=32, **common), add_pooling_layer=False)
    if kind.startswith('dinov2'):
        extra = dict(mlp_ratio=2, layerscale_value=0.7, use_swiglu_ffn=kind == 'dinov2_swiglu')
        if kind == 'dinov2_registers':
            return transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
                num_register_tokens=2, **extra, **common))
        return transformers.Dinov2Model(transformers.Dinov2Config(**extra, **common))
    if kind == 'clip':
        return transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
            intermediate_size=32, projection_dim=12, hidden_act='quick_gelu', **common))
    if kind == 'siglip':
        return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(intermediate_size=32, **common))
    raise ValueError(kind)


def _build(kind: str, image_size, attn_implementation: str):
    if kind == 'torchvision':
        import torchvision

        return torchvision.models.VisionTransformer(image_size=image_size, patch_size=4, num_layers=2, num_heads=2,
                                                    hidden_dim=HIDDEN, mlp_dim=32)
    if kind == 'timm':
        import timm

        return timm.models.VisionTransformer(img_size=image_size, patch_size=4, embed_dim=HIDDEN, depth=2,
                                             num_heads=2, mlp_ratio=2, num_classes=0, reg_tokens=1, init_values=0.7,
                                             qk_norm=True, qkv_bias=True)
    return _hf(kind, image_size, attn_implementation)


#: constant tokens and position embeddings (zeroed with the biases: they act as biases)
_CONSTANTS = ('position_embedding', 'positional_embedding', 'pos_embed', 'pos_embedding', 'cls_token', 'class_token',
              'class_embedding', 'register_tokens', 'reg_token', 'mask_token')


def perturb(model, seed: int, bias_free: bool = False, skip=()):
    """Perturb biases, norm parameters and constant tokens (so that they matter), or, with ``bias_free``, set the
    biases, LayerNorm shifts, position embeddings and class/register tokens to zero; parameters whose names start
    with one of ``skip`` (the text embedding layer, whose output is the text tower's input) are left alone."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(tuple(skip)):
                continue
            constant = any(part in name for part in _CONSTANTS)
            if bias_free and (name.endswith('bias') or constant):
                param.zero_()
            elif name.endswith('bias') or 'norm' in name.lower() or constant or 'lambda1' in name \
                    or name.endswith('gamma'):
                param.add_(0.2 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


def tiny_vision(kind: str, seed: int = 0, bias_free: bool = False, image_size=8, attn_implementation='eager'):
    """A tiny random float64 vision model of ``kind`` (:data:`VISION_KINDS`) in eval mode: hidden 16, 2 blocks,
    2 heads, patch 4, images ``image_size`` (8: a 2 x 2 patch grid)."""
    if kind == 'open_clip':
        return tiny_open_clip(seed, bias_free)
    torch.manual_seed(seed)
    model = _build(kind, image_size, attn_implementation).double().eval()
    return perturb(model, seed, bias_free)


def reference_embedding(kind: str, model, pixels: torch.Tensor) -> torch.Tensor:
    """The embedding the model itself computes (its own forward), for comparison with ImageEncoder."""
    with torch.no_grad():
        if kind == 'torchvision':  # the classifier input: the class token after the final norm
            features = {}
            handle = model.heads.register_forward_pre_hook(lambda module, args: features.update(cls=args[0]))
            model(pixels)
            handle.remove()
            return features['cls']
        if kind == 'timm':
            return model(pixels)
        if kind == 'open_clip':
            return model.encode_image(pixels)
        output = model(pixel_values=pixels)
        if kind == 'clip':
            return output.image_embeds
        if kind == 'vit':
            return output.last_hidden_state[:, 0]
        return output.pooler_output


def pooled_loop_factors(model, composite, x, pool, units=None):
    """Factors ``(N, h, P)`` from one Zennit ``Gradient`` call per embedding unit (seed phi_m e_m, head 'none'),
    pooled with ``pool`` (a function of the input relevance ``(N, ...)``); and the embeddings ``(N, h)``."""
    rows = []
    with Gradient(model=model, composite=composite) as attributor:
        with torch.no_grad():
            embedding = model(x)  # the canonized forward (Hugging Face's eager softmax runs in float32)
        for unit in (range(embedding.shape[1]) if units is None else units):
            def seed(output, unit=unit):
                one_hot = torch.zeros_like(output)
                one_hot[:, unit] = output[:, unit]
                return one_hot
            _, relevance = attributor(x, seed)
            rows.append(pool(relevance))
    return embedding, torch.stack(rows, dim=1)


def patch_pool(relevance: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Sum ``(N, C, H, W)`` relevance over the channels and ``patch`` x ``patch`` blocks: ``(N, P)`` row-major."""
    summed = relevance.sum(1)
    n, height, width = summed.shape
    return summed.reshape(n, height // patch, patch, width // patch, patch).sum((2, 4)).reshape(n, -1)


def cosine_pairwise(emb_a, fac_a, emb_b, fac_b):
    """``R = F_a^T F_b / (|phi_a| |phi_b|)`` per pair, ``(N, P_a, P_b)``."""
    scale = 1.0 / (emb_a.norm(dim=1) * emb_b.norm(dim=1))
    return scale[:, None, None] * torch.einsum('nmi,nmj->nij', fac_a, fac_b)


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


#: the words of the tiny tokenizer (ids 2.. in this order; 0 padding, 1 start, 19 end of text: the highest id, as in
#: CLIP's vocabulary, and not 2, which Hugging Face's CLIP takes for a legacy configuration)
WORDS = ('a', 'photo', 'of', 'cat', 'dog', 'on', 'the', 'mat', 'red', 'car', 'two', 'birds', 'in', 'tree')
END = 19


def tiny_tokenizer():
    """A word-level fast tokenizer (no download): ``<start> words <end>``, padding id 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {'<pad>': 0, '<start>': 1, '<end>': END, '<unk>': 2 + len(WORDS)}
    vocab.update({word: 2 + index for index, word in enumerate(WORDS)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single='<start> $A <end>',
                                                           special_tokens=[('<start>', 1), ('<end>', END)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token='<pad>', bos_token='<start>',
                                   eos_token='<end>', unk_token='<unk>', model_max_length=12)


def tiny_image_text(kind: str, seed: int = 0, bias_free: bool = False):
    """A tiny random float64 CLIPModel, SiglipModel or OpenCLIP CLIP (``kind`` 'clip', 'siglip', 'open_clip') in eval
    mode: both towers hidden 16, 2 blocks, 2 heads; images 8 x 8 with patch 4; the vocabulary of
    :func:`tiny_tokenizer`."""
    import transformers

    if kind == 'open_clip':
        return tiny_open_clip(seed, bias_free)
    torch.manual_seed(seed)
    text = dict(vocab_size=20, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=12, pad_token_id=0, bos_token_id=1, eos_token_id=END)
    vision = dict(hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  image_size=8, patch_size=4)
    if kind == 'clip':
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)
        model = transformers.CLIPModel(config)
    else:
        config = transformers.SiglipConfig(text_config=dict(text, projection_size=HIDDEN), vision_config=vision)
        model = transformers.SiglipModel(config)
    model = model.double().eval()
    return perturb(model, seed, bias_free, skip=('text_model.embeddings.',))


def has_open_clip() -> bool:
    return importlib.util.find_spec('open_clip') is not None


def tiny_open_clip(seed: int = 0, bias_free: bool = False):
    """A tiny random float64 OpenCLIP ``CLIP`` (quick-GELU, layer scale in the image tower; both towers width 16,
    2 blocks, 2 heads; images 8 x 8, patch 4; context 12, vocabulary 20) in eval mode."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=12, quick_gelu=True,
                           vision_cfg=dict(image_size=8, patch_size=4, width=HIDDEN, layers=2, head_width=8,
                                           mlp_ratio=2, ls_init_value=0.7),
                           text_cfg=dict(context_length=12, vocab_size=20, width=HIDDEN, heads=2, layers=2))
    return perturb(model.double().eval(), seed, bias_free, skip=('token_embedding', 'positional_embedding'))


class OpenClipTokenizer:
    """:func:`tiny_tokenizer` with OpenCLIP's interface: a callable returning ids ``(N, context)`` padded with 0,
    and a ``decoder`` (id -> token)."""

    def __init__(self, context: int = 12):
        self.base, self.context = tiny_tokenizer(), context
        self.decoder = {index: token for token, index in self.base.get_vocab().items()}

    def __call__(self, texts):
        ids = self.base(list(texts), padding='max_length', max_length=self.context, return_tensors='pt')['input_ids']
        return ids
