r"""Separable Gaussian filtering of image batches, shared by the IRI regularizers, SSIM and patch flipping.

The 1-D kernel of odd size :math:`s = 2r + 1` and width :math:`\sigma` is

.. math::

    g_k = \frac{\exp(-k^2 / 2\sigma^2)}{\sum_{j=-r}^{r} \exp(-j^2 / 2\sigma^2)}, \qquad k = -r, \dots, r,

and the blur of a channel is the separable convolution :math:`G_\sigma * x = g^{(w)} * (g^{(h)} * x)`, first along
the height, then along the width, each channel on its own.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['PADDINGS', 'gaussian_kernel', 'gaussian_blur']

#: border handling of :func:`gaussian_blur`: mirrored without the edge, edge repeated, or no padding (shrinks)
PADDINGS = ('reflect', 'replicate', 'valid')


def _check_sigma(sigma: float, caller: str) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f'{caller}: sigma must be a finite number > 0, got {sigma!r}')


def gaussian_kernel(size: int, sigma: float, dtype: torch.dtype = torch.float64,
                    device: Optional[torch.device] = None) -> torch.Tensor:
    r"""The normalized 1-D Gaussian kernel :math:`g` of odd ``size`` centered on its middle tap, ``(size,)``.

    Parameters
    ----------
    size : int
        Number of taps :math:`2r + 1` (odd, positive).
    sigma : float
        Standard deviation :math:`\sigma > 0` in pixels.
    dtype, device :
        Of the kernel.
    """
    if isinstance(size, bool) or int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f'gaussian_kernel: size must be an odd positive integer, got {size!r}')
    _check_sigma(sigma, 'gaussian_kernel')
    coords = torch.arange(int(size), dtype=dtype, device=device) - (int(size) - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, size: Optional[int] = None, padding: str = 'reflect') -> torch.Tensor:
    r"""Separable Gaussian blur :math:`G_\sigma * x` of each channel of an image batch.

    Parameters
    ----------
    x : torch.Tensor
        Images ``(N, C, H, W)``, floating point.
    sigma : float
        Standard deviation :math:`\sigma > 0` of the kernel in pixels.
    size : int, optional
        Kernel size :math:`2r + 1` (odd); default :math:`r = \max(1, \lceil 3\sigma \rceil)`.
    padding : {'reflect', 'replicate', 'valid'}
        Border handling (see :data:`PADDINGS`): ``'reflect'`` and ``'replicate'`` pad by :math:`r` on every side
        and keep the size (``'reflect'`` needs :math:`r < \min(H, W)`); ``'valid'`` does not pad, so the output
        is ``(N, C, H - 2r, W - 2r)``.

    Returns
    -------
    torch.Tensor
        The blurred images, dtype and device of ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f'gaussian_blur: expected a floating-point image batch (N, C, H, W), got {shape}')
    if padding not in PADDINGS:
        raise ValueError(f'gaussian_blur: padding must be one of {PADDINGS}, got {padding!r}')
    _check_sigma(sigma, 'gaussian_blur')
    if size is None:
        size = 2 * max(1, int(math.ceil(3 * sigma))) + 1
    g = gaussian_kernel(size, sigma, x.dtype, x.device)
    radius, channels = (size - 1) // 2, x.shape[1]
    smallest = min(x.shape[2], x.shape[3])
    if (padding == 'reflect' and radius >= smallest) or (padding == 'valid' and size > smallest):
        raise ValueError(f'gaussian_blur: a kernel of size {size} does not fit images of size '
                         f'{tuple(x.shape[2:])} with padding {padding!r}; use a smaller size or sigma')
    if padding != 'valid':
        x = F.pad(x, (radius, radius, radius, radius), mode=padding)
    out = F.conv2d(x, g.view(1, 1, size, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(out, g.view(1, 1, 1, size).repeat(channels, 1, 1, 1), groups=channels)
