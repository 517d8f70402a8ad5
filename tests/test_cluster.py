"""scripts/conv.py on a real local Dask cluster of 2 worker processes
(loopback only, no dashboard), with tiny runs (the shallow net, 500 images,
1 epoch): the records are the same as those of the same seeds run in this
process, a second invocation skips them all, a worker killed in the middle
of a run costs neither a record nor a duplicate, a 2x2 sweep records each
combination, a failed run does not stop the other, and the ensemble's vote
from 3 recorded members (trained in two invocations) is network3.ensemble's
vote of the same predictions.

Compile caches: the first test lets ``--workers 2`` give each worker its
own, empty cache folders (PyTensor's and Numba's) under a temporary folder;
the other tests share one module-scoped cluster whose 2 workers share one
empty temporary cache, so the driver compiles each network once on one
worker before the runs fan out.
"""

import faulthandler
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
PAUSE = 1.5  # seconds each run waits after it starts: a window to kill it in


def records(path):
    return experiments.read_records(path)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, mnist_path):
    """2 worker processes sharing one empty compile cache; each run pauses
    PAUSE s after it starts.  The module's Dask tests are bounded: after 5
    minutes the test process dumps its threads' stacks and exits."""
    faulthandler.dump_traceback_later(300, exit=True)
    cache = tmp_path_factory.mktemp("shared-cache")
    shared = dict(experiments.worker_env(cache), NETWORK3_WORKER_CACHE="",
                  NETWORK3_RUN_PAUSE=str(PAUSE))
    with experiments.local_cluster(2, env=shared) as local:
        yield local
    faulthandler.cancel_dump_traceback_later()
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


def test_a_killed_worker_costs_no_record_and_no_duplicate(cluster, tmp_path):
    """SIGKILL the worker process of the first run to start, while it runs:
    Dask runs it again elsewhere, and the results file ends with 4 records,
    one per run."""
    out = tmp_path / "killed.jsonl"
    runs = experiments.plan(["shallow"], runs=4, out=out, train_size=500, epochs=1)
    killed = []

    def kill_first(message):
        if message["state"] == "started" and not killed:
            os.kill(message["pid"], signal.SIGKILL)
            killed.append(message["key"])

    stream = io.StringIO()
    outcomes = experiments.execute(runs, scheduler=cluster.scheduler_address,
                                   save=False, on_event=kill_first, stream=stream)
    assert killed, stream.getvalue()
    assert [o.status for o in outcomes] == ["done"] * 4, stream.getvalue()
    victim = next(o for o in outcomes if o.run.key == killed[0])
    assert victim.attempts >= 2  # started, killed, started again
    # the progress lines: queued, started (again), an epoch, done; a summary
    lines = stream.getvalue()
    assert f"{victim.run.label()}: started on tcp://127.0.0.1:" in lines
    assert f"(attempt {victim.attempts})" in lines
    assert "epoch 1 of 1" in lines and ": done: test " in lines
    assert "4 done, 0 skipped (already recorded), 0 failed" in lines
    written = records(out)
    assert len(written) == 4
    assert sorted(experiments.record_key(r) for r in written) == sorted(r.key for r in runs)
    assert len({r["run_id"] for r in written}) == 4


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
    assert "only the default" in outcomes[0].error
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
