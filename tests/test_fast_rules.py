"""FastGamma gives exactly the relevance of Zennit's Gamma rule."""
import pytest
import torch
from zennit.attribution import Gradient
from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
from zennit.rules import Gamma
from zennit.types import Convolution, Linear

from zennit_bilrp import BiLRP
from zennit_bilrp.canonizers import canonizers_for
from zennit_bilrp.composites import BiLRPGamma
from zennit_bilrp.fast_rules import FastGamma
from zennit_bilrp.models import SmallResNet

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.mark.parametrize('signed_input', [False, True])
def test_bilrp_gamma_fast_equals_zennit_gamma(signed_input):
    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8), embedding_dim=6).to(DTYPE).eval()
    gen = torch.Generator().manual_seed(1)
    x_a, x_b = torch.rand(2, 3, 8, 8, generator=gen, dtype=DTYPE), torch.rand(2, 3, 8, 8, generator=gen, dtype=DTYPE)
    if signed_input:  # the first layer then sees negative inputs: all four branches are used
        x_a, x_b = 2 * x_a - 1, 2 * x_b - 1
    results = {}
    for fast in (False, True):
        composite = BiLRPGamma(zero_params=['bias'], canonizers=canonizers_for(model), fast=fast)
        with BiLRP(model, composite=composite, similarity='cosine') as bilrp:
            results[fast] = bilrp.explain(x_a, x_b, pooling=4)
    slow, fast = results[False], results[True]
    torch.testing.assert_close(fast.relevance, slow.relevance, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(fast.marginal_a, slow.marginal_a, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(fast.marginal_b, slow.marginal_b, rtol=1e-13, atol=1e-15)
    assert float(fast.relevance.abs().max()) > 0


@pytest.mark.parametrize('gamma', [0.0, 0.25, 1.0])
def test_fast_gamma_single_layers_with_bias(gamma):
    """Per-layer check with biases kept and signed inputs, through Zennit's own attributor."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU(), torch.nn.Conv2d(5, 4, 3),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3)).to(DTYPE).eval()
    x = torch.randn(2, 3, 8, 8, dtype=DTYPE)
    out = {}
    for rule in (Gamma, FastGamma):
        composite = SpecialFirstLayerMapComposite(
            layer_map=layer_map_base() + [((Convolution, Linear), rule(gamma=gamma))],
            first_map=[(Convolution, rule(gamma=gamma))])
        with Gradient(model=model, composite=composite) as attributor:
            _, out[rule] = attributor(x, torch.eye(3, dtype=DTYPE)[[0, 2]])
    torch.testing.assert_close(out[FastGamma], out[Gamma], rtol=1e-13, atol=1e-15)
    assert FastGamma(gamma=gamma).copy().gamma == gamma
