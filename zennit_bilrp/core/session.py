r"""Forward once, propagate many times: the engine's two primitives.

A :class:`Session` runs one forward pass of a batch through a model whose LRP rules are registered, and then takes
any number of LRP backward passes from it. Because LRP is linear in the output relevance, the passes for output
relevances :math:`\phi(x) \odot s_k`, :math:`k = 1..K`, are batched (:func:`batched_vjp`) and reduced (pooled) as
soon as each chunk is computed, so that memory grows with the chunk, never with :math:`K \times d`.

:func:`paired_forward` hides the choice between a shared encoder (both inputs of each pair in one forward pass,
which Zennit's hooks require: they keep only the last forward's input) and a two-tower model.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .heads import Head
from .pooling import PatchGrid, Pooling
from .results import Factors, unit_multipliers

__all__ = ['METHODS', 'Session', 'batched_vjp']

#: ways of batching the per-unit backward passes
METHODS = ('batched', 'replicate', 'loop')


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
    method : {'batched', 'replicate', 'loop'}
        How the backward passes are batched (see :class:`~zennit_bilrp.core.engine.BiLRP`).
    chunk_size : int, optional
        Passes per batch; default from ``memory_budget``.
    memory_budget : int
        Bytes the batched passes may use.
    progress : bool
        Show a progress bar over chunks.
    replicas : int
        Copies of the batch in the forward pass (``method='replicate'``).
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, head: Head, method: str = 'batched',
                 chunk_size: Optional[int] = None, memory_budget: int = 1 << 30, progress: bool = False,
                 replicas: int = 1):
        self.head = head
        self.method = method
        self.fixed_chunk = chunk_size
        self.memory_budget = memory_budget
        self.progress = progress
        self.n = x.shape[0]
        self.replicas = replicas
        self.input_shape = tuple(x.shape[1:])
        inp = x.detach()
        if replicas > 1:
            inp = inp.repeat(replicas, *([1] * (x.dim() - 1)))
        self.x = inp.requires_grad_(True)
        saved = [0]

        def pack(tensor):
            # parameters are shared by all batched backward passes: only activations grow with the chunk size
            if not isinstance(tensor, torch.nn.Parameter):
                saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(self.x)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f'the model must return a tensor, got {type(output).__name__}')
        head.check(output)
        if output.grad_fn is None:
            raise RuntimeError('the model output does not depend on the input (no autograd graph)')
        self.output = output
        with torch.no_grad():
            embedding = head.embed(output.detach()[:self.n])
        if embedding.dim() != 2:
            raise ValueError(f'the embedding has shape {tuple(embedding.shape)}; it must be 2-D (N, h)')
        if not bool(torch.isfinite(embedding).all()):
            raise ValueError('the embedding contains NaN or inf values')
        self.embedding = embedding
        per_sample = (saved[0] / replicas + 2 * inp[0].numel() * inp.element_size() * replicas
                      + output[0].numel() * output.element_size())
        # backward with Zennit rules re-runs each layer's forward: count the saved activations three times
        self.bytes_per_unit = 3 * per_sample * self.n

    @classmethod
    def open(cls, model: torch.nn.Module, x: torch.Tensor, head: Head, method: str = 'batched',
             chunk_size: Optional[int] = None, memory_budget: int = 1 << 30, progress: bool = False) -> Session:
        """A session for ``method``; for ``'replicate'`` a first forward measures the memory per pass, and the
        session then holds as many copies of the batch as fit."""
        session = cls(model, x, head, method, chunk_size, memory_budget, progress)
        if method != 'replicate':
            return session
        replicas = session.chunk_size(session.embedding.shape[1])
        del session
        return cls(model, x, head, method, chunk_size, memory_budget, progress, replicas=replicas)

    def chunk_size(self, total: int) -> int:
        """Number of backward passes batched together under the memory budget."""
        if self.fixed_chunk is not None:
            return max(1, min(total, self.fixed_chunk))
        return max(1, min(total, int(self.memory_budget // max(self.bytes_per_unit, 1))))

    def propagate(self, multipliers: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor],
                  desc: str = 'BiLRP') -> torch.Tensor:
        """LRP for output relevance ``phi * multipliers[k]``, for each ``k``, reduced by ``reduce``.

        Parameters
        ----------
        multipliers : torch.Tensor
            ``(K, N, h)`` multipliers of the embedding (output relevance is ``phi * multipliers``).
        reduce : callable
            Maps input relevance ``(c, N, *input_shape)`` to the kept form (e.g. pooled ``(c, N, P)``).
        desc : str
            Label of the progress bar.

        Returns
        -------
        torch.Tensor
            ``reduce`` applied to all ``K`` explanations, concatenated along the first axis.
        """
        total = multipliers.shape[0]
        if self.method == 'loop':
            chunk = 1
        elif self.method == 'replicate':
            chunk = self.replicas
        else:
            chunk = self.chunk_size(total)
        outputs = []
        starts = range(0, total, chunk)
        show = self.progress and len(starts) > 1
        for start in tqdm(starts, desc=desc, disable=not show, leave=False):
            mult = multipliers[start:start + chunk].to(self.output)
            rel = self._replicated(mult) if self.method == 'replicate' else batched_vjp(
                self.output, self.x, self.head.output_relevance(self.output, mult))
            outputs.append(reduce(rel.detach()))
        return torch.cat(outputs)

    def _replicated(self, mult: torch.Tensor) -> torch.Tensor:
        count = mult.shape[0]
        if count < self.replicas:
            mult = torch.cat([mult, mult.new_zeros(self.replicas - count, *mult.shape[1:])])
        seed = self.head.output_relevance(self.output[:self.n], mult)
        grad, = torch.autograd.grad(self.output, self.x, seed.flatten(0, 1), retain_graph=True)
        return grad.reshape(self.replicas, self.n, *self.input_shape)[:count]

    def factors(self, grid: PatchGrid, units: Optional[torch.Tensor] = None, desc: str = 'BiLRP') -> Factors:
        """Pooled per-unit explanations of all samples of this session."""
        h = self.embedding.shape[1]
        index = torch.arange(h, device=self.embedding.device) if units is None else units.to(self.embedding.device)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= h):
            raise ValueError(f'unit indices must lie in 0..{h - 1}')
        mult = unit_multipliers(index, self.n, h, self.embedding.dtype, self.embedding.device)
        pooled = self.propagate(mult, lambda rel: Pooling.apply(rel, grid, 2), desc=desc)  # (K, N, P)
        return Factors(self.embedding, pooled.transpose(0, 1).contiguous(), grid, units)

    def marginal(self, multipliers: torch.Tensor) -> torch.Tensor:
        """Input-resolution LRP for output relevance ``phi * multipliers`` (``(N, h)``), shaped like the inputs."""
        return self.propagate(multipliers[None], lambda rel: rel)[0]
