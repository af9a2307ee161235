"""The forward-mode (P passes) Hessian x product and integrated Jacobians equal the reverse-mode (h passes)
baselines of zennit_bilrp.interop.baselines (float64)."""
import pytest
import torch

from zennit_bilrp.analysis import patch_jacobians
from zennit_bilrp.core.pooling import Pooling
from zennit_bilrp.interop import baselines


def tiny_encoder(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU6(),
                                torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8),
                                torch.nn.Softplus(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model[3].running_mean.uniform_(-0.5, 0.5)
    model[3].running_var.uniform_(0.5, 2.0)
    return model.double().eval()


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.usefixtures('single_thread')
@pytest.mark.parametrize('similarity', ['dot', 'cosine'])
def test_forward_mode_equals_reverse_mode(similarity):
    model = tiny_encoder()
    gen = torch.Generator().manual_seed(1)
    x_a = torch.randn(2, 3, 8, 12, generator=gen, dtype=torch.float64)
    x_b = torch.randn(2, 3, 8, 12, generator=gen, dtype=torch.float64)
    reverse = baselines.hessian_product(model, x_a, x_b, similarity, pooling=4)
    forward = patch_jacobians.hessian_product(model, x_a, x_b, similarity, pooling=4, chunk_size=5)
    assert forward.shape == (2, 6, 6) and relative(forward, reverse) < 1e-12
    for reference in ('zeros', 'mean'):
        reverse = baselines.integrated_jacobians(model, x_a, x_b, similarity, pooling=4, reference=reference,
                                                 n_steps=3, method='gausslegendre')
        forward = patch_jacobians.integrated_jacobians(model, x_a, x_b, similarity, pooling=4, reference=reference,
                                                       n_steps=3, chunk_size=4)
        assert relative(forward, reverse) < 1e-12


def test_patch_jacobian_columns_are_pooled_jacobian_rows():
    model = tiny_encoder(2)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    grid = Pooling(2).resolve((3, 4, 4))
    full = torch.autograd.functional.jacobian(lambda v: model(v)[0], x)[:, 0]  # (h, 3, 4, 4)
    expected = (full * x[0]).sum(1).reshape(8, 2, 2, 2, 2).sum(dim=(2, 4)).reshape(8, 4)
    assert torch.allclose(patch_jacobians.patch_jacobian(model, x, x, grid, chunk_size=3)[0], expected, atol=1e-12)


def test_gauss_legendre_integrates_polynomials_exactly():
    nodes, weights = patch_jacobians.gauss_legendre(3)  # exact up to degree 5 on [0, 1]
    assert sum(w * t ** 5 for t, w in zip(nodes, weights)) == pytest.approx(1 / 6, abs=1e-14)
    with pytest.raises(ValueError, match='positive'):
        patch_jacobians.gauss_legendre(0)
