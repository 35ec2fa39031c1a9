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


@pytest.fixture(scope="session")
def tiny_shapes_run(tmp_path_factory):
    """A finished 30-step `shapes` run (latent 4, width 8): a real model, trained in seconds,
    shared by the export and evaluation tests. Treat it as read-only."""
    from sculptserve.training.config import TrainConfig
    from sculptserve.training.trainer import train

    run = tmp_path_factory.mktemp("runs") / "shapes-run"
    config = TrainConfig(
        out=str(run), latent_dim=4, batch_size=32, max_steps=30, width=8, val_size=256, report=False
    )
    train(config, progress=False)
    return run
