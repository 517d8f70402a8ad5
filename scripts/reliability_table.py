"""reliability_table.py: what a user sees for each kind of bad input.

Runs a curated list of mistakes (wrong layer sizes, bad SGD arguments, bad
data, damaged or malicious files, a diverging learning rate, Ctrl-C) against
the real library and prints a Markdown table of the exact exception type and
message, or the line SGD printed.  Every cell is measured, none is typed.

    python scripts/reliability_table.py            # the table, on stdout

Two tiny networks are compiled (with the default backend), for the rows that
need training; the other rows fail before anything is compiled.  Files are
written in a temporary folder, which is the working directory while the
cases run, so the messages show short relative names.
"""

import argparse
import contextlib
import gzip
import io
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import network3
from network3 import (
    ConvPoolLayer,
    FullyConnectedLayer,
    Network,
    ReLU,
    SoftmaxLayer,
    linear,
)
from network3 import data as n3data
from network3 import network as n3network

CASES = []


def case(description):
    """Register ``fn`` as the case ``description`` (Markdown)."""
    def register(fn):
        CASES.append((description, fn))
        return fn
    return register


def book_conv(**fc):
    """The book's first convolutional network, with ``fc`` overriding the
    fully connected layer's arguments."""
    return [ConvPoolLayer(filter_shape=(20, 1, 5, 5), image_shape=(10, 1, 28, 28),
                          poolsize=(2, 2)),
            FullyConnectedLayer(**{"n_in": 20 * 12 * 12, "n_out": 100, **fc}),
            SoftmaxLayer(n_in=100, n_out=10)]


def shallow():
    return Network([FullyConnectedLayer(n_in=784, n_out=100),
                    SoftmaxLayer(n_in=100, n_out=10)], 10)


def images(n, pixels=784, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, pixels)).astype(np.float32), rng.integers(0, 10, n))


#### Construction-time checks
@case("`FullyConnectedLayer(n_in=784, n_out=100)` then `SoftmaxLayer(n_in=30, n_out=10)`")
def _():
    Network([FullyConnectedLayer(n_in=784, n_out=100),
             SoftmaxLayer(n_in=30, n_out=10)], 10)


@case("FC layer after `ConvPoolLayer((20, 1, 5, 5), (10, 1, 28, 28))` with "
      "`n_in=20*24*24` (pooling forgotten)")
def _():
    Network(book_conv(n_in=20 * 24 * 24), 10)


@case("`image_shape=(10, 1, 28, 28)` in a network with `mini_batch_size=20`")
def _():
    Network(book_conv(), 20)


@case("second conv layer `filter_shape=(40, 1, 5, 5)` on `image_shape=(10, 20, 12, 12)`")
def _():
    ConvPoolLayer(filter_shape=(40, 1, 5, 5), image_shape=(10, 20, 12, 12))


@case("`poolsize=(0, 2)`")
def _():
    ConvPoolLayer((20, 1, 5, 5), (10, 1, 28, 28), poolsize=(0, 2))


@case("`poolsize=(30, 30)` on 28x28 images")
def _():
    ConvPoolLayer((20, 1, 5, 5), (10, 1, 28, 28), poolsize=(30, 30))


@case("`activation_fn=\"ReLU\"` (a string)")
def _():
    FullyConnectedLayer(n_in=784, n_out=100, activation_fn="ReLU")


@case("`activation_fn=numpy_relu`, a numpy function: `np.where(z > 0, z, 0)`")
def _():
    def numpy_relu(z):
        return np.where(z > 0, z, 0)
    FullyConnectedLayer(n_in=784, n_out=100, activation_fn=numpy_relu)


@case("`p_dropout=50` (meant 50%)")
def _():
    FullyConnectedLayer(n_in=784, n_out=100, p_dropout=50)


@case("last layer a `FullyConnectedLayer`, no `SoftmaxLayer`, then `net.SGD(...)` "
      "(the network itself builds: its graph works in compiled functions)")
def _():
    net = Network([FullyConnectedLayer(n_in=784, n_out=10)], 10)
    net.SGD(images(40), 60, 10, 0.1, images(20))


@case("`Network(layers, 0)`")
def _():
    Network(book_conv(), 0)


#### Call-time checks (SGD fails before compiling anything)
@case("`net.SGD(training_data, 60, 20, 0.1, ...)` on a network built with "
      "`mini_batch_size=10`")
def _():
    shallow().SGD(images(40), 60, 20, 0.1, images(20))


@case("`epochs=0`")
def _():
    shallow().SGD(images(40), 0, 10, 0.1, images(20))


@case("`eta=-0.1`")
def _():
    shallow().SGD(images(40), 60, 10, -0.1, images(20))


@case("a NaN pixel in the training images")
def _():
    x, y = images(40)
    x[3, 100] = np.nan
    shallow().SGD((x, y), 60, 10, 0.1, images(20))


@case("label 10 in the validation data of a 10-class network")
def _():
    x, y = images(20)
    y[5] = 10
    shallow().SGD(images(40), 60, 10, 0.1, (x, y))


@case("14x14 images (196 values) for a network whose first layer takes 784")
def _():
    shallow().SGD(images(40, 196), 60, 10, 0.1, images(20, 196))


@case("5 validation images with `mini_batch_size=10`")
def _():
    shallow().SGD(images(40), 60, 10, 0.1, images(5))


@case("empty training data (0 images)")
def _():
    shallow().SGD(images(0), 60, 10, 0.1, images(20))


#### Training
def toy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = (x[:, :3] + 0.5 * x[:, 3:]).argmax(axis=1).astype(np.int32)
    return (x[:40], y[:40]), (x[40:], y[40:])


def printed(fn, starts):
    """The first line ``fn()`` prints that starts with ``starts``, and the
    KeyboardInterrupt it lets through, if it does."""
    out = io.StringIO()
    raised = None
    try:
        with contextlib.redirect_stdout(out):
            fn()
    except KeyboardInterrupt:
        raised = "KeyboardInterrupt"
    lines = [line for line in out.getvalue().splitlines() if line.startswith(starts)]
    return ("printed", lines[0] if lines else f"(nothing starting {starts!r})", raised)


@case("`eta=1e6` on a small network of linear layers (training diverges)")
def _():
    (training, validation) = toy()
    net = Network([FullyConnectedLayer(6, 8, activation_fn=linear),
                   FullyConnectedLayer(8, 8, activation_fn=linear),
                   SoftmaxLayer(8, 3)], 10)
    return printed(lambda: net.SGD(training, 5, 10, 1e6, validation),
                   "Training stopped")


@case("Ctrl-C during the second epoch (simulated: KeyboardInterrupt in a "
      "training step); SGD prints its summary too, and the network keeps the best "
      "epoch's parameters")
def _():
    (training, validation) = toy()
    net = Network([FullyConnectedLayer(6, 8, activation_fn=ReLU),
                   SoftmaxLayer(8, 3)], 10)
    compile_function = n3network.function
    calls = {"n": 0}

    def function(*args, **kwargs):
        fn = compile_function(*args, **kwargs)
        if "updates" not in kwargs:
            return fn

        def step(i):
            calls["n"] += 1
            if calls["n"] == 6:  # 4 mini-batches an epoch: epoch 1
                raise KeyboardInterrupt
            return fn(i)
        return step
    n3network.function = function
    try:
        return printed(lambda: net.SGD(training, 5, 10, 0.5, validation),
                       "Training interrupted")
    finally:
        n3network.function = compile_function


#### Files
class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


@case("a malicious `mnist.pkl.gz` whose pickle calls `os.system` when loaded")
def _():
    Path("mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(Exploit())))
    try:
        n3data.load_data("mnist.pkl.gz")
    finally:
        if Path("pwned.txt").exists():
            raise SystemExit("the malicious pickle RAN: stop and fix SafeUnpickler")


def small_data_file(name):
    n3data.save_data((images(50), images(10), images(10)), name)
    return name


@case("`mnist.pkl.gz` truncated to half its size (an interrupted download)")
def _():
    raw = Path(small_data_file("mnist.pkl.gz")).read_bytes()
    Path("mnist.pkl.gz").write_bytes(raw[:len(raw) // 2])
    n3data.load_data("mnist.pkl.gz")


@case("a missing data file")
def _():
    network3.load_data_shared("nowhere/mnist.pkl.gz")


@case("a saved network (`net.npz`) passed to `load_data`")
def _():
    shallow().save("net.npz")
    n3data.load_data("net.npz")


@case("a corrupted MNIST file (`train-images-idx3-ubyte.gz` whose content is not "
      "MNIST's) given to `python -m network3 data --idx-dir mnist`")
def _():
    folder = Path("mnist")
    folder.mkdir()
    pixels = np.zeros((2, 28, 28), np.uint8)
    pixels[0, 3, 3] = 1  # not the real file: its SHA-256 differs
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in pixels.shape)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(header + pixels.tobytes()))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        n3data.main(["--idx-dir", "mnist", "--out", "out.pkl.gz"])


@case("a data file (`mnist.pkl.gz`) passed to `network3.load`")
def _():
    network3.load(small_data_file("mnist.pkl.gz"))


@case("a network file whose `layer0_w` has shape (100, 784) instead of (784, 100)")
def _():
    shallow().save("net.npz")
    with np.load("net.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["layer0_w"] = arrays["layer0_w"].T
    np.savez("net.npz", **arrays)
    network3.load("net.npz")


#### The table
def run(fn):
    """What the user sees: ("raised", type, message), ("exit", message),
    ("printed", line) or ("no error", "")."""
    try:
        result = fn()
    except SystemExit as err:
        return ("exit", str(err.code))
    except Exception as err:
        return ("raised", type(err).__name__, str(err))
    return result if result else ("no error", "")


def code(text):
    """``text`` as a Markdown code span that survives a table cell."""
    text = " ".join(text.split()).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") or fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def cell(outcome):
    if outcome[0] == "raised":
        return f"{code(outcome[1] + ': ' + outcome[2])}"
    if outcome[0] == "exit":
        return f"exits with {code(outcome[1])}"
    if outcome[0] == "printed":
        then = f", then raises {code(outcome[2])}" if outcome[2] else ""
        return f"prints {code(outcome[1])}{then}"
    return "**no error**"


def main(argv=None):
    argparse.ArgumentParser(
        description="Run a curated list of bad inputs against network3 and print "
        "a Markdown table of what the user sees for each (two tiny networks are "
        "compiled; files are written only in a temporary folder).").parse_args(argv)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        here = os.getcwd()
        os.chdir(folder)
        try:
            for i, (description, fn) in enumerate(CASES):
                network3.seed(i)
                os.mkdir(f"case{i}")  # each case in a folder of its own
                os.chdir(f"case{i}")
                try:
                    rows.append((description, run(fn)))
                finally:
                    os.chdir(folder)
        finally:
            os.chdir(here)
    print("| bad input | what the user sees |")
    print("|---|---|")
    for description, outcome in rows:
        print(f"| {description} | {cell(outcome)} |")
    print(f"\n{len(rows)} cases, measured by scripts/reliability_table.py in "
          f"{time.perf_counter() - start:.0f} s.", file=sys.stderr)


if __name__ == "__main__":
    main()
