"""Snapshot and restore a model's state around explanation runs.

Composites register hooks, canonizers merge BatchNorm into weights and overload ``forward`` methods. Zennit
reverts all of this in ``remove()``; :class:`ModelGuard` is the second line of defence: it records the state of
every module before anything is registered, and afterwards puts back whatever is different, so that the model
is exactly as before on every exit path, errors included.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..torch_private import hook_dicts, slots

__all__ = ['ModelGuard', 'ModelState']

# plain attribute values (hyper-parameters such as ``eps`` or ``stride``) compared by value, all others by identity
_SCALARS = (bool, int, float, str, tuple, type(None))

_MISSING = object()


def _same_attribute(old, new) -> bool:
    """Plain values compare by value (a recomputed ``eps`` is the same), everything else by identity."""
    if old is new:
        return True
    if isinstance(old, _SCALARS) and isinstance(new, _SCALARS):
        try:
            return bool(old == new)
        except Exception:  # e.g. a tuple holding tensors
            return False
    return False


@dataclass
class _ModuleRecord:
    module: torch.nn.Module
    training: bool
    attributes: dict
    children: dict
    parameters: dict
    buffers: dict
    hooks: dict = field(default_factory=dict)


@dataclass
class ModelState:
    """The recorded state of a module tree.

    Holds, for every sub-module: its train/eval flag, every instance attribute with the object it refers to (so
    that an overloaded or deleted instance ``forward``, e.g. a user's ``types.MethodType`` that a canonizer
    overwrites and then deletes, is put back), its children, the identity, value, ``requires_grad`` flag and
    ``.grad`` of every parameter, its buffers, and the keys of all of its hook dictionaries.
    """
    records: list

    @classmethod
    def capture(cls, model: torch.nn.Module) -> ModelState:
        """Record the state of ``model`` and all of its sub-modules."""
        records = []
        for module in model.modules():
            params = {}
            parameters, buffers, children = slots(module)
            for name, param in parameters.items():
                if param is None:
                    params[name] = (None, None, None, None)
                else:
                    params[name] = (param, param.detach().clone(), param.requires_grad, param.grad)
            buffers = {
                name: (buf, None if buf is None else buf.detach().clone())
                for name, buf in buffers.items()
            }
            hooks = {key: set(hooks.keys()) for key, hooks in hook_dicts(module).items()}
            records.append(_ModuleRecord(
                module=module,
                training=module.training,
                attributes=dict(module.__dict__),
                children=dict(children),
                parameters=params,
                buffers=buffers,
                hooks=hooks,
            ))
        return cls(records)

    @torch.no_grad()
    def restore(self) -> None:
        """Put every recorded module back into its recorded state."""
        for rec in self.records:
            _restore_module(rec)

    def differences(self, model: torch.nn.Module) -> list:
        """List human-readable differences between the recorded state and ``model`` now (empty if identical)."""
        now = ModelState.capture(model)
        diffs = []
        if len(now.records) != len(self.records):
            diffs.append(f'number of modules changed: {len(self.records)} -> {len(now.records)}')
        for old, new in zip(self.records, now.records):
            name = type(old.module).__name__
            if old.module is not new.module:
                diffs.append(f'module order/identity changed at {name}')
                continue
            if old.training != new.training:
                diffs.append(f'{name}: training flag {old.training} -> {new.training}')
            if old.attributes.keys() != new.attributes.keys():
                diffs.append(f'{name}: instance attributes differ: {old.attributes.keys() ^ new.attributes.keys()}')
            changed = [key for key in old.attributes.keys() & new.attributes.keys()
                       if not _same_attribute(old.attributes[key], new.attributes[key])]
            if changed:
                diffs.append(f'{name}: attribute values changed: {sorted(changed)}')
            if old.children.keys() != new.children.keys():
                diffs.append(f'{name}: children differ')
            for key in old.hooks:
                if old.hooks[key] != new.hooks.get(key):
                    diffs.append(f'{name}: {key} differ')
            for pname, (param, value, req, grad) in old.parameters.items():
                nparam, nvalue, nreq, ngrad = new.parameters.get(pname, (None, None, None, None))
                if param is not nparam:
                    diffs.append(f'{name}.{pname}: parameter object replaced')
                elif param is not None and (not torch.equal(value, nvalue) or req != nreq or grad is not ngrad):
                    diffs.append(f'{name}.{pname}: value, requires_grad or grad changed')
            for bname, (buf, value) in old.buffers.items():
                nbuf, nvalue = new.buffers.get(bname, (None, None))
                if buf is not nbuf or (buf is not None and not torch.equal(value, nvalue)):
                    diffs.append(f'{name}.{bname}: buffer changed')
        return diffs


class ModelGuard:
    """Context manager that restores one or more models to their state at entry, on every exit path.

    Parameters
    ----------
    *models : torch.nn.Module
        The models to guard.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 2)
    >>> with ModelGuard(model):
    ...     _ = model.train(False)
    >>> model.training
    True
    """

    def __init__(self, *models: torch.nn.Module):
        self.models = [model for model in models if model is not None]
        self.states = []

    def __enter__(self) -> ModelGuard:
        self.states = [ModelState.capture(model) for model in self.models]
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> bool:
        self.restore()
        return False

    def restore(self) -> None:
        """Restore all guarded models now."""
        for state in self.states:
            state.restore()


def _restore_module(rec: _ModuleRecord) -> None:
    """Put one module back into its recorded state (hooks, attributes, children, parameters, buffers, flag)."""
    module = rec.module
    for key, hooks in hook_dicts(module).items():
        for extra in set(hooks.keys()) - rec.hooks.get(key, set()):
            del hooks[extra]
    current = module.__dict__
    for extra in set(current.keys()) - set(rec.attributes.keys()):
        del current[extra]
    for key, value in rec.attributes.items():
        if current.get(key, _MISSING) is not value:
            current[key] = value
    parameters, buffers, children = slots(module)
    _restore_slots(children, rec.children)
    for name, (param, value, requires_grad, grad) in rec.parameters.items():
        parameters[name] = param
        if param is None:
            continue
        if param.shape != value.shape or param.dtype != value.dtype:
            param.data = value.clone()
        elif not torch.equal(param.data, value):
            param.data.copy_(value)
        param.requires_grad_(requires_grad)
        param.grad = grad
    _restore_slots(parameters, rec.parameters)
    for name, (buf, value) in rec.buffers.items():
        buffers[name] = buf
        if buf is not None and not torch.equal(buf, value):
            buf.copy_(value)
    _restore_slots(buffers, rec.buffers)
    module.training = rec.training


def _restore_slots(live: dict, recorded: dict) -> None:
    """Drop the slots added since the record; put back the recorded objects of the others (values of parameters
    and buffers are restored by the caller)."""
    for name in list(live.keys()):
        if name not in recorded:
            del live[name]
    for name, entry in recorded.items():
        live[name] = entry[0] if isinstance(entry, tuple) else entry
