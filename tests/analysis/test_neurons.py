"""Neuron selection, selection curves, critical paths and reconstructions against brute-force references."""
import json
import warnings

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import DeconvNet, EpsilonPlus

from zennit_bilrp import BiLRP, ModelState
from zennit_bilrp.analysis.critical_path import CriticalPathGraph, critical_paths
from zennit_bilrp.analysis.neurons import (
    NeuronLRP,
    NeuronMask,
    bilrp_selection_curve,
    explain_pair_neurons,
    explain_units,
    neuron_index,
    neuron_mask,
    output_seed,
    similarity_target,
)
from zennit_bilrp.analysis.reconstruction import reconstruct
from zennit_bilrp.lrp.restore import ModelGuard
from zennit_bilrp.models.small_resnet import SmallResNet
from zennit_bilrp.scale.metrics import mse, smape

DTYPE = torch.float64
TINY = 1e-12


def cnn(seed=0, positive=False):
    """Bias-free CNN: conv-relu-conv-relu-maxpool-flatten-linear (10 classes) on (3, 8, 8)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(inplace=True),
        nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5 * 4 * 4, 10, bias=False),
    ).to(DTYPE).eval()
    if positive:
        with torch.no_grad():
            for param in model.parameters():
                param.abs_()
    return model


def composite():
    """z+ on convolutions, epsilon on the dense layer, negligible stabilisers (conserves on bias-free nets)."""
    return EpsilonPlus(epsilon=TINY, stabilizer=TINY)


def seed_of(target):
    def seed(output):
        mask = torch.zeros_like(output)
        mask[:, target] = 1.0
        return output * mask
    return seed


@pytest.fixture
def data():
    torch.manual_seed(1)
    return torch.rand(2, 3, 8, 8, dtype=DTYPE)


def test_all_neurons_reproduce_full_explanation(data):
    model = cnn()
    state = ModelState.capture(model)
    with Gradient(model=model, composite=composite()) as attributor:
        _, reference = attributor(data, seed_of(3))
    lrp = NeuronLRP(model, composite=composite())
    with lrp:
        channels = lrp.explain(data, '2', target=3)
        units = lrp.explain(data, '2', neurons=torch.ones(5 * 8 * 8, dtype=torch.bool), kind='unit', target=3)
        top_all = lrp.explain(data, '0', topk=6, target=3)
        per_neuron = lrp.neuron_heatmaps(data, '2', list(range(5)), target=3)
    assert torch.equal(channels.relevance, reference)
    assert torch.equal(units.relevance, reference)
    assert torch.equal(top_all.relevance, reference)
    assert torch.allclose(per_neuron.sum(dim=1), reference, rtol=0, atol=1e-14 * float(reference.abs().max()))
    assert state.differences(model) == []


def test_neuron_lrp_registers_once_with_one_guard(data, monkeypatch):
    model = cnn()
    state = ModelState.capture(model)
    guards = []
    init = ModelGuard.__init__

    def counting_init(self, *models):
        guards.append(models)
        init(self, *models)

    monkeypatch.setattr(ModelGuard, '__init__', counting_init)
    lrp = NeuronLRP(model, composite=composite())
    with lrp, lrp:  # re-entrant: registered (and guarded) once
        lrp.explain(data, '2', target=3)
        assert len(guards) == 1
        assert lrp.active and lrp.registration.active
    assert not lrp.active
    lrp.explain(data, '2', target=3)  # outside a block: registered around the call, one guard again
    assert len(guards) == 2
    assert state.differences(model) == []


def test_tapped_forward_and_propagate_give_the_layer_explanations(data):
    model = cnn()
    lrp = NeuronLRP(model, composite=composite(), chunk_size=2)
    with pytest.raises(RuntimeError, match='needs the rules registered'):
        lrp.tapped_forward(data, ['2'])
    with Gradient(model=model, composite=composite()) as attributor:
        _, reference = attributor(data, seed_of(3))
    with lrp:
        tapped = lrp.tapped_forward(data, ['2', '0'])
        assert tapped.order == ['0', '2'] and tapped.inputs.requires_grad
        seed = output_seed(tapped.output, 3)
        assert torch.equal(seed, seed_of(3)(tapped.output.detach()))
        rel, = torch.autograd.grad(tapped.output, tapped.layers['2'], seed, retain_graph=True)
        seeds = torch.stack([rel, -rel, 2 * rel])  # three seeds in chunks of two: one batched, one single pass
        maps = lrp.propagate(tapped.layers['2'], tapped.inputs, seeds)
        sums = lrp.propagate(tapped.layers['2'], tapped.inputs, seeds, lambda g: g.flatten(2).sum(2))
    scale = float(reference.abs().max())
    for k, factor in enumerate((1.0, -1.0, 2.0)):
        torch.testing.assert_close(maps[k], factor * reference, rtol=0, atol=1e-13 * scale)
    torch.testing.assert_close(sums, maps.flatten(2).sum(2), rtol=1e-12, atol=1e-14)
    assert torch.equal(neuron_index([1, 3], 5), torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="out of range for layer 'x'"):
        neuron_index([5], 5, "layer 'x'")


def test_neuron_lrp_refuses_bad_inputs_by_name(data):
    lrp = NeuronLRP(cnn(), composite=composite())
    with pytest.raises(ValueError, match='x contains NaN'):
        lrp.layer_relevance(data * float('nan'), '2')
    with pytest.raises(TypeError, match='x has dtype torch.int64'):
        lrp.explain(data.long(), '2')
    with pytest.raises(ValueError, match='expected a batch'):
        lrp.explain(data[0, 0, 0], '2')


def test_selected_channels_match_sliced_model_reference(data):
    """Explanation through channels {1, 3} of layer '2' equals LRP of the lower slice seeded with the masked
    relevance that LRP of the upper slice gives at its input (two independent Zennit Gradient runs)."""
    model = cnn()
    lower, upper = model[:3], model[3:]
    with torch.no_grad():
        activation = lower(data)
    with Gradient(model=upper, composite=composite()) as attributor:
        _, layer_relevance = attributor(activation, seed_of(7))
    mask = torch.zeros(1, 5, 1, 1, dtype=DTYPE)
    mask[:, [1, 3]] = 1.0
    with Gradient(model=lower, composite=composite()) as attributor:
        _, reference = attributor(data, lambda out: layer_relevance * mask)
    lrp = NeuronLRP(model, composite=composite())
    result = lrp.explain(data, '2', neurons=[1, 3], target=7)
    assert torch.allclose(result.layer_relevance, layer_relevance, rtol=1e-12, atol=1e-15)
    assert torch.allclose(result.relevance, reference, rtol=1e-10, atol=1e-14)
    single = lrp.neuron_heatmaps(data, '2', [1, 3], target=7)
    assert torch.allclose(single.sum(dim=1), reference, rtol=1e-10, atol=1e-14)
    # top-k per sample picks the channels of largest summed relevance of that sample
    scores = layer_relevance.sum(dim=(2, 3))
    top = lrp.explain(data, '2', topk=2, target=7)
    assert torch.equal(top.neurons, scores.argsort(dim=1, descending=True)[:, :2])


def test_selection_curve_hand_derived():
    """Channel j of the hidden layer sees only input j, so the top-k heatmap is exact on the k most relevant
    inputs and zero elsewhere: SMAPE_k = 200 (n - k) / n and MSE_k = mean of the squared left-out relevance."""
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 1, bias=False)).to(DTYPE).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.diag(torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=DTYPE)))
        model[2].weight.copy_(torch.tensor([[1.0, 0.25, 2.0, 1.0]], dtype=DTYPE))
    x = torch.tensor([[0.9, 0.4, 0.3, 0.2]], dtype=DTYPE)
    relevance = torch.tensor([0.9 * 1.0, 0.4 * 2.0 * 0.25, 0.3 * 0.5 * 2.0, 0.2 * 3.0], dtype=DTYPE)
    curve = NeuronLRP(model, composite=composite()).selection_curve(x, '1', target=0, kind='unit')
    order = relevance.argsort(descending=True)
    assert curve.order[0].tolist() == order.tolist()
    expected_smape = torch.tensor([200.0 * (4 - k) / 4 for k in range(1, 5)], dtype=DTYPE)
    assert torch.allclose(curve.smape[0], expected_smape, atol=1e-6)
    expected_mse = torch.stack([(relevance[order[k:]] ** 2).sum() / 4 for k in range(1, 5)])
    assert torch.allclose(curve.mse[0], expected_mse, rtol=1e-9, atol=1e-18)
    assert curve.smallest_k(60.0) == [3]
    assert curve.smallest_k(1e-9, metric='mse') == [4]
    assert curve.smallest_k(0.1, metric='mse', relative=True) == [2]  # left-out 0.3^2 + 0.1^2 vs total power
    with pytest.raises(ValueError, match='metric'):
        curve.smallest_k(1.0, metric='mae')


def test_selection_curve_monotone_for_positive_contributions(data):
    """Non-negative weights and inputs make every per-neuron heatmap non-negative under z+, so the top-k heatmap
    grows pointwise towards the full one: MSE and SMAPE are non-increasing and reach 0 at k = all."""
    model = cnn(positive=True)
    lrp = NeuronLRP(model, composite=composite())
    curve = lrp.selection_curve(data, '2', target=2)
    assert curve.mse.shape == (2, 5) and curve.smape.shape == (2, 5)
    assert bool((curve.mse.diff(dim=1) <= 1e-15 * curve.mse[:, :1]).all())
    assert bool((curve.smape.diff(dim=1) <= 1e-9).all())
    assert float(curve.smape[:, -1].max()) < 1e-8 and float(curve.mse[:, -1].max()) < 1e-25
    # brute force: the curve at k equals the metrics of the top-k explanation computed directly
    for k in (1, 3):
        direct = lrp.explain(data, '2', neurons=curve.order[:, :k], target=2).relevance.sum(dim=1)
        full = lrp.explain(data, '2', target=2).relevance.sum(dim=1)
        assert torch.allclose(curve.mse[:, k - 1], mse(direct, full, per_pair=True), rtol=1e-9)
        assert torch.allclose(curve.smape[:, k - 1], smape(direct, full, per_pair=True), rtol=1e-9)
    saved = type(curve).from_dict(json.loads(json.dumps(curve.to_dict())))
    assert torch.equal(saved.smape, curve.smape) and saved.smallest_k(50.0) == curve.smallest_k(50.0)


def test_selection_curve_warns_when_relevance_bypasses_the_layer():
    model = SmallResNet(widths=(4, 6), batch_norm=False).to(DTYPE).eval()
    x = torch.rand(1, 3, 8, 8, dtype=DTYPE)
    lrp = NeuronLRP(model, composite=composite())
    with pytest.warns(RuntimeWarning, match='bypasses'):
        lrp.selection_curve(x, 'stages.1.body.0', target=lambda out: out)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        curve = lrp.selection_curve(x, 'stages.0', target=lambda out: out)
    assert float(curve.smape[0, -1]) < 1e-8


def test_bilrp_unit_and_inner_neuron_selection():
    model = SmallResNet(widths=(4, 6), batch_norm=False).to(DTYPE).eval()
    torch.manual_seed(2)
    x_a, x_b = torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(2, 3, 8, 8, dtype=DTYPE)
    state = ModelState.capture(model)
    bilrp = BiLRP(model, composite=composite(), similarity='cosine')
    full = bilrp.explain(x_a, x_b, pooling=4)
    all_units = explain_units(bilrp, x_a, x_b, units=list(range(6)), pooling=4)
    assert torch.equal(all_units.relevance, full.relevance)
    all_channels = explain_pair_neurons(bilrp, x_a, x_b, 'stages.0', list(range(4)), pooling=4)
    assert torch.equal(all_channels.relevance, full.relevance)
    assert torch.equal(all_channels.marginal_a, full.marginal_a)
    # top-k units: explicit sum over the chosen units of c * F_m(x) F_m(x')^T
    top = explain_units(bilrp, x_a, x_b, k=2, pooling=4)
    fa, fb = full.factors_a, full.factors_b
    scale = bilrp.similarity.scale(fa.embedding, fb.embedding)
    for pair in range(2):
        contrib = (fa.embedding[pair] * fb.embedding[pair]).abs()
        chosen = contrib.argsort(descending=True)[:2]
        assert top.extras['units'][pair].tolist() == chosen.tolist()
        expected = sum(torch.outer(fa.relevance[pair, m], fb.relevance[pair, m]) for m in chosen) * scale[pair]
        assert torch.allclose(top.relevance[pair], expected, rtol=1e-12, atol=1e-15)
    curve = bilrp_selection_curve(bilrp, x_a, x_b, pooling=4)
    assert curve.smape.shape == (2, 6) and float(curve.mse[:, -1].max()) < 1e-28
    assert torch.allclose(curve.mse[:, 1], mse(top.relevance, full.relevance, per_pair=True), rtol=1e-9)
    # an inner-layer selection only keeps relevance through those channels; channels partition the total
    parts = [explain_pair_neurons(bilrp, x_a, x_b, 'stages.0', [c], pooling=4, marginals=False).relevance
             for c in range(4)]
    assert all(float((p - full.relevance).abs().max()) > 1e-8 for p in parts)
    # the marginal seed of the similarity gives the BiLRP marginal through NeuronLRP (the engine seeds with the
    # partner's unit totals, similarity_target with its embedding: equal up to the conservation gap)
    lrp = NeuronLRP(model, composite=composite())
    marginal = lrp.explain(x_a, 'stages.1', target=similarity_target(bilrp, x_b))
    gap = float((marginal.relevance - full.marginal_a).abs().max() / full.marginal_a.abs().max())
    assert gap < 1e-4
    exact = lrp.explain(x_a, 'stages.1', target=similarity_target(bilrp, x_b, partner_totals=fb.totals))
    assert torch.allclose(exact.relevance, full.marginal_a, rtol=1e-9, atol=1e-14)
    assert state.differences(model) == []


def test_neuron_mask_must_follow_the_composite(data):
    model = cnn()
    state = ModelState.capture(model)
    with NeuronMask(model, '2', [0]), BiLRP(model, composite=composite()) as bilrp:
        with pytest.raises(RuntimeError, match='registered before'):
            bilrp.factors(data)
    assert state.differences(model) == []


def test_critical_path_flows_conserve(tmp_path, data):
    model = cnn()
    lrp = NeuronLRP(model, composite=composite())
    graph = critical_paths(lrp, data, ['6', '0', '2'], target=4, top=3)
    assert graph.layers == ['0', '2', '6'] and graph.n_channels == [6, 5, 10]
    total = graph.output_relevance
    for layer_total in graph.layer_totals():
        assert abs(layer_total - total) <= 1e-6 * abs(total)
    for incoming, outgoing in graph.conservation():
        assert incoming <= 1e-12 * abs(total)
        assert outgoing <= 1e-6 * abs(total)
    # brute force: the flow from top channel v of layer '2' into each node of layer '0' via sliced Zennit runs
    upper_channel = graph.channels[1][0]
    with torch.no_grad():
        act0 = model[:1](data)
        act2 = model[:3](data)
    with Gradient(model=model[3:], composite=composite()) as attributor:
        _, rel2 = attributor(act2, seed_of(4))
    mask = torch.zeros(1, 5, 1, 1, dtype=DTYPE)
    mask[:, upper_channel] = 1.0
    with Gradient(model=model[1:3], composite=composite()) as attributor:
        _, rel0 = attributor(act0, lambda out: rel2 * mask)
    per_channel = rel0.sum(dim=(0, 2, 3))
    top0 = graph.channels[0]
    expected = [float(per_channel[c]) for c in top0] + [float(per_channel.sum() - per_channel[top0].sum())]
    got = [row[0] for row in graph.flows[0]]
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), rtol=1e-9, atol=1e-15)
    # export
    graph.save_json(tmp_path / 'graph.json')
    loaded = CriticalPathGraph.load_json(tmp_path / 'graph.json')
    assert loaded == graph
    nx_graph = graph.to_networkx()
    assert nx_graph.number_of_nodes() == sum(len(c) + 1 for c in graph.channels)
    into = sum(d['flow'] for u, v, d in nx_graph.in_edges('2:' + str(upper_channel), data=True))
    assert abs(into - graph.relevance[1][0]) <= 1e-6 * abs(total)
    chain = graph.critical_chain()
    assert [name for name, _ in chain] == graph.layers


def test_critical_paths_with_every_channel_a_node(data):
    """With ``top`` at least the number of channels, every channel is a node and the ``other`` node stays empty."""
    graph = critical_paths(NeuronLRP(cnn(), composite=composite()), data, ['0', '2'], target=4, top=6)
    assert sorted(graph.channels[1]) == list(range(5)) and len(graph.channels[0]) == 6
    assert len(graph.flows[0]) == 7 and all(len(row) == 6 for row in graph.flows[0])
    assert graph.relevance[1][-1] == 0.0 and all(row[-1] == 0.0 for row in graph.flows[0])
    total = graph.output_relevance
    for incoming, outgoing in graph.conservation():
        assert incoming <= 1e-12 * abs(total) and outgoing <= 1e-6 * abs(total)


def test_reconstruction_shapes_determinism_and_reference(data):
    model = cnn(positive=True)
    state = ModelState.capture(model)
    first = reconstruct(model, data, '2', [0, 4], mode='map', lrp_composite=composite())
    second = reconstruct(model, data, '2', [0, 4], mode='map', lrp_composite=composite())
    assert first.deconv.shape == (2, 2, 3, 8, 8) and first.lrp.shape == (2, 2, 3, 8, 8)
    assert torch.equal(first.deconv, second.deconv) and torch.equal(first.lrp, second.lrp)
    # DeconvNet reference: Zennit's DeconvNet composite on the slice up to the layer, seeded with the channel map
    with Gradient(model=model[:3], composite=DeconvNet()) as attributor:
        _, reference = attributor(data, lambda out: out * neuron_mask(out.shape, [4], dtype=out.dtype))
    assert torch.allclose(first.deconv[:, 1], reference, rtol=1e-12, atol=1e-15)
    # the LRP explanation of the seeded activation conserves it (bias-free, z+)
    assert torch.allclose(first.lrp.sum(dim=(2, 3, 4)), first.activation, rtol=1e-6)
    peak = reconstruct(model, data, '2', [4], mode='max', with_lrp=False)
    with torch.no_grad():
        activation = model[:3](data)[:, 4]
    assert torch.allclose(peak.activation[:, 0], activation.amax(dim=(1, 2)))
    assert peak.lrp is None and peak.deconv.shape == (2, 1, 3, 8, 8)
    assert state.differences(model) == []


def test_clear_errors_and_restoration(data):
    model = cnn()
    state = ModelState.capture(model)
    lrp = NeuronLRP(model, composite=composite())
    with pytest.raises(ValueError, match="unknown layer 'features.3'"):
        lrp.explain(data, 'features.3')
    with pytest.raises(ValueError, match='out of range'):
        lrp.explain(data, '2', neurons=[0, 5])
    with pytest.raises(ValueError, match='out of range'):
        lrp.explain(data, '2', neurons=[-1])
    with pytest.raises(ValueError, match='out of range'):
        lrp.explain(data, '2', neurons=[320], kind='unit')
    with pytest.raises(ValueError, match='out of range'):
        lrp.explain(data, '2', target=10)
    with pytest.raises(ValueError, match='k must be'):
        lrp.selection_curve(data, '2', max_k=6)
    with pytest.raises(ValueError, match='kind'):
        lrp.explain(data, '2', kind='filter')
    with pytest.raises(TypeError, match='integers'):
        lrp.explain(data, '2', neurons=torch.tensor([0.5]))
    with pytest.raises(ValueError, match='unknown layer'):
        reconstruct(model, data, 'conv9', [0])
    with pytest.raises(ValueError, match='out of range'):
        reconstruct(model, data, '2', [7])
    with pytest.raises(ValueError, match='at least two'):
        critical_paths(lrp, data, ['2'])
    with pytest.raises(ValueError, match='unknown layer'):
        NeuronMask(model, 'nope', [0])
    assert state.differences(model) == []


def test_selection_curve_takes_either_exact_path_with_the_same_numbers(data):
    """kind='unit' on a small layer: 80 units against 64 heatmap positions, so patch-major is possible; both exact
    paths give the same curve, and 'auto' picks the cheaper one."""
    model = cnn()
    curves = {method: NeuronLRP(model, composite=composite(), method=method).selection_curve(
        data, '4', target=3, kind='unit') for method in ('batched', 'patches', 'auto')}
    for method in ('patches', 'auto'):
        torch.testing.assert_close(curves[method].mse, curves['batched'].mse, rtol=1e-8, atol=1e-20)
        torch.testing.assert_close(curves[method].smape, curves['batched'].smape, rtol=1e-6, atol=1e-8)
        assert torch.equal(curves[method].order, curves['batched'].order)


def test_neuron_passes_are_chunked_by_the_memory_model(data, monkeypatch):
    from zennit_bilrp.core.memory import ChunkScheduler

    sizes = []
    schedule = ChunkScheduler.next

    def next_chunk(self, remaining):
        size, measure = schedule(self, remaining)
        sizes.append(size)
        return size, measure

    monkeypatch.setattr(ChunkScheduler, 'next', next_chunk)
    model = cnn()
    reference = NeuronLRP(model, composite=composite(), chunk_size=1).neuron_heatmaps(data, '2', list(range(5)),
                                                                                      target=3)
    sizes.clear()
    heatmaps = NeuronLRP(model, composite=composite()).neuron_heatmaps(data, '2', list(range(5)), target=3)
    assert sizes[:2] == [2, 3]  # a trial chunk of 2; the next trial (4) would not fit the 3 left, so bounded by it
    sizes.clear()
    NeuronLRP(model, composite=composite(), memory_budget=1).neuron_heatmaps(data, '2', list(range(5)), target=3)
    assert sizes == [2, 1, 1, 1]  # twice the first trial's peak exceeds one byte: one at a time after it
    torch.testing.assert_close(heatmaps, reference, rtol=1e-10, atol=1e-14)


def test_neuron_lrp_runs_the_engines_guards(data):
    model = cnn()
    lrp = NeuronLRP(model, composite=composite())
    with torch.inference_mode(), pytest.raises(RuntimeError, match='inference_mode'):
        lrp.explain(data, '2', neurons=[0], target=1)
    with pytest.raises(TypeError, match=r'composite instance, got the class EpsilonPlus'):
        NeuronLRP(model, composite=EpsilonPlus)

    class InlineResidual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4, bias=False))

        def forward(self, x):
            return self.head(self.conv(x) + x)

    residual = InlineResidual().to(DTYPE).eval()
    state = ModelState.capture(residual)
    with pytest.raises(TypeError, match='adds two input-dependent tensors'):
        NeuronLRP(residual, composite=composite()).explain(data, 'conv', neurons=[0], target=1)
    assert state.differences(residual) == []
    NeuronLRP(residual, composite=composite(), strict=False).explain(data, 'conv', neurons=[0], target=1)
