r"""Feature-map reconstruction: what a channel responds to (DeconvNet) beside what it contributes (LRP).

Following Zeiler and Fergus ("Visualizing and Understanding Convolutional Networks", ECCV 2014), a channel
:math:`c` of layer :math:`L` is reconstructed in input space by keeping its activation map
:math:`A^{(L)}_c` (all other channels set to zero) and passing it backward with the DeconvNet rules: transposed
linear maps (the plain gradient of convolutions and linear layers), max-pooling switches (the gradient of
max-pooling) and a rectification of the backward signal at every ReLU (Zennit's
:class:`~zennit.composites.DeconvNet` composite):

.. math::

    D_c(x) = \mathrm{DeconvNet}_{L \to 0}\big(A^{(L)} \odot \mathbb{1}_c\big).

With ``mode='max'`` only the strongest position of the channel is kept (one receptive field, as in the paper).
Beside it, :func:`reconstruct` computes the LRP explanation of the same seed under an LRP composite,
:math:`M_{L\to 0}(x)(A^{(L)} \odot \mathbb{1}_c)`: which input features *make* the channel active (conserving
:math:`\sum A^{(L)}_c`), whereas the deconvolution shows the *pattern* the channel responds to. Both are
deterministic. The feature-map reconstruction of neuron-selection LRP follows Bhati et al. (arXiv:2412.05686,
2024; see :mod:`zennit_bilrp.analysis.neurons`). The figure is
:func:`~zennit_bilrp.app.viz.reconstructions.plot_reconstructions`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .neurons import NeuronLRP, Neurons, neuron_index

__all__ = ['Reconstruction', 'reconstruct', 'activation_seeds', 'MODES']

#: which part of the activation map seeds the reconstruction
MODES = ('map', 'max')


@dataclass
class Reconstruction:
    """DeconvNet reconstructions and LRP explanations of selected channels.

    Attributes
    ----------
    deconv : torch.Tensor
        ``(N, K, *input)`` DeconvNet reconstruction of each channel.
    lrp : torch.Tensor or None
        ``(N, K, *input)`` LRP explanation of the same seed (``None`` if not computed).
    activation : torch.Tensor
        ``(N, K)`` the seeded activation mass (sum of the kept activations).
    channels : torch.Tensor
        ``(K,)`` the channels.
    layer, mode : str
        Layer and seeding mode.
    """
    deconv: torch.Tensor
    lrp: Optional[torch.Tensor]
    activation: torch.Tensor
    channels: torch.Tensor
    layer: str
    mode: str


def activation_seeds(activation: torch.Tensor, channels: torch.Tensor, mode: str = 'map') -> torch.Tensor:
    """Seeds ``(K, N, C, ...)``: the activation of channel ``channels[k]`` only (``'map'``), or only its largest
    position (``'max'``); everything else zero."""
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    act = activation.detach()
    k, n = len(channels), act.shape[0]
    seeds = torch.zeros(k, *act.shape, dtype=act.dtype, device=act.device)
    for row, channel in enumerate(channels.tolist()):
        if mode == 'map':
            seeds[row, :, channel] = act[:, channel]
        else:
            flat = act[:, channel].reshape(n, -1)
            where = flat.argmax(dim=1)
            kept = torch.zeros_like(flat)
            kept[torch.arange(n), where] = flat[torch.arange(n), where]
            seeds[row, :, channel] = kept.reshape(act[:, channel].shape)
    return seeds


def _run(lrp: NeuronLRP, x: torch.Tensor, layer: str, channels: Neurons, mode: str) -> tuple:
    """Backward passes of the activation seeds of ``channels``: ``(maps (N, K, *input), mass (N, K), index)``."""
    with lrp.registration.ensure():
        tapped = lrp.tapped_forward(x, [layer])
        tap = tapped.layers[layer]
        if tap.dim() < 2:
            raise ValueError(f'layer {layer!r} has output shape {tuple(tap.shape)}; reconstruction needs channels')
        index = neuron_index(channels, tap.shape[1], f'layer {layer!r} (channels)')
        if index.dim() != 1:
            raise ValueError('reconstruction channels must be shared by all samples: shape (K,)')
        seeds = activation_seeds(tap, index, mode)
        maps = lrp.propagate(tap, tapped.inputs, seeds).transpose(0, 1)
        mass = seeds.reshape(seeds.shape[0], seeds.shape[1], -1).sum(dim=2).T
        return maps, mass, index


def reconstruct(model: torch.nn.Module, x: torch.Tensor, layer: str, channels: Neurons, mode: str = 'map',
                lrp_composite=None, canonizers: Optional[Sequence] = None, with_lrp: bool = True) -> Reconstruction:
    """DeconvNet reconstruction (and LRP explanation) of ``channels`` of ``layer``.

    Parameters
    ----------
    model : torch.nn.Module
        The model (left unmodified).
    x : torch.Tensor
        Inputs ``(N, ...)``.
    layer : str
        Module name; its output must have channels on axis 1.
    channels : int, sequence of int or torch.Tensor
        Channels to reconstruct, shared by all samples.
    mode : {'map', 'max'}
        Seed with the whole activation map of the channel or with its strongest position only.
    lrp_composite : zennit.core.Composite, optional
        Composite of the LRP explanation (default as :class:`~zennit_bilrp.analysis.neurons.NeuronLRP`).
    canonizers : list, optional
        Canonizers for both passes (default: :func:`~zennit_bilrp.canonizers_for`).
    with_lrp : bool
        Also compute the LRP explanation of the same seeds.
    """
    from zennit.composites import DeconvNet

    from ..lrp.canonizers import canonizers_for

    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    if canonizers is None:
        canonizers = canonizers_for(model)
    deconv_lrp = NeuronLRP(model, composite=DeconvNet(canonizers=list(canonizers)), strict=False)
    deconv, mass, index = _run(deconv_lrp, x, layer, channels, mode)
    heat = None
    if with_lrp:
        composite = lrp_composite
        if composite is None:
            from ..lrp.choose import composite_for

            composite = composite_for(model, canonizers=list(canonizers))
        heat, _, _ = _run(NeuronLRP(model, composite=composite), x, layer, index, mode)
    return Reconstruction(deconv, heat, mass, index, layer, mode)

