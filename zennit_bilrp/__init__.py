"""zennit-bilrp: pairwise (second-order) LRP explanations of similarity models, built on Zennit.

The engine (:mod:`zennit_bilrp.engine`) computes BiLRP exactly with one forward pass and batched LRP backward
passes; similarities, heads, pooling, composites and canonizers live in modules named after them. The feature
modules (Captum adapter, approximations and cache, figures, demo model, alignment and context analysis, IRIs,
neuron selection) build on it; their main names are available here too and are imported on first use.
"""
from importlib import import_module

from .canonizers import canonizers_for, exact_batch_norm_merge
from .composites import BiLRPGamma, bilrp_composite, gamma_schedule, register_similarity_rules
from .engine import (
    METHODS,
    BiLRP,
    BiLRPResult,
    ConservationWarning,
    Factors,
    TopPairs,
    pairwise_relevance,
    unit_multipliers,
)
from .heads import Head, get_head
from .layers import LayerEmbedding, Normalize, capture_layer, get_layer
from .pooling import PatchGrid, Pooling
from .restore import ModelGuard, ModelState
from .similarity import BilinearSimilarity, CosineSimilarity, DotSimilarity, Similarity, get_similarity

__version__ = '0.1.0'

#: names re-exported lazily from the feature modules: name -> module
_LAZY = {
    'BiLRPAttribution': 'captum_adapter',
    'captum_bilrp': 'captum_lrp',
    'approximate': 'approximations',
    'select_units': 'approximations',
    'explain_at_layer': 'approximations',
    'FactorCache': 'cache',
    'explain_loader': 'cache',
    'plot_bilrp': 'viz',
    'plot_relevance_matrix': 'viz',
    'plot_pair_grid': 'viz',
    'load_demo_model': 'demo_model',
    'load_demo_pair': 'demo_model',
    'make_pairs': 'synthetic',
    'AlignedModel': 'alignment',
    'load_glocal_transform': 'alignment',
    'fit_alignment': 'alignment',
    'pair_shares': 'context',
    'context_analysis': 'context',
    'ContextStudy': 'study',
    'IRIGenerator': 'iri',
    'generate_iris': 'iri',
    'explain_iris': 'iri',
    'NeuronLRP': 'neurons',
    'critical_paths': 'critical_path',
    'reconstruct': 'reconstruction',
}

__all__ = [
    'BiLRP', 'BiLRPResult', 'Factors', 'TopPairs', 'pairwise_relevance', 'unit_multipliers', 'METHODS',
    'ConservationWarning', 'Similarity', 'DotSimilarity', 'CosineSimilarity', 'BilinearSimilarity',
    'get_similarity', 'Head', 'get_head', 'Pooling', 'PatchGrid', 'BiLRPGamma', 'bilrp_composite',
    'gamma_schedule', 'register_similarity_rules', 'canonizers_for', 'exact_batch_norm_merge', 'Normalize',
    'get_layer', 'capture_layer', 'LayerEmbedding', 'ModelGuard', 'ModelState', *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f'.{_LAZY[name]}', __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
