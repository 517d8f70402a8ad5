"""accel/dense.py: fully connected layers at a small mini-batch, at memory
speed.

At the book's mini-batch of 10, a fully connected layer's three products
each read its whole weight matrix w (K inputs by N outputs) for 10
multiply-adds per weight: the forward product ``x @ w``, the gradient of the
layer's input ``delta @ w.T``, and the update ``w - eta * (x.T @ delta)``,
which also writes w.  OpenBLAS runs them well below the speed at which one
core reads memory.  This module does them in two passes
over w, and skips the products by zero that ReLU and dropout put there:

* ``DenseForward``: ``x @ w``, w read once, row by row, each row i added
  into the (B, N) result (which stays in cache) times the nonzero numbers of
  x's column i only (blocks of four rows with mostly nonzero numbers: times
  all of them, fewer loads and stores of the result);
* ``DenseUpdate``: the update and the input gradient in one pass.  Each row
  of w is read once: its old numbers are multiplied into the input gradient
  (``delta @ w[i]``, from the old weights, as the book's gradient is) and
  the new row ``beta * w[i] + alpha * (x.T[i] @ delta)``, a sum over the
  nonzero numbers of x.T[i] only, is written in their place.  The L2 term's
  ``sum(w**2)``, when the cost has it, is summed on the way.  Where the
  graph only ever uses the input gradient multiplied by other factors f
  (the mask of the layer's dropout and the gradient of the ReLU below it),
  ``masked``: the update computes that product, and the input gradient only
  where f is nonzero;
* ``DenseMomentum``: the same pass for a step with momentum
  (``SGD(momentum=mu)``), which keeps a velocity v beside w: each row of v
  is read and written with w's, ``v = mu * v - eta * grad`` and ``w = w +
  v``, so the weight gradient ``x.T @ delta`` is never a matrix of its own
  (PyTensor's graph makes it one, then passes over it, v and w again).

A zero skipped is a product that adds nothing, so the numbers are the
book's, in the weights' dtype, each sum a chain of multiply-adds in an order
of its own (to rounding); they differ only where a skipped product would
have been 0 * inf or 0 * NaN (NaN in the plain graph; a network that far
gone has NaN in its cost already).

The kernels are LLVM code made here (``_dense_update_kernel``, with
``momentum`` DenseMomentum's too, ``_dense_forward_kernel``): vectors of
64 bytes (16 float32 numbers, 8 float64; Numba's own loops get 32-byte
ones, which LLVM prefers on this machine's AVX-512), one copy of the inner
loop per count of nonzero numbers in a row (so that its accumulators stay
in registers), the widths static.  docs/performance.md has each node's
time against OpenBLAS's, with how it was measured.

Dropout masks (``DropoutBits``): layers.dropout_layer defines a mask as
numpy's integer draws and integer arithmetic on them (30 random bits a
draw, m bits a unit), which PyTensor runs as a random variable and half a
dozen array operations; ``local_dropout_bits`` makes them one loop that
draws the same numbers from the same generator and gives the same mask.

The rewrites, after rewrites.py's (which make the update a ``Gemm`` and the
products ``Dot22``): ``local_dense_update`` replaces an update ``gemm(w,
alpha, x.T, delta, beta)`` of a matrix with at least ``MIN_COLUMNS``
columns and ``MIN_WEIGHTS`` weights, at a static mini-batch of at most
``MAX_BATCH``, together with the product ``dot22(delta, w.T)`` (and its one
use, when that is a product) and ``sum_of_squares(w)`` where the graph has
them; ``local_inplace_dense_update`` makes it update w in place where
PyTensor's destroy handler allows (as ``InplaceBlasOpt`` does for gemm);
``local_dense_forward`` replaces ``dot22(x, w)`` of such shapes (w not a
transposed view); ``local_dropout_bits`` the masks.  The momentum step's
rewrite, ``local_dense_momentum``, runs before rewrites.py's (which would
turn its new v into a gemm of ``mu * v``) and replaces ``w + v_new`` and
v_new with a ``DenseMomentum``; ``local_dense_momentum_clients`` then adds
the input gradient and the sum of squares as for DenseUpdate, and
``local_inplace_dense_momentum`` updates w and v in place.  ``POSITIONS``
says where each runs among PyTensor's rewrites; rewrites.py registers
them.
"""

import contextlib
import copy
import hashlib
from pathlib import Path

import numpy as np
import pytensor.tensor as pt
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from pytensor.graph.basic import Apply, Constant
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.graph.traversal import ancestors
from pytensor.scalar import basic as ps
from pytensor.tensor.blas import Dot22, Gemm, gemm_no_inplace
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.random.basic import IntegersRV
from pytensor.tensor.shape import Reshape, SpecifyShape
from pytensor.tensor.subtensor import Subtensor

from . import kernels
from .kernels import inner

# The kernels unroll the mini-batch's rows (one copy of the inner loop per
# count of nonzero numbers, an accumulator register per row): up to this
# many rows, beyond which OpenBLAS's blocked products are the better fit
MAX_BATCH = 16
# At least one vector of 16 float32 numbers a row (narrower matrices, such as
# the book's softmax layer's 1000 x 10, stay with OpenBLAS, whose small
# kernels are faster there), and MIN_WEIGHTS weights: smaller matrices stay
# in the cache, where OpenBLAS's products run at its best, and OpenBLAS was
# the faster here (measured, forward product and update, mini-batch 10:
# 640 x 128 and 784 x 100, the book's shallow network's, OpenBLAS; 640 x
# 192 and larger, these kernels).  ``everywhere()`` lifts both, for the
# accelerator's self-check.
MIN_COLUMNS = 16
MIN_WEIGHTS = 100_000
# The forward product takes w's rows FORWARD_ROWS at a time, multiplied by
# all of x's numbers for them where more than FORWARD_DENSE of those are
# nonzero, else row by row by the nonzero numbers only
FORWARD_ROWS = 4
FORWARD_DENSE = 0.6

_FLOATS = ("float32", "float64")


#### Ops
class DenseUpdate(Op):
    """(w, x, delta, alpha, beta[, f]) -> the new w, ``beta * w + alpha * (x @
    delta)``, then, with ``grad``, the input gradient ``delta @ w.T`` of the
    old w (``masked``: times f, (B, K), computed only where f is nonzero, 0
    elsewhere), and with ``sumsq``, ``sum(w**2)`` of the old w.  x is (K,
    B), delta (B, N), w (K, N); with ``inplace`` the new w is written over w.

    ``masked`` is for an input gradient that the graph only ever uses
    multiplied by f (a dropout mask, the gradient of a ReLU): where f is 0,
    its products are not computed.  This differs from f * (delta @ w.T) only
    where that is 0 * inf or 0 * NaN, which is NaN."""

    __props__ = ("inplace", "grad", "sumsq", "masked")

    def __init__(self, inplace=False, grad=True, sumsq=False, masked=False):
        self.inplace, self.grad, self.sumsq = bool(inplace), bool(grad), bool(sumsq)
        self.masked = bool(masked) and self.grad
        if self.inplace:
            self.destroy_map = {0: [0]}

    def make_node(self, w, x, delta, alpha, beta, *f):
        inputs = list(map(pt.as_tensor_variable, (w, x, delta, alpha, beta, *f)))
        if len(f) != self.masked:
            raise TypeError("DenseUpdate: f is an input exactly when masked")
        w, delta = inputs[0], inputs[2]
        outputs = [w.type()]
        if self.grad:
            outputs.append(pt.tensor(dtype=w.dtype,
                                     shape=(delta.type.shape[0], w.type.shape[0])))
        if self.sumsq:
            outputs.append(pt.scalar(dtype=w.dtype))
        return Apply(self, inputs, outputs)

    def perform(self, node, inputs, outputs):
        w, x, delta, alpha, beta, *f = inputs
        results = []
        if self.grad:
            g = np.dot(delta, w.T)
            if self.masked:
                with np.errstate(invalid="ignore", over="ignore"):
                    g = np.where(f[0] != 0, f[0] * g, 0)
            results.append(g.astype(w.dtype))
        if self.sumsq:
            results.append(np.asarray(np.vdot(w, w), dtype=w.dtype))
        new = (beta * w + alpha * np.dot(x, delta)).astype(w.dtype)
        if self.inplace:
            w[...] = new
            new = w
        for storage, value in zip(outputs, [new] + results):
            storage[0] = value

    def infer_shape(self, *args):  # PyTensor 3.0: (fgraph, node, shapes); 3.3: (node, shapes)
        w_shape, _, delta_shape = args[-1][:3]
        out = [w_shape]
        if self.grad:
            out.append((delta_shape[0], w_shape[0]))
        if self.sumsq:
            out.append(())
        return out


class DenseMomentum(Op):
    """(w, v, x, delta, alpha, mu[, gamma][, f]) -> the new w and v of a
    step with momentum (network.momentum_updates: alpha = -eta),

        v <- mu * v + alpha * (x @ delta) [+ gamma * w],   w <- w + v,

    the ``gamma * w`` term (the L2 term's: gamma = -eta * lmbda / n) with
    ``decay``; then, as DenseUpdate's, the input gradient of the old w
    (``grad``, ``masked``: times f) and ``sum(w**2)`` of the old w
    (``sumsq``).  x is (K, B), delta (B, N), w and v (K, N); with
    ``inplace`` the new w and v are written over w and v."""

    __props__ = ("inplace", "grad", "sumsq", "masked", "decay")

    def __init__(self, inplace=False, grad=True, sumsq=False, masked=False, decay=False):
        self.inplace, self.grad, self.sumsq = bool(inplace), bool(grad), bool(sumsq)
        self.masked = bool(masked) and self.grad
        self.decay = bool(decay)
        if self.inplace:
            self.destroy_map = {0: [0], 1: [1]}

    def make_node(self, w, v, x, delta, alpha, mu, *rest):
        inputs = list(map(pt.as_tensor_variable, (w, v, x, delta, alpha, mu, *rest)))
        if len(rest) != self.decay + self.masked:
            raise TypeError(f"DenseMomentum: {len(rest)} inputs after mu, expected "
                            f"{self.decay + self.masked} (gamma with decay, f with masked)")
        w, v, delta = inputs[0], inputs[1], inputs[3]
        if v.type.ndim != 2 or v.type.dtype != w.type.dtype:
            raise TypeError(f"DenseMomentum: v is {v.type}, w {w.type}")
        outputs = [w.type(), w.type()]  # (v has w's shape: its static one)
        if self.grad:
            outputs.append(pt.tensor(dtype=w.dtype,
                                     shape=(delta.type.shape[0], w.type.shape[0])))
        if self.sumsq:
            outputs.append(pt.scalar(dtype=w.dtype))
        return Apply(self, inputs, outputs)

    def perform(self, node, inputs, outputs):
        w, v, x, delta, alpha, mu, *rest = inputs
        if v.shape != w.shape:
            raise ValueError(f"DenseMomentum: v has shape {v.shape}, w {w.shape}")
        gamma = rest.pop(0) if self.decay else None
        results = []
        if self.grad:
            g = np.dot(delta, w.T)
            if self.masked:
                with np.errstate(invalid="ignore", over="ignore"):
                    g = np.where(rest[0] != 0, rest[0] * g, 0)
            results.append(g.astype(w.dtype))
        if self.sumsq:
            results.append(np.asarray(np.vdot(w, w), dtype=w.dtype))
        new_v = mu * v + alpha * np.dot(x, delta)
        new_v = (new_v if gamma is None else new_v + gamma * w).astype(w.dtype)
        new_w = (w + new_v).astype(w.dtype)
        if self.inplace:
            w[...], v[...] = new_w, new_v
            new_w, new_v = w, v
        for storage, value in zip(outputs, [new_w, new_v] + results):
            storage[0] = value

    def infer_shape(self, *args):  # PyTensor 3.0: (fgraph, node, shapes); 3.3: (node, shapes)
        w_shape, _, _, delta_shape = args[-1][:4]
        out = [w_shape, w_shape]
        if self.grad:
            out.append((delta_shape[0], w_shape[0]))
        if self.sumsq:
            out.append(())
        return out


class DenseForward(Dot22):
    """PyTensor's ``Dot22`` (x @ w, same values), whose Numba implementation
    is ``_dense_forward_kernel``: for a few rows of x and w's rows whole."""


#### Rewrites
def _fits(B, K, N, dtype):
    """Whether a (B, K) by (K, N) product has the static sizes and dtype the
    kernels are for."""
    if dtype not in _FLOATS or None in (B, K, N) or B > MAX_BATCH:
        return False
    return _everywhere or (N >= MIN_COLUMNS and K * N >= MIN_WEIGHTS)


_everywhere = []


@contextlib.contextmanager
def everywhere():
    """Within this block, the rewrites take matrices of any size (of a
    mini-batch up to MAX_BATCH): so that the accelerator's self-check, a
    tiny network, runs the kernels."""
    _everywhere.append(True)
    try:
        yield
    finally:
        _everywhere.pop()


def _is_transpose(var):
    return (var.owner is not None and isinstance(var.owner.op, DimShuffle)
            and var.owner.op.new_order == (1, 0))


def _clients(fgraph, w, delta):
    """The graph's dot22(delta, w.T) and sum_of_squares(w) nodes (None when
    it has none)."""
    from .rewrites import SumOfSquares  # (rewrites.py imports this module)
    dot = squares = None
    for client, _ in fgraph.clients[w]:
        if isinstance(client.op, SumOfSquares):
            squares = client
        elif client.outputs and _is_transpose(client.outputs[0]):
            for user, index in fgraph.clients[client.outputs[0]]:
                if type(user.op) is Dot22 and index == 1 and user.inputs[0] is delta:
                    dot = user
    return dot, squares


def _only_use_is_product(fgraph, var):
    """(the node, the other factors) when var's one use is an element-wise
    product with factors of var's static shape and dtype, var among them
    once; else None."""
    clients = fgraph.clients[var]
    if len(clients) != 1:
        return None
    node = clients[0][0]
    if not (isinstance(node.op, Elemwise) and isinstance(node.op.scalar_op, ps.Mul)):
        return None
    others = [v for v in node.inputs if v is not var]
    if len(others) != len(node.inputs) - 1 or not others:
        return None
    if not all(v.type.shape == var.type.shape and v.type.dtype == var.type.dtype
               for v in others + node.outputs):
        return None
    return node, others


@node_rewriter([Gemm])
def local_dense_update(fgraph, node):
    """gemm(w, alpha, x, delta, beta), with dot22(delta, w.T) and
    sum_of_squares(w) where the graph has them  ->  DenseUpdate(w, x,
    delta, alpha, beta), one pass over w.  For a not in-place gemm (as
    rewrites.py's ``local_sgd_step_to_gemm`` makes them) of a w with static
    shape (K, N) that ``_fits``, x (K, B <= MAX_BATCH).  Where the graph's
    one use of dot22(delta, w.T) is a product with other factors f (the
    gradient of a dropout layer's mask and its input's ReLU), DenseUpdate
    computes that product, masked by f."""
    if node.op != gemm_no_inplace:
        return None
    w, alpha, x, delta, beta = node.inputs
    if not (w.type.ndim == x.type.ndim == delta.type.ndim == 2
            and w.type.dtype == x.type.dtype == delta.type.dtype):
        return None
    (K, N), B = w.type.shape, x.type.shape[1]
    if not _fits(B, K, N, w.type.dtype):
        return None
    grad, squares, factors = _absorbed(fgraph, w, delta, [x, alpha, beta], node.outputs)
    op = DenseUpdate(grad=grad is not None, sumsq=squares is not None, masked=bool(factors))
    outputs = op(w, x, delta, alpha, beta, *factors, return_list=True)
    return _replaced(node.outputs, grad, squares, outputs)


def _absorbed(fgraph, w, delta, inputs, outputs):
    """What a node updating w from delta (and ``inputs``; its ``outputs``)
    computes besides: (the input gradient it replaces, None if none;
    sum_of_squares(w), or None; [f] if the gradient is masked by f, else
    [])."""
    dot, squares = _clients(fgraph, w, delta)
    # the new node computes them from its own inputs, which must not
    # depend on them
    before = set(ancestors([w, delta, *inputs]))
    if dot is not None and dot.outputs[0] in before:
        dot = None
    if squares is not None and squares.outputs[0] in before:
        squares = None
    grad = dot.outputs[0] if dot is not None else None
    product = _only_use_is_product(fgraph, grad) if grad is not None else None
    factors = []
    if product is not None:
        f = product[1][0] if len(product[1]) == 1 else pt.mul(*product[1])
        if not set(ancestors([f])) & {grad, product[0].outputs[0], *outputs}:
            grad, factors = product[0].outputs[0], [f]
    return grad, (squares.outputs[0] if squares is not None else None), factors


def _replaced(old, grad, squares, new):
    """The replacements of a rewrite by DenseUpdate or DenseMomentum: its
    ``old`` outputs, then the input gradient and sum of squares it took in
    (where not None), by the ``new`` node's outputs in that order."""
    new = list(new)
    replaced = {var: new.pop(0) for var in old}
    for var in (grad, squares):
        if var is not None:
            replaced[var] = new.pop(0)
    return replaced


@node_rewriter([DenseUpdate])
def local_inplace_dense_update(fgraph, node):
    """DenseUpdate  ->  DenseUpdate(inplace=True), where PyTensor's destroy
    handler allows it"""
    if node.op.inplace:
        return None
    op = DenseUpdate(inplace=True, grad=node.op.grad, sumsq=node.op.sumsq,
                     masked=node.op.masked)
    return op(*node.inputs, return_list=True)


def _velocity(var, w):
    """(v, x, delta, alpha, mu, gammas) where var is ``mu * v + alpha * (x @
    delta) + sum(gammas) * w`` in one of the forms PyTensor leaves
    momentum_updates' new v in, else None:

    * ``mu * v - eta * (dot(x, delta) [+ c * w ...])`` (eta a variable, as
      SGD's is);
    * ``gemm(v, alpha, x, delta, mu) [+ gamma * w ...]`` (eta a constant:
      PyTensor's own BLAS rewrite makes the gemm), either maybe in a
      SpecifyShape."""
    from .rewrites import _is, _is_matrix_dot, _split_scale  # (rewrites.py imports this module)
    while var.owner is not None and isinstance(var.owner.op, SpecifyShape):
        var = var.owner.inputs[0]
    if var.owner is None:
        return None
    if isinstance(var.owner.op, Gemm):
        z, alpha, x, delta, beta = var.owner.inputs
        scale, v = _split_scale(z)
        return v, x, delta, alpha, beta if scale is None else beta * scale, []
    if _is(var, ps.Add):  # gemm(...) + gamma * w ...
        decay = [_split_scale(t) for t in var.owner.inputs]
        others = [t for t, (_, rest) in zip(var.owner.inputs, decay) if rest is not w]
        found = _velocity(others[0], w) if len(others) == 1 else None
        if found is None or found[-1]:
            return None
        gammas = [pt.constant(1.0, dtype=w.dtype) if c is None else c
                  for c, rest in decay if rest is w]
        return (*found[:-1], gammas)
    if not _is(var, ps.Sub):
        return None
    mu, v = _split_scale(var.owner.inputs[0])
    eta, term = _split_scale(var.owner.inputs[1])
    if mu is None or eta is None:
        return None
    terms = term.owner.inputs if _is(term, ps.Add) else [term]
    dots = [t for t in terms if _is_matrix_dot(t)]
    if len(dots) != 1:
        return None
    gammas = []  # -eta * c for every c * w term (the L2 term's gradient)
    for t in terms:
        if t is not dots[0]:
            c, rest = _split_scale(t)
            if rest is not w:
                return None
            gammas.append(-eta if c is None else -eta * c)
    return (v, *dots[0].owner.inputs, -eta, mu, gammas)


@node_rewriter([Elemwise])
def local_dense_momentum(fgraph, node):
    """w + v_new, v_new = mu * v + alpha * (x @ delta) [+ gamma * w]
    (network.py's momentum_updates; ``_velocity`` has the forms)  ->
    DenseMomentum(w, v, x, delta, alpha, mu[, gamma]), the new w and the
    new v, for parameters w and v (variables of the graph's own, not
    computed ones) of static shape (K, N) that ``_fits``, x (K, B <=
    MAX_BATCH).  It runs before
    rewrites.py's, which would make v_new ``gemm(mu * v, ...)`` where the
    step has no L2 term; ``local_dense_momentum_clients`` then takes in the
    input gradient and the sum of squares, as DenseUpdate does."""
    if not (isinstance(node.op.scalar_op, ps.Add) and len(node.inputs) == 2):
        return None
    for w, v_new in (node.inputs, node.inputs[::-1]):
        found = _velocity(v_new, w) if w.owner is None else None
        if found is not None:
            break
    else:
        return None
    v, x, delta, alpha, mu, gammas = found
    if w.type.ndim != 2 or node.outputs[0].type != w.type or v is w or v.owner is not None:
        return None
    (K, N), B = w.type.shape, x.type.shape[1]
    if (any(t.type.ndim != 2 or t.type.dtype != w.type.dtype for t in (v, x, delta, v_new))
            or x.type.shape[0] not in (K, None) or not _fits(B, K, N, w.type.dtype)
            or any(s not in (k, None) for s, k in zip(v.type.shape, (K, N)))
            or any(s.type.ndim != 0 for s in (alpha, mu, *gammas))):
        return None
    if v.type.shape != (K, N):  # (shared variables have no static shape)
        v = pt.specify_shape(v, (K, N))
    gamma = [pt.cast(pt.add(*gammas) if len(gammas) > 1 else gammas[0], w.dtype)] \
        if gammas else []
    op = DenseMomentum(grad=False, decay=bool(gammas))
    new_w, new_v = op(w, v, x, delta, pt.cast(alpha, w.dtype), pt.cast(mu, w.dtype), *gamma)
    replaced = {node.outputs[0]: new_w, v_new: new_v}
    # the new v where the graph has it without the SpecifyShape too
    while v_new.owner is not None and isinstance(v_new.owner.op, SpecifyShape):
        v_new = v_new.owner.inputs[0]
        replaced[v_new] = new_v
    return replaced


@node_rewriter([DenseMomentum])
def local_dense_momentum_clients(fgraph, node):
    """DenseMomentum, with dot22(delta, w.T) and sum_of_squares(w) where the
    graph has them  ->  DenseMomentum that computes them too (in its one
    pass over w), the input gradient masked as in ``local_dense_update``."""
    op = node.op
    if op.grad or op.sumsq:
        return None
    w, v, x, delta, *others = node.inputs
    grad, squares, factors = _absorbed(fgraph, w, delta, [v, x, *others], node.outputs)
    if grad is None and squares is None:
        return None
    new = DenseMomentum(grad=grad is not None, sumsq=squares is not None,
                        masked=bool(factors), decay=op.decay)
    outputs = new(*node.inputs, *factors, return_list=True)
    return _replaced(node.outputs, grad, squares, outputs)


@node_rewriter([DenseMomentum])
def local_inplace_dense_momentum(fgraph, node):
    """DenseMomentum  ->  DenseMomentum(inplace=True), w and v both, where
    PyTensor's destroy handler allows it (else both are copied)"""
    op = node.op
    if op.inplace:
        return None
    new = DenseMomentum(inplace=True, grad=op.grad, sumsq=op.sumsq, masked=op.masked,
                        decay=op.decay)
    return new(*node.inputs, return_list=True)


@node_rewriter([Dot22])
def local_dense_forward(fgraph, node):
    """dot22(x, w) with x (B <= MAX_BATCH, K) and w (K, N) that ``_fits``,
    static shapes, w not a transposed view  ->  DenseForward(x, w)"""
    if type(node.op) is not Dot22:
        return None
    x, w = node.inputs
    (B, K), N = x.type.shape, w.type.shape[1]
    if _is_transpose(w) or not _fits(B, K, N, node.outputs[0].type.dtype):
        return None
    return [DenseForward()(x, w)]


#### Dropout masks from random bits
class DropoutBits(Op):
    """rng -> (rng, keep): layers.dropout_layer's mask of shape ``shape``,
    drawn as it defines it (``DRAW_BITS`` bits a draw of
    ``rng.integers(0, 2**DRAW_BITS)``, each unit the next m bits, kept where
    they are below k; the last draw's unused bits are dropped), in one loop,
    from the generator rng (in place with ``inplace``)."""

    __props__ = ("k", "m", "shape", "inplace")

    def __init__(self, k, m, shape, inplace=False):
        self.k, self.m, self.shape = int(k), int(m), tuple(int(n) for n in shape)
        self.inplace = bool(inplace)
        if self.inplace:
            self.destroy_map = {0: [0]}

    def make_node(self, rng):
        return Apply(self, [rng], [rng.type(), pt.tensor(dtype="bool", shape=self.shape)])

    def perform(self, node, inputs, outputs):
        rng = inputs[0] if self.inplace else copy.deepcopy(inputs[0])
        n, per = int(np.prod(self.shape)), DRAW_BITS // self.m
        draws = rng.integers(0, 2**DRAW_BITS, (n + per - 1) // per)
        chunks = (draws[:, None] >> (self.m * np.arange(per))) & ((1 << self.m) - 1)
        outputs[0][0] = rng
        outputs[1][0] = (chunks.ravel()[:n] < self.k).reshape(self.shape)

    def infer_shape(self, *args):  # PyTensor 3.0: (fgraph, node, shapes); 3.3: (node, shapes)
        return [None, self.shape]


DRAW_BITS = 30  # layers.DRAW_BITS (this package reads the front, not the reverse)


def _constant(var):
    """The value of a constant, seen through DimShuffles (numpy), or None."""
    while var.owner is not None and isinstance(var.owner.op, DimShuffle):
        var = var.owner.inputs[0]
    return np.asarray(var.data) if isinstance(var, Constant) else None


def _only_client(fgraph, var, op_class):
    """var's one client node, if it is an ``op_class`` node (Elemwise:
    of that scalar op), else None."""
    clients = fgraph.clients[var]
    if len(clients) != 1:
        return None
    node = clients[0][0]
    op = node.op.scalar_op if isinstance(node.op, Elemwise) else node.op
    return node if isinstance(op, op_class) else None


@node_rewriter([IntegersRV])
def local_dropout_bits(fgraph, node):
    """layers.dropout_layer's mask, as it builds it (before PyTensor's
    canonicalisation, which rewrites it differently for different sizes),
    its sizes constants:

        draws = integers(rng, size=(W,), 0, 2**DRAW_BITS), int32
        shifts = 2 ** (m * arange(per)), per = DRAW_BITS // m
        lt(reshape(flatten((draws[:, None] // shifts) % 2**m)[:n], shape), k)

    ->  DropoutBits(k, m, shape)(rng): the same numbers, from the same
    draws.  Each step must be the only use of the one before (else the
    draws would be made twice); any other form is left as it is (the same
    numbers, slower)."""
    rng, size, low, high = node.inputs
    values = [_constant(v) for v in (size, low, high)]
    if node.outputs[1].type.dtype != "int32" or any(v is None for v in values):
        return None
    size, low, high = values
    if size.shape != (1,) or np.any(low != 0) or np.any(high != 2**DRAW_BITS):
        return None
    steps = {}
    var = node.outputs[1]
    for name, op_class in (("column", DimShuffle), ("divide", ps.IntDiv), ("modulo", ps.Mod),
                           ("flat", Reshape), ("cut", Subtensor), ("reshape", Reshape),
                           ("less", ps.LT)):
        step = _only_client(fgraph, var, op_class)
        if step is None or step.inputs[0] is not var:
            return None
        steps[name], var = step, step.outputs[0]
    shifts, base, k = (_constant(steps[name].inputs[1]) for name in ("divide", "modulo", "less"))
    if shifts is None or base is None or k is None or base.size != 1 or k.size != 1:
        return None
    m = int(base.ravel()[0]).bit_length() - 1
    per = DRAW_BITS // max(m, 1)
    shape = steps["reshape"].outputs[0].type.shape
    cut = steps["cut"].op.idx_list
    if (steps["column"].op.new_order != (0, "x") or not 1 <= m <= DRAW_BITS
            or base.ravel()[0] != 2**m
            or shifts.ravel().tolist() != [2 ** (m * t) for t in range(per)]
            or steps["flat"].outputs[0].type.ndim != 1 or None in shape
            or len(cut) != 1 or not isinstance(cut[0], slice) or cut[0].start is not None
            or cut[0].step is not None or _constant(steps["cut"].inputs[1]) != np.prod(shape)
            or int(size[0]) != -(-int(np.prod(shape)) // per)):
        return None
    next_rng, keep = DropoutBits(int(k.ravel()[0]), m, shape)(rng, return_list=True)
    return {node.outputs[0]: next_rng, var: keep}


@node_rewriter([DropoutBits])
def local_inplace_dropout_bits(fgraph, node):
    """DropoutBits  ->  DropoutBits(inplace=True), where PyTensor's destroy
    handler allows it (as its random_make_inplace does for random variables)"""
    if node.op.inplace:
        return None
    op = node.op
    return DropoutBits(op.k, op.m, op.shape, inplace=True)(*node.inputs, return_list=True)


# After rewrites.py's rewrites (48.5), which make the gemm and the Dot22
# nodes, and before fusion (49); the update first, so that the forward
# rewrite never sees the input gradient's product.
FUSE = dfs_rewriter(local_dense_update, local_dense_momentum_clients,
                    name="network3_dense_update")
FORWARD = dfs_rewriter(local_dense_forward, name="network3_dense_forward")
# Before rewrites.py's (48.5), which turn the momentum step's products into
# Dot22 and gemm nodes
MOMENTUM = dfs_rewriter(local_dense_momentum, name="network3_dense_momentum")
# After PyTensor's destroy handler is added (49.5), as its InplaceBlasOpt (50.2)
INPLACE = dfs_rewriter(local_inplace_dense_update, local_inplace_dense_momentum,
                       name="network3_dense_inplace")
# Right after PyTensor's first merge (0), before its canonicalisation (1)
# rewrites the mask's arithmetic (differently for different sizes); in place
# after its destroy handler is added (49.5), where it makes its random
# variables draw in place (50.9)
MASKS = dfs_rewriter(local_dropout_bits, name="network3_dropout_bits")
INPLACE_MASKS = dfs_rewriter(local_inplace_dropout_bits, name="network3_dropout_bits_inplace")
POSITIONS = ((MOMENTUM, 48.4), (FUSE, 48.6), (FORWARD, 48.7), (MASKS, 0.01), (INPLACE, 50.3),
             (INPLACE_MASKS, 50.9))


#### The kernels, as LLVM code
# Vectors of 64 bytes: an AVX-512 register.  Function code that uses them
# gets 512-bit registers from LLVM's X86 backend whatever width its loop
# vectoriser prefers (Numba sets no "min-legal-vector-width").
VECTOR_BYTES = 64


class _Code:
    """LLVM code of one of the kernels: vectors of ``width`` numbers of
    type ``t`` (width 1: plain numbers), loads and stores at ``base[offset]``."""

    def __init__(self, builder, t, itemsize):
        self.b, self.t, self.itemsize = builder, t, itemsize
        self.intp = ir.IntType(64)

    def int(self, value):
        return ir.Constant(self.intp, value)

    def vtype(self, width):
        return self.t if width == 1 else ir.VectorType(self.t, width)

    def zero(self, width):
        return ir.Constant(self.vtype(width), None)

    def splat(self, value, width):
        if width == 1:
            return value
        vt = self.vtype(width)
        one = self.b.insert_element(ir.Constant(vt, ir.Undefined), value,
                                    ir.Constant(ir.IntType(32), 0))
        return self.b.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                     ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                 [0] * width))

    def pointer(self, base, offset, width):
        ptr = self.b.gep(base, [offset])
        return ptr if width == 1 else self.b.bitcast(ptr, self.vtype(width).as_pointer())

    def load(self, base, offset, width):
        return self.b.load(self.pointer(base, offset, width), align=self.itemsize,
                           typ=self.vtype(width))

    def index(self, base, offset):
        """The int64 at base[offset]."""
        return self.b.load(self.b.gep(base, [offset]), align=8, typ=self.intp)

    def store(self, value, base, offset, width):
        self.b.store(value, self.pointer(base, offset, width), align=self.itemsize)

    def fma(self, a, b, c):
        """a * b + c, rounded once (LLVM's fma, of numbers or vectors)."""
        ty = a.type
        bits = "f32" if self.itemsize == 4 else "f64"
        name = (f"llvm.fma.v{ty.count}{bits}" if isinstance(ty, ir.VectorType)
                else f"llvm.fma.{bits}")
        fn = cgutils.get_or_insert_function(self.b.module, ir.FunctionType(ty, [ty] * 3), name)
        return self.b.call(fn, [a, b, c])

    def hsum(self, v, width):
        """The sum of a vector's numbers, halves added pairwise."""
        while width > 1:
            half = width // 2
            vt = self.vtype(width)
            lo, hi = (self.b.shuffle_vector(
                v, ir.Constant(vt, ir.Undefined),
                ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(k, k + half))))
                for k in (0, half))
            v, width = self.b.fadd(lo, hi), half
        return self.b.extract_element(v, ir.Constant(ir.IntType(32), 0)) \
            if isinstance(v.type, ir.VectorType) else v

    def var(self, width):
        """A local variable (promoted to a register by LLVM)."""
        return cgutils.alloca_once(self.b, self.vtype(width))


def _array(context, builder, ty, value):
    """(data pointer, rows, columns) of a C-contiguous 2-d array, or (data
    pointer, length) of a 1-d one."""
    ary = context.make_array(ty)(context, builder, value)
    return (ary.data, *cgutils.unpack_tuple(builder, ary.shape, ty.ndim))


def _widths(n_columns, width):
    """The vector widths that a row of ``n_columns`` numbers is read in:
    ``width`` for as many whole vectors as fit, then the rest in vectors of
    powers of 2 (8, 4, 2, 1 numbers)."""
    rest = [w for w in (8, 4, 2, 1) if w < width and n_columns % width & w]
    return ([width] if n_columns >= width else []) + rest


def _column_loops(code, n_columns, width, body):
    """body(j, w) for the ``n_columns`` columns (a constant) of a row: a loop
    over vectors of ``width`` numbers at j, then the rest, one vector of
    each smaller width in ``_widths``."""
    b = code.b
    n_vectors = n_columns // width
    if n_vectors:
        with cgutils.for_range(b, code.int(n_vectors)) as loop:
            body(b.mul(loop.index, code.int(width)), width)
    j = n_vectors * width
    for w in _widths(n_columns, width):
        if w < width:
            body(code.int(j), w)
            j += w


def _switch(code, count, cases, body):
    """body(c) for the value c (0 .. cases) of the integer ``count``: one
    copy of the code per value, so that each is unrolled."""
    b = code.b
    done = b.append_basic_block("switch.done")
    default = b.append_basic_block("switch.default")
    switch = b.switch(count, default)
    for c in range(cases + 1):
        block = b.append_basic_block(f"switch.{c}")
        switch.add_case(ir.Constant(count.type, c), block)
        b.position_at_end(block)
        body(c)
        b.branch(done)
    b.position_at_end(default)  # (counts are at most ``cases``)
    b.unreachable()
    b.position_at_end(done)


_KERNELS = {}


def _dense_update_kernel(B, grad, sumsq, masked, n_cols, momentum=False, decay=False):
    """An intrinsic ``kernel(w, v, count, rows, values, factors, delta, g,
    ss, alpha, beta, mu)`` for w (K, N), N = ``n_cols`` (a constant: the rows
    of delta at fixed offsets), delta (B, N), and x (K, B) given by its
    nonzero numbers (``_nonzeros``: row i's ``count[i]`` of them first in
    ``values[i]``, their columns in ``rows[i]``).  In place,

        w <- beta * w + alpha * (x @ delta),

    or with ``momentum`` (v (K, N), read and written in the same pass)

        v <- mu * v + alpha * (x @ delta) [+ beta * w, with decay],  w <- w + v,

    each row's product a sum over the row's listed numbers (a zero adds
    nothing), one pass over w; with ``sumsq``, ss[0] (float64) <- sum(w**2)
    of the old w; with ``grad``, the input gradient from the old w:

    * not ``masked``: g (B, K) <- delta @ w.T;
    * ``masked``: g[b, i] <- f[b, i] * (delta @ w.T)[b, i] where f[b, i] is
      nonzero, g (zeros) left alone elsewhere; the lists then hold the
      numbers of x where x or f is nonzero, and ``factors[i, m]`` the f
      of ``rows[i, m]``."""
    key = ("update", B, grad, sumsq, masked, n_cols, momentum, decay)
    if key in _KERNELS:
        return _KERNELS[key]

    @intrinsic
    def kernel(typingctx, w, v, count, rows, values, factors, delta, g, ss, alpha, beta, mu):
        sig = types.void(w, v, count, rows, values, factors, delta, g, ss, alpha, beta, mu)

        def codegen(context, builder, signature, args):
            tys = signature.args
            dtype = tys[0].dtype
            code = _Code(builder, context.get_value_type(dtype), dtype.bitwidth // 8)
            width = VECTOR_BYTES // code.itemsize
            w_ptr, K, _ = _array(context, builder, tys[0], args[0])
            N = code.int(n_cols)
            v_ptr, count_ptr, rows_ptr, values_ptr, factors_ptr, d_ptr, g_ptr, ss_ptr = (
                _array(context, builder, tys[k], args[k])[0] for k in range(1, 9))
            a, be, m = (context.cast(builder, args[k], tys[k], dtype) for k in (9, 10, 11))
            total = cgutils.alloca_once_value(builder, ir.Constant(ir.DoubleType(), 0.0))
            # accumulators, per width (vectors, then one number at a time):
            # the input gradient's (per row of delta, or per listed number
            # when ``masked``), the sum of squares
            widths = _widths(n_cols, width)
            acc = {k: [code.var(k) for _ in range(B)] for k in widths}
            sq = {k: code.var(k) for k in widths}
            splat_a = {k: code.splat(a, k) for k in widths}
            splat_b = {k: code.splat(be, k) for k in widths}
            splat_m = {k: code.splat(m, k) for k in widths}

            def accumulate(k, p, d, old):
                builder.store(code.fma(d, old, builder.load(acc[k][p])), acc[k][p])

            def momentum_step(k, where, old, u):
                # v = mu * v + alpha * u [+ gamma * old], then w = old + v
                # (u is None where the row of x is all zeros)
                velocity = builder.fmul(splat_m[k], code.load(v_ptr, where, k))
                if u is not None:
                    velocity = code.fma(splat_a[k], u, velocity)
                if decay:
                    velocity = code.fma(splat_b[k], old, velocity)
                code.store(velocity, v_ptr, where, k)
                code.store(builder.fadd(old, velocity), w_ptr, where, k)

            def sum_of(variables):
                """The sum of the numbers of a variable per width."""
                total = None
                for k in widths:
                    part = code.hsum(builder.load(variables[k]), k)
                    total = part if total is None else builder.fadd(total, part)
                return total

            def row(i):
                at = builder.mul(i, N)
                first = builder.mul(i, code.int(B))
                for k in widths:
                    for v in acc[k] if grad else []:
                        builder.store(code.zero(k), v)
                    if sumsq:
                        builder.store(code.zero(k), sq[k])

                def listed(c):
                    # the row's c listed numbers of x, and the rows of delta
                    # they multiply
                    s = [code.load(values_ptr, builder.add(first, code.int(m)), 1)
                         for m in range(c)]
                    b_of = [code.index(rows_ptr, builder.add(first, code.int(m)))
                            for m in range(c)]
                    d_at = [builder.mul(b, N) for b in b_of]
                    splats = {k: [code.splat(v, k) for v in s] for k in widths}

                    def columns(j, k):
                        old = code.load(w_ptr, builder.add(at, j), k)
                        if grad and not masked:
                            for b in range(B):
                                accumulate(k, b, code.load(
                                    d_ptr, builder.add(code.int(b * n_cols), j), k), old)
                        if sumsq:
                            builder.store(code.fma(old, old, builder.load(sq[k])), sq[k])
                        u = None
                        for m in range(c):
                            d = code.load(d_ptr, builder.add(d_at[m], j), k)
                            if grad and masked:
                                accumulate(k, m, d, old)
                            u = (builder.fmul(splats[k][m], d) if u is None
                                 else code.fma(splats[k][m], d, u))
                        where = builder.add(at, j)
                        if momentum:
                            momentum_step(k, where, old, u)
                        else:
                            new = (builder.fmul(splat_b[k], old) if u is None
                                   else code.fma(splat_b[k], old, builder.fmul(splat_a[k], u)))
                            code.store(new, w_ptr, where, k)

                    _column_loops(code, n_cols, width, columns)
                    for m in range(c if grad and masked else 0):
                        f = code.load(factors_ptr, builder.add(first, code.int(m)), 1)
                        code.store(builder.fmul(f, sum_of({k: acc[k][m] for k in widths})), g_ptr,
                                   builder.add(builder.mul(b_of[m], K), i), 1)

                _switch(code, code.index(count_ptr, i), B, listed)
                for b in range(B if grad and not masked else 0):
                    code.store(sum_of({k: acc[k][b] for k in widths}), g_ptr,
                               builder.add(builder.mul(code.int(b), K), i), 1)
                if sumsq:
                    value = sum_of(sq)
                    if value.type != ir.DoubleType():
                        value = builder.fpext(value, ir.DoubleType())
                    builder.store(builder.fadd(builder.load(total), value), total)

            with cgutils.for_range(builder, K) as loop:
                row(loop.index)
            if sumsq:
                builder.store(builder.load(total), ss_ptr)
            return context.get_dummy_value()

        return sig, codegen

    _KERNELS[key] = kernel
    return kernel


def _dense_forward_kernel(B, rows_at_once, dense_above, n_cols):
    """An intrinsic ``kernel(x, count, rows, values, w, y)``: y (B, N) += x
    (B, K) @ w (K, N), all C-contiguous, w read once, x also given by its
    nonzero numbers (count, rows, values: those of x.T, as
    ``_dense_update_kernel``'s).  Blocks of ``rows_at_once`` rows of w with
    more than ``dense_above`` nonzero numbers of x are multiplied by all of
    x's (fewer loads and stores of y), the others row by row, by the
    nonzero numbers only."""
    key = ("forward", B, rows_at_once, dense_above, n_cols)
    if key in _KERNELS:
        return _KERNELS[key]
    R = rows_at_once

    @intrinsic
    def kernel(typingctx, x, count, rows, values, w, y):
        sig = types.void(x, count, rows, values, w, y)

        def codegen(context, builder, signature, args):
            tys = signature.args
            dtype = tys[4].dtype
            code = _Code(builder, context.get_value_type(dtype), dtype.bitwidth // 8)
            width = VECTOR_BYTES // code.itemsize
            x_ptr, count_ptr, rows_ptr, values_ptr = (
                _array(context, builder, tys[k], args[k])[0] for k in range(4))
            w_ptr, K, _ = _array(context, builder, tys[4], args[4])
            N = code.int(n_cols)
            y_ptr = _array(context, builder, tys[5], args[5])[0]

            def dense_block(i0):
                at = [builder.mul(builder.add(i0, code.int(r)), N) for r in range(R)]
                xv = [[code.load(x_ptr, builder.add(builder.mul(code.int(b), K),
                                                    builder.add(i0, code.int(r))), 1)
                       for r in range(R)] for b in range(B)]
                splats = {k: [[code.splat(v, k) for v in xb] for xb in xv]
                          for k in _widths(n_cols, width)}

                def columns(j, k):
                    wv = [code.load(w_ptr, builder.add(at[r], j), k) for r in range(R)]
                    for b in range(B):
                        y_at = builder.add(builder.mul(code.int(b), N), j)
                        total = code.load(y_ptr, y_at, k)
                        for r in range(R):
                            total = code.fma(splats[k][b][r], wv[r], total)
                        code.store(total, y_ptr, y_at, k)

                _column_loops(code, n_cols, width, columns)

            def sparse_row(i):
                at = builder.mul(i, N)

                def nonzeros(c):
                    first = builder.mul(i, code.int(B))
                    s = [code.load(values_ptr, builder.add(first, code.int(m)), 1)
                         for m in range(c)]
                    y_at = [builder.mul(code.index(rows_ptr, builder.add(first, code.int(m))),
                                        N) for m in range(c)]
                    splats = {k: [code.splat(v, k) for v in s] for k in _widths(n_cols, width)}

                    def columns(j, k):
                        wv = code.load(w_ptr, builder.add(at, j), k)
                        for m in range(c):
                            where = builder.add(y_at[m], j)
                            code.store(code.fma(splats[k][m], wv, code.load(y_ptr, where, k)),
                                       y_ptr, where, k)

                    if c:
                        _column_loops(code, n_cols, width, columns)

                _switch(code, code.index(count_ptr, i), B, nonzeros)

            n_blocks = builder.sdiv(K, code.int(R))
            with cgutils.for_range(builder, n_blocks) as loop:
                i0 = builder.mul(loop.index, code.int(R))
                n = code.index(count_ptr, i0)
                for r in range(1, R):
                    n = builder.add(n, code.index(count_ptr, builder.add(i0, code.int(r))))
                with builder.if_else(builder.icmp_signed(">", n, code.int(dense_above))) \
                        as (dense, sparse):
                    with dense:
                        dense_block(i0)
                    with sparse:
                        with cgutils.for_range(builder, code.int(R)) as rr:
                            sparse_row(builder.add(i0, rr.index))
            with cgutils.for_range_slice(builder, builder.mul(n_blocks, code.int(R)), K,
                                         code.int(1)) as (i, _):
                sparse_row(i)
            return context.get_dummy_value()

        return sig, codegen

    _KERNELS[key] = kernel
    return kernel


@kernels.inline
def _nonzeros(x, B, K):
    """x (K, B) by its nonzero numbers (NaN included): per row i, their
    count, and their columns and values, first in the row's slots (zeros
    after them)."""
    count = np.empty(K, np.int64)
    rows = np.zeros((K, B), np.int64)
    values = np.zeros((K, B), x.dtype)
    for i in range(K):
        c = 0
        for b in range(B):  # no branch: written always, kept if nonzero
            v = x[i, b]
            rows[i, c] = b
            values[i, c] = v
            c += v != 0
        count[i] = c
    return count, rows, values


@kernels.inline
def _nonzeros_or(x, f, B, K):
    """As ``_nonzeros``, the numbers of x (K, B) where x or f (B, K) is
    nonzero, and f's numbers there."""
    count = np.empty(K, np.int64)
    rows = np.zeros((K, B), np.int64)
    values = np.zeros((K, B), x.dtype)
    factors = np.zeros((K, B), x.dtype)
    for i in range(K):
        c = 0
        for b in range(B):
            v, fv = x[i, b], f[b, i]
            rows[i, c] = b
            values[i, c] = v
            factors[i, c] = fv
            c += (v != 0) | (fv != 0)
        count[i] = c
    return count, rows, values, factors


#### Numba implementations of the Ops
def _cache_key(name):
    return hashlib.sha256(f"network3 dense {name} {_SOURCE}".encode()).hexdigest()


def _update_function(kernel, B, inplace, masked, momentum):
    """The body of both Ops' functions: w (and v, with momentum) in place or
    copied, x's nonzeros gathered, the kernel run, and (w, v, the input
    gradient g, the sum of squares).  Without momentum v is w, unused."""

    @kernels.inline
    def contiguous_copy(a):
        """a itself in place, else a copy; and a C-contiguous array of its
        numbers (a itself, when it is: always, here)."""
        if inplace:
            out = a
        else:
            out = np.copy(a)
        return out, np.ascontiguousarray(out)

    @kernels.inline
    def copy_back(out, wc):
        if wc.ctypes.data != out.ctypes.data:
            for i in range(wc.shape[0]):
                for j in range(wc.shape[1]):
                    out[i, j] = wc[i, j]

    @kernels.inline
    def update(w, v, x, delta, alpha, gamma, mu, f):
        out, wc = contiguous_copy(w)
        if momentum:
            v_out, vc = contiguous_copy(v)
        else:
            v_out, vc = out, wc
        K = wc.shape[0]
        if masked:
            count, rows, values, factors = _nonzeros_or(x, f, B, K)
            g = np.zeros((B, K), wc.dtype)
        else:
            count, rows, values = _nonzeros(x, B, K)
            factors = values
            g = np.empty((B, K), wc.dtype)
        ss = np.zeros(1, np.float64)
        kernel(wc, vc, count, rows, values, factors, np.ascontiguousarray(delta), g, ss,
               alpha[()], gamma[()], mu[()])
        copy_back(out, wc)
        if momentum:
            copy_back(v_out, vc)
        return out, v_out, g, np.asarray(wc.dtype.type(ss[0]))

    return update


def _numba_funcify_dense_update(op, node, **kwargs):
    from pytensor.link.numba.cache import compile_numba_function_src
    B = node.inputs[1].type.shape[1]
    N = node.inputs[0].type.shape[1]
    inplace, masked = op.inplace, op.masked
    kernel = _dense_update_kernel(B, op.grad, op.sumsq, masked, N)
    update = _update_function(kernel, B, inplace, masked, momentum=False)

    # the node's function: its inputs, its outputs (v and mu are the
    # momentum kernel's: w and beta, unused; without masked, f is x, unused)
    args = "w, x, delta, alpha, beta" + (", f" if masked else "")
    outputs = ["out"] + ["g"] * op.grad + ["ss"] * op.sumsq
    source = (f"def dense_update({args}):\n"
              f"    out, _, g, ss = update(w, w, x, delta, alpha, beta, beta, "
              f"{'f' if masked else 'x'})\n"
              f"    return {', '.join(outputs) if len(outputs) > 1 else 'out'}\n")
    fn = compile_numba_function_src(source, "dense_update", global_env={"update": update})
    return inner(fn), _cache_key(
        f"update {B} {N} {inplace} {op.grad} {op.sumsq} {masked}")


def _numba_funcify_dense_momentum(op, node, **kwargs):
    from pytensor.link.numba.cache import compile_numba_function_src
    B = node.inputs[2].type.shape[1]
    N = node.inputs[0].type.shape[1]
    inplace, masked, decay = op.inplace, op.masked, op.decay
    kernel = _dense_update_kernel(B, op.grad, op.sumsq, masked, N, momentum=True, decay=decay)
    update = _update_function(kernel, B, inplace, masked, momentum=True)

    # the node's function: its inputs, its outputs (without decay, gamma
    # is alpha, unused; without masked, f is x, unused)
    args = "w, v, x, delta, alpha, mu" + (", gamma" if decay else "") + (", f" if masked else "")
    outputs = ["out", "v_out"] + ["g"] * op.grad + ["ss"] * op.sumsq
    source = (f"def dense_momentum({args}):\n"
              f"    out, v_out, g, ss = update(w, v, x, delta, alpha, "
              f"{'gamma' if decay else 'alpha'}, mu, {'f' if masked else 'x'})\n"
              f"    return {', '.join(outputs)}\n")
    fn = compile_numba_function_src(source, "dense_momentum", global_env={"update": update})
    return inner(fn), _cache_key(
        f"momentum {B} {N} {inplace} {op.grad} {op.sumsq} {masked} {decay}")


def _numba_funcify_dense_forward(op, node, **kwargs):
    B, N = node.inputs[0].type.shape[0], node.inputs[1].type.shape[1]
    dense_above = int(FORWARD_DENSE * FORWARD_ROWS * B)
    kernel = _dense_forward_kernel(B, FORWARD_ROWS, dense_above, N)

    @inner
    def dense_forward(x, w):
        wc = np.ascontiguousarray(w)
        xc = np.ascontiguousarray(x)
        count, rows, values = _nonzeros(xc.T, B, xc.shape[1])
        y = np.zeros((B, wc.shape[1]), wc.dtype)
        kernel(xc, count, rows, values, wc, y)
        return y
    return dense_forward, _cache_key(
        f"forward {B} {N} {FORWARD_ROWS} {dense_above}")


def _numba_funcify_dropout_bits(op, node, **kwargs):
    from pytensor.link.numba.dispatch.compile_ops import numba_deepcopy
    k, m, shape, inplace = op.k, op.m, op.shape, op.inplace
    n, per, low = int(np.prod(shape)), DRAW_BITS // m, (1 << m) - 1

    @kernels.inline
    def draw(rng):
        keep = np.empty(n, np.bool_)
        for start in range(0, n, per):
            # numpy's integers(0, 2**30): the top 30 bits of a 32-bit draw
            word = rng.integers(0, 1 << DRAW_BITS)
            for t in range(min(per, n - start)):
                keep[start + t] = ((word >> (m * t)) & low) < k
        return rng, keep.reshape(shape)

    if inplace:
        @inner
        def dropout_bits(rng):
            return draw(rng)
    else:
        @inner
        def dropout_bits(rng):
            return draw(numba_deepcopy(rng))
    return dropout_bits, _cache_key(f"dropout_bits {k} {m} {shape} {inplace}")


NUMBA_FUNCTIONS = {
    DenseUpdate: _numba_funcify_dense_update,
    DenseMomentum: _numba_funcify_dense_momentum,
    DenseForward: _numba_funcify_dense_forward,
    DropoutBits: _numba_funcify_dropout_bits,
}

# the cache keys: this file and kernels.py
_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest() + kernels._SOURCE
