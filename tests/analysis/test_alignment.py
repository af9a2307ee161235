"""Alignment heads: gLocal loading and folding, LRP conservation through the head, fitting from triplets."""
import numpy as np
import pytest
import torch
from zennit.composites import EpsilonPlus

from zennit_bilrp import BilinearSimilarity, BiLRP
from zennit_bilrp.analysis.alignment import (
    AffineAlignment,
    AlignedModel,
    AlignmentFit,
    alignment_loss,
    alignment_rule,
    fit_alignment,
    fold_transform,
    load_glocal_transform,
    odd_one_out_triplets,
    triplet_accuracy,
    with_alignment_rule,
)
from zennit_bilrp.models.small_resnet import mlp

DTYPE = torch.float64


def write_transform(path, dim=6, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {'weights': rng.normal(size=(dim, dim)), 'mean': np.float64(0.7), 'std': np.float64(1.9)}
    if bias:
        arrays['bias'] = rng.normal(size=dim)
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize('bias', [True, False])
def test_loaded_transform_matches_unfolded_formula(tmp_path, bias):
    arrays = write_transform(tmp_path / 't.npz', bias=bias)
    layer = load_glocal_transform(tmp_path / 't.npz', dtype=DTYPE)
    f = torch.rand(5, 6, dtype=DTYPE) * 3
    expected = ((f.numpy() - arrays['mean']) / arrays['std']) @ arrays['weights'] + arrays.get('bias', 0.0)
    assert isinstance(layer, torch.nn.Linear)
    torch.testing.assert_close(layer(f), torch.from_numpy(expected), rtol=1e-12, atol=1e-12)
    w, b = fold_transform(arrays['weights'], arrays.get('bias'), 0.7, 1.9)
    torch.testing.assert_close(layer.matrix, w)


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='thingsvision'):
        load_glocal_transform(tmp_path / 'missing.npz')
    np.savez(tmp_path / 'nomean.npz', weights=np.eye(3), std=1.0)
    with pytest.raises(ValueError, match='mean'):
        load_glocal_transform(tmp_path / 'nomean.npz')
    np.savez(tmp_path / 'vector_mean.npz', weights=np.eye(3), mean=np.zeros(3), std=1.0)
    with pytest.raises(ValueError, match='scalar'):
        load_glocal_transform(tmp_path / 'vector_mean.npz')
    np.savez(tmp_path / 'rect.npz', weights=np.ones((3, 4)), mean=0.0, std=1.0)
    with pytest.raises(ValueError, match='square'):
        load_glocal_transform(tmp_path / 'rect.npz')
    np.savez(tmp_path / 'zero_std.npz', weights=np.eye(3), mean=0.0, std=0.0)
    with pytest.raises(ValueError, match='std'):
        load_glocal_transform(tmp_path / 'zero_std.npz')
    model = AlignedModel(mlp((4, 5)), AffineAlignment.identity(3))
    with pytest.raises(ValueError, match='expects'):
        model(torch.rand(2, 4))


@pytest.mark.parametrize('zero_bias', [False, True])
def test_head_rule_by_hand(zero_bias):
    """Backbone = identity: relevance of aligned unit k on feature i is f_i W_ik phi_k / (d_k + eps sign d_k), with
    d = phi (bias kept, the default rule) or d = z = phi - b (bias zeroed)."""
    torch.manual_seed(0)
    w, b = torch.randn(5, 4, dtype=DTYPE), torch.randn(4, dtype=DTYPE)
    model = AlignedModel(torch.nn.Identity(), AffineAlignment(w, b)).eval()
    f = torch.rand(3, 5, dtype=DTYPE) + 0.1
    eps = 1e-6
    rule = alignment_rule(eps, zero_params=['bias'] if zero_bias else None)
    with BiLRP(model, composite=with_alignment_rule(EpsilonPlus(), model, rule)) as bilrp:
        factors = bilrp.factors(f)
    z = f @ w
    phi = z + b
    denominator = z if zero_bias else phi
    expected = f[:, None, :] * w.T[None] * (phi / (denominator + eps * torch.sign(denominator)))[:, :, None]
    torch.testing.assert_close(factors.relevance, expected, rtol=1e-10, atol=1e-12)
    # conservation through the head: each unit's input relevance sums to its aligned value (bias zeroed) or to
    # its value without the bias (bias kept: the bias keeps its share)
    torch.testing.assert_close(factors.totals, phi if zero_bias else z, rtol=1e-4, atol=1e-8)


def test_head_equals_bilinear_similarity_and_conserves():
    """Bias-free head with LRP-eps: BiLRP(dot) of the aligned model = BiLRP of the backbone with W = A A^T."""
    torch.manual_seed(1)
    backbone = mlp((8, 12, 6)).to(DTYPE).eval()
    a = torch.randn(6, 6, dtype=DTYPE)
    aligned = AlignedModel(backbone, AffineAlignment(a)).eval()
    x_a, x_b = torch.rand(3, 8, dtype=DTYPE), torch.rand(3, 8, dtype=DTYPE)
    from zennit.rules import Epsilon
    base = EpsilonPlus(epsilon=1e-12, zero_params=['bias'])
    rule = Epsilon(epsilon=1e-12, zero_params=['bias'])
    with BiLRP(aligned, composite=with_alignment_rule(base, aligned, rule), similarity='dot') as bilrp:
        head = bilrp.explain(x_a, x_b)
    with BiLRP(backbone, composite=EpsilonPlus(epsilon=1e-12, zero_params=['bias']),
              similarity=BilinearSimilarity(a @ a.T)) as b2:
        bilinear = b2.explain(x_a, x_b)
    torch.testing.assert_close(head.similarity, bilinear.similarity)
    torch.testing.assert_close(head.relevance, bilinear.relevance, rtol=1e-7, atol=1e-10)
    assert float(head.delta.abs().max()) < 1e-8 * float(head.similarity.abs().max())


@pytest.mark.parametrize('zero_bias', [False, True])
def test_head_composes_with_cnn_backbone(zero_bias):
    """Relevance through head and backbone: aligned unit totals = backbone totals routed by the head's rule."""
    from zennit.rules import Epsilon

    from zennit_bilrp import canonizers_for
    from zennit_bilrp.models.small_resnet import SmallResNet
    torch.manual_seed(2)
    backbone = SmallResNet(widths=(4, 8)).to(DTYPE).eval()
    w, b = torch.eye(8, dtype=DTYPE) + 0.3 * torch.randn(8, 8, dtype=DTYPE), 0.01 * torch.randn(8, dtype=DTYPE)
    model = AlignedModel(backbone, AffineAlignment(w, b))
    eps = 1e-9

    def composite():
        return EpsilonPlus(epsilon=eps, zero_params=['bias'], canonizers=canonizers_for(backbone))

    x_a, x_b = torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(2, 3, 8, 8, dtype=DTYPE)
    with BiLRP(backbone, composite=composite()) as bilrp:
        base = bilrp.factors(torch.cat([x_a, x_b]), pooling=4)
    rule = Epsilon(epsilon=eps, zero_params=['bias'] if zero_bias else None)
    with BiLRP(model, composite=with_alignment_rule(composite(), model, rule), similarity='cosine') as bilrp:
        result = bilrp.explain(x_a, x_b, pooling=4)
    f = base.embedding
    z = f @ w
    phi = z + b
    d = z if zero_bias else phi
    expected = (base.totals[:, :, None] * w[None] * (phi / (d + eps * torch.sign(d)))[:, None, :]).sum(1)
    totals = torch.cat([result.factors_a.totals, result.factors_b.totals])
    torch.testing.assert_close(totals, expected, rtol=1e-8, atol=1e-12)
    # conservation of the whole explanation (bias zeroed), as good as the backbone's own
    if zero_bias:
        backbone_gap = float((base.totals - f).abs().max() / f.abs().max())
        assert float(result.delta.abs().max() / result.similarity.abs().max()) < max(10 * backbone_gap, 1e-8)
    with pytest.raises(ValueError, match='no alignment layer'):
        with_alignment_rule(EpsilonPlus(), backbone)


def test_local_term_and_regularizer_vanish_for_scaled_identity():
    torch.manual_seed(3)
    feats = torch.randn(20, 5, dtype=DTYPE)
    triplets = odd_one_out_triplets(torch.randn(20, 3), 50)
    w = 2.5 * torch.eye(5, dtype=DTYPE)
    zero = torch.zeros(5, dtype=DTYPE)
    glob = alignment_loss(w, zero, feats, triplets, alpha=0.0, reg=0.0)
    full = alignment_loss(w, zero, feats, triplets, local_features=feats, alpha=1.0, reg=10.0)
    torch.testing.assert_close(full, glob)  # cosine structure unchanged, W is a scaled identity
    # a non-trivial W makes both extra terms positive
    w2 = torch.randn(5, 5, dtype=DTYPE)
    assert alignment_loss(w2, zero, feats, triplets, local_features=feats, alpha=1.0, reg=1.0) > \
        alignment_loss(w2, zero, feats, triplets, alpha=0.0, reg=0.0)
    # global term by hand for one triplet
    i, j, k = (int(t) for t in triplets[0])
    s = torch.stack([feats[i] @ feats[j], feats[i] @ feats[k], feats[j] @ feats[k]]) * 2.5 ** 2
    by_hand = -torch.log_softmax(s, 0)[0]
    torch.testing.assert_close(alignment_loss(w, zero, feats, triplets[:1], reg=0.0), by_hand)


@pytest.mark.parametrize('alpha', [0.0, 0.2])
def test_fit_recovers_human_similarity(alpha):
    """Features whose high-variance directions are irrelevant to the 'human' embedding: fitting W must help."""
    gen = torch.Generator().manual_seed(0)
    n, dim = 240, 10
    latent = torch.randn(n, dim, generator=gen)
    scales = torch.tensor([4.0] * 4 + [0.5] * 6)
    features = latent * scales + 2.0
    human = latent[:, 4:]  # humans judge by the weak directions
    triplets = odd_one_out_triplets(human, 3000, seed=1)
    train, test = triplets[:2400], triplets[2400:]
    fit = fit_alignment(features, train, test, alpha=alpha, epochs=15, lr=3e-2)
    assert fit.baseline_test_accuracy < 0.5
    assert fit.test_accuracy > fit.baseline_test_accuracy + 0.25, (fit.baseline_test_accuracy, fit.test_accuracy)
    assert fit.history[-1] < fit.history[0]
    # the folded transform acts on raw features exactly like the unfolded one on standardized features
    raw = features.double()
    torch.testing.assert_close(fit.transform(raw), ((raw - fit.mean) / fit.std) @ fit.weights + fit.bias)
    assert triplet_accuracy(features, test, fit.transform) == fit.test_accuracy


def test_fit_save_load_roundtrip(tmp_path):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(30, 4, generator=gen, dtype=DTYPE) + 1.0
    triplets = odd_one_out_triplets(features[:, :2], 200, seed=2)
    fit = fit_alignment(features, triplets[:150], triplets[150:], epochs=3, lr=3e-2)
    path = fit.save(tmp_path / 'fit')
    assert path == tmp_path / 'fit.npz' and path.is_file()
    loaded = AlignmentFit.load(path)
    for name in ('weights', 'bias'):
        torch.testing.assert_close(getattr(loaded, name), getattr(fit, name), rtol=0, atol=0)
    assert (loaded.mean, loaded.std) == (fit.mean, fit.std)
    assert loaded.history == pytest.approx(fit.history, rel=0, abs=0)
    for name in ('train_accuracy', 'test_accuracy', 'baseline_test_accuracy'):
        assert getattr(loaded, name) == getattr(fit, name), name
    torch.testing.assert_close(loaded.transform(features), fit.transform(features), rtol=1e-15, atol=1e-15)
    # the file stays a gLocal transform
    torch.testing.assert_close(load_glocal_transform(path, dtype=DTYPE)(features), fit.transform(features),
                               rtol=1e-15, atol=1e-15)
    write_transform(tmp_path / 'plain.npz')
    with pytest.raises(ValueError, match='load_glocal_transform'):
        AlignmentFit.load(tmp_path / 'plain.npz')
