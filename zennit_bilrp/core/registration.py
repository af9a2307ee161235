"""Register LRP rules on models, the Zennit way, and take them off again exactly.

:class:`Registration` is the one place that applies canonizers and a composite to one or two models (a shared
encoder or the two towers of a two-tower model), adds the engine's own hooks (exact BatchNorm merge, pass-through
rules for :class:`~zennit_bilrp.lrp.layers.Normalize`, rule shortcuts), refuses layers that would get no rule
(strict mode), and removes everything on exit. A :class:`~zennit_bilrp.lrp.restore.ModelGuard` records every
model before anything is registered and puts back whatever differs, so the models are exactly as before on every
exit path, errors included. It is re-entrant: nested ``with`` blocks register once.

Zennit's hooks and canonizers assume they are alone on a model: a second composite registered on top of the first
would mix both rule sets and a second canonizer would overwrite (and on removal delete) the first one's
``forward``. So a model (or any of its sub-modules) that has an active registration is refused by every other
registration until the first one exits (:func:`active_registration`).
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Optional, Sequence

import torch

from ..lrp.canonizers import exact_batch_norm_merge
from ..lrp.composites import register_similarity_rules
from ..lrp.fast_rules import register_rule_shortcuts
from ..lrp.restore import ModelGuard
from ..torch_private import forward_pre_hooks
from .checks import check_eval_mode
from .strict import check_registered

__all__ = ['Registration', 'active_registration', 'Registered']

# id(module) -> weak reference to the registration whose rules are on it now
_ACTIVE: dict = {}


def active_registration(model: torch.nn.Module) -> Optional[Registration]:
    """The registration whose rules are registered on ``model`` or on any of its sub-modules now, or None.

    Parameters
    ----------
    model : torch.nn.Module
        The model to look up.

    Returns
    -------
    Registration or None
    """
    for module in model.modules():
        ref = _ACTIVE.get(id(module))
        owner = ref() if ref is not None else None
        if owner is not None and owner.active:
            return owner
    return None


class Registration:
    """Composite and canonizers registered on one or two models, as a re-entrant context manager.

    Parameters
    ----------
    towers : sequence of (model, composite, canonizers)
        One entry per distinct model (one for a shared encoder, two for a two-tower model).
    strict : bool
        Refuse layers the composite cannot explain (:func:`~zennit_bilrp.core.strict.check_registered`).
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

    def _claim(self) -> None:
        """Refuse models that another registration is active on, then mark these as taken by this one."""
        for model in self.models:
            owner = active_registration(model)
            if owner is not None and owner is not self:
                raise RuntimeError(
                    f'{type(model).__name__} already has LRP rules registered by another active engine '
                    f'({owner!r}); two composites at once would mix their rules and give wrong relevance. '
                    'Exit the other `with` block first, or use one engine for both explanations'
                )
        for model in self.models:
            for module in model.modules():
                _ACTIVE[id(module)] = weakref.ref(self)

    def _release(self) -> None:
        for model in self.models:
            for module in model.modules():
                ref = _ACTIVE.get(id(module))
                if ref is not None and ref() in (self, None):
                    del _ACTIVE[id(module)]

    def _register(self) -> None:
        check_eval_mode(*self.models)
        self._claim()
        self._guard = ModelGuard(*self.models)
        self._guard.__enter__()
        try:
            for model, composite, canonizers in self.towers:
                self._register_tower(model, composite, canonizers)
        except BaseException:
            self._remove()
            raise

    def _register_tower(self, model: torch.nn.Module, composite, canonizers: list) -> None:
        before = {id(m): len(forward_pre_hooks(m)) for m in model.modules()}
        for canonizer in canonizers:
            self._handles.extend(canonizer.apply(model))
        composite.register(model)
        self._handles.append(composite)
        self._handles.append(exact_batch_norm_merge(self._handles))
        self._handles.extend(register_similarity_rules(model))
        if self.strict:
            check_registered(model, before)
        if self.shortcut:
            self._handles.extend(register_rule_shortcuts(model))

    def _remove(self) -> None:
        try:
            self._remove_handles()
        finally:
            self._release()

    def _remove_handles(self) -> None:
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

    def __repr__(self) -> str:
        towers = ', '.join(f'{type(model).__name__} with {type(composite).__name__}'
                           for model, composite, _ in self.towers)
        return f'Registration({towers}, active={self.active})'


class Registered:
    """Mixin for explainers that own a :class:`Registration` as ``self.registration``: entering the explainer
    registers its rules (re-entrant), leaving it removes them and restores the model."""

    registration: Registration

    def __enter__(self):
        self.registration.__enter__()
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> bool:
        return self.registration.__exit__(exc_type, exc_value, traceback)

    @property
    def active(self) -> bool:
        """Whether composite and canonizers are currently registered."""
        return self.registration.active
