"""SGD's per-epoch checkpoints (network3/checkpoint.py): a run interrupted
and resumed from its checkpoint ends where the uninterrupted run ends, bit
for bit, with dropout, shuffling, augmentation, momentum and a schedule;
a checkpoint of another run is refused, naming the difference."""

import functools
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytensor
import pytest

import network3
from network3 import FullyConnectedLayer, Network, ReLU, SoftmaxLayer, checkpoint
from network3.augment import Augment

EPOCHS = 4


def tiny_data(seed=0, n=(200, 100, 100)):
    """Three small sets of 28x28 'images' whose label is the brightest of
    ten blocks of pixels: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    sets = []
    for size in n:
        y = rng.integers(0, 10, size)
        x = rng.random((size, 784), dtype=np.float32) * 0.3
        for i, label in enumerate(y):
            x[i, label * 78:(label + 1) * 78] += 0.7
        sets.append((x, y.astype(np.int32)))
    return sets


class Interrupting:
    """Augment's distortions, or Ctrl-C at the start of epoch ``at``
    (augment is called once per epoch, at its start)."""

    def __init__(self, at=None):
        self.augment, self.at, self.calls = Augment(elastic=None), at, 0

    def __call__(self, images, rng):
        self.calls += 1
        if self.calls - 1 == self.at:
            raise KeyboardInterrupt
        return self.augment(images, rng)

    def __repr__(self):  # the same run whether or not it is interrupted
        return f"Interrupting({self.augment!r})"


class Shrinking:
    """A schedule with state of its own: eta times 0.7 at each new epoch."""

    def __init__(self, eta):
        self.eta0 = self.eta = eta

    def __call__(self, epoch):
        if epoch:
            self.eta *= 0.7
        return self.eta

    def __repr__(self):
        return f"Shrinking({self.eta0})"


def build(seed=0, width=30):
    network3.seed(seed)
    return Network([FullyConnectedLayer(n_in=784, n_out=width, activation_fn=ReLU,
                                        p_dropout=0.2),
                    SoftmaxLayer(n_in=width, n_out=10, p_dropout=0.5)], 10)


def train(net, data, path, augment, **extra):
    training, validation, test = data
    options = dict(shuffle=True, augment=augment, momentum=0.5, eta=Shrinking(0.1))
    options.update(extra)
    eta = options.pop("eta")
    net.SGD(training, EPOCHS, 10, eta, validation, test, 0.1,
            checkpoint=path, **options)


def assert_continues(whole, resumed, epoch):
    """``resumed`` are the last lines of ``whole``, from epoch ``epoch``'s."""
    assert resumed and whole[len(whole) - len(resumed):] == resumed
    epochs = [line.split(":")[0] for line in resumed if line.startswith("Epoch ")]
    assert epochs[0] == f"Epoch {epoch}"


def without_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("backend, width", [
    ("numba", 30),
    ("numba", 200),  # wide enough for the accelerator's momentum kernel
    pytest.param("jax", 30, marks=pytest.mark.jax)])
def test_resumed_after_ctrl_c_equals_uninterrupted(tmp_path, capsys, backend, width):
    """On JAX too, whose compiled step advances a copy of each dropout
    stream (the checkpoint saves the copy's state, not the variable's);
    and with the accelerator's in-place momentum kernel (DenseMomentum)."""
    network3.set_backend(backend)
    data = tiny_data()
    if width > 30:
        x, y = (pytensor.shared(v) for v in data[0])
        eta = pytensor.shared(np.float32(0.1))  # shared, as SGD's
        step = build(width=width).train_mb_function(x, y, eta, 0.1, 20, momentum=0.5)
        graph = getattr(step, "fn", step).maker.fgraph
        assert "DenseMomentum" in {type(node.op).__name__ for node in graph.apply_nodes}
    make = functools.partial(build, width=width)
    whole = make()
    train(whole, data, tmp_path / "whole.ckpt", Interrupting())
    whole_lines = capsys.readouterr().out.splitlines()
    assert whole.resumed_from is None

    net = make()
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C as epoch 2 starts
        train(net, data, tmp_path / "run.ckpt", Interrupting(at=2))
    capsys.readouterr()
    assert checkpoint.read(tmp_path / "run.ckpt")[0]["epoch"] == 1

    again = make()  # the same script run again: a new net, the same seed
    train(again, data, tmp_path / "run.ckpt", Interrupting())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Resuming from checkpoint")
    assert "continuing with epoch 2" in lines[0]
    assert again.resumed_from == 2
    assert not any(line.startswith("Epoch 0") for line in lines)
    # the same printed lines from the resumed epoch on, the same numbers
    assert_continues(whole_lines, lines[1:], 2)
    for a, b in zip(whole.params, again.params):
        np.testing.assert_array_equal(a.get_value(), b.get_value())
    assert without_seconds(again.history) == without_seconds(whole.history)
    assert len({h["eta"] for h in whole.history}) > 1  # the schedule acted


def test_each_state_is_needed(tmp_path):
    """Resuming without restoring the dropout streams gives other numbers:
    the comparison above can fail."""
    data = tiny_data()
    whole = build()
    train(whole, data, tmp_path / "whole.ckpt", Interrupting())
    net = build()
    with pytest.raises(KeyboardInterrupt):
        train(net, data, tmp_path / "run.ckpt", Interrupting(at=2))
    original = checkpoint.generator_from_state
    again = build()
    try:  # every saved generator replaced by a fresh one
        checkpoint.generator_from_state = lambda state: np.random.default_rng(1)
        train(again, data, tmp_path / "run.ckpt", Interrupting())
    finally:
        checkpoint.generator_from_state = original
    assert not all(np.array_equal(a.get_value(), b.get_value())
                   for a, b in zip(whole.params, again.params))


@pytest.mark.parametrize("backend", ["numba", pytest.param("jax", marks=pytest.mark.jax)])
def test_two_sgd_calls_of_one_epoch_equal_one_call_of_two(backend):
    """A reader's own loop of one-epoch SGD calls: each call's dropout masks
    go on from the last call's stream (on JAX the compiled step advances a
    copy of it, which the next call's copy took up from its first state)."""
    network3.set_backend(backend)
    training, validation, test = tiny_data()
    once, twice = build(), build()
    once.SGD(training, 2, 10, 0.1, validation, test, 0.1)
    for _ in range(2):
        twice.SGD(training, 1, 10, 0.1, validation, test, 0.1)
    for a, b in zip(once.params, twice.params):
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))


@pytest.mark.jax
def test_dropout_streams_resume_on_the_kind_of_backend_that_wrote_them(tmp_path):
    """JAX draws its own masks: a JAX checkpoint continued on Numba (or the
    other way round) would go on with other masks than either run's; it is
    refused, naming the backends, and the checkpoint is kept."""
    data = tiny_data()
    for wrote, resumes in (("jax", "numba"), ("numba", "jax")):
        path = tmp_path / f"{wrote}.ckpt"
        network3.set_backend(wrote)
        with pytest.raises(KeyboardInterrupt):
            train(build(), data, path, Interrupting(at=1))
        written = path.read_bytes()
        network3.set_backend(resumes)
        with pytest.raises(ValueError, match=f"written on .*{'JAX' if wrote == 'jax' else 'numpy'}"
                           f".*this run is on the {resumes} backend"):
            train(build(), data, path, Interrupting())
        assert path.read_bytes() == written


def test_finished_checkpoint_trains_nothing(tmp_path, capsys):
    data = tiny_data()
    net = build()
    train(net, data, tmp_path / "run.ckpt", Interrupting())
    values = [p.get_value() for p in net.params]
    capsys.readouterr()
    again = build()
    train(again, data, tmp_path / "run.ckpt", Interrupting())
    out = capsys.readouterr().out
    assert "nothing left to train" in out and "Epoch" not in out
    assert f"Best validation accuracy of {net.best_validation_accuracy:.2%}" in out
    assert again.test_accuracy == net.test_accuracy
    for a, b in zip(values, again.params):
        np.testing.assert_array_equal(a, b.get_value())
    # the checkpoint is a saved network too: the last epoch's parameters
    loaded = network3.load(tmp_path / "run.ckpt")
    for a, b in zip(values, loaded.params):
        np.testing.assert_array_equal(a, b.get_value())


@pytest.mark.parametrize("change, named", [
    ({"epochs": EPOCHS + 1}, "epochs"),
    ({"lmbda": 0.2}, "lmbda"),
    ({"momentum": 0.9}, "momentum"),
    ({"data_seed": 1}, "training_data"),
    ({"width": 31}, "architecture"),
])
def test_checkpoint_of_another_run_is_refused(tmp_path, change, named):
    data = tiny_data()
    net = build()
    with pytest.raises(KeyboardInterrupt):
        train(net, data, tmp_path / "run.ckpt", Interrupting(at=1))
    other = tiny_data(seed=change.get("data_seed", 0))
    network3.seed(0)
    width = change.get("width", 30)
    other_net = Network([FullyConnectedLayer(n_in=784, n_out=width, activation_fn=ReLU,
                                             p_dropout=0.2),
                         SoftmaxLayer(n_in=width, n_out=10, p_dropout=0.5)], 10)
    training, validation, test = other
    with pytest.raises(ValueError, match=named) as err:
        other_net.SGD(training, change.get("epochs", EPOCHS), 10,
                      Shrinking(0.1),
                      validation, test, change.get("lmbda", 0.1), shuffle=True,
                      augment=Interrupting(), momentum=change.get("momentum", 0.5),
                      checkpoint=tmp_path / "run.ckpt")
    assert "run.ckpt" in str(err.value)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    training, validation, test = tiny_data()
    with pytest.raises(ValueError, match="notes.txt.*not a network3 checkpoint"):
        build().SGD(training, 1, 10, 0.1, validation, checkpoint=path)
    assert path.read_text() == "my notes"  # nothing lost


CHILD = """
import sys, time
import numpy as np
import network3
from network3 import FullyConnectedLayer, Network, ReLU, SoftmaxLayer
from network3.augment import Augment
from network3.schedules import step_decay
sys.path.insert(0, {tests!r})
from test_checkpoint import tiny_data

def slow_augment(images, rng):  # time for the test to kill it between epochs
    time.sleep(0.4)
    return Augment(elastic=None)(images, rng)

network3.seed(0)
net = Network([FullyConnectedLayer(n_in=784, n_out=30, activation_fn=ReLU, p_dropout=0.2),
               SoftmaxLayer(n_in=30, n_out=10, p_dropout=0.5)], 10)
training, validation, test = tiny_data()
net.SGD(training, 6, 10, step_decay(0.1, every=2), validation, test, 0.1, shuffle=True,
        augment=slow_augment, momentum=0.5, checkpoint=sys.argv[1])
np.savez(sys.argv[2], *[p.get_value() for p in net.params])
"""


@pytest.mark.slow
def test_killed_process_resumes_bit_for_bit(tmp_path):
    """SIGKILL after an epoch (nothing runs at exit), then the same command:
    the same parameters as an uninterrupted run, the same lines from the
    next epoch on."""
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=os.path.dirname(__file__)))
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def run(ckpt, out):
        return subprocess.run([sys.executable, str(script), str(ckpt), str(out)],
                              capture_output=True, text=True, env=env, timeout=300)

    whole = run(tmp_path / "whole.ckpt", tmp_path / "whole.npz")
    assert whole.returncode == 0, whole.stderr

    ckpt = tmp_path / "run.ckpt"
    with open(tmp_path / "stderr", "w") as stderr:
        child = subprocess.Popen([sys.executable, str(script), str(ckpt), str(tmp_path / "x")],
                                 stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if ckpt.exists() and checkpoint.read(ckpt)[0]["epoch"] >= 1 \
                or child.poll() is not None:
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = checkpoint.read(ckpt)[0]["epoch"]
    assert 1 <= done < 5, (tmp_path / "stderr").read_text()

    resumed = run(ckpt, tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.splitlines()
    assert lines[0].startswith("Resuming from checkpoint")
    assert f"continuing with epoch {done + 1}" in lines[0]
    assert not any(line.startswith("Epoch 0") for line in lines)
    assert_continues(whole.stdout.splitlines(), lines[1:], done + 1)
    with np.load(tmp_path / "whole.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
