"""rewrites.py: three graph rewrites that make the book's SGD step cheaper
on PyTensor's Numba backend without changing what it computes.

The book's update of a weight matrix, with the L2 term, is

    w - eta * (dot(x.T, delta) + (lmbda/n) * w)

and PyTensor computes it as written: the product into a fresh matrix the
size of w, then an element-wise pass that reads that matrix and w and writes
the new w.  The cost it returns also needs sum(w**2), which the element-wise
pass writes out as one more w-sized matrix before summing it.  For the
1000 x 1000 layers of the book's largest network, at a mini-batch of 10,
those passes over memory are most of the step.

* ``local_sgd_step_to_gemm``: the update becomes one BLAS call,
  ``gemm(w, -eta, x.T, delta, 1 - eta*lmbda/n)``, which PyTensor then runs in
  place (its ``InplaceBlasOpt``): one read and one write of w.
* ``local_sum_of_squares``: sum(w**2) becomes ``SumOfSquares``, one BLAS
  dot of w with itself: one read of w.
* ``local_dot_to_dot22``: matrix products become PyTensor's ``Dot22``.
  Numba's np.dot copies every operand whose layout it cannot prove
  contiguous at compile time, and the transposed weights of the backward
  pass are such operands (a 4 MB copy per layer and step); ``Dot22`` here
  hands them to BLAS as they are.

PyTensor's ``Gemm`` and ``Dot22`` Ops have no Numba implementation; this
module gives them one (``kernels.nb_gemm``: one BLAS call, any operand
layout).  With them and ``kernels._numpy_cblas``, ``scripts/benchmark.py``'s
double_fc_dropout network went from 37.3 to 22.0 s an epoch.

``numba_mode`` is PyTensor's Numba mode with the three added; nothing is
registered in PyTensor's global rewrite database.
"""

import hashlib
from pathlib import Path

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.compile.mode import get_mode
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.scalar import basic as ps
from pytensor.tensor.blas import Dot22, Gemm, _dot22, gemm_no_inplace
from pytensor.tensor.elemwise import CAReduce, DimShuffle, Elemwise
from pytensor.tensor.math import Dot

from . import kernels
from .kernels import nb_gemm, nb_sum_of_squares


#### Rewrites
def _scalar(var):
    """``var`` as a 0-d variable if it is a broadcast scalar (all its
    dimensions have length 1), else None."""
    if not all(s == 1 for s in var.type.shape):
        return None
    while var.owner and isinstance(var.owner.op, DimShuffle):
        var = var.owner.inputs[0]
    return var.dimshuffle() if var.type.ndim else var


def _is(var, scalar_op_class):
    return (var.owner is not None and isinstance(var.owner.op, Elemwise)
            and isinstance(var.owner.op.scalar_op, scalar_op_class))


def _split_scale(var):
    """``var`` = scale * rest with scale a product of scalars: (scale, rest),
    scale None when there is none."""
    if not _is(var, ps.Mul):
        return None, var
    scalars, others = [], []
    for factor in var.owner.inputs:
        s = _scalar(factor)
        (others if s is None else scalars).append(factor if s is None else s)
    if len(others) != 1 or not scalars:
        return None, var
    scale = scalars[0]
    for s in scalars[1:]:
        scale = scale * s
    return scale, others[0]


def _is_matrix_dot(var):
    return (var.owner is not None and isinstance(var.owner.op, Dot | Dot22)
            and all(i.type.ndim == 2 for i in var.owner.inputs))


@node_rewriter([Elemwise])
def local_sgd_step_to_gemm(fgraph, node):
    """w - eta * (dot(a, b) [+ c * w ...])  ->  gemm(w, -eta, a, b, 1 - eta*c)"""
    if not isinstance(node.op.scalar_op, ps.Sub):
        return None
    w, step = node.inputs
    if w.type.ndim != 2 or w.type.dtype not in ("float32", "float64"):
        return None
    if w.type.broadcastable != node.outputs[0].type.broadcastable:
        return None
    eta, term = _split_scale(step)
    if eta is None:
        return None
    terms = term.owner.inputs if _is(term, ps.Add) else [term]
    dots = [t for t in terms if _is_matrix_dot(t)]
    if len(dots) != 1:
        return None
    decay = []  # the c of every c * w term
    for t in terms:
        if t is dots[0]:
            continue
        c, rest = _split_scale(t)
        if rest is not w:
            return None
        decay.append(pt.constant(1.0, dtype=w.dtype) if c is None else c)
    a, b = dots[0].owner.inputs
    if a is w or b is w or a.type.dtype != w.type.dtype or b.type.dtype != w.type.dtype:
        return None
    eta = pt.cast(eta, w.dtype)
    beta = pt.constant(1.0, dtype=w.dtype)
    for c in decay:
        beta = beta - eta * pt.cast(c, w.dtype)
    return [gemm_no_inplace(w, -eta, a, b, beta)]


class SumOfSquares(Op):
    """sum(x**2) over all of x, in x's dtype: one BLAS dot of x with itself
    (the rewrite below puts it in the graph after the gradients are built,
    so it needs no gradient of its own).  BLAS accumulates in x's dtype
    where PyTensor's float32 sum accumulated in float64: the cost that
    ``train_mb`` reports may differ in its 6th or 7th digit; the gradient
    and the updates are unchanged."""

    __props__ = ()

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        return Apply(self, [x], [pt.scalar(dtype=x.dtype)])

    def perform(self, node, inputs, outputs):
        (x,) = inputs
        outputs[0][0] = np.asarray(np.vdot(x, x), dtype=x.dtype)


sum_of_squares = SumOfSquares()


@node_rewriter([CAReduce])
def local_sum_of_squares(fgraph, node):
    """sum(x**2) over all axes  ->  sum_of_squares(x)"""
    if not isinstance(node.op.scalar_op, ps.Add):
        return None
    (squares,) = node.inputs
    if node.op.axis is not None and len(node.op.axis) != squares.type.ndim:
        return None
    if not _is(squares, ps.Sqr) or squares.type.dtype not in ("float32", "float64"):
        return None
    return [pt.cast(sum_of_squares(squares.owner.inputs[0]), node.outputs[0].dtype)]


@node_rewriter([Dot])
def local_dot_to_dot22(fgraph, node):
    """dot(x, y) of two float matrices  ->  dot22(x, y), whose Numba version
    hands transposed operands to BLAS as they are (Numba's np.dot copies
    every operand it cannot prove contiguous, such as the transposed
    weights of the backward pass)."""
    x, y = node.inputs
    out = node.outputs[0]
    if not (x.type.ndim == y.type.ndim == 2 and x.type.dtype == y.type.dtype
            == out.type.dtype and out.type.dtype in ("float32", "float64")):
        return None
    return [_dot22(x, y)]


# after canonicalisation (the patterns above are its forms), before fusion
# (49) and PyTensor's InplaceBlasOpt (50.2), which makes the gemm in-place
_REWRITES = dfs_rewriter(local_sgd_step_to_gemm, local_sum_of_squares, local_dot_to_dot22,
                         name="network3_sgd_rewrites")


def numba_mode():
    """PyTensor's Numba mode with this module's three rewrites."""
    return get_mode("NUMBA").register((_REWRITES, 48.5))


#### Numba implementations (the arithmetic is in kernels.py)
# One jitted function per Op, shared by all its nodes (Numba compiles it
# once per combination of argument types, not once per node).
@numba.njit
def _gemm_inplace(z, a, x, y, b):
    return nb_gemm(z, a[()], x, y, b[()])


@numba.njit
def _gemm_copy(z, a, x, y, b):
    return nb_gemm(z.copy(), a[()], x, y, b[()])


@numba.njit
def _nb_dot22(x, y):
    M, N = x.shape[0], y.shape[1]
    # the result in y's order: BLAS then reads the larger operand (the
    # weights, transposed in the backward pass) in its packing order
    # (a (10, 1000) by (1000, 1000).T product: 0.47 instead of 0.71 ms,
    # scripts/bench_products.py)
    if y.strides[0] == y.itemsize and y.strides[1] != y.itemsize:
        z = np.empty((N, M), dtype=x.dtype).T
    else:
        z = np.empty((M, N), dtype=x.dtype)
    return nb_gemm(z, 1.0, x, y, 0.0)


def _cache_key(name):
    return hashlib.sha256(
        f"network3 {name} {kernels._NUMPY_CBLAS} {_SOURCE}".encode()).hexdigest()


def _numba_funcify_gemm(op, node, **kwargs):
    if op.inplace:
        return _gemm_inplace, _cache_key("gemm_inplace")
    return _gemm_copy, _cache_key("gemm")


def _numba_funcify_dot22(op, node, **kwargs):
    return _nb_dot22, _cache_key("dot22")


def _numba_funcify_sum_of_squares(op, node, **kwargs):
    return nb_sum_of_squares, _cache_key("sum_of_squares")


def register():
    """Give PyTensor's Numba backend the Gemm and Dot22 Ops (it has
    neither) and SumOfSquares."""
    from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key
    register_funcify_and_cache_key(Gemm)(_numba_funcify_gemm)
    register_funcify_and_cache_key(Dot22)(_numba_funcify_dot22)
    register_funcify_and_cache_key(SumOfSquares)(_numba_funcify_sum_of_squares)


# the cache keys: this file and kernels.py, so that editing either never
# runs a stale cached function
_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest() + kernels._SOURCE
register()
