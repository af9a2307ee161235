r"""Cheaper estimators of exact BiLRP, built on the engine's primitives.

Exact BiLRP of a pair costs one LRP backward pass per embedding unit. For a diagonal similarity
:math:`y = c\sum_m \phi_m(x)\phi_m(x')` (dot, cosine) the exact pooled relevance is a sum of unit terms

.. math::

    R = c \sum_{m=1}^h F_m(x)\, F_m(x')^\top, \qquad \sum_{p,q} F_m(x)_p F_m(x')_q = \phi_m(x)\phi_m(x')
    \ \text{(conservation)},

with :math:`F_m(x)` the pooled LRP explanation of unit :math:`m` started from its own value (the engine's
factors). Unit :math:`m` contributes :math:`c_m = c\,\phi_m(x)\phi_m(x')` to the similarity, and its term can be
no larger than that suggests when its explanations are mostly positive. The estimators here spend ``k < h``
backward passes per input:

- :func:`select_units` / mode ``'select'`` (deterministic): keep the ``k`` units with the largest
  :math:`|c_m|` (or the fewest units covering a share ``threshold`` of :math:`\sum_m |c_m|`). Biased; the share of
  :math:`\sum|c_m|` covered is returned as a cheap error indicator.
- :func:`~zennit_bilrp.scale.unit_sampling.sample_units` / mode ``'sample'`` (unbiased): unit :math:`m` enters
  the sample with probability :math:`\pi_m \propto |c_m|` (capped at 1, so the largest units are kept exactly),
  weight :math:`1/\pi_m` (Horvitz-Thompson). Scheme ``'systematic'`` draws exactly ``k`` units (systematic pps
  sampling), ``'multinomial'`` keeps the ``keep`` largest units exactly and draws the rest i.i.d. with probability
  :math:`\propto |c_m|`. Either way :math:`E[\hat R] = R`; a variance estimate is returned.
- :func:`project` / mode ``'gaussian'``, ``'orthogonal'``, ``'sign'``: random projections
  :math:`\hat R = \frac{c}{k}\sum_j (F(x)^\top p_j)(F(x')^\top G p_j)^\top` with :math:`E[p p^\top] = I`, one
  backward pass per direction (uses :meth:`BiLRP.propagate`, so it never forms :math:`F`).
- :func:`explain_at_layer`: exact BiLRP down to an intermediate feature map instead of the pixels; backward
  passes only run through the layers above it.

Cost is counted in LRP backward passes per input (``passes``): exact BiLRP needs ``h``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from ..core.checks import check_input
from ..core.engine import BiLRP
from ..core.pooling import PatchGrid, Pooling
from ..core.results import BiLRPResult, Factors, PairRelevance, pairwise_relevance
from ..core.similarity import Similarity, get_similarity
from ..lrp.layers import CaptureLayer, get_layer
from .unit_sampling import inclusion_probabilities as inclusion_probabilities
from .unit_sampling import sample_units
from .unit_sampling import systematic_sample as systematic_sample

#: the names defined here; the unit sampling (:func:`~zennit_bilrp.scale.unit_sampling.sample_units`,
#: :func:`~zennit_bilrp.scale.unit_sampling.inclusion_probabilities`,
#: :func:`~zennit_bilrp.scale.unit_sampling.systematic_sample`) is re-exported from
#: :mod:`~zennit_bilrp.scale.unit_sampling`
__all__ = [
    'Approximation', 'unit_contributions', 'select_units', 'approximate', 'select_from_factors', 'project',
    'explain_at_layer', 'FeatureMapModel', 'MODES',
]

#: estimator names accepted by :func:`approximate`
MODES = ('select', 'sample', 'gaussian', 'orthogonal', 'sign')


@dataclass
class Approximation(PairRelevance):
    """An estimate of BiLRP for a batch of ``B`` pairs.

    Attributes
    ----------
    relevance : torch.Tensor
        Estimated pooled pairwise relevance ``(B, P_a, P_b)``.
    similarity : torch.Tensor
        The exact similarity of each pair ``(B,)`` (from the forward pass).
    mode : str
        The estimator.
    passes : int
        LRP backward passes per input (exact BiLRP needs ``h``).
    error_estimate : torch.Tensor or None
        Cheap per-pair error indicator ``(B,)``: for ``'select'`` one minus the covered contribution share
        (``1 - coverage``), for ``'sample'`` the estimated relative standard error
        :math:`\\sqrt{\\widehat{\\mathrm{Var}}}/\\|\\hat R\\|_F`, for projections ``None``.
    coverage : torch.Tensor or None
        Share of :math:`\\sum_m |c_m|` carried by the explained units ``(B,)`` (unit modes).
    units : torch.Tensor or None
        Explained units per pair ``(B, K)`` (unit modes); ``weights`` are their Horvitz-Thompson weights.
    """
    mode: str
    passes: int
    error_estimate: Optional[torch.Tensor] = None
    coverage: Optional[torch.Tensor] = None
    units: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None
    extras: dict = field(default_factory=dict)



def unit_contributions(emb_a: torch.Tensor, emb_b: torch.Tensor,
                       similarity: Union[str, Similarity] = 'dot') -> torch.Tensor:
    r"""Signed contribution :math:`c_m = c\,\phi_m(x)\phi_m(x')` of each unit to the similarity, ``(B, h)``.

    Their sum is the similarity (dot or cosine; diagonal similarities only).

    Raises
    ------
    ValueError
        Embeddings that are not both ``(B, h)``, or a similarity that is not diagonal.
    """
    similarity = get_similarity(similarity)
    if emb_a.shape != emb_b.shape or emb_a.dim() != 2:
        raise ValueError(f'unit_contributions: embeddings must both be (B, h), got {tuple(emb_a.shape)} and '
                         f'{tuple(emb_b.shape)}')
    if similarity.matrix(emb_a, emb_b) is not None:
        raise ValueError(f'unit selection and sampling need a diagonal similarity (dot or cosine), got {similarity!r}; '
                         'for a bilinear similarity use a projection mode, or fold W into the embedding')
    return similarity.scale(emb_a, emb_b)[:, None] * emb_a * emb_b


def select_units(contributions: torch.Tensor, k: Optional[int] = None,
                 threshold: Optional[float] = None) -> torch.Tensor:
    r"""Indices of the units with the largest contributions :math:`|c_m|`, largest first.

    Parameters
    ----------
    contributions : torch.Tensor
        ``(h,)`` or ``(B, h)`` contributions (signed; their magnitude ranks the units), e.g. from
        :func:`unit_contributions` or a dataset average.
    k : int, optional
        Number of units to keep.
    threshold : float, optional
        Keep the fewest units whose :math:`|c_m|` sum to at least ``threshold`` (in ``(0, 1]``) of
        :math:`\sum_m |c_m|`. For ``(B, h)`` inputs the count is the largest any row needs, so every row reaches
        the threshold.

    Returns
    -------
    torch.Tensor
        Long indices ``(K,)`` or ``(B, K)``.
    """
    if not isinstance(contributions, torch.Tensor) or contributions.dim() not in (1, 2):
        raise ValueError('select_units: contributions must be a (h,) or (B, h) tensor')
    if (k is None) == (threshold is None):
        raise ValueError('select_units: give exactly one of `k` (count) and `threshold` (cumulative share)')
    h = contributions.shape[-1]
    order = contributions.abs().argsort(dim=-1, descending=True, stable=True)
    if k is not None:
        if not isinstance(k, int) or not 0 < k <= h:
            raise ValueError(f'select_units: k must be an int in 1..{h}, got {k!r}')
        return order[..., :k]
    if not 0 < threshold <= 1:
        raise ValueError(f'select_units: threshold must lie in (0, 1], got {threshold!r}')
    mags = contributions.abs().gather(-1, order).to(torch.float64)
    total = mags.sum(dim=-1, keepdim=True)
    share = mags.cumsum(dim=-1) / torch.where(total > 0, total, torch.ones_like(total))
    tolerance = h * torch.finfo(contributions.dtype).eps if contributions.is_floating_point() else 0.0
    needed = (share < threshold - tolerance).sum(dim=-1) + 1
    count = min(int(needed.max()), h)
    return order[..., :count]


def _embeddings(bilrp: BiLRP, x_a: torch.Tensor, x_b: torch.Tensor) -> tuple:
    with bilrp.registration.ensure():
        return bilrp.embed(x_a, 'a'), bilrp.embed(x_b, 'b')


def _unit_relevance(bilrp: BiLRP, x_a: torch.Tensor, x_b: torch.Tensor, units: torch.Tensor, h: int, dtype,
                    pooling: Union[None, int, Pooling]) -> tuple:
    """Pooled explanations of per-pair units ``(B, K)``: ``(rel_a (B, K, P_a), rel_b (B, K, P_b))``; row ``k`` of
    pair ``b`` on both sides explains unit ``units[b, k]``, started from its value."""
    onehot = torch.zeros(units.shape[1], x_a.shape[0], h, dtype=dtype, device=x_a.device)
    onehot.scatter_(2, units.t()[:, :, None].to(x_a.device), 1.0)
    _, _, rel_a, rel_b = bilrp.propagate_pair(x_a, x_b, onehot, onehot, pooling=pooling)
    return rel_a.transpose(0, 1), rel_b.transpose(0, 1)


def _pair(similarity: Similarity, emb_a: torch.Tensor, emb_b: torch.Tensor, rel_a: torch.Tensor, rel_b: torch.Tensor,
          grid: PatchGrid, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted sum of per-pair unit terms through the engine's :func:`pairwise_relevance` (diagonal similarity;
    the rows of ``rel_a``/``rel_b`` explain the same unit per pair, so they pair like the engine's factors)."""
    fa, fb = Factors(emb_a, rel_a, grid), Factors(emb_b, rel_b, grid)
    return pairwise_relevance(fa, fb, similarity, unit_weights=weights)


def _explicit_units(units, batch: int, h: int) -> torch.Tensor:
    """Explicit units ``(K,)`` (shared by all pairs) or ``(B, K)`` as validated ``(B, K)`` long indices."""
    units = torch.as_tensor(units).to(torch.long)
    units = units[None].expand(batch, -1) if units.dim() == 1 else units
    if units.dim() != 2 or units.shape[0] != batch or int(units.min()) < 0 or int(units.max()) >= h:
        raise ValueError(f'units must be (K,) or (B, K) indices in 0..{h - 1}')
    return units


def _coverage(magnitudes: torch.Tensor, units: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Share of :math:`\sum_m |c_m|` carried by the explained units (entries of weight 0 excluded), ``(B,)``."""
    total = magnitudes.sum(dim=1)
    covered = magnitudes.gather(1, units.to(magnitudes.device))
    if weights is not None:
        covered = covered * (weights > 0)
    return (covered.sum(dim=1) / torch.where(total > 0, total, torch.ones_like(total))).clamp(max=1.0)


def _selection(similarity: Similarity, emb_a: torch.Tensor, emb_b: torch.Tensor, rel_a: torch.Tensor,
               rel_b: torch.Tensor, grid: PatchGrid, contributions: torch.Tensor, units: torch.Tensor) -> Approximation:
    """The ``'select'`` estimate from the explanations of the selected units, with coverage and ``1 - coverage``."""
    relevance = _pair(similarity, emb_a, emb_b, rel_a, rel_b, grid)
    coverage = _coverage(contributions.abs(), units)
    return Approximation(relevance, similarity(emb_a, emb_b), 'select', units.shape[1], 1.0 - coverage, coverage,
                         units)


def _sampling_error(similarity: Similarity, emb_a: torch.Tensor, emb_b: torch.Tensor, rel_a: torch.Tensor,
                    rel_b: torch.Tensor, grid: PatchGrid, relevance: torch.Tensor, weights: torch.Tensor,
                    pis: torch.Tensor, scheme: str, draws: int) -> torch.Tensor:
    r"""Estimated relative standard error :math:`\sqrt{\widehat{\mathrm{Var}}}/\|\hat R\|_F` per pair.

    Systematic sampling uses the Poisson-design variance of the Horvitz-Thompson total,
    :math:`\sum_S (1 - \pi_m)/\pi_m^2\,\|c\,F_m F'^\top_m\|_F^2`; multinomial sampling the sample variance of the
    ``draws`` i.i.d. per-draw estimates :math:`X_j = c\,F_m F'^\top_m / q_m` (exactly kept units have no variance).
    """
    scale = similarity.scale(emb_a, emb_b).to(rel_a)
    norms = (rel_a.norm(dim=2) * rel_b.norm(dim=2)) * scale[:, None].abs()
    pis = pis.to(rel_a)
    safe = torch.where(pis > 0, pis, torch.ones_like(pis))
    if scheme == 'multinomial':
        tail = (pis < 1) & (pis > 0)
        counts = torch.where(tail, weights * pis, torch.zeros_like(weights))  # weight * draws * q = count
        sq = torch.where(tail, counts * (norms * draws / safe) ** 2, torch.zeros_like(weights)).sum(dim=1)
        tail_rel = _pair(similarity, emb_a, emb_b, rel_a, rel_b, grid, torch.where(tail, weights,
                                                                                   torch.zeros_like(weights)))
        mean_sq = tail_rel.flatten(1).norm(dim=1) ** 2
        var = (sq / draws - mean_sq).clamp(min=0) / max(draws - 1, 1)
    else:
        var = (torch.where(pis > 0, (1 - pis) / safe ** 2, torch.zeros_like(pis)) * norms ** 2).sum(dim=1)
    return var.sqrt() / relevance.flatten(1).norm(dim=1).clamp(min=torch.finfo(relevance.dtype).tiny)


def select_from_factors(factors_a: Factors, factors_b: Factors, similarity: Union[str, Similarity] = 'dot',
                        k: Optional[int] = None, threshold: Optional[float] = None,
                        units: Optional[torch.Tensor] = None) -> Approximation:
    r"""Mode ``'select'`` of :func:`approximate` on factors of all units, without any backward pass.

    :math:`\hat R = c \sum_{m \in S} F_m(x) F_m(x')^\top` over the units :math:`S` of each pair chosen by
    :func:`select_units` (largest :math:`|c_m|`, or covering the share ``threshold``), or given as ``units``.

    Parameters
    ----------
    factors_a, factors_b : Factors
        Factors of all ``h`` units of the two sides of ``B`` aligned pairs (e.g. ``result.factors_a`` of
        :meth:`BiLRP.explain`).
    similarity : str or Similarity
        The diagonal similarity (dot or cosine) the embeddings are compared with.
    k, threshold : int or float, optional
        As in :func:`select_units` (exactly one unless ``units`` is given).
    units : torch.Tensor, optional
        Explicit units ``(K,)`` (shared) or ``(B, K)``.

    Returns
    -------
    Approximation
        ``passes`` is the number of units kept per pair.
    """
    if factors_a.units is not None or factors_b.units is not None:
        raise ValueError('select_from_factors needs the factors of all units (factors.units is None)')
    similarity = get_similarity(similarity)
    emb_a, emb_b = factors_a.embedding, factors_b.embedding
    contributions = unit_contributions(emb_a, emb_b, similarity)
    if units is not None:
        units = _explicit_units(units, emb_a.shape[0], emb_a.shape[1])
    else:
        units = select_units(contributions, k=k, threshold=threshold)
    rows = units.to(factors_a.relevance.device)[:, :, None]
    rel_a = factors_a.relevance.gather(1, rows.expand(-1, -1, factors_a.relevance.shape[2]))
    rel_b = factors_b.relevance.gather(1, rows.expand(-1, -1, factors_b.relevance.shape[2]))
    return _selection(similarity, emb_a, emb_b, rel_a, rel_b, factors_a.grid, contributions, units)


def _check_approximate(x_a: torch.Tensor, x_b: torch.Tensor, k: Optional[int], mode: str,
                       units: Optional[torch.Tensor]) -> None:
    if mode not in MODES:
        raise ValueError(f'unknown mode {mode!r}; choose one of {MODES}')
    check_input(x_a, 'x_a')
    check_input(x_b, 'x_b')
    if x_a.shape[0] != x_b.shape[0]:
        raise ValueError(f'batch sizes differ: x_a has {x_a.shape[0]} samples, x_b has {x_b.shape[0]}')
    if units is not None and mode != 'select':
        raise ValueError(f"explicit units are used only with mode 'select', got mode {mode!r}")
    if k is None and mode != 'select':
        what = 'the sample size' if mode == 'sample' else 'the number of directions'
        raise ValueError(f'mode {mode!r} needs {what} `k`')


def approximate(bilrp: BiLRP, x_a: torch.Tensor, x_b: torch.Tensor, k: Optional[int] = None,
                mode: str = 'sample', pooling: Union[None, int, Pooling] = None, threshold: Optional[float] = None,
                scheme: str = 'systematic', keep: int = 0, seed: Optional[int] = None,
                units: Optional[torch.Tensor] = None) -> Approximation:
    """Estimate BiLRP of the pairs ``(x_a[i], x_b[i])`` with about ``k`` backward passes per input.

    Parameters
    ----------
    bilrp : BiLRP
        The configured engine (model, composite, similarity, head).
    x_a, x_b : torch.Tensor
        Batches of ``B`` inputs each.
    k : int, optional
        Budget: units (``'select'``, ``'sample'``) or projection directions.
    mode : {'select', 'sample', 'gaussian', 'orthogonal', 'sign'}
        Estimator (see the module docs). The default ``'sample'`` (systematic importance sampling) had the lowest
        relative Frobenius error at a given budget on ResNet-18 in ``benchmarks/speed.py`` and is unbiased;
        ``'select'`` was more accurate on the max-pooled demo model and ranks the top patch pairs more faithfully,
        but is biased (it drops the small units).
    pooling : int or Pooling, optional
        Patch pooling, as in :meth:`BiLRP.explain`.
    threshold : float, optional
        ``'select'`` only: keep units covering this share of :math:`\\sum|c_m|` instead of a fixed ``k``.
    scheme, keep : str, int
        ``'sample'`` only, see :func:`~zennit_bilrp.scale.unit_sampling.sample_units`.
    seed : int, optional
        Seed of the random modes.
    units : torch.Tensor, optional
        ``'select'`` only: explicit units ``(K,)`` (the same for all pairs) or ``(B, K)``, e.g. chosen on a dataset.

    Returns
    -------
    Approximation
    """
    _check_approximate(x_a, x_b, k, mode, units)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if mode in ('gaussian', 'orthogonal', 'sign'):
        return project(bilrp, x_a, x_b, k, kind=mode, pooling=pooling, generator=generator)
    emb_a, emb_b = _embeddings(bilrp, x_a, x_b)
    contributions = unit_contributions(emb_a, emb_b, bilrp.similarity)
    grid = Pooling.ensure(pooling).resolve(x_a.shape[1:])
    h = emb_a.shape[1]
    if mode == 'select':
        units = _explicit_units(units, x_a.shape[0], h) if units is not None else select_units(
            contributions, k=k, threshold=threshold)
        rel_a, rel_b = _unit_relevance(bilrp, x_a, x_b, units, h, emb_a.dtype, pooling)
        return _selection(bilrp.similarity, emb_a, emb_b, rel_a, rel_b, grid, contributions, units)
    units, weights, pis = sample_units(contributions, k, scheme=scheme, keep=keep, generator=generator)
    rel_a, rel_b = _unit_relevance(bilrp, x_a, x_b, units, h, emb_a.dtype, pooling)
    w = weights.to(rel_a)
    relevance = _pair(bilrp.similarity, emb_a, emb_b, rel_a, rel_b, grid, w)
    error = _sampling_error(bilrp.similarity, emb_a, emb_b, rel_a, rel_b, grid, relevance, w, pis, scheme, k - keep)
    coverage = _coverage(contributions.abs(), units, weights)
    return Approximation(relevance, bilrp.similarity(emb_a, emb_b), mode, units.shape[1], error, coverage, units,
                         weights)


def _directions(kind: str, k: int, h: int, dtype, device, generator=None) -> torch.Tensor:
    """``(k, h)`` directions with ``E[P^T P] / k = I``."""
    if kind == 'gaussian':
        return torch.randn(k, h, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    if kind == 'sign':
        return (torch.randint(0, 2, (k, h), generator=generator) * 2 - 1).to(device=device, dtype=dtype)
    if kind == 'orthogonal':
        blocks = []
        for _ in range(math.ceil(k / h)):
            q, r = torch.linalg.qr(torch.randn(h, h, generator=generator, dtype=torch.float64))
            blocks.append(q * torch.sign(torch.diagonal(r))[None, :])  # Haar-distributed orthogonal matrix
        return (math.sqrt(h) * torch.cat(blocks, dim=1).t()[:k]).to(device=device, dtype=dtype)
    raise ValueError(f"projection kind must be 'gaussian', 'orthogonal' or 'sign', got {kind!r}")


def project(bilrp: BiLRP, x_a: torch.Tensor, x_b: torch.Tensor, k: int, kind: str = 'orthogonal',
            pooling: Union[None, int, Pooling] = None, generator: Optional[torch.Generator] = None,
            directions: Optional[torch.Tensor] = None) -> Approximation:
    r"""Random-projection estimate :math:`\hat R = \frac{c}{k}\sum_j M(x)(\phi \odot p_j)\,
    [M(x')(\phi' \odot G^\top p_j)]^\top`.

    Unbiased for directions with :math:`E[p p^\top] = I`. ``'orthogonal'`` uses rows of a Haar-random orthogonal
    matrix scaled by :math:`\sqrt h` (fresh blocks beyond ``k = h``), so ``k = h`` reproduces exact BiLRP.

    Parameters
    ----------
    directions : torch.Tensor, optional
        Explicit ``(k, h)`` directions (overrides ``kind``).
    """
    emb_a, emb_b = _embeddings(bilrp, x_a, x_b)
    bilrp.similarity.check(emb_a, emb_b)
    if directions is None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f'project: k must be a positive int, got {k!r}')
        directions = _directions(kind, k, emb_a.shape[1], emb_a.dtype, emb_a.device, generator)
    elif directions.dim() != 2 or directions.shape[1] != emb_a.shape[1]:
        raise ValueError(f'project: directions must be (k, {emb_a.shape[1]}), got {tuple(directions.shape)}')
    directions = directions.to(emb_a)
    k = directions.shape[0]
    matrix = bilrp.similarity.matrix(emb_a, emb_b)
    dir_b = directions if matrix is None else directions @ matrix.to(emb_a)
    grid = Pooling.ensure(pooling).resolve(x_a.shape[1:])
    _, _, rel_a, rel_b = bilrp.propagate_pair(x_a, x_b, directions, dir_b, pooling=pooling)
    # the projected explanations pair like unit terms of a dot product; the similarity's scale is applied after
    fa = Factors(emb_a, rel_a.transpose(0, 1), grid)
    fb = Factors(emb_a, rel_b.transpose(0, 1), grid)
    pair = pairwise_relevance(fa, fb, 'dot') / k
    scale = bilrp.similarity.scale(emb_a, emb_b).to(pair)
    similarity = bilrp.similarity(emb_a, emb_b)
    return Approximation(scale[:, None, None] * pair, similarity, kind, k, extras={'directions': directions})


class FeatureMapModel(torch.nn.Module):
    """The part of ``model`` above the submodule ``layer``, as a model taking that layer's output.

    The forward runs ``model`` on a constant placeholder input and replaces the output of ``layer`` by the given
    feature map, so everything above ``layer`` (and its LRP rules, which the composite assigns exactly as for the
    full model) sees the features; gradients stop at the feature map, so backward passes skip the layers below.

    Parameters
    ----------
    model : torch.nn.Module
        The full embedding model.
    layer : str
        Name of the submodule (as in ``model.named_modules()``) whose output is explained; it must run once per
        forward.
    placeholder : torch.Tensor
        One input sample ``(1, ...)`` of the full model (its values do not matter).
    """

    def __init__(self, model: torch.nn.Module, layer: str, placeholder: torch.Tensor):
        super().__init__()
        if layer == '':
            raise ValueError("FeatureMapModel needs an inner layer, not '' (the model output)")
        get_layer(model, layer)
        self.model = model
        self.layer = layer
        self.register_buffer('placeholder', placeholder.detach()[:1].clone(), persistent=False)
        self._features: Optional[torch.Tensor] = None
        self._calls = 0

    def _replace(self, module, inputs, output):
        self._calls += 1
        if self._features.shape[1:] != output.shape[1:]:
            raise ValueError(f'features of shape {tuple(self._features.shape)} do not fit the output of layer '
                             f'{self.layer!r} {tuple(output.shape)}')
        return self._features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        target = get_layer(self.model, self.layer)
        self._features, self._calls = features, 0
        handle = target.register_forward_hook(self._replace)
        try:
            placeholder = self.placeholder.expand(features.shape[0], *self.placeholder.shape[1:])
            out = self.model(placeholder)
        finally:
            handle.remove()
            self._features = None
        if self._calls != 1:
            raise ValueError(f'layer {self.layer!r} ran {self._calls} times in one forward; choose a layer used once')
        return out


def explain_at_layer(model: torch.nn.Module, layer: str, x_a: torch.Tensor, x_b: torch.Tensor,
                     pooling: Union[None, int, Pooling] = None, **bilrp_kwargs) -> BiLRPResult:
    """Exact BiLRP down to the output of ``layer`` instead of the input.

    The pairwise relevance is over the positions of that feature map (channels summed), pooled with ``pooling``
    (in feature-map positions). It approximates the input-level explanation pooled to the receptive-field grid of
    the layer, at the cost of backward passes through the layers above ``layer`` only.

    Parameters
    ----------
    model : torch.nn.Module
        The embedding model.
    layer : str
        Submodule name, e.g. ``'stages.1'``.
    x_a, x_b : torch.Tensor
        Input pairs.
    pooling : int or Pooling, optional
        Pooling of the feature-map relevance.
    bilrp_kwargs
        Passed to :class:`BiLRP` (composite, similarity, head, ...). The composite should be a fresh instance.

    Returns
    -------
    BiLRPResult
        With ``extras['layer']`` and ``extras['feature_shape']``; marginals are not computed.
    """
    if bilrp_kwargs.get('model_b') is not None:
        raise ValueError('explain_at_layer supports shared encoders only')
    tail = FeatureMapModel(model, layer, x_a[:1])
    n = x_a.shape[0]
    with BiLRP(tail, **bilrp_kwargs) as bilrp:
        # features of the canonized model (e.g. BatchNorm merged into the convolution before it)
        with torch.no_grad(), CaptureLayer(model, layer) as capture:
            features = capture(torch.cat([x_a, x_b])).detach()
        result = bilrp.explain(features[:n], features[n:], pooling=pooling, marginals=False)
    result.extras.update(layer=layer, feature_shape=tuple(features.shape[1:]))
    return result
