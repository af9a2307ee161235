"""Explicit layer transposes (lrp/explicit.py) and SpreadZBox (lrp/stride_rules.py) against autograd, Zennit's
ZBox and a hand-written loop over the formula."""
import pytest
import torch
from zennit.rules import ZBox

from zennit_bilrp.lrp.explicit import layer_forward, layer_transpose, supports_explicit
from zennit_bilrp.lrp.stride_rules import SpreadZBox, stride_one_geometry
from zennit_bilrp.models.efficientnet import SameConv2d

DTYPE = torch.float64
pytestmark = pytest.mark.usefixtures('single_thread')

LAYERS = [
    lambda: torch.nn.Linear(5, 3),
    lambda: torch.nn.Conv1d(4, 6, 3, stride=2, padding=1),
    lambda: torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),
    lambda: torch.nn.Conv2d(4, 6, 5, stride=3, padding=2, dilation=1, groups=2),
    lambda: torch.nn.Conv2d(4, 6, 3, stride=1, padding=2, dilation=2),
    lambda: torch.nn.Conv3d(2, 3, 3, stride=2, padding=1),
    lambda: SameConv2d(4, 4, 3, 2, groups=4),
    lambda: SameConv2d(4, 4, 5, 2, groups=4),
    lambda: SameConv2d(4, 6, 3, 1),
]
SHAPES = {1: (2, 4, 9), 2: (2, 4, 9, 10), 3: (2, 2, 5, 6, 7), 0: (2, 5)}


@pytest.mark.parametrize('make', LAYERS)
def test_explicit_forward_and_transpose_match_autograd(make):
    torch.manual_seed(0)
    layer = make().to(DTYPE)
    assert supports_explicit(layer)
    dims = 0 if isinstance(layer, torch.nn.Linear) else layer.weight.dim() - 2
    for shape in (SHAPES[dims], tuple(s + 1 if i > 1 else s for i, s in enumerate(SHAPES[dims]))):
        x = torch.randn(shape, dtype=DTYPE, requires_grad=True)
        weight = torch.randn_like(layer.weight)
        with torch.no_grad():
            original = layer.weight.clone()
            layer.weight.copy_(weight)
            if layer.bias is not None:
                layer.bias.zero_()
        out = layer(x)
        torch.testing.assert_close(layer_forward(layer, x, weight), out, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(out)
        expected, = torch.autograd.grad(out, x, grad)
        torch.testing.assert_close(layer_transpose(layer, grad, weight, x.shape), expected, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            layer.weight.copy_(original)


def test_unsupported_layers_are_named():
    layer = torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode='reflect')
    assert not supports_explicit(layer)
    with pytest.raises(TypeError, match='Conv2d'):
        layer_transpose(layer, torch.zeros(1, 2, 4, 4), layer.weight, (1, 2, 4, 4))


def _relevance(rule, layer, x, relevance_out):
    x = x.clone().requires_grad_(True)
    handle = rule.register(layer)
    try:
        out = layer(x)
        relevance, = torch.autograd.grad(out, x, relevance_out(out))
    finally:
        handle.remove()
    return relevance


@pytest.mark.parametrize('make', [lambda: torch.nn.Conv2d(3, 4, 3, padding=1), lambda: SameConv2d(3, 4, 5, 1)])
def test_spread_zbox_at_stride_one_is_zbox(make):
    torch.manual_seed(1)
    layer = make().to(DTYPE)
    x = torch.rand(2, 3, 7, 8, dtype=DTYPE) * 2 - 1
    seed = torch.rand(2, 4, 7, 8, dtype=DTYPE)
    expected = _relevance(ZBox(-1.0, 1.0, zero_params=['bias']), layer, x, lambda out: seed)
    actual = _relevance(SpreadZBox(-1.0, 1.0), layer, x, lambda out: seed)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-14)


class _SameConv1d(torch.nn.Conv1d):
    """TensorFlow 'SAME' padding for length 6, kernel 3, stride 2 (0 before, 1 after), inside ``forward``."""

    def same_padding(self, size):
        return (0, 1)

    def forward(self, input):
        return super().forward(torch.nn.functional.pad(input, self.same_padding(input.shape[-1])))


def test_spread_zbox_by_hand():
    """A 1-d stride-2 convolution, kernel 3, 'SAME' padding (0 before, 1 after for an even length), against a loop
    over the formula: output j's relevance goes to the stride-1 positions t = 2j - 1, 2j, 2j + 1 with weights
    1/4, 1/2, 1/4, and each t shares its part over its own window [t, t + 2] by z^B (bias ignored, padded
    positions get nothing)."""
    torch.manual_seed(2)
    layer = _SameConv1d(2, 3, 3, stride=2, bias=True).to(DTYPE)
    x = torch.rand(1, 2, 6, dtype=DTYPE) * 2 - 1
    low, high = -1.0, 1.0
    seed = torch.rand(1, 3, 3, dtype=DTYPE)
    assert stride_one_geometry(layer, (6,)) == ((1, 2), (3,))
    relevance = _relevance(SpreadZBox(low, high, stabilizer=0.0), layer, x, lambda out: seed)
    w = layer.weight.detach()
    expected = torch.zeros(2, 6, dtype=DTYPE)
    for c_out in range(3):
        for j in range(3):
            for t, share in ((2 * j - 1, 0.25), (2 * j, 0.5), (2 * j + 1, 0.25)):
                terms = {}
                for c in range(2):
                    for k in range(3):
                        i = t + k
                        if 0 <= i < 6:
                            wk = w[c_out, c, k]
                            terms[c, i] = x[0, c, i] * wk - low * wk.clamp(min=0) - high * wk.clamp(max=0)
                z = sum(terms.values())
                for key, term in terms.items():
                    expected[key] += term / z * seed[0, c_out, j] * share
    torch.testing.assert_close(relevance[0], expected, rtol=1e-10, atol=1e-12)
    assert float(relevance.sum()) == pytest.approx(float(seed.sum()), rel=1e-10)


def test_spread_zbox_has_no_stride_grid():
    """A 3x3 stride-2 convolution with a constant kernel on a constant input, constant output relevance: ZBox
    gives the positions covered by two windows per axis (even rows/columns) twice the relevance per axis; SpreadZBox
    gives every interior position the same relevance."""
    layer = SameConv2d(1, 1, 3, 2).to(DTYPE)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.full((1, 1, 12, 12), 0.5, dtype=DTYPE)
    zbox = _relevance(ZBox(0.0, 1.0), layer, x, torch.ones_like)[0, 0]
    spread = _relevance(SpreadZBox(0.0, 1.0), layer, x, torch.ones_like)[0, 0]
    interior = (slice(2, 10), slice(2, 10))
    assert float(zbox[interior].max() / zbox[interior].min()) == pytest.approx(4.0)
    torch.testing.assert_close(spread[interior], torch.full((8, 8), float(spread[5, 5]), dtype=DTYPE))
    assert float(spread.sum()) == pytest.approx(36.0, rel=1e-5)


def test_spread_zbox_is_differentiable_in_its_seed():
    """The relevance is linear in the seed and keeps its graph: differentiating the relevance of a seed that
    requires grad gives the transposed map that a loop of plain passes gives."""
    torch.manual_seed(3)
    layer = SameConv2d(3, 2, 3, 2).to(DTYPE)
    x = torch.rand(1, 3, 6, 6, dtype=DTYPE)
    handle = SpreadZBox(0.0, 1.0).register(layer)
    try:
        inp = x.clone().requires_grad_(True)
        out = layer(inp)
        seed = torch.zeros_like(out, requires_grad=True)
        relevance, = torch.autograd.grad(out, inp, seed + 0.0, create_graph=True)
        assert relevance.requires_grad
        probe = torch.rand_like(relevance)
        column, = torch.autograd.grad((relevance * probe).sum(), seed)
        rows = []
        for index in range(out.numel()):
            unit = torch.zeros(out.numel(), dtype=DTYPE)
            unit[index] = 1.0
            plain, = torch.autograd.grad(out, inp, unit.reshape(out.shape), retain_graph=True)
            rows.append((plain * probe).sum())
    finally:
        handle.remove()
    torch.testing.assert_close(column.flatten(), torch.stack(rows), rtol=1e-10, atol=1e-12)


def assert_explicit_matches(layer, reference, explicit):
    """``explicit`` gives ``reference``'s input relevance on ``layer`` and the same derivative in the seed, for a
    signed and a positive input (drawn from the global RNG, then the seed)."""
    shape = (2, 5) if isinstance(layer, torch.nn.Linear) else (2, 4, 6, 7)
    for x in (torch.randn(shape, dtype=DTYPE), torch.rand(shape, dtype=DTYPE)):
        with torch.no_grad():
            values = torch.rand_like(layer(x))
        results = []
        for rule in (reference, explicit):
            inp = x.clone().requires_grad_(True)
            handle = rule.register(layer)
            try:
                seed = values.clone().requires_grad_(True)
                relevance, = torch.autograd.grad(layer(inp), inp, seed * 1.0, create_graph=True)
                probe = torch.linspace(-1, 1, relevance.numel(), dtype=DTYPE).reshape(relevance.shape)
                second, = torch.autograd.grad((relevance * probe).sum(), seed)
            finally:
                handle.remove()
            results.append((relevance.detach(), second))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('gamma', [0.0, 0.3])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('make', [lambda: SameConv2d(4, 4, 3, 2, groups=4), lambda: torch.nn.Conv2d(4, 6, 3, padding=1),
                                  lambda: torch.nn.Linear(5, 3)])
def test_explicit_gamma_is_zennit_gamma(make, bias, gamma):
    """ExplicitGamma gives Zennit's Gamma relevance (signed inputs, both output signs, biases kept or zeroed),
    also differentiated in its seed."""
    from zennit.rules import Gamma

    from zennit_bilrp.lrp.mobile_rules import ExplicitGamma

    torch.manual_seed(4)
    layer = make().to(DTYPE)
    if isinstance(layer, SameConv2d):
        layer.bias = torch.nn.Parameter(torch.randn(4, dtype=DTYPE))
    zero = None if bias else ['bias']
    assert_explicit_matches(layer, Gamma(gamma=gamma, zero_params=zero), ExplicitGamma(gamma=gamma, zero_params=zero))


def test_gamma_wsquare_by_hand():
    """GammaWSquare on a linear layer with signed inputs, against a loop over its outputs: output 0 takes the
    gamma branch (z0 > 0, up > rho * magnitude), output 1 has z0 > 0 only through its bias and falls back to w^2,
    output 2 takes the negative branch; each output's shares sum to one (conservation without the bias)."""
    from zennit_bilrp.lrp.mobile_rules import GammaWSquare

    gamma, rho = 0.5, 0.2
    layer = torch.nn.Linear(4, 3).to(DTYPE)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.5, -0.2, 0.3], [-1.0, 0.4, 0.2, -0.5], [-0.8, -0.3, 0.1, 0.2]]))
        layer.bias.copy_(torch.tensor([0.1, 3.0, 0.0]))
    x = torch.tensor([[1.0, -0.5, 2.0, 0.7]], dtype=DTYPE)
    seed = torch.tensor([[0.7, -1.3, 0.4]], dtype=DTYPE)
    relevance = _relevance(GammaWSquare(gamma=gamma, ratio=rho, stabilizer=0.0), layer, x, lambda out: seed)
    w, b = layer.weight.detach(), layer.bias.detach()
    expected = torch.zeros(4, dtype=DTYPE)
    branches = []
    for j in range(3):
        z0 = float(x[0] @ w[j] + b[j])
        sign = 1.0 if z0 > 0 else -1.0
        modified = []
        for i in range(4):
            # the gamma weight favours contributions of the output's sign: w + gamma w^+ for x_i w_ij > 0 when z0 > 0
            part = w[j, i].clamp(min=0) if (x[0, i] >= 0) == (sign > 0) else w[j, i].clamp(max=0)
            modified.append(x[0, i] * (w[j, i] + gamma * part))
        z = float(sum(modified))
        magnitude = float(sum(abs(m) for m in modified))
        if sign * z > rho * magnitude:
            shares = [float(m) / z for m in modified]
            branches.append('gamma+' if sign > 0 else 'gamma-')
        else:
            shares = [float(w[j, i] ** 2 / (w[j] ** 2).sum()) for i in range(4)]
            branches.append('w2')
        assert sum(shares) == pytest.approx(1.0)
        expected += torch.tensor(shares, dtype=DTYPE) * seed[0, j]
    assert branches == ['gamma+', 'w2', 'gamma-']
    torch.testing.assert_close(relevance[0], expected, rtol=1e-12, atol=1e-14)
    assert float(relevance.sum()) == pytest.approx(float(seed.sum()), rel=1e-12)


def test_stride_grid_energy():
    """A pure checkerboard is all stride grid, a smooth map of the lowest frequencies has none, their sum has the
    checkerboard's share, and the share equals the spectral energy at the period's frequencies (FFT)."""
    from zennit_bilrp.lrp.stride_rules import stride_grid_energy

    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(12), indexing='ij')
    checker = ((rows + cols) % 2).double() * 2 - 1
    smooth = torch.cos(2 * torch.pi * rows.double() / 8) + torch.cos(2 * torch.pi * cols.double() / 12)
    assert float(stride_grid_energy(checker, 2)) == pytest.approx(1.0)
    assert float(stride_grid_energy(smooth, 2)) == pytest.approx(0.0, abs=1e-12)
    assert float(stride_grid_energy(smooth, 4)) == pytest.approx(0.0, abs=1e-12)
    mix = smooth + 0.3 * checker
    share = float((0.3 * checker).pow(2).sum() / (mix - mix.mean()).pow(2).sum())
    assert float(stride_grid_energy(mix, 2)) == pytest.approx(share, rel=1e-10)
    noise = torch.randn(3, 16, 24, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    spectrum = torch.fft.fft2(noise - noise.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    expected = spectrum[:, ::16 // 4, ::24 // 4].sum(dim=(-2, -1)) / spectrum.sum(dim=(-2, -1))
    torch.testing.assert_close(stride_grid_energy(noise, 4), expected, rtol=1e-10, atol=1e-12)
    assert float(stride_grid_energy(torch.ones(4, 4), 2)) == 0.0
    with pytest.raises(ValueError, match='must divide'):
        stride_grid_energy(noise, 5)


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('make', [lambda: torch.nn.Conv2d(4, 6, 1), lambda: SameConv2d(4, 4, 3, 2, groups=4),
                                  lambda: torch.nn.Linear(5, 3)])
def test_explicit_zplus_is_zennit_zplus(make, bias):
    """ExplicitZPlus gives Zennit's ZPlus relevance (signed inputs; biases kept or zeroed), also differentiated in
    its seed."""
    from zennit.rules import ZPlus

    from zennit_bilrp.lrp.mobile_rules import ExplicitZPlus

    torch.manual_seed(5)
    layer = make().to(DTYPE)
    if layer.bias is None:
        layer.bias = torch.nn.Parameter(torch.randn(layer.weight.shape[0], dtype=DTYPE))
    zero = None if bias else ['bias']
    assert_explicit_matches(layer, ZPlus(zero_params=zero), ExplicitZPlus(zero_params=zero))
