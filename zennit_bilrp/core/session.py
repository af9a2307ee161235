r"""Forward once, propagate many times: the engine's primitives.

A :class:`Session` runs one forward pass of a batch through a model whose LRP rules are registered, and then takes
any number of LRP backward passes from it. Because LRP is linear in the output relevance, the passes for output
relevances :math:`\phi(x) \odot s_k`, :math:`k = 1..K`, are batched (:func:`batched_vjp`) and reduced (pooled) as
soon as each chunk is computed, so that memory grows with the chunk, never with :math:`K \times d`.

The chunk is chosen from a measurement: the peak memory of a batched pass is close to linear in its number of
seeds :math:`c`, :math:`\mathrm{peak}(c) = b + c\,u` (the stored activations and parameters are shared by all seeds,
only the relevance flowing backward grows). Two small trial chunks (:data:`TRIAL_CHUNKS`) are measured with
:class:`PeakMemory`, which fits :math:`b` and :math:`u` (:class:`MemoryModel`); the trial chunks are part of the
computation, not extra passes.

:class:`SessionPair` hides the choice between a shared encoder (both inputs of each pair in one forward pass,
which Zennit's hooks require: they keep only the last forward's input) and a two-tower model.
"""
from __future__ import annotations

import time
import warnings
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm.auto import tqdm

from .checks import iter_tensors
from .heads import Head
from .plan import UNIT_METHODS, NotDifferentiableError, PassCosts, PathFallbackWarning, Plan, ambiguous, choose
from .pooling import PatchGrid, Pooling
from .results import Factors, unit_multipliers
from .strict import ForwardAudit

__all__ = ['METHODS', 'TRIAL_CHUNKS', 'PROBE_TOLERANCE', 'Session', 'SessionPair', 'batched_vjp', 'PeakMemory',
           'MemoryModel']

#: engine methods: ``'auto'`` chooses the exact path from a cost model (:func:`~zennit_bilrp.core.plan.choose`),
#: ``'batched'``, ``'replicate'`` and ``'loop'`` force the unit-major path (and say how its passes are batched),
#: ``'patches'`` forces the patch-major path
METHODS = ('auto',) + UNIT_METHODS + ('patches',)

#: sizes of the two measured trial chunks from which the memory per seed is fitted
TRIAL_CHUNKS = (2, 4)

#: relative tolerance of the patch-major path's linearity check, by dtype (see :meth:`Session.patch_transpose`)
PROBE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.05}


#: devices on which second-order passes run one at a time (on CPU a loop was faster than ``is_grads_batched`` over
#: the second-order graph: ResNet-18 64x64 float64, 0.16 s vs 0.34 s per pass)
SINGLE_PATCH_DEVICES = ('cpu',)


def pool_leading(pool: Callable) -> Callable:
    """``pool`` (``(N, ...) -> (N, P)``) applied to relevance with a leading seed axis, ``(K, N, ...) -> (K, N, P)``."""
    def pooled(relevance: torch.Tensor) -> torch.Tensor:
        return torch.stack([pool(part) for part in relevance])
    return pooled


def batched_vjp(output: torch.Tensor, inputs: torch.Tensor, seeds: torch.Tensor,
                retain_graph: bool = True, create_graph: bool = False) -> torch.Tensor:
    """Vector-Jacobian products of ``output`` w.r.t. ``inputs`` for a batch of seeds ``(K, *output.shape)``.

    With LRP rules registered the result is the LRP relevance of each seed. One seed is one ordinary backward
    pass; several use ``torch.autograd.grad(..., is_grads_batched=True)``, which runs them as one batched pass.

    Returns
    -------
    torch.Tensor
        ``(K, *inputs.shape)``.
    """
    if seeds.shape[0] == 1:
        grad, = torch.autograd.grad(output, inputs, seeds[0], retain_graph=retain_graph, create_graph=create_graph)
        return grad[None]
    grad, = torch.autograd.grad(output, inputs, seeds, retain_graph=retain_graph, create_graph=create_graph,
                                is_grads_batched=True)
    return grad


class PeakMemory(TorchDispatchMode):
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
    r"""Peak memory of one batched LRP pass as a function of its number of seeds: :math:`b + c\,u`.

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


class Session:
    """One forward pass of a batch with hooks registered, from which many LRP backward passes are taken.

    Parameters
    ----------
    model : torch.nn.Module
        The model, with its LRP rules registered.
    x : torch.Tensor
        Batch ``(N, ...)``.
    head : Head
        Turns the model output into the embedding ``(N, h)`` and the output relevance.
    method : {'auto', 'batched', 'replicate', 'loop', 'patches'}
        Which exact path :meth:`factors` takes and how the unit-major passes are batched (see
        :class:`~zennit_bilrp.core.engine.BiLRP`); :meth:`propagate` always runs unit-major passes, batched as
        for ``'batched'`` unless ``'replicate'`` or ``'loop'`` is given.
    chunk_size : int, optional
        Passes per batch (LRP passes and second-order passes); default: the largest chunk that fits
        ``memory_budget``, by the fitted :class:`MemoryModel` (second-order passes: one at a time on CPU, where
        that was fastest).

    memory_budget : int
        Bytes the batched passes may use.
    progress : bool
        Show a progress bar over chunks.
    replicas : int
        Copies of the batch in the forward pass (``method='replicate'``).
    strict : bool
        Run the forward pass under :class:`~zennit_bilrp.core.strict.ForwardAudit` and refuse (``TypeError``
        naming the module) what the registered rules cannot explain.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, head: Head, method: str = 'batched',
                 chunk_size: Optional[int] = None, memory_budget: int = 1 << 30, progress: bool = False,
                 replicas: int = 1, strict: bool = False):
        if torch.is_inference_mode_enabled():
            raise RuntimeError('torch.inference_mode() is active: it records no autograd graph, so no LRP pass can '
                               'be taken. Call the engine outside inference_mode (torch.no_grad() is fine)')
        if method not in METHODS:
            raise ValueError(f'unknown method {method!r}; choose one of {METHODS}')
        self.head = head
        self.method = method
        #: how unit-major passes are batched
        self.unit_method = method if method in UNIT_METHODS else 'batched'
        #: the :class:`~zennit_bilrp.core.plan.Plan` of the latest :meth:`factors` or :meth:`propagate_pooled`
        self.last_plan: Optional[Plan] = None
        #: bytes retained by the latest differentiable LRP pass (the graph the second-order passes run through)
        self.graph_bytes: Optional[int] = None
        #: fitted memory model of the second-order passes (see :meth:`patch_transpose`)
        self.patch_memory: Optional[MemoryModel] = None
        self._costs: Optional[PassCosts] = None
        self._single_patch = False
        self.fixed_chunk = chunk_size
        self.memory_budget = memory_budget
        self.progress = progress
        self.n = x.shape[0]
        self.replicas = replicas
        self.input_shape = tuple(x.shape[1:])
        self.memory: Optional[MemoryModel] = None
        self._trials: list = []
        inp = x.detach()
        if inp.is_inference():
            inp = inp.clone()  # a tensor made under inference_mode cannot enter an autograd graph
        if replicas > 1:
            inp = inp.repeat(replicas, *([1] * (x.dim() - 1)))
        self.x = inp.requires_grad_(True)
        self.strict = strict
        self.output, self.forward_bytes = self._forward(model)
        with torch.no_grad():
            embedding = head.embed(self.output.detach()[:self.n])
        if embedding.dim() != 2:
            raise ValueError(f'the embedding has shape {tuple(embedding.shape)}; it must be 2-D (N, h)')
        if not bool(torch.isfinite(embedding).all()):
            raise ValueError('the embedding contains NaN or inf values')
        self.embedding = embedding

    def _forward(self, model: torch.nn.Module) -> tuple:
        """The forward pass; returns the output and the bytes of activations it saved per copy of the batch."""
        saved = [0]

        def pack(tensor):
            # parameters are shared by all passes: only activations grow with the batch
            if not isinstance(tensor, torch.nn.Parameter):
                saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        auditor = ForwardAudit(model) if self.strict else nullcontext()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), auditor:
            try:
                output = model(self.x)
            except RuntimeError as error:
                raise RuntimeError(f'the model failed on the input batch of shape {tuple(self.x.shape)} (it expects '
                                   f'a batch (N, ...) with the sample axes it was built for): {error}') from error
        if not isinstance(output, torch.Tensor):
            raise TypeError(f'the model must return a tensor, got {type(output).__name__}')
        if self.strict:
            auditor.verify(output)
        self.head.check(output)
        if output.grad_fn is None:
            raise RuntimeError('the model output does not depend on the input (no autograd graph): its parameters and '
                               'input are detached from it, e.g. by .detach(), torch.no_grad() inside forward or '
                               'a non-differentiable operation')
        return output, saved[0] / self.replicas

    @classmethod
    def open(cls, model: torch.nn.Module, x: torch.Tensor, head: Head, method: str = 'batched',
             chunk_size: Optional[int] = None, memory_budget: int = 1 << 30, progress: bool = False,
             strict: bool = False) -> Session:
        """A session for ``method``; for ``'replicate'`` a first forward measures the memory per copy of the
        batch (its saved activations plus one seed's backward pass), and the session then holds as many copies
        as fit."""
        session = cls(model, x, head, method, chunk_size, memory_budget, progress, strict=strict)
        if method != 'replicate':
            return session
        h = session.embedding.shape[1]
        if chunk_size is not None:
            replicas = max(1, min(h, chunk_size))
        else:
            memory = session.measure_memory()
            replicas = max(1, min(h, int((memory_budget - memory.base)
                                         // (memory.per_unit + session.forward_bytes))))
        del session
        return cls(model, x, head, method, chunk_size, memory_budget, progress, replicas=replicas, strict=strict)

    def _seeds(self, multipliers: torch.Tensor) -> torch.Tensor:
        return self.head.output_relevance(self.output, multipliers.to(self.output))

    def measure_memory(self) -> MemoryModel:
        """Fit the :class:`MemoryModel` of this session's batched passes from two trial passes of
        :data:`TRIAL_CHUNKS` seeds (results discarded; :meth:`propagate` measures its own first chunks instead)."""
        if self.memory is None:
            ones = self.embedding.new_ones(max(TRIAL_CHUNKS), self.n, self.embedding.shape[1])
            peaks = []
            for chunk in TRIAL_CHUNKS:
                with PeakMemory() as memory:
                    batched_vjp(self.output, self.x, self._seeds(ones[:chunk]))
                peaks.append(memory.peak)
            self.memory = MemoryModel.fit(TRIAL_CHUNKS, peaks)
        return self.memory

    @property
    def bytes_per_unit(self) -> float:
        """Measured bytes per seed of a batched pass (:attr:`MemoryModel.per_unit`; measured on first use)."""
        return self.measure_memory().per_unit

    def chunk_size(self, total: int) -> int:
        """Number of backward passes batched together under the memory budget."""
        if self.fixed_chunk is not None:
            return max(1, min(total, self.fixed_chunk))
        if total <= 1:
            return 1
        return max(1, min(total, self.measure_memory().largest_chunk(self.memory_budget)))

    def _next_chunk(self, remaining: int) -> tuple:
        """``(size, measure)`` of the next chunk of :meth:`propagate`: the trial chunks first, then the fitted one."""
        if self.unit_method == 'loop':
            return 1, False
        if self.unit_method == 'replicate':
            return min(remaining, self.replicas), False
        if self.fixed_chunk is not None:
            return max(1, min(remaining, self.fixed_chunk)), False
        if self.memory is None and len(self._trials) < len(TRIAL_CHUNKS) and remaining > 1:
            size = TRIAL_CHUNKS[len(self._trials)]
            if self._trials:  # a pass of twice the seeds needs at most twice the memory
                chunk, peak = self._trials[-1]
                if peak * size / chunk > self.memory_budget:
                    self.memory = MemoryModel.fit([chunk], [peak])
                    return self._next_chunk(remaining)
            if size <= remaining:
                return size, True
            if self._trials:  # too few seeds left for the second trial: bound by the first one
                chunk, peak = self._trials[-1]
                return max(1, min(remaining, MemoryModel.fit([chunk], [peak]).largest_chunk(self.memory_budget))), False
        if self.memory is None and len(self._trials) == len(TRIAL_CHUNKS):
            chunks, peaks = zip(*self._trials)
            self.memory = MemoryModel.fit(chunks, peaks)
        if self.memory is None:
            return min(remaining, TRIAL_CHUNKS[0]), False
        return max(1, min(remaining, self.memory.largest_chunk(self.memory_budget))), False

    def _pass(self, mult: torch.Tensor) -> torch.Tensor:
        if self.unit_method == 'replicate':
            return self._replicated(mult)
        return batched_vjp(self.output, self.x, self._seeds(mult))

    def propagate(self, multipliers: torch.Tensor, reduce: Callable, desc: str = 'BiLRP') -> Union[torch.Tensor,
                                                                                                  tuple]:
        """LRP for output relevance ``phi * multipliers[k]``, for each ``k``, reduced by ``reduce``.

        Parameters
        ----------
        multipliers : torch.Tensor
            ``(K, N, h)`` multipliers of the embedding (output relevance is ``phi * multipliers``).
        reduce : callable
            Maps input relevance ``(c, N, *input_shape)`` to the kept form (e.g. pooled ``(c, N, P)``), or to a
            tuple of such tensors.
        desc : str
            Label of the progress bar.

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            ``reduce`` applied to all ``K`` explanations, concatenated along the first axis (each part of a
            tuple separately).
        """
        total = multipliers.shape[0]
        outputs = []
        start = 0
        with tqdm(total=total, desc=desc, disable=not self.progress, leave=False) as bar:
            while start < total:
                size, measure = self._next_chunk(total - start)
                with PeakMemory() if measure else nullcontext() as memory:
                    rel = self._pass(multipliers[start:start + size])
                if measure:
                    self._trials.append((size, memory.peak))
                outputs.append(reduce(rel.detach()))
                del rel
                start += size
                bar.update(size)
        if isinstance(outputs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outputs))
        return torch.cat(outputs)

    def _replicated(self, mult: torch.Tensor) -> torch.Tensor:
        count = mult.shape[0]
        if count < self.replicas:
            mult = torch.cat([mult, mult.new_zeros(self.replicas - count, *mult.shape[1:])])
        seed = self.head.output_relevance(self.output[:self.n], mult.to(self.output))
        grad, = torch.autograd.grad(self.output, self.x, seed.flatten(0, 1), retain_graph=True)
        return grad.reshape(self.replicas, self.n, *self.input_shape)[:count]

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
        if self.plan(len(index), grid.num_patches).path == 'patches':
            transpose = self._patch_or_fallback(lambda rel: Pooling.apply(rel, grid, 1), desc, len(index),
                                                grid.num_patches)
            if transpose is not None:
                rows = transpose[:, :, index] if units is not None else transpose  # (P, N, K)
                return Factors(self.embedding, rows.permute(1, 2, 0).contiguous(), grid, units)
        return self.unit_factors(grid, units, desc)

    def unit_factors(self, grid: PatchGrid, units: Optional[torch.Tensor] = None, desc: str = 'BiLRP') -> Factors:
        """:meth:`factors` by the unit-major path: one LRP pass per unit (batched)."""
        index = self.unit_index(units)
        mult = unit_multipliers(index, self.n, self.embedding.shape[1], self.embedding.dtype, self.embedding.device)
        pooled = self.propagate(mult, lambda rel: Pooling.apply(rel, grid, 2), desc=desc)  # (K, N, P)
        return Factors(self.embedding, pooled.transpose(0, 1).contiguous(), grid, units)

    def propagate_pooled(self, multipliers: torch.Tensor, grid: PatchGrid, desc: str = 'BiLRP') -> torch.Tensor:
        r""":meth:`propagate` pooled to ``grid``, by the cheaper path.

        Since :math:`\mathrm{Pool}\,M(x)\,(\phi \odot s_k) = F(x)^\top s_k`, ``K`` multipliers cost ``K`` LRP passes
        unit-major, or the :math:`P` second-order passes of :math:`F` and a matrix product patch-major.

        Returns
        -------
        torch.Tensor
            ``(K, N, P)``.
        """
        count = multipliers.shape[0]
        if self.plan(count, grid.num_patches).path == 'patches':
            transpose = self._patch_or_fallback(lambda rel: Pooling.apply(rel, grid, 1), desc, count,
                                                grid.num_patches)
            if transpose is not None:
                return torch.einsum('knh,pnh->knp', multipliers.to(transpose), transpose)
        return self.propagate(multipliers, lambda rel: Pooling.apply(rel, grid, 2), desc=desc)

    def plan(self, units: int, patches: int) -> Plan:
        """The path for ``units`` explained units and ``patches`` patches (:func:`~zennit_bilrp.core.plan.choose`),
        with pass costs measured on this session (:meth:`pass_costs`) when the default costs leave the choice
        open; stored as :attr:`last_plan`."""
        costs = PassCosts()
        if self.method == 'auto' and ambiguous(units, patches):
            costs = self.pass_costs(patches)
        self.last_plan = choose(self.method, units, patches, costs)
        return self.last_plan

    def _patch_or_fallback(self, pool: Callable, desc: str, units: int, patches: int) -> Optional[torch.Tensor]:
        """:meth:`patch_transpose`, or under ``method='auto'`` ``None`` with a :class:`PathFallbackWarning` when
        the LRP pass is not differentiable in its seed."""
        try:
            return self.patch_transpose(pool, desc)
        except NotDifferentiableError as error:
            if self.method == 'patches':
                raise
            self.last_plan = choose('auto', units, patches, self.last_plan.costs, differentiable=str(error))
            warnings.warn(f'the patch-major path was cheaper but impossible ({error}); running the unit-major '
                          'path instead', PathFallbackWarning, stacklevel=4)
            return None

    def _synchronize(self) -> None:
        if self.x.device.type == 'cuda':
            torch.cuda.synchronize(self.x.device)

    def _differentiable_pass(self, probe: torch.Tensor, pool: Callable) -> tuple:
        """The LRP pass of output relevance ``phi * r`` at ``r = probe`` with ``create_graph=True``: ``(r, q)``,
        ``q = pool(M(x) (phi * r))`` of shape ``(N, P)``, differentiable in ``r``."""
        r = probe.detach().clone().requires_grad_(True)
        seed = self._seeds(r[None])[0]
        relevance, = torch.autograd.grad(self.output, self.x, seed, retain_graph=True, create_graph=True)
        if not relevance.requires_grad:
            raise NotDifferentiableError(
                'the LRP backward pass is not differentiable in its seed: the input relevance of a seed that '
                'requires grad does not require grad (a rule computes its relevance without create_graph, or '
                'detaches it)')
        pooled = pool(relevance)
        if pooled.dim() != 2 or pooled.shape[0] != self.n:
            raise ValueError(f'pool must map relevance (N, ...) to (N, P), got {tuple(pooled.shape)}')
        return r, pooled

    def _second_order(self, pooled: torch.Tensor, r: torch.Tensor, start: int, size: int) -> torch.Tensor:
        """Columns ``start .. start + size`` of the factors: ``(size, N, h)`` with entry ``[j, n, m]`` the
        derivative of ``pooled[n, start + j]`` by ``r[n, m]`` (samples do not interact, so one pass serves all
        ``N``)."""
        if size == 1:
            column, = torch.autograd.grad(pooled[:, start].sum(), r, retain_graph=True, allow_unused=True)
            return torch.zeros_like(r)[None] if column is None else column[None]
        seeds = torch.zeros(size, *pooled.shape, dtype=pooled.dtype, device=pooled.device)
        seeds[torch.arange(size), :, start + torch.arange(size)] = 1.0
        columns, = torch.autograd.grad(pooled, r, seeds, retain_graph=True, is_grads_batched=True,
                                       allow_unused=True)
        return torch.zeros(size, *r.shape, dtype=r.dtype, device=r.device) if columns is None else columns

    def _next_patch_chunk(self, remaining: int, trials: list) -> tuple:
        """``(size, measure)`` of the next chunk of second-order passes (cf. :meth:`_next_chunk`): one at a time on
        CPU (measured fastest there), else trial chunks and the fitted :attr:`patch_memory` under the budget left
        by the differentiable pass's graph."""
        if self._single_patch:
            return 1, False
        if self.fixed_chunk is not None:
            return max(1, min(remaining, self.fixed_chunk)), False
        if self.x.device.type in SINGLE_PATCH_DEVICES or remaining <= 1:
            return 1, False
        budget = max(self.memory_budget - (self.graph_bytes or 0), 1)
        if self.patch_memory is None and len(trials) < len(TRIAL_CHUNKS):
            size = TRIAL_CHUNKS[len(trials)]
            if trials and trials[-1][1] * size / trials[-1][0] > budget:
                self.patch_memory = MemoryModel.fit([trials[-1][0]], [trials[-1][1]])
            elif size <= remaining:
                return size, True
            else:
                return min(remaining, TRIAL_CHUNKS[0]), False
        if self.patch_memory is None:
            chunks, peaks = zip(*trials)
            self.patch_memory = MemoryModel.fit(chunks, peaks)
        return max(1, min(remaining, self.patch_memory.largest_chunk(budget))), False

    def patch_transpose(self, pool: Callable, desc: str = 'BiLRP') -> torch.Tensor:
        r"""The transposed factors by the patch-major path: ``(P, N, h)``, entry ``[p, n, m]`` = :math:`F(x_n)_{m,p}`.

        One LRP pass of the output relevance :math:`\phi \odot r` at a random probe :math:`r = v_1` is taken with
        ``create_graph=True``; :math:`q(r) = \mathrm{pool}(M(x)(\phi \odot r))` is linear in :math:`r`, so the
        derivative of :math:`q_p` by :math:`r` (one second-order pass, batched over the samples) is column
        :math:`p` of :math:`F`. The result is verified on two probes: :math:`F^\top v = q(v)` for :math:`v_1` (free:
        :math:`q(v_1)` is the differentiable pass's value) and for a second random :math:`v_2` (one ordinary LRP
        pass), relative to :math:`|F|^\top |v|`, within :data:`PROBE_TOLERANCE` of the dtype. This catches rules
        that detach their relevance or are not linear in it.

        The differentiable pass holds the graph of the LRP pass (:attr:`graph_bytes`, measured with
        :class:`PeakMemory`); the second-order passes run one at a time on CPU, elsewhere in chunks fitted under
        what is left of ``memory_budget`` (:attr:`patch_memory`).

        Parameters
        ----------
        pool : callable
            Maps input relevance ``(N, *input_shape)`` to ``(N, P)`` (a sum over patches, or any linear map).
        desc : str
            Label of the progress bar.

        Raises
        ------
        NotDifferentiableError
            If the LRP pass is not differentiable in its seed, or the factors fail the probe check.
        """
        h = self.embedding.shape[1]
        generator = torch.Generator().manual_seed(0)
        probes = torch.randn(2, self.n, h, generator=generator, dtype=torch.float64).to(self.embedding)
        with PeakMemory() as memory:
            r, pooled = self._differentiable_pass(probes[0], pool)
        self.graph_bytes = memory.current
        total = pooled.shape[1]
        columns, trials, start = [], [], 0
        with tqdm(total=total, desc=f'{desc} (patches)', disable=not self.progress, leave=False) as bar:
            while start < total:
                size, measure = self._next_patch_chunk(total - start, trials)
                try:
                    with PeakMemory() if measure else nullcontext() as chunk_memory:
                        columns.append(self._second_order(pooled, r, start, size).detach())
                except RuntimeError as error:
                    if size == 1 or 'atching rule' not in str(error):
                        raise
                    # an operation of the second-order graph has no batching rule: one pass at a time from here
                    self._single_patch = True
                    continue
                if measure:
                    trials.append((size, chunk_memory.peak))
                start += size
                bar.update(size)
        transpose = torch.cat(columns)  # (P, N, h)
        values = [pooled.detach()]
        del r, pooled
        second = self.propagate(probes[1:], pool_leading(pool), desc=f'{desc} (probe)')[0]
        values.append(second)
        self._check_probes(transpose, probes, values)
        return transpose

    @staticmethod
    def _check_probes(transpose: torch.Tensor, probes: torch.Tensor, values: list) -> None:
        tolerance = PROBE_TOLERANCE.get(transpose.dtype, PROBE_TOLERANCE[torch.float32])
        for k, value in enumerate(values):
            probe = probes[k].to(transpose)
            predicted = torch.einsum('pnh,nh->np', transpose, probe)
            scale = torch.einsum('pnh,nh->np', transpose.abs(), probe.abs()).amax()
            error = float((predicted - value.to(transpose)).abs().amax())
            if float(scale) == 0 and error > 0:
                raise NotDifferentiableError(
                    'the LRP backward pass is not differentiable in its seed: the second-order passes give zero '
                    f'factors where the relevance is not zero (|q(v)| = {error:.3g}); a rule detaches its relevance '
                    'from the seed')
            if not error <= tolerance * float(scale) + torch.finfo(transpose.dtype).tiny:
                raise NotDifferentiableError(
                    f'the patch-major factors fail the linearity check on probe {k + 1}: |F^T v - q(v)| = {error:.3g}'
                    f' against |F|^T |v| = {float(scale):.3g} (tolerance {tolerance:g}); a rule detaches part of '
                    'its relevance from the seed or is not linear in it')

    def pass_costs(self, patches: int = 2) -> PassCosts:
        """Measure the costs of the differentiable pass and of a second-order pass relative to an LRP pass (per
        seed, at the chunk the unit-major path would use, at most 8; the faster of two), on this session; results
        are discarded. Cached on the session."""
        if self._costs is None:
            h = self.embedding.shape[1]
            chunk = min(8, self.chunk_size(h))
            mult = self.embedding.new_ones(chunk, self.n, h)
            lrp = float('inf')
            for _ in range(2):  # the first backward pass of a model may pay one-time costs: keep the faster
                self._synchronize()
                begin = time.perf_counter()
                self._pass(mult)
                self._synchronize()
                lrp = min(lrp, (time.perf_counter() - begin) / chunk)
            probe = torch.ones_like(self.embedding)
            begin = time.perf_counter()
            try:
                r, pooled = self._differentiable_pass(probe, lambda rel: rel.flatten(1)[:, :max(2, patches)])
            except NotDifferentiableError:
                self._costs = PassCosts()
                return self._costs
            self._synchronize()
            graph = time.perf_counter() - begin
            begin = time.perf_counter()
            for column in range(2):
                self._second_order(pooled, r, column, 1)
            self._synchronize()
            second = (time.perf_counter() - begin) / 2
            del r, pooled
            self._costs = PassCosts(graph / lrp, second / lrp, True, lrp)
        return self._costs

    def marginal(self, multipliers: torch.Tensor) -> torch.Tensor:
        """Input-resolution LRP for output relevance ``phi * multipliers`` (``(N, h)``), shaped like the inputs."""
        return self.propagate(multipliers[None], lambda rel: rel)[0]


def _pad(multipliers: torch.Tensor, count: int) -> torch.Tensor:
    if multipliers.shape[0] == count:
        return multipliers
    return torch.cat([multipliers, multipliers.new_zeros(count - multipliers.shape[0], *multipliers.shape[1:])])


class SessionPair:
    """The forward passes of both inputs of a batch of pairs, hiding shared-encoder vs two-tower.

    With a shared encoder and equal sample shapes, ``x_a`` and ``x_b`` go through one forward pass of
    ``cat([x_a, x_b])`` (*joint*), and every LRP pass serves both sides. Otherwise each side has its own session;
    with a shared encoder only the latest forward's graph is valid (Zennit's hooks keep only the last input), so
    a side's session is reopened when the other one was opened after it.

    Parameters
    ----------
    open_session : callable
        ``open_session(model, x) -> Session``.
    model_a, model_b : torch.nn.Module
        The towers (the same object for a shared encoder).
    x_a, x_b : torch.Tensor
        The inputs ``(N_a, ...)`` and ``(N_b, ...)``.
    """

    def __init__(self, open_session: Callable, model_a: torch.nn.Module, model_b: torch.nn.Module,
                 x_a: torch.Tensor, x_b: torch.Tensor):
        self.open_session = open_session
        self.models = {'a': model_a, 'b': model_b}
        self.inputs = {'a': x_a, 'b': x_b}
        self.shared = model_a is model_b
        self.joint = self.shared and tuple(x_a.shape[1:]) == tuple(x_b.shape[1:])
        self.n_a = x_a.shape[0]
        self._sessions: dict = {}
        self._embeddings: dict = {}
        if self.joint:
            both = open_session(model_a, torch.cat([x_a, x_b]))
            self._sessions['ab'] = both
            self._embeddings = {'a': both.embedding[:self.n_a], 'b': both.embedding[self.n_a:]}

    def session(self, side: str) -> Session:
        """The valid session of one side (not joint); with a shared encoder, opening one closes the other."""
        if self.joint:
            raise RuntimeError('a joint SessionPair has one session for both sides: use propagate()')
        if side not in self._sessions:
            if self.shared:
                self._sessions.clear()
            self._sessions[side] = self.open_session(self.models[side], self.inputs[side])
            self._embeddings[side] = self._sessions[side].embedding
        return self._sessions[side]

    def embedding(self, side: str) -> torch.Tensor:
        """The embeddings ``phi(x)`` of one side, ``(N, h)``."""
        if side not in self._embeddings:
            self.session(side)
        return self._embeddings[side]

    def propagate(self, multipliers_a: torch.Tensor, multipliers_b: torch.Tensor, reduce_a: Callable,
                  reduce_b: Callable, desc: str = 'BiLRP') -> tuple:
        """:meth:`Session.propagate` of both sides: ``(reduce_a(relevance_a), reduce_b(relevance_b))``.

        Parameters
        ----------
        multipliers_a, multipliers_b : torch.Tensor or callable
            ``(K_a, N_a, h_a)`` and ``(K_b, N_b, h_b)``, or functions of the side's embedding returning them
            (so that no side is opened only to learn its embedding); in a joint pass the shorter one is padded
            with zeros.
        reduce_a, reduce_b : callable
            Reductions of each side's input relevance ``(c, N, *input_shape)``.
        desc : str
            Label of the progress bar.
        """
        if self.joint:
            if callable(multipliers_a):
                multipliers_a = multipliers_a(self.embedding('a'))
            if callable(multipliers_b):
                multipliers_b = multipliers_b(self.embedding('b'))
            count = max(multipliers_a.shape[0], multipliers_b.shape[0])
            mult = torch.cat([_pad(multipliers_a, count), _pad(multipliers_b, count)], dim=1)
            n_a = self.n_a
            rel_a, rel_b = self._sessions['ab'].propagate(
                mult, lambda rel: (reduce_a(rel[:, :n_a]), reduce_b(rel[:, n_a:])), desc=f'{desc} (both inputs)')
            return rel_a[:multipliers_a.shape[0]], rel_b[:multipliers_b.shape[0]]
        work = {'a': (multipliers_a, reduce_a), 'b': (multipliers_b, reduce_b)}

        def run(side: str, session: Session, label: str) -> torch.Tensor:
            mult, reduce = work[side]
            mult = mult(session.embedding) if callable(mult) else mult
            return session.propagate(mult, reduce, desc=f'{desc} ({label} inputs)')

        return self._each_side(run)

    def _each_side(self, run: Callable) -> tuple:
        """``(run('a', session_a, 'first'), run('b', session_b, 'second'))`` of separate sessions, the side whose
        session is valid first (with a shared encoder, opening the other one invalidates it)."""
        order = ('b', 'a') if 'b' in self._sessions else ('a', 'b')
        labels = {'a': 'first', 'b': 'second'}
        out = {side: run(side, self.session(side), labels[side]) for side in order}
        return out['a'], out['b']

    def _joint_transpose(self, grid_a: PatchGrid, grid_b: PatchGrid, units: int, desc: str) -> Optional[tuple]:
        """The transposed factors of both sides from the joint session by the patch-major path, when its plan
        takes it: ``(T_a (P_a, N_a, h), T_b (P_b, N_b, h))``, else ``None``. One second-order pass serves both
        sides (the shorter side's pooled relevance is padded with zeros)."""
        both = self._sessions['ab']
        p_a, p_b = grid_a.num_patches, grid_b.num_patches
        patches = max(p_a, p_b)
        if both.plan(units, patches).path != 'patches':
            return None
        n_a = self.n_a

        def pool(rel: torch.Tensor) -> torch.Tensor:
            parts = (Pooling.apply(rel[:n_a], grid_a, 1), Pooling.apply(rel[n_a:], grid_b, 1))
            return torch.cat([torch.cat([part, part.new_zeros(part.shape[0], patches - part.shape[1])], 1)
                              for part in parts])

        transpose = both._patch_or_fallback(pool, f'{desc} (both inputs)', units, patches)
        if transpose is None:
            return None
        return transpose[:p_a, :n_a], transpose[:p_b, n_a:]

    def factors(self, grid_a: PatchGrid, grid_b: PatchGrid, desc: str = 'BiLRP') -> tuple:
        """The :class:`~zennit_bilrp.core.results.Factors` of both sides (all units), by the path the sessions'
        plans choose (:meth:`Session.plan`)."""
        if not self.joint:
            grids = {'a': grid_a, 'b': grid_b}
            return self._each_side(lambda side, session, label: session.factors(grids[side],
                                                                                desc=f'{desc} ({label} inputs)'))
        h = self.embedding('a').shape[1]
        transposes = self._joint_transpose(grid_a, grid_b, h, desc)
        if transposes is not None:
            t_a, t_b = transposes
            return (Factors(self.embedding('a'), t_a.permute(1, 2, 0).contiguous(), grid_a),
                    Factors(self.embedding('b'), t_b.permute(1, 2, 0).contiguous(), grid_b))

        def all_units(embedding: torch.Tensor) -> torch.Tensor:
            h = embedding.shape[1]
            return unit_multipliers(torch.arange(h, device=embedding.device), embedding.shape[0], h, embedding.dtype,
                                    embedding.device)

        rel_a, rel_b = self.propagate(all_units, all_units, lambda rel: Pooling.apply(rel, grid_a, 2),
                                      lambda rel: Pooling.apply(rel, grid_b, 2), desc=desc)
        return (Factors(self.embedding('a'), rel_a.transpose(0, 1).contiguous(), grid_a),
                Factors(self.embedding('b'), rel_b.transpose(0, 1).contiguous(), grid_b))

    def propagate_pooled(self, multipliers_a, multipliers_b, grid_a: PatchGrid, grid_b: PatchGrid,
                         desc: str = 'BiLRP') -> tuple:
        """:meth:`propagate` pooled to the grids, by the cheaper path (:meth:`Session.propagate_pooled`):
        ``(relevance_a (K_a, N_a, P_a), relevance_b (K_b, N_b, P_b))``; multipliers as in :meth:`propagate`."""
        if not self.joint:
            work = {'a': (multipliers_a, grid_a), 'b': (multipliers_b, grid_b)}

            def run(side: str, session: Session, label: str) -> torch.Tensor:
                mult, grid = work[side]
                mult = mult(session.embedding) if callable(mult) else mult
                return session.propagate_pooled(mult, grid, desc=f'{desc} ({label} inputs)')

            return self._each_side(run)
        if callable(multipliers_a):
            multipliers_a = multipliers_a(self.embedding('a'))
        if callable(multipliers_b):
            multipliers_b = multipliers_b(self.embedding('b'))
        count = max(multipliers_a.shape[0], multipliers_b.shape[0])
        transposes = self._joint_transpose(grid_a, grid_b, count, desc)
        if transposes is not None:
            t_a, t_b = transposes
            return (torch.einsum('knh,pnh->knp', multipliers_a.to(t_a), t_a),
                    torch.einsum('knh,pnh->knp', multipliers_b.to(t_b), t_b))
        return self.propagate(multipliers_a, multipliers_b, lambda rel: Pooling.apply(rel, grid_a, 2),
                              lambda rel: Pooling.apply(rel, grid_b, 2), desc=desc)

    def marginals(self, multipliers_a: torch.Tensor, multipliers_b: torch.Tensor) -> tuple:
        """Input-resolution LRP of both sides for output relevance ``phi * multipliers`` (``(N, h)`` each)."""
        rel_a, rel_b = self.propagate(multipliers_a[None], multipliers_b[None], lambda rel: rel, lambda rel: rel,
                                      desc='marginals')
        return rel_a[0], rel_b[0]
