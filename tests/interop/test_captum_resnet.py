"""BiLRPAttribution on torchvision resnet18 (BatchNorm, skip connections): composite and canonizers reach the model
exactly once, so the adapter equals the engine."""
import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from zennit.composites import EpsilonPlus
from zennit.torchvision import ResNetCanonizer

from zennit_bilrp import BiLRP, ModelState
from zennit_bilrp.interop.captum_adapter import BiLRPAttribution

from helpers.models import random_batch_norm_statistics

DTYPE = torch.float64


@pytest.fixture(scope='module')
def model():
    """resnet18 with random BatchNorm statistics (a merge applied twice changes the function) and a small
    embedding (6 units keep the test fast)."""
    torch.manual_seed(0)
    net = resnet18()
    net.fc = nn.Linear(512, 6, bias=False)
    random_batch_norm_statistics(net, affine=True, bias=True)
    return net.to(DTYPE).eval()


def pair_of_inputs():
    gen = torch.Generator().manual_seed(1)
    return tuple(torch.rand(2, 3, 32, 32, generator=gen, dtype=DTYPE) for _ in range(2))


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize('where', ['composite', 'argument'])
def test_resnet18_adapter_equals_engine(model, where, single_thread):
    x, x_ref = pair_of_inputs()

    def settings():  # fresh canonizer instances for each user
        if where == 'composite':
            return {'composite': EpsilonPlus(zero_params=['bias'], canonizers=[ResNetCanonizer()])}
        return {'composite': EpsilonPlus(zero_params=['bias']), 'canonizers': [ResNetCanonizer()]}

    state = ModelState.capture(model)
    explainer = BiLRPAttribution(model, similarity='cosine', **settings())
    marg, delta = explainer.attribute(x, partner=x_ref, return_convergence_delta=True)
    pair = explainer.attribute(x, partner=x_ref, output='pairwise', pooling=8)
    y = explainer.forward_similarity(x, x_ref)
    assert state.differences(model) == []
    with BiLRP(model, similarity='cosine', **settings()) as bilrp:
        ref = bilrp(x, x_ref, pooling=8)
    with torch.no_grad():
        expected_y = torch.cosine_similarity(model(x), model(x_ref), dim=1)
    assert torch.allclose(y, expected_y, rtol=1e-12, atol=0)
    assert torch.allclose(ref.similarity, expected_y, rtol=1e-12, atol=0)
    assert relative_error(marg, ref.marginal_a) < 1e-10
    assert relative_error(pair, ref.relevance) < 1e-10
    assert torch.allclose(delta, ref.delta, rtol=0, atol=1e-12)
