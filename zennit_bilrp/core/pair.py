"""The forward passes of both inputs of a batch of pairs: one joint pass where Zennit's hooks allow it.

Zennit's hooks keep only the latest forward's input, so with a shared encoder both inputs of each pair must go
through ONE forward pass (:func:`shares_forward` decides when they can: the same model and equal sample shapes);
otherwise each side has its own :class:`~zennit_bilrp.core.session.Session`, reopened when the other side's forward
ran after it. :class:`SessionPair` hides the difference behind the operations the engine needs.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .config import EngineConfig
from .pooling import PatchGrid
from .results import Factors, unit_multipliers
from .seeds import GridPool, JointPool
from .session import Session

__all__ = ['SessionPair', 'shares_forward']

_LABELS = {'a': 'first', 'b': 'second'}


def shares_forward(model_a: torch.nn.Module, model_b: torch.nn.Module, shape_a, shape_b) -> bool:
    """Whether the inputs of a pair go through one joint forward pass: a shared encoder and equal sample shapes
    (the one place this is decided; :meth:`BiLRP.plan <zennit_bilrp.core.engine.BiLRP.plan>` asks it too)."""
    return model_a is model_b and tuple(shape_a) == tuple(shape_b)


def _pad(multipliers: torch.Tensor, count: int) -> torch.Tensor:
    if multipliers.shape[0] == count:
        return multipliers
    return torch.cat([multipliers, multipliers.new_zeros(count - multipliers.shape[0], *multipliers.shape[1:])])


def _all_units(embedding: torch.Tensor) -> torch.Tensor:
    h = embedding.shape[1]
    return unit_multipliers(torch.arange(h, device=embedding.device), embedding.shape[0], h, embedding.dtype,
                            embedding.device)


class SessionPair:
    """The forward passes of both inputs of a batch of pairs, hiding shared-encoder vs two-tower.

    With a shared encoder and equal sample shapes, ``x_a`` and ``x_b`` go through one forward pass of
    ``cat([x_a, x_b])`` (*joint*), and every LRP pass serves both sides. Otherwise each side has its own session;
    with a shared encoder only the latest forward's graph is valid (Zennit's hooks keep only the last input), so
    a side's session is reopened when the other one was opened after it.

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        The towers (the same object for a shared encoder), with their rules registered.
    x_a, x_b : torch.Tensor
        The inputs ``(N_a, ...)`` and ``(N_b, ...)``.
    config : EngineConfig
        The settings every session of the pair runs with.
    """

    def __init__(self, model_a: torch.nn.Module, model_b: torch.nn.Module, x_a: torch.Tensor, x_b: torch.Tensor,
                 config: EngineConfig):
        self.config = config
        self.models = {'a': model_a, 'b': model_b}
        self.inputs = {'a': x_a, 'b': x_b}
        self.shared = model_a is model_b
        self.joint = shares_forward(model_a, model_b, x_a.shape[1:], x_b.shape[1:])
        self.n_a = x_a.shape[0]
        self._sessions: dict = {}
        self._embeddings: dict = {}
        if self.joint:
            both = Session.open(model_a, torch.cat([x_a, x_b]), config)
            self._sessions['ab'] = both
            self._embeddings = {'a': both.embedding[:self.n_a], 'b': both.embedding[self.n_a:]}

    def session(self, side: str) -> Session:
        """The valid session of one side (not joint); with a shared encoder, opening one closes the other."""
        if self.joint:
            raise RuntimeError('a joint SessionPair has one session for both sides: use propagate()')
        if side not in self._sessions:
            if self.shared:
                self._sessions.clear()
            self._sessions[side] = Session.open(self.models[side], self.inputs[side], self.config)
            self._embeddings[side] = self._sessions[side].embedding
        return self._sessions[side]

    def embedding(self, side: str) -> torch.Tensor:
        """The embeddings ``phi(x)`` of one side, ``(N, h)``."""
        if side not in self._embeddings:
            self.session(side)
        return self._embeddings[side]

    def _multipliers(self, side: str, multipliers) -> torch.Tensor:
        return multipliers(self.embedding(side)) if callable(multipliers) else multipliers

    def _each_side(self, run: Callable) -> tuple:
        """``(run('a', session_a, label_a), run('b', session_b, label_b))`` of separate sessions, the side whose
        session is valid first (with a shared encoder, opening the other one invalidates it)."""
        order = ('b', 'a') if 'b' in self._sessions else ('a', 'b')
        out = {side: run(side, self.session(side), _LABELS[side]) for side in order}
        return out['a'], out['b']

    def _joint_multipliers(self, multipliers_a, multipliers_b) -> tuple:
        """``(both sides' multipliers side by side (K, N_a + N_b, h), K_a, K_b)``; the shorter side padded."""
        mult_a, mult_b = self._multipliers('a', multipliers_a), self._multipliers('b', multipliers_b)
        count = max(mult_a.shape[0], mult_b.shape[0])
        return torch.cat([_pad(mult_a, count), _pad(mult_b, count)], dim=1), mult_a.shape[0], mult_b.shape[0]

    def propagate(self, multipliers_a, multipliers_b, reduce_a: Callable, reduce_b: Callable,
                  desc: str = 'BiLRP') -> tuple:
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
        if not self.joint:
            work = {'a': (multipliers_a, reduce_a), 'b': (multipliers_b, reduce_b)}
            return self._each_side(lambda side, session, label: session.propagate(
                self._multipliers(side, work[side][0]), work[side][1], desc=f'{desc} ({label} inputs)'))
        mult, k_a, k_b = self._joint_multipliers(multipliers_a, multipliers_b)
        n_a = self.n_a
        rel_a, rel_b = self._sessions['ab'].propagate(
            mult, lambda rel: (reduce_a(rel[:, :n_a]), reduce_b(rel[:, n_a:])), desc=f'{desc} (both inputs)')
        return rel_a[:k_a], rel_b[:k_b]

    def _joint_transpose(self, grid_a: PatchGrid, grid_b: PatchGrid, units: int, desc: str) -> Optional[tuple]:
        """The transposed factors of both sides from the joint session by the patch-major path, when its plan
        takes it: ``(T_a (P_a, N_a, h), T_b (P_b, N_b, h))``, else ``None``. One second-order pass serves both
        sides (the shorter side's pooled relevance is padded with zeros)."""
        transpose = self._sessions['ab'].transpose(JointPool(grid_a, grid_b, self.n_a), units, f'{desc} (both inputs)')
        if transpose is None:
            return None
        return transpose[:grid_a.num_patches, :self.n_a], transpose[:grid_b.num_patches, self.n_a:]

    def factors(self, grid_a: PatchGrid, grid_b: PatchGrid, desc: str = 'BiLRP') -> tuple:
        """The :class:`~zennit_bilrp.core.results.Factors` of both sides (all units), by the path the sessions'
        plans choose (:meth:`Session.plan <zennit_bilrp.core.propagation.Propagation.plan>`)."""
        if not self.joint:
            grids = {'a': grid_a, 'b': grid_b}
            return self._each_side(lambda side, session, label: session.factors(grids[side],
                                                                                desc=f'{desc} ({label} inputs)'))
        transposes = self._joint_transpose(grid_a, grid_b, self.embedding('a').shape[1], desc)
        if transposes is not None:
            t_a, t_b = transposes
            return (Factors(self.embedding('a'), t_a.permute(1, 2, 0).contiguous(), grid_a),
                    Factors(self.embedding('b'), t_b.permute(1, 2, 0).contiguous(), grid_b))
        rel_a, rel_b = self.propagate(_all_units, _all_units, lambda rel: GridPool(grid_a)(rel, 2),
                                      lambda rel: GridPool(grid_b)(rel, 2), desc=desc)
        return (Factors(self.embedding('a'), rel_a.transpose(0, 1).contiguous(), grid_a),
                Factors(self.embedding('b'), rel_b.transpose(0, 1).contiguous(), grid_b))

    def propagate_pooled(self, multipliers_a, multipliers_b, grid_a: PatchGrid, grid_b: PatchGrid,
                         desc: str = 'BiLRP') -> tuple:
        """:meth:`propagate` pooled to the grids, by the cheaper path (:meth:`Session.propagate_pooled`):
        ``(relevance_a (K_a, N_a, P_a), relevance_b (K_b, N_b, P_b))``; multipliers as in :meth:`propagate`."""
        if not self.joint:
            work = {'a': (multipliers_a, grid_a), 'b': (multipliers_b, grid_b)}
            return self._each_side(lambda side, session, label: session.propagate_pooled(
                self._multipliers(side, work[side][0]), work[side][1], desc=f'{desc} ({label} inputs)'))
        mult_a, mult_b = self._multipliers('a', multipliers_a), self._multipliers('b', multipliers_b)
        transposes = self._joint_transpose(grid_a, grid_b, max(mult_a.shape[0], mult_b.shape[0]), desc)
        if transposes is not None:
            t_a, t_b = transposes
            return (torch.einsum('knh,pnh->knp', mult_a.to(t_a), t_a),
                    torch.einsum('knh,pnh->knp', mult_b.to(t_b), t_b))
        return self.propagate(mult_a, mult_b, lambda rel: GridPool(grid_a)(rel, 2),
                              lambda rel: GridPool(grid_b)(rel, 2), desc=desc)

    def marginals(self, multipliers_a: torch.Tensor, multipliers_b: torch.Tensor) -> tuple:
        """Input-resolution LRP of both sides for output relevance ``phi * multipliers`` (``(N, h)`` each)."""
        rel_a, rel_b = self.propagate(multipliers_a[None], multipliers_b[None], lambda rel: rel, lambda rel: rel,
                                      desc='marginals')
        return rel_a[0], rel_b[0]
