"""Cascading model randomization: the user's model is untouched, the original explanation correlates 1 with itself,
the correlation falls as blocks are randomized from the top, and Spearman's rho matches scipy's."""
import copy

import pytest
import torch

from zennit_bilrp.analysis.randomization import (
    cascading_randomization,
    randomizable_blocks,
    randomize_block,
    spearman,
)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU())
        self.blocks = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1),
                                                                torch.nn.ReLU()) for _ in range(3)])
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


def trained_tiny():
    """A Tiny whose weights differ from the default initialization (as a trained model's do)."""
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def gradient_x_input(x):
    def explain(model):
        inp = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(model(inp).sum(), inp)
        return (grad * inp).sum(1)
    return explain


def test_blocks_are_found_in_forward_order():
    assert randomizable_blocks(Tiny()) == ['stem', 'blocks.0', 'blocks.1', 'blocks.2', 'head']


def test_randomize_block_is_seeded_and_changes_every_parameter():
    model = trained_tiny()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    state = torch.get_rng_state()
    randomize_block(a.stem, seed=3)
    randomize_block(b.stem, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is untouched
    for (name, pa), pb, p0 in zip(a.stem.named_parameters(), b.stem.parameters(), model.stem.parameters()):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, p0), name


@pytest.mark.usefixtures('single_thread')
def test_cascading_randomization_curve_and_model_unchanged():
    model = trained_tiny()
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    rows = cascading_randomization(model, gradient_x_input(x), seed=0)
    assert [r['randomized'] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r['block'] for r in rows] == ['', 'head', 'blocks.2', 'blocks.1', 'blocks.0', 'stem']
    assert rows[0]['spearman'] == pytest.approx(1.0) and rows[0]['spearman_abs'] == pytest.approx(1.0)
    assert rows[-1]['spearman'] < 0.5 and min(r['spearman'] for r in rows[1:]) < 0.5
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    # a method that ignores the weights fails the check: the correlation stays 1
    rows = cascading_randomization(model, lambda m: x.sum(1), steps=[2, 5])
    assert [r['randomized'] for r in rows] == [0, 2, 5] and all(r['spearman'] == pytest.approx(1.0) for r in rows)
    with pytest.raises(ValueError, match='no such blocks'):
        cascading_randomization(model, lambda m: x, blocks=['nope'])


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip('scipy.stats')
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (40,), generator=gen).double()
    b = a + torch.randint(0, 4, (40,), generator=gen).double()
    reference = stats.spearmanr(a.numpy(), b.numpy())[0]  # [0]: scipy < 1.9 has no .statistic
    assert spearman(a, b) == pytest.approx(reference, abs=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(torch.ones(5), torch.arange(5.0)) != spearman(torch.ones(5), torch.arange(5.0))  # NaN
