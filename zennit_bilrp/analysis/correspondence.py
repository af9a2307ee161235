r"""Photo pairs whose dense correspondence is known, and scores of a pooled pairwise relevance against it.

A pairwise explanation of a similarity should link the parts of two images that match. This module builds pairs
where the match of every pixel is known exactly and scores a pooled relevance matrix :math:`R` (``P_a x P_b``
patches) against it:

- :func:`transformed_pair`: two *views* of one photo (:class:`View`: centre, scale, rotation, mirror, i.e. a
  similarity transform from view pixels to photo pixels), rendered by bilinear sampling; the map from a pixel
  :math:`u` of view A to view B is :math:`v = L_B^{-1} L_A u` (:class:`AffineCorrespondence`), invalid where
  :math:`v` leaves B's frame. :data:`TRANSFORMS` lists shifts, mirrors, zooms, rotations and their mixtures.
- :func:`stereo_pair`: scikit-image's stereo pair with its ground-truth disparity
  (:class:`DisparityCorrespondence`: a left pixel :math:`(r, c)` shows the right pixel :math:`(r, c - d)`).
- :func:`correspondence_pairs`: the benchmark's set (the stereo pair and four transforms of each of six photos: 25
  pairs), at any size whose sides are multiples of the patch sizes.
- :func:`patch_truth`: the truth on patch grids. Patch :math:`p` of A *matches* patch :math:`q` of B when the true
  image :math:`T(c_p)` of :math:`p`'s centre falls in :math:`q`; :math:`p` is valid when :math:`T(c_p)` exists and
  lies in B's frame (then exactly one :math:`q` matches it).
- :func:`correspondence_scores`: among the patch pairs with a valid :math:`p`, the top-:math:`k` by relevance:
  *pointing* (share that match), *error* (mean distance in pixels between :math:`T(c_p)` and :math:`q`'s centre),
  and the chance levels of a uniformly random valid pair (pointing :math:`1/P_b`).
- :func:`oracle_relevance`: the truth as a relevance (1 on matching pairs, random tie-breaks), the ceiling.

Pixel coordinates are (row, column) with pixel centres at integers, as
:meth:`~zennit_bilrp.core.pooling.PatchGrid.patch_centers`; a point lies in the patch
:math:`\lfloor (v + 1/2) / s \rfloor` (patch size :math:`s`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..core.pooling import PatchGrid, Pooling

__all__ = [
    'Correspondence', 'AffineCorrespondence', 'DisparityCorrespondence', 'View', 'CorrespondencePair',
    'TRANSFORMS', 'PHOTOS', 'photo', 'transformed_pair', 'stereo_pair', 'correspondence_pairs', 'PatchTruth',
    'patch_truth', 'oracle_relevance', 'correspondence_scores', 'top_valid_pairs',
]

#: the benchmark's transforms of a photo: keyword arguments of :func:`transformed_pair` (shifts are fractions of
#: the view's height and width, angles in degrees, zooms > 1 magnify B); the first four are single transforms, the
#: last four mixtures
TRANSFORMS = {
    'shift': {'shift': (0.15, 0.25)},
    'mirror': {'mirror': True},
    'zoom': {'zoom': 1.5, 'offset': (0.1, -0.15)},
    'rotation': {'angle': 15.0},
    'mirror+shift': {'mirror': True, 'shift': (-0.1, 0.2)},
    'zoom+mirror': {'zoom': 1.33, 'mirror': True, 'offset': (-0.05, 0.1)},
    'rotation+zoom': {'angle': -12.0, 'zoom': 1.25},
    'shift2': {'shift': (-0.2, -0.15)},
}

#: scikit-image photos of the benchmark (all ship with scikit-image; ``motorcycle_left`` is the left stereo image)
PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'camera', 'motorcycle_left')


class Correspondence:
    """The true map from pixels of image A to pixels of image B (``None`` where a pixel has no counterpart)."""

    #: (height, width) of image B
    shape_b: tuple

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """The images in B of points ``(n, 2)`` of A (row, col; float64), ``(n, 2)``; NaN rows where a point has
        no counterpart or its image leaves B's frame."""
        target = self.map(torch.as_tensor(points, dtype=torch.float64))
        height, width = self.shape_b
        inside = ((target[:, 0] >= -0.5) & (target[:, 0] < height - 0.5)
                  & (target[:, 1] >= -0.5) & (target[:, 1] < width - 0.5))
        return torch.where(inside[:, None], target, torch.full_like(target, math.nan))

    def map(self, points: torch.Tensor) -> torch.Tensor:
        """The raw map ``(n, 2) -> (n, 2)`` (NaN where undefined), before the frame check of :meth:`__call__`."""
        raise NotImplementedError

    def dense(self, shape_a: tuple) -> torch.Tensor:
        """The map at every pixel of A, ``(H_a, W_a, 2)`` (NaN where invalid)."""
        rows, cols = torch.meshgrid(torch.arange(shape_a[0], dtype=torch.float64),
                                    torch.arange(shape_a[1], dtype=torch.float64), indexing='ij')
        return self(torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)).reshape(*shape_a, 2)


@dataclass
class AffineCorrespondence(Correspondence):
    r"""An affine map :math:`v = M u + t` from A's pixels to B's (row, col), valid inside B's frame."""
    matrix: torch.Tensor
    offset: torch.Tensor
    shape_b: tuple

    def map(self, points: torch.Tensor) -> torch.Tensor:
        return points @ self.matrix.to(torch.float64).T + self.offset.to(torch.float64)


@dataclass
class DisparityCorrespondence(Correspondence):
    r"""A rectified stereo pair: the left pixel :math:`(r, c)` shows the right pixel :math:`(r, c - d(r, c))`.

    The disparity of a point is that of its nearest pixel (:math:`\lfloor x + 1/2 \rfloor`); NaN disparities
    (occlusions, no ground truth) make the point invalid.
    """
    disparity: torch.Tensor
    shape_b: tuple

    def map(self, points: torch.Tensor) -> torch.Tensor:
        disparity = torch.as_tensor(self.disparity, dtype=torch.float64)
        rows = torch.floor(points[:, 0] + 0.5).long().clamp(0, disparity.shape[0] - 1)
        cols = torch.floor(points[:, 1] + 0.5).long().clamp(0, disparity.shape[1] - 1)
        d = disparity[rows, cols]
        return torch.stack([points[:, 0], points[:, 1] - d], dim=1)


@dataclass(frozen=True)
class View:
    r"""A view of a photo: view pixel :math:`u` shows photo pixel :math:`c + \sigma R_\theta F (u - u_0)`.

    Attributes
    ----------
    center : tuple of float
        Photo coordinates (row, col) of the view's centre :math:`c`.
    scale : float
        Photo pixels per view pixel :math:`\sigma` (below 1: magnified).
    angle : float
        Rotation :math:`\theta` in degrees.
    mirror : bool
        Mirror left-right before rotating (:math:`F = \mathrm{diag}(1, -1)`).
    """
    center: tuple
    scale: float = 1.0
    angle: float = 0.0
    mirror: bool = False

    def linear(self) -> torch.Tensor:
        """The 2 x 2 matrix :math:`\\sigma R_\\theta F`."""
        theta = math.radians(self.angle)
        rotation = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
                                dtype=torch.float64)
        flip = torch.diag(torch.tensor([1.0, -1.0 if self.mirror else 1.0], dtype=torch.float64))
        return self.scale * rotation @ flip

    def affine(self, size: tuple) -> tuple:
        """``(A, t)`` with photo point ``= A u + t`` for view pixels ``u`` of a view of ``size = (H, W)``."""
        linear = self.linear()
        origin = torch.tensor([(size[0] - 1) / 2, (size[1] - 1) / 2], dtype=torch.float64)
        return linear, torch.tensor(self.center, dtype=torch.float64) - linear @ origin

    def render(self, image: torch.Tensor, size: tuple) -> torch.Tensor:
        """The view of ``image`` ``(1, C, H_s, W_s)`` at ``size``, by bilinear sampling, like ``image`` in dtype.

        Raises
        ------
        ValueError
            If a corner of the view leaves the photo.
        """
        height, width = size
        linear, shift = self.affine(size)
        corners = torch.tensor([[0, 0], [0, width - 1], [height - 1, 0], [height - 1, width - 1]],
                               dtype=torch.float64) @ linear.T + shift
        limit = torch.tensor([image.shape[-2] - 1, image.shape[-1] - 1], dtype=torch.float64)
        if bool((corners < -1e-9).any() or (corners > limit + 1e-9).any()):
            raise ValueError(f'{self} leaves the photo of size {tuple(image.shape[-2:])} at view size {tuple(size)}: '
                             f'corners {corners.tolist()}')
        rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                    torch.arange(width, dtype=torch.float64), indexing='ij')
        points = torch.stack([rows, cols], dim=-1) @ linear.T + shift  # (H, W, 2) photo (row, col)
        grid = torch.stack([2 * points[..., 1] / limit[1] - 1, 2 * points[..., 0] / limit[0] - 1], dim=-1)
        out = torch.nn.functional.grid_sample(image.to(torch.float64), grid[None], mode='bilinear',
                                              padding_mode='border', align_corners=True)
        return out.clamp(0, 1).to(image.dtype)


@dataclass
class CorrespondencePair:
    """Two images ``(1, 3, H, W)`` in :math:`[0, 1]` (float32) and the true map from A's pixels to B's.

    Attributes
    ----------
    name : str
        Unique label, e.g. ``'astronaut/zoom'``.
    kind : str
        The transform (a key of :data:`TRANSFORMS`) or ``'stereo'``.
    x_a, x_b : torch.Tensor
        The images.
    correspondence : Correspondence
        The true map.
    info : dict
        How the pair was made (JSON-serialisable).
    """
    name: str
    kind: str
    x_a: torch.Tensor
    x_b: torch.Tensor
    correspondence: Correspondence
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple:
        """(height, width) of the images."""
        return tuple(self.x_a.shape[-2:])


def photo(name: str) -> np.ndarray:
    """A scikit-image photo of :data:`PHOTOS` (or any ``skimage.data`` image) as an array."""
    from skimage import data

    if name == 'motorcycle_left':
        return data.stereo_motorcycle()[0]
    if not hasattr(data, name):
        raise ValueError(f'unknown photo {name!r}; choose one of {PHOTOS} or a skimage.data image')
    return getattr(data, name)()


def transformed_pair(image: Union[np.ndarray, torch.Tensor], size: tuple = (128, 192),
                     shift: tuple = (0.0, 0.0), zoom: float = 1.0, angle: float = 0.0, mirror: bool = False,
                     offset: tuple = (0.0, 0.0), cover: float = 0.7, name: str = 'photo',
                     kind: str = 'transform') -> CorrespondencePair:
    r"""Two views of a photo and their exact correspondence.

    The photo is resized (anti-aliased) so that view A, an upright window of ``size`` at scale 1, covers ``cover``
    of it along its tighter side; A is centred at the photo's centre minus half the ``shift``. View B is centred at
    the photo's centre plus half the ``shift`` plus ``offset`` (fractions of the view's height and width), magnified
    by ``zoom``, rotated by ``angle`` degrees about its centre and mirrored if ``mirror``. So a pure shift moves the
    content of B by ``-shift`` times the size, and B of a pure zoom is a magnified window inside A.

    Parameters
    ----------
    image : numpy.ndarray or torch.Tensor
        The photo, ``(H, W)`` or ``(H, W, 3)`` array or ``(1, 3, H, W)`` tensor in :math:`[0, 1]`.
    size : tuple of int
        (height, width) of both views.

    Raises
    ------
    ValueError
        If a view leaves the photo (choose a smaller transform or ``cover``).
    """
    from ..models.demo import to_tensor

    if not 0 < cover <= 1:
        raise ValueError(f'cover must be in (0, 1], got {cover}')
    if zoom <= 0:
        raise ValueError(f'zoom must be positive, got {zoom}')
    height, width = int(size[0]), int(size[1])
    tensor = isinstance(image, torch.Tensor)
    if tensor and (image.dim() != 4 or image.shape[:2] != (1, 3)):
        raise ValueError(f'a photo tensor must be (1, 3, H, W), got {tuple(image.shape)}')
    source_h, source_w = image.shape[-2:] if tensor else np.asarray(image).shape[:2]
    factor = max(height / (cover * source_h), width / (cover * source_w))
    shape = (max(height, round(source_h * factor)), max(width, round(source_w * factor)))
    if tensor:
        source = torch.nn.functional.interpolate(image.to(torch.float64), size=shape, mode='bilinear',
                                                 antialias=True, align_corners=False).clamp(0, 1)
    else:
        source = to_tensor(image, shape)
    middle = ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    d = (shift[0] * height, shift[1] * width)
    view_a = View((middle[0] - d[0] / 2, middle[1] - d[1] / 2))
    view_b = View((middle[0] + d[0] / 2 + offset[0] * height, middle[1] + d[1] / 2 + offset[1] * width),
                  scale=1.0 / zoom, angle=angle, mirror=mirror)
    x_a, x_b = view_a.render(source, (height, width)), view_b.render(source, (height, width))
    linear_a, shift_a = view_a.affine((height, width))
    linear_b, shift_b = view_b.affine((height, width))
    inverse_b = torch.linalg.inv(linear_b)
    correspondence = AffineCorrespondence(inverse_b @ linear_a, inverse_b @ (shift_a - shift_b), (height, width))
    info = {'shift': list(shift), 'zoom': zoom, 'angle': angle, 'mirror': mirror, 'offset': list(offset),
            'cover': cover, 'photo_shape': list(shape)}
    return CorrespondencePair(name, kind, x_a.float(), x_b.float(), correspondence, info)


def stereo_pair(size: tuple = (128, 192)) -> CorrespondencePair:
    """scikit-image's stereo pair (``stereo_motorcycle``, left vs right, resized to ``size``) and its ground-truth
    disparity (:func:`~zennit_bilrp.models.demo.load_demo_disparity`)."""
    from ..models.demo import load_demo_disparity, load_demo_pair

    left, right = load_demo_pair(tuple(size))
    disparity = load_demo_disparity(tuple(size))
    return CorrespondencePair('motorcycle/stereo', 'stereo', left, right,
                              DisparityCorrespondence(disparity, tuple(size)), {'source': 'stereo_motorcycle'})


def correspondence_pairs(size: tuple = (128, 192), count: Optional[int] = 25, stereo: bool = True,
                         photos: Sequence[str] = PHOTOS) -> list[CorrespondencePair]:
    """The benchmark's pairs: the stereo pair, then four transforms of each photo, round-robin over the photos.

    Photo ``i`` gets the four single transforms of :data:`TRANSFORMS` (shift, mirror, zoom, rotation) when ``i``
    is even and the four mixtures when it is odd, so with the six :data:`PHOTOS` every transform appears three
    times among the 25 pairs. ``count`` keeps the first pairs of that order (``None``: all).
    """
    if count is not None and count < 1:
        raise ValueError(f'count must be positive, got {count}')
    kinds = list(TRANSFORMS)
    pairs = [stereo_pair(size)] if stereo else []
    arrays = {}
    for round_ in range(4):
        for index, name in enumerate(photos):
            if count is not None and len(pairs) >= count:
                return pairs
            kind = kinds[4 * (index % 2) + round_]
            if name not in arrays:
                arrays[name] = photo(name)
            pairs.append(transformed_pair(arrays[name], size, name=f'{name}/{kind}', kind=kind, **TRANSFORMS[kind]))
    return pairs


@dataclass
class PatchTruth:
    """The correspondence on two patch grids.

    Attributes
    ----------
    target : torch.Tensor
        True images in B of A's patch centres, ``(P_a, 2)`` (NaN rows: invalid).
    valid : torch.Tensor
        Whether A's patch has a counterpart inside B, ``(P_a,)`` bool.
    match : torch.Tensor
        ``(P_a, P_b)`` bool: the true image of ``p``'s centre lies in patch ``q`` (one ``q`` per valid ``p``).
    distance : torch.Tensor
        ``(P_a, P_b)`` distance in pixels between the true image of ``p``'s centre and ``q``'s centre (NaN rows:
        invalid).
    grid_a, grid_b : PatchGrid
        The grids.
    """
    target: torch.Tensor
    valid: torch.Tensor
    match: torch.Tensor
    distance: torch.Tensor
    grid_a: PatchGrid
    grid_b: PatchGrid


def _grid(value: Union[int, PatchGrid], size: tuple) -> PatchGrid:
    if isinstance(value, PatchGrid):
        return value
    return Pooling.ensure(value).resolve((3, *size))


def patch_truth(pair: CorrespondencePair, patch: Union[int, PatchGrid],
                patch_b: Union[None, int, PatchGrid] = None) -> PatchTruth:
    """The truth of ``pair`` on patch grids (``patch``: a patch size or a 2-D :class:`PatchGrid`; ``patch_b``
    defaults to ``patch``)."""
    grid_a = _grid(patch, pair.size)
    grid_b = _grid(patch if patch_b is None else patch_b, tuple(pair.x_b.shape[-2:]))
    if len(grid_a.grid) != 2 or len(grid_b.grid) != 2:
        raise ValueError('correspondence scores need 2-D patch grids (channels summed)')
    target = pair.correspondence(grid_a.patch_centers())
    valid = torch.isfinite(target).all(dim=1)
    (ph, pw), (gh, gw) = grid_b.patch, grid_b.grid
    safe = torch.nan_to_num(target)
    rows = torch.floor((safe[:, 0] + 0.5) / ph).long().clamp(0, gh - 1)
    cols = torch.floor((safe[:, 1] + 0.5) / pw).long().clamp(0, gw - 1)
    match = torch.zeros(grid_a.num_patches, grid_b.num_patches, dtype=torch.bool)
    index = torch.nonzero(valid).flatten()
    match[index, rows[index] * gw + cols[index]] = True
    distance = torch.cdist(target, grid_b.patch_centers())
    return PatchTruth(target, valid, match, distance, grid_a, grid_b)


def oracle_relevance(truth: PatchTruth, seed: int = 0) -> torch.Tensor:
    """The truth as a relevance ``(P_a, P_b)``: 1 on matching patch pairs, 0 elsewhere, plus uniform tie-breaks
    below 1e-3 (seeded) so that the matching pairs come in a random order (float64)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(truth.match.shape, generator=gen, dtype=torch.float64)
    return truth.match.double() + 1e-3 * noise


def top_valid_pairs(relevance: torch.Tensor, truth: PatchTruth, k: int = 10) -> tuple:
    """The ``k`` most relevant patch pairs ``(p, q)`` with a valid ``p`` (by value), as index tensors ``(p, q)``.

    Raises
    ------
    ValueError
        If ``relevance`` is not ``(P_a, P_b)`` (or ``(1, P_a, P_b)``) on the truth's grids, or ``k < 1``.
    """
    relevance = torch.as_tensor(relevance)
    if relevance.dim() == 3 and relevance.shape[0] == 1:
        relevance = relevance[0]
    shape = (truth.grid_a.num_patches, truth.grid_b.num_patches)
    if tuple(relevance.shape) != shape:
        raise ValueError(f'relevance of shape {tuple(relevance.shape)} does not fit the patch grids {shape}')
    if k < 1:
        raise ValueError(f'k must be positive, got {k}')
    if not bool(torch.isfinite(relevance).all()):
        raise ValueError('relevance holds NaN or inf')
    scores = relevance.detach().cpu().double().masked_fill(~truth.valid[:, None], -math.inf).flatten()
    count = min(k, int(truth.valid.sum()) * shape[1])
    top = torch.topk(scores, count).indices
    return top // shape[1], top % shape[1]


def correspondence_scores(relevance: torch.Tensor, truth: PatchTruth, k: int = 10) -> dict:
    """Scores of a pooled relevance ``(P_a, P_b)`` against the truth, over its top-``k`` pairs with a valid ``p``.

    Returns
    -------
    dict
        ``pointing`` (share of the top-``k`` pairs that match), ``error_px`` (mean distance between the true image
        of ``p``'s centre and ``q``'s centre), ``chance`` and ``error_chance`` (the same for a uniformly random
        pair with a valid ``p``), ``valid`` (number of valid patches of A). NaN scores when no patch is valid.
        A pair with fewer than ``k`` valid patches of A has fewer than ``k`` matching pairs: then even the oracle
        points below 1 (its row is the ceiling).
    """
    if not bool(truth.valid.any()):
        return {'pointing': math.nan, 'error_px': math.nan, 'chance': math.nan, 'error_chance': math.nan,
                'valid': 0}
    p, q = top_valid_pairs(relevance, truth, k)
    return {'pointing': float(truth.match[p, q].double().mean()),
            'error_px': float(truth.distance[p, q].mean()),
            'chance': float(truth.match[truth.valid].double().mean()),
            'error_chance': float(truth.distance[truth.valid].mean()),
            'valid': int(truth.valid.sum())}
