"""Every experiment of scripts/conv.py runs end to end for a tiny budget
(one epoch on a small real MNIST subset) and records its run.

These check the wiring (architecture, settings, results record, saved
network), not the speed, so they compile with the JAX backend, which
compiles a conv network in seconds where a cold Numba cache takes minutes;
the Numba path of the same networks is covered by test_book_sessions.py.
The run keys, records and command line are checked without training; the
runs on Dask are tests/test_cluster.py's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import network3
from network3 import experiments
from network3.data import subset
from network3.ensemble import ensemble_accuracy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import results_table  # noqa: E402

import conv  # noqa: E402

pytestmark = [pytest.mark.mnist, pytest.mark.slow]


@pytest.fixture(scope="module")
def small(mnist_path):
    training, validation, test = network3.load_data_shared(str(mnist_path))
    return subset(training, 200), subset(validation, 100), subset(test, 100)


@pytest.fixture(autouse=True)
def jax_backend():
    network3.set_backend("jax")
    yield
    network3.set_backend(None)


@pytest.mark.parametrize("experiment", [e for e in conv.EXPERIMENTS if e != "ensemble"])
def test_experiment_runs_and_records(experiment, small, tmp_path, capsys):
    out = tmp_path / f"{experiment}.jsonl"
    nets = conv.run(experiment, epochs=1, data=small, out=out)
    record = json.loads(out.read_text())
    book_data, _, eta, lmbda = conv.EXPERIMENTS[experiment]
    assert record["experiment"] == experiment
    assert record["config"]["eta"] == eta and record["config"]["lmbda"] == lmbda
    assert record["config"]["layers"] == [
        network3.saving.describe(layer) for layer in nets[0].layers]
    assert len(record["epochs"]) == 1
    # the recorded test accuracy is the network's (one epoch: its last
    # parameters are its best), and the recorded labels are its predictions
    test_x, test_y = (np.asarray(v.get_value()) for v in small[2])
    predictions = experiments.decode_labels(record["test_predictions"])
    np.testing.assert_array_equal(predictions, nets[0].predict(test_x))
    assert record["test_accuracy"] == pytest.approx(np.mean(predictions == test_y))
    assert "Finished training network." in capsys.readouterr().out
    loaded = network3.load(record["saved"])
    assert repr(loaded) == repr(nets[0])


def test_book_architectures():
    """Spot checks of the book's networks (CONTRACT.md section 4)."""
    relu = conv.build("dbl_conv_relu")
    assert [type(layer).__name__ for layer in relu] == [
        "ConvPoolLayer", "ConvPoolLayer", "FullyConnectedLayer", "SoftmaxLayer"]
    assert relu[1].filter_shape == (40, 20, 5, 5) and relu[2].n_in == 640
    assert all(layer.activation_fn is network3.ReLU for layer in relu[:3])
    dropout = conv.build("double_fc_dropout")
    assert [getattr(layer, "p_dropout", 0) for layer in dropout] == [0, 0, .5, .5, .5]
    assert dropout[3].n_in == dropout[3].n_out == 1000
    assert conv.build("expanded_data", n=300)[2].n_out == 300
    assert conv.build("dbl_conv_tanh")[0].activation_fn is network3.tanh
    assert conv.EXPERIMENTS["double_fc_dropout"][:2] == ("expanded", 40)


def test_corrected_init_uses_he_for_relu_layers():
    layers = conv.build("dbl_conv_relu", init="corrected")
    # He: std sqrt(2 / n_in); the first FC layer has n_in = 640
    std = layers[2].w.get_value().std()
    assert abs(std - (2 / 640) ** 0.5) < 0.1 * (2 / 640) ** 0.5


def test_ensemble_votes_from_records_and_resumes(small, tmp_path, capsys):
    """The command line's ensemble (conv.run_ensemble; the book's
    ensemble(nets) is test_book_conv's): two members, then a third in
    another call (the first two are skipped and loaded): the vote is taken
    from the records' test predictions and equals network3.ensemble's vote
    of the nets."""
    out = tmp_path / "ensemble.jsonl"
    nets, result = conv.run_ensemble(runs=2, epochs=1, data=small, out=out)
    assert len(nets) == 2
    assert "Ensemble of 2 nets (of 2 asked for)" in capsys.readouterr().out
    nets, result = conv.run_ensemble(runs=3, epochs=1, data=small, out=out)
    assert len(nets) == 3 and len(experiments.read_records(out)) == 3
    expected = ensemble_accuracy(nets, small[2])
    assert result.accuracy == expected.accuracy
    np.testing.assert_array_equal(result.misclassified, expected.misclassified)
    assert "Ensemble of 3 nets (of 3 asked for)" in capsys.readouterr().out


#### Run keys, records and the command line (no training)

def test_the_recorded_command_can_be_pasted_into_a_shell(monkeypatch):
    """An option with spaces stays one word: the records' commands are
    for running again."""
    monkeypatch.setattr(sys, "argv", ["/home/me/scripts/conv.py", "beyond",
                                      "--augment", "rotate=5, elastic=None"])
    assert conv._command() == ("python scripts/conv.py beyond "
                               "--augment 'rotate=5, elastic=None'")

def _train_failing_at_seed_1(error):
    """experiments.training.train without training: a record for every seed but 1,
    which raises ``error``."""
    def fake_train(spec, data=None, augment=None, report=None):
        if spec["seed"] == 1:
            raise error
        return {"experiment": spec["experiment"], "seed": spec["seed"],
                "settings": spec["settings"], "config": {}, "run_id": spec["run_id"],
                "test_accuracy": 0.5, "best_validation_accuracy": 0.5,
                "wall_seconds": 1.0}, None
    return fake_train


def test_a_failed_run_does_not_stop_the_others_here(tmp_path, monkeypatch, capsys):
    """In this process too: the failed run's error is shown, the others are
    recorded, and the command's exit status is 1."""
    monkeypatch.setattr(experiments.training, "train",
                        _train_failing_at_seed_1(RuntimeError("the second run breaks")))
    out = tmp_path / "r.jsonl"
    assert conv.main(["shallow", "--runs", "3", "--no-save", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "shallow seed=1: failed: RuntimeError: the second run breaks" in printed
    assert "2 done, 0 skipped (already recorded), 1 failed" in printed
    assert "RuntimeError: the second run breaks" in printed.split("failed:\n")[-1]
    assert [r["seed"] for r in experiments.read_records(out)] == [0, 2]


def test_help_prints_and_exits_without_importing_or_writing(tmp_path):
    """`conv.py --help` does not even import PyTensor (which would create
    its cache folder), so it writes nothing.  (Not checked on results/: other
    processes may be writing there.)"""
    env = dict(os.environ, PYTENSOR_FLAGS=f"base_compiledir={tmp_path / 'pt'}",
               NETWORK3_DATA=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "conv.py"), "--help"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and "usage: conv.py" in done.stdout
    assert "--workers K" in done.stdout and "--scheduler" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_command_leaves_no_record_of_the_unfinished_run(
        tmp_path, monkeypatch, capsys):
    # Ctrl-C during the second run
    monkeypatch.setattr(experiments.training, "train",
                        _train_failing_at_seed_1(KeyboardInterrupt()))
    out = tmp_path / "r.jsonl"
    assert conv.main(["shallow", "--runs", "3", "--no-save", "--out", str(out)]) == 130
    printed = capsys.readouterr().out
    assert "the same command again resumes" in printed
    assert printed.count("not finished") == 2
    assert [r["seed"] for r in experiments.read_records(out)] == [0]


def test_a_clear_message_without_dask(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    out = tmp_path / "r.jsonl"
    assert conv.main(["shallow", "--workers", "2", "--out", str(out)]) == 2
    assert 'pip install -e ".[cluster]"' in capsys.readouterr().err
    assert not out.exists()


def test_names_are_the_experiments():
    assert conv.NAMES == tuple(experiments.EXPERIMENTS)


def test_old_records_get_the_keys_of_new_runs():
    """Records written before settings were recorded (results/*.jsonl)
    derive the key a new run with the same settings and seed has, so the
    recorded run is skipped."""
    recorded = experiments.recorded_keys(ROOT / "results" / "basic_conv.jsonl")
    planned = experiments.plan(["basic_conv"], runs=3, results_dir=ROOT / "results")
    assert planned[0].key == ("basic_conv data=mnist epochs=60 eta=0.1 init=book "
                              "lmbda=0.0 seed=0")
    # seed 0 is the earlier session's record, without settings of its own
    assert planned[0].key in recorded
    # the FC width of the expanded-data runs is part of their keys (seed 0:
    # the earlier session's records, without settings)
    widths = experiments.recorded_keys(ROOT / "results" / "expanded_data.jsonl")
    assert {k for k in widths if "epochs=60" in k and k.endswith(" seed=0")} == {
        f"expanded_data data=expanded epochs=60 eta=0.03 init=book lmbda=0.1 n={n} seed=0"
        for n in (100, 300, 1000)}
    # --train-size of the whole set is the whole set
    assert experiments.plan(["shallow"], train_size=50_000)[0].key == \
        experiments.plan(["shallow"])[0].key


def test_plan_sweeps_and_all():
    sets = dict(map(experiments.parse_set, ["eta=0.01,0.03,0.1", "lmbda=0,0.1"]))
    runs = experiments.plan(["dbl_conv_relu"], runs=2, sets=sets, out="x.jsonl")
    assert len(runs) == 12 and len({r.key for r in runs}) == 12
    assert {(dict(r.settings)["eta"], dict(r.settings)["lmbda"]) for r in runs} == \
        {(e, lm) for e in (0.01, 0.03, 0.1) for lm in (0.0, 0.1)}
    assert runs[0].label() == "dbl_conv_relu eta=0.01 lmbda=0.0 seed=0"
    book = experiments.plan(["all"])
    assert len(book) == 11 * 3 + 5
    assert sum(r.experiment == "ensemble" for r in book) == 5
    assert {dict(r.settings)["n"] for r in book if r.experiment == "expanded_data"} == \
        {100, 300, 1000}
    for bad, message in [(["n=300"], "the FC width"), (["eta=x"], "eta must be a number"),
                         (["speed=1"], "settings that can be set")]:
        with pytest.raises(ValueError, match=message):
            experiments.plan(["shallow"], sets=dict(map(experiments.parse_set, bad)))


def test_append_record_writes_each_run_once(tmp_path):
    path = tmp_path / "r.jsonl"
    run = experiments.plan(["shallow"], out=path)[0]
    record = {"experiment": "shallow", "seed": 0, "config": {},
              "settings": dict(run.settings), "run_id": "a"}
    assert experiments.append_record(path, record)
    assert not experiments.append_record(path, record)              # delivered twice
    assert not experiments.append_record(path, dict(record, run_id="b"))  # same run
    assert not experiments.append_record(path, record, force=True)  # same delivery
    assert experiments.append_record(path, dict(record, run_id="c"), force=True)
    with open(path, "a") as f:
        f.write('{"experiment": "shal')                             # cut off by a crash
    assert experiments.append_record(path, dict(record, seed=1, run_id="d"))
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["run_id"] == "d"
    assert [r["run_id"] for r in experiments.read_records(path)] == ["a", "c", "d"]
    assert experiments.recorded_keys(path) == {run.key, run.key.replace("seed=0", "seed=1")}


def test_append_record_under_concurrent_writers(tmp_path):
    """4 threads (each its own open file, as separate drivers would) append
    25 runs each, and all try to append one same run: 101 whole lines."""
    import threading
    path = tmp_path / "r.jsonl"
    base = dict(experiments.plan(["shallow"], out=path)[0].settings)

    def record(seed, run_id):
        return {"experiment": "shallow", "seed": seed, "config": {}, "settings": base,
                "run_id": run_id, "padding": "x" * 20_000}  # a record's size

    written = []

    def writer(t):
        for i in range(25):
            experiments.append_record(path, record(1000 * t + i + 1, f"{t}-{i}"))
        written.append(experiments.append_record(path, record(0, f"same-{t}")))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(written) == [False, False, False, True]
    lines = path.read_text().splitlines()
    assert len(lines) == 101 and all(json.loads(line)["padding"] for line in lines)


def test_labels_round_trip():
    labels = np.random.default_rng(0).integers(0, 10, 10_000)
    text = experiments.encode_labels(labels)
    assert isinstance(text, str) and len(text) == 10_000
    np.testing.assert_array_equal(experiments.decode_labels(text), labels)
    np.testing.assert_array_equal(
        experiments.decode_labels(experiments.encode_labels([3, 12])), [3, 12])


def test_results_table_reads_the_existing_records():
    """The records of earlier sessions (no settings or predictions in them)
    still make the table."""
    rows = results_table.table(results_table.load_records(ROOT / "results"))
    assert rows.splitlines()[0].startswith("| experiment | book |")
    # the earlier session's basic_conv run (98.79%) is in its row
    assert any(row.startswith("| basic_conv | 98.78% | **") and "98.79%" in row
               for row in rows.splitlines())
