r"""Critical-path graphs: the most relevant channels of each layer and the relevance flowing between them.

For layers :math:`\ell_1, \dots, \ell_L` (in forward order) with relevance :math:`R^{(\ell)}` (the LRP message
arriving at each layer's output, see :mod:`zennit_bilrp.analysis.neurons`), the graph has, per layer, one node for
each of
the ``top`` channels of largest relevance :math:`R^{(\ell)}_c = \sum_{s} R^{(\ell)}_{c,s}` (summed over positions
and over the samples of the batch) and one node ``other`` for the remaining channels. The flow from node
:math:`v` of the upper layer :math:`u = \ell_{i+1}` to node :math:`w` of the lower layer :math:`l = \ell_i` is the
relevance that LRP passes from the channels of :math:`v` to those of :math:`w`:

.. math::

    f(w \leftarrow v) = \sum_{c \in w} \sum_s \big[M_{u \to l}(x)\,(R^{(u)} \odot \mathbb{1}_v)\big]_{c,s},

one batched backward pass from the upper to the lower layer per upper node. By linearity of LRP,
:math:`\sum_v f(w \leftarrow v) = R^{(l)}_w` whenever every path from layer :math:`l` to the output passes
through layer :math:`u` (consecutive cuts, e.g. blocks of VGG-16 or whole residual blocks), and
:math:`\sum_w f(w \leftarrow v) = R^{(u)}_v` whenever the LRP rules between the two layers conserve (bias-free
layers or ``zero_params=['bias']``, no epsilon absorption). :meth:`CriticalPathGraph.conservation` reports both
gaps. The graph is a plain documented structure that exports to JSON and to a :mod:`networkx` ``DiGraph``
(edges point from the lower to the upper layer, the forward direction, with the flow as attribute ``flow``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .neurons import NeuronLRP, Target, neuron_scores, output_seed, rank_neurons

__all__ = ['CriticalPathGraph', 'critical_paths', 'OTHER']

#: name of the node that gathers the channels outside the top ones
OTHER = 'other'


@dataclass
class CriticalPathGraph:
    """Top channels per layer and the relevance flowing between consecutive layers.

    Attributes
    ----------
    layers : list of str
        Layer names in forward order (input side first).
    channels : list of list of int
        ``channels[l]``: the top channels of ``layers[l]``, most relevant first. Node ``i`` of layer ``l`` is
        ``channels[l][i]``; node ``len(channels[l])`` is :data:`OTHER` (all remaining channels).
    relevance : list of list of float
        ``relevance[l][i]``: relevance of node ``i`` of layer ``l`` (top channels, then ``other``).
    flows : list of list of list of float
        ``flows[l][i][j]``: relevance passed from node ``j`` of ``layers[l + 1]`` to node ``i`` of ``layers[l]``
        (``len(layers) - 1`` matrices).
    n_channels : list of int
        Number of channels of each layer.
    output_relevance : float
        Total relevance at the model output (the explained score, summed over the batch).
    meta : dict
        Free-form description (model, target, composite, ...).
    """
    layers: list
    channels: list
    relevance: list
    flows: list
    n_channels: list
    output_relevance: float
    meta: dict = field(default_factory=dict)

    def layer_totals(self) -> list:
        """Total relevance of each layer (sum of its nodes, ``other`` included)."""
        return [float(sum(values)) for values in self.relevance]

    def node_name(self, layer: int, node: int) -> str:
        """``'<layer>:<channel>'`` or ``'<layer>:other'``."""
        channels = self.channels[layer]
        return f'{self.layers[layer]}:{channels[node] if node < len(channels) else OTHER}'

    def conservation(self) -> list:
        """Per pair of consecutive layers, the largest gaps ``(incoming, outgoing)``.

        ``incoming``: :math:`\\max_w |\\sum_v f(w \\leftarrow v) - R_w|` (lower nodes; zero for consecutive cuts);
        ``outgoing``: :math:`\\max_v |\\sum_w f(w \\leftarrow v) - R_v|` (upper nodes; zero when the rules between the
        layers conserve).
        """
        gaps = []
        for index, flow in enumerate(self.flows):
            matrix = torch.tensor(flow, dtype=torch.float64)
            lower = torch.tensor(self.relevance[index], dtype=torch.float64)
            upper = torch.tensor(self.relevance[index + 1], dtype=torch.float64)
            gaps.append((float((matrix.sum(1) - lower).abs().max()), float((matrix.sum(0) - upper).abs().max())))
        return gaps

    def critical_chain(self) -> list:
        """The strongest path, from the output side down: start at the most relevant top channel of the last
        layer and follow, layer by layer, the top channel that receives the largest flow from the current node.

        Returns
        -------
        list of (layer name, channel) pairs, input side first.
        """
        node = int(torch.tensor(self.relevance[-1][:len(self.channels[-1])]).argmax())
        chain = [(self.layers[-1], self.channels[-1][node])]
        for index in range(len(self.flows) - 1, -1, -1):
            column = torch.tensor([row[node] for row in self.flows[index][:len(self.channels[index])]])
            node = int(column.argmax())
            chain.append((self.layers[index], self.channels[index][node]))
        return chain[::-1]

    def to_dict(self) -> dict:
        """Plain JSON-ready dictionary (the dataclass fields)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CriticalPathGraph:
        """Inverse of :meth:`to_dict`."""
        return cls(**{key: data[key] for key in ('layers', 'channels', 'relevance', 'flows', 'n_channels',
                                                  'output_relevance')}, meta=data.get('meta', {}))

    def save_json(self, path: Union[str, Path]) -> None:
        """Write the graph to a JSON file."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load_json(cls, path: Union[str, Path]) -> CriticalPathGraph:
        """Read a graph written by :meth:`save_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_networkx(self):
        """A ``networkx.DiGraph``: nodes ``'<layer>:<channel>'`` (attributes ``layer``, ``depth``, ``channel``
        (``None`` for ``other``), ``relevance``), edges lower -> upper with attribute ``flow``."""
        import networkx as nx

        graph = nx.DiGraph(output_relevance=self.output_relevance, **self.meta)
        for depth, layer in enumerate(self.layers):
            for node, value in enumerate(self.relevance[depth]):
                channel = self.channels[depth][node] if node < len(self.channels[depth]) else None
                graph.add_node(self.node_name(depth, node), layer=layer, depth=depth, channel=channel,
                               relevance=float(value))
        for depth, flow in enumerate(self.flows):
            for i, row in enumerate(flow):
                for j, value in enumerate(row):
                    graph.add_edge(self.node_name(depth, i), self.node_name(depth + 1, j), flow=float(value))
        return graph


def critical_paths(lrp: NeuronLRP, x: torch.Tensor, layers: Sequence[str], target: Target = None, top: int = 5,
                   by: str = 'value', meta: Optional[dict] = None) -> CriticalPathGraph:
    """Build the critical-path graph of ``x`` (summed over the batch) for the layers ``layers``.

    Parameters
    ----------
    lrp : NeuronLRP
        Model, composite and canonizers.
    x : torch.Tensor
        Inputs ``(N, ...)``; relevances and flows are summed over the batch.
    layers : sequence of str
        At least two layer names; they are put in forward order. Feature maps ``(N, C, ...)`` have ``C`` channels,
        vectors ``(N, D)`` have ``D``.
    target : see :meth:`NeuronLRP.explain`
        Output relevance (class index, tensor, callable; e.g. a BiLRP marginal seed from
        :func:`zennit_bilrp.analysis.neurons.similarity_target`).
    top : int
        Top channels per layer (fewer if a layer has fewer).
    by : {'value', 'abs'}
        Rank channels by relevance or by its magnitude.

    Returns
    -------
    CriticalPathGraph
    """
    layers = list(dict.fromkeys(layers))
    if len(layers) < 2:
        raise ValueError('critical_paths needs at least two distinct layers')
    if top < 1:
        raise ValueError(f'top must be positive, got {top}')
    with lrp.registration.ensure():
        tapped = lrp.tapped_forward(x, layers)
        names = list(tapped.order)
        tensors = [tapped.layers[name] for name in names]
        seed = output_seed(tapped.output, target)
        relevances = _layer_relevances(tapped.output, tensors, names, seed)
        scores = [neuron_scores(rel, 'channel').sum(0) for rel in relevances]
        tops = [rank_neurons(s[None], min(top, s.numel()), by)[0] for s in scores]
        groups = [_node_groups(s.numel(), chosen) for s, chosen in zip(scores, tops)]
        node_relevance = [torch.zeros(len(chosen) + 1, dtype=torch.float64)
                          .index_add_(0, group.cpu(), s.cpu().to(torch.float64)).tolist()
                          for s, group, chosen in zip(scores, groups, tops)]
        flows = [_flow(lrp, tensors[lower:lower + 2], relevances[lower + 1], groups[lower:lower + 2],
                       [len(chosen) + 1 for chosen in tops[lower:lower + 2]], names[lower:lower + 2]).tolist()
                 for lower in range(len(names) - 1)]
    return CriticalPathGraph(
        layers=names,
        channels=[t.tolist() for t in tops],
        relevance=node_relevance,
        flows=flows,
        n_channels=[int(s.numel()) for s in scores],
        output_relevance=float(seed.sum()),
        meta=dict(meta or {}),
    )


def _layer_relevances(output: torch.Tensor, tensors: list, names: list, seed: torch.Tensor) -> list:
    """Relevance arriving at each tapped layer output for the output relevance ``seed`` (graph retained)."""
    relevances = torch.autograd.grad(output, tensors, seed, retain_graph=True, allow_unused=True)
    for name, rel in zip(names, relevances):
        if rel is None:
            raise ValueError(f'layer {name!r} does not influence the model output')
    return [rel.detach() for rel in relevances]


def _node_groups(n_channels: int, chosen: torch.Tensor) -> torch.Tensor:
    """Node of each channel, ``(C,)``: its rank among the ``chosen`` top channels, else ``len(chosen)`` (other)."""
    group = torch.full((n_channels,), len(chosen), dtype=torch.long, device=chosen.device)
    group[chosen] = torch.arange(len(chosen), device=chosen.device)
    return group


def _flow(lrp: NeuronLRP, tensors: Sequence[torch.Tensor], rel_upper: torch.Tensor, groups: Sequence[torch.Tensor],
          n_nodes: Sequence[int], names: Sequence[str]) -> torch.Tensor:
    r"""Flow matrix ``(n_low, n_up)`` between the nodes of a lower and an upper layer: :math:`f(w \leftarrow v)`,
    one LRP pass per upper node ``v`` seeded with :math:`R^{(u)} \odot \mathbb{1}_v`, summed over the channels of
    each lower node.

    Parameters
    ----------
    lrp : NeuronLRP
        The explainer whose :meth:`~NeuronLRP.tapped_forward` produced ``tensors``.
    tensors, groups, n_nodes, names : pairs (lower, upper)
        Layer outputs, node of each channel (:func:`_node_groups`), number of nodes and layer names.
    rel_upper : torch.Tensor
        Relevance at the upper layer output.
    """
    (lower, upper), (groups_lower, groups_upper), (n_low, n_up) = tensors, groups, n_nodes
    onehot = torch.nn.functional.one_hot(groups_upper, n_up).T.to(rel_upper)  # (n_up, C_u)
    seeds = rel_upper[None] * onehot.reshape(n_up, 1, rel_upper.shape[1], *([1] * (rel_upper.dim() - 2)))
    try:
        per_channel = lrp.propagate(
            upper, lower, seeds,
            lambda g: neuron_scores(g.flatten(0, 1), 'channel').reshape(g.shape[0], g.shape[1], -1).sum(1))
    except RuntimeError as error:
        if 'not have been used in the graph' in str(error) or 'One of the differentiated' in str(error):
            raise ValueError(f'layer {names[0]!r} does not feed layer {names[1]!r}') from error
        raise
    matrix = torch.zeros(n_low, n_up, dtype=torch.float64)
    return matrix.index_add_(0, groups_lower.cpu(), per_channel.T.cpu().to(torch.float64))
