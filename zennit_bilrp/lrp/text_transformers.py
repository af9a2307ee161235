r"""BERT-family text encoders (Hugging Face): canonized attention and residuals, and the token-sequence wrapper.

Hugging Face writes the attention products and the residual additions inline. The canonized forwards of this
module compute attention with the modules of :mod:`~zennit_bilrp.lrp.attention` (in either rule family; eager
attention is not needed: the canonized forward computes attention itself, whatever implementation the model was
loaded with) and route the residuals through :class:`zennit.layer.Sum` modules, for the architectures in
:data:`SUPPORTED_ARCHITECTURES` (BERT, RoBERTa, DistilBERT, MPNet). The canonizers themselves are in
:mod:`~zennit_bilrp.lrp.transformers`.

The engine calls ``model(x)`` with one tensor. :class:`TokenEncoder` wraps the encoder stack of a Hugging Face
model: its input is the embedding layer's output laid out as channels ``(N, H + 1, L)`` (:func:`token_input`), the
last channel being the attention mask (1 for tokens, 0 for padding; held constant, so it gets no relevance), and it
returns the last hidden states in the same layout. The engine's default pooling then sums the relevance over the
hidden channels, giving one relevance per token; the token heads (:mod:`~zennit_bilrp.core.token_heads`) pool the
output into the sentence embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .attention import attend

__all__ = ['TEXT_EXTRA', 'SUPPORTED_ARCHITECTURES', 'transformers_package', 'TextSpec', 'text_specs',
           'text_spec_for', 'canonized_text_class', 'architecture', 'check_token_mask', 'split_token_input',
           'token_input', 'TokenEncoder']

#: how to install what this module needs
TEXT_EXTRA = "pip install 'zennit-bilrp[text]'"

#: the Hugging Face ``config.model_type`` values of the text encoders whose modules the canonizers canonize
SUPPORTED_ARCHITECTURES = ('bert', 'roberta', 'distilbert', 'mpnet')


def transformers_package():
    """The Hugging Face ``transformers`` package, or an ``ImportError`` naming the extra to install."""
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ImportError(f'explaining transformers needs the Hugging Face transformers package: {TEXT_EXTRA}') \
            from error
    return transformers


def _heads(linear: torch.nn.Module, hidden: torch.Tensor, head_size: int) -> torch.Tensor:
    return linear(hidden).view(*hidden.shape[:-1], -1, head_size).transpose(1, 2)


def _merge(context: torch.Tensor) -> torch.Tensor:
    return context.transpose(1, 2).reshape(*context.shape[:1], context.shape[2], -1)


def _no_cross_attention(module: torch.nn.Module, kwargs: dict) -> None:
    for key in ('encoder_hidden_states', 'cache', 'past_key_values', 'past_key_value'):
        if kwargs.get(key) is not None:
            raise TypeError(f'{type(module).__name__}: the canonized attention explains encoder self-attention only, '
                            f'not {key} (decoders and cross-attention are not supported)')


def _bert_self_attention(self, hidden_states, attention_mask=None, *args, **kwargs):
    """Canonized BERT/RoBERTa self-attention."""
    _no_cross_attention(self, kwargs)
    size = self.attention_head_size
    query, key, value = (_heads(linear, hidden_states, size) for linear in (self.query, self.key, self.value))
    context, probabilities = attend(self, query, key, value, attention_mask, size ** -0.5)
    return _merge(context), probabilities


def _distilbert_self_attention(self, hidden_states, attention_mask=None, *args, **kwargs):
    """Canonized DistilBERT self-attention (its output projection included)."""
    _no_cross_attention(self, kwargs)
    size = self.attention_head_size
    query, key, value = (_heads(linear, hidden_states, size) for linear in (self.q_lin, self.k_lin, self.v_lin))
    context, probabilities = attend(self, query, key, value, attention_mask, size ** -0.5)
    return self.out_lin(_merge(context)), probabilities


def _mpnet_self_attention(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False,
                          **kwargs):
    """Canonized MPNet self-attention: the relative position bias is a constant added to the scores."""
    size = self.attention_head_size
    query, key, value = (_heads(linear, hidden_states, size) for linear in (self.q, self.k, self.v))
    context, probabilities = attend(self, query, key, value, attention_mask, size ** -0.5, bias=position_bias)
    out = self.o(_merge(context))
    return (out, probabilities) if output_attentions else (out,)


def _residual(self, branch: torch.Tensor, skip: torch.Tensor, name: str = 'canonizer_sum') -> torch.Tensor:
    return getattr(self, name)(torch.stack([branch, skip], dim=-1))


def _dense_residual_norm(self, hidden_states, input_tensor):
    """Canonized BERT-style ``LayerNorm(dropout(dense(h)) + input)`` with the sum as a module."""
    return self.LayerNorm(_residual(self, self.dropout(self.dense(hidden_states)), input_tensor))


def _mpnet_attention(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False,
                     **kwargs):
    """Canonized MPNet attention block: ``LayerNorm(Sum(dropout(attn(h)), h))``."""
    outputs = self.attn(hidden_states, attention_mask, position_bias, output_attentions=output_attentions)
    return (self.LayerNorm(_residual(self, self.dropout(outputs[0]), hidden_states)),) + tuple(outputs[1:])


def _distilbert_block(self, hidden_states, attention_mask=None, *args, **kwargs):
    """Canonized DistilBERT block: both residuals as modules."""
    attention, _ = self.attention(hidden_states, attention_mask=attention_mask)
    attention = self.sa_layer_norm(_residual(self, attention, hidden_states, 'canonizer_sum_attention'))
    ffn = self.ffn(attention)
    return self.output_layer_norm(_residual(self, ffn, attention, 'canonizer_sum_ffn'))


@dataclass(frozen=True)
class TextSpec:
    """What the canonizers change in one text architecture (class names in its ``modeling_*`` module).

    Attributes
    ----------
    module : str
        The defining module of the classes.
    attention : dict
        Self-attention class name -> canonized forward.
    residual : dict
        Residual class name -> ``(canonized forward, names of the Sum modules it needs)``.
    encoder : str
        Attribute of the base model holding the encoder stack.
    """
    module: str
    attention: dict
    residual: dict
    encoder: str


def text_specs() -> dict:
    """The :class:`TextSpec` of every architecture in :data:`SUPPORTED_ARCHITECTURES`, by ``model_type``."""
    sum_one = ('canonizer_sum',)
    return {
        'bert': TextSpec('transformers.models.bert.modeling_bert', {'BertSelfAttention': _bert_self_attention},
                         {'BertSelfOutput': (_dense_residual_norm, sum_one),
                          'BertOutput': (_dense_residual_norm, sum_one)}, 'encoder'),
        'roberta': TextSpec('transformers.models.roberta.modeling_roberta',
                            {'RobertaSelfAttention': _bert_self_attention},
                            {'RobertaSelfOutput': (_dense_residual_norm, sum_one),
                             'RobertaOutput': (_dense_residual_norm, sum_one)}, 'encoder'),
        'distilbert': TextSpec('transformers.models.distilbert.modeling_distilbert',
                               {'DistilBertSelfAttention': _distilbert_self_attention},
                               {'TransformerBlock': (_distilbert_block,
                                                     ('canonizer_sum_attention', 'canonizer_sum_ffn'))},
                               'transformer'),
        'mpnet': TextSpec('transformers.models.mpnet.modeling_mpnet', {'MPNetSelfAttention': _mpnet_self_attention},
                          {'MPNetAttention': (_mpnet_attention, sum_one),
                           'MPNetOutput': (_dense_residual_norm, sum_one)}, 'encoder'),
    }


def text_spec_for(module: torch.nn.Module) -> Optional[TextSpec]:
    """The :class:`TextSpec` of the architecture that defines ``module``'s class, or None."""
    for spec in text_specs().values():
        if type(module).__module__ == spec.module:
            return spec
    return None


def canonized_text_class(module: torch.nn.Module, table: str) -> Optional[tuple]:
    """``(spec, class name)`` when ``module``'s class (by defining module and name) is in the ``table``
    (``'attention'`` or ``'residual'``) of its architecture's spec, else ``None``."""
    spec = text_spec_for(module)
    cls = type(module).__name__
    return (spec, cls) if spec is not None and cls in getattr(spec, table) else None


def architecture(model: torch.nn.Module) -> str:
    """The supported text architecture of a Hugging Face model (``config.model_type``), or raise.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face model (e.g. ``BertModel``) or any module containing one.

    Raises
    ------
    TypeError
        If the model is not one of :data:`SUPPORTED_ARCHITECTURES` (the message names the first module that cannot
        be canonized, see :func:`~zennit_bilrp.lrp.transformers.check_supported`).
    """
    from .transformers import check_supported

    check_supported(model)
    model_type = getattr(getattr(model, 'config', None), 'model_type', None)
    if model_type in SUPPORTED_ARCHITECTURES:
        return model_type
    for name, spec in text_specs().items():
        if any(type(m).__module__ == spec.module for m in model.modules()):
            return name
    raise TypeError(f'{type(model).__name__} is not a Hugging Face text encoder of a supported architecture '
                    f'({", ".join(SUPPORTED_ARCHITECTURES)})')


def token_input(embeddings: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The :class:`TokenEncoder` input ``(N, H + 1, L)`` from embedding outputs ``(N, L, H)`` and a mask ``(N, L)``.

    Parameters
    ----------
    embeddings : torch.Tensor
        Output of the model's embedding layer, ``(N, L, H)``.
    mask : torch.Tensor, optional
        Attention mask ``(N, L)``, 1 for tokens and 0 for padding (default all ones).
    """
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 3:
        raise ValueError('embeddings must be a tensor (N, L, H), got '
                         f'{tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings)}')
    if mask is None:
        mask = embeddings.new_ones(embeddings.shape[:2])
    if tuple(mask.shape) != tuple(embeddings.shape[:2]):
        raise ValueError(f'mask of shape {tuple(mask.shape)} does not fit embeddings {tuple(embeddings.shape)}; '
                         'expected (N, L)')
    return torch.cat([embeddings.transpose(1, 2), mask.to(embeddings)[:, None, :]], dim=1)


def check_token_mask(mask: torch.Tensor, what: str) -> None:
    """Refuse an attention mask ``(N, L)`` that is not 0/1 or leaves a sequence without tokens (``what`` names the
    caller in the message)."""
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f'{what}: the last channel is the attention mask and must hold 0 (padding) or 1 (token)')
    if not bool((mask.sum(dim=-1) > 0).all()):
        raise ValueError(f'{what}: every sequence needs at least one token with mask 1')


def split_token_input(x: torch.Tensor, hidden_size: int, what: str) -> tuple:
    """``(hidden (N, L, H), mask (N, L) detached)`` of a :func:`token_input` tensor, checked."""
    if x.dim() != 3 or x.shape[1] != hidden_size + 1:
        raise ValueError(f'{what} input of shape {tuple(x.shape)}; expected (N, {hidden_size} + 1, L): the '
                         'embeddings as channels and the attention mask as the last channel (see token_input)')
    mask = x[:, hidden_size].detach()
    check_token_mask(mask, f'{what} input')
    return x[:, :hidden_size].transpose(1, 2), mask


class TokenEncoder(torch.nn.Module):
    """The encoder stack of a Hugging Face text model as a map of one tensor, for the BiLRP engine.

    ``forward(x)`` takes ``x = token_input(embeddings, mask)`` of shape ``(N, H + 1, L)``: the embedding layer's
    output as ``H`` channels over ``L`` token positions, then the attention mask as one more channel (detached:
    it gets no relevance). It returns the last hidden states in the same layout, ``(N, H + 1, L)``, with the mask
    channel passed on for the pooling head (:class:`~zennit_bilrp.core.token_heads.MaskedMeanHead`,
    :class:`~zennit_bilrp.core.token_heads.ClsHead`). Padding positions are masked out of the attention, so no
    relevance reaches them.

    Only the encoder stack is a sub-module (the embedding layer stays outside, so it gets no rule and strict mode
    does not look at it); :meth:`embed` runs the embedding layer on token ids.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face base model of a supported architecture (``BertModel``, ``RobertaModel``,
        ``DistilBertModel``, ``MPNetModel``).

    Raises
    ------
    TypeError
        If the architecture is not supported (naming the module).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.architecture = architecture(model)
        spec = text_specs()[self.architecture]
        if not hasattr(model, spec.encoder) or not hasattr(model, 'embeddings'):
            raise TypeError(f'{type(model).__name__}: expected a base model with `embeddings` and `{spec.encoder}` '
                            '(e.g. AutoModel.from_pretrained, not a model with a task head)')
        self.encoder = getattr(model, spec.encoder)
        self.hidden_size = int(model.config.hidden_size if hasattr(model.config, 'hidden_size') else model.config.dim)
        object.__setattr__(self, 'model', model)  # not a sub-module: the embeddings get no rules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, mask = split_token_input(x, self.hidden_size, 'TokenEncoder')
        additive = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
        out = self.encoder(hidden, attention_mask=additive)
        out = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return torch.cat([out.transpose(1, 2), mask[:, None, :]], dim=1)

    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The input ``(N, H + 1, L)`` of token ids ``(N, L)``: the embedding layer's output and the mask."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.no_grad():
            embeddings = self.model.embeddings(input_ids=input_ids)
        return token_input(embeddings, attention_mask)

    def extra_repr(self) -> str:
        return f'architecture={self.architecture!r}, hidden_size={self.hidden_size}'
