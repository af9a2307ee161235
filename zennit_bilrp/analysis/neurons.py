r"""Neuron-conditional LRP: explanations restricted to selected neurons of any layer, and how many to keep.

Under a Zennit composite the gradient that flows between hooked layers *is* the relevance, so the relevance
:math:`R^{(L)}` of the neurons of a layer :math:`L` is the gradient arriving at that layer's output, and the
part of the input explanation that flows through a set :math:`S` of its neurons is

.. math::

    R_S(x) = M_{L \to 0}(x)\,\big(R^{(L)} \odot \mathbb{1}_S\big),

the LRP map from layer :math:`L` down to the input applied to the masked layer relevance. Because
:math:`M_{L\to 0}` is linear in the relevance it receives, per-neuron explanations add up:
:math:`R_S = \sum_{j\in S} R_{\{j\}}`, and selecting every neuron gives the full explanation whenever every path
from the input to the output passes through :math:`L` (the layer is a *cut*; any layer of a plain
feed-forward chain such as VGG-16, or a whole residual block, but not a convolution inside a block whose skip
bypasses it).

*Neurons* are channels (``kind='channel'``: relevance summed over the spatial positions of a feature map) or
single units (``kind='unit'``: flat indices into the layer output without the batch axis).

**Selection criterion.** With the neurons ranked by relevance (largest first), the heatmap :math:`H_k` of the
top-:math:`k` neurons is compared with the full heatmap :math:`A` (signed, channels summed) by

.. math::

    \mathrm{MSE}_k = \frac1n \sum_i (H_{k,i} - A_i)^2, \qquad
    \mathrm{SMAPE}_k = \frac{100}{n} \sum_i \frac{|H_{k,i} - A_i|}{(|A_i| + |H_{k,i}|)/2}
    \quad (0/0 := 0),

(:func:`zennit_bilrp.scale.metrics.mse`, :func:`zennit_bilrp.scale.metrics.smape`); SMAPE lies in :math:`[0, 200]`
and is
scale-free. :meth:`SelectionCurve.smallest_k` returns the smallest :math:`k` whose error meets a tolerance. When
all per-neuron heatmaps are non-negative (or have disjoint supports) both curves are non-increasing in
:math:`k`; in general they need not be (a negative neuron can move :math:`H_k` away from :math:`A`).

**BiLRP.** For a similarity model the neurons of the embedding are its units: :func:`explain_units` and
:func:`bilrp_selection_curve` keep the top-:math:`k` units (ranked by the contribution
:math:`|\phi_m(x)\phi_m(x')|` of :func:`zennit_bilrp.scale.approximations.select_units`) through the engine's factors
and :func:`~zennit_bilrp.core.results.pairwise_relevance`. Neurons of an inner layer are selected for BiLRP with
:class:`NeuronMask` inside the engine's context (:func:`explain_pair_neurons`).

The idea follows Bhati et al., "Neural Network Interpretability With Layer-Wise Relevance Propagation: Novel
Techniques for Neuron Selection and Visualization" (arXiv:2412.05686, 2024), which selects neurons of VGG-16 for
LRP heatmaps, chooses their number with MSE and SMAPE, draws critical paths and reconstructs feature maps. The
paper publishes no code; the definitions above are ours. Masking the relevance at a layer is the conditioning of
Concept Relevance Propagation (Achtibat et al., Nature Machine Intelligence 2023).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..core.checks import check_eval_mode, check_input
from ..core.config import EngineConfig, check_composite
from ..core.forward import Forward
from ..core.memory import ChunkScheduler
from ..core.propagation import Propagation, batched_vjp
from ..core.registration import Registered, Registration
from ..core.seeds import FlatPool, NeuronSeeds
from .neuron_select import KINDS as KINDS  # the names of neuron selection, importable from here as before
from .neuron_select import NeuronMask as NeuronMask
from .neuron_select import (
    Neurons,
    Target,
    check_kind,
    neuron_index,
    neuron_mask,
    neuron_scores,
    num_neurons,
    one_hot_neurons,
    output_seed,
    rank_neurons,
)
from .selection_curve import SelectionCurve, selection_curve_from_heatmaps
from .unit_selection import bilrp_selection_curve as bilrp_selection_curve
from .unit_selection import explain_pair_neurons as explain_pair_neurons
from .unit_selection import explain_units as explain_units
from .unit_selection import similarity_target as similarity_target

__all__ = ['NeuronLRP', 'TappedForward', 'NeuronExplanation']


@dataclass
class NeuronExplanation:
    """Input relevance of selected neurons.

    Attributes
    ----------
    relevance : torch.Tensor
        Input relevance flowing through the selected neurons, shaped like the input.
    layer_relevance : torch.Tensor
        Relevance of all neurons of the layer (shaped like the layer output), before masking.
    neurons : torch.Tensor
        Selected neuron indices, ``(K,)`` or ``(N, K)``.
    layer, kind : str
        The layer and what its neurons are.
    """
    relevance: torch.Tensor
    layer_relevance: torch.Tensor
    neurons: torch.Tensor
    layer: str
    kind: str

    @property
    def heatmap(self) -> torch.Tensor:
        """Relevance summed over the input channels, ``(N, H, W)`` for images."""
        return self.relevance.sum(dim=1) if self.relevance.dim() > 2 else self.relevance


@dataclass
class TappedForward:
    r"""One forward pass with the outputs of named layers kept, from which LRP passes are taken.

    Under a Zennit composite the gradient of the output w.r.t. ``layers[name]`` is the relevance of that layer's
    neurons, and the gradient of ``layers[name]`` w.r.t. ``inputs`` for a seed :math:`r` is the LRP explanation
    :math:`M_{L \to 0}(x)\,r` (see :meth:`NeuronLRP.propagate`).

    Attributes
    ----------
    inputs : torch.Tensor
        The input batch as an autograd leaf ``(N, ...)``.
    output : torch.Tensor
        The model output.
    layers : dict of str to torch.Tensor
        The output of each tapped layer (a clone, so later in-place operations cannot change it).
    order : list of str
        The tapped layer names in forward order.
    forward : Forward, optional
        The engine's guarded forward pass these tensors come from (:class:`~zennit_bilrp.core.forward.Forward`).
    """
    inputs: torch.Tensor
    output: torch.Tensor
    layers: dict
    order: list
    forward: Optional[Forward] = None


class NeuronLRP(Registered):
    """Neuron-conditional LRP for any model and any layer, as a Zennit-style context manager, on the engine's
    forward pass and LRP passes.

    On entry the composite and canonizers are registered by a :class:`~zennit_bilrp.core.registration.Registration`
    (which also makes canonized BatchNorm exact, checks that every layer has a rule and guards the model); on exit
    they are removed and the model is put back exactly, also after errors. Calls outside a ``with`` block register
    and remove around each call. The forward pass is the engine's (:class:`~zennit_bilrp.core.forward.Forward`:
    refused under ``torch.inference_mode``, audited in strict mode), and the per-neuron passes are batched in chunks
    fitted to ``memory_budget`` (:class:`~zennit_bilrp.core.memory.ChunkScheduler`); pooled per-neuron explanations
    (:meth:`selection_curve`) take the cheaper of the engine's two exact paths
    (:class:`~zennit_bilrp.core.propagation.Propagation`).

    Parameters
    ----------
    model : torch.nn.Module
        Any model (a classifier, or an embedding model explained from a given output relevance).
    composite : zennit.core.Composite, optional
        LRP rules (default: :func:`~zennit_bilrp.lrp.choose.composite_for` ``(model)``, with its canonizers).
    canonizers : list, optional
        Extra canonizers.
    strict : bool
        Refuse layers with parameters that the composite gives no rule, and (forward audit) operations the rules
        cannot explain.
    chunk_size : int, optional
        Number of per-neuron backward passes batched together (default: from the memory model).
    memory_budget : int
        Bytes the batched passes may use (default 1 GiB).
    method : {'auto', 'batched', 'loop', 'patches'}
        The exact path of pooled per-neuron explanations (see :class:`~zennit_bilrp.core.engine.BiLRP`).
    progress : bool
        Show progress bars over chunks.
    """

    def __init__(self, model: torch.nn.Module, composite=None, canonizers: Optional[Sequence] = None,
                 strict: bool = True, chunk_size: Optional[int] = None, memory_budget: int = 1 << 30,
                 method: str = 'auto', progress: bool = False):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
        if method == 'replicate':
            raise ValueError("NeuronLRP has no method='replicate'; use 'auto', 'batched', 'loop' or 'patches'")
        self.config = EngineConfig(method=method, chunk_size=chunk_size, memory_budget=memory_budget,
                                   progress=progress, strict=strict)
        if composite is None:
            from ..lrp.choose import composite_for

            composite = composite_for(model, canonizers=[] if canonizers else None)
        check_composite(composite)
        self.model = model
        self.composite = composite
        self.registration = Registration([(model, composite, canonizers)], strict=strict)

    @property
    def chunk_size(self) -> Optional[int]:
        """Per-neuron passes batched together (``None``: from the memory model)."""
        return self.config.chunk_size

    def tapped_forward(self, x: torch.Tensor, layers: Sequence[str]) -> TappedForward:
        """One forward pass of ``x`` that keeps the outputs of ``layers`` (the rules must be registered: call it
        inside ``with lrp:`` or ``with lrp.registration.ensure():``).

        Raises
        ------
        RuntimeError
            Outside a registration, when a layer is not called or called twice, or when the output does not
            depend on the input.
        """
        if not self.active:
            raise RuntimeError('tapped_forward needs the rules registered: call it inside `with lrp:`')
        check_input(x, 'x')
        check_eval_mode(self.model)
        forward = Forward(self.model, x, strict=self.config.strict, taps=layers)
        return TappedForward(forward.x, forward.output, forward.layers, forward.order, forward)

    def propagate(self, source: torch.Tensor, inputs: torch.Tensor, seeds: torch.Tensor,
                  reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        r"""LRP from ``source`` down to ``inputs`` for each seed, :math:`M_{\text{source} \to \text{inputs}}\,s_k`.

        The seeds are propagated in chunks (:func:`~zennit_bilrp.core.propagation.batched_vjp`) that the engine's
        :class:`~zennit_bilrp.core.memory.ChunkScheduler` fits to ``memory_budget`` (or ``chunk_size`` at a time);
        the graph is retained for further passes.

        Parameters
        ----------
        source, inputs : torch.Tensor
            Tensors of one :meth:`tapped_forward` (e.g. a layer output and the input leaf).
        seeds : torch.Tensor
            ``(K, *source.shape)`` relevances at ``source``.
        reduce : callable, optional
            Applied to each chunk of explanations ``(c, *inputs.shape)`` (e.g. pooling); default the identity.

        Returns
        -------
        torch.Tensor
            ``reduce`` of all ``K`` explanations, concatenated along the first axis.
        """
        scheduler = ChunkScheduler(self.config.memory_budget, self.config.chunk_size, self.config.method == 'loop')
        outs = scheduler.run(seeds.shape[0], lambda start, size: batched_vjp(source, inputs, seeds[start:start + size]),
                             lambda grad: grad.detach() if reduce is None else reduce(grad.detach()), 'NeuronLRP',
                             self.config.progress)
        return torch.cat(outs)

    def _layer_pass(self, x: torch.Tensor, layer: str, target: Target) -> tuple:
        """``(tapped forward, seed at the output, relevance at the layer)``; the graph is retained."""
        tapped = self.tapped_forward(x, [layer])
        seed = output_seed(tapped.output, target)
        rel, = torch.autograd.grad(tapped.output, tapped.layers[layer], seed, retain_graph=True)
        return tapped, seed, rel.detach()

    def _neuron_passes(self, tapped: TappedForward, layer: str, rel: torch.Tensor, kind: str) -> Propagation:
        """LRP passes of the layer relevance ``rel`` masked to single neurons, from ``tapped``'s forward pass."""
        return Propagation(tapped.forward, NeuronSeeds(layer, rel, kind), self.config)

    def layer_relevance(self, x: torch.Tensor, layer: str, target: Target = None) -> torch.Tensor:
        """Relevance of every neuron of ``layer``, shaped like the layer output (see :func:`neuron_scores`)."""
        with self.registration.ensure():
            return self._layer_pass(x, layer, target)[2]

    def explain(self, x: torch.Tensor, layer: str, neurons: Optional[Neurons] = None, target: Target = None,
                kind: str = 'channel', topk: Optional[int] = None, by: str = 'value') -> NeuronExplanation:
        """Input relevance flowing through selected neurons of ``layer``.

        Parameters
        ----------
        x : torch.Tensor
            Inputs ``(N, ...)``.
        layer : str
            Module name as in ``model.named_modules()``.
        neurons : int, sequence of int or torch.Tensor, optional
            Neuron indices ``(K,)`` or ``(N, K)``, or a boolean mask; default all neurons (unless ``topk``).
        target : int, sequence, torch.Tensor or callable, optional
            Output relevance: class index (started from its value), ``None`` for the predicted class, a tensor
            shaped like the output, or a callable ``output -> relevance``.
        kind : {'channel', 'unit'}
            What a neuron is.
        topk : int, optional
            Select the ``topk`` most relevant neurons of each sample (ranked ``by``) instead of ``neurons``.
        by : {'value', 'abs'}
            Ranking for ``topk``.
        """
        check_kind(kind)
        if neurons is not None and topk is not None:
            raise ValueError('give either neurons or topk, not both')
        with self.registration.ensure():
            tapped, _, rel = self._layer_pass(x, layer, target)
            tap = tapped.layers[layer]
            n = num_neurons(tap.shape[1:], kind)
            if topk is not None:
                neurons = rank_neurons(neuron_scores(rel, kind), topk, by)
            elif neurons is None:
                neurons = torch.arange(n)
            what = f"layer {layer!r} ({kind}s)"
            mask = neuron_mask(tap.shape, neurons, kind, what, dtype=rel.dtype, device=rel.device)
            heat, = torch.autograd.grad(tap, tapped.inputs, rel * mask)
            index = neuron_index(neurons, n, what)
            return NeuronExplanation(heat.detach(), rel, index, layer, kind)

    def neuron_heatmaps(self, x: torch.Tensor, layer: str, neurons: Neurons, target: Target = None,
                        kind: str = 'channel') -> torch.Tensor:
        """Input relevance of each neuron separately, ``(N, K, *input)`` (batched backward passes)."""
        check_kind(kind)
        with self.registration.ensure():
            tapped, _, rel = self._layer_pass(x, layer, target)
            n = num_neurons(rel.shape[1:], kind)
            index = neuron_index(neurons, n, f'layer {layer!r} ({kind}s)')
            mult = one_hot_neurons(index, rel.shape[0], n, rel.dtype, rel.device)
            return self._neuron_passes(tapped, layer, rel, kind).propagate(mult, lambda g: g, 'neurons') \
                .transpose(0, 1)

    def selection_curve(self, x: torch.Tensor, layer: str, target: Target = None, max_k: Optional[int] = None,
                        kind: str = 'channel', by: str = 'value', sum_channels: bool = True,
                        check_cut: float = 1e-6) -> SelectionCurve:
        """MSE and SMAPE of the top-``k`` heatmap against the full heatmap, ``k = 1..max_k``.

        The full heatmap is the ordinary LRP explanation of ``target``; the top-``k`` heatmap is the sum of the
        per-neuron explanations of the ``k`` most relevant neurons of each sample, computed by the cheaper exact
        path (one LRP pass per neuron, or one second-order pass per heatmap position). Heatmaps are summed over
        input channels (``sum_channels``) and signed.

        Parameters
        ----------
        max_k : int, optional
            Largest ``k`` (default: all neurons; then the last point is 0 up to rounding when ``layer`` is a cut).
        check_cut : float
            Warn when the relative difference between the full explanation and the explanation through all
            neurons of ``layer`` exceeds this (relevance bypasses the layer, e.g. through a skip connection).
        """
        check_kind(kind)
        with self.registration.ensure():
            tapped, seed, rel = self._layer_pass(x, layer, target)
            tap = tapped.layers[layer]
            full, = torch.autograd.grad(tapped.output, tapped.inputs, seed, retain_graph=True)
            through, = torch.autograd.grad(tap, tapped.inputs, rel, retain_graph=True)
            _warn_if_bypassed(full, through, layer, check_cut)
            scores = neuron_scores(rel, kind)
            n = scores.shape[1]
            order = rank_neurons(scores, n if max_k is None else max_k, by)
            pool = FlatPool.of(tapped.inputs.shape[1:], sum_channels)
            mult = one_hot_neurons(order, rel.shape[0], n, rel.dtype, rel.device)
            partials = self._neuron_passes(tapped, layer, rel, kind).pooled(mult, pool, 'neurons').transpose(0, 1)
            reference = pool(full.detach(), 1)
            return selection_curve_from_heatmaps(partials.cumsum(dim=1), reference, order, scores.gather(1, order),
                                                 layer, kind, n)

    def __repr__(self) -> str:
        return f'NeuronLRP(model={type(self.model).__name__}, composite={type(self.composite).__name__})'


def _warn_if_bypassed(full: torch.Tensor, through: torch.Tensor, layer: str, limit: float) -> None:
    """Warn when the explanation through all neurons of ``layer`` differs from the full one by more than ``limit``
    (relative to the full explanation's largest magnitude)."""
    scale = float(full.abs().max())
    gap = float((through - full).abs().max())
    gap = gap / scale if scale > 0 else gap
    if gap > limit:
        warnings.warn(f'relevance bypasses layer {layer!r} (relative difference {gap:.2e} between the full '
                      'explanation and the one through all its neurons); the curve compares against the '
                      'full explanation', RuntimeWarning, stacklevel=3)
