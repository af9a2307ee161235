r"""The Hessian x product and integrated Jacobians from pooled patch Jacobians: ``P`` forward-mode passes, not ``h``.

Both baselines of :mod:`zennit_bilrp.interop.baselines` pool a weighted Jacobian,
:math:`F_{mp} = \sum_{i \in p} w_i\,\partial f_m / \partial x_i`, after computing all :math:`h` rows of the
Jacobian by reverse mode. The pooled matrix is also :math:`F_{:,p} = J(x)\,(w \odot \mathbb{1}_p)`: one
Jacobian-vector product per patch (forward mode, :func:`torch.func.jvp`). With :math:`P < h` patches (e.g. 24 or 96
patches against the 1280 units of EfficientNet-Lite0) this is the same number computed with fewer passes:

- :func:`hessian_product`: :math:`R = F_a^\top S\,F_b` with :math:`w = x` and :math:`S = \partial^2 s / \partial
  e\,\partial e'` the mixed Hessian of the similarity (autograd), equal to
  :func:`zennit_bilrp.interop.baselines.hessian_product`.
- :func:`integrated_jacobians`: :math:`A = \bar F_a^\top \bar F_b` with :math:`\bar F = \sum_s \omega_s\,
  J_f(r + \alpha_s \Delta x)\,(\Delta x \odot \mathbb{1}_p)` on Gauss-Legendre nodes :math:`\alpha_s` and weights
  :math:`\omega_s` of :math:`[0, 1]`, :math:`f` the (for the cosine: normalized) embedding, equal to
  :func:`zennit_bilrp.interop.baselines.integrated_jacobians` with ``method='gausslegendre'``.

The equality with the reverse-mode versions is tested (float64).
"""
from __future__ import annotations

from typing import Callable, Union

import numpy as np
import torch

from ..core.checks import reference_input
from ..core.pooling import PatchGrid, Pooling
from ..core.similarity import CosineSimilarity, DotSimilarity, Similarity, get_similarity

__all__ = ['patch_jacobian', 'similarity_hessian', 'hessian_product', 'integrated_jacobians', 'gauss_legendre']

Embed = Callable[[torch.Tensor], torch.Tensor]


def _patch_masks(grid: PatchGrid, shape: tuple, dtype, device) -> torch.Tensor:
    """``(P, 1, H, W)`` indicator images of the patches of a 2-D grid (channels summed)."""
    if len(grid.grid) != 2 or not grid.channels_summed:
        raise ValueError(f'patch Jacobians need a 2-D patch grid with channels summed, got {grid}')
    (gh, gw), (ph, pw) = grid.grid, grid.patch
    eye = torch.eye(gh * gw, dtype=dtype, device=device).reshape(gh * gw, gh, 1, gw, 1)
    return eye.expand(gh * gw, gh, ph, gw, pw).reshape(gh * gw, 1, gh * ph, gw * pw)


def patch_jacobian(embed: Embed, x: torch.Tensor, weight: torch.Tensor, grid: PatchGrid,
                   chunk_size: int = 16) -> torch.Tensor:
    r"""Pooled weighted Jacobians :math:`F_{n,:,p} = J(x_n)\,(w_n \odot \mathbb{1}_p)`, ``(N, h, P)``.

    Parameters
    ----------
    embed : callable
        ``(N, C, H, W) -> (N, h)``; must support forward-mode AD (:func:`torch.func.jvp`).
    x, weight : torch.Tensor
        Inputs and weights ``(N, C, H, W)``.
    grid : PatchGrid
        2-D patch grid of the inputs (channels summed).
    chunk_size : int
        Tangents per forward-mode pass (the input is replicated this many times).
    """
    if x.dim() != 4 or weight.shape != x.shape:
        raise ValueError(f'x and weight must both be (N, C, H, W), got {tuple(x.shape)} and {tuple(weight.shape)}')
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be positive, got {chunk_size}')
    masks = _patch_masks(grid, x.shape[1:], x.dtype, x.device)
    out = []
    with torch.no_grad():
        for n in range(x.shape[0]):
            columns = []
            for start in range(0, masks.shape[0], chunk_size):
                tangents = weight[n:n + 1] * masks[start:start + chunk_size]
                primals = x[n:n + 1].detach().repeat(tangents.shape[0], 1, 1, 1)
                _, jvp = torch.func.jvp(embed, (primals,), (tangents,))
                columns.append(jvp)
            out.append(torch.cat(columns).T)  # (h, P)
    return torch.stack(out)


def similarity_hessian(similarity: Union[str, Similarity], emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    r"""Mixed second derivatives :math:`\partial^2 s / \partial e_m \partial e'_n` per pair, ``(B, h_a, h_b)``."""
    similarity = get_similarity(similarity)
    with torch.enable_grad():
        ea = emb_a.detach().requires_grad_(True)
        eb = emb_b.detach().requires_grad_(True)
        grad_a, = torch.autograd.grad(similarity(ea, eb).sum(), ea, create_graph=True)
        rows = []
        for m in range(ea.shape[1]):
            row, = torch.autograd.grad(grad_a[:, m].sum(), eb, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(eb) if row is None else row)
    return torch.stack(rows, dim=1).detach()


def _grids(x_a: torch.Tensor, x_b: torch.Tensor, pooling) -> tuple:
    pool = Pooling.ensure(pooling)
    return pool.resolve(x_a.shape[1:]), pool.resolve(x_b.shape[1:])


def hessian_product(embed: Embed, x_a: torch.Tensor, x_b: torch.Tensor,
                    similarity: Union[str, Similarity] = 'dot', pooling: Union[int, Pooling] = 8,
                    chunk_size: int = 16) -> torch.Tensor:
    r"""Hessian x product :math:`R_{pq} = \sum_{i \in p, i' \in q} x_i x'_{i'} [J(x)^\top S J(x')]_{ii'}`,
    ``(B, P_a, P_b)``, from :math:`P_a + P_b` forward-mode passes per pair."""
    if x_a.shape[0] != x_b.shape[0]:
        raise ValueError(f'batch sizes differ: {x_a.shape[0]} vs {x_b.shape[0]} (aligned pairs needed)')
    grid_a, grid_b = _grids(x_a, x_b, pooling)
    with torch.no_grad():
        emb_a, emb_b = embed(x_a), embed(x_b)
    fa = patch_jacobian(embed, x_a, x_a, grid_a, chunk_size)
    fb = patch_jacobian(embed, x_b, x_b, grid_b, chunk_size)
    hess = similarity_hessian(similarity, emb_a, emb_b).to(fa)
    return torch.einsum('bmp,bmn,bnq->bpq', fa, hess, fb)


def gauss_legendre(n_steps: int) -> tuple:
    """Nodes and weights of the ``n_steps``-point Gauss-Legendre rule on :math:`[0, 1]` (lists of floats)."""
    if n_steps < 1:
        raise ValueError(f'n_steps must be positive, got {n_steps}')
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return list(0.5 * (nodes + 1)), list(0.5 * weights)


def integrated_jacobians(embed: Embed, x_a: torch.Tensor, x_b: torch.Tensor,
                         similarity: Union[str, Similarity] = 'dot', pooling: Union[int, Pooling] = 8,
                         reference: Union[str, float, torch.Tensor] = 'zeros', n_steps: int = 16,
                         chunk_size: int = 16) -> torch.Tensor:
    r"""Integrated Jacobians :math:`A = \bar F_a^\top \bar F_b`, ``(B, P_a, P_b)``, from ``n_steps`` x
    :math:`(P_a + P_b)` forward-mode passes per pair.

    Parameters
    ----------
    similarity : {'dot', 'cosine'} or Similarity
        Dot product (:math:`f = \phi`) or cosine (:math:`f = \phi / \|\phi\|`).
    reference : 'zeros', 'mean', float or tensor
        Path start :math:`r` of both inputs (``'mean'``: each image's per-channel mean).
    n_steps : int
        Gauss-Legendre points on the path.
    """
    similarity = get_similarity(similarity)
    if not isinstance(similarity, (DotSimilarity, CosineSimilarity)):
        raise ValueError(f'integrated Jacobians here need the dot or cosine similarity, got {similarity!r}')
    if x_a.shape[0] != x_b.shape[0]:
        raise ValueError(f'batch sizes differ: {x_a.shape[0]} vs {x_b.shape[0]} (aligned pairs needed)')
    if isinstance(similarity, CosineSimilarity):
        def f(x):
            return torch.nn.functional.normalize(embed(x), dim=1)
    else:
        f = embed
    grid_a, grid_b = _grids(x_a, x_b, pooling)
    alphas, weights = gauss_legendre(n_steps)
    factors = []
    for x, grid in ((x_a, grid_a), (x_b, grid_b)):
        ref = reference_input(x, reference)
        delta = x - ref
        total = None
        for alpha, weight in zip(alphas, weights):
            term = weight * patch_jacobian(f, ref + alpha * delta, delta, grid, chunk_size)
            total = term if total is None else total + term
        factors.append(total)
    return torch.einsum('bmp,bmq->bpq', factors[0], factors[1])
