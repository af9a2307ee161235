r"""Where the LRP passes start and how their results are pooled: seed maps and linear pools.

Both exact paths need the output relevance as a *linear* map of per-sample multipliers :math:`r` (``(K, N, m)``):
the unit-major path seeds one pass per row :math:`r_k`, the patch-major path differentiates through it. A
:class:`SeedMap` is such a map together with the tensor it seeds:

- :class:`HeadSeeds`: the engine's :math:`\phi \odot r` at the model output, through the head (``m = h``);
- :class:`NeuronSeeds`: the relevance of a layer's neurons masked by :math:`r` (``m`` = neurons of the layer), the
  seeds of neuron-conditional LRP (:class:`~zennit_bilrp.analysis.neurons.NeuronLRP`).

A :class:`Pool` maps input relevance to ``P`` values per sample, linearly, with any number of leading seed axes:
:class:`GridPool` (patches, :class:`~zennit_bilrp.core.pooling.Pooling`), :class:`FlatPool` (positions, channels
summed or not) and :class:`JointPool` (the two grids of a pair batched in one forward pass).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .heads import Head
from .pooling import PatchGrid, Pooling

__all__ = ['SeedMap', 'HeadSeeds', 'NeuronSeeds', 'Pool', 'GridPool', 'FlatPool', 'JointPool', 'neuron_counts']


class SeedMap:
    """Output relevance as a linear map of multipliers ``(K, N, m)``, and the tensor it seeds."""

    def source(self, forward) -> torch.Tensor:
        """The tensor of ``forward`` the LRP passes start from."""
        raise NotImplementedError

    def __call__(self, forward, multipliers: torch.Tensor) -> torch.Tensor:
        """Seeds ``(K, *source.shape)`` for multipliers ``(K, N, m)``."""
        raise NotImplementedError

    def dims(self, forward) -> int:
        """``m``: multipliers per sample."""
        raise NotImplementedError

    def subset(self, start: int, stop: int) -> SeedMap:
        """The map for samples ``start:stop`` of the batch."""
        raise NotImplementedError


@dataclass(frozen=True)
class HeadSeeds(SeedMap):
    """:math:`\\phi \\odot r` at the model output, through the head."""
    head: Head

    def source(self, forward) -> torch.Tensor:
        return forward.output

    def __call__(self, forward, multipliers: torch.Tensor) -> torch.Tensor:
        return self.head.output_relevance(forward.output, multipliers.to(forward.output))

    def dims(self, forward) -> int:
        return self.head.embed(forward.output.detach()[:1]).shape[1]

    def subset(self, start: int, stop: int) -> HeadSeeds:
        return self


def neuron_counts(shape, kind: str) -> int:
    """Number of neurons of a layer output of per-sample shape ``shape``: channels or all units."""
    if kind == 'channel':
        return int(shape[0]) if len(shape) else 1
    count = 1
    for size in shape:
        count *= int(size)
    return count


@dataclass(frozen=True)
class NeuronSeeds(SeedMap):
    """The relevance ``relevance`` of the neurons of layer ``layer`` masked by the multipliers: channels broadcast
    over positions (``kind='channel'``) or single units (``'unit'``)."""
    layer: str
    relevance: torch.Tensor
    kind: str = 'channel'

    def source(self, forward) -> torch.Tensor:
        return forward.layers[self.layer]

    def __call__(self, forward, multipliers: torch.Tensor) -> torch.Tensor:
        rel = self.relevance
        mult = multipliers.to(rel)
        if self.kind == 'unit':
            return rel[None] * mult.reshape(mult.shape[0], *rel.shape)
        return rel[None] * mult.reshape(*mult.shape, *([1] * (rel.dim() - 2)))

    def dims(self, forward) -> int:
        return neuron_counts(self.relevance.shape[1:], self.kind)

    def subset(self, start: int, stop: int) -> NeuronSeeds:
        return NeuronSeeds(self.layer, self.relevance[start:stop], self.kind)


class Pool:
    """A linear map of input relevance ``(..., N, *input_shape)`` to ``(..., N, P)``: ``lead`` leading axes, the
    last of them the samples (as :meth:`Pooling.apply <zennit_bilrp.core.pooling.Pooling.apply>`); ``start`` is
    the index in the whole batch of the first sample."""

    patches: int

    def __call__(self, relevance: torch.Tensor, lead: int = 1, start: int = 0) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class GridPool(Pool):
    """Sums over the patches of ``grid`` (:meth:`Pooling.apply <zennit_bilrp.core.pooling.Pooling.apply>`)."""
    grid: PatchGrid

    @property
    def patches(self) -> int:
        return self.grid.num_patches

    def __call__(self, relevance: torch.Tensor, lead: int = 1, start: int = 0) -> torch.Tensor:
        return Pooling.apply(relevance, self.grid, lead)


@dataclass(frozen=True)
class FlatPool(Pool):
    """Every position a patch: relevance summed over the channels (``sum_channels``, inputs with more than one
    axis) and flattened; ``patches`` positions."""
    patches: int
    sum_channels: bool = True

    def __call__(self, relevance: torch.Tensor, lead: int = 1, start: int = 0) -> torch.Tensor:
        if self.sum_channels and relevance.dim() > lead + 1:
            relevance = relevance.sum(dim=lead)
        return relevance.flatten(lead)

    @classmethod
    def of(cls, input_shape, sum_channels: bool = True) -> FlatPool:
        """The pool of inputs with sample shape ``input_shape``."""
        shape = tuple(input_shape)[1:] if sum_channels and len(input_shape) > 1 else tuple(input_shape)
        return cls(neuron_counts(shape, 'unit'), sum_channels)


@dataclass(frozen=True)
class JointPool(Pool):
    """Two grids of one batch: samples before ``split`` pooled by ``grid_a``, the others by ``grid_b``, both padded
    with zeros to the larger number of patches (one second-order pass serves both sides of a pair)."""
    grid_a: PatchGrid
    grid_b: PatchGrid
    split: int

    @property
    def patches(self) -> int:
        return max(self.grid_a.num_patches, self.grid_b.num_patches)

    def __call__(self, relevance: torch.Tensor, lead: int = 1, start: int = 0) -> torch.Tensor:
        axis = lead - 1
        cut = min(max(self.split - start, 0), relevance.shape[axis])
        parts = []
        for part, grid in ((relevance.narrow(axis, 0, cut), self.grid_a),
                           (relevance.narrow(axis, cut, relevance.shape[axis] - cut), self.grid_b)):
            if part.shape[axis] == 0:
                continue
            pooled = Pooling.apply(part, grid, lead)
            pad = pooled.new_zeros(*pooled.shape[:-1], self.patches - pooled.shape[-1])
            parts.append(torch.cat([pooled, pad], dim=-1))
        return torch.cat(parts, dim=axis)

