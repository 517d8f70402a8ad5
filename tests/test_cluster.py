"""scripts/conv.py on a real local Dask cluster of 2 worker processes
(loopback only, no dashboard), with tiny runs (the shallow net, 500 images,
1 to 8 epochs): the records are the same as those of the same seeds run in
this process, a second invocation skips them all, the run of a worker
killed in the middle of it continues from its checkpoint on another worker
(one record, equal to the uninterrupted run's), a 2x2 sweep records each
combination, a failed run does not stop the other, the ensemble's vote
from 3 recorded members (trained in two invocations) is network3.ensemble's
vote of the same predictions, and a cluster whose workers have two threads,
or other versions, is refused.

Compile caches: the first test lets ``--workers 2`` give each worker its
own, empty cache folders (PyTensor's and Numba's) under a temporary folder;
the other tests share one module-scoped cluster whose 2 workers share one
empty temporary cache, so the driver compiles each network once on one
worker before the runs fan out.
"""

import io
import os
import signal
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from network3 import experiments
from network3.ensemble import ensemble_accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import results_table  # noqa: E402

import conv  # noqa: E402

pytestmark = [pytest.mark.mnist, pytest.mark.slow]

TINY = ["--train-size", "500", "--epochs", "1", "--no-save"]


def records(path):
    return experiments.read_records(path)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, mnist_path):
    """2 worker processes sharing one empty compile cache."""
    cache = tmp_path_factory.mktemp("shared-cache")
    shared = dict(experiments.worker_env(cache), NETWORK3_WORKER_CACHE="")
    with experiments.local_cluster(2, env=shared) as local:
        yield local
    # no worker or nanny process is left behind (multiprocessing's resource
    # tracker lives as long as this process)
    left = [p.cmdline() for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())]
    assert not left


def test_parallel_runs_equal_sequential_runs_and_resume(tmp_path, capsys, mnist_path):
    """4 runs on `--workers 2` (each worker with its own empty caches) give
    the records the same seeds give in this process; running the command
    again skips all 4 and writes nothing."""
    cache = tmp_path / "cache"
    parallel, sequential = tmp_path / "parallel.jsonl", tmp_path / "sequential.jsonl"
    cli = ["shallow", "--runs", "4", *TINY, "--workers", "2", "--cache-dir", str(cache)]
    assert conv.main([*cli, "--out", str(parallel)]) == 0
    assert {p.name for p in cache.iterdir()} == {"worker-0", "worker-1"}
    assert all((cache / w / "pytensor").is_dir() for w in ("worker-0", "worker-1"))
    assert conv.main(["shallow", "--runs", "4", *TINY, "--out", str(sequential)]) == 0

    on_dask = {r["seed"]: r for r in records(parallel)}
    here = {r["seed"]: r for r in records(sequential)}
    assert sorted(on_dask) == sorted(here) == [0, 1, 2, 3]
    assert len(records(parallel)) == 4
    for seed, record in on_dask.items():
        assert record["settings"] == here[seed]["settings"]
        assert record["settings"]["train_size"] == 500
        for key in ("test_accuracy", "best_validation_accuracy", "best_iteration",
                    "validation_predictions", "test_predictions"):
            assert record[key] == here[seed][key], (seed, key)
        assert len(record["test_predictions"]) == 10_000
        assert [e["training_cost"] for e in record["epochs"]] == \
            [e["training_cost"] for e in here[seed]["epochs"]]
    # the runs differ from each other (the seeds matter)
    assert len({r["test_predictions"] for r in on_dask.values()}) == 4

    capsys.readouterr()
    before = parallel.read_bytes()
    assert conv.main([*cli, "--out", str(parallel)]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped, already recorded") == 4
    assert "4 skipped" in out and "0 done" in out
    assert parallel.read_bytes() == before


def numbers(record):
    """What the records of one run must share, resumed or not."""
    return ({k: record[k] for k in ("settings", "seed", "test_accuracy", "best_iteration",
                                     "best_validation_accuracy", "test_predictions")},
            [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in record["epochs"]])


def test_a_killed_workers_run_continues_from_its_checkpoint(cluster, tmp_path):
    """2 runs of 8 epochs; SIGKILL the worker process of the first to start
    its second epoch (its first is checkpointed).  Dask runs the task again
    on a live worker, which continues from the checkpoint: each run has one
    record, the killed one says from which epoch it resumed, and both equal
    the same runs in this process."""
    out = tmp_path / "killed.jsonl"
    runs = experiments.plan(["shallow"], runs=2, out=out, train_size=500, epochs=8)
    started, killed = {}, {}

    def kill_in_second_epoch(message):  # on Dask's thread, as messages arrive
        if message["state"] == "started":
            started[message["key"]] = message
        elif message["state"] == "epoch" and message["epoch"] == 1 and not killed:
            killed.update(started[message["key"]])
            os.kill(killed["pid"], signal.SIGKILL)

    stream = io.StringIO()
    outcomes = experiments.execute(runs, scheduler=cluster.scheduler_address,
                                   save=False, on_event=kill_in_second_epoch, stream=stream)
    assert killed, stream.getvalue()
    assert [o.status for o in outcomes] == ["done"] * 2, stream.getvalue()
    victim = next(o for o in outcomes if o.run.key == killed["key"])
    assert victim.attempts == 2  # started, killed, started again
    assert started[victim.run.key]["pid"] != killed["pid"]
    assert victim.where == started[victim.run.key]["worker"] != killed["worker"]
    written = {experiments.record_key(r): r for r in records(out)}
    assert len(records(out)) == 2 and set(written) == {r.key for r in runs}
    assert 1 <= written[victim.run.key]["resumed_from"] < 8, stream.getvalue()
    assert [written[r.key]["resumed_from"] for r in runs].count(None) == 1
    assert not any((tmp_path / "checkpoints").iterdir())  # removed once recorded
    # the progress lines say so
    lines = stream.getvalue()
    assert f"{victim.run.label()}: started on tcp://127.0.0.1:" in lines
    assert "(attempt 2)" in lines and "epoch 2 of 8" in lines
    assert f"resumed at epoch {written[victim.run.key]['resumed_from']}" in lines
    assert "2 done, 0 skipped (already recorded), 0 failed" in lines
    # the same runs, uninterrupted, in this process
    here = tmp_path / "here.jsonl"
    experiments.execute(experiments.plan(["shallow"], runs=2, out=here, train_size=500,
                                         epochs=8), save=False, stream=io.StringIO())
    for record in records(here):
        assert numbers(written[experiments.record_key(record)]) == numbers(record)


def test_a_failed_run_does_not_stop_the_others(cluster, tmp_path):
    """A run that raises on its worker is shown failed, with its error; the
    other run is recorded."""
    out = tmp_path / "failed.jsonl"
    good = experiments.plan(["shallow"], out=out, train_size=500, epochs=1)[0]
    bad_settings = dict(good.settings, augment="Augment(translate=9)")
    bad = experiments.Run("shallow", tuple(sorted(bad_settings.items())), 0, out)
    stream = io.StringIO()
    outcomes = experiments.execute([bad, good], scheduler=cluster.scheduler_address,
                                   save=False, stream=stream)
    assert [o.status for o in outcomes] == ["failed", "done"]
    assert "not Augment(translate=9, rotate=10" in outcomes[0].error
    text = stream.getvalue()
    assert "failed: ValueError: this run's augmentation is Augment(translate=9)" in text
    assert "1 done, 0 skipped (already recorded), 1 failed" in text
    assert [experiments.record_key(r) for r in records(out)] == [good.key]


def test_a_2x2_sweep_records_each_combination(cluster, tmp_path, capsys):
    out = tmp_path / "sweep.jsonl"
    assert conv.main(["shallow", "--set", "eta=0.05,0.5", "--set", "lmbda=0,0.1", *TINY,
                      "--out", str(out), "--scheduler", cluster.scheduler_address]) == 0
    assert "compiling 2 network(s) once" in capsys.readouterr().out
    written = records(out)
    assert sorted((r["settings"]["eta"], r["settings"]["lmbda"]) for r in written) == \
        [(0.05, 0.0), (0.05, 0.1), (0.5, 0.0), (0.5, 0.1)]
    assert all(r["config"]["eta"] == r["settings"]["eta"] and
               r["config"]["lmbda"] == r["settings"]["lmbda"] for r in written)
    # the results table: one row per combination
    rows = results_table.table(written).splitlines()[2:]
    assert len(rows) == 4
    assert {row.split(" | ")[5] for row in rows} == \
        {"0.05, 0.0", "0.05, 0.1", "0.5, 0.0", "0.5, 0.1"}


def test_ensemble_votes_from_records_of_two_invocations(cluster, tmp_path, capsys, mnist):
    """2 members trained in one invocation, a third in another (the first
    two skipped): the vote of the 3 recorded members is network3.ensemble's
    vote of the same predictions, and the results table says 3 voted."""
    out = tmp_path / "ensemble.jsonl"
    cli = ["ensemble", "--data", "mnist", "--train-size", "1000", "--epochs", "1",
           "--no-save", "--out", str(out)]
    assert conv.main([*cli, "--runs", "2", "--scheduler", cluster.scheduler_address]) == 0
    assert "Ensemble of 2 nets" in capsys.readouterr().out
    assert conv.main([*cli, "--runs", "3", "--scheduler", cluster.scheduler_address]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped, already recorded") == 2

    written = sorted(records(out), key=lambda r: r["seed"])  # in the order they finished
    assert [r["seed"] for r in written] == [0, 1, 2]
    predictions = [experiments.decode_labels(r["test_predictions"]) for r in written]
    test_x, test_y = mnist[2]
    expected = ensemble_accuracy(predictions, (test_x, test_y))
    runs = experiments.plan(["ensemble"], runs=3, out=out, data="mnist",
                            train_size=1000, epochs=1)
    result, members = experiments.ensemble_from_records(out, runs, test_y)
    assert len(members) == 3
    assert result.accuracy == expected.accuracy
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.misclassified, expected.misclassified)
    assert (f"Ensemble of 3 nets (of 3 asked for): test accuracy "
            f"{expected.accuracy:.2%}") in printed
    vote_row = [row for row in results_table.table(written, test_y).splitlines()
                if row.startswith("| ensemble vote")]
    assert vote_row and vote_row[0].startswith("| ensemble vote (3 members) |")
    assert f"**{expected.accuracy:.2%}** ({len(expected.misclassified)} errors)" in vote_row[0]
    # each member's recorded predictions are its net's after its one epoch,
    # the epoch of its recorded test accuracy
    for record, labels in zip(written, predictions):
        assert np.mean(labels == test_y) == pytest.approx(record["test_accuracy"])


def test_a_worker_with_two_threads_is_refused(tmp_path, capsys):
    """Runs share network3's random generator and float type within a
    process: a worker running two at once is refused before any run."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as two_threads:
        out = tmp_path / "r.jsonl"
        assert conv.main(["shallow", *TINY, "--out", str(out),
                          "--scheduler", two_threads.scheduler_address]) == 2
    error = capsys.readouterr().err
    assert "refusing this Dask cluster" in error
    assert "it has 2 threads; network3 needs one run per process" in error
    assert not out.exists()


def test_a_worker_with_other_versions_is_refused():
    from network3.experiments import cluster, workers
    ours = experiments.versions()
    found = {"tcp://a:1": {"nthreads": 1, "versions": dict(ours)},
             "tcp://b:2": {"nthreads": 1, "versions": dict(ours, numba="0.1", numpy="0")}}
    cluster.check_workers({"tcp://a:1": found["tcp://a:1"]}, ours)  # the same: accepted
    with pytest.raises(experiments.ClusterError) as refused:
        cluster.check_workers(found, ours)
    assert str(refused.value).endswith(
        f"tcp://b:2: it runs numba 0.1 (the driver has {ours['numba']})")
    # numpy is recorded, not required to match
    assert workers.refusal(1, dict(ours, numpy="0"), ours) is None
