r"""How much pairwise information a pooled pairwise relevance carries beyond its marginals.

BiLRP's relevance of a pair is :math:`R = c\,F(x)^\top G\,F(x')` with factors :math:`F` (``h x P``: row :math:`m`
is the pooled explanation of embedding unit :math:`m`). If every unit explains nearly the same map, :math:`F` is
close to rank one and :math:`R` close to the outer product of two maps: the pairing adds nothing that the two
first-order marginals do not already say.

- :func:`top_singular_share`: :math:`\sigma_1^2 / \sum_i \sigma_i^2` of :math:`F` (1: rank one; :math:`1/\min(h,
  P)` at most spread).
- :func:`marginal_outer_product`: the rank-one matrix with :math:`R`'s own pooled marginals and total,
  :math:`R^{(1)} = m\,m'^\top / \sum R` with :math:`m = R\mathbf{1}`, :math:`m' = R^\top\mathbf{1}`. Scoring
  :math:`R` and :math:`R^{(1)}` with the same measure (e.g. correspondence pointing) tells what the pairwise
  structure adds.
"""
from __future__ import annotations

from typing import Union

import torch

from ..core.results import Factors

__all__ = ['top_singular_share', 'marginal_outer_product']


def top_singular_share(factors: Union[Factors, torch.Tensor]) -> torch.Tensor:
    r"""Share of the factors' energy (squared Frobenius norm) in their top singular direction, per input.

    Parameters
    ----------
    factors : Factors or torch.Tensor
        :class:`~zennit_bilrp.core.results.Factors` (its ``relevance``, ``(N, h, P)``) or a tensor ``(N, h, P)`` or
        ``(h, P)``.

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64 shares in :math:`[1/\min(h, P), 1]` (NaN for an all-zero factor matrix).
    """
    matrix = factors.relevance if isinstance(factors, Factors) else torch.as_tensor(factors)
    if matrix.dim() == 2:
        matrix = matrix[None]
    if matrix.dim() != 3:
        raise ValueError(f'factors must be (N, h, P) or (h, P), got shape {tuple(matrix.shape)}')
    values = torch.linalg.svdvals(matrix.detach().double()) ** 2
    total = values.sum(dim=-1)
    return torch.where(total > 0, values[..., 0] / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.full_like(total, float('nan')))


def marginal_outer_product(relevance: torch.Tensor) -> torch.Tensor:
    r"""The rank-one matrix :math:`m\,m'^\top / \sum R` with the same pooled marginals and total as ``relevance``.

    Parameters
    ----------
    relevance : torch.Tensor
        ``(..., P_a, P_b)``.

    Raises
    ------
    ValueError
        If a total :math:`\sum R` is zero (the rank-one matrix with these marginals is undefined).
    """
    if relevance.dim() < 2:
        raise ValueError(f'relevance must be (..., P_a, P_b), got shape {tuple(relevance.shape)}')
    total = relevance.sum(dim=(-2, -1), keepdim=True)
    if bool((total == 0).any()):
        raise ValueError('relevance sums to zero: no rank-one matrix has its marginals and total')
    return relevance.sum(dim=-1, keepdim=True) * relevance.sum(dim=-2, keepdim=True) / total
