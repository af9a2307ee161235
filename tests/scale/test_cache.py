"""FactorCache and explain_loader against direct engine results."""
import numpy as np
import pytest
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP
from zennit_bilrp.models.small_resnet import SmallResNet
from zennit_bilrp.scale.cache import FactorCache, PairResults, explain_loader

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures('single_thread')


def make_bilrp(similarity='cosine'):
    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8), embedding_dim=6).to(DTYPE).eval()
    return BiLRP(model, composite=EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]), similarity=similarity)


@pytest.fixture(scope='module')
def data():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(5, 3, 8, 8, generator=gen, dtype=DTYPE), torch.rand(2, 3, 8, 8, generator=gen, dtype=DTYPE)


@pytest.mark.parametrize('similarity', ['dot', 'cosine'])
def test_query_equals_direct_explain(data, similarity):
    gallery, queries = data
    with make_bilrp(similarity) as bilrp:
        cache = FactorCache.build(bilrp, gallery, pooling=4, batch_size=2, progress=False)
        relevance, sim = cache.query(bilrp, queries)
        assert relevance.shape == (2, 5, 4, 4) and sim.shape == (2, 5)
        for q in range(2):
            direct = bilrp.explain(queries[q:q + 1].expand(5, -1, -1, -1), gallery, pooling=4, marginals=False)
            torch.testing.assert_close(relevance[q], direct.relevance, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(sim[q], direct.similarity, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cache.similarities(bilrp, queries), sim, rtol=1e-10, atol=1e-12)
        # pairs inside the gallery need no backward pass at all
        direct = bilrp.explain(gallery[1:2], gallery[3:4], pooling=4, marginals=False)
        torch.testing.assert_close(cache.pair(bilrp, 1, '3'), direct.relevance[0], rtol=1e-10, atol=1e-12)
        sub, _ = cache.query(bilrp, queries[:1], indices=['4', 0])
        torch.testing.assert_close(sub[0], relevance[0, [4, 0]])


@pytest.mark.parametrize('suffix', ['.npz', '.safetensors'])
def test_save_load_round_trip(tmp_path, data, suffix):
    gallery, queries = data
    with make_bilrp() as bilrp:
        cache = FactorCache.build(bilrp, gallery, pooling=4, keys=[f'img{i}' for i in range(5)], progress=False)
        path = cache.save(tmp_path / f'gallery{suffix}')
        assert path.suffix == suffix
        loaded = FactorCache.load(path)
        assert loaded.keys == cache.keys and loaded.grid == cache.grid and loaded.factors.units is None
        assert torch.equal(loaded.factors.relevance, cache.factors.relevance)
        assert torch.equal(loaded.factors.embedding, cache.factors.embedding)
        a, _ = cache.query(bilrp, queries)
        b, _ = loaded.query(bilrp, queries)
        assert torch.equal(a, b)
        assert loaded.index('img3') == 3
        with pytest.raises(KeyError):
            loaded.index('nope')


def test_units_subset_and_errors(tmp_path, data):
    gallery, queries = data
    with make_bilrp('dot') as bilrp:
        cache = FactorCache()
        cache.add(bilrp, gallery[:3], pooling=4, units=torch.tensor([0, 2, 5]))
        loaded = FactorCache.load(cache.save(tmp_path / 'c.npz'))
        assert torch.equal(loaded.factors.units, torch.tensor([0, 2, 5]))
        relevance, _ = loaded.query(bilrp, queries[:1])
        fa = bilrp.factors(queries[:1], 4)
        fb = bilrp.factors(gallery[:3], 4)
        expected = torch.einsum('mp,nmq->npq', fa.relevance[0, [0, 2, 5]], fb.relevance[:, [0, 2, 5]])
        torch.testing.assert_close(relevance[0], expected)
        with pytest.raises(ValueError, match='already cached'):
            cache.add(bilrp, gallery[:1], pooling=4, keys=['0'], units=torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match='empty'):
        FactorCache().save(tmp_path / 'x.npz')
    np.savez(tmp_path / 'bad.npz', foo=np.zeros(2))
    with pytest.raises(ValueError, match='not a FactorCache'):
        FactorCache.load(tmp_path / 'bad.npz')


def test_explain_loader(tmp_path, data):
    gallery, _ = data
    dataset = torch.utils.data.TensorDataset(gallery[:4], gallery[1:5])
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    with make_bilrp() as bilrp:
        results = explain_loader(bilrp, loader, pooling=4, out=tmp_path / 'pairs.npz', progress=False)
        direct = bilrp.explain(gallery[:4], gallery[1:5], pooling=4, marginals=False)
    np.testing.assert_allclose(results.relevance, direct.relevance.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(results.delta, direct.delta.numpy(), atol=1e-12)
    loaded = PairResults.load(tmp_path / 'pairs.npz')
    np.testing.assert_array_equal(loaded.similarity, results.similarity)
