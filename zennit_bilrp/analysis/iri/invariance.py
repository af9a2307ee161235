r"""How far IRIs are shared: the automatic alignment score of Nanda et al. (:func:`alignment_score`: IRIs
perceptually closer to their reference than to their start) and shared invariance across models
(:func:`shared_invariance`, :func:`invariance_table`: how identically another model represents one model's IRIs)."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch

from ...core.checks import check_eval_mode
from ...lrp.layers import CaptureLayer
from ...lrp.restore import ModelGuard
from ..perceptual import available_distances, get_distance
from .generation import IRIGenerator, IRIResult
from .representation import normalized_distance, resolve_layer

__all__ = ['AlignmentScore', 'alignment_score', 'shared_invariance', 'InvarianceTable', 'invariance_table']


@dataclass
class AlignmentScore:
    """The automatic alignment score under several distances.

    Attributes
    ----------
    scores : dict
        Distance name -> score in [0, 100].
    closer : dict
        Distance name -> boolean ``(N,)``: IRI perceptually closer to its reference than to its start.
    """
    scores: dict[str, float]
    closer: dict[str, torch.Tensor]

    @property
    def mean(self) -> float:
        """Mean score over the distances."""
        return float(sum(self.scores.values()) / len(self.scores))

    @property
    def std(self) -> float:
        """Population standard deviation of the score over the distances (0 for a single distance)."""
        values = torch.tensor(list(self.scores.values()), dtype=torch.float64)
        return float(values.std(unbiased=False))

    def __str__(self) -> str:
        parts = ', '.join(f'{k}: {v:.1f}' for k, v in self.scores.items())
        return f'alignment {self.mean:.1f} +- {self.std:.1f} ({parts})'


@torch.no_grad()
def alignment_score(result: Union[IRIResult, Sequence[torch.Tensor]],
                    distances: Union[None, str, Callable, Sequence] = None) -> AlignmentScore:
    r"""The automatic alignment score of Nanda et al. (AAAI 2023):

    .. math::

        A_D = 100 \cdot \frac{1}{N} \sum_i \mathbb{1}\left[D(x'_i, x_{\mathrm{ref},i}) < D(x'_i, x_{0,i})\right],

    the share of IRIs perceptually closer to their reference than to their starting point.

    Parameters
    ----------
    result : IRIResult or (iris, references, starts)
        The IRIs.
    distances : name, callable or sequence of them, optional
        Perceptual distances (default: :func:`~zennit_bilrp.analysis.perceptual.available_distances`); report
        :attr:`AlignmentScore.mean` and :attr:`AlignmentScore.std` over them.
    """
    if isinstance(result, IRIResult):
        iris, refs, starts = result.iris, result.references, result.starts
    else:
        iris, refs, starts = result
    if not (iris.shape == refs.shape == starts.shape):
        raise ValueError(f'iris, references and starts must have the same shape, got {tuple(iris.shape)}, '
                         f'{tuple(refs.shape)}, {tuple(starts.shape)}')
    if distances is None:
        distances = available_distances()
    elif isinstance(distances, str) or callable(distances):
        distances = [distances]
    scores, closer = {}, {}
    for distance in distances:
        fn = get_distance(distance)
        name = distance if isinstance(distance, str) else getattr(fn, 'name', repr(fn))
        flag = fn(iris, refs) < fn(iris, starts)
        scores[name] = 100.0 * float(flag.double().mean())
        closer[name] = flag
    return AlignmentScore(scores, closer)


@torch.no_grad()
def shared_invariance(result: IRIResult, model_b: torch.nn.Module, layer_b: Optional[str] = None
                      ) -> dict[str, torch.Tensor]:
    r"""How identically model B represents IRIs made on model A.

    For each IRI :math:`x'` of reference :math:`x_\mathrm{ref}` (made on A),

    .. math::

        d_B = \frac{\|g_B(x') - g_B(x_\mathrm{ref})\|_2}{\|g_B(x_\mathrm{ref})\|_2}, \qquad
        \rho_B = \frac{d_B(x', x_\mathrm{ref})}{d_B(x_0, x_\mathrm{ref})}.

    :math:`d_B = 0` means B shares A's invariance exactly; :math:`\rho_B` relates it to where the optimization
    started (:math:`\rho_B \ge 1`: A's IRIs are no closer to the reference for B than the starting points were).

    Returns
    -------
    dict
        ``'distance'`` :math:`d_B` and ``'relative'`` :math:`\rho_B`, each ``(N,)``.
    """
    check_eval_mode(model_b)
    with ModelGuard(model_b), CaptureLayer(model_b, resolve_layer(model_b, layer_b), flatten=True) as capture:
        ref = capture(result.references)
        d_iri = normalized_distance(capture(result.iris), ref)
        d_start = normalized_distance(capture(result.starts), ref)
    return {'distance': d_iri, 'relative': d_iri / d_start.clamp_min(1e-30)}


#: the columns of an :class:`InvarianceTable` file
_TABLE_COLUMNS = ('iris_from', 'measured_by', 'distance', 'distance_std', 'relative')


@dataclass
class InvarianceTable:
    """Shared-invariance table: entry ``[i, j]`` is the mean over IRIs made on model ``i`` of model ``j``'s
    normalized representation distance (``distance``, with its spread ``distance_std`` over the IRIs) and of its
    ratio to the start (``relative``); ``results`` holds the IRIs made on each model."""
    names: list[str]
    distance: torch.Tensor
    relative: torch.Tensor
    distance_std: torch.Tensor
    results: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One dict per (generator model, measuring model)."""
        return [{'iris_from': a, 'measured_by': b, 'distance': float(self.distance[i, j]),
                 'distance_std': float(self.distance_std[i, j]), 'relative': float(self.relative[i, j])}
                for i, a in enumerate(self.names) for j, b in enumerate(self.names)]

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write :meth:`rows` to a CSV file (reload with :meth:`load`); the IRIs in ``results`` are not written
        (save each with :meth:`IRIResult.save`).

        Returns
        -------
        pathlib.Path
            The path written.
        """
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, 'w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=list(_TABLE_COLUMNS))
            writer.writeheader()
            writer.writerows(self.rows())
        return Path(path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> InvarianceTable:
        """Read a table written by :meth:`save` (model order as in the file; ``results`` empty).

        Raises
        ------
        ValueError
            If the file lacks a column or does not hold one row for every (generator, measuring model) pair.
        """
        with open(path, newline='') as handle:
            reader = csv.DictReader(handle)
            missing = set(_TABLE_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f'{path} is not an InvarianceTable file (missing columns {sorted(missing)})')
            rows = list(reader)
        names = list(dict.fromkeys(row['iris_from'] for row in rows))
        cells = {(row['iris_from'], row['measured_by']): row for row in rows}
        if len(rows) != len(names) ** 2 or set(cells) != {(a, b) for a in names for b in names}:
            raise ValueError(f'{path}: expected one row for each of the {len(names)} x {len(names)} model pairs, '
                             f'got {len(rows)} rows')
        matrices = {key: torch.tensor([[float(cells[a, b][key]) for b in names] for a in names], dtype=torch.float64)
                    for key in ('distance', 'relative', 'distance_std')}
        return cls(names, **matrices)

    def format(self) -> str:
        """The distance matrix as text (rows: IRIs made on; columns: measured by)."""
        width = max(12, max(len(n) for n in self.names) + 2)
        lines = ['IRIs from \\ measured by'.ljust(width + 12) + ''.join(n.rjust(width) for n in self.names)]
        for i, name in enumerate(self.names):
            cells = ''.join(f'{float(self.distance[i, j]):.3f} ({float(self.relative[i, j]):.2f})'.rjust(width)
                            for j in range(len(self.names)))
            lines.append(name.ljust(width + 12) + cells)
        lines.append('cells: mean normalized distance d_B (mean ratio to the start rho_B)')
        return '\n'.join(lines)


def invariance_table(models: Mapping[str, Union[torch.nn.Module, tuple[torch.nn.Module, Optional[str]]]],
                     reference: torch.Tensor, start: Union[str, torch.Tensor] = 'super-noise',
                     results: Optional[Mapping[str, IRIResult]] = None, **kwargs) -> InvarianceTable:
    """Shared-invariance table for several models (see :func:`shared_invariance`).

    Parameters
    ----------
    models : mapping
        Name -> model or (model, layer).
    reference, start :
        As for :class:`IRIGenerator`; IRIs are made on every model from the same references and starts.
    results : mapping, optional
        Precomputed IRIs per model name (others are generated).
    **kwargs
        Settings of :class:`IRIGenerator`.
    """
    if len(models) < 1:
        raise ValueError('invariance_table needs at least one model')
    entries = {name: (m if isinstance(m, tuple) else (m, None)) for name, m in models.items()}
    results = dict(results or {})
    names = list(entries)
    k = len(names)
    dist, rel, std = (torch.zeros(k, k, dtype=torch.float64) for _ in range(3))
    for i, name_a in enumerate(names):
        model_a, layer_a = entries[name_a]
        if name_a not in results:
            results[name_a] = IRIGenerator(model_a, layer=layer_a, **kwargs)(reference, start)
        for j, name_b in enumerate(names):
            model_b, layer_b = entries[name_b]
            measures = shared_invariance(results[name_a], model_b, layer_b)
            dist[i, j] = measures['distance'].double().mean()
            std[i, j] = measures['distance'].double().std(unbiased=False)
            rel[i, j] = measures['relative'].double().mean()
    return InvarianceTable(names, dist, rel, std, results)
