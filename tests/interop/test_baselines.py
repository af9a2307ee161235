"""Second-order baselines (against brute-force autograd and BiLRP) and the faithfulness measures."""
import pytest
import torch
from torch import nn
from zennit.composites import LayerMapComposite, layer_map_base
from zennit.rules import Epsilon
from zennit.types import Convolution, Linear

from zennit_bilrp import BiLRP, Pooling
from zennit_bilrp.analysis.evaluation import (
    flipping_auc,
    marginal_patch_flipping,
    measure,
    pair_order,
    pairwise_patch_flipping,
    patch_masks,
    pointing_chance,
    pointing_game,
    random_pair_order,
)
from zennit_bilrp.interop.baselines import (
    hessian_product,
    integrated_jacobian_exactness,
    integrated_jacobians,
    jacobian,
    marginal_attribution,
    marginal_outer_product,
    random_pairs,
)

DTYPE = torch.float64
SHAPE = (2, 4, 4)


def relu_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3, bias=False)).to(DTYPE).eval()


def smooth_net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 6), nn.Tanh(), nn.Linear(6, 4), nn.Softplus()).to(DTYPE).eval()


def inputs(n=2, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=gen, dtype=DTYPE), torch.rand(n, *SHAPE, generator=gen, dtype=DTYPE)


def mixed_hessian(model, similarity, a, b):
    """Brute force: d^2 y / d a d b of one pair by torch.autograd.functional.hessian on the concatenation."""
    d = a.numel()

    def y(z):
        ea, eb = model(z[:d].reshape(1, *SHAPE)), model(z[d:].reshape(1, *SHAPE))
        return similarity(ea, eb).sum()

    full = torch.autograd.functional.hessian(y, torch.cat([a.flatten(), b.flatten()]))
    return full[:d, d:]


@pytest.mark.parametrize('similarity', ['dot', 'cosine'])
def test_hessian_product_matches_brute_force(similarity):
    from zennit_bilrp.core.similarity import get_similarity
    model = smooth_net()
    x_a, x_b = inputs()
    out = hessian_product(model, x_a, x_b, similarity=similarity)  # no pooling: per position, channels summed
    for i in range(2):
        hess = mixed_hessian(model, get_similarity(similarity), x_a[i], x_b[i])
        full = x_a[i].flatten()[:, None] * hess * x_b[i].flatten()[None, :]
        expected = full.reshape(2, 16, 2, 16).sum(dim=(0, 2))
        assert torch.allclose(out[i], expected, rtol=1e-9, atol=1e-12)


def test_hessian_product_is_bilrp_with_lrp0_on_relu_net():
    model = relu_net()
    x_a, x_b = inputs()
    composite = LayerMapComposite(layer_map=layer_map_base(stabilizer=1e-30) + [
        (Convolution, Epsilon(epsilon=1e-30)), (Linear, Epsilon(epsilon=1e-30))])
    with BiLRP(model, composite=composite) as bilrp:
        exact = bilrp(x_a, x_b, pooling=2, marginals=False).relevance
    taylor = hessian_product(model, x_a, x_b, pooling=2)
    assert float((exact - taylor).abs().max() / exact.abs().max()) < 1e-9


def test_jacobian_matches_autograd():
    model = smooth_net()
    x, _ = inputs()
    emb, jac = jacobian(model, x, chunk_size=3)
    ref = torch.autograd.functional.jacobian(lambda z: model(z), x)  # (N, h, N, ...)
    assert torch.allclose(jac, torch.stack([ref[i, :, i] for i in range(2)]), rtol=1e-12, atol=1e-14)
    assert torch.allclose(emb, model(x))


@pytest.mark.parametrize('similarity,reference', [('dot', 'zeros'), ('cosine', 'mean'), ('bilinear', 0.3)])
def test_integrated_jacobians_exactness(similarity, reference):
    model = smooth_net()
    x_a, x_b = inputs()
    if similarity == 'bilinear':
        similarity = torch.randn(4, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(5))
    attr = integrated_jacobians(model, x_a, x_b, similarity=similarity, pooling=2, reference=reference, n_steps=20)
    target = integrated_jacobian_exactness(model, x_a, x_b, similarity=similarity, reference=reference)
    assert attr.shape == (2, 4, 4)
    assert torch.allclose(attr.sum(dim=(1, 2)), target, rtol=1e-10, atol=1e-12)
    coarse = integrated_jacobians(model, x_a, x_b, similarity=similarity, reference=reference, n_steps=2,
                                  method='riemann_left')
    assert not torch.allclose(coarse.sum(dim=(1, 2)), target, rtol=1e-4, atol=0)  # the quadrature matters


def test_integrated_jacobians_of_linear_embedding():
    # for a linear map phi(x) = W x the Jacobian is constant, so any quadrature gives exactly
    # A = diag(x) W^T W diag(x') (reference 0), whose total is y(x, x')
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 5, bias=False)).to(DTYPE)
    x_a, x_b = inputs()
    attr = integrated_jacobians(model, x_a, x_b, n_steps=2, method='riemann_left')
    w = model[1].weight
    full = torch.einsum('bi,mi,mj,bj->bij', x_a.flatten(1), w, w, x_b.flatten(1))
    assert torch.allclose(attr, full.reshape(2, 2, 16, 2, 16).sum(dim=(1, 3)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('method', ['saliency', 'input_x_gradient', 'integrated_gradients'])
def test_marginal_outer_product(method):
    model = smooth_net()
    x_a, x_b = inputs()
    kwargs = {'n_steps': 8} if method == 'integrated_gradients' else {}
    out = marginal_outer_product(model, x_a, x_b, method=method, pooling=2, **kwargs)
    with torch.enable_grad():
        a = x_a.clone().requires_grad_(True)
        grad, = torch.autograd.grad((model(a) * model(x_b)).sum(), a)
    m_a = marginal_attribution(model, x_a, x_b, method, **kwargs)
    if method == 'saliency':
        assert torch.allclose(m_a, grad.abs())
    elif method == 'input_x_gradient':
        assert torch.allclose(m_a, grad * x_a)
    else:  # completeness of integrated gradients w.r.t. the zero baseline (Gauss-Legendre, smooth model)
        y0 = (model(torch.zeros_like(x_a)) * model(x_b)).sum(1)
        assert torch.allclose(m_a.flatten(1).sum(1), (model(x_a) * model(x_b)).sum(1) - y0, rtol=1e-5)
    pool = Pooling(patch=2)
    m_b = marginal_attribution(model, x_b, x_a, method, **kwargs)
    assert torch.allclose(out, pool(m_a)[:, :, None] * pool(m_b)[:, None, :])


def test_random_pairs_shape_and_seed():
    x_a, x_b = inputs()
    r = random_pairs(x_a, x_b, pooling=2, seed=1)
    assert r.shape == (2, 4, 4) and r.dtype == DTYPE and torch.equal(r, random_pairs(x_a, x_b, pooling=2, seed=1))


def test_jacobian_rows_match_autograd_for_every_chunk_size():
    model = smooth_net()
    x, _ = inputs(n=3)
    reference = torch.autograd.functional.jacobian(lambda z: model(z).sum(0), x)  # (h, N, *shape)
    for chunk in (1, 3, 64):
        emb, jac = jacobian(model, x, chunk_size=chunk)
        assert jac.shape == (3, 4, *SHAPE)
        torch.testing.assert_close(jac, reference.transpose(0, 1), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(emb, model(x).detach())


def test_baselines_refuse_bad_inputs_by_name():
    model = smooth_net()
    x_a, x_b = inputs()
    with pytest.raises(ValueError, match='chunk_size must be positive'):
        jacobian(model, x_a, chunk_size=0)
    with pytest.raises(ValueError, match='x_b contains NaN'):
        hessian_product(model, x_a, x_b * float('nan'))
    with pytest.raises(ValueError, match="x_a has shape \\(32,\\); expected a batch"):
        integrated_jacobians(model, x_a.flatten()[:32], x_b)
    with pytest.raises(TypeError, match='x has dtype torch.int64'):
        jacobian(model, x_a.long())


def test_pointing_game_by_hand():
    grid = Pooling(patch=2).resolve((3, 4, 4))  # 2 x 2 patches
    mask_a = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask_a[0, :2, :2] = True  # patch 0
    mask_b = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask_b[0, 2:, 2:] = True  # patch 3
    mask_b[0, 0, 2] = True  # one pixel of patch 1: below min_overlap
    rel = torch.zeros(1, 4, 4)
    rel[0, 0, 3] = 5.0  # the true pair
    rel[0, 1, 3] = 4.0  # wrong patch in a
    rel[0, 0, 1] = 3.0  # wrong patch in b
    assert torch.equal(patch_masks(mask_b, grid), torch.tensor([[False, False, False, True]]))
    assert pointing_game(rel, mask_a, mask_b, grid, grid, k=1).item() == 1.0
    assert pointing_game(rel, mask_a, mask_b, grid, grid, k=2).item() == 0.5
    assert abs(pointing_game(rel, mask_a, mask_b, grid, grid, k=3).item() - 1 / 3) < 1e-12
    assert pointing_game(rel, mask_a, mask_b, grid, grid, k=1, min_overlap=0.2).item() == 1.0
    assert pointing_chance(mask_a, mask_b, grid, grid).item() == 1 / 16


@pytest.mark.parametrize('fill', ['blur', 'mean'])
def test_pairwise_patch_flipping_by_hand(fill):
    # similarity = sum of pixel products of two fixed patch pairs: removing the right pair first is best
    grid = Pooling(patch=2).resolve((1, 4, 4))
    x_a = torch.zeros(1, 1, 4, 4, dtype=DTYPE)
    x_b = torch.zeros(1, 1, 4, 4, dtype=DTYPE)
    x_a[0, 0, :2, :2] = 1.0
    x_b[0, 0, 2:, 2:] = 1.0

    def forward(a, b):
        return (a[:, 0, :2, :2] * b[:, 0, 2:, 2:]).sum(dim=(1, 2))

    rel = torch.zeros(1, 4, 4, dtype=DTYPE)
    rel[0, 0, 3] = 1.0
    curve = pairwise_patch_flipping(forward, x_a, x_b, pair_order(rel), grid, grid, steps=3, fill=fill)
    assert curve.shape == (1, 4) and curve[0, 0] == 4.0
    assert curve[0, 1] < 4.0 and torch.all(curve[0, 1:] == curve[0, 1])  # first flip removes it; rest are no-ops
    rand = pairwise_patch_flipping(forward, x_a, x_b, random_pair_order(rel, seed=0), grid, grid, steps=3, fill=fill)
    assert flipping_auc(curve) <= flipping_auc(rand)
    marg = marginal_patch_flipping(forward, x_a, x_b, rel.sum(dim=2), grid, steps=2, fill=fill)
    assert marg.shape == (1, 3) and marg[0, 0] == 4.0 and marg[0, 1] < 4.0
    if fill == 'mean':
        assert curve[0, 1] == pytest.approx(4 * 0.25 * 0.25)  # both patches replaced by their image means 0.25


def test_flipping_auc_reductions():
    curve = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=DTYPE)
    assert torch.allclose(flipping_auc(curve), torch.tensor([0.5, 1.0], dtype=DTYPE))
    assert float(flipping_auc(curve, reduce=True)) == pytest.approx((1.0 + 1.0) / 3.0)


def test_measure_returns_result_time_memory():
    result, seconds, peak = measure(lambda: torch.ones(1 << 22).sum())
    assert result.item() == float(1 << 22) and seconds > 0 and peak >= 0
