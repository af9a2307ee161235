"""memory_budget bounds the patch-major path: the differentiable pass is split over the samples of the batch when
one pass over all of them would not fit, with the same factors; and the engine's settings are checked once."""
import pytest
import torch
from zennit.composites import EpsilonGammaBox, EpsilonPlus

from zennit_bilrp import BiLRP, Pooling
from zennit_bilrp.core.config import EngineConfig
from zennit_bilrp.core.memory import PeakMemory
from zennit_bilrp.core.patches import PatchPasses
from zennit_bilrp.core.seeds import GridPool
from zennit_bilrp.lrp.canonizers import canonizers_for
from zennit_bilrp.lrp.composites import DepthGamma
from zennit_bilrp.models.small_resnet import SmallResNet

DTYPE = torch.float64

pytestmark = pytest.mark.usefixtures('single_thread')


def model_and_inputs(n=4, size=16):
    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8), embedding_dim=32, batch_norm=False).to(DTYPE).eval()
    gen = torch.Generator().manual_seed(1)
    return model, torch.rand(n, 3, size, size, generator=gen, dtype=DTYPE)


def factors_and_peak(model, x, budget):
    """Patch-major factors of ``x`` under ``budget``, the peak bytes the factors allocated, the blocks."""
    with BiLRP(model, composite=EpsilonPlus(), method='patches', memory_budget=budget) as bilrp:
        session = bilrp.open_session(x)
        grid = Pooling(patch=4).resolve(x.shape[1:])
        with PeakMemory() as memory:
            factors = session.factors(grid)
        return factors, memory.peak, list(session.patches.blocks), session


def test_small_budget_splits_the_differentiable_pass_over_samples():
    model, x = model_and_inputs()
    whole, peak_whole, blocks_whole, session = factors_and_peak(model, x, 1 << 40)
    assert blocks_whole == [4]
    assert session.patches.predicted_peak() > peak_whole  # the prediction bounds what the whole batch needs
    one, peak_one, blocks_one, _ = factors_and_peak(model, x, 1)  # 1 byte: one sample at a time
    assert blocks_one == [1, 1, 1, 1]
    budget = int(peak_whole * 0.8)  # two samples of four fit, not four
    two, peak_two, blocks_two, _ = factors_and_peak(model, x, budget)
    assert blocks_two[0] == 1 and 1 < max(blocks_two) < 4 and sum(blocks_two) == 4
    # measured peaks: a smaller budget holds less at once, and the budget binds
    assert peak_one < 0.5 * peak_whole
    assert peak_one <= peak_two <= budget
    for factors in (one, two):
        torch.testing.assert_close(factors.relevance, whole.relevance, rtol=1e-10, atol=1e-12)


def test_split_factors_equal_the_unit_major_path_and_the_session_stays_usable():
    model, x = model_and_inputs(n=3)
    grid = Pooling(patch=4).resolve(x.shape[1:])
    reference = BiLRP(model, composite=EpsilonPlus(), method='batched').factors(x, pooling=4)
    with BiLRP(model, composite=EpsilonPlus(), method='patches', memory_budget=1) as bilrp:
        session = bilrp.open_session(x)
        split = session.factors(grid)
        assert session.patches.blocks == [1, 1, 1]
        # the forward pass was run again afterwards: unit-major passes from the session are still right
        again = session.unit_factors(grid)
    torch.testing.assert_close(split.relevance, reference.relevance, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(again.relevance, reference.relevance, rtol=1e-10, atol=1e-12)


def test_explain_under_a_tiny_budget_matches():
    model, x = model_and_inputs(n=2)
    x_b = x.flip(0)
    small = BiLRP(model, composite=EpsilonPlus(), method='patches', memory_budget=1).explain(x, x_b, pooling=4)
    large = BiLRP(model, composite=EpsilonPlus(), method='batched').explain(x, x_b, pooling=4)
    torch.testing.assert_close(small.relevance, large.relevance, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(small.marginal_a, large.marginal_a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('rules', ['epsilon', 'gamma_box', 'depth_gamma_zennit'])
def test_predicted_peak_bounds_the_measured_one(rules):
    torch.manual_seed(0)
    model = SmallResNet(widths=(8, 16), embedding_dim=32).to(DTYPE).eval()
    composite = {'epsilon': lambda: EpsilonPlus(canonizers=canonizers_for(model)),
                 'gamma_box': lambda: EpsilonGammaBox(low=0., high=1., canonizers=canonizers_for(model)),
                 'depth_gamma_zennit': lambda: DepthGamma(canonizers=canonizers_for(model), fast=False)}[rules]()
    x = torch.rand(2, 3, 32, 32, dtype=DTYPE)
    with BiLRP(model, composite=composite, method='patches', memory_budget=1 << 40) as bilrp:
        session = bilrp.open_session(x)
        passes = PatchPasses(session.forward, session.seeds, session.config)
        with PeakMemory() as memory:
            passes.transpose(GridPool(Pooling(patch=8).resolve(x.shape[1:])), 32)
    assert memory.peak <= passes.predicted_peak()


@pytest.mark.parametrize('setting, value, match', [
    ('method', 'fast', "unknown method 'fast'"),
    ('chunk_size', 0, 'chunk_size must be a positive integer'),
    ('chunk_size', 2.5, 'chunk_size must be a positive integer'),
    ('memory_budget', 0, 'memory_budget must be positive'),
])
def test_settings_are_checked_once_into_the_configuration(setting, value, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**{setting: value})
    with pytest.raises(ValueError, match=match):
        BiLRP(torch.nn.Linear(2, 2), composite=EpsilonPlus(), **{setting: value})
    config = BiLRP(torch.nn.Linear(2, 2), composite=EpsilonPlus()).config
    with pytest.raises(AttributeError):
        config.method = 'loop'  # frozen: the sessions read one configuration


def test_a_composite_class_is_refused_by_name():
    with pytest.raises(TypeError, match=r'composite instance, got the class EpsilonPlus.*EpsilonPlus\(\)'):
        BiLRP(torch.nn.Linear(2, 2), composite=EpsilonPlus)
    with pytest.raises(TypeError, match=r'composite_b must be a composite instance'):
        BiLRP(torch.nn.Linear(2, 2), composite=EpsilonPlus(), model_b=torch.nn.Linear(2, 2), composite_b=EpsilonPlus)
    with pytest.raises(TypeError, match='must be a zennit Composite'):
        BiLRP(torch.nn.Linear(2, 2), composite='epsilon')
