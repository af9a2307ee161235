r"""How many passes run together: the memory model and the one chunk scheduler of both exact paths.

The peak memory of a batched pass is close to linear in its number of seeds :math:`c`,
:math:`\mathrm{peak}(c) = b + c\,u` (the stored activations and parameters are shared by all seeds, only the
relevance flowing backward grows). Two small trial chunks (:data:`TRIAL_CHUNKS`) are measured with
:class:`PeakMemory`, which fits :math:`b` and :math:`u` (:class:`MemoryModel`); the trial chunks are part of the
computation, not extra passes. :class:`ChunkScheduler` turns this into chunk sizes under a budget, for the LRP
passes of the unit-major path and for the second-order passes of the patch-major path alike.
"""
from __future__ import annotations

import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..torch_private import DispatchMode
from .checks import iter_tensors

__all__ = ['TRIAL_CHUNKS', 'PeakMemory', 'MemoryModel', 'ChunkScheduler']

#: sizes of the two measured trial chunks from which the memory per seed is fitted
TRIAL_CHUNKS = (2, 4)


class PeakMemory(DispatchMode):
    """Peak bytes of tensor storage allocated inside the block and alive at the same time, on any device.

    Every operator run inside the block (also inside autograd's backward pass and Zennit's hooks) is seen; a
    result whose storage is new (not one of its inputs', i.e. not a view or in-place result) counts from its
    allocation until the tensor that allocated it is freed (a view that outlives it is not counted). Storage
    allocated before the block is not counted, so the measurement is what the block adds.

    Attributes
    ----------
    peak : int
        The largest number of bytes alive at once.
    current : int
        Bytes allocated inside the block and still alive.

    Examples
    --------
    >>> import torch
    >>> with PeakMemory() as memory:
    ...     a = torch.ones(1000)
    ...     b = a * 2
    ...     del a, b
    >>> memory.peak
    8000
    """

    def __init__(self):
        super().__init__()
        self.peak = 0
        self.current = 0
        self._live: dict = {}

    def _free(self, key: int) -> None:
        size = self._live.pop(key, None)
        if size is not None:
            self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {tensor.untyped_storage().data_ptr() for tensor in iter_tensors((args, kwargs or {}))}
        for tensor in iter_tensors(out):
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in inputs or key in self._live:
                continue
            self._live[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            weakref.finalize(tensor, self._free, key)  # tensors keep their Python object while alive in C++
        return out


@dataclass
class MemoryModel:
    r"""Peak memory of one batched pass as a function of its number of seeds: :math:`b + c\,u`.

    Attributes
    ----------
    base : float
        Bytes :math:`b` that do not grow with the chunk.
    per_unit : float
        Bytes :math:`u` per seed (per explained unit), at least one.
    """
    base: float
    per_unit: float

    @classmethod
    def fit(cls, chunks: Sequence[int], peaks: Sequence[float]) -> MemoryModel:
        r"""The line through two measurements ``(chunks[i], peaks[i])``; with one, :math:`b = 0` (an upper bound
        on :math:`u`).

        Raises
        ------
        ValueError
            Without measurements, or with two of the same chunk size.
        """
        if len(chunks) != len(peaks) or not 1 <= len(chunks) <= 2:
            raise ValueError(f'MemoryModel.fit needs one or two (chunk, peak) measurements, got {len(chunks)}')
        if len(chunks) == 1:
            return cls(0.0, max(float(peaks[0]) / chunks[0], 1.0))
        (c1, c2), (p1, p2) = chunks, peaks
        if c1 == c2:
            raise ValueError(f'MemoryModel.fit needs two different chunk sizes, got {c1} twice')
        per_unit = max((float(p2) - float(p1)) / (c2 - c1), 1.0)
        return cls(max(float(p1) - c1 * per_unit, 0.0), per_unit)

    def peak(self, chunk: int) -> float:
        """Predicted peak bytes of a pass with ``chunk`` seeds."""
        return self.base + chunk * self.per_unit

    def largest_chunk(self, budget: float) -> int:
        """The largest chunk whose predicted peak fits ``budget`` bytes (at least 1)."""
        return max(1, int((budget - self.base) // self.per_unit))


class ChunkScheduler:
    """Chunk sizes of a sequence of batched passes under a memory budget.

    A fixed ``chunk_size`` is used as given; ``single`` runs one pass at a time; ``limit`` caps the chunk (e.g. the
    copies of a replicated batch). Otherwise the first chunks are the measured trial chunks
    (:data:`TRIAL_CHUNKS`, part of the computation), from which the :class:`MemoryModel` is fitted; every later
    chunk is the largest whose predicted peak fits ``budget``. When doubling a trial chunk would already exceed the
    budget, the model is fitted from the one measurement (an upper bound).

    Parameters
    ----------
    budget : float
        Bytes a pass may use.
    fixed : int, optional
        A fixed chunk size.
    single : bool
        One pass at a time.
    limit : int, optional
        Largest chunk.

    Attributes
    ----------
    memory : MemoryModel or None
        The fitted model, once known.
    trials : list of (int, int)
        The measured ``(chunk, peak bytes)`` trials.
    """

    def __init__(self, budget: float, fixed: Optional[int] = None, single: bool = False, limit: Optional[int] = None):
        self.budget = max(float(budget), 1.0)
        self.fixed = fixed
        self.single = single
        self.limit = limit
        self.memory: Optional[MemoryModel] = None
        self.trials: list = []

    def _fitted(self, remaining: int) -> int:
        return max(1, min(remaining, self.memory.largest_chunk(self.budget)))

    def next(self, remaining: int) -> tuple:
        """``(size, measure)`` of the next chunk when ``remaining`` passes are left; ``measure``: run it under
        :class:`PeakMemory` and :meth:`record` the peak."""
        if self.single:
            return 1, False
        if self.fixed is not None:
            return max(1, min(remaining, self.fixed)), False
        if self.limit is not None:
            return max(1, min(remaining, self.limit)), False
        if self.memory is None and len(self.trials) < len(TRIAL_CHUNKS) and remaining > 1:
            size = TRIAL_CHUNKS[len(self.trials)]
            if self.trials:
                chunk, peak = self.trials[-1]
                if peak * size / chunk > self.budget:  # a pass of twice the seeds needs at most twice the memory
                    self.memory = MemoryModel.fit([chunk], [peak])
                    return self._fitted(remaining), False
            if size <= remaining:
                return size, True
            if self.trials:  # too few passes left for the next trial: bound by the last one
                return max(1, min(remaining, MemoryModel.fit([chunk], [peak]).largest_chunk(self.budget))), False
        if self.memory is None and len(self.trials) == len(TRIAL_CHUNKS):
            self.memory = MemoryModel.fit(*zip(*self.trials))
        if self.memory is None:
            return min(remaining, TRIAL_CHUNKS[0]), False
        return self._fitted(remaining), False

    def record(self, size: int, peak: int) -> None:
        """Add a measured trial chunk."""
        self.trials.append((size, peak))

    def measure(self, run: Callable[[int], object]) -> MemoryModel:
        """Fit the model from the trial chunks run by ``run(size)`` now (results discarded), unless known."""
        if self.memory is None:
            peaks = []
            for chunk in TRIAL_CHUNKS:
                with PeakMemory() as memory:
                    run(chunk)
                peaks.append(memory.peak)
            self.memory = MemoryModel.fit(TRIAL_CHUNKS, peaks)
        return self.memory

    def run(self, total: int, step: Callable[[int, int], torch.Tensor], reduce: Callable = lambda out: out,
            desc: str = '', progress: bool = False, retry: Optional[Callable[[RuntimeError, int], bool]] = None
            ) -> list:
        """Run ``step(start, size)`` over ``total`` passes in scheduled chunks; returns ``reduce`` of each chunk's
        result, in order.

        Parameters
        ----------
        retry : callable, optional
            ``retry(error, size)`` for a :class:`RuntimeError` of a step: ``True`` runs the chunk again (after the
            callable changed the schedule, e.g. set :attr:`single`), ``False`` re-raises.
        """
        outputs, start = [], 0
        with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
            while start < total:
                size, measure = self.next(total - start)
                try:
                    with PeakMemory() if measure else nullcontext() as memory:
                        out = step(start, size)
                except RuntimeError as error:
                    if retry is None or not retry(error, size):
                        raise
                    continue
                if measure:
                    self.record(size, memory.peak)
                outputs.append(reduce(out))
                del out
                start += size
                bar.update(size)
        return outputs
