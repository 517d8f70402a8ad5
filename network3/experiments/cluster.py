"""Runs on Dask (``pip install "network3[cluster]"``): a local cluster of
worker processes (``workers=K``) or an existing cluster
(``scheduler="tcp://host:port"``).  Dask schedules the tasks, reruns those
whose worker died (up to its ``allowed-failures``) and retries those that
raised (``RETRIES``); each continues from the run's checkpoint.  The
driver takes the results as they complete and writes the records.

PyTensor's and Numba's on-disk compile caches are not safe to fill from
several processes at once: each worker of a local cluster gets cache
folders of its own (``local_cluster``), and on an existing cluster whose
workers share a cache folder the driver first compiles each distinct
network once on one worker (``warm_up``) before the runs fan out."""

import contextlib
import logging
import os
import traceback
from pathlib import Path

from .display import Display, done_text, progress_text
from .records import versions
from .runs import digest
from .workers import TOPIC, facts, refusal, task, warm_task

RETRIES = 2  # a run that raised (an out-of-memory worker, a full disk) is tried again


class ClusterError(RuntimeError):
    """Dask is missing, or the cluster's workers cannot run the runs."""


class MissingDask(ClusterError):
    pass


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise MissingDask(
            "running on Dask needs dask.distributed, which is not installed: "
            "pip install -e \".[cluster]\" (or pip install \"dask[distributed]\")"
        ) from None
    return distributed


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
    distributed = import_distributed()
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


def check_workers(found, ours):
    """Refuse the cluster (ClusterError naming each worker and why) if a
    worker of ``found`` (``facts`` per worker address) cannot run runs
    equal to the driver's (``ours``: the driver's versions)."""
    problems = [f"{address}: {why}" for address, info in sorted(found.items())
                if (why := refusal(info["nthreads"], info["versions"], ours))]
    if problems:
        raise ClusterError("refusing this Dask cluster, whose workers' runs would not be "
                           "the driver's:\n  " + "\n  ".join(problems))


def warm_up(client, found, specs, stream):
    """On a cluster whose workers share a compile cache folder (``found``:
    ``facts`` per worker), compile each distinct network of ``specs`` once
    before the runs fan out: on one worker per machine, one after another."""
    # (a folder of the same name on two machines may be one network folder)
    folders = [(kind, info[kind]) for info in found.values() for kind in ("pytensor", "numba")]
    if len(set(folders)) == len(folders):
        return  # every worker has caches of its own

    def network(spec):
        # what decides the compiled graphs: the network, whether there
        # is an L2 term (lmbda is a shared value) or momentum, the backend
        # and float type
        s = spec["settings"]
        return (spec["experiment"], s.get("arch"), s["init"], s["n"], s["lmbda"] > 0,
                bool(s.get("momentum")), spec.get("backend"), spec.get("floatX"))

    networks = list({network(s): s for s in specs}.values())
    one_per_host = {}
    for address, info in sorted(found.items()):
        one_per_host.setdefault(info["host"], address)
    print(f"The workers share a compile cache: compiling {len(networks)} "
          f"network(s) once on {len(one_per_host)} worker(s) first", file=stream)
    for address in one_per_host.values():
        client.submit(warm_task, networks, workers=[address],
                      allow_other_workers=False, pure=False).result()


def execute(todo, specs, finish, *, workers=None, scheduler=None, cache_dir=None,
            on_event=None, stream, live=None):
    """Train the runs of ``todo`` (outcomes) on Dask, ``specs`` by run key;
    ``finish(outcome, record, net_bytes)`` writes each finished run."""
    distributed = import_distributed()
    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(distributed.Client(scheduler, set_as_default=False))
        else:
            cluster = stack.enter_context(local_cluster(workers, cache_dir))
            client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
        found = client.run(facts)
        check_workers(found, versions())
        if scheduler:
            warm_up(client, found, list(specs.values()), stream)
        display = Display(todo, stream, live)
        by_key = {o.run.key: o for o in todo}

        def on_progress(event):  # on Dask's thread, as each message arrives
            message = event[1]
            outcome = by_key.get(message.get("key"))
            if outcome is None or outcome.status != "queued":
                return
            if on_event:
                on_event(message)
            if message["state"] == "started":
                outcome.attempts += 1
                outcome.where = message["worker"]
            display.update(outcome, progress_text(outcome, message))

        client.subscribe_topic(TOPIC, on_progress)
        stack.callback(_quietly, client.unsubscribe_topic, TOPIC)
        futures = {client.submit(task, specs[o.run.key], pure=False, retries=RETRIES,
                                 key=f"network3-run-{digest(o.run.key, 16)}"): o
                   for o in todo}
        stack.callback(_quietly, client.cancel, list(futures))  # on Ctrl-C: stop the rest
        for future in distributed.as_completed(futures, loop=client.loop):
            outcome = futures[future]
            try:
                record, net_bytes = future.result()
            except Exception as err:
                outcome.status = "failed"
                outcome.error = f"{type(err).__name__}: {err}"
                outcome.traceback = "".join(traceback.format_exception(err))
                display.update(outcome, f"failed: {outcome.error}")
                continue
            finish(outcome, record, net_bytes)
            display.update(outcome, done_text(outcome))


def _quietly(function, *args):
    # cleaning up after the runs, or after Ctrl-C: a closing client may refuse
    with contextlib.suppress(Exception):
        function(*args)
