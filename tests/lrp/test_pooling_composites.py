"""Pooling geometry, the BiLRP composite preset, canonizer selection and torchvision architectures."""
import pytest
import torch
import torchvision
from zennit.composites import COMPOSITES, EpsilonPlus
from zennit.rules import Gamma, ZBox

from zennit_bilrp import BiLRP, ModelState, Pooling, canonizers_for, gamma_schedule
from zennit_bilrp.lrp.composites import DEPTH_GAMMAS, DepthGamma


def test_pooling_patch_grid_and_totals():
    rel = torch.randn(2, 3, 3, 8, 12, dtype=torch.float64)
    pooled = Pooling(patch=4)(rel, n_sample_axes=3)
    assert pooled.shape == (2, 3, 6)
    assert torch.allclose(pooled.sum(-1), rel.sum(dim=(2, 3, 4)))
    # patch (0, 1) covers rows 0..3 and columns 4..7, all channels
    assert torch.allclose(pooled[..., 1], rel[..., 0:4, 4:8].sum(dim=(2, 3, 4)))
    assert torch.equal(Pooling(grid=(2, 3))(rel, n_sample_axes=3), pooled)
    unsummed = Pooling(patch=4, sum_channels=False).resolve((3, 8, 12))
    assert unsummed.grid == (3, 2, 3) and unsummed.num_patches == 18
    vector = Pooling(patch=2).resolve((6,))
    assert vector.grid == (3,) and not vector.channels_summed


def test_patch_geometry():
    grid = Pooling(patch=4).resolve((3, 8, 12))
    assert grid.grid == (2, 3)
    assert grid.patch_index(1, 2) == 5
    assert tuple(int(c) for c in grid.patch_coords(5)) == (1, 2)
    centers = grid.patch_centers()
    assert centers.shape == (6, 2)
    assert centers[5].tolist() == [5.5, 9.5]


@pytest.mark.parametrize('kwargs, message', [
    ({'patch': 0}, 'positive int'),
    ({'grid': (2, -1)}, 'positive int'),
])
def test_pooling_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pooling(**kwargs)


def test_pooling_rejects_non_dividing_grid():
    with pytest.raises(ValueError, match=r'grid \(3, 3\) does not divide'):
        Pooling(grid=3).resolve((3, 8, 8))
    with pytest.raises(ValueError, match='has 3 entries but the input has 2 spatial axes'):
        Pooling(patch=(2, 2, 2)).resolve((3, 8, 8))


def test_gamma_schedule_reads_the_depth_schedule():
    assert [gamma_schedule(i, 13) for i in range(13)] == list(DEPTH_GAMMAS)
    assert gamma_schedule(0, 1) == 0.5
    assert gamma_schedule(25, 26) == 0.0


def test_depth_gamma_is_registered_and_assigns_depth_rules():
    assert COMPOSITES['depth_gamma'] is DepthGamma
    model = torchvision.models.vgg16()
    model.classifier = torch.nn.Identity()
    composite = DepthGamma(first='zbox', low=0.0, high=1.0)
    state = ModelState.capture(model)
    composite.register(model)
    try:
        convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
        hooks = []
        for conv in convs:
            hook = next(iter(conv._forward_pre_hooks.values())).__self__
            hooks.append(hook)
        assert isinstance(hooks[0], ZBox)
        assert all(isinstance(h, Gamma) for h in hooks[1:])
    finally:
        composite.remove()
    assert state.differences(model) == []
    with pytest.raises(ValueError, match='needs the input bounds'):
        DepthGamma(first='zbox')


def test_canonizers_for_architectures():
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    assert isinstance(canonizers_for(torchvision.models.resnet18())[0], ResNetCanonizer)
    assert isinstance(canonizers_for(torchvision.models.vgg11_bn())[0], VGGCanonizer)
    assert isinstance(canonizers_for(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1)))[0],
                      SequentialMergeBatchNorm)
    assert canonizers_for(torch.nn.Linear(2, 2)) == []


def _truncate(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    if name.startswith('resnet'):
        model.fc = torch.nn.Linear(model.fc.in_features, 6, bias=False)
    else:
        model.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        model.classifier = torch.nn.Linear(512, 6, bias=False)
    return model.eval()


@pytest.mark.parametrize('name', ['resnet18', 'resnet34', 'resnet50', 'vgg11', 'vgg11_bn', 'vgg16', 'vgg16_bn'])
def test_torchvision_architectures(name):
    """Every supported torchvision family runs, conserves with bias-free rules, and is left unchanged."""
    model = _truncate(name)
    state = ModelState.capture(model)
    x_a, x_b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    composite = EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))
    with BiLRP(model, composite=composite, similarity='cosine') as bilrp:
        result = bilrp(x_a, x_b, pooling=8)
    assert result.relevance.shape == (1, 16, 16)
    assert torch.isfinite(result.relevance).all()
    assert abs(float(result.delta[0])) < 1e-3 * abs(float(result.similarity[0])) + 1e-6
    assert state.differences(model) == []


def test_default_composite_runs_and_is_the_depth_preset():
    model = _truncate('vgg11')
    bilrp = BiLRP(model)
    assert isinstance(bilrp.composite, DepthGamma)
    result = bilrp(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), pooling=16)
    assert torch.isfinite(result.relevance).all()
