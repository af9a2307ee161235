"""Cheaper BiLRP estimators against exact BiLRP, and the error metrics."""
import math

import pytest
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus

from zennit_bilrp import BilinearSimilarity, BiLRP
from zennit_bilrp.core.results import Factors
from zennit_bilrp.models.small_resnet import SmallResNet, mlp
from zennit_bilrp.scale.approximations import (
    approximate,
    explain_at_layer,
    inclusion_probabilities,
    project,
    sample_units,
    select_from_factors,
    select_units,
    systematic_sample,
    unit_contributions,
)
from zennit_bilrp.scale.metrics import compare, mse, relative_frobenius, smape, topk_overlap, topk_rank_correlation

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures('single_thread')


def composite():
    return EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])


@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8), embedding_dim=10).to(DTYPE).eval()
    gen = torch.Generator().manual_seed(1)
    x_a, x_b = torch.rand(2, 3, 8, 8, generator=gen, dtype=DTYPE), torch.rand(2, 3, 8, 8, generator=gen, dtype=DTYPE)
    exact = {}
    for sim in ('dot', 'cosine'):
        with BiLRP(model, composite=composite(), similarity=sim) as bilrp:
            exact[sim] = bilrp.explain(x_a, x_b, pooling=4, marginals=False)
    return model, x_a, x_b, exact


def test_select_units_by_count_and_threshold():
    c = torch.tensor([0.1, -0.5, 0.3, 0.0, 0.1])
    assert select_units(c, k=2).tolist() == [1, 2]
    # |c| = .1 .5 .3 0 .1, total 1.0: 50% needs 1 unit, 80% two, 90% three
    assert select_units(c, threshold=0.5).tolist() == [1]
    assert select_units(c, threshold=0.8).tolist() == [1, 2]
    assert select_units(c, threshold=0.85).tolist() == [1, 2, 0]
    batch = torch.stack([c, torch.tensor([1.0, 0, 0, 0, 0])])
    assert select_units(batch, threshold=0.8).tolist() == [[1, 2], [0, 1]]  # the most any row needs
    for bad in ({}, {'k': 2, 'threshold': 0.5}, {'k': 0}, {'k': 6}, {'threshold': 1.5}):
        with pytest.raises(ValueError):
            select_units(c, **bad)


@pytest.mark.parametrize('sim', ['dot', 'cosine'])
def test_selection_all_units_is_exact_and_subset_matches_factors(setup, sim):
    model, x_a, x_b, exact = setup
    with BiLRP(model, composite=composite(), similarity=sim) as bilrp:
        full = approximate(bilrp, x_a, x_b, k=10, mode='select', pooling=4)
        torch.testing.assert_close(full.relevance, exact[sim].relevance, rtol=1e-10, atol=1e-12)
        assert torch.allclose(full.coverage, torch.ones(2, dtype=DTYPE))
        assert float(full.error_estimate.abs().max()) < 1e-12
        thr = approximate(bilrp, x_a, x_b, mode='select', threshold=1.0, pooling=4)
        torch.testing.assert_close(thr.relevance, exact[sim].relevance, rtol=1e-10, atol=1e-12)
        part = approximate(bilrp, x_a, x_b, k=3, mode='select', pooling=4)
    fa, fb = exact[sim].factors_a, exact[sim].factors_b
    contrib = unit_contributions(fa.embedding, fb.embedding, sim)
    assert torch.allclose(contrib.sum(1), exact[sim].similarity)
    scale = exact[sim].similarity / (fa.embedding * fb.embedding).sum(1)
    for b in range(2):
        units = contrib[b].abs().argsort(descending=True)[:3]
        assert sorted(part.units[b].tolist()) == sorted(units.tolist())
        expected = scale[b] * torch.einsum('mp,mq->pq', fa.relevance[b, units], fb.relevance[b, units])
        torch.testing.assert_close(part.relevance[b], expected, rtol=1e-10, atol=1e-12)
        share = contrib[b].abs()[units].sum() / contrib[b].abs().sum()
        assert math.isclose(float(part.coverage[b]), float(share), rel_tol=1e-12)


@pytest.mark.parametrize('sim', ['dot', 'cosine'])
def test_selection_from_factors_equals_selection_by_propagation(setup, sim):
    """One unit selection: ``select_from_factors`` on all-unit factors and ``approximate(mode='select')``, which
    propagates only the chosen units, agree on units, relevance, coverage and error estimate."""
    model, x_a, x_b, exact = setup
    fa, fb = exact[sim].factors_a, exact[sim].factors_b
    with BiLRP(model, composite=composite(), similarity=sim) as bilrp:
        for kwargs in ({'k': 3}, {'threshold': 0.8}, {'units': torch.tensor([4, 0])}):
            direct = approximate(bilrp, x_a, x_b, mode='select', pooling=4, **kwargs)
            cached = select_from_factors(fa, fb, sim, **kwargs)
            assert torch.equal(cached.units, direct.units) and cached.passes == direct.passes
            torch.testing.assert_close(cached.relevance, direct.relevance, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(cached.coverage, direct.coverage, rtol=1e-12, atol=0)
            torch.testing.assert_close(cached.error_estimate, direct.error_estimate, rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(cached.similarity, exact[sim].similarity)
    with pytest.raises(ValueError, match='factors of all units'):
        select_from_factors(Factors(fa.embedding, fa.relevance[:, :2], fa.grid, torch.tensor([0, 1])), fb, sim, k=1)
    with pytest.raises(ValueError, match='units must be'):
        select_from_factors(fa, fb, sim, units=torch.tensor([10]))
    with pytest.raises(ValueError, match='diagonal similarity'):
        select_from_factors(fa, fb, BilinearSimilarity(torch.eye(10, dtype=DTYPE)), k=2)


def test_inclusion_probabilities():
    a = torch.tensor([[10.0, 1, 1, 2, 0, 6], [1, 1, 1, 1, 1, 1]])
    pi = inclusion_probabilities(a, 3)
    torch.testing.assert_close(pi.sum(1), torch.full((2,), 3.0, dtype=DTYPE))
    # unit 0 and 5 are certain; the remaining slot is shared proportionally by 1, 1, 2
    torch.testing.assert_close(pi[0], torch.tensor([1, 0.25, 0.25, 0.5, 0, 1], dtype=DTYPE))
    torch.testing.assert_close(pi[1], torch.full((6,), 0.5, dtype=DTYPE))


def test_systematic_sampling_is_unbiased_by_enumeration():
    """Integrate the weights over the uniform offset exactly: E[weight_m] = 1 for every contributing unit."""
    gen = torch.Generator().manual_seed(3)
    contrib = torch.randn(3, 12, generator=gen, dtype=DTYPE) ** 3
    contrib[0, 4] = 0.0
    for k in (1, 4, 7):
        pi = inclusion_probabilities(contrib.abs(), k)
        for b in range(3):
            cum = torch.cat([torch.zeros(1, dtype=DTYPE), pi[b].cumsum(0)])
            points = torch.unique(torch.cat([torch.tensor([0.0, 1.0], dtype=DTYPE), cum - torch.floor(cum)]))
            mids, lengths = (points[1:] + points[:-1]) / 2, points[1:] - points[:-1]
            expected_weight = torch.zeros(12, dtype=DTYPE)
            for mid, length in zip(mids, lengths):
                if length < 1e-9:  # rounding artifacts of cumulative sums near integers (measure ~1e-16)
                    continue
                mask = systematic_sample(pi[b:b + 1], mid[None])[0] & (pi[b] > 0)
                assert int(mask.sum()) == k or int((pi[b] > 0).sum()) < k
                expected_weight += length * torch.where(mask, 1 / pi[b], torch.zeros_like(pi[b]))
            nonzero = pi[b] > 0
            torch.testing.assert_close(expected_weight[nonzero], torch.ones(int(nonzero.sum()), dtype=DTYPE))
            assert int(nonzero.sum()) == int((contrib[b] != 0).sum())


def test_multinomial_weights_are_unbiased():
    gen = torch.Generator().manual_seed(4)
    contrib = torch.rand(1, 8, generator=gen, dtype=DTYPE) + 0.1
    total = torch.zeros(8, dtype=DTYPE)
    runs = 4000
    for _ in range(runs):
        units, weights, _ = sample_units(contrib, 4, scheme='multinomial', keep=1, generator=gen)
        total.index_add_(0, units[0], weights[0])
        assert weights[0, 0] == 1.0 and units[0, 0] == int(contrib.argmax())
    # standard error of the mean weight is below 0.03 here; 5 sigma
    torch.testing.assert_close(total / runs, torch.ones(8, dtype=DTYPE), atol=0.15, rtol=0)


@pytest.mark.parametrize('scheme', ['systematic', 'multinomial'])
def test_sampling_estimate_uses_engine_factors(setup, scheme):
    model, x_a, x_b, exact = setup
    ex = exact['cosine']
    with BiLRP(model, composite=composite(), similarity='cosine') as bilrp:
        est = approximate(bilrp, x_a, x_b, k=4, mode='sample', scheme=scheme, keep=1, pooling=4, seed=7)
        full = approximate(bilrp, x_a, x_b, k=10, mode='sample', scheme=scheme, keep=9, pooling=4, seed=7)
    torch.testing.assert_close(full.relevance, ex.relevance, rtol=1e-10, atol=1e-12)
    contrib = unit_contributions(ex.factors_a.embedding, ex.factors_b.embedding, 'cosine')
    units, weights, _ = sample_units(contrib, 4, scheme=scheme, keep=1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(units, est.units)  # integer indices: exact
    torch.testing.assert_close(weights, est.weights, rtol=1e-12, atol=0)  # float weights: last bits may differ
    scale = ex.similarity / (ex.factors_a.embedding * ex.factors_b.embedding).sum(1)
    for b in range(2):
        fa, fb = ex.factors_a.relevance[b, units[b]], ex.factors_b.relevance[b, units[b]]
        expected = scale[b] * torch.einsum('m,mp,mq->pq', weights[b], fa, fb)
        torch.testing.assert_close(est.relevance[b], expected, rtol=1e-10, atol=1e-12)
    assert est.error_estimate.shape == (2,) and bool((est.error_estimate >= 0).all())


@pytest.mark.parametrize('sim', ['dot', 'cosine', 'bilinear'])
def test_full_rank_orthogonal_projection_is_exact(setup, sim):
    model, x_a, x_b, exact = setup
    if sim == 'bilinear':
        weight = torch.randn(10, 10, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
        similarity = BilinearSimilarity(weight)
        with BiLRP(model, composite=composite(), similarity=similarity) as bilrp:
            reference = bilrp.explain(x_a, x_b, pooling=4, marginals=False).relevance
    else:
        similarity, reference = sim, exact[sim].relevance
    with BiLRP(model, composite=composite(), similarity=similarity) as bilrp:
        est = approximate(bilrp, x_a, x_b, k=10, mode='orthogonal', pooling=4, seed=0)
        torch.testing.assert_close(est.relevance, reference, rtol=1e-9, atol=1e-12)
        permuted = math.sqrt(10) * torch.eye(10, dtype=DTYPE)[[3, 1, 0, 2, 4, 5, 6, 7, 9, 8]]
        basis = project(bilrp, x_a, x_b, 10, directions=permuted, pooling=4)
        torch.testing.assert_close(basis.relevance, reference, rtol=1e-9, atol=1e-12)
        for kind in ('gaussian', 'sign'):
            small = approximate(bilrp, x_a, x_b, k=3, mode=kind, pooling=4, seed=1)
            assert small.relevance.shape == reference.shape and small.passes == 3
        if sim == 'bilinear':
            with pytest.raises(ValueError, match='diagonal similarity'):
                approximate(bilrp, x_a, x_b, k=3, mode='select', pooling=4)


@pytest.mark.parametrize('two_tower', [False, True])
def test_estimators_on_mlp_towers_reach_exact_bilrp(two_tower):
    """Full-budget selection and full-rank orthogonal projection equal exact BiLRP with a shared encoder (one
    forward for both inputs) and with two towers (one forward each)."""
    torch.manual_seed(8)
    model, model_b = mlp((6, 12, 5)).to(DTYPE).eval(), mlp((6, 12, 5)).to(DTYPE).eval()
    x_a, x_b = torch.rand(3, 6, dtype=DTYPE), torch.rand(3, 6, dtype=DTYPE)
    with BiLRP(model, composite=EpsilonPlus(), similarity='cosine', model_b=model_b if two_tower else None) as bilrp:
        exact = bilrp.explain(x_a, x_b, marginals=False)
        selected = approximate(bilrp, x_a, x_b, k=5, mode='select')
        projected = approximate(bilrp, x_a, x_b, k=5, mode='orthogonal', seed=0)
    torch.testing.assert_close(selected.relevance, exact.relevance, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(projected.relevance, exact.relevance, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(selected.similarity, exact.similarity)


def test_explain_at_layer_matches_split_model():
    torch.manual_seed(6)
    model = mlp((6, 12, 12, 5)).to(DTYPE).eval()
    x_a, x_b = torch.rand(3, 6, dtype=DTYPE), torch.rand(3, 6, dtype=DTYPE)
    result = explain_at_layer(model, '1', x_a, x_b, composite=EpsilonPlus(), similarity='cosine')
    tail = torch.nn.Sequential(*list(model)[2:])
    with torch.no_grad():
        f_a, f_b = model[:2](x_a), model[:2](x_b)
    with BiLRP(tail, composite=EpsilonPlus(), similarity='cosine') as bilrp:
        expected = bilrp.explain(f_a, f_b, marginals=False)
    torch.testing.assert_close(result.relevance, expected.relevance, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.similarity, expected.similarity)
    assert result.extras['feature_shape'] == (12,)
    assert [name for name, _ in model.named_modules()] == ['', '0', '1', '2', '3', '4']
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match='unknown layer'):
        explain_at_layer(model, 'nope', x_a, x_b, composite=EpsilonPlus())


def test_bad_arguments(setup):
    model, x_a, x_b, _ = setup
    with BiLRP(model, composite=composite()) as bilrp:
        with pytest.raises(ValueError, match='unknown mode'):
            approximate(bilrp, x_a, x_b, k=2, mode='magic')
        with pytest.raises(ValueError, match='batch sizes differ'):
            approximate(bilrp, x_a, x_b[:1], k=2)
        with pytest.raises(ValueError, match='units must be'):
            approximate(bilrp, x_a, x_b, mode='select', units=torch.tensor([0, 10]))
        with pytest.raises(ValueError, match="only with mode 'select'"):
            approximate(bilrp, x_a, x_b, k=2, units=torch.tensor([0, 1]))
        with pytest.raises(ValueError, match='needs'):
            approximate(bilrp, x_a, x_b, mode='gaussian')
    with pytest.raises(ValueError, match='scheme'):
        sample_units(torch.rand(1, 4), 2, scheme='stratified')


def test_metrics_by_hand():
    ref = torch.tensor([[1.0, 0.0], [2.0, -1.0]])
    est = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    ref, est = ref.double(), est.double()
    assert math.isclose(relative_frobenius(est, ref), math.sqrt(5 / 6))
    assert math.isclose(mse(est, ref), 5 / 4)
    # terms: 0, 0/0 -> 0, 1/1.5, 2/1 -> 100/4 * (2/3 + 2)
    assert math.isclose(smape(est, ref), 25 * (2 / 3 + 2))
    assert smape(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_frobenius(ref, ref) == 0.0
    values = torch.arange(10.0)
    assert math.isclose(topk_rank_correlation(values * 2 + 1, values, k=5), 1.0)
    assert math.isclose(topk_rank_correlation(-values, values, k=5), -1.0)
    assert topk_overlap(values, values, k=3) == 1.0 and topk_overlap(-values, values, k=3) == 0.0
    batch = torch.stack([ref, 2 * ref])
    per_pair = relative_frobenius(torch.stack([est, 2 * ref]), batch, per_pair=True)
    assert per_pair.shape == (2,) and per_pair[1] == 0
    assert set(compare(est[None], ref[None], k=3)) == {'rel_fro', 'mse', 'smape', 'topk_spearman', 'topk_overlap'}
    with pytest.raises(ValueError, match='shape'):
        mse(torch.zeros(3), torch.zeros(4))


def test_estimators_take_the_cheaper_exact_path(setup, monkeypatch):
    """With more directions than patches (k = 40 > P = 4) the engine's propagate_pair takes the patch-major path
    (P second-order passes, then F^T p_j) instead of k LRP passes; the estimate is the same either way."""
    from zennit_bilrp.core.propagation import Propagation

    model, x_a, x_b, _ = setup
    paths = []
    original = Propagation.transpose

    def recording(self, pool, units, desc='BiLRP'):
        transpose = original(self, pool, units, desc)
        if transpose is not None:
            paths.append(self.last_plan.path)
        return transpose

    monkeypatch.setattr(Propagation, 'transpose', recording)
    estimates = {}
    for method in ('auto', 'batched'):
        with BiLRP(model, composite=composite(), similarity='cosine', method=method) as bilrp:
            estimates[method] = approximate(bilrp, x_a, x_b, k=40, mode='gaussian', pooling=4, seed=3).relevance
    assert paths == ['patches']
    torch.testing.assert_close(estimates['auto'], estimates['batched'], rtol=1e-10, atol=1e-13)
