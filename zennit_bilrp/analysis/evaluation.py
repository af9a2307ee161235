r"""Faithfulness and cost measures for pairwise explanations of similarity models.

- :func:`pointing_game`: on pairs with known matching regions (:mod:`zennit_bilrp.models.synthetic`), the share of the
  top-:math:`k` patch pairs whose patch in :math:`x` lies in the object of :math:`x` *and* whose patch in
  :math:`x'` lies in the object of :math:`x'` (higher is better; :func:`pointing_chance` is the random level).
- :func:`pairwise_patch_flipping`: remove the most relevant patch *pairs* first (both patches of a pair are
  replaced by a blurred or mean version of the image) and record the similarity after each step. The area under
  the curve of :math:`y_t / y_0` (mean over steps :math:`t = 0..T`) is lower for more faithful explanations;
  compare with a random order (:func:`random_pair_order`).
- :func:`marginal_patch_flipping`: the first-order version, per input: remove the patches of :math:`x` by
  decreasing marginal relevance :math:`\sum_{i'} R_{ii'}` while :math:`x'` stays intact.
- :func:`measure`: run time and peak memory of one call (CUDA: ``torch.cuda.max_memory_allocated``; CPU: peak
  resident-set growth sampled from ``/proc/self/statm``, an approximation).
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Callable, Optional

import torch

from ..core.pooling import PatchGrid
from .filters import gaussian_blur

__all__ = ['FILLS', 'patch_masks', 'pointing_game', 'pointing_chance', 'fill_image', 'pair_order',
           'random_pair_order', 'pairwise_patch_flipping', 'marginal_patch_flipping', 'flipping_auc', 'measure']

#: ways of removing a patch
FILLS = ('blur', 'mean')


def patch_masks(mask: torch.Tensor, grid: PatchGrid, min_overlap: float = 0.5) -> torch.Tensor:
    """Which patches belong to a region: ``(N, P)`` bool, a patch counts if at least ``min_overlap`` of its pixels
    lie in ``mask`` ``(N, H, W)``."""
    if mask.dim() != 3 or tuple(mask.shape[1:]) != tuple(grid.input_shape[-2:]):
        raise ValueError(f'mask of shape {tuple(mask.shape)} does not fit inputs {grid.input_shape}; '
                         'expected (N, H, W)')
    (gh, gw), (ph, pw) = grid.grid[-2:], grid.patch[-2:]
    share = mask.to(torch.float64).reshape(mask.shape[0], gh, ph, gw, pw).mean(dim=(2, 4))
    return (share >= min_overlap).reshape(mask.shape[0], -1)


def pointing_game(relevance: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor, grid_a: PatchGrid,
                  grid_b: PatchGrid, k: int = 10, min_overlap: float = 0.5) -> torch.Tensor:
    """Share of the top-``k`` patch pairs (by value) joining the two matching regions, per pair ``(B,)``.

    Parameters
    ----------
    relevance : torch.Tensor
        Pooled pairwise relevance ``(B, P_a, P_b)``.
    mask_a, mask_b : torch.Tensor
        Ground-truth regions ``(B, H, W)`` (bool).
    grid_a, grid_b : PatchGrid
        The patch grids of the relevance.
    k : int
        Number of top pairs.
    min_overlap : float
        Share of a patch's pixels that must lie in the region (see :func:`patch_masks`).
    """
    in_a = patch_masks(mask_a, grid_a, min_overlap).to(relevance.device)
    in_b = patch_masks(mask_b, grid_b, min_overlap).to(relevance.device)
    flat = relevance.reshape(relevance.shape[0], -1)
    if not 0 < k <= flat.shape[1]:
        raise ValueError(f'k must be in 1..{flat.shape[1]}, got {k}')
    index = flat.topk(k, dim=1).indices
    n_b = relevance.shape[2]
    hits = in_a.gather(1, index // n_b) & in_b.gather(1, index % n_b)
    return hits.double().mean(dim=1)


def pointing_chance(mask_a: torch.Tensor, mask_b: torch.Tensor, grid_a: PatchGrid, grid_b: PatchGrid,
                    min_overlap: float = 0.5) -> torch.Tensor:
    """Expected pointing-game score of a random pair, ``(B,)``."""
    return (patch_masks(mask_a, grid_a, min_overlap).double().mean(dim=1)
            * patch_masks(mask_b, grid_b, min_overlap).double().mean(dim=1))


def fill_image(x: torch.Tensor, fill: str = 'blur', sigma: float = 4.0) -> torch.Tensor:
    r"""What removed patches are replaced with, like ``x``: a Gaussian blur of the image or its per-channel mean.

    The blur is :func:`~zennit_bilrp.analysis.filters.gaussian_blur` with reflected borders and
    :math:`2\,\mathrm{round}(3\sigma) + 1` taps, at most the largest odd size below the image's smaller side.
    """
    if fill == 'mean':
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if fill == 'blur':
        size = min(int(2 * round(3 * sigma) + 1), 2 * (min(x.shape[-2:]) // 2) - 1)
        return gaussian_blur(x, sigma, size, padding='reflect')
    raise ValueError(f'fill must be one of {FILLS}, got {fill!r}')


def pair_order(relevance: torch.Tensor) -> torch.Tensor:
    """Flat pair indices by decreasing relevance, ``(B, P_a * P_b)``."""
    return relevance.reshape(relevance.shape[0], -1).argsort(dim=1, descending=True)


def random_pair_order(relevance: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random order of all pairs, ``(B, P_a * P_b)``."""
    gen = torch.Generator().manual_seed(seed)
    b, n = relevance.shape[0], relevance.shape[1] * relevance.shape[2]
    return torch.stack([torch.randperm(n, generator=gen) for _ in range(b)]).to(relevance.device)


def _patch_pixels(patches: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """Boolean pixel masks ``(..., H, W)`` from boolean patch masks ``(..., P)``."""
    (gh, gw), (ph, pw) = grid.grid[-2:], grid.patch[-2:]
    lead = patches.shape[:-1]
    grid_mask = patches.reshape(*lead, gh, 1, gw, 1).expand(*lead, gh, ph, gw, pw)
    return grid_mask.reshape(*lead, gh * ph, gw * pw)


def flipping_auc(curve: torch.Tensor, reduce: bool = False) -> torch.Tensor:
    """Area under flipping curves ``(B, T + 1)`` relative to the start.

    Per pair ``mean_t y_t / y_0`` (``(B,)``); with ``reduce=True`` the ratio of the means over pairs,
    ``sum_b mean_t y_bt / sum_b y_b0`` (a scalar, robust to pairs whose similarity starts near zero).
    """
    if reduce:
        return curve.mean(dim=1).sum() / curve[:, 0].sum()
    start = curve[:, :1]
    safe = torch.where(start.abs() > 1e-12, start, torch.ones_like(start))
    return (curve / safe).mean(dim=1)


@torch.no_grad()
def pairwise_patch_flipping(forward: Callable, x_a: torch.Tensor, x_b: torch.Tensor, order: torch.Tensor,
                            grid_a: PatchGrid, grid_b: PatchGrid, steps: int = 16, fill: str = 'blur',
                            batch_size: int = 64) -> torch.Tensor:
    """Similarity after removing the first ``t`` patch pairs of ``order``, ``t = 0..steps``: ``(B, steps + 1)``.

    Removing pair ``(p, q)`` replaces patch ``p`` of ``x_a`` and patch ``q`` of ``x_b`` with the fill; pairs that
    share patches remove them once.

    Parameters
    ----------
    forward : callable
        ``forward(x_a, x_b) -> (B,)`` similarity.
    order : torch.Tensor
        Flat pair indices ``(B, >= steps)`` (:func:`pair_order` or :func:`random_pair_order`).
    """
    if order.shape[1] < steps:
        raise ValueError(f'order has {order.shape[1]} pairs, fewer than steps={steps}')
    fill_a, fill_b = fill_image(x_a, fill), fill_image(x_b, fill)
    n_b = grid_b.num_patches
    b = x_a.shape[0]
    removed_a = torch.zeros(b, steps + 1, grid_a.num_patches, dtype=torch.bool, device=x_a.device)
    removed_b = torch.zeros(b, steps + 1, n_b, dtype=torch.bool, device=x_a.device)
    rows = torch.arange(b, device=x_a.device)
    for t in range(1, steps + 1):
        removed_a[:, t] = removed_a[:, t - 1]
        removed_b[:, t] = removed_b[:, t - 1]
        removed_a[rows, t, order[:, t - 1] // n_b] = True
        removed_b[rows, t, order[:, t - 1] % n_b] = True
    pix_a = _patch_pixels(removed_a, grid_a)[:, :, None]  # (B, T+1, 1, H, W)
    pix_b = _patch_pixels(removed_b, grid_b)[:, :, None]
    flipped_a = torch.where(pix_a, fill_a[:, None], x_a[:, None]).flatten(0, 1)
    flipped_b = torch.where(pix_b, fill_b[:, None], x_b[:, None]).flatten(0, 1)
    values = [forward(flipped_a[s:s + batch_size], flipped_b[s:s + batch_size])
              for s in range(0, flipped_a.shape[0], batch_size)]
    return torch.cat(values).reshape(b, steps + 1)


@torch.no_grad()
def marginal_patch_flipping(forward: Callable, x: torch.Tensor, partner: torch.Tensor, scores: torch.Tensor,
                            grid: PatchGrid, steps: int = 16, fill: str = 'blur', batch_size: int = 64) -> torch.Tensor:
    """Similarity after removing the ``t`` highest-scoring patches of ``x`` (partner intact): ``(B, steps + 1)``.

    Parameters
    ----------
    scores : torch.Tensor
        Patch scores ``(B, P)`` (e.g. ``relevance.sum(dim=2)`` for ``x = x_a``), or a ready order of patch
        indices (``torch.long``).
    """
    order = scores if scores.dtype == torch.long else scores.argsort(dim=1, descending=True)
    if order.shape[1] < steps:
        raise ValueError(f'only {order.shape[1]} patches, fewer than steps={steps}')
    fill_x = fill_image(x, fill)
    b, rows = x.shape[0], torch.arange(x.shape[0], device=x.device)
    removed = torch.zeros(b, steps + 1, grid.num_patches, dtype=torch.bool, device=x.device)
    for t in range(1, steps + 1):
        removed[:, t] = removed[:, t - 1]
        removed[rows, t, order[:, t - 1]] = True
    flipped = torch.where(_patch_pixels(removed, grid)[:, :, None], fill_x[:, None], x[:, None]).flatten(0, 1)
    partners = partner.repeat_interleave(steps + 1, dim=0)
    values = [forward(flipped[s:s + batch_size], partners[s:s + batch_size])
              for s in range(0, flipped.shape[0], batch_size)]
    return torch.cat(values).reshape(b, steps + 1)


def _rss_bytes() -> int:
    try:
        with open('/proc/self/statm') as handle:
            return int(handle.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError):
        return 0


def _release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``) so that RSS growth reflects new allocations."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(function: Callable, device: Optional[torch.device] = None, interval: float = 0.002) -> tuple:
    """Run ``function()`` once; return ``(result, seconds, peak_bytes)``.

    Peak memory: on CUDA the peak allocated by PyTorch during the call; on CPU the peak growth of the resident set
    size over its value before the call (freed heap memory is returned to the OS first), sampled every
    ``interval`` seconds: an approximation that can under-count short-lived allocations.
    """
    cuda = device is not None and torch.device(device).type == 'cuda'
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        result = function()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return result, seconds, torch.cuda.max_memory_allocated(device) - base
    _release_free_memory()
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        result = function()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        thread.join()
    peak[0] = max(peak[0], _rss_bytes())
    return result, seconds, max(peak[0] - base, 0)
