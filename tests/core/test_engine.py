"""The BiLRP engine against brute-force references, conservation, and model restoration."""
import copy
import warnings

import pytest
import torch
from torchvision.models import resnet18
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus, LayerMapComposite, layer_map_base
from zennit.rules import ZPlus
from zennit.torchvision import ResNetCanonizer
from zennit.types import Convolution

from zennit_bilrp import BilinearSimilarity, BiLRP, Factors, ModelState, Pooling, pairwise_relevance
from zennit_bilrp.models.small_resnet import SmallResNet, mlp

from helpers.reference import bilrp_full, per_unit_explanations, pool_full

DTYPE = torch.float64


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max())


def randomize_batch_norm(model, seed=0, eps=1e-12):
    """Give BatchNorm non-trivial statistics so that merging it matters.

    The per-unit reference loop runs Zennit's BatchNorm merge as is, which leaves each merged layer computing
    ``x / sqrt(1 + eps)``; the engine removes that factor (see ``test_canonized_embedding_is_exact``). A tiny
    ``eps`` keeps the reference free of it.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = eps
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def small_cnn():
    torch.manual_seed(1)
    return randomize_batch_norm(SmallResNet(widths=(4, 8), embedding_dim=6)).to(DTYPE).eval()


def resnet18_head(h=12):
    torch.manual_seed(2)
    model = resnet18()
    model.fc = torch.nn.Linear(512, h)
    return randomize_batch_norm(model).to(DTYPE).eval()


ARCHITECTURES = {
    # name: (model factory, composite factory, input shape)
    'mlp': (lambda: mlp((10, 16, 16, 7)).to(DTYPE).eval(), lambda m: EpsilonPlus(), (10,)),
    'small_cnn_bn_skip': (small_cnn, lambda m: EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]), (3, 8, 8)),
    'resnet18': (resnet18_head, lambda m: EpsilonPlus(canonizers=[ResNetCanonizer()]), (3, 32, 32)),
}


@pytest.mark.parametrize('similarity', ['dot', 'cosine'])
@pytest.mark.parametrize('name', list(ARCHITECTURES))
def test_engine_matches_per_unit_loop(name, similarity):
    make_model, make_composite, shape = ARCHITECTURES[name]
    model = make_model()
    torch.manual_seed(3)
    x_a, x_b = torch.rand(2, *shape, dtype=DTYPE), torch.rand(2, *shape, dtype=DTYPE)
    emb, expl = per_unit_explanations(model, make_composite(model), torch.cat([x_a, x_b]))
    scale = None
    if similarity == 'cosine':
        scale = 1.0 / (emb[:2].norm(dim=1) * emb[2:].norm(dim=1))
    full = bilrp_full(expl[:2], expl[2:], scale=scale)
    if len(shape) == 1:
        pooling, expected = Pooling(sum_channels=False), full
    else:
        patch = 4 if shape[1] == 8 else 8
        pooling, expected = patch, pool_full(full, shape, shape, patch)
    with BiLRP(model, composite=make_composite(model), similarity=similarity) as bilrp:
        result = bilrp(x_a, x_b, pooling=pooling)
    assert result.relevance.shape == expected.shape
    assert relative_error(result.relevance, expected) < 1e-5
    assert relative_error(result.marginal_a, full.sum(dim=2).reshape(2, *shape)) < 1e-5
    assert relative_error(result.marginal_b, full.sum(dim=1).reshape(2, *shape)) < 1e-5


def test_methods_agree():
    model = small_cnn()
    x_a, x_b = torch.rand(3, 3, 8, 8, dtype=DTYPE), torch.rand(3, 3, 8, 8, dtype=DTYPE)
    results = []
    for method, chunk in [('batched', 4), ('batched', None), ('replicate', 4), ('loop', None), ('patches', None),
                          ('patches', 3), ('auto', None)]:
        composite = EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])
        with BiLRP(model, composite=composite, method=method, chunk_size=chunk) as bilrp:
            results.append(bilrp(x_a, x_b, pooling=2))
    for other in results[1:]:
        assert torch.allclose(other.relevance, results[0].relevance, rtol=1e-10, atol=1e-12)
        assert torch.allclose(other.marginal_a, results[0].marginal_a, rtol=1e-10, atol=1e-12)


def test_bilinear_and_two_tower():
    torch.manual_seed(4)
    tower_a, tower_b = mlp((6, 12, 5)).to(DTYPE).eval(), mlp((8, 12, 4)).to(DTYPE).eval()
    weight = torch.randn(5, 4, dtype=DTYPE)
    x_a, x_b = torch.rand(2, 6, dtype=DTYPE), torch.rand(2, 8, dtype=DTYPE)
    emb_a, expl_a = per_unit_explanations(tower_a, EpsilonPlus(), x_a)
    emb_b, expl_b = per_unit_explanations(tower_b, EpsilonPlus(), x_b)
    expected = bilrp_full(expl_a, expl_b, weight=weight)
    with BiLRP(tower_a, composite=EpsilonPlus(), model_b=tower_b, similarity=BilinearSimilarity(weight)) as bilrp:
        result = bilrp(x_a, x_b, pooling=Pooling(sum_channels=False))
    assert relative_error(result.relevance, expected) < 1e-10
    assert torch.allclose(result.similarity, ((emb_a @ weight) * emb_b).sum(1))
    # marginals are exact LRP passes of the partner-weighted relevance
    assert relative_error(result.marginal_a, expected.sum(2)) < 1e-10
    assert relative_error(result.marginal_b, expected.sum(1)) < 1e-10


def test_unequal_input_sizes_with_shared_encoder():
    """Inputs of different sizes cannot share one batch: the engine runs the sides one after the other."""
    model = SmallResNet(widths=(4,), batch_norm=False).to(DTYPE).eval()
    x_a, x_b = torch.rand(1, 3, 8, 8, dtype=DTYPE), torch.rand(1, 3, 12, 12, dtype=DTYPE)
    with BiLRP(model, composite=EpsilonPlus()) as bilrp:
        result = bilrp(x_a, x_b, pooling=4)
        fa, fb = bilrp.factors(x_a, pooling=4), bilrp.factors(x_b, pooling=4)
    assert result.relevance.shape == (1, 4, 9)
    assert torch.allclose(result.relevance, pairwise_relevance(fa, fb, 'dot'), atol=1e-12)
    assert torch.allclose(result.marginal_a.sum(dim=(1, 2, 3)), result.relevance.sum(dim=(1, 2)))
    assert torch.allclose(result.marginal_b.sum(dim=(1, 2, 3)), result.relevance.sum(dim=(1, 2)))


def bias_free_cnn():
    torch.manual_seed(5)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2), torch.nn.Conv2d(8, 16, 3, padding=1, bias=False), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10, bias=False), torch.nn.ReLU(),
    ).to(DTYPE).eval()


def zplus_composite():
    return LayerMapComposite(layer_map=layer_map_base(stabilizer=1e-14) + [
        (Convolution, ZPlus(stabilizer=1e-14)), (torch.nn.Linear, ZPlus(stabilizer=1e-14)),
    ])


def test_conservation_bias_free_zplus():
    model = bias_free_cnn()
    x_a, x_b = torch.rand(3, 3, 8, 8, dtype=DTYPE), torch.rand(3, 3, 8, 8, dtype=DTYPE)
    with BiLRP(model, composite=zplus_composite(), similarity='dot') as bilrp:
        result = bilrp(x_a, x_b, pooling=2)
    assert (result.similarity > 0).all()
    assert float((result.delta.abs() / result.similarity.abs()).max()) < 1e-6
    # per-unit explanations conserve, so the factor totals are the embedding values
    assert torch.allclose(result.factors_a.totals, result.factors_a.embedding, rtol=1e-9, atol=1e-12)


def test_marginal_equals_single_lrp_pass_of_similarity():
    """With exact conservation, the marginal of x is one LRP pass of y with output relevance phi(x) * phi(x')."""
    from zennit.attribution import Gradient

    model = bias_free_cnn()
    x_a, x_b = torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(2, 3, 8, 8, dtype=DTYPE)
    with BiLRP(model, composite=zplus_composite(), similarity='dot') as bilrp:
        result = bilrp(x_a, x_b, pooling=4)
    with torch.no_grad():
        emb_b = model(x_b)
    with Gradient(model=model, composite=zplus_composite()) as attributor:
        _, single = attributor(x_a, lambda out: out * emb_b)
    assert relative_error(result.marginal_a, single) < 1e-6
    # and the pooled marginal is the row sum of the pooled pairwise relevance
    pooled = Pooling(patch=4)(result.marginal_a)
    assert torch.allclose(pooled, result.relevance.sum(dim=2), rtol=1e-9, atol=1e-12)


def test_conservation_resnet18():
    torch.manual_seed(6)
    model = resnet18()
    model.fc = torch.nn.Identity()
    model = model.to(DTYPE).eval()
    x_a, x_b = torch.rand(1, 3, 32, 32, dtype=DTYPE), torch.rand(1, 3, 32, 32, dtype=DTYPE)
    composite = EpsilonPlus(zero_params=['bias'], canonizers=[ResNetCanonizer()])
    state = ModelState.capture(model)
    with BiLRP(model, composite=composite, similarity='dot') as bilrp:
        result = bilrp(x_a, x_b, pooling=8, marginals=False)
    assert float((result.delta.abs() / result.similarity.abs()).max()) < 1e-3
    assert state.differences(model) == []


@pytest.mark.parametrize('head', ['avg', 'sum', 'max'])
def test_heads_match_pooling_layers(head):
    """A feature-map model with a head equals the same model ending in the pooling layer (as an LRP layer)."""
    torch.manual_seed(7)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1, bias=False), torch.nn.ReLU()).to(DTYPE).eval()
    pool_layer = {'avg': torch.nn.AdaptiveAvgPool2d(1), 'max': torch.nn.AdaptiveMaxPool2d(1),
                  'sum': torch.nn.LPPool2d(1, 4)}[head]
    full = torch.nn.Sequential(body, pool_layer, torch.nn.Flatten()).eval()
    x_a, x_b = torch.rand(2, 3, 4, 4, dtype=DTYPE), torch.rand(2, 3, 4, 4, dtype=DTYPE)
    with BiLRP(body, composite=zplus_composite(), head=head) as bilrp:
        result = bilrp(x_a, x_b, pooling=2)
    emb = full(torch.cat([x_a, x_b])).detach()
    assert torch.allclose(result.similarity, (emb[:2] * emb[2:]).sum(1))
    assert float((result.delta.abs() / result.similarity.abs()).max()) < 1e-9  # every head conserves
    if head == 'avg':
        with BiLRP(full, composite=zplus_composite(), head='none') as bilrp:
            reference = bilrp(x_a, x_b, pooling=2)
        assert relative_error(result.relevance, reference.relevance) < 1e-9


def test_factors_pairing_all_pairs():
    model = small_cnn()
    x = torch.rand(3, 3, 8, 8, dtype=DTYPE)
    with BiLRP(model, composite=EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]), similarity='cosine') as bilrp:
        factors = bilrp.factors(x, pooling=4)
        direct = bilrp(x[[0, 0, 1]], x[[1, 2, 2]], pooling=4, marginals=False)
    table = pairwise_relevance(factors, factors, 'cosine', all_pairs=True)
    assert table.shape == (3, 3, 4, 4)
    for k, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)]):
        assert torch.allclose(table[i, j], direct.relevance[k], atol=1e-12)
    both = Factors.cat([factors[0], factors[1:]])
    assert torch.equal(both.relevance, factors.relevance)


def test_units_subset_and_top_pairs():
    model = mlp((6, 8, 5)).to(DTYPE).eval()
    x_a, x_b = torch.rand(1, 6, dtype=DTYPE), torch.rand(1, 6, dtype=DTYPE)
    with BiLRP(model, composite=EpsilonPlus()) as bilrp:
        full = bilrp(x_a, x_b, pooling=Pooling(sum_channels=False))
        units = torch.tensor([1, 3])
        fa, fb = bilrp.factors(x_a, units=units), bilrp.factors(x_b, units=units)
    partial = pairwise_relevance(fa, fb)
    expected = torch.einsum('bmp,bmq->bpq', full.factors_a.relevance[:, units], full.factors_b.relevance[:, units])
    assert torch.allclose(partial, expected)
    top = full.top_pairs(k=5, by='abs')
    flat = full.relevance.reshape(-1)
    order = flat.abs().argsort(descending=True)[:5]
    assert torch.equal(top.index_a[0] * 6 + top.index_b[0], order)
    assert torch.equal(top.values[0], flat[order])


def test_float32_close_to_float64():
    model = small_cnn()
    x_a, x_b = torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(2, 3, 8, 8, dtype=DTYPE)
    results = {}
    for dtype in (torch.float64, torch.float32):
        model_t = copy.deepcopy(model).to(dtype)
        with BiLRP(model_t, composite=EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])) as bilrp:
            results[dtype] = bilrp(x_a.to(dtype), x_b.to(dtype), pooling=4).relevance
    assert relative_error(results[torch.float32].double(), results[torch.float64]) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_matches_cpu():
    model = small_cnn()
    x_a, x_b = torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(2, 3, 8, 8, dtype=DTYPE)
    out = {}
    for device in ('cpu', 'cuda'):
        model_d = copy.deepcopy(model).to(device)
        with BiLRP(model_d, composite=EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])) as bilrp:
            out[device] = bilrp(x_a.to(device), x_b.to(device), pooling=4).relevance.cpu()
    assert relative_error(out['cuda'], out['cpu']) < 1e-8


def test_canonized_embedding_is_exact():
    """Merged BatchNorm must not rescale the embedding (Zennit's merge leaves x / sqrt(1 + eps))."""
    torch.manual_seed(8)
    model = randomize_batch_norm(SmallResNet(widths=(4, 8), embedding_dim=6), eps=1e-3).to(DTYPE).eval()
    x = torch.rand(2, 3, 8, 8, dtype=DTYPE)
    with torch.no_grad():
        expected = model(x)
    eps_before = [m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with BiLRP(model, composite=EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])) as bilrp:
        factors = bilrp.factors(x)
    assert relative_error(factors.embedding, expected) < 1e-12
    assert [m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == eps_before


def test_amplified_relevance_warns():
    """A vanishing LRP denominator amplifies relevance; the engine says so instead of staying silent.

    Built so that the amplification is known exactly: one linear unit whose kept bias nearly cancels its weighted
    input, ``z = w.x + b = 1e-3 w.x``. LRP-epsilon with the bias kept gives the input ``R_in = (w.x / z) R_out``,
    i.e. 1000 times the unit's relevance, on both sides of the dot product: ``sum R = 1e6 y``. (On the trained
    synthetic encoders, float32 cancellation in near-zero denominators gives ratios of 5-50 that differ between
    machines; that is a measurement, not a test.)
    """
    from zennit.composites import EpsilonPlus

    from zennit_bilrp.core.results import ConservationWarning

    x = torch.tensor([[0.5, 1.0, 1.5, 2.0]], dtype=torch.float64)
    layer = torch.nn.Linear(4, 1).double()
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(-(1 - 1e-3) * float(x.sum()))
    model = torch.nn.Sequential(layer).eval()
    with pytest.warns(ConservationWarning, match='amplify relevance'):
        result = BiLRP(model, composite=EpsilonPlus(epsilon=1e-12))(x, x.clone(), marginals=False)
    ratio = float(result.relevance.sum() / result.similarity.sum())
    assert ratio == pytest.approx(1e6, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter('error', ConservationWarning)  # without the cancelling bias: no warning
        with torch.no_grad():
            layer.bias.zero_()
        BiLRP(model, composite=EpsilonPlus(epsilon=1e-12))(x, x.clone(), marginals=False)
