r"""Image files to model inputs: read and resize (or resize and center-crop as a torchvision preprocessing does),
then normalize with its mean and standard deviation.

:func:`load_image` keeps pixels in [0, 1] (what the figures show); :func:`normalize` makes the model input
:math:`(x - \mu)/\sigma` and returns the bounds of normalized pixels for :math:`z^{\mathcal{B}}` rules. The
preprocessing of a torchvision model's pretrained weights comes from
:func:`~zennit_bilrp.models.loading.torchvision_preprocessing`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Optional, Union

import numpy as np
import torch

__all__ = ['load_image', 'image_size', 'normalize']


@contextmanager
def _reading(path):
    """Turn a failure to read the image file ``path`` into FileNotFoundError or ValueError naming the file."""
    from PIL import UnidentifiedImageError

    try:
        yield
    except FileNotFoundError:
        raise FileNotFoundError(f'cannot read image {str(path)!r}: no such file') from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f'cannot read image {str(path)!r}: {error}') from None


def image_size(path: Union[str, os.PathLike]) -> tuple[int, int]:
    """``(height, width)`` of an image file (errors as in :func:`load_image`)."""
    from PIL import Image

    with _reading(path), Image.open(path) as image:
        return image.size[1], image.size[0]


def _geometry(transform):
    """The resize and center crop of an ImageClassification ``transform``, to a tensor in [0, 1] (no normalization)."""
    from torchvision.transforms import functional

    def apply(image):
        image = functional.resize(image, list(transform.resize_size), interpolation=transform.interpolation,
                                  antialias=getattr(transform, 'antialias', True))
        image = functional.center_crop(image, list(transform.crop_size))
        return functional.convert_image_dtype(functional.pil_to_tensor(image), torch.float32)

    return apply


def load_image(path: Union[str, os.PathLike], size: Optional[tuple] = None, transform=None) -> torch.Tensor:
    """Read an image file as a float32 tensor ``(1, 3, H, W)`` in [0, 1], resized to ``size = (H, W)``, or
    resized and center-cropped as a torchvision preprocessing ``transform`` does
    (:func:`~zennit_bilrp.models.loading.torchvision_preprocessing`; its normalization is left out, so that the
    result can be displayed: apply :func:`normalize` for the model).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not an image Pillow reads.
    """
    from PIL import Image

    with _reading(path), Image.open(path) as image:
        image = image.convert('RGB')
        if transform is not None:
            return _geometry(transform)(image)[None].contiguous()
        if size is not None:
            image = image.resize((int(size[1]), int(size[0])), Image.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].contiguous()


def normalize(x: torch.Tensor, transform) -> tuple:
    r"""``(x - mean) / std`` with the ``mean``/``std`` of a preprocessing ``transform`` (or a pair), and the bounds
    of normalized pixels :math:`((0 - \mu)/\sigma, (1 - \mu)/\sigma)` for :math:`z^{\mathcal{B}}`.

    Returns
    -------
    tuple
        ``(normalized, (low, high))`` with ``low``/``high`` of shape ``(1, 3, 1, 1)``.
    """
    mean, std = (transform.mean, transform.std) if hasattr(transform, 'mean') else transform
    mean = torch.as_tensor(mean, dtype=x.dtype).reshape(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype).reshape(1, -1, 1, 1)
    return (x - mean) / std, ((0 - mean) / std, (1 - mean) / std)
