r"""The BiLRP engine: exact second-order LRP of similarity models on top of Zennit.

For an embedding model :math:`\phi` and a (scaled) bilinear similarity
:math:`y = c\,\phi(x)^\top G\,\phi(x')` (dot, cosine, bilinear; see :mod:`zennit_bilrp.core.similarity`), BiLRP
(Eberle et al., TPAMI 2022) assigns every pair of input features the relevance

.. math::

    R_{ii'} = c \sum_{m,n} R_m(x)_i \, G_{mn} \, R_n(x')_{i'},
    \qquad R_m(x) = M(x)\,(\phi_m(x)\, e_m),

where :math:`M(x)` is the LRP map (output relevance to input relevance) defined by a Zennit composite. Because
:math:`M(x)` is linear in the output relevance, the :math:`h` explanations :math:`R_m` are computed with one
forward pass and batched backward passes, and pooled to patches at once, so that memory stays
:math:`O(h \times P)` per input. The pooled explanations of one input are its *factors*
:math:`F(x) \in \mathbb{R}^{h \times P}`; any pairing is then :math:`c\,F(x)^\top G\,F(x')`.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..lrp.choose import composite_for
from .checks import check_batched, check_device_dtype, check_eval_mode, check_input
from .config import EngineConfig, check_composite
from .heads import Head
from .pair import SessionPair, shares_forward
from .plan import PassCosts, Plan, ambiguous, choose
from .pooling import SAME, PatchGrid, Pooling
from .registration import Registered, Registration
from .results import BiLRPResult, Factors, pairwise_relevance, warn_if_amplified
from .session import Session
from .similarity import Similarity, get_similarity

__all__ = ['BiLRP']


class _Setting:
    """A read-only attribute that shows one field of the owner's ``config``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance, owner=None):
        return self if instance is None else getattr(instance.config, self.name)


class BiLRP(Registered):
    """Exact BiLRP for similarity models, as a Zennit-style context manager.

    On entry the canonizers and the composite are registered to the model(s); on exit they are removed and the
    model is verified to be exactly as before (parameters, buffers, hooks, train/eval flags), also when an error
    occurred. Calls outside a ``with`` block register and remove around each call.

    Parameters
    ----------
    model : torch.nn.Module
        The embedding model ``phi``: maps a batch ``(N, ...)`` to ``(N, h)``, or to feature maps pooled by
        ``head``. Must be in eval mode when it has BatchNorm or Dropout layers.
    composite : zennit.core.Composite, optional
        The Zennit composite defining the LRP rules. Default: :func:`zennit_bilrp.lrp.choose.composite_for`
        ``(model)``, the recommended rules for the architecture, with its canonizers (pixel bounds unknown; pass
        ``composite_for(model, 'imagenet')`` for ImageNet-normalized inputs).
    canonizers : list of zennit.canonizers.Canonizer, optional
        Extra canonizers applied before the composite (in addition to the composite's own).
    similarity : {'dot', 'cosine'} or Similarity or torch.Tensor
        The similarity being explained; a matrix gives the bilinear similarity.
    head : {'none', 'avg', 'sum', 'max', 'flatten'} or Head
        How the model output becomes the embedding (see :mod:`zennit_bilrp.core.heads`).
    model_b : torch.nn.Module, optional
        Second encoder of a two-tower model (inputs ``x'`` go through it). Default: the same model (Siamese).
    composite_b : zennit.core.Composite, optional
        Composite for ``model_b``; default a copy of ``composite`` if one was given, else
        :func:`~zennit_bilrp.lrp.choose.composite_for` ``(model_b)``.
    method : {'auto', 'batched', 'replicate', 'loop', 'patches'}
        The exact path and its batching. ``'auto'`` (default) takes the path that :func:`~zennit_bilrp.core.plan.
        choose` predicts cheaper for each forward batch (see :meth:`plan`): *unit-major*, one LRP pass per
        explained unit (``K`` passes), or *patch-major*, one second-order pass per patch (``P`` passes, plus the
        differentiable pass and a probe), and falls back to unit-major with a
        :class:`~zennit_bilrp.core.plan.PathFallbackWarning` when the rules' backward pass is not differentiable
        in its seed. ``'patches'`` forces patch-major (and raises
        :class:`~zennit_bilrp.core.plan.NotDifferentiableError` naming the cause when it is impossible).
        ``'batched'``, ``'replicate'`` and ``'loop'`` force unit-major, batched by
        ``torch.autograd.grad(is_grads_batched=True)`` over one forward, by one forward of the input replicated
        ``chunk_size`` times, or one pass per unit. Both paths give the same numbers up to rounding.
    chunk_size : int, optional
        Number of units (or patches) per batched backward pass; default derived from ``memory_budget``.
    memory_budget : int
        Bytes the batched backward passes may use (default 1 GiB).
    max_pairwise_entries : int
        Refuse pooled pairwise matrices larger than this per pair (default 2**24), to prevent materialising a
        pixel-by-pixel matrix by accident.
    progress : bool
        Show a tqdm progress bar over chunks.
    strict : bool
        Refuse what the registered rules cannot explain, naming the module: after registration
        (:func:`~zennit_bilrp.core.strict.check_registered`: e.g. leaf layers with parameters and no rule,
        attention, normalization layers) and in every forward pass (:class:`~zennit_bilrp.core.strict.ForwardAudit`:
        e.g. inline residuals, modules with a rule called twice). Default True.
    shortcut : bool
        Skip the ordinary gradient through layers whose LRP rule replaces it anyway
        (:func:`~zennit_bilrp.lrp.fast_rules.register_rule_shortcuts`): the same relevance, one backward operation
        fewer per layer and unit. Default True; turn off for custom hooks that rely on the true gradient.

    Examples
    --------
    >>> import torch
    >>> from zennit.composites import EpsilonPlus
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    >>> x, xp = torch.rand(2, 4), torch.rand(2, 4)
    >>> with BiLRP(model, composite=EpsilonPlus(), similarity='dot') as bilrp:
    ...     result = bilrp(x, xp)
    >>> result.relevance.shape
    torch.Size([2, 4, 4])
    """

    def __init__(
        self,
        model: torch.nn.Module,
        composite=None,
        canonizers: Optional[Sequence] = None,
        similarity: Union[str, Similarity, torch.Tensor] = 'dot',
        head: Union[str, Head] = 'none',
        model_b: Optional[torch.nn.Module] = None,
        composite_b=None,
        method: str = 'auto',
        chunk_size: Optional[int] = None,
        memory_budget: int = 1 << 30,
        max_pairwise_entries: int = 1 << 24,
        progress: bool = False,
        strict: bool = True,
        shortcut: bool = True,
    ):
        self.config = EngineConfig.make(head, method=method, chunk_size=chunk_size, memory_budget=memory_budget,
                                        progress=progress, strict=strict, shortcut=shortcut)
        self.model, self.model_b = _check_models(model, model_b)
        self.canonizers = list(canonizers or [])
        self.composite = self._composite(composite, 'composite', model)
        self.composite_b = None
        self.canonizers_b = []
        if self.model_b is not None:
            self.composite_b = (self._composite(composite_b, 'composite_b', self.model_b) if composite_b is not None
                                else copy.deepcopy(composite) if composite is not None
                                else self._composite(None, 'composite_b', self.model_b))
            self.canonizers_b = copy.deepcopy(self.canonizers)
        self.similarity = get_similarity(similarity)
        self.max_pairwise_entries = max_pairwise_entries
        self.registration = Registration(list(self._towers()), strict=strict, shortcut=shortcut)

    def _composite(self, composite, name: str, model: torch.nn.Module):
        """The given composite (checked), or :func:`~zennit_bilrp.lrp.choose.composite_for` ``(model)``."""
        if composite is None:
            return composite_for(model, canonizers=[] if self.canonizers else None)
        check_composite(composite, name)
        return composite

    #: the settings, read from :attr:`config` (an :class:`~zennit_bilrp.core.config.EngineConfig`)
    head = _Setting()
    method = _Setting()
    chunk_size = _Setting()
    memory_budget = _Setting()
    progress = _Setting()
    strict = _Setting()
    shortcut = _Setting()

    def _towers(self):
        yield self.model, self.composite, self.canonizers
        if self.model_b is not None:
            yield self.model_b, self.composite_b, self.canonizers_b

    @staticmethod
    def check_mode(model: torch.nn.Module) -> None:
        """Refuse models in training mode with BatchNorm or Dropout (see
        :func:`~zennit_bilrp.core.checks.check_eval_mode`)."""
        check_eval_mode(model)

    def _registered(self) -> contextlib.AbstractContextManager:
        """Rules registered for one call: registering checks the eval mode; inside ``with bilrp:`` it is checked
        here, since the model may have been switched to training mode after entry."""
        if self.registration.active:
            check_eval_mode(*self.registration.models)
            return contextlib.nullcontext(self.registration)
        return self.registration

    def open_session(self, x: torch.Tensor, tower: str = 'a') -> Session:
        """One forward pass of ``x`` through a tower, from which LRP passes are taken (rules must be registered:
        use it inside ``with bilrp:`` or ``with bilrp.registration.ensure():``)."""
        if not self.active:
            raise RuntimeError('open_session needs the rules registered: call it inside `with bilrp:`')
        return Session.open(self._tower_model(tower), x, self.config)

    def _open_pair(self, x_a: torch.Tensor, x_b: torch.Tensor) -> SessionPair:
        return SessionPair(self._tower_model('a'), self._tower_model('b'), x_a, x_b, self.config)

    def _check_side(self, x: torch.Tensor, tower: str, name: str) -> torch.nn.Module:
        """Check one input against its tower; returns the tower."""
        check_input(x, name)
        model = self._tower_model(tower)
        check_batched(x, model, name)
        check_device_dtype(x, model, name)
        return model

    def _check_pairwise_size(self, grid_a: PatchGrid, grid_b: PatchGrid) -> None:
        entries = grid_a.num_patches * grid_b.num_patches
        if entries > self.max_pairwise_entries:
            raise ValueError(
                f'the pooled pairwise matrix would have {grid_a.num_patches} x {grid_b.num_patches} = {entries} '
                f'entries per pair (limit {self.max_pairwise_entries}); choose a coarser patch size or raise '
                'max_pairwise_entries'
            )

    @staticmethod
    def _pair_poolings(pooling, pooling_b) -> tuple:
        pool_a = Pooling.ensure(pooling)
        return pool_a, Pooling.ensure(pooling_b, same=pool_a)

    @staticmethod
    def _unpooled(grid: PatchGrid) -> bool:
        """Whether pooling keeps the input shape (``Pooling(sum_channels=False)`` with unit patches)."""
        return not grid.channels_summed and all(p == 1 for p in grid.patch)

    @classmethod
    def _reduction(cls, grid: PatchGrid) -> Callable[[torch.Tensor], torch.Tensor]:
        """Pooling of ``(K, N, *input_shape)`` relevance to ``(K, N, P)``; the identity when pooling would keep the
        input shape."""
        if cls._unpooled(grid):
            return lambda rel: rel
        return lambda rel: Pooling.apply(rel, grid, 2)

    @staticmethod
    def _precheck_multipliers(multipliers: torch.Tensor, n: int, name: str) -> None:
        """What can be checked before the forward pass: a tensor ``(K, h)`` or ``(K, N, h)`` for ``N`` inputs."""
        if not isinstance(multipliers, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(multipliers).__name__}')
        if multipliers.dim() not in (2, 3) or (multipliers.dim() == 3 and multipliers.shape[1] != n):
            raise ValueError(f'{name} of shape {tuple(multipliers.shape)} do not fit {n} inputs; expected (K, N, h) '
                             'or (K, h)')

    @staticmethod
    def _expand_multipliers(multipliers: torch.Tensor, embedding: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(multipliers, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(multipliers).__name__}')
        if multipliers.dim() == 2:
            multipliers = multipliers[:, None, :].expand(-1, embedding.shape[0], -1)
        if multipliers.dim() != 3 or multipliers.shape[1:] != embedding.shape:
            raise ValueError(f'{name} of shape {tuple(multipliers.shape)} do not fit embeddings '
                             f'{tuple(embedding.shape)}; expected (K, N, h) or (K, h)')
        return multipliers

    def factors(self, x: torch.Tensor, pooling: Union[None, int, Pooling] = None, tower: str = 'a',
                units: Optional[torch.Tensor] = None) -> Factors:
        """Compute the per-input factors: the pooled LRP explanation of every (selected) embedding unit.

        Parameters
        ----------
        x : torch.Tensor
            Batch of inputs ``(N, ...)``.
        pooling : int or Pooling, optional
            Patch size or :class:`~zennit_bilrp.core.pooling.Pooling`; ``None`` keeps input resolution (channels
            summed).
        tower : {'a', 'b'}
            Which encoder of a two-tower model to use.
        units : torch.Tensor, optional
            Indices of the embedding units to explain (default all).

        Returns
        -------
        Factors
        """
        model = self._check_side(x, tower, 'x')
        grid = Pooling.ensure(pooling).resolve(x.shape[1:])
        with self._registered(), torch.enable_grad():
            return Session.open(model, x, self.config).factors(grid, units)

    def propagate(self, x: torch.Tensor, multipliers: torch.Tensor, pooling: Union[None, int, Pooling] = None,
                  tower: str = 'a') -> tuple:
        r"""LRP of arbitrary output relevances :math:`\phi(x) \odot s_k` (the engine's primitive).

        Because LRP is linear in the output relevance, this serves random projections, importance sampling,
        neuron selection and marginals alike.

        Parameters
        ----------
        x : torch.Tensor
            Batch of inputs ``(N, ...)``.
        multipliers : torch.Tensor
            ``(K, N, h)`` or ``(K, h)`` (same for every sample).
        pooling : int or Pooling, optional
            Pooling of the input relevance; ``Pooling(sum_channels=False)`` keeps the input shape.
        tower : {'a', 'b'}
            Encoder of a two-tower model.

        Returns
        -------
        tuple of torch.Tensor
            ``(embedding (N, h), relevance (K, N, P))`` with ``P`` patches (or the input shape if unpooled).
        """
        model = self._check_side(x, tower, 'x')
        pool = Pooling.ensure(pooling)
        grid = pool.resolve(x.shape[1:])
        with self._registered(), torch.enable_grad():
            session = Session.open(model, x, self.config)
            multipliers = self._expand_multipliers(multipliers, session.embedding, 'multipliers')
            if self._unpooled(grid):
                return session.embedding, session.propagate(multipliers, lambda rel: rel)
            return session.embedding, session.propagate_pooled(multipliers, grid)

    def propagate_pair(self, x_a: torch.Tensor, x_b: torch.Tensor, multipliers_a: torch.Tensor,
                       multipliers_b: torch.Tensor, pooling: Union[None, int, Pooling] = None,
                       pooling_b: Union[None, int, Pooling, str] = SAME) -> tuple:
        r""":meth:`propagate` for both inputs of pairs, with the forward passes Zennit's hooks need.

        With a shared encoder and equal sample shapes, ``x_a`` and ``x_b`` go through one forward pass of
        ``cat([x_a, x_b])`` and each LRP pass serves both sides; otherwise (a two-tower model, or different
        sample shapes) each side has its own forward pass. The relevance of side ``a`` for seed ``k`` is
        :math:`M(x_a)\,(\phi(x_a) \odot s^a_k)`, likewise for ``b``.

        Parameters
        ----------
        x_a, x_b : torch.Tensor
            Batches ``(N_a, ...)`` and ``(N_b, ...)`` (tower ``'a'`` and ``'b'``).
        multipliers_a, multipliers_b : torch.Tensor
            ``(K, N, h)`` or ``(K, h)`` (same for every sample) for each side.
        pooling : int or Pooling, optional
            Pooling of the first inputs' relevance; ``Pooling(sum_channels=False)`` keeps the input shape.
        pooling_b : int or Pooling or 'same'
            Pooling of the second inputs' relevance (default :data:`~zennit_bilrp.core.pooling.SAME`: as
            ``pooling``).

        Returns
        -------
        tuple of torch.Tensor
            ``(embedding_a (N_a, h_a), embedding_b (N_b, h_b), relevance_a (K_a, N_a, P_a),
            relevance_b (K_b, N_b, P_b))``.
        """
        self._check_side(x_a, 'a', 'x_a')
        self._check_side(x_b, 'b', 'x_b')
        pool_a, pool_b = self._pair_poolings(pooling, pooling_b)
        grid_a, grid_b = pool_a.resolve(x_a.shape[1:]), pool_b.resolve(x_b.shape[1:])
        self._precheck_multipliers(multipliers_a, x_a.shape[0], 'multipliers_a')
        self._precheck_multipliers(multipliers_b, x_b.shape[0], 'multipliers_b')
        with self._registered(), torch.enable_grad():
            pair = self._open_pair(x_a, x_b)
            mult_a = lambda emb: self._expand_multipliers(multipliers_a, emb, 'multipliers_a')  # noqa: E731
            mult_b = lambda emb: self._expand_multipliers(multipliers_b, emb, 'multipliers_b')  # noqa: E731
            if self._unpooled(grid_a) or self._unpooled(grid_b):
                rel_a, rel_b = pair.propagate(mult_a, mult_b, self._reduction(grid_a), self._reduction(grid_b))
            else:
                rel_a, rel_b = pair.propagate_pooled(mult_a, mult_b, grid_a, grid_b)
            emb_a, emb_b = pair.embedding('a'), pair.embedding('b')
        return emb_a, emb_b, rel_a, rel_b

    def plan(self, x_a: torch.Tensor, x_b: Optional[torch.Tensor] = None, pooling: Union[None, int, Pooling] = None,
             pooling_b: Union[None, int, Pooling, str] = SAME, units: Optional[torch.Tensor] = None,
             measure: bool = False) -> Plan:
        """The exact path that :meth:`factors` (``x_b`` not given) or :meth:`explain` (pairs) would take, and its
        predicted cost, before paying for it.

        Parameters
        ----------
        x_a : torch.Tensor
            Inputs ``(N, ...)`` (tower ``'a'``).
        x_b : torch.Tensor, optional
            Second inputs of pairs (tower ``'b'``).
        pooling, pooling_b
            As in :meth:`explain`.
        units : torch.Tensor, optional
            Explained units (default all).
        measure : bool
            Measure the pass costs on the inputs (:meth:`Session.pass_costs
            <zennit_bilrp.core.propagation.Propagation.pass_costs>`: one forward pass and a few backward passes); by
            default only the embedding size is computed (one forward pass without graph) and the default costs
            are used, unless ``method='auto'`` would measure them anyway (:func:`~zennit_bilrp.core.plan.ambiguous`).

        Returns
        -------
        Plan
            For pairs through one joint forward pass (shared encoder, equal sample shapes) the joint plan (each pass
            serves both sides; ``patches`` is the larger grid); otherwise the plan of the side with the larger
            predicted cost. Marginals (one LRP pass per side) are not included.
        """
        if x_b is None:
            groups = [('a', x_a, Pooling.ensure(pooling).resolve(x_a.shape[1:]).num_patches)]
            self._check_side(x_a, 'a', 'x_a')
        else:
            self._check_pair(x_a, x_b)
            pool_a, pool_b = self._pair_poolings(pooling, pooling_b)
            p_a, p_b = pool_a.resolve(x_a.shape[1:]).num_patches, pool_b.resolve(x_b.shape[1:]).num_patches
            if shares_forward(self._tower_model('a'), self._tower_model('b'), x_a.shape[1:], x_b.shape[1:]):
                groups = [('a', torch.cat([x_a, x_b]), max(p_a, p_b))]
            else:
                groups = [('a', x_a, p_a), ('b', x_b, p_b)]
        plans = []
        for tower, x, patches in groups:
            count = len(units) if units is not None else self.embed(x[:1], tower).shape[1]
            costs = PassCosts()
            if measure or (self.method == 'auto' and ambiguous(count, patches)):
                with self._registered(), torch.enable_grad():
                    costs = Session.open(self._tower_model(tower), x, self.config).pass_costs(patches)
            plans.append(choose(self.method, count, patches, costs))
        return max(plans, key=lambda plan: plan.cost_units if plan.path == 'units' else plan.cost_patches)

    def embed(self, x: torch.Tensor, tower: str = 'a') -> torch.Tensor:
        """The embeddings ``phi(x)`` (no relevance computed)."""
        check_input(x, 'x')
        model = self._tower_model(tower)
        check_batched(x, model, 'x')
        with torch.no_grad():
            output = model(x)
            self.head.check(output)
            return self.head.embed(output)

    def _tower_model(self, tower: str) -> torch.nn.Module:
        if tower == 'a':
            return self.model
        if tower == 'b':
            return self.model if self.model_b is None else self.model_b
        raise ValueError(f"tower must be 'a' or 'b', got {tower!r}")

    def _check_pair(self, x_a: torch.Tensor, x_b: torch.Tensor) -> None:
        self._check_side(x_a, 'a', 'x_a')
        self._check_side(x_b, 'b', 'x_b')
        if x_a.shape[0] != x_b.shape[0]:
            raise ValueError(f'batch sizes differ: x_a has {x_a.shape[0]} samples, x_b has {x_b.shape[0]}; '
                             'BiLRP explains aligned pairs (use factors() and pairwise_relevance(all_pairs=True) '
                             'for every pairing)')

    def _marginals(self, pair: SessionPair, factors_a: Factors, factors_b: Factors) -> tuple:
        """Exact input-resolution marginals: one LRP pass per side of the partner-weighted embedding."""
        mult_a, mult_b = self.similarity.partner_multipliers(factors_a.totals, factors_b.totals,
                                                             factors_a.embedding, factors_b.embedding)
        return pair.marginals(mult_a, mult_b)

    def explain(self, x_a: torch.Tensor, x_b: torch.Tensor, pooling: Union[None, int, Pooling] = None,
                pooling_b: Union[None, int, Pooling, str] = SAME, marginals: bool = True) -> BiLRPResult:
        """Explain the similarity of each pair ``(x_a[i], x_b[i])``.

        Parameters
        ----------
        x_a, x_b : torch.Tensor
            Batches of the same size ``B``. With a shared encoder and equal sample shapes both go through one
            forward pass (required by Zennit's hooks).
        pooling : int or Pooling, optional
            Patch pooling of the pairwise relevance (``None``: per position, channels summed).
        pooling_b : int or Pooling or 'same'
            Pooling of the second inputs (default :data:`~zennit_bilrp.core.pooling.SAME`: as ``pooling``).
        marginals : bool
            Also compute the exact input-resolution marginals (one extra LRP pass per side).

        Returns
        -------
        BiLRPResult
        """
        self._check_pair(x_a, x_b)
        pool_a, pool_b = self._pair_poolings(pooling, pooling_b)
        grid_a, grid_b = pool_a.resolve(x_a.shape[1:]), pool_b.resolve(x_b.shape[1:])
        self._check_pairwise_size(grid_a, grid_b)
        with self._registered(), torch.enable_grad():
            pair = self._open_pair(x_a, x_b)
            self.similarity.check(pair.embedding('a'), pair.embedding('b'))
            fa, fb = pair.factors(grid_a, grid_b)
            relevance = pairwise_relevance(fa, fb, self.similarity, check=False)
            marg_a, marg_b = self._marginals(pair, fa, fb) if marginals else (None, None)
            del pair
        similarity = self.similarity(fa.embedding, fb.embedding, check=False)
        result = BiLRPResult(relevance, similarity, fa, fb, marg_a, marg_b)
        warn_if_amplified(result.relevance.sum(dim=(1, 2)), result.similarity)
        return result

    __call__ = explain

    def explain_pairs(self, pairs: Iterator, pooling: Union[None, int, Pooling] = None, marginals: bool = True,
                      total: Optional[int] = None) -> Iterator[BiLRPResult]:
        """Explain an iterable of ``(x_a, x_b)`` batches (e.g. a ``DataLoader`` of pairs) with a progress bar.

        Yields one :class:`BiLRPResult` per batch (marginals included by default, as in :meth:`explain`);
        composite and canonizers stay registered throughout.
        """
        if total is None and hasattr(pairs, '__len__'):
            total = len(pairs)
        with self.registration.ensure():
            for batch in tqdm(pairs, desc='pairs', total=total, disable=not self.progress):
                x_a, x_b = batch[0], batch[1]
                yield self.explain(x_a, x_b, pooling=pooling, marginals=marginals)

    def __repr__(self) -> str:
        return (f'BiLRP(similarity={self.similarity!r}, head={self.head!r}, method={self.method!r}, '
                f'two_tower={self.model_b is not None})')


def _check_models(model: torch.nn.Module, model_b: Optional[torch.nn.Module]) -> tuple:
    """``(model, model_b)`` checked; ``model_b`` is ``None`` for a shared encoder (also when given as ``model``)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    if model_b is not None and not isinstance(model_b, torch.nn.Module):
        raise TypeError(f'model_b must be a torch.nn.Module, got {type(model_b).__name__}')
    return model, (model_b if model_b is not model else None)
