r"""LRP rules for strided convolutions without the stride grid: relevance spread over a stride-1 evaluation.

A convolution with kernel :math:`k` and stride :math:`s` covers an input position with :math:`\lceil k/s \rceil` or
:math:`\lfloor k/s \rfloor` windows, depending on the position modulo :math:`s`, whenever :math:`s` does not divide
:math:`k` (e.g. the 3x3 stride-2 stem of EfficientNet, MobileNet, ResNet). Rules that share an output's relevance
within its window (:math:`z^{\mathcal{B}}`, :math:`z^+`, :math:`w^2`, flat) then give positions covered by more
windows (or by larger kernel weights) more relevance, and the heatmap shows the stride as a checkerboard of period
:math:`s`. Measured on the pretrained EfficientNet-Lite0 (128 x 192, four photo pairs, BiLRP marginals of the
cosine): 17 % of a marginal's energy lies in the period-2 components with :math:`z^{\mathcal{B}}` on its stem, 41 %
with the flat rule there.

:class:`SpreadZBox` evaluates the layer at stride 1: the relevance :math:`R_j` of output :math:`j` (at stride-1
position :math:`t = s j`) is spread over the stride-1 positions :math:`t = s j + u`, :math:`|u| < s`, with the
weights :math:`\tau(u) = (s - |u|) / s^2` of linear interpolation (per axis; the transpose of linear upsampling,
centred on :math:`j`'s own window), and each stride-1 position passes its share to its own window by the
:math:`z^{\mathcal{B}}` rule (Montavon et al., Pattern Recognition 2017):

.. math::

    R_i = \sum_t \frac{x_i w_{it} - l_i w_{it}^+ - h_i w_{it}^-}
                      {\sum_{i'} (x_{i'} w_{i't} - l_{i'} w_{i't}^+ - h_{i'} w_{i't}^-) + \epsilon}
          \, \sum_j \tau(t - s j) R_j .

Each stride-1 position receives the same total weight :math:`\sum_j \tau(t - s j) = 1/s` per axis (linear
interpolation is a partition of unity) and every interior input position lies in exactly :math:`k` stride-1
windows per axis, so a smooth output relevance gives a smooth input relevance. Relevance is conserved (the
weights :math:`\tau` sum to one and each window's shares sum to one, up to :math:`\epsilon`; stride-1 windows that
reach past the input's padding share among its real positions), the rule is linear in :math:`R`, and its transposes
are explicit layers (cheap to differentiate in the engine's patch-major passes). For stride 1 it is Zennit's
:class:`~zennit.rules.ZBox`.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from zennit.core import BasicHook, Stabilizer

__all__ = ['SpreadZBox', 'stride_one_geometry', 'interpolation_kernel', 'stride_grid_energy']

_CONV = {1: (F.conv1d, F.conv_transpose1d), 2: (F.conv2d, F.conv_transpose2d), 3: (F.conv3d, F.conv_transpose3d)}


def _spatial_dims(module: torch.nn.Module) -> int:
    for dims, kind in ((1, torch.nn.Conv1d), (2, torch.nn.Conv2d), (3, torch.nn.Conv3d)):
        if isinstance(module, kind):
            return dims
    raise TypeError(f'{type(module).__name__} is not a 1-3d convolution')


def stride_one_geometry(module: torch.nn.Module, spatial: tuple) -> tuple:
    """Padding of the stride-1 evaluation of a (possibly strided) convolution on an input of size ``spatial``.

    The stride-:math:`s` output :math:`j` reads the (padded) input from :math:`s j - b` (:math:`b` the padding
    before); the stride-1 positions :math:`t = s j + u` (:math:`|u| < s`, :math:`0 \\le j < o`) read from
    :math:`t - b`. Returns ``(pads, outputs)``: the :func:`torch.nn.functional.pad` amounts (last axis first; a
    negative amount crops) that give the :math:`s o + s - 1` stride-1 positions from :math:`t = 1 - s` on, and the
    stride-:math:`s` output size per axis.
    """
    dims = _spatial_dims(module)
    if module.padding_mode != 'zeros' or isinstance(module.padding, str):
        raise ValueError(f'{type(module).__name__} must use integer zero padding (or pad inside same_padding)')
    same = getattr(module, 'same_padding', None)
    if callable(same):
        own = tuple(same(*spatial))
        before = [own[2 * (dims - 1 - i)] for i in range(dims)]
        total = [own[2 * (dims - 1 - i)] + own[2 * (dims - 1 - i) + 1] for i in range(dims)]
    else:
        before = [module.padding[i] for i in range(dims)]
        total = [2 * module.padding[i] for i in range(dims)]
    pads, outputs = [], []
    for i in reversed(range(dims)):
        size, stride = spatial[i], module.stride[i]
        extent = module.dilation[i] * (module.kernel_size[i] - 1) + 1
        out = (size + total[i] - extent) // stride + 1
        after = stride * out + extent - 1 - before[i] - size
        pads.extend((before[i] + stride - 1, after))
        outputs.insert(0, out)
    return tuple(pads), tuple(outputs)


def interpolation_kernel(stride: Sequence[int], channels: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    r"""The weights :math:`\\tau(u) = \\prod_a (s_a - |u_a|) / s_a^2`, :math:`|u_a| < s_a`, as a grouped transposed
    convolution kernel ``(channels, 1, 2 s_1 - 1, ...)`` (the transpose of linear upsampling by ``stride``)."""
    kernel = torch.ones((), dtype=dtype, device=device)
    for s in stride:
        u = torch.arange(1 - s, s, dtype=dtype, device=device)
        kernel = kernel[..., None] * ((s - u.abs()) / s ** 2)
    return kernel.expand(channels, 1, *kernel.shape).contiguous()


class SpreadZBox(BasicHook):
    r""":math:`z^{\mathcal{B}}` on the stride-1 evaluation of a strided convolution (see the module docstring).

    Parameters
    ----------
    low, high : torch.Tensor or float
        Lower and upper bounds :math:`l`, :math:`h` of the layer input (broadcastable to it).
    stabilizer : float or callable
        :math:`\epsilon` of the denominators (Zennit's stabilizer: added with the sign of the denominator).
    zero_params : list of str, optional
        Accepted for the composites' uniform interface; the rule never uses the bias.
    """

    def __init__(self, low: Union[float, torch.Tensor], high: Union[float, torch.Tensor], stabilizer=1e-6,
                 zero_params=None):
        super().__init__(input_modifiers=[], param_modifiers=[], output_modifiers=[], gradient_mapper=None,
                         reducer=None)
        self.low, self.high = low, high
        self.stabilizer = stabilizer
        self.zero_params = zero_params
        self._stabilize = Stabilizer.ensure(stabilizer)

    def copy(self) -> SpreadZBox:
        return type(self)(self.low, self.high, stabilizer=self.stabilizer, zero_params=self.zero_params)

    def backward(self, module, grad_input, grad_output):
        original = self.stored_tensors['input'][0].clone()
        relevance_out = grad_output[0]
        dims = _spatial_dims(module)
        conv, transpose = _CONV[dims]
        spatial = tuple(original.shape[2:])
        pads, outputs = stride_one_geometry(module, spatial)
        if tuple(relevance_out.shape[2:]) != outputs:
            raise ValueError(f'output relevance of shape {tuple(relevance_out.shape)} does not fit the input '
                             f'{tuple(original.shape)} of {type(module).__name__}')
        weight = module.weight.detach()
        w_plus, w_minus = weight.clamp(min=0), weight.clamp(max=0)
        low = torch.as_tensor(self.low, dtype=original.dtype, device=original.device).expand_as(original)
        high = torch.as_tensor(self.high, dtype=original.dtype, device=original.device).expand_as(original)
        args = (None, 1, 0, module.dilation, module.groups)
        with torch.no_grad():
            padded = [F.pad(t, pads) for t in (original, low, high)]
            z = conv(padded[0], weight, *args) - conv(padded[1], w_plus, *args) - conv(padded[2], w_minus, *args)
            scale = 1.0 / self._stabilize(z)
        channels = relevance_out.shape[1]
        kernel = interpolation_kernel(module.stride, channels, relevance_out.dtype, relevance_out.device)
        spread = transpose(relevance_out, kernel, None, module.stride, 0, 0, channels)
        mapped = spread * scale

        def back(w: torch.Tensor) -> torch.Tensor:
            full = transpose(mapped, w, None, 1, 0, 0, module.groups, module.dilation)
            return F.pad(full, tuple(-p for p in pads))

        relevance = original * back(weight) - low * back(w_plus) - high * back(w_minus)
        return tuple(relevance if orig.shape == relevance.shape else None for orig in grad_input)


def stride_grid_energy(heatmap: torch.Tensor, period: int) -> torch.Tensor:
    r"""Share of a heatmap's energy in the pattern that repeats with ``period`` pixels: the stride grid.

    For a map :math:`m` (mean removed) of size :math:`H \times W` (multiples of ``period``), the periodic part is
    the mean :math:`\bar t` of its ``period`` x ``period`` tiles, repeated; its energy share

    .. math::

        g = \frac{(H / p)(W / p) \sum \bar t^2}{\sum m^2}

    equals the share of the spectral energy (DC excluded) at the frequencies that are multiples of
    :math:`(H / p, W / p)`. A checkerboard of period 2 gives :math:`g = 1`; a map without a period-:math:`p`
    pattern gives about :math:`p^2 / (H W)`.

    Parameters
    ----------
    heatmap : torch.Tensor
        ``(..., H, W)``; leading dimensions are kept.
    period : int
        The stride (e.g. 2 for a stride-2 stem).

    Returns
    -------
    torch.Tensor
        ``g`` per map, shape ``heatmap.shape[:-2]`` (0 for a constant map).
    """
    height, width = heatmap.shape[-2:]
    if period < 1 or height % period or width % period:
        raise ValueError(f'period {period} must divide the map size {height} x {width}')
    m = heatmap.double()
    m = m - m.mean(dim=(-2, -1), keepdim=True)
    tiles = m.reshape(*m.shape[:-2], height // period, period, width // period, period).mean(dim=(-4, -2))
    total = (m ** 2).sum(dim=(-2, -1))
    periodic = (tiles ** 2).sum(dim=(-2, -1)) * (height // period) * (width // period)
    return torch.where(total > 0, periodic / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))
