"""BiLRPAttribution with Captum tooling, convergence delta, and the Captum-LRP cross-check."""
import inspect

import pytest
import torch
from captum.attr import GradientAttribution, NoiseTunnel, visualization
from captum.metrics import infidelity, infidelity_perturb_func_decorator, sensitivity_max
from matplotlib.figure import Figure
from torch import nn
from zennit.composites import EpsilonPlus, NameMapComposite
from zennit.rules import Epsilon

from zennit_bilrp import BiLRP, ModelState, canonizers_for
from zennit_bilrp.interop.captum_adapter import BiLRPAttribution, expand_partner
from zennit_bilrp.interop.captum_lrp import captum_bilrp, captum_factors, zennit_epsilon_composite
from zennit_bilrp.models.small_resnet import SmallResNet

from helpers.models import random_batch_norm_statistics

DTYPE = torch.float64
SHAPE = (3, 8, 8)


def small_cnn():
    torch.manual_seed(0)
    return SmallResNet(widths=(4, 8), embedding_dim=6, batch_norm=False).to(DTYPE).eval()


def linear_model(h=5):
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, h, bias=False)).to(DTYPE).eval()


class PlainCNN(nn.Module):
    """Bias-free, BatchNorm-free CNN built only from layers Captum's LRP supports."""

    def __init__(self, h=5):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(6, 8, 3, padding=1, stride=2, bias=False), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, h, bias=False)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))), 1))


def inputs(n=2, shape=SHAPE, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=gen, dtype=DTYPE), torch.rand(n, *shape, generator=gen, dtype=DTYPE)


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max())


def test_is_a_captum_attribution():
    explainer = BiLRPAttribution(small_cnn(), composite=EpsilonPlus())
    assert isinstance(explainer, GradientAttribution)
    assert explainer.has_convergence_delta()
    assert explainer.multiplies_by_inputs
    assert hasattr(explainer.attribute, '__wrapped__')  # NoiseTunnel calls attribute.__wrapped__


@pytest.mark.parametrize('similarity', ['dot', 'cosine'])
def test_outputs_match_engine_and_shapes(similarity):
    model = small_cnn()
    x, xp = inputs()
    state = ModelState.capture(model)
    explainer = BiLRPAttribution(model, composite=EpsilonPlus(), similarity=similarity)
    marg = explainer.attribute(x, partner=xp)
    marg_tuple = explainer.attribute((x,), partner=xp)
    marg_a, marg_b = explainer.attribute((x, xp), pair=True)
    pair = explainer.attribute((x, xp), pair=True, output='pairwise', pooling=2)
    pair_full = explainer.attribute(x, partner=xp, output='pairwise')
    assert state.differences(model) == []
    with BiLRP(model, composite=EpsilonPlus(), similarity=similarity) as bilrp:
        ref = bilrp(x, xp, pooling=2)
    assert marg.shape == x.shape and isinstance(marg_tuple, tuple) and marg_tuple[0].shape == x.shape
    assert marg_b.shape == xp.shape
    assert torch.allclose(marg, ref.marginal_a, rtol=1e-10, atol=1e-14)
    assert torch.equal(marg, marg_tuple[0]) and torch.allclose(marg, marg_a, rtol=1e-10, atol=1e-14)
    assert torch.allclose(marg_b, ref.marginal_b, rtol=1e-10, atol=1e-14)
    assert pair.shape == (2, 16, 16) and relative_error(pair, ref.relevance) < 1e-10
    # the marginal is the row sum of the pairwise relevance (per position, channels summed)
    assert relative_error(marg.sum(dim=1).flatten(1), pair_full.sum(dim=2)) < 1e-9


def test_convergence_delta_is_similarity_minus_relevance():
    model = small_cnn()
    x, xp = inputs()
    explainer = BiLRPAttribution(model, composite=EpsilonPlus(), similarity='cosine')
    pair, delta = explainer.attribute(x, partner=xp, output='pairwise', pooling=4, return_convergence_delta=True)
    marg, delta_m = explainer.attribute(x, partner=xp, return_convergence_delta=True)
    with torch.no_grad():
        y = torch.cosine_similarity(model(x), model(xp), dim=1)  # independent forward
    assert delta.shape == (2,)
    assert torch.allclose(delta, y - pair.sum(dim=(1, 2)), rtol=0, atol=1e-12)
    assert torch.allclose(delta_m, y - marg.flatten(1).sum(dim=1), rtol=0, atol=1e-12)
    assert torch.allclose(explainer.compute_convergence_delta(marg, None, x, partner=xp), delta_m, rtol=0, atol=1e-12)
    assert torch.allclose(explainer.compute_convergence_delta(pair, None, x, partner=xp), delta, rtol=0, atol=1e-12)


def test_partner_expansion_follows_captum():
    model = small_cnn()
    x, xp = inputs(n=4)
    explainer = BiLRPAttribution(model, composite=EpsilonPlus())
    expanded = explainer.attribute(x, partner=xp[:2])  # rows 0,1 pair with partner 0; rows 2,3 with partner 1
    explicit = explainer.attribute(x, partner=xp[:2].repeat_interleave(2, dim=0))
    assert torch.equal(expanded, explicit)
    single = BiLRPAttribution(model, composite=EpsilonPlus(), partner=xp[:1]).attribute(x)
    assert torch.allclose(single, explainer.attribute(x, partner=xp[:1].expand(4, *SHAPE)), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match='does not divide'):
        expand_partner(xp[:3], 4)


@pytest.mark.parametrize('nt_type', ['smoothgrad', 'smoothgrad_sq'])
def test_noise_tunnel(nt_type):
    model = small_cnn()
    x, xp = inputs()
    explainer = BiLRPAttribution(model, composite=EpsilonPlus())
    n, stdev = 3, 0.1
    torch.manual_seed(7)
    smooth, delta = NoiseTunnel(explainer).attribute(x, partner=xp, nt_type=nt_type, nt_samples=n, stdevs=stdev,
                                                     return_convergence_delta=True)
    # the same noise, drawn as NoiseTunnel draws it, explained directly
    torch.manual_seed(7)
    noise = torch.normal(0, torch.tensor(stdev).repeat((2 * n,) + SHAPE))
    noisy = x.repeat_interleave(n, dim=0) + noise
    direct, direct_delta = explainer.attribute(noisy, partner=xp, return_convergence_delta=True)
    direct = direct.reshape(2, n, *SHAPE)
    expected = direct.mean(dim=1) if nt_type == 'smoothgrad' else (direct ** 2).mean(dim=1)
    assert smooth.shape == x.shape
    assert torch.allclose(smooth, expected, rtol=1e-10, atol=1e-14)
    assert torch.allclose(delta, direct_delta, rtol=1e-10, atol=1e-14)


def test_noise_tunnel_on_pairwise_output():
    model = small_cnn()
    x, xp = inputs()
    explainer = BiLRPAttribution(model, composite=EpsilonPlus())
    torch.manual_seed(5)
    smooth = NoiseTunnel(explainer).attribute(x, partner=xp, nt_type='smoothgrad', nt_samples=2, stdevs=0.05,
                                              output='pairwise', pooling=4)
    torch.manual_seed(5)
    noisy = x.repeat_interleave(2, dim=0) + torch.normal(0, torch.tensor(0.05).repeat((4,) + SHAPE))
    direct = explainer.attribute(noisy, partner=xp, output='pairwise', pooling=4).reshape(2, 2, 4, 4).mean(dim=1)
    assert smooth.shape == (2, 4, 4) and torch.allclose(smooth, direct, rtol=1e-10, atol=1e-14)


def test_infidelity_vanishes_for_linear_embedding():
    # phi(x) = W x, y = <phi(x), phi(x')>: the marginal is x * dy/dx, and y is linear in x, so every
    # perturbation's change f(x) - f(x - I) is explained exactly
    model = linear_model()
    x, xp = inputs(shape=(3, 4, 4))
    x = x + 0.5  # away from zero: infidelity divides attributions by the inputs
    explainer = BiLRPAttribution(model, composite=zennit_epsilon_composite(1e-12))
    attributions = explainer.attribute(x, partner=xp)

    @infidelity_perturb_func_decorator(multiply_by_inputs=True)
    def perturb(inp):
        return inp - torch.randn_like(inp) * 0.1

    torch.manual_seed(0)
    forward = explainer.similarity_function(partner=xp)
    score = infidelity(forward, perturb, x, attributions, n_perturb_samples=4)
    scale = float(forward(x).abs().max()) ** 2
    assert score.shape == (2,) and float(score.max()) < 1e-12 * scale
    torch.manual_seed(0)
    wrong = infidelity(forward, perturb, x, torch.rand_like(attributions), n_perturb_samples=4)
    assert float(wrong.min()) > 1e-6 * scale  # the metric does see a wrong explanation


@pytest.mark.parametrize('output', ['marginal', 'pairwise'])
def test_sensitivity_max_matches_direct_computation(output):
    model = small_cnn()
    x, xp = inputs()
    explainer = BiLRPAttribution(model, composite=EpsilonPlus())
    n = 3

    def perturb(inp, perturb_radius=0.02):
        rows = inp.shape[0]
        shift = torch.arange(rows, dtype=inp.dtype).reshape(rows, 1, 1, 1) % n + 1
        return inp + perturb_radius * torch.sin(shift * torch.arange(inp[0].numel(), dtype=inp.dtype)
                                                .reshape(1, *inp.shape[1:]))

    score = sensitivity_max(explainer.attribute, x, perturb_func=perturb, n_perturb_samples=n, partner=xp,
                            output=output, pooling=4)
    base = explainer.attribute(x, partner=xp, output=output, pooling=4)
    perturbed = explainer.attribute(perturb(x.repeat_interleave(n, dim=0)), partner=xp.repeat_interleave(n, dim=0),
                                    output=output, pooling=4)
    ratio = (perturbed - base.repeat_interleave(n, dim=0)).flatten(1).norm(dim=1).reshape(2, n)
    expected = (ratio / base.flatten(1).norm(dim=1, keepdim=True)).max(dim=1).values
    assert torch.allclose(score, expected, rtol=1e-9, atol=0)


def test_visualize_image_attr_on_marginal():
    model = small_cnn()
    x, xp = inputs()
    marg = BiLRPAttribution(model, composite=EpsilonPlus()).attribute(x, partner=xp)
    image = x[0].permute(1, 2, 0).numpy()
    fig, ax = visualization.visualize_image_attr(marg[0].permute(1, 2, 0).numpy(), image, method="blended_heat_map",
                                                 sign="all",
                                   use_pyplot=False)
    assert isinstance(fig, Figure) and len(ax.images) == 2  # the image and the heatmap


def test_forward_function_with_additional_args():
    model = small_cnn()
    x, xp = inputs(n=3)
    gen = torch.Generator().manual_seed(4)
    masks = (torch.rand(3, 1, 8, 8, generator=gen) > 0.3).to(DTYPE)  # one mask per pair, 0/1 values

    def embed(inp, mask, units):
        return model(inp * mask)[:, units]

    units = [0, 2, 3, 5]
    explainer = BiLRPAttribution(embed, composite=EpsilonPlus())
    marg, delta = explainer.attribute(x, partner=xp, additional_forward_args=(masks, units),
                                      return_convergence_delta=True)
    pair = explainer.attribute((x, xp), pair=True, additional_forward_args=(masks, units), output='pairwise',
                               pooling=4)
    for i in range(3):  # reference: a module that applies the mask of pair i, explained pair by pair
        class Masked(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, inp, mask=masks[i:i + 1]):
                return self.model(inp * mask)[:, units]

        with BiLRP(Masked(), composite=EpsilonPlus()) as bilrp:
            ref = bilrp(x[i:i + 1], xp[i:i + 1], pooling=4)
        assert torch.allclose(marg[i:i + 1], ref.marginal_a, rtol=1e-10, atol=1e-14)
        assert torch.allclose(pair[i:i + 1], ref.relevance, rtol=1e-10, atol=1e-14)
        assert torch.allclose(delta[i:i + 1], ref.delta, rtol=1e-8, atol=1e-14)


def test_bound_method_forward_function_finds_its_module():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = small_cnn()

        def embed(self, inp):
            return self.body(inp)[:, :4]

    model = TwoHeads()
    x, xp = inputs()
    explainer = BiLRPAttribution(model.embed, composite=EpsilonPlus())
    assert explainer.model.hooked[0] is model
    with BiLRP(model.body, composite=EpsilonPlus()) as bilrp:
        full = bilrp.factors(torch.cat([x, xp]), pooling=4)
    expected = torch.einsum('bmp,bmq->bpq', full.relevance[:2, :4], full.relevance[2:, :4])
    assert torch.allclose(explainer.attribute((x, xp), pair=True, output='pairwise', pooling=4), expected, rtol=1e-10,
                          atol=1e-14)


def test_bad_arguments():
    model = small_cnn()
    x, xp = inputs()
    explainer = BiLRPAttribution(model, composite=EpsilonPlus())
    with pytest.raises(ValueError, match='no target'):
        explainer.attribute(x, partner=xp, target=0)
    with pytest.raises(ValueError, match='output must be'):
        explainer.attribute(x, partner=xp, output='both')
    with pytest.raises(ValueError, match='do not also pass a partner'):
        explainer.attribute((x, xp), partner=xp, pair=True)
    with pytest.raises(ValueError, match=r'pair=True needs inputs=\(x_a, x_b\)'):
        explainer.attribute(x, pair=True)
    with pytest.raises(ValueError, match='no partner'):
        explainer.attribute(x)
    with pytest.raises(ValueError, match='reaches no nn.Module'):
        BiLRPAttribution(lambda inp: inp.flatten(1))


@pytest.mark.parametrize('similarity', ['dot', 'cosine'])
def test_captum_lrp_path_matches_engine(similarity):
    torch.manual_seed(2)
    model = PlainCNN().to(DTYPE).eval()
    x, xp = inputs()
    state = ModelState.capture(model)
    reference = captum_bilrp(model, x, xp, similarity=similarity, pooling=2)
    assert state.differences(model) == []
    explainer = BiLRPAttribution(model, composite=zennit_epsilon_composite(), similarity=similarity)
    engine = explainer.attribute((x, xp), pair=True, output='pairwise', pooling=2)
    assert relative_error(engine, reference) < 1e-5
    factors = captum_factors(model, x, pooling=2, units=torch.tensor([1, 3]))
    assert factors.relevance.shape == (2, 2, 16)


def test_marginal_forms_no_pairwise_matrix():
    # 64x96 per position is 6144 x 6144 pairwise entries; the marginal needs none of them
    model = small_cnn()
    x, xp = inputs(shape=(3, 64, 96))
    explainer = BiLRPAttribution(model, composite=EpsilonPlus(), similarity='cosine', max_pairwise_entries=1000)
    marg, delta = explainer.attribute(x, partner=xp, return_convergence_delta=True)
    with BiLRP(model, composite=EpsilonPlus(), similarity='cosine') as bilrp:
        ref = bilrp(x, xp, pooling=16)  # 24 x 24 patches: the marginals do not depend on the pooling
    assert marg.shape == x.shape
    assert torch.allclose(marg, ref.marginal_a, rtol=1e-10, atol=1e-14 * float(ref.marginal_a.abs().max()))
    assert torch.allclose(delta, ref.delta, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='pairwise matrix would have'):
        explainer.attribute(x, partner=xp, output='pairwise')  # the limit still guards the pairwise output


def test_compute_convergence_delta_follows_captum_signature():
    model = small_cnn()
    x, xp = inputs()
    explainer = BiLRPAttribution(model, composite=EpsilonPlus(), partner=xp)
    names = list(inspect.signature(explainer.compute_convergence_delta).parameters)
    captum = list(inspect.signature(GradientAttribution.compute_convergence_delta).parameters)[1:]
    assert names[:len(captum)] == captum  # attributions, start_point, end_point, target, additional_forward_args
    marg, delta = explainer.attribute(x, return_convergence_delta=True)
    assert torch.allclose(explainer.compute_convergence_delta(marg, None, x), delta, rtol=0, atol=1e-12)
    assert torch.allclose(explainer.compute_convergence_delta(marg, None, x, None, None), delta, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='start_point must be None'):
        explainer.compute_convergence_delta(marg, torch.zeros_like(x), x)  # a baseline is not the input
    with pytest.raises(ValueError, match='end_point is required'):
        explainer.compute_convergence_delta(marg)
    pair, pair_delta = explainer.attribute((x, xp), pair=True, return_convergence_delta=True)
    assert torch.allclose(explainer.compute_convergence_delta(pair, None, (x, xp), pair=True), pair_delta, rtol=0,
                          atol=1e-12)


class MaskedModule(nn.Module):
    """A module whose forward takes an extra, not explained argument (0/1 mask), like a Captum model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inp, mask):
        return self.model(inp * mask)


def test_module_forward_receives_additional_args():
    model = MaskedModule(small_cnn())
    x, xp = inputs(n=3)
    gen = torch.Generator().manual_seed(8)
    masks = (torch.rand(3, 1, 8, 8, generator=gen) > 0.3).to(DTYPE)
    explainer = BiLRPAttribution(model, composite=EpsilonPlus())
    assert explainer.model is model  # explained as it is, not wrapped
    state = ModelState.capture(model)
    marg, delta = explainer.attribute(x, partner=xp, additional_forward_args=masks, return_convergence_delta=True)
    pair = explainer.attribute(x, partner=xp, additional_forward_args=(masks,), output='pairwise', pooling=4)
    assert state.differences(model) == []
    for i in range(3):
        class Fixed(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model.model

            def forward(self, inp, mask=masks[i:i + 1]):
                return self.model(inp * mask)

        with BiLRP(Fixed(), composite=EpsilonPlus()) as bilrp:
            ref = bilrp(x[i:i + 1], xp[i:i + 1], pooling=4)
        assert torch.allclose(marg[i:i + 1], ref.marginal_a, rtol=1e-10, atol=1e-14)
        assert torch.allclose(pair[i:i + 1], ref.relevance, rtol=1e-10, atol=1e-14)
        assert torch.allclose(delta[i:i + 1], ref.delta, rtol=1e-8, atol=1e-14)
    y = explainer.forward_similarity(x, xp, additional_forward_args=masks)
    with torch.no_grad():
        expected = (model(x, masks) * model(xp, masks)).sum(dim=1)
    assert torch.allclose(y, expected, rtol=1e-12, atol=0)
    assert torch.allclose(explainer.compute_convergence_delta(marg, None, x, None, masks, partner=xp), delta, rtol=0,
                          atol=1e-12)


def test_noise_tunnel_expands_additional_args_of_a_module():
    model = MaskedModule(small_cnn())
    x, xp = inputs()
    masks = torch.stack([torch.ones(1, 8, 8), torch.zeros(1, 8, 8).index_fill_(1, torch.arange(4), 1)]).to(DTYPE)
    explainer = BiLRPAttribution(model, composite=EpsilonPlus())
    torch.manual_seed(9)
    smooth = NoiseTunnel(explainer).attribute(x, partner=xp, additional_forward_args=masks, nt_samples=2,
                                              stdevs=0.05, nt_type='smoothgrad')
    torch.manual_seed(9)
    noisy = x.repeat_interleave(2, dim=0) + torch.normal(0, torch.tensor(0.05).repeat((4,) + SHAPE))
    direct = explainer.attribute(noisy, partner=xp, additional_forward_args=masks.repeat_interleave(2, dim=0))
    assert torch.allclose(smooth, direct.reshape(2, 2, *SHAPE).mean(dim=1), rtol=1e-10, atol=1e-14)


def test_additional_args_a_forward_cannot_take_are_refused():
    model = small_cnn()
    x, xp = inputs()
    explainer = BiLRPAttribution(model, composite=EpsilonPlus())
    state = ModelState.capture(model)
    with pytest.raises(TypeError, match=r'additional_forward_args: 1 argument\(s\) given.*SmallResNet'):
        explainer.attribute(x, partner=xp, additional_forward_args=torch.ones(2, 1, 8, 8, dtype=DTYPE))
    assert state.differences(model) == []

    def embed(inp):
        return model(inp)

    with pytest.raises(TypeError, match=r'additional_forward_args: 2 argument\(s\) given.*embed'):
        BiLRPAttribution(embed, composite=EpsilonPlus()).attribute(x, partner=xp, additional_forward_args=(1, 2))


def test_tuple_of_inputs_keeps_captum_meaning():
    # Captum reads (x, mask) as two inputs of one forward call, not as a pair to compare
    model = small_cnn()
    x, xp = inputs()
    explainer = BiLRPAttribution(model, composite=EpsilonPlus(), partner=xp)
    with pytest.raises(ValueError, match='tuple of 2 tensors.*additional_forward_args.*pair=True'):
        explainer.attribute((x, torch.ones_like(x)))
    with pytest.raises(ValueError, match='tuple of 3 tensors'):
        explainer.attribute((x, xp, x), output='pairwise')
    marg_a, marg_b = explainer.attribute((x, xp), pair=True)  # the explicit pair mode
    with BiLRP(model, composite=EpsilonPlus()) as bilrp:
        ref = bilrp(x, xp)
    assert torch.allclose(marg_a, ref.marginal_a, rtol=1e-10, atol=1e-14)
    assert torch.allclose(marg_b, ref.marginal_b, rtol=1e-10, atol=1e-14)


def test_module_is_explained_under_its_own_layer_names():
    torch.manual_seed(2)
    model = PlainCNN().to(DTYPE).eval()
    x, xp = inputs()

    def composite():
        return NameMapComposite([(['conv1', 'conv2', 'fc'], Epsilon(1e-9))])

    pair = BiLRPAttribution(model, composite=composite()).attribute(x, partner=xp, output='pairwise', pooling=4)
    with BiLRP(model, composite=composite()) as bilrp:
        ref = bilrp(x, xp, pooling=4)
    assert relative_error(pair, ref.relevance) < 1e-12


def test_forward_function_modules_are_registered_once():
    # a BatchNorm listed twice (or inside another listed module) must not be merged twice
    torch.manual_seed(3)
    model = SmallResNet(widths=(4, 8), embedding_dim=6).to(DTYPE).eval()
    random_batch_norm_statistics(model, affine=True)
    x, xp = inputs()

    def embed(inp):
        return model(inp)

    composite = EpsilonPlus(zero_params=['bias'])
    explainer = BiLRPAttribution(embed, composite=composite, canonizers=canonizers_for(model),
                                 modules=[model, model.stages[0], model])
    assert list(explainer.model.hooked) == [model]
    state = ModelState.capture(model)
    pair, delta = explainer.attribute(x, partner=xp, output='pairwise', pooling=4, return_convergence_delta=True)
    assert state.differences(model) == []
    with BiLRP(model, composite=EpsilonPlus(zero_params=['bias']), canonizers=canonizers_for(model)) as bilrp:
        ref = bilrp(x, xp, pooling=4)
    assert relative_error(pair, ref.relevance) < 1e-10
    assert torch.allclose(delta, ref.delta, rtol=0, atol=1e-10 * float(ref.similarity.abs().max()))
