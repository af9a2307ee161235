"""MobileEpsilon (z^B at the pixels, z+ below, relative LRP-epsilon with biases in the top layers): rule assignment,
the engine against a per-unit Zennit loop, and the relative stabilizer."""
import pytest
import torch
from zennit.attribution import Gradient

from zennit_bilrp import BiLRP
from zennit_bilrp.lrp.composites import MobileEpsilon, RelativeStabilizer, imagenet_bounds
from zennit_bilrp.lrp.mobile_rules import ExplicitGamma
from zennit_bilrp.models.efficientnet import efficientnet_lite0

from helpers.models import calibrate_batch_norms

DTYPE = torch.float64
SIZE, PATCH = 32, 8
pytestmark = pytest.mark.usefixtures('single_thread')


def calibrated_lite0(seed: int = 0) -> torch.nn.Module:
    """A random EfficientNet-Lite0 embedding (float64) with calibrated BatchNorm layers (merged biases of the size
    they have in a trained network)."""
    torch.manual_seed(seed)
    return calibrate_batch_norms(efficientnet_lite0(pretrained=False, num_classes=0).to(DTYPE), seed, SIZE)


def rules_of(model, composite):
    with composite.context(model):
        return {name: {type(h.__self__).__name__ for h in m._forward_hooks.values() if hasattr(h, '__self__')}
                for name, m in model.named_modules()}


def test_rule_assignment():
    model = efficientnet_lite0(pretrained=False, num_classes=0)
    composite = MobileEpsilon(*imagenet_bounds(torch.float32), top=0.75)
    rules = rules_of(model, composite)
    assert composite.layer_count == 49  # stem, 16 depthwise, 16 projections, 15 expansions, head
    assert rules['stem.conv'] == {'SpreadZBox'}
    assert rules['blocks.3.depthwise.conv'] == {'ZPlusWSquare'}
    assert rules['blocks.3.expand.conv'] == {'ExplicitZPlus'} and rules['blocks.3.project.conv'] == {'ExplicitZPlus'}
    # layer 36 of 0..48 (block b >= 1 has expand 3b, depthwise 3b + 1, project 3b + 2) is the first at relative
    # depth >= 0.75: block 12's expansion
    assert rules['blocks.11.project.conv'] == {'ExplicitZPlus'}
    for name in ('blocks.12.expand.conv', 'blocks.12.depthwise.conv', 'blocks.15.depthwise.conv', 'head.conv'):
        assert rules[name] == {'ExplicitGamma'}, name
    assert rules['blocks.4.residual'] == {'Norm'}
    assert 'ExplicitGamma' not in set().union(*rules_of(model, MobileEpsilon(top=1.5)).values())
    assert rules_of(model, MobileEpsilon(spread=False, low=0.0, high=1.0))['stem.conv'] == {'FastZBox'}
    assert rules_of(model, MobileEpsilon())['stem.conv'] == {'ExplicitZPlus'}  # no bounds: z+ at the pixels
    with pytest.raises(ValueError, match='top must be'):
        MobileEpsilon(top=-0.1)
    with pytest.raises(ValueError, match='epsilon must be non-negative'):
        MobileEpsilon(epsilon=-1.0)


def per_unit_reference(model, x, units, composite):
    """One Zennit ``Gradient`` call per unit (seed: the unit's own value), channels summed, patch-pooled."""
    rows = []
    with Gradient(model=model, composite=composite) as attributor:
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


@pytest.mark.parametrize('method', ['patches', 'batched'])
def test_engine_matches_per_unit_loop(method):
    """Both exact paths of the engine equal a per-unit Zennit loop under the same rules (float64)."""
    model = calibrated_lite0()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    with torch.no_grad():
        units = model(x).abs().sum(0).topk(3).indices

    def make():
        return MobileEpsilon(*imagenet_bounds(DTYPE), top=0.6, epsilon=0.1)

    with BiLRP(model, composite=make(), method=method) as bilrp:
        factors = bilrp.factors(x, pooling=PATCH, units=units)
    expected = per_unit_reference(model, x, units, make())
    error = float((factors.relevance - expected).abs().max() / expected.abs().max())
    assert error < 1e-6  # measured 1.6e-8 (signed relevance through 49 layers cancels; float64)


def test_relative_stabilizer():
    z = torch.tensor([[1.0, -3.0, 0.0, 2.0], [0.5, 0.5, -0.5, -0.5]], dtype=DTYPE)
    out = RelativeStabilizer(0.5)(z)
    expected = torch.tensor([[1.75, -3.75, 0.75, 2.75], [0.75, 0.75, -0.75, -0.75]], dtype=DTYPE)
    torch.testing.assert_close(out, expected)
    # per sample: changing the second sample leaves the first one's stabilized values unchanged
    other = z.clone()
    other[1] *= 100
    torch.testing.assert_close(RelativeStabilizer(0.5)(other)[0], out[0])
    assert float(RelativeStabilizer(0.0)(torch.zeros(1, 3, dtype=DTYPE)).min()) > 0
    assert repr(RelativeStabilizer(0.25)) == 'RelativeStabilizer(epsilon=0.25)'


def test_top_rule_is_relative_epsilon():
    """The top layers' rule is LRP-epsilon with the bias in the denominator and the relative stabilizer, by hand on
    a linear layer: R_i = sum_j x_i w_ij / (z_j + eps mean|z| sign z_j) R_j."""
    layer = torch.nn.Linear(3, 2).to(DTYPE)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.4, -1.0]]))
        layer.bias.copy_(torch.tensor([0.2, -0.1]))
    x = torch.tensor([[0.5, 0.1, 2.0]], dtype=DTYPE, requires_grad=True)
    seed = torch.tensor([[1.5, -0.7]], dtype=DTYPE)
    handle = ExplicitGamma(gamma=0.0, stabilizer=RelativeStabilizer(0.2)).register(layer)
    try:
        relevance, = torch.autograd.grad(layer(x), x, seed)
    finally:
        handle.remove()
    z = x.detach() @ layer.weight.detach().T + layer.bias.detach()
    den = z + 0.2 * z.abs().mean() * z.sign()
    expected = x.detach() * ((seed / den) @ layer.weight.detach())
    torch.testing.assert_close(relevance, expected, rtol=1e-12, atol=1e-14)
