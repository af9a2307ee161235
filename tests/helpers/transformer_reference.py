"""References for transformer BiLRP: the NAACL 2024 recipe written out by hand, a per-unit Zennit loop, tiny models.

:func:`naacl_factors` re-implements the encoder forward pass from the Hugging Face modules' weights (its own code,
not the canonizers'), with the modifications of Vasileiou and Eberle (NAACL 2024, code
``alevas/xai_similarity_transformers``): attention probabilities detached, LayerNorm's standard deviation detached
(not its mean), GELU as ``x * (gelu(x) / x).detach()``, Linear layers with their biases; then gradient x input at
the encoder input (the embedding layer's output), one autograd pass per pooled embedding unit.
"""
import math

import torch
import torch.nn.functional as F
from zennit.attribution import Gradient


def tiny_config(kind: str, seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4):
    """A tiny random config of architecture ``kind`` ('bert', 'roberta', 'distilbert', 'mpnet')."""
    import transformers

    common = dict(vocab_size=60, max_position_embeddings=40, attn_implementation='eager')
    if kind == 'bert':
        return transformers.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                       intermediate_size=2 * hidden, **common)
    if kind == 'roberta':
        return transformers.RobertaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                          intermediate_size=2 * hidden, pad_token_id=1, **common)
    if kind == 'mpnet':
        return transformers.MPNetConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                        intermediate_size=2 * hidden, **common)
    if kind == 'distilbert':
        return transformers.DistilBertConfig(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=2 * hidden,
                                             **common)
    raise ValueError(kind)


def tiny_model(kind: str = 'bert', seed: int = 0, bias_free: bool = False, **kwargs):
    """A tiny random float64 base model in eval mode; its LayerNorm affine parameters and biases are perturbed (so
    that they matter), or, with ``bias_free``, all biases and LayerNorm shifts after the embeddings are zero."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(tiny_config(kind, **kwargs)).double().eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith('embeddings'):
                continue
            if bias_free and name.endswith('bias'):
                param.zero_()
            elif name.endswith('bias') or 'norm' in name.lower():
                param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


def _layers(model):
    """Per layer: (q, k, v, o, ln1, f1, act, f2, ln2) modules, for the four covered architectures."""
    kind = model.config.model_type
    if kind in ('bert', 'roberta'):
        return [(lay.attention.self.query, lay.attention.self.key, lay.attention.self.value,
                 lay.attention.output.dense, lay.attention.output.LayerNorm, lay.intermediate.dense,
                 lay.intermediate.intermediate_act_fn, lay.output.dense, lay.output.LayerNorm)
                for lay in model.encoder.layer]
    if kind == 'mpnet':
        return [(lay.attention.attn.q, lay.attention.attn.k, lay.attention.attn.v, lay.attention.attn.o,
                 lay.attention.LayerNorm, lay.intermediate.dense, lay.intermediate.intermediate_act_fn,
                 lay.output.dense, lay.output.LayerNorm) for lay in model.encoder.layer]
    if kind == 'distilbert':
        return [(lay.attention.q_lin, lay.attention.k_lin, lay.attention.v_lin, lay.attention.out_lin,
                 lay.sa_layer_norm, lay.ffn.lin1, lay.ffn.activation, lay.ffn.lin2, lay.output_layer_norm)
                for lay in model.transformer.layer]
    raise ValueError(kind)


def _layer_norm(x, module, detach=True):
    centered = x - x.mean(-1, keepdim=True)
    std = torch.sqrt((centered ** 2).mean(-1, keepdim=True) + module.eps)
    return centered / (std.detach() if detach else std) * module.weight + module.bias


class HalfGradient(torch.autograd.Function):
    """The identity whose backward halves the gradient (LXT's uniform rule in the gradient x input framework)."""

    @staticmethod
    def forward(ctx, tensor):
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad / 2


def modified_forward(model, hidden, mask, detach=True, family='conservative'):
    """The encoder forward from the weights: ``hidden`` (N, L, H) embedding outputs, ``mask`` (N, L) -> last hidden
    states. With ``detach`` the modifications of ``family`` are applied (same values, modified gradient): the NAACL
    2024 recipe (probabilities, LayerNorm std and GELU ratio detached), or AttnLRP in the gradient x input form of
    LXT (std and GELU ratio detached, the gradient through q k^T and P v halved, the softmax's plain gradient)."""
    attnlrp = detach and family == 'attnlrp'
    half = HalfGradient.apply if attnlrp else (lambda t: t)
    heads = model.config.num_attention_heads if hasattr(model.config, 'num_attention_heads') else model.config.n_heads
    n, length, size = hidden.shape
    d = size // heads
    additive = (1.0 - mask)[:, None, None, :] * torch.finfo(hidden.dtype).min
    bias = None
    if model.config.model_type == 'mpnet':
        bias = model.encoder.compute_position_bias(hidden)
    h = hidden
    for q, k, v, o, ln1, f1, act, f2, ln2 in _layers(model):
        def split(t):
            return t.view(n, length, heads, d).transpose(1, 2)
        scores = half(split(F.linear(h, q.weight, q.bias)) @ split(F.linear(h, k.weight, k.bias)).transpose(-1, -2))
        scores = scores / math.sqrt(d) + additive
        if bias is not None:
            scores = scores + bias
        probs = torch.softmax(scores, dim=-1)
        probs = probs.detach() if detach and not attnlrp else probs
        context = half(probs @ split(F.linear(h, v.weight, v.bias))).transpose(1, 2).reshape(n, length, size)
        a = _layer_norm(F.linear(context, o.weight, o.bias) + h, ln1, detach)
        z = F.linear(a, f1.weight, f1.bias)
        g = z * (act(z) / z).detach() if detach else act(z)
        h = _layer_norm(F.linear(g, f2.weight, f2.bias) + a, ln2, detach)
    return h


def naacl_factors(model, hidden, mask, pooling='mean', units=None, family='conservative'):
    """Gradient x input of each pooled unit w.r.t. the embedding outputs, summed over the hidden axis:
    ``(N, h, L)``, one autograd pass per unit; and the embeddings ``(N, h)``."""
    x = hidden.detach().clone().requires_grad_(True)
    out = modified_forward(model, x, mask, family=family)
    if pooling == 'mean':
        emb = (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    else:
        emb = out[:, 0]
    rows = []
    for unit in (range(emb.shape[1]) if units is None else units):
        grad, = torch.autograd.grad(emb[:, unit].sum(), x, retain_graph=True)
        rows.append((grad * x).sum(-1).detach())
    return emb.detach(), torch.stack(rows, dim=1)


def cosine_bilrp(emb_a, fac_a, emb_b, fac_b):
    """``R = F_a^T F_b / (|phi_a| |phi_b|)`` per pair, ``(N, L_a, L_b)``."""
    scale = 1.0 / (emb_a.norm(dim=1) * emb_b.norm(dim=1))
    return scale[:, None, None] * torch.einsum('nmi,nmj->nij', fac_a, fac_b)


def per_unit_factors(encoder, composite, head, x, units=None):
    """Factors ``(N, h, L)`` (or of the ``units`` only) from one Zennit ``Gradient`` call per embedding unit (the
    head's proportional seed)."""
    with torch.no_grad():
        out = encoder(x)
        emb = head.embed(out)
    rows = []
    with Gradient(model=encoder, composite=composite) as attributor:
        for unit in (range(emb.shape[1]) if units is None else units):
            def seed(output, unit=unit):
                mult = torch.zeros(1, output.shape[0], emb.shape[1], dtype=output.dtype)
                mult[..., unit] = 1.0
                return head.output_relevance(output, mult)[0]
            _, relevance = attributor(x, seed)
            rows.append(relevance.sum(1))
    return emb, torch.stack(rows, dim=1)
