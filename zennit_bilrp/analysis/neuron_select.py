"""Neurons of a layer: their relevance, ranking, indices and masks, and the output relevance an explanation starts
from (see :mod:`zennit_bilrp.analysis.neurons`)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ..core.seeds import neuron_counts
from ..lrp.layers import LayerHook, get_layer
from ..torch_private import last_forward_hook_id

__all__ = ['KINDS', 'Target', 'Neurons', 'check_kind', 'num_neurons', 'neuron_scores', 'rank_neurons', 'neuron_index',
           'neuron_mask', 'output_seed', 'NeuronMask', 'one_hot_neurons']

#: what the neurons of a layer are: conv channels or embedding units
KINDS = ('channel', 'unit')

#: the output to explain (see :func:`output_seed`): None (the largest), an index or one per sample, a relevance
#: tensor shaped like the output, or a function of the output
Target = Union[None, int, Sequence[int], torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]
#: neurons of a layer: one index, several indices or an index tensor
Neurons = Union[int, Sequence[int], torch.Tensor]


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def num_neurons(shape: Sequence[int], kind: str) -> int:
    """Number of neurons of a layer output of per-sample shape ``shape``."""
    return neuron_counts(shape, kind)


def neuron_scores(layer_relevance: torch.Tensor, kind: str = 'channel') -> torch.Tensor:
    """Relevance of each neuron, ``(N, n_neurons)``: channel sums over positions (``'channel'``) or all units."""
    check_kind(kind)
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
    check_kind(kind)
    shape = tuple(shape)
    n = num_neurons(shape[1:], kind)
    index = neuron_index(neurons, n, what).to(device)
    rows = 1 if index.dim() == 1 else shape[0]
    if index.dim() == 2 and index.shape[0] != shape[0]:
        raise ValueError(f'per-sample neuron indices have {index.shape[0]} rows but the batch has {shape[0]} samples')
    flat = torch.zeros(rows, n, dtype=dtype, device=device)
    flat.scatter_(1, index.reshape(rows, -1), 1.0)
    if kind == 'unit':
        return flat.reshape(rows, *shape[1:])
    return flat.reshape(rows, n, *([1] * (len(shape) - 2)))


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
        check_kind(kind)
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
        if last_forward_hook_id(module) != self.handle.id:
            raise RuntimeError(f'NeuronMask on {self.layer!r} was registered before other forward hooks of that '
                               'layer (e.g. the composite); enter it inside the composite/BiLRP context')
        mask = neuron_mask((1, *output.shape[1:]), self.neurons, self.kind, f'layer {self.layer!r} ({self.kind}s)',
                           dtype=output.dtype, device=output.device)
        self.calls += 1
        return _MaskGradient.apply(output, mask.expand(output.shape[0], *mask.shape[1:]).contiguous())


def one_hot_neurons(index: torch.Tensor, n_samples: int, n: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Multipliers ``(K, N, n)`` selecting neuron ``index[..., k]`` of each sample in row ``k`` (``index`` of shape
    ``(K,)``, shared, or ``(N, K)``, per sample)."""
    if index.dim() == 1:
        index = index[None].expand(n_samples, -1)
    flat = torch.zeros(index.shape[1], n_samples, n, dtype=dtype, device=device)
    rows = torch.arange(n_samples, device=device)
    for k in range(index.shape[1]):
        flat[k, rows, index[:, k].to(device)] = 1.0
    return flat
