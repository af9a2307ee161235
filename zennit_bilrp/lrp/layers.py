"""Layers that similarity models need and Zennit lacks, and access to a model's inner layers.

:class:`Normalize` is L2 normalization as a module (``F.normalize`` is a function and cannot be hooked). Under
LRP the norm is treated as a constant, so relevance passes through unchanged (Zennit's ``Pass`` rule); the BiLRP
engine registers that rule automatically where a composite assigns none.

:func:`get_layer`, :class:`CaptureLayer` and :class:`LayerEmbedding` give the output of a named inner layer
(e.g. ``'avgpool'``) with one forward pass that stops there, without modifying the model; the CLI, the IRI
generator, neuron selection and the approximations share them.
"""
from __future__ import annotations

import difflib
from typing import Optional

import torch

__all__ = ['Normalize', 'get_layer', 'LayerHook', 'CaptureLayer', 'LayerEmbedding']


class Normalize(torch.nn.Module):
    """L2-normalize along ``dim``: ``y = x / max(|x|, eps)``.

    Parameters
    ----------
    dim : int
        Axis to normalize (default 1, the feature axis).
    eps : float
        Lower bound of the norm.
    """

    def __init__(self, dim: int = 1, eps: float = 1e-12):
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(input, dim=self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, eps={self.eps}'


def get_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The sub-module called ``name`` (as in ``model.named_modules()``; ``''`` is the model itself).

    Raises
    ------
    ValueError
        If there is no such sub-module; the message suggests similar names.
    """
    if not isinstance(name, str):
        raise TypeError(f'layer names are strings as in model.named_modules(), got {type(name).__name__}')
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    names = [key for key in modules if key]
    close = difflib.get_close_matches(name, names, n=5)
    hint = f'; did you mean {", ".join(map(repr, close))}?' if close else f'; layers are e.g. {names[:8]}'
    raise ValueError(f'unknown layer {name!r} in {type(model).__name__}{hint}')


class _Stop(Exception):
    """Raised by the capture hook to skip the rest of the forward pass."""


class LayerHook:
    """Base of context managers that hold a forward hook (their ``_hook``) on the module ``self.module`` while
    entered; the hook is registered last, after hooks already on the layer (e.g. Zennit's rules), and always
    removed on exit."""

    module: torch.nn.Module
    handle = None

    def _hook(self, module, inputs, output):
        raise NotImplementedError

    def __enter__(self):
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *args) -> bool:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        return False


class CaptureLayer(LayerHook):
    """Context manager: a forward hook on ``model``'s module ``layer`` that records its output and, with
    ``stop=True``, skips the rest of the forward. The hook is always removed on exit. A module called several
    times in one forward (e.g. a shared ``ReLU``) is captured at its first call. ``layer=''`` is the model output.

    Parameters
    ----------
    model : torch.nn.Module
        The model (not modified).
    layer : str
        Module name as in ``model.named_modules()``.
    stop : bool
        Skip everything after the layer (default True).
    flatten : bool
        Return the output flattened to ``(N, -1)``.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> with CaptureLayer(model, '1') as capture:
    ...     rep = capture(torch.rand(5, 3))
    >>> rep.shape
    torch.Size([5, 4])
    """

    def __init__(self, model: torch.nn.Module, layer: str, stop: bool = True, flatten: bool = False):
        self.model = model
        self.layer = layer
        self.module = get_layer(model, layer)
        self.stop = stop and layer != ''
        self.flatten = flatten
        self.output: Optional[torch.Tensor] = None
        self.handle = None

    def _hook(self, module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f'layer {self.layer!r} returns {type(output).__name__}, not a tensor')
        if self.output is None:
            self.output = output
        if self.stop:
            raise _Stop

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model on ``x`` and return the layer output."""
        self.output = None
        try:
            out = self.model(x)
        except _Stop:
            out = None
        rep = self.output if self.layer != '' or out is None else out
        self.output = None
        if rep is None:
            raise RuntimeError(f'layer {self.layer!r} was not called in the forward pass')
        return rep.flatten(1) if self.flatten else rep


class LayerEmbedding(torch.nn.Module):
    """A model truncated at a layer: ``forward(x)`` returns the output of ``model``'s module ``layer``.

    Wraps (does not copy or change) ``model``; the capturing hook exists only during each forward call, and
    nothing after the layer is computed. Zennit composites register on the wrapped model's modules, so this
    explains an inner representation with :class:`~zennit_bilrp.core.engine.BiLRP` (e.g. ``layer='layer4'`` with
    ``head='avg'``, or ``layer='avgpool', flatten=True``). The layer is looked up by name at each call (keeping
    it as an attribute would register it twice, and canonizers would then process it twice).

    Parameters
    ----------
    model : torch.nn.Module
        The full model.
    layer : str
        Module name as in ``model.named_modules()`` (``''`` is the model output).
    flatten : bool
        Flatten the output to ``(N, -1)``.
    """

    def __init__(self, model: torch.nn.Module, layer: str, flatten: bool = False):
        super().__init__()
        get_layer(model, layer)  # fail early with a helpful message
        self.model = model
        self.layer = layer
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with CaptureLayer(self.model, self.layer, flatten=self.flatten) as capture:
            return capture(x)

    def extra_repr(self) -> str:
        return f'layer={self.layer!r}, flatten={self.flatten}'
