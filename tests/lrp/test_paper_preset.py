"""The BiLRP paper preset against a hand-written reference of the authors' rules, and its rule assignment."""
import pytest
import torch
from torch import nn
from zennit.composites import COMPOSITES
from zennit.rules import Epsilon, Gamma, ZBox

from zennit_bilrp import BiLRP, ModelState
from zennit_bilrp.lrp.composites import (
    VGG16_CONV_INDICES,
    VGG16_GAMMAS,
    BiLRPGamma,
    DepthGamma,
    ShiftStabilizer,
    imagenet_bounds,
    vgg16_gamma,
    vgg_feature_indices,
)

from helpers.paper_rules import SmallVGG, paper_factors, paper_gamma


def _rule(module):
    hooks = [hook.__self__ for hook in module._forward_pre_hooks.values() if hasattr(hook, '__self__')]
    return hooks[0] if hooks else None


def _normalized_images(n: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, size, size, generator=generator, dtype=torch.float64)
    low, high = imagenet_bounds()
    return low + pixels * (high - low)  # (pixels - mean) / std


@pytest.mark.parametrize('fast, shortcut', [(True, True), (False, False)])
def test_paper_preset_equals_reference_of_the_authors_rules(single_thread, fast, shortcut):
    torch.manual_seed(0)
    model = SmallVGG(width=4, embedding=6, size=64).double().eval()
    x_a, x_b = _normalized_images(1, 64, 1), _normalized_images(1, 64, 2)
    low, high = imagenet_bounds()
    expected = paper_factors(model, x_a, 16, low, high).T @ paper_factors(model, x_b, 16, low, high)
    state = ModelState.capture(model)
    with BiLRP(model, composite=BiLRPGamma(fast=fast), similarity='dot', shortcut=shortcut) as bilrp:
        result = bilrp(x_a, x_b, pooling=16)
    assert state.differences(model) == []
    relevance = result.relevance[0]
    assert relevance.shape == expected.shape == (16, 16)
    error = float((relevance - expected).norm() / expected.norm())
    assert error <= 1e-8, error


def test_rules_follow_the_features_index_whatever_the_head():
    torch.manual_seed(0)
    plain = SmallVGG(size=32)
    headed = nn.Sequential()
    headed.add_module('encoder', SmallVGG(size=32))
    headed.add_module('head', nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4)))
    assignments = []
    for model, features, tops in ((plain, plain.features, [plain.projection]),
                                  (headed, headed.encoder.features,
                                   [headed.encoder.projection, headed.head[0], headed.head[2]])):
        composite = BiLRPGamma()
        composite.register(model)
        try:
            rules = {index: _rule(layer) for index, layer in enumerate(features)}
            assert isinstance(rules[0], ZBox)
            gammas = {}
            for index, layer in enumerate(features):
                if isinstance(layer, nn.Conv2d) and index > 0:
                    assert isinstance(rules[index], Gamma)
                    gammas[index] = rules[index].gamma
                elif isinstance(layer, nn.MaxPool2d):
                    assert isinstance(rules[index], Epsilon)
            for top in tops:
                assert isinstance(_rule(top), Epsilon)
            assignments.append(gammas)
        finally:
            composite.remove()
    assert assignments[0] == assignments[1] == {i: paper_gamma(i) for i in VGG16_CONV_INDICES[1:]}


def test_torchvision_vgg16_features_are_found_and_banded():
    from torchvision.models.vgg import cfgs, make_layers

    model = nn.Module()
    model.features = make_layers(cfgs['D'])
    indices = vgg_feature_indices(model)
    assert len(indices) == 31
    convs = tuple(i for i, layer in enumerate(model.features) if isinstance(layer, nn.Conv2d))
    assert convs == VGG16_CONV_INDICES
    assert VGG16_GAMMAS == (0.5,) * 5 + (0.25,) * 3 + (0.1,) * 3 + (0.0,) * 2
    assert [vgg16_gamma(i) for i in range(31)] == [paper_gamma(i) for i in range(31)]


def test_paper_preset_refuses_models_without_features():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    state = ModelState.capture(model)
    with pytest.raises(ValueError, match="no submodule named 'features'.*DepthGamma"):
        BiLRPGamma().register(model)
    assert state.differences(model) == []
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match='both input bounds'):
        BiLRPGamma(low=0.0)
    with pytest.raises(ValueError, match='non-negative'):
        vgg16_gamma(-1)


def test_presets_are_registered_under_their_names():
    assert COMPOSITES['bilrp_gamma'] is BiLRPGamma
    assert COMPOSITES['depth_gamma'] is DepthGamma


def test_shift_stabilizer_adds_epsilon_whatever_the_sign():
    z = torch.tensor([-2.0, -1e-9, 0.0, 3.0], dtype=torch.float64)
    shifted = ShiftStabilizer(1e-9)(z)
    assert torch.allclose(shifted, torch.tensor([-2.0 + 1e-9, 1e-9, 1e-9, 3.0 + 1e-9], dtype=torch.float64),
                          rtol=0, atol=1e-15)
    assert bool((shifted != 0).all())
