r"""Synthetic image pairs with exact ground truth: one object pasted on a textured background.

Every image shows one *object* (a filled shape in a class color, with fine shading) on a *background* texture
(stripes, checkerboard, dots, ...). The boolean object mask is exact: a pixel belongs to the object iff the
object was painted there. A *pair* shows the **same** object (same shape, color, size and shading) in both
images at independent positions, on backgrounds chosen by ``background``:

- ``'different'``: different background classes (only the object matches; the default),
- ``'same'``: the same background class, drawn afresh (new colors, phase and frequency),
- ``'random'``: background classes drawn independently (they may coincide).

So the matching regions of a pair are known (``mask_a`` and ``mask_b``), and the labels ``object_*`` and
``background_*`` allow training an encoder keyed on the object and one keyed on the context
(:mod:`zennit_bilrp.analysis.study` and ``examples/alignment_study.py``). Everything is drawn from
``numpy.random.default_rng(seed)``, so the same arguments always give the same tensors.

Examples
--------
>>> pairs = make_pairs(8, size=32, seed=0)
>>> pairs.x_a.shape, pairs.mask_a.dtype
(torch.Size([8, 3, 32, 32]), torch.bool)
>>> x_a, x_b, mask_a, mask_b = pairs[0]          # a torch Dataset of pairs
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

__all__ = ['OBJECTS', 'BACKGROUNDS', 'SyntheticImages', 'SyntheticPairs', 'make_images', 'make_pairs',
           'object_mask', 'background_texture', 'ENCODERS', 'build_synthetic_encoder', 'load_synthetic_encoder',
           'ENCODER_WEIGHTS']

#: the shipped encoders trained on :func:`make_images` (``examples/train_synthetic_encoders.py``): which labels
#: each was trained to classify from its pooled features
ENCODERS = {
    'object': 'object class only (keys on the object)',
    'context': 'background class only (keys on the context)',
    'mixed': 'object class plus, with weight 0.3, background class (object first, some context)',
}
#: file of the shipped encoder weights
ENCODER_WEIGHTS = os.path.join(os.path.dirname(__file__), 'data', 'synthetic_encoders.pt')

#: object classes (shapes), in label order
OBJECTS = ('disk', 'square', 'triangle', 'cross', 'ring', 'diamond')
#: background classes (textures), in label order
BACKGROUNDS = ('hstripes', 'vstripes', 'checker', 'dots', 'diagonal', 'blobs')

# class colors of the objects (RGB in [0, 1]); jittered per object instance
_OBJECT_COLORS = np.array([
    [0.90, 0.15, 0.15],
    [0.15, 0.35, 0.95],
    [0.95, 0.85, 0.10],
    [0.10, 0.80, 0.25],
    [0.85, 0.20, 0.85],
    [0.10, 0.85, 0.90],
])


def object_mask(kind: int, size: int, radius: float, center: tuple[float, float]) -> np.ndarray:
    """Boolean mask ``(size, size)`` of object class ``kind`` with half-extent ``radius`` at ``center`` (row, col).

    Pixel ``(i, j)`` is tested at its center ``(i + 0.5, j + 0.5)``.
    """
    if not 0 <= kind < len(OBJECTS):
        raise ValueError(f'object class must be in 0..{len(OBJECTS) - 1}, got {kind}')
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = (rows - center[0]) / radius, (cols - center[1]) / radius
    name = OBJECTS[kind]
    if name == 'disk':
        return dy ** 2 + dx ** 2 <= 1.0
    if name == 'square':
        return (np.abs(dy) <= 0.8) & (np.abs(dx) <= 0.8)
    if name == 'triangle':  # apex up, base at dy = 0.8
        return (dy <= 0.8) & (dy >= -1.0) & (np.abs(dx) <= (dy + 1.0) / 1.8 * 0.95)
    if name == 'cross':
        return ((np.abs(dy) <= 0.95) & (np.abs(dx) <= 0.33)) | ((np.abs(dx) <= 0.95) & (np.abs(dy) <= 0.33))
    if name == 'ring':
        r2 = dy ** 2 + dx ** 2
        return (r2 <= 1.0) & (r2 >= 0.45 ** 2)
    return np.abs(dy) + np.abs(dx) <= 1.0  # diamond


def background_texture(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Background of class ``kind`` as an ``(3, size, size)`` float array in [0, 1].

    Two random colors are mixed by a class-specific pattern with random phase and period, plus mild noise.
    """
    if not 0 <= kind < len(BACKGROUNDS):
        raise ValueError(f'background class must be in 0..{len(BACKGROUNDS) - 1}, got {kind}')
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(4.0, 7.0) * size / 32
    phase = rng.uniform(0.0, 2 * np.pi)
    omega = 2 * np.pi / period
    name = BACKGROUNDS[kind]
    if name == 'hstripes':
        pattern = np.sin(omega * rows + phase) > 0
    elif name == 'vstripes':
        pattern = np.sin(omega * cols + phase) > 0
    elif name == 'checker':
        pattern = (np.sin(omega * rows + phase) > 0) ^ (np.sin(omega * cols + phase) > 0)
    elif name == 'dots':
        pattern = (np.sin(omega * rows + phase) + np.sin(omega * cols + phase)) > 1.2
    elif name == 'diagonal':
        pattern = np.sin(omega * (rows + cols) / np.sqrt(2) + phase) > 0
    else:  # blobs: low-frequency random field
        coarse = rng.standard_normal((5, 5))
        index = np.clip((np.arange(size) * 4.0 / (size - 1)), 0, 4)
        lo = np.floor(index).astype(int)
        hi = np.minimum(lo + 1, 4)
        w = index - lo
        along = coarse[lo] * (1 - w)[:, None] + coarse[hi] * w[:, None]
        field = along[:, lo] * (1 - w)[None] + along[:, hi] * w[None]
        pattern = field > np.median(field)
    colors = rng.uniform(0.15, 0.85, size=(2, 3))
    while np.abs(colors[0] - colors[1]).sum() < 0.6:  # keep the pattern visible
        colors = rng.uniform(0.15, 0.85, size=(2, 3))
    image = np.where(pattern[None], colors[0][:, None, None], colors[1][:, None, None])
    image = image + rng.normal(0.0, 0.03, size=image.shape)
    return np.clip(image, 0.0, 1.0)


@dataclass
class _Instance:
    kind: int
    radius: float
    color: np.ndarray
    shading: np.ndarray  # (3, e, e) multiplicative shading patch, shared by both images of a pair
    offset: np.ndarray  # sub-pixel part of the center, shared: the object is an exact integer translate


def _draw_instance(kind: int, size: int, rng: np.random.Generator, radius_range) -> _Instance:
    radius = rng.uniform(*radius_range) * size / 32
    color = np.clip(_OBJECT_COLORS[kind] + rng.normal(0.0, 0.05, 3), 0.0, 1.0)
    extent = int(np.ceil(2 * radius)) + 2
    shading = 1.0 + rng.normal(0.0, 0.06, size=(3, extent, extent))
    return _Instance(kind, radius, color, shading, rng.uniform(0.0, 1.0, 2))


def _paste(instance: _Instance, background: np.ndarray, rng: np.random.Generator):
    size = background.shape[-1]
    low = int(np.ceil(instance.radius))
    high = int(np.floor(size - instance.radius - 1.0))
    center = tuple(int(rng.integers(low, high + 1)) + float(f) for f in instance.offset)
    mask = object_mask(instance.kind, size, instance.radius, center)
    extent = instance.shading.shape[-1]
    top, left = int(np.floor(center[0] - extent / 2)), int(np.floor(center[1] - extent / 2))
    shading = np.ones((3, size, size))
    # place the shading patch relative to the object center, so that both images of a pair shade alike
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + extent, size), min(left + extent, size)
    shading[:, r0:r1, c0:c1] = instance.shading[:, r0 - top:r1 - top, c0 - left:c1 - left]
    painted = np.clip(instance.color[:, None, None] * shading, 0.0, 1.0)
    image = np.where(mask[None], painted, background)
    return image, mask


def _check(n: int, size: int, n_objects: int, n_backgrounds: int, radius_range) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f'n must be a positive int, got {n!r}')
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f'size must be an int >= 16, got {size!r}')
    if not 1 <= n_objects <= len(OBJECTS):
        raise ValueError(f'n_objects must be in 1..{len(OBJECTS)}, got {n_objects}')
    if not 1 <= n_backgrounds <= len(BACKGROUNDS):
        raise ValueError(f'n_backgrounds must be in 1..{len(BACKGROUNDS)}, got {n_backgrounds}')
    low, high = radius_range
    if not 2.0 <= low <= high <= 12.0:
        raise ValueError(f'radius_range must satisfy 2 <= low <= high <= 12 (pixels at size 32), got {radius_range}')


class SyntheticImages(torch.utils.data.Dataset):
    """Single images with object masks and labels; items are ``(x, mask, object, background)``.

    Attributes
    ----------
    x : torch.Tensor
        Images ``(N, 3, S, S)``, float32 in [0, 1].
    mask : torch.Tensor
        Object masks ``(N, S, S)``, bool.
    object, background : torch.Tensor
        Object class and background class, ``(N,)`` int64 (indices into :data:`OBJECTS`, :data:`BACKGROUNDS`).
    """

    def __init__(self, x, mask, object, background):
        self.x, self.mask, self.object, self.background = x, mask, object, background

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index):
        return self.x[index], self.mask[index], self.object[index], self.background[index]


class SyntheticPairs(torch.utils.data.Dataset):
    """Pairs showing the same object; items are ``(x_a, x_b, mask_a, mask_b)``.

    Attributes
    ----------
    x_a, x_b : torch.Tensor
        Images ``(N, 3, S, S)``, float32 in [0, 1].
    mask_a, mask_b : torch.Tensor
        Exact object masks ``(N, S, S)``, bool: the object pixels of ``x_a`` and ``x_b`` (the matching regions).
    object : torch.Tensor
        Object class of each pair ``(N,)`` (the same in both images).
    background_a, background_b : torch.Tensor
        Background class of each image ``(N,)``.
    """

    def __init__(self, x_a, x_b, mask_a, mask_b, object, background_a, background_b):
        self.x_a, self.x_b, self.mask_a, self.mask_b = x_a, x_b, mask_a, mask_b
        self.object, self.background_a, self.background_b = object, background_a, background_b

    def __len__(self) -> int:
        return self.x_a.shape[0]

    def __getitem__(self, index):
        return self.x_a[index], self.x_b[index], self.mask_a[index], self.mask_b[index]

    def to(self, dtype: torch.dtype) -> SyntheticPairs:
        """A copy with images cast to ``dtype`` (masks and labels unchanged)."""
        return SyntheticPairs(self.x_a.to(dtype), self.x_b.to(dtype), self.mask_a, self.mask_b, self.object,
                              self.background_a, self.background_b)


def make_images(n: int, size: int = 32, seed: int = 0, n_objects: int = 4, n_backgrounds: int = 4,
                radius_range=(5.0, 8.0)) -> SyntheticImages:
    """Draw ``n`` images, each one object on one background, with independent uniform classes.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Side length ``S`` in pixels (>= 16).
    seed : int
        Seed of ``numpy.random.default_rng``; equal arguments give equal tensors.
    n_objects, n_backgrounds : int
        Number of object and background classes used (the first ones of :data:`OBJECTS`, :data:`BACKGROUNDS`).
    radius_range : tuple of float
        Range of the object half-extent in pixels at ``size = 32`` (scaled with ``size``).

    Returns
    -------
    SyntheticImages
    """
    _check(n, size, n_objects, n_backgrounds, radius_range)
    rng = np.random.default_rng(seed)
    xs, masks = np.empty((n, 3, size, size)), np.empty((n, size, size), dtype=bool)
    objects = rng.integers(0, n_objects, n)
    backgrounds = rng.integers(0, n_backgrounds, n)
    for i in range(n):
        instance = _draw_instance(int(objects[i]), size, rng, radius_range)
        xs[i], masks[i] = _paste(instance, background_texture(int(backgrounds[i]), size, rng), rng)
    return SyntheticImages(torch.tensor(xs, dtype=torch.float32), torch.from_numpy(masks),
                           torch.from_numpy(objects).long(), torch.from_numpy(backgrounds).long())


def make_pairs(n: int, size: int = 32, seed: int = 0, n_objects: int = 4, n_backgrounds: int = 4,
               background: str = 'different', radius_range=(5.0, 8.0),
               object_classes: Optional[np.ndarray] = None) -> SyntheticPairs:
    """Draw ``n`` pairs showing the same object instance at independent positions.

    Parameters
    ----------
    n, size, seed, n_objects, n_backgrounds, radius_range
        As in :func:`make_images`.
    background : {'different', 'same', 'random'}
        Background classes of the two images: always different (needs ``n_backgrounds >= 2``), the same class
        (independently drawn texture), or independent.
    object_classes : array of int, optional
        Object class of each pair (default uniform).

    Returns
    -------
    SyntheticPairs
        Images float32 in [0, 1], exact bool masks, and the labels.
    """
    _check(n, size, n_objects, n_backgrounds, radius_range)
    if background not in ('different', 'same', 'random'):
        raise ValueError(f"background must be 'different', 'same' or 'random', got {background!r}")
    if background == 'different' and n_backgrounds < 2:
        raise ValueError("background='different' needs n_backgrounds >= 2")
    rng = np.random.default_rng(seed)
    if object_classes is None:
        objects = rng.integers(0, n_objects, n)
    else:
        objects = np.asarray(object_classes, dtype=np.int64)
        if objects.shape != (n,) or objects.min() < 0 or objects.max() >= n_objects:
            raise ValueError(f'object_classes must have shape ({n},) with values in 0..{n_objects - 1}')
    bg_a = rng.integers(0, n_backgrounds, n)
    if background == 'same':
        bg_b = bg_a.copy()
    elif background == 'different':
        bg_b = (bg_a + rng.integers(1, n_backgrounds, n)) % n_backgrounds
    else:
        bg_b = rng.integers(0, n_backgrounds, n)
    x = np.empty((2, n, 3, size, size))
    masks = np.empty((2, n, size, size), dtype=bool)
    for i in range(n):
        instance = _draw_instance(int(objects[i]), size, rng, radius_range)
        for side, bg in enumerate((bg_a[i], bg_b[i])):
            x[side, i], masks[side, i] = _paste(instance, background_texture(int(bg), size, rng), rng)
    x = torch.tensor(x, dtype=torch.float32)
    masks = torch.from_numpy(masks)
    return SyntheticPairs(x[0], x[1], masks[0], masks[1], torch.from_numpy(objects).long(),
                          torch.from_numpy(bg_a).long(), torch.from_numpy(bg_b).long())


def build_synthetic_encoder() -> torch.nn.Module:
    """The architecture of the synthetic-benchmark encoders (random init): a
    :class:`~zennit_bilrp.models.small_resnet.SmallResNet`
    with widths (8, 16, 32) whose embedding is the 32-d global-average-pooled feature vector (non-negative)."""
    from .small_resnet import SmallResNet

    return SmallResNet(widths=(8, 16, 32))


def load_synthetic_encoder(name: str, path: Optional[str] = None, dtype: torch.dtype = torch.float32
                           ) -> torch.nn.Module:
    """Load one of the shipped encoders (:data:`ENCODERS`) in eval mode.

    Parameters
    ----------
    name : {'object', 'context', 'mixed'}
        Which encoder.
    path : str, optional
        Weights file (default :data:`ENCODER_WEIGHTS`, written by ``examples/train_synthetic_encoders.py``).
    dtype : torch.dtype
        Parameter dtype.
    """
    if name not in ENCODERS:
        raise ValueError(f'unknown synthetic encoder {name!r}; choose one of {sorted(ENCODERS)}')
    path = ENCODER_WEIGHTS if path is None else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no encoder weights at {path!r}; run examples/train_synthetic_encoders.py')
    bundle = torch.load(path, map_location='cpu', weights_only=True)
    if name not in bundle:
        raise KeyError(f'{path} holds encoders {sorted(bundle)}, not {name!r}')
    model = build_synthetic_encoder()
    model.load_state_dict({key: value.float() for key, value in bundle[name].items()})
    return model.to(dtype).eval()
