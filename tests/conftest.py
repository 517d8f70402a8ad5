"""Shared fixtures.

Real-data tests need MNIST: the IDX files in ``$NETWORK3_MNIST_DIR`` (CI
points that at ../shared/data/mnist), else in ``data/mnist``, where the
README's first command puts them; and ``data/mnist.pkl.gz``, built from them
when missing.  When the files are not there the tests *fail* with a message
saying what to do; they never skip silently.
"""

import os

# One BLAS thread (before numpy and scipy load their OpenBLAS).  Measured on
# this project's 2-core machines with another process busy: a basic_conv
# training step took 130 ms with OpenBLAS's default thread pool, whose
# threads spin against the other process, and 6 ms with one thread.  The
# matrices of a mini-batch of 10 are too small to gain from threads.  CI
# may override these.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import network3  # noqa: E402
from network3 import data as n3data  # noqa: E402


def _idx_dir():
    """$NETWORK3_MNIST_DIR, else data/mnist."""
    return Path(os.environ.get("NETWORK3_MNIST_DIR") or n3data.data_dir() / "mnist")


@pytest.fixture(scope="session")
def mnist_path():
    path = n3data.data_dir() / "mnist.pkl.gz"
    if not path.exists():
        idx_dir = _idx_dir()
        if not all(n3data.find_idx_file(name, idx_dir) for name in n3data.MNIST_FILES):
            pytest.fail(
                f"MNIST is not available: {path} is missing and {idx_dir} does "
                "not hold the four MNIST IDX files. Run `python -m network3 data` "
                "(or set NETWORK3_MNIST_DIR to a folder that holds them).")
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


@pytest.fixture(scope="session")
def mnist_idx_dir():
    """The folder of the four original MNIST files (IDX, gzip):
    $NETWORK3_MNIST_DIR, else data/mnist (where `python -m network3 data`
    downloads them).  Fails (never skips) when they are not there."""
    idx_dir = _idx_dir()
    missing = [name for name in n3data.MNIST_FILES
               if not (idx_dir / (name + ".gz")).exists()]
    if missing:
        pytest.fail(f"MNIST IDX files {missing} are not in {idx_dir}; run "
                    "`python -m network3 data` to download them there, or set "
                    "NETWORK3_MNIST_DIR to the folder holding the four "
                    "*-ubyte.gz files.")
    return idx_dir


#### Case counts of the property tests (tests/test_reliability.py)
# Each property test adds its cases, by outcome, to a Counter in this dict;
# the terminal summary prints them ("N cases: X clean ValueError, ...").
class _CaseCounts(dict):
    def __repr__(self):  # short, in hypothesis's report of a failing case
        return "<case counts>"


RELIABILITY_CASE_COUNTS = _CaseCounts()


@pytest.fixture(scope="session")
def case_counts():
    return RELIABILITY_CASE_COUNTS


def pytest_terminal_summary(terminalreporter):
    if not RELIABILITY_CASE_COUNTS:
        return
    terminalreporter.section("property tests: cases tried, by outcome")
    for name, counts in RELIABILITY_CASE_COUNTS.items():
        outcomes = ", ".join(f"{n} {outcome}" for outcome, n in counts.most_common())
        terminalreporter.write_line(f"{name}: {sum(counts.values())} cases: {outcomes}")
