r"""A layer's bias-free forward map and its transpose as explicit operations, for rules used in differentiable passes.

An LRP rule for a linear or convolutional layer maps the output relevance through :math:`W^\top` (with modified
weights). Zennit computes :math:`W^\top s` as ``torch.autograd.grad(layer(x), x, s)``; in a differentiable LRP
pass (``create_graph=True``: the engine's patch-major path, :mod:`zennit_bilrp.core.plan`) the second-order pass
then differentiates PyTorch's ``convolution_backward``, whose double backward for a *grouped* convolution runs one
small convolution per group (measured on the pretrained EfficientNet-Lite0 at 128 x 192, float32, one thread: 70 %
of a second-order pass, about 27 000 convolution calls, in its depthwise layers). Written as an explicit transposed
convolution, :math:`W^\top s` is differentiated by one grouped convolution.

:func:`layer_forward` and :func:`layer_transpose` support :class:`torch.nn.Linear`, 1-3d convolutions with zero
padding, and convolutions that pad their input inside ``forward`` through a ``same_padding(*spatial_size)``
method returning ``(left, right, top, bottom, ...)`` in :func:`torch.nn.functional.pad` order (as
:class:`~zennit_bilrp.models.efficientnet.SameConv2d`); :func:`supports_explicit` says whether a module is one of
them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ['supports_explicit', 'layer_forward', 'layer_transpose']

_CONV = {1: (torch.nn.Conv1d, F.conv1d, F.conv_transpose1d), 2: (torch.nn.Conv2d, F.conv2d, F.conv_transpose2d),
         3: (torch.nn.Conv3d, F.conv3d, F.conv_transpose3d)}


def _dims(module: torch.nn.Module) -> Optional[int]:
    for dims, (kind, _, _) in _CONV.items():
        if isinstance(module, kind):
            return dims
    return None


def supports_explicit(module: torch.nn.Module) -> bool:
    """Whether :func:`layer_forward` and :func:`layer_transpose` can run ``module``: a :class:`torch.nn.Linear`, or
    a non-transposed 1-3d convolution with zero padding (integer padding, or ``same_padding`` inside ``forward``)."""
    if isinstance(module, torch.nn.Linear):
        return True
    if _dims(module) is None or module.padding_mode != 'zeros':
        return False
    if callable(getattr(module, 'same_padding', None)):
        return all(p == 0 for p in module.padding)
    return not isinstance(module.padding, str)


def _explicit_dims(module: torch.nn.Module, what: str) -> int:
    """0 for a :class:`torch.nn.Linear`, else the convolution's number of spatial dimensions; a ``TypeError`` naming
    ``what`` (forward, transpose) for a module :func:`supports_explicit` refuses."""
    if not supports_explicit(module):
        raise TypeError(f'no explicit {what} for {type(module).__name__} (a Linear or a zero-padded convolution)')
    return 0 if isinstance(module, torch.nn.Linear) else _dims(module)


def _same_pads(module: torch.nn.Module, spatial: Sequence[int]) -> Optional[tuple]:
    method = getattr(module, 'same_padding', None)
    return tuple(method(*spatial)) if callable(method) else None


def layer_forward(module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``module``'s forward map with ``weight`` (and ``bias``, default none) in place of its own parameters.

    Raises
    ------
    TypeError
        If the module is not supported (:func:`supports_explicit`).
    """
    dims = _explicit_dims(module, 'forward')
    if not dims:
        return F.linear(x, weight, bias)
    pads = _same_pads(module, x.shape[2:])
    if pads is not None:
        x = F.pad(x, pads)
    return _CONV[dims][1](x, weight, bias, module.stride, module.padding, module.dilation, module.groups)


def layer_transpose(module: torch.nn.Module, grad: torch.Tensor, weight: torch.Tensor,
                    input_shape: Sequence[int]) -> torch.Tensor:
    r""":math:`W^\top g`: the gradient of ``layer_forward(module, x, weight)`` w.r.t. ``x`` (of ``input_shape``) for
    the output gradient ``grad``, as one explicit transposed layer (differentiable in ``grad`` and ``weight``).

    Raises
    ------
    TypeError
        If the module is not supported (:func:`supports_explicit`).
    """
    dims = _explicit_dims(module, 'transpose')
    if not dims:
        return grad @ weight
    spatial = tuple(int(s) for s in input_shape[2:])
    pads = _same_pads(module, spatial)
    # the (possibly padded) input size the convolution saw, and the padding it applied itself
    if pads is not None:
        seen = tuple(spatial[i] + pads[2 * (dims - 1 - i)] + pads[2 * (dims - 1 - i) + 1] for i in range(dims))
    else:
        seen = spatial
    kernel, size = weight.shape[2:], grad.shape[2:]
    output_padding = tuple(
        seen[i] - ((size[i] - 1) * module.stride[i] - 2 * module.padding[i] + module.dilation[i] * (kernel[i] - 1) + 1)
        for i in range(dims))
    if any(not 0 <= pad < max(module.stride[i], module.dilation[i]) for i, pad in enumerate(output_padding)):
        raise ValueError(f'input shape {tuple(input_shape)} does not fit the output gradient {tuple(grad.shape)} of '
                         f'{type(module).__name__}')
    out = _CONV[dims][2](grad, weight, None, module.stride, module.padding, output_padding, module.groups,
                         module.dilation)
    if pads is None:
        return out
    index = [slice(None), slice(None)]
    for i in range(dims):
        before = pads[2 * (dims - 1 - i)]
        index.append(slice(before, before + spatial[i]))
    return out[tuple(index)]
