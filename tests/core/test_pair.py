"""The paired-forward primitive and what `explain` builds on it: one forward for a shared encoder, checks once."""
import inspect

import pytest
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus

import zennit_bilrp.core.engine as engine_module
import zennit_bilrp.core.registration as registration_module
from zennit_bilrp import BiLRP, Pooling
from zennit_bilrp.core.pooling import SAME
from zennit_bilrp.core.similarity import DotSimilarity
from zennit_bilrp.models.small_resnet import SmallResNet

DTYPE = torch.float64
TOL = dict(rtol=1e-9, atol=1e-12)


def small_model(seed=0):
    torch.manual_seed(seed)
    return SmallResNet(widths=(4, 8), embedding_dim=5).to(DTYPE).eval()


def engine(model=None, **kwargs):
    model = small_model() if model is None else model
    return BiLRP(model, composite=EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]), **kwargs)


class ForwardCounter:
    def __init__(self, *models):
        self.count = 0
        self.handles = [model.register_forward_pre_hook(self.hook) for model in models]

    def hook(self, module, args):
        self.count += 1

    def remove(self):
        for handle in self.handles:
            handle.remove()


def test_propagate_pair_shared_encoder_is_one_forward_and_matches_propagate():
    bilrp = engine()
    x_a, x_b = torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(3, 3, 8, 8, dtype=DTYPE)
    mult_a, mult_b = torch.randn(4, 2, 5, dtype=DTYPE), torch.randn(3, 5, dtype=DTYPE)  # K differs, (K, h) form
    counter = ForwardCounter(bilrp.model)
    emb_a, emb_b, rel_a, rel_b = bilrp.propagate_pair(x_a, x_b, mult_a, mult_b, pooling=4, pooling_b=2)
    counter.remove()
    assert counter.count == 1
    assert rel_a.shape == (4, 2, 4) and rel_b.shape == (3, 3, 16)
    ref_emb_a, ref_a = bilrp.propagate(x_a, mult_a, pooling=4)
    ref_emb_b, ref_b = bilrp.propagate(x_b, mult_b, pooling=2)
    torch.testing.assert_close(emb_a, ref_emb_a, **TOL)
    torch.testing.assert_close(emb_b, ref_emb_b, **TOL)
    torch.testing.assert_close(rel_a, ref_a, **TOL)
    torch.testing.assert_close(rel_b, ref_b, **TOL)


def test_propagate_pair_two_towers_and_unequal_shapes():
    bilrp = engine(model_b=small_model(1))
    x_a, x_b = torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(2, 3, 8, 8, dtype=DTYPE)
    mult = torch.randn(3, 2, 5, dtype=DTYPE)
    _, _, rel_a, rel_b = bilrp.propagate_pair(x_a, x_b, mult, mult, pooling=Pooling(sum_channels=False))
    assert rel_a.shape == (3, 2, 3, 8, 8)  # unpooled keeps the input shape, as in propagate
    torch.testing.assert_close(rel_a, bilrp.propagate(x_a, mult, pooling=Pooling(sum_channels=False))[1], **TOL)
    torch.testing.assert_close(rel_b, bilrp.propagate(x_b, mult, pooling=Pooling(sum_channels=False),
                                                      tower='b')[1], **TOL)
    shared = engine()
    x_c = torch.rand(2, 3, 16, 8, dtype=DTYPE)
    counter = ForwardCounter(shared.model)
    _, _, rel_a, rel_c = shared.propagate_pair(x_a, x_c, mult, mult, pooling=4)
    counter.remove()
    assert counter.count == 2
    torch.testing.assert_close(rel_c, shared.propagate(x_c, mult, pooling=4)[1], **TOL)
    with pytest.raises(ValueError, match='multipliers_b of shape'):
        shared.propagate_pair(x_a, x_c, mult, torch.ones(3, 2, 4, dtype=DTYPE))


class CountingDot(DotSimilarity):
    def __init__(self):
        self.checks = 0

    def check(self, emb_a, emb_b):
        self.checks += 1
        super().check(emb_a, emb_b)


def test_explain_checks_similarity_and_mode_once(monkeypatch):
    similarity = CountingDot()
    bilrp = engine(similarity=similarity)
    calls = []
    original = engine_module.check_eval_mode

    def counting(*models):
        calls.append(len(models))
        original(*models)

    monkeypatch.setattr(engine_module, 'check_eval_mode', counting)
    monkeypatch.setattr(registration_module, 'check_eval_mode', counting)
    x_a, x_b = torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(2, 3, 8, 8, dtype=DTYPE)
    bilrp(x_a, x_b, pooling=4)
    assert similarity.checks == 1
    assert len(calls) == 1
    with bilrp:
        calls.clear()
        bilrp(x_a, x_b, pooling=4)
        assert len(calls) == 1  # inside `with`, once per call (the model may have been switched to train())


def test_explain_over_the_pair_primitive_matches_factors():
    bilrp = engine(similarity='cosine')
    x_a, x_b = torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(2, 3, 8, 8, dtype=DTYPE)
    result = bilrp(x_a, x_b, pooling=4)
    fa, fb = bilrp.factors(x_a, pooling=4), bilrp.factors(x_b, pooling=4)
    torch.testing.assert_close(result.factors_a.relevance, fa.relevance, **TOL)
    torch.testing.assert_close(result.factors_b.relevance, fb.relevance, **TOL)
    torch.testing.assert_close(result.marginal_a.sum(dim=(1, 2, 3)), result.relevance.sum(dim=(1, 2)), **TOL)


def test_one_pooling_sentinel_and_one_marginals_default():
    assert Pooling.ensure(SAME, same=4) == Pooling(patch=4)
    assert Pooling.ensure(SAME, same=None) == Pooling()
    with pytest.raises(ValueError, match="unknown pooling 'default'"):
        Pooling.ensure('default', same=4)
    with pytest.raises(ValueError, match='nothing to refer to'):
        Pooling.ensure(SAME)
    for method in (BiLRP.explain, BiLRP.propagate_pair):
        assert inspect.signature(method).parameters['pooling_b'].default == SAME
    assert (inspect.signature(BiLRP.explain).parameters['marginals'].default
            == inspect.signature(BiLRP.explain_pairs).parameters['marginals'].default)
    bilrp = engine()
    x_a, x_b = torch.rand(1, 3, 8, 8, dtype=DTYPE), torch.rand(1, 3, 8, 8, dtype=DTYPE)
    torch.testing.assert_close(bilrp(x_a, x_b, pooling=4).relevance,
                               bilrp(x_a, x_b, pooling=4, pooling_b=4).relevance, **TOL)
