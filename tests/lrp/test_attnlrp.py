"""AttnLRP's rules (and the conservative attention rule) against values derived by hand on tiny cases: the Taylor
rule of the softmax with a mask, the epsilon-uniform rule of q k^T, of P v and of a gate; the rules are linear and
differentiable in the output relevance."""
import math

import pytest
import torch
from zennit.rules import Epsilon

from zennit_bilrp.lrp.attention import AttentionMix, AttentionScores, AttentionSoftmax, AttentionValues, GatedProduct
from zennit_bilrp.lrp.attnlrp import SoftmaxTaylor, UniformEpsilon

DTYPE = torch.float64


def relevance_of(module, rule, x, relevance, create_graph=False):
    """The input relevance of ``module`` at ``x`` for output relevance ``relevance`` under ``rule``."""
    handles = rule.register(module)
    try:
        x = x.detach().requires_grad_(True)
        result, = torch.autograd.grad(module(x), x, relevance, create_graph=create_graph)
    finally:
        handles.remove()
    return result


def tensor(values):
    return torch.tensor(values, dtype=DTYPE)


def test_softmax_taylor_rule_by_hand():
    """s = softmax(x + B) with the last position masked: R(x_i) = x_i (R_i - s_i sum_j R_j); the masked position
    gets nothing (its R and s are 0), and the rule absorbs sum R - sum R(x)."""
    module = AttentionSoftmax()
    module.offset = tensor([0.0, 0.0, torch.finfo(DTYPE).min])
    x, out = tensor([1.0, 2.0, 0.5]), tensor([0.3, -0.2, 0.0])
    s1 = 1 / (1 + math.e)  # e / (e + e^2)
    s2 = math.e / (1 + math.e)
    expected = tensor([1.0 * (0.3 - s1 * 0.1), 2.0 * (-0.2 - s2 * 0.1), 0.0])
    assert torch.allclose(relevance_of(module, SoftmaxTaylor(), x, out), expected, atol=1e-15, rtol=0)


def test_scores_epsilon_uniform_rule_by_hand():
    """z = 0.5 q k^T of two tokens (d = 2): each factor gets half of the epsilon rule's relevance; worked out by hand
    (contributions c_ijd = 0.5 q_id k_jd R_ij / z_ij), summing to sum R = 10."""
    module = AttentionScores()
    module.scaling = 0.5
    q, k = tensor([[1.0, 2.0], [1.0, 1.0]]), tensor([[1.0, 0.0], [2.0, 1.0]])
    out = tensor([[1.0, 2.0], [3.0, 4.0]])
    result = relevance_of(module, UniformEpsilon(epsilon=1e-300, operands=2), torch.stack([q, k], -1), out)
    assert torch.allclose(result[..., 0], tensor([[1.0, 0.5], [17 / 6, 2 / 3]]), atol=1e-14, rtol=0)
    assert torch.allclose(result[..., 1], tensor([[2.0, 0.0], [11 / 6, 7 / 6]]), atol=1e-14, rtol=0)
    assert float(result.sum()) == pytest.approx(10.0, abs=1e-13)


def test_constant_query_gets_full_epsilon_relevance():
    """With a constant query (attention pooling) the keys take the whole epsilon relevance (operands = 1)."""
    module = AttentionScores(constant_query=True)
    module.scaling, module.query = 0.5, tensor([[1.0, 2.0]])
    k, out = tensor([[1.0, 0.0], [2.0, 1.0]]), tensor([[1.0, 2.0]])
    result = relevance_of(module, UniformEpsilon(epsilon=1e-300, operands=module.operands), k, out)
    # z = (0.5, 2.0): R(k_jd) = 0.5 q_d k_jd / z_j R_j
    assert torch.allclose(result, tensor([[1.0, 0.0], [1.0, 1.0]]), atol=1e-14, rtol=0)


PROBABILITIES = [[0.25, 0.75], [1.0, 0.0]]
VALUES = [[2.0, -1.0], [4.0, 1.0]]
MIXED_RELEVANCE = [[1.0, 1.0], [2.0, 0.5]]


def test_values_epsilon_uniform_rule_by_hand():
    """c = P v: half of each contribution t_ijd = P_ij v_jd R_id / c_id to P_ij and half to v_jd."""
    module = AttentionValues()
    packed = module.pack(tensor(PROBABILITIES), tensor(VALUES))
    result = relevance_of(module, UniformEpsilon(epsilon=1e-300, operands=2), packed, tensor(MIXED_RELEVANCE))
    r_p, r_v = result[..., :4].reshape(2, 2), result[..., 4:].reshape(2, 2)
    assert torch.allclose(r_p, tensor([[-5 / 28, 33 / 28], [1.25, 0.0]]), atol=1e-14, rtol=0)
    assert torch.allclose(r_v, tensor([[15 / 14, 0.0], [3 / 7, 0.75]]), atol=1e-14, rtol=0)
    assert float(result.sum()) == pytest.approx(4.5, abs=1e-13)


def test_conservative_mix_by_hand():
    """With P constant (the conservative family) the values take all of each contribution."""
    module = AttentionMix()
    module.probabilities = tensor(PROBABILITIES)
    result = relevance_of(module, Epsilon(epsilon=1e-300), tensor(VALUES), tensor(MIXED_RELEVANCE))
    assert torch.allclose(result, tensor([[15 / 7, 0.0], [6 / 7, 1.5]]), atol=1e-14, rtol=0)


def test_gate_rules_by_hand():
    """a * b: AttnLRP gives each factor half; the conservative family (constant gate) all to b."""
    packed, out = torch.stack([tensor([2.0, -3.0]), tensor([0.5, 4.0])], -1), tensor([1.0, -2.0])
    uniform = relevance_of(GatedProduct(), UniformEpsilon(epsilon=1e-300, operands=2), packed, out)
    assert torch.allclose(uniform, tensor([[0.5, 0.5], [-1.0, -1.0]]), atol=1e-15, rtol=0)
    constant = GatedProduct(constant_gate=True)
    assert constant.operands == 1
    gated = relevance_of(constant, UniformEpsilon(epsilon=1e-300, operands=1), packed, out)
    assert torch.allclose(gated, tensor([[0.0, 1.0], [0.0, -2.0]]), atol=1e-15, rtol=0)


@pytest.mark.parametrize('case', ['softmax', 'values'])
def test_rules_are_linear_and_differentiable_in_the_relevance(case):
    """The input relevance is a linear function of the output relevance whose derivative (create_graph) is the
    matrix of that map: the basis of the engine's patch-major path."""
    generator = torch.Generator().manual_seed(0)
    if case == 'softmax':
        module, rule, x = AttentionSoftmax(), SoftmaxTaylor(), torch.randn(2, 3, 4, generator=generator, dtype=DTYPE)
    else:
        module, rule = AttentionValues(), UniformEpsilon(epsilon=1e-12)
        x = module.pack(torch.rand(2, 3, 3, generator=generator, dtype=DTYPE).softmax(-1),
                        torch.randn(2, 3, 2, generator=generator, dtype=DTYPE))
    shape = module(x).shape
    seed = torch.randn(shape, generator=generator, dtype=DTYPE, requires_grad=True)
    result = relevance_of(module, rule, x, seed, create_graph=True)
    weights = torch.randn(result.shape, generator=generator, dtype=DTYPE)
    derivative, = torch.autograd.grad((result * weights).sum(), seed)
    basis = torch.eye(seed.numel(), dtype=DTYPE).reshape(-1, *shape)
    columns = torch.stack([(relevance_of(module, rule, x, e) * weights).sum() for e in basis])
    assert torch.allclose(derivative.reshape(-1), columns, atol=1e-12, rtol=0)
    doubled = relevance_of(module, rule, x, 2 * seed.detach())
    assert torch.allclose(doubled, 2 * result.detach(), atol=1e-12, rtol=0)
