r"""Results of BiLRP: per-input factors, pairwise relevance and its conservation check.

The pooled explanations of one input are its *factors* :math:`F(x) \in \mathbb{R}^{h \times P}` (row :math:`m`:
the LRP explanation of embedding unit :math:`m`, started from its value :math:`\phi_m(x)`, pooled to :math:`P`
patches). Any pairing is then :math:`R = c\,F(x)^\top G\,F(x')` (:func:`pairwise_relevance`), and the
conservation gap is :math:`y - \sum R`.

Results are kept in one NPZ file (:meth:`BiLRPResult.save` / :meth:`BiLRPResult.load`, likewise
:meth:`Factors.save` / :meth:`Factors.load`): every tensor as an array, the patch grids and the metadata (model,
composite, similarity, pooling, package versions; :func:`describe_run`) as JSON text in the same file. Nothing is
pickled; files are read with ``np.load(..., allow_pickle=False)``.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .pooling import PatchGrid
from .similarity import Similarity, get_similarity

__all__ = [
    'Factors', 'TopPairs', 'PairRelevance', 'BiLRPResult', 'pairwise_relevance', 'unit_multipliers',
    'ConservationWarning', 'AMPLIFICATION_LIMIT', 'amplification', 'warn_if_amplified', 'describe_run',
    'package_versions', 'RESULT_FORMAT_VERSION',
]

#: version of the NPZ layout written by :meth:`BiLRPResult.save` and :meth:`Factors.save`
RESULT_FORMAT_VERSION = 1
_META_KEY = '__metadata__'


def package_versions() -> dict:
    """Versions of the packages that determine the numbers: zennit-bilrp, zennit, torch and numpy."""
    import zennit

    from ..version import __version__

    return {'zennit_bilrp': __version__, 'zennit': getattr(zennit, '__version__', 'unknown'),
            'torch': torch.__version__, 'numpy': np.__version__}


def _name(obj) -> Optional[str]:
    return None if obj is None else type(obj).__name__


def describe_run(bilrp=None, **fields: Any) -> dict:
    """Metadata of a run for :meth:`BiLRPResult.save`: model and composite class names, similarity, head,
    strictness (read from ``bilrp``, a :class:`~zennit_bilrp.core.engine.BiLRP`), package versions, and ``fields``
    (e.g. ``model_name='resnet18'``; JSON-serialisable values) on top.

    Returns
    -------
    dict
        JSON-serialisable metadata.
    """
    meta: dict = {}
    if bilrp is not None:
        meta.update(model=_name(bilrp.model), composite=_name(bilrp.composite), similarity=repr(bilrp.similarity),
                    head=repr(bilrp.head), strict=bool(getattr(bilrp, 'strict', True)))
        if getattr(bilrp, 'model_b', None) is not None:
            meta.update(model_b=_name(bilrp.model_b), composite_b=_name(bilrp.composite_b))
    meta['versions'] = package_versions()
    meta.update(fields)
    return meta


def _grid_json(grid: PatchGrid) -> dict:
    return {'input_shape': [int(v) for v in grid.input_shape], 'grid': [int(v) for v in grid.grid],
            'patch': [int(v) for v in grid.patch], 'channels_summed': bool(grid.channels_summed)}


def _grid_from_json(data: dict) -> PatchGrid:
    return PatchGrid(tuple(data['input_shape']), tuple(data['grid']), tuple(data['patch']),
                     bool(data['channels_summed']))


def _to_numpy(tensor: torch.Tensor, name: str, dtypes: dict) -> np.ndarray:
    """A tensor as a numpy array; dtypes numpy lacks (bfloat16) are stored as float32 and recorded in ``dtypes``."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        dtypes[name] = 'bfloat16'
        tensor = tensor.float()
    return tensor.numpy()


def _from_numpy(array: np.ndarray, name: str, dtypes: dict, device) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array))
    if dtypes.get(name) == 'bfloat16':
        tensor = tensor.to(torch.bfloat16)
    return tensor if device is None else tensor.to(device)


def _json_ready(value, key: str):
    try:
        json.dumps(value)
    except TypeError:
        raise TypeError(f'cannot save {key!r}: a {type(value).__name__} is neither a tensor nor JSON-serialisable'
                        ) from None
    return value


def _write_npz(path: Union[str, os.PathLike], arrays: dict, meta: dict) -> Path:
    path = Path(path)
    if path.suffix != '.npz':
        raise ValueError(f'results are saved as .npz files, got {str(path)!r}')
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{_META_KEY: np.asarray(json.dumps(meta))}, **arrays)
    return path


def _read_npz(path: Union[str, os.PathLike], kind: str) -> tuple:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no such result file: {str(path)!r}')
    with np.load(path, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    if _META_KEY not in data:
        raise ValueError(f'{str(path)!r} is not a zennit_bilrp result file (no metadata)')
    meta = json.loads(str(data.pop(_META_KEY)))
    if meta.get('format') != kind:
        raise ValueError(f'{str(path)!r} holds a {meta.get("format")!r}, not a {kind}')
    if int(meta.get('format_version', 0)) > RESULT_FORMAT_VERSION:
        raise ValueError(f'{str(path)!r} was written in format version {meta["format_version"]}; this zennit_bilrp '
                         f'reads up to {RESULT_FORMAT_VERSION}')
    return data, meta

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
    metadata : dict
        JSON-serialisable description of the run (see :func:`describe_run`), kept by :meth:`save`.
    """
    embedding: torch.Tensor
    relevance: torch.Tensor
    grid: PatchGrid
    units: Optional[torch.Tensor] = None
    metadata: dict = field(default_factory=dict)

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
        return Factors(self.embedding[index], self.relevance[index], self.grid, self.units, dict(self.metadata))

    def to(self, *args, **kwargs) -> Factors:
        """Move/cast embedding and relevance like :meth:`torch.Tensor.to` (unit indices only move)."""
        units = None
        if self.units is not None:
            device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get('device'))
            units = self.units if device is None else self.units.to(device)
        return Factors(self.embedding.to(*args, **kwargs), self.relevance.to(*args, **kwargs), self.grid, units,
                       dict(self.metadata))

    def cpu(self) -> Factors:
        """The factors on the CPU."""
        return self.to('cpu')

    def _arrays(self, prefix: str, dtypes: dict) -> tuple:
        arrays = {f'{prefix}embedding': _to_numpy(self.embedding, f'{prefix}embedding', dtypes),
                  f'{prefix}relevance': _to_numpy(self.relevance, f'{prefix}relevance', dtypes)}
        if self.units is not None:
            arrays[f'{prefix}units'] = self.units.detach().cpu().numpy().astype(np.int64)
        return arrays, _grid_json(self.grid)

    @classmethod
    def _from_arrays(cls, data: dict, prefix: str, grid: dict, dtypes: dict, device) -> Factors:
        for name in ('embedding', 'relevance'):
            if f'{prefix}{name}' not in data:
                raise ValueError(f'the result file has no {prefix}{name} array')
        units = data.get(f'{prefix}units')
        return cls(_from_numpy(data[f'{prefix}embedding'], f'{prefix}embedding', dtypes, device),
                   _from_numpy(data[f'{prefix}relevance'], f'{prefix}relevance', dtypes, device),
                   _grid_from_json(grid), None if units is None else _from_numpy(units, 'units', {}, device))

    def save(self, path: Union[str, os.PathLike], metadata: Optional[dict] = None) -> Path:
        """Write the factors (embedding, relevance, units, grid) and metadata to one ``.npz`` file.

        Parameters
        ----------
        path : str or os.PathLike
            File name ending in ``.npz``; missing folders are created.
        metadata : dict, optional
            Added to :attr:`metadata` (e.g. :func:`describe_run`); package versions are always recorded.

        Returns
        -------
        pathlib.Path
            The path written.
        """
        dtypes: dict = {}
        arrays, grid = self._arrays('', dtypes)
        meta = {'format': 'Factors', 'format_version': RESULT_FORMAT_VERSION, 'grid': grid, 'dtypes': dtypes,
                'metadata': {'versions': package_versions(), **self.metadata, **(metadata or {})}}
        return _write_npz(path, arrays, _json_ready(meta, 'metadata'))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device: Union[None, str, torch.device] = None) -> Factors:
        """Read factors written by :meth:`save` (onto ``device``, default the CPU)."""
        data, meta = _read_npz(path, 'Factors')
        factors = cls._from_arrays(data, '', meta['grid'], meta.get('dtypes', {}), device)
        factors.metadata = meta.get('metadata', {})
        return factors

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
        Patch centers in input coordinates (row, col, ...), shape ``(B, k, n_spatial)``.
    """
    index_a: torch.Tensor
    index_b: torch.Tensor
    values: torch.Tensor
    centers_a: torch.Tensor
    centers_b: torch.Tensor


@dataclass
class PairRelevance:
    """Pooled pairwise relevance of ``B`` pairs and the similarity it explains (exact or estimated).

    Attributes
    ----------
    relevance : torch.Tensor
        Pooled pairwise relevance, ``(B, P_a, P_b)``.
    similarity : torch.Tensor
        The explained similarity ``y`` of each pair, ``(B,)``.
    """
    relevance: torch.Tensor
    similarity: torch.Tensor

    @property
    def delta(self) -> torch.Tensor:
        """Conservation gap ``y - sum R`` per pair, ``(B,)``."""
        return self.similarity - self.relevance.sum(dim=(1, 2))

    @property
    def amplification(self) -> torch.Tensor:
        """``|sum R| / |y|`` per pair, ``(B,)`` (see :func:`amplification`)."""
        return amplification(self.relevance.sum(dim=(1, 2)), self.similarity)


@dataclass
class BiLRPResult(PairRelevance):
    """Result of :meth:`BiLRP.explain` for a batch of ``B`` pairs.

    Attributes
    ----------
    relevance, similarity : torch.Tensor
        As in :class:`PairRelevance`: pooled pairwise relevance ``(B, P_a, P_b)``, similarity ``(B,)``.
    factors_a, factors_b : Factors
        The factors of both sides, from which any other pairing can be formed (:func:`pairwise_relevance`).
    marginal_a, marginal_b : torch.Tensor or None
        First-order marginals at input resolution, shaped like the inputs: ``marginal_a[i] = sum_i' R[i, i']``
        (computed exactly with one extra LRP pass, not from the pooled matrix).
    extras : dict
        Further outputs of the method that made the result (tensors or JSON-serialisable values).
    metadata : dict
        JSON-serialisable description of the run (:func:`describe_run`), kept by :meth:`save`.

    Examples
    --------
    >>> result.save('pair.npz', metadata=describe_run(bilrp, model_name='resnet18'))  # doctest: +SKIP
    >>> result = BiLRPResult.load('pair.npz')  # doctest: +SKIP
    """
    factors_a: Factors
    factors_b: Factors
    marginal_a: Optional[torch.Tensor] = None
    marginal_b: Optional[torch.Tensor] = None
    extras: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def to(self, *args, **kwargs) -> BiLRPResult:
        """A copy with every tensor moved/cast like :meth:`torch.Tensor.to` (unit indices only move)."""
        def move(value):
            return value.to(*args, **kwargs) if isinstance(value, torch.Tensor) else value

        return BiLRPResult(move(self.relevance), move(self.similarity), self.factors_a.to(*args, **kwargs),
                           self.factors_b.to(*args, **kwargs), move(self.marginal_a), move(self.marginal_b),
                           {k: move(v) for k, v in self.extras.items()}, dict(self.metadata))

    def cpu(self) -> BiLRPResult:
        """A copy with every tensor on the CPU."""
        return self.to('cpu')

    def __len__(self) -> int:
        return self.relevance.shape[0]

    def __getitem__(self, index) -> BiLRPResult:
        """The pairs ``index`` (an int keeps a batch of one), with their factors and marginals; ``extras`` and
        ``metadata`` are shared as they are."""
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f'pair {index} out of range for a result of {len(self)} pairs')
            index = slice(index % len(self), index % len(self) + 1)

        def pick(value):
            return None if value is None else value[index]

        return BiLRPResult(self.relevance[index], self.similarity[index], self.factors_a[index],
                           self.factors_b[index], pick(self.marginal_a), pick(self.marginal_b), dict(self.extras),
                           dict(self.metadata))

    def save(self, path: Union[str, os.PathLike], metadata: Optional[dict] = None) -> Path:
        """Write the result to one ``.npz`` file: relevance, similarity, both factors and their patch grids,
        the marginals (when computed), tensor extras, and metadata as JSON text.

        Parameters
        ----------
        path : str or os.PathLike
            File name ending in ``.npz``; missing folders are created.
        metadata : dict, optional
            Added to :attr:`metadata` (e.g. :func:`describe_run` of the engine); package versions and the pooling
            (patch sizes of both sides) are always recorded.

        Returns
        -------
        pathlib.Path
            The path written.
        """
        dtypes: dict = {}
        arrays = {'relevance': _to_numpy(self.relevance, 'relevance', dtypes),
                  'similarity': _to_numpy(self.similarity, 'similarity', dtypes)}
        grids = {}
        for side, factors in (('a', self.factors_a), ('b', self.factors_b)):
            side_arrays, grids[side] = factors._arrays(f'factors_{side}.', dtypes)
            arrays.update(side_arrays)
            marginal = getattr(self, f'marginal_{side}')
            if marginal is not None:
                arrays[f'marginal_{side}'] = _to_numpy(marginal, f'marginal_{side}', dtypes)
        extras = {}
        for key, value in self.extras.items():
            if isinstance(value, (torch.Tensor, np.ndarray)):
                value = torch.as_tensor(value)
                arrays[f'extras.{key}'] = _to_numpy(value, f'extras.{key}', dtypes)
            else:
                extras[key] = _json_ready(list(value) if isinstance(value, tuple) else value, f'extras[{key!r}]')
        pooling = {side: {'patch': grid['patch'], 'channels_summed': grid['channels_summed']}
                   for side, grid in grids.items()}
        meta = {'format': 'BiLRPResult', 'format_version': RESULT_FORMAT_VERSION, 'grids': grids, 'dtypes': dtypes,
                'extras': extras,
                'metadata': {'versions': package_versions(), 'pooling': pooling, **self.metadata,
                             **(metadata or {})}}
        return _write_npz(path, arrays, _json_ready(meta, 'metadata'))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device: Union[None, str, torch.device] = None) -> BiLRPResult:
        """Read a result written by :meth:`save` (onto ``device``, default the CPU)."""
        data, meta = _read_npz(path, 'BiLRPResult')
        dtypes = meta.get('dtypes', {})
        for name in ('relevance', 'similarity'):
            if name not in data:
                raise ValueError(f'{str(path)!r} has no {name} array')
        factors = [Factors._from_arrays(data, f'factors_{side}.', meta['grids'][side], dtypes, device)
                   for side in 'ab']
        marginals = [_from_numpy(data[f'marginal_{side}'], f'marginal_{side}', dtypes, device)
                     if f'marginal_{side}' in data else None for side in 'ab']
        extras = dict(meta.get('extras', {}))
        extras.update({key[len('extras.'):]: _from_numpy(value, key, dtypes, device)
                       for key, value in data.items() if key.startswith('extras.')})
        return cls(_from_numpy(data['relevance'], 'relevance', dtypes, device),
                   _from_numpy(data['similarity'], 'similarity', dtypes, device), *factors, *marginals, extras,
                   meta.get('metadata', {}))

    @property
    def grid_a(self) -> PatchGrid:
        """Patch grid of the first inputs."""
        return self.factors_a.grid

    @property
    def grid_b(self) -> PatchGrid:
        """Patch grid of the second inputs."""
        return self.factors_b.grid

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


def unit_multipliers(units: torch.Tensor, n_samples: int, n_units: int, dtype, device) -> torch.Tensor:
    """One-hot output-relevance multipliers, ``(K, N, h)``: row ``k`` selects unit ``units[k]`` for all samples."""
    mult = torch.zeros(len(units), n_samples, n_units, dtype=dtype, device=device)
    mult[torch.arange(len(units), device=device), :, units.to(device)] = 1.0
    return mult


def pairwise_relevance(factors_a: Factors, factors_b: Factors, similarity: Union[str, Similarity] = 'dot',
                       unit_weights: Optional[torch.Tensor] = None, all_pairs: bool = False,
                       check: bool = True) -> torch.Tensor:
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
    check : bool
        Check that the embeddings fit the similarity (``False`` for embeddings that were checked already).

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
        out = pairwise_relevance(factors_a[ia], factors_b[ib], similarity, unit_weights=unit_weights, check=check)
        return out.reshape(n_a, n_b, *out.shape[1:])
    if len(factors_a) != len(factors_b):
        raise ValueError(f'pairwise_relevance: {len(factors_a)} vs {len(factors_b)} inputs; use all_pairs=True '
                         'for every pairing')
    if check:
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


def amplification(total: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    r"""Amplification ratio :math:`|\sum R| / |y|` per pair (``y = 0`` guarded by the dtype's smallest normal)."""
    tiny = torch.finfo(total.dtype).tiny if total.is_floating_point() else 1e-38
    return total.abs() / (similarity.abs().to(total) + tiny)


def warn_if_amplified(total: torch.Tensor, similarity: torch.Tensor, stacklevel: int = 3) -> None:
    """Warn (:class:`ConservationWarning`) when ``|total| > AMPLIFICATION_LIMIT * |similarity|`` for any pair.

    Parameters
    ----------
    total : torch.Tensor
        Total relevance ``sum R`` per pair, ``(B,)``.
    similarity : torch.Tensor
        The explained similarity ``y`` per pair, ``(B,)``.
    stacklevel : int
        Passed to :func:`warnings.warn`.
    """
    ratio = amplification(total, similarity)
    if bool((ratio > AMPLIFICATION_LIMIT).any()):
        warnings.warn(
            f'BiLRP relevance sums to up to {float(ratio.max()):.3g} times the similarity: the LRP rules amplify '
            "relevance. Typical cause: zero_params=['bias'] with gamma/LRP-0 rules on a network with large (e.g. "
            'merged BatchNorm) biases, whose denominators then vanish; keep the biases or use z+ rules '
            '(EpsilonPlus). A layer whose kept bias carries much of the embedding (e.g. an alignment head) or a '
            'similarity near 0 also gives large ratios: y - sum R is then the bias terms, not amplification',
            ConservationWarning, stacklevel=stacklevel,
        )
