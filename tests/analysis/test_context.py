"""Object/context share arithmetic on hand-made masks and relevances, and on engine results."""
import math

import pytest
import torch
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP, Pooling, canonizers_for
from zennit_bilrp.analysis.context import (
    context_analysis,
    marginal_context_share,
    pair_shares,
    patch_fraction,
    relevance_mass_accuracy,
)
from zennit_bilrp.models.small_resnet import SmallResNet

DTYPE = torch.float64


def loop_blocks(rel, o_a, o_b):
    """Reference: explicit loops over patch pairs."""
    blocks = {'oo': 0.0, 'oc': 0.0, 'co': 0.0, 'cc': 0.0}
    for i in range(rel.shape[0]):
        for j in range(rel.shape[1]):
            r = float(rel[i, j])
            blocks['oo'] += o_a[i] * o_b[j] * r
            blocks['oc'] += o_a[i] * (1 - o_b[j]) * r
            blocks['co'] += (1 - o_a[i]) * o_b[j] * r
            blocks['cc'] += (1 - o_a[i]) * (1 - o_b[j]) * r
    return blocks


def test_shares_on_hand_made_patches():
    # 3 patches per side; object = patch 0 in a, patches 1 and 2 in b
    rel = torch.tensor([[[4.0, 1.0, 0.0],
                         [-2.0, 3.0, 1.0],
                         [0.0, 0.0, 3.0]]], dtype=DTYPE)
    mask_a = torch.tensor([[True, False, False]])
    mask_b = torch.tensor([[False, True, True]])
    signed = pair_shares(rel, mask_a, mask_b, 'signed')
    # total 10: oo = 1 + 0, oc = 4, co = 3 + 1 + 0 + 3, cc = -2 + 0
    assert float(signed.total) == 10.0
    assert float(signed.object_object) == pytest.approx(0.1)
    assert float(signed.object_context) == pytest.approx(0.4)
    assert float(signed.context_object) == pytest.approx(0.7)
    assert float(signed.context_context) == pytest.approx(-0.2)
    assert float(signed.context) == pytest.approx(0.9)
    absolute = pair_shares(rel, mask_a, mask_b, 'abs')  # |R| sums to 14, cc = 2
    assert float(absolute.context_context) == pytest.approx(2 / 14)
    assert float(absolute.object_context) == pytest.approx(4 / 14)
    positive = pair_shares(rel, mask_a, mask_b, 'positive')  # R+ sums to 12, cc = 0
    assert float(positive.context_context) == 0.0
    assert float(positive.context_object) == pytest.approx(7 / 12)
    for shares in (signed, absolute, positive):
        total = shares.object_object + shares.object_context + shares.context_object + shares.context_context
        assert float(total) == pytest.approx(1.0)


def test_shares_match_loops_with_fractional_masks():
    gen = torch.Generator().manual_seed(0)
    rel = torch.randn(3, 5, 4, dtype=DTYPE, generator=gen)
    o_a, o_b = torch.rand(3, 5, dtype=DTYPE, generator=gen), torch.rand(3, 4, dtype=DTYPE, generator=gen)
    shares = pair_shares(rel, o_a, o_b, 'signed')
    for b in range(3):
        ref = loop_blocks(rel[b], o_a[b].tolist(), o_b[b].tolist())
        total = float(rel[b].sum())
        assert float(shares.object_object[b]) == pytest.approx(ref['oo'] / total)
        assert float(shares.object_context[b]) == pytest.approx(ref['oc'] / total)
        assert float(shares.context_object[b]) == pytest.approx(ref['co'] / total)
        assert float(shares.context_context[b]) == pytest.approx(ref['cc'] / total)


def test_pixel_masks_on_patch_grid_equal_uniform_pixel_relevance():
    """Patch fractions = splitting each patch's relevance uniformly over its pixels and using the pixel masks."""
    gen = torch.Generator().manual_seed(1)
    grid = Pooling(patch=2).resolve((3, 4, 4))  # 2 x 2 patches of 2 x 2 pixels
    rel = torch.randn(2, 4, 4, dtype=DTYPE, generator=gen)
    mask_a = torch.rand(2, 4, 4, generator=gen) > 0.5
    mask_b = torch.rand(2, 4, 4, generator=gen) > 0.5
    fraction = patch_fraction(mask_a, grid)
    assert fraction.shape == (2, 4)
    assert float(fraction[0, 0]) == float(mask_a[0, :2, :2].double().mean())
    assert float(fraction[1, 3]) == float(mask_a[1, 2:, 2:].double().mean())
    # pixel-level relevance: each patch pair's value spread uniformly over its 4 x 4 pixel pairs
    patch_of = torch.tensor([[(r // 2) * 2 + c // 2 for c in range(4)] for r in range(4)]).reshape(-1)
    pixel_rel = rel[:, patch_of][:, :, patch_of] / 16
    for kind in ('signed', 'abs', 'positive'):
        coarse = pair_shares(rel, mask_a, mask_b, kind, grid, grid)
        fine = pair_shares(pixel_rel, mask_a.reshape(2, -1), mask_b.reshape(2, -1), kind)
        for name in ('object_object', 'object_context', 'context_object', 'context_context', 'total'):
            torch.testing.assert_close(getattr(coarse, name), getattr(fine, name))


def test_relevance_mass_accuracy_by_hand():
    heat = torch.zeros(1, 2, 2, 2, dtype=DTYPE)  # (B, C, H, W): channels are summed first
    heat[0, 0] = torch.tensor([[1.0, 2.0], [-5.0, 3.0]])
    heat[0, 1] = torch.tensor([[1.0, 0.0], [1.0, -1.0]])
    # channel sum: [[2, 2], [-4, 2]]; positive mass 6
    mask = torch.tensor([[[True, False], [True, False]]])
    assert float(relevance_mass_accuracy(heat, mask)) == pytest.approx(2 / 6)
    assert float(marginal_context_share(heat, mask)) == pytest.approx(4 / 6)
    assert math.isnan(float(relevance_mass_accuracy(-heat.abs(), mask)))  # no positive relevance


def test_errors():
    rel = torch.rand(1, 4, 4)
    with pytest.raises(ValueError, match='kind'):
        pair_shares(rel, torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool), 'other')
    with pytest.raises(ValueError, match='patches'):
        pair_shares(rel, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        patch_fraction(torch.full((1, 4), 2.0))
    grid = Pooling(patch=2).resolve((3, 4, 4))
    with pytest.raises(ValueError, match='fits neither'):
        patch_fraction(torch.ones(1, 5, 5, dtype=torch.bool), grid)
    with pytest.raises(ValueError, match='does not fit the mask'):
        relevance_mass_accuracy(torch.rand(1, 3, 4, 4), torch.ones(1, 5, 5, dtype=torch.bool))


@pytest.mark.parametrize('pooling', [None, 4])
def test_context_analysis_on_engine_result(pooling):
    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8)).to(DTYPE).eval()
    x_a, x_b = torch.rand(2, 3, 8, 8, dtype=DTYPE), torch.rand(2, 3, 8, 8, dtype=DTYPE)
    mask_a = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask_a[:, 2:6, 1:5] = True
    mask_b = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask_b[:, 4:, 4:] = True
    composite = EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model))
    with BiLRP(model, composite=composite) as bilrp:
        result = bilrp.explain(x_a, x_b, pooling=pooling)
    out = context_analysis(result, mask_a, mask_b)
    rel = result.relevance
    o_a = patch_fraction(mask_a, result.grid_a)
    o_b = patch_fraction(mask_b, result.grid_b)
    for b in range(2):
        ref = loop_blocks(rel[b], o_a[b].tolist(), o_b[b].tolist())
        assert float(out['object_object_signed'][b]) == pytest.approx(ref['oo'] / float(rel[b].sum()))
    torch.testing.assert_close(out['total_signed'], rel.sum(dim=(1, 2)))
    torch.testing.assert_close(out['similarity'], result.similarity)
    expected = marginal_context_share(result.marginal_a, mask_a)
    torch.testing.assert_close(out['marginal_context_a'], expected)
    for key in ('context_abs', 'context_positive', 'marginal_context_b'):
        assert out[key].shape == (2,) and bool(((out[key] >= 0) & (out[key] <= 1)).all())
