r"""Second-order baselines that a Captum user could use to explain a similarity, for comparison with BiLRP.

All functions explain aligned pairs ``(x_a[i], x_b[i])`` of a similarity
:math:`y(x, x') = s(\phi(x), \phi(x'))` and return a pooled pairwise relevance ``(B, P_a, P_b)`` on the same patch
grids as :meth:`zennit_bilrp.core.engine.BiLRP.explain`:

- :func:`marginal_outer_product`: :math:`R = m(x)\,m(x')^\top` of first-order Captum attributions of :math:`y`
  (``'saliency'``: :math:`|\partial y/\partial x|`, ``'input_x_gradient'``, ``'integrated_gradients'``), each
  computed with the other input held fixed. Pairs are ranked by products of marginal scores: no interaction.
- :func:`hessian_product`: the second-order Taylor term :math:`R_{ii'} = x_i\,x'_{i'}\,\partial^2 y/\partial x_i
  \partial x'_{i'}` (Hessian x product). With :math:`y = s(\phi(x), \phi(x'))` the mixed Hessian is
  :math:`J(x)^\top S\,J(x')` with :math:`S = \partial^2 s/\partial e\,\partial e'`, computed with ``torch.autograd``
  (``h`` Jacobian rows per input). For the dot product on a bias-free ReLU network this equals BiLRP with LRP-0
  (the :math:`\gamma = 0` limit).
- :func:`integrated_jacobians`: :math:`A = \mathrm{diag}(\Delta x)\,\bar J(x)^\top G\,\bar J(x')\,\mathrm{diag}
  (\Delta x')` with :math:`\bar J(x) = \int_0^1 J(r + \alpha (x - r))\,d\alpha`, :math:`\Delta x = x - r`, for a
  bilinear form :math:`y = f(x)^\top G f(x')` (the cosine uses normalized embeddings :math:`f`). It is *exact*:
  :math:`\sum A = y(a, b) - y(a, r_b) - y(r_a, b) + y(r_a, r_b)` up to the quadrature error (Moeller et al.,
  "An Attribution Method for Siamese Encoders", EMNLP 2023, integrated Jacobians for sentence similarity).
- :func:`random_pairs`: Gaussian noise, the floor of every faithfulness score.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from captum.attr._utils.approximation_methods import approximation_parameters

from ..core.checks import check_input, reference_input
from ..core.pooling import SAME, PatchGrid, Pooling
from ..core.results import unit_multipliers
from ..core.session import batched_vjp
from ..core.similarity import BilinearSimilarity, CosineSimilarity, DotSimilarity, Similarity, get_similarity

__all__ = ['MARGINAL_METHODS', 'pair_similarity', 'marginal_attribution', 'marginal_outer_product', 'jacobian',
           'hessian_product', 'integrated_jacobians', 'integrated_jacobian_exactness', 'random_pairs']

Embed = Callable[[torch.Tensor], torch.Tensor]

#: first-order Captum methods whose marginals form outer-product baselines
MARGINAL_METHODS = {'saliency': Saliency, 'input_x_gradient': InputXGradient,
                    'integrated_gradients': IntegratedGradients}


def pair_similarity(embed: Embed, similarity: Union[str, Similarity, torch.Tensor] = 'dot') -> Callable:
    """``f(x_a, x_b) -> (B,)``: the similarity of each row pair (differentiable; a Captum ``forward_func``)."""
    similarity = get_similarity(similarity)

    def forward(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        return similarity(embed(x_a), embed(x_b))

    return forward


def _grids(x_a, x_b, pooling, pooling_b=SAME):
    pool_a = Pooling.ensure(pooling)
    pool_b = Pooling.ensure(pooling_b, same=pool_a)
    return pool_a.resolve(x_a.shape[1:]), pool_b.resolve(x_b.shape[1:])


def _check_pair(x_a: torch.Tensor, x_b: torch.Tensor) -> None:
    check_input(x_a, 'x_a')
    check_input(x_b, 'x_b')
    if x_a.shape[0] != x_b.shape[0]:
        raise ValueError(f'batch sizes differ: {x_a.shape[0]} vs {x_b.shape[0]} (aligned pairs needed)')


def marginal_attribution(embed: Embed, x: torch.Tensor, partner: torch.Tensor, method: str = 'input_x_gradient',
                         similarity: Union[str, Similarity, torch.Tensor] = 'dot', **kwargs) -> torch.Tensor:
    """First-order Captum attribution of ``y(x, partner)`` w.r.t. ``x`` (partner fixed), shaped like ``x``.

    ``kwargs`` go to the Captum method's ``attribute`` (e.g. ``n_steps``, ``baselines`` for integrated gradients).
    """
    if method not in MARGINAL_METHODS:
        raise ValueError(f'unknown marginal method {method!r}; choose one of {sorted(MARGINAL_METHODS)}')
    forward = pair_similarity(embed, similarity)
    explainer = MARGINAL_METHODS[method](forward)
    with torch.enable_grad():
        out = explainer.attribute(x.detach().clone().requires_grad_(True), additional_forward_args=(partner.detach(),),
                                  **kwargs)
    return out.detach()


def marginal_outer_product(embed: Embed, x_a: torch.Tensor, x_b: torch.Tensor, method: str = 'input_x_gradient',
                           similarity: Union[str, Similarity, torch.Tensor] = 'dot',
                           pooling: Union[None, int, Pooling] = None, **kwargs) -> torch.Tensor:
    r"""Outer product of pooled first-order marginals, :math:`R = \mathrm{pool}(m(x_a))\,\mathrm{pool}(m(x_b))^\top`.

    Returns
    -------
    torch.Tensor
        ``(B, P_a, P_b)``.
    """
    _check_pair(x_a, x_b)
    grid_a, grid_b = _grids(x_a, x_b, pooling)
    m_a = marginal_attribution(embed, x_a, x_b, method, similarity, **kwargs)
    m_b = marginal_attribution(embed, x_b, x_a, method, similarity, **kwargs)
    return Pooling.apply(m_a, grid_a, 1)[:, :, None] * Pooling.apply(m_b, grid_b, 1)[:, None, :]


def jacobian(embed: Embed, x: torch.Tensor, chunk_size: int = 64) -> tuple:
    r"""Embeddings ``(N, h)`` and Jacobians ``(N, h, *x.shape[1:])``: :math:`J_{nm} = \partial\phi_m(x_n)/\partial x_n`.

    Row :math:`m` is the vector-Jacobian product of the one-hot seed :math:`e_m` (batched reverse mode with
    :func:`~zennit_bilrp.core.session.batched_vjp`, ``chunk_size`` rows at a time).

    Raises
    ------
    ValueError
        ``chunk_size`` below 1, or an embedding that is not ``(N, h)``.
    """
    check_input(x, 'x')
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be positive, got {chunk_size}')
    with torch.enable_grad():
        inp = x.detach().requires_grad_(True)
        emb = embed(inp)
        if emb.dim() != 2:
            raise ValueError(f'embed must return (N, h) embeddings, got shape {tuple(emb.shape)}')
        n, h = emb.shape
        rows = []
        for start in range(0, h, chunk_size):
            units = torch.arange(start, min(start + chunk_size, h), device=emb.device)
            seeds = unit_multipliers(units, n, h, emb.dtype, emb.device)
            rows.append(batched_vjp(emb, inp, seeds).transpose(0, 1))
    return emb.detach(), torch.cat(rows, dim=1)


def _similarity_hessian(similarity: Similarity, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """Mixed second derivatives ``d^2 s / d e_a d e_b`` per pair, ``(B, h_a, h_b)`` (exact, via autograd)."""
    with torch.enable_grad():
        ea = emb_a.detach().requires_grad_(True)
        eb = emb_b.detach().requires_grad_(True)
        grad_a, = torch.autograd.grad(similarity(ea, eb).sum(), ea, create_graph=True)
        h_a = grad_a.shape[1]
        seeds = torch.eye(h_a, dtype=ea.dtype, device=ea.device)[:, None, :].expand(h_a, ea.shape[0], h_a)
        rows, = torch.autograd.grad(grad_a, eb, seeds, is_grads_batched=True, allow_unused=True)
    if rows is None:
        return torch.zeros(ea.shape[0], h_a, eb.shape[1], dtype=ea.dtype, device=ea.device)
    return rows.transpose(0, 1)  # (B, h_a, h_b): [b, m, n] = d^2 s / d ea_m d eb_n


def hessian_product(embed: Embed, x_a: torch.Tensor, x_b: torch.Tensor,
                    similarity: Union[str, Similarity, torch.Tensor] = 'dot',
                    pooling: Union[None, int, Pooling] = None, chunk_size: int = 64) -> torch.Tensor:
    r"""Hessian x product :math:`R_{ii'} = x_i x'_{i'} [J(x)^\top S J(x')]_{ii'}`, pooled, ``(B, P_a, P_b)``."""
    _check_pair(x_a, x_b)
    similarity = get_similarity(similarity)
    grid_a, grid_b = _grids(x_a, x_b, pooling)
    emb_a, jac_a = jacobian(embed, x_a, chunk_size)
    emb_b, jac_b = jacobian(embed, x_b, chunk_size)
    fa = Pooling.apply(jac_a * x_a[:, None], grid_a, 2)  # (B, h, P_a)
    fb = Pooling.apply(jac_b * x_b[:, None], grid_b, 2)
    hess = _similarity_hessian(similarity, emb_a, emb_b)
    return torch.einsum('bmp,bmn,bnq->bpq', fa, hess.to(fa), fb)


def _bilinear_form(embed: Embed, similarity: Similarity):
    """``(f, G)`` with ``y = f(x)^T G f(x')`` exactly (``G = None``: identity); cosine uses normalized embeddings
    (``F.normalize``, so a zero embedding maps to zero instead of failing)."""
    if not isinstance(similarity, (DotSimilarity, CosineSimilarity, BilinearSimilarity)):
        raise ValueError(f'integrated Jacobians need a dot, cosine or bilinear similarity, got {similarity!r}')
    normalize = isinstance(similarity, CosineSimilarity) or (
        isinstance(similarity, BilinearSimilarity) and similarity.normalize)
    weight = similarity.weight if isinstance(similarity, BilinearSimilarity) else None

    def f(x):
        emb = embed(x)
        return torch.nn.functional.normalize(emb, dim=1) if normalize else emb

    return f, weight


def _bilinear_value(f: Embed, weight: Optional[torch.Tensor], x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    emb_a, emb_b = f(x_a), f(x_b)
    if weight is not None:
        emb_b = emb_b @ weight.to(emb_b).T
    return (emb_a * emb_b).sum(dim=1)


def _integrated_factors(f: Embed, x: torch.Tensor, ref: torch.Tensor, grid: PatchGrid, n_steps: int, method: str,
                        chunk_size: int) -> torch.Tensor:
    """``pool(diag(x - r) J_bar(x)^T)`` as ``(N, h, P)``."""
    step_sizes, alphas = approximation_parameters(method)
    delta = x - ref
    total = None
    for step, alpha in zip(step_sizes(n_steps), alphas(n_steps)):
        _, jac = jacobian(f, ref + alpha * delta, chunk_size)
        term = step * Pooling.apply(jac * delta[:, None], grid, 2)
        total = term if total is None else total + term
    return total


def integrated_jacobians(embed: Embed, x_a: torch.Tensor, x_b: torch.Tensor,
                         similarity: Union[str, Similarity, torch.Tensor] = 'dot',
                         pooling: Union[None, int, Pooling] = None,
                         reference: Union[str, float, torch.Tensor] = 'zeros',
                         reference_b: Union[None, str, float, torch.Tensor] = None, n_steps: int = 16,
                         method: str = 'gausslegendre', chunk_size: int = 64) -> torch.Tensor:
    r"""Integrated Jacobians :math:`A = \mathrm{diag}(\Delta x)\bar J(x)^\top G \bar J(x')\mathrm{diag}(\Delta x')`,
    pooled, ``(B, P_a, P_b)``.

    Parameters
    ----------
    reference, reference_b : 'zeros', 'mean', float or tensor
        Path starts :math:`r_a`, :math:`r_b` (``'mean'``: per-channel mean image; ``reference_b`` defaults to
        ``reference``).
    n_steps : int
        Quadrature points per path (``n_steps`` Jacobians of ``h`` rows per input).
    method : str
        Captum's quadrature: ``'gausslegendre'``, ``'riemann_trapezoid'``, ``'riemann_middle'``, ...
    """
    _check_pair(x_a, x_b)
    similarity = get_similarity(similarity)
    f, weight = _bilinear_form(embed, similarity)
    grid_a, grid_b = _grids(x_a, x_b, pooling)
    ref_a = reference_input(x_a, reference)
    ref_b = reference_input(x_b, reference if reference_b is None else reference_b)
    fa = _integrated_factors(f, x_a.detach(), ref_a, grid_a, n_steps, method, chunk_size)
    fb = _integrated_factors(f, x_b.detach(), ref_b, grid_b, n_steps, method, chunk_size)
    if weight is None:
        return torch.einsum('bmp,bmq->bpq', fa, fb)
    return torch.einsum('bmp,mn,bnq->bpq', fa, weight.to(fa), fb)


def integrated_jacobian_exactness(embed: Embed, x_a: torch.Tensor, x_b: torch.Tensor,
                                  similarity: Union[str, Similarity, torch.Tensor] = 'dot',
                                  reference: Union[str, float, torch.Tensor] = 'zeros',
                                  reference_b: Union[None, str, float, torch.Tensor] = None) -> torch.Tensor:
    r"""The total integrated Jacobians must reach, :math:`y(a,b) - y(a,r_b) - y(r_a,b) + y(r_a,r_b)`, ``(B,)``."""
    f, weight = _bilinear_form(embed, get_similarity(similarity))
    ref_a = reference_input(x_a, reference)
    ref_b = reference_input(x_b, reference if reference_b is None else reference_b)
    with torch.no_grad():
        return (_bilinear_value(f, weight, x_a, x_b) - _bilinear_value(f, weight, x_a, ref_b)
                - _bilinear_value(f, weight, ref_a, x_b) + _bilinear_value(f, weight, ref_a, ref_b))


def random_pairs(x_a: torch.Tensor, x_b: torch.Tensor, pooling: Union[None, int, Pooling] = None,
                 seed: Optional[int] = 0) -> torch.Tensor:
    """Gaussian random pairwise relevance ``(B, P_a, P_b)`` (the floor of faithfulness scores)."""
    grid_a, grid_b = _grids(x_a, x_b, pooling)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    out = torch.randn(x_a.shape[0], grid_a.num_patches, grid_b.num_patches, generator=gen, dtype=torch.float64)
    return out.to(dtype=x_a.dtype, device=x_a.device)
