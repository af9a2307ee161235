"""Pooling of input relevance to patches.

Relevance maps have the shape of the input, ``(..., C, H, W)`` for images, ``(..., C, L)`` for sequences or
``(..., D)`` for vectors. :class:`Pooling` sums over channels (optional) and then over non-overlapping patches,
giving ``(..., P)`` with ``P`` the number of patches. Pooling only sums, so the total relevance is preserved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

__all__ = ['Pooling', 'PatchGrid', 'SAME']

#: the pooling argument that means "the same pooling as the other (or stored, or configured) one"
SAME = 'same'

_NOTHING = object()

IntOrPair = Union[int, Sequence[int]]


def _check_divides(spatial: tuple, sizes: tuple, what: str, input_shape: tuple) -> None:
    for size, part in zip(spatial, sizes):
        if size % part:
            raise ValueError(f'Pooling: {what} {tuple(sizes)} does not divide the spatial size {tuple(spatial)} '
                             f'of input shape {input_shape}')


@dataclass(frozen=True)
class PatchGrid:
    """The geometry of a pooling applied to one input shape.

    Attributes
    ----------
    input_shape : tuple of int
        Shape of one input sample, without the batch dimension.
    grid : tuple of int
        Number of patches along each spatial axis (empty for unpooled channel-less vectors).
    patch : tuple of int
        Patch extent along each spatial axis.
    channels_summed : bool
        Whether the first axis of ``input_shape`` was summed over.
    """
    input_shape: tuple
    grid: tuple
    patch: tuple
    channels_summed: bool

    @property
    def num_patches(self) -> int:
        """Total number of patches ``P``."""
        return int(math.prod(self.grid)) if self.grid else 1

    def patch_index(self, *coords: int) -> int:
        """Flat index of the patch at grid coordinates ``coords``."""
        index = 0
        for coord, size in zip(coords, self.grid):
            index = index * size + coord
        return index

    def patch_coords(self, index: Union[int, torch.Tensor]):
        """Grid coordinates (row, col, ...) of flat patch ``index`` (works element-wise on tensors)."""
        coords = []
        for size in reversed(self.grid):
            coords.append(index % size)
            index = index // size
        return tuple(reversed(coords))

    def patch_centers(self) -> torch.Tensor:
        """Centers of all patches in input coordinates, shape ``(P, n_spatial)``, in (row, col) order."""
        axes = [torch.arange(g, dtype=torch.float64) * p + (p - 1) / 2 for g, p in zip(self.grid, self.patch)]
        if not axes:
            return torch.zeros(1, 0, dtype=torch.float64)
        mesh = torch.meshgrid(*axes, indexing='ij')
        return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


@dataclass(frozen=True)
class Pooling:
    """Sum relevance over channels and non-overlapping patches.

    Give either ``patch`` (patch extent, must divide the spatial size) or ``grid`` (number of patches per axis,
    must divide the spatial size), or neither for per-position resolution.

    Parameters
    ----------
    patch : int or tuple of int, optional
        Patch size along each spatial axis (an int applies to all axes).
    grid : int or tuple of int, optional
        Number of patches along each spatial axis.
    sum_channels : bool
        Sum over the channel axis (the first non-batch axis) of inputs with more than one axis. Default True.

    Examples
    --------
    >>> pool = Pooling(patch=8)
    >>> pool(torch.ones(2, 3, 32, 32)).shape
    torch.Size([2, 16])
    """
    patch: Optional[IntOrPair] = None
    grid: Optional[IntOrPair] = None
    sum_channels: bool = True

    def __post_init__(self):
        if self.patch is not None and self.grid is not None:
            raise ValueError('Pooling: give either `patch` or `grid`, not both')
        for name in ('patch', 'grid'):
            value = getattr(self, name)
            if value is None:
                continue
            values = (value,) if isinstance(value, int) else tuple(value)
            if not values or any((not isinstance(v, int)) or v <= 0 for v in values):
                raise ValueError(f'Pooling: `{name}` must be a positive int or a tuple of positive ints, got {value!r}')

    @classmethod
    def ensure(cls, value, same=_NOTHING) -> Pooling:
        """Turn ``None`` (no pooling), an int (patch size) or a :class:`Pooling` into a :class:`Pooling`.

        Parameters
        ----------
        value : None, int, tuple, Pooling or 'same'
            The pooling; :data:`SAME` (``'same'``) stands for ``same``.
        same : None, int, tuple or Pooling, optional
            What :data:`SAME` resolves to (``None``: no pooling); when not given, :data:`SAME` is refused.
        """
        if isinstance(value, str):
            if value != SAME:
                raise ValueError(f"unknown pooling {value!r}: use None, an int patch size, Pooling(...) or '{SAME}'")
            if same is _NOTHING:
                raise ValueError(f"pooling '{SAME}' has nothing to refer to here; give a patch size or Pooling(...)")
            return cls.ensure(same)
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, (int, tuple, list)):
            return cls(patch=value)
        raise TypeError(f'cannot interpret {value!r} as a Pooling (use an int patch size or Pooling(...))')

    def _axes(self, value, name: str, n_axes: int, spatial: tuple, channels_summed: bool, keep_channel: bool,
              channel_value: int) -> tuple:
        """Per-axis sizes of ``value``; an int leaves a kept channel axis at ``channel_value``."""
        if keep_channel and isinstance(value, int):
            return (channel_value,) + (value,) * (n_axes - 1)
        return self._expand(value, n_axes, name, spatial, channels_summed)

    def resolve(self, input_shape: Sequence[int]) -> PatchGrid:
        """Compute the patch grid for one input sample of shape ``input_shape`` (no batch axis).

        Raises
        ------
        ValueError
            If the patch size or grid does not divide the spatial size.
        """
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) == 0:
            raise ValueError('Pooling: inputs must have at least one feature axis besides the batch axis')
        channels_summed = self.sum_channels and len(input_shape) > 1
        spatial = input_shape[1:] if channels_summed else input_shape
        n_axes = len(spatial)
        # an int patch/grid applies to the axes after the channel axis; a kept channel axis is not pooled
        keep_channel = not channels_summed and len(input_shape) > 1
        if self.patch is None and self.grid is None:
            patch = (1,) * n_axes
        elif self.patch is not None:
            patch = self._axes(self.patch, 'patch', n_axes, spatial, channels_summed, keep_channel, 1)
        else:
            grid = self._axes(self.grid, 'grid', n_axes, spatial, channels_summed, keep_channel, spatial[0])
            _check_divides(spatial, grid, 'grid', input_shape)
            patch = tuple(size // g for size, g in zip(spatial, grid))
        _check_divides(spatial, patch, 'patch size', input_shape)
        grid = tuple(size // p for size, p in zip(spatial, patch))
        return PatchGrid(input_shape=input_shape, grid=grid, patch=tuple(patch), channels_summed=channels_summed)

    @staticmethod
    def _expand(value, n_axes, name, spatial, channels_summed):
        values = (value,) * n_axes if isinstance(value, int) else tuple(value)
        if len(values) != n_axes:
            raise ValueError(
                f'Pooling: `{name}` {value!r} has {len(values)} entries but the input has {n_axes} spatial axes '
                f'{tuple(spatial)} (channels summed: {channels_summed})'
            )
        return values

    def __call__(self, relevance: torch.Tensor, n_sample_axes: Optional[int] = None) -> torch.Tensor:
        """Pool ``relevance`` of shape ``(*lead, *input_shape)`` to ``(*lead, P)``.

        Parameters
        ----------
        relevance : torch.Tensor
            Relevance with any number of leading axes followed by the sample axes.
        n_sample_axes : int, optional
            Number of trailing axes forming one sample. Default: all axes but the first.
        """
        if n_sample_axes is None:
            n_sample_axes = relevance.dim() - 1
        lead = relevance.shape[:relevance.dim() - n_sample_axes]
        grid = self.resolve(relevance.shape[len(lead):])
        return self.apply(relevance, grid, len(lead))

    @staticmethod
    def apply(relevance: torch.Tensor, grid: PatchGrid, n_lead: int) -> torch.Tensor:
        """Pool with a precomputed :class:`PatchGrid` (``n_lead`` leading axes are kept)."""
        lead = relevance.shape[:n_lead]
        if grid.channels_summed:
            relevance = relevance.sum(dim=n_lead)
        if all(p == 1 for p in grid.patch):
            return relevance.reshape(*lead, -1)
        shape = list(lead)
        for g, p in zip(grid.grid, grid.patch):
            shape += [g, p]
        relevance = relevance.reshape(shape)
        patch_axes = tuple(n_lead + 2 * i + 1 for i in range(len(grid.grid)))
        return relevance.sum(dim=patch_axes).reshape(*lead, -1)
