r"""The patch-major path: one second-order pass per patch instead of one LRP pass per unit.

:math:`q(r) = \mathrm{pool}(M(x)\,s(r))` is linear in the multipliers :math:`r` (``s`` is the seed map, e.g.
:math:`\phi \odot r`), so one LRP pass at a random probe :math:`r = v_1` taken with ``create_graph=True`` (the
*differentiable pass*) and the derivative of :math:`q_p` by :math:`r` (one *second-order pass*, batched over the
samples) give column :math:`p` of the factors. :class:`PatchPasses` runs them, verifies the result on two probes
(:data:`PROBE_TOLERANCE`), measures the pass costs the planner compares (:mod:`zennit_bilrp.core.plan`), and keeps
the differentiable pass within the memory budget: when the graph of one pass over the whole batch would not fit
(predicted from the forward's saved activations and the parameters, :data:`GRAPH_MEMORY_RATIO`), the batch is
split over its samples (they do not interact), the first block of one sample measuring how many fit.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from .config import EngineConfig
from .forward import Forward
from .memory import ChunkScheduler, PeakMemory
from .plan import NotDifferentiableError
from .seeds import Pool, SeedMap

__all__ = ['PatchPasses', 'PROBE_TOLERANCE', 'SINGLE_PATCH_DEVICES', 'GRAPH_MEMORY_RATIO', 'PARAMETER_COPIES']

#: relative tolerance of the patch-major path's linearity check, by dtype (see :meth:`PatchPasses.transpose`)
PROBE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.05}

#: devices on which second-order passes run one at a time (on CPU a loop was faster than ``is_grads_batched`` over
#: the second-order graph: ResNet-18 64x64 float64, 0.16 s vs 0.34 s per pass)
SINGLE_PATCH_DEVICES = ('cpu',)

#: predicted peak of the differentiable pass and its second-order passes: this many bytes per byte of activations
#: the forward pass saved, plus :data:`PARAMETER_COPIES` bytes per parameter byte (rules hold modified weights).
#: Measured peaks (float64 SmallResNet and VGG, float32 ResNet-18 at 64 px, Zennit's and the fast rules):
#: 2.6 to 7.5 times the activations, ResNet-18's 100 MB within 2 x activations + 2 x parameters. Beyond the budget
#: the batch is split over its samples
GRAPH_MEMORY_RATIO = 8.0
#: see :data:`GRAPH_MEMORY_RATIO`
PARAMETER_COPIES = 3.0


class PatchPasses:
    """The second-order passes of one forward pass.

    Parameters
    ----------
    forward : Forward
        The forward pass (the hooks must hold its graph).
    seeds : SeedMap
        The output relevance as a linear map of the multipliers, and the tensor it seeds.
    config : EngineConfig
        Chunk size and memory budget.

    Attributes
    ----------
    graph_bytes : int or None
        Bytes retained by the latest differentiable pass (of one block of samples when the batch was split).
    blocks : list of int
        Samples per differentiable pass in the latest :meth:`transpose` (one entry: no split).
    scheduler : ChunkScheduler or None
        The chunk schedule of the latest block's second-order passes (its fitted memory model).
    """

    def __init__(self, forward: Forward, seeds: SeedMap, config: EngineConfig):
        self.forward = forward
        self.seeds = seeds
        self.config = config
        self.graph_bytes: Optional[int] = None
        self.blocks: list = []
        self.scheduler: Optional[ChunkScheduler] = None
        #: an operation of the second-order graph had no batching rule: one pass at a time from then on
        self.single = False

    @property
    def n(self) -> int:
        return self.forward.n

    def _probes(self, dims: int, dtype, device) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(2, self.n, dims, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)

    def differentiable_pass(self, probe: torch.Tensor, pool: Pool, start: int = 0) -> tuple:
        """The LRP pass of multipliers ``r = probe`` with ``create_graph=True``: ``(r, q)``, ``q = pool(M(x) s(r))``
        of shape ``(N, P)``, differentiable in ``r`` (``start``: index of the first sample in the whole batch)."""
        r = probe.detach().clone().requires_grad_(True)
        seed = self.seeds(self.forward, r[None])[0]
        relevance, = torch.autograd.grad(self.seeds.source(self.forward), self.forward.x, seed, retain_graph=True,
                                         create_graph=True)
        if not relevance.requires_grad:
            raise NotDifferentiableError(
                'the LRP backward pass is not differentiable in its seed: the input relevance of a seed that '
                'requires grad does not require grad (a rule computes its relevance without create_graph, or '
                'detaches it)')
        pooled = pool(relevance, 1, start)
        if pooled.dim() != 2 or pooled.shape[0] != self.n:
            raise ValueError(f'pool must map relevance (N, ...) to (N, P), got {tuple(pooled.shape)}')
        return r, pooled

    def second_order(self, pooled: torch.Tensor, r: torch.Tensor, start: int, size: int) -> torch.Tensor:
        """Columns ``start .. start + size`` of the factors: ``(size, N, m)`` with entry ``[j, n, i]`` the
        derivative of ``pooled[n, start + j]`` by ``r[n, i]`` (samples do not interact, so one pass serves all
        ``N``)."""
        if size == 1:
            column, = torch.autograd.grad(pooled[:, start].sum(), r, retain_graph=True, allow_unused=True)
            return torch.zeros_like(r)[None] if column is None else column[None]
        seeds = torch.zeros(size, *pooled.shape, dtype=pooled.dtype, device=pooled.device)
        seeds[torch.arange(size), :, start + torch.arange(size)] = 1.0
        columns, = torch.autograd.grad(pooled, r, seeds, retain_graph=True, is_grads_batched=True,
                                       allow_unused=True)
        return torch.zeros(size, *r.shape, dtype=r.dtype, device=r.device) if columns is None else columns

    def _retry_single(self, error: RuntimeError, size: int) -> bool:
        """An operation of the second-order graph without a batching rule: run the chunk again, one at a time."""
        if size == 1 or 'atching rule' not in str(error):
            return False
        self.single = self.scheduler.single = True
        return True

    def transpose(self, pool: Pool, dims: int, desc: str = 'BiLRP') -> torch.Tensor:
        r"""The transposed factors: ``(P, N, m)``, entry ``[p, n, i]`` = :math:`\partial q_p(x_n) / \partial r_i`.

        The result is verified on two probes: :math:`F^\top v = q(v)` for the differentiable pass's probe
        :math:`v_1` (free) and for a second random :math:`v_2` (one ordinary LRP pass), relative to
        :math:`|F|^\top |v|`, within :data:`PROBE_TOLERANCE` of the dtype. This catches rules that detach their
        relevance or are not linear in it. The second-order passes run one at a time on CPU, elsewhere in chunks
        fitted under what the differentiable pass left of the budget.

        Parameters
        ----------
        pool : Pool
            Linear map of input relevance ``(N, ...)`` to ``(N, P)``.
        dims : int
            Multipliers per sample (``h`` for the embedding).
        desc : str
            Label of the progress bar.

        Raises
        ------
        NotDifferentiableError
            If the LRP pass is not differentiable in its seed, or the factors fail the probe check.
        """
        if self.n == 1 or self.predicted_peak() <= self.config.memory_budget:
            self.blocks = [self.n]
            return self._block(pool, dims, 0, desc)
        self.blocks = []
        parts, start, block = [], 0, 1
        self.forward.release()
        try:
            while start < self.n:
                stop = min(self.n, start + block)
                with PeakMemory() as memory:  # the block's forward pass included
                    part = PatchPasses(self.forward.subset(start, stop), self.seeds.subset(start, stop), self.config)
                    part.single = self.single
                    parts.append(part._block(pool, dims, start, f'{desc} (samples {start}-{stop - 1})'))
                    del part.forward
                if start == 0:  # the first block has one sample: how many fit the budget
                    block = max(1, int(self.config.memory_budget // max(memory.peak, 1)))
                self.blocks.append(stop - start)
                self.graph_bytes, self.scheduler, self.single = part.graph_bytes, part.scheduler, part.single
                start = stop
        finally:
            self.forward.refresh()
        return torch.cat(parts, dim=1)

    def predicted_peak(self) -> float:
        """Predicted bytes of the differentiable pass and the second-order passes over the whole batch (an upper
        bound on the models measured, see :data:`GRAPH_MEMORY_RATIO`)."""
        parameters = sum(p.numel() * p.element_size() for p in self.forward.model.parameters())
        return GRAPH_MEMORY_RATIO * self.forward.bytes + PARAMETER_COPIES * parameters

    def _block(self, pool: Pool, dims: int, start: int, desc: str) -> torch.Tensor:
        """:meth:`transpose` of this forward's samples (the first one is sample ``start`` of the whole batch)."""
        source = self.seeds.source(self.forward)
        probes = self._probes(dims, source.dtype, source.device)
        transpose, first = self._columns(probes[0], pool, start, desc)
        seed = self.seeds(self.forward, probes[1:])
        second, = torch.autograd.grad(source, self.forward.x, seed[0], retain_graph=True)
        check_probes(transpose, probes, [first, pool(second, 1, start)])
        return transpose

    def _columns(self, probe: torch.Tensor, pool: Pool, start: int, desc: str) -> tuple:
        """``(transpose (P, N, m), q(probe) (N, P))``: the differentiable pass at ``probe`` and the second-order
        passes, in chunks under what the differentiable pass left of the budget."""
        with PeakMemory() as memory:
            r, pooled = self.differentiable_pass(probe, pool, start)
        self.graph_bytes = memory.current
        # one at a time on CPU unless a chunk size is given (as for the LRP passes)
        single = self.single or (self.config.chunk_size is None and self.forward.x.device.type in SINGLE_PATCH_DEVICES)
        self.scheduler = ChunkScheduler(self.config.memory_budget - self.graph_bytes, self.config.chunk_size, single)
        columns = self.scheduler.run(pooled.shape[1], lambda first, size: self.second_order(pooled, r, first, size),
                                     lambda out: out.detach(), f'{desc} (patches)', self.config.progress,
                                     self._retry_single)
        return torch.cat(columns), pooled.detach()

    def timings(self, patches: int) -> Optional[tuple]:
        """Seconds of the differentiable pass and of one second-order pass (the mean of two) on this forward, or
        ``None`` when the LRP pass is not differentiable in its seed; results are discarded."""
        source = self.seeds.source(self.forward)
        probe = torch.ones(self.n, self.seeds.dims(self.forward), dtype=source.dtype, device=source.device)
        begin = time.perf_counter()
        try:
            r, pooled = self.differentiable_pass(probe, lambda rel, lead, start: rel.flatten(1)[:, :max(2, patches)])
        except NotDifferentiableError:
            return None
        synchronize(self.forward.x)
        graph = time.perf_counter() - begin
        begin = time.perf_counter()
        for column in range(2):
            self.second_order(pooled, r, column, 1)
        synchronize(self.forward.x)
        return graph, (time.perf_counter() - begin) / 2


def synchronize(tensor: torch.Tensor) -> None:
    """Wait for the device of ``tensor`` (for timings)."""
    if tensor.device.type == 'cuda':
        torch.cuda.synchronize(tensor.device)


def check_probes(transpose: torch.Tensor, probes: torch.Tensor, values: list) -> None:
    """Refuse factors ``transpose`` ``(P, N, m)`` for which :math:`F^\\top v_k` differs from the pooled LRP value
    ``values[k]`` of probe ``v_k`` by more than :data:`PROBE_TOLERANCE` relative to :math:`|F|^\\top |v_k|`.

    Raises
    ------
    NotDifferentiableError
        Naming the failing probe and the error.
    """
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
