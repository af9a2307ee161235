r"""Object-versus-context analysis of BiLRP explanations.

Given the pooled pairwise relevance :math:`R \in \mathbb{R}^{P_a \times P_b}` of a pair and object masks, every
patch has an object weight :math:`o_i \in [0, 1]` (the fraction of its pixels inside the object mask; 0 or 1 for
per-patch masks or when patches are pixels) and a context weight :math:`c_i = 1 - o_i`. The explanation splits
into four blocks

.. math::

    S_{oo} = o_a^\top R\, o_b,\quad S_{oc} = o_a^\top R\, c_b,\quad S_{co} = c_a^\top R\, o_b,\quad
    S_{cc} = c_a^\top R\, c_b,

with :math:`S_{oo} + S_{oc} + S_{co} + S_{cc} = \sum R` (= the similarity when LRP conserves). Their *shares*
(:func:`pair_shares`) come in three variants:

- ``'signed'``: :math:`S_{xy} / \sum R` (shares sum to 1, but may leave [0, 1] when relevance has both signs);
- ``'abs'``: the same blocks of :math:`|R|` divided by :math:`\sum |R|` (in [0, 1], sum to 1: where the
  explanation puts its *mass*, regardless of sign);
- ``'positive'``: blocks of :math:`\max(R, 0)` divided by :math:`\sum \max(R, 0)` (the convention of the
  relevance mass accuracy below).

A patch that is partly object contributes to both blocks in proportion to its pixel fractions, i.e. relevance
is assumed uniform inside a patch; with per-pixel relevance (``pooling=None``) or masks on the patch grid, the
split is exact. The *context share* of a pair is :math:`1 - \text{share}_{oo}` (relevance that involves context
on at least one side).

First-order marginal share. For one image with heatmap :math:`R_i` (e.g. the exact BiLRP marginal
``BiLRPResult.marginal_a``, channels summed) and ground-truth mask :math:`\mathrm{GT}`, the relevance mass
accuracy of Arras, Osman and Samek ("CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural
network explanations", Information Fusion 81, 2022) is

.. math::

    \mathrm{RMA} = \frac{R_\mathrm{within}}{R_\mathrm{total}}
    = \frac{\sum_{i \in \mathrm{GT}} R_i^+}{\sum_i R_i^+},

computed on positive relevance only (as in that paper). :func:`marginal_context_share` returns
:math:`1 - \mathrm{RMA}`, the share of positive relevance on the context. A share is NaN when its normalizer is
zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..core.pooling import PatchGrid

__all__ = ['KINDS', 'ContextShares', 'patch_fraction', 'pair_shares', 'relevance_mass_accuracy',
           'marginal_context_share', 'context_analysis']

#: variants of the shares
KINDS = ('signed', 'abs', 'positive')
_BLOCKS = ('object_object', 'object_context', 'context_object', 'context_context')


@dataclass
class ContextShares:
    """Object/context shares of a batch of explained pairs (each field ``(B,)``).

    Attributes
    ----------
    object_object, object_context, context_object, context_context : torch.Tensor
        Shares of the four blocks (first index: image a, second: image b).
    total : torch.Tensor
        The normalizer: :math:`\\sum R`, :math:`\\sum |R|` or :math:`\\sum R^+` by ``kind``.
    kind : str
        ``'signed'``, ``'abs'`` or ``'positive'``.
    """
    object_object: torch.Tensor
    object_context: torch.Tensor
    context_object: torch.Tensor
    context_context: torch.Tensor
    total: torch.Tensor
    kind: str

    @property
    def context(self) -> torch.Tensor:
        """Share of relevance involving context on at least one side, ``1 - object_object``."""
        return self.object_context + self.context_object + self.context_context

    def as_dict(self, prefix: str = '') -> dict:
        """Columns ``{prefix}{block}_{kind}`` (and ``context_{kind}``, ``total_{kind}``) as tensors."""
        out = {f'{prefix}{name}_{self.kind}': getattr(self, name) for name in _BLOCKS}
        out[f'{prefix}context_{self.kind}'] = self.context
        out[f'{prefix}total_{self.kind}'] = self.total
        return out


def patch_fraction(mask: torch.Tensor, grid: Optional[PatchGrid] = None) -> torch.Tensor:
    """Object weight of every patch: the fraction of its pixels inside the mask, ``(B, P)`` float64.

    Parameters
    ----------
    mask : torch.Tensor
        Either per-pixel masks ``(B, *spatial)`` (bool or values in [0, 1]), pooled with ``grid``, or per-patch
        masks ``(B, P)`` / ``(B, *grid.grid)`` used as they are.
    grid : PatchGrid, optional
        Geometry of the pooled relevance (``BiLRPResult.grid_a``). Required for per-pixel masks.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f'mask must be a torch.Tensor, got {type(mask).__name__}')
    mask = mask.to(torch.float64)
    if mask.dim() < 2:
        raise ValueError(f'mask has shape {tuple(mask.shape)}; expected a batch (B, ...)')
    if bool((mask < 0).any()) or bool((mask > 1).any()):
        raise ValueError('mask values must lie in [0, 1] (bool masks or object fractions)')
    batch = mask.shape[0]
    if grid is None:
        return mask.reshape(batch, -1)
    spatial = tuple(grid.input_shape[1:]) if grid.channels_summed else tuple(grid.input_shape)
    if tuple(mask.shape[1:]) in ((grid.num_patches,), tuple(grid.grid)):
        return mask.reshape(batch, -1)
    if tuple(mask.shape[1:]) != spatial:
        raise ValueError(f'mask of shape {tuple(mask.shape)} fits neither the input positions {spatial} nor the '
                         f'patch grid {tuple(grid.grid)} ({grid.num_patches} patches)')
    shape = [batch]
    for g, p in zip(grid.grid, grid.patch):
        shape += [g, p]
    patch_axes = tuple(2 + 2 * i for i in range(len(grid.grid)))
    return mask.reshape(shape).mean(dim=patch_axes).reshape(batch, -1)


def _transform(relevance: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == 'signed':
        return relevance
    if kind == 'abs':
        return relevance.abs()
    if kind == 'positive':
        return relevance.clamp(min=0)
    raise ValueError(f'unknown kind {kind!r}; choose one of {KINDS}')


def _divide(value: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return torch.where(total != 0, value / torch.where(total != 0, total, torch.ones_like(total)),
                       torch.full_like(value, float('nan')))


def pair_shares(relevance: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor, kind: str = 'signed',
                grid_a: Optional[PatchGrid] = None, grid_b: Optional[PatchGrid] = None) -> ContextShares:
    """Split pairwise relevance ``(B, P_a, P_b)`` into object/context blocks (see the module docstring).

    Parameters
    ----------
    relevance : torch.Tensor
        Pooled pairwise relevance (``BiLRPResult.relevance``).
    mask_a, mask_b : torch.Tensor
        Object masks of the two images: per pixel (needs the grids) or per patch; bool or fractions.
    kind : {'signed', 'abs', 'positive'}
        Which variant of the shares.
    grid_a, grid_b : PatchGrid, optional
        Pooling geometry of each side (``BiLRPResult.grid_a`` / ``grid_b``).

    Returns
    -------
    ContextShares
    """
    if relevance.dim() != 3:
        raise ValueError(f'relevance must be (B, P_a, P_b), got shape {tuple(relevance.shape)}')
    rel = _transform(relevance.detach().to(torch.float64), kind)
    o_a, o_b = patch_fraction(mask_a, grid_a), patch_fraction(mask_b, grid_b)
    for name, weights, size in (('mask_a', o_a, rel.shape[1]), ('mask_b', o_b, rel.shape[2])):
        if weights.shape != (rel.shape[0], size):
            raise ValueError(f'{name} gives {tuple(weights.shape)} patch weights but the relevance has '
                             f'{rel.shape[0]} pairs with {size} patches on that side')
    c_a, c_b = 1.0 - o_a, 1.0 - o_b

    def block(u, v):
        return torch.einsum('bi,bij,bj->b', u, rel, v)

    total = rel.sum(dim=(1, 2))
    values = [block(o_a, o_b), block(o_a, c_b), block(c_a, o_b), block(c_a, c_b)]
    return ContextShares(*(_divide(v, total) for v in values), total=total, kind=kind)


def _heatmap(relevance: torch.Tensor, mask: torch.Tensor):
    relevance = relevance.detach().to(torch.float64)
    mask = mask.to(torch.float64)
    if relevance.dim() == mask.dim() + 1:  # channel axis: sum it (heatmap per position)
        relevance = relevance.sum(dim=1)
    if relevance.shape != mask.shape:
        raise ValueError(f'relevance of shape {tuple(relevance.shape)} does not fit the mask {tuple(mask.shape)}; '
                         'expected (B, C, *spatial) or (B, *spatial) relevance for (B, *spatial) masks')
    return relevance.reshape(relevance.shape[0], -1), mask.reshape(mask.shape[0], -1)


def relevance_mass_accuracy(relevance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Relevance mass accuracy (Arras et al. 2022): positive relevance inside the mask over all positive relevance.

    Parameters
    ----------
    relevance : torch.Tensor
        Heatmaps ``(B, C, *spatial)`` (channels are summed first) or ``(B, *spatial)``, or patch relevance
        ``(B, P)`` with patch masks ``(B, P)``.
    mask : torch.Tensor
        Ground-truth masks ``(B, *spatial)``, bool (or object fractions in [0, 1]).

    Returns
    -------
    torch.Tensor
        ``(B,)`` float64, NaN where there is no positive relevance.
    """
    heat, weight = _heatmap(relevance, mask)
    positive = heat.clamp(min=0)
    return _divide((positive * weight).sum(dim=1), positive.sum(dim=1))


def marginal_context_share(relevance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of positive relevance on the context, ``1 - relevance_mass_accuracy`` (``(B,)``)."""
    return 1.0 - relevance_mass_accuracy(relevance, mask)


def context_analysis(result, mask_a: torch.Tensor, mask_b: torch.Tensor, kinds=KINDS) -> dict:
    """All per-pair context measures of a :class:`~zennit_bilrp.core.results.BiLRPResult`, as ``(B,)`` float64 tensors.

    Keys: ``{block}_{kind}``, ``context_{kind}`` and ``total_{kind}`` for every kind, ``similarity``, ``delta``
    (conservation gap), and ``marginal_context_a`` / ``marginal_context_b`` (1 - RMA of the exact input-resolution
    marginals when the result has them, else of the pooled marginals with patch fractions of the masks).

    Parameters
    ----------
    result : BiLRPResult
        Output of :meth:`~zennit_bilrp.core.engine.BiLRP.explain`.
    mask_a, mask_b : torch.Tensor
        Per-pixel (or per-patch) object masks of the two images, ``(B, H, W)``.
    kinds : sequence of str
        Share variants to compute.
    """
    out = {}
    for kind in kinds:
        out.update(pair_shares(result.relevance, mask_a, mask_b, kind, result.grid_a, result.grid_b).as_dict())
    out['similarity'] = result.similarity.detach().to(torch.float64)
    out['delta'] = result.delta.detach().to(torch.float64)
    for side, marginal, mask, grid, pooled in (
            ('a', result.marginal_a, mask_a, result.grid_a, result.marginal_patches_a),
            ('b', result.marginal_b, mask_b, result.grid_b, result.marginal_patches_b)):
        if marginal is not None and marginal.shape[0] == mask.shape[0] and marginal.dim() >= mask.dim() and \
                tuple(marginal.shape[-(mask.dim() - 1):]) == tuple(mask.shape[1:]):
            out[f'marginal_context_{side}'] = marginal_context_share(marginal, mask)
        else:
            out[f'marginal_context_{side}'] = marginal_context_share(pooled, patch_fraction(mask, grid))
    return out
