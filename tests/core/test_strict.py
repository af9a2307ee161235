"""Strict mode: every model the rules cannot explain is refused by name, every project model passes, no hook is
left behind."""
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zennit.composites import EpsilonPlus, LayerMapComposite
from zennit.rules import Epsilon, Pass
from zennit.torchvision import ResNetCanonizer

import zennit_bilrp
from zennit_bilrp.core import engine, forward, registration
from zennit_bilrp.core.strict import ForwardAudit, check_registered
from zennit_bilrp.lrp.composites import register_similarity_rules
from zennit_bilrp.lrp.fast_rules import register_rule_shortcuts
from zennit_bilrp.lrp.layers import LayerEmbedding, Normalize
from zennit_bilrp.lrp.restore import ModelState
from zennit_bilrp.models.demo import build_demo_encoder, demo_composite
from zennit_bilrp.models.small_resnet import SmallResNet, mlp
from zennit_bilrp.models.synthetic import build_synthetic_encoder

DTYPE = torch.float64

pytestmark = pytest.mark.usefixtures('single_thread')


def strict_forward(model, x, composite=None, canonizers=(), shortcut=True):
    """Register like the engine (canonizers, composite, Normalize rules, shortcuts), run both strict checks on one
    forward of ``x``, and remove everything again; returns the output (detached)."""
    composite = EpsilonPlus(zero_params=['bias']) if composite is None else composite
    before = {id(module): len(module._forward_pre_hooks) for module in model.modules()}
    handles = []
    try:
        for canonizer in canonizers:
            handles.extend(canonizer.apply(model))
        composite.register(model)
        handles.extend(register_similarity_rules(model))
        if shortcut:
            handles.extend(register_rule_shortcuts(model))
        check_registered(model, before)
        with ForwardAudit(model) as audit:
            output = model(x.detach().requires_grad_(True))
        audit.verify(output)
        return output.detach()
    finally:
        for handle in reversed(handles):
            handle.remove()
        composite.remove()


def assert_refused(model, x, match, **kwargs):
    """The strict checks refuse ``model`` with a message matching ``match``, and leave the model as it was."""
    state = ModelState.capture(model)
    with pytest.raises(TypeError, match=match):
        strict_forward(model, x, **kwargs)
    assert state.differences(model) == []


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


class Scaled(nn.Module):
    """A parameterized leaf layer that no composite knows."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.weight


class Gated(nn.Module):
    """``sigmoid(gate(x)) * value(x)``: an inline product of two input-dependent tensors."""

    def __init__(self):
        super().__init__()
        self.gate, self.value, self.sigmoid = nn.Linear(6, 4), nn.Linear(6, 4), nn.Sigmoid()

    def forward(self, x):
        return self.sigmoid(self.gate(x)) * self.value(x)


class InlineAttention(nn.Module):
    """Self-attention written with matmul and softmax in the forward."""

    def __init__(self, dim=8):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        weights = (self.q(x) @ self.k(x).transpose(1, 2)).softmax(-1)
        return (weights @ self.v(x)).mean(1)


class Inline(nn.Module):
    """``op(linear(x))`` with the operation written in the forward."""

    def __init__(self, op, n_out=5):
        super().__init__()
        self.linear = nn.Linear(6, n_out)
        self.op = op

    def forward(self, x):
        return self.op(self.linear(x))


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return 2 * x * grad


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        h = self.embed(x)
        return self.attn(h, h, h)[0].mean(1)


class Shared(nn.Module):
    """Modules used twice: ``shared`` (a Linear, whose rule stores its input) and ``relu`` (rule Pass)."""

    def __init__(self, share_linear=True, share_relu=True):
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.second = self.first if share_linear else nn.Linear(6, 6)
        self.relu = nn.ReLU()
        self.relu_b = self.relu if share_relu else nn.ReLU()
        self.branch = nn.Linear(6, 6)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        u = self.relu(self.first(x))
        v = self.relu_b(self.branch(x))
        return self.out(torch.cat([self.second(u), v], 1))


class Pair(nn.Module):
    """A layer with two tensor inputs."""

    def forward(self, a, b):
        return a + b


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)
        self.pair = Pair()

    def forward(self, x):
        return self.pair(self.a(x), self.b(x))


class Split(nn.Module):
    """A layer returning a tuple."""

    def forward(self, x):
        return x[:, :2], x[:, 2:]


class TupleOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 4)
        self.split = Split()

    def forward(self, x):
        return torch.cat(self.split(self.linear(x)), 1)


class FunctionalCNN(nn.Module):
    """A plain CNN with F.relu, max pooling, flatten and padding in its forward."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        x = F.relu(self.conv1(F.pad(x, (1, 1, 1, 1))))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.clamp(x, min=0.0)[:, :, :3, :3]
        return self.fc(torch.flatten(x, 1) * 0.5 + 1.0)


class Masked(nn.Module):
    """The input multiplied by a constant mask (as the Captum adapter's forward arguments do)."""

    def __init__(self, model, mask):
        super().__init__()
        self.model = model
        self.register_buffer('mask', mask)

    def forward(self, x):
        return self.model(x * self.mask)


def small_efficientnet_lite():
    efficientnet = pytest.importorskip('efficientnet_lite_pytorch', reason='the reference port efficientnet-lite-'
                                       'pytorch (a test-only comparison, in no extra) is not installed')
    torch.manual_seed(0)
    return efficientnet.EfficientNet.from_name('efficientnet-lite0', image_size=64).eval()


def test_unruled_parameterized_layer_is_refused():
    model = nn.Sequential(nn.Linear(6, 4), Scaled(4), nn.Linear(4, 3)).to(DTYPE)
    assert_refused(model, rand(2, 6), r"unsupported layer '1' \(Scaled\): the composite assigns it no LRP rule")


def test_normalization_without_rule_is_refused():
    model = nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4, elementwise_affine=False), nn.Linear(4, 3)).to(DTYPE)
    assert_refused(model, rand(2, 6), r"unsupported layer '1' \(LayerNorm\): a normalization layer without")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten()).to(DTYPE)
    assert_refused(model, rand(2, 3, 5, 5), r"unsupported layer '1' \(GroupNorm\)")


def test_multihead_attention_is_refused():
    model = Attention().to(DTYPE).eval()
    assert_refused(model, rand(2, 3, 8), r"unsupported layer 'attn' \(MultiheadAttention\): attention has no LRP")


def test_multihead_attention_is_refused_at_forward_time_too():
    model = Attention().to(DTYPE).eval()
    composite = EpsilonPlus()
    composite.register(model)
    try:
        with ForwardAudit(model) as audit:
            output = model(rand(2, 3, 8).requires_grad_())
        with pytest.raises(TypeError, match=r"'attn' \(MultiheadAttention\): it has the rule Pass but"):
            audit.verify(output)
    finally:
        composite.remove()


def test_sum_without_rule_is_refused():
    composite = LayerMapComposite([(nn.Conv2d, Epsilon()), (nn.ReLU, Pass())])
    model = SmallResNet(widths=(4,), batch_norm=False).to(DTYPE).eval()
    assert_refused(model, rand(2, 3, 6, 6), r"unsupported layer 'stages\.0\.sum' \(Sum\): a residual sum",
                   composite=composite)


def test_inline_residual_of_torchvision_resnet_is_refused():
    from torchvision.models import resnet18

    model = resnet18(num_classes=4).eval()
    assert_refused(model, torch.rand(1, 3, 32, 32),
                   r"unsupported operation AddBackward0 in 'layer1\.0' \(BasicBlock\): adds two input-dependent")


def test_efficientnet_lite_package_is_refused():
    model = small_efficientnet_lite()
    composite = EpsilonPlus(zero_params=['bias'], canonizers=zennit_bilrp.canonizers_for(model))
    assert_refused(model, torch.rand(1, 3, 64, 64), r"AddBackward0 in '_blocks\.\d+' \(MBConvBlock\): adds two",
                   composite=composite)


@pytest.mark.parametrize('model, shape, match', [
    (Gated(), (2, 6), r'MulBackward0 in the model itself \(Gated\): multiplies or divides two input-dependent'),
    (InlineAttention(), (2, 3, 8), r"BmmBackward0 in the model itself \(InlineAttention\): a matrix product"),
    (Inline(lambda h: h.softmax(1)), (2, 6), r'SoftmaxBackward0 in the model itself \(Inline\): a softmax'),
    (Inline(lambda h: F.layer_norm(h, (5,))), (2, 6), r'NativeLayerNormBackward0 in the model itself'),
    (Inline(lambda h: F.normalize(h, dim=1)), (2, 6), r'LinalgVectorNormBackward0 .*zennit_bilrp\.Normalize'),
    (Inline(lambda h: h.sum(1, keepdim=True)), (2, 6), r'SumBackward1 .*: a sum over an axis written inline'),
    (Inline(F.gelu), (2, 6), r'GeluBackward0 .*: an activation applied as a function'),
    (Inline(lambda h: h * h), (2, 6), r'MulBackward0 .*multiplies or divides two input-dependent tensors'),
    (Inline(Square.apply), (2, 6), r'SquareBackward .*custom autograd function Square'),
], ids=['gate', 'attention', 'softmax', 'layer-norm', 'normalize', 'sum', 'gelu', 'square', 'function'])
def test_inline_operations_are_refused(model, shape, match):
    assert_refused(model.to(DTYPE).eval(), rand(*shape), match)


def test_inline_linear_map_with_own_parameter_is_refused():
    class OwnWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(6, 4)
            self.weight = nn.Parameter(torch.randn(3, 4))

        def forward(self, x):
            return F.linear(F.relu(self.linear(x)), self.weight)

    assert_refused(OwnWeight().to(DTYPE), rand(2, 6), r'MmBackward0 in the model itself \(OwnWeight\): a matrix')


def test_reused_layer_whose_rule_stores_its_input_is_refused():
    model = Shared(share_linear=True).to(DTYPE)
    assert_refused(model, rand(2, 6), r"unsupported layer 'first' \(Linear\): called 2 times in one forward, but "
                   r'its rule Epsilon keeps only the input of the last call')


def lrp(model, x, seeds):
    composite = EpsilonPlus()
    composite.register(model)
    try:
        x = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(model(x), x, seeds, is_grads_batched=True)
    finally:
        composite.remove()
    return grad


def test_reused_pass_rule_is_accepted_and_exact():
    """A reused module whose rule keeps no forward state (Pass, as on torchvision ResNet's shared ReLU) gives the
    same relevance as separate modules: accepted. A reused Linear does not: that is why it is refused."""
    torch.manual_seed(0)
    shared = Shared(share_linear=False, share_relu=True).to(DTYPE)
    separate = Shared(share_linear=False, share_relu=False).to(DTYPE)
    separate.load_state_dict(shared.state_dict())
    x, seeds = rand(3, 6), torch.randn(4, 3, 3, dtype=DTYPE)
    strict_forward(shared, x)
    assert torch.allclose(lrp(shared, x, seeds), lrp(separate, x, seeds), rtol=1e-12, atol=1e-14)
    reused = Shared(share_linear=True).to(DTYPE)
    unshared = Shared(share_linear=False).to(DTYPE)
    unshared.load_state_dict(reused.state_dict(), strict=False)
    unshared.second.load_state_dict(reused.first.state_dict())
    assert not torch.allclose(lrp(reused, x, seeds), lrp(unshared, x, seeds), rtol=1e-3)


def test_ruled_layer_with_two_inputs_is_refused():
    composite = LayerMapComposite([(nn.Linear, Epsilon()), (Pair, Pass())])
    assert_refused(TwoInputs().to(DTYPE), rand(2, 6), r"unsupported layer 'pair' \(Pair\): it has the rule Pass "
                   r'but receives 2 input tensors', composite=composite)


def test_ruled_layer_with_tuple_output_is_refused():
    composite = LayerMapComposite([(nn.Linear, Epsilon()), (Split, Pass())])
    assert_refused(TupleOutput().to(DTYPE), rand(2, 6), r"unsupported layer 'split' \(Split\): it has the rule Pass "
                   'but does not return a single tensor', composite=composite)


def test_all_problems_are_counted():
    model = nn.Sequential(nn.Linear(6, 4), Scaled(4), Scaled(4), Scaled(4)).to(DTYPE)
    assert_refused(model, rand(2, 6), r"'1' \(Scaled\).*\[2 more problem\(s\): unsupported layer '2' \(Scaled\); "
                   r"unsupported layer '3' \(Scaled\)\]")


@pytest.mark.parametrize('shortcut', [True, False])
def test_torchvision_resnet18_is_accepted(shortcut):
    from torchvision.models import resnet18

    model = resnet18().eval()
    model.fc = nn.Identity()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    state = ModelState.capture(model)
    output = strict_forward(model, x, canonizers=zennit_bilrp.canonizers_for(model), shortcut=shortcut)
    assert torch.allclose(output, expected, rtol=1e-4, atol=1e-5)
    assert state.differences(model) == []


def test_torchvision_resnet50_and_vgg16_are_accepted():
    from torchvision.models import resnet50, vgg16

    model = resnet50().eval()
    model.fc = nn.Identity()
    strict_forward(model, torch.rand(1, 3, 32, 32), composite=EpsilonPlus(
        zero_params=['bias'], canonizers=zennit_bilrp.canonizers_for(model)))
    model = vgg16().eval()
    strict_forward(model, torch.rand(1, 3, 32, 32), canonizers=zennit_bilrp.canonizers_for(model),
                   composite=zennit_bilrp.bilrp_composite())


@pytest.mark.parametrize('name', ['small_resnet', 'projected', 'feature_map', 'demo', 'synthetic', 'mlp', 'cnn',
                                  'cosine', 'masked', 'layer_embedding'])
def test_project_models_are_accepted(name):
    torch.manual_seed(0)
    composite = None
    if name == 'small_resnet':
        model, x = SmallResNet(widths=(4, 8)), rand(2, 3, 8, 8)
    elif name == 'projected':
        model, x = SmallResNet(widths=(4, 8), embedding_dim=5, bias=True), rand(2, 3, 8, 8)
    elif name == 'feature_map':  # the engine's head pools after the forward
        model, x = SmallResNet(widths=(4, 8), pool=False), rand(2, 3, 8, 8)
    elif name == 'demo':
        model, x = build_demo_encoder(widths=(4, 8)), rand(2, 3, 16, 24)
        composite = demo_composite(model)
    elif name == 'synthetic':
        model, x = build_synthetic_encoder(), rand(2, 3, 16, 16)
    elif name == 'mlp':
        model, x = mlp((6, 8, 8, 4)), rand(3, 6)
    elif name == 'cnn':
        model, x = FunctionalCNN(), rand(2, 3, 8, 8)
    elif name == 'cosine':
        model, x = nn.Sequential(mlp((6, 8, 4)), Normalize()), rand(3, 6)
    elif name == 'masked':
        model, x = Masked(mlp((6, 8, 4)), (rand(1, 6) > 0.5).to(DTYPE)), rand(3, 6)
    else:
        model, x = LayerEmbedding(SmallResNet(widths=(4, 8)), 'stages.0', flatten=True), rand(2, 3, 8, 8)
    model = model.to(DTYPE).eval()
    canonizers = zennit_bilrp.canonizers_for(model)
    state = ModelState.capture(model)
    strict_forward(model, x, composite=composite, canonizers=canonizers)
    assert state.differences(model) == []


def test_relevance_mask_of_neuron_selection_is_accepted():
    from zennit_bilrp.analysis.neurons import NeuronMask

    model = mlp((6, 8, 8, 4)).to(DTYPE).eval()
    composite = EpsilonPlus()
    composite.register(model)
    try:
        with NeuronMask(model, '2', [0, 3]), ForwardAudit(model) as audit:
            output = model(rand(2, 6).requires_grad_())
        audit.verify(output)
    finally:
        composite.remove()


def hook_counts(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._forward_hooks_with_kwargs),
             len(m._forward_pre_hooks_with_kwargs)) for m in model.modules()]


def test_audit_removes_every_hook():
    model = SmallResNet(widths=(4,)).to(DTYPE).eval()
    counts, state = hook_counts(model), ModelState.capture(model)
    with ForwardAudit(model) as audit:
        assert hook_counts(model) != counts
        output = model(rand(2, 3, 6, 6).requires_grad_())
    assert hook_counts(model) == counts
    with pytest.raises(TypeError, match='unsupported operation'):  # no rules registered: the Sum is plain gradient
        audit.verify(output)
    with pytest.raises(ZeroDivisionError), ForwardAudit(model):
        model(rand(2, 3, 6, 6))
        raise ZeroDivisionError
    assert hook_counts(model) == counts
    assert state.differences(model) == []


def test_audit_refuses_misuse():
    model = mlp((6, 4, 3)).to(DTYPE)
    audit = ForwardAudit(model)
    with pytest.raises(RuntimeError, match='recorded no forward pass'):
        audit.verify(torch.zeros(1))
    with pytest.raises(TypeError, match='the model must return a tensor, got tuple'):
        audit.verify((torch.zeros(1),))
    with audit, torch.no_grad():
        output = model(rand(2, 6).requires_grad_())
    with pytest.raises(RuntimeError, match=r'no autograd graph, .*ran under torch\.no_grad\(\)'):
        audit.verify(output)
    with audit:
        output = model(rand(2, 6)) * torch.ones(1, requires_grad=True)
    with pytest.raises(ValueError, match=r'no input of the audited forward pass requires grad'):
        audit.verify(output)
    with audit, pytest.raises(RuntimeError, match='already entered'):
        audit.__enter__()
    with pytest.raises(TypeError, match='must be a torch.nn.Module'):
        ForwardAudit(lambda x: x)
    with pytest.raises(TypeError, match=r'before must be a dict'):
        check_registered(model, [])


def _wired() -> bool:
    source = ''.join(inspect.getsource(module) for module in (registration, forward, engine))
    return 'check_registered' in source and 'ForwardAudit' in source


wired = pytest.mark.skipif(not _wired(), reason='strict mode (zennit_bilrp.core.strict) is not yet called by '
                                                 'Registration/Session, so BiLRP(...) does not run these checks')


@wired
def test_engine_refuses_attention_and_inline_residual():
    from torchvision.models import resnet18

    with pytest.raises(TypeError, match=r"'attn' \(MultiheadAttention\)"):
        zennit_bilrp.BiLRP(Attention().to(DTYPE).eval(), composite=EpsilonPlus())(rand(1, 3, 8), rand(1, 3, 8))
    model = resnet18(num_classes=3).eval()  # 3 embedding units keep the backward passes cheap
    x_a, x_b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    state = ModelState.capture(model)
    with pytest.raises(TypeError, match=r"AddBackward0 in 'layer1\.0' \(BasicBlock\)"):
        zennit_bilrp.BiLRP(model, composite=EpsilonPlus(zero_params=['bias']))(x_a, x_b, pooling=16)
    assert state.differences(model) == []
    with warnings.catch_warnings():  # the doubled relevance may warn: only that strict=False runs matters here
        warnings.simplefilter('ignore')
        result = zennit_bilrp.BiLRP(model, composite=EpsilonPlus(zero_params=['bias']), strict=False)(
            x_a, x_b, pooling=16)
    assert torch.isfinite(result.relevance).all()
    composite = EpsilonPlus(zero_params=['bias'], canonizers=[ResNetCanonizer()])
    result = zennit_bilrp.BiLRP(model, composite=composite, similarity='cosine')(x_a, x_b, pooling=16)
    assert torch.isfinite(result.relevance).all()


@wired
def test_engine_refuses_reuse_and_efficientnet_lite_package():
    with pytest.raises(TypeError, match=r"'first' \(Linear\): called 2 times"):
        zennit_bilrp.BiLRP(Shared().to(DTYPE), composite=EpsilonPlus())(rand(1, 6), rand(1, 6))
    model = small_efficientnet_lite()
    composite = EpsilonPlus(zero_params=['bias'], canonizers=zennit_bilrp.canonizers_for(model))
    with pytest.raises(TypeError, match=r"AddBackward0 in '_blocks\.\d+' \(MBConvBlock\)"):
        zennit_bilrp.BiLRP(model, composite=composite, similarity='cosine')(
            torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), pooling=32)


@pytest.mark.skipif('always_call' not in inspect.signature(torch.nn.Module.register_forward_hook).parameters,
                    reason='torch < 2.1 calls no forward hook when the forward raises, so a failed forward inside '
                           'the block cannot be noticed (the audit is reset on exit instead)')
def test_audit_describes_the_latest_forward():
    """A forward that failed inside the block leaves no stale records: the next one is audited afresh."""
    model = Shared(share_linear=False).to(DTYPE)
    composite = EpsilonPlus()
    composite.register(model)
    try:
        with ForwardAudit(model) as audit:
            with pytest.raises(RuntimeError):
                model(rand(2, 5).requires_grad_())  # wrong width: fails inside the forward
            model(rand(2, 6).requires_grad_())  # an earlier forward of the same layers, then the audited one
            output = model(rand(2, 6).requires_grad_())
        audit.verify(output)
    finally:
        composite.remove()
