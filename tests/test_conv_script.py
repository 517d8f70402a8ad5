"""Every experiment of scripts/conv.py runs end to end for a tiny budget
(one epoch on a small real MNIST subset) and records its run.

These check the wiring (architecture, settings, results record, saved
network), not the speed, so they compile with the JAX backend, which
compiles a conv network in seconds where a cold Numba cache takes minutes;
the Numba path of the same networks is covered by test_book_sessions.py."""

import json
import sys
from pathlib import Path

import pytest

import network3
from network3.data import subset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
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
    assert 0 <= record["test_accuracy"] <= 1
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


def test_ensemble_votes_and_records(small, tmp_path, capsys):
    nets, result = conv.ensemble(runs=2, epochs=1, data=small,
                                 out=tmp_path / "ensemble.jsonl")
    assert len(nets) == 2
    vote = json.loads((tmp_path / "ensemble_vote.jsonl").read_text())
    assert vote["errors"] == len(result.misclassified) == len(vote["misclassified"])
    assert vote["test_accuracy"] == pytest.approx(result.accuracy)
    assert len(vote["members"]) == 2
    assert "Ensemble of 2 nets" in capsys.readouterr().out
