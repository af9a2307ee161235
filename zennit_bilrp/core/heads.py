r"""Embedding heads: how a model's output becomes the embedding, and how relevance flows back through it.

A head maps the model output :math:`A` (e.g. a feature map ``(N, C, H, W)``) to the embedding
:math:`\phi` of shape ``(N, h)``. BiLRP seeds the output relevance :math:`\phi \odot s` (``s`` a multiplier per
unit, e.g. a one-hot vector) and the head turns it into relevance on :math:`A`:

- ``'none'``: :math:`\phi = A` (the model already returns ``(N, h)``).
- ``'flatten'``: :math:`\phi = \mathrm{vec}(A)`.
- ``'avg'``: :math:`\phi_c = \frac{1}{HW}\sum_{s} A_{c,s}`, relevance :math:`R_{c,s} = s_c A_{c,s} / (HW)`
  (the proportional rule; exact and division-free).
- ``'sum'``: :math:`\phi_c = \sum_s A_{c,s}`, relevance :math:`R_{c,s} = s_c A_{c,s}`.
- ``'max'``: :math:`\phi_c = \max_s A_{c,s}`, relevance goes to the arg-max position (winner takes all).

All of them conserve: :math:`\sum_s R_{c,s} = s_c \phi_c`.
"""
from __future__ import annotations

import torch

__all__ = ['Head', 'get_head', 'HEADS']


class Head:
    """Base class of embedding heads. Subclasses implement :meth:`embed` and :meth:`contribution`."""

    name = 'base'

    def embed(self, output: torch.Tensor) -> torch.Tensor:
        """Embedding ``(N, h)`` from the model output."""
        raise NotImplementedError

    def contribution(self, output: torch.Tensor) -> torch.Tensor:
        """Tensor ``Q`` shaped like the output with ``phi_c = sum over c's positions of Q``."""
        raise NotImplementedError

    def expand(self, multipliers: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Broadcast multipliers ``(K, N, h)`` to ``(K, N, *output.shape[1:])``."""
        extra = output.dim() - 2
        return multipliers.reshape(*multipliers.shape, *([1] * extra))

    def output_relevance(self, output: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
        """Relevance on the model output for embedding relevance ``phi * multipliers``.

        Parameters
        ----------
        output : torch.Tensor
            Model output ``(N, ...)`` (detached values are used).
        multipliers : torch.Tensor
            Shape ``(K, N, h)``.

        Returns
        -------
        torch.Tensor
            Shape ``(K, N, *output.shape[1:])``.
        """
        return self.contribution(output.detach())[None] * self.expand(multipliers, output)

    def check(self, output: torch.Tensor) -> None:
        """Raise a ``ValueError`` if the model output does not fit this head."""

    def __repr__(self) -> str:
        return f"get_head('{self.name}')"


class NoHead(Head):
    """The model output already is the embedding ``(N, h)``."""
    name = 'none'

    def check(self, output):
        if output.dim() != 2:
            raise ValueError(
                f'the model output has shape {tuple(output.shape)}, but the embedding must be 2-D (N, h); '
                "pass head='avg', 'sum' or 'max' to pool a feature map, or head='flatten'"
            )

    def embed(self, output):
        return output

    def contribution(self, output):
        return output


class FlattenHead(Head):
    """The embedding is the flattened model output."""
    name = 'flatten'

    def check(self, output):
        if output.dim() < 2:
            raise ValueError(f'the model output has shape {tuple(output.shape)}; expected (N, ...)')

    def embed(self, output):
        return output.reshape(output.shape[0], -1)

    def contribution(self, output):
        return output

    def expand(self, multipliers, output):
        return multipliers.reshape(*multipliers.shape[:2], *output.shape[1:])


class _SpatialHead(Head):
    def check(self, output):
        if output.dim() < 3:
            raise ValueError(
                f"head '{self.name}' pools spatial axes, but the model output has shape {tuple(output.shape)}; "
                "use head='none' for (N, h) outputs"
            )


class AvgHead(_SpatialHead):
    """Global average pooling over all axes after the channel axis."""
    name = 'avg'

    def embed(self, output):
        return output.flatten(2).mean(dim=2)

    def contribution(self, output):
        return output / output[0, 0].numel()


class SumHead(_SpatialHead):
    """Global sum pooling over all axes after the channel axis."""
    name = 'sum'

    def embed(self, output):
        return output.flatten(2).sum(dim=2)

    def contribution(self, output):
        return output


class MaxHead(_SpatialHead):
    """Global max pooling over all axes after the channel axis (relevance to the arg-max, winner takes all)."""
    name = 'max'

    def embed(self, output):
        return output.flatten(2).max(dim=2).values

    def contribution(self, output):
        flat = output.flatten(2)
        index = flat.argmax(dim=2, keepdim=True)
        winner = torch.zeros_like(flat).scatter_(2, index, flat.gather(2, index))
        return winner.reshape(output.shape)


HEADS = {cls.name: cls for cls in (NoHead, FlattenHead, AvgHead, SumHead, MaxHead)}


def get_head(head) -> Head:
    """Resolve a head name (``'none'``, ``'flatten'``, ``'avg'``, ``'sum'``, ``'max'``) or a :class:`Head`."""
    if isinstance(head, Head):
        return head
    if head is None:
        return NoHead()
    try:
        return HEADS[head]()
    except (KeyError, TypeError):
        raise ValueError(f'unknown head {head!r}; choose one of {sorted(HEADS)} or pass a Head instance') from None
