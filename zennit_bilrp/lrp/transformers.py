r"""LRP for transformer encoders: the canonizers, the composite :class:`TransformerLRP` and the support check.

Covered are the BERT-family text encoders of :mod:`~zennit_bilrp.lrp.text_transformers` (BERT, RoBERTa,
DistilBERT, MPNet) and the pre-LN vision and CLIP-style encoders of :mod:`~zennit_bilrp.lrp.vision_transformers`
(Hugging Face ViT, DINOv2 with and without registers, CLIP and SigLIP towers, torchvision and timm vision
transformers); :func:`check_supported` refuses every other attention or normalization module by name. The
wrappers the engine calls are :class:`~zennit_bilrp.lrp.text_transformers.TokenEncoder` (text, token heads) and
:class:`~zennit_bilrp.lrp.towers.ImageEncoder` / :class:`~zennit_bilrp.lrp.towers.CaptionEncoder` (image and
caption towers).

Two rule families explain attention (:data:`~zennit_bilrp.lrp.attention.FAMILIES`, chosen with
``TransformerLRP(family=...)``):

- ``'conservative'`` (Ali et al., ICML 2022, as used for BiLRP of sentence encoders by Vasileiou and Eberle,
  NAACL 2024): the attention probabilities are held constant, so :math:`c = Pv` is linear in the values and all
  relevance flows through them (:class:`~zennit_bilrp.lrp.attention.AttentionMix`, LRP-:math:`\epsilon`, which
  conserves);
- ``'attnlrp'`` (Achtibat et al., ICML 2024): relevance also flows through the softmax into queries and keys; the
  products :math:`QK^\top` and :math:`Pv` take the epsilon-uniform rule, the softmax the Taylor rule with bias
  (:mod:`~zennit_bilrp.lrp.attnlrp`).

Shared by both:

- **LayerNorm**: the standard deviation is held constant (not the mean), the layer is then affine and takes the
  LRP-:math:`\epsilon` rule (its shift :math:`\beta` acts as a bias);
- **residuals** :math:`x + f(x)` become a :class:`zennit.layer.Sum` module with Zennit's ``Norm`` rule (relevance
  split in proportion to the summands);
- **GELU**, quick-GELU and the other activations, layer scale: the identity rule (Zennit's ``Pass``);
- **Linear** layers and the patch embedding (with the position embedding as a constant added: a bias):
  LRP-:math:`\epsilon` (LRP-0 for small :math:`\epsilon`) or LRP-:math:`\gamma`.

With LRP-0 everywhere the conservative rules keep :math:`R = a \odot \partial y / \partial a` at every layer
boundary of the forward pass with constant probabilities and standard deviations and GELU as
:math:`x \cdot (\mathrm{gelu}(x)/x)` (ratio constant), so the explanation equals gradient :math:`\times` input of
that modified forward (the NAACL 2024 recipe); relevance is conserved up to what the biases absorb. AttnLRP's
explanation is gradient :math:`\times` input of the forward with the standard deviations and GELU ratios constant and
the gradient through each product of two input-dependent factors halved. Both are linear in the output relevance and
differentiable in it (the engine's patch-major path applies).

Also importable from here (defined in the modules named): :class:`~zennit_bilrp.lrp.attention.AttentionMix`,
:func:`~zennit_bilrp.lrp.attention.is_canonical_layer_norm`,
:class:`~zennit_bilrp.lrp.text_transformers.TokenEncoder`, :func:`~zennit_bilrp.lrp.text_transformers.token_input`,
:func:`~zennit_bilrp.lrp.text_transformers.architecture`,
:data:`~zennit_bilrp.lrp.text_transformers.SUPPORTED_ARCHITECTURES`,
:data:`~zennit_bilrp.lrp.text_transformers.TEXT_EXTRA`.
"""
from __future__ import annotations

from typing import Optional

import torch
from zennit.canonizers import AttributeCanonizer, Canonizer, CompositeCanonizer
from zennit.composites import register_composite
from zennit.core import Composite
from zennit.layer import Sum
from zennit.rules import Epsilon, Gamma, Norm, Pass
from zennit.types import Activation

from .attention import (
    AttentionMix,
    AttentionScores,
    AttentionSoftmax,
    AttentionValues,
    GatedProduct,
    PatchEmbedding,
    TokenMean,
    attention_modules,
    check_family,
    is_canonical_layer_norm,
    layer_norm_constant_std,
)
from .attnlrp import SoftmaxTaylor, UniformEpsilon
from .layers import Normalize
from .text_transformers import (  # noqa: F401 - documented import paths
    SUPPORTED_ARCHITECTURES,
    TEXT_EXTRA,
    TokenEncoder,
    architecture,
    canonized_text_class,
    text_spec_for,
    token_input,
)
from .vision_transformers import (
    attention_layout,
    block_layout,
    is_covered,
    is_layer_scale,
    multihead_slot,
    swap_multihead,
    vision_attributes,
    vision_problem,
)

__all__ = ['DEFAULT_FAMILY', 'TransformerCanonizer', 'AttentionCanonizer', 'ResidualCanonizer',
           'LayerNormCanonizer', 'MultiheadAttentionCanonizer', 'TransformerLRP', 'check_supported', 'is_transformer']

#: the rule family :class:`TransformerLRP` uses unless told otherwise, chosen by the keyword benchmark on
#: all-MiniLM-L6-v2 (``benchmarks/text_eval.py --split all``, results in ``benchmarks/results/text_families``): on
#: 60 sentence pairs the top token pair joins the shared word or synonym in 60 of 60 pairs with the conservative
#: rules and 58 of 60 with AttnLRP's (40 held-out pairs: 40 and 40), the pair-perturbation AUC is the same within
#: its standard error (0.508 and 0.501, +- 0.025), and the conservative rules cost less (1.7 and 2.3 s per pair)
DEFAULT_FAMILY = 'conservative'


def _is_norm(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm) or name.endswith(('LayerNorm', 'RMSNorm', 'Norm'))


def _covered(module: torch.nn.Module) -> bool:
    """Whether a canonizer canonizes ``module`` (text or vision table)."""
    spec = text_spec_for(module)
    cls = type(module).__name__
    if spec is not None and (cls in spec.attention or cls in spec.residual) and not cls.endswith('CrossAttention'):
        return True
    if spec is not None and cls.endswith('Attention') and any(
            type(child).__name__ in spec.attention for child in module.children()):
        return True  # e.g. BertAttention: its parts are canonized
    return is_covered(module)


def _problem(name: str, module: torch.nn.Module, parent: Optional[torch.nn.Module]) -> Optional[str]:
    cls = type(module).__name__
    where = f"'{name}' ({cls})" if name else f'the model itself ({cls})'
    if isinstance(module, torch.nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            return (f'unsupported layer {where}: LayerNorm over {module.normalized_shape}; the canonizer holds the '
                    'standard deviation of the last axis constant only')
        return None
    problem = vision_problem(name, module, parent)
    if problem is not None or isinstance(module, torch.nn.MultiheadAttention):
        return problem
    if ('Attention' in cls or _is_norm(module)) and not _covered(module):
        return (f'unsupported layer {where}: no canonizer for this attention/normalization module. Transformer '
                f'BiLRP supports the text encoders {", ".join(SUPPORTED_ARCHITECTURES)} (Hugging Face) and the '
                'vision/CLIP encoders ViT, DINOv2, CLIP, SigLIP (Hugging Face), torchvision and timm vision '
                'transformers; other architectures need their own canonizer')
    return None


def check_supported(model: torch.nn.Module) -> None:
    """Refuse models with attention or normalization modules that :class:`TransformerCanonizer` cannot canonize.

    Covered: the attention, residual and LayerNorm modules of the text encoders
    (:data:`~zennit_bilrp.lrp.text_transformers.SUPPORTED_ARCHITECTURES`, no cross-attention), of the vision and
    CLIP-style encoders (:mod:`~zennit_bilrp.lrp.vision_transformers`), and :class:`torch.nn.LayerNorm` over one
    axis. Every attention implementation of a covered Hugging Face class is canonized (the canonized forward never
    calls it).

    Raises
    ------
    TypeError
        Naming the first module (qualified name and class) that would stay un-canonized, and what is supported.
    """
    parents = {id(child): module for module in model.modules() for child in module.children()}
    for name, module in model.named_modules():
        problem = _problem(name, module, parents.get(id(module)))
        if problem is not None:
            raise TypeError(problem)


def is_transformer(model: torch.nn.Module) -> bool:
    """Whether ``model`` is or holds a transformer that :class:`TransformerLRP` is meant for: a Hugging Face model
    (``config.model_type``), or a covered vision-transformer block, attention or MultiheadAttention slot."""
    return any(hasattr(getattr(module, 'config', None), 'model_type') or block_layout(module) is not None
               or attention_layout(module) is not None or multihead_slot(module) is not None
               for module in model.modules())


class AttentionCanonizer(AttributeCanonizer):
    """Canonize self-attention (and gate products) in rule ``family``: the module's ``forward`` becomes the
    canonized one of its architecture and it gets the attention modules of the family
    (:func:`~zennit_bilrp.lrp.attention.attention_modules`), all deleted on removal."""

    def __init__(self, family: str = DEFAULT_FAMILY):
        self.family = check_family(family)
        super().__init__(self._attribute_map)

    def _attribute_map(self, name: str, module: torch.nn.Module) -> Optional[dict]:
        found = canonized_text_class(module, 'attention')
        if found is not None:
            spec, cls = found
            return {'forward': spec.attention[cls].__get__(module), **attention_modules(self.family)}
        return vision_attributes(module, self.family, 'attention')


class ResidualCanonizer(AttributeCanonizer):
    """Route the residual additions through :class:`zennit.layer.Sum` modules (the ``Norm`` rule splits
    relevance in proportion to the summands): BERT-style residual modules, pre-LN blocks and the SigLIP pooling
    head."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: torch.nn.Module) -> Optional[dict]:
        found = canonized_text_class(module, 'residual')
        if found is None:
            return vision_attributes(module, 'conservative', 'residual')
        spec, cls = found
        forward, sums = spec.residual[cls]
        return {'forward': forward.__get__(module), **{key: Sum() for key in sums}}


class LayerNormCanonizer(AttributeCanonizer):
    """Hold the standard deviation of :class:`torch.nn.LayerNorm` (over the last axis) constant; the canonized
    layer is affine in its input, and :class:`TransformerLRP` gives it the epsilon rule."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: torch.nn.Module) -> Optional[dict]:
        if isinstance(module, torch.nn.LayerNorm) and len(module.normalized_shape) == 1:
            return {'forward': layer_norm_constant_std.__get__(module)}
        return None


class MultiheadAttentionCanonizer(Canonizer):
    """Swap each :class:`torch.nn.MultiheadAttention` in a covered slot (torchvision's ``EncoderBlock``, SigLIP's
    pooling head) for a :class:`~zennit_bilrp.lrp.attention.MultiheadSelfAttention` with the same parameters, and
    swap the original back on removal."""

    def __init__(self, family: str = DEFAULT_FAMILY):
        self.family = check_family(family)
        self.module: Optional[torch.nn.Module] = None
        self.swapped: Optional[tuple] = None

    def apply(self, root_module: torch.nn.Module) -> list:
        instances = []
        for module in list(root_module.modules()):
            swapped = swap_multihead(module, self.family)
            if swapped is not None:
                instance = self.copy()
                instance.module, instance.swapped = module, swapped
                instances.append(instance)
        return instances

    def register(self) -> None:
        """Nothing to do: :meth:`apply` swaps."""

    def remove(self) -> None:
        if self.swapped is not None:
            name, original = self.swapped
            setattr(self.module, name, original)
            self.swapped = None

    def copy(self) -> MultiheadAttentionCanonizer:
        return type(self)(self.family)


class TransformerCanonizer(CompositeCanonizer):
    """All canonizers for transformer encoders in rule ``family``: :class:`MultiheadAttentionCanonizer`,
    :class:`AttentionCanonizer`, :class:`ResidualCanonizer` and :class:`LayerNormCanonizer`; :meth:`apply` first
    refuses unsupported modules (:func:`check_supported`)."""

    def __init__(self, family: str = DEFAULT_FAMILY):
        self.family = check_family(family)
        super().__init__((MultiheadAttentionCanonizer(family), AttentionCanonizer(family), ResidualCanonizer(),
                          LayerNormCanonizer()))

    def apply(self, root_module: torch.nn.Module) -> list:
        check_supported(root_module)
        return super().apply(root_module)


def _activation_types() -> tuple:
    try:
        import transformers
    except ImportError:  # torchvision/timm models need no transformers
        return (Activation,)
    classes = tuple({cls if isinstance(cls, type) else cls[0] for cls in transformers.activations.ACT2CLS.values()})
    return (Activation,) + tuple(cls for cls in classes if issubclass(cls, torch.nn.Module))


@register_composite('transformer_lrp')
class TransformerLRP(Composite):
    r"""LRP rules for canonized transformer encoders, in the rule family ``family``.

    - :class:`torch.nn.Linear` and :class:`~zennit_bilrp.lrp.attention.PatchEmbedding`: LRP-:math:`\epsilon`
      :math:`R_i = \sum_j a_i w_{ij} R_j / (z_j + \epsilon\,\mathrm{sign}(z_j))` with :math:`z_j = \sum_i a_i
      w_{ij} + b_j` (``linear='epsilon'``), or LRP-:math:`\gamma` with ``gamma`` (``linear='gamma'``);
    - canonized LayerNorm (constant standard deviation), :class:`~zennit_bilrp.lrp.attention.AttentionMix`
      (constant probabilities, the conservative family) and :class:`~zennit_bilrp.lrp.attention.TokenMean`: the same
      LRP-:math:`\epsilon` rule on their (then affine) maps;
    - :class:`~zennit_bilrp.lrp.attention.AttentionScores`, :class:`~zennit_bilrp.lrp.attention.AttentionValues`
      and :class:`~zennit_bilrp.lrp.attention.GatedProduct`: the epsilon-uniform rule
      (:class:`~zennit_bilrp.lrp.attnlrp.UniformEpsilon`); :class:`~zennit_bilrp.lrp.attention.AttentionSoftmax`:
      the Taylor rule with bias (:class:`~zennit_bilrp.lrp.attnlrp.SoftmaxTaylor`) (both AttnLRP);
    - :class:`zennit.layer.Sum` (residuals): ``Norm``, :math:`R(x_k) = x_k / \sum_l x_l \, R(y)`;
    - activations (GELU and every Hugging Face activation module), layer scale and
      :class:`~zennit_bilrp.lrp.layers.Normalize`: ``Pass``;
    - :class:`torch.nn.Embedding` inside an encoder (MPNet's relative position bias, a function of the positions
      only): ``Pass``, which never runs (integer inputs carry no gradient); it marks the layer as accounted for.

    Which of the attention modules exist is decided by the canonizers of ``family``. A LayerNorm that was not
    canonized gets no rule (strict mode then refuses it, naming it).

    Parameters
    ----------
    family : {'conservative', 'attnlrp'}
        The rule family for attention (default :data:`DEFAULT_FAMILY`).
    epsilon : float
        :math:`\epsilon` of the epsilon rules (small: LRP-0, the NAACL 2024 recipe).
    linear : {'epsilon', 'gamma'}
        Rule of the Linear layers and the patch embedding.
    gamma : float
        :math:`\gamma` for ``linear='gamma'``.
    zero_params : list of str, optional
        Parameters set to zero in the rules: ``['bias']`` makes the rules of the conservative family conserve
        exactly (biases and the LayerNorm shift :math:`\beta` absorb no relevance).
    stabilizer : float
        Stabilizer of ``Norm`` and of the gamma rule.
    canonizers : list, optional
        Canonizers applied before the rules; default ``[TransformerCanonizer(family)]`` (pass ``[]`` for none).
    """

    def __init__(self, family: str = DEFAULT_FAMILY, epsilon: float = 1e-9, linear: str = 'epsilon',
                 gamma: float = 0.25, zero_params: Optional[list] = None, stabilizer: float = 1e-9,
                 canonizers: Optional[list] = None):
        if linear not in ('epsilon', 'gamma'):
            raise ValueError(f"linear must be 'epsilon' or 'gamma', got {linear!r}")
        if epsilon <= 0 or stabilizer <= 0:
            raise ValueError(f'epsilon and stabilizer must be positive, got {epsilon} and {stabilizer}')
        self.family = check_family(family)
        self.epsilon = float(epsilon)
        self.linear = linear
        self.gamma = float(gamma)
        self.zero_params = zero_params
        self.stabilizer = float(stabilizer)
        self.activations = _activation_types()
        super().__init__(module_map=self.mapping,
                         canonizers=[TransformerCanonizer(family)] if canonizers is None else canonizers)

    def mapping(self, ctx: dict, name: str, module: torch.nn.Module):
        """The rule of module ``name``."""
        if isinstance(module, (Normalize, torch.nn.Embedding) + self.activations) or is_layer_scale(module):
            return Pass()
        if isinstance(module, (AttentionMix, TokenMean)):
            return Epsilon(epsilon=self.epsilon)
        if isinstance(module, (AttentionScores, GatedProduct)):
            return UniformEpsilon(epsilon=self.epsilon, operands=module.operands)
        if isinstance(module, AttentionValues):
            return UniformEpsilon(epsilon=self.epsilon, operands=2)
        if isinstance(module, AttentionSoftmax):
            return SoftmaxTaylor()
        if is_canonical_layer_norm(module):
            return Epsilon(epsilon=self.epsilon, zero_params=self.zero_params)
        if isinstance(module, (torch.nn.Linear, PatchEmbedding)):
            if self.linear == 'gamma':
                return Gamma(gamma=self.gamma, stabilizer=self.stabilizer, zero_params=self.zero_params)
            return Epsilon(epsilon=self.epsilon, zero_params=self.zero_params)
        if isinstance(module, Sum):
            return Norm(stabilizer=self.stabilizer)
        return None

    def __repr__(self) -> str:
        return (f'TransformerLRP(family={self.family!r}, epsilon={self.epsilon:g}, linear={self.linear!r}, '
                f'gamma={self.gamma:g}, zero_params={self.zero_params!r})')
