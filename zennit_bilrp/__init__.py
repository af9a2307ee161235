"""zennit-bilrp: pairwise (second-order) LRP explanations of similarity models, built on Zennit.

The engine (:mod:`zennit_bilrp.core.engine`) computes BiLRP exactly with one forward pass and batched LRP backward
passes; similarities, heads, pooling, composites and canonizers live in modules named after them. The feature
modules (Captum adapter, approximations and cache, figures, demo model, alignment and context analysis, IRIs,
neuron selection) build on it; their main names are available here too.
"""

from .analysis.alignment import AlignedModel, fit_alignment, load_glocal_transform
from .analysis.context import context_analysis, pair_shares
from .analysis.critical_path import critical_paths
from .analysis.iri import IRIGenerator, explain_iris, generate_iris
from .analysis.neurons import NeuronLRP
from .analysis.reconstruction import reconstruct
from .analysis.study import ContextStudy
from .app.viz import (
    plot_bilrp,
    plot_bilrp_stack,
    plot_critical_paths,
    plot_pair_grid,
    plot_relevance_matrix,
    plot_relevance_tensor,
    save_heatmap,
)
from .core.engine import BiLRP
from .core.heads import Head, get_head
from .core.plan import NotDifferentiableError, PathFallbackWarning, Plan
from .core.pooling import PatchGrid, Pooling
from .core.results import BiLRPResult, ConservationWarning, Factors, TopPairs, pairwise_relevance, unit_multipliers
from .core.session import METHODS
from .core.similarity import BilinearSimilarity, CosineSimilarity, DotSimilarity, Similarity, get_similarity
from .core.token_heads import ClsHead, MaskedMeanHead
from .interop.captum_adapter import BiLRPAttribution
from .interop.captum_lrp import captum_bilrp
from .lrp.canonizers import canonizers_for, exact_batch_norm_merge
from .lrp.choose import NoRulesError, composite_for
from .lrp.composites import BiLRPGamma, DepthGamma, bilrp_composite, gamma_schedule, register_similarity_rules
from .lrp.layers import CaptureLayer, LayerEmbedding, Normalize, get_layer
from .lrp.mobile_composites import MobileComposite, mobile_composite
from .lrp.restore import ModelGuard, ModelState
from .lrp.text_transformers import TokenEncoder
from .lrp.towers import CaptionEncoder, ImageEncoder
from .lrp.transformers import TransformerCanonizer, TransformerLRP
from .models.demo import load_demo_model, load_demo_pair
from .models.synthetic import make_pairs
from .models.text import explain_text, load_sentence_encoder
from .scale.approximations import approximate, explain_at_layer, select_units
from .scale.cache import FactorCache, Retrieval, explain_loader
from .version import __version__ as __version__

__all__ = [
    'BiLRP', 'Plan', 'PathFallbackWarning', 'NotDifferentiableError',
    'BiLRPResult', 'Factors', 'TopPairs', 'pairwise_relevance', 'unit_multipliers', 'METHODS',
    'ConservationWarning', 'Similarity', 'DotSimilarity', 'CosineSimilarity', 'BilinearSimilarity',
    'get_similarity', 'Head', 'get_head', 'Pooling', 'PatchGrid', 'BiLRPGamma', 'DepthGamma', 'bilrp_composite',
    'gamma_schedule', 'register_similarity_rules', 'MobileComposite', 'mobile_composite', 'canonizers_for',
    'composite_for', 'NoRulesError', 'exact_batch_norm_merge', 'Normalize',
    'get_layer', 'CaptureLayer', 'LayerEmbedding', 'ModelGuard', 'ModelState', 'BiLRPAttribution', 'captum_bilrp',
    'approximate', 'select_units', 'explain_at_layer', 'FactorCache', 'Retrieval', 'explain_loader', 'plot_bilrp',
    'plot_relevance_matrix', 'plot_relevance_tensor', 'plot_pair_grid', 'plot_bilrp_stack', 'plot_critical_paths',
    'save_heatmap', 'load_demo_model',
    'load_demo_pair', 'make_pairs', 'AlignedModel', 'load_glocal_transform', 'fit_alignment', 'pair_shares',
    'context_analysis', 'ContextStudy', 'IRIGenerator', 'generate_iris', 'explain_iris', 'NeuronLRP',
    'critical_paths', 'reconstruct', 'TransformerLRP', 'TransformerCanonizer', 'TokenEncoder', 'MaskedMeanHead',
    'ClsHead', 'ImageEncoder', 'CaptionEncoder', 'explain_text', 'load_sentence_encoder',
]
