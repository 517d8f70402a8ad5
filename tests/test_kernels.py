"""network3.ops' Ops (Conv2d, MaxPool2d and their gradient Ops, whose
kernels are in network3/kernels.py) against the independent references in
tests/references.py and against the pure-tensor definitions
(``conv2d_reference``, ``max_pool_2d_reference``, which PyTensor
differentiates by itself), forward and both gradients, on every backend:

* ``FAST_COMPILE`` (the Python VM: the Ops' numpy ``perform``),
* ``NUMBA`` (the default: the Numba kernels, specialised on static shapes),
* ``JAX`` (the jax.numpy functions),

plus three SGD steps of the book's dbl_conv network with the Ops (Numba)
against the same steps with the pure-tensor definitions (C backend).

The pure-tensor graphs are compiled only with FAST_COMPILE, JAX and C: Numba
takes minutes on them (that is why the Ops exist).
"""

import jax  # noqa: F401  (jax is a test dependency: fail, never skip, without it)
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad

import network3
from network3 import ops
from network3.accel import kernels, rewrites

import references as ref

# "network3": PyTensor's Numba mode with network3's rewrites (the default
# backend), where the convolution reads the columns of an Im2col node that
# its weight gradient shares
MODES = ["FAST_COMPILE", "NUMBA", "JAX", "network3"]

# (image_shape, filter_shape, poolsize): odd and non-square sizes, 1x1 and
# image-sized kernels, pools that drop a border, and the book's two layers.
CASES = [
    ((2, 3, 7, 5), (4, 3, 3, 2), (2, 2)),
    ((3, 1, 9, 8), (2, 1, 2, 3), (3, 2)),
    ((2, 2, 5, 4), (3, 2, 1, 1), (1, 1)),
    ((1, 2, 4, 7), (2, 2, 4, 1), (1, 7)),
    ((10, 1, 28, 28), (20, 1, 5, 5), (2, 2)),
    ((10, 20, 12, 12), (40, 20, 5, 5), (2, 2)),
]
IDS = ["-".join("x".join(map(str, s)) for s in case) for case in CASES]
TOL = {"float64": 1e-10, "float32": 2e-5}


#### helpers
def conv_pool_fn(case, dtype, mode, conv=ops.conv2d, pool=ops.max_pool_2d):
    """A function of (x, w, gz, gp) returning the conv output z, the pooled
    output p and the gradients of sum(z * gz) + sum(p * gp) with respect to
    x and w."""
    image_shape, filter_shape, poolsize = case
    x, w, gz, gp = (pt.tensor4(n, dtype=dtype) for n in ("x", "w", "gz", "gp"))
    # static shapes, as the layers give them (JAX needs them for the
    # pure-tensor formulation's reshapes)
    z = conv(pt.specify_shape(x, image_shape), pt.specify_shape(w, filter_shape),
             image_shape, filter_shape)
    conv_shape = ref.conv2d(np.zeros(image_shape), np.zeros(filter_shape)).shape
    p = pool(z, conv_shape, poolsize)
    cost = (z * gz).sum() + (p * gp).sum()
    gx, gw = pytensor.grad(cost, [x, w])
    return pytensor.function([x, w, gz, gp], [z, p, gx, gw], mode=compile_mode(mode))


def compile_mode(mode):
    return rewrites.numba_mode() if mode == "network3" else mode


def inputs(case, dtype, rng):
    image_shape, filter_shape, poolsize = case
    x = rng.normal(size=image_shape)
    w = rng.normal(size=filter_shape)
    z_shape = ref.conv2d(x[:1, :1], w[:1, :1]).shape[2:]
    gz = rng.normal(size=(image_shape[0], filter_shape[0]) + z_shape)
    gp = rng.normal(size=(image_shape[0], filter_shape[0], z_shape[0] // poolsize[0],
                          z_shape[1] // poolsize[1]))
    return [a.astype(dtype) for a in (x, w, gz, gp)]


def reference(case, x, w, gz, gp):
    x, w, gz, gp = (a.astype(np.float64) for a in (x, w, gz, gp))
    z = ref.conv2d(x, w)
    p = ref.max_pool(z, case[2])
    gz_total = gz + ref.max_pool_grad(z, case[2], gp)
    gx, gw = ref.conv2d_grads(x, w, gz_total)
    return z, p, gx, gw


def assert_close(actual, expected, dtype):
    for name, a, e in zip(("z", "pool", "grad x", "grad w"), actual, expected):
        assert a.dtype == np.dtype(dtype), name
        assert a.shape == e.shape, name
        scale = max(1.0, np.abs(e).max())
        np.testing.assert_allclose(a, e, rtol=0, atol=TOL[dtype] * scale,
                                   err_msg=name)


#### the Ops against scipy, on every backend
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ops_match_scipy(case, mode, dtype, rng):
    x, w, gz, gp = inputs(case, dtype, rng)
    out = conv_pool_fn(case, dtype, mode)(x, w, gz, gp)
    assert_close(out, reference(case, x, w, gz, gp), dtype)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv_and_its_weight_gradient_share_one_im2col(case):
    fn = conv_pool_fn(case, "float32", "network3")
    ops_ = [type(node.op) for node in fn.maker.fgraph.apply_nodes]
    assert ops_.count(rewrites.Im2col) == 1
    assert rewrites.Conv2dFromCols in ops_ and rewrites.Conv2dGradWeightsFromCols in ops_
    assert ops.Conv2d not in ops_ and ops.Conv2dGradWeights not in ops_


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[5]], ids=[IDS[0], IDS[4], IDS[5]])
def test_cols_ops_perform_for_other_backends(case, rng):
    """The numpy versions of the Ops of the rewrite, in PyTensor's Python
    mode, against scipy: both groupings of the columns (per image for the
    book's first layer, for the whole batch otherwise)."""
    image_shape, filter_shape, _ = case
    x, w, gz, _ = inputs(case, "float64", rng)
    kh, kw = filter_shape[2:]
    xv, wv, gzv = (pt.tensor(dtype="float64", shape=a.shape) for a in (x, w, gz))
    cols = rewrites.Im2col(kh, kw)(xv)
    z = rewrites.Conv2dFromCols(image_shape)(cols, wv)
    gw = rewrites.Conv2dGradWeightsFromCols(image_shape)(cols, gzv)
    fn = pytensor.function([xv, wv, gzv], [z, gw, cols], mode="FAST_COMPILE")
    z_out, gw_out, cols_out = fn(x, w, gz)
    per_image = z_out.shape[2] * z_out.shape[3] >= kernels.PER_IMAGE_MIN_PIXELS
    assert cols_out.shape[0] == (image_shape[0] if per_image else 1)
    np.testing.assert_allclose(z_out, ref.conv2d(x, w), rtol=1e-10, atol=1e-10)
    _, expected_gw = ref.conv2d_grads(x, w, gz)
    np.testing.assert_allclose(gw_out, expected_gw, rtol=1e-10, atol=1e-9)


#### the Ops against the pure-tensor formulation (PyTensor's own gradients)
# PyTensor's JAX conversion of the pure-tensor graph (not of the Ops) warns
@pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", ["FAST_COMPILE", "JAX"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ops_match_pure_tensor_formulation(case, mode, dtype, rng):
    args = inputs(case, dtype, rng)
    fast = conv_pool_fn(case, dtype, mode)(*args)
    slow = conv_pool_fn(case, dtype, mode, ops.conv2d_reference,
                        ops.max_pool_2d_reference)(*args)
    assert_close(fast, slow, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_max_pool_gradient_goes_to_every_tied_maximum(mode):
    # as Theano's max pool and PyTensor's max: ties share nothing, each gets g
    x = pt.tensor4("x", dtype="float64")
    p = ops.max_pool_2d(x, (1, 1, 3, 5), (2, 2))
    f = pytensor.function([x], pytensor.grad((p * [[[[1.0, 2.0]]]]).sum(), x),
                          mode=compile_mode(mode))
    value = np.array([[[[1, 1, 0, 5, 9], [1, 0, 5, 5, 9], [7, 7, 7, 7, 7]]]], "float64")
    expected = np.array([[[[1, 1, 0, 2, 0], [1, 0, 2, 2, 0], [0, 0, 0, 0, 0]]]])
    np.testing.assert_array_equal(f(value), expected)


def test_max_pool_propagates_nan_as_max_does():
    x = pt.tensor4("x", dtype="float64")
    f = pytensor.function([x], ops.max_pool_2d(x, (1, 1, 2, 2), (2, 2)),
                          mode="NUMBA")
    for value in ([[[[np.nan, 1.0], [2.0, 3.0]]]], [[[[1.0, 2.0], [np.nan, 0.0]]]]):
        assert np.isnan(f(np.array(value))).all()


@pytest.mark.parametrize("case", CASES[:4], ids=IDS[:4])
def test_verify_grad(case, rng):
    image_shape, filter_shape, poolsize = case
    x = rng.normal(size=image_shape)
    w = rng.normal(size=filter_shape)
    z_shape = ref.conv2d(x, w).shape

    def conv_pool(x, w):
        z = ops.conv2d(x, w, image_shape, filter_shape)
        return ops.max_pool_2d(pt.sin(z), z_shape, poolsize)

    verify_grad(conv_pool, [x, w], rng=rng, mode="FAST_COMPILE")


#### a whole SGD step of the book's dbl_conv network
def dbl_conv_step(conv, pool, backend, steps=3, activation_fn=None):
    """Build dbl_conv (seed 1234; with ``activation_fn``, dbl_conv_relu's
    layers with it) with the given conv and pool, take ``steps`` SGD steps
    (eta 0.03, lmbda 0.1), return the costs, the parameters and the Op
    classes of the compiled step."""
    from network3 import ConvPoolLayer, FullyConnectedLayer, Network, SoftmaxLayer
    act = {} if activation_fn is None else {"activation_fn": activation_fn}
    original = ops.conv2d, ops.max_pool_2d
    ops.conv2d, ops.max_pool_2d = conv, pool
    try:
        network3.seed(1234)
        network3.set_backend(backend)
        net = Network([
            ConvPoolLayer(image_shape=(10, 1, 28, 28), filter_shape=(20, 1, 5, 5), **act),
            ConvPoolLayer(image_shape=(10, 20, 12, 12), filter_shape=(40, 20, 5, 5), **act),
            FullyConnectedLayer(n_in=40 * 4 * 4, n_out=100, **act),
            SoftmaxLayer(n_in=100, n_out=10)], 10)
        rng = np.random.default_rng(0)
        x = rng.random((10 * steps, 784), dtype=np.float32)
        y = rng.integers(0, 10, 10 * steps).astype(np.int32)
        train = net.train_mb_function(pytensor.shared(x), pytensor.shared(y),
                                      0.03, 0.1, steps)
        graph = [type(node.op) for node in train.maker.fgraph.apply_nodes]
        costs = [float(train(i)) for i in range(steps)]
        return costs, [p.get_value() for p in net.params], graph
    finally:
        ops.conv2d, ops.max_pool_2d = original
        network3.set_backend(None)


def test_dbl_conv_sgd_step_matches_pure_tensor_formulation():
    # the pure-tensor graph runs on the C backend (Numba would take minutes to
    # compile it; network3's JAX path cannot slice mini-batches by a variable)
    costs, params, _ = dbl_conv_step(ops.conv2d, ops.max_pool_2d, "numba")
    ref_costs, ref_params, _ = dbl_conv_step(ops.conv2d_reference,
                                             ops.max_pool_2d_reference, "c")
    np.testing.assert_allclose(costs, ref_costs, rtol=1e-5)
    for p, r in zip(params, ref_params):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p, r, rtol=1e-4, atol=1e-5)


#### the Numba kernels without static shapes
def test_numba_kernels_run_with_sizes_known_only_at_run_time(rng):
    """ops.conv2d/max_pool_2d fix static shapes, and the Numba kernels are
    specialised on them; called directly on tensors of unknown shape, the
    Ops use the same kernels with the sizes read at run time."""
    x, w, gz, gp = (pt.tensor4(n, dtype="float64") for n in ("x", "w", "gz", "gp"))
    z = ops.Conv2d()(x, w)
    p = ops.MaxPool2d((2, 3))(z)
    assert z.type.shape == (None,) * 4
    gx, gw = pytensor.grad((z * gz).sum() + (p * gp).sum(), [x, w])
    f = pytensor.function([x, w, gz, gp], [z, p, gx, gw], mode="NUMBA")
    case = ((2, 3, 9, 10), (4, 3, 2, 3), (2, 3))
    args = inputs(case, "float64", rng)
    assert_close(f(*args), reference(case, *args), "float64")
