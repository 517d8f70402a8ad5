"""Runs and their keys.  A run is an experiment, its settings (data,
epochs, eta, lmbda, init, FC width ``n``, training-set size, augmentation,
momentum, another network ``arch``) and a seed; its key names all of them,
e.g. ``shallow data=mnist epochs=60 eta=0.1 init=book lmbda=0.0 seed=1``.
The key is what says that a run is already recorded, and it names the
run's checkpoint file.  ``plan`` expands experiments, seeds and ``--set``
grids into runs, checking every setting before anything runs."""

import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from .book import (
    ARCHS,
    AUGMENT,
    BOOK,
    BOOK_RUNS,
    ENSEMBLE_MEMBERS,
    EXPERIMENTS,
    FULL_SIZE,
    INIT,
    WIDTH_EXPERIMENTS,
    mini_batch_size,
)

# the settings of a run, and the type of each as given to --set
SETTINGS = {"data": str, "epochs": int, "eta": float, "lmbda": float,
            "init": str, "n": int, "train_size": int, "augment": str, "momentum": float,
            "arch": str}


def _whole(value):
    # a whole number given as int or float (1 and 1.0, not 1.5 or True)
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and int(value) == value)


def settings(experiment, data=None, epochs=None, eta=None, lmbda=None, init=None,
             n=None, train_size=None, augment=None, momentum=None, arch=None):
    """The complete, canonical settings of a run of ``experiment``: the
    book's where not given.  ``train_size``: None means all the images;
    ``augment``: None, or the repr of the augmentation; ``momentum``: None
    (or 0) for the book's plain SGD; ``arch``: None for the experiment's
    own network, or the name of another (``book.ARCHS``).  A value that
    cannot be trained raises ValueError naming it."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of "
                         f"{', '.join(EXPERIMENTS)}")
    book_data, book_epochs, book_eta, book_lmbda = EXPERIMENTS[experiment]
    data = book_data if data is None else data
    if data not in FULL_SIZE:
        raise ValueError(f"data must be mnist or expanded, got {data!r}")
    epochs = book_epochs if epochs is None else epochs
    if not _whole(epochs) or epochs < 1:
        raise ValueError(f"epochs must be a positive whole number, got {epochs!r}")
    eta = float(book_eta if eta is None else eta)
    if not (eta > 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a positive number, got {eta!r}")
    lmbda = float(book_lmbda if lmbda is None else lmbda)
    if not (lmbda >= 0 and math.isfinite(lmbda)):
        raise ValueError(f"lmbda must be zero or positive, got {lmbda!r}")
    init = INIT.get(experiment, "book") if init is None else init
    if init not in ("book", "corrected"):
        raise ValueError(f"init must be book or corrected, got {init!r}")
    if experiment in WIDTH_EXPERIMENTS:
        n = 100 if n is None else n
        if not _whole(n) or n < 1:
            raise ValueError(f"n (the FC width) must be a positive whole number, got {n!r}")
        n = int(n)
    elif n is not None:
        raise ValueError(f"n (the FC width) is a setting of {' and '.join(WIDTH_EXPERIMENTS)}"
                         f" only, not of {experiment}")
    if train_size is not None:
        if not _whole(train_size) or train_size < mini_batch_size:
            raise ValueError(f"train_size must be a whole number of at least "
                             f"{mini_batch_size} (one mini-batch), got {train_size!r}")
        train_size = None if train_size >= FULL_SIZE[data] else int(train_size)
    if momentum is not None:
        if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be at least 0 and below 1, got {momentum!r}")
        # 0 is plain SGD: the same run (and key) as none given
        momentum = float(momentum) or None
    if arch is not None and experiment not in ARCHS:
        raise ValueError(f"arch is a setting of {' and '.join(ARCHS)} only, "
                         f"not of {experiment}")
    if arch is not None and arch not in ARCHS[experiment]:
        raise ValueError(f"arch must be one of {', '.join(ARCHS[experiment])} "
                         f"for {experiment}, got {arch!r}")
    return {"data": data, "epochs": int(epochs), "eta": eta, "lmbda": lmbda,
            "init": init, "n": n, "train_size": train_size,
            "augment": augment or AUGMENT.get(experiment), "momentum": momentum,
            "arch": arch}


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
    settings were recorded, derived from its ``config``.  A setting added
    later (momentum, arch) is None where a record predates it."""
    if "settings" in record:
        return {"momentum": None, "arch": None, **record["settings"]}
    config, experiment = record["config"], record["experiment"]
    data = config.get("data", "mnist")
    train_size = config.get("train_size")
    if train_size is not None and train_size >= FULL_SIZE.get(data, float("inf")):
        train_size = None
    return {"data": data, "epochs": config["epochs"], "eta": float(config["eta"]),
            "lmbda": float(config["lmbda"]), "init": config.get("init", "book"),
            "n": config["layers"][2]["n_out"] if experiment in WIDTH_EXPERIMENTS else None,
            "train_size": train_size, "augment": config.get("augment"),
            "momentum": config.get("momentum") or None, "arch": config.get("arch")}


def record_key(record):
    """The run key of a record (None for a record that is not a run)."""
    if "experiment" not in record or "config" not in record or "seed" not in record:
        return None
    return run_key(record["experiment"], record_settings(record), record["seed"])


def digest(text, n=10):
    """A short, stable name for ``text`` (a run key) in file names."""
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

    def checkpoint(self, folder=None):
        """The run's checkpoint file: in ``folder``, default checkpoints/
        beside its results file, named by its key (two commands that train
        the same run share it: they compute the same epochs)."""
        folder = Path(folder) if folder else self.out.parent / "checkpoints"
        return folder / f"{self.experiment}-seed{self.seed}-{digest(self.key, 12)}.npz"


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
    if runs is not None and (not _whole(runs) or runs < 1):
        raise ValueError(f"runs must be a positive whole number, got {runs!r}")
    if not _whole(seed) or seed < 0:
        raise ValueError(f"seed must be a whole number of at least 0, got {seed!r}")
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
    """``"eta=0.01,0.03"`` -> ``("eta", [0.01, 0.03])`` (the --set option).
    A whole-number setting takes whole numbers only: ``epochs=1.5`` is an
    error, not 1 epoch."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not values.strip():
        raise ValueError(f"--set {text!r}: use NAME=VALUE[,VALUE...], e.g. eta=0.01,0.03")
    if name not in SETTINGS or name == "augment":
        raise ValueError(f"--set {text!r}: unknown setting {name!r}; the settings that "
                         f"can be set are {', '.join(s for s in SETTINGS if s != 'augment')}")
    kind = SETTINGS[name]
    what = {int: "a whole number", float: "a number", str: "a name"}[kind]
    parsed = []
    for value in values.split(","):
        try:
            parsed.append(kind(value.strip()))
        except ValueError:
            raise ValueError(f"--set {text!r}: {name} must be {what}, "
                             f"got {value.strip()!r}") from None
    return name, parsed
