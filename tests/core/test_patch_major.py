"""The patch-major path (one second-order pass per patch) against the unit-major path (one LRP pass per unit).

Both paths compute the same factors F(x) = Pool M(x) diag(phi(x)); every test compares them in float64 to 1e-10
relative, for every composite, the fast rules, the rule shortcuts, torchvision models, similarities, two towers,
unit subsets, marginals and all public calls; then the automatic choice, memory chunking and the fall-back when the
LRP pass is not differentiable in its seed.
"""
import pytest
import torch
import torchvision
from zennit.composites import EpsilonGammaBox, EpsilonPlus
from zennit.rules import Epsilon

import zennit_bilrp.core.memory as memory_module
import zennit_bilrp.core.patches as patches_module
from zennit_bilrp import BilinearSimilarity, BiLRP, Pooling
from zennit_bilrp.core.patches import PatchPasses
from zennit_bilrp.core.plan import NotDifferentiableError, PassCosts, PathFallbackWarning, Plan, choose
from zennit_bilrp.core.propagation import Propagation
from zennit_bilrp.lrp.canonizers import canonizers_for
from zennit_bilrp.lrp.composites import BiLRPGamma, DepthGamma
from zennit_bilrp.models.small_resnet import SmallResNet, mlp

from helpers.models import random_batch_norm_statistics
from helpers.paper_rules import SmallVGG

DTYPE = torch.float64
TOL = 1e-10

pytestmark = pytest.mark.usefixtures('single_thread')


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max())


def assert_same(actual, expected, tol=TOL):
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < tol


def both_paths(make_engine, call):
    """``call(engine)`` with ``method='batched'`` (unit-major) and ``method='patches'``."""
    return [call(make_engine(method)) for method in ('batched', 'patches')]


def compare_explain(make_engine, x_a, x_b, pooling, marginals=True):
    units, patches = both_paths(make_engine, lambda e: e.explain(x_a, x_b, pooling=pooling, marginals=marginals))
    assert_same(patches.relevance, units.relevance)
    assert_same(patches.factors_a.relevance, units.factors_a.relevance)
    assert_same(patches.factors_b.relevance, units.factors_b.relevance)
    torch.testing.assert_close(patches.similarity, units.similarity, rtol=1e-12, atol=0)
    if marginals:
        assert_same(patches.marginal_a, units.marginal_a)
        assert_same(patches.marginal_b, units.marginal_b)
    return units, patches


def resnet(name, h, seed=0):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)()
    model.fc = torch.nn.Linear(model.fc.in_features, h)
    return random_batch_norm_statistics(model, affine=True, bias=True).to(DTYPE).eval()


def images(n=1, size=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=gen, dtype=DTYPE),
            torch.rand(n, 3, size, size, generator=gen, dtype=DTYPE))


def small_cnn():
    torch.manual_seed(3)
    return random_batch_norm_statistics(SmallResNet(widths=(4, 8), embedding_dim=12), affine=True).to(DTYPE).eval()


COMPOSITES = {
    'epsilon_plus': lambda model: EpsilonPlus(canonizers=canonizers_for(model)),
    'epsilon_gamma_box': lambda model: EpsilonGammaBox(low=0.0, high=1.0, canonizers=canonizers_for(model)),
    'depth_gamma_fast': lambda model: DepthGamma(canonizers=canonizers_for(model)),
    'depth_gamma_zennit_rules': lambda model: DepthGamma(canonizers=canonizers_for(model), fast=False),
    'depth_gamma_zbox_fast': lambda model: DepthGamma(first='zbox', low=0.0, high=1.0,
                                                      canonizers=canonizers_for(model)),
    'engine_default': lambda model: None,
}


@pytest.mark.parametrize('shortcut', [True, False])
@pytest.mark.parametrize('name', list(COMPOSITES))
def test_composites_and_fast_rules_agree(name, shortcut):
    model = small_cnn()
    x_a, x_b = images(2, 8)

    def engine(method):
        return BiLRP(model, composite=COMPOSITES[name](model), method=method, shortcut=shortcut)

    compare_explain(engine, x_a, x_b, pooling=4)


@pytest.mark.parametrize('similarity', ['dot', 'cosine', 'bilinear'])
def test_similarities(similarity):
    model = small_cnn()
    x_a, x_b = images(2, 8)
    if similarity == 'bilinear':
        similarity = BilinearSimilarity(torch.randn(12, 12, generator=torch.Generator().manual_seed(4),
                                                    dtype=DTYPE))

    def engine(method):
        return BiLRP(model, composite=DepthGamma(canonizers=canonizers_for(model)), similarity=similarity,
                     method=method)

    compare_explain(engine, x_a, x_b, pooling=4)


def test_resnet18():
    model = resnet('resnet18', 8)
    x_a, x_b = images(1, 32)

    def engine(method):
        return BiLRP(model, composite=DepthGamma(zero_params=['bias'], canonizers=canonizers_for(model)),
                     similarity='cosine', method=method)

    compare_explain(engine, x_a, x_b, pooling=16)


def test_resnet50_units_subset():
    """ResNet-50 (32x32, float64) once: factors of a unit subset, the patch path computes all rows and selects."""
    model = resnet('resnet50', 24)
    x, _ = images(1, 32)
    units = torch.tensor([0, 5, 23, 7])

    def factors(method):
        engine = BiLRP(model, composite=EpsilonPlus(canonizers=canonizers_for(model)), method=method)
        return engine.factors(x, pooling=16, units=units)

    unit_major, patch_major = both_paths(lambda m: m, factors)
    assert patch_major.relevance.shape == (1, 4, 4)
    assert torch.equal(patch_major.units, units)
    assert_same(patch_major.relevance, unit_major.relevance)


def test_vgg16_flattened_features():
    """torchvision VGG-16 conv features (32x32 input), flattened: h = 512, P = 4 patches; a unit subset for the
    unit-major reference."""
    torch.manual_seed(5)
    model = torchvision.models.vgg16().features.to(DTYPE).eval()
    x, _ = images(1, 32)
    units = torch.tensor([3, 100, 511])

    def factors(method):
        return BiLRP(model, composite=EpsilonPlus(), head='flatten', method=method).factors(x, 16, units=units)

    unit_major, patch_major = both_paths(lambda m: m, factors)
    assert_same(patch_major.relevance, unit_major.relevance)


def test_bilrp_gamma_on_vgg_like_model():
    torch.manual_seed(6)
    model = SmallVGG(width=4, embedding=6, size=32).to(DTYPE).eval()
    x_a, x_b = images(1, 32)
    low, high = torch.zeros(1, 3, 1, 1, dtype=DTYPE), torch.ones(1, 3, 1, 1, dtype=DTYPE)

    def engine(method):
        return BiLRP(model, composite=BiLRPGamma(low=low, high=high), method=method)

    compare_explain(engine, x_a, x_b, pooling=16)


def test_demo_model():
    from zennit_bilrp.models.demo import demo_composite, load_demo_model, load_demo_pair

    model = load_demo_model().to(DTYPE)
    x_a, x_b = (x.to(DTYPE) for x in load_demo_pair((32, 48)))

    def engine(method):
        return BiLRP(model, composite=demo_composite(model), similarity='cosine', method=method)

    compare_explain(engine, x_a, x_b, pooling=16)


def test_two_towers_and_unequal_shapes():
    torch.manual_seed(7)
    tower_a, tower_b = mlp((6, 12, 5)).to(DTYPE).eval(), mlp((8, 12, 4)).to(DTYPE).eval()
    weight = torch.randn(5, 4, dtype=DTYPE)
    x_a, x_b = torch.rand(3, 6, dtype=DTYPE), torch.rand(3, 8, dtype=DTYPE)

    def engine(method):
        return BiLRP(tower_a, composite=EpsilonPlus(), model_b=tower_b, similarity=BilinearSimilarity(weight),
                     method=method)

    compare_explain(engine, x_a, x_b, pooling=Pooling(patch=2, sum_channels=False))
    shared = SmallResNet(widths=(4,), batch_norm=False, embedding_dim=9).to(DTYPE).eval()
    y_a, y_b = torch.rand(1, 3, 8, 8, dtype=DTYPE), torch.rand(1, 3, 12, 12, dtype=DTYPE)

    def shared_engine(method):
        return BiLRP(shared, composite=EpsilonPlus(), method=method)

    compare_explain(shared_engine, y_a, y_b, pooling=4)


def test_different_grids_in_one_joint_pass():
    model = small_cnn()
    x_a, x_b = images(2, 8)

    def engine(method):
        return BiLRP(model, composite=EpsilonPlus(canonizers=canonizers_for(model)), method=method)

    units, patches = both_paths(engine, lambda e: e.explain(x_a, x_b, pooling=4, pooling_b=2))
    assert patches.relevance.shape == (2, 4, 16)
    assert_same(patches.relevance, units.relevance)
    assert_same(patches.marginal_b, units.marginal_b)


def test_propagate_and_propagate_pair_through_factors():
    """K arbitrary multipliers: Pool M(phi * s_k) = s_k^T F, from the P second-order passes."""
    model = small_cnn()
    x_a, x_b = images(2, 8)
    gen = torch.Generator().manual_seed(8)
    mult = torch.randn(30, 12, generator=gen, dtype=DTYPE)
    mult_b = torch.randn(7, 2, 12, generator=gen, dtype=DTYPE)

    def engine(method):
        return BiLRP(model, composite=EpsilonPlus(canonizers=canonizers_for(model)), method=method)

    (emb_u, rel_u), (emb_p, rel_p) = both_paths(engine, lambda e: e.propagate(x_a, mult, pooling=4))
    assert rel_p.shape == (30, 2, 4)
    assert_same(rel_p, rel_u)
    torch.testing.assert_close(emb_p, emb_u)
    pair_u, pair_p = both_paths(engine, lambda e: e.propagate_pair(x_a, x_b, mult, mult_b, pooling=4))
    for actual, expected in zip(pair_p[2:], pair_u[2:]):
        assert_same(actual, expected)
    # unpooled: the engine keeps the unit-major path (P would be the input size)
    unpooled = engine('patches').propagate(x_a, mult[:2], pooling=Pooling(sum_channels=False))[1]
    assert unpooled.shape == (2, 2, 3, 8, 8)


def count_patch_paths(monkeypatch):
    calls = []
    original = Propagation.transpose

    def recording(self, pool, units, desc='BiLRP'):
        transpose = original(self, pool, units, desc)
        if transpose is not None:
            calls.append(self.last_plan)
        return transpose

    monkeypatch.setattr(Propagation, 'transpose', recording)
    return calls


def test_auto_chooses_patches_when_p_is_far_below_h(monkeypatch):
    model = SmallResNet(widths=(4, 8), embedding_dim=64, batch_norm=False).to(DTYPE).eval()
    x_a, x_b = images(1, 8)
    calls = count_patch_paths(monkeypatch)
    bilrp = BiLRP(model, composite=EpsilonPlus())
    plan = bilrp.plan(x_a, x_b, pooling=4)
    assert isinstance(plan, Plan) and plan.path == 'patches' and plan.patches == 4 and plan.units == 64
    assert 'patch-major' in plan.describe()
    auto = bilrp.explain(x_a, x_b, pooling=4)
    assert len(calls) == 1 and calls[0].path == 'patches'
    reference = BiLRP(model, composite=EpsilonPlus(), method='batched').explain(x_a, x_b, pooling=4)
    assert_same(auto.relevance, reference.relevance)


def test_auto_chooses_units_when_h_is_far_below_p(monkeypatch):
    model = SmallResNet(widths=(4,), embedding_dim=3, batch_norm=False).to(DTYPE).eval()
    x_a, x_b = images(1, 8)
    calls = count_patch_paths(monkeypatch)
    bilrp = BiLRP(model, composite=EpsilonPlus())
    assert bilrp.plan(x_a, x_b, pooling=1).path == 'units'
    bilrp.explain(x_a, x_b, pooling=1)
    assert calls == []
    # a unit subset smaller than P goes unit-major even where all units would not
    big = SmallResNet(widths=(4,), embedding_dim=64, batch_norm=False).to(DTYPE).eval()
    assert BiLRP(big, composite=EpsilonPlus()).plan(x_a, pooling=4, units=torch.arange(3)).path == 'units'


def test_choose_cost_model():
    costs = PassCosts(graph=3.0, second_order=1.5)
    assert choose('auto', 2048, 49, costs).path == 'patches'
    assert choose('auto', 10, 49, costs).path == 'units'
    assert choose('batched', 2048, 49, costs).path == 'units'
    assert choose('patches', 10, 49, costs).path == 'patches'
    plan = choose('auto', 2048, 49, costs, differentiable='a rule detaches')
    assert plan.path == 'units' and 'a rule detaches' in plan.reason
    assert plan.cost_patches == pytest.approx(3.0 + 49 * 1.5 + 1.0)
    with pytest.raises(ValueError, match='unknown method'):
        choose('fast', 1, 1)


def test_measured_pass_costs():
    model = SmallResNet(widths=(4, 8), embedding_dim=16, batch_norm=False).to(DTYPE).eval()
    x_a, x_b = images(1, 8)
    plan = BiLRP(model, composite=EpsilonPlus()).plan(x_a, x_b, pooling=4, measure=True)
    assert plan.costs.measured and plan.costs.graph > 0 and plan.costs.second_order > 0
    assert plan.seconds is not None and plan.seconds > 0


def test_memory_chunking_of_second_order_passes(monkeypatch):
    """Fitted chunks (as on CUDA) under a small budget: trial chunks, then the fitted size; same numbers."""
    monkeypatch.setattr(patches_module, 'SINGLE_PATCH_DEVICES', ())
    sizes = []
    original = PatchPasses.second_order

    def recording(self, pooled, r, start, size):
        sizes.append(size)
        return original(self, pooled, r, start, size)

    monkeypatch.setattr(PatchPasses, 'second_order', recording)
    model = small_cnn()
    x_a, x_b = images(2, 16)
    results = {}
    for budget in (1 << 30, 5 << 20):
        sizes.clear()
        bilrp = BiLRP(model, composite=EpsilonPlus(canonizers=canonizers_for(model)), method='patches',
                      memory_budget=budget)
        results[budget] = bilrp.explain(x_a, x_b, pooling=2, marginals=False)
        assert sum(sizes) == 64 and tuple(sizes[:2]) == memory_module.TRIAL_CHUNKS
        results[budget, 'sizes'] = list(sizes)
    assert max(results[5 << 20, "sizes"]) < max(results[1 << 30, "sizes"])
    reference = BiLRP(model, composite=EpsilonPlus(canonizers=canonizers_for(model)), method='batched')
    expected = reference.explain(x_a, x_b, pooling=2, marginals=False).relevance
    for budget in (1 << 30, 5 << 20):
        assert_same(results[budget].relevance, expected)


def test_graph_bytes_are_measured():
    model = small_cnn()
    x, _ = images(2, 8)
    bilrp = BiLRP(model, composite=EpsilonPlus(canonizers=canonizers_for(model)), method='patches')
    with bilrp:
        session = bilrp.open_session(x)
        session.factors(Pooling(patch=4).resolve(x.shape[1:]))
        assert session.graph_bytes > 0 and session.last_plan.path == 'patches'


class _Blocked(torch.autograd.Function):
    """Identity whose derivative is zero (unlike ``detach``, it has a vmap rule, so batched passes still work)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(tensor):
        return tensor.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class DetachedEpsilon(Epsilon):
    """An LRP rule whose relevance is cut off from the seed (not differentiable in it)."""

    def backward(self, module, grad_input, grad_output):
        return super().backward(module, grad_input, tuple(_Blocked.apply(g) for g in grad_output))

    def copy(self):
        return DetachedEpsilon()


class SquashedEpsilon(Epsilon):
    """A rule that is differentiable but not linear in the relevance (it clips negative relevance)."""

    def backward(self, module, grad_input, grad_output):
        return super().backward(module, grad_input, tuple(g.clamp(min=0) for g in grad_output))

    def copy(self):
        return SquashedEpsilon()


def composite_with(rule, names):
    """EpsilonPlus with ``rule`` on the modules ``names`` (Zennit's MixedComposite: the first match wins)."""
    from zennit.composites import MixedComposite, NameMapComposite

    return MixedComposite([NameMapComposite([(names, rule)]), EpsilonPlus()])


@pytest.mark.parametrize('case', ['detached_everywhere', 'detached_in_a_residual_branch', 'not_linear'])
def test_non_differentiable_rules_fall_back(case):
    model = SmallResNet(widths=(4, 8), embedding_dim=32, batch_norm=False).to(DTYPE).eval()
    x_a, x_b = images(1, 8)
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if case == 'detached_everywhere':
        rule, names, match = DetachedEpsilon(), convs[:1], 'not differentiable in its seed'
    elif case == 'detached_in_a_residual_branch':
        rule, names, match = DetachedEpsilon(), convs[-1:], 'linearity check'
    else:
        rule, names, match = SquashedEpsilon(), convs[1:2], 'linearity check'

    def engine(method):
        return BiLRP(model, composite=composite_with(rule.copy(), names), method=method, strict=False)

    with pytest.raises(NotDifferentiableError, match=match):
        engine('patches').explain(x_a, x_b, pooling=4)
    with pytest.warns(PathFallbackWarning, match='unit-major path instead'):
        auto = engine('auto').explain(x_a, x_b, pooling=4)
    reference = engine('batched').explain(x_a, x_b, pooling=4)
    assert_same(auto.relevance, reference.relevance)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        BiLRP(mlp((4, 3)), method='fast')


def test_batched_second_order_without_batching_rule_runs_one_by_one(monkeypatch):
    """An operation without a vmap batching rule in the second-order graph: the remaining passes run singly."""
    monkeypatch.setattr(patches_module, 'SINGLE_PATCH_DEVICES', ())
    sizes = []
    original = PatchPasses.second_order

    def failing(self, pooled, r, start, size):
        sizes.append(size)
        if size > 1:
            raise RuntimeError('Batching rule not implemented for aten::something')
        return original(self, pooled, r, start, size)

    monkeypatch.setattr(PatchPasses, 'second_order', failing)
    model = small_cnn()
    x_a, x_b = images(1, 8)
    composite = EpsilonPlus(canonizers=canonizers_for(model))
    result = BiLRP(model, composite=composite, method='patches').explain(x_a, x_b, pooling=2, marginals=False)
    assert sizes[0] == 2 and set(sizes[1:]) == {1} and sum(sizes[1:]) == 16
    reference = BiLRP(model, composite=EpsilonPlus(canonizers=canonizers_for(model)), method='batched')
    assert_same(result.relevance, reference.explain(x_a, x_b, pooling=2, marginals=False).relevance)
