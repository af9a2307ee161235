"""zennit-bilrp: pairwise (second-order) LRP explanations of similarity models, built on Zennit.

The engine (:mod:`zennit_bilrp.core.engine`) computes BiLRP exactly with one forward pass and batched LRP backward
passes; similarities, heads, pooling, composites and canonizers live in modules named after them. The feature
modules (Captum adapter, approximations and cache, figures, demo model, alignment and context analysis, IRIs,
neuron selection) build on it; their main names are available here too and are imported on first use.
"""
from importlib import import_module

from .core.engine import BiLRP
from .core.heads import Head, get_head
from .core.pooling import PatchGrid, Pooling
from .core.results import BiLRPResult, ConservationWarning, Factors, TopPairs, pairwise_relevance, unit_multipliers
from .core.session import METHODS
from .core.similarity import BilinearSimilarity, CosineSimilarity, DotSimilarity, Similarity, get_similarity
from .lrp.canonizers import canonizers_for, exact_batch_norm_merge
from .lrp.composites import BiLRPGamma, DepthGamma, bilrp_composite, gamma_schedule, register_similarity_rules
from .lrp.layers import CaptureLayer, LayerEmbedding, Normalize, get_layer
from .lrp.restore import ModelGuard, ModelState

__version__ = '0.1.0'

#: names re-exported lazily from the feature modules: name -> module
_LAZY = {
    'BiLRPAttribution': 'interop.captum_adapter',
    'captum_bilrp': 'interop.captum_lrp',
    'approximate': 'scale.approximations',
    'select_units': 'scale.approximations',
    'explain_at_layer': 'scale.approximations',
    'FactorCache': 'scale.cache',
    'explain_loader': 'scale.cache',
    'plot_bilrp': 'app.viz',
    'plot_relevance_matrix': 'app.viz',
    'plot_pair_grid': 'app.viz',
    'plot_bilrp_stack': 'app.viz',
    'plot_critical_paths': 'app.viz',
    'load_demo_model': 'models.demo',
    'load_demo_pair': 'models.demo',
    'make_pairs': 'models.synthetic',
    'AlignedModel': 'analysis.alignment',
    'load_glocal_transform': 'analysis.alignment',
    'fit_alignment': 'analysis.alignment',
    'pair_shares': 'analysis.context',
    'context_analysis': 'analysis.context',
    'ContextStudy': 'analysis.study',
    'IRIGenerator': 'analysis.iri',
    'generate_iris': 'analysis.iri',
    'explain_iris': 'analysis.iri',
    'NeuronLRP': 'analysis.neurons',
    'critical_paths': 'analysis.critical_path',
    'reconstruct': 'analysis.reconstruction',
}

__all__ = [
    'BiLRP', 'BiLRPResult', 'Factors', 'TopPairs', 'pairwise_relevance', 'unit_multipliers', 'METHODS',
    'ConservationWarning', 'Similarity', 'DotSimilarity', 'CosineSimilarity', 'BilinearSimilarity',
    'get_similarity', 'Head', 'get_head', 'Pooling', 'PatchGrid', 'BiLRPGamma', 'DepthGamma', 'bilrp_composite',
    'gamma_schedule', 'register_similarity_rules', 'canonizers_for', 'exact_batch_norm_merge', 'Normalize',
    'get_layer', 'CaptureLayer', 'LayerEmbedding', 'ModelGuard', 'ModelState', *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f'.{_LAZY[name]}', __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
