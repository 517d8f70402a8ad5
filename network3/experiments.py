"""experiments.py: the chapter's experiments as runs that are recorded,
resumable, and run in parallel on Dask.

``scripts/conv.py`` is the command line over this module.  The pieces:

* The book's experiments: ``EXPERIMENTS`` (data, epochs, eta, lmbda of
  each, as in the book), ``build`` (each network's layers) and ``BOOK``
  (the book's ``run_experiments``: every experiment, 3 runs each, and its
  ensemble of 5).
* Runs and their keys.  A run is an experiment, its settings (data, epochs,
  eta, lmbda, init, FC width ``n``, training-set size, augmentation) and a
  seed; its key names all of them, e.g. ``shallow data=mnist epochs=60
  eta=0.1 init=book lmbda=0.0 seed=1``.  ``plan`` expands experiments,
  runs and ``--set`` grids into runs.  Records written before settings
  were recorded get their key from their ``config``.
* Records.  ``train`` trains one run and returns its record (configuration,
  settings, per-epoch history, accuracies, wall time, machine, and the
  labels the net gives the validation and test images, so that ensembles
  are voted from records).  Only the driver writes records:
  ``append_record`` appends one line under a file lock, flushed and
  fsynced, and never a second record of the same run.
* The driver.  ``execute`` skips runs already recorded, then trains the
  rest in this process (sequentially, printing the book's lines) or on
  Dask: a local cluster of worker processes (``workers=K``) or an existing
  cluster (``scheduler="tcp://host:port"``), with one live line per run
  and a summary table.  A failed run does not stop the others.

Dask (``pip install "network3[cluster]"``) is imported only when it is
used.  PyTensor's and Numba's on-disk compile caches are not safe to fill
from several processes at once: each worker of a local cluster gets cache
folders of its own (``local_cluster``), and on an existing cluster whose
workers share a cache folder the driver first compiles each distinct
network once on one worker (``warm_up``) before the runs fan out.
"""

import contextlib
import hashlib
import itertools
import json
import os
import platform
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import network3

from .data import as_array, size, subset
from .ensemble import EnsembleResult, vote
from .layers import (
    ConvPoolLayer,
    FullyConnectedLayer,
    ReLU,
    SoftmaxLayer,
    sigmoid,
    tanh,
)
from .network import Network
from .saving import describe

try:
    import fcntl  # POSIX: results files are appended under an exclusive lock
except ImportError:  # Windows: one driver per results file
    fcntl = None

mini_batch_size = 10

#### The book's experiments
# name: (data, epochs, eta, lmbda), the book's settings
EXPERIMENTS = {
    "shallow": ("mnist", 60, 0.1, 0.0),
    "basic_conv": ("mnist", 60, 0.1, 0.0),
    "omit_FC": ("mnist", 60, 0.1, 0.0),
    "dbl_conv": ("mnist", 60, 0.1, 0.0),
    "dbl_conv_tanh": ("mnist", 60, 0.1, 0.0),
    "regularized_dbl_conv": ("mnist", 60, 0.1, 0.1),
    "dbl_conv_relu": ("mnist", 60, 0.03, 0.1),
    "expanded_data": ("expanded", 60, 0.03, 0.1),
    "expanded_data_double_fc": ("expanded", 60, 0.03, 0.1),
    "double_fc_dropout": ("expanded", 40, 0.03, 0.0),
    "ensemble": ("expanded", 40, 0.03, 0.0),
}
# the experiments whose FC width is a setting (the book tries 100, 300, 1000)
WIDTH_EXPERIMENTS = ("expanded_data", "expanded_data_double_fc")
# the book's run_experiments (its conv.py): each experiment 3 times, then 5
# double_fc_dropout nets that vote (here the experiment "ensemble").  The
# book's code also swept lmbda for dbl_conv_relu; its text reports 0.1.
BOOK = ([(name, {}) for name in ("shallow", "basic_conv", "omit_FC", "dbl_conv",
                                 "dbl_conv_relu")]
        + [(name, {"n": n}) for name in WIDTH_EXPERIMENTS for n in (100, 300, 1000)]
        + [("ensemble", {})])
BOOK_RUNS, ENSEMBLE_MEMBERS = 3, 5
# training images of each data set (a train_size this large means all of them)
FULL_SIZE = {"mnist": 50_000, "expanded": 250_000}
# the settings of a run, and the type of each as given to --set
SETTINGS = {"data": str, "epochs": int, "eta": float, "lmbda": float,
            "init": str, "n": int, "train_size": int, "augment": str}


def _init(init, activation_fn):
    # "corrected": the author's intended sqrt(1/n_in), and He for ReLU layers
    if init == "corrected" and activation_fn is ReLU:
        return "he"
    return init


def conv1(activation_fn=sigmoid, init="book"):
    return ConvPoolLayer(image_shape=(mini_batch_size, 1, 28, 28),
                         filter_shape=(20, 1, 5, 5), poolsize=(2, 2),
                         activation_fn=activation_fn, init=_init(init, activation_fn))


def conv2(activation_fn=sigmoid, init="book"):
    return ConvPoolLayer(image_shape=(mini_batch_size, 20, 12, 12),
                         filter_shape=(40, 20, 5, 5), poolsize=(2, 2),
                         activation_fn=activation_fn, init=_init(init, activation_fn))


def fc(n_in, n_out, activation_fn=sigmoid, p_dropout=0.0, init="book"):
    return FullyConnectedLayer(n_in=n_in, n_out=n_out, activation_fn=activation_fn,
                               p_dropout=p_dropout, init=_init(init, activation_fn))


def build(experiment, init="book", n=100):
    """The layers of ``experiment``'s network; ``n`` is the FC width of the
    expanded-data experiments."""
    act = {"dbl_conv_tanh": tanh}.get(experiment, sigmoid)
    if experiment in ("dbl_conv_relu", "expanded_data", "expanded_data_double_fc",
                      "double_fc_dropout", "ensemble"):
        act = ReLU
    if experiment == "shallow":
        return [fc(784, 100, init=init), SoftmaxLayer(n_in=100, n_out=10)]
    if experiment == "basic_conv":
        return [conv1(init=init), fc(20 * 12 * 12, 100, init=init),
                SoftmaxLayer(n_in=100, n_out=10)]
    if experiment == "omit_FC":
        return [conv1(init=init), SoftmaxLayer(n_in=20 * 12 * 12, n_out=10)]
    if experiment in ("dbl_conv", "dbl_conv_tanh", "regularized_dbl_conv",
                      "dbl_conv_relu"):
        return [conv1(act, init), conv2(act, init), fc(40 * 4 * 4, 100, act, init=init),
                SoftmaxLayer(n_in=100, n_out=10)]
    if experiment == "expanded_data":
        return [conv1(act, init), conv2(act, init), fc(40 * 4 * 4, n, act, init=init),
                SoftmaxLayer(n_in=n, n_out=10)]
    if experiment == "expanded_data_double_fc":
        return [conv1(act, init), conv2(act, init), fc(40 * 4 * 4, n, act, init=init),
                fc(n, n, act, init=init), SoftmaxLayer(n_in=n, n_out=10)]
    if experiment in ("double_fc_dropout", "ensemble"):
        return [conv1(act, init), conv2(act, init),
                fc(40 * 4 * 4, 1000, act, p_dropout=0.5, init=init),
                fc(1000, 1000, act, p_dropout=0.5, init=init),
                SoftmaxLayer(n_in=1000, n_out=10, p_dropout=0.5)]
    raise ValueError(f"unknown experiment {experiment!r}; choose one of "
                     f"{', '.join(EXPERIMENTS)}")


_data = {}


def load(name="mnist", path=None):
    """The book's data (``mnist``) or the expanded training set
    (``expanded``, built by scripts/expand_mnist.py), loaded once per
    process.  ``path``: another file of the same layout."""
    if (name, path) not in _data:
        if name == "mnist":
            _data[name, path] = network3.load_data_shared(path)
        elif name == "expanded":
            path = Path(path or network3.data.data_dir() / "mnist_expanded.pkl.gz")
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} is missing: run `python scripts/expand_mnist.py`")
            _data[name, path] = network3.load_data_shared(str(path))
        else:
            raise ValueError(f"unknown data set {name!r}; use mnist or expanded")
    return _data[name, path]


def machine():
    """The CPU model and the cores this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {cpus} cores"


#### Settings, runs and their keys
def settings(experiment, data=None, epochs=None, eta=None, lmbda=None, init=None,
             n=None, train_size=None, augment=None):
    """The complete, canonical settings of a run of ``experiment``: the
    book's where not given.  ``train_size``: None means all the images;
    ``augment``: None, or the repr of the augmentation."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of "
                         f"{', '.join(EXPERIMENTS)}")
    book_data, book_epochs, book_eta, book_lmbda = EXPERIMENTS[experiment]
    data = book_data if data is None else data
    if data not in FULL_SIZE:
        raise ValueError(f"data must be mnist or expanded, got {data!r}")
    epochs = book_epochs if epochs is None else epochs
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    eta = float(book_eta if eta is None else eta)
    if not eta > 0:
        raise ValueError(f"eta must be a positive number, got {eta!r}")
    lmbda = float(book_lmbda if lmbda is None else lmbda)
    if not lmbda >= 0:
        raise ValueError(f"lmbda must be zero or positive, got {lmbda!r}")
    init = "book" if init is None else init
    if init not in ("book", "corrected"):
        raise ValueError(f"init must be book or corrected, got {init!r}")
    if experiment in WIDTH_EXPERIMENTS:
        n = 100 if n is None else n
        if int(n) != n or n < 1:
            raise ValueError(f"n (the FC width) must be a positive integer, got {n!r}")
        n = int(n)
    elif n is not None:
        raise ValueError(f"n (the FC width) is a setting of {' and '.join(WIDTH_EXPERIMENTS)}"
                         f" only, not of {experiment}")
    if train_size is not None:
        if int(train_size) != train_size or train_size < mini_batch_size:
            raise ValueError(f"train_size must be an integer of at least "
                             f"{mini_batch_size} (one mini-batch), got {train_size!r}")
        train_size = None if train_size >= FULL_SIZE[data] else int(train_size)
    return {"data": data, "epochs": int(epochs), "eta": eta, "lmbda": lmbda,
            "init": init, "n": n, "train_size": train_size, "augment": augment or None}


def _format(value):
    return repr(float(value)) if isinstance(value, float) else str(value)


def run_key(experiment, run_settings, seed):
    """The key of a run: the experiment, every setting that is not None,
    and the seed, e.g. ``shallow data=mnist epochs=60 eta=0.1 init=book
    lmbda=0.0 seed=0``."""
    parts = [f"{name}={_format(value)}" for name, value in sorted(run_settings.items())
             if value is not None]
    return " ".join([experiment, *parts, f"seed={seed}"])


def record_settings(record):
    """A record's settings: as recorded, or, for records written before
    settings were recorded, derived from its ``config``."""
    if "settings" in record:
        return record["settings"]
    config, experiment = record["config"], record["experiment"]
    data = config.get("data", "mnist")
    train_size = config.get("train_size")
    if train_size is not None and train_size >= FULL_SIZE.get(data, float("inf")):
        train_size = None
    return {"data": data, "epochs": config["epochs"], "eta": float(config["eta"]),
            "lmbda": float(config["lmbda"]), "init": config.get("init", "book"),
            "n": config["layers"][2]["n_out"] if experiment in WIDTH_EXPERIMENTS else None,
            "train_size": train_size, "augment": config.get("augment")}


def record_key(record):
    """The run key of a record (None for a record that is not a run)."""
    if "experiment" not in record or "config" not in record or "seed" not in record:
        return None
    return run_key(record["experiment"], record_settings(record), record["seed"])


def _digest(text, n=10):
    return hashlib.sha1(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Run:
    """One training run: an experiment, its settings, a seed, and the
    results file its record goes to."""
    experiment: str
    settings: tuple          # sorted (name, value) pairs, from settings()
    seed: int
    out: Path
    index: int = 0           # which of the requested runs (the record's "run")

    @property
    def key(self):
        return run_key(self.experiment, dict(self.settings), self.seed)

    def label(self):
        """The experiment, the settings that differ from the book's, the seed."""
        book = settings(self.experiment)
        changed = [f"{k}={_format(v)}" for k, v in self.settings if v != book[k]]
        return " ".join([self.experiment, *changed, f"seed={self.seed}"])


def plan(experiments, runs=None, seed=0, sets=None, out=None,
         results_dir="results", **fixed):
    """The runs of ``experiments`` (names, or ["all"] for the book's
    run_experiments): ``runs`` seeds each (seed, seed+1, ...; default 1,
    and for "all" the book's 3 and its ensemble's 5), for each combination
    of the values in ``sets`` ({setting: [values]}), with the ``fixed``
    settings.  Records go to ``out``, default results_dir/<experiment>.jsonl."""
    sets = dict(sets or {})
    for name in list(sets) + list(fixed):
        if name not in SETTINGS:
            raise ValueError(f"unknown setting {name!r}; the settings are "
                             f"{', '.join(SETTINGS)}")
    both = set(sets) & {k for k, v in fixed.items() if v is not None}
    if both:
        raise ValueError(f"{', '.join(sorted(both))} given both as an option and "
                         "with --set; give it once")
    items = []
    for name in experiments:
        if name == "all":
            if sets.get("n") or fixed.get("n") is not None:
                raise ValueError("all runs the book's FC widths (100, 300, 1000); "
                                 "n cannot be set with it")
            items += [(exp, extra, runs or (ENSEMBLE_MEMBERS if exp == "ensemble"
                                            else BOOK_RUNS)) for exp, extra in BOOK]
        else:
            items.append((name, {}, runs or 1))
    if "n" in sets and not any(exp in WIDTH_EXPERIMENTS for exp, _, _ in items):
        raise ValueError(f"n (the FC width) is a setting of "
                         f"{' and '.join(WIDTH_EXPERIMENTS)} only")
    names, values = list(sets), [sets[name] for name in sets]
    planned, seen = [], set()
    for experiment, extra, count in items:
        for combination in itertools.product(*values):
            given = {k: v for k, v in fixed.items() if v is not None}
            given.update(zip(names, combination))
            given.update(extra)
            if experiment not in WIDTH_EXPERIMENTS and "n" in sets:
                given.pop("n")  # a swept width applies to the width experiments
            run_settings = tuple(sorted(settings(experiment, **given).items()))
            path = Path(out) if out else Path(results_dir) / f"{experiment}.jsonl"
            for r in range(count):
                run = Run(experiment, run_settings, seed + r, path, r)
                if (run.key, path) not in seen:
                    seen.add((run.key, path))
                    planned.append(run)
    return planned


def parse_set(text):
    """``"eta=0.01,0.03"`` -> ``("eta", [0.01, 0.03])`` (the --set option)."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not values.strip():
        raise ValueError(f"--set {text!r}: use NAME=VALUE[,VALUE...], e.g. eta=0.01,0.03")
    if name not in SETTINGS or name == "augment":
        raise ValueError(f"--set {text!r}: the settings that can be set are "
                         f"{', '.join(s for s in SETTINGS if s != 'augment')}")
    kind = SETTINGS[name]
    parsed = []
    for value in values.split(","):
        try:
            parsed.append(kind(float(value)) if kind is int else kind(value.strip()))
        except ValueError:
            raise ValueError(f"--set {text!r}: {value!r} is not a{'n' if kind is int else ''}"
                             f" {kind.__name__}") from None
    return name, parsed


#### Records
def encode_labels(labels):
    """Labels 0-9 as a string of digits (10,000 labels: 10,000 characters);
    other labels as a list."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        return labels.tolist()
    return (labels.astype(np.uint8) + ord("0")).tobytes().decode("ascii")


def decode_labels(value):
    """The inverse of ``encode_labels``: an int64 array."""
    if isinstance(value, str):
        return np.frombuffer(value.encode("ascii"), np.uint8).astype(np.int64) - ord("0")
    return np.asarray(value, dtype=np.int64)


def read_records(path):
    """The records of a results file (JSON Lines).  A line that is not JSON
    (a write cut off by a crash) is skipped, with a note on stderr."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"{path}:{number}: skipping a line that is not a JSON record",
                  file=sys.stderr)
    return records


def recorded_keys(path):
    """The run keys of the records in the results file ``path``."""
    return {key for key in map(record_key, read_records(path)) if key}


def append_record(path, record, force=False):
    """Append ``record`` to the results file ``path`` as one line, under an
    exclusive lock, flushed and fsynced.  Returns False, writing nothing,
    when the file already has this record (same ``run_id``: a result
    delivered twice) or, unless ``force``, a record of the same run key."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record) + "\n"
    key, run_id = record_key(record), record.get("run_id")
    with open(path, "a+") as f:
        if fcntl:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            text = f.read()
            for existing in text.splitlines():
                try:
                    other = json.loads(existing)
                except json.JSONDecodeError:
                    continue
                if (run_id and other.get("run_id") == run_id) or \
                        (not force and record_key(other) == key):
                    return False
            if text and not text.endswith("\n"):
                line = "\n" + line  # after a line cut off by a crash
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            if fcntl:
                fcntl.flock(f, fcntl.LOCK_UN)
    return True


def vote_records(records, labels):
    """The plurality vote (``network3.ensemble.vote``) of the test labels
    predicted by ``records`` (those that recorded them), scored against the
    true ``labels``.  Returns (EnsembleResult, members that voted)."""
    labels = np.asarray(labels)
    members = [r for r in records if r.get("test_predictions") is not None
               and len(decode_labels(r["test_predictions"])) == len(labels)]
    if not members:
        return None, []
    voted = vote(np.stack([decode_labels(r["test_predictions"]) for r in members]))
    wrong = np.flatnonzero(voted != labels)
    return EnsembleResult(1.0 - len(wrong) / len(labels), wrong, voted), members


#### One run
def train(spec, data=None, augment=None, report=None):
    """Train the run ``spec`` (``Run.spec``'s dict) and return ``(record,
    net)``; writes nothing.  ``data``: the (training, validation, test)
    data instead of the named set; ``augment``: the augmentation object
    (default: ``network3.augment.Augment()`` when the settings name one);
    ``report(state, **fields)``: told at the start of each epoch."""
    experiment, s, seed = spec["experiment"], spec["settings"], spec["seed"]
    training_data, validation_data, test_data = \
        data or load(s["data"], spec.get("data_file"))
    if s["train_size"]:
        training_data = subset(training_data, s["train_size"])
    if s["augment"] and augment is None:
        from .augment import Augment
        augment = Augment()
        if repr(augment) != s["augment"]:
            raise ValueError(f"this run's augmentation is {s['augment']}; only "
                             f"the default {augment!r} can be rebuilt from its name")
    epochs, eta = s["epochs"], s["eta"]
    network3.seed(seed)
    net = Network(build(experiment, s["init"], s["n"] or 100), mini_batch_size)
    config = {"epochs": epochs, "eta": eta, "lmbda": s["lmbda"],
              "mini_batch_size": mini_batch_size, "init": s["init"],
              "data": s["data"], "train_size": int(size(training_data)),
              "layers": [describe(layer) for layer in net.layers],
              "backend": network3.backend.backend(), "floatX": network3.floatX(),
              "augment": s["augment"]}

    def eta_at(epoch):
        # the book's constant eta, as a function of the epoch: SGD asks for
        # it at the start of each epoch, which is when progress is reported
        best = max((h["validation_accuracy"] for h in net.history), default=None)
        report("epoch", epoch=epoch, epochs=epochs, best_validation=best)
        return eta

    start = time.perf_counter()
    net.SGD(training_data, epochs, mini_batch_size, eta_at if report else eta,
            validation_data, test_data, lmbda=s["lmbda"], augment=augment)
    wall = time.perf_counter() - start
    record = {"experiment": experiment, "run": spec.get("index", 0), "seed": seed,
              "settings": dict(s), "config": config, "epochs": net.history,
              "best_validation_accuracy": net.best_validation_accuracy,
              "best_iteration": net.best_iteration,
              "test_accuracy": net.test_accuracy, "wall_seconds": wall,
              "machine": machine(),
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": spec.get("command"), "saved": None,
              "run_id": spec.get("run_id"),
              # the trained net's labels (after the last epoch, as saved)
              "validation_predictions": encode_labels(net.predict(as_array(validation_data[0]))),
              "test_predictions": encode_labels(net.predict(as_array(test_data[0])))}
    return record, net


#### The driver
@dataclass
class Outcome:
    """What became of a run: status "done", "skipped" or "failed"."""
    run: Run
    status: str = "queued"
    record: dict = None
    net: object = None
    error: str = None
    traceback: str = None
    attempts: int = 0
    where: str = ""
    detail: str = field(default="", repr=False)


class MissingDask(RuntimeError):
    pass


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise MissingDask(
            "running on Dask needs dask.distributed, which is not installed: "
            "pip install -e \".[cluster]\" (or pip install \"dask[distributed]\")"
        ) from None
    return distributed


def execute(runs, *, workers=None, scheduler=None, force=False, save=True,
            cache_dir=None, command=None, root=None, data=None, augment=None,
            raise_errors=False, on_event=None, stream=None, live=None):
    """Train ``runs`` (from ``plan``) and record each; returns an
    ``Outcome`` per run.  A run whose key is already in its results file is
    skipped (and says so) unless ``force``.  ``workers=K``: on a local Dask
    cluster of K worker processes (one thread each), with compile caches
    under ``cache_dir`` (default: ``worker_cache_dir()``);
    ``scheduler="tcp://host:port"``: on that Dask cluster; neither: one
    after another in this process.  ``data``/``augment``: objects to use
    instead of the named ones (in this process only).  ``raise_errors``:
    re-raise a run's error instead of going on with the others.
    ``on_event(message)``: called with each progress message from the
    workers.  Saved networks go to <results file's folder>/nets/; paths in
    the records are relative to ``root`` when inside it."""
    stream = stream or sys.stdout
    started = time.perf_counter()
    outcomes = [Outcome(run) for run in runs]
    done_keys = {}
    for outcome in outcomes:
        run = outcome.run
        if run.out not in done_keys:
            done_keys[run.out] = recorded_keys(run.out)
        if not force and run.key in done_keys[run.out]:
            outcome.status = "skipped"
            print(f"{run.label()}: skipped, already recorded in {run.out}", file=stream)
    todo = [o for o in outcomes if o.status == "queued"]
    options = dict(force=force, save=save, command=command, root=root)
    try:
        if todo and (workers or scheduler):
            _execute_dask(todo, workers, scheduler, cache_dir, on_event, stream,
                          live, options)
        elif todo:
            if data is None:  # a missing data file stops the command, not each run
                for name in {dict(o.run.settings)["data"] for o in todo}:
                    _data_file(name)
            _execute_here(todo, data, augment, raise_errors, stream, options)
    except KeyboardInterrupt:
        for outcome in todo:
            if outcome.status == "queued":
                outcome.status = "not finished"
        print_summary(outcomes, time.perf_counter() - started, stream)
        print("Interrupted: the runs done are recorded, the others left no record; "
              "the same command again resumes.", file=stream)
        raise
    if todo or len(outcomes) > 1:
        print_summary(outcomes, time.perf_counter() - started, stream)
    return outcomes


def _spec(run, options, **extra):
    return {"experiment": run.experiment, "settings": dict(run.settings),
            "seed": run.seed, "index": run.index, "key": run.key,
            "command": options["command"], "run_id": uuid.uuid4().hex, **extra}


def _finish(outcome, record, net_bytes=None, net=None, options=None):
    """Save the run's network and append its record (driver only)."""
    run = outcome.run
    if options["save"] and (net is not None or net_bytes is not None):
        path = run.out.parent / "nets" / f"{run.out.stem}-seed{run.seed}-{_digest(run.key, 8)}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        if net is not None:
            net.save(path)
        else:
            network3.data.atomic_write(path, net_bytes)
        root = Path(options["root"]).resolve() if options["root"] else None
        if root and path.resolve().is_relative_to(root):
            record["saved"] = str(path.resolve().relative_to(root))
        else:
            record["saved"] = str(path)
    written = append_record(run.out, record, force=options["force"])
    outcome.status, outcome.record = "done", record
    if not written:
        outcome.detail = " (a record of it was already written; not written again)"


@contextlib.contextmanager
def _interrupt_guard():
    """Notice Ctrl-C during a run, even where SGD catches it to end
    training cleanly: an interrupted run must leave no record."""
    hit = []
    if threading.current_thread() is not threading.main_thread():
        yield hit
        return

    def handler(signum, frame):
        hit.append(signum)
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield hit
    finally:
        signal.signal(signal.SIGINT, previous)


def _execute_here(todo, data, augment, raise_errors, stream, options):
    for number, outcome in enumerate(todo):
        run, s = outcome.run, dict(outcome.run.settings)
        print(f"{run.experiment}: run {number} of {len(todo)}, seed {run.seed}, "
              f"{s['epochs']} epochs, eta {s['eta']}, lmbda {s['lmbda']}, "
              f"init {s['init']}", file=stream)
        outcome.attempts, outcome.where = 1, "this process"
        try:
            with _interrupt_guard() as interrupted:
                record, net = train(_spec(run, options), data=data, augment=augment)
            if interrupted:
                raise KeyboardInterrupt
            _finish(outcome, record, net=net, options=options)
            outcome.net = net
        except Exception as err:
            if raise_errors:
                raise
            outcome.status, outcome.error = "failed", f"{type(err).__name__}: {err}"
            outcome.traceback = traceback.format_exc()
            print(f"{run.label()}: failed: {outcome.error}", file=stream)


#### On Dask
TOPIC = "network3-runs"


def worker_cache_dir():
    """Where the workers of a local cluster keep their compile caches by
    default: network3-workers/ in PyTensor's base_compiledir."""
    import pytensor
    return Path(pytensor.config.base_compiledir) / "network3-workers"


def worker_env(folder):
    """The environment that gives a worker process its own compile caches
    in ``folder``: PyTensor's (base_compiledir, which also holds PyTensor's
    Numba cache) and Numba's own (NUMBA_CACHE_DIR)."""
    folder = Path(folder).resolve()
    flags = [f for f in os.environ.get("PYTENSOR_FLAGS", "").split(",")
             if f.strip() and not f.strip().startswith("base_compiledir")]
    flags.append(f"base_compiledir={folder / 'pytensor'}")
    return {"PYTENSOR_FLAGS": ",".join(flags), "NUMBA_CACHE_DIR": str(folder / "numba"),
            "NETWORK3_WORKER_CACHE": str(folder)}


def local_cluster(workers, cache_dir=None, env=None):
    """A Dask cluster of ``workers`` worker processes on this machine
    (loopback only, no dashboard), one thread and one BLAS thread each,
    each with compile caches of its own under ``cache_dir``.  ``env``:
    more environment variables for the workers (they override those of
    ``worker_env``).  Use as a context manager.

    The worker processes re-import the main script when they start; a
    script that imports network3 at its top level fixes PyTensor's cache
    folder before the worker's own is set, which the runs detect."""
    import logging

    distributed = _import_distributed()
    cache_dir = Path(cache_dir) if cache_dir else worker_cache_dir()
    # no dashboard; the HTTP endpoints Dask serves anyway (health, metrics)
    # on loopback, on a free port
    http = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
    scheduler = {"cls": distributed.Scheduler,
                 "options": {"host": "127.0.0.1", "port": 0, "protocol": "tcp://", **http}}
    specs = {}
    for i in range(workers):
        folder = cache_dir / f"worker-{i}"
        specs[i] = {"cls": distributed.Nanny,
                    "options": {"host": "127.0.0.1", "protocol": "tcp://", "nthreads": 1,
                                "silence_logs": logging.ERROR, **http,
                                "env": {**worker_env(folder), **(env or {})}}}
    return distributed.SpecCluster(workers=specs, scheduler=scheduler,
                                   silence_logs=logging.ERROR, name="network3")


def _check_cache():
    """In a worker of ``local_cluster``: fail clearly when PyTensor was
    imported before the worker's own cache folder was set."""
    expected = os.environ.get("NETWORK3_WORKER_CACHE")
    if not expected:
        return
    import pytensor
    actual = Path(pytensor.config.base_compiledir).resolve()
    if actual != (Path(expected) / "pytensor").resolve():
        raise RuntimeError(
            f"this worker's PyTensor compiles into {actual}, not its own folder "
            f"{expected}: network3 was imported before the worker set it, "
            "because the script that started the cluster imports network3 at "
            "its top level (worker processes re-import it); import network3 "
            "inside `if __name__ == \"__main__\":` or a function")


def _worker_setup(spec):
    _check_cache()
    network3.set_backend(spec.get("backend"))
    network3.set_floatX(spec.get("floatX") or "float32")


def _task(spec):
    """A run on a Dask worker: its record and its saved network's bytes."""
    from distributed import get_worker

    worker = get_worker()

    def report(state, **fields):
        worker.log_event(TOPIC, {"key": spec["key"], "state": state, **fields})

    _worker_setup(spec)
    report("started", worker=worker.address, pid=os.getpid(), host=socket.gethostname())
    pause = float(os.environ.get("NETWORK3_RUN_PAUSE") or 0)  # for tests: a window
    if pause:                                                 # to kill the worker in
        time.sleep(pause)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        record, net = train(spec, report=report)
        if not spec.get("save"):
            return record, None
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "net.npz"
            net.save(path)
            return record, path.read_bytes()


def _cache_folders():
    """Where this worker's compile caches are (run on each worker)."""
    import pytensor
    return {"pytensor": str(Path(pytensor.config.base_compiledir).resolve()),
            "numba": os.environ.get("NUMBA_CACHE_DIR") or "(beside the source files)",
            "host": socket.gethostname()}


def _tiny_data():
    zeros = np.zeros((mini_batch_size, 784))
    labels = np.zeros(mini_batch_size, dtype=np.int64)
    return [(zeros, labels)] * 3


def _warm_task(specs):
    """Compile each network of ``specs`` (one per distinct network) by
    training it for one mini-batch: fills this worker's caches."""
    _worker_setup(specs[0])
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        for spec in specs:
            tiny = dict(spec, settings=dict(spec["settings"], epochs=1, train_size=None,
                                            augment=None))
            train(tiny, data=_tiny_data())
    return len(specs)


def _network_of(spec):
    # what decides the compiled graphs: the architecture, whether there is an
    # L2 term (lmbda is a shared value), the backend and float type
    s = spec["settings"]
    return (spec["experiment"], s["init"], s["n"], s["lmbda"] > 0,
            spec.get("backend"), spec.get("floatX"))


def warm_up(client, specs, stream):
    """On a cluster whose workers share a compile cache folder, compile each
    distinct network of ``specs`` once before the runs fan out: on one
    worker per machine, one machine after another."""
    folders = client.run(_cache_folders)
    seen, shared = {}, False
    for info in folders.values():
        for kind in ("pytensor", "numba"):
            shared |= seen.get((kind, info[kind]), 0) > 0
            seen[kind, info[kind]] = seen.get((kind, info[kind]), 0) + 1
    if not shared:
        return
    networks = list({_network_of(s): s for s in specs}.values())
    one_per_host = {}
    for address, info in sorted(folders.items()):
        one_per_host.setdefault(info["host"], address)
    print(f"The workers share a compile cache: compiling {len(networks)} "
          f"network(s) once on {len(one_per_host)} worker(s) first", file=stream)
    for address in one_per_host.values():
        client.submit(_warm_task, networks, workers=[address],
                      allow_other_workers=False, pure=False).result()


class Display:
    """One line per run: live (redrawn in place) on a terminal, otherwise a
    new line at each change."""

    def __init__(self, outcomes, stream, live=None):
        self.outcomes, self.stream = outcomes, stream
        self.live = stream.isatty() if live is None else live
        self.text = {o.run.key: "queued" for o in outcomes}
        self.drawn = 0
        if self.live:
            self.draw()
        else:
            for o in outcomes:
                print(f"{o.run.label()}: queued", file=stream)

    def update(self, outcome, text):
        if self.text[outcome.run.key] == text:
            return
        self.text[outcome.run.key] = text
        if self.live:
            self.draw()
        else:
            print(f"{outcome.run.label()}: {text}", file=self.stream, flush=True)

    def draw(self):
        width = max(len(o.run.label()) for o in self.outcomes)
        lines = [f"{o.run.label():<{width}}  {self.text[o.run.key]}" for o in self.outcomes]
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.stream.flush()
        self.drawn = len(lines)


def _percent(value):
    return "-" if value is None else f"{value:.2%}"


def _done_text(outcome):
    r = outcome.record
    return (f"done: test {_percent(r['test_accuracy'])} (best validation "
            f"{_percent(r['best_validation_accuracy'])}), "
            f"{r['wall_seconds'] / 60:.1f} min{outcome.detail}")


def _execute_dask(todo, workers, scheduler, cache_dir, on_event, stream, live, options):
    distributed = _import_distributed()
    backend, float_type = network3.backend.backend(), network3.floatX()
    data_files = {}
    if not scheduler:  # workers on this machine read the data files found here
        for o in todo:
            name = dict(o.run.settings)["data"]
            if name not in data_files:
                data_files[name] = _data_file(name)
    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(distributed.Client(scheduler, set_as_default=False))
        else:
            cluster = stack.enter_context(local_cluster(workers, cache_dir))
            client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
        specs = {}
        for o in todo:
            data_file = data_files.get(dict(o.run.settings)["data"])
            specs[o.run.key] = _spec(o.run, options, backend=backend, floatX=float_type,
                                     save=options["save"],
                                     data_file=str(data_file) if data_file else None)
        if scheduler:
            warm_up(client, list(specs.values()), stream)
        events = queue.Queue()
        client.subscribe_topic(TOPIC, lambda event: events.put(event[1]))
        display = Display(todo, stream, live)
        by_key = {o.run.key: o for o in todo}
        futures = {}
        for o in todo:
            future = client.submit(_task, specs[o.run.key], pure=False,
                                   key=f"network3-run-{_digest(o.run.key, 16)}")
            futures[future] = o
        pending = set(futures)
        try:
            while pending:
                while True:
                    try:
                        message = events.get_nowait()
                    except queue.Empty:
                        break
                    outcome = by_key.get(message.get("key"))
                    if outcome is None or outcome.status != "queued":
                        continue
                    if on_event:
                        on_event(message)
                    if message["state"] == "started":
                        outcome.attempts += 1
                        outcome.where = message["worker"]
                        again = f" (attempt {outcome.attempts})" if outcome.attempts > 1 else ""
                        display.update(outcome, f"started on {message['worker']}{again}")
                    elif message["state"] == "epoch":
                        best = message.get("best_validation")
                        display.update(outcome, f"epoch {message['epoch'] + 1} of "
                                       f"{message['epochs']}" + (
                                           "" if best is None else
                                           f", best validation {best:.2%}"))
                for future in [f for f in pending if f.done()]:
                    pending.discard(future)
                    outcome = futures[future]
                    try:
                        record, net_bytes = future.result()
                    except Exception as err:
                        outcome.status = "failed"
                        outcome.error = f"{type(err).__name__}: {err}"
                        outcome.traceback = "".join(traceback.format_exception(err))
                        display.update(outcome, f"failed: {outcome.error}")
                        continue
                    _finish(outcome, record, net_bytes=net_bytes, options=options)
                    display.update(outcome, _done_text(outcome))
                time.sleep(0.1)
        finally:
            for future in pending:
                future.cancel()
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(TOPIC)


def _data_file(name):
    """The data file the runs of data set ``name`` read (built first, for
    MNIST, if it is missing, so that workers never build it at once)."""
    if name == "mnist":
        path = network3.data.default_path()
        if not path.exists():
            network3.data.build_mnist_pkl(path)
    else:
        path = network3.data.data_dir() / "mnist_expanded.pkl.gz"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: run `python scripts/expand_mnist.py`")
    return Path(path).resolve()


def print_summary(outcomes, seconds, stream):
    """The table of all runs at the end, then the errors of failed runs."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    print(f"\nSummary: {counts['done']} done, {counts['skipped']} skipped "
          f"(already recorded), {counts['failed']} failed, in {seconds / 60:.1f} min",
          file=stream)
    rows = [("run", "status", "test", "best validation", "minutes", "where")]
    for o in outcomes:
        r = o.record or {}
        rows.append((o.run.label(), o.status, _percent(r.get("test_accuracy")),
                     _percent(r.get("best_validation_accuracy")),
                     f"{r['wall_seconds'] / 60:.1f}" if r else "-",
                     o.where + (f" ({o.attempts} attempts)" if o.attempts > 1 else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=stream)
    for o in outcomes:
        if o.status == "failed":
            print(f"\n{o.run.label()} failed:\n{o.traceback or o.error}", file=stream)


def ensemble_from_records(path, members, labels):
    """The vote of the ensemble members ``members`` (runs) that have records
    in the results file ``path``: (EnsembleResult, records that voted)."""
    keys = {run.key for run in members}
    records = [r for r in read_records(path) if record_key(r) in keys]
    latest = {record_key(r): r for r in records}  # a forced rerun replaces
    return vote_records(list(latest.values()), labels)
