"""ConvLayer and PoolLayer: separately, they compose to ConvPoolLayer;
padding, stride and L2 pooling against numpy references."""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import network3
from network3 import (
    ConvLayer,
    ConvPoolLayer,
    FullyConnectedLayer,
    Network,
    PoolLayer,
    ReLU,
    SoftmaxLayer,
    linear,
    sigmoid,
)

import references as ref

PY = "FAST_COMPILE"  # numerical checks need no compiled backend


def forward(layer, batch, x_value):
    x = pt.matrix(dtype="float32")
    return pytensor.function([x], layer.output_for(x, batch), mode=PY)(x_value)


def test_conv_then_pool_equals_conv_pool_layer(rng):
    image_shape, filter_shape = (3, 2, 9, 8), (4, 2, 3, 3)
    together = ConvPoolLayer(filter_shape, image_shape, (2, 2), activation_fn=sigmoid)
    conv = ConvLayer(filter_shape, image_shape, activation_fn=linear)
    conv.w.set_value(together.w.get_value())
    conv.b.set_value(together.b.get_value())
    pool = PoolLayer((3, 4, 7, 6), (2, 2), activation_fn=sigmoid)
    x_value = rng.random((3, 2 * 9 * 8)).astype("float32")
    x = pt.matrix(dtype="float32")
    separate = pool.output_for(conv.output_for(x, 3), 3)
    np.testing.assert_array_equal(
        pytensor.function([x], separate, mode=PY)(x_value),
        forward(together, 3, x_value))


def test_padding_and_stride_against_numpy(rng):
    layer = ConvLayer((2, 1, 3, 3), (2, 1, 7, 7), stride=(2, 2), padding=(1, 1))
    assert layer.output_shape == (2, 4, 4)
    x_value = rng.random((2, 49)).astype("float32")
    padded = np.pad(x_value.reshape(2, 1, 7, 7), ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = ref.conv2d(padded, layer.w.get_value())[:, :, ::2, ::2] + \
        layer.b.get_value()[None, :, None, None]
    np.testing.assert_allclose(forward(layer, 2, x_value), expected, rtol=1e-5,
                               atol=1e-5)


def test_l2_pooling_against_numpy(rng):
    layer = PoolLayer((2, 3, 5, 4), (2, 2), mode="l2")
    x_value = rng.random((2, 60)).astype("float32")
    x4 = x_value.reshape(2, 3, 5, 4)[:, :, :4, :4]
    expected = np.sqrt((x4.reshape(2, 3, 2, 2, 2, 2) ** 2).sum(axis=(3, 5)))
    np.testing.assert_allclose(forward(layer, 2, x_value), expected, rtol=1e-6)


def test_separate_layers_build_a_network_and_save(tmp_path, rng):
    net = Network([ConvLayer((3, 1, 5, 5), (4, 1, 12, 12), activation_fn=ReLU,
                             padding=(2, 2)),
                   PoolLayer((4, 3, 12, 12), (2, 2)),
                   FullyConnectedLayer(n_in=3 * 6 * 6, n_out=10),
                   SoftmaxLayer(n_in=10, n_out=3)], 4)
    net.save(tmp_path / "n.npz")
    loaded = network3.load(tmp_path / "n.npz")
    assert repr(loaded) == repr(net)


@pytest.mark.parametrize("kwargs, match", [
    (dict(padding=(-1, 0)), "padding must be two non-negative integers"),
    (dict(stride=(0, 1)), "stride must be a tuple of 2 positive integers"),
])
def test_conv_layer_rejects_bad_padding_and_stride(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvLayer((2, 1, 3, 3), (2, 1, 7, 7), **kwargs)


def test_pool_layer_rejects_bad_mode_and_size():
    with pytest.raises(ValueError, match="mode must be 'max' or 'l2'"):
        PoolLayer((2, 1, 4, 4), mode="mean")
    with pytest.raises(ValueError, match=r"poolsize \(5, 5\) is larger than the 4x4"):
        PoolLayer((2, 1, 4, 4), (5, 5))
