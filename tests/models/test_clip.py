"""Image-text BiLRP on tiny random CLIP and SigLIP models (float64, no downloads): the towers compute the model,
the two-tower engine equals a per-unit loop on each tower (both paths, both rule families), conservation without
biases, and the explain_image_text API (heatmaps, marginals, top pairs, save/load, a model folder loaded offline)."""
import pytest
import torch

transformers = pytest.importorskip('transformers', minversion='5',
                    reason="the [vision] extra (transformers 5) is not installed: pip install 'zennit-bilrp[vision]'")

from zennit_bilrp.core.engine import BiLRP  # noqa: E402
from zennit_bilrp.lrp.towers import CaptionEncoder, ImageEncoder  # noqa: E402
from zennit_bilrp.lrp.transformers import TransformerLRP  # noqa: E402
from zennit_bilrp.models.clip import (  # noqa: E402
    ImageTextExplanation,
    explain_image_text,
    image_text_model,
    load_image_text_model,
)

from helpers.vision_models import (  # noqa: E402
    OpenClipTokenizer,
    cosine_pairwise,
    missing_package,
    patch_pool,
    pooled_loop_factors,
    relative,
    tiny_image_text,
    tiny_tokenizer,
)

pytestmark = pytest.mark.usefixtures('single_thread')

EXACT = dict(epsilon=1e-12, stabilizer=1e-12)
KINDS = ('clip', 'siglip', pytest.param('open_clip', marks=pytest.mark.skipif(
    missing_package('open_clip') is not None, reason='open_clip (in the [vision] extra) is not installed')))


def tokenizer_for(kind):
    return OpenClipTokenizer() if kind == 'open_clip' else tiny_tokenizer()


def pixels(seed):
    return torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def caption_ids(kind, captions):
    """Token ids and mask as each model takes them (OpenCLIP: context 12, the mask up to the end-of-text token)."""
    if kind == 'open_clip':
        ids = OpenClipTokenizer()(captions)
        return ids, (torch.arange(12)[None] <= ids.argmax(-1)[:, None]).long()
    batch = tiny_tokenizer()(captions, padding='max_length' if kind == 'siglip' else True, return_tensors='pt')
    return batch['input_ids'], batch['attention_mask'] if kind == 'clip' else torch.ones_like(batch['input_ids'])


def model_embeddings(kind, model, ids, mask, x):
    """The model's own normalized image and text embeddings."""
    with torch.no_grad():
        if kind == 'open_clip':
            return model.encode_image(x, normalize=True), model.encode_text(ids, normalize=True)
        output = model(input_ids=ids, attention_mask=mask, pixel_values=x)
        return output.image_embeds, output.text_embeds


def token_pool(relevance):
    return relevance[:, :-1].sum(1)  # hidden channels summed; the mask channel carries none


@pytest.mark.parametrize('kind', KINDS)
def test_towers_compute_the_model(kind):
    """ImageEncoder and CaptionEncoder give the model's image and text embeddings (padded captions included)."""
    model = tiny_image_text(kind)
    ids, mask = caption_ids(kind, ['a photo of a cat', 'two birds in the tree on a red car'])
    x = torch.cat([pixels(0), pixels(1)])
    image_embeds, text_embeds = model_embeddings(kind, model, ids, mask, x)
    text_encoder = CaptionEncoder(model)
    with torch.no_grad():
        image = ImageEncoder(model)(x)
        text = text_encoder(text_encoder.embed(ids, mask))
    normalize = torch.nn.functional.normalize
    assert torch.allclose(normalize(image), image_embeds, atol=1e-12)
    assert torch.allclose(normalize(text), text_embeds, atol=1e-12)
    if kind != 'siglip':  # the default mask ends at the end-of-text token
        assert torch.equal(text_encoder.embed(ids)[:, -1], mask.to(x))


@pytest.mark.parametrize('family', ('conservative', 'attnlrp'))
@pytest.mark.parametrize('kind', KINDS)
def test_two_tower_engine_matches_the_per_unit_loop(kind, family):
    """Patch x token relevance of both paths equals one Zennit pass per unit on each tower, each tower with its
    own composite."""
    model = tiny_image_text(kind, seed=1)
    image, text = ImageEncoder(model), CaptionEncoder(model)
    ids, mask = caption_ids(kind, ['a red car on the mat'])
    x_a, x_b = pixels(2), text.embed(ids, mask)
    emb_a, fac_a = pooled_loop_factors(image, TransformerLRP(family, **EXACT), x_a, patch_pool)
    emb_b, fac_b = pooled_loop_factors(text, TransformerLRP(family, **EXACT), x_b, token_pool)
    expected = cosine_pairwise(emb_a, fac_a, emb_b, fac_b)
    for method in ('batched', 'patches'):
        engine = BiLRP(image, composite=TransformerLRP(family, **EXACT), model_b=text,
                       composite_b=TransformerLRP(family, **EXACT), similarity='cosine', method=method)
        result = engine.explain(x_a, x_b, pooling=4, pooling_b=None, marginals=False)
        assert result.relevance.shape == (1, 4, ids.shape[1])
        assert relative(result.factors_b.relevance, fac_b) < 1e-9, method
        assert relative(result.relevance, expected) < 1e-9, method


@pytest.mark.parametrize('kind', KINDS)
def test_conservation_and_marginals_without_biases(kind):
    """Bias-free towers, conservative rules: sum R = cosine, and the exact marginals (one pass per side) equal the
    patch and token sums of R."""
    model = image_text_model(tiny_image_text(kind, seed=2, bias_free=True), tokenizer_for(kind))
    explanation = explain_image_text(model, pixels(3)[0], 'two birds in the tree', family='conservative')
    assert explanation.total == pytest.approx(explanation.similarity, rel=1e-7)
    assert relative(patch_pool(explanation.result.marginal_a).reshape(2, 2), explanation.patch_marginal()) < 1e-7
    assert relative(token_pool(explanation.result.marginal_b)[0], explanation.token_marginal()) < 1e-7


def test_explanation_api_and_save_load(tmp_path):
    """Tokens, grid, per-token heatmaps, top pairs, the display image and a save/load round trip."""
    model = image_text_model(tiny_image_text('clip', seed=3), tiny_tokenizer())
    explanation = explain_image_text(model, pixels(4), 'a photo of a cat', family='attnlrp')
    assert explanation.tokens == ['<start>', 'a', 'photo', 'of', 'a', 'cat', '<end>']
    assert explanation.grid == (2, 2) and explanation.patch_size == (4, 4)
    assert explanation.relevance.shape == (4, 7)
    heatmaps = explanation.token_heatmaps()
    assert heatmaps.shape == (7, 2, 2)
    assert torch.equal(explanation.token_heatmap(5), explanation.relevance[:, 5].reshape(2, 2))
    assert float(heatmaps[5, 1, 0]) == float(explanation.relevance[2, 5])  # patch (1, 0) is patch 2 (row-major)
    top = explanation.top_pairs(3)
    assert abs(top[0][4]) == float(explanation.relevance.abs().max())
    patch, (row, col), token, name, value = top[0]
    assert patch == 2 * row + col and name == explanation.tokens[token] and value == float(
        explanation.relevance[patch, token])
    assert explanation.image.shape == (3, 8, 8) and 0 <= float(explanation.image.min()) <= 1
    assert explanation.pixel_marginal().shape == (8, 8)
    loaded = ImageTextExplanation.load(explanation.save(tmp_path / 'pair.npz'))
    assert torch.equal(loaded.relevance, explanation.relevance) and loaded.tokens == explanation.tokens
    assert loaded.grid == explanation.grid and torch.equal(loaded.image, explanation.image)
    assert loaded.caption == 'a photo of a cat' and loaded.similarity == explanation.similarity


def test_model_folder_loads_offline(tmp_path):
    """A CLIP model folder (weights, tokenizer, image processor) is loaded offline and explains a PIL image."""
    from PIL import Image

    model = tiny_image_text('clip', seed=4).float()
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    transformers.CLIPImageProcessor(size={'shortest_edge': 8}, crop_size={'height': 8, 'width': 8}).save_pretrained(
        tmp_path)
    loaded = load_image_text_model(tmp_path, dtype=torch.float64)
    image = Image.fromarray((pixels(5)[0].permute(1, 2, 0).numpy() * 255).astype('uint8'))
    explanation = explain_image_text(loaded, image, 'a dog on the mat')
    assert explanation.relevance.shape == (4, 7) and torch.isfinite(explanation.relevance).all()
    assert explanation.tokens[1:-1] == ['a', 'dog', 'on', 'the', 'mat']
    with pytest.raises(FileNotFoundError, match='no config.json'):
        load_image_text_model(tmp_path / 'missing')


def test_bad_inputs_are_refused():
    model = image_text_model(tiny_image_text('siglip', seed=5))
    with pytest.raises(ValueError, match='no tokenizer'):
        explain_image_text(model, pixels(6), 'a cat')
    with pytest.raises(TypeError, match='token ids of shape'):
        explain_image_text(model, pixels(6), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match='no image processor'):
        explain_image_text(model, [[0.0]], torch.tensor([[1, 5, 19]]))
    with pytest.raises(TypeError, match='not a two-tower'):
        image_text_model(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match='not a supported text tower'):
        CaptionEncoder(model.image.model.vision_model)
