"""Register LRP rules on models, the Zennit way, and take them off again exactly.

:class:`Registration` is the one place that applies canonizers and a composite to one or two models (a shared
encoder or the two towers of a two-tower model), adds the engine's own hooks (exact BatchNorm merge, pass-through
rules for :class:`~zennit_bilrp.lrp.layers.Normalize`, rule shortcuts), refuses layers that would get no rule
(strict mode), and removes everything on exit. A :class:`~zennit_bilrp.lrp.restore.ModelGuard` records every
model before anything is registered and puts back whatever differs, so the models are exactly as before on every
exit path, errors included. It is re-entrant: nested ``with`` blocks register once.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch

from ..lrp.canonizers import exact_batch_norm_merge
from ..lrp.composites import register_similarity_rules
from ..lrp.fast_rules import register_rule_shortcuts
from ..lrp.restore import ModelGuard
from .checks import TRAIN_SENSITIVE, check_eval_mode

__all__ = ['Registration', 'check_rules']


def check_rules(model: torch.nn.Module, before: dict) -> None:
    """Strict mode: refuse leaf layers with parameters to which the composite assigned no rule.

    Parameters
    ----------
    model : torch.nn.Module
        The model after registration.
    before : dict
        ``id(module) -> number of forward pre-hooks`` recorded before the composite was registered.

    Raises
    ------
    TypeError
        Naming the first such layer.
    """
    for name, module in model.named_modules():
        has_params = any(p is not None for p in module._parameters.values())
        is_leaf = not any(True for _ in module.children())
        if not (has_params and is_leaf) or isinstance(module, TRAIN_SENSITIVE):
            continue
        if len(module._forward_pre_hooks) <= before.get(id(module), 0):
            raise TypeError(
                f"unsupported layer '{name}' ({type(module).__name__}): the composite assigns it no LRP rule, "
                'so its relevance would be a plain gradient. Map it to a rule in the composite (or pass '
                'strict=False to accept this)'
            )


class Registration:
    """Composite and canonizers registered on one or two models, as a re-entrant context manager.

    Parameters
    ----------
    towers : sequence of (model, composite, canonizers)
        One entry per distinct model (one for a shared encoder, two for a two-tower model).
    strict : bool
        Refuse leaf layers with parameters that get no rule (:func:`check_rules`).
    shortcut : bool
        Register :func:`~zennit_bilrp.lrp.fast_rules.register_rule_shortcuts` (skip gradients the rules discard).
    """

    def __init__(self, towers: Sequence[tuple], strict: bool = True, shortcut: bool = True):
        self.towers = [(model, composite, list(canonizers or [])) for model, composite, canonizers in towers]
        self.strict = strict
        self.shortcut = shortcut
        self._guard: Optional[ModelGuard] = None
        self._handles: list = []
        self._depth = 0

    @property
    def models(self) -> list:
        """The registered models."""
        return [model for model, _, _ in self.towers]

    @property
    def active(self) -> bool:
        """Whether the rules are registered now."""
        return self._depth > 0

    def __enter__(self) -> Registration:
        if self._depth == 0:
            self._register()
        self._depth += 1
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> bool:
        self._depth -= 1
        if self._depth == 0:
            self._remove()
        return False

    def ensure(self) -> contextlib.AbstractContextManager:
        """A context in which the rules are registered: this registration if inactive, else a null context."""
        return contextlib.nullcontext(self) if self.active else self

    def _register(self) -> None:
        check_eval_mode(*self.models)
        self._guard = ModelGuard(*self.models)
        self._guard.__enter__()
        try:
            for model, composite, canonizers in self.towers:
                self._register_tower(model, composite, canonizers)
        except BaseException:
            self._remove()
            raise

    def _register_tower(self, model: torch.nn.Module, composite, canonizers: list) -> None:
        before = {id(m): len(m._forward_pre_hooks) for m in model.modules()}
        for canonizer in canonizers:
            self._handles.extend(canonizer.apply(model))
        composite.register(model)
        self._handles.append(composite)
        self._handles.append(exact_batch_norm_merge(self._handles))
        self._handles.extend(register_similarity_rules(model))
        if self.strict:
            check_rules(model, before)
        if self.shortcut:
            self._handles.extend(register_rule_shortcuts(model))

    def _remove(self) -> None:
        errors = []
        for handle in reversed(self._handles):
            try:
                handle.remove()
            except Exception as error:  # keep removing; the guard restores what is left
                errors.append(error)
        self._handles = []
        if self._guard is not None:
            self._guard.restore()
            self._guard = None
        if errors:
            raise RuntimeError(f'removing hooks/canonizers failed (the model was restored): {errors[0]!r}')

    def __iter__(self) -> Iterator:
        return iter(self.towers)
