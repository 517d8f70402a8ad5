"""One run: its data (read once per process) and its training, which
returns the run's record and writes nothing but the run's checkpoint."""

import time
from datetime import UTC, datetime
from pathlib import Path

import network3

from ..data import as_array, size, subset
from ..network import Network
from ..saving import describe
from .book import SCHEDULE, build, mini_batch_size
from .book import eta_at as eta_at_epoch
from .records import accelerator, commit, encode_labels, machine, versions

DATA_SETS = ("mnist", "expanded")
# the data sets read in this process, by the resolved path of their file:
# the expanded set is 784 MB of float32 images, read once however the
# caller names its file (None, a str, a relative or an absolute Path)
_data = {}


def data_file(name, path=None):
    """The resolved path of data set ``name``'s file (``path``: another file
    of the same layout).  MNIST's is built the first time, here, so that
    Dask workers never build it at once; the expanded set is
    scripts/expand_mnist.py's."""
    if name not in DATA_SETS:
        raise ValueError(f"unknown data set {name!r}; use mnist or expanded")
    if path is not None:
        path = Path(path)
    elif name == "mnist":
        path = network3.data.default_path()
        if not path.exists():
            network3.data.build_mnist_pkl(path)
    else:
        path = network3.data.data_dir() / "mnist_expanded.pkl.gz"
    if not path.exists():
        hint = "run `python scripts/expand_mnist.py`" if name == "expanded" \
            else network3.data.BUILD_HINT
        raise FileNotFoundError(f"{path} is missing: {hint}")
    return path.resolve()


def load(name="mnist", path=None):
    """The book's data (``mnist``) or the expanded training set
    (``expanded``), as ``load_data_shared`` gives it, read once per
    process.  ``path``: another file of the same layout."""
    key = data_file(name, path)
    if key not in _data:
        _data[key] = network3.load_data_shared(str(key))
    return _data[key]


def train(spec, data=None, augment=None, report=None):
    """Train the run ``spec`` (the driver's dict: experiment, settings,
    seed, checkpoint, ...) and return ``(record, net)``.  With
    ``spec["checkpoint"]`` (a path), SGD saves the run there at the end of
    each epoch and, if the file is there when it starts, continues from it:
    the record says from which epoch (``resumed_from``).  ``data``: the
    (training, validation, test) data instead of the named set; ``augment``:
    the augmentation object (default: ``network3.augment.Augment()`` when
    the settings name one); ``report(state, **fields)``: told at the start
    of each epoch."""
    experiment, s, seed = spec["experiment"], spec["settings"], spec["seed"]
    training_data, validation_data, test_data = \
        data or load(s["data"], spec.get("data_file"))
    if s["train_size"]:
        training_data = subset(training_data, s["train_size"])
    if s["augment"] and augment is None:
        from ..augment import Augment
        augment = Augment.parse(s["augment"])  # rebuilt from its name
        if repr(augment) != s["augment"]:
            raise ValueError(f"this run's augmentation is {s['augment']}, not "
                             f"{augment!r} as Augment writes it")
    epochs, eta = s["epochs"], s["eta"]
    network3.seed(seed)
    net = Network(build(experiment, s["init"], s["n"] or 100, s.get("arch")),
                  mini_batch_size)
    config = {"epochs": epochs, "eta": eta, "lmbda": s["lmbda"],
              "mini_batch_size": mini_batch_size, "init": s["init"],
              "data": s["data"], "train_size": int(size(training_data)),
              "layers": [describe(layer) for layer in net.layers],
              "backend": network3.backend.backend(), "floatX": network3.floatX(),
              "augment": s["augment"], "momentum": s.get("momentum") or 0.0,
              "arch": s.get("arch"),
              # [factor, every so many epochs], or None for the book's constant eta
              "schedule": None if experiment not in SCHEDULE else
              [SCHEDULE[experiment][0], max(1, epochs // SCHEDULE[experiment][1])]}

    def eta_at(epoch):
        # the book's constant eta, as a function of the epoch: SGD asks for
        # it at the start of each epoch, which is when progress is reported.
        # Given in every run, with or without Dask: a checkpoint is only
        # continued with the same arguments, and this is one.
        if report:
            best = max((h["validation_accuracy"] for h in net.history), default=None)
            report("epoch", epoch=epoch, epochs=epochs, best_validation=best)
        return eta_at_epoch(experiment, eta, epoch, epochs)

    checkpoint = {"checkpoint": spec["checkpoint"]} if spec.get("checkpoint") else {}
    start = time.perf_counter()
    net.SGD(training_data, epochs, mini_batch_size, eta_at, validation_data, test_data,
            lmbda=s["lmbda"], augment=augment, momentum=s.get("momentum") or 0.0,
            **checkpoint)
    resumed_from = getattr(net, "resumed_from", None)
    # the run's time: this call's, and that of the epochs trained before it
    # resumed (the time lost to the interruption is not counted)
    earlier = sum(h["seconds"] for h in net.history[:resumed_from or 0])
    record = {"experiment": experiment, "run": spec.get("index", 0), "seed": seed,
              "settings": dict(s), "config": config, "epochs": net.history,
              "best_validation_accuracy": net.best_validation_accuracy,
              "best_iteration": net.best_iteration,
              "test_accuracy": net.test_accuracy,
              "wall_seconds": time.perf_counter() - start + earlier,
              "resumed_from": resumed_from, "machine": machine(),
              "versions": versions(), "commit": commit(), "accelerator": accelerator(),
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": spec.get("command"), "saved": None,
              "run_id": spec.get("run_id"),
              # the trained net's labels (after the last epoch, as saved)
              "validation_predictions": encode_labels(net.predict(as_array(validation_data[0]))),
              "test_predictions": encode_labels(net.predict(as_array(test_data[0])))}
    return record, net
