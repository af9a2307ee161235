r"""Many pairs: a cache of per-input BiLRP factors, and explaining a DataLoader of pairs.

BiLRP of a pair is a product of per-input factors, :math:`R(x, x') = c\,F(x)^\top G\,F(x')` with
:math:`F(x) \in \mathbb{R}^{h \times P}` the pooled explanations of the ``h`` embedding units
(:meth:`BiLRP.factors <zennit_bilrp.core.engine.BiLRP.factors>`). :class:`FactorCache` keeps :math:`F` of a gallery,
so one query against ``N`` gallery inputs costs ``N + 1`` factor computations (the gallery's once, then one per
query) instead of ``2N``, and every pairing is a matrix product (:func:`~zennit_bilrp.core.results.pairwise_relevance`).
Memory is ``N * h * P`` numbers. Caches are saved to and loaded from NPZ files (or ``.safetensors`` when the
``safetensors`` package is installed).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.engine import BiLRP
from ..core.pooling import SAME, PatchGrid, Pooling
from ..core.results import Factors, pairwise_relevance

__all__ = ['FactorCache', 'PairResults', 'explain_loader']


def _batches(inputs, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        for start in range(0, inputs.shape[0], batch_size):
            yield inputs[start:start + batch_size]
        return
    for batch in inputs:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


class FactorCache:
    """Per-input BiLRP factors of a gallery, for fast retrieval explanations.

    Parameters
    ----------
    factors : Factors, optional
        Initial factors (e.g. from :meth:`BiLRP.factors`).
    keys : sequence of str, optional
        One key per cached input (default ``'0', '1', ...``).

    Examples
    --------
    >>> cache = FactorCache.build(bilrp, gallery, pooling=8)          # N factor computations
    >>> relevance, scores = cache.query(bilrp, query)                  # 1 more; (1, N, P, P) and (1, N)
    >>> cache.save('gallery.npz'); cache = FactorCache.load('gallery.npz')
    """

    def __init__(self, factors: Optional[Factors] = None, keys: Optional[Sequence[str]] = None):
        self.factors = factors
        n = 0 if factors is None else len(factors)
        keys = [str(i) for i in range(n)] if keys is None else [str(k) for k in keys]
        if len(keys) != n:
            raise ValueError(f'FactorCache: {len(keys)} keys for {n} cached inputs')
        self.keys = keys

    def __len__(self) -> int:
        return 0 if self.factors is None else len(self.factors)

    def __repr__(self) -> str:
        if self.factors is None:
            return 'FactorCache(empty)'
        n, k, p = self.factors.relevance.shape
        return f'FactorCache(n={n}, units={k}, patches={p}, grid={self.factors.grid.grid})'

    @property
    def grid(self) -> Optional[PatchGrid]:
        """Patch grid of the cached factors."""
        return None if self.factors is None else self.factors.grid

    def index(self, key: str) -> int:
        """Position of ``key`` in the cache."""
        try:
            return self.keys.index(str(key))
        except ValueError:
            raise KeyError(f'key {key!r} is not in the cache') from None

    def add(self, bilrp: BiLRP, x: torch.Tensor, pooling: Union[None, int, Pooling] = None,
            keys: Optional[Sequence[str]] = None, tower: str = 'b', units: Optional[torch.Tensor] = None) -> None:
        """Compute and append the factors of the inputs ``x`` (one factor computation per input)."""
        start = len(self)
        factors = bilrp.factors(x, pooling, tower=tower, units=units).to('cpu')
        keys = [str(start + i) for i in range(len(factors))] if keys is None else [str(k) for k in keys]
        if len(keys) != len(factors):
            raise ValueError(f'FactorCache.add: {len(keys)} keys for {len(factors)} inputs')
        duplicates = set(keys) & set(self.keys)
        if duplicates:
            raise ValueError(f'FactorCache.add: keys already cached: {sorted(duplicates)[:5]}')
        self.factors = factors if self.factors is None else Factors.cat([self.factors, factors])
        self.keys.extend(keys)

    @classmethod
    def build(cls, bilrp: BiLRP, inputs, pooling: Union[None, int, Pooling] = None, batch_size: int = 8,
              keys: Optional[Sequence[str]] = None, tower: str = 'b', progress: bool = True) -> FactorCache:
        """Cache the factors of a gallery: a tensor ``(N, ...)`` (split in ``batch_size`` batches) or an iterable of
        batches (e.g. a ``DataLoader``; of a tuple batch the first entry is used), with a progress bar."""
        cache = cls()
        total = None
        if isinstance(inputs, torch.Tensor):
            total = -(-inputs.shape[0] // batch_size)
        elif hasattr(inputs, '__len__'):
            total = len(inputs)
        with bilrp.registration.ensure():
            for batch in tqdm(_batches(inputs, batch_size), desc='caching factors', total=total, disable=not progress):
                cache.add(bilrp, batch, pooling, tower=tower)
        if keys is not None:
            keys = [str(k) for k in keys]
            if len(keys) != len(cache):
                raise ValueError(f'FactorCache.build: {len(keys)} keys for {len(cache)} inputs')
            cache.keys = keys
        return cache

    def _subset(self, indices) -> Factors:
        if self.factors is None:
            raise ValueError('the cache is empty')
        if indices is None:
            return self.factors
        indices = torch.as_tensor([self.index(i) if isinstance(i, str) else int(i) for i in indices], dtype=torch.long)
        return self.factors[indices]

    def similarities(self, bilrp: BiLRP, x: torch.Tensor, tower: str = 'a') -> torch.Tensor:
        """Similarity of each query ``x`` to every cached input, ``(Q, N)`` (one forward pass, no relevance)."""
        emb = bilrp.embed(x, tower)
        gallery = self._subset(None).embedding.to(emb)
        n = gallery.shape[0]
        a = emb.repeat_interleave(n, dim=0)
        b = gallery.repeat(emb.shape[0], 1)
        return bilrp.similarity(a, b).reshape(emb.shape[0], n)

    def query(self, bilrp: BiLRP, x: torch.Tensor, pooling: Union[None, int, Pooling, str] = SAME,
              indices: Optional[Sequence] = None, tower: str = 'a'):
        """BiLRP of each query ``x[q]`` against cached inputs (all, or ``indices``/keys).

        Costs one factor computation per query; the pairings are matrix products.

        Returns
        -------
        tuple of torch.Tensor
            ``relevance (Q, N, P_q, P)`` and ``similarity (Q, N)``.
        """
        gallery = self._subset(indices)
        pooling = Pooling.ensure(pooling, same=Pooling(patch=gallery.grid.patch,
                                                      sum_channels=gallery.grid.channels_summed))
        fq = bilrp.factors(x, pooling, tower=tower, units=gallery.units).to('cpu')
        return self.pair_factors(bilrp, fq, gallery)

    @staticmethod
    def pair_factors(bilrp: BiLRP, fa: Factors, fb: Factors):
        """Every pairing of two factor sets: ``relevance (N_a, N_b, P_a, P_b)``, ``similarity (N_a, N_b)``."""
        relevance = pairwise_relevance(fa, fb, bilrp.similarity, all_pairs=True)
        n_a, n_b = len(fa), len(fb)
        sim = bilrp.similarity(fa.embedding.repeat_interleave(n_b, dim=0), fb.embedding.repeat(n_a, 1))
        return relevance, sim.reshape(n_a, n_b)

    def pair(self, bilrp: BiLRP, i, j) -> torch.Tensor:
        """BiLRP between two cached inputs (positions or keys), ``(P, P)``, without any backward pass."""
        fa, fb = self._subset([i]), self._subset([j])
        return pairwise_relevance(fa, fb, bilrp.similarity)[0]

    def _arrays(self) -> dict:
        if self.factors is None:
            raise ValueError('cannot save an empty cache')
        grid = self.factors.grid
        units = self.factors.units
        return {
            'embedding': self.factors.embedding.detach().cpu().numpy(),
            'relevance': self.factors.relevance.detach().cpu().numpy(),
            'units': np.asarray([] if units is None else units.cpu().numpy(), dtype=np.int64),
            'has_units': np.asarray(units is not None),
            'input_shape': np.asarray(grid.input_shape, dtype=np.int64),
            'grid': np.asarray(grid.grid, dtype=np.int64),
            'patch': np.asarray(grid.patch, dtype=np.int64),
            'channels_summed': np.asarray(grid.channels_summed),
        }

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the cache to ``path`` (``.npz``, or ``.safetensors`` with the ``safetensors`` package)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = self._arrays()
        if path.suffix == '.safetensors':
            try:
                from safetensors.numpy import save_file
            except ImportError:
                raise ImportError('saving .safetensors needs `pip install safetensors`; use a .npz path') from None
            tensors = {k: np.ascontiguousarray(np.asarray(v).astype(np.int64) if v.dtype == bool else v)
                       for k, v in arrays.items()}
            save_file(tensors, str(path), metadata={'keys': '\n'.join(self.keys)})
        else:
            np.savez(path, keys=np.asarray(self.keys, dtype=str), **arrays)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> FactorCache:
        """Read a cache written by :meth:`save`."""
        path = Path(path)
        if path.suffix == '.safetensors':
            try:
                from safetensors import safe_open
                from safetensors.numpy import load_file
            except ImportError:
                raise ImportError('loading .safetensors needs `pip install safetensors`') from None
            data = load_file(str(path))
            with safe_open(str(path), framework='numpy') as handle:
                keys = handle.metadata().get('keys', '').split('\n')
        else:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
            keys = [str(k) for k in data.get('keys', [])]
        missing = {'embedding', 'relevance', 'units', 'has_units', 'input_shape', 'grid', 'patch',
                   'channels_summed'} - set(data)
        if missing:
            raise ValueError(f'{path} is not a FactorCache file (missing {sorted(missing)})')
        grid = PatchGrid(tuple(int(v) for v in data['input_shape']), tuple(int(v) for v in data['grid']),
                         tuple(int(v) for v in data['patch']), bool(data['channels_summed']))
        units = torch.from_numpy(data['units']) if bool(data['has_units']) else None
        factors = Factors(torch.from_numpy(data['embedding']), torch.from_numpy(data['relevance']), grid, units)
        return cls(factors, keys)


@dataclass
class PairResults:
    """Stacked results of :func:`explain_loader` (numpy arrays, one row per pair)."""
    relevance: np.ndarray
    similarity: np.ndarray
    delta: np.ndarray

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the arrays to an NPZ file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, relevance=self.relevance, similarity=self.similarity, delta=self.delta)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> PairResults:
        """Read arrays written by :meth:`save`."""
        with np.load(path) as npz:
            return cls(npz['relevance'], npz['similarity'], npz['delta'])


def explain_loader(bilrp: BiLRP, loader: Iterable, pooling: Union[None, int, Pooling] = None,
                   out: Union[None, str, os.PathLike] = None, progress: bool = True) -> PairResults:
    """Explain every pair of an iterable of ``(x_a, x_b, ...)`` batches (e.g. a ``DataLoader`` of pairs).

    Builds on :meth:`BiLRP.explain_pairs` (composite registered once for the whole loop), shows a progress bar,
    stacks the pooled relevance, similarity and conservation gap, and writes them to ``out`` (NPZ) if given.
    """
    relevance, similarity, delta = [], [], []
    total = len(loader) if hasattr(loader, '__len__') else None
    iterable = loader if bilrp.progress or not progress else tqdm(loader, desc='pairs', total=total)
    for result in bilrp.explain_pairs(iterable, pooling=pooling, marginals=False, total=total):
        relevance.append(result.relevance.detach().cpu().numpy())
        similarity.append(result.similarity.detach().cpu().numpy())
        delta.append(result.delta.detach().cpu().numpy())
    if not relevance:
        raise ValueError('explain_loader: the loader yielded no pairs')
    results = PairResults(np.concatenate(relevance), np.concatenate(similarity), np.concatenate(delta))
    if out is not None:
        results.save(out)
    return results
