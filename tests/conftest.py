"""Shared fixtures."""

import pytest


@pytest.fixture
def torch_one_thread():
    """Run torch single-threaded: for tiny models on a small shared machine the intra-op
    thread pool's hand-offs cost far more than the arithmetic (about 10x seen here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
