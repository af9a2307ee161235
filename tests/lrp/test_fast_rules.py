"""FastGamma gives exactly the relevance of Zennit's Gamma rule."""
import pytest
import torch
from zennit.attribution import Gradient
from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
from zennit.rules import Gamma
from zennit.types import Convolution, Linear

from zennit_bilrp import BiLRP
from zennit_bilrp.lrp.canonizers import canonizers_for
from zennit_bilrp.lrp.composites import DepthGamma
from zennit_bilrp.lrp.fast_rules import FastGamma
from zennit_bilrp.models.small_resnet import SmallResNet
from zennit_bilrp.torch_private import LEGACY_VMAP_READABLE

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.mark.parametrize('signed_input', [False, True])
def test_depth_gamma_fast_equals_zennit_gamma(signed_input):
    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8), embedding_dim=6).to(DTYPE).eval()
    gen = torch.Generator().manual_seed(1)
    x_a, x_b = torch.rand(2, 3, 8, 8, generator=gen, dtype=DTYPE), torch.rand(2, 3, 8, 8, generator=gen, dtype=DTYPE)
    if signed_input:  # the first layer then sees negative inputs: all four branches are used
        x_a, x_b = 2 * x_a - 1, 2 * x_b - 1
    results = {}
    for fast in (False, True):
        composite = DepthGamma(zero_params=['bias'], canonizers=canonizers_for(model), fast=fast)
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


@pytest.mark.parametrize('bounds', ['scalar', 'per_channel'])
def test_fast_zbox_equals_zennit_zbox(bounds):
    """Conv (stacked path), grouped conv (Zennit's path) and linear first layers, biases kept."""
    from zennit.rules import ZBox

    from zennit_bilrp.lrp.fast_rules import FastZBox

    torch.manual_seed(3)
    if bounds == 'scalar':
        low, high = -1.0, 2.0
    else:
        low = torch.tensor([-1.0, -0.5, 0.0], dtype=DTYPE)[None, :, None, None]
        high = torch.tensor([1.0, 1.5, 2.0], dtype=DTYPE)[None, :, None, None]
    x = torch.rand(2, 3, 8, 8, dtype=DTYPE) * 2 - 0.5
    models = [torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(6 * 6 * 6, 3)),
              torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, groups=3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(6 * 6 * 6, 3))]
    inputs = [x, x]
    if bounds == 'scalar':
        models.append(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5), torch.nn.ReLU(),
                                          torch.nn.Linear(5, 3)))
        inputs.append(x)
    for model, inp in zip(models, inputs):
        model = model.to(DTYPE).eval()
        out = {}
        for rule in (ZBox, FastZBox):
            composite = SpecialFirstLayerMapComposite(
                layer_map=layer_map_base() + [((Convolution, Linear), Gamma(gamma=0.25))],
                first_map=[((Convolution, Linear), rule(low=low, high=high))])
            with Gradient(model=model, composite=composite) as attributor:
                _, out[rule] = attributor(inp, torch.eye(3, dtype=DTYPE)[[0, 2]])
        torch.testing.assert_close(out[FastZBox], out[ZBox], rtol=1e-12, atol=1e-14)
        assert float(out[ZBox].abs().max()) > 0
    assert FastZBox(low=0.0, high=1.0).copy().high == 1.0


def test_fast_gamma_grouped_convolution_takes_the_branch_path():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Conv2d(6, 6, 3, groups=2),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 3)).to(DTYPE).eval()
    x = torch.rand(2, 3, 8, 8, dtype=DTYPE)
    out = {}
    for rule in (Gamma, FastGamma):
        composite = SpecialFirstLayerMapComposite(
            layer_map=layer_map_base() + [((Convolution, Linear), rule(gamma=0.5))],
            first_map=[(Convolution, rule(gamma=0.5))])
        with Gradient(model=model, composite=composite) as attributor:
            _, out[rule] = attributor(x, torch.eye(3, dtype=DTYPE)[[1, 2]])
    torch.testing.assert_close(out[FastGamma], out[Gamma], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize('composite_name', ['depth_gamma', 'epsilon_plus', 'epsilon_gamma_box', 'epsilon_alpha2_beta1',
                                            'epsilon_plus_flat'])
def test_rule_shortcuts_change_nothing_but_the_work(composite_name):
    """Skipping the gradients that the rules replace (and, for Zennit's own rules, those of all-zero branches)
    gives the same relevance, also with in-place ReLUs after the hooked layers and skip connections (ResNet
    canonizer), and the hooks are gone afterwards."""
    import torchvision
    from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    def make():
        kwargs = {'zero_params': ['bias'], 'canonizers': [ResNetCanonizer()]}
        if composite_name == 'depth_gamma':
            return DepthGamma(zero_params=['bias'], canonizers=canonizers_for(model))
        if composite_name == 'epsilon_gamma_box':
            return EpsilonGammaBox(low=-1.0, high=1.0, **kwargs)
        return {'epsilon_plus': EpsilonPlus, 'epsilon_alpha2_beta1': EpsilonAlpha2Beta1,
                'epsilon_plus_flat': EpsilonPlusFlat}[composite_name](**kwargs)

    torch.manual_seed(5)
    model = torchvision.models.resnet18(num_classes=8).to(DTYPE).eval()
    x_a, x_b = torch.rand(2, 3, 32, 32, dtype=DTYPE), torch.rand(2, 3, 32, 32, dtype=DTYPE)
    if composite_name == 'epsilon_gamma_box':  # signed pixels: the first layer's branches all take part
        x_a, x_b = 2 * x_a - 1, 2 * x_b - 1
    results = {}
    for shortcut in (False, True):
        composite = make()
        hooks = sum(len(m._forward_hooks) for m in model.modules())
        with BiLRP(model, composite=composite, similarity='dot', shortcut=shortcut) as bilrp:
            results[shortcut] = bilrp.explain(x_a, x_b, pooling=8)
            with_shortcut = sum(len(m._forward_hooks) for m in model.modules())
        assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
        rules = [hook.__self__ for m in model.modules() for hook in m._forward_hooks.values()
                 if hasattr(hook, '__self__')]
        assert not any('backward' in rule.__dict__ for rule in rules)
    assert with_shortcut > hooks
    assert float(results[False].relevance.abs().max()) > 0
    torch.testing.assert_close(results[True].relevance, results[False].relevance, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(results[True].marginal_a, results[False].marginal_a, rtol=1e-11, atol=1e-13)


def test_pruned_backward_is_restored():
    from zennit.composites import EpsilonPlus

    from zennit_bilrp.lrp.fast_rules import register_rule_shortcuts

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3)).to(DTYPE).eval()
    composite = EpsilonPlus()
    with composite.context(model):
        rule = next(h.__self__ for h in model[2]._forward_hooks.values() if hasattr(h, '__self__'))
        handles = register_rule_shortcuts(model)
        assert 'backward' in rule.__dict__
        for handle in handles:
            handle.remove()
        assert 'backward' not in rule.__dict__


def test_rule_shortcuts_keep_the_gradient_of_inactive_rules():
    """Inside Zennit's ``composite.inactive()`` the rules pass the plain gradient on: so must the shortcut."""
    from zennit.composites import EpsilonPlus

    from zennit_bilrp.lrp.fast_rules import register_rule_shortcuts

    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 2)).to(DTYPE).eval()
    x = torch.rand(1, 3, 8, 8, dtype=DTYPE, requires_grad=True)
    plain, = torch.autograd.grad(model(x).sum(), x)
    composite = EpsilonPlus()
    with composite.context(model):
        handles = register_rule_shortcuts(model)
        try:
            with composite.inactive():
                grad, = torch.autograd.grad(model(x).sum(), x)
            relevance, = torch.autograd.grad(model(x).sum(), x)
        finally:
            for handle in handles:
                handle.remove()
    torch.testing.assert_close(grad, plain)
    assert not torch.allclose(relevance, plain)


def conv_relu_model(seed=4):
    """Convolutions directly followed by ReLUs, biases kept: the output relevance of each convolution is zero
    wherever its plain output z0 is negative, so FastGamma skips the s- branch."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32, 10), torch.nn.ReLU(), torch.nn.Linear(10, 5),
    ).to(DTYPE).eval()


@pytest.mark.parametrize('method', ['batched', 'loop', 'patches'])
def test_fast_gamma_skips_the_negative_branch_after_a_relu(method, monkeypatch):
    """The skip is taken (in plain, vmap-batched and differentiable passes) and changes nothing: equal to Zennit's
    Gamma and to FastGamma without the skip."""
    import zennit_bilrp.lrp.fast_rules as fast_rules

    model = conv_relu_model()
    gen = torch.Generator().manual_seed(5)
    x_a, x_b = torch.randn(2, 3, 8, 8, generator=gen, dtype=DTYPE), torch.randn(2, 3, 8, 8, generator=gen,
                                                                                   dtype=DTYPE)
    answers = []
    original = fast_rules.vanishes_where

    def recording(tensor, mask):
        answers.append(original(tensor, mask))
        return answers[-1]

    monkeypatch.setattr(fast_rules, 'vanishes_where', recording)
    results = {}
    for label, fast, skip in (('zennit', False, True), ('fast', True, False), ('fast skip', True, True)):
        monkeypatch.setattr(FastGamma, 'skip_vanishing', skip)
        answers.clear()
        composite = DepthGamma(canonizers=[], fast=fast)
        with BiLRP(model, composite=composite, method=method, chunk_size=3) as bilrp:
            results[label] = bilrp.explain(x_a, x_b, pooling=4)
        if label == 'fast skip' and (method == 'loop' or LEGACY_VMAP_READABLE):
            # the three convolutions and the hidden linear layer skip; the last layer's relevance is not masked
            assert any(answers) and not all(answers)
    for label in ('fast', 'fast skip'):
        torch.testing.assert_close(results[label].relevance, results['zennit'].relevance, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(results[label].marginal_a, results['zennit'].marginal_a, rtol=1e-12, atol=1e-15)


@pytest.mark.skipif(not LEGACY_VMAP_READABLE, reason='torch < 2.1: vanishes_where cannot read vmap-batched tensors and '
                    'answers False, so the full rule runs (the same relevance, without the skip)')
def test_vanishes_where_sees_every_seed_of_a_batched_pass():
    from zennit_bilrp.lrp.fast_rules import vanishes_where

    gen = torch.Generator().manual_seed(6)
    values = torch.randn(3, 4, generator=gen, dtype=DTYPE)
    mask = values < 0
    seeds = torch.where(mask, 0.0, torch.randn(5, 3, 4, generator=gen, dtype=DTYPE))
    answers = []

    def check(seed):
        answers.append(vanishes_where(seed, mask))
        return seed * 2

    torch.vmap(check)(seeds)
    seeds[3][mask] = 1e-300  # one seed of five is non-zero where masked
    torch.vmap(check)(seeds)
    assert answers == [True, False]
    assert vanishes_where(seeds[0], mask) and not vanishes_where(seeds[3], mask)
    assert not vanishes_where(seeds[0], mask[:2])  # shapes that do not fit: no skip
    # the engine's batched passes: torch.autograd.grad(is_grads_batched=True), PyTorch's legacy vmap
    inputs = values.clone().requires_grad_(True)
    output = inputs * 3
    answers.clear()
    output.register_hook(lambda grad: answers.append(vanishes_where(grad, mask)))
    for batch in (seeds[:3], seeds):
        torch.autograd.grad(output, inputs, batch, is_grads_batched=True, retain_graph=True)
    assert answers == [True, False]
