"""The error of top-``k`` neuron selection against ``k`` (:func:`plot_selection_curve`), from a
:class:`~zennit_bilrp.analysis.neurons.SelectionCurve`."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ['plot_selection_curve']


def plot_selection_curve(curve, ax=None, sample: int = 0, tolerance: Optional[float] = None, metric: str = 'smape'):
    """Draw the relative MSE (MSE over the mean square of the full heatmap; left axis, log scale, exact zeros not
    drawn) and SMAPE (right axis) of ``curve`` against ``k``; mark the smallest ``k`` meeting ``tolerance``.

    Parameters
    ----------
    curve : SelectionCurve
        Read through its ``ks``, ``smape``, ``errors()``, ``smallest_k()``, ``kind``, ``layer`` and ``n_neurons``.
    ax : matplotlib.axes.Axes, optional
        Draw into this axes (default: a new pyplot figure of 5 x 3.2 inches).
    sample : int
        Which sample's curve.
    tolerance : float, optional
        Mark the smallest ``k`` whose ``metric`` is at most this (and say so in the title).
    metric : {'smape', 'mse'}
        The criterion of ``tolerance``.

    Returns
    -------
    matplotlib.axes.Axes
        The axes of the relative MSE (the SMAPE is on its twin).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    ks = curve.ks.numpy()
    relative = curve.errors('mse', relative=True)[sample].clone()
    relative[relative <= 0] = float('nan')
    ax.plot(ks, relative.numpy(), color='tab:blue', marker='.', markersize=3, label='relative MSE')
    if bool(torch.isfinite(relative).any()):
        ax.set_yscale('log')
    ax.set_xlabel(f'k (top {curve.kind}s of {curve.layer}, of {curve.n_neurons})')
    ax.set_ylabel('MSE / mean square of full', color='tab:blue')
    twin = ax.twinx()
    twin.plot(ks, curve.smape[sample].numpy(), color='tab:red', marker='.', markersize=3, label='SMAPE')
    twin.set_ylabel('SMAPE (%)', color='tab:red')
    twin.set_ylim(0, 205)
    if tolerance is not None:
        k = curve.smallest_k(tolerance, metric)[sample]
        label = f'{metric.upper()}' if metric == 'smape' else 'MSE'
        if k is not None:
            ax.axvline(k, color='gray', linestyle='--')
            ax.set_title(f'smallest k with {label} <= {tolerance:g}: {k}', fontsize=9)
        else:
            ax.set_title(f'{label} <= {tolerance:g} not reached for k <= {int(curve.ks[-1])}', fontsize=9)
    return ax
