r"""The offline demo model: a compact ResNet-style image encoder trained by this project, and the demo images.

Pretrained ImageNet weights cannot be downloaded offline and a randomly initialized network gives meaningless
BiLRP pictures, so the package ships a small encoder trained contrastively (SimCLR-style, NT-Xent loss on two
augmented views of random crops) on the photos that scikit-image bundles; ``examples/train_demo_model.py``
reproduces the shipped weights. The stereo pair used by the demo (scikit-image's ``stereo_motorcycle``) is *not*
among the training photos, so its ground-truth disparity gives an honest correspondence check
(:func:`correspondence_error`).

The encoder :math:`\phi` maps images ``(N, 3, H, W)`` in :math:`[0, 1]` (float32) to an embedding ``(N, 96)``:
a stride-2 convolutional stem, three residual stages (the skip connections add through :class:`zennit.layer.Sum`)
and global max pooling (MAC). It has no biases and no BatchNorm: every layer is linear or ReLU, so the encoder is
positively homogeneous and LRP conserves relevance exactly without the instabilities that the large merged biases
of a trained BatchNorm network cause when biases are excluded from the rules. Embeddings are non-negative;
compare them with the cosine similarity.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..lrp.canonizers import canonizers_for
from ..lrp.choose import composite_for
from ..lrp.composites import DepthGamma
from .small_resnet import ResidualBlock

__all__ = [
    'DemoEncoder', 'DEMO_WEIGHTS', 'DEMO_SIZE', 'DEMO_SIMILARITY', 'DEMO_PATCH', 'SANITY_K', 'build_demo_encoder',
    'load_demo_model', 'demo_composite', 'load_demo_pair', 'load_demo_disparity', 'load_second_pair',
    'to_tensor', 'correspondence_error',
]

#: the shipped weights (written by ``examples/train_demo_model.py``)
DEMO_WEIGHTS = Path(__file__).resolve().parent / 'data' / 'demo_encoder.pt'
#: default (height, width) of the demo images: divisible by 8 and 16, aspect close to the stereo pair's
DEMO_SIZE = (128, 192)
#: the similarity the demo model is trained for
DEMO_SIMILARITY = 'cosine'
#: default patch size of the demo figures
DEMO_PATCH = 8
#: number of top patch pairs scored by the stereo sanity check (:func:`correspondence_error`)
SANITY_K = 100


class DemoEncoder(nn.Module):
    """Compact LRP-friendly ResNet-style encoder: stem (stride 2), residual stages, ReLU, global max pooling
    (default; ``pool='avg'`` for global average pooling).

    Parameters
    ----------
    widths : sequence of int
        Channels of the stem/first stage and of each further stage (each further stage halves the resolution).
    stem_kernel : int
        Kernel size of the stride-2 stem convolution.
    batch_norm : bool
        BatchNorm after each convolution (default False: see the module docstring).
    pool : {'max', 'avg'}
        Global pooling of the last feature map: ``'max'`` (MAC, maximum activation of convolutions, as in image
        retrieval; LRP sends each unit's relevance to its maximum, winner takes all) or ``'avg'``.
    """

    def __init__(self, widths: Sequence[int] = (24, 48, 96), stem_kernel: int = 5, batch_norm: bool = False,
                 pool: str = 'max'):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if pool not in ('max', 'avg'):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.config = {'widths': list(widths), 'stem_kernel': int(stem_kernel), 'batch_norm': bool(batch_norm),
                       'pool': pool}
        stem = [nn.Conv2d(3, widths[0], stem_kernel, stride=2, padding=stem_kernel // 2, bias=False)]
        if batch_norm:
            stem.append(nn.BatchNorm2d(widths[0]))
        self.stem = nn.Sequential(*stem, nn.ReLU())
        stages = [ResidualBlock(widths[0], widths[0], stride=1, batch_norm=batch_norm)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            stages.append(ResidualBlock(c_in, c_out, stride=2, batch_norm=batch_norm))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == 'max' else nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    @property
    def embedding_dim(self) -> int:
        """Number of embedding units ``h``."""
        return self.config['widths'][-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(self.stages(self.stem(x))))


def build_demo_encoder(**kwargs) -> DemoEncoder:
    """A randomly initialized demo encoder (the architecture of the shipped model; ``kwargs`` go to
    :class:`DemoEncoder`)."""
    return DemoEncoder(**kwargs)


def load_demo_model(weights: Union[None, str, os.PathLike] = None, map_location: Union[str, torch.device] = 'cpu'
                    ) -> DemoEncoder:
    """The trained demo encoder in eval mode.

    Parameters
    ----------
    weights : path, optional
        A checkpoint written by ``examples/train_demo_model.py`` (default: the weights shipped in the package).
    map_location : str or torch.device
        Device to load the weights to.

    Raises
    ------
    FileNotFoundError
        If the weights file does not exist (with the command that recreates it).
    """
    path = Path(weights) if weights is not None else DEMO_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f'demo model weights not found at {path}; recreate them with '
            f'`python examples/train_demo_model.py --out out/demo_model` and pass '
            f'weights="out/demo_model/demo_encoder.pt" (or copy that file to {DEMO_WEIGHTS})'
        )
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint:
        raise ValueError(f'{path} is not a demo-model checkpoint (expected a dict with "state_dict" and "config")')
    config = checkpoint.get('config', {})
    model = DemoEncoder(**config)
    model.load_state_dict(checkpoint['state_dict'])
    return model.to(map_location).eval()


def demo_composite(model: Optional[nn.Module] = None, first: str = 'zbox') -> DepthGamma:
    """The recommended composite for the demo encoder: :func:`~zennit_bilrp.lrp.choose.composite_for`
    ``(model, 'unit')`` (pixels in :math:`[0, 1]`), unless another first-layer rule is asked for.

    LRP-:math:`\\gamma` with :math:`\\gamma` decreasing with relative depth
    (:class:`~zennit_bilrp.lrp.composites.DepthGamma`; the demo encoder is not a VGG), the
    :math:`z^{\\mathcal{B}}` rule with the pixel box :math:`[0, 1]` in the first layer, biases excluded from the
    rules (``zero_params=['bias']``, exact conservation) and BatchNorm merged into the convolutions where present.

    Parameters
    ----------
    model : torch.nn.Module, optional
        The model the canonizers are chosen for (default: the demo encoder's, BatchNorm merging).
    first : {'zbox', 'gamma', 'flat', 'wsquare'}
        Rule of the first layer.
    """
    model = model if model is not None else build_demo_encoder()
    if first == 'zbox':
        return composite_for(model, 'unit')
    return DepthGamma(first=first, zero_params=['bias'], canonizers=canonizers_for(model))


def to_tensor(image: np.ndarray, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """An image array ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (uint8 or float in [0, 1]) as a float32 tensor
    ``(1, 3, H', W')`` in [0, 1], resized (with anti-aliasing) to ``size = (H', W')`` if given."""
    from skimage import img_as_float32, transform

    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f'expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}')
    image = img_as_float32(image[..., :3])
    if size is not None:
        image = transform.resize(image, tuple(size), anti_aliasing=True, preserve_range=True)
    return torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)).permute(2, 0, 1)[None].contiguous()


def load_demo_pair(size: tuple[int, int] = DEMO_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-image's stereo pair (``stereo_motorcycle``, Middlebury 2014) as two float32 tensors ``(1, 3, H, W)``
    in [0, 1], resized to ``size``."""
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    return to_tensor(left, size), to_tensor(right, size)


def load_demo_disparity(size: tuple[int, int] = DEMO_SIZE) -> torch.Tensor:
    """Ground-truth disparity of the left demo image at ``size``, in pixels of the resized image, ``(H, W)``.

    A left-image pixel at column ``c`` shows the same scene point as the right-image pixel at column ``c - d``
    (same row). The map is area-averaged over valid pixels; pixels that are mostly invalid (occluded) are NaN.
    """
    from skimage import data, transform

    _, _, disparity = data.stereo_motorcycle()
    valid = np.isfinite(disparity)
    filled = np.where(valid, disparity, 0.0).astype(np.float64)
    weight = transform.resize(valid.astype(np.float64), size, anti_aliasing=True)
    mean = transform.resize(filled, size, anti_aliasing=True) / np.maximum(weight, 1e-12)
    mean = np.where(weight > 0.5, mean, np.nan) * (size[1] / disparity.shape[1])
    return torch.from_numpy(mean)


def load_second_pair(size: tuple[int, int] = DEMO_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The demo's second pair: scikit-image's ``astronaut`` and a zoomed, mirrored crop of it (float32, [0, 1])."""
    from skimage import data

    image = data.astronaut()
    full = to_tensor(image[80:421, :], size)              # 341 x 512 (aspect 3:2)
    crop = image[100:300, 170:470][:, ::-1]               # a 200 x 300 window (aspect 3:2), mirrored
    return full, to_tensor(np.ascontiguousarray(crop), size)


def correspondence_error(centers_a: torch.Tensor, centers_b: torch.Tensor, disparity: torch.Tensor,
                         weights: Optional[torch.Tensor] = None) -> float:
    """Mean distance (pixels) of matched points from their true stereo correspondence.

    For a left point :math:`(r, c)` the true right point is :math:`(r, c - d(r, c))`; the error of a pair with
    right point :math:`(r', c')` is :math:`\\|(r', c') - (r, c - d(r, c))\\|_2`. Pairs whose left point has no
    valid disparity are skipped.

    Parameters
    ----------
    centers_a, centers_b : torch.Tensor
        Matched points ``(k, 2)`` as (row, col), e.g. :attr:`TopPairs.centers_a[0]` and ``centers_b[0]``.
    disparity : torch.Tensor
        Disparity map ``(H, W)`` of the left image (:func:`load_demo_disparity`).
    weights : torch.Tensor, optional
        Non-negative weights ``(k,)`` of a weighted mean (default uniform).
    """
    centers_a = torch.as_tensor(centers_a, dtype=torch.float64)
    centers_b = torch.as_tensor(centers_b, dtype=torch.float64)
    if centers_a.shape != centers_b.shape or centers_a.dim() != 2 or centers_a.shape[1] != 2:
        raise ValueError(f'centers must both be (k, 2), got {tuple(centers_a.shape)} and {tuple(centers_b.shape)}')
    disparity = torch.as_tensor(disparity, dtype=torch.float64)
    rows = centers_a[:, 0].round().long().clamp(0, disparity.shape[0] - 1)
    cols = centers_a[:, 1].round().long().clamp(0, disparity.shape[1] - 1)
    d = disparity[rows, cols]
    valid = torch.isfinite(d)
    if not bool(valid.any()):
        raise ValueError('none of the points has a valid disparity')
    target = torch.stack([centers_a[:, 0], centers_a[:, 1] - torch.nan_to_num(d)], dim=1)
    error = (centers_b - target).norm(dim=1)
    w = torch.ones_like(error) if weights is None else torch.as_tensor(weights, dtype=torch.float64).abs()
    w = w * valid
    return float((error * w).sum() / w.sum())
