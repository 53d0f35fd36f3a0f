"""Shared fixtures. Everything runs on the CPU, seeded; trained models are small and cached per session."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0


@pytest.fixture
def one_thread():
    """AutoAttack's (FAB-T's) many tiny ops on a shared two-core machine: one thread is several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def mnist5k_test():
    from nslib import data

    return data.load("mnist5k", "test")


@pytest.fixture(scope="session")
def trained_smallcnn(mnist5k_test):
    """SmallCNN trained briefly (clean) on the real MNIST-5k subset: (model in eval mode, x_test, y_test).

    About 97% test accuracy; x_test/y_test are the first 200 test images. Treat the model as read-only.
    """
    from nslib import models, training

    torch.manual_seed(0)
    model = models.build("smallcnn", "mnist5k")
    training.train(model, "mnist5k", epochs=4, batch_size=64, lr=0.05, seed=0, progress=False,
                   precision="fp32")  # the same model on every CPU, bf16 hardware or not
    model.eval()
    x, y = mnist5k_test
    return model, x[:200], y[:200]
