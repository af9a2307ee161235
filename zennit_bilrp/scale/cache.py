r"""Many pairs: a cache of per-input BiLRP factors for retrieval, and explaining a DataLoader of pairs.

BiLRP of a pair is a product of per-input factors, :math:`R(x, x') = c\,F(x)^\top G\,F(x')` with
:math:`F(x) \in \mathbb{R}^{h \times P}` the pooled explanations of the ``h`` embedding units
(:meth:`BiLRP.factors <zennit_bilrp.core.engine.BiLRP.factors>`). Retrieval needs only the similarity to rank, so
:class:`FactorCache` keeps the *embeddings* of a gallery (one forward pass per batch) and computes factors lazily,
only for the inputs a query actually explains: :meth:`FactorCache.query` ranks all ``N`` gallery inputs by
similarity and explains the top ``k``, at the cost of one factor computation for the query and at most ``k`` for
the gallery (each gallery input at most once over all queries) instead of ``N + 1``. The dense variant
:meth:`FactorCache.query_dense` pairs a query with every gallery input. Memory is ``N * h`` numbers for the
embeddings plus ``h * P`` per explained gallery input. Caches are saved to and loaded from NPZ files (or
``.safetensors`` when the ``safetensors`` package is installed).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.engine import BiLRP
from ..core.pooling import SAME, PatchGrid, Pooling
from ..core.results import BiLRPResult, Factors, pairwise_relevance

__all__ = ['FactorCache', 'Retrieval', 'PairResults', 'explain_loader']

def _batches(inputs, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        for start in range(0, inputs.shape[0], batch_size):
            yield inputs[start:start + batch_size]
        return
    for batch in inputs:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _n_batches(inputs, batch_size: int) -> Optional[int]:
    if isinstance(inputs, torch.Tensor):
        return -(-inputs.shape[0] // batch_size)
    return len(inputs) if hasattr(inputs, '__len__') else None


def _random_access(inputs):
    """The gallery as something indexable per input (a tensor or a map-style dataset), or None."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    dataset = getattr(inputs, 'dataset', inputs)  # a DataLoader's dataset
    if hasattr(dataset, '__getitem__') and hasattr(dataset, '__len__'):
        return dataset
    return None


@dataclass
class Retrieval:
    """The top-``k`` gallery matches of each of ``Q`` queries and their BiLRP explanations
    (:meth:`FactorCache.query`).

    Attributes
    ----------
    indices : torch.Tensor
        Gallery positions of the matches, ``(Q, k)``, by decreasing similarity.
    keys : list of list of str
        The cache keys of the matches, ``Q`` lists of ``k``.
    similarities : torch.Tensor
        Similarity of each match, ``(Q, k)`` (from the embeddings; the explanations' ``similarity`` is the same
        value from the explained forward pass).
    results : list of BiLRPResult
        One result per query, explaining its ``k`` pairs ``(query, match)`` in rank order.
    """
    indices: torch.Tensor
    keys: list[list[str]]
    similarities: torch.Tensor
    results: list[BiLRPResult] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, query: int) -> BiLRPResult:
        return self.results[query]


class FactorCache:
    """Gallery embeddings and (lazily computed) per-input BiLRP factors, for fast retrieval explanations.

    Parameters
    ----------
    factors : Factors, optional
        Factors of every cached input (e.g. from :meth:`BiLRP.factors`); their embeddings are the cache's.
    keys : sequence of str, optional
        One key per cached input (default ``'0', '1', ...``).
    embedding : torch.Tensor, optional
        Embeddings ``(N, h)`` of a gallery without factors yet (instead of ``factors``).
    inputs : torch.Tensor or Dataset, optional
        The gallery inputs (a tensor ``(N, ...)`` or a map-style dataset whose items are inputs or tuples starting
        with one), from which missing factors are computed on demand.
    pooling : int or Pooling, optional
        Pooling of the lazily computed factors.

    Examples
    --------
    >>> cache = FactorCache.build(bilrp, gallery, pooling=8)     # N embeddings: forward passes only
    >>> matches = cache.query(bilrp, query, k=3)                  # 1 + at most 3 factor computations
    >>> matches.keys[0], matches.similarities[0], matches[0].relevance.shape
    >>> cache.save('gallery.npz'); cache = FactorCache.load('gallery.npz', inputs=gallery)
    """

    def __init__(self, factors: Optional[Factors] = None, keys: Optional[Sequence[str]] = None,
                 embedding: Optional[torch.Tensor] = None, inputs=None, pooling: Union[None, int, Pooling] = None):
        if factors is not None and embedding is not None:
            raise ValueError('FactorCache: give factors or embedding, not both')
        self._rows: dict = {}
        self.grid: Optional[PatchGrid] = None
        self.units: Optional[torch.Tensor] = None
        self.embedding: Optional[torch.Tensor] = None
        if factors is not None:
            self.embedding = factors.embedding
            self._store(range(len(factors)), factors)
        elif embedding is not None:
            if embedding.dim() != 2:
                raise ValueError(f'FactorCache: embedding must be (N, h), got {tuple(embedding.shape)}')
            self.embedding = embedding
        n = len(self)
        keys = [str(i) for i in range(n)] if keys is None else [str(k) for k in keys]
        if len(keys) != n:
            raise ValueError(f'FactorCache: {len(keys)} keys for {n} cached inputs')
        self.keys = keys
        self.pooling = Pooling.ensure(pooling)
        self.inputs = None
        if inputs is not None:
            self.attach(inputs)

    def __len__(self) -> int:
        return 0 if self.embedding is None else self.embedding.shape[0]

    def __repr__(self) -> str:
        if self.embedding is None:
            return 'FactorCache(empty)'
        n, h = self.embedding.shape
        grid = None if self.grid is None else self.grid.grid
        return f'FactorCache(n={n}, h={h}, with_factors={self.n_factors}, grid={grid})'

    @property
    def n_factors(self) -> int:
        """Number of cached inputs whose factors have been computed."""
        return len(self._rows)

    @property
    def factors(self) -> Optional[Factors]:
        """The factors of every cached input (``None`` for an empty cache); refused while some are not computed
        (see :meth:`factors_of`)."""
        if self.embedding is None:
            return None
        if self.n_factors < len(self):
            raise ValueError(f'only {self.n_factors} of {len(self)} cached inputs have factors; use '
                             'cache.factors_of(bilrp, indices) (computes the missing ones) or build with lazy=False')
        return self._gather(range(len(self)))

    def attach(self, inputs) -> None:
        """Give the gallery inputs (tensor or map-style dataset, ``len == len(cache)``) for lazy factors."""
        source = _random_access(inputs)
        if source is None:
            raise TypeError('lazy factors need random access to the gallery: pass a tensor (N, ...) or a map-style '
                            f'Dataset, not a {type(inputs).__name__}')
        if len(source) != len(self):
            raise ValueError(f'FactorCache.attach: {len(source)} inputs for {len(self)} cached embeddings')
        self.inputs = source

    def _store(self, positions, factors: Factors) -> None:
        factors = factors.to('cpu')
        if self.grid is None:
            self.grid, self.units = factors.grid, factors.units
        elif factors.grid != self.grid:
            raise ValueError(f'factors pooled on grid {factors.grid.grid} do not fit the cache ({self.grid.grid})')
        elif (factors.units is None) != (self.units is None) or (
                factors.units is not None and not torch.equal(factors.units, self.units)):
            raise ValueError('factors explain other units than the cached ones')
        for row, position in enumerate(positions):
            self._rows[int(position)] = factors[row]

    def _gather(self, positions) -> Factors:
        return Factors.cat([self._rows[int(p)] for p in positions])

    def index(self, key: str) -> int:
        """Position of ``key`` in the cache."""
        try:
            return self.keys.index(str(key))
        except ValueError:
            raise KeyError(f'key {key!r} is not in the cache') from None

    def _positions(self, indices) -> list[int]:
        if self.embedding is None:
            raise ValueError('the cache is empty')
        if indices is None:
            return list(range(len(self)))
        positions = [self.index(i) if isinstance(i, str) else int(i) for i in indices]
        bad = [p for p in positions if not 0 <= p < len(self)]
        if bad:
            raise IndexError(f'positions {bad[:5]} out of range for a cache of {len(self)}')
        return positions

    def add(self, bilrp: BiLRP, x: torch.Tensor, pooling: Union[None, int, Pooling] = None,
            keys: Optional[Sequence[str]] = None, tower: str = 'b', units: Optional[torch.Tensor] = None,
            lazy: bool = False) -> None:
        """Append the inputs ``x``: their factors (one factor computation per input), or with ``lazy`` only their
        embeddings (one forward pass; the factors follow on demand, which needs the inputs: see :meth:`attach`)."""
        if lazy and units is not None:
            raise ValueError('FactorCache.add: units are chosen when the factors are computed, not with lazy=True')
        if lazy:
            embedding, factors = bilrp.embed(x, tower).detach().cpu(), None
        else:
            factors = bilrp.factors(x, pooling, tower=tower, units=units).to('cpu')
            embedding = factors.embedding.detach()
        start = len(self)
        keys = [str(start + i) for i in range(len(embedding))] if keys is None else [str(k) for k in keys]
        if len(keys) != len(embedding):
            raise ValueError(f'FactorCache.add: {len(keys)} keys for {len(embedding)} inputs')
        duplicates = set(keys) & set(self.keys)
        if duplicates:
            raise ValueError(f'FactorCache.add: keys already cached: {sorted(duplicates)[:5]}')
        if self.embedding is not None and embedding.shape[1] != self.embedding.shape[1]:
            raise ValueError(f'FactorCache.add: embeddings of {embedding.shape[1]} units do not fit the cached '
                             f'{self.embedding.shape[1]}')
        if factors is not None:
            self._store(range(start, start + len(factors)), factors)
        self.embedding = embedding if self.embedding is None else torch.cat([self.embedding, embedding])
        self.keys.extend(keys)

    @classmethod
    def build(cls, bilrp: BiLRP, inputs, pooling: Union[None, int, Pooling] = None, batch_size: int = 8,
              keys: Optional[Sequence[str]] = None, tower: str = 'b', progress: bool = True,
              lazy: bool = True) -> FactorCache:
        """Cache a gallery: a tensor ``(N, ...)`` (split in ``batch_size`` batches) or an iterable of batches (e.g. a
        ``DataLoader``; of a tuple batch the first entry is used), with a progress bar.

        With ``lazy`` (default) only the embeddings are computed now (forward passes); factors are computed when a
        query explains a gallery input (the inputs are kept for that: a tensor, or the ``Dataset`` of a
        ``DataLoader``). ``lazy=False`` computes every factor at once (then any iterable of batches works).
        """
        if lazy and _random_access(inputs) is None:
            raise TypeError('FactorCache.build(lazy=True) needs random access to the gallery for the factors it '
                            f'computes later: pass a tensor or a DataLoader of a map-style Dataset, not a '
                            f'{type(inputs).__name__} (or lazy=False)')
        cache = cls(pooling=pooling)
        desc = 'gallery embeddings' if lazy else 'caching factors'
        context = bilrp.registration.ensure() if not lazy else contextlib.nullcontext()
        with context:
            for batch in tqdm(_batches(inputs, batch_size), desc=desc, total=_n_batches(inputs, batch_size),
                              disable=not progress, leave=False):
                cache.add(bilrp, batch, pooling, tower=tower, lazy=lazy)
        if keys is not None:
            keys = [str(k) for k in keys]
            if len(keys) != len(cache):
                raise ValueError(f'FactorCache.build: {len(keys)} keys for {len(cache)} inputs')
            cache.keys = keys
        if lazy:
            cache.attach(inputs)
        return cache

    def _input(self, position: int) -> torch.Tensor:
        item = self.inputs[position]
        item = item[0] if isinstance(item, (tuple, list)) else item
        return torch.as_tensor(item)

    def factors_of(self, bilrp: BiLRP, indices: Optional[Sequence] = None, tower: str = 'b', batch_size: int = 8,
                   progress: bool = False) -> Factors:
        """Factors of the cached inputs ``indices`` (positions or keys; default all), computing the missing ones
        from the attached inputs (one factor computation each, memoised).

        Returns
        -------
        Factors
            In the order of ``indices``.
        """
        positions = self._positions(indices)
        missing = sorted({p for p in positions if p not in self._rows})
        if missing:
            if self.inputs is None:
                raise ValueError(f'{len(missing)} of the requested cached inputs have no factors yet and the cache '
                                 'has no inputs to compute them from: cache.attach(gallery_inputs) first')
            chunks = [missing[i:i + batch_size] for i in range(0, len(missing), batch_size)]
            with bilrp.registration.ensure():
                for chunk in tqdm(chunks, desc='gallery factors', disable=not progress, leave=False):
                    x = torch.stack([self._input(p) for p in chunk])
                    self._store(chunk, bilrp.factors(x, self.pooling, tower=tower, units=self.units))
        return self._gather(positions)

    def similarities(self, bilrp: BiLRP, x: torch.Tensor, tower: str = 'a') -> torch.Tensor:
        """Similarity of each query ``x`` to every cached input, ``(Q, N)`` (one forward pass, no relevance)."""
        emb = bilrp.embed(x, tower)
        gallery = self._embedding().to(emb)
        n = gallery.shape[0]
        a = emb.repeat_interleave(n, dim=0)
        b = gallery.repeat(emb.shape[0], 1)
        return bilrp.similarity(a, b).reshape(emb.shape[0], n)

    def _embedding(self) -> torch.Tensor:
        if self.embedding is None:
            raise ValueError('the cache is empty')
        return self.embedding

    def _query_pooling(self, pooling) -> Pooling:
        if self.grid is None:
            return Pooling.ensure(pooling, same=self.pooling)
        return Pooling.ensure(pooling, same=Pooling(patch=self.grid.patch, sum_channels=self.grid.channels_summed))

    def query(self, bilrp: BiLRP, x: torch.Tensor, k: int = 5, pooling: Union[None, int, Pooling, str] = SAME,
              indices: Optional[Sequence] = None, tower: str = 'a', tower_gallery: str = 'b',
              marginals: bool = False, progress: bool = False) -> Retrieval:
        r"""Rank the gallery by similarity to each query and explain only the top ``k`` matches.

        The ranking uses the embeddings alone (one forward pass of ``x``); then one factor computation gives the
        query's factors and the matches' factors are computed if not cached yet. The pooled relevance of a match is
        :math:`c\,F(x)^\top G\,F(x')`, the same as :meth:`BiLRP.explain` of the pair.

        Parameters
        ----------
        bilrp : BiLRP
            The engine (same model, similarity and composite as the cached gallery).
        x : torch.Tensor
            Queries ``(Q, ...)``.
        k : int
            Matches per query (clamped to the number of candidates).
        pooling : int or Pooling or 'same'
            Pooling of the queries' relevance (default: as the gallery).
        indices : sequence, optional
            Candidate gallery inputs (positions or keys; default all).
        tower, tower_gallery : {'a', 'b'}
            Towers of the queries and of the gallery.
        marginals : bool
            Also compute the exact input-resolution marginals of each explained pair (one LRP pass per side).
        progress : bool
            Progress bar over the gallery factors computed.

        Returns
        -------
        Retrieval
        """
        if int(k) < 1:
            raise ValueError(f'k must be positive, got {k}')
        candidates = self._positions(indices)
        k = min(int(k), len(candidates))
        emb_q = bilrp.embed(x, tower)
        gallery = self._embedding()[candidates].to(emb_q)
        n = len(candidates)
        scores = bilrp.similarity(emb_q.repeat_interleave(n, dim=0), gallery.repeat(emb_q.shape[0], 1))
        top = scores.reshape(emb_q.shape[0], n).topk(k, dim=1)
        chosen = torch.as_tensor(candidates, dtype=torch.long)[top.indices.cpu()]
        self.factors_of(bilrp, sorted(set(chosen.reshape(-1).tolist())), tower=tower_gallery, progress=progress)
        fq = bilrp.factors(x, self._query_pooling(pooling), tower=tower, units=self.units).to('cpu')
        results = []
        for q in range(x.shape[0]):
            fa, fb = fq[torch.full((k,), q, dtype=torch.long)], self._gather(chosen[q].tolist())
            relevance = pairwise_relevance(fa, fb, bilrp.similarity)
            similarity = bilrp.similarity(fa.embedding, fb.embedding)
            marg_a, marg_b = (self._marginals(bilrp, x[q], chosen[q].tolist(), fa, fb, tower, tower_gallery)
                              if marginals else (None, None))
            results.append(BiLRPResult(relevance, similarity, fa, fb, marg_a, marg_b))
        keys = [[self.keys[p] for p in row] for row in chosen.tolist()]
        return Retrieval(chosen, keys, top.values.detach().cpu(), results)

    def _marginals(self, bilrp: BiLRP, x_q: torch.Tensor, positions: list[int], fa: Factors, fb: Factors,
                   tower: str, tower_gallery: str) -> tuple:
        """Exact marginals of the pairs ``(x_q, gallery[p])``: the query's for all ``k`` partners in one pass with
        ``k`` seeds, the matches' in one pass of their batch."""
        if self.inputs is None:
            raise ValueError('marginals=True needs the gallery inputs: cache.attach(gallery_inputs) first')
        if self.units is not None:
            raise ValueError('marginals need the factors of all embedding units (the cache explains a subset)')
        mult_a, mult_b = bilrp.similarity.partner_multipliers(fa.totals, fb.totals, fa.embedding, fb.embedding)
        keep = Pooling(sum_channels=False)
        x_g = torch.stack([self._input(p) for p in positions])
        _, rel_a = bilrp.propagate(x_q[None], mult_a[:, None, :].to(x_q), pooling=keep, tower=tower)
        _, rel_b = bilrp.propagate(x_g, mult_b[None].to(x_g), pooling=keep, tower=tower_gallery)
        return rel_a[:, 0].detach().cpu(), rel_b[0].detach().cpu()

    def query_dense(self, bilrp: BiLRP, x: torch.Tensor, pooling: Union[None, int, Pooling, str] = SAME,
                    indices: Optional[Sequence] = None, tower: str = 'a', tower_gallery: str = 'b') -> tuple:
        """BiLRP of each query ``x[q]`` against every cached input (all, or ``indices``/keys), as dense arrays.

        Costs one factor computation per query plus one per gallery input without factors; the pairings are
        matrix products. For retrieval, :meth:`query` explains only the top matches.

        Returns
        -------
        tuple of torch.Tensor
            ``relevance (Q, N, P_q, P)`` and ``similarity (Q, N)``.
        """
        gallery = self.factors_of(bilrp, indices, tower=tower_gallery)
        fq = bilrp.factors(x, self._query_pooling(pooling), tower=tower, units=gallery.units).to('cpu')
        return self.pair_factors(bilrp, fq, gallery)

    @staticmethod
    def pair_factors(bilrp: BiLRP, fa: Factors, fb: Factors):
        """Every pairing of two factor sets: ``relevance (N_a, N_b, P_a, P_b)``, ``similarity (N_a, N_b)``."""
        relevance = pairwise_relevance(fa, fb, bilrp.similarity, all_pairs=True)
        n_a, n_b = len(fa), len(fb)
        sim = bilrp.similarity(fa.embedding.repeat_interleave(n_b, dim=0), fb.embedding.repeat(n_a, 1))
        return relevance, sim.reshape(n_a, n_b)

    def pair(self, bilrp: BiLRP, i, j) -> torch.Tensor:
        """BiLRP between two cached inputs (positions or keys), ``(P, P)``, without any backward pass once both
        have factors (missing ones are computed from the attached inputs)."""
        fa, fb = self.factors_of(bilrp, [i]), self.factors_of(bilrp, [j])
        return pairwise_relevance(fa, fb, bilrp.similarity)[0]

    def _arrays(self) -> dict:
        if self.embedding is None:
            raise ValueError('cannot save an empty cache')
        positions = sorted(self._rows)
        arrays = {
            'embedding': self.embedding.detach().cpu().numpy(),
            'factor_positions': np.asarray(positions, dtype=np.int64),
            'pooling': np.asarray(json.dumps({'patch': self.pooling.patch, 'grid': self.pooling.grid,
                                              'sum_channels': self.pooling.sum_channels})),
        }
        if positions:
            factors = self._gather(positions)
            grid, units = self.grid, self.units
            arrays.update({
                'factor_embedding': factors.embedding.detach().cpu().numpy(),
                'relevance': factors.relevance.detach().cpu().numpy(),
                'units': np.asarray([] if units is None else units.cpu().numpy(), dtype=np.int64),
                'has_units': np.asarray(units is not None),
                'input_shape': np.asarray(grid.input_shape, dtype=np.int64),
                'grid': np.asarray(grid.grid, dtype=np.int64),
                'patch': np.asarray(grid.patch, dtype=np.int64),
                'channels_summed': np.asarray(grid.channels_summed),
            })
        return arrays

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the embeddings and the computed factors to ``path`` (``.npz``, or ``.safetensors`` with the
        ``safetensors`` package); the inputs are not saved (give them again to :meth:`load` for lazy factors)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = self._arrays()
        if path.suffix == '.safetensors':
            try:
                from safetensors.numpy import save_file
            except ImportError:
                raise ImportError('saving .safetensors needs `pip install safetensors`; use a .npz path') from None
            pooling = str(arrays.pop('pooling'))
            tensors = {k: np.ascontiguousarray(np.asarray(v).astype(np.int64) if v.dtype == bool else v)
                       for k, v in arrays.items()}
            save_file(tensors, str(path), metadata={'keys': '\n'.join(self.keys), 'pooling': pooling})
        else:
            np.savez(path, keys=np.asarray(self.keys, dtype=str), **arrays)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike], inputs=None) -> FactorCache:
        """Read a cache written by :meth:`save`; ``inputs`` (the gallery) allow computing missing factors."""
        path = Path(path)
        if path.suffix == '.safetensors':
            try:
                from safetensors import safe_open
                from safetensors.numpy import load_file
            except ImportError:
                raise ImportError('loading .safetensors needs `pip install safetensors`') from None
            data = load_file(str(path))
            with safe_open(str(path), framework='numpy') as handle:
                meta = handle.metadata()
            keys = meta.get('keys', '').split('\n')
            data['pooling'] = meta.get('pooling', 'null')
        else:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
            keys = [str(k) for k in data.get('keys', [])]
        if 'factor_positions' not in data and {'relevance', 'grid', 'patch'} <= set(data):  # written before 0.2
            data['factor_embedding'] = data['embedding']
            data['factor_positions'] = np.arange(len(data['embedding']))
            data['pooling'] = json.dumps({'patch': [int(v) for v in data['patch']], 'grid': None,
                                          'sum_channels': bool(data['channels_summed'])})
        missing = {'embedding', 'factor_positions', 'pooling'} - set(data)
        if missing:
            raise ValueError(f'{path} is not a FactorCache file (missing {sorted(missing)})')
        pool = json.loads(str(data['pooling']))
        patch, grid = (tuple(v) if isinstance(v, list) else v for v in (pool['patch'], pool['grid']))
        cache = cls(embedding=torch.from_numpy(np.array(data['embedding'])), keys=keys,
                    pooling=Pooling(patch=patch, grid=grid, sum_channels=pool['sum_channels']))
        positions = [int(p) for p in data['factor_positions']]
        if positions:
            grid = PatchGrid(tuple(int(v) for v in data['input_shape']), tuple(int(v) for v in data['grid']),
                             tuple(int(v) for v in data['patch']), bool(data['channels_summed']))
            units = torch.from_numpy(np.array(data['units'])) if bool(data['has_units']) else None
            cache._store(positions, Factors(torch.from_numpy(np.array(data['factor_embedding'])),
                                            torch.from_numpy(np.array(data['relevance'])), grid, units))
        if inputs is not None:
            cache.attach(inputs)
        return cache


@dataclass
class PairResults:
    """Stacked results of :func:`explain_loader` (numpy arrays, one row per pair) with the patch grids.

    Attributes
    ----------
    relevance : numpy.ndarray
        Pooled pairwise relevance ``(B, P_a, P_b)``.
    similarity, delta : numpy.ndarray
        Similarity ``y`` and conservation gap ``y - sum R`` per pair, ``(B,)``.
    grid_a, grid_b : PatchGrid, optional
        Patch grids of both sides (:meth:`relevance_grid` reshapes the relevance with them).
    marginal_a, marginal_b : numpy.ndarray, optional
        Exact input-resolution marginals, shaped like the inputs (when computed).
    """
    relevance: np.ndarray
    similarity: np.ndarray
    delta: np.ndarray
    grid_a: Optional[PatchGrid] = None
    grid_b: Optional[PatchGrid] = None
    marginal_a: Optional[np.ndarray] = None
    marginal_b: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.relevance.shape[0]

    def relevance_grid(self) -> np.ndarray:
        """The relevance as ``(B, *grid_a, *grid_b)``."""
        if self.grid_a is None or self.grid_b is None:
            raise ValueError('these results have no patch grids (saved by an older version)')
        return self.relevance.reshape(len(self), *self.grid_a.grid, *self.grid_b.grid)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the arrays and the grids (as JSON text) to an NPZ file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        grids = {side: None if grid is None else {'input_shape': list(grid.input_shape), 'grid': list(grid.grid),
                                                  'patch': list(grid.patch), 'channels_summed': grid.channels_summed}
                 for side, grid in (('a', self.grid_a), ('b', self.grid_b))}
        marginals = {f'marginal_{side}': value for side, value in (('a', self.marginal_a), ('b', self.marginal_b))
                     if value is not None}
        np.savez(path, relevance=self.relevance, similarity=self.similarity, delta=self.delta,
                 grids=np.asarray(json.dumps(grids)), **marginals)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> PairResults:
        """Read arrays written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
        missing = {'relevance', 'similarity', 'delta'} - set(data)
        if missing:
            raise ValueError(f'{path} is not a PairResults file (missing {sorted(missing)})')
        grids = json.loads(str(data['grids'])) if 'grids' in data else {'a': None, 'b': None}
        grid_a, grid_b = (None if g is None else PatchGrid(tuple(g['input_shape']), tuple(g['grid']),
                                                            tuple(g['patch']), bool(g['channels_summed']))
                          for g in (grids['a'], grids['b']))
        return cls(data['relevance'], data['similarity'], data['delta'], grid_a, grid_b, data.get('marginal_a'),
                   data.get('marginal_b'))


def explain_loader(bilrp: BiLRP, loader: Iterable, pooling: Union[None, int, Pooling] = None,
                   out: Union[None, str, os.PathLike] = None, progress: bool = True,
                   marginals: bool = False) -> PairResults:
    """Explain every pair of an iterable of ``(x_a, x_b, ...)`` batches (e.g. a ``DataLoader`` of pairs).

    Builds on :meth:`BiLRP.explain_pairs` (composite registered once for the whole loop), shows a progress bar,
    stacks the pooled relevance, similarity, conservation gap (and with ``marginals`` the exact input-resolution
    marginals), keeps the patch grids, and writes all to ``out`` (NPZ) if given.
    """
    keep = {'relevance': [], 'similarity': [], 'delta': [], 'marginal_a': [], 'marginal_b': []}
    grids = None
    total = len(loader) if hasattr(loader, '__len__') else None
    iterable = loader if bilrp.progress or not progress else tqdm(loader, desc='pairs', total=total, leave=False)
    for result in bilrp.explain_pairs(iterable, pooling=pooling, marginals=marginals, total=total):
        if grids is None:
            grids = (result.grid_a, result.grid_b)
        elif (result.grid_a, result.grid_b) != grids:
            raise ValueError('explain_loader: batches of different input sizes give different patch grids; '
                             'explain them separately')
        for name in keep:
            value = getattr(result, name)
            if value is not None:
                keep[name].append(value.detach().cpu().numpy())
    if not keep['relevance']:
        raise ValueError('explain_loader: the loader yielded no pairs')
    stacked = {name: np.concatenate(values) if values else None for name, values in keep.items()}
    results = PairResults(stacked['relevance'], stacked['similarity'], stacked['delta'], *grids,
                          stacked['marginal_a'], stacked['marginal_b'])
    if out is not None:
        results.save(out)
    return results
