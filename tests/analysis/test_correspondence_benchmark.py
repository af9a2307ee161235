"""The correspondence runner: any named methods, scores per (method, pair, patch), coarser patches summed from the
finest (equal to running at the coarser size), factors' singular shares, the controls, the cache and the summary."""
import math

import pytest
import torch
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP
from zennit_bilrp.analysis.correspondence import transformed_pair
from zennit_bilrp.analysis.correspondence_benchmark import bilrp_method, coarsen, evaluate, summarize
from zennit_bilrp.analysis.pairwise_structure import top_singular_share
from zennit_bilrp.core.pooling import Pooling

from helpers.photos import smooth_photo

SIZE = (32, 48)


def tiny_encoder():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).double().eval()


def pairs():
    return [transformed_pair(smooth_photo(seed=1), SIZE, mirror=True, name='a/mirror', kind='mirror'),
            transformed_pair(smooth_photo(seed=2), SIZE, shift=(0.0, 1 / 3), name='b/shift', kind='shift')]


def composite(model):
    return EpsilonPlus()


@pytest.mark.usefixtures('single_thread')
def test_coarser_patches_are_sums_of_the_finest():
    model = tiny_encoder()
    pair = pairs()[0]
    x_a, x_b = pair.x_a.double(), pair.x_b.double()
    with BiLRP(model, composite=EpsilonPlus(), similarity='cosine') as bilrp:
        fine, coarse = bilrp(x_a, x_b, pooling=8, marginals=False), bilrp(x_a, x_b, pooling=16, marginals=False)
    grid = Pooling(8).resolve(x_a.shape[1:])
    summed = coarsen(coarsen(fine.relevance[0], grid, 2, 0), grid, 2, 1)
    assert torch.allclose(summed, coarse.relevance[0], rtol=1e-10, atol=1e-12)
    factors = coarsen(fine.factors_a.relevance[0], grid, 2, 1)
    assert torch.allclose(factors, coarse.factors_a.relevance[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match='does not divide'):
        coarsen(fine.relevance[0], grid, 3, 0)


@pytest.mark.usefixtures('single_thread')
def test_evaluate_rows_controls_cache_and_summary(tmp_path):
    model = tiny_encoder()
    calls = []

    def outer(x_a, x_b, patch):  # a rank-one method: its own marginals' outer product is itself
        calls.append(patch)
        a = Pooling(patch).resolve(x_a.shape[1:])
        m_a = Pooling.apply(x_a.abs(), a, 1)[0]
        return torch.outer(m_a, Pooling.apply(x_b.abs(), a, 1)[0])

    def forward(a, b):
        return torch.nn.functional.cosine_similarity(model(a.double()), model(b.double()), dim=1)

    methods = {'bilrp': bilrp_method(model, composite, 'cosine'), 'outer': outer}
    rows = evaluate(methods, pairs(), patch=(16, 8), k=4, forward=forward, preprocess=lambda x: x.double(),
                    cache=tmp_path, subsets={'outer': [1]}, insertion={'budget': 6, 'points': 3}, progress=False)
    keys = [(r['method'], r['pair'], r['patch']) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 2 * 3 + 2  # bilrp, oracle, random on both pairs; outer on one
    assert calls == [8]  # each method runs once per pair, at the finest patch size
    by = {(r['method'], r['pair'], r['patch']): r for r in rows}
    for patch, count in ((16, 6), (8, 24)):
        oracle = by['oracle', 'a/mirror', patch]
        assert oracle['pointing'] == 1.0 and oracle['chance'] == pytest.approx(1 / count)
        bilrp = by['bilrp', 'a/mirror', patch]
        assert 0 <= bilrp['pointing'] <= 1 and bilrp['seconds'] > 0 and not math.isnan(bilrp['insertion_auc'])
        assert bilrp['conservation'] == pytest.approx(1.0, abs=1e-3)  # bias-free ReLU network, z+ (stabilised)
        assert 1 / 6 <= bilrp['singular_share'] <= 1 and len(bilrp['insertion_curve']) == 4
        assert bilrp['pointing_gain'] == pytest.approx(bilrp['pointing'] - bilrp['pointing_outer'])
    assert by['outer', 'b/shift', 8]['pointing_gain'] == pytest.approx(0.0)
    # the singular share of the 16-px row is that of the summed 8-px factors, i.e. of the 16-px factors
    pair = pairs()[0]
    with BiLRP(model, composite=EpsilonPlus(), similarity='cosine') as bilrp:
        result = bilrp(pair.x_a.double(), pair.x_b.double(), pooling=16, marginals=False)
    share = 0.5 * float(top_singular_share(result.factors_a) + top_singular_share(result.factors_b))
    assert by['bilrp', 'a/mirror', 16]['singular_share'] == pytest.approx(share, rel=1e-9)
    # a second run reads the cache: methods are not called again
    def broken(x_a, x_b, patch):
        raise AssertionError('the cache should have answered')
    again = evaluate({'bilrp': broken, 'outer': broken}, pairs(), patch=(16, 8), k=4, cache=tmp_path,
                     subsets={'outer': [1]}, progress=False)
    for row in again:
        if row['method'] == 'bilrp':
            assert row['pointing'] == by[row['method'], row['pair'], row['patch']]['pointing']
    summary = summarize(rows)
    assert [(s['method'], s['patch']) for s in summary][:4] == [('bilrp', 16), ('oracle', 16), ('random', 16),
                                                               ('outer', 16)]
    first = summary[0]
    values = [by['bilrp', name, 16]['pointing'] for name in ('a/mirror', 'b/shift')]
    assert first['pairs'] == 2 and first['pointing'] == pytest.approx(sum(values) / 2)
    assert first['pointing_se'] == pytest.approx(abs(values[0] - values[1]) / 2)


def test_evaluate_refuses_bad_settings():
    with pytest.raises(ValueError, match='multiple of the smallest'):
        evaluate({}, pairs(), patch=(16, 12), progress=False)
    with pytest.raises(ValueError, match='clash'):
        evaluate({'oracle': lambda a, b, p: None}, pairs(), patch=8, progress=False)
    with pytest.raises(ValueError, match='does not divide'):
        evaluate({}, pairs(), patch=(32,), progress=False)
