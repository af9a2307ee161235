r"""LRP for Hugging Face BERT-family encoders: canonizers, a composite, a token-sequence wrapper and pooling heads.

The rules are those of conservative propagation for transformers (Ali et al., "XAI for Transformers: Better
Explanations through Conservative Propagation", ICML 2022; AttnLRP, Achtibat et al., ICML 2024), as used for
BiLRP of sentence encoders by Vasileiou and Eberle ("Explaining Text Similarity in Transformer Models", NAACL
2024):

- **attention**: the probabilities :math:`P = \mathrm{softmax}(QK^\top/\sqrt{d} + M)` are held constant, so the
  head output :math:`c = P v` is linear in the values and relevance flows through the value path only (queries
  and keys get none). The product is a module (:class:`AttentionMix`) with the LRP-:math:`\epsilon` rule
  :math:`R(v_{jd}) = \sum_i v_{jd} P_{ij} R(c_{id}) / c_{id}`, which conserves because :math:`P` has no bias;
- **LayerNorm**: the standard deviation is held constant (not the mean),
  :math:`y = \gamma \odot (x - \bar x) / \mathrm{sd}(x) + \beta` is then an affine map of :math:`x` and takes the
  LRP-:math:`\epsilon` rule (:math:`\beta` acts as a bias);
- **residuals** :math:`x + f(x)` become a :class:`zennit.layer.Sum` module with Zennit's ``Norm`` rule
  (relevance split in proportion to the summands);
- **GELU** (and the other activations) pass relevance on unchanged (Zennit's ``Pass``), the identity rule;
- **Linear** layers take LRP-:math:`\epsilon` (LRP-0 for small :math:`\epsilon`) or LRP-:math:`\gamma`.

With LRP-0 everywhere these rules keep :math:`R = a \odot \partial y / \partial a` at every layer boundary of the
modified forward pass (constant :math:`P` and standard deviation, GELU as :math:`x \cdot (\mathrm{gelu}(x)/x)`
with the ratio constant), so the explanation equals gradient :math:`\times` input of that modified forward: the
NAACL 2024 recipe. Relevance is conserved up to what the biases absorb; with ``zero_params=['bias']`` it is
conserved exactly (up to the stabilizers).

Hugging Face writes the attention products and the residual additions inline. :class:`TransformerCanonizer`
gives them modules, for the architectures in :data:`SUPPORTED_ARCHITECTURES` (BERT, RoBERTa, DistilBERT, MPNet;
eager attention is not needed: the canonized forward computes attention itself); :func:`check_supported` refuses
every other, naming the module it cannot canonize.

The engine calls ``model(x)`` with one tensor. :class:`TokenEncoder` wraps the encoder stack of a Hugging Face
model: its input is the embedding layer's output laid out as channels ``(N, H + 1, L)``, the last channel being
the attention mask (1 for tokens, 0 for padding; held constant, so it gets no relevance), and it returns the last
hidden states in the same layout. The engine's default pooling then sums the relevance over the hidden channels,
giving one relevance per token. :class:`MaskedMeanHead` is the sentence-transformers mean pooling (padding
excluded), :class:`ClsHead` the first-token pooling; the normalisation of sentence-transformers is the engine's
cosine similarity (norms held constant).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer
from zennit.composites import register_composite
from zennit.core import Composite
from zennit.layer import Sum
from zennit.rules import Epsilon, Gamma, Norm, Pass
from zennit.types import Activation

from ..core.heads import Head
from .layers import Normalize

__all__ = [
    'AttentionMix', 'TransformerCanonizer', 'AttentionCanonizer', 'ResidualCanonizer', 'LayerNormCanonizer',
    'TransformerLRP', 'TokenEncoder', 'MaskedMeanHead', 'ClsHead', 'check_supported', 'architecture',
    'is_canonical_layer_norm', 'token_input', 'SUPPORTED_ARCHITECTURES', 'TEXT_EXTRA',
]

#: how to install what this module needs
TEXT_EXTRA = "pip install 'zennit-bilrp[text]'"

#: the Hugging Face ``config.model_type`` values whose modules :class:`TransformerCanonizer` canonizes
SUPPORTED_ARCHITECTURES = ('bert', 'roberta', 'distilbert', 'mpnet')


def _transformers():
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ImportError(f'explaining transformers needs the Hugging Face transformers package: {TEXT_EXTRA}') \
            from error
    return transformers


class AttentionMix(torch.nn.Module):
    r"""The attention-weighted sum of the values, :math:`c = P v`, with the probabilities :math:`P` held constant.

    The canonized attention sets :attr:`probabilities` (detached, shape ``(N, heads, L, L)``) right before each
    call; like every Zennit rule's stored input, it describes the latest forward pass. With :math:`P` constant the
    map is linear in ``value`` (``(N, heads, L, d)``) and has no bias, so LRP-:math:`\epsilon` conserves.
    """

    def __init__(self):
        super().__init__()
        self.probabilities: Optional[torch.Tensor] = None

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        if self.probabilities is None:
            raise RuntimeError('AttentionMix has no attention probabilities: it is called by the canonized attention '
                               'forward, which sets them first')
        return torch.matmul(self.probabilities, value)


def _additive(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """An additive float mask (0 where attended, very negative elsewhere); boolean masks mean True = attend."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask.to(dtype)


def _attend(mix: AttentionMix, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            mask: Optional[torch.Tensor], scaling: float, bias: Optional[torch.Tensor] = None) -> tuple:
    """Multi-head attention with constant probabilities; returns ``(P v, P)`` with heads on axis 1."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if bias is not None:
        scores = scores + bias
    mask = _additive(mask, scores.dtype)
    if mask is not None:
        scores = scores + mask
    probabilities = torch.softmax(scores, dim=-1).detach()
    mix.probabilities = probabilities
    return mix(value), probabilities


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
    """Canonized BERT/RoBERTa self-attention: constant probabilities, values through :class:`AttentionMix`."""
    _no_cross_attention(self, kwargs)
    size = self.attention_head_size
    query, key, value = (_heads(linear, hidden_states, size) for linear in (self.query, self.key, self.value))
    context, probabilities = _attend(self.canonizer_mix, query, key, value, attention_mask, size ** -0.5)
    return _merge(context), probabilities


def _distilbert_self_attention(self, hidden_states, attention_mask=None, *args, **kwargs):
    """Canonized DistilBERT self-attention (its output projection included)."""
    _no_cross_attention(self, kwargs)
    size = self.attention_head_size
    query, key, value = (_heads(linear, hidden_states, size) for linear in (self.q_lin, self.k_lin, self.v_lin))
    context, probabilities = _attend(self.canonizer_mix, query, key, value, attention_mask, size ** -0.5)
    return self.out_lin(_merge(context)), probabilities


def _mpnet_self_attention(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False,
                          **kwargs):
    """Canonized MPNet self-attention: the relative position bias is a constant added to the scores."""
    size = self.attention_head_size
    query, key, value = (_heads(linear, hidden_states, size) for linear in (self.q, self.k, self.v))
    context, probabilities = _attend(self.canonizer_mix, query, key, value, attention_mask, size ** -0.5,
                                     bias=position_bias)
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


def _layer_norm_constant_std(self, input: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis with the standard deviation held constant (the mean is not)."""
    centered = input - input.mean(dim=-1, keepdim=True)
    std = (centered.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt().detach()
    out = centered / std
    if self.weight is not None:
        out = out * self.weight
    if self.bias is not None:
        out = out + self.bias
    return out


@dataclass(frozen=True)
class _Spec:
    """What the canonizers change in one architecture (class names in its ``modeling_*`` module)."""
    module: str
    attention: dict
    residual: dict
    encoder: str


def _specs() -> dict:
    return {
        'bert': _Spec('transformers.models.bert.modeling_bert',
                      {'BertSelfAttention': _bert_self_attention},
                      {'BertSelfOutput': ('canonizer_sum',), 'BertOutput': ('canonizer_sum',)}, 'encoder'),
        'roberta': _Spec('transformers.models.roberta.modeling_roberta',
                         {'RobertaSelfAttention': _bert_self_attention},
                         {'RobertaSelfOutput': ('canonizer_sum',), 'RobertaOutput': ('canonizer_sum',)}, 'encoder'),
        'distilbert': _Spec('transformers.models.distilbert.modeling_distilbert',
                            {'DistilBertSelfAttention': _distilbert_self_attention},
                            {'TransformerBlock': ('canonizer_sum_attention', 'canonizer_sum_ffn')}, 'transformer'),
        'mpnet': _Spec('transformers.models.mpnet.modeling_mpnet',
                       {'MPNetSelfAttention': _mpnet_self_attention},
                       {'MPNetAttention': ('canonizer_sum',), 'MPNetOutput': ('canonizer_sum',)}, 'encoder'),
    }


_RESIDUAL_FORWARDS = {'BertSelfOutput': _dense_residual_norm, 'BertOutput': _dense_residual_norm,
                      'RobertaSelfOutput': _dense_residual_norm, 'RobertaOutput': _dense_residual_norm,
                      'MPNetOutput': _dense_residual_norm, 'MPNetAttention': _mpnet_attention,
                      'TransformerBlock': _distilbert_block}


def _spec_for(module: torch.nn.Module) -> Optional[_Spec]:
    for spec in _specs().values():
        if type(module).__module__ == spec.module:
            return spec
    return None


def _canonized_class(module: torch.nn.Module, table: str) -> Optional[tuple]:
    """``(spec, class name)`` when ``module``'s class (by defining module and name) is in the ``table``
    (``'attention'`` or ``'residual'``) of its architecture's spec, else ``None``."""
    spec = _spec_for(module)
    cls = type(module).__name__
    return (spec, cls) if spec is not None and cls in getattr(spec, table) else None


def architecture(model: torch.nn.Module) -> str:
    """The supported architecture of a Hugging Face model (``config.model_type``), or raise.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face model (e.g. ``BertModel``) or any module containing one.

    Raises
    ------
    TypeError
        If the model is not one of :data:`SUPPORTED_ARCHITECTURES` (see :func:`check_supported`).
    """
    check_supported(model)
    config = getattr(model, 'config', None)
    model_type = getattr(config, 'model_type', None)
    if model_type in SUPPORTED_ARCHITECTURES:
        return model_type
    for name in SUPPORTED_ARCHITECTURES:
        spec = _specs()[name]
        if any(type(m).__module__ == spec.module for m in model.modules()):
            return name
    raise TypeError(f'{type(model).__name__} is not a Hugging Face model of a supported architecture '
                    f'({", ".join(SUPPORTED_ARCHITECTURES)})')


def _is_norm(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm) or name.endswith(('LayerNorm', 'RMSNorm', 'Norm'))


def check_supported(model: torch.nn.Module) -> None:
    """Refuse models with attention or normalization modules that :class:`TransformerCanonizer` cannot canonize.

    Covered: the self-attention, residual and LayerNorm modules of :data:`SUPPORTED_ARCHITECTURES` (encoders,
    no cross-attention) and :class:`torch.nn.LayerNorm` over one axis.

    Raises
    ------
    TypeError
        Naming the first module (qualified name and class) that would stay un-canonized, and the supported
        architectures.
    """
    _transformers()
    for name, module in model.named_modules():
        cls = type(module).__name__
        spec = _spec_for(module)
        if isinstance(module, torch.nn.LayerNorm):
            if len(module.normalized_shape) != 1:
                raise TypeError(f"unsupported layer '{name}' ({cls}): LayerNorm over {module.normalized_shape}; the "
                                'canonizer holds the standard deviation of the last axis constant only')
            continue
        covered = spec is not None and (cls in spec.attention or cls in spec.residual)
        attention_like = 'Attention' in cls or isinstance(module, torch.nn.MultiheadAttention)
        if spec is not None and cls.endswith(('CrossAttention',)):
            covered = False
        if (attention_like or _is_norm(module)) and not covered:
            if spec is not None and cls.endswith('Attention') and any(
                    type(child).__name__ in spec.attention for child in module.children()):
                continue  # e.g. BertAttention: its parts are canonized
            where = f"'{name}' ({cls})" if name else f'the model itself ({cls})'
            raise TypeError(
                f'unsupported layer {where}: no canonizer for this attention/normalization module. Transformer '
                f'BiLRP supports the encoders of {", ".join(SUPPORTED_ARCHITECTURES)} (Hugging Face); other '
                'architectures need their own canonizer'
            )


class AttentionCanonizer(AttributeCanonizer):
    """Canonize self-attention: probabilities held constant, values through an :class:`AttentionMix` module.

    The module's ``forward`` becomes the canonized one of its architecture and it gets a ``canonizer_mix`` child
    (both deleted on removal).
    """

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: torch.nn.Module) -> Optional[dict]:
        found = _canonized_class(module, 'attention')
        if found is None:
            return None
        spec, cls = found
        return {'forward': spec.attention[cls].__get__(module), 'canonizer_mix': AttentionMix()}


class ResidualCanonizer(AttributeCanonizer):
    """Route the residual additions through :class:`zennit.layer.Sum` modules (the ``Norm`` rule splits
    relevance in proportion to the summands)."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: torch.nn.Module) -> Optional[dict]:
        found = _canonized_class(module, 'residual')
        if found is None:
            return None
        spec, cls = found
        attributes = {'forward': _RESIDUAL_FORWARDS[cls].__get__(module)}
        attributes.update({key: Sum() for key in spec.residual[cls]})
        return attributes


class LayerNormCanonizer(AttributeCanonizer):
    """Hold the standard deviation of :class:`torch.nn.LayerNorm` (over the last axis) constant; the canonized
    layer is affine in its input, and :class:`TransformerLRP` gives it the epsilon rule."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: torch.nn.Module) -> Optional[dict]:
        if isinstance(module, torch.nn.LayerNorm) and len(module.normalized_shape) == 1:
            return {'forward': _layer_norm_constant_std.__get__(module)}
        return None


def is_canonical_layer_norm(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a LayerNorm whose standard deviation :class:`LayerNormCanonizer` holds constant."""
    forward = module.__dict__.get('forward')
    return isinstance(module, torch.nn.LayerNorm) and getattr(forward, '__func__', None) is _layer_norm_constant_std


class TransformerCanonizer(CompositeCanonizer):
    """All canonizers for BERT-family encoders: :class:`AttentionCanonizer`, :class:`ResidualCanonizer` and
    :class:`LayerNormCanonizer`; :meth:`apply` first refuses unsupported modules (:func:`check_supported`)."""

    def __init__(self):
        super().__init__((AttentionCanonizer(), ResidualCanonizer(), LayerNormCanonizer()))

    def apply(self, root_module: torch.nn.Module) -> list:
        check_supported(root_module)
        return super().apply(root_module)


def _activation_types() -> tuple:
    transformers = _transformers()
    classes = tuple({cls if isinstance(cls, type) else cls[0] for cls in transformers.activations.ACT2CLS.values()})
    return (Activation,) + tuple(cls for cls in classes if issubclass(cls, torch.nn.Module))


@register_composite('transformer_lrp')
class TransformerLRP(Composite):
    r"""Conservative LRP rules for canonized BERT-family encoders (Ali et al. 2022; AttnLRP; NAACL 2024).

    - :class:`torch.nn.Linear`: LRP-:math:`\epsilon`
      :math:`R_i = \sum_j a_i w_{ij} R_j / (z_j + \epsilon\,\mathrm{sign}(z_j))` with :math:`z_j = \sum_i a_i
      w_{ij} + b_j` (``linear='epsilon'``), or LRP-:math:`\gamma` with ``gamma`` (``linear='gamma'``);
    - canonized LayerNorm (constant standard deviation, :func:`is_canonical_layer_norm`) and :class:`AttentionMix`
      (constant probabilities): the same LRP-:math:`\epsilon` rule on their (then affine) maps;
    - :class:`zennit.layer.Sum` (residuals): ``Norm``, :math:`R(x_k) = x_k / \sum_l x_l \, R(y)`;
    - activations (GELU and every Hugging Face activation module) and
      :class:`~zennit_bilrp.lrp.layers.Normalize`: ``Pass``;
    - :class:`torch.nn.Embedding` inside the encoder (MPNet's relative position bias, a function of the positions
      only): ``Pass``, which never runs (integer inputs carry no gradient); it marks the layer as accounted for.

    A LayerNorm that was not canonized gets no rule (strict mode then refuses it, naming it).

    Parameters
    ----------
    epsilon : float
        :math:`\epsilon` of the epsilon rules (small: LRP-0, the NAACL 2024 recipe).
    linear : {'epsilon', 'gamma'}
        Rule of the Linear layers.
    gamma : float
        :math:`\gamma` for ``linear='gamma'``.
    zero_params : list of str, optional
        Parameters set to zero in the rules: ``['bias']`` makes every rule conserve exactly (biases and the
        LayerNorm shift :math:`\beta` absorb no relevance).
    stabilizer : float
        Stabilizer of ``Norm`` and of the gamma rule.
    canonizers : list, optional
        Canonizers applied before the rules; default ``[TransformerCanonizer()]`` (pass ``[]`` for none).
    """

    def __init__(self, epsilon: float = 1e-9, linear: str = 'epsilon', gamma: float = 0.25,
                 zero_params: Optional[list] = None, stabilizer: float = 1e-9, canonizers: Optional[list] = None):
        if linear not in ('epsilon', 'gamma'):
            raise ValueError(f"linear must be 'epsilon' or 'gamma', got {linear!r}")
        if epsilon <= 0 or stabilizer <= 0:
            raise ValueError(f'epsilon and stabilizer must be positive, got {epsilon} and {stabilizer}')
        self.epsilon = float(epsilon)
        self.linear = linear
        self.gamma = float(gamma)
        self.zero_params = zero_params
        self.stabilizer = float(stabilizer)
        self.activations = _activation_types()
        super().__init__(module_map=self.mapping,
                         canonizers=[TransformerCanonizer()] if canonizers is None else canonizers)

    def mapping(self, ctx: dict, name: str, module: torch.nn.Module):
        """The rule of module ``name``."""
        if isinstance(module, (Normalize, torch.nn.Embedding) + self.activations):
            return Pass()
        if isinstance(module, AttentionMix):
            return Epsilon(epsilon=self.epsilon)
        if is_canonical_layer_norm(module):
            return Epsilon(epsilon=self.epsilon, zero_params=self.zero_params)
        if isinstance(module, torch.nn.Linear):
            if self.linear == 'gamma':
                return Gamma(gamma=self.gamma, stabilizer=self.stabilizer, zero_params=self.zero_params)
            return Epsilon(epsilon=self.epsilon, zero_params=self.zero_params)
        if isinstance(module, Sum):
            return Norm(stabilizer=self.stabilizer)
        return None

    def __repr__(self) -> str:
        return (f'TransformerLRP(epsilon={self.epsilon:g}, linear={self.linear!r}, gamma={self.gamma:g}, '
                f'zero_params={self.zero_params!r})')


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


def _check_mask(mask: torch.Tensor, what: str) -> None:
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f'{what}: the last channel is the attention mask and must hold 0 (padding) or 1 (token)')
    if not bool((mask.sum(dim=-1) > 0).all()):
        raise ValueError(f'{what}: every sequence needs at least one token with mask 1')


class TokenEncoder(torch.nn.Module):
    """The encoder stack of a Hugging Face model as a map of one tensor, for the BiLRP engine.

    ``forward(x)`` takes ``x = token_input(embeddings, mask)`` of shape ``(N, H + 1, L)``: the embedding layer's
    output as ``H`` channels over ``L`` token positions, then the attention mask as one more channel (detached:
    it gets no relevance). It returns the last hidden states in the same layout, ``(N, H + 1, L)``, with the mask
    channel passed on for the pooling head (:class:`MaskedMeanHead`, :class:`ClsHead`). Padding positions are
    masked out of the attention, so no relevance reaches them.

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
        If the architecture is not supported (naming the module, see :func:`check_supported`).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.architecture = architecture(model)
        spec = _specs()[self.architecture]
        if not hasattr(model, spec.encoder) or not hasattr(model, 'embeddings'):
            raise TypeError(f'{type(model).__name__}: expected a base model with `embeddings` and `{spec.encoder}` '
                            '(e.g. AutoModel.from_pretrained, not a model with a task head)')
        self.encoder = getattr(model, spec.encoder)
        self.hidden_size = int(model.config.hidden_size if hasattr(model.config, 'hidden_size') else model.config.dim)
        object.__setattr__(self, 'model', model)  # not a sub-module: the embeddings get no rules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden_size = self.hidden_size
        if x.dim() != 3 or x.shape[1] != hidden_size + 1:
            raise ValueError(f'TokenEncoder input of shape {tuple(x.shape)}; expected (N, {hidden_size} + 1, L): the '
                             'embeddings as channels and the attention mask as the last channel (see token_input)')
        mask = x[:, hidden_size].detach()
        _check_mask(mask, 'TokenEncoder input')
        hidden = x[:, :hidden_size].transpose(1, 2)
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


class _TokenHead(Head):
    """Heads on the :class:`TokenEncoder` output ``(N, H + 1, L)`` (mask in the last channel)."""

    def check(self, output):
        if output.dim() != 3 or output.shape[1] < 2:
            raise ValueError(f"head '{self.name}' expects the TokenEncoder output (N, H + 1, L), got "
                             f'{tuple(output.shape)}')
        _check_mask(output[:, -1], f"head '{self.name}'")

    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        """Pooling weights ``(N, L)`` of the token positions."""
        raise NotImplementedError

    def embed(self, output):
        return torch.einsum('nhl,nl->nh', output[:, :-1], self.weights(output[:, -1]))

    def contribution(self, output):
        weighted = output[:, :-1] * self.weights(output[:, -1])[:, None, :]
        return torch.cat([weighted, torch.zeros_like(output[:, -1:])], dim=1)

    def expand(self, multipliers, output):
        padded = torch.cat([multipliers, multipliers.new_zeros(*multipliers.shape[:2], 1)], dim=2)
        return padded[..., None]


class MaskedMeanHead(_TokenHead):
    r"""Mean pooling over the tokens (padding excluded), as sentence-transformers' ``Pooling`` (mean mode).

    :math:`\phi_c = \sum_l m_l A_{c,l} / \sum_l m_l`; relevance :math:`R_{c,l} = s_c\, m_l A_{c,l} / \sum_l m_l`
    (the proportional rule, exact: :math:`\sum_l R_{c,l} = s_c \phi_c`). Padding positions get none.
    """
    name = 'masked_mean'

    def weights(self, mask):
        return mask / mask.sum(dim=-1, keepdim=True)


class ClsHead(_TokenHead):
    r"""First-token pooling (``[CLS]``): :math:`\phi_c = A_{c,0}`, all relevance to position 0 of the output."""
    name = 'cls'

    def weights(self, mask):
        weights = torch.zeros_like(mask)
        weights[:, 0] = 1.0
        return weights
