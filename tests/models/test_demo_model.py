"""The shipped demo model: architecture, loading, demo images, and the stereo correspondence sanity score."""
import numpy as np
import pytest
import torch

from zennit_bilrp import BiLRP
from zennit_bilrp.models.demo import (
    DEMO_PATCH,
    DEMO_SIMILARITY,
    DEMO_WEIGHTS,
    SANITY_K,
    build_demo_encoder,
    correspondence_error,
    demo_composite,
    load_demo_disparity,
    load_demo_model,
    load_demo_pair,
    load_second_pair,
)


@pytest.fixture(scope='module')
def pair():
    x_a, x_b = load_demo_pair()
    return x_a, x_b, load_demo_disparity()


def _stereo_error(model, x_a, x_b, disparity, k=SANITY_K):
    with BiLRP(model, composite=demo_composite(model), similarity=DEMO_SIMILARITY) as bilrp:
        result = bilrp(x_a, x_b, pooling=DEMO_PATCH, marginals=False)
    top = result.top_pairs(k)
    return correspondence_error(top.centers_a[0], top.centers_b[0], disparity), result


def test_architecture_is_lrp_friendly():
    model = build_demo_encoder().eval()
    out = model(torch.rand(2, 3, 32, 48))
    assert out.shape == (2, model.embedding_dim) and bool((out >= 0).all())
    # no biases and no BatchNorm: positively homogeneous of degree 1
    assert all('bias' not in name for name, _ in model.named_parameters())
    x = torch.rand(1, 3, 32, 48)
    torch.testing.assert_close(model(3.0 * x), 3.0 * model(x), rtol=1e-5, atol=1e-6)


def test_shipped_weights_load():
    assert DEMO_WEIGHTS.is_file() and DEMO_WEIGHTS.stat().st_size < 5 * 2 ** 20
    model = load_demo_model()
    assert not model.training
    fresh = build_demo_encoder(**model.config)
    assert set(fresh.state_dict()) == set(model.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_missing_weights_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='train_demo_model.py'):
        load_demo_model(tmp_path / 'nope.pt')
    bad = tmp_path / 'bad.pt'
    torch.save({'weights': 1}, bad)
    with pytest.raises(ValueError, match='not a demo-model checkpoint'):
        load_demo_model(bad)


def test_demo_images(pair):
    x_a, x_b, disparity = pair
    for x in (x_a, x_b, *load_second_pair()):
        assert x.shape == (1, 3, 128, 192) and x.dtype == torch.float32
        assert float(x.min()) >= 0 and float(x.max()) <= 1 and float(x.std()) > 0.05
    assert disparity.shape == (128, 192)
    valid = torch.isfinite(disparity)
    assert float(valid.double().mean()) > 0.9 and float(disparity[valid].min()) > 0
    # the disparity maps left pixels to right pixels: (r, c) -> (r, c - d) matches much better than no shift
    left, right = x_a[0].double(), x_b[0].double()
    rows, cols = torch.nonzero(valid, as_tuple=True)
    target = (cols - disparity[rows, cols]).round().long()
    inside = (target >= 0)
    rows, cols, target = rows[inside], cols[inside], target[inside]
    shifted = (left[:, rows, cols] - right[:, rows, target]).abs().mean()
    unshifted = (left[:, rows, cols] - right[:, rows, cols]).abs().mean()
    assert float(shifted) < 0.5 * float(unshifted)


def test_correspondence_error_by_hand():
    disparity = torch.full((10, 10), 2.0)
    disparity[0, 0] = float('nan')
    a = torch.tensor([[5.0, 5.0], [1.0, 8.0], [0.0, 0.0]])
    b = torch.tensor([[5.0, 3.0], [4.0, 2.0], [9.0, 9.0]])  # exact, (3, -4) off = 5, no disparity (skipped)
    assert correspondence_error(a, b, disparity) == pytest.approx(2.5)
    assert correspondence_error(a, b, disparity, weights=torch.tensor([3.0, 1.0, 5.0])) == pytest.approx(1.25)
    with pytest.raises(ValueError, match='valid disparity'):
        correspondence_error(a[2:], b[2:], disparity)


def test_trained_model_finds_stereo_correspondences_better_than_random_init(pair):
    """Sanity score: mean distance (pixels) of the top-100 BiLRP patch pairs from the ground-truth
    correspondence of the stereo pair; the trained demo model must beat a randomly initialized copy clearly."""
    x_a, x_b, disparity = pair
    trained = load_demo_model()
    error_trained, result = _stereo_error(trained, x_a, x_b, disparity)
    torch.manual_seed(0)
    random_init = build_demo_encoder(**trained.config).eval()
    error_random, _ = _stereo_error(random_init, x_a, x_b, disparity)
    # BiLRP conserves on the bias-free encoder
    assert float(result.delta.abs()) < 1e-3 * float(result.similarity.abs())
    # measured: 12.3 px (trained) vs 33.5 px (this random copy; 45.5 and 36.7 for seeds 1, 2)
    assert error_trained < 0.6 * error_random, (error_trained, error_random)
    # and it is far better than chance: random patch pairs are about 80 pixels apart from the correspondence
    rng = np.random.default_rng(0)
    grid = result.grid_a
    centers = grid.patch_centers()
    idx_a, idx_b = rng.integers(0, grid.num_patches, (2, 2000))
    chance = correspondence_error(centers[idx_a], centers[idx_b], disparity)
    assert error_trained < 0.25 * chance, (error_trained, chance)
