"""network3/rewrites.py: the SGD-step rewrites of the Numba mode.

* the Numba BLAS calls (gemm, dot22, sum of squares) against numpy, on
  C-ordered, Fortran-ordered, strided and empty operands;
* each rewrite fires on the graph it is meant for (the compiled graph has
  the new Op and not the old ones) and gives numpy's numbers;
* softmax, log-softmax and the book's label pick log(p)[arange(n), y] (and
  its gradient), the sums over all axes but one, the shape checks and the
  row argmax, as one loop nest each, against scipy and numpy;
* a few SGD steps of a small network on the Numba backend (rewritten)
  against the C backend (PyTensor's own BLAS rewrites), same seed.
"""

import numba
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
import scipy.special
from pytensor.tensor.blas import Dot22, Gemm
from pytensor.tensor.math import Dot

import network3
from network3.accel import rewrites
from network3.backend import _mode

rng = np.random.default_rng(0)


# Any-layout ("A") array types: one compilation per dtype serves every
# layout, which nb_gemm tells apart at run time from the strides
@numba.njit(["f4[:, :](f4[:, :], f8, f4[:, :], f4[:, :], f8)",
             "f8[:, :](f8[:, :], f8, f8[:, :], f8[:, :], f8)"])
def _gemm(z, a, x, y, b):
    return rewrites.nb_gemm(z, a, x, y, b)


def _layouts(a):
    """``a`` as a C-ordered, a Fortran-ordered and a strided array."""
    wide = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
    wide[:, ::2] = a
    return [np.array(a, order="C"), np.array(a, order="F"), wide[:, ::2]]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("M, K, N", [(5, 3, 4), (1, 7, 6), (6, 1, 1), (4, 0, 3)])
@pytest.mark.parametrize("b", [0.0, 1.0, 0.9])
def test_numba_gemm_matches_numpy_on_every_layout(dtype, M, K, N, b):
    tol = 1e-5 if dtype == "float32" else 1e-12
    x0 = rng.standard_normal((M, K)).astype(dtype)
    y0 = rng.standard_normal((K, N)).astype(dtype)
    z0 = rng.standard_normal((M, N)).astype(dtype)
    expected = b * z0.astype(float) - 0.5 * (x0.astype(float) @ y0.astype(float))
    for x in _layouts(x0):
        for y in _layouts(y0):
            for z in _layouts(z0):  # fresh copies: gemm overwrites z
                out = _gemm(z, -0.5, x, y, b)
                np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
                np.testing.assert_allclose(z, expected, rtol=tol, atol=tol)  # in place


def test_numba_gemm_ignores_garbage_in_z_when_b_is_0():
    x, y = np.ones((3, 2), "float32"), np.ones((2, 4), "float32")
    z = np.full((3, 4), np.nan, "float32")
    np.testing.assert_array_equal(_gemm(z, 1.0, x, y, 0.0), np.full((3, 4), 2.0))


def test_numba_gemm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        _gemm(np.zeros((3, 4)), 1.0, np.zeros((3, 2)), np.zeros((3, 4)), 1.0)


def _compile(inputs, outputs, **kwargs):
    return pytensor.function(inputs, outputs, mode=rewrites.numba_mode(), **kwargs)


def _ops(fn):
    return [type(node.op) for node in fn.maker.fgraph.apply_nodes]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_update_becomes_one_inplace_gemm(dtype):
    """The book's update with L2, w - eta*(dot(x.T, d) + c*w), runs as
    gemm(w, -eta, x.T, d, 1 - eta*c) in place on the shared w."""
    w0 = rng.standard_normal((6, 5)).astype(dtype)
    x0 = rng.standard_normal((4, 6)).astype(dtype)
    d0 = rng.standard_normal((4, 5)).astype(dtype)
    w = pytensor.shared(w0.copy(), name="w")
    x, d = pt.matrix(dtype=dtype), pt.matrix(dtype=dtype)
    eta, c = pytensor.shared(np.asarray(0.1, dtype)), pytensor.shared(np.asarray(0.01, dtype))
    cost = (w ** 2).sum()
    step = _compile([x, d], cost, updates=[(w, w - eta * (pt.dot(x.T, d) + c * w))])
    gemms = [n.op for n in step.maker.fgraph.apply_nodes if isinstance(n.op, Gemm)]
    assert gemms and all(op.inplace for op in gemms)
    assert Dot not in _ops(step)
    assert rewrites.SumOfSquares in _ops(step)
    for _ in range(3):
        expected_cost = (w.get_value().astype(float) ** 2).sum()
        expected_w = w.get_value() - 0.1 * (x0.T @ d0 + 0.01 * w.get_value())
        np.testing.assert_allclose(step(x0, d0), expected_cost, rtol=1e-5)
        np.testing.assert_allclose(w.get_value(), expected_w, rtol=1e-5, atol=1e-6)


def test_update_without_l2_and_other_forms_stay_correct():
    """No decay term; a dot that is not part of an update; a subtraction
    that is not an SGD step: each gives numpy's numbers."""
    w0 = rng.standard_normal((3, 4)).astype("float32")
    w = pytensor.shared(w0.copy())
    x, d = pt.matrix(dtype="float32"), pt.matrix(dtype="float32")
    x0 = rng.standard_normal((2, 3)).astype("float32")
    d0 = rng.standard_normal((2, 4)).astype("float32")
    f = _compile([x, d], [pt.dot(x, w), w - x.sum() * w],
                 updates=[(w, w - 0.5 * pt.dot(x.T, d))])
    product, not_a_step = f(x0, d0)
    np.testing.assert_allclose(product, x0 @ w0, rtol=1e-5)
    np.testing.assert_allclose(not_a_step, w0 - x0.sum() * w0, rtol=1e-5)
    np.testing.assert_allclose(w.get_value(), w0 - 0.5 * x0.T @ d0, rtol=1e-5, atol=1e-6)
    assert Dot22 in _ops(f) and Dot not in _ops(f)


@pytest.mark.parametrize("shape", [(7,), (4, 5), (2, 3, 4, 5)])
def test_sum_of_squares_on_contiguous_and_strided_tensors(shape):
    x = pt.tensor(dtype="float32", shape=(None,) * len(shape))
    f = _compile([x], [(x ** 2).sum(), (x[..., ::2] ** 2).sum()])
    assert rewrites.SumOfSquares in _ops(f)
    a = rng.standard_normal(shape).astype("float32")
    full, strided = f(a)
    np.testing.assert_allclose(full, (a.astype(float) ** 2).sum(), rtol=1e-5)
    np.testing.assert_allclose(strided, (a[..., ::2].astype(float) ** 2).sum(), rtol=1e-5)


def test_sum_of_squares_perform_for_other_backends():
    x = pt.matrix(dtype="float32")
    f = pytensor.function([x], rewrites.sum_of_squares(x), mode="FAST_COMPILE")
    a = rng.standard_normal((3, 4)).astype("float32")
    np.testing.assert_allclose(f(a), (a.astype(float) ** 2).sum(), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_rows_match_scipy(dtype):
    from scipy.special import log_softmax, softmax
    x = pt.matrix(dtype=dtype)
    f = _compile([x], [pt.special.softmax(x, axis=1), pt.special.log_softmax(x, axis=1)])
    assert rewrites.RowSoftmax in _ops(f)
    a = rng.standard_normal((6, 10)).astype(dtype)
    a[0] += 1000.0  # large logits: the maximum is subtracted first
    a[1, 3] = -1000.0
    tol = 1e-6 if dtype == "float32" else 1e-13
    p, log_p = f(a)
    np.testing.assert_allclose(p, softmax(a.astype(float), axis=1), rtol=tol, atol=tol)
    np.testing.assert_allclose(log_p, log_softmax(a.astype(float), axis=1),
                               rtol=tol, atol=tol * 1000)
    assert p.dtype == log_p.dtype == dtype


def _book_cost(n, k):
    """The book's cost, -mean(log(softmax(z))[arange(n), y]), and its
    gradient with respect to z."""
    z, y = pt.matrix(dtype="float32", shape=(n, k)), pt.ivector()
    cost = -pt.mean(pt.log(pt.special.softmax(z, axis=1))[pt.arange(n), y])
    return _compile([z, y], [cost, pytensor.grad(cost, z)])


def test_label_pick_and_its_gradient_match_numpy():
    f = _book_cost(5, 4)
    ops = _ops(f)
    assert rewrites.TakeRows in ops and rewrites.PutRows in ops
    from pytensor.tensor.subtensor import AdvancedIncSubtensor, AdvancedSubtensor
    assert AdvancedSubtensor not in ops and AdvancedIncSubtensor not in ops
    z = rng.standard_normal((5, 4)).astype("float32")
    y = np.array([0, 3, 3, 1, 2], "int32")
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    cost, grad = f(z, y)
    np.testing.assert_allclose(cost, -np.log(p[np.arange(5), y]).mean(), rtol=1e-5)
    np.testing.assert_allclose(grad, (p - np.eye(4)[y]) / 5, rtol=1e-5, atol=1e-7)


def test_label_out_of_range_is_an_error():
    f = _book_cost(3, 4)
    z = np.zeros((3, 4), "float32")
    with pytest.raises(IndexError, match="out of range"):
        f(z, np.array([0, 4, 1], "int32"))
    with pytest.raises(IndexError, match="out of range"):
        f(z, np.array([0, -1, 1], "int32"))


def test_other_index_patterns_are_left_to_pytensor():
    """Rows other than arange(n), or a matrix without a static height: not
    rewritten, same numbers as numpy."""
    x = pt.matrix(dtype="float32", shape=(3, 4))
    free = pt.matrix(dtype="float32")
    y = pt.ivector()
    f = _compile([x, free, y], [x[[2, 0, 1], y], free[pt.arange(3), y]])
    assert rewrites.TakeRows not in _ops(f)
    a = rng.standard_normal((3, 4)).astype("float32")
    labels = np.array([1, 3, 0], "int32")
    picked, free_picked = f(a, a, labels)
    np.testing.assert_array_equal(picked, a[[2, 0, 1], labels])
    np.testing.assert_array_equal(free_picked, a[np.arange(3), labels])


def test_cost_ops_perform_for_other_backends():
    from scipy.special import log_softmax, softmax
    x, g, y = pt.matrix(dtype="float32"), pt.vector(dtype="float32"), pt.ivector()
    f = pytensor.function(
        [x, g, y], [rewrites.RowSoftmax(False)(x), rewrites.RowSoftmax(True)(x),
                    rewrites.TakeRows()(x, y), rewrites.PutRows(4)(g, y)],
        mode="FAST_COMPILE")
    a = rng.standard_normal((3, 4)).astype("float32")
    b = np.array([1.0, 2.0, 3.0], "float32")
    labels = np.array([3, 0, 3], "int32")
    p, log_p, picked, put = f(a, b, labels)
    np.testing.assert_allclose(p, softmax(a, axis=1), rtol=1e-6)
    np.testing.assert_allclose(log_p, log_softmax(a, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(picked, a[np.arange(3), labels])
    expected = np.zeros((3, 4), "float32")
    expected[np.arange(3), labels] = b
    np.testing.assert_array_equal(put, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, axis", [((10, 100), 0), ((10, 7), 1), ((4, 5, 3, 3), (0, 2, 3)),
                                         ((7,), None), ((3, 4), None)])
def test_sums_keeping_one_axis_match_numpy(dtype, shape, axis):
    from pytensor.tensor.elemwise import CAReduce
    x = pt.tensor(dtype=dtype, shape=shape)
    f = _compile([x], [x.sum(axis=axis), x.T.sum(axis=axis if axis is None else 0)])
    ops = _ops(f)
    assert rewrites.SumKeep in ops and CAReduce not in ops
    a = (rng.standard_normal(shape) * 100).astype(dtype)
    tol = 1e-6 if dtype == "float32" else 1e-12
    total, total_t = f(a)
    np.testing.assert_allclose(total, a.sum(axis=axis, dtype=float), rtol=tol)
    np.testing.assert_allclose(total_t, a.T.sum(axis=axis if axis is None else 0, dtype=float),
                               rtol=tol)
    assert total.dtype == dtype and total.shape == np.sum(a, axis=axis).shape


def test_sums_keeping_two_axes_are_left_to_pytensor():
    x = pt.tensor(dtype="float32", shape=(3, 4, 5))
    f = _compile([x], x.sum(axis=0))
    assert rewrites.SumKeep not in _ops(f)
    a = rng.standard_normal((3, 4, 5)).astype("float32")
    np.testing.assert_allclose(f(a), a.astype("float64").sum(axis=0),
                               rtol=1e-6, atol=1e-6)


def test_shape_check_passes_the_right_shape_and_names_the_expected_one():
    x = pt.matrix(dtype="float32")
    f = _compile([x], pt.specify_shape(x, (2, None)) * 2)
    assert rewrites.ShapeCheck in _ops(f)
    a = np.ones((2, 5), "float32")
    np.testing.assert_array_equal(f(a), 2 * a)
    with pytest.raises(ValueError, match=r"expected an array of shape \(2, None\)"):
        f(np.ones((3, 5), "float32"))


def test_sum_and_shape_check_perform_for_other_backends():
    x = pt.tensor(dtype="float32", shape=(None, None, None))
    f = pytensor.function([x], [rewrites.SumKeep(1)(x), rewrites.SumKeep(None)(x),
                                rewrites.ShapeCheck((2, None, 4))(x)], mode="FAST_COMPILE")
    a = rng.standard_normal((2, 3, 4)).astype("float32")
    kept, total, same = f(a)
    np.testing.assert_allclose(kept, a.sum(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(total, a.sum(), rtol=1e-5)
    np.testing.assert_array_equal(same, a)
    with pytest.raises(ValueError, match="expected an array of shape"):
        f(np.ones((2, 3, 5), "float32"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_argmax_matches_numpy_with_ties_and_nans(dtype):
    from pytensor.tensor.math import Argmax
    x = pt.matrix(dtype=dtype)
    f = _compile([x], pt.argmax(x, axis=1))
    ops = _ops(f)
    assert rewrites.RowArgmax in ops and Argmax not in ops
    a = rng.standard_normal((6, 5)).astype(dtype)
    a[1] = [1, 3, 3, 0, 3]            # ties: the first maximum
    a[2, 2] = np.nan                  # a NaN: numpy returns the first NaN
    a[3] = [np.nan, 1, np.nan, 2, 0]
    a[4] = -np.inf
    np.testing.assert_array_equal(f(a), np.argmax(a, axis=1))
    free = pytensor.function([x], rewrites.RowArgmax()(x), mode="FAST_COMPILE")
    np.testing.assert_array_equal(free(a), np.argmax(a, axis=1))


def test_numba_mode_is_the_default_backend_mode():
    mode = _mode("numba")
    assert (rewrites._REWRITES, 48.5) in mode.provided_optimizer.extra_rewrites


def _train(backend, steps=4):
    network3.set_backend(backend)
    try:
        network3.seed(3)
        net = network3.Network([
            network3.FullyConnectedLayer(20, 30, activation_fn=network3.ReLU),
            network3.FullyConnectedLayer(30, 25),
            network3.SoftmaxLayer(25, 10)], 5)
        x = rng.random((50, 20), dtype=np.float32) if backend == "numba" else _train.x
        y = rng.integers(0, 10, 50).astype(np.int32) if backend == "numba" else _train.y
        _train.x, _train.y = x, y
        step = net.train_mb_function(pytensor.shared(x), pytensor.shared(y), 0.5, 2.0, 10)
        costs = [float(step(i)) for i in range(steps)]
        return costs, [p.get_value() for p in net.params], step
    finally:
        network3.set_backend(None)


def test_sgd_steps_match_the_c_backend():
    costs, params, step = _train("numba")
    assert sum(isinstance(n.op, Gemm) for n in step.maker.fgraph.apply_nodes) == 3
    c_costs, c_params, _ = _train("c")
    np.testing.assert_allclose(costs, c_costs, rtol=1e-5)
    for p, q in zip(params, c_params):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-6)


def test_numba_gemm_through_numbas_own_blas_binding():
    """Where numpy's OpenBLAS is not found (other platforms), nb_gemm calls
    BLAS through Numba's binding (SciPy's BLAS): same numbers."""
    import subprocess
    import sys
    code = """
import numba, numpy as np
import network3.accel.kernels as k
k._NUMPY_CBLAS = None
f = numba.njit(lambda z, a, x, y, b: k.nb_gemm(z, a, x, y, b))
r = np.random.default_rng(1)
for dtype in ("float32", "float64"):
    x = r.standard_normal((7, 3)).astype(dtype)
    y = r.standard_normal((4, 3)).astype(dtype).T
    z = r.standard_normal((7, 4)).astype(dtype)
    expected = 0.5 * z + 2.0 * (x @ y)
    out = f(z, 2.0, x, y, 0.5)
    assert np.allclose(out, expected, rtol=1e-5), (out, expected)
    assert np.allclose(z, expected, rtol=1e-5)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def _scalar_ops(fn):
    """The scalar Ops inside the compiled graph's element-wise loops."""
    found = []
    for node in fn.maker.fgraph.apply_nodes:
        scalar = getattr(node.op, "scalar_op", None)
        inner = getattr(scalar, "fgraph", None)
        found += [type(n.op) for n in inner.apply_nodes] if inner else [type(scalar)]
    return found


def test_float32_sigmoid_is_within_one_rounding_step_of_the_exact_value():
    x = pt.vector(dtype="float32")
    f = _compile([x], pt.sigmoid(x))
    assert rewrites.FastSigmoid in _scalar_ops(f)
    a = np.concatenate([np.linspace(-120, 120, 200_001),
                        [0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38, np.inf, -np.inf]])
    a = a.astype("float32")
    exact = scipy.special.expit(a.astype("float64"))
    out = f(a)
    assert out.dtype == np.float32
    ulps = np.abs(out - exact) / np.spacing(exact.astype("float32"))
    assert ulps.max() <= 1.0, a[np.argmax(ulps)]
    assert np.isnan(f(np.array([np.nan, 1.0], "float32"))[0])


def test_fast_sigmoid_inside_fused_loops_and_its_gradient_match_the_c_backend():
    x, b = pt.matrix(dtype="float32"), pt.vector(dtype="float32")
    y = pt.sigmoid(x + b)
    outputs = [y, pt.grad((y * y).sum(), x)]
    f = _compile([x, b], outputs)
    assert rewrites.FastSigmoid in _scalar_ops(f)
    c = pytensor.function([x, b], outputs, mode="FAST_RUN")
    a = (rng.standard_normal((7, 13)) * 8).astype("float32")
    v = rng.standard_normal(13).astype("float32")
    for ours, theirs in zip(f(a, v), c(a, v)):
        np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-7)


def test_float64_sigmoid_is_left_to_pytensor():
    x = pt.vector(dtype="float64")
    f = _compile([x], pt.sigmoid(x))
    assert rewrites.FastSigmoid not in _scalar_ops(f)
    a = np.linspace(-30, 30, 101)
    np.testing.assert_allclose(f(a), 1 / (1 + np.exp(-a)), rtol=1e-14)


def _elemwise_node(*shapes, expr=lambda *xs: sum(xs)):
    xs = [pt.tensor(dtype="float32", shape=s) for s in shapes]
    return expr(*xs).owner


def test_merged_axes_follow_each_inputs_broadcasting():
    # a conv layer's activations and its biases: the two image axes merge
    assert rewrites.merged_axes(
        _elemwise_node((10, 20, 12, 12), (1, 20, 1, 1))) == [[0], [1], [2, 3]]
    assert rewrites.merged_axes(_elemwise_node((10, 40, 4, 4), (10, 40, 4, 4))) == [
        [0, 1, 2, 3]]
    # an axis of length 1 merges with its neighbour
    assert rewrites.merged_axes(_elemwise_node((3, 1, 5), (3, 1, 5))) == [[0, 1, 2]]
    # broadcast along different axes, or unknown lengths: nothing to merge
    assert rewrites.merged_axes(_elemwise_node((3, 1), (1, 4))) is None
    assert rewrites.merged_axes(_elemwise_node((None, 4), (None, 4))) is None
    # a long innermost loop (a fully connected layer's) is left as it is
    n = rewrites.LONG_LOOP
    assert rewrites.merged_axes(_elemwise_node((10, n), (10, n))) is None
    assert rewrites.merged_axes(_elemwise_node((10, n - 1), (10, n - 1))) == [[0, 1]]


@pytest.mark.parametrize("order", ["C", "transposed"])
def test_flat_elemwise_matches_pytensors_loops(order):
    x = pt.tensor(dtype="float32", shape=(6, 5, 4, 3))
    b = pt.tensor(dtype="float32", shape=(1, 5, 1, 1))
    y = pt.tensor(dtype="float32", shape=(3, 4, 5, 6))
    z = pt.sigmoid(x + b) * y.transpose(3, 2, 1, 0)
    outputs = [z, z * 2 - x]  # one fused loop with two outputs
    ours = _compile([x, b, y], outputs)
    assert any(isinstance(n.op, rewrites.FlatElemwise) for n in ours.maker.fgraph.apply_nodes)
    theirs = pytensor.function([x, b, y], outputs, mode="FAST_RUN")
    a = rng.standard_normal((6, 5, 4, 3)).astype("float32")
    v = rng.standard_normal((1, 5, 1, 1)).astype("float32")
    c = rng.standard_normal((3, 4, 5, 6)).astype("float32")
    if order == "transposed":  # inputs that are not contiguous
        a = np.asfortranarray(a)
        c = np.ascontiguousarray(c.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)
    for o, t in zip(ours(a, v, c), theirs(a, v, c)):
        np.testing.assert_allclose(o, t, rtol=2e-6, atol=1e-7)


def test_flat_elemwise_in_place_update_of_a_shared_variable():
    w = pytensor.shared(np.ones((4, 3, 2, 2), "float32"), shape=(4, 3, 2, 2))
    g = pt.tensor(dtype="float32", shape=(4, 3, 2, 2))
    step = _compile([g], [], updates={w: w - 0.5 * pt.tanh(g)})
    assert any(isinstance(n.op, rewrites.FlatElemwise) and n.op.inplace_pattern
               for n in step.maker.fgraph.apply_nodes)
    grad = np.linspace(-2, 2, 48, dtype="float32").reshape(4, 3, 2, 2)
    step(grad)
    step(grad)
    np.testing.assert_allclose(w.get_value(), 1 - np.tanh(grad), rtol=1e-6)


def test_loops_of_sums_and_products_are_left_to_pytensor():
    x = pt.tensor(dtype="float32", shape=(10, 40, 4, 4))
    f = _compile([x], x * x + 2 * x)
    assert not any(isinstance(n.op, rewrites.FlatElemwise) for n in f.maker.fgraph.apply_nodes)
