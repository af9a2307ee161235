r"""LRP passes from one forward pass, by the cheaper exact path.

A :class:`Propagation` takes any number of LRP backward passes from a :class:`~zennit_bilrp.core.forward.Forward`:
for multipliers :math:`r_k` it propagates the seeds :math:`s(r_k)` of its :class:`~zennit_bilrp.core.seeds.SeedMap`
to the input. Because LRP is linear in the output relevance, the passes are batched (:func:`batched_vjp`) in chunks
that the :class:`~zennit_bilrp.core.memory.ChunkScheduler` fits under the memory budget, and reduced (pooled) as
soon as each chunk is computed, so that memory grows with the chunk, never with :math:`K \times d`. Pooled results
take the cheaper of the two exact paths (:func:`~zennit_bilrp.core.plan.choose`): unit-major (these passes) or
patch-major (:class:`~zennit_bilrp.core.patches.PatchPasses`).
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Optional, Union

import torch

from .config import EngineConfig
from .forward import Forward
from .memory import ChunkScheduler, MemoryModel
from .patches import PatchPasses, synchronize
from .plan import NotDifferentiableError, PassCosts, PathFallbackWarning, Plan, ambiguous, choose
from .seeds import Pool, SeedMap

__all__ = ['Propagation', 'batched_vjp']


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


class Propagation:
    """LRP passes of seeds ``seeds(r_k)`` from one forward pass, unit-major or patch-major.

    Parameters
    ----------
    forward : Forward
        The forward pass.
    seeds : SeedMap
        The seeds as a linear map of the multipliers, and the tensor they seed.
    config : EngineConfig
        Method, chunk size, memory budget and progress bar.

    Attributes
    ----------
    last_plan : Plan or None
        The plan of the latest pooled propagation (:meth:`pooled`).
    scheduler : ChunkScheduler
        The chunk schedule of the unit-major passes (its fitted :class:`MemoryModel` once measured).
    patches : PatchPasses
        The patch-major passes (their :attr:`~PatchPasses.graph_bytes`, :attr:`~PatchPasses.blocks`).
    """

    def __init__(self, forward: Forward, seeds: SeedMap, config: EngineConfig):
        self.forward = forward
        self.seeds = seeds
        self.config = config
        self.n = forward.n
        self.last_plan: Optional[Plan] = None
        self.scheduler = ChunkScheduler(config.memory_budget, config.chunk_size, config.unit_method == 'loop',
                                        forward.replicas if config.unit_method == 'replicate' else None)
        self.patches = PatchPasses(forward, seeds, config)
        self._costs: Optional[PassCosts] = None

    @property
    def x(self) -> torch.Tensor:
        """The input leaf of the forward pass."""
        return self.forward.x

    @property
    def output(self) -> torch.Tensor:
        """The model output of the forward pass."""
        return self.forward.output

    @property
    def graph_bytes(self) -> Optional[int]:
        """Bytes retained by the latest differentiable pass of the patch-major path."""
        return self.patches.graph_bytes

    @property
    def patch_memory(self) -> Optional[MemoryModel]:
        """Fitted memory model of the latest second-order passes."""
        return None if self.patches.scheduler is None else self.patches.scheduler.memory

    def _pass(self, mult: torch.Tensor) -> torch.Tensor:
        """One chunk of LRP passes: ``(c, N, *input_shape)``."""
        if self.forward.replicas > 1:
            return self._replicated(mult)
        return batched_vjp(self.seeds.source(self.forward), self.forward.x, self.seeds(self.forward, mult))

    def _replicated(self, mult: torch.Tensor) -> torch.Tensor:
        """Up to ``replicas`` passes as one ordinary backward pass of the replicated batch."""
        count, replicas, n = mult.shape[0], self.forward.replicas, self.n
        if count < replicas:
            mult = torch.cat([mult, mult.new_zeros(replicas - count, *mult.shape[1:])])
        source = self.seeds.source(self.forward)
        seed = self.seeds(_Rows(self.forward, n), mult)
        grad, = torch.autograd.grad(source, self.forward.x, seed.flatten(0, 1), retain_graph=True)
        return grad.reshape(replicas, n, *self.forward.input_shape)[:count]

    def measure_memory(self) -> MemoryModel:
        """Fit the :class:`MemoryModel` of the batched passes from two trial passes (results discarded;
        :meth:`propagate` measures its own first chunks instead)."""
        dims = self.seeds.dims(self.forward)
        ones = self.forward.x.new_ones(1, self.n, dims)
        return self.scheduler.measure(lambda size: self._pass(ones.expand(size, -1, -1)))

    @property
    def bytes_per_unit(self) -> float:
        """Measured bytes per seed of a batched pass (:attr:`MemoryModel.per_unit`; measured on first use)."""
        return self.measure_memory().per_unit

    def chunk_size(self, total: int) -> int:
        """Number of LRP passes batched together under the memory budget."""
        if self.config.chunk_size is not None:
            return max(1, min(total, self.config.chunk_size))
        if total <= 1:
            return 1
        return max(1, min(total, self.measure_memory().largest_chunk(self.config.memory_budget)))

    def propagate(self, multipliers: torch.Tensor, reduce: Callable, desc: str = 'BiLRP') -> Union[torch.Tensor,
                                                                                                  tuple]:
        """LRP of the seeds of ``multipliers[k]``, for each ``k``, reduced by ``reduce`` (unit-major).

        Parameters
        ----------
        multipliers : torch.Tensor
            ``(K, N, m)``.
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
        outputs = self.scheduler.run(multipliers.shape[0], lambda start, size: self._pass(multipliers[start:start
                                                                                                      + size]),
                                     lambda rel: reduce(rel.detach()), desc, self.config.progress)
        if isinstance(outputs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outputs))
        return torch.cat(outputs)

    def plan(self, units: int, patches: int) -> Plan:
        """The path for ``units`` multipliers and ``patches`` patches (:func:`~zennit_bilrp.core.plan.choose`),
        with pass costs measured here (:meth:`pass_costs`) when the default costs leave the choice open; stored as
        :attr:`last_plan`."""
        costs = PassCosts()
        if self.config.method == 'auto' and ambiguous(units, patches):
            costs = self.pass_costs(patches)
        self.last_plan = choose(self.config.method, units, patches, costs)
        return self.last_plan

    def transpose(self, pool: Pool, units: int, desc: str = 'BiLRP') -> Optional[torch.Tensor]:
        """The patch-major factors ``(P, N, m)`` when the plan for ``units`` multipliers takes that path, else
        ``None``; under ``method='auto'`` also ``None`` (with a :class:`PathFallbackWarning`) when the LRP pass is
        not differentiable in its seed."""
        if self.plan(units, pool.patches).path != 'patches':
            return None
        try:
            return self.patches.transpose(pool, self.seeds.dims(self.forward), desc)
        except NotDifferentiableError as error:
            if self.config.method == 'patches':
                raise
            self.last_plan = choose('auto', units, pool.patches, self.last_plan.costs, differentiable=str(error))
            warnings.warn(f'the patch-major path was cheaper but impossible ({error}); running the unit-major '
                          'path instead', PathFallbackWarning, stacklevel=5)
            return None

    def pooled(self, multipliers: torch.Tensor, pool: Pool, desc: str = 'BiLRP') -> torch.Tensor:
        r""":meth:`propagate` pooled by ``pool``, by the cheaper path: ``(K, N, P)``.

        Since :math:`\mathrm{pool}\,M(x)\,s(r_k) = F^\top r_k`, ``K`` multipliers cost ``K`` LRP passes unit-major, or
        the :math:`P` second-order passes of :math:`F` and a matrix product patch-major.
        """
        transpose = self.transpose(pool, multipliers.shape[0], desc)
        if transpose is not None:
            return torch.einsum('knh,pnh->knp', multipliers.to(transpose), transpose)
        return self.propagate(multipliers, lambda rel: pool(rel, 2), desc=desc)

    def pass_costs(self, patches: int = 2) -> PassCosts:
        """Measure the costs of the differentiable pass and of a second-order pass relative to an LRP pass (per
        seed, at the chunk the unit-major path would use, at most 8; the faster of two), on this forward; results
        are discarded. Cached."""
        if self._costs is None:
            dims = self.seeds.dims(self.forward)
            chunk = min(8, self.chunk_size(dims))
            mult = self.forward.x.new_ones(chunk, self.n, dims)
            lrp = float('inf')
            for _ in range(2):  # the first backward pass of a model may pay one-time costs: keep the faster
                synchronize(self.forward.x)
                begin = time.perf_counter()
                self._pass(mult)
                synchronize(self.forward.x)
                lrp = min(lrp, (time.perf_counter() - begin) / chunk)
            timings = self.patches.timings(patches)
            self._costs = PassCosts() if timings is None else PassCosts(timings[0] / lrp, timings[1] / lrp, True, lrp)
        return self._costs


class _Rows:
    """The first ``n`` rows of a replicated forward's output, as a seed map reads them."""

    def __init__(self, forward: Forward, n: int):
        self.output = forward.output[:n]
        self.layers = {name: tensor[:n] for name, tensor in forward.layers.items()}
