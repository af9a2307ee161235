"""The reference point shared by the path methods (integrated Jacobians, the Captum baselines)."""
import pytest
import torch

from zennit_bilrp.core.checks import reference_input


def test_reference_input_against_hand_written_references():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    assert torch.equal(reference_input(x, 'zeros'), torch.zeros_like(x))
    mean = reference_input(x, 'mean')
    for n in range(2):
        for c in range(3):  # each sample's channel mean over its positions
            assert torch.allclose(mean[n, c], x[n, c].mean().expand(2, 2))
    flat = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    assert torch.allclose(reference_input(flat, 'mean'), torch.tensor([[3.0] * 3, [1.0] * 3]))
    assert torch.equal(reference_input(x, 0.5), torch.full_like(x, 0.5))
    assert torch.equal(reference_input(x, 2), torch.full_like(x, 2.0))
    given = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    out = reference_input(x, given)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.equal(out[1, 2], torch.full((2, 2), 3.0).double())


@pytest.mark.parametrize('bad', ['median', True, None, [0.0]])
def test_reference_input_refuses_anything_else(bad):
    with pytest.raises(ValueError, match='reference must be'):
        reference_input(torch.zeros(1, 3, 2, 2), bad)
