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
from typing import Callable, Optional, Sequence, Union

import torch

from ..core.checks import check_eval_mode, check_input
from ..core.engine import BiLRP
from ..core.registration import Registered, Registration
from ..core.results import BiLRPResult, pairwise_relevance
from ..core.session import batched_vjp
from ..lrp.layers import LayerHook, get_layer
from ..scale.approximations import select_from_factors, select_units, unit_contributions
from ..scale.metrics import mse, smape

__all__ = [
    'NeuronLRP', 'TappedForward', 'NeuronExplanation', 'SelectionCurve', 'NeuronMask', 'neuron_scores',
    'neuron_mask', 'neuron_index', 'output_seed', 'rank_neurons', 'explain_units', 'explain_pair_neurons',
    'bilrp_selection_curve', 'selection_curve_from_heatmaps', 'similarity_target', 'KINDS',
]

#: what a "neuron" of a layer is
KINDS = ('channel', 'unit')

Target = Union[None, int, Sequence[int], torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]
Neurons = Union[int, Sequence[int], torch.Tensor]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _num_neurons(shape: Sequence[int], kind: str) -> int:
    """Number of neurons of a layer output of per-sample shape ``shape``."""
    if kind == 'channel':
        return int(shape[0]) if len(shape) else 1
    n = 1
    for size in shape:
        n *= int(size)
    return n


def neuron_scores(layer_relevance: torch.Tensor, kind: str = 'channel') -> torch.Tensor:
    """Relevance of each neuron, ``(N, n_neurons)``: channel sums over positions (``'channel'``) or all units."""
    _check_kind(kind)
    rel = layer_relevance
    if kind == 'unit' or rel.dim() == 2:
        return rel.reshape(rel.shape[0], -1)
    return rel.reshape(rel.shape[0], rel.shape[1], -1).sum(dim=2)


def rank_neurons(scores: torch.Tensor, k: Optional[int] = None, by: str = 'value') -> torch.Tensor:
    """Indices ``(N, k)`` of the ``k`` neurons of largest relevance (``by='value'``) or magnitude (``'abs'``)."""
    if by not in ('value', 'abs'):
        raise ValueError(f"by must be 'value' or 'abs', got {by!r}")
    n = scores.shape[1]
    k = n if k is None else k
    if not 0 < k <= n:
        raise ValueError(f'k must be in 1..{n} (the layer has {n} neurons), got {k}')
    keys = scores if by == 'value' else scores.abs()
    # stable descending sort so that ties are broken by index, deterministically
    return torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :k]


def neuron_index(neurons: Neurons, n: int, what: str = 'the layer') -> torch.Tensor:
    """Neuron indices as a LongTensor ``(K,)`` or ``(N, K)``, validated against ``n`` neurons.

    Parameters
    ----------
    neurons : int, sequence of int or torch.Tensor
        Indices ``(K,)`` or ``(N, K)``, or a boolean mask ``(n,)``.
    n : int
        Number of neurons of the layer.
    what : str
        Name of the layer in error messages.

    Raises
    ------
    TypeError
        Floating-point or non-integer indices.
    ValueError
        An empty selection, a wrong shape, or an index outside ``0..n-1``.
    """
    if isinstance(neurons, torch.Tensor):
        index = neurons
        if index.dtype == torch.bool:
            if index.dim() != 1 or index.numel() != n:
                raise ValueError(f'a boolean neuron mask must have shape ({n},) for {what}, got {tuple(index.shape)}')
            index = index.nonzero().flatten()
        elif index.is_floating_point():
            raise TypeError('neuron indices must be integers (or a boolean mask), got a floating-point tensor')
        index = index.long()
        if index.dim() == 0:
            index = index[None]
    elif isinstance(neurons, int):
        index = torch.tensor([neurons])
    else:
        try:
            index = torch.as_tensor(list(neurons), dtype=torch.long)
        except (TypeError, ValueError) as error:
            raise TypeError(f'neurons must be an int, a sequence of ints or a tensor, got {neurons!r}') from error
    if index.dim() not in (1, 2):
        raise ValueError(f'neuron indices must have shape (K,) or (N, K), got {tuple(index.shape)}')
    if index.numel() == 0:
        raise ValueError(f'no neurons selected for {what}')
    bad = index[(index < 0) | (index >= n)]
    if bad.numel():
        raise ValueError(f'neuron index {int(bad[0])} is out of range for {what}, which has {n} neurons '
                         f'(valid: 0..{n - 1})')
    return index


def neuron_mask(shape: Sequence[int], neurons: Neurons, kind: str = 'channel', what: str = 'the layer',
                dtype=torch.float32, device=None) -> torch.Tensor:
    """0/1 mask over a layer output selecting ``neurons``.

    Parameters
    ----------
    shape : sequence of int
        Layer output shape *with* the batch axis ``(N, C, ...)``.
    neurons : int, sequence of int or torch.Tensor
        Neuron indices ``(K,)`` (same for all samples), ``(N, K)`` (per sample) or a boolean mask ``(n_neurons,)``.
    kind : {'channel', 'unit'}
        Channels (broadcast over positions) or flat unit indices.

    Returns
    -------
    torch.Tensor
        Mask of shape ``shape`` (or broadcastable to it: ``(1, ...)`` when the selection is shared).
    """
    _check_kind(kind)
    shape = tuple(shape)
    n = _num_neurons(shape[1:], kind)
    index = neuron_index(neurons, n, what).to(device)
    rows = 1 if index.dim() == 1 else shape[0]
    if index.dim() == 2 and index.shape[0] != shape[0]:
        raise ValueError(f'per-sample neuron indices have {index.shape[0]} rows but the batch has {shape[0]} samples')
    flat = torch.zeros(rows, n, dtype=dtype, device=device)
    flat.scatter_(1, index.reshape(rows, -1), 1.0)
    if kind == 'unit':
        return flat.reshape(rows, *shape[1:])
    return flat.reshape(rows, n, *([1] * (len(shape) - 2)))


class _Taps:
    """Forward hooks that keep the outputs of named layers during one forward pass (removed right after).

    Each hook returns a clone of the layer output so that in-place operations downstream (e.g. torchvision's
    ``ReLU(inplace=True)``) cannot change the kept tensor; the clone is the identity for gradients. The hooks are
    registered after the composite's, so the kept tensor is the one whose gradient Zennit's rule reads.
    """

    def __init__(self, model: torch.nn.Module, layers: Sequence[str]):
        self.modules = {name: get_layer(model, name) for name in layers}
        self.outputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self.handles = []

    def __enter__(self) -> _Taps:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *args) -> bool:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return False

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f'layer {name!r} returns {type(output).__name__}, not a tensor; choose a layer '
                                'whose output is a single tensor')
            if name in self.outputs:
                raise RuntimeError(f'layer {name!r} is called more than once in a forward pass; its neurons are '
                                   'ambiguous (choose a module that is used once)')
            self.outputs[name] = output
            self.order.append(name)
            return output.clone()
        return hook


def output_seed(output: torch.Tensor, target: Target = None) -> torch.Tensor:
    r"""Relevance at the model output, shaped like ``output``.

    ``None``: the largest output (per sample); int or ``(N,)`` ints: that output, started from its value,
    :math:`f_c(x)\,e_c`; a tensor shaped like the output: that relevance; a callable: ``target(output)``.

    Raises
    ------
    ValueError
        A class target out of range or for an output that is not ``(N, classes)``, or a relevance of the wrong
        shape.
    """
    out = output.detach()
    if callable(target) and not isinstance(target, torch.Tensor):
        seed = target(out)
        if not isinstance(seed, torch.Tensor) or seed.shape != out.shape:
            raise ValueError(f'the target callable must return a tensor shaped like the output {tuple(out.shape)}')
        return seed.to(out)
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        if target.shape != out.shape:
            raise ValueError(f'an output-relevance target must have the output shape {tuple(out.shape)}, '
                             f'got {tuple(target.shape)}')
        return target.to(out)
    if out.dim() != 2:
        raise ValueError(f'class targets need a model output of shape (N, classes), got {tuple(out.shape)}; '
                         'pass the output relevance as a tensor or a callable instead')
    if target is None:
        index = out.argmax(dim=1)
    else:
        index = torch.as_tensor(target, dtype=torch.long, device=out.device).reshape(-1)
        if index.numel() == 1:
            index = index.expand(out.shape[0])
        if index.numel() != out.shape[0]:
            raise ValueError(f'{index.numel()} targets for a batch of {out.shape[0]} samples')
        bad = index[(index < 0) | (index >= out.shape[1])]
        if bad.numel():
            raise ValueError(f'target {int(bad[0])} is out of range for an output with {out.shape[1]} classes')
    seed = torch.zeros_like(out)
    rows = torch.arange(out.shape[0], device=out.device)
    seed[rows, index] = out[rows, index]
    return seed


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
    """
    inputs: torch.Tensor
    output: torch.Tensor
    layers: dict
    order: list


class NeuronLRP(Registered):
    """Neuron-conditional LRP for any model and any layer, as a Zennit-style context manager.

    On entry the composite and canonizers are registered by a :class:`~zennit_bilrp.core.registration.Registration`
    (which also makes canonized BatchNorm exact, checks that every layer has a rule and guards the model); on exit
    they are removed and the model is put back exactly, also after errors. Calls outside a ``with`` block register
    and remove around each call.

    Parameters
    ----------
    model : torch.nn.Module
        Any model (a classifier, or an embedding model explained from a given output relevance).
    composite : zennit.core.Composite, optional
        LRP rules (default: :func:`~zennit_bilrp.lrp.choose.composite_for` ``(model)``, with its canonizers).
    canonizers : list, optional
        Extra canonizers.
    strict : bool
        Refuse layers with parameters that the composite gives no rule.
    chunk_size : int
        Number of per-neuron backward passes batched together.
    """

    def __init__(self, model: torch.nn.Module, composite=None, canonizers: Optional[Sequence] = None,
                 strict: bool = True, chunk_size: int = 32):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
        if chunk_size < 1:
            raise ValueError(f'chunk_size must be positive, got {chunk_size}')
        if composite is None:
            from ..lrp.choose import composite_for

            composite = composite_for(model, canonizers=[] if canonizers else None)
        self.model = model
        self.composite = composite
        self.registration = Registration([(model, composite, canonizers)], strict=strict)
        self.chunk_size = chunk_size

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
        inp = x.detach().requires_grad_(True)
        with _Taps(self.model, layers) as taps, torch.enable_grad():
            output = self.model(inp)
        missing = [name for name in layers if name not in taps.outputs]
        if missing:
            raise RuntimeError(f'layer(s) {missing} were not called in the forward pass')
        if not isinstance(output, torch.Tensor) or output.grad_fn is None:
            raise RuntimeError('the model output must be a tensor that depends on the input')
        return TappedForward(inp, output, taps.outputs, taps.order)

    def propagate(self, source: torch.Tensor, inputs: torch.Tensor, seeds: torch.Tensor,
                  reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        r"""LRP from ``source`` down to ``inputs`` for each seed, :math:`M_{\text{source} \to \text{inputs}}\,s_k`.

        The seeds are propagated ``chunk_size`` at a time with
        :func:`~zennit_bilrp.core.session.batched_vjp` (the graph is retained for further passes).

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
        outs = []
        for start in range(0, seeds.shape[0], self.chunk_size):
            grad = batched_vjp(source, inputs, seeds[start:start + self.chunk_size])
            outs.append(grad.detach() if reduce is None else reduce(grad.detach()))
        return torch.cat(outs)

    def _layer_pass(self, x: torch.Tensor, layer: str, target: Target) -> tuple:
        """``(tapped forward, seed at the output, relevance at the layer)``; the graph is retained."""
        tapped = self.tapped_forward(x, [layer])
        seed = output_seed(tapped.output, target)
        rel, = torch.autograd.grad(tapped.output, tapped.layers[layer], seed, retain_graph=True)
        return tapped, seed, rel.detach()

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
        _check_kind(kind)
        if neurons is not None and topk is not None:
            raise ValueError('give either neurons or topk, not both')
        with self.registration.ensure():
            tapped, _, rel = self._layer_pass(x, layer, target)
            tap = tapped.layers[layer]
            n = _num_neurons(tap.shape[1:], kind)
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
        """Input relevance of each neuron separately, ``(N, K, *input)`` (one batched backward per chunk)."""
        _check_kind(kind)
        with self.registration.ensure():
            tapped, _, rel = self._layer_pass(x, layer, target)
            tap = tapped.layers[layer]
            index = neuron_index(neurons, _num_neurons(tap.shape[1:], kind), f'layer {layer!r} ({kind}s)')
            seeds = self._single_seeds(rel, index, kind)
            return self.propagate(tap, tapped.inputs, seeds).transpose(0, 1)

    @staticmethod
    def _single_seeds(rel: torch.Tensor, index: torch.Tensor, kind: str) -> torch.Tensor:
        """Seeds ``(K, *rel.shape)``: the layer relevance masked to neuron ``index[..., k]`` of each sample."""
        n_samples = rel.shape[0]
        if index.dim() == 1:
            index = index[None].expand(n_samples, -1)
        flat = torch.zeros(index.shape[1], n_samples, _num_neurons(rel.shape[1:], kind), dtype=rel.dtype,
                           device=rel.device)
        rows = torch.arange(n_samples, device=rel.device)
        for k in range(index.shape[1]):
            flat[k, rows, index[:, k].to(rel.device)] = 1.0
        if kind == 'unit':
            mask = flat.reshape(index.shape[1], *rel.shape)
        else:
            mask = flat.reshape(index.shape[1], n_samples, rel.shape[1], *([1] * (rel.dim() - 2)))
        return rel[None] * mask

    def selection_curve(self, x: torch.Tensor, layer: str, target: Target = None, max_k: Optional[int] = None,
                        kind: str = 'channel', by: str = 'value', sum_channels: bool = True,
                        check_cut: float = 1e-6) -> SelectionCurve:
        """MSE and SMAPE of the top-``k`` heatmap against the full heatmap, ``k = 1..max_k``.

        The full heatmap is the ordinary LRP explanation of ``target``; the top-``k`` heatmap is the sum of the
        per-neuron explanations of the ``k`` most relevant neurons of each sample. Heatmaps are summed over input
        channels (``sum_channels``) and signed.

        Parameters
        ----------
        max_k : int, optional
            Largest ``k`` (default: all neurons; then the last point is 0 up to rounding when ``layer`` is a cut).
        check_cut : float
            Warn when the relative difference between the full explanation and the explanation through all
            neurons of ``layer`` exceeds this (relevance bypasses the layer, e.g. through a skip connection).
        """
        _check_kind(kind)
        with self.registration.ensure():
            tapped, seed, rel = self._layer_pass(x, layer, target)
            tap = tapped.layers[layer]
            full, = torch.autograd.grad(tapped.output, tapped.inputs, seed, retain_graph=True)
            through, = torch.autograd.grad(tap, tapped.inputs, rel, retain_graph=True)
            _warn_if_bypassed(full, through, layer, check_cut)
            scores = neuron_scores(rel, kind)
            n = scores.shape[1]
            order = rank_neurons(scores, n if max_k is None else max_k, by)

            def flat(g):  # (c, N, *input) -> (c, N, n)
                g = g.sum(dim=2) if sum_channels and g.dim() > 3 else g
                return g.reshape(g.shape[0], g.shape[1], -1)

            seeds = self._single_seeds(rel, order, kind)
            partials = self.propagate(tap, tapped.inputs, seeds, flat).transpose(0, 1)  # (N, K, n)
            reference = flat(full.detach()[None])[0]
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


class _MaskGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, mask):
        ctx.save_for_backward(mask)
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        mask, = ctx.saved_tensors
        return grad * mask, None


class NeuronMask(LayerHook):
    """Context manager that lets relevance pass backward only through selected neurons of a layer.

    A forward hook on the layer wraps its output in an identity whose backward multiplies the incoming relevance
    by a 0/1 mask. It must be entered *after* the composite is registered (e.g. inside ``with BiLRP(...)``), so
    that Zennit's rule of the layer reads the masked relevance; a forward pass in the wrong order raises an error.
    The mask is shared by all samples of a batch.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    layer : str
        Module name.
    neurons : int, sequence of int or torch.Tensor
        Channels (``kind='channel'``) or flat units (``kind='unit'``) to keep, or a boolean mask.
    kind : {'channel', 'unit'}
        What a neuron is.
    """

    def __init__(self, model: torch.nn.Module, layer: str, neurons: Neurons, kind: str = 'channel'):
        _check_kind(kind)
        self.model = model
        self.layer = layer
        self.module = get_layer(model, layer)
        self.neurons = neurons
        self.kind = kind
        self.handle = None
        self.calls = 0

    def _hook(self, module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f'layer {self.layer!r} returns {type(output).__name__}, not a tensor')
        if next(reversed(module._forward_hooks)) != self.handle.id:
            raise RuntimeError(f'NeuronMask on {self.layer!r} was registered before other forward hooks of that '
                               'layer (e.g. the composite); enter it inside the composite/BiLRP context')
        mask = neuron_mask((1, *output.shape[1:]), self.neurons, self.kind, f'layer {self.layer!r} ({self.kind}s)',
                           dtype=output.dtype, device=output.device)
        self.calls += 1
        return _MaskGradient.apply(output, mask.expand(output.shape[0], *mask.shape[1:]).contiguous())


def similarity_target(bilrp: BiLRP, x_partner: torch.Tensor, tower: str = 'b',
                      partner_totals: Optional[torch.Tensor] = None) -> Callable:
    r"""Output relevance of a similarity model for the first-order marginal of ``x`` given a fixed partner ``x'``.

    Returns a callable ``output -> relevance`` for :class:`NeuronLRP` (``target=``): the head's relevance for
    :math:`\phi(x) \odot s` with :math:`s = c\,G\,\phi(x')` (the engine's partner multipliers with the partner's
    unit totals taken as :math:`\phi(x')`, exact when LRP conserves). Its sum is the similarity :math:`y`, and the
    resulting input relevance is the BiLRP marginal :math:`\sum_{i'} R_{ii'}`.

    Parameters
    ----------
    bilrp : BiLRP
        The engine (similarity and head).
    x_partner : torch.Tensor
        Partners ``(N, ...)``, one per explained input (or one for all).
    tower : {'a', 'b'}
        Encoder of the partners.
    partner_totals : torch.Tensor, optional
        Unit totals ``(N, h)`` of the partners to use instead of :math:`\phi(x')` (e.g. ``factors.totals`` from the
        engine; then the result equals the engine's marginal exactly).
    """
    emb_partner = bilrp.embed(x_partner, tower=tower)
    totals_partner = emb_partner if partner_totals is None else partner_totals.detach()
    if totals_partner.shape != emb_partner.shape:
        raise ValueError(f'partner_totals has shape {tuple(totals_partner.shape)}, the partner embeddings '
                         f'{tuple(emb_partner.shape)}')

    def target(output: torch.Tensor) -> torch.Tensor:
        emb = bilrp.head.embed(output.detach())
        partner, totals = emb_partner.to(emb), totals_partner.to(emb)
        if partner.shape[0] == 1 and emb.shape[0] > 1:
            partner, totals = partner.expand(emb.shape[0], -1), totals.expand(emb.shape[0], -1)
        if partner.shape != emb.shape:
            raise ValueError(f'partner embeddings {tuple(partner.shape)} do not match the embeddings '
                             f'{tuple(emb.shape)}')
        multipliers, _ = bilrp.similarity.partner_multipliers(emb, totals, emb, partner)
        return bilrp.head.output_relevance(output, multipliers[None])[0]

    return target


def explain_units(bilrp: BiLRP, x_a: torch.Tensor, x_b: torch.Tensor, units: Optional[Neurons] = None,
                  k: Optional[int] = None, pooling=None, result: Optional[BiLRPResult] = None) -> BiLRPResult:
    """BiLRP of a pair batch restricted to selected embedding units.

    ``R_S = c sum_{m in S} F_m(x) F_m(x')^T`` (dot/cosine; a bilinear similarity keeps the rows ``m in S`` of the
    first side), computed from the engine's factors of the selected units only.

    Parameters
    ----------
    bilrp : BiLRP
        The engine (composite, similarity, head).
    units : int, sequence of int or torch.Tensor, optional
        Units to keep (shared by all pairs).
    k : int, optional
        Keep instead the ``k`` units of largest contribution ``|phi_m(x) phi_m(x')|`` per pair
        (:func:`zennit_bilrp.scale.approximations.select_from_factors`); factors of all units are then computed
        once.
    pooling : int or Pooling, optional
        Patch pooling.
    result : BiLRPResult, optional
        The full BiLRP of these pairs (all units, e.g. from ``bilrp.explain``), reused with ``k`` instead of being
        recomputed.

    Returns
    -------
    BiLRPResult
        ``relevance`` restricted to the units (``marginal_a/b`` are not computed; ``extras['units']`` holds them).
    """
    if (units is None) == (k is None):
        raise ValueError('give exactly one of units and k')
    with bilrp.registration.ensure():
        if units is not None:
            h = bilrp.embed(x_a[:1]).shape[1]
            index = neuron_index(units, h, 'the embedding (units)')
            if index.dim() != 1:
                raise ValueError('units shared by all pairs must have shape (K,); use k for per-pair selection')
            fa = bilrp.factors(x_a, pooling, tower='a', units=index)
            fb = bilrp.factors(x_b, pooling, tower='b', units=index)
            relevance = pairwise_relevance(fa, fb, bilrp.similarity)
            chosen = index
        else:
            full = result if result is not None else bilrp.explain(x_a, x_b, pooling=pooling, marginals=False)
            fa, fb = _all_unit_factors(full)
            selected = select_from_factors(fa, fb, bilrp.similarity, k=k)
            relevance, chosen = selected.relevance, selected.units
        similarity = bilrp.similarity(fa.embedding, fb.embedding)
    return BiLRPResult(relevance, similarity, fa, fb, extras={'units': chosen})


def _all_unit_factors(result: BiLRPResult) -> tuple:
    """The factors of both sides of ``result``, which must explain all units."""
    if result.factors_a.units is not None or result.factors_b.units is not None:
        raise ValueError('result must hold the factors of all units')
    return result.factors_a, result.factors_b


def explain_pair_neurons(bilrp: BiLRP, x_a: torch.Tensor, x_b: torch.Tensor, layer: str, neurons: Neurons,
                         kind: str = 'channel', pooling=None, marginals: bool = True) -> BiLRPResult:
    r"""BiLRP restricted to relevance flowing through selected neurons of an inner layer (both inputs).

    Each per-unit explanation :math:`R_m` is masked at ``layer`` (:class:`NeuronMask`), so
    :math:`R = c\sum_m R^S_m(x) R^S_m(x')^\top`: the pairwise relevance that passes through the neurons ``S`` on
    both sides. Selecting all neurons of a cut layer reproduces the full BiLRP.
    """
    if bilrp.model_b is not None:
        raise ValueError('explain_pair_neurons needs a shared (Siamese) encoder')
    with bilrp.registration.ensure(), NeuronMask(bilrp.model, layer, neurons, kind):
        return bilrp.explain(x_a, x_b, pooling=pooling, marginals=marginals)


def bilrp_selection_curve(bilrp: BiLRP, x_a: torch.Tensor, x_b: torch.Tensor, pooling=None,
                          max_k: Optional[int] = None, result: Optional[BiLRPResult] = None) -> SelectionCurve:
    """MSE/SMAPE of the top-``k``-unit BiLRP against the full BiLRP (pooled pairwise matrices), ``k = 1..max_k``.

    Units are ranked per pair by their contribution ``|phi_m(x) phi_m(x')|``
    (:func:`zennit_bilrp.scale.approximations.select_units`); the factors of all units are computed once by the
    engine and every ``k`` is :func:`~zennit_bilrp.scale.approximations.select_from_factors` of the top ``k`` units
    (no backward pass). A full ``result`` of these pairs (all units) is reused instead of being recomputed.
    """
    if result is None:
        with bilrp.registration.ensure():
            result = bilrp.explain(x_a, x_b, pooling=pooling, marginals=False)
    fa, fb = _all_unit_factors(result)
    h = fa.embedding.shape[1]
    max_k = h if max_k is None else max_k
    if not 0 < max_k <= h:
        raise ValueError(f'max_k must be in 1..{h} (embedding units), got {max_k}')
    contributions = unit_contributions(fa.embedding, fb.embedding, bilrp.similarity)
    order = select_units(contributions, k=max_k)
    cumulative = torch.stack([select_from_factors(fa, fb, bilrp.similarity, units=order[:, :k]).relevance.flatten(1)
                              for k in range(1, max_k + 1)], dim=1)
    return selection_curve_from_heatmaps(cumulative, result.relevance.flatten(1), order, contributions.gather(1, order),
                                         'embedding', 'unit', h)
