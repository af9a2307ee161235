"""What the figures read, checked and converted: images to ``(H, W, 3)`` arrays in [0, 1] (undoing a
normalization on request, never rescaling), relevance maps to 2-D arrays, a result's pooled relevance of one pair,
and the patch grids of both sides (placed over the images for results pooled on a feature map).

Images are tensors ``(N, C, H, W)``/``(C, H, W)`` or arrays ``(H, W, C)``/``(H, W)`` with values in [0, 1];
inputs normalized with a mean and standard deviation are shown with ``denormalize=`` (values outside [0, 1] are
refused, never silently rescaled).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

__all__ = ['as_image', 'mean_std', 'as_heatmap', 'relevance_matrix', 'upsample_grid', 'patch_grids',
           'check_pooled_sizes', 'RANGE_SLACK']

#: values this far outside [0, 1] (resampling overshoot, rounding) are clipped without a complaint
RANGE_SLACK = 1e-3


def mean_std(denormalize) -> tuple:
    """``(mean, std)`` arrays of 1 or 3 values from ``denormalize``: ``'imagenet'``, a pair ``(mean, std)``, or a
    torchvision transform (e.g. ``weights.transforms()``) with ``mean`` and ``std`` attributes."""
    if isinstance(denormalize, str):
        if denormalize != 'imagenet':
            raise ValueError(f"denormalize must be 'imagenet', (mean, std) or a transform with mean/std, got "
                             f"{denormalize!r}")
        from ...lrp.preset_parts import IMAGENET_MEAN, IMAGENET_STD

        denormalize = (IMAGENET_MEAN, IMAGENET_STD)
    if hasattr(denormalize, 'mean') and hasattr(denormalize, 'std') and not isinstance(denormalize, (tuple, list)):
        denormalize = (denormalize.mean, denormalize.std)
    try:
        mean, std = (np.asarray(v, dtype=np.float64).reshape(-1) for v in denormalize)
    except (TypeError, ValueError):
        raise ValueError(f"denormalize must be 'imagenet', (mean, std) or a transform with mean/std attributes, got "
                         f'{type(denormalize).__name__}') from None
    if mean.size not in (1, 3) or std.size not in (1, 3) or (std <= 0).any():
        raise ValueError(f'denormalize: mean and std need 1 or 3 values and std > 0, got {mean} and {std}')
    return mean, std


def _as_hwc(x, index: int, name: str) -> np.ndarray:
    """Batch entry ``index`` of ``x`` as a float64 array ``(H, W, C)``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double()
        if x.dim() == 4:
            index = 0 if x.shape[0] == 1 else index
            if not 0 <= index < x.shape[0]:
                raise IndexError(f'{name}: index {index} out of range for a batch of {x.shape[0]}')
            x = x[index]
        if x.dim() == 3:
            x = x.permute(1, 2, 0)
        x = x.numpy()
    x = np.asarray(x, dtype=np.float64)
    return x[..., None] if x.ndim == 2 else x


def as_image(x, index: int = 0, name: str = 'image', denormalize=None) -> np.ndarray:
    """An image as a float array ``(H, W, 3)`` in [0, 1] (batch entry ``index`` of 4-D tensors).

    ``denormalize`` undoes a normalisation ``(x - mean) / std`` first (see :func:`mean_std`). Values outside
    [0, 1] (by more than :data:`RANGE_SLACK`) are refused, never silently rescaled."""
    x = _as_hwc(x, index, name)
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise ValueError(f'{name}: expected an image (C, H, W) / (H, W, C) with 1, 3 or 4 channels, got {x.shape}')
    x = x[..., :3]
    if not np.isfinite(x).all():
        raise ValueError(f'{name} contains NaN or inf values')
    if denormalize is not None:
        mean, std = mean_std(denormalize)
        if x.shape[2] != 3 and (mean.size == 3 or std.size == 3):
            raise ValueError(f'{name}: a 3-channel denormalize for a {x.shape[2]}-channel image')
        x = x * std + mean
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    low, high = float(x.min()), float(x.max())
    if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
        hint = ('; it looks ImageNet-normalized: pass denormalize="imagenet" (or weights.transforms())'
                if low < -0.5 and denormalize is None else '')
        raise ValueError(f'{name} has values in [{low:.3g}, {high:.3g}], outside [0, 1]; pass the image in [0, 1] '
                         f'or give denormalize=(mean, std) / a torchvision transform to undo a normalization{hint}')
    return np.clip(x, 0.0, 1.0)


def as_heatmap(x, index: int = 0) -> np.ndarray:
    """A relevance map as a 2-D array: ``(H, W)``, ``(C, H, W)`` or batch entry ``index`` of ``(N, C, H, W)``
    (channels summed)."""
    x = x.detach().cpu().double() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=float))
    if x.dim() == 4:
        x = x[index]
    if x.dim() == 3:
        x = x.sum(0)
    if x.dim() != 2:
        raise ValueError(f'a heatmap must be (H, W), (C, H, W) or (N, C, H, W), got {tuple(x.shape)}')
    return x.numpy()


def relevance_matrix(result, index: int) -> np.ndarray:
    """The pooled pairwise relevance ``(P_a, P_b)`` of pair ``index`` of a result (or of a tensor
    ``(P_a, P_b)``/``(B, P_a, P_b)``), as float64."""
    rel = result.relevance if hasattr(result, 'relevance') else result
    rel = torch.as_tensor(rel).detach().cpu().double()
    if rel.dim() == 3:
        if not 0 <= index < rel.shape[0]:
            raise IndexError(f'index {index} out of range for {rel.shape[0]} explained pairs')
        rel = rel[index]
    if rel.dim() != 2:
        raise ValueError(f'pairwise relevance must be (P_a, P_b) or (B, P_a, P_b), got {tuple(rel.shape)}')
    return rel.numpy()


def upsample_grid(grid, size: Sequence[int]):
    """The patch grid ``grid`` (e.g. of a feature map, from :func:`~zennit_bilrp.scale.approximations.explain_at_layer`)
    placed over an input of spatial ``size = (H, W)``: the same patches, each ``H / g_h x W / g_w`` input pixels.

    Returns
    -------
    PatchGrid
        With ``input_shape = (C, H, W)`` (``C`` of the grid's input) and the patch size in input pixels.
    """
    from ...core.pooling import PatchGrid

    size = tuple(int(v) for v in size)
    if len(grid.grid) != len(size):
        raise ValueError(f'a {len(grid.grid)}-D patch grid cannot be placed over a {len(size)}-D input')
    if any(s % g for s, g in zip(size, grid.grid)):
        raise ValueError(f'the {grid.grid} patch grid does not divide the input size {size}')
    channels = tuple(grid.input_shape[:len(grid.input_shape) - len(size)])
    return PatchGrid(channels + size, tuple(grid.grid), tuple(s // g for s, g in zip(size, grid.grid)),
                     grid.channels_summed)


def patch_grids(result, patch, image_a: np.ndarray, image_b: np.ndarray, upsample: Union[bool, str] = 'auto'):
    """Patch grids of both sides: from the result, or resolved from ``patch`` and the image shapes; with
    ``upsample`` (``'auto'``: for results of :func:`~zennit_bilrp.scale.approximations.explain_at_layer`) grids of
    another resolution are placed over the images (:func:`upsample_grid`)."""
    from ...core.pooling import PatchGrid, Pooling

    if hasattr(result, 'grid_a'):
        grids = result.grid_a, result.grid_b
    elif isinstance(patch, PatchGrid):
        grids = patch, patch
    elif isinstance(patch, (tuple, list)) and len(patch) == 2 and all(isinstance(p, PatchGrid) for p in patch):
        grids = patch[0], patch[1]
    elif patch is None:
        raise ValueError('plotting a relevance tensor needs `patch` (the patch size or PatchGrid(s) used)')
    else:
        pool = Pooling.ensure(patch)
        return (pool.resolve((3,) + image_a.shape[:2]), pool.resolve((3,) + image_b.shape[:2]))
    if upsample == 'auto':
        upsample = 'layer' in getattr(result, 'extras', {})
    if upsample:
        grids = tuple(grid if tuple(grid.input_shape[-2:]) == image.shape[:2] else upsample_grid(grid, image.shape[:2])
                      for grid, image in zip(grids, (image_a, image_b)))
    return grids


def check_pooled_sizes(*sides) -> None:
    """Each ``(image, grid, name)``: the image has the size the relevance was pooled on."""
    for image, grid, name in sides:
        if tuple(image.shape[:2]) != tuple(grid.input_shape[-2:]):
            raise ValueError(f'{name} has size {image.shape[:2]} but the relevance was pooled on inputs of size '
                             f'{tuple(grid.input_shape[-2:])}')
