"""Transformer BiLRP on tiny random Hugging Face encoders (float64): the NAACL 2024 reference, a per-unit loop,
conservation, padding, the covered architectures and the refusal of the others."""
import pytest
import torch

transformers = pytest.importorskip('transformers', reason="the [text] extra (transformers) is not installed")

from zennit_bilrp.core.engine import BiLRP  # noqa: E402
from zennit_bilrp.core.token_heads import ClsHead, MaskedMeanHead  # noqa: E402
from zennit_bilrp.lrp.transformers import (  # noqa: E402
    SUPPORTED_ARCHITECTURES,
    TokenEncoder,
    TransformerCanonizer,
    TransformerLRP,
    check_supported,
    token_input,
)

from helpers.transformer_reference import (  # noqa: E402
    cosine_bilrp,
    modified_forward,
    naacl_factors,
    per_unit_factors,
    tiny_model,
)

pytestmark = pytest.mark.usefixtures('single_thread')

#: LRP-0 composite with tiny stabilizers: the NAACL recipe (gradient x input of the modified forward)
EXACT = dict(epsilon=1e-12, stabilizer=1e-12)


def ids(length, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 60, (1, length), generator=generator)


def engine(encoder, head=None, method='auto', **kwargs):
    return BiLRP(encoder, composite=TransformerLRP(**{'family': 'conservative', **EXACT, **kwargs}),
                 head=head or MaskedMeanHead(), similarity='cosine', method=method)


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope='module')
def bert():
    return tiny_model('bert')


def test_token_encoder_computes_the_model(bert):
    """The wrapper (and the hand-written reference forward) compute what the Hugging Face model computes."""
    input_ids = ids(7, 1)
    encoder = TokenEncoder(bert)
    out = encoder(encoder.embed(input_ids))
    expected = bert(input_ids=input_ids).last_hidden_state
    assert torch.allclose(out[:, :-1].transpose(1, 2), expected, atol=1e-12)
    assert torch.equal(out[:, -1], torch.ones(1, 7, dtype=out.dtype))
    hidden = bert.embeddings(input_ids=input_ids)
    assert torch.allclose(modified_forward(bert, hidden, torch.ones(1, 7, dtype=torch.float64), detach=False),
                          expected, atol=1e-12)


def test_matches_the_naacl_reference(bert):
    """BiLRP with LRP-0 equals gradient x input on the forward with detached softmax, std and GELU gate (two
    sentences of different lengths, biases kept)."""
    encoder = TokenEncoder(bert)
    id_a, id_b = ids(7, 2), ids(5, 3)
    x_a, x_b = encoder.embed(id_a), encoder.embed(id_b)
    result = engine(encoder).explain(x_a, x_b)
    ones_a, ones_b = torch.ones(1, 7, dtype=torch.float64), torch.ones(1, 5, dtype=torch.float64)
    emb_a, fac_a = naacl_factors(bert, bert.embeddings(input_ids=id_a), ones_a)
    emb_b, fac_b = naacl_factors(bert, bert.embeddings(input_ids=id_b), ones_b)
    expected = cosine_bilrp(emb_a, fac_a, emb_b, fac_b)
    assert result.relevance.shape == (1, 7, 5)
    assert relative(result.factors_a.relevance, fac_a) < 1e-8
    assert relative(result.relevance, expected) < 1e-8


def test_matches_a_per_unit_loop(bert):
    """The engine's batched passes equal one Zennit Gradient call per unit (gamma rule, to leave LRP-0)."""
    encoder = TokenEncoder(bert)
    x_a, x_b = encoder.embed(ids(6, 4)), encoder.embed(ids(6, 5))
    result = engine(encoder, linear='gamma', gamma=0.25).explain(x_a, x_b)
    head = MaskedMeanHead()
    rules = dict(family='conservative', linear='gamma', gamma=0.25, **EXACT)
    emb_a, fac_a = per_unit_factors(encoder, TransformerLRP(**rules), head, x_a)
    emb_b, fac_b = per_unit_factors(encoder, TransformerLRP(**rules), head, x_b)
    assert relative(result.relevance, cosine_bilrp(emb_a, fac_a, emb_b, fac_b)) < 1e-10


@pytest.mark.parametrize('linear', ['epsilon', 'gamma'])
def test_conservation_bias_free(linear):
    """Without biases (LayerNorm shifts included) the relevance sums to the cosine similarity."""
    model = tiny_model('bert', seed=3, bias_free=True)
    encoder = TokenEncoder(model)
    result = engine(encoder, linear=linear).explain(encoder.embed(ids(8, 6)), encoder.embed(ids(4, 7)))
    y, total = result.similarity, result.relevance.sum(dim=(1, 2))
    assert torch.allclose(total, y, rtol=1e-8, atol=0)


def test_biases_absorb_the_gap(bert):
    """With biases kept, the gap y - sum R is what the biases receive: equal to the reference's gap."""
    encoder = TokenEncoder(bert)
    id_a, id_b = ids(6, 8), ids(6, 9)
    result = engine(encoder).explain(encoder.embed(id_a), encoder.embed(id_b))
    ones = torch.ones(1, 6, dtype=torch.float64)
    emb_a, fac_a = naacl_factors(bert, bert.embeddings(input_ids=id_a), ones)
    emb_b, fac_b = naacl_factors(bert, bert.embeddings(input_ids=id_b), ones)
    gap = float(result.delta[0])
    assert abs(gap) > 1e-4  # the perturbed biases matter ...
    assert gap == pytest.approx(float(result.similarity[0] - cosine_bilrp(emb_a, fac_a, emb_b, fac_b).sum()),
                                rel=1e-7)  # ... exactly as in the reference


def test_padding_gets_no_relevance_and_changes_nothing(bert):
    """Padded batches (one joint forward of both sides) give the unpadded explanations; pads get no relevance."""
    encoder = TokenEncoder(bert)
    id_a, id_b, id_c = ids(7, 10), ids(4, 11), ids(5, 12)
    alone_ab = engine(encoder).explain(encoder.embed(id_a), encoder.embed(id_b))
    alone_cb = engine(encoder).explain(encoder.embed(id_c), encoder.embed(id_b))

    def padded(token_ids, length):
        pad = length - token_ids.shape[1]
        full = torch.cat([token_ids, torch.zeros(1, pad, dtype=torch.long)], 1)
        return encoder.embed(full, torch.tensor([[1] * token_ids.shape[1] + [0] * pad]))

    left = torch.cat([encoder.embed(id_a), padded(id_c, 7)])
    right = torch.cat([padded(id_b, 7), padded(id_b, 7)])
    result = engine(encoder).explain(left, right)
    assert result.relevance.shape == (2, 7, 7)
    assert relative(result.relevance[0, :, :4], alone_ab.relevance[0]) < 1e-10
    assert relative(result.relevance[1, :5, :4], alone_cb.relevance[0]) < 1e-10
    assert float(result.relevance[:, :, 4:].abs().max()) < 1e-14
    assert float(result.relevance[1, 5:].abs().max()) < 1e-14
    assert torch.allclose(result.similarity, torch.cat([alone_ab.similarity, alone_cb.similarity]), atol=1e-12)


def test_cls_head(bert):
    """First-token pooling: the reference with CLS pooling."""
    encoder = TokenEncoder(bert)
    id_a, id_b = ids(5, 13), ids(6, 14)
    result = engine(encoder, head=ClsHead()).explain(encoder.embed(id_a), encoder.embed(id_b))
    emb_a, fac_a = naacl_factors(bert, bert.embeddings(input_ids=id_a), torch.ones(1, 5).double(), pooling='cls')
    emb_b, fac_b = naacl_factors(bert, bert.embeddings(input_ids=id_b), torch.ones(1, 6).double(), pooling='cls')
    assert relative(result.relevance, cosine_bilrp(emb_a, fac_a, emb_b, fac_b)) < 1e-8


@pytest.mark.parametrize('kind', ['roberta', 'distilbert', 'mpnet'])
def test_other_covered_architectures(kind):
    """RoBERTa, DistilBERT and MPNet: the NAACL reference, and exact conservation without biases."""
    assert kind in SUPPORTED_ARCHITECTURES
    model = tiny_model(kind, seed=5)
    encoder = TokenEncoder(model)
    id_a, id_b = ids(6, 15), ids(4, 16)
    h_a, h_b = model.embeddings(input_ids=id_a), model.embeddings(input_ids=id_b)
    result = engine(encoder).explain(token_input(h_a), token_input(h_b))
    emb_a, fac_a = naacl_factors(model, h_a, torch.ones(1, 6).double())
    emb_b, fac_b = naacl_factors(model, h_b, torch.ones(1, 4).double())
    assert relative(result.relevance, cosine_bilrp(emb_a, fac_a, emb_b, fac_b)) < 1e-8
    bias_free = TokenEncoder(tiny_model(kind, seed=5, bias_free=True))
    result = engine(bias_free).explain(bias_free.embed(id_a), bias_free.embed(id_b))
    assert torch.allclose(result.relevance.sum(dim=(1, 2)), result.similarity, rtol=1e-8, atol=0)


def test_model_is_restored(bert):
    """After explaining, the model computes exactly what it did and has no canonizer attributes left."""
    encoder = TokenEncoder(bert)
    x = encoder.embed(ids(5, 17))
    before = encoder(x)
    engine(encoder).explain(x, x)
    assert torch.equal(encoder(x), before)
    assert not any(name.startswith('canonizer') or 'canonizer_' in name for name, _ in bert.named_modules())
    assert all('forward' not in module.__dict__ for module in bert.modules())


def test_strict_refuses_uncanonized_attention(bert):
    """With LayerNorm and residuals canonized but not attention, strict mode refuses the inline attention,
    naming the module; with no canonizer at all, the LayerNorms are refused first."""
    from zennit_bilrp.lrp.transformers import LayerNormCanonizer, ResidualCanonizer

    encoder = TokenEncoder(bert)
    x = encoder.embed(ids(5, 18))
    composite = TransformerLRP(canonizers=[ResidualCanonizer(), LayerNormCanonizer()])
    with pytest.raises(TypeError, match=r"in 'encoder\.layer\.0\.attention\.self' \(BertSelfAttention\)"):
        BiLRP(encoder, composite=composite, head=MaskedMeanHead()).explain(x, x)
    with pytest.raises(TypeError, match=r"'encoder\.layer\.0\.attention\.output\.LayerNorm' \(LayerNorm\)"):
        BiLRP(encoder, composite=TransformerLRP(canonizers=[]), head=MaskedMeanHead()).explain(x, x)


def test_strict_refuses_uncanonized_layer_norm(bert):
    """A LayerNorm left un-canonized gets no rule and is refused by name."""
    from zennit_bilrp.lrp.transformers import AttentionCanonizer, ResidualCanonizer

    encoder = TokenEncoder(bert)
    x = encoder.embed(ids(5, 19))
    composite = TransformerLRP(canonizers=[AttentionCanonizer(), ResidualCanonizer()])
    with pytest.raises(TypeError, match=r"LayerNorm' \(LayerNorm\).*normalization layer without an LRP rule"):
        BiLRP(encoder, composite=composite, head=MaskedMeanHead()).explain(x, x)


def test_unsupported_architectures_are_refused():
    """ALBERT and ELECTRA (not covered) are refused, naming the first attention module."""
    config = transformers.AlbertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, embedding_size=16)
    albert = transformers.AutoModel.from_config(config).eval()
    with pytest.raises(TypeError, match=r"unsupported layer '.*attention' \(AlbertSdpaAttention|AlbertAttention"):
        TokenEncoder(albert)
    electra = transformers.AutoModel.from_config(transformers.ElectraConfig(
        vocab_size=40, hidden_size=16, embedding_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32)).eval()
    with pytest.raises(TypeError, match=r"unsupported layer 'encoder\.layer\.0\.attention.*\(Electra"):
        check_supported(electra)
    with pytest.raises(TypeError, match='Electra'):
        TransformerCanonizer().apply(electra)


def test_mask_channel_is_checked(bert):
    encoder = TokenEncoder(bert)
    x = encoder.embed(ids(4, 20)).clone()
    x[:, -1, 0] = 0.5
    with pytest.raises(ValueError, match='attention mask'):
        encoder(x)
    with pytest.raises(ValueError, match=r'expected \(N, 32 \+ 1, L\)'):
        encoder(x[:, 1:])


def test_rules_are_differentiable_in_the_seed(bert):
    """The LRP pass is linear and differentiable in the output seed (create_graph): differentiating the pooled
    relevance of a seed r w.r.t. r gives the factors (one second-order pass per token)."""
    encoder = TokenEncoder(bert)
    x = encoder.embed(ids(5, 21))
    head = MaskedMeanHead()
    composite = TransformerLRP(family='conservative', **EXACT)
    expected = engine(encoder).factors(x).relevance[0]  # (h, L)
    with composite.context(encoder):
        inp = x.detach().requires_grad_(True)
        out = encoder(inp)
        r = torch.zeros(1, 1, 32, dtype=torch.float64, requires_grad=True)
        seed = head.output_relevance(out, r)[0]
        grad, = torch.autograd.grad(out, inp, seed, create_graph=True)
        pooled = grad.sum(1)[0]
        rows = [torch.autograd.grad(pooled[p], r, retain_graph=True)[0].reshape(-1) for p in range(5)]
    assert relative(torch.stack(rows, dim=1), expected) < 1e-10


@pytest.mark.parametrize('kind', ['bert', 'roberta', 'distilbert', 'mpnet'])
def test_attnlrp_matches_the_lxt_reference(kind):
    """AttnLRP (both paths) equals gradient x input of the forward with LayerNorm std and GELU ratio detached and
    the gradient through q k^T and P v halved, the softmax's plain gradient (LXT's efficient form), written by hand
    from the weights; it differs from the conservative rules."""
    model = tiny_model(kind, seed=7)
    encoder = TokenEncoder(model)
    id_a, id_b = ids(6, 22), ids(5, 23)
    h_a, h_b = model.embeddings(input_ids=id_a), model.embeddings(input_ids=id_b)
    emb_a, fac_a = naacl_factors(model, h_a, torch.ones(1, 6).double(), family='attnlrp')
    emb_b, fac_b = naacl_factors(model, h_b, torch.ones(1, 5).double(), family='attnlrp')
    expected = cosine_bilrp(emb_a, fac_a, emb_b, fac_b)
    for method in ('batched', 'patches'):
        result = engine(encoder, family='attnlrp', method=method).explain(token_input(h_a), token_input(h_b))
        assert relative(result.relevance, expected) < 1e-8, method
    conservative = engine(encoder).explain(token_input(h_a), token_input(h_b))
    assert relative(conservative.relevance, expected) > 1e-3


def test_attnlrp_conservation_without_biases(bert):
    """Bias-free BERT: AttnLRP's total relevance plus what its softmax rules absorb (measured rule by rule) is the
    explained output; the conservative rules conserve without it."""
    from zennit_bilrp.lrp.attention import AttentionSoftmax
    from zennit_bilrp.lrp.attnlrp import SoftmaxTaylor

    absorbed = []

    class Recording(SoftmaxTaylor):
        def backward(self, module, grad_input, grad_output):
            result = super().backward(module, grad_input, grad_output)
            absorbed.append(float(grad_output[0].sum() - result[0].sum()))
            return result

    class RecordingLRP(TransformerLRP):
        def mapping(self, ctx, name, module):
            return Recording() if isinstance(module, AttentionSoftmax) else super().mapping(ctx, name, module)

    encoder = TokenEncoder(tiny_model('bert', seed=8, bias_free=True))
    x = encoder.embed(ids(7, 24))
    seed = torch.randn(1, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    engine_ = BiLRP(encoder, composite=RecordingLRP(family='attnlrp', **EXACT), head=MaskedMeanHead(), method='loop')
    embedding, relevance = engine_.propagate(x, seed)
    total = float((embedding * seed).sum())
    assert len(absorbed) == 2 and abs(sum(absorbed)) > 1e-3 * abs(total)
    assert float(relevance.sum()) + sum(absorbed) == pytest.approx(total, rel=1e-8)
    embedding, relevance = BiLRP(encoder, composite=TransformerLRP(family='conservative', **EXACT),
                                 head=MaskedMeanHead()).propagate(x, seed)
    assert float(relevance.sum()) == pytest.approx(float((embedding * seed).sum()), rel=1e-8)


def test_attnlrp_padding_gets_no_relevance(bert):
    """AttnLRP on a padded batch: the padded explanation equals the unpadded one, pads get none."""
    encoder = TokenEncoder(bert)
    id_a, id_b = ids(6, 25), ids(4, 26)
    alone = engine(encoder, family='attnlrp').explain(encoder.embed(id_a), encoder.embed(id_b))
    padded_b = encoder.embed(torch.cat([id_b, torch.zeros(1, 2, dtype=torch.long)], 1),
                             torch.tensor([[1, 1, 1, 1, 0, 0]]))
    result = engine(encoder, family='attnlrp').explain(encoder.embed(id_a), padded_b)
    assert relative(result.relevance[0, :, :4], alone.relevance[0]) < 1e-10
    assert float(result.relevance[0, :, 4:].abs().max()) < 1e-14


def test_family_is_checked():
    with pytest.raises(ValueError, match="unknown rule family 'lxt'"):
        TransformerLRP(family='lxt')
    assert repr(TransformerLRP(family='attnlrp')).startswith("TransformerLRP(family='attnlrp'")
