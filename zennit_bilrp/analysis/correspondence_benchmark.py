r"""Run named pairwise explanation methods on pairs with known correspondence and score them.

:func:`evaluate` takes any set of named methods, ``method(x_a, x_b, patch) -> relevance``: the pooled pairwise
relevance ``(P_a, P_b)`` (or ``(1, P_a, P_b)``) of one pair on ``patch``-pixel patches, or a
:class:`~zennit_bilrp.core.results.PairRelevance` / :class:`~zennit_bilrp.core.results.BiLRPResult` (then its
factors also give the :func:`~zennit_bilrp.analysis.pairwise_structure.top_singular_share` and its similarity the
conservation ratio :math:`\sum R / y`). :func:`bilrp_method` makes one from a model and a composite.

Each method runs once per pair at the finest patch size; coarser sizes (multiples of it) are sum-pooled from it,
which equals running at the coarser size for every method that pools relevance by summation (all of this package's
do). Per pair and patch size a row holds: correspondence pointing and error of the top-``k`` pairs with their chance
levels (:func:`~zennit_bilrp.analysis.correspondence.correspondence_scores`), the same for the outer product of the
method's own marginals (:func:`~zennit_bilrp.analysis.pairwise_structure.marginal_outer_product`), the pairwise
insertion score (:func:`~zennit_bilrp.analysis.pair_insertion.pair_insertion`, when a ``forward`` is given), the
seconds of the method's call and, for results with factors, the top singular share of both inputs' factors.
The controls ``'oracle'`` (:func:`~zennit_bilrp.analysis.correspondence.oracle_relevance`) and ``'random'``
(seeded Gaussian noise) are added by default. Relevance (and factors) are cached per method and pair as NPZ files
when ``cache`` is a folder, so an interrupted run resumes.

:func:`summarize` reduces the rows to means and standard errors per method and patch size.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.pooling import PatchGrid
from ..core.results import Factors, PairRelevance
from .correspondence import CorrespondencePair, correspondence_scores, oracle_relevance, patch_truth
from .pair_insertion import pair_insertion
from .pairwise_structure import marginal_outer_product, top_singular_share

__all__ = ['CONTROLS', 'SCORES', 'bilrp_method', 'coarsen', 'evaluate', 'summarize']

#: the control rows :func:`evaluate` adds
CONTROLS = ('oracle', 'random')
#: numeric columns of a row that :func:`summarize` averages
SCORES = ('pointing', 'error_px', 'chance', 'error_chance', 'pointing_outer', 'error_outer', 'pointing_gain',
          'insertion_auc', 'insertion_start', 'insertion_full', 'seconds', 'singular_share', 'conservation')

Method = Callable[[torch.Tensor, torch.Tensor, int], Union[torch.Tensor, PairRelevance]]


def bilrp_method(model: torch.nn.Module, composite: Callable[[torch.nn.Module], object],
                 similarity: str = 'cosine', **kwargs) -> Method:
    """A method for :func:`evaluate`: exact BiLRP of ``model`` with the composite ``composite(model)`` (a fresh
    one per call), returning the :class:`~zennit_bilrp.core.results.BiLRPResult` (marginals skipped).

    ``kwargs`` go to :class:`~zennit_bilrp.core.engine.BiLRP` (e.g. ``method``, ``memory_budget``).
    """
    from ..core.engine import BiLRP

    def explain(x_a: torch.Tensor, x_b: torch.Tensor, patch: int):
        with BiLRP(model, composite=composite(model), similarity=similarity, **kwargs) as bilrp:
            return bilrp.explain(x_a, x_b, pooling=patch, marginals=False)

    return explain


def coarsen(values: torch.Tensor, grid: PatchGrid, factor: int, dim: int = -1) -> torch.Tensor:
    """Sum-pool values on the patches of a 2-D ``grid`` (axis ``dim``) into patches ``factor`` times larger."""
    if factor == 1:
        return values
    (gh, gw) = grid.grid
    if gh % factor or gw % factor:
        raise ValueError(f'a factor of {factor} does not divide the patch grid {grid.grid}')
    dim = dim % values.dim()
    lead, rest = values.shape[:dim], values.shape[dim + 1:]
    shaped = values.reshape(*lead, gh // factor, factor, gw // factor, factor, *rest)
    return shaped.sum(dim=(dim + 1, dim + 3)).reshape(*lead, (gh // factor) * (gw // factor), *rest)


def _safe(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.+-]+', '_', name)


def _unpack(output) -> dict:
    """Relevance ``(P_a, P_b)`` and optional factors ``(h, P)``/similarity of a method's output."""
    out = {}
    if isinstance(output, PairRelevance):
        out['relevance'] = output.relevance
        out['similarity'] = output.similarity.reshape(-1)[:1]
        for side in ('a', 'b'):
            factors = getattr(output, f'factors_{side}', None)
            if isinstance(factors, Factors):
                out[f'factors_{side}'] = factors.relevance[0]
    else:
        out['relevance'] = torch.as_tensor(output)
    relevance = out['relevance']
    if relevance.dim() == 3 and relevance.shape[0] == 1:
        relevance = relevance[0]
    out['relevance'] = relevance
    return {key: value.detach().cpu().double() for key, value in out.items()}


def _run_cached(method: Method, name: str, index: int, pair: CorrespondencePair, x_a, x_b, patch: int,
                cache: Optional[Path]) -> dict:
    path = None
    if cache is not None:
        height, width = pair.size
        path = cache / _safe(name) / f'{index:03d}_{_safe(pair.name)}_{height}x{width}_p{patch}.npz'
        if path.is_file():
            with np.load(path, allow_pickle=False) as npz:
                return {key: torch.from_numpy(np.array(npz[key])) for key in npz.files}
    start = time.perf_counter()
    output = method(x_a, x_b, patch)
    seconds = time.perf_counter() - start
    out = _unpack(output)
    out['seconds'] = torch.tensor([seconds], dtype=torch.float64)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix('.tmp.npz')
        np.savez(tmp, **{key: value.numpy() for key, value in out.items()})
        tmp.replace(path)
    return out


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _patch_sizes(patch: Union[int, Sequence[int]]) -> list[int]:
    """The patch sizes of :func:`evaluate`, smallest first, checked (positive, multiples of the smallest)."""
    patches = sorted({int(p) for p in ([patch] if isinstance(patch, int) else patch)})
    if not patches or patches[0] < 1:
        raise ValueError(f'patch sizes must be positive, got {patch}')
    finest = patches[0]
    if any(p % finest for p in patches):
        raise ValueError(f'every patch size must be a multiple of the smallest ({finest}), got {patches}')
    return patches


def _check_controls(methods: Mapping[str, Method], controls: Sequence[str]) -> None:
    unknown = set(controls) - set(CONTROLS)
    if unknown:
        raise ValueError(f'unknown controls {sorted(unknown)}; choose from {CONTROLS}')
    clash = set(methods) & set(controls)
    if clash:
        raise ValueError(f'method names {sorted(clash)} clash with the controls; rename them or drop the controls')


def _coarse_entry(out: dict, fine, factor: int) -> tuple:
    """A method's relevance sum-pooled by ``factor`` from the finest patch truth ``fine``, and its extra columns
    (seconds, top singular share of its factors, similarity and conservation)."""
    relevance = coarsen(coarsen(out['relevance'], fine.grid_a, factor, 0), fine.grid_b, factor, 1)
    extra = {'seconds': float(out['seconds'][0])}
    shares = []
    for side, grid in (('a', fine.grid_a), ('b', fine.grid_b)):
        if f'factors_{side}' in out:
            shares.append(float(top_singular_share(coarsen(out[f'factors_{side}'], grid, factor, 1))[0]))
    if shares:
        extra['singular_share'] = float(np.mean(shares))
        extra['singular_share_a'], extra['singular_share_b'] = shares
    if 'similarity' in out and float(out['similarity'][0]) != 0:
        extra['similarity'] = float(out['similarity'][0])
        extra['conservation'] = float(relevance.sum()) / extra['similarity']
    return relevance, extra


@dataclass
class _Evaluation:
    """The settings of one :func:`evaluate` call, and the rows it makes of each pair."""

    methods: Mapping[str, Method]
    patches: list
    k: int
    forward: Optional[Callable]
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    controls: tuple
    insertion: dict
    cache: Optional[Path]
    subsets: dict
    seed: int
    keep_relevance: bool

    def names(self, index: int) -> list[str]:
        """The methods that run on pair ``index``."""
        return [name for name in self.methods if name not in self.subsets or index in self.subsets[name]]

    def rows(self, index: int, pair: CorrespondencePair, bar) -> list[dict]:
        """Run the methods on ``pair`` at the finest patch size (or read the cache); score them at every size."""
        x_a, x_b = self.preprocess(pair.x_a), self.preprocess(pair.x_b)
        for size in self.patches:
            if pair.size[0] % size or pair.size[1] % size:
                raise ValueError(f'patch size {size} does not divide the image size {pair.size} of {pair.name!r}')
        truths = {size: patch_truth(pair, size) for size in self.patches}
        outputs = {}
        for name in self.names(index):
            bar.set_postfix_str(f'{pair.name}: {name}')
            outputs[name] = _run_cached(self.methods[name], name, index, pair, x_a, x_b, self.patches[0], self.cache)
            bar.update(1)
        gen = torch.Generator().manual_seed(self.seed + index)
        rows = []
        for size in self.patches:
            for name, relevance, extra in self.entries(outputs, truths, size, index, gen):
                row = {'method': name, 'pair': pair.name, 'kind': pair.kind, 'index': index, 'patch': size, 'k': self.k}
                rows.append(self.score(row, relevance, extra, truths[size], x_a, x_b))
        return rows

    def entries(self, outputs: dict, truths: dict, size: int, index: int, gen: torch.Generator) -> list[tuple]:
        """``(name, relevance, extra)`` of every method and control at patch ``size``."""
        truth = truths[size]
        entries = [(name, *_coarse_entry(out, truths[self.patches[0]], size // self.patches[0]))
                   for name, out in outputs.items()]
        if 'oracle' in self.controls:
            entries.append(('oracle', oracle_relevance(truth, self.seed + index), {}))
        if 'random' in self.controls:
            noise = torch.randn(truth.match.shape, generator=gen, dtype=torch.float64)
            entries.append(('random', noise, {}))
        return entries

    def score(self, row: dict, relevance: torch.Tensor, extra: dict, truth, x_a: torch.Tensor,
              x_b: torch.Tensor) -> dict:
        """``row`` with the correspondence scores of ``relevance``, of its marginals' outer product, the insertion
        score (with a ``forward``) and ``extra``."""
        row.update(correspondence_scores(relevance, truth, self.k))
        try:
            outer = correspondence_scores(marginal_outer_product(relevance), truth, self.k)
            row['pointing_outer'], row['error_outer'] = outer['pointing'], outer['error_px']
            row['pointing_gain'] = row['pointing'] - row['pointing_outer']
        except ValueError:  # relevance sums to zero
            pass
        if self.forward is not None:
            curve = pair_insertion(self.forward, x_a, x_b, relevance, truth.grid_a, truth.grid_b, **self.insertion)
            row.update(insertion_auc=curve.auc, insertion_start=curve.start, insertion_full=curve.full,
                       insertion_curve=curve.similarity.tolist(), insertion_budgets=curve.budgets.tolist())
        row.update(extra)
        if self.keep_relevance:
            row['relevance'] = relevance
        return row


def evaluate(methods: Mapping[str, Method], pairs: Sequence[CorrespondencePair],
             patch: Union[int, Sequence[int]] = (32, 16), k: int = 10, forward: Optional[Callable] = None,
             preprocess: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, controls: Sequence[str] = CONTROLS,
             insertion: Optional[dict] = None, cache: Union[None, str, Path] = None,
             subsets: Optional[Mapping[str, Sequence[int]]] = None, progress: bool = True,
             seed: int = 0, keep_relevance: bool = False) -> list[dict]:
    """Score every method on every pair at every patch size; one row (a dict) per (method, pair, patch).

    Parameters
    ----------
    methods : mapping of str to callable
        ``method(x_a, x_b, patch)`` for one pair ``(1, C, H, W)`` (after ``preprocess``), returning the pooled
        relevance ``(P_a, P_b)`` or a :class:`~zennit_bilrp.core.results.PairRelevance`.
    pairs : sequence of CorrespondencePair
        E.g. :func:`~zennit_bilrp.analysis.correspondence.correspondence_pairs`.
    patch : int or sequence of int
        Patch sizes; every size must be a multiple of the smallest (at which the methods run).
    k : int
        Top pairs scored.
    forward : callable, optional
        ``forward(x_a, x_b) -> (N,)`` similarity (of preprocessed inputs) for the insertion score; ``None`` skips it.
    preprocess : callable, optional
        Applied to the images before the methods and ``forward`` see them (e.g. ImageNet normalization).
    controls : sequence of str
        Which of :data:`CONTROLS` to add.
    insertion : dict, optional
        Keyword arguments of :func:`~zennit_bilrp.analysis.pair_insertion.pair_insertion` (``budget``,
        ``points``, ``fill``, ...).
    cache : str or Path, optional
        Folder for per-(method, pair) NPZ results; existing files are reused (delete them to recompute).
    subsets : mapping of str to sequence of int, optional
        Run a method on these pair indices only (e.g. a slow baseline on a subset).
    progress : bool
        tqdm progress bar over (pair, method).
    seed : int
        Seed of the controls.
    keep_relevance : bool
        Also keep each row's pooled relevance ``(P_a, P_b)`` (float64) under ``'relevance'`` (e.g. for figures).

    Returns
    -------
    list of dict
        Rows with ``method``, ``pair``, ``kind``, ``index``, ``patch``, ``k`` and the :data:`SCORES` that apply;
        with a ``forward`` also the insertion curve (``insertion_curve``, ``insertion_budgets``).
    """
    patches = _patch_sizes(patch)
    _check_controls(methods, controls)
    run = _Evaluation(methods, patches, k, forward, preprocess or _identity, tuple(controls), insertion or {},
                      None if cache is None else Path(cache),
                      {name: {int(i) for i in index} for name, index in (subsets or {}).items()}, seed, keep_relevance)
    bar = tqdm(total=sum(len(run.names(i)) for i in range(len(pairs))), desc='correspondence', disable=not progress)
    rows = [row for index, pair in enumerate(pairs) for row in run.rows(index, pair, bar)]
    bar.close()
    return rows


def summarize(rows: Sequence[dict], scores: Sequence[str] = SCORES) -> list[dict]:
    """Mean and standard error (``<score>_se``) of each score per (method, patch), with the number of pairs;
    larger patches first, methods in the order they first appear."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row['method'], row['patch']), []).append(row)
    out = []
    for (method, patch), members in groups.items():
        entry = {'method': method, 'patch': patch, 'pairs': len(members)}
        for score in scores:
            values = np.array([r[score] for r in members if score in r and r[score] is not None], dtype=float)
            values = values[np.isfinite(values)]
            if values.size:
                entry[score] = float(values.mean())
                entry[f'{score}_se'] = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0
        out.append(entry)
    order = {key: position for position, key in enumerate(groups)}
    return sorted(out, key=lambda e: (-e['patch'], order[(e['method'], e['patch'])]))
