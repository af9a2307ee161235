"""Canonizers for mobile inverted-residual networks: brute-force agreement, conservation, model restoration."""
import pytest
import torch
from torchvision.models import efficientnet_b0, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small, resnet18, vgg11
from torchvision.ops.misc import SqueezeExcitation
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

from zennit_bilrp import BiLRP, ModelState
from zennit_bilrp.lrp.canonizers import canonizers_for
from zennit_bilrp.lrp.mobile_canonizers import InvertedResidualCanonizer, SqueezeExcitationCanonizer, constant_gate
from zennit_bilrp.models.efficientnet import efficientnet_lite0

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
    gen = torch.Generator().manual_seed(seed)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen, dtype=DTYPE) + 0.5)
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=gen, dtype=DTYPE) * 0.1)
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, SIZE, SIZE, generator=gen, dtype=DTYPE))
    for bn in batch_norms:
        bn.eps = 1e-12
        if zero_shift:
            bn.running_mean.zero_()
            bn.bias.data.zero_()
    return model.eval()


def composite(model):
    return EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))


def pooled_reference(model, x, units):
    """Per-unit Zennit ``Gradient`` loop (one forward and backward per unit), channels summed, patch-pooled."""
    rows = []
    with Gradient(model=model, composite=composite(model)) as attributor:
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
