r"""Identically represented inputs (IRIs): generation, shared-invariance measures and BiLRP explanations.

An IRI of a reference image :math:`x_\mathrm{ref}` at layer :math:`g` of a model is an image :math:`x'` with
:math:`g(x') \approx g(x_\mathrm{ref})`, found by gradient descent from a starting point :math:`x_0`. Following
Nanda et al., "Do Invariances in Deep Neural Networks Align with Human Perception?" (AAAI 2023), the objective is

.. math::

    L(x) = \frac{\|g(T(x)) - g(x_\mathrm{ref})\|_2}{\|g(x_\mathrm{ref})\|_2}
           + \sum_k \lambda_k \, \mathrm{reg}_k(x) - c \, D(x, x_\mathrm{ref}),

with optional image regularizers :math:`\mathrm{reg}_k` (:class:`TotalVariation`, :class:`Blur`, :class:`L1Center`,
:class:`LpNorm`), optional random robustness transforms :math:`T` (:class:`RandomTransforms`) and, for the
*adversarial* IRIs of the paper, :math:`c > 0` with a perceptual distance :math:`D`
(:mod:`zennit_bilrp.analysis.perceptual`) that pushes :math:`x'` away from the reference while its representation is
matched. It is minimized by normalized gradient descent
:math:`x \leftarrow \mathrm{clip}_{[0,1]}(x - \eta_t\, \nabla L / \|\nabla L\|_2)` (per sample) keeping the best
iterate of each sample. The second adversarial variant (:class:`LpBall`) starts from a *different* image
:math:`x_0` and projects every iterate onto :math:`\{x : \|x - x_0\|_p \le \epsilon\} \cap [0,1]^d`.

Measures: :func:`alignment_score` (the paper's automatic score), :func:`shared_invariance` /
:func:`invariance_table` (how identically another model represents the IRIs) and :func:`explain_iris` (BiLRP of
(IRI, reference) pairs through :class:`zennit_bilrp.core.engine.BiLRP`, with the relevance share of corresponding
patches).

One idea per module, every name importable from here too: :mod:`~zennit_bilrp.analysis.iri.representation` (the
layer and the distance matched), :mod:`~zennit_bilrp.analysis.iri.regularizers` and
:mod:`~zennit_bilrp.analysis.iri.transforms` (the terms and constraints of the objective),
:mod:`~zennit_bilrp.analysis.iri.generation` (the search), :mod:`~zennit_bilrp.analysis.iri.invariance` (the
measures) and :mod:`~zennit_bilrp.analysis.iri.explanation` (BiLRP of IRIs).
"""
from .explanation import IRIExplanation, correspondence_share, explain_iris
from .generation import START_POINTS, IRIGenerator, IRIResult, generate_iris
from .invariance import AlignmentScore, InvarianceTable, alignment_score, invariance_table, shared_invariance
from .regularizers import Blur, L1Center, LpNorm, Regularizer, TotalVariation
from .representation import representation, representation_distance, resolve_layer
from .transforms import LpBall, RandomTransforms

__all__ = [
    'resolve_layer', 'representation', 'representation_distance',
    'Regularizer', 'TotalVariation', 'Blur', 'L1Center', 'LpNorm', 'RandomTransforms', 'LpBall',
    'IRIGenerator', 'IRIResult', 'generate_iris', 'START_POINTS',
    'AlignmentScore', 'alignment_score', 'shared_invariance', 'InvarianceTable', 'invariance_table',
    'IRIExplanation', 'explain_iris', 'correspondence_share',
]
