"""network3/accel/dense.py: the fully connected layers' kernels and rewrites.

* ``DenseUpdate`` and ``DenseForward`` compiled in Numba against numpy, in
  float32 and float64: mini-batches of 1 to 16 rows, widths that are not
  multiples of a vector (and narrower than one), inputs with zeros (which
  the kernels skip), whole rows of zeros and of nonzeros, beta = 1 (lmbda
  0) and < 1 (the L2 term), every output (the input gradient, masked or
  not, the sum of squares), w updated in place;
* the rewrites on the book's double_fc_dropout graph, at the book's sizes,
  rewritten and run on PyTensor's Python linker (no Numba compilation):
  each 1000-column weight matrix's update, input gradient and forward
  product become the new Ops, in place, the input gradient masked; the
  softmax layer's 10 columns stay with BLAS; and two SGD steps give the
  numbers of the same graph without dense.py's rewrites (lmbda 0, the
  book's);
* a small network of the same kind (ReLU, dropout 0.5, mini-batch 10; the
  size thresholds lifted, as for the self-check) trained in Numba with and
  without dense.py's rewrites, lmbda 0 and 0.1
  (the L2 term's sum of squares summed in the update's pass): the same
  costs and weights to float32 rounding;
* ``DenseMomentum`` (the step with momentum) compiled in Numba against
  numpy, float32 and float64, with and without the L2 term's decay, the
  input gradient (masked or not) and the sum of squares, w and v in place;
  on the book's double_fc_dropout graph with momentum 0.9, eta shared (as
  SGD's) or a constant, lmbda 0 and 0.1: the 1000-column layers' steps
  become DenseMomentum, in place, masked, with the same numbers as without
  dense.py's rewrites; a small network trained in Numba with momentum,
  float32 and float64, the same with and without them; where w and v are
  no shared variables not in place (both unchanged); not rewritten where
  the decay term is of another matrix, the velocity is w itself or the
  mini-batch is above MAX_BATCH;
* where w is no shared variable the update is not in place (w unchanged);
  where the input gradient has another use it is not masked; products of
  sizes the kernels are not for stay with OpenBLAS;
* dropout masks (layers.dropout_layer's definition) drawn by one loop
  (p_dropout 0.5, 0.25 and 0.2, sizes that fill the last draw and sizes
  that do not): new ones every call, the right mean, the masks and the
  generator's next state those of numpy's draws (an independent numpy
  reference) and of PyTensor's Python and stock Numba modes.
"""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.mode import Mode
from pytensor.tensor.blas import Dot22, Gemm

import network3
from network3 import backend
from network3.accel import checks, dense, rewrites

rng = np.random.default_rng(0)


def _sparse(shape, dtype, density=0.3):
    """Random numbers, about ``density`` of them nonzero, with one row of
    zeros and one of nonzeros."""
    x = rng.standard_normal(shape) * (rng.random(shape) < density)
    x[0] = 0
    x[-1] = rng.standard_normal(shape[1])
    return x.astype(dtype)


def _side_outputs(w, delta, f, grad, sumsq, masked):
    """numpy's input gradient (times f where ``masked``) and sum(w**2) of
    the old weights, as a DenseUpdate or DenseMomentum node gives them."""
    expected = []
    if grad:
        g = delta @ w.T
        expected.append(np.where(f != 0, f * g, 0) if masked else g)
    if sumsq:
        expected.append((w ** 2).sum())
    return expected


def _tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-13)


# (dtype, B, K, N, grad, sumsq, masked, beta)
UPDATES = [
    ("float32", 10, 37, 53, True, False, False, 1.0),
    ("float32", 10, 64, 40, True, True, True, 0.99),
    ("float32", 3, 20, 17, False, True, False, 0.99),
    ("float32", 16, 5, 100, True, False, True, 1.0),
    ("float32", 1, 9, 16, False, False, False, 1.0),
    ("float64", 10, 37, 53, True, True, True, 0.99),
    ("float64", 7, 30, 11, True, False, False, 1.0),
    ("float64", 2, 6, 5, False, True, False, 0.9),
]
# (dtype, B, K, N, density of x): dense rows of four (density 1), sparse
# rows, both
FORWARDS = [
    ("float32", 10, 37, 53, 0.3),
    ("float32", 10, 64, 40, 1.0),
    ("float32", 16, 9, 17, 0.7),
    ("float64", 3, 30, 11, 0.5),
    ("float64", 10, 6, 7, 1.0),
]


def test_kernels_match_numpy():
    """All cases in one compiled function (one Numba compilation)."""
    updates, outputs, checks = [], [], []
    for dtype, B, K, N, grad, sumsq, masked, beta in UPDATES:
        w0 = rng.standard_normal((K, N)).astype(dtype)
        x0 = _sparse((K, B), dtype)
        d0 = rng.standard_normal((B, N)).astype(dtype)
        f0 = (rng.random((B, K)) < 0.5) * rng.standard_normal((B, K)).astype(dtype)
        w = pytensor.shared(w0.copy(), shape=(K, N))
        x, d, f = (pytensor.shared(v.astype(dtype), shape=v.shape) for v in (x0, d0, f0))
        alpha, b = pt.constant(np.asarray(-0.03, dtype)), pt.constant(np.asarray(beta, dtype))
        op = dense.DenseUpdate(grad=grad, sumsq=sumsq, masked=masked)
        new_w, *rest = op(w, x, d, alpha, b, *[f] * masked, return_list=True)
        updates.append((w, new_w))
        w64, x64, d64 = (v.astype(float) for v in (w0, x0, d0))
        expected = _side_outputs(w64, d64, f0, grad, sumsq, masked)
        outputs += rest
        checks.append((w, beta * w64 - 0.03 * (x64 @ d64), expected, dtype))
    forward_checks = []
    for dtype, B, K, N, density in FORWARDS:
        x0 = _sparse((B, K), dtype, density)
        w0 = rng.standard_normal((K, N)).astype(dtype)
        x, w = (pytensor.shared(v, shape=v.shape) for v in (x0, w0))
        outputs.append(dense.DenseForward()(x, w))
        forward_checks.append((x0.astype(float) @ w0, dtype))
    fn = pytensor.function([], outputs, updates=updates,
                           mode=rewrites.numba_mode())
    ops = [node.op for node in fn.maker.fgraph.apply_nodes]
    assert sum(isinstance(op, dense.DenseUpdate) and op.inplace for op in ops) == len(UPDATES)
    results = iter(fn())
    for w, new_w, expected, dtype in checks:
        np.testing.assert_allclose(w.get_value(), new_w, **_tolerance(dtype))
        for value in expected:
            np.testing.assert_allclose(next(results), value, **_tolerance(dtype))
    for expected, dtype in forward_checks:
        np.testing.assert_allclose(next(results), expected, **_tolerance(dtype))


def _double_fc_dropout(mini_batch, sizes, conv):
    from network3 import ConvPoolLayer, FullyConnectedLayer, ReLU, SoftmaxLayer
    layers = [ConvPoolLayer((20, 1, 5, 5), (mini_batch, 1, 28, 28), activation_fn=ReLU),
              ConvPoolLayer((40, 20, 5, 5), (mini_batch, 20, 12, 12), activation_fn=ReLU)] \
        if conv else []
    n_in, hidden, classes = sizes
    layers += [FullyConnectedLayer(n_in, hidden, ReLU, 0.5),
               FullyConnectedLayer(hidden, hidden, ReLU, 0.5),
               SoftmaxLayer(hidden, classes, 0.5)]
    return network3.Network(layers, mini_batch)


def _train(mode, lmbda, steps, sizes=(640, 1000, 10), conv=True, n_in=784, seed=7,
           momentum=0.0, eta=0.03):
    """The step of a double_fc_dropout-like network compiled in ``mode``,
    ``steps`` times: (costs, weights, the compiled graph's Ops).  ``eta``: a
    number (a constant in the graph) or a shared variable (as SGD's)."""
    network3.seed(seed)
    net = _double_fc_dropout(10, sizes, conv)
    data = np.random.default_rng(seed)
    x = pytensor.shared(data.random((10 * steps, n_in)).astype(network3.floatX()))
    y = pytensor.shared(data.integers(0, sizes[2], 10 * steps).astype("int32"))
    saved, checked = dict(backend._accelerator), set(checks._checked)
    backend._accelerator["mode"] = mode
    checks._checked.update(checks.FAMILIES)  # (these tests compare the numbers themselves)
    try:
        step = net.train_mb_function(x, y, eta, lmbda, 1000, momentum=momentum)
    finally:
        backend._accelerator.clear()
        backend._accelerator.update(saved)
        checks._checked.clear()
        checks._checked.update(checked)
    costs = [float(step(i)) for i in range(steps)]
    ops = [node.op for node in step.maker.fgraph.apply_nodes]
    return costs, [layer.w.get_value() for layer in net.layers], ops


def _mode(linker, with_dense, monkeypatch):
    """The accelerator's rewrites (with dense.py's or without) and
    ``linker``; on the Python linker without the rewrite that wraps random
    variables for Numba (whose ``perform`` then compiles a graph of its own,
    and refuses one that works in place)."""
    with monkeypatch.context() as patch:
        if not with_dense:  # (the same dropout masks: those rewritten both times)
            patch.setattr(dense, "POSITIONS", tuple(
                (rewrite, position) for rewrite, position in dense.POSITIONS
                if rewrite in (dense.MASKS, dense.INPLACE_MASKS)))
        mode = rewrites.numba_mode()
    if linker == "py":
        mode = mode.excluding("introduce_explicit_core_shape_rv")
    return Mode(linker=linker, optimizer=mode.provided_optimizer)


@pytest.fixture
def numba_backend():
    network3.set_backend("numba")


def test_the_books_graph_is_rewritten_and_computes_the_same(monkeypatch, numba_backend):
    lmbda = 0.0  # the book's (the L2 term's sum of squares: the next test)
    costs, weights, ops = _train(_mode("py", True, monkeypatch), lmbda, 2)
    updates = [op for op in ops if isinstance(op, dense.DenseUpdate)]
    assert len(updates) == 2
    assert all(op.inplace and op.masked and op.grad and not op.sumsq for op in updates)
    assert sum(isinstance(op, dense.DenseForward) for op in ops) == 2
    assert sum(op == dense.DropoutBits(1, 1, (10, 1000), True) for op in ops) == 2
    assert sum(op == dense.DropoutBits(1, 1, (10, 640), True) for op in ops) == 1
    # the softmax layer's 1000 x 10 weights: BLAS, as before
    assert sum(isinstance(op, Gemm) for op in ops) == 1
    assert sum(type(op) is Dot22 for op in ops) == 2  # its forward and input gradient
    plain_costs, plain_weights, _ = _train(_mode("py", False, monkeypatch), lmbda, 2)
    np.testing.assert_allclose(costs, plain_costs, rtol=1e-5)
    for w, plain in zip(weights, plain_weights):
        np.testing.assert_allclose(w, plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lmbda", [0.0, 0.1])
def test_numba_step_matches_the_step_without_the_rewrites(lmbda, monkeypatch, numba_backend):
    small = dict(sizes=(30, 40, 10), conv=False, n_in=30, steps=4)
    with dense.everywhere():  # (matrices this small stay with OpenBLAS)
        costs, weights, ops = _train(_mode(rewrites.GraphLinker(), True, monkeypatch),
                                     lmbda, **small)
    kinds = {(op.grad, op.masked, op.sumsq, op.inplace)
             for op in ops if isinstance(op, dense.DenseUpdate)}
    # the first layer's input is data: no input gradient
    assert kinds == {(False, False, lmbda > 0, True), (True, True, lmbda > 0, True)}
    plain_costs, plain_weights, ops = _train(
        _mode(rewrites.GraphLinker(), False, monkeypatch), lmbda, **small)
    assert not any(isinstance(op, dense.DenseUpdate | dense.DenseForward) for op in ops)
    np.testing.assert_allclose(costs, plain_costs, rtol=1e-5)
    for w, plain in zip(weights, plain_weights):
        np.testing.assert_allclose(w, plain, rtol=1e-4, atol=1e-6)


# (dtype, B, K, N, grad, sumsq, masked, decay)
MOMENTUM_UPDATES = [
    ("float32", 10, 37, 53, True, False, False, False),
    ("float32", 10, 64, 40, True, True, True, True),
    ("float32", 3, 20, 17, False, True, False, True),
    ("float32", 16, 5, 100, True, False, True, False),
    ("float64", 10, 37, 53, True, True, True, True),
    ("float64", 7, 30, 11, True, False, False, False),
    ("float64", 1, 6, 5, False, False, False, True),
]


def test_momentum_kernels_match_numpy():
    """DenseMomentum against numpy, float64 (eta 0.03, mu 0.9, gamma -0.006): v
    and w updated in place, the input gradient and sum of squares from the
    old w.  All cases in one compiled function."""
    updates, outputs, cases = [], [], []
    for dtype, B, K, N, grad, sumsq, masked, decay in MOMENTUM_UPDATES:
        w0, v0 = (rng.standard_normal((K, N)).astype(dtype) for _ in range(2))
        x0 = _sparse((K, B), dtype)
        d0 = rng.standard_normal((B, N)).astype(dtype)
        f0 = (rng.random((B, K)) < 0.5) * rng.standard_normal((B, K)).astype(dtype)
        w, v = (pytensor.shared(a.copy(), shape=(K, N)) for a in (w0, v0))
        x, d, f = (pytensor.shared(a.astype(dtype), shape=a.shape) for a in (x0, d0, f0))
        alpha, mu, c = (pt.constant(np.asarray(a, dtype)) for a in (-0.03, 0.9, -0.006))
        op = dense.DenseMomentum(grad=grad, sumsq=sumsq, masked=masked, decay=decay)
        new_w, new_v, *rest = op(w, v, x, d, alpha, mu, *[c] * decay, *[f] * masked,
                                 return_list=True)
        updates += [(w, new_w), (v, new_v)]
        w64, v64, x64, d64 = (a.astype(float) for a in (w0, v0, x0, d0))
        velocity = 0.9 * v64 - 0.03 * (x64 @ d64) - (0.006 * w64 if decay else 0)
        expected = _side_outputs(w64, d64, f0, grad, sumsq, masked)
        outputs += rest
        cases.append((w, w64 + velocity, v, velocity, expected, dtype))
    fn = pytensor.function([], outputs, updates=updates, mode=rewrites.numba_mode())
    ops = [node.op for node in fn.maker.fgraph.apply_nodes]
    assert sum(isinstance(op, dense.DenseMomentum) and op.inplace for op in ops) \
        == len(MOMENTUM_UPDATES)
    results = iter(fn())
    for w, new_w, v, new_v, expected, dtype in cases:
        np.testing.assert_allclose(v.get_value(), new_v, **_tolerance(dtype))
        np.testing.assert_allclose(w.get_value(), new_w, **_tolerance(dtype))
        for value in expected:
            np.testing.assert_allclose(next(results), value, **_tolerance(dtype))


@pytest.mark.parametrize("shared_eta", [True, False])
@pytest.mark.parametrize("lmbda", [0.0, 0.1])
def test_the_books_momentum_step_is_rewritten_and_computes_the_same(
        lmbda, shared_eta, monkeypatch, numba_backend):
    """momentum=0.9 on the book's double_fc_dropout graph (Python linker),
    eta shared (as SGD's; the step ``mu * v - eta * grad``) or a constant
    (PyTensor makes it a gemm): each 1000-column weight matrix's w and v in
    one DenseMomentum, in place, with the input gradient (masked) and, with
    the L2 term, its decay and sum of squares; two steps give the numbers
    of the graph without dense.py's rewrites."""
    def eta():
        return pytensor.shared(np.float32(0.03)) if shared_eta else 0.03
    costs, weights, ops = _train(_mode("py", True, monkeypatch), lmbda, 2, momentum=0.9,
                                 eta=eta())
    steps = [op for op in ops if isinstance(op, dense.DenseMomentum)]
    assert len(steps) == 2
    assert all(op.inplace and op.masked and op.grad and op.sumsq == op.decay == (lmbda > 0)
               for op in steps)
    assert not any(isinstance(op, dense.DenseUpdate) for op in ops)
    assert sum(isinstance(op, dense.DenseForward) for op in ops) == 2
    plain_costs, plain_weights, _ = _train(_mode("py", False, monkeypatch), lmbda, 2,
                                           momentum=0.9, eta=eta())
    np.testing.assert_allclose(costs, plain_costs, rtol=1e-5)
    for w, plain in zip(weights, plain_weights):
        np.testing.assert_allclose(w, plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lmbda", [0.0, 0.1])
def test_numba_momentum_step_matches_the_step_without_the_rewrites(
        lmbda, dtype, monkeypatch, numba_backend):
    """A small network (the size thresholds lifted) trained with momentum
    in Numba, float32 and float64: the same costs and weights with and
    without dense.py's rewrites."""
    network3.set_floatX(dtype)  # (conftest.py sets float32 again after each test)
    small = dict(sizes=(30, 40, 10), conv=False, n_in=30, steps=4, momentum=0.9)
    with dense.everywhere():  # (matrices this small stay with OpenBLAS)
        costs, weights, ops = _train(_mode(rewrites.GraphLinker(), True, monkeypatch),
                                     lmbda, **small)
    kinds = {(op.grad, op.masked, op.sumsq, op.decay, op.inplace)
             for op in ops if isinstance(op, dense.DenseMomentum)}
    # the first layer's input is data: no input gradient; all three layers
    # (the softmax layer's 10 columns too, with the size thresholds lifted)
    assert kinds == {(False, False, lmbda > 0, lmbda > 0, True),
                     (True, True, lmbda > 0, lmbda > 0, True)}
    plain_costs, plain_weights, ops = _train(
        _mode(rewrites.GraphLinker(), False, monkeypatch), lmbda, **small)
    assert not any(isinstance(op, dense.DenseMomentum | dense.DenseUpdate) for op in ops)
    assert {w.dtype for w in weights} == {np.dtype(dtype)}
    np.testing.assert_allclose(costs, plain_costs, rtol=1e-5 if dtype == "float32" else 1e-12)
    for w, plain in zip(weights, plain_weights):
        np.testing.assert_allclose(w, plain, **_tolerance(dtype))


def test_momentum_not_in_place_on_inputs_and_not_where_the_step_is_another():
    """w and v function inputs: DenseMomentum, not in place (the inputs
    left alone), the numbers numpy's.  Not rewritten: a decay term of
    another matrix than w, a velocity that is w itself, a mini-batch above
    MAX_BATCH."""
    K, N, B = 24, 20, 5
    w, v, u, x, d, big_x, big_d = (
        pt.matrix(name, dtype="float32", shape=shape)
        for name, shape in (("w", (K, N)), ("v", (K, N)), ("u", (K, N)), ("x", (B, K)),
                            ("d", (B, N)), ("big_x", (dense.MAX_BATCH + 1, K)),
                            ("big_d", (dense.MAX_BATCH + 1, N))))
    eta, mu, c = np.float32(0.1), np.float32(0.9), np.float32(0.01)

    def step(w, v, x, d, decay=None):
        grad = pt.dot(x.T, d) + (0 if decay is None else c * decay)
        new_v = mu * v - eta * grad
        return w + new_v, new_v

    def momentum_ops(outputs):
        with dense.everywhere():
            fn = pytensor.function([w, v, u, x, d, big_x, big_d], outputs,
                                   mode=rewrites.numba_mode(), on_unused_input="ignore")
        return fn, [n.op for n in fn.maker.fgraph.apply_nodes
                    if isinstance(n.op, dense.DenseMomentum)]

    new_w, new_v = step(w, v, x, d, decay=w)
    fn, ops = momentum_ops([new_w, new_v, pt.dot(d, w.T)])
    assert len(ops) == 1 and not ops[0].inplace and ops[0].decay and ops[0].grad
    values = [rng.standard_normal(var.type.shape).astype("float32")
              for var in (w, v, u, x, d, big_x, big_d)]
    w0, v0, _, x0, d0, _, _ = (value.copy() for value in values)
    out_w, out_v, out_g = fn(*values)
    np.testing.assert_array_equal(values[0], w0)  # the inputs are left alone
    np.testing.assert_array_equal(values[1], v0)
    velocity = 0.9 * v0 - 0.1 * (x0.T @ d0 + 0.01 * w0)
    np.testing.assert_allclose(out_v, velocity, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_w, w0 + velocity, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_g, d0 @ w0.T, rtol=1e-5, atol=1e-5)
    for outputs in (step(w, v, x, d, decay=u), step(w, w, x, d), step(w, v, big_x, big_d)):
        assert momentum_ops(list(outputs))[1] == []


def test_not_in_place_on_an_input_and_not_masked_where_the_gradient_is_used_twice():
    K, N, B = 24, 20, 5
    w, x, d, f = (pt.matrix(name, dtype="float32", shape=shape)
                  for name, shape in (("w", (K, N)), ("x", (B, K)), ("d", (B, N)), ("f", (B, K))))
    new_w = w - np.float32(0.1) * pt.dot(x.T, d)
    g = pt.dot(d, w.T)
    with dense.everywhere():
        fn = pytensor.function([w, x, d, f], [new_w, g, g * f], mode=rewrites.numba_mode())
    ops = [node.op for node in fn.maker.fgraph.apply_nodes]
    updates = [op for op in ops if isinstance(op, dense.DenseUpdate)]
    assert len(updates) == 1 and not updates[0].inplace and not updates[0].masked
    values = [rng.standard_normal(v.type.shape).astype("float32") for v in (w, x, d, f)]
    w0 = values[0].copy()
    out_w, out_g, out_gf = fn(*values)
    np.testing.assert_array_equal(values[0], w0)  # the input is left alone
    np.testing.assert_allclose(out_w, w0 - 0.1 * values[1].T @ values[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_g, values[2] @ w0.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_gf, (values[2] @ w0.T) * values[3], rtol=1e-5, atol=1e-5)


def test_products_the_kernels_are_not_for_stay_with_blas():
    """A mini-batch above MAX_BATCH, fewer columns than MIN_COLUMNS or
    weights than MIN_WEIGHTS, a transposed w: Dot22 (rewritten on the
    Python linker only)."""
    mode = Mode(linker="py", optimizer=rewrites.numba_mode().optimizer)
    K, N = 400, dense.MIN_WEIGHTS // 400 + 1

    def matrix(name, *shape):
        return pt.matrix(name, dtype="float32", shape=shape)
    big, x, w = matrix("big", dense.MAX_BATCH + 1, K), matrix("x", 4, K), matrix("w", K, N)
    narrow = matrix("narrow", 2 * dense.MIN_WEIGHTS, dense.MIN_COLUMNS - 1)
    small, wt = matrix("small", K, 30), matrix("wt", N, K)
    products = [pt.dot(big, w), pt.dot(matrix("y", 4, 2 * dense.MIN_WEIGHTS), narrow),
                pt.dot(x, small), pt.dot(x, wt.T), pt.dot(x, w)]
    fn = pytensor.function(list(pytensor.graph.graph_inputs(products)), products, mode=mode)
    ops = [type(node.op) for node in fn.maker.fgraph.apply_nodes]
    assert ops.count(Dot22) == 4 and ops.count(dense.DenseForward) == 1


def _numpy_masks(state, p_dropout, shape, calls):
    """layers.dropout_layer's masks, ``calls`` of them, from a generator in
    ``state``, in numpy: 30 bits a draw, m bits a unit, lowest first."""
    keep = 1 - p_dropout
    k, m = next(((int(keep * 2**m), m) for m in range(1, 17) if keep * 2**m == int(keep * 2**m)),
                (int(np.ceil(keep * 2**30)), 30))
    generator = np.random.default_rng()
    generator.bit_generator.state = state
    n, per = int(np.prod(shape)), 30 // m
    masks = []
    for _ in range(calls):
        draws = generator.integers(0, 2**30, -(-n // per))
        bits = (draws[:, None] >> (m * np.arange(per))) & (2**m - 1)
        masks.append((bits.ravel()[:n] < k).reshape(shape))
    return masks, generator.bit_generator.state


@pytest.mark.parametrize("p_dropout, shape, bits", [
    (0.5, (10, 1000), (1, 1)), (0.25, (10, 30), (3, 2)), (0.2, (3, 7), (858993460, 30))])
def test_dropout_masks_are_drawn_in_one_loop_as_layers_defines_them(p_dropout, shape, bits):
    """The accelerator's masks against numpy's draws, and against the same
    graph in PyTensor's Python and stock Numba modes: the same masks and
    the same next state of the generator, a new mask every call, kept with
    probability 1 - p_dropout (within 5 standard deviations)."""
    from pytensor.compile.mode import get_mode

    from network3.layers import dropout_layer
    x = pt.matrix("x", dtype="float32", shape=shape)
    ones = np.ones(shape, np.float32)
    results = {}
    for name, mode in (("accelerator", rewrites.numba_mode()), ("numba", get_mode("NUMBA")),
                       ("python", Mode(linker="py", optimizer=None))):
        network3.seed(3)
        masked = dropout_layer(x, p_dropout)
        (stream,) = [v for v in pytensor.graph.graph_inputs([masked])
                     if isinstance(v, pytensor.compile.SharedVariable)]
        state = stream.get_value().bit_generator.state
        fn = pytensor.function([x], pt.neq(masked, 0), mode=mode)
        results[name] = ([fn(ones) for _ in range(20)], stream.get_value().bit_generator.state,
                         [node.op for node in fn.maker.fgraph.apply_nodes])
    masks, end = _numpy_masks(state, p_dropout, shape, 20)
    assert dense.DropoutBits(*bits, shape, inplace=True) in results["accelerator"][2]
    assert not any(isinstance(op, dense.DropoutBits) for op in results["numba"][2])
    for name, (drawn, state_after, _) in results.items():
        np.testing.assert_array_equal(drawn, masks, err_msg=name)
        assert state_after == end, name
    drawn = np.array(masks)
    assert not any(np.array_equal(drawn[0], other) for other in drawn[1:])
    keep = 1 - p_dropout
    assert abs(drawn.mean() - keep) < 5 * np.sqrt(keep * p_dropout / drawn.size)
