"""Correspondence pairs and scores: the exact maps of mirrors, shifts, zooms and rotations (checked against the
rendered pixels), the hit geometry on patch grids, pointing/error/chance on hand-built matrices, and the controls."""
import math

import pytest
import torch

from zennit_bilrp.analysis.correspondence import (
    TRANSFORMS,
    AffineCorrespondence,
    CorrespondencePair,
    DisparityCorrespondence,
    View,
    correspondence_scores,
    oracle_relevance,
    patch_truth,
    top_valid_pairs,
    transformed_pair,
)

from helpers.photos import smooth_photo

SIZE = (64, 96)


def sample(image, points):
    """Bilinear samples of image (1, C, H, W) at points (n, 2) (row, col): (C, n)."""
    height, width = image.shape[-2:]
    grid = torch.stack([2 * points[:, 1] / (width - 1) - 1, 2 * points[:, 0] / (height - 1) - 1], dim=-1)
    return torch.nn.functional.grid_sample(image.double(), grid[None, None], align_corners=True)[0, :, 0]


@pytest.mark.parametrize('kind', list(TRANSFORMS))
def test_map_sends_pixels_to_the_same_content(kind):
    pair = transformed_pair(smooth_photo(), SIZE, name=kind, kind=kind, **TRANSFORMS[kind])
    dense = pair.correspondence.dense(SIZE)
    valid = torch.isfinite(dense).all(dim=-1)
    assert 0.3 < valid.double().mean() <= 1.0
    rows, cols = torch.nonzero(valid, as_tuple=True)
    va = pair.x_a.double()[0][:, rows, cols]
    vb = sample(pair.x_b, dense[rows, cols])
    # the same photo point: differences are interpolation error only, far below those of unrelated pixels
    shuffled = vb[:, torch.randperm(vb.shape[1], generator=torch.Generator().manual_seed(0))]
    assert (va - vb).abs().mean() < 0.1 * (va - shuffled).abs().mean()
    assert (va - vb).abs().mean() < 0.01


def test_mirror_map_and_hit_geometry():
    pair = transformed_pair(smooth_photo(), SIZE, mirror=True)
    corr = pair.correspondence
    assert torch.allclose(corr.matrix, torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(corr.offset, torch.tensor([0.0, SIZE[1] - 1], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(pair.x_b, pair.x_a.flip(-1), atol=1e-6)
    truth = patch_truth(pair, 32)  # a 2 x 3 grid: patch (r, c) matches (r, 2 - c)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for r in range(2):
        for c in range(3):
            expected[3 * r + c, 3 * r + 2 - c] = True
    assert torch.equal(truth.match, expected) and bool(truth.valid.all())
    assert torch.allclose(truth.distance[expected], torch.zeros(6, dtype=torch.float64), atol=1e-9)


def test_shift_map_and_hit_geometry():
    # B's content is A's moved left by half the width (48 px): A's patch (r, c) shows in B at column c - 48
    pair = transformed_pair(smooth_photo(), (64, 96), shift=(0.0, 0.5), cover=0.5)
    corr = pair.correspondence
    assert torch.allclose(corr.matrix, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(corr.offset, torch.tensor([0.0, -48.0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(pair.x_b[..., :48], pair.x_a[..., 48:], atol=1e-5)
    truth = patch_truth(pair, 16)  # 4 x 6 grid, a shift of 3 patches: (r, c) -> (r, c - 3), columns 0-2 invalid
    for r in range(4):
        for c in range(6):
            p = 6 * r + c
            assert bool(truth.valid[p]) == (c >= 3)
            if c >= 3:
                assert torch.nonzero(truth.match[p]).flatten().tolist() == [6 * r + c - 3]
            else:
                assert not bool(truth.match[p].any())


def test_zoom_and_rotation_maps():
    pair = transformed_pair(smooth_photo(), SIZE, zoom=2.0)
    corr = pair.correspondence  # B is A magnified about the centre
    centre = torch.tensor([[(SIZE[0] - 1) / 2, (SIZE[1] - 1) / 2]], dtype=torch.float64)
    assert torch.allclose(corr(centre), centre, atol=1e-9)
    assert torch.allclose(corr.matrix, 2 * torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(corr(centre + torch.tensor([[5.0, -3.0]], dtype=torch.float64)),
                          centre + torch.tensor([[10.0, -6.0]], dtype=torch.float64), atol=1e-9)
    assert torch.isnan(corr(torch.tensor([[0.0, 0.0]], dtype=torch.float64))).all()  # leaves B's frame
    rotated = transformed_pair(smooth_photo(), SIZE, angle=90.0, cover=0.3)
    # a rotation by 90 degrees maps A's offsets from the centre by a quarter turn (lengths kept)
    step = rotated.correspondence(centre + torch.tensor([[0.0, 10.0]], dtype=torch.float64)) - centre
    assert torch.allclose(step.abs().sort().values, torch.tensor([[0.0, 10.0]], dtype=torch.float64), atol=1e-9)


def test_views_that_leave_the_photo_are_refused():
    with pytest.raises(ValueError, match='leaves the photo'):
        transformed_pair(smooth_photo(), SIZE, shift=(0.0, 1.0))
    with pytest.raises(ValueError, match='leaves the photo'):
        View((10.0, 10.0)).render(smooth_photo(), SIZE)


def test_disparity_correspondence():
    disparity = torch.full(SIZE, 10.0, dtype=torch.float64)
    disparity[:, :20] = math.nan  # no ground truth on the left border
    corr = DisparityCorrespondence(disparity, SIZE)
    out = corr(torch.tensor([[5.0, 40.0], [5.0, 10.0], [5.0, 15.0]], dtype=torch.float64))
    assert torch.allclose(out[0], torch.tensor([5.0, 30.0], dtype=torch.float64))
    assert torch.isnan(out[1:]).all()
    pair = CorrespondencePair('toy', 'stereo', torch.rand(1, 3, *SIZE), torch.rand(1, 3, *SIZE), corr)
    truth = patch_truth(pair, 32)  # centres at columns 15.5 (NaN), 47.5 -> 37.5 (patch 1), 79.5 -> 69.5 (patch 2)
    assert truth.valid.tolist() == [False, True, True, False, True, True]
    assert torch.nonzero(truth.match).tolist() == [[1, 1], [2, 2], [4, 4], [5, 5]]


def mirror_truth():
    corr = AffineCorrespondence(torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64),
                                torch.tensor([0.0, SIZE[1] - 1.0], dtype=torch.float64), SIZE)
    pair = CorrespondencePair('mirror', 'mirror', torch.rand(1, 3, *SIZE), torch.rand(1, 3, *SIZE), corr)
    return patch_truth(pair, 32)


def test_scores_on_a_hand_built_matrix():
    truth = mirror_truth()
    relevance = torch.zeros(6, 6, dtype=torch.float64)
    relevance[0, 2] = 2.0   # patch 0 (centre 15.5, 15.5) -> its mirror image (15.5, 79.5): a hit, 0 px
    relevance[0, 0] = 1.0   # a miss: patch 0's centre is 64 px from the true image
    relevance[1, 4] = 0.5   # a miss: patch 1's centre (15.5, 47.5) maps to itself; patch 4 is (47.5, 47.5): 32 px
    scores = correspondence_scores(relevance, truth, k=2)
    assert scores['pointing'] == pytest.approx(0.5) and scores['error_px'] == pytest.approx(32.0)
    scores = correspondence_scores(relevance, truth, k=3)
    assert scores['pointing'] == pytest.approx(1 / 3) and scores['error_px'] == pytest.approx(32.0)
    assert scores['chance'] == pytest.approx(1 / 6) and scores['valid'] == 6
    # the chance error is the mean distance over all valid pairs, by brute force
    centres = truth.grid_a.patch_centers()
    mirrored = torch.stack([centres[:, 0], SIZE[1] - 1 - centres[:, 1]], dim=1)
    brute = sum(float((mirrored[p] - centres[q]).norm()) for p in range(6) for q in range(6)) / 36
    assert scores['error_chance'] == pytest.approx(brute)


def test_oracle_beats_random_and_random_sits_at_chance():
    truth = mirror_truth()
    oracle = correspondence_scores(oracle_relevance(truth), truth, k=6)
    assert oracle['pointing'] == 1.0 and oracle['error_px'] == pytest.approx(0.0, abs=1e-9)
    gen = torch.Generator().manual_seed(0)
    hits = [correspondence_scores(torch.randn(6, 6, generator=gen), truth, k=6)['pointing'] for _ in range(400)]
    assert sum(hits) / len(hits) == pytest.approx(1 / 6, abs=0.02)


def test_invalid_patches_are_left_out_of_the_top_pairs():
    pair = transformed_pair(smooth_photo(), (64, 96), shift=(0.0, 1 / 3), cover=0.5)
    truth = patch_truth(pair, 32)  # a shift by one patch: A's left column of patches (0, 3) has no counterpart
    assert truth.valid.tolist() == [False, True, True, False, True, True]
    relevance = torch.zeros(6, 6)
    relevance[0, 0] = 10.0  # the largest entry sits on an invalid patch of A
    relevance[2, 1] = 1.0   # patch 2 (centre col 79.5) -> col 47.5: patch 1 of B, a hit
    p, q = top_valid_pairs(relevance, truth, k=1)
    assert (int(p), int(q)) == (2, 1)
    assert correspondence_scores(relevance, truth, k=1)['pointing'] == 1.0
    p, _ = top_valid_pairs(relevance, truth, k=50)  # no more than the valid pairs
    assert len(p) == 4 * 6 and set(p.tolist()) == {1, 2, 4, 5}


def test_bad_relevance_is_refused():
    truth = mirror_truth()
    with pytest.raises(ValueError, match='does not fit'):
        correspondence_scores(torch.zeros(5, 6), truth)
    with pytest.raises(ValueError, match='NaN'):
        correspondence_scores(torch.full((6, 6), math.nan), truth)
    with pytest.raises(ValueError, match='k must be positive'):
        correspondence_scores(torch.zeros(6, 6), truth, k=0)


def test_benchmark_pairs_from_scikit_image():
    pytest.importorskip('skimage', reason="the [demo] extra is not installed: pip install 'zennit-bilrp[demo]'")
    from zennit_bilrp.analysis.correspondence import correspondence_pairs

    pairs = correspondence_pairs(SIZE, count=4)
    assert [p.kind for p in pairs] == ['stereo', 'shift', 'mirror+shift', 'shift']
    assert len({p.name for p in pairs}) == 4
    for pair in pairs:
        assert pair.x_a.shape == pair.x_b.shape == (1, 3, *SIZE) and pair.x_a.dtype == torch.float32
        assert 0 <= float(pair.x_a.min()) and float(pair.x_a.max()) <= 1
        assert patch_truth(pair, 32).valid.any()
