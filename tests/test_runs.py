"""The runs of scripts/conv.py outlive a kill, and the run store under them.

* A conv.py command killed (SIGKILL) after an epoch, then given again,
  continues the run from its last finished epoch (no ``Epoch 0`` again)
  and records what the uninterrupted run records; the checkpoint goes once
  the record is written.  (The runs on Dask: tests/test_cluster.py.)
* Settings given on the command line are checked before any run starts.
* The data a run reads is read once per process, however its file is named.
* ``--force`` never overwrites a saved network an earlier record points to.
* Records carry versions, the git commit of the code that ran them and
  the accelerator's state, even if reading the state fails; the results
  table counts a run once and keeps quick runs out of the README's table;
  the figures read records as conv.py does.

Everything but the first test runs without training (a stand-in for
``training.train``) or on a tiny synthetic data file: seconds in all."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import network3
from network3 import experiments
from network3.experiments import training

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import figures as figures_script  # noqa: E402
import results_table  # noqa: E402

import conv  # noqa: E402

# the fields of a record that the run's numbers decide (not its time,
# date, id, command or resume)
SAME = ("experiment", "seed", "settings", "best_validation_accuracy", "best_iteration",
        "test_accuracy", "validation_predictions", "test_predictions")


def numbers(record):
    """What must be equal in the records of one run, resumed or not."""
    history = [{k: v for k, v in epoch.items() if k != "seconds"}
               for epoch in record["epochs"]]
    return {**{k: record[k] for k in SAME}, "epochs": history,
            "layers": record["config"]["layers"]}


#### A killed command continues its run
@pytest.mark.mnist
@pytest.mark.slow
def test_a_killed_command_continues_from_its_last_finished_epoch(tmp_path, mnist_path):
    """shallow, 8 epochs of 500 images: killed with SIGKILL once it prints
    epoch 1, the same command continues from the epoch after the last one
    its checkpoint holds and records what an uninterrupted run records."""
    def command(out):
        return [sys.executable, str(ROOT / "scripts" / "conv.py"), "shallow",
                "--train-size", "500", "--epochs", "8", "--no-save", "--out", str(out)]

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    whole = tmp_path / "whole" / "r.jsonl"
    subprocess.run(command(whole), env=env, cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)

    out = tmp_path / "killed" / "r.jsonl"
    child = subprocess.Popen(command(out), env=env, cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    before = []
    for line in child.stdout:
        before.append(line)
        if line.startswith("Epoch 1:"):  # epoch 0's checkpoint is written
            os.kill(child.pid, signal.SIGKILL)
            break
    child.stdout.close()
    assert child.wait(timeout=60) == -signal.SIGKILL, \
        "the run finished before the kill landed:\n" + "".join(before)
    assert not out.exists()  # no record of an unfinished run
    # (and, if the kill landed while epoch 1's was written, a .part file)
    written = sorted((out.parent / "checkpoints").iterdir())
    [checkpoint] = [f for f in written if f.suffix != ".part"]

    again = subprocess.run(command(out), env=env, cwd=tmp_path, text=True,
                           capture_output=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    printed = again.stdout
    assert "Epoch 0:" not in printed and "Resuming from checkpoint" in printed
    [record] = experiments.read_records(out)
    first = int(printed.split("\nEpoch ", 1)[1].split(":")[0])
    assert record["resumed_from"] == first >= 1
    assert "resumed at epoch" in printed
    [uninterrupted] = experiments.read_records(whole)
    assert uninterrupted["resumed_from"] is None
    assert numbers(record) == numbers(uninterrupted)
    # removed once the record was written, with any half-written one
    assert not any(f.exists() for f in written)
    assert set(record["versions"]) == {"network3", "pytensor", "numba", "numpy", "python"}
    assert record["versions"]["network3"] == network3.__version__
    assert record["commit"] == experiments.commit()
    assert record["accelerator"] == uninterrupted["accelerator"] == "on"

    # recorded: the same command once more trains nothing
    third = subprocess.run(command(out), env=env, cwd=tmp_path, text=True,
                           capture_output=True, timeout=300)
    assert "skipped, already recorded" in third.stdout and "Epoch" not in third.stdout


#### Settings are checked before any run starts
def _no_training(spec, data=None, augment=None, report=None):
    raise AssertionError("a run started")


@pytest.mark.parametrize("args, message", [
    (["shallow", "--set", "epochs=1.5"], "epochs must be a whole number, got '1.5'"),
    (["shallow", "--epochs", "0"], "epochs must be a positive whole number, got 0"),
    (["shallow", "--train-size", "-100"],
     "train_size must be a whole number of at least 10 (one mini-batch), got -100"),
    (["shallow", "--set", "train_size=500,-5"], "got -5"),
    (["expanded_data", "--n", "-3"], "n (the FC width) must be a positive whole number, "
     "got -3"),
    (["shallow", "--set", "speed=1"], "unknown setting 'speed'"),
    (["shallow", "--set", "eta=0.1,fast"], "eta must be a number, got 'fast'"),
    (["shallow", "--set", "eta=inf"], "eta must be a positive number, got inf"),
    (["shallow", "--seed", "-1"], "seed must be a whole number of at least 0, got -1"),
    (["beyond", "--set", "momentum=0.9,1"], "momentum must be at least 0 and below 1, got 1.0"),
    (["beyond", "--augment", "rotate=5, speed=3"], "unexpected keyword argument 'speed'"),
    (["beyond", "--set", "arch=deep"], "arch must be one of padded for beyond, got 'deep'"),
    (["shallow", "--set", "arch=padded"], "arch is a setting of beyond only, not of shallow"),
])
def test_a_bad_setting_is_an_error_naming_it_and_nothing_runs(
        args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "train", _no_training)
    out = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as stopped:
        conv.main([*args, "--out", str(out)])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


#### The data is read once per process
def test_the_data_is_read_once_however_its_file_is_named(tmp_path, monkeypatch):
    """load() by name, by str, by absolute and by relative Path: one read
    (the expanded set is 784 MB of float32 images: each read was a copy)."""
    rng = np.random.default_rng(0)
    small = [(rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n))
             for n in (30, 20, 20)]
    network3.data.save_data(small, tmp_path / "mnist_expanded.pkl.gz")
    monkeypatch.setenv("NETWORK3_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(training, "_data", {})
    reads = []
    real = network3.load_data_shared
    monkeypatch.setattr(network3, "load_data_shared",
                        lambda path: reads.append(path) or real(path))
    first = training.load("expanded")
    for path in (None, str(tmp_path / "mnist_expanded.pkl.gz"),
                 tmp_path / "mnist_expanded.pkl.gz", Path("mnist_expanded.pkl.gz")):
        assert training.load("expanded", path) is first
    assert len(reads) == 1
    np.testing.assert_array_equal(first[0][0].get_value(), small[0][0])
    with pytest.raises(FileNotFoundError, match="elsewhere.pkl.gz is missing: run "):
        training.load("expanded", tmp_path / "elsewhere.pkl.gz")


#### Saved networks, leftover checkpoints
def _fake_train(spec, data=None, augment=None, report=None):
    """A record and an untrained network, different at each call."""
    _fake_train.calls += 1
    network3.seed(_fake_train.calls)
    net = network3.Network(experiments.build("shallow"), 10)
    return {"experiment": spec["experiment"], "seed": spec["seed"],
            "settings": spec["settings"], "config": {}, "run_id": spec["run_id"],
            "test_accuracy": 0.5, "best_validation_accuracy": 0.5,
            "wall_seconds": 1.0}, net


def test_force_never_overwrites_a_saved_network_a_record_points_to(tmp_path, monkeypatch):
    _fake_train.calls = 0
    monkeypatch.setattr(training, "train", _fake_train)
    out = tmp_path / "r.jsonl"
    assert conv.main(["shallow", "--out", str(out)]) == 0
    [first] = experiments.read_records(out)
    saved = Path(first["saved"]).read_bytes()
    assert conv.main(["shallow", "--out", str(out), "--force"]) == 0
    earlier, forced = experiments.read_records(out)
    assert earlier["saved"] != forced["saved"]
    assert Path(earlier["saved"]).read_bytes() == saved
    assert Path(forced["saved"]).read_bytes() != saved


def test_a_recorded_run_leaves_no_checkpoint_behind(tmp_path, monkeypatch, capsys):
    """A command killed after writing a record but before removing the
    run's checkpoint: the next command skips the run and removes it, and
    the half-written checkpoint of a command killed mid-write."""
    _fake_train.calls = 0
    monkeypatch.setattr(training, "train", _fake_train)
    out = tmp_path / "r.jsonl"
    assert conv.main(["shallow", "--out", str(out), "--no-save"]) == 0
    [run] = experiments.plan(["shallow"], out=out)
    assert not run.checkpoint().exists()
    run.checkpoint().write_bytes(b"left behind")
    half = run.checkpoint().with_name(run.checkpoint().name + ".1234-0badcafe.part")
    half.write_bytes(b"half")
    other = run.checkpoint().with_name("other-run.npz.1234-0badcafe.part")
    other.write_bytes(b"another run's")
    assert conv.main(["shallow", "--out", str(out), "--no-save"]) == 0
    assert "skipped, already recorded" in capsys.readouterr().out
    assert not run.checkpoint().exists() and not half.exists()
    assert other.exists()


def test_records_name_the_commit_of_the_code_that_ran(tmp_path):
    def git(where, *args):
        return subprocess.run(["git", "-C", str(where), "-c", "user.name=t",
                               "-c", "user.email=t@t", *args], capture_output=True,
                              text=True, check=True).stdout.strip()
    here = Path(network3.__file__).resolve().parent.parent
    assert experiments.commit().partition("+")[0] == git(here, "rev-parse", "HEAD")

    repo = tmp_path / "repo"
    for name in ("network3/layers.py", "scripts/conv.py", "results/shallow.jsonl"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("one\n")
    git(repo.parent, "init", "-q", "repo")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    assert experiments.commit(repo) == head
    # records appended while runs go do not make the code "changed"
    (repo / "results/shallow.jsonl").write_text("one\ntwo\n")
    assert experiments.commit(repo) == head
    (repo / "network3/layers.py").write_text("two\n")
    assert experiments.commit(repo) == head + "+changed"
    (repo / "network3/layers.py").write_text("one\n")
    (repo / "scripts/conv.py").write_text("two\n")
    assert experiments.commit(repo) == head + "+changed"
    # not a checkout, or a copy inside some other repository: no commit to name
    (tmp_path / "plain").mkdir()
    assert experiments.commit(tmp_path / "plain") is None
    assert experiments.commit(repo / "results") is None


def test_the_accelerator_field_never_stops_a_record(monkeypatch):
    def broken():
        raise RuntimeError("accel is being reworked")
    monkeypatch.setattr(network3.backend, "accelerator_status", broken)
    assert experiments.accelerator() == "unknown (RuntimeError)"
    network3.set_backend("jax")
    assert experiments.accelerator() == "not used"


#### Reading the records: the results table, the figures
def _record(seed, accuracy, epochs=60, train_size=None, run_id=None):
    settings = experiments.settings("shallow", epochs=epochs, train_size=train_size)
    return {"experiment": "shallow", "seed": seed, "settings": settings,
            "config": {"train_size": train_size or 50_000, "layers": []},
            "test_accuracy": accuracy, "best_validation_accuracy": accuracy,
            "wall_seconds": 60.0, "machine": "m", "run_id": run_id}


def test_the_results_table_counts_a_run_once_and_keeps_quick_runs_out_of_the_readme(
        tmp_path):
    results = tmp_path / "results"
    for record in [_record(0, 0.97), _record(1, 0.975), _record(0, 0.98, run_id="forced"),
                   _record(0, 0.90, epochs=2), _record(0, 0.91, train_size=500)]:
        experiments.append_record(results / "shallow.jsonl", record, force=True)
    records = results_table.load_records(results)
    assert len(records) == 4  # seed 0 at the book's settings: the forced rerun only
    rows = results_table.table(records).splitlines()[2:]
    assert len(rows) == 3 and rows[0].startswith("| shallow | 97.80% | **98.00%** | "
                                                 "2: 97.50%, 98.00% | 60 |")
    short = results_table.table(records, full=False).splitlines()[2:]
    assert short == ["| shallow | 97.80% | **98.00%** | 2: 97.50%, 98.00% | 60 |"]


def test_the_figures_skip_a_record_cut_off_by_a_crash(tmp_path, capsys):
    path = tmp_path / "dbl_conv.jsonl"
    path.write_text(json.dumps({"config": {"epochs": 60}, "seed": 0}) + "\n"
                    + json.dumps({"config": {"epochs": 60}, "seed": 1}) + "\n"
                    + '{"config": {"epo')
    assert [r["seed"] for r in figures_script.read_runs(tmp_path, "dbl_conv")] == [0, 1]
    assert "skipping a line that is not a JSON record" in capsys.readouterr().err


def test_the_recorded_vote_breaks_ties_in_the_order_the_nets_were_trained():
    """Dask records runs as they finish; the vote takes the members in seed
    order, as the book's nets list is, so that its tie rule (the label the
    first net gives) does not depend on which run finished first."""
    from network3.experiments.records import encode_labels, vote_records
    labels = np.array([3, 3])
    records = [{"seed": 1, "test_predictions": encode_labels([5, 3])},
               {"seed": 0, "test_predictions": encode_labels([3, 3])}]
    result, members = vote_records(records, labels)  # a 1-1 tie on the first image
    assert [m["seed"] for m in members] == [0, 1]
    assert list(result.labels) == [3, 3] and result.accuracy == 1.0


#### Momentum, a setting of its own
def test_momentum_is_a_setting_with_its_own_key_and_none_is_the_books_run():
    plain = experiments.plan(["beyond"])[0]
    assert "momentum" not in plain.key  # the records before it keep their keys
    assert experiments.plan(["beyond"], sets={"momentum": [0.0]})[0].key == plain.key
    fast = experiments.plan(["beyond"], sets={"momentum": [0.9]})[0]
    assert fast.key == plain.key.replace(" seed=0", " momentum=0.9 seed=0")
    assert fast.label() == "beyond momentum=0.9 seed=0"
    # a record written before momentum was a setting is in the plain run's
    # group of the results table, not a group of its own
    old = {"experiment": "beyond", "seed": 1, "config": {},
           "settings": {k: v for k, v in dict(plain.settings).items() if k != "momentum"}}
    new = {"experiment": "beyond", "seed": 0, "config": {}, "settings": dict(plain.settings)}
    assert experiments.record_key(old) == plain.key.replace("seed=0", "seed=1")
    assert len(results_table.groups_of([old, new])) == 1


def test_arch_is_a_setting_with_its_own_key_and_none_is_beyonds_own_network():
    plain = experiments.plan(["beyond"])[0]
    assert "arch" not in plain.key  # the records before it keep their keys
    padded = experiments.plan(["beyond"], sets={"arch": ["padded"]})[0]
    assert padded.key == plain.key.replace("augment=", "arch=padded augment=")
    old = {"experiment": "beyond", "seed": 1, "config": {},
           "settings": {k: v for k, v in dict(plain.settings).items() if k != "arch"}}
    assert experiments.record_key(old) == plain.key.replace("seed=0", "seed=1")
    new = {"experiment": "beyond", "seed": 0, "config": {}, "settings": dict(padded.settings)}
    assert len(results_table.groups_of([old, new])) == 2


def test_a_run_with_momentum_trains_with_it_and_records_it(tmp_path):
    rng = np.random.default_rng(0)
    data = [network3.data.subset((rng.random((n, 784), dtype=np.float32),
                                  rng.integers(0, 10, n)), n) for n in (100, 20, 20)]
    weights = {}
    for momentum in (None, 0.5):
        spec = {"experiment": "shallow", "seed": 0,
                "settings": experiments.runs.settings("shallow", epochs=2, momentum=momentum)}
        record, net = training.train(spec, data=data)
        assert record["config"]["momentum"] == (momentum or 0.0)
        weights[momentum] = net.layers[0].w.get_value()
    # the same seed, the same first weights: momentum alone makes them differ
    assert not np.allclose(weights[None], weights[0.5])


#### Any augmentation, rebuilt from its name
def test_a_run_rebuilds_any_augmentation_from_the_name_it_records(tmp_path, monkeypatch):
    from network3.augment import Augment
    calls = []
    monkeypatch.setattr(training, "train", lambda spec, **kw: calls.append(spec) or
                        _fake_train(spec, **kw))
    _fake_train.calls = 0
    out = tmp_path / "r.jsonl"
    assert conv.main(["shallow", "--augment", "rotate=5, scale=0.1, elastic=None",
                      "--epochs", "1", "--no-save", "--out", str(out)]) == 0
    name = repr(Augment(rotate=5, scale=0.1, elastic=None))
    assert calls[0]["settings"]["augment"] == name
    # the training itself (no augmentation object handed in) rebuilds it
    monkeypatch.undo()
    rng = np.random.default_rng(0)
    data = [network3.data.subset((rng.random((n, 784), dtype=np.float32),
                                  rng.integers(0, 10, n)), n) for n in (100, 20, 20)]
    images = []
    real = Augment.__call__
    monkeypatch.setattr(Augment, "__call__", lambda self, x, r: images.append(
        repr(self)) or real(self, x, r))
    spec = {"experiment": "shallow", "seed": 0,
            "settings": experiments.runs.settings("shallow", epochs=1, augment=name)}
    record, _ = training.train(spec, data=data)
    assert record["config"]["augment"] == name and images == [name]
