"""Drop-in for the code readers wrote around the book's network3.py, not
only the chapter's sessions (CONTRACT.md section 2, last paragraph; issue
15).  Each test runs code written for the original (Theano read as
PyTensor: ``theano`` is ``pytensor``, ``T`` is ``pytensor.tensor``):

1. functions a user compiles from the dropout graph draw new masks on every
   call, with no update passed, the book's SGD step in a user's loop
   included;
2. ``np.random.seed(s)`` before building a network makes its initial
   weights repeatable (the original drew them from numpy's global
   generator);
3. the float type is float32 for the user's own graph code too (the
   original set floatX at import);
4. Ctrl-C stops a script's loop over runs, after SGD has kept the best
   parameters and printed its summary;
5. the file the book's ``expand_mnist.py`` writes (lists, pickle protocol 0)
   loads;
6. layers written to the original's duck-typed interface work in
   ``Network``;
7. ``softmax`` importable, ReLU's gradient at 0, ``ConvPoolLayer.inpt`` in the
   graph, ``eta=0.0``.

Networks are tiny; most graphs compile with FAST_COMPILE, and the few that
use the default backend have one small shape, found in its disk cache after
the first run.
"""

import codecs
import gzip
import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys

import numpy as np
import pytensor
import pytensor.tensor as T
import pytest
from pytensor.graph.traversal import ancestors
from pytensor.tensor.random.type import RandomType

import network3
from network3 import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer
from network3 import data as n3data
from network3 import layers as n3layers

theano = pytensor  # the book's names, for code copied from it
PY = "FAST_COMPILE"


def toy_data(n, rng, n_in=6):
    """Linearly separable 3-class data: the label is the argmax of three
    fixed projections."""
    x = rng.normal(size=(n, n_in))
    y = (x @ np.arange(n_in * 3).reshape(n_in, 3) % 7).argmax(axis=1)
    return x, y


def book_shared(data):
    """The book's load_data_shared's inner function, as its readers had it."""
    shared_x = theano.shared(
        np.asarray(data[0], dtype=theano.config.floatX), borrow=True)
    shared_y = theano.shared(
        np.asarray(data[1], dtype=theano.config.floatX), borrow=True)
    return shared_x, T.cast(shared_y, "int32")


def dropout_net(m=10):
    return Network([FullyConnectedLayer(n_in=6, n_out=8, p_dropout=0.5),
                    SoftmaxLayer(n_in=8, n_out=3, p_dropout=0.5)], m)


def dropout_rngs(variable):
    return [v for v in ancestors([variable])
            if isinstance(v.type, RandomType) and hasattr(v, "get_value")]


def rng_state(rng):
    return json.dumps(rng.get_value().bit_generator.state, default=str)


#### 1. Dropout masks change on every call of a function the user compiles
MODES = ["default", PY, "network3",
         pytest.param("JAX", marks=[pytest.mark.jax, pytest.mark.filterwarnings(
             "ignore:The RandomType SharedVariables")])]


def compile_as(mode, inputs, outputs):
    if mode == "network3":
        return network3.backend.function(inputs, outputs)
    if mode == "default":
        return theano.function(inputs, outputs)
    return theano.function(inputs, outputs, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_user_compiled_function_of_output_dropout_draws_new_masks(mode, rng):
    net = dropout_net()
    # as after some training: the output layer's weights are not all zero
    out = net.layers[-1]
    out.w.set_value(rng.normal(size=(8, 3)).astype(out.w.dtype))
    f = compile_as(mode, [net.x], net.output_dropout)   # no updates passed
    x = rng.random((10, 6)).astype(theano.config.floatX)
    first, second = np.asarray(f(x)), np.asarray(f(x))
    assert not np.allclose(first, second), (
        f"two calls of a {mode} function of net.output_dropout gave the same "
        "output: the dropout masks did not change")
    # the inference graph has no mask: the same output every call
    g = compile_as(mode, [net.x], net.output)
    np.testing.assert_array_equal(g(x), g(x))


def test_each_layer_keeps_its_own_stream_and_eval_advances_it(rng):
    net = dropout_net()
    rngs = dropout_rngs(net.output_dropout)
    assert len(rngs) == 2 and rngs[0] is not rngs[1]
    masks = theano.function(
        [net.x], [layer.inpt_dropout for layer in net.layers], mode=PY)
    x = np.ones((10, 6), theano.config.floatX)
    a = [m != 0 for m in masks(x)]
    b = [m != 0 for m in masks(x)]
    assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])
    # Variable.eval compiles a function too
    inpt = net.layers[0].inpt_dropout
    assert not np.array_equal(inpt.eval({net.x: x}) != 0, inpt.eval({net.x: x}) != 0)


def test_the_books_sgd_step_in_a_users_loop_draws_new_masks_every_step(rng):
    """The book's SGD code, copied into a user's script (to add early
    stopping, say), with dropout: every step must draw new masks.  Also the
    float type: ``param - eta*grad`` with a Python float ``eta`` and data
    made with ``dtype=theano.config.floatX`` compile as they did."""
    training_x, training_y = book_shared(toy_data(60, rng))
    net = dropout_net()
    eta, lmbda, num_training_batches = 0.5, 0.1, 6
    # define the (regularized) cost function, symbolic gradients, and updates
    l2_norm_squared = sum([(layer.w**2).sum() for layer in net.layers])
    cost = net.layers[-1].cost(net) + \
        0.5*lmbda*l2_norm_squared/num_training_batches
    grads = T.grad(cost, net.params)
    updates = [(param, param-eta*grad)
               for param, grad in zip(net.params, grads)]
    i = T.lscalar()  # mini-batch index
    train_mb = theano.function(
        [i], cost, updates=updates,
        givens={
            net.x:
            training_x[i*net.mini_batch_size: (i+1)*net.mini_batch_size],
            net.y:
            training_y[i*net.mini_batch_size: (i+1)*net.mini_batch_size]
        }, mode=PY)
    rngs = dropout_rngs(cost)
    assert len(rngs) == 2
    for _epoch in range(2):  # the user's own loop
        for minibatch_index in range(num_training_batches):
            before = [rng_state(r) for r in rngs]
            cost_ij = train_mb(minibatch_index)
            assert np.isfinite(cost_ij)
            assert all(rng_state(r) != b for r, b in zip(rngs, before)), (
                "a training step left a dropout stream where it was: the "
                "next step would use the same mask")
    # what the masks do: the same step from the same parameters on the same
    # mini-batch moves them differently, since the masks differ
    start = [p.get_value() for p in net.params]
    moves = []
    for _ in range(2):
        train_mb(0)
        moves.append([p.get_value() - s for p, s in zip(net.params, start)])
        for p, s in zip(net.params, start):
            p.set_value(s)
    assert not all(np.array_equal(a, b) for a, b in zip(*moves)), (
        "two identical steps moved the parameters identically: the book's "
        "SGD step trains every mini-batch with one fixed dropout mask")


def test_default_updates_are_still_applied_by_this_pytensor():
    """network3 relies on SharedVariable.default_update (deprecated in
    PyTensor 3, still applied).  If a PyTensor release stops applying it,
    this fails here, and building a dropout layer raises instead of
    freezing masks."""
    assert n3layers._probe_default_updates()
    net = dropout_net()
    for rng in dropout_rngs(net.output_dropout):
        assert rng.default_update is not None


def test_dropout_refuses_to_build_when_default_updates_are_not_applied(monkeypatch):
    monkeypatch.setattr(n3layers, "_default_updates", {})
    monkeypatch.setattr(n3layers, "_probe_default_updates", lambda: False)
    with pytest.raises(RuntimeError, match="default_update"):
        dropout_net()
    Network([FullyConnectedLayer(6, 8), SoftmaxLayer(8, 3)], 10)  # no dropout: fine


#### 2. np.random.seed(s) makes the initial weights repeatable
@pytest.fixture
def unseeded():
    """network3 as imported: no network3.seed call."""
    network3.seed(None)


def book_layers():
    # 4*3*3/(2*2) is a whole number: the original's n_out, computed with
    # Python 2's integer division, is the same
    return [ConvPoolLayer(image_shape=(10, 1, 8, 8), filter_shape=(4, 1, 3, 3),
                          poolsize=(2, 2)),
            FullyConnectedLayer(n_in=4*3*3, n_out=8, p_dropout=0.5),
            SoftmaxLayer(n_in=8, n_out=3, p_dropout=0.5)]


def test_np_random_seed_makes_initial_weights_repeatable(unseeded):
    np.random.seed(0)
    first = Network(book_layers(), 10)
    np.random.seed(0)
    second = Network(book_layers(), 10)
    for a, b in zip(first.params, second.params):
        np.testing.assert_array_equal(a.get_value(), b.get_value())
    # the very numbers the original drew: np.random.normal, layer by layer,
    # w then b (the softmax layer starts at zero)
    np.random.seed(0)
    conv_n_out = 4 * 3 * 3 // 4
    expected = [np.random.normal(0, np.sqrt(1.0 / conv_n_out), (4, 1, 3, 3)),
                np.random.normal(0, 1.0, (4,)),
                np.random.normal(0, np.sqrt(1.0 / 8), (36, 8)),
                np.random.normal(0, 1.0, (8,))]
    for param, value in zip(first.params, expected):
        np.testing.assert_array_equal(param.get_value(), value.astype("float32"))
    # the masks follow np.random.seed too
    masks = [theano.function([net.x], net.layers[1].inpt_dropout, mode=PY)
             for net in (first, second)]
    x = np.ones((10, 64), "float32")
    np.testing.assert_array_equal(masks[0](x), masks[1](x))


def test_network3_seed_still_seeds_everything_whatever_numpy_draws():
    def build(seed):
        network3.seed(seed)
        np.random.seed(int(np.random.default_rng().integers(2**31)))  # noise
        net = Network(book_layers(), 10)
        mask = theano.function([net.x], net.layers[1].inpt_dropout, mode=PY)
        return [p.get_value() for p in net.params] + [mask(np.ones((10, 64), "float32"))]

    for a, b in zip(build(3), build(3)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(build(3)[0], build(4)[0])


#### 3. The float type of the user's own graph code
def test_users_arrays_and_tensors_have_the_networks_float_type(rng):
    net = dropout_net()
    assert theano.config.floatX == network3.floatX() == "float32"
    assert net.x.dtype == T.matrix().dtype == "float32"
    batch = np.asarray(rng.random((10, 6)), dtype=theano.config.floatX)
    predict = theano.function([net.x], net.layers[-1].y_out, mode=PY)
    assert predict(batch).shape == (10,)
    # eta as a Python float keeps an update float32
    w = net.layers[0].w
    assert (w - 0.1 * w).dtype == w.dtype


def test_set_floatX_and_pytensors_floatX_stay_together():
    network3.set_floatX("float64")
    assert theano.config.floatX == "float64"
    assert FullyConnectedLayer(3, 2).w.dtype == "float64"
    network3.set_floatX("float32")
    assert theano.config.floatX == "float32"
    # a script that sets PyTensor's (as readers set Theano's) sets network3's
    with pytensor.config.change_flags(floatX="float64"):
        assert network3.floatX() == "float64"
        assert FullyConnectedLayer(3, 2).w.dtype == "float64"
    assert network3.floatX() == "float32"


_IMPORT = """
import json, pytensor
before = pytensor.config.floatX
import network3
from network3 import FullyConnectedLayer
print(json.dumps([before, pytensor.config.floatX, network3.floatX(),
                  str(FullyConnectedLayer(3, 2).w.dtype)]))
"""


@pytest.mark.parametrize("keep, expected", [
    (None, ["float64", "float32", "float32", "float32"]),
    ("1", ["float64", "float64", "float32", "float32"]),
])
def test_import_sets_pytensors_floatX_unless_told_not_to(keep, expected):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTENSOR_FLAGS", "NETWORK3_KEEP_FLOATX")}
    if keep:
        env["NETWORK3_KEEP_FLOATX"] = keep
    result = subprocess.run([sys.executable, "-c", _IMPORT], capture_output=True,
                            text=True, check=True, timeout=120, env=env)
    assert json.loads(result.stdout) == expected


#### 4. Ctrl-C stops the script, after SGD's summary
@pytest.fixture
def ctrl_c_in_step(monkeypatch):
    """A real SIGINT (Ctrl-C) in the given training step of each run."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    compile_train = Network.train_mb_function
    calls = {"n": 0, "at": None}

    def train_mb_function(self, *args, **kwargs):
        train_mb = compile_train(self, *args, **kwargs)
        calls["n"] = 0

        def step(i):
            calls["n"] += 1
            if calls["n"] == calls["at"]:
                signal.raise_signal(signal.SIGINT)
            return train_mb(i)
        return step
    monkeypatch.setattr(Network, "train_mb_function", train_mb_function)
    return calls


def test_ctrl_c_stops_a_loop_of_two_runs_with_the_best_parameters(ctrl_c_in_step,
                                                                  rng, capsys):
    training, validation, test = (toy_data(n, rng) for n in (100, 50, 50))
    ctrl_c_in_step["at"] = 25  # in epoch 2 of 10 mini-batches
    nets = []
    with pytest.raises(KeyboardInterrupt):
        for _run in range(2):  # as conv.py runs each experiment 3 times
            net = Network([FullyConnectedLayer(n_in=6, n_out=8),
                           SoftmaxLayer(n_in=8, n_out=3)], 10)
            nets.append(net)
            net.SGD(training, 10, 10, 0.5, validation, test)
    assert len(nets) == 1, "Ctrl-C in run 0 did not stop the loop"
    net = nets[0]
    out = capsys.readouterr().out
    assert "Training interrupted in epoch 2" in out
    assert "Finished training network." in out
    assert "Best validation accuracy of" in out and "Corresponding test accuracy" in out
    assert len(net.history) == 2
    best = max(range(2), key=lambda e: (net.history[e]["validation_accuracy"], e))
    assert net.accuracy(validation) == pytest.approx(
        net.history[best]["validation_accuracy"])
    assert net.best_validation_accuracy == net.history[best]["validation_accuracy"]


#### 5. The file the book's expand_mnist.py writes
class Python2Pickler(pickle._Pickler):
    """Protocol 0 as Python 2's cPickle wrote it: byte strings and ASCII
    text as STRING opcodes (S'...'), where Python 3 writes a _codecs.encode
    reduce and unicode text."""

    def _string(self, raw):
        self.write(pickle.STRING + b"'" + codecs.escape_encode(raw)[0] + b"'\n")

    def save_bytes(self, obj):
        self._string(obj)
        self.memoize(obj)

    def save_str(self, obj):
        if not obj.isascii():
            return pickle._Pickler.save_str(self, obj)
        self._string(obj.encode("ascii"))
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def expand_mnist_file(path, data, python):
    """What the book's expand_mnist.py writes from ``data``: each training
    image and its four one-pixel shifts, shuffled, the training set as
    [list of images, list of labels], validation and test as loaded;
    cPickle.dump's default protocol, 0."""
    training_data, validation_data, test_data = data
    expanded_training_pairs = []
    for x, y in zip(training_data[0], training_data[1]):
        expanded_training_pairs.append((x, y))
        image = np.reshape(x, (-1, 28))
        for d, axis, index_position, index in [
                (1, 0, "first", 0), (-1, 0, "first", 27),
                (1, 1, "last", 0), (-1, 1, "last", 27)]:
            new_img = np.roll(image, d, axis)
            if index_position == "first":
                new_img[index, :] = np.zeros(28)
            else:
                new_img[:, index] = np.zeros(28)
            expanded_training_pairs.append((np.reshape(new_img, 784), y))
    random.Random(0).shuffle(expanded_training_pairs)
    expanded_training_data = [list(d) for d in zip(*expanded_training_pairs)]
    obj = (expanded_training_data, validation_data, test_data)
    buffer = io.BytesIO()
    if python == 2:
        Python2Pickler(buffer, protocol=0).dump(obj)
        raw = buffer.getvalue().replace(b"numpy._core", b"numpy.core")
    else:
        pickle.dump(obj, buffer, protocol=0)
        raw = buffer.getvalue()
    path.write_bytes(gzip.compress(raw))
    return expanded_training_data, raw


@pytest.mark.parametrize("python", [2, 3])
def test_loads_the_file_the_books_expand_mnist_writes(tmp_path, rng, python):
    data = tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / np.float32(256),
                  rng.integers(0, 10, n).astype(np.int64)) for n in (4, 3, 2))
    path = tmp_path / "mnist_expanded.pkl.gz"
    (images, labels), raw = expand_mnist_file(path, data, python)
    # protocol 0 (no PROTO opcode), the training set's lists (MARK LIST)
    assert raw[:1] != pickle.PROTO and raw.startswith(b"((lp0\n")
    if python == 2:  # the arrays' bytes as STRING opcodes
        assert b"\nS'" in raw and b"_codecs" not in raw
    else:
        assert b"c_codecs\nencode\n" in raw
    training, validation, test = network3.load_data_shared(str(path))
    x, y = training[0].get_value(), training[1].eval()
    assert x.shape == (20, 784) and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.array(images))
    np.testing.assert_array_equal(y, labels)
    for (sx, sy), (ex, ey) in zip((validation, test), data[1:]):
        np.testing.assert_array_equal(sx.get_value(), ex)
        np.testing.assert_array_equal(sy.eval(), ey)


def test_a_list_of_anything_but_images_or_labels_is_refused(tmp_path):
    images = [np.zeros(784, np.float32)] * 2
    for training in ([images, [1, "2"]], [images + [np.zeros(3, np.float32)], [1, 2, 3]],
                     [images, [[1], [2]]]):
        path = tmp_path / "bad.pkl.gz"
        pair = (np.zeros((1, 784), np.float32), np.zeros(1, np.int64))
        path.write_bytes(gzip.compress(pickle.dumps((training, pair, pair), protocol=0)))
        with pytest.raises(n3data.DataError, match="training") as info:
            n3data.load_data(path)
        assert str(path) in str(info.value)


#### 6. Layers written to the original's duck-typed interface
class HiddenLayer:
    """A tanh layer as a reader might write one, after the Theano tutorial:
    ``set_inpt``, ``params``, ``output``, ``output_dropout``; its sizes are
    its own business (no n_in, input_size, ...)."""

    def __init__(self, fan_in, fan_out):
        self.W = theano.shared(np.asarray(
            np.random.normal(0, np.sqrt(1.0 / fan_in), (fan_in, fan_out)),
            dtype=theano.config.floatX), borrow=True)
        self.b = theano.shared(np.zeros(fan_out, dtype=theano.config.floatX))
        self.params = [self.W, self.b]
        self.fan_in = fan_in

    def set_inpt(self, inpt, inpt_dropout, mini_batch_size):
        self.inpt = inpt.reshape((mini_batch_size, self.fan_in))
        self.output = T.tanh(T.dot(self.inpt, self.W) + self.b)
        self.output_dropout = T.tanh(
            T.dot(inpt_dropout.reshape((mini_batch_size, self.fan_in)), self.W) + self.b)


class LogisticLayer:
    """An output layer of the same kind: ``cost`` and ``accuracy`` too."""

    def __init__(self, fan_in, classes):
        self.W = theano.shared(np.zeros((fan_in, classes), dtype=theano.config.floatX))
        self.b = theano.shared(np.zeros(classes, dtype=theano.config.floatX))
        self.params = [self.W, self.b]

    def set_inpt(self, inpt, inpt_dropout, mini_batch_size):
        self.output = network3.softmax(T.dot(inpt, self.W) + self.b)
        self.output_dropout = network3.softmax(T.dot(inpt_dropout, self.W) + self.b)
        self.y_out = T.argmax(self.output, axis=1)

    def cost(self, net):
        return -T.mean(T.log(self.output_dropout)[T.arange(net.y.shape[0]), net.y])

    def accuracy(self, y):
        return T.mean(T.eq(y, self.y_out))


@pytest.mark.parametrize("first", ["network3", "custom"])
def test_duck_typed_layers_train_in_network(first, rng, capsys):
    np.random.seed(0)  # the custom layers' weights, as the reader's code draws them
    training, validation, test = (toy_data(n, rng) for n in (200, 50, 50))
    layers = [HiddenLayer(8, 8), LogisticLayer(8, 3)]
    layers.insert(0, FullyConnectedLayer(6, 8) if first == "network3" else HiddenLayer(6, 8))
    net = Network(layers, 10)
    net.SGD(training, 3, 10, 0.5, validation, test)
    out = capsys.readouterr().out
    assert "Epoch 2: validation accuracy" in out and "Finished training network." in out
    assert net.history[-1]["training_cost"] < net.history[0]["training_cost"]
    assert all(not np.array_equal(p.get_value(), 0) for p in layers[-1].params)
    assert net.predict(validation[0]).shape == (50,)
    assert net.accuracy(validation) == pytest.approx(net.history[-1]["validation_accuracy"])
    assert net.test_mb_predictions(0).shape == (10,)


def test_a_network_without_a_cost_layer_builds_and_sgd_says_what_is_missing(rng):
    net = Network([FullyConnectedLayer(6, 8), HiddenLayer(8, 4)], 10)
    features = theano.function([net.x], net.output, mode=PY)
    assert features(np.zeros((10, 6), theano.config.floatX)).shape == (10, 4)
    with pytest.raises(TypeError, match=r"last layer must define cost and accuracy.*"
                                        r"layer 1 \(HiddenLayer\)"):
        net.SGD(toy_data(40, rng), 1, 10, 0.1, toy_data(20, rng))


def test_shapes_are_still_checked_where_layers_expose_them():
    with pytest.raises(ValueError, match="takes 7 inputs but layer 0"):
        Network([FullyConnectedLayer(6, 8), FullyConnectedLayer(7, 3),
                 SoftmaxLayer(3, 2)], 10)
    layer = HiddenLayer(8, 3)
    layer.n_in = 9  # a duck-typed layer that says its size is checked too
    with pytest.raises(ValueError, match="takes 9 inputs"):
        Network([FullyConnectedLayer(6, 8), layer, LogisticLayer(3, 2)], 10)
    with pytest.raises(TypeError, match="not a network3 layer"):
        Network([FullyConnectedLayer, SoftmaxLayer(8, 3)], 10)


#### 7. Smaller things
def test_softmax_is_importable_as_in_the_original():
    from network3 import softmax
    z = T.matrix("z")
    rows = theano.function([z], softmax(z), mode=PY)(
        np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]], "float32"))
    np.testing.assert_allclose(rows.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(rows[1], 1 / 3, rtol=1e-6)


def test_relu_gradient_at_zero_is_the_originals():
    z = T.vector("z")
    original = T.maximum(0.0, z)  # the original's ReLU
    grads = theano.function([z], [T.grad(ReLU(z).sum(), z),
                                  T.grad(original.sum(), z)], mode=PY)
    values = np.array([-1.0, 0.0, 1.0], "float32")
    ours, theirs = grads(values)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, [0.0, 0.0, 1.0])
    assert ReLU(z).dtype == "float32"


def test_conv_pool_layer_inpt_is_connected_to_the_cost():
    net = Network([ConvPoolLayer(image_shape=(2, 1, 6, 6), filter_shape=(2, 1, 3, 3)),
                   SoftmaxLayer(n_in=8, n_out=3)], 2)
    layer = net.layers[0]
    layer_grad = T.grad(net.layers[-1].cost(net), layer.inpt)  # raised before
    f = theano.function([net.x, net.y], layer_grad, mode=PY)
    net.layers[-1].w.set_value(np.ones((8, 3), "float32"))
    g = f(np.random.default_rng(0).random((2, 36)).astype("float32"), np.array([0, 1], "int32"))
    assert g.shape == (2, 1, 6, 6) and np.abs(g).sum() > 0


def test_eta_zero_evaluates_without_training(rng, capsys):
    training, validation, test = (toy_data(n, rng) for n in (40, 20, 20))
    net = Network([FullyConnectedLayer(6, 8), SoftmaxLayer(8, 3)], 10)
    before = [p.get_value() for p in net.params]
    net.SGD(training, 2, 10, 0.0, validation, test)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Training mini-batch number 0"
    assert out[-3] == "Finished training network."
    for p, b in zip(net.params, before):
        np.testing.assert_array_equal(p.get_value(), b)
