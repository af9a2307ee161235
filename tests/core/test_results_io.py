"""Saving and loading BiLRPResult and Factors (one NPZ file, no pickle), moving results between dtypes/devices."""
import json

import numpy as np
import pytest
import torch
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP
from zennit_bilrp.core.results import BiLRPResult, Factors, describe_run, pairwise_relevance

pytestmark = pytest.mark.usefixtures('single_thread')


def encoder(seed: int, dtype) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 5, 3, padding=1)).to(dtype).eval()


def two_tower(dtype):
    """A two-tower model whose towers take different image sizes, pooled to different grids."""
    bilrp = BiLRP(encoder(0, dtype), composite=EpsilonPlus(), model_b=encoder(1, dtype), head='avg',
                  similarity='cosine')
    gen = torch.Generator().manual_seed(2)
    x_a = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64).to(dtype)
    x_b = torch.rand(2, 3, 12, 12, generator=gen, dtype=torch.float64).to(dtype)
    return bilrp, x_a, x_b


def assert_same_result(loaded: BiLRPResult, result: BiLRPResult) -> None:
    for name in ('relevance', 'similarity', 'marginal_a', 'marginal_b'):
        mine, theirs = getattr(loaded, name), getattr(result, name)
        if theirs is None:
            assert mine is None, name
            continue
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, name
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    for side in 'ab':
        mine, theirs = getattr(loaded, f'factors_{side}'), getattr(result, f'factors_{side}')
        assert mine.grid == theirs.grid
        torch.testing.assert_close(mine.relevance, theirs.relevance, rtol=0, atol=0)
        torch.testing.assert_close(mine.embedding, theirs.embedding, rtol=0, atol=0)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('marginals', [True, False])
def test_result_round_trip_two_towers(tmp_path, dtype, marginals):
    bilrp, x_a, x_b = two_tower(dtype)
    result = bilrp.explain(x_a, x_b, pooling=4, pooling_b=3, marginals=marginals)
    assert result.grid_a.grid == (2, 2) and result.grid_b.grid == (4, 4)
    result.extras.update(directions=torch.arange(6, dtype=dtype).reshape(2, 3), feature_shape=(5, 2, 2),
                         layer='1')
    path = result.save(tmp_path / 'sub' / 'pair.npz', metadata=describe_run(bilrp, model_name='two conv towers'))
    loaded = BiLRPResult.load(path)
    assert_same_result(loaded, result)
    assert loaded.extras['layer'] == '1' and loaded.extras['feature_shape'] == [5, 2, 2]
    torch.testing.assert_close(loaded.extras['directions'], result.extras['directions'], rtol=0, atol=0)
    meta = loaded.metadata
    assert meta['model_name'] == 'two conv towers' and meta['model'] == 'Sequential'
    assert meta['composite'] == 'EpsilonPlus' and meta['composite_b'] == 'EpsilonPlus'
    assert meta['similarity'] == repr(bilrp.similarity)
    assert meta['pooling'] == {'a': {'patch': [4, 4], 'channels_summed': True},
                               'b': {'patch': [3, 3], 'channels_summed': True}}
    assert set(meta['versions']) == {'zennit_bilrp', 'zennit', 'torch', 'numpy'}
    # the loaded factors still reproduce the relevance, and the loaded result works like a fresh one
    again = pairwise_relevance(loaded.factors_a, loaded.factors_b, 'cosine')
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(again, result.relevance, rtol=tol, atol=tol)
    assert torch.equal(loaded.top_pairs(3).index_a, result.top_pairs(3).index_a)
    torch.testing.assert_close(loaded.delta, result.delta, rtol=0, atol=0)


def test_file_is_plain_npz_without_pickle(tmp_path):
    bilrp, x_a, x_b = two_tower(torch.float64)
    path = bilrp.explain(x_a, x_b, pooling=4, pooling_b=3).save(tmp_path / 'pair.npz')
    with np.load(path, allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)
        meta = json.loads(str(npz['__metadata__']))
        assert npz['relevance'].shape == (2, 4, 16) and npz['marginal_b'].shape == (2, 3, 12, 12)
    assert meta['format'] == 'BiLRPResult' and meta['grids']['b']['grid'] == [4, 4]


def test_factors_round_trip_and_units(tmp_path):
    bilrp, x_a, _ = two_tower(torch.float32)
    factors = bilrp.factors(x_a, pooling=2)
    loaded = Factors.load(factors.save(tmp_path / 'f.npz', metadata={'gallery': 'random'}))
    assert loaded.grid == factors.grid and loaded.units is None and loaded.metadata['gallery'] == 'random'
    assert loaded.relevance.dtype == torch.float32
    torch.testing.assert_close(loaded.relevance, factors.relevance, rtol=0, atol=0)
    subset = bilrp.factors(x_a, pooling=2, units=torch.tensor([1, 3]))
    loaded = Factors.load(subset.save(tmp_path / 'u.npz'))
    assert torch.equal(loaded.units, torch.tensor([1, 3]))
    half = Factors(factors.embedding.bfloat16(), factors.relevance.bfloat16(), factors.grid)
    loaded = Factors.load(half.save(tmp_path / 'h.npz'))
    assert loaded.relevance.dtype == torch.bfloat16
    torch.testing.assert_close(loaded.relevance, half.relevance, rtol=0, atol=0)


def test_to_and_cpu_copy_every_tensor():
    bilrp, x_a, x_b = two_tower(torch.float64)
    result = bilrp.explain(x_a, x_b, pooling=4, pooling_b=3)
    result.extras['weights'] = torch.ones(2, dtype=torch.float64)
    single = result.to(torch.float32)
    for tensor in (single.relevance, single.similarity, single.marginal_a, single.marginal_b,
                   single.factors_a.relevance, single.factors_b.embedding, single.extras['weights']):
        assert tensor.dtype == torch.float32
    assert result.relevance.dtype == torch.float64  # a copy: the original is unchanged
    torch.testing.assert_close(single.relevance.double(), result.relevance, rtol=1e-6, atol=1e-7)
    on_cpu = result.cpu()
    assert on_cpu.relevance.device.type == 'cpu' and on_cpu.factors_a.grid == result.factors_a.grid
    assert result.factors_a.cpu().relevance.device.type == 'cpu'


def test_bad_files_and_values(tmp_path):
    bilrp, x_a, x_b = two_tower(torch.float64)
    result = bilrp.explain(x_a, x_b, pooling=4, pooling_b=3, marginals=False)
    with pytest.raises(ValueError, match='.npz'):
        result.save(tmp_path / 'pair.pt')
    factors_path = result.factors_a.save(tmp_path / 'f.npz')
    with pytest.raises(ValueError, match='not a BiLRPResult'):
        BiLRPResult.load(factors_path)
    np.savez(tmp_path / 'other.npz', relevance=np.zeros(3))
    with pytest.raises(ValueError, match='not a zennit_bilrp result file'):
        BiLRPResult.load(tmp_path / 'other.npz')
    with pytest.raises(FileNotFoundError, match='no such result file'):
        BiLRPResult.load(tmp_path / 'missing.npz')
    result.extras['model'] = bilrp.model
    with pytest.raises(TypeError, match='neither a tensor nor JSON'):
        result.save(tmp_path / 'pair.npz')


def test_indexing_selects_pairs_with_their_factors_and_marginals():
    bilrp, x_a, x_b = two_tower(torch.float64)
    result = bilrp.explain(x_a, x_b, pooling=4, pooling_b=3)
    assert len(result) == 2
    second = result[1]
    assert len(second) == 1 and second.grid_b == result.grid_b
    torch.testing.assert_close(second.relevance[0], result.relevance[1], rtol=0, atol=0)
    torch.testing.assert_close(second.marginal_b[0], result.marginal_b[1], rtol=0, atol=0)
    torch.testing.assert_close(second.factors_a.relevance[0], result.factors_a.relevance[1], rtol=0, atol=0)
    torch.testing.assert_close(result[-1].similarity, result.similarity[1:], rtol=0, atol=0)
    with pytest.raises(IndexError, match='out of range'):
        result[2]
