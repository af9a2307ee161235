"""Neuron selection for BiLRP: the embedding units of a similarity model (ranked by their contribution to the
similarity) and the neurons of an inner layer, through the engine (see :mod:`zennit_bilrp.analysis.neurons`)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..core.engine import BiLRP
from ..core.results import BiLRPResult, pairwise_relevance
from ..scale.approximations import select_from_factors, select_units, unit_contributions
from .neuron_select import NeuronMask, Neurons, neuron_index
from .selection_curve import SelectionCurve, selection_curve_from_heatmaps

__all__ = ['similarity_target', 'explain_units', 'explain_pair_neurons', 'bilrp_selection_curve']


def similarity_target(bilrp: BiLRP, x_partner: torch.Tensor, tower: str = 'b',
                      partner_totals: Optional[torch.Tensor] = None) -> Callable:
    r"""Output relevance of a similarity model for the first-order marginal of ``x`` given a fixed partner ``x'``.

    Returns a callable ``output -> relevance`` for :class:`NeuronLRP` (``target=``): the head's relevance for
    :math:`\phi(x) \odot s` with :math:`s = c\,G\,\phi(x')` (the engine's partner multipliers with the partner's
    unit totals taken as :math:`\phi(x')`, exact when LRP conserves). Its sum is the similarity :math:`y`, and the
    resulting input relevance is the BiLRP marginal :math:`\sum_{i'} R_{ii'}`.

    Parameters
    ----------
    bilrp : BiLRP
        The engine (similarity and head).
    x_partner : torch.Tensor
        Partners ``(N, ...)``, one per explained input (or one for all).
    tower : {'a', 'b'}
        Encoder of the partners.
    partner_totals : torch.Tensor, optional
        Unit totals ``(N, h)`` of the partners to use instead of :math:`\phi(x')` (e.g. ``factors.totals`` from the
        engine; then the result equals the engine's marginal exactly).
    """
    emb_partner = bilrp.embed(x_partner, tower=tower)
    totals_partner = emb_partner if partner_totals is None else partner_totals.detach()
    if totals_partner.shape != emb_partner.shape:
        raise ValueError(f'partner_totals has shape {tuple(totals_partner.shape)}, the partner embeddings '
                         f'{tuple(emb_partner.shape)}')

    def target(output: torch.Tensor) -> torch.Tensor:
        emb = bilrp.head.embed(output.detach())
        partner, totals = emb_partner.to(emb), totals_partner.to(emb)
        if partner.shape[0] == 1 and emb.shape[0] > 1:
            partner, totals = partner.expand(emb.shape[0], -1), totals.expand(emb.shape[0], -1)
        if partner.shape != emb.shape:
            raise ValueError(f'partner embeddings {tuple(partner.shape)} do not match the embeddings '
                             f'{tuple(emb.shape)}')
        multipliers, _ = bilrp.similarity.partner_multipliers(emb, totals, emb, partner)
        return bilrp.head.output_relevance(output, multipliers[None])[0]

    return target


def explain_units(bilrp: BiLRP, x_a: torch.Tensor, x_b: torch.Tensor, units: Optional[Neurons] = None,
                  k: Optional[int] = None, pooling=None, result: Optional[BiLRPResult] = None) -> BiLRPResult:
    """BiLRP of a pair batch restricted to selected embedding units.

    ``R_S = c sum_{m in S} F_m(x) F_m(x')^T`` (dot/cosine; a bilinear similarity keeps the rows ``m in S`` of the
    first side), computed from the engine's factors of the selected units only.

    Parameters
    ----------
    bilrp : BiLRP
        The engine (composite, similarity, head).
    units : int, sequence of int or torch.Tensor, optional
        Units to keep (shared by all pairs).
    k : int, optional
        Keep instead the ``k`` units of largest contribution ``|phi_m(x) phi_m(x')|`` per pair
        (:func:`zennit_bilrp.scale.approximations.select_from_factors`); factors of all units are then computed
        once.
    pooling : int or Pooling, optional
        Patch pooling.
    result : BiLRPResult, optional
        The full BiLRP of these pairs (all units, e.g. from ``bilrp.explain``), reused with ``k`` instead of being
        recomputed.

    Returns
    -------
    BiLRPResult
        ``relevance`` restricted to the units (``marginal_a/b`` are not computed; ``extras['units']`` holds them).
    """
    if (units is None) == (k is None):
        raise ValueError('give exactly one of units and k')
    with bilrp.registration.ensure():
        if units is not None:
            h = bilrp.embed(x_a[:1]).shape[1]
            index = neuron_index(units, h, 'the embedding (units)')
            if index.dim() != 1:
                raise ValueError('units shared by all pairs must have shape (K,); use k for per-pair selection')
            fa = bilrp.factors(x_a, pooling, tower='a', units=index)
            fb = bilrp.factors(x_b, pooling, tower='b', units=index)
            relevance = pairwise_relevance(fa, fb, bilrp.similarity)
            chosen = index
        else:
            full = result if result is not None else bilrp.explain(x_a, x_b, pooling=pooling, marginals=False)
            fa, fb = _all_unit_factors(full)
            selected = select_from_factors(fa, fb, bilrp.similarity, k=k)
            relevance, chosen = selected.relevance, selected.units
        similarity = bilrp.similarity(fa.embedding, fb.embedding)
    return BiLRPResult(relevance, similarity, fa, fb, extras={'units': chosen})


def _all_unit_factors(result: BiLRPResult) -> tuple:
    """The factors of both sides of ``result``, which must explain all units."""
    if result.factors_a.units is not None or result.factors_b.units is not None:
        raise ValueError('result must hold the factors of all units')
    return result.factors_a, result.factors_b


def explain_pair_neurons(bilrp: BiLRP, x_a: torch.Tensor, x_b: torch.Tensor, layer: str, neurons: Neurons,
                         kind: str = 'channel', pooling=None, marginals: bool = True) -> BiLRPResult:
    r"""BiLRP restricted to relevance flowing through selected neurons of an inner layer (both inputs).

    Each per-unit explanation :math:`R_m` is masked at ``layer`` (:class:`NeuronMask`), so
    :math:`R = c\sum_m R^S_m(x) R^S_m(x')^\top`: the pairwise relevance that passes through the neurons ``S`` on
    both sides. Selecting all neurons of a cut layer reproduces the full BiLRP.
    """
    if bilrp.model_b is not None:
        raise ValueError('explain_pair_neurons needs a shared (Siamese) encoder')
    with bilrp.registration.ensure(), NeuronMask(bilrp.model, layer, neurons, kind):
        return bilrp.explain(x_a, x_b, pooling=pooling, marginals=marginals)


def bilrp_selection_curve(bilrp: BiLRP, x_a: torch.Tensor, x_b: torch.Tensor, pooling=None,
                          max_k: Optional[int] = None, result: Optional[BiLRPResult] = None) -> SelectionCurve:
    """MSE/SMAPE of the top-``k``-unit BiLRP against the full BiLRP (pooled pairwise matrices), ``k = 1..max_k``.

    Units are ranked per pair by their contribution ``|phi_m(x) phi_m(x')|``
    (:func:`zennit_bilrp.scale.approximations.select_units`); the factors of all units are computed once by the
    engine and every ``k`` is :func:`~zennit_bilrp.scale.approximations.select_from_factors` of the top ``k`` units
    (no backward pass). A full ``result`` of these pairs (all units) is reused instead of being recomputed.
    """
    if result is None:
        with bilrp.registration.ensure():
            result = bilrp.explain(x_a, x_b, pooling=pooling, marginals=False)
    fa, fb = _all_unit_factors(result)
    h = fa.embedding.shape[1]
    max_k = h if max_k is None else max_k
    if not 0 < max_k <= h:
        raise ValueError(f'max_k must be in 1..{h} (embedding units), got {max_k}')
    contributions = unit_contributions(fa.embedding, fb.embedding, bilrp.similarity)
    order = select_units(contributions, k=max_k)
    cumulative = torch.stack([select_from_factors(fa, fb, bilrp.similarity, units=order[:, :k]).relevance.flatten(1)
                              for k in range(1, max_k + 1)], dim=1)
    return selection_curve_from_heatmaps(cumulative, result.relevance.flatten(1), order, contributions.gather(1, order),
                                         'embedding', 'unit', h)
