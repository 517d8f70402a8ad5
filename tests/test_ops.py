"""network3.ops: conv2d, max_pool_2d and l2_pool_2d against independent
numpy/scipy references (tests/references.py).

The numerical checks compile with PyTensor's FAST_COMPILE mode (the Python
VM: no JIT, a fraction of a second per graph), so that many odd shapes stay
cheap.  The default backend (Numba) and the JAX backend are checked once
each on a graph holding every op and both gradients, and must agree with
the references and with each other.
"""

import jax  # noqa: F401  (jax is a test dependency: fail, never skip, without it)
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad

from network3 import ops

import references as ref

PY = "FAST_COMPILE"

# (image_shape, filter_shape): non-square images and kernels, 1x1 kernels,
# several channels, kernels as tall or as wide as the image.
CONV_CASES = [
    ((2, 3, 7, 5), (4, 3, 3, 2)),
    ((1, 1, 6, 6), (2, 1, 3, 3)),
    ((2, 2, 5, 4), (3, 2, 1, 1)),
    ((1, 2, 4, 7), (2, 2, 4, 1)),
    ((3, 1, 5, 5), (2, 1, 5, 5)),
    ((1, 1, 28, 28), (1, 1, 5, 5)),
]

# (input_shape, poolsize): odd sizes whose border is dropped.
POOL_CASES = [
    ((2, 3, 7, 5), (2, 2)),
    ((2, 3, 7, 5), (3, 2)),
    ((2, 3, 7, 5), (1, 1)),
    ((1, 2, 7, 5), (7, 5)),
    ((1, 1, 24, 24), (2, 2)),
    ((2, 1, 5, 9), (2, 4)),
]


def _ids(cases):
    return ["x".join(map(str, a)) + "-" + "x".join(map(str, b)) for a, b in cases]


def distinct(shape, rng, dtype="float64"):
    """Values that are all different (no ties inside a pooling window), at
    least 1e-2 apart, so finite differences never cross a tie."""
    n = int(np.prod(shape))
    return (rng.permutation(n) / 100.0 - n / 200.0).reshape(shape).astype(dtype)


def conv_fn(image_shape, filter_shape, dtype, mode=PY):
    x = pt.tensor4("x", dtype=dtype)
    w = pt.tensor4("w", dtype=dtype)
    return pytensor.function([x, w], ops.conv2d(x, w, image_shape, filter_shape),
                             mode=mode)


#### conv2d
@pytest.mark.parametrize("image_shape,filter_shape", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv2d_matches_scipy_convolve2d_float64(image_shape, filter_shape, rng):
    x = rng.normal(size=image_shape)
    w = rng.normal(size=filter_shape)
    out = conv_fn(image_shape, filter_shape, "float64")(x, w)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref.conv2d(x, w), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("image_shape,filter_shape", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv2d_matches_scipy_convolve2d_float32(image_shape, filter_shape, rng):
    x = rng.normal(size=image_shape).astype(np.float32)
    w = rng.normal(size=filter_shape).astype(np.float32)
    out = conv_fn(image_shape, filter_shape, "float32")(x, w)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref.conv2d(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image_shape,filter_shape", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv2d_output_shape(image_shape, filter_shape):
    b, _, h, w = image_shape
    f, _, fh, fw = filter_shape
    out = conv_fn(image_shape, filter_shape, "float64")(
        np.ones(image_shape), np.ones(filter_shape))
    assert out.shape == (b, f, h - fh + 1, w - fw + 1)


def test_conv2d_flips_the_kernel_like_theano():
    """A true convolution, not a correlation: a kernel whose only non-zero
    entry is its top-left corner picks the image pixel at the *bottom-right*
    of each window, out[i, j] = x[i + fh - 1, j + fw - 1]."""
    image_shape, filter_shape = (1, 1, 6, 5), (1, 1, 3, 2)
    x = np.arange(30, dtype=np.float64).reshape(image_shape)
    w = np.zeros(filter_shape)
    w[0, 0, 0, 0] = 1.0
    out = conv_fn(image_shape, filter_shape, "float64")(x, w)
    np.testing.assert_array_equal(out[0, 0], x[0, 0, 2:, 1:])


def test_conv2d_sums_over_channels(rng):
    """Each filter sees every input feature map: the output is the sum of
    the per-channel convolutions."""
    image_shape, filter_shape = (1, 3, 5, 5), (1, 3, 2, 2)
    x = rng.normal(size=image_shape)
    w = rng.normal(size=filter_shape)
    out = conv_fn(image_shape, filter_shape, "float64")(x, w)
    per_channel = [ref.conv2d(x[:, c:c + 1], w[:, c:c + 1]) for c in range(3)]
    np.testing.assert_allclose(out, sum(per_channel), rtol=1e-12)


@pytest.mark.parametrize("image_shape,filter_shape", CONV_CASES[:5],
                         ids=_ids(CONV_CASES[:5]))
def test_conv2d_gradients_verify_grad(image_shape, filter_shape, rng):
    """Finite differences (PyTensor's verify_grad) agree with the symbolic
    gradient with respect to both the images and the kernels."""
    x = rng.normal(size=image_shape)
    w = rng.normal(size=filter_shape)
    verify_grad(lambda x, w: ops.conv2d(x, w, image_shape, filter_shape),
                [x, w], rng=rng, mode=PY)


@pytest.mark.parametrize("image_shape,filter_shape", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv2d_gradients_match_numpy_reference(image_shape, filter_shape, rng):
    x_value = rng.normal(size=image_shape)
    w_value = rng.normal(size=filter_shape)
    x, w = pt.tensor4("x", dtype="float64"), pt.tensor4("w", dtype="float64")
    out = ops.conv2d(x, w, image_shape, filter_shape)
    g_value = rng.normal(size=ref.conv2d(x_value, w_value).shape)
    g = pt.tensor4("g", dtype="float64")
    grads = pytensor.grad((out * g).sum(), [x, w])
    dx, dw = pytensor.function([x, w, g], grads, mode=PY)(x_value, w_value, g_value)
    dx_ref, dw_ref = ref.conv2d_grads(x_value, w_value, g_value)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)


#### max_pool_2d
def pool_fn(op, input_shape, poolsize, dtype="float64", mode=PY):
    x = pt.tensor4("x", dtype=dtype)
    return pytensor.function([x], op(x, input_shape, poolsize), mode=mode)


@pytest.mark.parametrize("input_shape,poolsize", POOL_CASES, ids=_ids(POOL_CASES))
def test_max_pool_2d_matches_numpy_loop(input_shape, poolsize, rng):
    x = rng.normal(size=input_shape)
    out = pool_fn(ops.max_pool_2d, input_shape, poolsize)(x)
    b, c, h, w = input_shape
    assert out.shape == (b, c, h // poolsize[0], w // poolsize[1])
    np.testing.assert_array_equal(out, ref.max_pool(x, poolsize))


def test_max_pool_2d_float32(rng):
    input_shape, poolsize = (2, 3, 7, 5), (2, 2)
    x = rng.normal(size=input_shape).astype(np.float32)
    out = pool_fn(ops.max_pool_2d, input_shape, poolsize, "float32")(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref.max_pool(x, poolsize))


def test_max_pool_2d_ignores_the_border():
    """Theano's ignore_border=True: the last row and column of a 7x5 map
    pooled 2x2 belong to no window, so even huge values there change
    nothing."""
    input_shape, poolsize = (1, 1, 7, 5), (2, 2)
    x = np.zeros(input_shape)
    x[0, 0, 6, :] = 1e6
    x[0, 0, :, 4] = 1e6
    out = pool_fn(ops.max_pool_2d, input_shape, poolsize)(x)
    assert out.shape == (1, 1, 3, 2)
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("input_shape,poolsize", POOL_CASES, ids=_ids(POOL_CASES))
def test_max_pool_2d_gradient_goes_to_the_max_element(input_shape, poolsize, rng):
    x_value = distinct(input_shape, rng)
    x = pt.tensor4("x", dtype="float64")
    pooled = ops.max_pool_2d(x, input_shape, poolsize)
    g_value = rng.normal(size=ref.max_pool(x_value, poolsize).shape)
    g = pt.tensor4("g", dtype="float64")
    dx = pytensor.function([x, g], pytensor.grad((pooled * g).sum(), x),
                           mode=PY)(x_value, g_value)
    np.testing.assert_array_equal(dx, ref.max_pool_grad(x_value, poolsize, g_value))


@pytest.mark.parametrize("input_shape,poolsize", POOL_CASES[:4], ids=_ids(POOL_CASES[:4]))
def test_max_pool_2d_gradient_verify_grad(input_shape, poolsize, rng):
    x = distinct(input_shape, rng)
    verify_grad(lambda x: ops.max_pool_2d(x, input_shape, poolsize), [x],
                rng=rng, mode=PY, eps=1e-5)


#### l2_pool_2d
@pytest.mark.parametrize("input_shape,poolsize", POOL_CASES, ids=_ids(POOL_CASES))
def test_l2_pool_2d_matches_numpy_loop(input_shape, poolsize, rng):
    x = rng.normal(size=input_shape)
    out = pool_fn(ops.l2_pool_2d, input_shape, poolsize)(x)
    np.testing.assert_allclose(out, ref.l2_pool(x, poolsize), rtol=1e-12)


def test_l2_pool_2d_gradient_verify_grad(rng):
    input_shape, poolsize = (2, 2, 7, 5), (2, 2)
    x = distinct(input_shape, rng) + 0.5  # keep every window away from 0
    verify_grad(lambda x: ops.l2_pool_2d(x, input_shape, poolsize), [x],
                rng=rng, mode=PY)


#### The compiled backends: Numba (the default) and JAX
# The graph of a ConvPoolLayer: conv (2 channels, non-square kernel), then
# max-pool of an odd-sized map (border dropped) and L2-pool, and both
# gradients of a scalar of the outputs.  Inputs have static shapes, as in a
# network, where the layer reshapes its input to image_shape.
BACKEND_IMAGE, BACKEND_FILTER, BACKEND_POOL = (2, 2, 8, 7), (3, 2, 3, 2), (2, 2)


def backend_graph(dtype):
    x = pt.tensor4("x", dtype=dtype, shape=BACKEND_IMAGE)
    w = pt.tensor4("w", dtype=dtype, shape=BACKEND_FILTER)
    conv = ops.conv2d(x, w, BACKEND_IMAGE, BACKEND_FILTER)
    (b, _, h, wd), (f, _, fh, fw) = BACKEND_IMAGE, BACKEND_FILTER
    conv_shape = (b, f, h - fh + 1, wd - fw + 1)
    pooled = ops.max_pool_2d(conv, conv_shape, BACKEND_POOL)
    l2 = ops.l2_pool_2d(conv, conv_shape, BACKEND_POOL)
    g = pt.tensor4("g", dtype=dtype, shape=conv_shape)
    scalar = (conv * g).sum() + pooled.sum() + (pooled ** 2).sum()
    outputs = [conv, pooled, l2] + pytensor.grad(scalar, [x, w])
    return [x, w, g], outputs


def backend_inputs(dtype, seed=1):
    rng = np.random.default_rng(seed)
    x = distinct(BACKEND_IMAGE, rng, dtype)
    w = rng.normal(size=BACKEND_FILTER).astype(dtype)
    conv_shape = ref.conv2d(x, w).shape
    g = rng.normal(size=conv_shape).astype(dtype)
    return x, w, g


def backend_reference(x, w, g):
    """conv, max-pool, L2-pool and the gradients of the scalar of
    ``backend_graph``, in float64 numpy."""
    conv = ref.conv2d(x, w)
    pooled = ref.max_pool(conv, BACKEND_POOL)
    l2 = ref.l2_pool(conv, BACKEND_POOL)
    dconv = g + ref.max_pool_grad(conv, BACKEND_POOL, 1.0 + 2.0 * pooled)
    dx, dw = ref.conv2d_grads(x, w, dconv)
    return [conv, pooled, l2, dx, dw]


@pytest.fixture(scope="module")
def numba_results():
    inputs, outputs = backend_graph("float32")
    f = pytensor.function(inputs, outputs, mode="NUMBA")
    return [np.asarray(o) for o in f(*backend_inputs("float32"))]


def test_ops_on_numba_backend_match_references(numba_results):
    x, w, g = backend_inputs("float32")
    expected = backend_reference(x, w, g)
    for got, want in zip(numba_results, expected):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.jax
def test_ops_on_jax_backend_match_numba(numba_results):
    inputs, outputs = backend_graph("float32")
    f = pytensor.function(inputs, outputs, mode="JAX")
    # float32 throughout: PyTensor's JAX sums (3.0 to 3.3) return their
    # float64 accumulator (here the L2 pool's), which jax_ops casts back
    for got, want in zip(f(*backend_inputs("float32")), numba_results):
        assert np.asarray(got).dtype == np.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.jax
def test_ops_on_jax_backend_float64_match_references():
    inputs, outputs = backend_graph("float64")
    f = pytensor.function(inputs, outputs, mode="JAX")
    x, w, g = backend_inputs("float64")
    for got, want in zip(f(x, w, g), backend_reference(x, w, g)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-10)


@pytest.mark.jax
def test_op_gradients_compile_on_jax_without_static_input_shapes():
    """conv2d and max_pool_2d take the shapes as Python tuples so that every
    reshape has static sizes on JAX; that must hold for their gradients
    too when the caller's tensors carry no static shape (plain pt.tensor4)."""
    x = pt.tensor4("x", dtype="float64")
    w = pt.tensor4("w", dtype="float64")
    conv = ops.conv2d(x, w, BACKEND_IMAGE, BACKEND_FILTER)
    pooled = ops.max_pool_2d(x, BACKEND_IMAGE, BACKEND_POOL)
    grads = pytensor.grad(conv.sum() + pooled.sum(), [x, w])
    f = pytensor.function([x, w], grads, mode="JAX")
    x_value, w_value, _ = backend_inputs("float64")
    dx, dw = f(x_value, w_value)
    conv_shape = ref.conv2d(x_value, w_value).shape
    dx_conv, dw_ref = ref.conv2d_grads(x_value, w_value, np.ones(conv_shape))
    dx_ref = dx_conv + ref.max_pool_grad(
        x_value, BACKEND_POOL, np.ones(ref.max_pool(x_value, BACKEND_POOL).shape))
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-10, atol=1e-10)
