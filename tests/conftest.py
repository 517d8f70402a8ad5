"""Shared fixtures.

Real-data tests need MNIST.  They use ``data/mnist.pkl.gz`` when it exists,
else build it from the IDX files in ``$NETWORK3_MNIST_DIR`` (CI points that
at ../shared/data/mnist).  When neither is there the tests *fail* with a
message saying what to do; they never skip silently.
"""

import os
from pathlib import Path

import numpy as np
import pytest

import network3
from network3 import data as n3data


@pytest.fixture(scope="session")
def mnist_path():
    path = n3data.data_dir() / "mnist.pkl.gz"
    if not path.exists():
        idx_dir = os.environ.get("NETWORK3_MNIST_DIR")
        if not idx_dir or not Path(idx_dir).is_dir():
            pytest.fail(
                f"MNIST is not available: {path} is missing and "
                "NETWORK3_MNIST_DIR is not set to a folder with the four IDX "
                "files. Run `python -m network3 data` (or set "
                "NETWORK3_MNIST_DIR=../shared/data/mnist).")
        n3data.build_mnist_pkl(path, idx_dir=idx_dir, download=False)
    return path


@pytest.fixture(scope="session")
def mnist(mnist_path):
    """The book's three splits as numpy (x, y) pairs."""
    return n3data.load_data(mnist_path)


@pytest.fixture(scope="session")
def mnist_shared(mnist_path):
    return network3.load_data_shared(str(mnist_path))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same seed and default settings."""
    network3.seed(1234)
    yield
    network3.set_floatX("float32")
    network3.set_backend(None)
    network3.GPU = False


@pytest.fixture
def rng():
    return np.random.default_rng(0)
