"""network3.network: Network and SGD against the book (CONTRACT.md sections
1-2): the cost, the update, the mini-batch order, selection by validation
accuracy, the printed lines, the fixed quirks, the argument checks.

The reference is tests/references.py: the book's SGD loop and a hand-written
backprop of FC(sigmoid) -> softmax in numpy.  Every network here has that
one tiny shape (6 inputs, 5 hidden, 3 classes, mini-batches of 4), so the
default backend (Numba) compiles it once and then finds it in its cache.
"""

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytensor
import pytest
from pytensor.graph.traversal import ancestors

import network3
from network3 import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer, backend

import references as ref

M = 4             # mini-batch size of every network here
N_IN, N_HIDDEN, N_CLASSES = 6, 5, 3


def tiny_net(**fc_kwargs):
    return Network([FullyConnectedLayer(N_IN, N_HIDDEN, **fc_kwargs),
                    SoftmaxLayer(N_HIDDEN, N_CLASSES)], M)


def tiny_data(n, rng, labels=None):
    """n examples as numpy arrays: x in [0, 1), labels 0..2."""
    x = rng.random((n, N_IN))
    y = rng.integers(0, N_CLASSES, n) if labels is None else np.full(n, labels)
    return x, y


def shared(pair):
    """(x, y) as load_data_shared returns them: shared float x, int32 y."""
    x, y = pair
    return (pytensor.shared(np.asarray(x, dtype=network3.floatX()), borrow=True),
            pytensor.shared(np.asarray(y, dtype="int32"), borrow=True))


def params_of(net):
    return [p.get_value().copy() for p in net.params]


def run_sgd(net, *args, **kwargs):
    """net.SGD(*args, **kwargs); returns the printed lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        net.SGD(*args, **kwargs)
    return out.getvalue().splitlines()


#### One float64 run checked line by line and value by value
# 14 training examples: 3 mini-batches and a trailing partial one of 2;
# 11 validation and 10 test examples: 2 complete mini-batches each + rest.
EPOCHS, ETA = 2, 0.5


@pytest.fixture(scope="module")
def book_run():
    network3.set_floatX("float64")
    network3.seed(3)
    rng = np.random.default_rng(3)
    training, validation, test = tiny_data(14, rng), tiny_data(11, rng), tiny_data(10, rng)
    net = tiny_net()
    start = params_of(net)
    lines = run_sgd(net, shared(training), EPOCHS, M, ETA, shared(validation),
                    shared(test))
    expected, expected_lines, _ = ref.fc_softmax_sgd(
        start, training, EPOCHS, M, ETA, validation, test)
    network3.set_floatX("float32")
    return dict(net=net, start=start, lines=lines, data=(training, validation, test),
                expected=expected, expected_lines=expected_lines)


def test_minibatches_are_contiguous_slices_in_order_partial_batch_dropped(book_run):
    for got, want in zip(params_of(book_run["net"]), book_run["expected"]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # the check can tell: shuffled batches, or a last batch of 2, train otherwise
    training, validation, _ = book_run["data"]
    order = np.r_[4:8, 0:4, 8:14]
    shuffled, _, _ = ref.fc_softmax_sgd(book_run["start"], (
        training[0][order], training[1][order]), EPOCHS, M, ETA, validation)
    assert not np.allclose(shuffled[0], book_run["expected"][0], rtol=1e-6)
    with_partial = book_run["start"]
    for _ in range(EPOCHS):
        for batch in (slice(0, 4), slice(4, 8), slice(8, 12), slice(12, 14)):
            with_partial, _ = ref.fc_softmax_step(
                with_partial, training[0][batch], training[1][batch], ETA, 0.0, 4)
    assert not np.allclose(with_partial[0], book_run["expected"][0], rtol=1e-6)


def test_printed_lines_are_the_books(book_run):
    """CONTRACT section 2's exact lines, with the accuracies of the numpy
    reference (mean over complete mini-batches; partial batch dropped)."""
    assert book_run["lines"] == book_run["expected_lines"]


def test_validation_accuracy_is_mean_over_complete_mini_batches(book_run):
    net = book_run["net"]
    _, (vx, vy), _ = book_run["data"]
    final = ref.accuracy(book_run["expected"], vx, vy, M)
    assert net.history[-1]["validation_accuracy"] == pytest.approx(final)
    assert f"Epoch {EPOCHS - 1}: validation accuracy {final:.2%}" in book_run["lines"]


def test_test_mb_predictions_after_sgd(book_run):
    net = book_run["net"]
    _, _, (tx, _) = book_run["data"]
    for i in range(len(tx) // M):
        _, p = ref.fc_softmax_forward(book_run["expected"], tx[i * M:(i + 1) * M])
        np.testing.assert_array_equal(net.test_mb_predictions(i), p.argmax(axis=1))


def test_network_attributes(book_run):
    net = book_run["net"]
    assert net.mini_batch_size == M
    assert len(net.layers) == 2
    assert net.params == [net.layers[0].w, net.layers[0].b,
                          net.layers[1].w, net.layers[1].b]
    for name in ("x", "y", "output", "output_dropout"):
        assert isinstance(getattr(net, name), pytensor.graph.basic.Variable)
    assert net.output is net.layers[-1].output
    assert net.output_dropout is net.layers[-1].output_dropout
    assert callable(net.test_mb_predictions)


def test_set_floatX_float64_network(book_run):
    net = book_run["net"]
    assert all(p.get_value().dtype == np.float64 for p in net.params)
    assert net.x.dtype == "float64" and net.output.dtype == "float64"


def test_training_mini_batch_printed_every_1000_iterations(rng):
    """600 mini-batches per epoch, 2 epochs: iterations 0 and 1000 print,
    the second one in the middle of epoch 1."""
    network3.set_floatX("float64")
    training, validation = tiny_data(600 * M, rng), tiny_data(2 * M, rng)
    net = tiny_net()
    start = params_of(net)
    lines = run_sgd(net, shared(training), 2, M, ETA, shared(validation))
    params, expected_lines, _ = ref.fc_softmax_sgd(start, training, 2, M, ETA,
                                                   validation)
    assert [line for line in lines if line.startswith("Training")] == [
        "Training mini-batch number 0", "Training mini-batch number 1000"]
    assert lines == expected_lines
    for got, want in zip(params_of(net), params):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


#### The cost and the update
def test_cost_is_mean_nll_plus_l2_over_num_training_batches(rng):
    """One epoch of 3 mini-batches with eta and lmbda non-zero equals the
    numpy steps of param - eta * grad(mean NLL + 0.5 * lmbda * sum(w**2) /
    num_training_batches), biases excluded from the L2 term."""
    network3.set_floatX("float64")
    eta, lmbda = 0.5, 2.0
    training, validation = tiny_data(3 * M, rng), tiny_data(M, rng)
    net = tiny_net()
    net.layers[1].w.set_value(rng.normal(size=(N_HIDDEN, N_CLASSES)))
    start = params_of(net)
    run_sgd(net, shared(training), 1, M, eta, shared(validation), lmbda=lmbda)
    expected, _, _ = ref.fc_softmax_sgd(start, training, 1, M, eta, validation,
                                        lmbda=lmbda)
    for got, want in zip(params_of(net), expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # the L2 term divided by the number of examples (12) would differ
    per_example, _, _ = ref.fc_softmax_sgd(start, training, 1, M, eta, validation,
                                           lmbda=lmbda / M)
    assert not np.allclose(params_of(net)[0], per_example[0], rtol=1e-6)
    # the training cost recorded for the epoch is that cost, averaged
    costs, params = [], start
    for i in range(3):
        params, cost = ref.fc_softmax_step(params, training[0][i * M:(i + 1) * M],
                                           training[1][i * M:(i + 1) * M], eta,
                                           lmbda, 3)
        costs.append(cost)
    assert net.history[0]["training_cost"] == pytest.approx(np.mean(costs), rel=1e-10)


def test_sgd_update_is_plain_gradient_descent(rng):
    """One mini-batch, one step, lmbda = 0: param -= eta * grad, no momentum
    or other state."""
    network3.set_floatX("float64")
    training, validation = tiny_data(M, rng), tiny_data(M, rng)
    net = tiny_net()
    start = params_of(net)
    run_sgd(net, shared(training), 1, M, ETA, shared(validation))
    step, _ = ref.fc_softmax_step(start, *training, ETA, 0.0, 1)
    for got, want in zip(params_of(net), step):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


#### Selection by validation accuracy
def test_selection_uses_greater_or_equal(rng):
    """Every label 0: the network predicts 0 from its first step on, so the
    validation accuracy is 100% every epoch; each equal epoch counts as the
    best (>=), and the best iteration is the last epoch's."""
    training, validation, test = (tiny_data(3 * M, rng, labels=0),
                                  tiny_data(2 * M, rng, labels=0),
                                  tiny_data(2 * M, rng, labels=0))
    net = tiny_net()
    lines = run_sgd(net, shared(training), 3, M, 0.1, shared(validation),
                    shared(test))
    expected = ["Training mini-batch number 0"]
    for epoch in range(3):
        expected += [f"Epoch {epoch}: validation accuracy 100.00%",
                     "This is the best validation accuracy to date.",
                     "The corresponding test accuracy is 100.00%"]
    expected += ["Finished training network.",
                 "Best validation accuracy of 100.00% obtained at iteration 8",
                 "Corresponding test accuracy of 100.00%"]
    assert lines == expected


def test_test_accuracy_computed_only_at_best_epochs(rng, monkeypatch):
    """Validation accuracies scripted as 50, 25, 50, 75, 50%: epochs 0, 2
    (equal counts) and 3 are the best; the test set is evaluated then and
    only then."""
    scripted = [0.5, 0.25, 0.5, 0.75, 0.5]
    training, validation, test = (shared(tiny_data(2 * M, rng)),
                                  shared(tiny_data(2 * M, rng)),
                                  shared(tiny_data(3 * M, rng)))
    calls = {"validation": 0, "test": 0}
    compile_function = pytensor.function

    def spy(inputs, outputs, **kwargs):
        f = compile_function(inputs, outputs, **kwargs)
        sources = set(ancestors(list(kwargs.get("givens", {}).values())))
        if validation[1] in sources:      # the validation accuracy
            def validate(i):
                f(i)
                calls["validation"] += 1
                return scripted[(calls["validation"] - 1) // 2]
            return validate
        if test[1] in sources:            # the test accuracy
            def count(i):
                calls["test"] += 1
                return f(i)
            return count
        return f

    monkeypatch.setattr(pytensor, "function", spy)
    lines = run_sgd(tiny_net(), training, 5, M, 0.1, validation, test)
    assert calls == {"validation": 5 * 2, "test": 3 * 3}
    test_line = r"The corresponding test accuracy is \d+\.\d\d%"
    expected = ["Training mini-batch number 0",
                "Epoch 0: validation accuracy 50.00%",
                "This is the best validation accuracy to date.", test_line,
                "Epoch 1: validation accuracy 25.00%",
                "Epoch 2: validation accuracy 50.00%",
                "This is the best validation accuracy to date.", test_line,
                "Epoch 3: validation accuracy 75.00%",
                "This is the best validation accuracy to date.", test_line,
                "Epoch 4: validation accuracy 50.00%",
                "Finished training network.",
                "Best validation accuracy of 75.00% obtained at iteration 7",
                r"Corresponding test accuracy of \d+\.\d\d%"]
    assert len(lines) == len(expected)
    for line, pattern in zip(lines, expected):
        assert re.fullmatch(pattern if "\\d" in pattern else re.escape(pattern), line)
    # the final test accuracy is the one printed at the best epoch (3)
    assert lines[-1].split()[-1] == lines[10].split()[-1]


def test_test_data_none_works(rng):
    """Regression: the original crashed without test data."""
    training, validation = shared(tiny_data(2 * M, rng)), shared(tiny_data(M, rng))
    net = tiny_net()
    lines = run_sgd(net, training, 2, M, 0.1, validation, None)
    assert not any("test accuracy" in line for line in lines)
    assert lines[-2] == "Finished training network."
    assert re.fullmatch(r"Best validation accuracy of \d+\.\d\d% obtained at "
                        r"iteration (1|3)", lines[-1])
    assert run_sgd(tiny_net(), training, 1, M, 0.1, validation)  # positional default


@pytest.mark.parametrize("name", ["numba", pytest.param("jax", marks=pytest.mark.jax)])
def test_dropout_masks_change_every_training_step(rng, monkeypatch, name):
    """Each training step draws a new mask.  With one example per
    mini-batch, a softmax layer that drops its input changes, at each step,
    exactly the rows of w whose input unit the step's mask kept: the masks
    can be read off the parameters."""
    network3.set_backend(name)
    training = shared((rng.uniform(0.5, 1.5, size=(8, N_IN)), rng.integers(0, 3, 8)))
    net = Network([SoftmaxLayer(N_IN, N_CLASSES, p_dropout=0.5)], 1)
    w = net.layers[0].w
    masks, last = [], [w.get_value().copy()]
    compile_function = pytensor.function

    def spy(inputs, outputs, **kwargs):
        f = compile_function(inputs, outputs, **kwargs)
        if training[1] not in set(ancestors(list(kwargs.get("givens", {}).values()))):
            return f

        def train(i):
            cost = f(i)
            now = w.get_value().copy()
            masks.append((now != last[0]).any(axis=1))
            last[0] = now
            return cost
        return train

    monkeypatch.setattr(pytensor, "function", spy)
    run_sgd(net, training, 2, 1, 0.1, shared(tiny_data(2, rng)))
    masks = np.array(masks)
    assert masks.shape == (16, N_IN)
    assert 0.3 < masks.mean() < 0.7
    # 16 masks of 6 units: a new draw each step shows as at least 8 distinct
    assert len({mask.tobytes() for mask in masks}) >= 8


#### Data in the forms users pass
def test_book_style_int32_cast_labels_and_numpy_arrays(rng):
    """The book's load_data_shared returned y as T.cast(shared_y, "int32")
    of a float shared variable; numpy arrays work as well."""
    x, y = tiny_data(2 * M, rng)
    book_y = pytensor.tensor.cast(pytensor.shared(y.astype("float32")), "int32")
    training = (pytensor.shared(x.astype("float32")), book_y)
    network3.seed(5)
    net_a = tiny_net()
    run_sgd(net_a, training, 1, M, 0.1, training, training)
    network3.seed(5)
    net_b = tiny_net()
    run_sgd(net_b, (x, y), 1, M, 0.1, (x, y), (x, y))
    for a, b in zip(params_of(net_a), params_of(net_b)):
        np.testing.assert_array_equal(a, b)


#### Float type, backends, import side effects
def test_network_is_float32_by_default(rng):
    training = shared(tiny_data(2 * M, rng))
    net = tiny_net()
    run_sgd(net, training, 1, M, 0.1, training, training)
    assert net.x.dtype == "float32" and net.output.dtype == "float32"
    assert all(p.get_value().dtype == np.float32 for p in net.params)
    output = backend.function([net.x], net.output)(training[0].get_value()[:M])
    assert output.dtype == np.float32
    assert net.test_mb_predictions(0).shape == (M,)


def test_contract_names_are_importable():
    """CONTRACT section 1: every name the book's code imports."""
    from network3 import (  # noqa: F401
        GPU,
        ConvPoolLayer,
        FullyConnectedLayer,
        Network,
        ReLU,
        SoftmaxLayer,
        dropout_layer,
        linear,
        load_data_shared,
        sigmoid,
        size,
        tanh,
    )
    for name in ("Network", "ConvPoolLayer", "FullyConnectedLayer", "SoftmaxLayer",
                 "sigmoid", "tanh", "ReLU", "linear", "load_data_shared", "size",
                 "dropout_layer", "GPU"):
        assert hasattr(network3, name)


@pytest.mark.parametrize("keep", [None, "1"])
def test_importing_network3_sets_only_floatX(keep):
    """The original set theano.config.device and floatX at import, and
    printed a message.  network3 sets floatX only, as the original did
    (code written around the network relies on it), and nothing at all with
    NETWORK3_KEEP_FLOATX=1."""
    code = (
        "import json, pytensor\n"
        "names = ('floatX', 'mode', 'linker', 'optimizer', 'cast_policy',"
        " 'compiledir')\n"
        "before = {n: str(getattr(pytensor.config, n)) for n in names}\n"
        "import network3\n"
        "after = {n: str(getattr(pytensor.config, n)) for n in names}\n"
        "print(json.dumps([before, after]))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTENSOR_FLAGS", "NETWORK3_KEEP_FLOATX")}
    if keep:
        env["NETWORK3_KEEP_FLOATX"] = keep
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, check=True, timeout=120, env=env)
    before, after = json.loads(result.stdout)   # nothing else printed
    assert before["floatX"] == "float64"  # PyTensor's default
    assert after == dict(before, floatX="float64" if keep else "float32")
    # no device mode
    assert after["mode"] == "Mode" and after["linker"] == "auto"


def test_GPU_flag_exists_and_is_false():
    assert network3.GPU is False
    assert backend.backend() == "numba"


def test_GPU_flag_selects_the_jax_backend():
    network3.GPU = True
    assert backend.backend() == "jax"
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(RuntimeError, match="GPU"):
            backend.function([], [])


def test_set_backend():
    network3.set_backend("c")
    assert backend.backend() == "c"
    network3.set_backend(None)
    assert backend.backend() == "numba"
    with pytest.raises(ValueError, match="tpu"):
        network3.set_backend("tpu")


@pytest.mark.jax
def test_sgd_on_jax_backend_matches_numba(rng):
    """network3.set_backend("jax") (the GPU route) trains the same network
    to the same parameters as the default backend."""
    data = tiny_data(3 * M, rng)
    results = []
    for name in ("numba", "jax"):
        network3.set_backend(name)
        network3.seed(11)
        net = tiny_net()
        lines = run_sgd(net, shared(data), 2, M, 0.1, shared(data), shared(data))
        results.append((params_of(net), lines))
    (numba_params, numba_lines), (jax_params, jax_lines) = results
    for a, b in zip(numba_params, jax_params):
        # float32 on JAX too (PyTensor's JAX sums returned their float64
        # accumulator, and the parameters came back float64)
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert numba_lines == jax_lines


@pytest.mark.jax
def test_shared_variables_are_numpy_again_after_leaving_jax(rng):
    """A network trained on JAX keeps its parameters on the device; choosing
    another backend gives numpy arrays back, which .eval(), get_value and
    Numba functions take, and choosing JAX again trains on from there."""
    data = shared(tiny_data(3 * M, rng))
    network3.set_backend("jax")
    network3.seed(11)
    net = tiny_net()
    run_sgd(net, data, 1, M, 0.1, data, data)
    w = net.layers[0].w
    assert not isinstance(w.get_value(borrow=True), np.ndarray)  # on the device
    network3.set_backend("numba")
    for value in (w.get_value(borrow=True), data[0].get_value(borrow=True)):
        assert isinstance(value, np.ndarray) and value.flags.writeable
    np.testing.assert_array_equal(w.eval(), w.get_value())
    assert np.isfinite(backend.function([], (w ** 2).sum())())
    network3.set_backend("jax")
    assert not isinstance(data[0].get_value(borrow=True), np.ndarray)
    run_sgd(net, data, 1, M, 0.1, data, data)
    network3.set_backend(None)
    assert isinstance(w.get_value(borrow=True), np.ndarray)


def test_conv_network_trains_on_default_backend(rng):
    """A ConvPoolLayer and a dropout layer in one small network compile on
    the default backend and learn: every parameter moves."""
    x = rng.random((3 * M, 36)).astype(np.float32)
    y = rng.integers(0, N_CLASSES, 3 * M)
    net = Network([ConvPoolLayer((2, 1, 3, 3), (M, 1, 6, 6), (2, 2), activation_fn=ReLU),
                   FullyConnectedLayer(8, N_HIDDEN, p_dropout=0.5),
                   SoftmaxLayer(N_HIDDEN, N_CLASSES)], M)
    start = params_of(net)
    lines = run_sgd(net, shared((x, y)), 2, M, 0.1, shared((x, y)), shared((x, y)),
                    lmbda=0.1)
    assert lines[0] == "Training mini-batch number 0" and len(lines) >= 7
    for before, after in zip(start, params_of(net)):
        assert after.dtype == np.float32
        assert not np.array_equal(before, after)


#### Argument checks: fail early, name the value
def test_wrong_n_in_after_fully_connected_layer():
    with pytest.raises(ValueError, match=r"takes 4 inputs.*gives 5.*n_in=5"):
        Network([FullyConnectedLayer(6, 5), SoftmaxLayer(4, 3)], M)


def test_wrong_n_in_after_conv_pool_layer():
    with pytest.raises(ValueError, match=r"takes 100 inputs.*20\*12\*12 = 2880"):
        Network([ConvPoolLayer((20, 1, 5, 5), (10, 1, 28, 28)),
                 FullyConnectedLayer(100, 100), SoftmaxLayer(100, 10)], 10)


def test_image_shape_batch_differs_from_mini_batch_size():
    with pytest.raises(ValueError, match=r"\(10, 1, 28, 28\).*mini_batch_size=20"):
        Network([ConvPoolLayer((20, 1, 5, 5), (10, 1, 28, 28)),
                 FullyConnectedLayer(2880, 100), SoftmaxLayer(100, 10)], 20)


def test_sgd_needs_a_last_layer_with_a_cost(pairs):
    # the network builds (its graph is usable in compiled functions); SGD,
    # which needs the cost, says what is missing before compiling anything
    net = Network([FullyConnectedLayer(6, 5)], M)
    with pytest.raises(TypeError, match=r"define cost \(a SoftmaxLayer does\), got layer 0"):
        net.SGD(pairs[0], 1, M, 0.1, pairs[1])


@pytest.mark.parametrize("size", [0, -4, 2.5])
def test_invalid_mini_batch_size(size):
    with pytest.raises(ValueError, match=str(size)):
        Network([FullyConnectedLayer(6, 5), SoftmaxLayer(5, 3)], size)


@pytest.fixture
def pairs(rng):
    return tiny_data(2 * M, rng), tiny_data(M, rng)


def test_sgd_mini_batch_size_mismatch(pairs):
    training, validation = pairs
    with pytest.raises(ValueError, match=r"mini_batch_size=10.*mini_batch_size=4"):
        tiny_net().SGD(training, 1, 10, 0.1, validation)


@pytest.mark.parametrize("epochs", [0, -1, 1.5])
def test_sgd_epochs_must_be_positive_integer(pairs, epochs):
    training, validation = pairs
    with pytest.raises(ValueError, match=f"epochs.*{epochs}"):
        tiny_net().SGD(training, epochs, M, 0.1, validation)


@pytest.mark.parametrize("eta", [-0.1, float("nan")])
def test_sgd_eta_must_not_be_negative(pairs, eta):
    training, validation = pairs
    with pytest.raises(ValueError, match=f"eta.*{eta}"):
        tiny_net().SGD(training, 1, M, eta, validation)


def test_sgd_lmbda_must_not_be_negative(pairs):
    training, validation = pairs
    with pytest.raises(ValueError, match="lmbda.*-1"):
        tiny_net().SGD(training, 1, M, 0.1, validation, lmbda=-1.0)


@pytest.mark.parametrize("which", ["training_data", "validation_data", "test_data"])
def test_sgd_nan_in_data(pairs, which):
    training, validation = pairs
    data = {"training_data": training, "validation_data": validation,
            "test_data": validation}
    x = data[which][0].copy()
    x[1, 2] = np.nan
    data[which] = (x, data[which][1])
    with pytest.raises(ValueError, match=f"{which}.*NaN"):
        tiny_net().SGD(data["training_data"], 1, M, 0.1, data["validation_data"],
                       data["test_data"])


@pytest.mark.parametrize("bad_label", [3, -1])
def test_sgd_labels_out_of_range(pairs, bad_label):
    training, validation = pairs
    y = training[1].copy()
    y[0] = bad_label
    with pytest.raises(ValueError, match=f"training_data.*{bad_label}.*3 classes"):
        tiny_net().SGD((training[0], y), 1, M, 0.1, validation)


def test_sgd_data_smaller_than_a_mini_batch(pairs, rng):
    training, _ = pairs
    with pytest.raises(ValueError, match=r"validation_data has 3 examples.*4"):
        tiny_net().SGD(training, 1, M, 0.1, tiny_data(3, rng))


def test_sgd_wrong_image_size_for_first_layer(rng):
    with pytest.raises(ValueError, match=r"training_data has 7 values.*takes 6"):
        tiny_net().SGD((rng.random((8, 7)), np.zeros(8, int)), 1, M, 0.1,
                       tiny_data(M, rng))
    conv_net = Network([ConvPoolLayer((20, 1, 5, 5), (10, 1, 28, 28)),
                        FullyConnectedLayer(2880, 100), SoftmaxLayer(100, 10)], 10)
    images = (rng.random((20, 700)), np.zeros(20, int))
    with pytest.raises(ValueError, match=r"700 values.*ConvPoolLayer.*784"):
        conv_net.SGD(images, 1, 10, 0.1, images)


def test_sgd_mismatched_x_and_y_lengths(rng):
    x, y = tiny_data(2 * M, rng)
    with pytest.raises(ValueError, match=r"\(8, 6\).*\(7,\)"):
        tiny_net().SGD((x, y[:-1]), 1, M, 0.1, (x, y))
