"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(scope='module')
def single_thread():
    """Run a module's tiny models on one thread: faster than two and immune to oversubscription on a busy
    2-core machine (measured about 3x faster there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
