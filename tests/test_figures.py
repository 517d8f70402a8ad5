"""The chapter's figures (network3.figures) on small synthetic inputs."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import network3
from network3 import data as n3data
from network3 import figures
from network3.saving import describe

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "figures.py"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_kb=5):
    payload = path.read_bytes()
    assert payload[:8] == PNG_SIGNATURE
    assert len(payload) > min_kb * 1024, f"{path}: only {len(payload)} bytes"


def history(n_epochs, rate, start=0.9):
    return [{"epoch": e, "training_cost": 1.0 / (e + 1),
             "validation_accuracy": start + 0.08 * (1 - np.exp(-e / rate)),
             "test_accuracy": 0.97 if e % 3 == 0 else None, "seconds": 1.0}
            for e in range(n_epochs)]


def test_plot_misclassified(tmp_path, rng):
    images = rng.random((33, 784))
    true, predicted = rng.integers(0, 10, 33), rng.integers(0, 10, 33)
    path = figures.plot_misclassified(images, true, predicted,
                                      tmp_path / "sub" / "errors.png")
    assert path == tmp_path / "sub" / "errors.png"
    assert_png(path)
    assert not list(tmp_path.rglob("*.part"))


def test_plot_misclassified_square_images_and_none(tmp_path, rng):
    assert_png(figures.plot_misclassified(
        rng.random((3, 28, 28)), [1, 2, 3], [7, 7, 7], tmp_path / "a.png"), 2)
    assert_png(figures.plot_misclassified(
        np.zeros((0, 784)), [], [], tmp_path / "none.png"), 2)
    with pytest.raises(ValueError, match="3 images but 2 true"):
        figures.plot_misclassified(rng.random((3, 784)), [1, 2], [1, 2, 3],
                                   tmp_path / "bad.png")


def test_plot_filters(tmp_path, rng):
    assert_png(figures.plot_filters(rng.normal(size=(20, 1, 5, 5)),
                                    tmp_path / "filters.png"))
    # the second conv layer's (40, 20, 5, 5) filters, one input channel
    assert_png(figures.plot_filters(rng.normal(size=(40, 20, 5, 5)),
                                    tmp_path / "filters2.png", channel=3))
    with pytest.raises(ValueError, match="channel"):
        figures.plot_filters(np.zeros((4, 2, 5, 5)), tmp_path / "x.png",
                             channel=2)


def test_plot_accuracy_curves(tmp_path):
    path = figures.plot_accuracy_curves(
        [history(20, 5), history(20, 3, 0.92)], ["sigmoid", "tanh"],
        tmp_path / "curves.png")
    assert_png(path)
    # a results record (with an "epochs" list) is a history too
    assert_png(figures.plot_accuracy_curves(
        [{"epochs": history(3, 1)}], ["run 0"], tmp_path / "record.png"))
    with pytest.raises(ValueError, match="2 histories but 1 labels"):
        figures.plot_accuracy_curves([history(2, 1)] * 2, ["a"],
                                     tmp_path / "bad.png")


def test_plot_training_curves(tmp_path):
    assert_png(figures.plot_training_curves(history(10, 3),
                                            tmp_path / "training.png"))


def test_importing_figures_does_not_import_matplotlib():
    code = ("import sys, network3.figures; "
            "assert 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


#### scripts/figures.py, on tiny saved nets and hand-written results files
def load_script():
    spec = importlib.util.spec_from_file_location("figures_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_runs(results, experiment, nets, config, rng):
    (results / "nets").mkdir(parents=True, exist_ok=True)
    with open(results / f"{experiment}.jsonl", "a") as f:
        for run, net in enumerate(nets):
            saved = None
            if net is not None:
                saved = results / "nets" / f"{experiment}-{run}.npz"
                net.save(saved)
            layers = [describe(layer) for layer in net.layers] if net else \
                [{"type": "ConvPoolLayer", "activation_fn": experiment[-4:]}]
            record = {"experiment": experiment, "run": run, "seed": run,
                      "config": dict(config, layers=layers),
                      "epochs": history(4, 2), "test_accuracy": 0.9,
                      "saved": str(saved) if saved else None}
            f.write(json.dumps(record) + "\n")


def test_figures_script_from_results_files(tmp_path, rng):
    x = rng.random((40, 784)).astype("float32")
    y = rng.integers(0, 10, 40)
    data_file = tmp_path / "mnist.pkl.gz"
    n3data.save_data(((x[:20], y[:20]), (x[20:30], y[20:30]),
                      (x[30:], y[30:])), data_file)
    results, out = tmp_path / "results", tmp_path / "figures"

    def softmax_net():
        net = network3.Network([network3.SoftmaxLayer(n_in=784, n_out=10)], 10)
        w = net.layers[0].w
        w.set_value(rng.normal(size=(784, 10)).astype(w.dtype))
        return net

    conv_net = network3.Network([
        network3.ConvPoolLayer(image_shape=(10, 1, 28, 28),
                               filter_shape=(20, 1, 5, 5), poolsize=(2, 2)),
        network3.SoftmaxLayer(n_in=20 * 12 * 12, n_out=10)], 10)
    config = {"epochs": 4, "train_size": 20}
    write_runs(results, "ensemble", [softmax_net() for _ in range(3)],
               config, rng)
    write_runs(results, "basic_conv", [conv_net], config, rng)
    write_runs(results, "dbl_conv", [None], dict(config, sigmoid=True), rng)
    write_runs(results, "dbl_conv_tanh", [None, None], config, rng)
    script = load_script()
    # the latest group: runs with the last record's settings
    assert len(script.read_runs(results, "dbl_conv_tanh")) == 2
    assert script.main(["--results", str(results), "--out", str(out),
                        "--data", str(data_file)]) == 0
    for name in ("misclassified", "filters", "tanh_vs_sigmoid"):
        assert_png(out / f"{name}.png", 2)
    # with no results, it says what to run and fails
    assert script.main(["--results", str(tmp_path / "none"), "--out",
                        str(out), "--data", str(data_file)]) == 1


def test_figures_script_picks_the_ensemble_else_the_best_net(tmp_path):
    script = load_script()
    results = tmp_path / "results"
    results.mkdir()

    def record(experiment, run, accuracy, first="ConvPoolLayer"):
        saved = results / f"{experiment}-{run}.npz"
        saved.write_bytes(b"")                   # voters() only checks it exists
        return {"experiment": experiment, "run": run, "test_accuracy": accuracy,
                "config": {"layers": [{"type": first}]}, "saved": str(saved)}

    def write(experiment, *records):
        with open(results / f"{experiment}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    write("dbl_conv", record("dbl_conv", 0, 0.11))
    write("dbl_conv_tanh", record("dbl_conv_tanh", 0, 0.95))
    write("shallow", record("shallow", 0, 0.97, first="FullyConnectedLayer"))
    name, found = script.voters(results)
    assert name == "shallow" and len(found) == 1          # best test accuracy
    name, found = script.voters(results, conv_only=True)
    assert name == "dbl_conv_tanh"                         # best conv net
    write("ensemble", *(record("ensemble", r, 0.5) for r in range(3)))
    name, found = script.voters(results)
    assert name == "ensemble" and len(found) == 3          # all of them vote


#### Augmented digits (network3.augment) and scripts/augment_demo.py
def test_plot_augmented(tmp_path, rng):
    images = rng.random((10, 784)).astype("float32")
    versions = [rng.random((10, 784)).astype("float32") for _ in range(3)]
    path = figures.plot_augmented(images, versions, tmp_path / "augmented.png")
    assert path == tmp_path / "augmented.png"
    assert_png(path)
    assert_png(figures.plot_augmented(images[:1].reshape(1, 28, 28), [],
                                      tmp_path / "one.png"), 1)
    with pytest.raises(ValueError, match=r"augmented_list\[1\] has shape"):
        figures.plot_augmented(images, [images, images[:5]], tmp_path / "bad.png")


def test_augment_demo_script_writes_the_figure(tmp_path, rng, capsys):
    x = rng.random((30, 784)).astype("float32") * 0.99
    y = np.arange(30) % 10
    data_file = tmp_path / "mnist.pkl.gz"
    n3data.save_data(((x[:20], y[:20]), (x[20:25], y[20:25]),
                      (x[25:], y[25:])), data_file)
    script_path = SCRIPT.parent / "augment_demo.py"
    spec = importlib.util.spec_from_file_location("augment_demo", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "augmented.png"
    assert script.main(["--data", str(data_file), "--out", str(out),
                        "--versions", "2", "--alpha", "0", "--time"]) == out
    assert_png(out)
    assert "20 images in" in capsys.readouterr().out
