"""Input and model checks shared by every entry point: one place that says what is wrong, by name."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Union

import torch

from ..torch_private import BATCH_NORM, CONVOLUTION, DROPOUT

__all__ = ['TRAIN_SENSITIVE', 'check_input', 'model_tensor', 'check_device_dtype', 'check_eval_mode', 'check_batched',
           'iter_tensors', 'reference_input']

#: module types whose output depends on the train/eval flag
TRAIN_SENSITIVE = (BATCH_NORM, DROPOUT)


def check_input(x: torch.Tensor, name: str = 'x') -> None:
    """Refuse what is not a finite, floating-point, non-empty batch ``(N, ...)``.

    Raises
    ------
    TypeError
        ``x`` is not a tensor or not floating point.
    ValueError
        ``x`` has fewer than 2 dimensions, an empty batch, or NaN/inf values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if not x.is_floating_point():
        raise TypeError(f'{name} has dtype {x.dtype}; BiLRP needs a floating-point input (e.g. x.float())')
    if x.dim() < 2:
        raise ValueError(f'{name} has shape {tuple(x.shape)}; expected a batch (N, ...) with N as first axis')
    if x.shape[0] == 0:
        raise ValueError(f'{name} is an empty batch')
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f'{name} contains NaN or inf values')


def model_tensor(model: torch.nn.Module) -> Optional[torch.Tensor]:
    """The model's first parameter (or buffer), which tells its dtype and device; None for a stateless model."""
    tensor = next(iter(model.parameters()), None)
    return tensor if tensor is not None else next(iter(model.buffers()), None)


def check_device_dtype(x: torch.Tensor, model: torch.nn.Module, name: str = 'x') -> None:
    """Refuse an input whose dtype or device differs from the model's."""
    reference = model_tensor(model)
    if reference is None:
        return
    if reference.is_floating_point() and x.dtype != reference.dtype:
        raise TypeError(f'{name} has dtype {x.dtype} but the model has {reference.dtype}; cast one of them')
    if x.device != reference.device:
        raise ValueError(f'{name} is on {x.device} but the model is on {reference.device}')


_BATCH_LAYOUTS = {1: '(N, C, L)', 2: '(N, C, H, W)', 3: '(N, C, D, H, W)'}


def check_batched(x: torch.Tensor, model: torch.nn.Module, name: str = 'x') -> None:
    """Refuse a single sample where the model's first convolution expects a batch.

    PyTorch's convolutions also accept one unbatched sample ``(C, H, W)``; the layers after them then fail with
    an unrelated shape error. An input with one axis fewer than the first convolution's weight whose first
    axis equals its ``in_channels`` is such a sample.

    Raises
    ------
    ValueError
        Naming the expected layout, e.g. ``(N, C, H, W)``.
    """
    conv = next((module for module in model.modules() if isinstance(module, CONVOLUTION)), None)
    if conv is None:
        return
    spatial = conv.weight.dim() - 2
    if x.dim() == spatial + 1 and x.shape[0] == conv.in_channels:
        raise ValueError(
            f'{name} has shape {tuple(x.shape)}: expected a batch {_BATCH_LAYOUTS.get(spatial, "(N, C, ...)")}; '
            f'for a single sample use {name}[None]'
        )


def check_eval_mode(*models: torch.nn.Module) -> None:
    """Refuse models in training mode with BatchNorm or Dropout (their output would depend on the batch or on
    randomness, and BatchNorm statistics would be updated)."""
    for model in models:
        if model is None:
            continue
        offending = [name or type(model).__name__ for name, module in model.named_modules()
                     if isinstance(module, TRAIN_SENSITIVE) and module.training]
        if offending:
            raise RuntimeError(
                f'the model is in training mode with BatchNorm/Dropout layers ({", ".join(offending[:3])}'
                f'{", ..." if len(offending) > 3 else ""}); call model.eval() first'
            )


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors in ``obj`` (a tensor, or tuples, lists and dicts of them, nested), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from iter_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_tensors(item)


def reference_input(x: torch.Tensor, reference: Union[str, float, torch.Tensor]) -> torch.Tensor:
    """The reference point (path start, baseline) of path methods for the batch ``x``, shaped like ``x``.

    Parameters
    ----------
    x : torch.Tensor
        Inputs ``(N, C, ...)`` or ``(N, D)``.
    reference : {'zeros', 'mean'}, float or torch.Tensor
        ``'zeros'``; ``'mean'``: each sample's per-channel mean over its spatial positions (for ``(N, D)`` inputs,
        over its features); a number (not a bool) for every entry; a tensor broadcast to ``x``.

    Raises
    ------
    ValueError
        For any other ``reference``.
    """
    if isinstance(reference, torch.Tensor):
        return reference.to(x).expand_as(x)
    if isinstance(reference, str) and reference == 'zeros':
        return torch.zeros_like(x)
    if isinstance(reference, str) and reference == 'mean':
        axes = tuple(range(2, x.dim())) or (1,)
        return x.mean(dim=axes, keepdim=True).expand_as(x)
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        return torch.full_like(x, float(reference))
    raise ValueError(f"reference must be 'zeros', 'mean', a number or a tensor, got {reference!r}")
