r"""Results of BiLRP: per-input factors, pairwise relevance and its conservation check.

The pooled explanations of one input are its *factors* :math:`F(x) \in \mathbb{R}^{h \times P}` (row :math:`m`:
the LRP explanation of embedding unit :math:`m`, started from its value :math:`\phi_m(x)`, pooled to :math:`P`
patches). Any pairing is then :math:`R = c\,F(x)^\top G\,F(x')` (:func:`pairwise_relevance`), and the
conservation gap is :math:`y - \sum R`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from .pooling import PatchGrid
from .similarity import Similarity, get_similarity

__all__ = [
    'Factors', 'TopPairs', 'PairRelevance', 'BiLRPResult', 'pairwise_relevance', 'unit_multipliers',
    'ConservationWarning', 'AMPLIFICATION_LIMIT', 'amplification', 'warn_if_amplified',
]

@dataclass
class Factors:
    """Per-input BiLRP factors: pooled LRP explanations of each explained embedding unit.

    Attributes
    ----------
    embedding : torch.Tensor
        The embeddings ``phi(x)``, shape ``(N, h)``.
    relevance : torch.Tensor
        Pooled explanations, shape ``(N, K, P)``: row ``k`` is the LRP explanation of unit ``units[k]``
        (all ``h`` units in order when ``units`` is None), started from the unit's value, pooled to ``P`` patches.
    grid : PatchGrid
        Geometry of the pooling.
    units : torch.Tensor or None
        Indices of the explained units (``None``: all units ``0..h-1``).
    """
    embedding: torch.Tensor
    relevance: torch.Tensor
    grid: PatchGrid
    units: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.relevance.shape[0]

    @property
    def totals(self) -> torch.Tensor:
        """Total relevance of each explained unit, ``(N, K)``; equals the unit values when LRP conserves."""
        return self.relevance.sum(dim=-1)

    def unit_index(self) -> torch.Tensor:
        """Indices of the explained units (``arange(h)`` when all are explained)."""
        if self.units is None:
            return torch.arange(self.embedding.shape[1], device=self.embedding.device)
        return self.units

    def __getitem__(self, index) -> Factors:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Factors(self.embedding[index], self.relevance[index], self.grid, self.units)

    def to(self, *args, **kwargs) -> Factors:
        """Move/cast embedding and relevance like :meth:`torch.Tensor.to` (unit indices only move)."""
        units = None
        if self.units is not None:
            device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get('device'))
            units = self.units if device is None else self.units.to(device)
        return Factors(self.embedding.to(*args, **kwargs), self.relevance.to(*args, **kwargs), self.grid, units)

    @staticmethod
    def cat(factors: Sequence[Factors]) -> Factors:
        """Concatenate factors of several batches (same grid and units)."""
        first = factors[0]
        for other in factors[1:]:
            if other.grid != first.grid:
                raise ValueError('Factors.cat: factors were pooled with different grids')
            if (other.units is None) != (first.units is None) or (
                    other.units is not None and not torch.equal(other.units, first.units)):
                raise ValueError('Factors.cat: factors explain different units')
        return Factors(
            torch.cat([f.embedding for f in factors]),
            torch.cat([f.relevance for f in factors]),
            first.grid,
            first.units,
        )


@dataclass
class TopPairs:
    """The most relevant patch pairs of each explained pair.

    Attributes
    ----------
    index_a, index_b : torch.Tensor
        Flat patch indices, shape ``(B, k)``.
    values : torch.Tensor
        Pairwise relevance of these pairs, ``(B, k)`` (signed).
    centers_a, centers_b : torch.Tensor
        Patch centers in input coordinates (row, col, ...), shape ``(B, k, n_spatial)``.
    """
    index_a: torch.Tensor
    index_b: torch.Tensor
    values: torch.Tensor
    centers_a: torch.Tensor
    centers_b: torch.Tensor


@dataclass
class PairRelevance:
    """Pooled pairwise relevance of ``B`` pairs and the similarity it explains (exact or estimated).

    Attributes
    ----------
    relevance : torch.Tensor
        Pooled pairwise relevance, ``(B, P_a, P_b)``.
    similarity : torch.Tensor
        The explained similarity ``y`` of each pair, ``(B,)``.
    """
    relevance: torch.Tensor
    similarity: torch.Tensor

    @property
    def delta(self) -> torch.Tensor:
        """Conservation gap ``y - sum R`` per pair, ``(B,)``."""
        return self.similarity - self.relevance.sum(dim=(1, 2))

    @property
    def amplification(self) -> torch.Tensor:
        """``|sum R| / |y|`` per pair, ``(B,)`` (see :func:`amplification`)."""
        return amplification(self.relevance.sum(dim=(1, 2)), self.similarity)


@dataclass
class BiLRPResult(PairRelevance):
    """Result of :meth:`BiLRP.explain` for a batch of ``B`` pairs.

    Attributes
    ----------
    relevance, similarity : torch.Tensor
        As in :class:`PairRelevance`: pooled pairwise relevance ``(B, P_a, P_b)``, similarity ``(B,)``.
    factors_a, factors_b : Factors
        The factors of both sides, from which any other pairing can be formed (:func:`pairwise_relevance`).
    marginal_a, marginal_b : torch.Tensor or None
        First-order marginals at input resolution, shaped like the inputs: ``marginal_a[i] = sum_i' R[i, i']``
        (computed exactly with one extra LRP pass, not from the pooled matrix).
    """
    factors_a: Factors
    factors_b: Factors
    marginal_a: Optional[torch.Tensor] = None
    marginal_b: Optional[torch.Tensor] = None
    extras: dict = field(default_factory=dict)

    @property
    def grid_a(self) -> PatchGrid:
        """Patch grid of the first inputs."""
        return self.factors_a.grid

    @property
    def grid_b(self) -> PatchGrid:
        """Patch grid of the second inputs."""
        return self.factors_b.grid

    @property
    def marginal_patches_a(self) -> torch.Tensor:
        """Pooled marginal of the first inputs, ``(B, P_a)``."""
        return self.relevance.sum(dim=2)

    @property
    def marginal_patches_b(self) -> torch.Tensor:
        """Pooled marginal of the second inputs, ``(B, P_b)``."""
        return self.relevance.sum(dim=1)

    def relevance_grid(self) -> torch.Tensor:
        """Pairwise relevance reshaped to ``(B, *grid_a, *grid_b)``."""
        return self.relevance.reshape(self.relevance.shape[0], *self.grid_a.grid, *self.grid_b.grid)

    def top_pairs(self, k: int = 10, by: str = 'value') -> TopPairs:
        """The ``k`` most relevant patch pairs of each explained pair.

        Parameters
        ----------
        k : int
            Number of pairs (at most ``P_a * P_b``).
        by : {'value', 'abs', 'negative'}
            Rank by largest signed value, by magnitude, or most negative first.
        """
        flat = self.relevance.reshape(self.relevance.shape[0], -1)
        if not 0 < k <= flat.shape[1]:
            raise ValueError(f'top_pairs: k must be in 1..{flat.shape[1]}, got {k}')
        keys = {'value': flat, 'abs': flat.abs(), 'negative': -flat}
        if by not in keys:
            raise ValueError(f"top_pairs: `by` must be 'value', 'abs' or 'negative', got {by!r}")
        index = keys[by].topk(k, dim=1).indices
        n_b = self.relevance.shape[2]
        index_a, index_b = index // n_b, index % n_b
        centers_a = self.grid_a.patch_centers().to(flat.device)[index_a]
        centers_b = self.grid_b.patch_centers().to(flat.device)[index_b]
        return TopPairs(index_a, index_b, flat.gather(1, index), centers_a, centers_b)


def unit_multipliers(units: torch.Tensor, n_samples: int, n_units: int, dtype, device) -> torch.Tensor:
    """One-hot output-relevance multipliers, ``(K, N, h)``: row ``k`` selects unit ``units[k]`` for all samples."""
    mult = torch.zeros(len(units), n_samples, n_units, dtype=dtype, device=device)
    mult[torch.arange(len(units), device=device), :, units.to(device)] = 1.0
    return mult


def pairwise_relevance(factors_a: Factors, factors_b: Factors, similarity: Union[str, Similarity] = 'dot',
                       unit_weights: Optional[torch.Tensor] = None, all_pairs: bool = False,
                       check: bool = True) -> torch.Tensor:
    r"""Pool-level BiLRP from factors: :math:`R = c\,F_a^\top G\,F_b`.

    Parameters
    ----------
    factors_a, factors_b : Factors
        Factors of the two sides (``B`` each, or ``N_a`` and ``N_b`` with ``all_pairs``).
    similarity : str or Similarity
        The similarity (must be the one the embeddings are compared with).
    unit_weights : torch.Tensor, optional
        Weights ``(K,)`` or ``(B, K)`` applied to the unit terms (used by unbiased sampling estimators).
    all_pairs : bool
        Return every pairing ``(N_a, N_b, P_a, P_b)`` instead of aligned pairs ``(B, P_a, P_b)``.
    check : bool
        Check that the embeddings fit the similarity (``False`` for embeddings that were checked already).

    Returns
    -------
    torch.Tensor
        Pairwise relevance.
    """
    similarity = get_similarity(similarity)
    emb_a, emb_b = factors_a.embedding, factors_b.embedding
    rel_a, rel_b = factors_a.relevance, factors_b.relevance
    if all_pairs:
        n_a, n_b = len(factors_a), len(factors_b)
        ia = torch.arange(n_a, device=emb_a.device).repeat_interleave(n_b)
        ib = torch.arange(n_b, device=emb_b.device).repeat(n_a)
        out = pairwise_relevance(factors_a[ia], factors_b[ib], similarity, unit_weights=unit_weights, check=check)
        return out.reshape(n_a, n_b, *out.shape[1:])
    if len(factors_a) != len(factors_b):
        raise ValueError(f'pairwise_relevance: {len(factors_a)} vs {len(factors_b)} inputs; use all_pairs=True '
                         'for every pairing')
    if check:
        similarity.check(emb_a, emb_b)
    matrix = similarity.matrix(emb_a, emb_b)
    if unit_weights is not None:
        unit_weights = unit_weights.to(rel_a)
        rel_a = rel_a * (unit_weights[..., None] if unit_weights.dim() == 2 else unit_weights[None, :, None])
    if matrix is None:
        ua, ub = factors_a.unit_index(), factors_b.unit_index()
        if ua.shape != ub.shape or not torch.equal(ua.to(ub.device), ub):
            raise ValueError('pairwise_relevance: a diagonal similarity needs the same explained units on both sides')
        pair = torch.einsum('bmp,bmq->bpq', rel_a, rel_b)
    else:
        sub = matrix[factors_a.unit_index()][:, factors_b.unit_index()].to(rel_a)
        pair = torch.einsum('bmp,mn,bnq->bpq', rel_a, sub, rel_b)
    scale = similarity.scale(emb_a, emb_b).to(pair)
    return scale[:, None, None] * pair


class ConservationWarning(RuntimeWarning):
    """The explanation's total is far larger than the explained similarity (unstable LRP denominators)."""


#: warn when ``|sum R|`` exceeds this multiple of ``|y|``: rules may absorb relevance (sum R < y), never multiply it
AMPLIFICATION_LIMIT = 10.0


def amplification(total: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    r"""Amplification ratio :math:`|\sum R| / |y|` per pair (``y = 0`` guarded by the dtype's smallest normal)."""
    tiny = torch.finfo(total.dtype).tiny if total.is_floating_point() else 1e-38
    return total.abs() / (similarity.abs().to(total) + tiny)


def warn_if_amplified(total: torch.Tensor, similarity: torch.Tensor, stacklevel: int = 3) -> None:
    """Warn (:class:`ConservationWarning`) when ``|total| > AMPLIFICATION_LIMIT * |similarity|`` for any pair.

    Parameters
    ----------
    total : torch.Tensor
        Total relevance ``sum R`` per pair, ``(B,)``.
    similarity : torch.Tensor
        The explained similarity ``y`` per pair, ``(B,)``.
    stacklevel : int
        Passed to :func:`warnings.warn`.
    """
    ratio = amplification(total, similarity)
    if bool((ratio > AMPLIFICATION_LIMIT).any()):
        warnings.warn(
            f'BiLRP relevance sums to up to {float(ratio.max()):.3g} times the similarity: the LRP rules amplify '
            "relevance. Typical cause: zero_params=['bias'] with gamma/LRP-0 rules on a network with large (e.g. "
            'merged BatchNorm) biases, whose denominators then vanish; keep the biases or use z+ rules '
            '(EpsilonPlus). A layer whose kept bias carries much of the embedding (e.g. an alignment head) or a '
            'similarity near 0 also gives large ratios: y - sum R is then the bias terms, not amplification',
            ConservationWarning, stacklevel=stacklevel,
        )
