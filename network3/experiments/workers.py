"""What runs on a Dask worker: a run (``task``), returning its record and
its saved network's bytes to the driver, which writes them; the compile
warm-up (``warm_task``); and the checks that a worker can train runs that
equal the driver's (one thread; the driver's network3, PyTensor and Numba;
its own compile cache when it was given one)."""

import contextlib
import os
import socket
import tempfile
from pathlib import Path

import numpy as np

import network3

from .book import mini_batch_size
from .records import versions
from .training import train

TOPIC = "network3-runs"  # the Dask event topic of the runs' progress messages
MATCHING = ("network3", "pytensor", "numba")  # versions a worker must share


def refusal(nthreads, theirs, ours):
    """Why a worker with ``nthreads`` threads and ``theirs`` versions cannot
    run the driver's runs (``ours``: the driver's versions), or None."""
    reasons = []
    if nthreads != 1:
        # network3's random generator, the float type and stdout are per
        # process: two runs at once in one process would share them
        reasons.append(f"it has {nthreads} threads; network3 needs one run per "
                       "process (start workers with --nthreads 1)")
    differ = [f"{name} {theirs.get(name)} (the driver has {ours.get(name)})"
              for name in MATCHING if theirs.get(name) != ours.get(name)]
    if differ:
        reasons.append("it runs " + ", ".join(differ))
    return "; ".join(reasons) or None


def facts(dask_worker):
    """This worker's threads, versions and compile-cache folders (run on
    each worker by ``client.run``)."""
    import pytensor
    return {"nthreads": dask_worker.state.nthreads, "versions": versions(),
            "host": socket.gethostname(),
            "pytensor": str(Path(pytensor.config.base_compiledir).resolve()),
            "numba": os.environ.get("NUMBA_CACHE_DIR") or "(beside the source files)"}


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


def _setup(spec, worker):
    # a worker that joined after the driver's check is checked here
    why = refusal(worker.state.nthreads, versions(), spec.get("versions") or versions())
    if why:
        raise RuntimeError(f"worker {worker.address} cannot run network3's runs: {why}")
    _check_cache()
    network3.set_backend(spec.get("backend"))
    network3.set_floatX(spec.get("floatX") or "float32")


def task(spec):
    """A run on this worker, from its checkpoint if an earlier attempt left
    one: its record and its saved network's bytes."""
    from distributed import get_worker

    worker = get_worker()

    def report(state, **fields):
        worker.log_event(TOPIC, {"key": spec["key"], "state": state, **fields})

    _setup(spec, worker)
    report("started", worker=worker.address, pid=os.getpid(), host=socket.gethostname())
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        record, net = train(spec, report=report)
        if not spec.get("save"):
            return record, None
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "net.npz"
            net.save(path)
            return record, path.read_bytes()


def _tiny_data():
    zeros = np.zeros((mini_batch_size, 784))
    labels = np.zeros(mini_batch_size, dtype=np.int64)
    return [(zeros, labels)] * 3


def warm_task(specs):
    """Compile each network of ``specs`` (one per distinct network) by
    training it for one mini-batch: fills this worker's caches."""
    from distributed import get_worker

    _setup(specs[0], get_worker())
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        for spec in specs:
            tiny = dict(spec, checkpoint=None,  # not the run's: it is no epoch of it
                        settings=dict(spec["settings"], epochs=1, train_size=None,
                                      augment=None))
            train(tiny, data=_tiny_data())
    return len(specs)
