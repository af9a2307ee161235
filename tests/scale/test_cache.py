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
        cache = FactorCache.build(bilrp, gallery, pooling=4, batch_size=2, progress=False, lazy=False)
        relevance, sim = cache.query_dense(bilrp, queries)
        assert relevance.shape == (2, 5, 4, 4) and sim.shape == (2, 5)
        for q in range(2):
            direct = bilrp.explain(queries[q:q + 1].expand(5, -1, -1, -1), gallery, pooling=4, marginals=False)
            torch.testing.assert_close(relevance[q], direct.relevance, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(sim[q], direct.similarity, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cache.similarities(bilrp, queries), sim, rtol=1e-10, atol=1e-12)
        # pairs inside the gallery need no backward pass at all
        direct = bilrp.explain(gallery[1:2], gallery[3:4], pooling=4, marginals=False)
        torch.testing.assert_close(cache.pair(bilrp, 1, '3'), direct.relevance[0], rtol=1e-10, atol=1e-12)
        sub, _ = cache.query_dense(bilrp, queries[:1], indices=['4', 0])
        torch.testing.assert_close(sub[0], relevance[0, [4, 0]])


@pytest.mark.parametrize('suffix', ['.npz', '.safetensors'])
def test_save_load_round_trip(tmp_path, data, suffix):
    gallery, queries = data
    with make_bilrp() as bilrp:
        cache = FactorCache.build(bilrp, gallery, pooling=4, keys=[f'img{i}' for i in range(5)], progress=False,
                                  lazy=False)
        path = cache.save(tmp_path / f'gallery{suffix}')
        assert path.suffix == suffix
        loaded = FactorCache.load(path)
        assert loaded.keys == cache.keys and loaded.grid == cache.grid and loaded.factors.units is None
        assert torch.equal(loaded.factors.relevance, cache.factors.relevance)
        assert torch.equal(loaded.factors.embedding, cache.factors.embedding)
        a, _ = cache.query_dense(bilrp, queries)
        b, _ = loaded.query_dense(bilrp, queries)
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
        relevance, _ = loaded.query_dense(bilrp, queries[:1])
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


@pytest.mark.parametrize('marginals', [False, True])
def test_explain_loader(tmp_path, data, marginals):
    gallery, _ = data
    dataset = torch.utils.data.TensorDataset(gallery[:4], gallery[1:5])
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    with make_bilrp() as bilrp:
        results = explain_loader(bilrp, loader, pooling=4, out=tmp_path / 'pairs.npz', progress=False,
                                 marginals=marginals)
        direct = bilrp.explain(gallery[:4], gallery[1:5], pooling=4, marginals=marginals)
    np.testing.assert_allclose(results.relevance, direct.relevance.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(results.delta, direct.delta.numpy(), atol=1e-12)
    assert results.grid_a == direct.grid_a and results.grid_b == direct.grid_b
    assert results.relevance_grid().shape == (4, 2, 2, 2, 2)
    loaded = PairResults.load(tmp_path / 'pairs.npz')
    np.testing.assert_array_equal(loaded.similarity, results.similarity)
    assert loaded.grid_a == direct.grid_a and loaded.grid_b == direct.grid_b
    if marginals:
        assert loaded.marginal_a.shape == (4, 3, 8, 8)
        np.testing.assert_allclose(loaded.marginal_b, direct.marginal_b.numpy(), rtol=1e-10, atol=1e-12)
    else:
        assert loaded.marginal_a is None and results.marginal_b is None


def test_retrieval_ranks_by_embeddings_and_explains_only_top_k(data):
    gallery, queries = data
    keys = [f'img{i}' for i in range(5)]
    with make_bilrp() as bilrp:
        cache = FactorCache.build(bilrp, gallery, pooling=4, batch_size=2, keys=keys, progress=False)
        assert cache.n_factors == 0 and len(cache) == 5
        with pytest.raises(ValueError, match='have factors'):
            _ = cache.factors
        scores = cache.similarities(bilrp, queries)
        matches = cache.query(bilrp, queries, k=2)
        assert matches.indices.shape == (2, 2) and len(matches) == 2
        expected = scores.topk(2, dim=1)
        assert torch.equal(matches.indices, expected.indices)
        torch.testing.assert_close(matches.similarities, expected.values, rtol=1e-12, atol=1e-12)
        assert matches.keys == [[keys[i] for i in row] for row in expected.indices.tolist()]
        # only the matched gallery inputs got factors
        assert cache.n_factors == len(set(expected.indices.reshape(-1).tolist()))
        for q in range(2):
            chosen = matches.indices[q]
            direct = bilrp.explain(queries[q:q + 1].expand(2, -1, -1, -1), gallery[chosen], pooling=4,
                                   marginals=False)
            torch.testing.assert_close(matches[q].relevance, direct.relevance, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(matches[q].similarity, matches.similarities[q], rtol=1e-10, atol=1e-12)
            assert matches[q].grid_a == direct.grid_a and matches[q].grid_b == direct.grid_b
        # k larger than the gallery is clamped; candidates restrict the ranking
        assert cache.query(bilrp, queries[:1], k=9).indices.shape == (1, 5)
        sub = cache.query(bilrp, queries[:1], k=1, indices=['img4', 'img0'])
        assert sub.indices[0, 0].item() in (0, 4)
        with pytest.raises(ValueError, match='k must be positive'):
            cache.query(bilrp, queries, k=0)


def test_retrieval_marginals_equal_direct(data):
    gallery, queries = data
    with make_bilrp() as bilrp:
        cache = FactorCache.build(bilrp, gallery, pooling=4, progress=False)
        matches = cache.query(bilrp, queries[1:], k=3, marginals=True)
        chosen = matches.indices[0]
        direct = bilrp.explain(queries[1:].expand(3, -1, -1, -1), gallery[chosen], pooling=4, marginals=True)
    torch.testing.assert_close(matches[0].marginal_a, direct.marginal_a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(matches[0].marginal_b, direct.marginal_b, rtol=1e-10, atol=1e-12)


def test_lazy_cache_save_load_and_dataset_inputs(tmp_path, data):
    gallery, queries = data
    dataset = torch.utils.data.TensorDataset(gallery, torch.arange(5))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    with make_bilrp() as bilrp:
        cache = FactorCache.build(bilrp, loader, pooling=4, progress=False)
        first = cache.query(bilrp, queries[:1], k=2)
        loaded = FactorCache.load(cache.save(tmp_path / 'lazy.npz'))
        assert loaded.n_factors == 2 and loaded.keys == cache.keys
        torch.testing.assert_close(loaded.embedding, cache.embedding, rtol=0, atol=0)
        again = loaded.query(bilrp, queries[:1], k=2)  # the two matches have factors already
        torch.testing.assert_close(again[0].relevance, first[0].relevance, rtol=0, atol=0)
        with pytest.raises(ValueError, match='attach'):
            loaded.query(bilrp, queries[:1], k=4)
        loaded.attach(gallery)
        assert loaded.query(bilrp, queries[:1], k=4).indices.shape == (1, 4) and loaded.n_factors == 4
        with pytest.raises(TypeError, match='random access'):
            FactorCache.build(bilrp, (b for b in [gallery[:2]]), pooling=4, progress=False)
        with pytest.raises(ValueError, match='inputs for 5'):
            loaded.attach(gallery[:3])


def test_caches_saved_by_the_previous_layout_still_load(tmp_path, data):
    """Files of the former layout (all factors, no embeddings-only rows) load as fully computed caches."""
    gallery, queries = data
    with make_bilrp() as bilrp:
        factors = bilrp.factors(gallery[:3], 4)
        grid = factors.grid
        np.savez(tmp_path / 'old.npz', keys=np.asarray(['a', 'b', 'c']), embedding=factors.embedding.numpy(),
                 relevance=factors.relevance.numpy(), units=np.zeros(0, dtype=np.int64), has_units=np.asarray(False),
                 input_shape=np.asarray(grid.input_shape), grid=np.asarray(grid.grid), patch=np.asarray(grid.patch),
                 channels_summed=np.asarray(grid.channels_summed))
        cache = FactorCache.load(tmp_path / 'old.npz')
        assert cache.n_factors == 3 and cache.keys == ['a', 'b', 'c'] and cache.grid == grid
        relevance, _ = cache.query_dense(bilrp, queries[:1])
        direct = bilrp.explain(queries[:1].expand(3, -1, -1, -1), gallery[:3], pooling=4, marginals=False)
        torch.testing.assert_close(relevance[0], direct.relevance, rtol=1e-10, atol=1e-12)
