"""scripts/conv.py as the book's conv.py, used from a prompt in scripts/.

Each call of the book's run_experiments() and of the chapter's text is
checked against the book's listing, transcribed here by hand: the layers it
builds (types, shapes, activations, p_dropout), the eta, lmbda, epochs and
training set it gives SGD, the headings it prints and what it returns.
Training is stubbed (SGD records its arguments), so these take seconds; the
last test trains for real on a few hundred MNIST images.
"""

import inspect
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import matplotlib
import numpy as np
import pytensor.tensor as pt
import pytest

import network3
from network3 import ReLU, sigmoid, tanh

matplotlib.use("Agg")  # no window; before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import conv  # noqa: E402

#### The book's networks, as its listing builds them
MB = 10  # the book's mini_batch_size


def conv1(act):
    return ("ConvPoolLayer", (MB, 1, 28, 28), (20, 1, 5, 5), (2, 2), act)


def conv2(act):
    return ("ConvPoolLayer", (MB, 20, 12, 12), (40, 20, 5, 5), (2, 2), act)


def fc(n_in, n_out, act=sigmoid, p=0.0):
    return ("FullyConnectedLayer", n_in, n_out, act, p)


def softmax(n_in, p=0.0):
    return ("SoftmaxLayer", n_in, 10, p)


def describe(layer):
    """A layer as the tuples above, from the attributes of the built layer."""
    name = type(layer).__name__
    if name == "ConvPoolLayer":
        return (name, layer.image_shape, layer.filter_shape, layer.poolsize,
                layer.activation_fn)
    if name == "FullyConnectedLayer":
        return (name, layer.n_in, layer.n_out, layer.activation_fn, layer.p_dropout)
    return (name, layer.n_in, layer.n_out, layer.p_dropout)


def leaky(z):
    """An activation function a reader writes."""
    return pt.maximum(0.01 * z, z)


def dbl(act):
    return [conv1(act), conv2(act), fc(640, 100, act), softmax(100)]


def relu_net(n):
    return [conv1(ReLU), conv2(ReLU), fc(640, n, ReLU), softmax(n)]


def double_fc(n):
    return [conv1(ReLU), conv2(ReLU), fc(640, n, ReLU), fc(n, n, ReLU), softmax(n)]


def dropout_net(p0, p1, p2):
    return [conv1(ReLU), conv2(ReLU), fc(640, 1000, ReLU, p0), fc(1000, 1000, ReLU, p1),
            softmax(1000, p2)]


LMBDAS = [0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]  # regularized_dbl_conv's

# call: (what it calls SGD with, in order: (layers, training set, epochs,
# eta, lmbda); the headings it prints; what it returns: the "nets" trained,
# the "last" net, or None)
CALLS = {
    "shallow()": (
        3 * [([fc(784, 100), softmax(100)], "mnist", 60, 0.1, 0.0)],
        3 * ["A shallow net with 100 hidden neurons"], "nets"),
    "shallow(1, 2)": (
        [([fc(784, 100), softmax(100)], "mnist", 2, 0.1, 0.0)],
        ["A shallow net with 100 hidden neurons"], "nets"),
    "basic_conv()": (
        3 * [([conv1(sigmoid), fc(2880, 100), softmax(100)], "mnist", 60, 0.1, 0.0)],
        3 * ["Conv + FC architecture"], "last"),
    "omit_FC()": (
        3 * [([conv1(sigmoid), softmax(2880)], "mnist", 60, 0.1, 0.0)],
        3 * ["Conv only, no FC"], "last"),
    "dbl_conv()": (
        3 * [(dbl(sigmoid), "mnist", 60, 0.1, 0.0)],
        3 * ["Conv + Conv + FC architecture"], "last"),
    "dbl_conv(activation_fn=sigmoid)": (
        3 * [(dbl(sigmoid), "mnist", 60, 0.1, 0.0)],
        3 * ["Conv + Conv + FC architecture"], "last"),
    "dbl_conv(activation_fn=ReLU)": (
        3 * [(dbl(ReLU), "mnist", 60, 0.1, 0.0)],
        3 * ["Conv + Conv + FC architecture"], "last"),
    "dbl_conv(activation_fn=tanh)": (
        3 * [(dbl(tanh), "mnist", 60, 0.1, 0.0)],
        3 * ["Conv + Conv + FC architecture"], "last"),
    "dbl_conv(activation_fn=leaky)": (
        3 * [(dbl(leaky), "mnist", 60, 0.1, 0.0)],
        3 * ["Conv + Conv + FC architecture"], "last"),
    "regularized_dbl_conv()": (
        [(dbl(sigmoid), "mnist", 60, 0.1, lmbda) for lmbda in LMBDAS for j in range(3)],
        ["Conv + Conv + FC num %s, with regularization %s" % (j, lmbda)  # noqa: UP031
         for lmbda in LMBDAS for j in range(3)], None),
    "dbl_conv_relu()": (
        [(dbl(ReLU), "mnist", 60, 0.03, lmbda) for lmbda in [0.0] + LMBDAS
         for j in range(3)],
        ["Conv + Conv + FC num %s, relu, with regularization %s" % (j, lmbda)  # noqa: UP031
         for lmbda in [0.0] + LMBDAS for j in range(3)], None),
    **{f"expanded_data(n={n})": (
        3 * [(relu_net(n), "expanded", 60, 0.03, 0.1)],
        [f"Training with expanded data, {n} neurons in the FC layer, run num {j}"
         for j in range(3)], "last") for n in (100, 300, 1000)},
    **{f"expanded_data_double_fc(n={n})": (
        3 * [(double_fc(n), "expanded", 60, 0.03, 0.1)],
        [f"Training with expanded data, {n} neurons in two FC layers, run num {j}"
         for j in range(3)], None) for n in (100, 300, 1000)},
    "double_fc_dropout(0.5, 0.5, 0.5, 5)": (
        5 * [(dropout_net(0.5, 0.5, 0.5), "expanded", 40, 0.03, 0.0)],
        # the book's Python 2 print of a string ending in a space, then p0,
        # p1, p2: two spaces before 0.5
        [line for j in range(5) for line in (
            "", "", "Training using a dropout network with parameters  0.5 0.5 0.5",
            f"Training with expanded data, run num {j}")], "nets"),
    "double_fc_dropout(0.2, 0.3, 0.4, 1)": (
        [(dropout_net(0.2, 0.3, 0.4), "expanded", 40, 0.03, 0.0)],
        ["", "", "Training using a dropout network with parameters  0.2 0.3 0.4",
         "Training with expanded data, run num 0"], "nets"),
}


#### Stubs: the book's data as small stand-ins, and SGD that records its call
def images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)


@pytest.fixture
def data(monkeypatch):
    """conv's module-level training_data, validation_data and test_data, and
    the expanded training set, as small stand-ins named by ``sets``."""
    sets = {"mnist": images(30, 1), "expanded": images(30, 2)}
    book = (sets["mnist"], images(20, 3), images(50, 4))
    for name, value in zip(("training_data", "validation_data", "test_data"), book):
        # setitem, not setattr: setattr would first read the old value,
        # which loads MNIST
        monkeypatch.setitem(vars(conv), name, value)
    monkeypatch.setattr(conv, "_expanded_training_data", lambda: sets["expanded"])
    sets["validation"], sets["test"] = book[1], book[2]
    return sets


@pytest.fixture
def sgd_calls(monkeypatch, data):
    """Network.SGD stubbed: each call appends (net, the data set's name,
    epochs, eta, lmbda) and checks the book's mini-batch size and its
    validation and test data."""
    calls = []
    names = {id(value): name for name, value in data.items()}

    def sgd(net, training_data, epochs, mini_batch_size, eta, validation_data=None,
            test_data=None, lmbda=0.0, **extras):
        assert mini_batch_size == net.mini_batch_size == MB
        assert validation_data is data["validation"] and test_data is data["test"]
        assert extras == {}  # the book's call: no extra of the port's
        calls.append((net, names[id(training_data)], epochs, eta, lmbda))

    monkeypatch.setattr(network3.Network, "SGD", sgd)
    return calls


def trained(calls):
    return [([describe(layer) for layer in net.layers], name, epochs, eta, lmbda)
            for net, name, epochs, eta, lmbda in calls]


@pytest.mark.parametrize("call", CALLS)
def test_book_call_builds_trains_prints_and_returns_as_the_book(call, sgd_calls, capsys):
    expected_training, headings, returns = CALLS[call]
    result = eval(call, vars(conv) | {"ReLU": ReLU, "tanh": tanh, "sigmoid": sigmoid,
                                      "leaky": leaky})
    assert trained(sgd_calls) == expected_training
    assert capsys.readouterr().out.splitlines() == headings
    nets = [net for net, *_ in sgd_calls]
    if returns == "nets":
        assert isinstance(result, list) and len(result) == len(nets)
        assert all(a is b for a, b in zip(result, nets))
    elif returns == "last":
        assert result is nets[-1]
    else:
        assert result is None


def test_signatures_are_the_books_and_extras_keyword_only():
    book = {"shallow": "(n=3, epochs=60)", "basic_conv": "(n=3, epochs=60)",
            "omit_FC": "()", "dbl_conv": "(activation_fn=None)",
            "regularized_dbl_conv": "()", "dbl_conv_relu": "()",
            "expanded_data": "(n=100)", "expanded_data_double_fc": "(n=100)",
            "double_fc_dropout": "(p0, p1, p2, repetitions)", "ensemble": "(nets)",
            "plot_errors": "(error_locations, erroneous_predictions=None)",
            "plot_filters": "(net, layer, x, y)", "run_experiments": "()"}
    for name, signature in book.items():
        parameters = inspect.signature(getattr(conv, name)).parameters.values()
        positional = [p.replace(annotation=p.empty) for p in parameters
                      if p.kind is not p.KEYWORD_ONLY]
        assert str(inspect.Signature(positional)) == signature, name
    assert conv.mini_batch_size == 10
    # the port's extras default to the book's values (see CALLS)
    assert inspect.signature(conv.regularized_dbl_conv).parameters["lmbdas"].default == \
        tuple(LMBDAS)


def test_a_count_that_is_not_a_whole_number_is_named(sgd_calls):
    with pytest.raises(ValueError, match="n is the number of runs.*got 1.5"):
        conv.shallow(n=1.5)
    with pytest.raises(ValueError, match="repetitions .* got -1"):
        conv.double_fc_dropout(0.5, 0.5, 0.5, -1)
    assert sgd_calls == []


def test_a_call_whose_runs_are_recorded_still_trains(sgd_calls):
    """results/dbl_conv.jsonl holds dbl_conv's runs at the book's settings,
    which the command line skips; the book's function trains anyway, and
    records nothing."""
    records = ROOT / "results" / "dbl_conv.jsonl"
    before = records.read_bytes()
    recorded = [json.loads(line) for line in before.decode().splitlines() if line]
    assert {r["seed"] for r in recorded if r["config"].get("epochs") == 60} >= {0, 1, 2}
    conv.dbl_conv()
    assert len(sgd_calls) == 3
    assert records.read_bytes() == before


#### ensemble, plot_errors, plot_filters
class FixedNet:
    """Stands in for a trained net: gives preset labels to any images."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def predict(self, x, probabilities=False, batch_size=500):
        assert len(x) == len(self.labels)
        return self.labels


def test_ensemble_votes_as_the_book_prints_and_returns_the_errors(data, capsys):
    _, test_y = data["test"]
    rng = np.random.default_rng(5)
    # 5 nets, each right on about half the images, else a label from 3:
    # many ties, which the book's Counter breaks by the first net's label
    predictions = np.where(rng.random((5, len(test_y))) < 0.5, test_y,
                           rng.integers(0, 3, (5, len(test_y))))
    nets = [FixedNet(p) for p in predictions]
    error_locations, erroneous_predictions = conv.ensemble(nets)
    # the book's ensemble, on the same labels
    plurality = [Counter(p).most_common(1)[0][0] for p in predictions.T.tolist()]
    book_errors = [j for j in range(len(test_y)) if plurality[j] != test_y[j]]
    assert 0 < len(book_errors) < len(test_y)
    assert error_locations == book_errors
    assert erroneous_predictions == [plurality[j] for j in book_errors]
    assert all(type(v) is int for v in error_locations + erroneous_predictions)
    accuracy = 1 - len(book_errors) / len(test_y)
    assert capsys.readouterr().out == f"Accuracy is {accuracy:.2%}\n"


def test_plot_errors_shows_each_error_with_its_labels(data):
    test_x, test_y = data["test"]
    locations = list(range(3, 48))  # 45 errors: the book shows the first 40
    predictions = [(test_y[j] + 1) % 10 for j in locations]
    try:
        result = conv.plot_errors(locations, predictions)
        assert result is plt
        axes = plt.gcf().axes
        assert len(axes) == 40
        for j, ax in enumerate(axes):
            i = locations[j]
            assert (ax.get_subplotspec().rowspan.start,
                    ax.get_subplotspec().colspan.start) == (j // 8, j % 8)
            np.testing.assert_array_equal(ax.images[0].get_array(),
                                          test_x[i].reshape(28, 28))
            assert [t.get_text() for t in ax.texts] == [str(test_y[i]), str(predictions[j])]
        conv.plot_errors(locations[:2])  # no predictions: the true labels only
        assert [[t.get_text() for t in ax.texts] for ax in plt.gcf().axes] == \
            [[str(test_y[3])], [str(test_y[4])]]
    finally:
        plt.close("all")


def test_plot_filters_puts_filter_j_in_cell_j(sgd_calls, tmp_path):
    nets = conv.double_fc_dropout(0.5, 0.5, 0.5, 1)
    try:
        for layer, x, y, filters in [(0, 5, 4, 20), (1, 8, 5, 40)]:
            result = conv.plot_filters(nets[0], layer, x, y)
            assert result is plt
            axes = plt.gcf().axes
            w = nets[0].layers[layer].w.get_value()
            assert len(axes) == len(w) == filters
            for j, ax in enumerate(axes):
                spec = ax.get_subplotspec()
                assert (spec.rowspan.start, spec.colspan.start) == (j // x, j % x)
                np.testing.assert_array_equal(ax.images[0].get_array(), w[j][0])
            result.savefig(tmp_path / f"layer_{layer}.png")
            assert (tmp_path / f"layer_{layer}.png").stat().st_size > 1000
        with pytest.raises(ValueError, match="layer 2 .* FullyConnectedLayer"):
            conv.plot_filters(nets[0], 2, 5, 4)
        with pytest.raises(ValueError, match="20 filters.* 4 wide and 4 high"):
            conv.plot_filters(nets[0], 0, 4, 4)
    finally:
        plt.close("all")


#### The book's run_experiments()
# its body, as typed at a prompt in scripts/ after `from conv import *`
RUN_EXPERIMENTS = """
shallow()
basic_conv()
omit_FC()
dbl_conv(activation_fn=sigmoid)
# omitted, but still interesting: regularized_dbl_conv()
dbl_conv_relu()
expanded_data(n=100)
expanded_data(n=300)
expanded_data(n=1000)
expanded_data_double_fc(n=100)
expanded_data_double_fc(n=300)
expanded_data_double_fc(n=1000)
nets = double_fc_dropout(0.5, 0.5, 0.5, 5)
error_locations, erroneous_predictions = ensemble(nets)
plt = plot_errors(error_locations, erroneous_predictions)
plt.savefig("ensemble_errors.png")
plt = plot_filters(nets[0], 0, 5, 4)
plt.savefig("net_full_layer_0.png")
plt = plot_filters(nets[0], 1, 8, 5)
plt.savefig("net_full_layer_1.png")
"""
BOOK_ORDER = ["shallow()", "basic_conv()", "omit_FC()", "dbl_conv()", "dbl_conv_relu()",
              "expanded_data(n=100)", "expanded_data(n=300)", "expanded_data(n=1000)",
              "expanded_data_double_fc(n=100)", "expanded_data_double_fc(n=300)",
              "expanded_data_double_fc(n=1000)", "double_fc_dropout(0.5, 0.5, 0.5, 5)"]


@pytest.fixture
def five_voters(sgd_calls, data, monkeypatch):
    """Network.predict stubbed for the last 5 nets trained: each says the
    true test label, but net 0 errs on image 3, and nets 0, 1 and 2 on
    image 7, so their vote is 98% right."""
    _, test_y = data["test"]

    def predict(net, x, probabilities=False, batch_size=500):
        labels = np.array(test_y)
        index = [net for net, *_ in sgd_calls].index(net) - len(sgd_calls) + 5
        labels[3] += index == 0
        labels[7] += index in (0, 1, 2)
        return labels % 10

    monkeypatch.setattr(network3.Network, "predict", predict)


@pytest.mark.parametrize("how", ["pasted at a prompt", "run_experiments()"])
def test_run_experiments_runs_the_books_calls(how, sgd_calls, data, five_voters,
                                               monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    if how == "pasted at a prompt":
        prompt = {}
        exec("from conv import *", prompt)
        assert prompt["training_data"] is data["mnist"] and prompt["ReLU"] is ReLU
        exec(RUN_EXPERIMENTS, prompt)
    else:
        conv.run_experiments()
    assert trained(sgd_calls) == [training for call in BOOK_ORDER
                                  for training in CALLS[call][0]]
    assert "Accuracy is 98.00%\n" in capsys.readouterr().out
    for png in ("ensemble_errors.png", "net_full_layer_0.png", "net_full_layer_1.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    plt.close("all")


def test_the_readme_session_runs(sgd_calls, data, five_voters, monkeypatch, tmp_path,
                                 capsys):
    """The README's prompt session, typed after `from conv import *`."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(">>> from conv import *"):]
    block = block[:block.index("```")]
    lines = [line.removeprefix(">>> ") for line in block.splitlines()]
    assert len(lines) >= 4
    monkeypatch.chdir(tmp_path)
    exec("\n".join(lines), {})
    assert trained(sgd_calls) == CALLS["double_fc_dropout(0.5, 0.5, 0.5, 5)"][0]
    assert "Accuracy is 98.00%" in capsys.readouterr().out
    assert (tmp_path / "ensemble_errors.png").exists()
    plt.close("all")


def test_the_readme_is_under_2000_words():
    # issue 24: the README stays short; detail goes to docs/*.md
    assert len((ROOT / "README.md").read_text().split()) < 2000


#### Importing, and a real run
def test_import_is_quick_and_the_data_loads_on_first_use(mnist_path):
    """`import conv` imports no PyTensor and loads no data; conv.test_data
    loads the book's data once (the command line's copy: experiments.load)."""
    code = ("import sys; import conv\n"
            "assert 'pytensor' not in sys.modules, 'imported PyTensor'\n"
            "assert 'test_data' not in vars(conv)\n"
            "test_data = conv.test_data\n"
            "from network3 import experiments\n"
            "assert conv.training_data is experiments.load('mnist')[0]\n"
            "assert test_data is conv.test_data is experiments.load('mnist')[2]\n"
            "from network3.data import size\n"
            "print(size(conv.training_data), size(conv.validation_data), size(test_data))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "scripts",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["50000", "10000", "10000"]


@pytest.mark.mnist
@pytest.mark.slow
def test_a_real_run_prints_the_books_lines_and_votes(mnist_shared, monkeypatch, capsys):
    """shallow(1, 1) on 300 training images: the book's heading and SGD
    lines; an ensemble of that one net scores what the net scores."""
    from network3.data import subset
    training, validation, test = mnist_shared
    book = (subset(training, 300), subset(validation, 100), subset(test, 100))
    for name, value in zip(("training_data", "validation_data", "test_data"), book):
        monkeypatch.setitem(vars(conv), name, value)
    nets = conv.shallow(1, 1)
    printed = capsys.readouterr().out
    assert printed.startswith("A shallow net with 100 hidden neurons\n"
                              "Training mini-batch number 0\n")
    assert "Epoch 0: validation accuracy" in printed
    assert "Finished training network." in printed
    error_locations, erroneous_predictions = conv.ensemble(nets)
    labels = nets[0].predict(book[2][0].get_value())
    y = book[2][1].eval()
    assert error_locations == np.flatnonzero(labels != y).tolist()
    assert erroneous_predictions == labels[labels != y].tolist()
    assert capsys.readouterr().out == f"Accuracy is {np.mean(labels == y):.2%}\n"
