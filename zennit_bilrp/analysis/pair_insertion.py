r"""Pairwise insertion (and deletion) curves for pooled pairwise relevance, at equal revealed area.

Blurring the two patches of a *corresponding* pair keeps two images alike, so pairwise deletion
(:func:`~zennit_bilrp.analysis.evaluation.pairwise_patch_flipping`) ranks a perfect correspondence below a random
order. Insertion asks the question the other way round: start from two uninformative images (by default each
image's mean colour; or a strong blur) and *reveal* the patches of the most relevant pairs, patch ``p`` in
:math:`x` and patch ``q`` in :math:`x'`. When the revealed pairs show the same content the two partial images stay
alike to the model; when they show unrelated content the similarity falls. The score is the mean similarity along
the curve (:attr:`InsertionCurve.auc`, higher is better).

Pairs are taken by decreasing relevance; a pair reveals those of its two patches that are still hidden (0, 1 or 2
new patches). The x-axis is the number :math:`b` of revealed patches in both images together, ``0..budget`` (so a
method that pairs one patch of :math:`x` with many partners is compared at equal area, not at equal pair count),
and the curve is the similarity :math:`y_b` after the last pair that keeps the revealed count at or below
:math:`b`. ``mode='deletion'`` runs the same schedule hiding patches of the intact images (lower is better): the
variant that fails its own sanity check on real photos, kept to show it.

Sanity check (``benchmarks/correspondence.py``): the *oracle* order (true correspondences first) must score above a
random order on the pretrained EfficientNet-Lite0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..core.pooling import PatchGrid
from .evaluation import fill_image

__all__ = ['MODES', 'InsertionCurve', 'reveal_schedule', 'pair_insertion']

#: the two directions: reveal patches of baseline images, or hide patches of the intact images
MODES = ('insertion', 'deletion')


@dataclass
class InsertionCurve:
    """One pair's curve.

    Attributes
    ----------
    budgets : torch.Tensor
        Revealed (insertion) or hidden (deletion) patches of both images together at each point, ``(T,)``.
    similarity : torch.Tensor
        The similarity at each point, ``(T,)`` (float64).
    start : float
        Similarity of the two baseline images (insertion) or the intact images (deletion): the curve at ``b = 0``.
    full : float
        Similarity of the intact images (insertion) or of the two baseline images (deletion).
    mode : str
        ``'insertion'`` or ``'deletion'``.
    """
    budgets: torch.Tensor
    similarity: torch.Tensor
    start: float
    full: float
    mode: str

    @property
    def auc(self) -> float:
        """Mean similarity over the budget points (the area under the curve per point): higher is better for
        insertion, lower for deletion."""
        return float(self.similarity.mean())


def reveal_schedule(relevance: torch.Tensor, budget: int, points: Optional[int] = None) -> tuple:
    r"""Which patches are revealed at each budget point when pairs come by decreasing relevance.

    Parameters
    ----------
    relevance : torch.Tensor
        Pooled pairwise relevance ``(P_a, P_b)``; ties keep the flat (row-major) order.
    budget : int
        Largest number of revealed patches (both images together).
    points : int, optional
        Evaluate at ``points + 1`` budgets evenly spaced in ``0..budget`` (rounded; default every budget).

    Returns
    -------
    tuple
        ``(budgets (T,), mask_a (T, P_a), mask_b (T, P_b))``, bool masks of revealed patches.
    """
    if relevance.dim() != 2:
        raise ValueError(f'relevance must be (P_a, P_b), got shape {tuple(relevance.shape)}')
    n_a, n_b = relevance.shape
    if not 0 < budget <= n_a + n_b:
        raise ValueError(f'budget must be in 1..{n_a + n_b} (all patches of both images), got {budget}')
    order = torch.sort(relevance.detach().cpu().double().flatten(), descending=True, stable=True).indices
    mask_a, mask_b = torch.zeros(n_a, dtype=torch.bool), torch.zeros(n_b, dtype=torch.bool)
    counts, states_a, states_b = [0], [mask_a.clone()], [mask_b.clone()]
    count = 0
    for flat in order.tolist():
        p, q = divmod(flat, n_b)
        new = int(not mask_a[p]) + int(not mask_b[q])
        if new == 0:
            continue
        if count + new > budget:
            break
        mask_a[p] = mask_b[q] = True
        count += new
        counts.append(count)
        states_a.append(mask_a.clone())
        states_b.append(mask_b.clone())
        if count == budget:
            break
    if points is None:
        budgets = torch.arange(budget + 1)
    else:
        if points < 1:
            raise ValueError(f'points must be positive, got {points}')
        budgets = torch.unique(torch.linspace(0, budget, points + 1).round().long())
    counts = torch.tensor(counts)
    state = torch.searchsorted(counts, budgets, right=True) - 1
    return budgets, torch.stack(states_a)[state], torch.stack(states_b)[state]


def _pixels(mask: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """Pixel masks ``(T, 1, H, W)`` from patch masks ``(T, P)``."""
    (gh, gw), (ph, pw) = grid.grid[-2:], grid.patch[-2:]
    t = mask.shape[0]
    return mask.reshape(t, gh, 1, gw, 1).expand(t, gh, ph, gw, pw).reshape(t, 1, gh * ph, gw * pw)


@torch.no_grad()
def pair_insertion(forward: Callable, x_a: torch.Tensor, x_b: torch.Tensor, relevance: torch.Tensor,
                   grid_a: PatchGrid, grid_b: PatchGrid, budget: Optional[int] = None, points: Optional[int] = 12,
                   mode: str = 'insertion', fill: str = 'mean', sigma: float = 8.0,
                   batch_size: int = 16) -> InsertionCurve:
    r"""The insertion (or deletion) curve of one pair under the order of ``relevance``.

    Parameters
    ----------
    forward : callable
        ``forward(x_a, x_b) -> (N,)`` similarity of row pairs (e.g.
        :func:`~zennit_bilrp.interop.baselines.pair_similarity`).
    x_a, x_b : torch.Tensor
        One pair, ``(1, C, H, W)`` each.
    relevance : torch.Tensor
        Pooled pairwise relevance ``(P_a, P_b)`` (or ``(1, P_a, P_b)``) on ``grid_a`` x ``grid_b``.
    budget : int, optional
        Largest number of revealed patches, both images together (default: a quarter of all patches).
    points : int, optional
        Number of budget steps evaluated (``None``: every budget).
    mode : {'insertion', 'deletion'}
        Reveal patches of the baseline images, or hide patches of the intact images.
    fill, sigma : str, float
        The baseline image: ``'mean'`` (each image's per-channel mean colour; default) or ``'blur'`` (Gaussian,
        standard deviation ``sigma`` pixels), see :func:`~zennit_bilrp.analysis.evaluation.fill_image`.
    batch_size : int
        Pairs per forward call.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    if x_a.shape[0] != 1 or x_b.shape[0] != 1:
        raise ValueError(f'one pair at a time: got batches of {x_a.shape[0]} and {x_b.shape[0]}')
    if relevance.dim() == 3 and relevance.shape[0] == 1:
        relevance = relevance[0]
    shape = (grid_a.num_patches, grid_b.num_patches)
    if tuple(relevance.shape) != shape:
        raise ValueError(f'relevance of shape {tuple(relevance.shape)} does not fit the patch grids {shape}')
    if budget is None:
        budget = max(1, (shape[0] + shape[1]) // 4)
    budgets, mask_a, mask_b = reveal_schedule(relevance, budget, points)
    base_a, base_b = fill_image(x_a, fill, sigma), fill_image(x_b, fill, sigma)
    if mode == 'insertion':
        images_a = torch.where(_pixels(mask_a, grid_a).to(x_a.device), x_a, base_a)
        images_b = torch.where(_pixels(mask_b, grid_b).to(x_b.device), x_b, base_b)
        other = forward(x_a, x_b)
    else:
        images_a = torch.where(_pixels(mask_a, grid_a).to(x_a.device), base_a, x_a)
        images_b = torch.where(_pixels(mask_b, grid_b).to(x_b.device), base_b, x_b)
        other = forward(base_a, base_b)
    values = torch.cat([forward(images_a[s:s + batch_size], images_b[s:s + batch_size]).reshape(-1)
                        for s in range(0, images_a.shape[0], batch_size)]).double().cpu()
    return InsertionCurve(budgets, values, float(values[0]), float(other.reshape(-1)[0]), mode)
