"""Pairwise structure: the top singular share of factors and the rank-one matrix of a relevance's own marginals."""
import pytest
import torch

from zennit_bilrp.analysis.pairwise_structure import marginal_outer_product, top_singular_share
from zennit_bilrp.core.pooling import Pooling
from zennit_bilrp.core.results import Factors

DTYPE = torch.float64


def test_top_singular_share_of_known_spectra():
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(16, 1, generator=gen, dtype=DTYPE), torch.randn(1, 6, generator=gen, dtype=DTYPE)
    assert float(top_singular_share(u @ v)) == pytest.approx(1.0)            # rank one
    assert float(top_singular_share(torch.eye(4, dtype=DTYPE))) == pytest.approx(0.25)  # spread evenly
    # singular values 3, 2, 1 (orthonormal factors): 9 / 14
    q1, _ = torch.linalg.qr(torch.randn(8, 3, generator=gen, dtype=DTYPE))
    q2, _ = torch.linalg.qr(torch.randn(5, 3, generator=gen, dtype=DTYPE))
    matrix = q1 @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=DTYPE)) @ q2.T
    assert float(top_singular_share(matrix)) == pytest.approx(9 / 14)
    grid = Pooling(2).resolve((1, 2, 6))
    factors = Factors(torch.ones(2, 8, dtype=DTYPE), torch.stack([matrix, u[:8] @ v[:, :5]]), grid)
    assert torch.allclose(top_singular_share(factors), torch.tensor([9 / 14, 1.0], dtype=DTYPE))
    assert torch.isnan(top_singular_share(torch.zeros(3, 3))).all()
    with pytest.raises(ValueError, match='factors must be'):
        top_singular_share(torch.zeros(3))


def test_marginal_outer_product_keeps_marginals_and_total():
    gen = torch.Generator().manual_seed(1)
    relevance = torch.rand(2, 5, 7, generator=gen, dtype=DTYPE) + 0.1
    outer = marginal_outer_product(relevance)
    assert torch.allclose(outer.sum(dim=2), relevance.sum(dim=2))
    assert torch.allclose(outer.sum(dim=1), relevance.sum(dim=1))
    assert torch.linalg.matrix_rank(outer[0]) == 1
    rank_one = torch.outer(torch.rand(5, generator=gen, dtype=DTYPE), torch.rand(7, generator=gen, dtype=DTYPE))
    assert torch.allclose(marginal_outer_product(rank_one), rank_one)  # its own marginals' outer product
    with pytest.raises(ValueError, match='sums to zero'):
        marginal_outer_product(torch.tensor([[1.0, -1.0]]))
