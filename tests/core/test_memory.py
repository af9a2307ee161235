"""The automatic chunk size comes from a measured memory model and is close to the largest chunk that fits."""
import pytest
import torch
from zennit.composites import EpsilonPlus

import zennit_bilrp.core.propagation as propagation_module
from zennit_bilrp import BiLRP
from zennit_bilrp.core.memory import TRIAL_CHUNKS, MemoryModel, PeakMemory
from zennit_bilrp.core.propagation import batched_vjp


def conv_linear_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 16 * 16, 64),
    ).eval()


def measured_peak(session, chunk):
    mult = torch.ones(chunk, session.n, session.embedding.shape[1])
    with PeakMemory() as memory:
        batched_vjp(session.output, session.x, session.head.output_relevance(session.output, mult))
    return memory.peak


def test_peak_memory_counts_what_the_block_allocates():
    kept = torch.ones(1000)
    with PeakMemory() as memory:
        a = torch.ones(1000, dtype=torch.float64)  # 8000 bytes
        b = a * 2                                  # 8000 more
        view = kept[:10]                           # a view: nothing new
        del a, b, view
    assert memory.peak == 16000
    assert memory.current == 0


def test_memory_model_fit():
    model = MemoryModel.fit([2, 4], [300.0, 500.0])
    assert model.base == pytest.approx(100.0) and model.per_unit == pytest.approx(100.0)
    assert model.largest_chunk(1050.0) == 9
    assert model.largest_chunk(10.0) == 1
    assert MemoryModel.fit([2], [300.0]).per_unit == pytest.approx(150.0)
    with pytest.raises(ValueError, match='two different chunk sizes'):
        MemoryModel.fit([2, 2], [1.0, 2.0])


@pytest.mark.parametrize('budget', [2 << 20, 6 << 20])
def test_auto_chunk_is_within_2x_of_the_largest_that_fits(budget, monkeypatch):
    model = conv_linear_model()
    x = torch.rand(2, 3, 16, 16)
    h = 64
    with BiLRP(model, EpsilonPlus(), memory_budget=budget) as bilrp:
        session = bilrp.open_session(x)
        chunk = session.chunk_size(h)
        fits = [c for c in range(1, h + 1, 3) if measured_peak(session, c) <= budget]
        largest = max(fits)
        assert largest < h  # the budget binds
        assert largest / 2 <= chunk and measured_peak(session, chunk) <= budget

        sizes = []
        original = propagation_module.batched_vjp

        def recording(output, inputs, seeds, **kwargs):
            sizes.append(seeds.shape[0])
            return original(output, inputs, seeds, **kwargs)

        monkeypatch.setattr(propagation_module, 'batched_vjp', recording)
        fresh = bilrp.open_session(x)
        mult = torch.eye(h)[:, None, :].expand(-1, 2, -1)
        relevance = fresh.propagate(mult, lambda rel: rel.sum(dim=(2, 3, 4)))
        assert tuple(sizes[:2]) == TRIAL_CHUNKS  # the trial chunks are part of the computation
        assert max(sizes[2:]) >= largest / 2 and sum(sizes) == h
        monkeypatch.setattr(propagation_module, 'batched_vjp', original)
        one_by_one = BiLRP(model, EpsilonPlus(), chunk_size=1)
    torch.testing.assert_close(relevance, one_by_one.propagate(x, torch.eye(h), pooling=16)[1].squeeze(-1),
                               rtol=1e-4, atol=1e-5)


def test_linear_weights_are_not_counted_per_unit():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2048, 512), torch.nn.ReLU(), torch.nn.Linear(512, 16)).eval()
    weight_bytes = 2048 * 512 * 4
    with BiLRP(model, EpsilonPlus(), memory_budget=weight_bytes) as bilrp:
        session = bilrp.open_session(torch.rand(2, 2048))
        assert session.bytes_per_unit < weight_bytes / 50
        assert session.chunk_size(16) == 16
