"""network3/accel/pooled.py: a conv layer's gradients through max-pooling,
from the pool's nonzero gradients.

* the rewrite fires where it should (the book's second conv layers) and
  not where BLAS is faster (patch rows shorter than MIN_ROW, its first);
* both Ops, on both paths (a sparse pooled gradient, and a dense one, which
  takes BLAS's path), float32 and float64, against scipy's correlations
  (tests/references.py), and with ties for a window's maximum against
  numpy's max-pool gradient; their numpy ``perform`` too;
* three SGD steps of the book's dbl_conv_relu network with them against
  the pure-tensor formulation on the C backend.
"""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.mode import Mode
from test_kernels import dbl_conv_step

from network3 import ReLU, ops
from network3.accel import pooled, rewrites

import references as ref

# (image_shape, filter_shape, poolsize): the book's second layer, and odd
# sizes with a pool that drops a border (patch rows of 16 * 4 = MIN_ROW)
CASES = [
    ((10, 20, 12, 12), (40, 20, 5, 5), (2, 2)),
    ((2, 16, 9, 11), (3, 16, 3, 4), (2, 3)),
]
IDS = ["book", "odd"]
TOL = {"float64": 1e-10, "float32": 2e-5}
NEW_OPS = (pooled.PooledConv2dGradWeights, pooled.PooledConv2dGradInputs)


def grads_fn(case, dtype, mode=None):
    """(x, w, gp) -> (z, gradient of x, gradient of w) of sum(pool(conv(x,
    w)) * gp): the gradient reaches the conv layer through the pool only."""
    image_shape, filter_shape, poolsize = case
    x, w, gp = (pt.tensor4(n, dtype=dtype) for n in ("x", "w", "gp"))
    z = ops.conv2d(x, w, image_shape, filter_shape)
    conv_shape = ref.conv2d(np.zeros(image_shape), np.zeros(filter_shape)).shape
    p = ops.max_pool_2d(z, conv_shape, poolsize)
    gx, gw = pytensor.grad((p * gp).sum(), [x, w])
    return pytensor.function([x, w, gp], [z, gx, gw],
                             mode=mode or rewrites.numba_mode())


def _ops(fn):
    return [type(node.op) for node in fn.maker.fgraph.apply_nodes]


def inputs(case, dtype, rng, density, ties=False):
    """x, w and a pooled gradient with ``density`` of it nonzero (ReLU above
    the pool: about half); with ``ties``, x is constant over a block wider
    than the kernels (1 in one corner, 0 in the other), so that whole
    windows of z tie, over patches of ones and of zeros."""
    image_shape, filter_shape, poolsize = case
    x = rng.normal(size=image_shape)
    if ties:
        x[:, :, :6, :8] = 1
        x[:, :, 6:, 4:] = 0
    w = rng.normal(size=filter_shape)
    oh, ow = (image_shape[2] - filter_shape[2] + 1, image_shape[3] - filter_shape[3] + 1)
    p_shape = (image_shape[0], filter_shape[0], oh // poolsize[0], ow // poolsize[1])
    gp = rng.normal(size=p_shape) * (rng.random(p_shape) < density)
    return [a.astype(dtype) for a in (x, w, gp)]


def numpy_grads(case, x, w, gp, z):
    """numpy's gradients: ops' max-pool gradient of the conv output z (every
    tied maximum gets the window's gradient) and scipy's correlations, in
    float64."""
    x, w, gp, z = (a.astype(np.float64) for a in (x, w, gp, z))
    pooled_z = ops.np_max_pool(z, *case[2])
    gz = ops.np_max_pool_grad(z, pooled_z, gp, *case[2])
    return ref.conv2d_grads(x, w, gz)


def assert_close(actual, expected, dtype):
    for name, a, e in zip(("grad x", "grad w"), actual, expected):
        assert a.dtype == np.dtype(dtype) and a.shape == e.shape, name
        scale = max(1.0, np.abs(e).max())
        np.testing.assert_allclose(a, e, rtol=0, atol=TOL[dtype] * scale, err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rewrite_replaces_the_pool_gradient_and_both_products(case):
    found = _ops(grads_fn(case, "float32"))
    assert all(op in found for op in NEW_OPS)
    assert ops.MaxPool2dGrad not in found
    assert rewrites.Conv2dGradWeightsFromCols not in found
    assert rewrites.BlasConv2dGradInputs not in found
    # the forward product and the weight gradient still share one Im2col
    assert found.count(rewrites.Im2col) == 1


def test_short_patch_rows_stay_on_blas():
    case = ((10, 1, 28, 28), (20, 1, 5, 5), (2, 2))  # the book's first layer
    found = _ops(grads_fn(case, "float32"))
    assert not any(op in found for op in NEW_OPS)
    assert rewrites.Conv2dGradWeightsFromCols in found


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("density", [0.3, 1.0], ids=["sparse", "dense"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_match_scipy(case, density, dtype, rng):
    x, w, gp = inputs(case, dtype, rng, density)
    _z, gx, gw = grads_fn(case, dtype)(x, w, gp)
    image_shape, filter_shape, poolsize = case
    x64, w64, gp64 = (a.astype(np.float64) for a in (x, w, gp))
    z = ref.conv2d(x64, w64)  # no ties: scipy's reference max-pool gradient
    expected = ref.conv2d_grads(x64, w64, ref.max_pool_grad(z, poolsize, gp64))
    assert_close((gx, gw), expected, dtype)


@pytest.mark.parametrize("density", [0.3, 1.0], ids=["sparse", "dense"])
def test_every_tied_maximum_gets_the_gradient(density, rng):
    case = CASES[0]
    x, w, gp = inputs(case, "float64", rng, density, ties=True)
    z, gx, gw = grads_fn(case, "float64")(x, w, gp)
    # windows of four tied numbers, over patches of ones and of zeros
    for window in (z[:, :, :2, :4], z[:, :, 6:, 4:]):
        assert (window == window[:, :, :1, :1]).all()
    assert_close((gx, gw), numpy_grads(case, x, w, gp, z), "float64")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ops_perform_for_other_backends(case, rng):
    """The Ops' numpy ``perform``, on PyTensor's Python linker."""
    image_shape, filter_shape, poolsize = case
    x, w, gp = inputs(case, "float64", rng, 0.5)
    z = ref.conv2d(x, w)
    p = ops.np_max_pool(z, *poolsize)
    tx, tw, tz, tp, tgp = (pt.tensor4(dtype="float64", shape=a.shape)
                           for a in (x, w, z, p, gp))
    kh, kw = filter_shape[2:]
    cols = rewrites.Im2col(kh, kw)(tx)
    gw = pooled.PooledConv2dGradWeights(poolsize, kh, kw)(cols, tx, tz, tp, tgp)
    gx = pooled.PooledConv2dGradInputs(poolsize)(tz, tp, tgp, tw)
    fn = pytensor.function([tx, tw, tz, tp, tgp], [gx, gw],
                           mode=Mode(linker="py", optimizer=None))
    assert_close(fn(x, w, z, p, gp), numpy_grads(case, x, w, gp, z), "float64")


def test_dbl_conv_relu_sgd_steps_match_pure_tensor_formulation():
    costs, params, graph = dbl_conv_step(ops.conv2d, ops.max_pool_2d, "numba",
                                         activation_fn=ReLU)
    assert all(op in graph for op in NEW_OPS)  # the second layer's
    ref_costs, ref_params, _ = dbl_conv_step(
        ops.conv2d_reference, ops.max_pool_2d_reference, "c", activation_fn=ReLU)
    np.testing.assert_allclose(costs, ref_costs, rtol=1e-5)
    for p, r in zip(params, ref_params):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p, r, rtol=1e-4, atol=1e-5)
