"""The one Gaussian blur and its three users: the IRI blur regularizer, SSIM and the patch-flipping fill."""
import math

import pytest
import torch
import torch.nn.functional as F

from zennit_bilrp.analysis.evaluation import fill_image
from zennit_bilrp.analysis.filters import gaussian_blur, gaussian_kernel
from zennit_bilrp.analysis.iri import Blur
from zennit_bilrp.analysis.perceptual import SSIMDistance

DTYPE = torch.float64

pytestmark = pytest.mark.usefixtures('single_thread')


def images(n=2, h=17, w=13, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def blur_2d(x, sigma, radius, mode):
    """Reference: one 2-D convolution with the outer product of the sampled Gaussian (not separable)."""
    taps = torch.tensor([math.exp(-k * k / (2 * sigma * sigma)) for k in range(-radius, radius + 1)], dtype=DTYPE)
    kernel = torch.outer(taps, taps) / taps.sum() ** 2
    channels = x.shape[1]
    if mode != 'valid':
        x = F.pad(x, (radius,) * 4, mode=mode)
    return F.conv2d(x, kernel.expand(channels, 1, -1, -1), groups=channels)


def test_kernel_is_the_normalized_sampled_gaussian():
    g = gaussian_kernel(7, 1.3)
    expected = torch.tensor([math.exp(-k * k / (2 * 1.3 ** 2)) for k in range(-3, 4)], dtype=DTYPE)
    assert torch.allclose(g, expected / expected.sum(), rtol=1e-14, atol=0)
    assert torch.allclose(g, g.flip(0), rtol=1e-15, atol=0)
    assert float(g.sum()) == pytest.approx(1.0, abs=1e-15)
    assert torch.equal(gaussian_kernel(1, 0.7), torch.ones(1, dtype=DTYPE))


@pytest.mark.parametrize('mode', ['reflect', 'replicate', 'valid'])
@pytest.mark.parametrize('sigma', [0.5, 1.0, 2.3])
def test_blur_equals_the_2d_convolution(mode, sigma):
    x = images(h=23, w=19)
    radius = max(1, math.ceil(3 * sigma))
    assert torch.allclose(gaussian_blur(x, sigma, padding=mode), blur_2d(x, sigma, radius, mode),
                          rtol=1e-12, atol=1e-14)
    constant = torch.full((1, 2, 9, 9), 0.3, dtype=DTYPE)
    assert torch.allclose(gaussian_blur(constant, 1.0, 5, mode), torch.full_like(constant, 0.3)[..., 2:-2, 2:-2]
                          if mode == 'valid' else constant, rtol=1e-14, atol=0)


@pytest.mark.parametrize('sigma', [0.5, 1.0, 2.3])
def test_blur_regularizer_keeps_its_values(sigma):
    """IRI ``Blur``: replicated borders, radius max(1, ceil(3 sigma)), mean squared high-pass per sample."""
    x = images()
    radius = max(1, math.ceil(3 * sigma))
    expected = (x - blur_2d(x, sigma, radius, 'replicate')).pow(2).flatten(1).mean(dim=1)
    assert torch.allclose(Blur(sigma=sigma).value(x), expected, rtol=1e-12, atol=1e-16)


def test_ssim_keeps_its_values():
    """Single-scale SSIM with a 5-tap window, written out with the 2-D window (no padding)."""
    x, y = images(seed=1), images(seed=2)

    def blur(t):
        return blur_2d(t, 0.8, 2, 'valid')

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    expected = 1.0 - ssim.flatten(1).mean(dim=1)
    assert torch.allclose(SSIMDistance(scales=1, window=5, sigma=0.8)(x, y), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('sigma', [0.5, 1.0, 2.3, 4.0])
def test_flipping_fill_keeps_its_values(sigma):
    """``fill_image`` used torchvision's gaussian_blur (2-D kernel, reflected borders) before: same values."""
    from torchvision.transforms.functional import gaussian_blur as torchvision_blur

    x = images()
    size = min(int(2 * round(3 * sigma) + 1), 2 * (min(x.shape[-2:]) // 2) - 1)
    expected = torchvision_blur(x, [size, size], [sigma, sigma])
    # older torchvision builds the kernel in float32: agreement to float32 precision across versions
    assert torch.allclose(fill_image(x, 'blur', sigma=sigma), expected, rtol=1e-6, atol=1e-7)


def test_bad_arguments_raise_clear_errors():
    x = images()
    with pytest.raises(ValueError, match='size must be an odd positive integer'):
        gaussian_kernel(4, 1.0)
    for sigma in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match='sigma must be a finite number > 0'):
            gaussian_blur(x, sigma)
    with pytest.raises(ValueError, match="padding must be one of"):
        gaussian_blur(x, 1.0, padding='circular')
    with pytest.raises(ValueError, match=r'expected a floating-point image batch \(N, C, H, W\)'):
        gaussian_blur(x[0], 1.0)
    with pytest.raises(ValueError, match='does not fit images of size'):
        gaussian_blur(x[..., :3, :3], 1.0, 7, padding='reflect')
    with pytest.raises(ValueError, match='does not fit images of size'):
        gaussian_blur(x[..., :3, :3], 1.0, 5, padding='valid')
