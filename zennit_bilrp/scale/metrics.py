r"""Error metrics between an estimated and a reference (exact) pairwise relevance.

All metrics take an estimate :math:`F` and a reference :math:`A` of the same shape. Batched relevance
``(B, P_a, P_b)`` is compared per pair and averaged over the batch (``per_pair=True`` returns the ``(B,)`` values):

- relative Frobenius error :math:`\|F - A\|_F / \|A\|_F`,
- mean squared error :math:`\frac1n \sum (F - A)^2`,
- symmetric mean absolute percentage error
  :math:`\mathrm{SMAPE} = \frac{100}{n} \sum \frac{|F - A|}{(|A| + |F|)/2}` with the term :math:`0/0` defined as 0,
- top-k rank correlation: Spearman correlation of :math:`F` and :math:`A` on the ``k`` entries largest in
  :math:`A`, and the top-k overlap :math:`|\mathrm{top}_k(F) \cap \mathrm{top}_k(A)| / k`.
"""
from __future__ import annotations

from typing import Union

import torch

__all__ = ['relative_frobenius', 'mse', 'smape', 'topk_rank_correlation', 'topk_overlap', 'compare']

Number = Union[float, torch.Tensor]


def _pairs(estimate: torch.Tensor, reference: torch.Tensor, name: str):
    estimate, reference = torch.as_tensor(estimate), torch.as_tensor(reference)
    if estimate.shape != reference.shape:
        raise ValueError(f'{name}: estimate has shape {tuple(estimate.shape)} but the reference has '
                         f'{tuple(reference.shape)}')
    if estimate.numel() == 0:
        raise ValueError(f'{name}: empty inputs')
    dtype = torch.promote_types(torch.promote_types(estimate.dtype, reference.dtype), torch.float32)
    estimate, reference = estimate.to(dtype), reference.to(dtype)
    if estimate.dim() <= 2:
        return estimate.reshape(1, -1), reference.reshape(1, -1)
    return estimate.reshape(estimate.shape[0], -1), reference.reshape(reference.shape[0], -1)


def _reduce(values: torch.Tensor, per_pair: bool) -> Number:
    return values if per_pair else float(values.mean())


def relative_frobenius(estimate: torch.Tensor, reference: torch.Tensor, per_pair: bool = False) -> Number:
    r"""Relative Frobenius error :math:`\|F - A\|_F / \|A\|_F` (``inf`` where :math:`A = 0` and :math:`F \neq A`).

    Inputs of up to two axes are one pair; ``(B, ...)`` inputs are compared per pair and averaged.
    """
    est, ref = _pairs(estimate, reference, 'relative_frobenius')
    num, den = (est - ref).norm(dim=1), ref.norm(dim=1)
    out = torch.where(num == 0, torch.zeros_like(num), num / den)
    return _reduce(out, per_pair)


def mse(estimate: torch.Tensor, reference: torch.Tensor, per_pair: bool = False) -> Number:
    r"""Mean squared error :math:`\frac1n\sum_i (F_i - A_i)^2`."""
    est, ref = _pairs(estimate, reference, 'mse')
    return _reduce(((est - ref) ** 2).mean(dim=1), per_pair)


def smape(estimate: torch.Tensor, reference: torch.Tensor, per_pair: bool = False) -> Number:
    r"""Symmetric mean absolute percentage error in percent (0 to 200).

    :math:`\mathrm{SMAPE} = \frac{100}{n}\sum_i \frac{|F_i - A_i|}{(|A_i| + |F_i|)/2}`, a term with
    :math:`F_i = A_i = 0` counts as 0.
    """
    est, ref = _pairs(estimate, reference, 'smape')
    num = (est - ref).abs()
    den = (ref.abs() + est.abs()) / 2
    terms = torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, torch.ones_like(den), den))
    return _reduce(100.0 * terms.mean(dim=1), per_pair)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    order = values.argsort(dim=-1)
    ranks = torch.empty_like(values)
    ranks.scatter_(-1, order, torch.arange(values.shape[-1], dtype=values.dtype).expand_as(values).contiguous())
    return ranks


def topk_rank_correlation(estimate: torch.Tensor, reference: torch.Tensor, k: int = 20,
                          per_pair: bool = False) -> Number:
    r"""Spearman rank correlation of estimate and reference on the ``k`` entries largest in the reference.

    Measures whether the estimate orders the most relevant patch pairs like the exact explanation. The result is
    ``nan`` for a pair whose estimate is constant on these entries (the correlation is undefined).
    """
    est, ref = _pairs(estimate, reference, 'topk_rank_correlation')
    if not 1 < k <= ref.shape[1]:
        raise ValueError(f'topk_rank_correlation: k must be in 2..{ref.shape[1]}, got {k}')
    index = ref.topk(k, dim=1).indices
    rank_e, rank_r = _ranks(est.gather(1, index)), _ranks(ref.gather(1, index))
    rank_e, rank_r = rank_e - rank_e.mean(dim=1, keepdim=True), rank_r - rank_r.mean(dim=1, keepdim=True)
    den = rank_e.norm(dim=1) * rank_r.norm(dim=1)
    rho = (rank_e * rank_r).sum(dim=1) / den
    return _reduce(rho, per_pair)


def topk_overlap(estimate: torch.Tensor, reference: torch.Tensor, k: int = 20, per_pair: bool = False) -> Number:
    r"""Share of the ``k`` largest reference entries that are also among the ``k`` largest estimate entries."""
    est, ref = _pairs(estimate, reference, 'topk_overlap')
    if not 0 < k <= ref.shape[1]:
        raise ValueError(f'topk_overlap: k must be in 1..{ref.shape[1]}, got {k}')
    top_e = torch.zeros_like(est, dtype=torch.bool).scatter_(1, est.topk(k, dim=1).indices, True)
    top_r = torch.zeros_like(ref, dtype=torch.bool).scatter_(1, ref.topk(k, dim=1).indices, True)
    return _reduce((top_e & top_r).sum(dim=1).to(est.dtype) / k, per_pair)


def compare(estimate: torch.Tensor, reference: torch.Tensor, k: int = 20) -> dict:
    """All metrics at once (batch means): ``rel_fro``, ``mse``, ``smape``, ``topk_spearman``, ``topk_overlap``."""
    n = torch.as_tensor(reference)[0].numel() if torch.as_tensor(reference).dim() > 2 else torch.as_tensor(
        reference).numel()
    k = min(k, n)
    return {
        'rel_fro': relative_frobenius(estimate, reference),
        'mse': mse(estimate, reference),
        'smape': smape(estimate, reference),
        'topk_spearman': topk_rank_correlation(estimate, reference, k) if k > 1 else float('nan'),
        'topk_overlap': topk_overlap(estimate, reference, k),
    }
