r"""Sampling embedding units with probability proportional to their contributions :math:`|c_m|`, with unbiased
(Horvitz-Thompson) weights: the draws behind mode ``'sample'`` of
:func:`~zennit_bilrp.scale.approximations.approximate`.

- :func:`inclusion_probabilities`: :math:`\pi_m = \min(1, \lambda |c_m|)` with :math:`\sum_m \pi_m = k`;
- :func:`systematic_sample`: systematic pps sampling, exactly :math:`k` distinct units for one uniform offset;
- :func:`sample_units`: either scheme (systematic, or the largest units kept exactly plus i.i.d. multinomial draws)
  with its weights.

Pure tensor functions: no model, no LRP.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ['inclusion_probabilities', 'systematic_sample', 'sample_units']


def inclusion_probabilities(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    r"""Inclusion probabilities :math:`\pi_m = \min(1, \lambda a_m)` with :math:`\sum_m \pi_m = k`, per row.

    Units whose proportional share would exceed 1 are included with certainty (kept exactly) and the rest is
    shared proportionally among the others. Rows with fewer than ``k`` non-zero magnitudes include all of them.
    """
    a = magnitudes.to(torch.float64).clamp(min=0)
    pi = torch.zeros_like(a)
    certain = torch.zeros_like(a, dtype=torch.bool)
    for _ in range(a.shape[-1] + 1):
        rest = torch.where(certain, torch.zeros_like(a), a)
        slots = (k - certain.sum(dim=-1, keepdim=True)).to(a.dtype)
        total = rest.sum(dim=-1, keepdim=True)
        share = rest * slots / torch.where(total > 0, total, torch.ones_like(total))
        pi = torch.where(certain, torch.ones_like(a), share)
        new = (pi >= 1) & ~certain
        if not bool(new.any()):
            break
        certain = certain | new
    return pi.clamp(max=1.0)


def systematic_sample(pi: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    r"""Inclusion mask of systematic sampling, ``(B, h)`` booleans.

    Unit :math:`m` is taken when a point :math:`j + u` (:math:`j` an integer, :math:`u` the row's offset) falls in
    its cumulative interval :math:`[\sum_{l<m}\pi_l, \sum_{l\le m}\pi_l)`, so it is taken with probability
    :math:`\pi_m` over a uniform offset, and exactly :math:`\sum_m \pi_m` units are taken.

    Parameters
    ----------
    pi : torch.Tensor
        Inclusion probabilities ``(B, h)`` whose rows sum to an integer (:func:`inclusion_probabilities`).
    offset : torch.Tensor
        Offsets ``(B,)`` in ``[0, 1)``.
    """
    upper = pi.cumsum(dim=-1)
    # the total is an integer (the sample size); pin it so rounding cannot drop a draw near offset 1
    upper = torch.cat([upper[..., :-1], upper[..., -1:].round()], dim=-1)
    lower = torch.cat([torch.zeros_like(upper[..., :1]), upper[..., :-1]], dim=-1)
    off = offset.to(pi)[:, None]
    return (torch.floor(upper - off) - torch.floor(lower - off)) > 0


def sample_units(contributions: torch.Tensor, k: int, scheme: str = 'systematic', keep: int = 0,
                 generator: Optional[torch.Generator] = None):
    r"""Draw units with probability proportional to :math:`|c_m|` and their unbiased (Horvitz-Thompson) weights.

    Parameters
    ----------
    contributions : torch.Tensor
        ``(B, h)`` contributions.
    k : int
        Sample size per pair: the number of distinct units for ``'systematic'`` (exactly ``k``, fewer only if fewer
        units contribute), the number of draws including the ``keep`` exact units for ``'multinomial'``.
    scheme : {'systematic', 'multinomial'}
        ``'systematic'``: inclusion probabilities :func:`inclusion_probabilities` (units with
        :math:`\pi_m = 1` kept exactly), one uniform offset per pair, weight :math:`1/\pi_m`.
        ``'multinomial'``: the ``keep`` largest units exactly (weight 1) plus ``k - keep`` i.i.d. draws from the
        others with :math:`q_m \propto |c_m|`, weight ``count / ((k - keep) q_m)``.
    keep : int
        Exactly kept top units (``'multinomial'`` only).
    generator : torch.Generator, optional
        Random source.

    Returns
    -------
    tuple of torch.Tensor
        ``(units (B, K), weights (B, K), pi (B, K))``: padded entries have weight 0; ``pi`` holds the inclusion
        probability of each unit (1 for exact ones; for ``'multinomial'`` draws it is ``(k - keep) q_m``).
        For every unit :math:`E[\text{weight}] = 1`, so the weighted sum of unit terms is unbiased.
    """
    if contributions.dim() != 2:
        raise ValueError(f'sample_units: contributions must be (B, h), got {tuple(contributions.shape)}')
    h = contributions.shape[1]
    if not isinstance(k, int) or not 0 < k <= h:
        raise ValueError(f'sample_units: k must be an int in 1..{h}, got {k!r}')
    mags = contributions.abs().to(torch.float64)
    if scheme == 'systematic':
        return _systematic_units(mags, k, generator)
    if scheme != 'multinomial':
        raise ValueError(f"sample_units: scheme must be 'systematic' or 'multinomial', got {scheme!r}")
    if not 0 <= keep < k:
        raise ValueError(f'sample_units: keep must lie in 0..{k - 1}, got {keep!r}')
    return _multinomial_units(mags, k, keep, generator)


def _systematic_units(mags: torch.Tensor, k: int, generator: Optional[torch.Generator]) -> tuple:
    """``sample_units(scheme='systematic')`` on the magnitudes ``(B, h)`` (float64)."""
    pi = inclusion_probabilities(mags, k)
    offset = torch.rand(mags.shape[0], generator=generator, dtype=torch.float64).to(mags.device)
    mask = systematic_sample(pi, offset) & (pi > 0)
    count = max(int(mask.sum(dim=-1).max()), 1)
    # selected units first (stable), padded with unselected ones at weight 0
    order = (~mask).to(torch.int8).argsort(dim=-1, stable=True)[:, :count]
    sel = mask.gather(1, order)
    pis = pi.gather(1, order)
    weights = torch.where(sel, 1.0 / torch.where(sel, pis, torch.ones_like(pis)), torch.zeros_like(pis))
    return order, weights, torch.where(sel, pis, torch.zeros_like(pis))


def _multinomial_units(mags: torch.Tensor, k: int, keep: int, generator: Optional[torch.Generator]) -> tuple:
    """``sample_units(scheme='multinomial')`` on the magnitudes ``(B, h)`` (float64)."""
    device = mags.device
    order = mags.argsort(dim=-1, descending=True, stable=True)
    top, tail = order[:, :keep], order[:, keep:]
    tail_mag = mags.gather(1, tail)
    total = tail_mag.sum(dim=-1, keepdim=True)
    q = torch.where(total > 0, tail_mag / torch.where(total > 0, total, torch.ones_like(total)),
                    torch.full_like(tail_mag, 1.0 / tail.shape[1]))
    draws = k - keep
    picked = torch.multinomial(q.cpu(), draws, replacement=True, generator=generator).to(device)
    counts = torch.zeros_like(q).scatter_add_(1, picked, torch.ones_like(picked, dtype=q.dtype))
    n_distinct = int((counts > 0).sum(dim=-1).max())
    sub = (counts > 0).to(torch.int8).argsort(dim=-1, descending=True, stable=True)[:, :n_distinct]
    units = torch.cat([top, tail.gather(1, sub)], dim=1)
    c, qq = counts.gather(1, sub), q.gather(1, sub)
    w_tail = torch.where(c > 0, c / (draws * qq), torch.zeros_like(c))
    weights = torch.cat([torch.ones_like(top, dtype=torch.float64), w_tail], dim=1)
    pis = torch.cat([torch.ones_like(top, dtype=torch.float64), torch.where(c > 0, draws * qq, torch.zeros_like(c))],
                    dim=1)
    return units, weights, pis
