"""One guarded forward pass with the rules registered: what every LRP pass of the engine starts from.

:class:`Forward` refuses ``torch.inference_mode`` (no autograd graph), turns the input into an autograd leaf, runs
the model (under strict mode's :class:`~zennit_bilrp.core.strict.ForwardAudit`), keeps the outputs of named
layers (*taps*: the relevance of a layer's neurons is the gradient arriving there) and measures the activations it
saved. Zennit's hooks keep only the latest forward's input, so a :class:`Forward` can be :meth:`released
<Forward.release>` while passes run on :meth:`subsets <Forward.subset>` of its batch and :meth:`refreshed
<Forward.refresh>` afterwards.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Optional, Sequence

import torch

from ..lrp.layers import get_layer
from .strict import ForwardAudit

__all__ = ['Forward']


class _Taps:
    """Forward hooks that keep the outputs of named layers during one forward pass (removed right after).

    Each hook returns a clone of the layer output so that in-place operations downstream (e.g. torchvision's
    ``ReLU(inplace=True)``) cannot change the kept tensor; the clone is the identity for gradients. The hooks are
    registered after the composite's, so the kept tensor is the one whose gradient Zennit's rule reads.
    """

    def __init__(self, model: torch.nn.Module, layers: Sequence[str]):
        self.modules = {name: get_layer(model, name) for name in layers}
        self.outputs: dict = {}
        self.order: list = []
        self.handles: list = []

    def __enter__(self) -> _Taps:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *args) -> bool:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return False

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f'layer {name!r} returns {type(output).__name__}, not a tensor; choose a layer '
                                'whose output is a single tensor')
            if name in self.outputs:
                raise RuntimeError(f'layer {name!r} is called more than once in a forward pass; its neurons are '
                                   'ambiguous (choose a module that is used once)')
            self.outputs[name] = output
            self.order.append(name)
            return output.clone()
        return hook


class Forward:
    """One forward pass of a batch through a model whose LRP rules are registered.

    Parameters
    ----------
    model : torch.nn.Module
        The model, with its rules registered.
    x : torch.Tensor
        Batch ``(N, ...)``.
    strict : bool
        Run under :class:`~zennit_bilrp.core.strict.ForwardAudit` and refuse (``TypeError`` naming the module) what
        the registered rules cannot explain.
    replicas : int
        Copies of the batch in the forward pass (the engine's ``method='replicate'``).
    taps : sequence of str
        Layers whose outputs are kept (:attr:`layers`).
    check : callable, optional
        Called with the model output before the graph is checked (e.g. the head's shape check).

    Attributes
    ----------
    x : torch.Tensor
        The input as an autograd leaf (``replicas`` copies).
    output : torch.Tensor
        The model output.
    layers : dict of str to torch.Tensor
        The tapped layer outputs; :attr:`order` their names in forward order.
    bytes : float
        Bytes of activations the forward saved for the backward pass, per copy of the batch.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, strict: bool = False, replicas: int = 1,
                 taps: Sequence[str] = (), check: Optional[Callable[[torch.Tensor], None]] = None):
        if torch.is_inference_mode_enabled():
            raise RuntimeError('torch.inference_mode() is active: it records no autograd graph, so no LRP pass can '
                               'be taken. Call the engine outside inference_mode (torch.no_grad() is fine)')
        self.model = model
        self.n = x.shape[0]
        self.replicas = replicas
        self.input_shape = tuple(x.shape[1:])
        self.taps = tuple(taps)
        self.check = check
        inp = x.detach()
        if inp.is_inference():
            inp = inp.clone()  # a tensor made under inference_mode cannot enter an autograd graph
        if replicas > 1:
            inp = inp.repeat(replicas, *([1] * (x.dim() - 1)))
        self.x = inp.requires_grad_(True)
        self.output: Optional[torch.Tensor] = None
        self.layers: dict = {}
        self.order: list = []
        self.bytes = 0.0
        self._run(strict)

    def _run(self, strict: bool) -> None:
        saved = [0]

        def pack(tensor):
            # parameters are shared by all passes: only activations grow with the batch
            if not isinstance(tensor, torch.nn.Parameter):
                saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        auditor = ForwardAudit(self.model) if strict else nullcontext()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), auditor, \
                _Taps(self.model, self.taps) as taps:
            try:
                output = self.model(self.x)
            except RuntimeError as error:
                raise RuntimeError(f'the model failed on the input batch of shape {tuple(self.x.shape)} (it expects '
                                   f'a batch (N, ...) with the sample axes it was built for): {error}') from error
        if not isinstance(output, torch.Tensor):
            raise TypeError(f'the model must return a tensor, got {type(output).__name__}')
        if strict:
            auditor.verify(output)
        if self.check is not None:
            self.check(output)
        if output.grad_fn is None:
            raise RuntimeError('the model output does not depend on the input (no autograd graph): its parameters and '
                               'input are detached from it, e.g. by .detach(), torch.no_grad() inside forward or '
                               'a non-differentiable operation')
        missing = [name for name in self.taps if name not in taps.outputs]
        if missing:
            raise RuntimeError(f'layer(s) {missing} were not called in the forward pass')
        self.output, self.layers, self.order = output, taps.outputs, taps.order
        self.bytes = saved[0] / self.replicas

    def subset(self, start: int, stop: int) -> Forward:
        """A forward pass of samples ``start:stop`` alone (not audited again; it invalidates this one's graph for
        Zennit's hooks until :meth:`refresh`)."""
        return Forward(self.model, self.x.detach()[start:stop], taps=self.taps, check=self.check)

    def release(self) -> None:
        """Drop the output and the tapped tensors, and with them the graph (e.g. while subsets run)."""
        self.output, self.layers = None, {}

    def refresh(self) -> None:
        """Run the forward pass again, so that its graph is the one Zennit's hooks hold (not audited again)."""
        self._run(False)
