"""Models stay exactly as the user built them, one engine at a time, and misuse gets errors that say what is
wrong."""
import types

import pytest
import torch
from torchvision.models.resnet import BasicBlock
from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlus
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetCanonizer

from zennit_bilrp import BiLRP, ModelGuard, ModelState

from helpers.models import random_batch_norm_statistics

DTYPE = torch.float64


def tiny_resnet():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), BasicBlock(4, 4), BasicBlock(4, 4),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ).to(DTYPE)
    return random_batch_norm_statistics(model).eval()


def user_forward(self, x):
    """A user's instance-level forward: the block's own forward, scaled."""
    return 0.5 * BasicBlock.forward(self, x)


def resnet_composite():
    return EpsilonPlus(zero_params=['bias'], canonizers=[ResNetCanonizer()])


def pair(n=2):
    return torch.rand(n, 3, 8, 8, dtype=DTYPE), torch.rand(n, 3, 8, 8, dtype=DTYPE)


def test_user_instance_forward_survives_the_resnet_canonizer():
    model = tiny_resnet()
    block = model[2]
    block.forward = types.MethodType(user_forward, block)
    forward = block.__dict__['forward']
    x_a, x_b = pair()
    with torch.no_grad():
        before = model(x_a)
    with BiLRP(model, composite=resnet_composite()) as bilrp:
        assert block.__dict__['forward'] is not forward  # the canonizer overloads it ...
        bilrp(x_a, x_b, marginals=False)
    assert block.__dict__.get('forward') is forward  # ... and the user's own is back
    with torch.no_grad():
        torch.testing.assert_close(model(x_a), before, rtol=1e-12, atol=1e-12)


def test_nested_guards_restore_the_outer_canonizer():
    """An inner guard puts back the outer canonizer's overloaded forward that the inner canonizer deletes."""
    model = tiny_resnet()
    state = ModelState.capture(model)
    x = torch.rand(2, 3, 8, 8, dtype=DTYPE)
    with ModelGuard(model):
        outer = ResNetBasicBlockCanonizer().apply(model)
        with torch.no_grad():
            canonized = model(x)
        with ModelGuard(model):
            for handle in ResNetBasicBlockCanonizer().apply(model):
                handle.remove()  # deletes the instance forward, the outer one included
        assert 'forward' in model[2].__dict__
        with torch.no_grad():
            torch.testing.assert_close(model(x), canonized, rtol=1e-12, atol=1e-12)
        for handle in outer:
            handle.remove()  # finds its own forward to remove
    assert state.differences(model) == []


def test_nested_engines_on_one_resnet_are_refused_and_the_outer_stays_right():
    model = tiny_resnet()
    state = ModelState.capture(model)
    x_a, x_b = pair()
    with BiLRP(model, composite=resnet_composite()) as outer:
        first = outer(x_a, x_b, pooling=4, marginals=False)
        with pytest.raises(RuntimeError, match='already has LRP rules registered by another active engine'):
            with BiLRP(model, composite=resnet_composite()):
                pass
        again = outer(x_a, x_b, pooling=4, marginals=False)
    torch.testing.assert_close(again.relevance, first.relevance, rtol=1e-10, atol=1e-12)
    assert state.differences(model) == []


def test_two_engines_at_once_are_refused():
    model = tiny_resnet()
    state = ModelState.capture(model)
    x_a, x_b = pair()
    with pytest.raises(RuntimeError, match='another active engine'):
        with BiLRP(model, EpsilonPlus()) as a, BiLRP(model, EpsilonAlpha2Beta1()) as b:
            b(x_a, x_b)
    assert state.differences(model) == []
    a, b = BiLRP(model, resnet_composite()), BiLRP(model[2], EpsilonAlpha2Beta1())
    with a:
        with pytest.raises(RuntimeError, match='another active engine'):
            with b:  # a sub-module of a registered model is taken too
                pass
        with a:  # re-entering the same engine is fine
            a(x_a, x_b, marginals=False)
    with b:  # free again once the first engine has exited
        pass
    assert state.differences(model) == []


def test_inference_mode_is_named():
    bilrp = BiLRP(tiny_resnet(), composite=resnet_composite())
    x_a, x_b = pair()
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r'torch\.inference_mode\(\) is active'):
            bilrp(x_a, x_b)
        made_in_inference = x_a.clone(), x_b.clone()
    result = bilrp(*made_in_inference, marginals=False)  # inference tensors are fine outside inference_mode
    assert torch.isfinite(result.relevance).all()


def test_unbatched_image_is_named():
    bilrp = BiLRP(tiny_resnet(), composite=resnet_composite())
    x_a, x_b = pair()
    with pytest.raises(ValueError, match=r'expected a batch \(N, C, H, W\)'):
        bilrp(x_a[0], x_b[0])
    with pytest.raises(ValueError, match=r'expected a batch \(N, C, H, W\)'):
        bilrp.factors(x_a[0])


def test_model_shape_error_names_the_input():
    bilrp = BiLRP(tiny_resnet(), composite=resnet_composite())
    x = torch.rand(2, 5, 8, 8, dtype=DTYPE)  # wrong number of channels
    with pytest.raises(RuntimeError, match=r'the model failed on the input batch of shape \(2, 5, 8, 8\)'):
        bilrp.factors(x)
