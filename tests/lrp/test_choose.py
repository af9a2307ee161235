"""composite_for: one choice of rules per model, canonizers for every BatchNorm network, clear refusals."""
import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v3_small, resnet18
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.torchvision import ResNetCanonizer

from zennit_bilrp import BiLRP
from zennit_bilrp.lrp.choose import NoRulesError, composite_for, resolve_bounds
from zennit_bilrp.lrp.composites import DepthGamma, MobileComposite, imagenet_bounds
from zennit_bilrp.lrp.mobile_canonizers import InvertedResidualCanonizer


def _bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def test_batch_norm_model_gets_its_canonizers():
    composite = composite_for(_bn_cnn())
    assert isinstance(composite, DepthGamma)
    assert any(isinstance(c, SequentialMergeBatchNorm) for c in composite.canonizers)
    assert composite.zero_params == ['bias']


def test_resnet_and_mobile_networks():
    resnet = composite_for(resnet18().eval())
    assert any(isinstance(c, ResNetCanonizer) for c in resnet.canonizers)
    mobile = composite_for(mobilenet_v3_small().eval(), 'imagenet')
    assert isinstance(mobile, MobileComposite)
    assert any(isinstance(c, InvertedResidualCanonizer) for c in mobile.canonizers)
    low, _ = imagenet_bounds()
    assert torch.allclose(torch.as_tensor(mobile.low, dtype=low.dtype), low)


def test_given_canonizers_replace_the_automatic_ones():
    assert composite_for(_bn_cnn(), canonizers=[]).canonizers == []


def test_bounds():
    assert resolve_bounds(None) is None
    assert resolve_bounds('unit') == (0.0, 1.0)
    assert resolve_bounds((-1.0, 2.0)) == (-1.0, 2.0)
    with pytest.raises(ValueError, match='unknown bounds'):
        resolve_bounds('pixels')
    with pytest.raises(ValueError, match='pair'):
        resolve_bounds((0.0,))
    composite = composite_for(_bn_cnn(), 'unit')
    assert composite.first == 'zbox' and (composite.low, composite.high) == (0.0, 1.0)


def test_layers_without_rules_are_refused_by_name():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(NoRulesError, match=r"'1' \(LayerNorm\).*composite="):
        composite_for(model)
    with pytest.raises(TypeError, match='torch.nn.Module'):
        composite_for(lambda x: x)


def test_engine_default_is_composite_for():
    """Without a composite the engine (and a second tower) use composite_for's rules, canonizers included; with
    canonizers given to the engine the composite brings none (no double canonization)."""
    model, tower = _bn_cnn().double(), _bn_cnn().double()
    bilrp = BiLRP(model, model_b=tower)
    for composite in (bilrp.composite, bilrp.composite_b):
        assert isinstance(composite, DepthGamma)
        assert any(isinstance(c, SequentialMergeBatchNorm) for c in composite.canonizers)
    assert BiLRP(model, canonizers=[SequentialMergeBatchNorm()]).composite.canonizers == []
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with bilrp:
        result = bilrp(x[:1], x[1:], pooling=4)
    assert abs((result.relevance.sum() / result.similarity.sum()).item() - 1.0) < 1e-2
