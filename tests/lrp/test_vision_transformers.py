"""Vision-transformer BiLRP on tiny random models (float64): the wrapper computes the model, the engine equals a
per-unit Zennit loop (both paths, both rule families), conservation without biases, strict mode, restoration after
an exception, attention implementations, and the patch grid."""
import pytest
import torch

transformers = pytest.importorskip('transformers', minversion='5',
                    reason="the [vision] extra (transformers 5) is not installed: pip install 'zennit-bilrp[vision]'")

from zennit_bilrp.core.engine import BiLRP  # noqa: E402
from zennit_bilrp.lrp.attention import AttentionSoftmax  # noqa: E402
from zennit_bilrp.lrp.attnlrp import SoftmaxTaylor  # noqa: E402
from zennit_bilrp.lrp.choose import composite_for  # noqa: E402
from zennit_bilrp.lrp.restore import ModelState  # noqa: E402
from zennit_bilrp.lrp.towers import ImageEncoder  # noqa: E402
from zennit_bilrp.lrp.transformers import TransformerCanonizer, TransformerLRP, check_supported  # noqa: E402

from helpers.vision_models import (  # noqa: E402
    VISION_KINDS,
    cosine_pairwise,
    has_timm,
    missing_package,
    patch_pool,
    pooled_loop_factors,
    reference_embedding,
    relative,
    tiny_vision,
)

pytestmark = pytest.mark.usefixtures('single_thread')

EXACT = dict(epsilon=1e-12, stabilizer=1e-12)
FAMILIES = ('conservative', 'attnlrp')


def kinds():
    return [pytest.param(kind, marks=pytest.mark.skipif(
        missing_package(kind) is not None, reason=f'{missing_package(kind)} (in the [vision] extra) is not installed'))
            for kind in VISION_KINDS]


def images(count=2, seed=0, size=8):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize('kind', kinds())
def test_encoder_computes_the_model(kind):
    """ImageEncoder (plain and with the canonizers of both families registered) computes the model's embedding (up
    to Hugging Face's eager attention, which takes the softmax in float32 also for float64 models)."""
    model = tiny_vision(kind)
    encoder = ImageEncoder(model)
    x = images()
    expected = reference_embedding(kind, model, x)
    assert torch.allclose(encoder(x), expected, atol=1e-12, rtol=0)
    for family in FAMILIES:
        with BiLRP(encoder, composite=TransformerLRP(family)) as engine:
            assert torch.allclose(engine.embed(x), expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('kind', kinds())
def test_engine_matches_the_per_unit_loop(kind, family):
    """Pooled factors and the pairwise relevance of both paths (unit-major, patch-major) equal one Zennit pass per
    unit (strict mode on: every supported model is accepted)."""
    model = tiny_vision(kind, seed=1)
    encoder = ImageEncoder(model)
    x_a, x_b = images(1, 2), images(1, 3)
    emb_a, fac_a = pooled_loop_factors(encoder, TransformerLRP(family, **EXACT), x_a, patch_pool)
    emb_b, fac_b = pooled_loop_factors(encoder, TransformerLRP(family, **EXACT), x_b, patch_pool)
    expected = cosine_pairwise(emb_a, fac_a, emb_b, fac_b)
    for method in ('batched', 'patches'):
        engine = BiLRP(encoder, composite=TransformerLRP(family, **EXACT), similarity='cosine', method=method)
        result = engine.explain(x_a, x_b, pooling=encoder.patch_pooling(8, 8), marginals=False)
        assert result.relevance.shape == (1, 4, 4)
        assert relative(result.factors_a.relevance, fac_a) < 1e-9, method
        assert relative(result.relevance, expected) < 1e-9, method


class _Recording(SoftmaxTaylor):
    """The AttnLRP softmax rule, adding up what it absorbs (sum of output minus input relevance)."""

    absorbed = []

    def backward(self, module, grad_input, grad_output):
        result = super().backward(module, grad_input, grad_output)
        self.absorbed.append(float(grad_output[0].sum() - result[0].sum()))
        return result


class _RecordingLRP(TransformerLRP):
    def mapping(self, ctx, name, module):
        return _Recording() if isinstance(module, AttentionSoftmax) else super().mapping(ctx, name, module)


@pytest.mark.parametrize('kind', kinds())
def test_conservation_without_biases(kind):
    """Biases, LayerNorm shifts, position embeddings and constant tokens zero: the conservative rules conserve
    exactly (sum R = cosine); AttnLRP's conserve up to what its softmax rule absorbs (the bias of its Taylor
    expansion), which is measured rule by rule and is not small."""
    model = tiny_vision(kind, seed=2, bias_free=True)
    encoder = ImageEncoder(model)
    x_a, x_b = images(1, 4), images(1, 5)
    result = BiLRP(encoder, composite=TransformerLRP('conservative', **EXACT), similarity='cosine').explain(
        x_a, x_b, pooling=4, marginals=False)
    assert torch.allclose(result.relevance.sum(dim=(1, 2)), result.similarity, rtol=1e-8, atol=0)
    seed = torch.randn(1, encoder(x_a).shape[1], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    _Recording.absorbed = []
    embedding, relevance = BiLRP(encoder, composite=_RecordingLRP('attnlrp', **EXACT), method='loop').propagate(
        x_a, seed[None], pooling=4)
    total, absorbed = float((embedding * seed).sum()), sum(_Recording.absorbed)
    assert len(_Recording.absorbed) == (2 if kind != 'siglip' else 3)
    assert abs(absorbed) > 1e-3 * abs(total)
    assert float(relevance.sum()) + absorbed == pytest.approx(total, rel=1e-8, abs=1e-12)


def test_attention_implementations_are_all_canonized():
    """eager and sdpa (and flex attention where it can be selected) give the same model and the same explanation:
    the canonized forward computes attention itself."""
    x_a, x_b = images(1, 6), images(1, 7)
    results = {}
    for implementation in ('eager', 'sdpa', 'flex_attention'):
        try:
            model = tiny_vision('vit', seed=3, attn_implementation=implementation)
        except (ValueError, ImportError):  # flex attention unavailable in this build
            assert implementation == 'flex_attention'
            continue
        assert model.config._attn_implementation == implementation
        encoder = ImageEncoder(model)
        results[implementation] = BiLRP(encoder, composite=TransformerLRP('attnlrp'), similarity='cosine').explain(
            x_a, x_b, pooling=4, marginals=False).relevance
    assert {'eager', 'sdpa'} <= set(results)
    for relevance in results.values():
        assert relative(relevance, results['eager']) < 1e-12


def test_unsupported_attention_is_refused_by_name():
    """Attention modules the canonizers do not cover are refused naming the module: a plain
    nn.TransformerEncoderLayer, a DeiT model, timm's gated attention."""
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    with pytest.raises(TypeError, match=r"unsupported layer 'self_attn' \(MultiheadAttention\)"):
        check_supported(layer)
    with pytest.raises(TypeError, match=r"unsupported layer 'self_attn' \(MultiheadAttention\)"):
        TransformerCanonizer().apply(layer)
    deit = transformers.DeiTModel(transformers.DeiTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=32, image_size=8, patch_size=4)).eval()
    with pytest.raises(TypeError, match=r"unsupported layer 'layers\.0\.attention' \(DeiTAttention\)"):
        check_supported(deit)
    if has_timm():
        import timm

        gated = timm.layers.Attention(16, num_heads=2, gated=True)
        with pytest.raises(TypeError, match='gated timm attention'):
            check_supported(torch.nn.Sequential(gated))


@pytest.mark.parametrize('kind', ['torchvision', 'clip'])
def test_model_is_restored_after_an_exception_in_the_forward(kind):
    """An exception raised inside a transformer block while the rules are registered leaves the model bit-identical:
    parameters, the swapped MultiheadAttention, forwards, children and hooks."""
    model = tiny_vision(kind, seed=4)
    encoder = ImageEncoder(model)
    x = images(1, 8)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = ModelState.capture(model)
    output = encoder(x)
    block = encoder.blocks[1]

    def fail(module, args):
        raise RuntimeError('boom inside block 1')

    handle = block.mlp.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match='boom inside block 1'):
            BiLRP(encoder, similarity='cosine').explain(x, x, pooling=4)
    finally:
        handle.remove()
    assert before.differences(model) == []
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())
    assert not any('canonizer' in name for name, _ in model.named_modules())
    assert all('forward' not in module.__dict__ for module in model.modules())
    if kind == 'torchvision':
        assert isinstance(model.encoder.layers[0].self_attention, torch.nn.MultiheadAttention)
    assert torch.equal(encoder(x), output)


def test_patch_grid_maps_tokens_to_pixels():
    """DINOv2 with 2 register tokens on 8 x 12 images, patch 4 (a 2 x 3 grid): tokens 0 (class) and 1-2
    (registers) have no pixels; token 3 + p is patch p in row-major order, checked by hand, by perturbing the
    pixels of one patch, and by the pooled relevance."""
    model = tiny_vision('dinov2_registers', seed=5)
    encoder = ImageEncoder(model, pooling='mean')
    assert encoder.num_prefix == 3 and encoder.patch_size == (4, 4) and encoder.grid(8, 12) == (2, 3)
    assert encoder.token_layout(8, 12) == [
        ('cls', None), ('register', None), ('register', None),
        ('patch', (0, 0, 4, 4)), ('patch', (0, 4, 4, 8)), ('patch', (0, 8, 4, 12)),
        ('patch', (4, 0, 8, 4)), ('patch', (4, 4, 8, 8)), ('patch', (4, 8, 8, 12))]
    x = torch.rand(1, 3, 8, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    changed = x.clone()
    changed[:, :, 4:8, 8:12] += 1.0  # the pixels of patch (1, 2) only
    with torch.no_grad():
        difference = (encoder.embed(changed) - encoder.embed(x)).abs().amax(dim=(0, 2))
    assert difference.nonzero().flatten().tolist() == [3 + 5]
    engine = BiLRP(encoder, composite=TransformerLRP('conservative', **EXACT))
    pooled = engine.factors(x, pooling=encoder.patch_pooling(8, 12)).relevance[0]
    pixels = engine.factors(x).relevance[0].reshape(-1, 8, 12)
    by_hand = torch.stack([pixels[:, top:bottom, left:right].sum(dim=(1, 2))
                           for kind, box in encoder.token_layout(8, 12) if kind == 'patch'
                           for top, left, bottom, right in [box]], dim=1)
    assert relative(pooled, by_hand) < 1e-12
    with pytest.raises(ValueError, match='must divide'):
        encoder.grid(8, 10)


def test_composite_for_gives_transformer_rules():
    """composite_for picks TransformerLRP for image encoders and raw torchvision/timm/HF vision models."""
    for kind in ('vit', 'torchvision'):
        model = tiny_vision(kind)
        for candidate in (model, ImageEncoder(model)):
            composite = composite_for(candidate)
            assert isinstance(composite, TransformerLRP)


def test_poolings():
    """'mean' averages the patch tokens only, 'cls_mean' concatenates; impossible poolings are refused."""
    model = tiny_vision('dinov2_registers', seed=6)
    x = images(2, 10)
    with torch.no_grad():
        tokens = model(pixel_values=x).last_hidden_state
        assert torch.allclose(ImageEncoder(model, pooling='mean')(x), tokens[:, 3:].mean(1), atol=1e-12)
        assert torch.allclose(ImageEncoder(model, pooling='cls_mean')(x),
                              torch.cat([tokens[:, 0], tokens[:, 3:].mean(1)], 1), atol=1e-12)
    with pytest.raises(ValueError, match='no class token'):
        ImageEncoder(tiny_vision('siglip'), pooling='cls')
    with pytest.raises(TypeError, match='not a supported vision model'):
        ImageEncoder(torch.nn.Linear(2, 2))
