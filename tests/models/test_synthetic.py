"""The synthetic pair generator: shapes, determinism, exact masks, labels."""
import numpy as np
import pytest
import torch

from zennit_bilrp.models.synthetic import BACKGROUNDS, OBJECTS, background_texture, make_images, make_pairs, object_mask


def test_pairs_shapes_dtypes_and_determinism():
    pairs = make_pairs(6, size=32, seed=3)
    again = make_pairs(6, size=32, seed=3)
    other = make_pairs(6, size=32, seed=4)
    assert pairs.x_a.shape == pairs.x_b.shape == (6, 3, 32, 32)
    assert pairs.mask_a.shape == pairs.mask_b.shape == (6, 32, 32)
    assert pairs.x_a.dtype == torch.float32 and pairs.mask_a.dtype == torch.bool
    assert 0.0 <= float(pairs.x_a.min()) and float(pairs.x_b.max()) <= 1.0
    for name in ('x_a', 'x_b', 'mask_a', 'mask_b', 'object', 'background_a', 'background_b'):
        assert torch.equal(getattr(pairs, name), getattr(again, name))
    assert not torch.equal(pairs.x_a, other.x_a)
    x_a, x_b, mask_a, mask_b = pairs[2]
    assert torch.equal(x_a, pairs.x_a[2]) and torch.equal(mask_b, pairs.mask_b[2])
    assert len(pairs) == 6


@pytest.mark.parametrize('background', ['different', 'same', 'random'])
def test_same_object_in_both_images(background):
    pairs = make_pairs(10, seed=0, n_objects=6, n_backgrounds=6, background=background)
    if background == 'different':
        assert bool((pairs.background_a != pairs.background_b).all())
    if background == 'same':
        assert torch.equal(pairs.background_a, pairs.background_b)
    for i in range(10):
        ma, mb = pairs.mask_a[i].numpy(), pairs.mask_b[i].numpy()
        # the object is an exact integer translate: crop the bounding boxes and compare masks and pixels
        ra, ca = np.nonzero(ma)
        rb, cb = np.nonzero(mb)
        crop_a = (slice(ra.min(), ra.max() + 1), slice(ca.min(), ca.max() + 1))
        crop_b = (slice(rb.min(), rb.max() + 1), slice(cb.min(), cb.max() + 1))
        assert np.array_equal(ma[crop_a], mb[crop_b])
        pix_a = pairs.x_a[i].numpy()[(slice(None),) + crop_a][:, ma[crop_a]]
        pix_b = pairs.x_b[i].numpy()[(slice(None),) + crop_b][:, mb[crop_b]]
        assert np.allclose(pix_a, pix_b)
        # outside the mask lies background only: object area between 3% and 40% of the image
        assert 0.03 < ma.mean() < 0.4


def test_masks_are_exact():
    """Pixels inside the mask show the object color, so masks and pixels agree exactly."""
    images = make_images(12, seed=1)
    for x, mask, obj in zip(images.x, images.mask, images.object):
        inside = x[:, mask]
        # class color dominates inside the mask (shading is +-6%, jitter +-5%)
        assert inside.mean(dim=1).sub(torch.tensor([[0.90, 0.15, 0.15], [0.15, 0.35, 0.95], [0.95, 0.85, 0.10],
                                                    [0.10, 0.80, 0.25]])[obj]).abs().max() < 0.2
    assert images.object.max() < 4 and images.background.max() < 4


def test_object_mask_geometry_and_errors():
    disk = object_mask(0, 64, 10.0, (32.0, 32.0))
    assert abs(disk.sum() - np.pi * 100) < 0.05 * np.pi * 100
    square = object_mask(OBJECTS.index('square'), 64, 10.0, (32.0, 32.0))
    assert square.sum() == 16 * 16
    rng = np.random.default_rng(0)
    for kind in range(len(BACKGROUNDS)):
        texture = background_texture(kind, 32, rng)
        assert texture.shape == (3, 32, 32) and texture.std() > 0.05
    with pytest.raises(ValueError, match='object class'):
        object_mask(len(OBJECTS), 32, 5.0, (16.0, 16.0))
    with pytest.raises(ValueError, match='background'):
        make_pairs(4, background='other')
    with pytest.raises(ValueError, match='n_backgrounds'):
        make_pairs(4, n_backgrounds=1)
    with pytest.raises(ValueError, match='size'):
        make_pairs(4, size=8)
