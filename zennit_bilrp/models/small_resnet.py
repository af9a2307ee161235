"""Small reference encoders for tests, examples and benchmarks.

Both are LRP-friendly: BatchNorm directly follows a convolution inside an ``nn.Sequential`` (so
:class:`~zennit.canonizers.SequentialMergeBatchNorm` merges it) and skip connections add through a
:class:`zennit.layer.Sum` module (so composites give them the ``Norm`` rule).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from zennit.layer import Sum

__all__ = ['ResidualBlock', 'SmallResNet', 'mlp']


def mlp(sizes: Sequence[int] = (16, 32, 32, 8), bias: bool = True) -> nn.Sequential:
    """A ReLU multi-layer perceptron mapping ``sizes[0]`` to ``sizes[-1]`` features (no ReLU on the output)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out, bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """``relu(body(x) + shortcut(x))`` with the addition done by a :class:`zennit.layer.Sum` module."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1, batch_norm: bool = True,
                 bias: bool = False):
        super().__init__()

        def conv_bn(c_in, c_out, kernel, stride):
            layers = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            return layers

        self.body = nn.Sequential(
            *conv_bn(channels_in, channels_out, 3, stride), nn.ReLU(), *conv_bn(channels_out, channels_out, 3, 1)
        )
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(*conv_bn(channels_in, channels_out, 1, stride))
        else:
            self.shortcut = nn.Identity()
        self.sum = Sum()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.sum(torch.stack([self.body(x), self.shortcut(x)], dim=-1)))


class SmallResNet(nn.Module):
    """A compact ResNet-style image encoder: stem, residual stages, global average pooling, optional projection.

    Parameters
    ----------
    widths : sequence of int
        Channels of each stage (each stage after the first halves the resolution).
    embedding_dim : int, optional
        If given, a final linear projection to this many units; otherwise the embedding is the pooled features.
    batch_norm : bool
        Use BatchNorm after each convolution.
    bias : bool
        Biases in the convolutions and the projection.
    in_channels : int
        Input channels.
    pool : bool
        End with global average pooling and flattening (``False`` returns the last feature map).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), embedding_dim=None, batch_norm: bool = True,
                 bias: bool = False, in_channels: int = 3, pool: bool = True):
        super().__init__()
        stem = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=bias)]
        if batch_norm:
            stem.append(nn.BatchNorm2d(widths[0]))
        stem.append(nn.ReLU())
        self.stem = nn.Sequential(*stem)
        stages = []
        for i, width in enumerate(widths):
            c_in = widths[max(i - 1, 0)]
            stages.append(ResidualBlock(c_in, width, stride=1 if i == 0 else 2, batch_norm=batch_norm, bias=bias))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) if pool else nn.Identity()
        self.projection = nn.Linear(widths[-1], embedding_dim, bias=bias) if embedding_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.stages(self.stem(x)))
        if self.projection is not None:
            out = self.projection(out)
        return out
