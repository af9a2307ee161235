"""How many neurons to keep: the error of the top-``k`` explanation against the full one, for every ``k`` (see
:mod:`zennit_bilrp.analysis.neurons` for the criterion)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..scale.metrics import mse, smape

__all__ = ['SelectionCurve', 'selection_curve_from_heatmaps']


@dataclass
class SelectionCurve:
    """Error of the top-``k`` explanation against the full explanation, for ``k = 1..K``.

    Attributes
    ----------
    ks : torch.Tensor
        ``1..K``.
    mse, smape : torch.Tensor
        ``(N, K)`` errors per sample (SMAPE in percent, 0 to 200; see the module docstring).
    order : torch.Tensor
        ``(N, K)`` neuron indices in the order they are added.
    scores : torch.Tensor
        ``(N, K)`` relevance of these neurons.
    reference_power : torch.Tensor
        ``(N,)`` mean square of the full heatmap (MSE divided by it is the relative MSE).
    layer, kind : str
        The layer (or ``'embedding'`` for BiLRP units) and what its neurons are.
    n_neurons : int
        Number of neurons of the layer.
    """
    ks: torch.Tensor
    mse: torch.Tensor
    smape: torch.Tensor
    order: torch.Tensor
    scores: torch.Tensor
    reference_power: torch.Tensor
    layer: str
    kind: str
    n_neurons: int

    def errors(self, metric: str = 'smape', relative: bool = False) -> torch.Tensor:
        """The ``(N, K)`` curve of ``metric`` (``'mse'`` optionally divided by :attr:`reference_power`)."""
        if metric == 'smape':
            return self.smape
        if metric == 'mse':
            if not relative:
                return self.mse
            power = self.reference_power[:, None]
            return torch.where(power > 0, self.mse / torch.where(power > 0, power, torch.ones_like(power)),
                               torch.where(self.mse > 0, torch.full_like(self.mse, float('inf')), self.mse))
        raise ValueError(f"metric must be 'mse' or 'smape', got {metric!r}")

    def smallest_k(self, tolerance: float, metric: str = 'smape', relative: bool = False) -> list[Optional[int]]:
        """Smallest ``k`` per sample whose error is at most ``tolerance`` (``None`` if no ``k <= K`` meets it).

        Parameters
        ----------
        tolerance : float
            Largest acceptable error (SMAPE in percent; MSE in squared relevance units, or relative to the mean
            square of the full heatmap with ``relative=True``).
        metric : {'smape', 'mse'}
            The criterion.
        """
        if tolerance < 0:
            raise ValueError(f'tolerance must be non-negative, got {tolerance}')
        ok = self.errors(metric, relative) <= tolerance
        return [int(self.ks[row.nonzero()[0, 0]]) if bool(row.any()) else None for row in ok]

    def to_dict(self) -> dict:
        """Plain lists, for JSON."""
        return {
            'layer': self.layer, 'kind': self.kind, 'n_neurons': self.n_neurons, 'ks': self.ks.tolist(),
            'mse': self.mse.tolist(), 'smape': self.smape.tolist(), 'order': self.order.tolist(),
            'scores': self.scores.tolist(), 'reference_power': self.reference_power.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SelectionCurve:
        """Inverse of :meth:`to_dict`."""
        return cls(torch.tensor(data['ks']), torch.tensor(data['mse'], dtype=torch.float64),
                   torch.tensor(data['smape'], dtype=torch.float64), torch.tensor(data['order']),
                   torch.tensor(data['scores'], dtype=torch.float64),
                   torch.tensor(data['reference_power'], dtype=torch.float64),
                   data['layer'], data['kind'], int(data['n_neurons']))


def selection_curve_from_heatmaps(cumulative: torch.Tensor, reference: torch.Tensor, order: torch.Tensor,
                                  scores: torch.Tensor, layer: str, kind: str, n_neurons: int) -> SelectionCurve:
    """Build a :class:`SelectionCurve` from top-``k`` heatmaps.

    Parameters
    ----------
    cumulative : torch.Tensor
        ``(N, K, n)`` flattened heatmaps: row ``k - 1`` is the explanation of the top-``k`` neurons
        ``order[:, :k]``.
    reference : torch.Tensor
        ``(N, n)`` full heatmap.
    order, scores : torch.Tensor
        ``(N, K)`` ranked neuron indices and their relevance.
    """
    if cumulative.dim() != 3 or reference.shape != (cumulative.shape[0], cumulative.shape[2]):
        raise ValueError(f'cumulative heatmaps {tuple(cumulative.shape)} (N, K, n) do not fit the reference '
                         f'{tuple(reference.shape)} (N, n)')
    n, k = cumulative.shape[:2]
    ref = reference[:, None].expand_as(cumulative).reshape(n * k, 1, -1)
    est = cumulative.reshape(n * k, 1, -1)
    mse_values = mse(est, ref, per_pair=True).reshape(n, k)
    smape_values = smape(est, ref, per_pair=True).reshape(n, k)
    power = (reference.to(mse_values) ** 2).mean(dim=1)
    return SelectionCurve(torch.arange(1, k + 1), mse_values, smape_values, order.cpu(), scores.cpu(), power,
                          layer, kind, n_neurons)
