"""zennit-bilrp: pairwise (second-order) LRP explanations of similarity models, built on Zennit.

The engine (:mod:`zennit_bilrp.engine`) computes BiLRP exactly with one forward pass and batched LRP backward
passes; similarities, heads, pooling, composites and canonizers live in modules named after them.
"""
from .canonizers import canonizers_for
from .composites import BiLRPGamma, bilrp_composite, gamma_schedule, register_similarity_rules
from .engine import METHODS, BiLRP, BiLRPResult, Factors, TopPairs, pairwise_relevance, unit_multipliers
from .heads import Head, get_head
from .layers import Normalize
from .pooling import PatchGrid, Pooling
from .restore import ModelGuard, ModelState
from .similarity import BilinearSimilarity, CosineSimilarity, DotSimilarity, Similarity, get_similarity

__version__ = '0.1.0'

__all__ = [
    'BiLRP', 'BiLRPResult', 'Factors', 'TopPairs', 'pairwise_relevance', 'unit_multipliers', 'METHODS',
    'Similarity', 'DotSimilarity', 'CosineSimilarity', 'BilinearSimilarity', 'get_similarity',
    'Head', 'get_head', 'Pooling', 'PatchGrid', 'BiLRPGamma', 'bilrp_composite', 'gamma_schedule',
    'register_similarity_rules', 'canonizers_for', 'Normalize', 'ModelGuard', 'ModelState',
]
