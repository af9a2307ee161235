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

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..lrp.canonizers import exact_batch_norm_merge
from ..lrp.composites import bilrp_composite, register_similarity_rules
from ..lrp.fast_rules import register_rule_shortcuts
from ..lrp.restore import ModelGuard
from .heads import Head, get_head
from .pooling import PatchGrid, Pooling
from .similarity import Similarity, get_similarity

__all__ = [
    'BiLRP', 'Factors', 'BiLRPResult', 'TopPairs', 'pairwise_relevance', 'unit_multipliers', 'METHODS',
    'ConservationWarning', 'AMPLIFICATION_LIMIT',
]

#: ways of batching the per-unit backward passes
METHODS = ('batched', 'replicate', 'loop')

_TRAIN_SENSITIVE = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)


# --------------------------------------------------------------------------------------------- data classes
@dataclass
class Factors:
    """Per-input BiLRP factors: pooled LRP explanations of each explained embedding unit.

    Attributes
    ----------
    embedding : torch.Tensor
        The embeddings ``phi(x)``, shape ``(N, h)``.
    relevance : torch.Tensor
        Pooled explanations, shape ``(N, K, P)``: row ``k`` is the LRP explanation of unit ``units[k]``
        (all ``h`` units in order when ``units`` is None), started from the unit's value, pooled to ``P`` patches.
    grid : PatchGrid
        Geometry of the pooling.
    units : torch.Tensor or None
        Indices of the explained units (``None``: all units ``0..h-1``).
    """
    embedding: torch.Tensor
    relevance: torch.Tensor
    grid: PatchGrid
    units: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.relevance.shape[0]

    @property
    def totals(self) -> torch.Tensor:
        """Total relevance of each explained unit, ``(N, K)``; equals the unit values when LRP conserves."""
        return self.relevance.sum(dim=-1)

    def unit_index(self) -> torch.Tensor:
        """Indices of the explained units (``arange(h)`` when all are explained)."""
        if self.units is None:
            return torch.arange(self.embedding.shape[1], device=self.embedding.device)
        return self.units

    def __getitem__(self, index) -> Factors:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Factors(self.embedding[index], self.relevance[index], self.grid, self.units)

    def to(self, *args, **kwargs) -> Factors:
        """Move/cast embedding and relevance like :meth:`torch.Tensor.to` (unit indices only move)."""
        units = None
        if self.units is not None:
            device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get('device'))
            units = self.units if device is None else self.units.to(device)
        return Factors(self.embedding.to(*args, **kwargs), self.relevance.to(*args, **kwargs), self.grid, units)

    @staticmethod
    def cat(factors: Sequence[Factors]) -> Factors:
        """Concatenate factors of several batches (same grid and units)."""
        first = factors[0]
        for other in factors[1:]:
            if other.grid != first.grid:
                raise ValueError('Factors.cat: factors were pooled with different grids')
            if (other.units is None) != (first.units is None) or (
                    other.units is not None and not torch.equal(other.units, first.units)):
                raise ValueError('Factors.cat: factors explain different units')
        return Factors(
            torch.cat([f.embedding for f in factors]),
            torch.cat([f.relevance for f in factors]),
            first.grid,
            first.units,
        )


@dataclass
class TopPairs:
    """The most relevant patch pairs of each explained pair.

    Attributes
    ----------
    index_a, index_b : torch.Tensor
        Flat patch indices, shape ``(B, k)``.
    values : torch.Tensor
        Pairwise relevance of these pairs, ``(B, k)`` (signed).
    centers_a, centers_b : torch.Tensor
        Patch centres in input coordinates (row, col, ...), shape ``(B, k, n_spatial)``.
    """
    index_a: torch.Tensor
    index_b: torch.Tensor
    values: torch.Tensor
    centers_a: torch.Tensor
    centers_b: torch.Tensor


@dataclass
class BiLRPResult:
    """Result of :meth:`BiLRP.explain` for a batch of ``B`` pairs.

    Attributes
    ----------
    relevance : torch.Tensor
        Pooled pairwise relevance, ``(B, P_a, P_b)``.
    similarity : torch.Tensor
        The explained similarity ``y`` of each pair, ``(B,)``.
    factors_a, factors_b : Factors
        The factors of both sides, from which any other pairing can be formed (:func:`pairwise_relevance`).
    marginal_a, marginal_b : torch.Tensor or None
        First-order marginals at input resolution, shaped like the inputs: ``marginal_a[i] = sum_i' R[i, i']``
        (computed exactly with one extra LRP pass, not from the pooled matrix).
    """
    relevance: torch.Tensor
    similarity: torch.Tensor
    factors_a: Factors
    factors_b: Factors
    marginal_a: Optional[torch.Tensor] = None
    marginal_b: Optional[torch.Tensor] = None
    extras: dict = field(default_factory=dict)

    @property
    def grid_a(self) -> PatchGrid:
        """Patch grid of the first inputs."""
        return self.factors_a.grid

    @property
    def grid_b(self) -> PatchGrid:
        """Patch grid of the second inputs."""
        return self.factors_b.grid

    @property
    def delta(self) -> torch.Tensor:
        """Conservation gap ``y - sum R`` per pair, ``(B,)``."""
        return self.similarity - self.relevance.sum(dim=(1, 2))

    @property
    def marginal_patches_a(self) -> torch.Tensor:
        """Pooled marginal of the first inputs, ``(B, P_a)``."""
        return self.relevance.sum(dim=2)

    @property
    def marginal_patches_b(self) -> torch.Tensor:
        """Pooled marginal of the second inputs, ``(B, P_b)``."""
        return self.relevance.sum(dim=1)

    def relevance_grid(self) -> torch.Tensor:
        """Pairwise relevance reshaped to ``(B, *grid_a, *grid_b)``."""
        return self.relevance.reshape(self.relevance.shape[0], *self.grid_a.grid, *self.grid_b.grid)

    def top_pairs(self, k: int = 10, by: str = 'value') -> TopPairs:
        """The ``k`` most relevant patch pairs of each explained pair.

        Parameters
        ----------
        k : int
            Number of pairs (at most ``P_a * P_b``).
        by : {'value', 'abs', 'negative'}
            Rank by largest signed value, by magnitude, or most negative first.
        """
        flat = self.relevance.reshape(self.relevance.shape[0], -1)
        if not 0 < k <= flat.shape[1]:
            raise ValueError(f'top_pairs: k must be in 1..{flat.shape[1]}, got {k}')
        keys = {'value': flat, 'abs': flat.abs(), 'negative': -flat}
        if by not in keys:
            raise ValueError(f"top_pairs: `by` must be 'value', 'abs' or 'negative', got {by!r}")
        index = keys[by].topk(k, dim=1).indices
        n_b = self.relevance.shape[2]
        index_a, index_b = index // n_b, index % n_b
        centers_a = self.grid_a.patch_centers().to(flat.device)[index_a]
        centers_b = self.grid_b.patch_centers().to(flat.device)[index_b]
        return TopPairs(index_a, index_b, flat.gather(1, index), centers_a, centers_b)


# ------------------------------------------------------------------------------------------------ helpers
def unit_multipliers(units: torch.Tensor, n_samples: int, n_units: int, dtype, device) -> torch.Tensor:
    """One-hot output-relevance multipliers, ``(K, N, h)``: row ``k`` selects unit ``units[k]`` for all samples."""
    mult = torch.zeros(len(units), n_samples, n_units, dtype=dtype, device=device)
    mult[torch.arange(len(units), device=device), :, units.to(device)] = 1.0
    return mult


def pairwise_relevance(factors_a: Factors, factors_b: Factors, similarity: Union[str, Similarity] = 'dot',
                       unit_weights: Optional[torch.Tensor] = None, all_pairs: bool = False) -> torch.Tensor:
    r"""Pool-level BiLRP from factors: :math:`R = c\,F_a^\top G\,F_b`.

    Parameters
    ----------
    factors_a, factors_b : Factors
        Factors of the two sides (``B`` each, or ``N_a`` and ``N_b`` with ``all_pairs``).
    similarity : str or Similarity
        The similarity (must be the one the embeddings are compared with).
    unit_weights : torch.Tensor, optional
        Weights ``(K,)`` or ``(B, K)`` applied to the unit terms (used by unbiased sampling estimators).
    all_pairs : bool
        Return every pairing ``(N_a, N_b, P_a, P_b)`` instead of aligned pairs ``(B, P_a, P_b)``.

    Returns
    -------
    torch.Tensor
        Pairwise relevance.
    """
    similarity = get_similarity(similarity)
    emb_a, emb_b = factors_a.embedding, factors_b.embedding
    rel_a, rel_b = factors_a.relevance, factors_b.relevance
    if all_pairs:
        n_a, n_b = len(factors_a), len(factors_b)
        ia = torch.arange(n_a, device=emb_a.device).repeat_interleave(n_b)
        ib = torch.arange(n_b, device=emb_b.device).repeat(n_a)
        out = pairwise_relevance(factors_a[ia], factors_b[ib], similarity, unit_weights=unit_weights)
        return out.reshape(n_a, n_b, *out.shape[1:])
    if len(factors_a) != len(factors_b):
        raise ValueError(f'pairwise_relevance: {len(factors_a)} vs {len(factors_b)} inputs; use all_pairs=True '
                         'for every pairing')
    similarity.check(emb_a, emb_b)
    matrix = similarity.matrix(emb_a, emb_b)
    if unit_weights is not None:
        unit_weights = unit_weights.to(rel_a)
        rel_a = rel_a * (unit_weights[..., None] if unit_weights.dim() == 2 else unit_weights[None, :, None])
    if matrix is None:
        ua, ub = factors_a.unit_index(), factors_b.unit_index()
        if ua.shape != ub.shape or not torch.equal(ua.to(ub.device), ub):
            raise ValueError('pairwise_relevance: a diagonal similarity needs the same explained units on both sides')
        pair = torch.einsum('bmp,bmq->bpq', rel_a, rel_b)
    else:
        sub = matrix[factors_a.unit_index()][:, factors_b.unit_index()].to(rel_a)
        pair = torch.einsum('bmp,mn,bnq->bpq', rel_a, sub, rel_b)
    scale = similarity.scale(emb_a, emb_b).to(pair)
    return scale[:, None, None] * pair


class ConservationWarning(RuntimeWarning):
    """The explanation's total is far larger than the explained similarity (unstable LRP denominators)."""


#: warn when ``|sum R|`` exceeds this multiple of ``|y|``: rules may absorb relevance (sum R < y), never multiply it
AMPLIFICATION_LIMIT = 10.0


def _warn_if_amplified(result: BiLRPResult) -> None:
    total = result.relevance.sum(dim=(1, 2)).abs()
    limit = AMPLIFICATION_LIMIT * result.similarity.abs() + torch.finfo(result.relevance.dtype).tiny
    if bool((total > limit).any()):
        worst = float((total / (result.similarity.abs() + torch.finfo(total.dtype).tiny)).max())
        warnings.warn(
            f'BiLRP relevance sums to up to {worst:.3g} times the similarity: the LRP rules amplify relevance. '
            "Typical cause: zero_params=['bias'] with gamma/LRP-0 rules on a network with large (e.g. merged "
            'BatchNorm) biases, whose denominators then vanish; keep the biases or use z+ rules (EpsilonPlus). '
            'A layer whose kept bias carries much of the embedding (e.g. an alignment head) or a similarity '
            'near 0 also gives large ratios: y - sum R is then the bias terms, not amplification',
            ConservationWarning, stacklevel=3,
        )


def _check_input(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if not x.is_floating_point():
        raise TypeError(f'{name} has dtype {x.dtype}; BiLRP needs a floating-point input (e.g. x.float())')
    if x.dim() < 2:
        raise ValueError(f'{name} has shape {tuple(x.shape)}; expected a batch (N, ...) with N as first axis')
    if x.shape[0] == 0:
        raise ValueError(f'{name} is an empty batch')
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f'{name} contains NaN or inf values')


def _model_tensor(model: torch.nn.Module) -> Optional[torch.Tensor]:
    tensor = next(iter(model.parameters()), None)
    return tensor if tensor is not None else next(iter(model.buffers()), None)


# ----------------------------------------------------------------------------------------- forward session
class _Session:
    """One forward pass of a batch with hooks registered, from which many LRP backward passes are taken."""

    def __init__(self, engine: BiLRP, model: torch.nn.Module, x: torch.Tensor, replicas: int = 1):
        self.engine = engine
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
        engine.head.check(output)
        if output.grad_fn is None:
            raise RuntimeError('the model output does not depend on the input (no autograd graph)')
        self.output = output
        with torch.no_grad():
            embedding = engine.head.embed(output.detach()[:self.n])
        if embedding.dim() != 2:
            raise ValueError(f'the embedding has shape {tuple(embedding.shape)}; it must be 2-D (N, h)')
        if not bool(torch.isfinite(embedding).all()):
            raise ValueError('the embedding contains NaN or inf values')
        self.embedding = embedding
        per_sample = (saved[0] / replicas + 2 * inp[0].numel() * inp.element_size() * replicas
                      + output[0].numel() * output.element_size())
        # backward with Zennit rules re-runs each layer's forward: count the saved activations three times
        self.bytes_per_unit = 3 * per_sample * self.n

    def chunk_size(self, total: int) -> int:
        """Number of backward passes batched together under the engine's memory budget."""
        if self.engine.chunk_size is not None:
            return max(1, min(total, self.engine.chunk_size))
        return max(1, min(total, int(self.engine.memory_budget // max(self.bytes_per_unit, 1))))

    def propagate(self, multipliers: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor],
                  desc: str = 'BiLRP') -> torch.Tensor:
        """LRP for output relevance ``phi * multipliers[k]``, for each ``k``, reduced by ``reduce``.

        Parameters
        ----------
        multipliers : torch.Tensor
            ``(K, N, h)`` multipliers of the embedding (output relevance is ``phi * multipliers``).
        reduce : callable
            Maps input relevance ``(c, N, *input_shape)`` to the kept form (e.g. pooled ``(c, N, P)``).

        Returns
        -------
        torch.Tensor
            ``reduce`` applied to all ``K`` explanations, concatenated along the first axis.
        """
        total = multipliers.shape[0]
        method = self.engine.method
        chunk = 1 if method == 'loop' else (self.replicas if method == 'replicate' else self.chunk_size(total))
        outputs = []
        starts = range(0, total, chunk)
        show = self.engine.progress and len(starts) > 1
        for start in tqdm(starts, desc=desc, disable=not show, leave=False):
            mult = multipliers[start:start + chunk].to(self.output)
            count = mult.shape[0]
            if method == 'replicate':
                if count < self.replicas:
                    pad = mult.new_zeros(self.replicas - count, *mult.shape[1:])
                    mult = torch.cat([mult, pad])
                seed = self.engine.head.output_relevance(self.output[:self.n], mult)
                grad, = torch.autograd.grad(self.output, self.x, seed.flatten(0, 1), retain_graph=True)
                rel = grad.reshape(self.replicas, self.n, *self.input_shape)[:count]
            else:
                seed = self.engine.head.output_relevance(self.output, mult)
                if count == 1:
                    grad, = torch.autograd.grad(self.output, self.x, seed[0], retain_graph=True)
                    rel = grad[None]
                else:
                    grad, = torch.autograd.grad(self.output, self.x, seed, retain_graph=True, is_grads_batched=True)
                    rel = grad
            outputs.append(reduce(rel.detach()))
        return torch.cat(outputs)

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


# -------------------------------------------------------------------------------------------------- engine
class BiLRP:
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
        The Zennit composite defining the LRP rules. Default: :func:`zennit_bilrp.lrp.composites.bilrp_composite`
        (per-depth gamma schedule of the BiLRP paper).
    canonizers : list of zennit.canonizers.Canonizer, optional
        Extra canonizers applied before the composite (in addition to the composite's own).
    similarity : {'dot', 'cosine'} or Similarity or torch.Tensor
        The similarity being explained; a matrix gives the bilinear similarity.
    head : {'none', 'avg', 'sum', 'max', 'flatten'} or Head
        How the model output becomes the embedding (see :mod:`zennit_bilrp.core.heads`).
    model_b : torch.nn.Module, optional
        Second encoder of a two-tower model (inputs ``x'`` go through it). Default: the same model (Siamese).
    composite_b : zennit.core.Composite, optional
        Composite for ``model_b``; default a copy of ``composite``.
    method : {'batched', 'replicate', 'loop'}
        How the per-unit backward passes are batched: ``torch.autograd.grad(is_grads_batched=True)`` over one
        forward (default), one forward of the input replicated ``chunk_size`` times, or one pass per unit.
    chunk_size : int, optional
        Number of units per batched backward pass; default derived from ``memory_budget``.
    memory_budget : int
        Bytes the batched backward passes may use (default 1 GiB).
    max_pairwise_entries : int
        Refuse pooled pairwise matrices larger than this per pair (default 2**24), to prevent materialising a
        pixel-by-pixel matrix by accident.
    progress : bool
        Show a tqdm progress bar over chunks.
    strict : bool
        Refuse leaf layers with parameters that the composite gives no rule (their relevance would be a plain
        gradient). Default True.
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
        method: str = 'batched',
        chunk_size: Optional[int] = None,
        memory_budget: int = 1 << 30,
        max_pairwise_entries: int = 1 << 24,
        progress: bool = False,
        strict: bool = True,
        shortcut: bool = True,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
        if model_b is not None and not isinstance(model_b, torch.nn.Module):
            raise TypeError(f'model_b must be a torch.nn.Module, got {type(model_b).__name__}')
        if method not in METHODS:
            raise ValueError(f'unknown method {method!r}; choose one of {METHODS}')
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f'chunk_size must be positive, got {chunk_size}')
        if memory_budget <= 0:
            raise ValueError(f'memory_budget must be positive, got {memory_budget}')
        if composite is None:
            composite = bilrp_composite()
        self.model = model
        self.model_b = model_b if model_b is not model else None
        self.composite = composite
        self.composite_b = None
        if self.model_b is not None:
            self.composite_b = composite_b if composite_b is not None else copy.deepcopy(composite)
        self.canonizers = list(canonizers or [])
        self.canonizers_b = copy.deepcopy(self.canonizers) if self.model_b is not None else []
        self.similarity = get_similarity(similarity)
        self.head = get_head(head)
        self.method = method
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.max_pairwise_entries = max_pairwise_entries
        self.progress = progress
        self.strict = strict
        self.shortcut = shortcut
        self._guard: Optional[ModelGuard] = None
        self._handles: list = []
        self._depth = 0

    # --------------------------------------------------------------------------------- registration
    def _towers(self):
        yield self.model, self.composite, self.canonizers
        if self.model_b is not None:
            yield self.model_b, self.composite_b, self.canonizers_b

    def __enter__(self) -> BiLRP:
        if self._depth == 0:
            self._register()
        self._depth += 1
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> bool:
        self._depth -= 1
        if self._depth == 0:
            self._remove()
        return False

    @property
    def active(self) -> bool:
        """Whether composite and canonizers are currently registered."""
        return self._depth > 0

    def _register(self) -> None:
        for model, _, _ in self._towers():
            self.check_mode(model)
        self._guard = ModelGuard(*(model for model, _, _ in self._towers()))
        self._guard.__enter__()
        try:
            for model, composite, canonizers in self._towers():
                before = {id(m): len(m._forward_pre_hooks) for m in model.modules()}
                for canonizer in canonizers:
                    self._handles.extend(canonizer.apply(model))
                composite.register(model)
                self._handles.append(composite)
                self._handles.append(exact_batch_norm_merge(self._handles))
                self._handles.extend(register_similarity_rules(model))
                if self.strict:
                    self._check_rules(model, before)
                if self.shortcut:
                    self._handles.extend(register_rule_shortcuts(model))
        except BaseException:
            self._remove()
            raise

    def _remove(self) -> None:
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

    @staticmethod
    def check_mode(model: torch.nn.Module) -> None:
        """Refuse models in training mode with BatchNorm or Dropout (their output would depend on the batch or
        on randomness, and BatchNorm statistics would be updated)."""
        offending = [name or type(model).__name__ for name, module in model.named_modules()
                     if isinstance(module, _TRAIN_SENSITIVE) and module.training]
        if offending:
            raise RuntimeError(
                f'the model is in training mode with BatchNorm/Dropout layers ({", ".join(offending[:3])}'
                f'{", ..." if len(offending) > 3 else ""}); call model.eval() first'
            )

    @staticmethod
    def _check_rules(model: torch.nn.Module, before: dict) -> None:
        for name, module in model.named_modules():
            has_params = any(p is not None for p in module._parameters.values())
            is_leaf = not any(True for _ in module.children())
            if not (has_params and is_leaf) or isinstance(module, _TRAIN_SENSITIVE):
                continue
            if len(module._forward_pre_hooks) <= before.get(id(module), 0):
                raise TypeError(
                    f"unsupported layer '{name}' ({type(module).__name__}): the composite assigns it no LRP rule, "
                    'so its relevance would be a plain gradient. Map it to a rule in the composite (or pass '
                    'strict=False to accept this)'
                )

    # --------------------------------------------------------------------------------------- running
    def _validate_device_dtype(self, x: torch.Tensor, model: torch.nn.Module, name: str) -> None:
        reference = _model_tensor(model)
        if reference is None:
            return
        if reference.is_floating_point() and x.dtype != reference.dtype:
            raise TypeError(f'{name} has dtype {x.dtype} but the model has {reference.dtype}; cast one of them')
        if x.device != reference.device:
            raise ValueError(f'{name} is on {x.device} but the model is on {reference.device}')

    def _session(self, model: torch.nn.Module, x: torch.Tensor) -> _Session:
        session = _Session(self, model, x)
        if self.method != 'replicate':
            return session
        # a first forward measures the memory per unit; the replicated forward then holds `replicas` copies
        replicas = session.chunk_size(session.embedding.shape[1])
        del session
        return _Session(self, model, x, replicas=replicas)

    def _check_pairwise_size(self, grid_a: PatchGrid, grid_b: PatchGrid) -> None:
        entries = grid_a.num_patches * grid_b.num_patches
        if entries > self.max_pairwise_entries:
            raise ValueError(
                f'the pooled pairwise matrix would have {grid_a.num_patches} x {grid_b.num_patches} = {entries} '
                f'entries per pair (limit {self.max_pairwise_entries}); choose a coarser patch size or raise '
                'max_pairwise_entries'
            )

    def _context(self):
        return self if not self.active else _NullContext()

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
        _check_input(x, 'x')
        model = self._tower_model(tower)
        self._validate_device_dtype(x, model, 'x')
        grid = Pooling.ensure(pooling).resolve(x.shape[1:])
        with self._context(), torch.enable_grad():
            self.check_mode(model)
            session = self._session(model, x)
            return session.factors(grid, units)

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
        _check_input(x, 'x')
        model = self._tower_model(tower)
        self._validate_device_dtype(x, model, 'x')
        pool = Pooling.ensure(pooling)
        grid = pool.resolve(x.shape[1:])
        keep_shape = not grid.channels_summed and all(p == 1 for p in grid.patch)
        with self._context(), torch.enable_grad():
            self.check_mode(model)
            session = self._session(model, x)
            if multipliers.dim() == 2:
                multipliers = multipliers[:, None, :].expand(-1, x.shape[0], -1)
            if multipliers.dim() != 3 or multipliers.shape[1:] != session.embedding.shape:
                raise ValueError(f'multipliers of shape {tuple(multipliers.shape)} do not fit embeddings '
                                 f'{tuple(session.embedding.shape)}; expected (K, N, h) or (K, h)')
            reduce = (lambda rel: rel) if keep_shape else (lambda rel: Pooling.apply(rel, grid, 2))
            return session.embedding, session.propagate(multipliers, reduce)

    def embed(self, x: torch.Tensor, tower: str = 'a') -> torch.Tensor:
        """The embeddings ``phi(x)`` (no relevance computed)."""
        _check_input(x, 'x')
        model = self._tower_model(tower)
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

    def explain(self, x_a: torch.Tensor, x_b: torch.Tensor, pooling: Union[None, int, Pooling] = None,
                pooling_b: Union[None, int, Pooling, str] = 'same', marginals: bool = True) -> BiLRPResult:
        """Explain the similarity of each pair ``(x_a[i], x_b[i])``.

        Parameters
        ----------
        x_a, x_b : torch.Tensor
            Batches of the same size ``B``. With a shared encoder and equal sample shapes both go through one
            forward pass (required by Zennit's hooks).
        pooling : int or Pooling, optional
            Patch pooling of the pairwise relevance (``None``: per position, channels summed).
        pooling_b : int or Pooling or 'same'
            Pooling of the second inputs (default: as ``pooling``).
        marginals : bool
            Also compute the exact input-resolution marginals (one extra LRP pass per side).

        Returns
        -------
        BiLRPResult
        """
        _check_input(x_a, 'x_a')
        _check_input(x_b, 'x_b')
        if x_a.shape[0] != x_b.shape[0]:
            raise ValueError(f'batch sizes differ: x_a has {x_a.shape[0]} samples, x_b has {x_b.shape[0]}; '
                             'BiLRP explains aligned pairs (use factors() and pairwise_relevance(all_pairs=True) '
                             'for every pairing)')
        model_a, model_b = self._tower_model('a'), self._tower_model('b')
        self._validate_device_dtype(x_a, model_a, 'x_a')
        self._validate_device_dtype(x_b, model_b, 'x_b')
        pool_a = Pooling.ensure(pooling)
        pool_b = pool_a if isinstance(pooling_b, str) and pooling_b == 'same' else Pooling.ensure(pooling_b)
        grid_a, grid_b = pool_a.resolve(x_a.shape[1:]), pool_b.resolve(x_b.shape[1:])
        self._check_pairwise_size(grid_a, grid_b)
        n = x_a.shape[0]
        with self._context(), torch.enable_grad():
            self.check_mode(model_a)
            self.check_mode(model_b)
            shared = self.model_b is None
            if shared and x_a.shape[1:] == x_b.shape[1:] and grid_a == grid_b:
                session = self._session(model_a, torch.cat([x_a, x_b]))
                both = session.factors(grid_a, desc='BiLRP (both inputs)')
                fa, fb = both[:n], both[n:]
                self.similarity.check(fa.embedding, fb.embedding)
                relevance = pairwise_relevance(fa, fb, self.similarity)
                marg_a = marg_b = None
                if marginals:
                    sa, sb = self.similarity.partner_multipliers(fa.totals, fb.totals, fa.embedding, fb.embedding)
                    marg = session.marginal(torch.cat([sa, sb]))
                    marg_a, marg_b = marg[:n], marg[n:]
                del session
            else:
                session_a = self._session(model_a, x_a)
                fa = session_a.factors(grid_a, desc='BiLRP (first inputs)')
                if shared:
                    del session_a  # the hooks only keep the latest forward: x_b's forward invalidates this graph
                session_b = self._session(model_b, x_b)
                fb = session_b.factors(grid_b, desc='BiLRP (second inputs)')
                self.similarity.check(fa.embedding, fb.embedding)
                relevance = pairwise_relevance(fa, fb, self.similarity)
                marg_a = marg_b = None
                if marginals:
                    sa, sb = self.similarity.partner_multipliers(fa.totals, fb.totals, fa.embedding, fb.embedding)
                    marg_b = session_b.marginal(sb)
                    del session_b
                    if shared:
                        session_a = self._session(model_a, x_a)
                    marg_a = session_a.marginal(sa)
            similarity = self.similarity(fa.embedding, fb.embedding)
        result = BiLRPResult(relevance, similarity, fa, fb, marg_a, marg_b)
        _warn_if_amplified(result)
        return result

    __call__ = explain

    def explain_pairs(self, pairs: Iterator, pooling: Union[None, int, Pooling] = None, marginals: bool = False,
                      total: Optional[int] = None) -> Iterator[BiLRPResult]:
        """Explain an iterable of ``(x_a, x_b)`` batches (e.g. a ``DataLoader`` of pairs) with a progress bar.

        Yields one :class:`BiLRPResult` per batch; composite and canonizers stay registered throughout.
        """
        if total is None and hasattr(pairs, '__len__'):
            total = len(pairs)
        with self._context():
            for batch in tqdm(pairs, desc='pairs', total=total, disable=not self.progress):
                x_a, x_b = batch[0], batch[1]
                yield self.explain(x_a, x_b, pooling=pooling, marginals=marginals)

    def __repr__(self) -> str:
        return (f'BiLRP(similarity={self.similarity!r}, head={self.head!r}, method={self.method!r}, '
                f'two_tower={self.model_b is not None})')


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False

