"""The driver: what ``scripts/conv.py`` does with the runs it planned.
``execute`` skips the runs already recorded, then trains the rest in this
process (one after another, printing the book's lines) or on Dask
(``cluster.py``), and writes each finished run's record; only the driver
writes records and saved networks.

Every run checkpoints each epoch (``Run.checkpoint``): the same command
after a kill or Ctrl-C continues each unfinished run from its last
finished epoch, and a Dask task whose worker died continues from it on
another worker.  The checkpoint is removed once the record is written."""

import contextlib
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .. import backend
from ..data import atomic_write, leftover_parts
from . import training
from .display import print_summary
from .records import append_record, recorded_keys, versions
from .runs import Run, digest


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


def execute(runs, *, workers=None, scheduler=None, force=False, save=True,
            cache_dir=None, checkpoint_dir=None, command=None, root=None, data=None,
            augment=None, raise_errors=False, on_event=None, stream=None, live=None):
    """Train ``runs`` (from ``plan``) and record each; returns an
    ``Outcome`` per run.  A run whose key is already in its results file is
    skipped (and says so) unless ``force``.  ``workers=K``: on a local Dask
    cluster of K worker processes (one thread each), with compile caches
    under ``cache_dir`` (default: ``worker_cache_dir()``);
    ``scheduler="tcp://host:port"``: on that Dask cluster; neither: one
    after another in this process.  Checkpoints go to ``checkpoint_dir``
    (default: checkpoints/ beside each results file).  ``data``/``augment``:
    objects to use instead of the named ones (in this process only).
    ``raise_errors``: re-raise a run's error instead of going on with the
    others.  ``on_event(message)``: called with each progress message from
    the workers.  Saved networks go to <results file's folder>/nets/; paths
    in the records are relative to ``root`` when inside it."""
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
            # left behind if a command died between the record and the removal
            _remove_checkpoint(run.checkpoint(checkpoint_dir))
            print(f"{run.label()}: skipped, already recorded in {run.out}", file=stream)
    todo = [o for o in outcomes if o.status == "queued"]
    options = dict(force=force, save=save, command=command, root=root,
                   checkpoint_dir=checkpoint_dir)
    try:
        if todo and (workers or scheduler):
            from . import cluster  # Dask is imported only when it is used
            specs = {o.run.key: _spec(o.run, options, backend=backend.backend(),
                                      floatX=backend.floatX(), save=save,
                                      versions=versions()) for o in todo}
            if not scheduler:  # workers of this machine read the files found here
                for spec in specs.values():
                    spec["data_file"] = str(training.data_file(spec["settings"]["data"]))
            cluster.execute(todo, specs, lambda o, r, b: _finish(o, r, options, net_bytes=b),
                            workers=workers, scheduler=scheduler, cache_dir=cache_dir,
                            on_event=on_event, stream=stream, live=live)
        elif todo:
            if data is None:  # a missing data file stops the command, not each run
                for name in {dict(o.run.settings)["data"] for o in todo}:
                    training.data_file(name)
            _execute_here(todo, data, augment, raise_errors, stream, options)
    except KeyboardInterrupt:
        for outcome in todo:
            if outcome.status == "queued":
                outcome.status = "not finished"
        print_summary(outcomes, time.perf_counter() - started, stream)
        where = Path(checkpoint_dir) if checkpoint_dir else "checkpoints/ beside the records"
        print("Interrupted: the runs done are recorded; the same command again resumes "
              f"each unfinished run from its last finished epoch (checkpoints in {where}).",
              file=stream)
        raise
    if todo or len(outcomes) > 1:
        print_summary(outcomes, time.perf_counter() - started, stream)
    return outcomes


def _spec(run, options, **extra):
    # what a run needs to train, anywhere: plain values only, for Dask
    checkpoint = run.checkpoint(options["checkpoint_dir"]).resolve()
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    return {"experiment": run.experiment, "settings": dict(run.settings),
            "seed": run.seed, "index": run.index, "key": run.key,
            "command": options["command"], "run_id": uuid.uuid4().hex,
            "checkpoint": str(checkpoint), **extra}


def _net_path(run, record):
    """Where the run's network is saved: never over a file that is there
    already (a record of an earlier run, with --force, points to it)."""
    base = run.out.parent / "nets" / f"{run.out.stem}-seed{run.seed}-{digest(run.key, 8)}"
    path = base.with_name(base.name + ".npz")
    if path.exists():
        path = base.with_name(f"{base.name}-{record['run_id'][:8]}.npz")
    return path


def _remove_checkpoint(path):
    # and the half-written ones of a run killed while writing it (13 MB
    # each for beyond's network), which nothing would read
    for file in [path, *leftover_parts(path)]:
        file.unlink(missing_ok=True)


def _finish(outcome, record, options, net_bytes=None, net=None):
    """Save the run's network, append its record, remove its checkpoint."""
    run = outcome.run
    if options["save"] and (net is not None or net_bytes is not None):
        path = _net_path(run, record)
        path.parent.mkdir(parents=True, exist_ok=True)
        if net is not None:
            net.save(path)
        else:
            atomic_write(path, net_bytes)
        root = Path(options["root"]).resolve() if options["root"] else None
        if root and path.resolve().is_relative_to(root):
            record["saved"] = str(path.resolve().relative_to(root))
        else:
            record["saved"] = str(path)
    written = append_record(run.out, record, force=options["force"])
    # only now: a kill before this line leaves the checkpoint, and the same
    # command trains nothing again (the checkpoint has every epoch)
    _remove_checkpoint(run.checkpoint(options["checkpoint_dir"]))
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
                record, net = training.train(_spec(run, options), data=data,
                                             augment=augment)
            if interrupted:
                raise KeyboardInterrupt
            _finish(outcome, record, options, net=net)
            outcome.net = net
        except Exception as err:
            if raise_errors:
                raise
            outcome.status, outcome.error = "failed", f"{type(err).__name__}: {err}"
            outcome.traceback = traceback.format_exc()
            print(f"{run.label()}: failed: {outcome.error}", file=stream)
