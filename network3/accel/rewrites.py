"""accel/rewrites.py: graph rewrites that make the book's SGD step cheaper on
PyTensor's Numba backend, to run or to compile, without changing what it
computes.  Each replaces PyTensor's version of a node with an Op of this
module (or PyTensor's Gemm/Dot22) whose Numba code is in kernels.py.

For the step time, the book's update of a weight matrix with the L2 term,
``w - eta * (dot(x.T, delta) + (lmbda/n) * w)``, which PyTensor computes as
a product into a fresh matrix and then an element-wise pass over it and w:

* ``local_sgd_step_to_gemm``: the update becomes one BLAS call,
  ``gemm(w, -eta, x.T, delta, 1 - eta*lmbda/n)``, which PyTensor then runs
  in place: one read and one write of w;
* ``local_sum_of_squares``: sum(w**2) in the cost becomes ``SumOfSquares``,
  one pass over w summing in float64;
* ``local_dot_to_dot22``: matrix products become ``Dot22``, which hands
  transposed weights to BLAS as they are (Numba's np.dot copies them);
* ``local_fast_sigmoid``: float32 sigmoid becomes ``FastSigmoid``, whose
  exp is arithmetic LLVM vectorises, not a C-library call per number;
* ``local_flat_elemwise``: fused element-wise loops with static shapes
  merge adjacent axes, so the vectorised innermost loop is long;
* ``local_conv_cols``: a conv layer's forward product and weight gradient
  share one ``Im2col``; ``local_blas_conv_grad_inputs`` sends the input
  gradient's product through the same BLAS binding.

Two other modules add rewrites of their own, registered here: dense.py
(fully connected layers at a small mini-batch) and pooled.py (a conv
layer's gradients through max-pooling, from the nonzero ones).

For the compile time of a first run (Numba compiles every node into a
function of its own, PyTensor's versions of some into several nested ones
with their error messages), one loop nest each, same arithmetic:
``RowSoftmax`` (Softmax, LogSoftmax), ``TakeRows`` and ``PutRows`` (the
cost's ``log(p)[arange(n), y]`` and its gradient), ``SumKeep`` (sums over
all axes but one), ``ShapeCheck`` (SpecifyShape) and ``RowArgmax``.

``numba_mode`` is PyTensor's Numba mode with these added, compiled with
linker.py's ``GraphLinker``; nothing is registered in PyTensor's global
rewrite database.  docs/performance.md has what each one gained, with the
commands that measure it.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytensor.tensor as pt
from pytensor.compile.mode import Mode, get_mode
from pytensor.graph.basic import Apply, Constant
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.scalar import basic as ps
from pytensor.scalar import math as ps_math
from pytensor.tensor.basic import Alloc
from pytensor.tensor.blas import Dot22, Gemm, _dot22, gemm_no_inplace
from pytensor.tensor.elemwise import CAReduce, DimShuffle, Elemwise
from pytensor.tensor.exceptions import NotScalarConstantError
from pytensor.tensor.math import Argmax, Dot
from pytensor.tensor.shape import SpecifyShape
from pytensor.tensor.special import LogSoftmax, Softmax
from pytensor.tensor.subtensor import AdvancedIncSubtensor, AdvancedSubtensor
from pytensor.tensor.type_other import NoneTypeT

from ..ops import Conv2d, Conv2dGradInputs, Conv2dGradWeights
from . import dense, kernels, pooled
from .kernels import (
    inner,
    nb_argmax_rows,
    nb_gemm,
    nb_put_rows,
    nb_sigmoid,
    nb_softmax_rows,
    nb_sum_keep,
    nb_sum_of_squares,
    nb_take_rows,
)
from .linker import GraphLinker


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
    """sum(x**2) over all of x, in x's dtype: one pass over x, summed in
    float64 as PyTensor's float32 sum is (the rewrite below puts it in the
    graph after the gradients are built, so it needs no gradient of its
    own).  The order of the additions differs: the cost that ``train_mb``
    reports may differ in its last digit; the gradient and the updates are
    unchanged."""

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


#### For the compile time: softmax, the label pick, sums, argmax, shape checks
# One loop nest each, same arithmetic as PyTensor's Ops, which compile to
# several nested functions each (see the module's docstring).
class RowSoftmax(Op):
    """softmax (or, with ``log``, log-softmax) of each row of a matrix."""

    __props__ = ("log",)

    def __init__(self, log):
        self.log = bool(log)

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = kernels.softmax_rows(inputs[0], self.log)


class TakeRows(Op):
    """x[arange(n), labels]: each row's entry at its label."""

    __props__ = ()

    def make_node(self, x, labels):
        x, labels = pt.as_tensor_variable(x), pt.as_tensor_variable(labels)
        return Apply(self, [x, labels], [pt.vector(dtype=x.dtype, shape=x.type.shape[:1])])

    def perform(self, node, inputs, outputs):
        x, labels = inputs
        outputs[0][0] = x[np.arange(len(x)), labels]


class PutRows(Op):
    """TakeRows's gradient: an (n, n_classes) matrix of zeros holding g[i]
    at (i, labels[i])."""

    __props__ = ("n_classes",)

    def __init__(self, n_classes):
        self.n_classes = int(n_classes)

    def make_node(self, g, labels):
        g, labels = pt.as_tensor_variable(g), pt.as_tensor_variable(labels)
        shape = (g.type.shape[0], self.n_classes)
        return Apply(self, [g, labels], [pt.matrix(dtype=g.dtype, shape=shape)])

    def perform(self, node, inputs, outputs):
        g, labels = inputs
        out = np.zeros((len(g), self.n_classes), g.dtype)
        out[np.arange(len(g)), labels] = g
        outputs[0][0] = out


@node_rewriter([Softmax, LogSoftmax])
def local_row_softmax(fgraph, node):
    """softmax(x, axis=1) of a float matrix  ->  RowSoftmax (likewise log)"""
    (x,) = node.inputs
    if x.type.ndim != 2 or node.op.axis != (1,) or x.type.dtype not in _FLOATS:
        return None
    return [RowSoftmax(log=isinstance(node.op, LogSoftmax))(x)]


def _label_pick(x, indices):
    """The labels if ``x[indices]`` is x[arange(n), labels] for a float
    matrix x of static height n and an integer vector of labels."""
    if len(indices) != 2 or x.type.ndim != 2 or x.type.dtype not in _FLOATS:
        return None
    rows, labels = indices
    n = x.type.shape[0]
    if (n is None or not isinstance(rows, Constant) or rows.data.shape != (n,)
            or not np.array_equal(rows.data, np.arange(n))):
        return None
    if labels.type.ndim != 1 or not labels.type.dtype.startswith(("int", "uint")):
        return None
    return labels


@node_rewriter([AdvancedSubtensor])
def local_take_rows(fgraph, node):
    """x[arange(n), y]  ->  TakeRows(x, y)"""
    if node.op.idx_list != (0, 1):
        return None
    x, *indices = node.inputs
    labels = _label_pick(x, indices)
    return None if labels is None else [TakeRows()(x, labels)]


@node_rewriter([AdvancedIncSubtensor])
def local_put_rows(fgraph, node):
    """inc_subtensor(zeros(n, k)[arange(n), y], g)  ->  PutRows(k)(g, y)"""
    op = node.op
    if op.idx_list != (0, 1) or op.set_instead_of_inc:
        return None
    zeros, g, *indices = node.inputs
    labels = _label_pick(zeros, indices)
    if labels is None or g.type.ndim != 1 or zeros.type.shape[1] is None:
        return None
    if not (zeros.owner and isinstance(zeros.owner.op, Alloc)):
        return None
    try:
        if pt.get_underlying_scalar_constant_value(zeros.owner.inputs[0]) != 0:
            return None
    except NotScalarConstantError:
        return None
    out = PutRows(zeros.type.shape[1])(g.astype(zeros.dtype), labels)
    return [out]


class SumKeep(Op):
    """The sum of a float tensor over all its axes but ``keep`` (all of
    them when ``keep`` is None), accumulated in float64, returned in the
    tensor's dtype: the bias gradients and the cost's mean."""

    __props__ = ("keep",)

    def __init__(self, keep):
        self.keep = keep

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        shape = () if self.keep is None else (x.type.shape[self.keep],)
        return Apply(self, [x], [pt.tensor(dtype=x.dtype, shape=shape)])

    def perform(self, node, inputs, outputs):
        (x,) = inputs
        axes = tuple(a for a in range(x.ndim) if a != self.keep)
        outputs[0][0] = np.asarray(x.sum(axis=axes, dtype=np.float64), dtype=x.dtype)


@node_rewriter([CAReduce])
def local_sum_keep(fgraph, node):
    """sum(x, axes) over all of x's axes but at most one, x a float tensor
    of static shape  ->  SumKeep(kept axis)(x)"""
    op = node.op
    (x,) = node.inputs
    if not isinstance(op.scalar_op, ps.Add) or x.type.dtype not in _FLOATS:
        return None
    if None in x.type.shape or node.outputs[0].type.dtype != x.type.dtype:
        return None
    if x.type.dtype == "float32" and op.acc_dtype != "float64":
        return None
    axes = range(x.type.ndim) if op.axis is None else op.axis
    kept = [a for a in range(x.type.ndim) if a not in axes]
    if len(kept) > 1:
        return None
    return [SumKeep(kept[0] if kept else None)(x)]


class RowArgmax(Op):
    """argmax(x, axis=1) of a float matrix: the predicted labels."""

    __props__ = ()

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        return Apply(self, [x], [pt.vector(dtype="int64", shape=x.type.shape[:1])])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np.argmax(inputs[0], axis=1)


@node_rewriter([Argmax])
def local_row_argmax(fgraph, node):
    """argmax(x, axis=1) of a float matrix  ->  RowArgmax(x)"""
    x = node.inputs[0]
    if x.type.ndim != 2 or node.op.axis != (1,) or x.type.dtype not in _FLOATS:
        return None
    if node.outputs[0].type.dtype != "int64":
        return None
    return [RowArgmax()(x)]


class FastSigmoid(ps_math.Sigmoid):
    """PyTensor's scalar logistic sigmoid, same values (``impl``, gradient
    and C code are PyTensor's); its Numba implementation is
    ``kernels.nb_sigmoid``, which vectorises."""


fast_sigmoid = FastSigmoid(ps.upgrade_to_float, name="sigmoid")


@node_rewriter([Elemwise])
def local_fast_sigmoid(fgraph, node):
    """sigmoid(x) of a float32 tensor  ->  the same with FastSigmoid (also
    inside the fused element-wise loops that fusion makes of it later)"""
    if node.op.scalar_op != ps_math.sigmoid or node.outputs[0].type.dtype != "float32":
        return None
    return [Elemwise(fast_sigmoid)(node.inputs[0])]


class Im2col(Op):
    """x -> the columns of ``kernels.im2col_groups``: what a conv layer's
    forward product and its weight gradient both read."""

    __props__ = ("kh", "kw")

    def __init__(self, kh, kw):
        self.kh, self.kw = kh, kw

    def make_node(self, x):
        B, C, H, W = x.type.shape
        oh, ow = H - self.kh + 1, W - self.kw + 1
        if kernels.per_image(oh, ow):
            shape = (B, C * self.kh * self.kw, oh * ow)
        else:
            shape = (1, C * self.kh * self.kw, B * oh * ow)
        return Apply(self, [x], [pt.tensor(dtype=x.dtype, shape=shape)])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = kernels.im2col_groups(inputs[0], self.kh, self.kw)


class _FromCols(Op):
    """An Op that reads ``Im2col``'s columns of images of shape x_shape."""

    __props__ = ("x_shape",)

    def __init__(self, x_shape):
        self.x_shape = tuple(x_shape)


class Conv2dFromCols(_FromCols):
    """(cols, w) -> ``Conv2d`` of the images whose ``Im2col`` cols is."""

    def make_node(self, cols, w):
        B, _C, H, W = self.x_shape
        F, _, kh, kw = w.type.shape
        z = pt.tensor(dtype=cols.dtype, shape=(B, F, H - kh + 1, W - kw + 1))
        return Apply(self, [cols, w], [z])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = kernels.conv2d_cols(*inputs, self.x_shape).astype(
            node.outputs[0].dtype)


class Conv2dGradWeightsFromCols(_FromCols):
    """(cols, gz) -> ``Conv2dGradWeights`` of the images whose ``Im2col``
    cols is."""

    def make_node(self, cols, gz):
        _B, C, H, W = self.x_shape
        _, F, oh, ow = gz.type.shape
        gw = pt.tensor(dtype=cols.dtype, shape=(F, C, H - oh + 1, W - ow + 1))
        return Apply(self, [cols, gz], [gw])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = kernels.conv2d_grad_weights_cols(*inputs, self.x_shape).astype(
            node.outputs[0].dtype)


@node_rewriter([Conv2d, Conv2dGradWeights])
def local_conv_cols(fgraph, node):
    """Conv2d(x, w)            ->  Conv2dFromCols(Im2col(x), w)
    Conv2dGradWeights(x, gz)  ->  Conv2dGradWeightsFromCols(Im2col(x), gz)
    with one Im2col(x) for both (layers with static shapes)"""
    x, other = node.inputs
    if None in x.type.shape + other.type.shape or x.type.dtype != other.type.dtype:
        return None
    B, C, H, W = x.type.shape
    if isinstance(node.op, Conv2d):
        kh, kw = other.type.shape[2:]
    else:
        kh, kw = H - other.type.shape[2] + 1, W - other.type.shape[3] + 1
    im2col = Im2col(kh, kw)
    cols = next((client.outputs[0] for client, _ in fgraph.clients[x]
                 if client.op == im2col), None)
    if cols is None:
        cols = im2col(x)
    if isinstance(node.op, Conv2d):
        return [Conv2dFromCols(x.type.shape)(cols, other)]
    return [Conv2dGradWeightsFromCols(x.type.shape)(cols, other)]


class BlasConv2dGradInputs(Conv2dGradInputs):
    """``Conv2dGradInputs`` whose product goes through ``kernels.nb_gemm``
    (the transposed kernels handed to BLAS without a copy)."""


@node_rewriter([Conv2dGradInputs])
def local_blas_conv_grad_inputs(fgraph, node):
    gz, w = node.inputs
    if (type(node.op) is not Conv2dGradInputs or None in gz.type.shape + w.type.shape
            or gz.type.dtype != w.type.dtype):
        return None
    return [BlasConv2dGradInputs()(gz, w)]


class FlatElemwise(Elemwise):
    """PyTensor's Elemwise, same loop body; its Numba implementation first
    merges adjacent axes along which every input is either whole or
    broadcast alike (a conv layer's (10, 20, 12, 12) activations and
    (1, 20, 1, 1) biases become (10, 20, 144) and (1, 20, 1)).  PyTensor's
    loop nest vectorises its innermost loop only, which for the book's conv
    layers is 12 or 4 numbers long."""


# An innermost loop this long vectorises well as it is (16 float32 numbers
# to an AVX-512 register): merging would cost compile time for nothing.
LONG_LOOP = 32
# Loops worth merging: those that compute one of these per number (tens of
# instructions, where SIMD gains most).  A loop of additions and products
# runs at memory speed either way, and each merged node costs compile time.
_COSTLY = (ps.Exp, ps.Log, ps.Tanh, ps.Pow, ps.Sqrt, ps.Log1p, ps.Expm1,
           ps_math.Sigmoid, ps_math.Softplus)


def merged_axes(node):
    """The groups of adjacent output axes that can be merged, or None (also
    when the innermost loop is long enough already)."""
    out_shape = node.outputs[0].type.shape
    shapes = [i.type.shape for i in node.inputs]
    if None in out_shape or any(None in sh or len(sh) != len(out_shape) for sh in shapes):
        return None
    if not out_shape or out_shape[-1] >= LONG_LOOP:
        return None

    def kinds(axis):  # per input: broadcast along this axis, or not
        return [sh[axis] == 1 and out_shape[axis] != 1 for sh in shapes]
    groups = [[0]] if out_shape else []
    for axis in range(1, len(out_shape)):
        if out_shape[axis] == 1 or kinds(axis) == kinds(groups[-1][-1]):
            groups[-1].append(axis)
        else:
            groups.append([axis])
    return groups if len(groups) < len(out_shape) else None


@node_rewriter([Elemwise])
def local_flat_elemwise(fgraph, node):
    """Elemwise with static shapes whose axes merge and which computes an
    exp, a sigmoid or the like  ->  FlatElemwise (after fusion, so that each
    fused loop is one node)"""
    if type(node.op) is not Elemwise or merged_axes(node) is None:
        return None
    scalar = node.op.scalar_op
    inner = scalar.fgraph.apply_nodes if hasattr(scalar, "fgraph") else []
    if not any(isinstance(op, _COSTLY) for op in [scalar] + [n.op for n in inner]):
        return None
    return FlatElemwise(node.op.scalar_op, node.op.inplace_pattern)(
        *node.inputs, return_list=True)


class ShapeCheck(Op):
    """x itself, after checking that its shape is ``shape`` (None: any
    length): PyTensor's SpecifyShape with a fixed message, which compiles
    in a fraction of the time of SpecifyShape's formatted one."""

    __props__ = ("shape",)
    view_map = {0: [0]}

    def __init__(self, shape):
        self.shape = tuple(shape)

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        static = tuple(s if s is not None else d for s, d in zip(self.shape, x.type.shape))
        return Apply(self, [x], [pt.tensor(dtype=x.dtype, shape=static)])

    def perform(self, node, inputs, outputs):
        (x,) = inputs
        if not _shape_matches(x.shape, self.shape):
            raise ValueError(f"expected an array of shape {self.shape}, got {x.shape}")
        outputs[0][0] = x


def _shape_matches(shape, expected):
    return len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected))


@node_rewriter([SpecifyShape])
def local_shape_check(fgraph, node):
    """specify_shape(x, shape) with constant lengths  ->  ShapeCheck(shape)(x)"""
    x, *lengths = node.inputs
    shape = []
    for length in lengths:
        if isinstance(length.type, NoneTypeT):
            shape.append(None)
        elif isinstance(length, Constant):
            shape.append(int(length.data))
        else:
            return None
    return [ShapeCheck(shape)(x)]


_FLOATS = ("float32", "float64")


# after canonicalisation (the patterns above are its forms), before fusion
# (49) and PyTensor's InplaceBlasOpt (50.2), which makes the gemm in-place
_REWRITES = dfs_rewriter(local_sgd_step_to_gemm, local_sum_of_squares, local_dot_to_dot22,
                         local_row_softmax, local_take_rows, local_put_rows, local_sum_keep,
                         local_shape_check, local_row_argmax, local_fast_sigmoid,
                         local_conv_cols, local_blas_conv_grad_inputs,
                         name="network3_sgd_rewrites")
# after PyTensor's fusion of element-wise loops (49), before its in-place
# rewrites (49.5 on), which keep the FlatElemwise class
_AFTER_FUSION = dfs_rewriter(local_flat_elemwise, name="network3_flat_elemwise")


def numba_mode():
    """PyTensor's Numba mode with this module's rewrites, compiled with
    linker.py's ``GraphLinker`` (registering this module's Numba functions
    the first time)."""
    register()
    rewrites = get_mode("NUMBA").register(
        (_REWRITES, 48.5), (_AFTER_FUSION, 49.2), *dense.POSITIONS,
        *pooled.POSITIONS).provided_optimizer
    return Mode(linker=GraphLinker(), optimizer=rewrites)


#### Numba implementations (the arithmetic is in kernels.py)
# One jitted function per Op, shared by all its nodes (Numba compiles it
# once per combination of argument types, not once per node), except where
# a node's sizes or classes are compiled in as constants.
@inner
def _gemm_inplace(z, a, x, y, b):
    return nb_gemm(z, a[()], x, y, b[()])


@inner
def _gemm_copy(z, a, x, y, b):
    return nb_gemm(z.copy(), a[()], x, y, b[()])


@inner
def _nb_dot22(x, y):
    M, N = x.shape[0], y.shape[1]
    # the result in y's order: BLAS then reads the larger operand (the
    # weights, transposed in the backward pass) in its packing order
    # (scripts/bench_products.py)
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


@inner
def _nb_softmax(x):
    return nb_softmax_rows(x, False)


@inner
def _nb_log_softmax(x):
    return nb_softmax_rows(x, True)


def _numba_funcify_row_softmax(op, node, **kwargs):
    if op.log:
        return _nb_log_softmax, _cache_key("log_softmax")
    return _nb_softmax, _cache_key("softmax")


def _numba_funcify_take_rows(op, node, **kwargs):
    return nb_take_rows, _cache_key("take_rows")


def _numba_funcify_sum_keep(op, node, **kwargs):
    shape = node.inputs[0].type.shape
    k = op.keep
    if k is None:
        size = int(np.prod(shape))

        @inner
        def sum_all(x):
            out = np.empty(1, x.dtype)
            out[0] = nb_sum_keep(np.ascontiguousarray(x).reshape(1, 1, size))[0]
            return np.asarray(out[0])
        return sum_all, _cache_key(f"sum_all {size}")
    A, J, C = int(np.prod(shape[:k])), shape[k], int(np.prod(shape[k + 1:]))

    @inner
    def sum_keep(x):
        sums = nb_sum_keep(np.ascontiguousarray(x).reshape(A, J, C))
        out = np.empty(J, x.dtype)
        for j in range(J):
            out[j] = sums[j]
        return out
    return sum_keep, _cache_key(f"sum_keep {A} {J} {C}")


@inner
def _nb_sigmoid(x):
    return nb_sigmoid(x)


def _numba_funcify_fast_sigmoid(op, node, **kwargs):
    # local_fast_sigmoid makes float32 FastSigmoids only
    return _nb_sigmoid, _cache_key("sigmoid")


def _numba_funcify_im2col(op, node, **kwargs):
    B, C, H, W = node.inputs[0].type.shape
    kh, kw = op.kh, op.kw

    # one grouping, chosen here, so that Numba compiles only its kernel
    per_image = kernels.per_image(H - kh + 1, W - kw + 1)
    kernel = kernels.nb_im2col_per_image if per_image else kernels.nb_im2col_batch

    @inner
    def im2col(x):
        return kernel(x, B, C, H, W, kh, kw)
    return im2col, _cache_key(f"im2col {B} {C} {H} {W} {kh} {kw} {per_image}")


def _numba_funcify_conv2d_from_cols(op, node, **kwargs):
    B, C, H, W = op.x_shape
    F, _, kh, kw = node.inputs[1].type.shape
    oh, ow, K = H - kh + 1, W - kw + 1, C * kh * kw

    per_image = kernels.per_image(oh, ow)
    kernel = kernels.nb_conv2d_cols_per_image if per_image else kernels.nb_conv2d_cols_batch

    @inner
    def conv2d_from_cols(cols, w):
        return kernel(cols, w, B, F, oh, ow, K)
    return conv2d_from_cols, _cache_key(f"conv2d_cols {B} {F} {oh} {ow} {K} {per_image}")


def _numba_funcify_conv2d_grad_weights_from_cols(op, node, **kwargs):
    B, C, H, W = op.x_shape
    _, F, oh, ow = node.inputs[1].type.shape
    kh, kw = H - oh + 1, W - ow + 1

    per_image = kernels.per_image(oh, ow)
    kernel = (kernels.nb_conv2d_grad_weights_cols_per_image if per_image
              else kernels.nb_conv2d_grad_weights_cols_batch)

    @inner
    def conv2d_grad_weights_from_cols(cols, gz):
        return kernel(cols, gz, B, F, oh, ow, C, kh, kw)
    return conv2d_grad_weights_from_cols, _cache_key(
        f"conv2d_grad_weights_cols {B} {F} {oh} {ow} {C} {kh} {kw} {per_image}")


def _numba_funcify_conv2d_grad_inputs(op, node, **kwargs):
    (B, F, oh, ow), (_, C, kh, kw) = (v.type.shape for v in node.inputs)

    @inner
    def conv2d_grad_inputs(gz, w):
        return kernels.nb_conv2d_grad_inputs(gz, w, B, F, oh, ow, C, kh, kw)
    return conv2d_grad_inputs, _cache_key(
        f"conv2d_grad_inputs {B} {F} {oh} {ow} {C} {kh} {kw}")


def _numba_funcify_flat_elemwise(op, node, **kwargs):
    from pytensor.link.numba.cache import compile_numba_function_src
    from pytensor.link.numba.dispatch.basic import numba_funcify_and_cache_key
    groups = merged_axes(node)

    def merged(shape):
        return tuple(int(np.prod([shape[a] for a in group])) for group in groups)
    inputs = [pt.tensor(dtype=i.type.dtype, shape=merged(i.type.shape)) for i in node.inputs]
    flat = Elemwise(op.scalar_op, op.inplace_pattern).make_node(*inputs)
    loop, key = numba_funcify_and_cache_key(flat.op, node=flat)
    if key is None:
        return loop, None
    # a function of the node's inputs: reshape (contiguous views, or
    # copies when an input is not contiguous), loop, reshape back
    names = [f"x{i}" for i in range(len(inputs))]
    flat_args = ", ".join(f"np.ascontiguousarray({n}).reshape({i.type.shape})"
                          for n, i in zip(names, inputs))
    out_shapes = [o.type.shape for o in node.outputs]
    if len(out_shapes) == 1:
        body = f"return loop({flat_args}).reshape({out_shapes[0]})"
    else:
        back = ", ".join(f"outs[{k}].reshape({sh})" for k, sh in enumerate(out_shapes))
        body = f"outs = loop({flat_args})\n    return ({back},)"
    source = f"def flat_elemwise({', '.join(names)}):\n    {body}\n"
    fn = compile_numba_function_src(source, "flat_elemwise",
                                    global_env={"np": np, "loop": loop})
    return inner(fn), _cache_key(f"flat {key} {source}")


def _numba_funcify_row_argmax(op, node, **kwargs):
    return nb_argmax_rows, _cache_key("argmax_rows")


def _numba_funcify_shape_check(op, node, **kwargs):
    expected = tuple(-1 if length is None else length for length in op.shape)
    message = f"expected an array of shape {op.shape}"

    @inner
    def shape_check(x):
        for axis in range(len(expected)):
            if expected[axis] >= 0 and x.shape[axis] != expected[axis]:
                raise ValueError(message)
        return x
    return shape_check, _cache_key(f"shape_check {expected}")


def _numba_funcify_put_rows(op, node, **kwargs):
    n_classes = op.n_classes

    @inner
    def put_rows(g, labels):
        return nb_put_rows(g, labels, n_classes)
    return put_rows, _cache_key(f"put_rows {n_classes}")


# What each of this module's Ops (and PyTensor's Gemm and Dot22, which have
# no Numba implementation of their own) runs in Numba
NUMBA_FUNCTIONS = {
    Gemm: _numba_funcify_gemm,
    Dot22: _numba_funcify_dot22,
    SumOfSquares: _numba_funcify_sum_of_squares,
    RowSoftmax: _numba_funcify_row_softmax,
    TakeRows: _numba_funcify_take_rows,
    PutRows: _numba_funcify_put_rows,
    SumKeep: _numba_funcify_sum_keep,
    ShapeCheck: _numba_funcify_shape_check,
    RowArgmax: _numba_funcify_row_argmax,
    FastSigmoid: _numba_funcify_fast_sigmoid,
    Im2col: _numba_funcify_im2col,
    FlatElemwise: _numba_funcify_flat_elemwise,
    Conv2dFromCols: _numba_funcify_conv2d_from_cols,
    Conv2dGradWeightsFromCols: _numba_funcify_conv2d_grad_weights_from_cols,
    BlasConv2dGradInputs: _numba_funcify_conv2d_grad_inputs,
    **dense.NUMBA_FUNCTIONS,  # the fully connected layers' Ops (dense.py)
    **pooled.NUMBA_FUNCTIONS,  # conv gradients through max-pooling (pooled.py)
}


def register():
    """Register ``NUMBA_FUNCTIONS`` with PyTensor's Numba dispatch (once)."""
    from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key
    if _registered:
        return
    for op_class, funcify in NUMBA_FUNCTIONS.items():
        register_funcify_and_cache_key(op_class)(funcify)
    _registered.append(True)


_registered = []


# the cache keys: this file and kernels.py, so that editing either never
# runs a stale cached function
_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest() + kernels._SOURCE
