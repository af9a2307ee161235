"""The one module that reads PyTorch's private attributes, and why each one has no public replacement.

Private names change between torch releases without notice, so the package uses public APIs wherever torch has
one (hook handles, ``named_parameters``, ``register_*_hook`` return values, ``F.conv2d``, ``setattr``/``delattr``
on modules). What remains is here, behind small functions, and is tested on the lowest and the newest supported
torch (``tests/test_layers.py`` checks that no other module reads a torch private name):

- **A module's hook dictionaries** (``_forward_pre_hooks``, ``_forward_hooks``, ...). torch can add and remove a
  hook through its handle, but has no public way to *list* the hooks on a module. Listing is needed to find the
  Zennit rule on a layer (Zennit registers a rule as bound methods of a :class:`zennit.core.Hook` and hands back
  no module-to-rule map), to tell which layers a composite gave a rule, to check that a hook is the last one of a
  layer, and to remove hooks that third-party code left behind when a model is restored.
- **A module's slot dictionaries** (``_parameters``, ``_buffers``, ``_modules``). ``named_parameters``,
  ``named_buffers`` and ``named_children`` skip slots set to ``None`` (a ``Conv2d(bias=False)`` has a ``bias``
  slot holding ``None``, which a BatchNorm-merging canonizer fills) and children registered twice, so a model
  guard that restored from them would delete such slots instead of putting ``None`` back.
- **Dispatch modes** (``torch.utils._python_dispatch.TorchDispatchMode``): the only way to see every allocation
  of a block, also inside autograd's backward pass, on any device (:class:`~zennit_bilrp.core.memory.PeakMemory`).
- **Batched tensors of vmap** (``torch._C._functorch``, ``torch._C._vmapmode_*``, ``torch._remove_batch_dim``):
  inside ``autograd.grad(is_grads_batched=True)`` a rule sees a batched tensor on which data-dependent control
  flow is impossible; the fast rules unwrap it to check a property over all seeds at once
  (:func:`~zennit_bilrp.lrp.fast_rules.vanishes_where`).
- **Base classes of layer families** (``torch.nn.modules.batchnorm._BatchNorm``, ``dropout._DropoutNd``,
  ``conv._ConvNd``): torch has no public class for "any BatchNorm" (1-3d, lazy, synchronized, or a user's subclass),
  "any dropout" or "any convolution"; a tuple of the public classes would miss subclasses written against the base.
- **Autograd graph nodes** (``_sequence_nr``, ``_forward_cls``): the creation order of a node and the
  :class:`torch.autograd.Function` behind a custom node, which strict mode's forward audit reports
  (``next_functions``, the graph walk itself, is public).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['DispatchMode', 'HOOK_DICTS', 'hook_dicts', 'slots', 'forward_pre_hooks', 'forward_hooks',
           'last_forward_hook_id', 'unbatched', 'LEGACY_VMAP_READABLE', 'sequence_number', 'custom_function',
           'BATCH_NORM', 'DROPOUT', 'CONVOLUTION']

#: base class of a mode that sees every operator call (see the module docstring)
DispatchMode = TorchDispatchMode

#: base class of every BatchNorm layer (see the module docstring)
BATCH_NORM = torch.nn.modules.batchnorm._BatchNorm
#: base class of every dropout layer
DROPOUT = torch.nn.modules.dropout._DropoutNd
#: base class of every convolution, transposed or not
CONVOLUTION = torch.nn.modules.conv._ConvNd

#: the hook dictionaries of a module that a model guard compares and restores (those a torch version has)
HOOK_DICTS = (
    '_forward_hooks',
    '_forward_hooks_with_kwargs',
    '_forward_hooks_always_called',
    '_forward_pre_hooks',
    '_forward_pre_hooks_with_kwargs',
    '_backward_hooks',
    '_backward_pre_hooks',
    '_state_dict_hooks',
    '_state_dict_pre_hooks',
    '_load_state_dict_pre_hooks',
    '_load_state_dict_post_hooks',
)


def hook_dicts(module: torch.nn.Module) -> dict:
    """``name -> dict`` of every hook dictionary of ``module`` (the live dictionaries, to compare and restore)."""
    return {key: getattr(module, key) for key in HOOK_DICTS if hasattr(module, key)}


def slots(module: torch.nn.Module) -> tuple:
    """``(parameters, buffers, children)``: the live ``name -> object`` dictionaries of ``module``, with the slots
    that hold ``None`` (see the module docstring)."""
    return module._parameters, module._buffers, module._modules


def forward_pre_hooks(module: torch.nn.Module) -> list:
    """The forward pre-hooks registered on ``module``, in call order."""
    return list(module._forward_pre_hooks.values())


def forward_hooks(module: torch.nn.Module) -> list:
    """The forward hooks registered on ``module``, in call order."""
    return list(module._forward_hooks.values())


def last_forward_hook_id(module: torch.nn.Module) -> Optional[int]:
    """The handle id of the forward hook that runs last on ``module`` (``None`` without forward hooks); compare with
    ``handle.id`` of a :class:`torch.utils.hooks.RemovableHandle`."""
    return next(reversed(module._forward_hooks), None)


def _legacy_vmap_level() -> int:
    level = torch._C._vmapmode_increment_nesting()
    torch._C._vmapmode_decrement_nesting()
    return level


def unbatched(tensor: torch.Tensor) -> Optional[torch.Tensor]:
    """The plain tensor under the batched tensors of ``torch.func.vmap`` and of ``autograd.grad(is_grads_batched=
    True)`` (the legacy vmap), batch axes first; ``tensor`` itself when it is not batched; ``None`` where it cannot be
    unwrapped (then nothing can be concluded about all seeds at once)."""
    from torch._C import _functorch

    plain = tensor
    while _functorch.is_batchedtensor(plain):  # torch.func.vmap
        dim = _functorch.maybe_get_bdim(plain)
        plain = _functorch.get_unwrapped(plain).movedim(dim, 0)
    is_legacy = getattr(_functorch, 'is_legacy_batchedtensor', None)
    if is_legacy is None:  # torch < 2.1 cannot tell: a data-dependent check on a legacy batched tensor then raises
        return plain
    if is_legacy(plain):  # is_grads_batched: the legacy vmap, levels 1 .. current
        for inner in range(_legacy_vmap_level() - 1, 0, -1):
            if not is_legacy(plain):
                break
            plain = torch._remove_batch_dim(plain, inner, 1, 0)  # the size is unused when batched at `inner`
        if is_legacy(plain):
            return None
    return plain


#: whether :func:`unbatched` can unwrap the batched tensors of ``autograd.grad(is_grads_batched=True)`` (torch >= 2.1)
LEGACY_VMAP_READABLE = hasattr(torch._C._functorch, 'is_legacy_batchedtensor')


def sequence_number(node) -> int:
    """Creation order of an autograd graph node (autograd numbers nodes as the forward pass creates them); 0 where
    the node has no number."""
    number: Optional[Callable] = getattr(node, '_sequence_nr', None)
    return number() if callable(number) else 0


def custom_function(node) -> Optional[type]:
    """The :class:`torch.autograd.Function` subclass behind a custom autograd node, else ``None``."""
    return getattr(type(node), '_forward_cls', None)
