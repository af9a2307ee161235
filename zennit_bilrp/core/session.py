r"""Forward once, propagate many times: the engine's session.

A :class:`Session` runs one forward pass of a batch through a model whose LRP rules are registered (a guarded
:class:`~zennit_bilrp.core.forward.Forward`), reads the embedding through the head, and then takes any number of
LRP passes of output relevances :math:`\phi(x) \odot s_k` from it (a :class:`~zennit_bilrp.core.propagation.
Propagation` with the head's seeds): the per-unit factors, pooled propagations and marginals, each by the cheaper
exact path. Its settings come in one :class:`~zennit_bilrp.core.config.EngineConfig`.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import METHODS as METHODS  # the import paths of earlier releases keep working
from .config import EngineConfig
from .forward import Forward
from .memory import TRIAL_CHUNKS as TRIAL_CHUNKS
from .memory import MemoryModel as MemoryModel
from .memory import PeakMemory as PeakMemory
from .patches import PROBE_TOLERANCE as PROBE_TOLERANCE
from .pooling import PatchGrid
from .propagation import Propagation
from .propagation import batched_vjp as batched_vjp
from .results import Factors, unit_multipliers
from .seeds import GridPool, HeadSeeds

__all__ = ['Session']


class Session(Propagation):
    """One forward pass of a batch with hooks registered, from which many LRP backward passes are taken.

    Parameters
    ----------
    model : torch.nn.Module
        The model, with its LRP rules registered.
    x : torch.Tensor
        Batch ``(N, ...)``.
    config : EngineConfig
        Head, method, chunk size, memory budget, progress bar and strict mode. :meth:`factors` takes the path the
        method says; :meth:`propagate` always runs unit-major passes, batched as for ``'batched'`` unless
        ``'replicate'`` or ``'loop'`` is given.
    replicas : int
        Copies of the batch in the forward pass (``method='replicate'``; see :meth:`open`).

    Attributes
    ----------
    embedding : torch.Tensor
        ``phi(x)``, ``(N, h)``.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, config: EngineConfig, replicas: int = 1):
        self.head = config.head
        forward = Forward(model, x, strict=config.strict, replicas=replicas, check=config.head.check)
        super().__init__(forward, HeadSeeds(config.head), config)
        self.input_shape = forward.input_shape
        with torch.no_grad():
            embedding = self.head.embed(forward.output.detach()[:self.n])
        if embedding.dim() != 2:
            raise ValueError(f'the embedding has shape {tuple(embedding.shape)}; it must be 2-D (N, h)')
        if not bool(torch.isfinite(embedding).all()):
            raise ValueError('the embedding contains NaN or inf values')
        self.embedding = embedding

    @classmethod
    def open(cls, model: torch.nn.Module, x: torch.Tensor, config: EngineConfig) -> Session:
        """A session for ``config.method``; for ``'replicate'`` a first forward measures the memory per copy of the
        batch (its saved activations plus one seed's backward pass), and the session then holds as many copies
        as fit."""
        session = cls(model, x, config)
        if config.method != 'replicate':
            return session
        h = session.embedding.shape[1]
        if config.chunk_size is not None:
            replicas = max(1, min(h, config.chunk_size))
        else:
            memory = session.measure_memory()
            replicas = max(1, min(h, int((config.memory_budget - memory.base)
                                         // (memory.per_unit + session.forward.bytes))))
        del session
        return cls(model, x, config, replicas=replicas)

    @property
    def forward_bytes(self) -> float:
        """Bytes of activations the forward pass saved, per copy of the batch."""
        return self.forward.bytes

    def unit_index(self, units: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Validated indices of the explained units (default all ``h``)."""
        h = self.embedding.shape[1]
        index = torch.arange(h, device=self.embedding.device) if units is None else units.to(self.embedding.device)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= h):
            raise ValueError(f'unit indices must lie in 0..{h - 1}')
        return index

    def factors(self, grid: PatchGrid, units: Optional[torch.Tensor] = None, desc: str = 'BiLRP') -> Factors:
        """Pooled per-unit explanations of all samples of this session, by the path :meth:`plan` chooses.

        Both paths give the same factors (up to rounding); see :mod:`zennit_bilrp.core.plan`.
        """
        index = self.unit_index(units)
        transpose = self.transpose(GridPool(grid), len(index), desc)
        if transpose is not None:
            rows = transpose[:, :, index] if units is not None else transpose  # (P, N, K)
            return Factors(self.embedding, rows.permute(1, 2, 0).contiguous(), grid, units)
        return self.unit_factors(grid, units, desc)

    def unit_factors(self, grid: PatchGrid, units: Optional[torch.Tensor] = None, desc: str = 'BiLRP') -> Factors:
        """:meth:`factors` by the unit-major path: one LRP pass per unit (batched)."""
        index = self.unit_index(units)
        mult = unit_multipliers(index, self.n, self.embedding.shape[1], self.embedding.dtype, self.embedding.device)
        pooled = self.propagate(mult, lambda rel: GridPool(grid)(rel, 2), desc=desc)  # (K, N, P)
        return Factors(self.embedding, pooled.transpose(0, 1).contiguous(), grid, units)

    def propagate_pooled(self, multipliers: torch.Tensor, grid: PatchGrid, desc: str = 'BiLRP') -> torch.Tensor:
        """:meth:`propagate` pooled to ``grid``, by the cheaper path: ``(K, N, P)`` (see :meth:`pooled`)."""
        return self.pooled(multipliers, GridPool(grid), desc)

    def marginal(self, multipliers: torch.Tensor) -> torch.Tensor:
        """Input-resolution LRP for output relevance ``phi * multipliers`` (``(N, h)``), shaped like the inputs."""
        return self.propagate(multipliers[None], lambda rel: rel)[0]
