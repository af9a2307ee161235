"""Models are never left modified (errors included), and bad input gets errors that name the problem."""
import warnings

import pytest
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus
from zennit.torchvision import ResNetCanonizer

import zennit_bilrp.core.engine as engine_module
from zennit_bilrp import BiLRP, ModelGuard, ModelState, Normalize, Pooling
from zennit_bilrp.core.results import ConservationWarning
from zennit_bilrp.models.small_resnet import SmallResNet, mlp

from helpers.models import random_batch_norm_statistics

DTYPE = torch.float64


def bn_cnn():
    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8), embedding_dim=5).to(DTYPE)
    return random_batch_norm_statistics(model).eval()


def pair(shape=(3, 8, 8), n=2):
    return torch.rand(n, *shape, dtype=DTYPE), torch.rand(n, *shape, dtype=DTYPE)


def test_restored_after_failure_mid_run(monkeypatch):
    model = bn_cnn()
    state = ModelState.capture(model)
    x_a, x_b = pair()
    with torch.no_grad():
        before = model(x_a)
    calls = {'n': 0}
    original = engine_module.Pooling.apply

    def failing_apply(*args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 2:  # fail in the middle of the batched backward passes
            raise RuntimeError('injected failure')
        return original(*args, **kwargs)

    monkeypatch.setattr(engine_module.Pooling, 'apply', staticmethod(failing_apply))
    with pytest.raises(RuntimeError, match='injected failure'):
        with BiLRP(model, composite=EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]), chunk_size=2) as bilrp:
            bilrp(x_a, x_b, pooling=4)
    assert calls['n'] == 2
    assert state.differences(model) == []
    with torch.no_grad():
        assert torch.equal(model(x_a), before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_restored_after_failure_during_registration():
    model = bn_cnn()
    state = ModelState.capture(model)

    class BrokenCanonizer(SequentialMergeBatchNorm):
        def apply(self, root_module):
            super().apply(root_module)  # merges BatchNorm, then fails before returning its handles
            raise ValueError('canonizer broke')

    with pytest.raises(ValueError, match='canonizer broke'):
        with BiLRP(model, composite=EpsilonPlus(), canonizers=[BrokenCanonizer()]):
            pass
    assert state.differences(model) == []


def test_restored_train_flag_and_resnet_forward():
    from torchvision.models import resnet18

    model = resnet18(num_classes=4).to(DTYPE).eval()
    model.layer1.train()  # an odd mix of modes must survive too
    model.layer1[0].bn1.eval()
    model.layer1[0].bn2.eval()
    model.layer1[1].bn1.eval()
    model.layer1[1].bn2.eval()
    state = ModelState.capture(model)
    forward_before = model.layer1[0].forward
    x_a, x_b = pair((3, 16, 16), 1)
    with BiLRP(model, composite=EpsilonPlus(canonizers=[ResNetCanonizer()])) as bilrp:
        assert 'forward' in model.layer1[0].__dict__  # the canonizer overloaded forward ...
        bilrp(x_a, x_b, pooling=8, marginals=False)
    assert 'forward' not in model.layer1[0].__dict__  # ... and it is gone again
    assert model.layer1[0].forward == forward_before
    assert model.layer1.training and not model.training
    assert state.differences(model) == []


def test_model_guard_restores_parameters_and_hooks():
    model = mlp((3, 4, 2)).to(DTYPE)
    state = ModelState.capture(model)
    weight = model[0].weight
    with pytest.raises(KeyError):
        with ModelGuard(model):
            model[0].weight.data.mul_(3)
            model[0].register_forward_hook(lambda *args: None)
            model[2].bias = None
            model.eval()
            raise KeyError('boom')
    assert model[0].weight is weight
    assert state.differences(model) == []


def test_calls_outside_with_register_and_remove():
    model = bn_cnn()
    state = ModelState.capture(model)
    x_a, x_b = pair()
    bilrp = BiLRP(model, composite=EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]))
    result = bilrp(x_a, x_b, pooling=4)
    assert not bilrp.active
    assert state.differences(model) == []
    with bilrp:
        again = bilrp(x_a, x_b, pooling=4)
    assert torch.equal(result.relevance, again.relevance)


def test_no_grad_context_is_fine():
    model = bn_cnn()
    x_a, x_b = pair()
    with torch.no_grad(), BiLRP(model, composite=EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])) as bilrp:
        result = bilrp(x_a, x_b, pooling=4)
    assert torch.isfinite(result.relevance).all()


@pytest.fixture
def engine():
    return BiLRP(bn_cnn(), composite=EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]))


def test_mismatched_batch_sizes(engine):
    with pytest.raises(ValueError, match='batch sizes differ'):
        engine(torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(3, 3, 8, 8, dtype=DTYPE))


def test_non_floating_input(engine):
    with pytest.raises(TypeError, match='floating-point'):
        engine(torch.ones(1, 3, 8, 8, dtype=torch.long), torch.ones(1, 3, 8, 8, dtype=torch.long))


def test_dtype_mismatch(engine):
    with pytest.raises(TypeError, match='dtype torch.float32 but the model has torch.float64'):
        engine(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_nan_and_inf_inputs(engine):
    x = torch.rand(1, 3, 8, 8, dtype=DTYPE)
    bad = x.clone()
    bad[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='x_b contains NaN or inf'):
        engine(x, bad)
    bad[0, 0, 0, 0] = float('inf')
    with pytest.raises(ValueError, match='x_a contains NaN or inf'):
        engine(bad, x)


def test_non_finite_embedding():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()).to(DTYPE).eval()
    model[0].weight.data[0, 0] = float('inf')
    with pytest.raises(ValueError, match='embedding contains NaN or inf'):
        BiLRP(model, composite=EpsilonPlus())(torch.rand(1, 3, dtype=DTYPE), torch.rand(1, 3, dtype=DTYPE))


def test_embedding_not_2d():
    model = SmallResNet(widths=(4,), batch_norm=False, pool=False).to(DTYPE).eval()
    x_a, x_b = pair()
    with pytest.raises(ValueError, match=r"must be 2-D \(N, h\); pass head='avg'"):
        BiLRP(model, composite=EpsilonPlus())(x_a, x_b)
    result = BiLRP(model, composite=EpsilonPlus(), head='avg')(x_a, x_b, pooling=4)
    assert result.relevance.shape == (2, 4, 4)


def test_patch_size_does_not_divide(engine):
    x_a, x_b = pair()
    with pytest.raises(ValueError, match=r'patch size \(3, 3\) does not divide the spatial size \(8, 8\)'):
        engine(x_a, x_b, pooling=3)


def test_train_mode_with_batch_norm_is_refused():
    model = bn_cnn().train()
    state = ModelState.capture(model)
    x_a, x_b = pair()
    with pytest.raises(RuntimeError, match=r'training mode with BatchNorm/Dropout.*model\.eval\(\)'):
        BiLRP(model, composite=EpsilonPlus())(x_a, x_b)
    assert state.differences(model) == []


def test_unsupported_layer_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 3)).to(DTYPE)
    with pytest.raises(TypeError, match=r"unsupported layer '1' \(LayerNorm\)"):
        BiLRP(model.eval(), composite=EpsilonPlus())(torch.rand(1, 4, dtype=DTYPE), torch.rand(1, 4, dtype=DTYPE))
    with warnings.catch_warnings():  # LayerNorm's plain gradient does not conserve: only finiteness matters here
        warnings.simplefilter('ignore', ConservationWarning)
        result = BiLRP(model, composite=EpsilonPlus(), strict=False)(torch.rand(1, 4, dtype=DTYPE),
                                                                     torch.rand(1, 4, dtype=DTYPE))
    assert torch.isfinite(result.relevance).all()


def test_bad_options():
    model = mlp((3, 4, 2)).eval()
    with pytest.raises(ValueError, match='unknown similarity'):
        BiLRP(model, similarity='euclid')
    with pytest.raises(ValueError, match='unknown head'):
        BiLRP(model, head='mean')
    with pytest.raises(ValueError, match='unknown method'):
        BiLRP(model, method='fast')
    with pytest.raises(TypeError, match='model must be a torch.nn.Module'):
        BiLRP(lambda x: x)
    with pytest.raises(ValueError, match='give either `patch` or `grid`'):
        Pooling(patch=2, grid=2)


def test_pairwise_matrix_size_guard(engine):
    x_a, x_b = pair((3, 8, 8), 1)
    engine.max_pairwise_entries = 100
    with pytest.raises(ValueError, match='pooled pairwise matrix would have 64 x 64'):
        engine(x_a, x_b)


def test_cosine_of_zero_embedding():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False), torch.nn.ReLU()).to(DTYPE).eval()
    model[0].weight.data.fill_(-1.0)  # positive inputs -> all-zero embedding
    with pytest.raises(ValueError, match='zero norm'):
        BiLRP(model, composite=EpsilonPlus(), similarity='cosine')(torch.rand(1, 3, dtype=DTYPE),
                                                                    torch.rand(1, 3, dtype=DTYPE))


def test_normalize_layer_gets_pass_rule():
    """A model ending in Normalize explains the cosine with a dot product on normalized embeddings."""
    torch.manual_seed(3)
    body = mlp((5, 8, 4)).to(DTYPE).eval()
    normalized = torch.nn.Sequential(body, Normalize()).eval()
    x_a, x_b = torch.rand(2, 5, dtype=DTYPE), torch.rand(2, 5, dtype=DTYPE)
    cosine = BiLRP(body, composite=EpsilonPlus(), similarity='cosine')(x_a, x_b)
    dot_on_normalized = BiLRP(normalized, composite=EpsilonPlus(), similarity='dot')(x_a, x_b)
    assert torch.allclose(cosine.similarity, dot_on_normalized.similarity)
    assert torch.allclose(cosine.relevance, dot_on_normalized.relevance, rtol=1e-9, atol=1e-12)
