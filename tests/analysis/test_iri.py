"""IRI generation, lp-ball projection, alignment / shared-invariance measures and BiLRP of IRIs."""
import json
import math
import sys

import numpy as np
import pytest
import torch
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP, ModelState
from zennit_bilrp.analysis.iri import (
    Blur,
    InvarianceTable,
    IRIGenerator,
    IRIResult,
    L1Center,
    LpBall,
    LpNorm,
    RandomTransforms,
    TotalVariation,
    alignment_score,
    correspondence_share,
    explain_iris,
    generate_iris,
    invariance_table,
    representation,
    representation_distance,
    resolve_layer,
    shared_invariance,
)
from zennit_bilrp.analysis.perceptual import (
    LPIPSDistance,
    PixelDistance,
    RandomFeatureDistance,
    SSIMDistance,
    available_distances,
    get_distance,
    lp_distance,
)
from zennit_bilrp.lrp.canonizers import canonizers_for
from zennit_bilrp.lrp.layers import CaptureLayer, LayerEmbedding
from zennit_bilrp.models.small_resnet import SmallResNet

from helpers.models import random_batch_norm_statistics

DTYPE = torch.float64
#: stated acceptance factor: the representation distance of the IRIs falls at least this much below the start's
REDUCTION = 10.0


pytestmark = pytest.mark.usefixtures('single_thread')


def small_model(seed=0, dtype=DTYPE):
    torch.manual_seed(seed)
    model = SmallResNet(widths=(6, 12)).to(dtype)
    return random_batch_norm_statistics(model).eval()


def images(n=3, size=12, seed=1, dtype=DTYPE):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator, dtype=dtype)


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_representation_distance_falls_and_model_untouched():
    model = small_model()
    state = ModelState.capture(model)
    refs = images()
    result = generate_iris(model, refs, start='super-noise', iterations=120, step_size=0.5, progress=False,
                           target=0.003)
    assert result.layer == 'pool.0'
    # the stated factor, for every sample
    assert bool((result.representation_distance * REDUCTION <= result.start_distance).all()), result.reduction
    assert bool(result.reached.all())
    # best-iterate tracking: without transforms/regularizers the objective is the distance itself
    assert torch.allclose(result.representation_distance, result.history.min(dim=0).values, rtol=1e-10, atol=0)
    # reported distances are what they claim to be
    manual = representation_distance(model, result.iris, refs)
    assert torch.allclose(result.representation_distance, manual, rtol=1e-12)
    assert torch.allclose(result.image_distance, (result.iris - refs).flatten(1).norm(dim=1))
    assert float(result.iris.min()) >= 0 and float(result.iris.max()) <= 1
    assert state.differences(model) == [] and no_hooks(model)
    assert all(p.grad is None for p in model.parameters())


def test_one_step_is_the_normalized_gradient_step():
    model = small_model()
    refs = images(2)
    gen = IRIGenerator(model, iterations=1, step_size=0.3, schedule='constant', progress=False)
    result = gen(refs, start='light-noise')
    x0 = gen.starting_points(refs, 'light-noise').requires_grad_(True)
    with torch.no_grad():
        ref_rep = representation(model, refs)
    rep = LayerEmbedding(model, resolve_layer(model), flatten=True)(x0)
    loss = ((rep - ref_rep).norm(dim=1) / ref_rep.norm(dim=1)).sum()
    grad, = torch.autograd.grad(loss, x0)
    x1 = (x0.detach() - 0.3 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    expected = representation_distance(model, x1, refs)
    assert torch.allclose(result.history[1], expected, rtol=1e-10)
    assert torch.allclose(result.starts, torch.clamp(0.01 * torch.randn(
        refs.shape, generator=torch.Generator().manual_seed(0), dtype=DTYPE), 0, 1))


def test_start_points_and_schedule():
    model = small_model()
    refs = images(2)
    gen = IRIGenerator(model, iterations=10, step_size=1.0, schedule='cosine', final_step=0.1, progress=False)
    assert torch.equal(gen.starting_points(refs, 'white'), torch.ones_like(refs))
    assert torch.equal(gen.starting_points(refs, 'black'), torch.zeros_like(refs))
    assert gen.step_at(0) == pytest.approx(1.0) and gen.step_at(9) == pytest.approx(0.1)
    linear = IRIGenerator(model, iterations=10, step_size=0.5, schedule='linear', final_step=0.5)
    assert linear.step_at(9) == pytest.approx(0.25)


@pytest.mark.parametrize('norm', ['l2', 'linf'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_lp_ball_radius_respected_exactly(norm, dtype):
    model = small_model(dtype=dtype)
    refs, starts = images(3, dtype=dtype), images(3, seed=7, dtype=dtype)
    radius = 0.3 if norm == 'l2' else 0.02
    result = generate_iris(model, refs, start=starts, ball=LpBall(radius, norm), iterations=25, step_size=0.2,
                           progress=False)
    dist = lp_distance(result.iris, starts, norm)
    assert bool((dist <= radius).all()), dist          # exact: no tolerance
    assert bool((dist >= 0.9 * radius).all()), dist    # the constraint is active, not trivially satisfied
    assert torch.equal(result.start_image_distance, dist)
    assert float(result.iris.min()) >= 0 and float(result.iris.max()) <= 1
    assert bool((result.representation_distance < result.start_distance).all())


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_lp_ball_projection_is_exact_and_idempotent(norm):
    generator = torch.Generator().manual_seed(3)
    center = torch.rand(64, 3, 5, 5, generator=generator, dtype=torch.float32)
    x = torch.rand(64, 3, 5, 5, generator=generator, dtype=torch.float32)
    for radius in (1e-3, 0.1, 0.3333, 1.7):
        ball = LpBall(radius, norm)
        out = ball.project(x, center)
        dist = lp_distance(out, center, norm)
        assert bool((dist <= radius).all())
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        inside = lp_distance(x, center, norm) <= radius
        assert torch.equal(out[inside], x[inside])       # points inside are left alone
        assert torch.equal(ball.project(out, center), out)
    # the l2 projection is the radial one: out - center is parallel to x - center
    ball = LpBall(0.1, 'l2')
    out = ball.project(x.double(), center.double())
    cos = torch.nn.functional.cosine_similarity((out - center).flatten(1), (x - center).double().flatten(1))
    assert torch.allclose(cos, torch.ones_like(cos))


def test_determinism_with_seed(tmp_path):
    model = small_model()
    refs = images(2)
    kwargs = dict(iterations=8, step_size=0.5, transforms=RandomTransforms(jitter=2, scale=(0.9, 1.1), rotation=10),
                  regularizers={'tv': 0.05, 'blur': 0.1, 'l1': 0.01, 'lp': 0.01}, progress=False)
    a = generate_iris(model, refs, seed=5, **kwargs)
    b = generate_iris(model, refs, seed=5, **kwargs)
    c = generate_iris(model, refs, seed=6, **kwargs)
    assert torch.equal(a.iris, b.iris) and torch.equal(a.history, b.history)
    assert not torch.equal(a.iris, c.iris)
    a.save(tmp_path / 'iris.npz')
    loaded = IRIResult.load(tmp_path / 'iris.npz')
    assert torch.equal(loaded.iris, a.iris) and loaded.config == a.config and loaded.layer == a.layer
    # batching does not change the result when starts are given
    d = generate_iris(model, refs, start=a.starts, seed=5, batch_size=1, **{**kwargs, 'transforms': None})
    e = generate_iris(model, refs, start=a.starts, seed=5, **{**kwargs, 'transforms': None})
    assert torch.allclose(d.iris, e.iris, atol=1e-12)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_result_save_load_roundtrip_without_pickle(tmp_path, dtype):
    model = small_model(dtype=dtype)
    refs = images(2, dtype=dtype)
    result = generate_iris(model, refs, iterations=3, step_size=0.5, ball=None, regularizers={'tv': 0.1},
                           progress=False, start=images(2, seed=4, dtype=dtype))
    path = result.save(tmp_path / 'sub' / 'iris.npz')
    assert path == tmp_path / 'sub' / 'iris.npz' and path.is_file()
    with np.load(path, allow_pickle=False) as archive:  # a plain NumPy archive: readable without this package
        assert np.allclose(archive['iris'], result.iris.numpy(), rtol=0, atol=0)
        assert json.loads(str(archive['metadata']))['layer'] == result.layer
    loaded = IRIResult.load(path)
    for name in ('iris', 'references', 'starts', 'representation_distance', 'start_distance', 'image_distance',
                 'start_image_distance', 'reached', 'history'):
        value, expected = getattr(loaded, name), getattr(result, name)
        assert value.dtype == expected.dtype and value.shape == expected.shape, name
        assert torch.allclose(value.double(), expected.double(), rtol=0, atol=0), name
    assert loaded.target == result.target and loaded.layer == result.layer and loaded.config == result.config
    torch.save({'iris': result.iris}, tmp_path / 'pickled.pt')
    with pytest.raises(ValueError, match='not an IRIResult file'):
        IRIResult.load(tmp_path / 'pickled.pt')
    with pytest.raises(TypeError, match='config must hold plain values'):
        IRIResult(**{**{k: getattr(result, k) for k in result.__dataclass_fields__}, 'config': {'f': object()}}
                  ).save(tmp_path / 'bad.npz')


def test_adversarial_term_pushes_away_perceptually():
    model = small_model()
    refs = images(3, size=16)
    distance = RandomFeatureDistance()
    plain = generate_iris(model, refs, iterations=40, step_size=0.5, progress=False)
    adv = generate_iris(model, refs, iterations=40, step_size=0.5, perceptual_weight=0.5, perceptual=distance,
                        progress=False)
    assert bool((distance(adv.iris, refs) > distance(plain.iris, refs)).all())
    assert adv.config['perceptual'] == 'random-features'


def test_bad_arguments_raise_clear_errors():
    model = small_model()
    refs = images(2)
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        IRIGenerator(model, layer='nope')
    for radius in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match='radius must be a finite number > 0'):
            LpBall(radius, 'l2')
    with pytest.raises(ValueError, match='unknown norm'):
        LpBall(0.1, 'l1')
    gen = IRIGenerator(model, iterations=1, progress=False)
    with pytest.raises(ValueError, match=r'must lie in \[0, 1\]'):
        gen(refs * 2.0)
    with pytest.raises(ValueError, match=r'must lie in \[0, 1\]'):
        gen(refs - 0.5)
    with pytest.raises(ValueError, match=r'start has values .* must lie in \[0, 1\]'):
        gen(refs, start=refs + 1)
    with pytest.raises(TypeError, match='floating.point'):
        gen((refs * 255).to(torch.uint8))
    with pytest.raises(ValueError, match='expected a non-empty image batch'):
        gen(refs[0])
    with pytest.raises(ValueError, match='differ in shape'):
        gen(refs, start=refs[:1])
    with pytest.raises(ValueError, match='unknown start'):
        gen(refs, start='gray')
    with pytest.raises(ValueError, match='needs the starting image'):
        IRIGenerator(model, ball=LpBall(0.1), progress=False)(refs, start='super-noise')
    with pytest.raises(ValueError, match='step_size'):
        IRIGenerator(model, step_size=0)
    with pytest.raises(ValueError, match='perceptual_weight'):
        IRIGenerator(model, perceptual_weight=-1)
    with pytest.raises(ValueError, match='unknown distance'):
        IRIGenerator(model, perceptual_weight=1, perceptual='lpipz')
    with pytest.raises(ValueError, match='unknown regularizer'):
        IRIGenerator(model, regularizers={'tvv': 1})
    with pytest.raises(ValueError, match='scale must be a range'):
        RandomTransforms(scale=(1.2, 1.0))
    model.train()
    with pytest.raises(RuntimeError, match='training mode'):
        IRIGenerator(model, iterations=1, progress=False)(refs)
    model.eval()
    assert no_hooks(model)


def test_layer_resolution_and_capture_removes_hook():
    model = small_model()
    assert resolve_layer(model) == 'pool.0'
    seq = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    assert resolve_layer(seq) == ''

    class WithAvgpool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 4, 3)
            self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.avgpool(self.body(x)).flatten(1))

    assert resolve_layer(WithAvgpool()) == 'avgpool'
    x = images(2)
    with torch.no_grad():
        expected = model.stages(model.stem(x)).mean(dim=(2, 3))
        assert torch.allclose(LayerEmbedding(model, resolve_layer(model), flatten=True)(x), expected)
        assert torch.allclose(representation(model, x, 'stages', batch_size=1),
                              model.stages(model.stem(x)).flatten(1))
        assert torch.allclose(representation(model, x, ''), model(x))
    with pytest.raises(RuntimeError, match='boom'):
        with CaptureLayer(model, 'stages.0'):
            raise RuntimeError('boom')
    assert no_hooks(model)


def test_regularizer_values():
    x = torch.zeros(1, 1, 2, 3, dtype=DTYPE)
    x[0, 0, :, 1] = 1.0   # a vertical bar: horizontal differences |0-1|, |1-0|; vertical ones 0
    assert float(TotalVariation(2.0)(x)) == pytest.approx(2.0 * (0 + 4 / 4))
    assert float(L1Center()(x)) == pytest.approx(0.5)
    assert float(LpNorm(p=2)(x)) == pytest.approx(math.sqrt(2 / 6))
    assert float(Blur(sigma=1.0)(torch.full((1, 3, 5, 5), 0.3, dtype=DTYPE))) == pytest.approx(0.0, abs=1e-20)
    assert float(Blur(sigma=1.0)(images(1))) > 0
    y = images(2)
    t = RandomTransforms()
    assert torch.equal(t(y, torch.Generator().manual_seed(0)), y)
    shifted = RandomTransforms(jitter=3)(y, torch.Generator().manual_seed(0))
    assert any(torch.equal(shifted, torch.roll(y, (i, j), (2, 3))) for i in range(-3, 4) for j in range(-3, 4))


def test_perceptual_distances():
    x, y = images(3, size=24), images(3, size=24, seed=2)
    for name in ('pixel', 'ssim', 'random-features'):
        d = get_distance(name)
        assert torch.allclose(d(x, x), torch.zeros(3, dtype=DTYPE), atol=1e-7)
        assert bool((d(x, y) > 0).all())
    assert torch.allclose(PixelDistance()(x, y), (x - y).flatten(1).pow(2).mean(1).sqrt())
    # ssim: a single scale with a 1-pixel window is the per-pixel luminance term only
    single = SSIMDistance(scales=1, window=1)(x, y)
    lum = ((2 * x * y + 1e-4) / (x ** 2 + y ** 2 + 1e-4)).flatten(1).mean(1)
    assert torch.allclose(single, 1 - lum)
    # the random network is fixed by its seed
    assert torch.equal(RandomFeatureDistance(seed=3)(x, y), RandomFeatureDistance(seed=3)(x, y))
    assert not torch.equal(RandomFeatureDistance(seed=3)(x, y), RandomFeatureDistance(seed=4)(x, y))
    assert {'ssim', 'random-features'} <= set(available_distances())
    with pytest.raises(ValueError, match='same shape'):
        SSIMDistance()(x, y[:1])


def test_lpips_without_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'lpips', None)
    with pytest.raises(ImportError, match="needs the 'lpips' package"):
        LPIPSDistance()
    assert 'lpips' not in available_distances()


def test_alignment_score_counts_closer_iris():
    refs, starts = images(4), images(4, seed=9)
    # IRIs 0, 1 are near their references, 2, 3 near their starts
    iris = torch.cat([0.9 * refs[:2] + 0.1 * starts[:2], 0.2 * refs[2:] + 0.8 * starts[2:]])
    score = alignment_score((iris, refs, starts), distances=['pixel', 'ssim'])
    assert score.scores == {'pixel': 50.0, 'ssim': 50.0}
    assert score.mean == 50.0 and score.std == 0.0
    assert score.closer['pixel'].tolist() == [True, True, False, False]
    one = alignment_score((iris[:1], refs[:1], starts[:1]), distances=PixelDistance())
    assert one.scores == {'pixel': 100.0}


def test_shared_invariance_definition_and_table(tmp_path):
    model_a, model_b = small_model(0), small_model(1)
    refs = images(2)
    result = generate_iris(model_a, refs, iterations=30, step_size=0.5, progress=False)
    self_measure = shared_invariance(result, model_a)
    assert torch.allclose(self_measure['distance'], result.representation_distance)
    measure = shared_invariance(result, model_b)
    with torch.no_grad():
        ga = lambda x: model_b.stages(model_b.stem(x)).mean(dim=(2, 3))  # noqa: E731
        d = (ga(result.iris) - ga(refs)).norm(dim=1) / ga(refs).norm(dim=1)
        d0 = (ga(result.starts) - ga(refs)).norm(dim=1) / ga(refs).norm(dim=1)
    assert torch.allclose(measure['distance'], d) and torch.allclose(measure['relative'], d / d0)
    table = invariance_table({'a': model_a, 'b': (model_b, 'pool.0')}, refs, results={'a': result}, iterations=5,
                             step_size=0.5, progress=False)
    assert table.names == ['a', 'b']
    assert float(table.distance[0, 0]) == pytest.approx(float(result.representation_distance.mean()))
    assert float(table.distance[0, 1]) == pytest.approx(float(d.mean()))
    assert len(table.rows()) == 4 and 'measured by' in table.format()
    loaded = InvarianceTable.load(table.save(tmp_path / 'invariance.csv'))
    assert loaded.names == table.names and loaded.results == {}
    for key in ('distance', 'relative', 'distance_std'):
        assert torch.allclose(getattr(loaded, key), getattr(table, key), rtol=1e-15, atol=0), key
    with open(tmp_path / 'partial.csv', 'w') as handle:
        handle.write('iris_from,measured_by,distance,distance_std,relative\na,a,0.1,0.0,0.5\na,b,0.2,0.0,0.6\n')
    with pytest.raises(ValueError, match='one row for each'):
        InvarianceTable.load(tmp_path / 'partial.csv')


def test_correspondence_share_by_hand():
    rel = torch.tensor([[[2.0, -1.0], [0.0, 1.0]]], dtype=DTYPE)
    share = correspondence_share(rel)
    assert float(share['abs'][0]) == pytest.approx(3 / 4)
    assert float(share['positive'][0]) == pytest.approx(3 / 3)
    assert float(share['chance'][0]) == pytest.approx(0.5)
    assert float(share['ratio'][0]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r'\(B, P, P\)'):
        correspondence_share(torch.zeros(1, 2, 3))


def test_explain_iris_goes_through_the_engine():
    model = small_model()
    refs = images(2, size=8)
    result = generate_iris(model, refs, iterations=5, step_size=0.5, progress=False)
    composite = EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))
    explanation = explain_iris(result, model, pooling=4, composite=composite, similarity='dot')
    # the truncated model written out by hand gives the same BiLRP
    truncated = torch.nn.Sequential(model.stem, model.stages, model.pool)
    with BiLRP(truncated, composite=EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(truncated)),
               similarity='dot') as bilrp:
        direct = bilrp(result.iris, refs, pooling=4)
    assert torch.allclose(explanation.result.relevance, direct.relevance, rtol=1e-8, atol=1e-12)
    with BiLRP(truncated, composite=EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(truncated)),
               similarity='dot') as bilrp:
        given = explain_iris(result, bilrp=bilrp, pooling=4, marginals=False)
    assert torch.allclose(given.result.relevance, direct.relevance, rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match='needs the model'):
        explain_iris(result)
    emb_iri, emb_ref = representation(model, result.iris), representation(model, refs)
    assert torch.allclose(explanation.result.similarity, (emb_iri * emb_ref).sum(dim=1))
    assert explanation.share['abs'].shape == (2,) and float(explanation.share['chance'][0]) == 0.25
    assert no_hooks(model)
