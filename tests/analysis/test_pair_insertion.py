"""Pairwise insertion: the reveal schedule at equal area, and the sanity check on a toy model whose answer is
known (a bag of patch features: two images are alike exactly when they show the same patches), where insertion
ranks the true correspondence above a random order and pairwise deletion ranks it below."""
import pytest
import torch

from zennit_bilrp import Pooling
from zennit_bilrp.analysis.pair_insertion import pair_insertion, reveal_schedule

PATCH = 8


class PatchBag(torch.nn.Module):
    """Embedding = mean over 8x8 patches of a ReLU feature of each patch: blind to where a patch is."""

    def __init__(self, features=64, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, features, PATCH, stride=PATCH, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) / 8)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def cosine(model):
    def forward(a, b):
        return torch.nn.functional.cosine_similarity(model(a), model(b), dim=1)
    return forward


def shuffled_pair(seed, grid=(4, 4)):
    """x_a with random, distinct patches; x_b shows the same patches at permuted places. Returns the images and the
    (P, P) matrix that is 1 where patch p of x_a is patch q of x_b."""
    gen = torch.Generator().manual_seed(seed)
    count = grid[0] * grid[1]
    patches = torch.rand(count, 3, PATCH, PATCH, generator=gen)
    perm = torch.randperm(count, generator=gen)
    def image(order):
        tiles = patches[order].reshape(grid[0], grid[1], 3, PATCH, PATCH)
        return tiles.permute(2, 0, 3, 1, 4).reshape(1, 3, grid[0] * PATCH, grid[1] * PATCH)
    x_a, x_b = image(torch.arange(count)), image(perm)
    truth = torch.zeros(count, count)
    truth[perm, torch.arange(count)] = 1.0  # patch q of x_b is patch perm[q] of x_a
    return x_a, x_b, truth


def test_reveal_schedule_counts_patches_not_pairs():
    relevance = torch.tensor([[5.0, 4.0, 0.0],
                              [3.0, 0.0, 0.0],
                              [0.0, 0.0, 2.0]])
    budgets, mask_a, mask_b = reveal_schedule(relevance, budget=5)
    # pair (0,0): 2 new -> 2; (0,1): 1 new (b1) -> 3; (1,0): 1 new (a1) -> 4; next (2,2) would make 6 > 5: stop
    assert budgets.tolist() == [0, 1, 2, 3, 4, 5]
    assert mask_a.sum(1).tolist() == [0, 0, 1, 1, 2, 2] and mask_b.sum(1).tolist() == [0, 0, 1, 2, 2, 2]
    assert (mask_a.sum(1) + mask_b.sum(1) <= budgets).all()
    assert mask_a[-1].tolist() == [True, True, False] and mask_b[-1].tolist() == [True, True, False]
    budgets, _, _ = reveal_schedule(relevance, budget=6, points=3)
    assert budgets.tolist() == [0, 2, 4, 6]
    with pytest.raises(ValueError, match='budget'):
        reveal_schedule(relevance, budget=7)


@pytest.mark.usefixtures('single_thread')
def test_insertion_ranks_the_truth_above_random_and_deletion_below():
    model = PatchBag().eval()
    forward = cosine(model)
    grid = Pooling(PATCH).resolve((3, 32, 32))
    wins_insertion = wins_deletion = 0
    for seed in range(6):
        x_a, x_b, truth = shuffled_pair(seed)
        oracle = truth + 1e-3 * torch.rand(truth.shape, generator=torch.Generator().manual_seed(seed))
        noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(100 + seed))
        scores = {}
        for mode in ('insertion', 'deletion'):
            for name, relevance in (('oracle', oracle), ('random', noise)):
                curve = pair_insertion(forward, x_a, x_b, relevance, grid, grid, budget=16, points=None, mode=mode)
                assert curve.budgets.tolist() == list(range(17))
                assert curve.similarity[0] == pytest.approx(curve.start)
                scores[mode, name] = curve
        # revealing true pairs keeps both bags equal: similarity 1 at every even budget (all pairs are disjoint)
        assert torch.allclose(scores['insertion', 'oracle'].similarity[2::2], torch.ones(8, dtype=torch.float64),
                              atol=1e-6)
        wins_insertion += scores['insertion', 'oracle'].auc > scores['insertion', 'random'].auc
        # hiding true pairs from both images also keeps the bags equal: deletion rewards the wrong order
        assert torch.allclose(scores['deletion', 'oracle'].similarity[::2], torch.ones(9, dtype=torch.float64),
                              atol=1e-6)
        wins_deletion += scores['deletion', 'oracle'].auc < scores['deletion', 'random'].auc
        assert scores['insertion', 'oracle'].full == pytest.approx(1.0, abs=1e-6)  # same bag of patches
    assert wins_insertion == 6 and wins_deletion == 0


def test_bad_input_is_refused():
    grid = Pooling(PATCH).resolve((3, 16, 16))
    model = PatchBag().eval()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match='mode'):
        pair_insertion(cosine(model), x, x, torch.zeros(4, 4), grid, grid, mode='flip')
    with pytest.raises(ValueError, match='does not fit'):
        pair_insertion(cosine(model), x, x, torch.zeros(3, 4), grid, grid)
    with pytest.raises(ValueError, match='one pair'):
        pair_insertion(cosine(model), x.repeat(2, 1, 1, 1), x.repeat(2, 1, 1, 1), torch.zeros(4, 4), grid, grid)
