"""network3.layers: the book's layer semantics (CONTRACT.md section 2),
initialisation, dropout, the fixed dropout-seed quirk, argument checks.

Layer graphs are compiled in FAST_COMPILE mode (PyTensor's Python VM): the
semantics are the graph's, and that mode compiles in milliseconds.  The
default backend runs the same graphs in test_network.py and the book
sessions.
"""

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import ancestors
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.random.type import RandomType

import network3
from network3 import (
    ConvPoolLayer,
    FullyConnectedLayer,
    Network,
    ReLU,
    SoftmaxLayer,
    dropout_layer,
    linear,
    sigmoid,
    tanh,
)

import references as ref

PY = "FAST_COMPILE"


def compile_py(inputs, outputs):
    return pytensor.function(inputs, outputs, mode=PY)


def fc_layer(n_in, n_out, batch, **kwargs):
    """A FullyConnectedLayer wired to a fresh input matrix x."""
    layer = FullyConnectedLayer(n_in, n_out, **kwargs)
    x = pt.matrix("x", dtype=network3.floatX())
    layer.set_inpt(x, x, batch)
    return layer, x


def conv_layer(filter_shape, image_shape, poolsize, **kwargs):
    layer = ConvPoolLayer(filter_shape=filter_shape, image_shape=image_shape,
                          poolsize=poolsize, **kwargs)
    x = pt.matrix("x", dtype=network3.floatX())
    layer.set_inpt(x, x, image_shape[0])
    return layer, x


def has_random_node(variable):
    """Does the graph of ``variable`` draw random numbers?"""
    for var in ancestors([variable]):
        if isinstance(var.type, RandomType):
            return True
        if var.owner is not None and isinstance(var.owner.op, RandomVariable):
            return True
    return False


#### ConvPoolLayer
CONV_LAYER_CASES = [
    # filter_shape, image_shape, poolsize
    ((3, 2, 3, 2), (2, 2, 8, 7), (2, 3)),
    ((4, 1, 5, 5), (3, 1, 12, 12), (2, 2)),
    ((2, 3, 1, 1), (1, 3, 5, 4), (1, 1)),
    ((2, 1, 2, 2), (2, 1, 6, 5), (3, 2)),
]


@pytest.mark.parametrize("filter_shape,image_shape,poolsize", CONV_LAYER_CASES)
def test_conv_pool_layer_output_equals_numpy_conv_pool_bias_activation(
        filter_shape, image_shape, poolsize, rng):
    """conv (true, valid) -> max-pool (border dropped) -> + b -> sigmoid,
    computed independently with scipy and numpy loops."""
    network3.set_floatX("float64")
    layer, x = conv_layer(filter_shape, image_shape, poolsize)
    x_value = rng.normal(size=(image_shape[0], int(np.prod(image_shape[1:]))))
    out = compile_py([x], layer.output)(x_value)
    w, b = layer.w.get_value(), layer.b.get_value()
    pooled = ref.max_pool(ref.conv2d(x_value.reshape(image_shape), w), poolsize)
    expected = ref.sigmoid(pooled + b[None, :, None, None])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_conv_pool_layer_output_float32(rng):
    filter_shape, image_shape, poolsize = CONV_LAYER_CASES[1]
    layer, x = conv_layer(filter_shape, image_shape, poolsize, activation_fn=ReLU)
    x_value = rng.random(size=(3, 144)).astype(np.float32)
    out = compile_py([x], layer.output)(x_value)
    assert out.dtype == np.float32
    w, b = layer.w.get_value(), layer.b.get_value()
    pooled = ref.max_pool(ref.conv2d(x_value.reshape(image_shape), w), poolsize)
    np.testing.assert_allclose(out, np.maximum(pooled + b[None, :, None, None], 0),
                               rtol=1e-5, atol=1e-5)


def test_conv_pool_layer_activation_after_pooling(rng):
    """With a decreasing activation, -z, activation after pooling gives
    -max(z); activation before pooling would give -min(z)."""
    network3.set_floatX("float64")
    filter_shape, image_shape, poolsize = (2, 1, 3, 3), (2, 1, 8, 8), (2, 2)
    layer, x = conv_layer(filter_shape, image_shape, poolsize,
                          activation_fn=lambda z: -z)
    x_value = rng.normal(size=(2, 64))
    out = compile_py([x], layer.output)(x_value)
    w, b = layer.w.get_value(), layer.b.get_value()
    z = ref.conv2d(x_value.reshape(image_shape), w)
    np.testing.assert_allclose(
        out, -(ref.max_pool(z, poolsize) + b[None, :, None, None]), rtol=1e-12)
    assert not np.allclose(out, ref.max_pool(-z, poolsize) - b[None, :, None, None])


@pytest.mark.parametrize("filter_shape,image_shape,poolsize", CONV_LAYER_CASES)
def test_conv_pool_layer_output_shape(filter_shape, image_shape, poolsize, rng):
    layer, x = conv_layer(filter_shape, image_shape, poolsize)
    batch, _, h, w = image_shape
    filters, _, fh, fw = filter_shape
    expected = (batch, filters, (h - fh + 1) // poolsize[0], (w - fw + 1) // poolsize[1])
    x_value = rng.random((batch, int(np.prod(image_shape[1:])))).astype(np.float32)
    assert compile_py([x], layer.output)(x_value).shape == expected
    assert compile_py([x], layer.inpt)(x_value).shape == image_shape


def test_conv_pool_layer_has_no_dropout():
    layer, x = conv_layer((2, 1, 3, 3), (2, 1, 8, 8), (2, 2))
    assert layer.output_dropout is layer.output
    assert not has_random_node(layer.output_dropout)


#### FullyConnectedLayer and SoftmaxLayer
def test_fully_connected_layer_output(rng):
    network3.set_floatX("float64")
    layer, x = fc_layer(7, 4, 3, activation_fn=tanh)
    x_value = rng.normal(size=(3, 7))
    out, out_dropout = compile_py([x], [layer.output, layer.output_dropout])(x_value)
    expected = np.tanh(x_value @ layer.w.get_value() + layer.b.get_value())
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_allclose(out_dropout, expected, rtol=1e-12)


@pytest.mark.parametrize("activation_fn,numpy_fn", [
    (sigmoid, ref.sigmoid), (tanh, np.tanh), (ReLU, lambda z: np.maximum(z, 0)),
    (linear, lambda z: z)], ids=["sigmoid", "tanh", "ReLU", "linear"])
def test_activation_functions(activation_fn, numpy_fn, rng):
    network3.set_floatX("float64")
    z = pt.matrix("z", dtype="float64")
    z_value = rng.normal(size=(4, 5)) * 3
    np.testing.assert_allclose(compile_py([z], activation_fn(z))(z_value),
                               numpy_fn(z_value), rtol=1e-12)


def test_softmax_layer_output_y_out_and_accuracy(rng):
    network3.set_floatX("float64")
    layer = SoftmaxLayer(n_in=5, n_out=3)
    layer.w.set_value(rng.normal(size=(5, 3)))
    layer.b.set_value(rng.normal(size=3))
    x, y = pt.matrix("x", dtype="float64"), pt.ivector("y")
    layer.set_inpt(x, x, 6)
    x_value, y_value = rng.normal(size=(6, 5)), np.array([0, 1, 2, 0, 1, 2], np.int32)
    out, y_out, acc = compile_py([x, y], [layer.output, layer.y_out,
                                          layer.accuracy(y)])(x_value, y_value)
    p = ref.softmax(x_value @ layer.w.get_value() + layer.b.get_value())
    np.testing.assert_allclose(out, p, rtol=1e-12)
    np.testing.assert_array_equal(y_out, p.argmax(axis=1))
    assert acc == pytest.approx(np.mean(p.argmax(axis=1) == y_value))


def test_softmax_layer_cost_is_mean_negative_log_likelihood(rng):
    network3.set_floatX("float64")
    layer = SoftmaxLayer(n_in=5, n_out=3)
    net = Network([layer], 4)
    layer.w.set_value(rng.normal(size=(5, 3)))
    layer.b.set_value(rng.normal(size=3))
    x_value, y_value = rng.normal(size=(4, 5)), np.array([2, 0, 1, 2], np.int32)
    cost = compile_py([net.x, net.y], layer.cost(net))(x_value, y_value)
    p = ref.softmax(x_value @ layer.w.get_value() + layer.b.get_value())
    assert cost == pytest.approx(-np.mean(np.log(p[np.arange(4), y_value])), rel=1e-12)


#### Dropout: not inverted (CONTRACT section 2)
@pytest.mark.parametrize("p_dropout", [0.5, 0.2])
def test_dropout_not_inverted_training_graph_masks_the_input(p_dropout, rng):
    """Training: mask the layer's *input* (kept values unchanged, not
    divided by 1 - p), then act(dot(masked, w) + b)."""
    network3.set_floatX("float64")
    layer, x = fc_layer(50, 4, 8, p_dropout=p_dropout)
    x_value = rng.uniform(0.5, 1.5, size=(8, 50))
    masked, out = compile_py([x], [layer.inpt_dropout, layer.output_dropout])(x_value)
    kept = masked != 0
    np.testing.assert_array_equal(masked[kept], x_value[kept])
    assert abs(kept.mean() - (1 - p_dropout)) < 0.1
    np.testing.assert_allclose(
        out, ref.sigmoid(masked @ layer.w.get_value() + layer.b.get_value()),
        rtol=1e-12)


@pytest.mark.parametrize("layer_type", [FullyConnectedLayer, SoftmaxLayer])
def test_dropout_not_inverted_inference_scales_weighted_input(layer_type, rng):
    """Inference: act((1 - p) * dot(inpt, w) + b), no mask."""
    network3.set_floatX("float64")
    layer = layer_type(6, 3, p_dropout=0.25)
    layer.w.set_value(rng.normal(size=(6, 3)))
    layer.b.set_value(rng.normal(size=3))
    x = pt.matrix("x", dtype="float64")
    layer.set_inpt(x, x, 5)
    x_value = rng.normal(size=(5, 6))
    out = compile_py([x], layer.output)(x_value)
    z = 0.75 * (x_value @ layer.w.get_value()) + layer.b.get_value()
    expected = ref.softmax(z) if layer_type is SoftmaxLayer else ref.sigmoid(z)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert not has_random_node(layer.output)


def test_dropout_layer_keeps_each_unit_with_probability_1_minus_p():
    network3.set_floatX("float64")
    t = pt.matrix("t", dtype="float64")
    kept = compile_py([t], dropout_layer(t, 0.2))(np.ones((100, 100)))
    assert set(np.unique(kept)) <= {0.0, 1.0}
    assert abs(kept.mean() - 0.8) < 0.03


def test_dropout_layer_uses_no_deprecated_pytensor_api():
    """pyproject turns warnings into errors; building a dropout mask must not
    warn (PyTensor 3 deprecates RandomVariable calls that hide the next-rng
    output unless ``return_next_rng=True``)."""
    t = pt.matrix("t", dtype=network3.floatX())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dropout_layer(t, 0.5)


def test_each_dropout_layer_has_its_own_random_stream():
    """Regression: the original seeded every dropout layer's stream with the
    same constant, so two dropout layers of equal shape drew identical
    masks."""
    t = pt.matrix("t", dtype=network3.floatX())
    ones = np.ones((10, 20), np.float32)
    a, b = compile_py([t], [dropout_layer(t, 0.5), dropout_layer(t, 0.5)])(ones)
    assert not np.array_equal(a, b)
    # and inside a network: layers 1 and 2 mask inputs of the same shape
    net = Network([FullyConnectedLayer(20, 20, p_dropout=0.5),
                   FullyConnectedLayer(20, 20, p_dropout=0.5),
                   SoftmaxLayer(20, 3, p_dropout=0.5)], 10)
    first, second = compile_py(
        [net.x], [net.layers[0].inpt_dropout, net.layers[1].inpt_dropout])(ones)
    assert not np.array_equal(first != 0, second != 0)


def test_seed_makes_init_and_dropout_masks_repeatable():
    def draw(seed):
        network3.seed(seed)
        net = Network([ConvPoolLayer((2, 1, 3, 3), (10, 1, 6, 6), (2, 2)),
                       FullyConnectedLayer(8, 10, p_dropout=0.5),
                       SoftmaxLayer(10, 3, p_dropout=0.5)], 10)
        masks = compile_py([net.x], [layer.inpt_dropout for layer in
                                     net.layers[1:]])
        ones = np.ones((10, 36), np.float32)
        return ([p.get_value() for p in net.params],
                [m != 0 for m in masks(ones)] + [m != 0 for m in masks(ones)])

    params_a, masks_a = draw(7)
    params_b, masks_b = draw(7)
    params_c, masks_c = draw(8)
    for a, b in zip(params_a + masks_a, params_b + masks_b):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(params_a[0], params_c[0])
    assert not all(np.array_equal(a, c) for a, c in zip(masks_a, masks_c))


@pytest.mark.parametrize("layer_type", [FullyConnectedLayer, SoftmaxLayer])
def test_no_dropout_adds_no_random_node(layer_type):
    """p_dropout = 0 leaves the mask out of the graph entirely (drawing an
    all-ones mask costs most of a small network's step)."""
    layer = layer_type(8, 4, p_dropout=0.0)
    x = pt.matrix("x", dtype=network3.floatX())
    layer.set_inpt(x, x, 5)
    assert not has_random_node(layer.output_dropout)
    assert not has_random_node(layer.output)
    dropped = layer_type(8, 4, p_dropout=0.5)
    dropped.set_inpt(x, x, 5)
    assert has_random_node(dropped.output_dropout)  # the check can see one


def test_no_dropout_network_has_no_random_node():
    net = Network([ConvPoolLayer((2, 1, 3, 3), (4, 1, 6, 6), (2, 2)),
                   FullyConnectedLayer(8, 5), SoftmaxLayer(5, 3)], 4)
    assert not has_random_node(net.layers[-1].cost(net))


#### Initialisation (CONTRACT section 2: the book's, plus corrected/Glorot/He)
def assert_normal(values, std, rel=0.06):
    values = np.asarray(values, dtype=np.float64).ravel()
    assert abs(values.mean()) < 5 * std / np.sqrt(values.size)
    assert values.std() == pytest.approx(std, rel=rel)


def test_fully_connected_book_init():
    layer = FullyConnectedLayer(n_in=50, n_out=2000)
    assert layer.w.get_value().shape == (50, 2000)
    assert_normal(layer.w.get_value(), np.sqrt(1 / 2000), rel=0.02)
    assert_normal(layer.b.get_value(), 1.0, rel=0.06)
    tall = FullyConnectedLayer(n_in=2000, n_out=50)
    assert_normal(tall.w.get_value(), np.sqrt(1 / 50), rel=0.02)


@pytest.mark.parametrize("poolsize", [(2, 2), (2, 3)])
def test_conv_pool_book_init(poolsize):
    """The book's conv n_out = filters * fh * fw / prod(poolsize)."""
    layer = ConvPoolLayer(filter_shape=(64, 4, 5, 5), image_shape=(10, 4, 28, 28),
                          poolsize=poolsize)
    n_out = 64 * 5 * 5 / np.prod(poolsize)
    assert layer.w.get_value().shape == (64, 4, 5, 5)
    assert_normal(layer.w.get_value(), np.sqrt(1 / n_out), rel=0.04)
    b = layer.b.get_value()
    assert b.shape == (64,)
    assert abs(b.mean()) < 0.5 and 0.6 < b.std() < 1.4  # N(0, 1), 64 draws


def test_softmax_init_is_zero():
    layer = SoftmaxLayer(n_in=30, n_out=10)
    np.testing.assert_array_equal(layer.w.get_value(), np.zeros((30, 10)))
    np.testing.assert_array_equal(layer.b.get_value(), np.zeros(10))


@pytest.mark.parametrize("init,std", [
    ("book", np.sqrt(1 / 400)), ("corrected", np.sqrt(1 / 250)),
    ("glorot", np.sqrt(2 / 650)), ("he", np.sqrt(2 / 250))])
def test_fully_connected_init_schemes(init, std):
    layer = FullyConnectedLayer(n_in=250, n_out=400, init=init)
    assert_normal(layer.w.get_value(), std, rel=0.02)


@pytest.mark.parametrize("init,n_in_n_out_std", [
    ("corrected", lambda n_in, n_out: np.sqrt(1 / n_in)),
    ("glorot", lambda n_in, n_out: np.sqrt(2 / (n_in + n_out))),
    ("he", lambda n_in, n_out: np.sqrt(2 / n_in))])
def test_conv_pool_init_schemes(init, n_in_n_out_std):
    layer = ConvPoolLayer(filter_shape=(64, 4, 5, 5), image_shape=(10, 4, 28, 28),
                          init=init)
    std = n_in_n_out_std(4 * 5 * 5, 64 * 5 * 5 / 4)
    assert_normal(layer.w.get_value(), std, rel=0.04)


def test_unknown_init_is_an_error():
    with pytest.raises(ValueError, match="xavier"):
        FullyConnectedLayer(10, 5, init="xavier")


#### Float type
def test_layers_are_float32_by_default():
    assert network3.floatX() == "float32"
    fc, x = fc_layer(6, 4, 2, p_dropout=0.5)
    conv, cx = conv_layer((2, 1, 3, 3), (2, 1, 6, 6), (2, 2))
    soft = SoftmaxLayer(4, 3)
    for layer in (fc, conv, soft):
        assert layer.w.get_value().dtype == np.float32
        assert layer.b.get_value().dtype == np.float32
    for out in (fc.output, fc.output_dropout, conv.output):
        assert out.dtype == "float32"


def test_set_floatX_float64():
    network3.set_floatX("float64")
    fc, x = fc_layer(6, 4, 2, p_dropout=0.5)
    conv, cx = conv_layer((2, 1, 3, 3), (2, 1, 6, 6), (2, 2))
    for layer in (fc, conv, SoftmaxLayer(4, 3)):
        assert layer.w.get_value().dtype == np.float64
        assert layer.b.get_value().dtype == np.float64
    for out in (fc.output, fc.output_dropout, conv.output):
        assert out.dtype == "float64"


def test_set_floatX_rejects_other_types():
    with pytest.raises(ValueError, match="float16"):
        network3.set_floatX("float16")


#### The attributes user code reads (CONTRACT section 1)
def test_layer_attributes():
    fc, x = fc_layer(6, 4, 2, p_dropout=0.5, activation_fn=ReLU)
    soft = SoftmaxLayer(4, 3, p_dropout=0.5)
    soft.set_inpt(fc.output, fc.output_dropout, 2)
    conv, cx = conv_layer((2, 1, 3, 3), (2, 1, 6, 6), (2, 2))
    for layer in (fc, soft, conv):
        assert len(layer.params) == 2
        assert layer.params[0] is layer.w and layer.params[1] is layer.b
        assert isinstance(layer.w.get_value(), np.ndarray)
        assert isinstance(layer.b.get_value(), np.ndarray)
        for name in ("inpt", "output", "output_dropout"):
            assert isinstance(getattr(layer, name), pytensor.graph.basic.Variable)
        assert callable(layer.activation_fn)
    for layer in (fc, soft):
        assert (layer.n_in, layer.n_out, layer.p_dropout) in [(6, 4, 0.5), (4, 3, 0.5)]
        assert isinstance(layer.y_out, pytensor.graph.basic.Variable)
        assert isinstance(layer.inpt_dropout, pytensor.graph.basic.Variable)
        assert isinstance(layer.accuracy(pt.ivector("y")), pytensor.graph.basic.Variable)
    assert fc.activation_fn is ReLU
    assert hasattr(soft, "cost")
    assert conv.filter_shape == (2, 1, 3, 3)
    assert conv.image_shape == (2, 1, 6, 6)
    assert conv.poolsize == (2, 2)
    assert conv.activation_fn is sigmoid


def test_layers_print_their_shapes():
    assert "n_in=6" in repr(FullyConnectedLayer(6, 4))
    assert "(20, 1, 5, 5)" in repr(ConvPoolLayer((20, 1, 5, 5), (10, 1, 28, 28)))


#### Gradients of whole layers (float64, finite differences)
def test_fully_connected_layer_gradient_verify_grad(rng):
    network3.set_floatX("float64")
    layer, x = fc_layer(5, 3, 4)

    def fun(x_in, w, b):
        return clone_replace(layer.output,
                                      {x: x_in, layer.w: w, layer.b: b})

    verify_grad(fun, [rng.normal(size=(4, 5)), rng.normal(size=(5, 3)),
                      rng.normal(size=3)], rng=rng, mode=PY)


def test_conv_pool_layer_gradient_verify_grad(rng):
    network3.set_floatX("float64")
    layer, x = conv_layer((2, 2, 3, 2), (2, 2, 7, 6), (2, 2))

    def fun(x_in, w, b):
        return clone_replace(layer.output,
                                      {x: x_in, layer.w: w, layer.b: b})

    verify_grad(fun, [rng.normal(size=(2, 84)), rng.normal(size=(2, 2, 3, 2)),
                      rng.normal(size=2)], rng=rng, mode=PY)


#### Argument checks: fail early, name the value (STYLE 7)
@pytest.mark.parametrize("p_dropout", [1.0, -0.1, 1.5])
@pytest.mark.parametrize("layer_type", [FullyConnectedLayer, SoftmaxLayer])
def test_p_dropout_outside_0_1_is_an_error(layer_type, p_dropout):
    with pytest.raises(ValueError, match=str(p_dropout)):
        layer_type(10, 5, p_dropout=p_dropout)


@pytest.mark.parametrize("n_in,n_out,message", [
    (0, 5, "n_in.*0"), (10, -3, "n_out.*-3"), (2.5, 4, "n_in.*2.5")])
def test_non_positive_layer_size_is_an_error(n_in, n_out, message):
    with pytest.raises(ValueError, match=message):
        FullyConnectedLayer(n_in, n_out)


def test_filter_channels_differ_from_image_channels():
    with pytest.raises(ValueError, match=r"\(20, 3, 5, 5\).*\(10, 1, 28, 28\)"):
        ConvPoolLayer(filter_shape=(20, 3, 5, 5), image_shape=(10, 1, 28, 28))


def test_filter_larger_than_image():
    with pytest.raises(ValueError, match="6x6.*5x5"):
        ConvPoolLayer(filter_shape=(2, 1, 6, 6), image_shape=(10, 1, 5, 5))


def test_pool_larger_than_feature_map():
    with pytest.raises(ValueError, match=r"\(5, 5\).*4x4"):
        ConvPoolLayer(filter_shape=(2, 1, 5, 5), image_shape=(10, 1, 8, 8),
                      poolsize=(5, 5))


@pytest.mark.parametrize("bad", ["relu", None, 3])
def test_non_callable_activation_is_an_error(bad):
    with pytest.raises(TypeError, match=repr(bad)):
        FullyConnectedLayer(10, 5, activation_fn=bad)
    with pytest.raises(TypeError, match=repr(bad)):
        ConvPoolLayer((2, 1, 3, 3), (10, 1, 8, 8), activation_fn=bad)


def test_activation_returning_non_symbolic_value_is_an_error():
    with pytest.raises(TypeError, match="not a symbolic tensor"):
        FullyConnectedLayer(10, 5, activation_fn=lambda z: 1.0)


@pytest.mark.parametrize("kwargs", [
    {"filter_shape": (20, 1, 5), "image_shape": (10, 1, 28, 28)},
    {"filter_shape": (20, 1, 5, 5), "image_shape": (10, 1, 28, 0)},
    {"filter_shape": (20, 1, 5, 5), "image_shape": (10, 1, 28, 28), "poolsize": (2,)},
])
def test_conv_pool_malformed_shapes_are_errors(kwargs):
    with pytest.raises(ValueError, match="positive integers"):
        ConvPoolLayer(**kwargs)
