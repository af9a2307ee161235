"""The engine's settings, validated once into one frozen object that every session receives.

:class:`EngineConfig` holds what decides how the LRP passes run (the head, the exact path and its batching, the
memory budget, the progress bar, strict mode, the rule shortcuts). :class:`~zennit_bilrp.core.engine.BiLRP` and
:class:`~zennit_bilrp.analysis.neurons.NeuronLRP` build it from their arguments (:meth:`EngineConfig.make`), which
is the one place where these arguments are checked; sessions, the chunk scheduler and the patch-major passes read
it and check nothing again.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Union

from zennit.core import Composite

from .heads import Head, get_head

__all__ = ['EngineConfig', 'METHODS', 'UNIT_METHODS', 'check_method', 'check_composite']

#: the engine methods that force the unit-major path (and say how its passes are batched)
UNIT_METHODS = ('batched', 'replicate', 'loop')

#: engine methods: ``'auto'`` chooses the exact path from a cost model (:func:`~zennit_bilrp.core.plan.choose`),
#: ``'batched'``, ``'replicate'`` and ``'loop'`` force the unit-major path (and say how its passes are batched),
#: ``'patches'`` forces the patch-major path
METHODS = ('auto',) + UNIT_METHODS + ('patches',)


@dataclass(frozen=True)
class EngineConfig:
    """How the LRP passes of a session run; checked on construction.

    Attributes
    ----------
    head : Head
        Turns the model output into the embedding and the embedding relevance into output relevance.
    method : {'auto', 'batched', 'replicate', 'loop', 'patches'}
        The exact path and its batching (see :class:`~zennit_bilrp.core.engine.BiLRP`).
    chunk_size : int, optional
        Passes per batch (LRP passes and second-order passes); ``None``: from the memory model.
    memory_budget : int
        Bytes the batched passes may use; it also bounds the patch-major path's differentiable pass (the batch is
        split over its samples when one pass of all of them would not fit).
    progress : bool
        Show a progress bar over chunks.
    strict : bool
        Refuse what the registered rules cannot explain (registration check and forward audit).
    shortcut : bool
        Skip the gradients the rules discard (:func:`~zennit_bilrp.lrp.fast_rules.register_rule_shortcuts`).
    """
    head: Head = field(default_factory=lambda: get_head('none'))
    method: str = 'auto'
    chunk_size: Optional[int] = None
    memory_budget: int = 1 << 30
    progress: bool = False
    strict: bool = True
    shortcut: bool = True

    def __post_init__(self):
        if not isinstance(self.head, Head):
            raise TypeError(f'head must be a Head (use EngineConfig.make for names), got {type(self.head).__name__}')
        check_method(self.method)
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int)
                                            or self.chunk_size < 1):
            raise ValueError(f'chunk_size must be a positive integer, got {self.chunk_size!r}')
        if isinstance(self.memory_budget, bool) or not isinstance(self.memory_budget, (int, float)) \
                or self.memory_budget <= 0:
            raise ValueError(f'memory_budget must be positive, got {self.memory_budget!r}')

    @classmethod
    def make(cls, head: Union[str, Head] = 'none', **settings) -> EngineConfig:
        """The configuration with ``head`` resolved by :func:`~zennit_bilrp.core.heads.get_head`."""
        return cls(head=get_head(head), **settings)

    @property
    def unit_method(self) -> str:
        """How unit-major passes are batched: the method if it forces unit-major, else ``'batched'``."""
        return self.method if self.method in UNIT_METHODS else 'batched'

    def but(self, **changes) -> EngineConfig:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`.

    Raises
    ------
    ValueError
        Naming the unknown method and the valid ones.
    """
    if method not in METHODS:
        raise ValueError(f'unknown method {method!r}; choose one of {METHODS}')
    return method


def check_composite(composite, name: str = 'composite') -> None:
    """Refuse what cannot be registered as a Zennit composite, in particular a composite *class*.

    Raises
    ------
    TypeError
        For a class (``EpsilonPlus`` instead of ``EpsilonPlus()``) or an object without ``register``/``remove``.
    """
    if isinstance(composite, type):
        raise TypeError(f'{name} must be a composite instance, got the class {composite.__name__}; instantiate it, '
                        f'e.g. {name}={composite.__name__}()')
    if not isinstance(composite, Composite) and not (callable(getattr(composite, 'register', None))
                                                     and callable(getattr(composite, 'remove', None))):
        raise TypeError(f'{name} must be a zennit Composite (with register() and remove()), got '
                        f'{type(composite).__name__}')
