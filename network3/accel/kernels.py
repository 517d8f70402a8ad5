"""accel/kernels.py: the accelerator's Numba arithmetic.

Notation: x (B, C, H, W) images, w (F, C, kh, kw) kernels, z (B, F, oh, ow)
the convolution's output, g* gradients.

* conv layers as im2col and BLAS matrix products, one per image or one per
  batch (``per_image``), from columns that the forward product and the
  weight gradient share (rewrites.py's ``Im2col``); numpy versions of the
  same for those Ops' ``perform``.  Each kernel takes its sizes as
  arguments and is inlined into a node function with the node's static
  shapes as constants, so LLVM unrolls and vectorises its loops.  Functions
  that only jitted code calls are compiled with ``inner``: no entry point
  from Python, and no machine code of their own (linker.py);
* BLAS for Numba: ``nb_gemm`` (z <- b z + a x y in place, with any operand
  layout, which Numba's np.dot cannot do) through numpy's own OpenBLAS,
  and ``nb_sum_of_squares`` (a loop);
* a float32 sigmoid whose exp LLVM can vectorise (``nb_sigmoid``);
* plain loops for rewrites.py's other Ops (softmax over rows, the cost's
  label pick and its gradient, sums keeping one axis, argmax over rows):
  each compiles in a fraction of the time of PyTensor's general version.

This module reaches into Numba's internals (intrinsics, its BLAS helper)
and numpy's bundled OpenBLAS: ``accel/__init__.py`` checks it before use.
The tests check it against independent numpy/scipy references.
"""

import hashlib
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic

from .. import numba_ops
from ..numba_ops import nb_batch_major, nb_col2im, nb_filter_major, nb_im2col
from ..ops import im2col


#### numpy (the ``perform`` of rewrites.py's conv Ops)
def im2col_groups(x, kh, kw):
    """As ``nb_im2col_groups``: (B, C*kh*kw, oh*ow) per image when
    ``per_image``, else (1, C*kh*kw, B*oh*ow)."""
    B, _C, H, W = x.shape
    if per_image(H - kh + 1, W - kw + 1):
        return np.stack([im2col(x[b:b + 1], kh, kw) for b in range(B)])
    return im2col(x, kh, kw)[None]


def conv2d_cols(cols, w, x_shape):
    """``conv2d`` from ``im2col_groups``' columns of an x of shape x_shape."""
    B, _C, H, W = x_shape
    F, _, kh, kw = w.shape
    z = w.reshape(F, -1) @ cols                   # (groups, F, pixels)
    z = z.transpose(1, 0, 2).reshape(F, B, H - kh + 1, W - kw + 1)
    return z.transpose(1, 0, 2, 3)


def conv2d_grad_weights_cols(cols, gz, x_shape):
    """``conv2d_grad_weights`` from ``im2col_groups``' columns."""
    _B, C, H, W = x_shape
    _, F, oh, ow = gz.shape
    gz = gz.transpose(1, 0, 2, 3).reshape(F, cols.shape[0], -1)  # (F, groups, pixels)
    gw = np.einsum("fgp,gkp->fk", gz, cols)
    return gw.reshape(F, C, H - oh + 1, W - ow + 1)


#### Numba
# ``inline="always"``: compiled into the caller, where the sizes are constants.
inline = numba.njit(inline="always")


def inner(fn=None, **options):
    """``numba.njit`` for a function that only jitted code calls: a graph
    node's function or a kernel under one.  Numba gives it no entry point
    from Python, and under linker.py's GraphLinker makes no machine code of
    its own: it runs as the copy linked into the graph's function."""
    jit = numba.njit(no_cpython_wrapper=True, no_cfunc_wrapper=True, **options)
    return jit if fn is None else jit(fn)


@inline
def nb_im2col_per_image(x, B, C, H, W, kh, kw):
    """As ``im2col``, one matrix per image: (B, C*kh*kw, oh*ow)."""
    x = np.ascontiguousarray(x)
    oh, ow = H - kh + 1, W - kw + 1
    cols = np.empty((B, C, kh, kw, oh, ow), x.dtype)
    for b in range(B):
        for c in range(C):
            for u in range(kh):
                for v in range(kw):
                    su, sv = kh - 1 - u, kw - 1 - v
                    for i in range(oh):
                        for j in range(ow):
                            cols[b, c, u, v, i, j] = x[b, c, i + su, j + sv]
    return cols.reshape(B, C * kh * kw, oh * ow)


# Large outputs per image (the book's first layer, 24 x 24) take one matrix
# product per image, written straight into the (B, F, oh, ow) layout; small
# ones (its second layer, 8 x 8) one product for the batch, whose result is
# then transposed: BLAS is faster so on each (scripts/bench_products.py).
PER_IMAGE_MIN_PIXELS = 256


def per_image(oh, ow, min_pixels=None):
    """Whether a conv layer with (oh, ow) outputs takes one product per image
    (else one for the batch): the one place that decides."""
    return oh * ow >= (PER_IMAGE_MIN_PIXELS if min_pixels is None else min_pixels)


@inline
def nb_im2col_batch(x, B, C, H, W, kh, kw):
    """``nb_im2col`` as (1, C*kh*kw, B*oh*ow)."""
    oh, ow = H - kh + 1, W - kw + 1
    return nb_im2col(x, B, C, H, W, kh, kw).reshape(1, C * kh * kw, B * oh * ow)


# The two groupings as functions of their own, so that rewrites.py
# compiles just the one a layer uses (``per_image``)
@inline
def nb_conv2d_cols_per_image(cols, w, B, F, oh, ow, K):
    kernels = np.ascontiguousarray(w).reshape(F, K)
    out = np.empty((B, F, oh * ow), cols.dtype)
    for b in range(B):
        nb_gemm(out[b], 1.0, kernels, cols[b], 0.0)
    return out.reshape(B, F, oh, ow)


@inline
def nb_conv2d_cols_batch(cols, w, B, F, oh, ow, K):
    kernels = np.ascontiguousarray(w).reshape(F, K)
    z = np.empty((F, B * oh * ow), cols.dtype)      # (F, B*oh*ow)
    nb_gemm(z, 1.0, kernels, cols[0], 0.0)  # numpy's BLAS (see _numpy_cblas)
    return nb_batch_major(z, B, F, oh, ow)


@inline
def nb_conv2d_grad_inputs(gz, w, B, F, oh, ow, C, kh, kw):
    """numba_ops' version with its product through nb_gemm (the transposed
    kernels handed to BLAS as they are)."""
    kernels = np.ascontiguousarray(w).reshape(F, C * kh * kw)
    gcols = np.empty((C * kh * kw, B * oh * ow), gz.dtype)
    nb_gemm(gcols, 1.0, kernels.T, nb_filter_major(gz, B, F, oh, ow), 0.0)
    return nb_col2im(gcols, B, C, oh + kh - 1, ow + kw - 1, kh, kw)


@inline
def nb_conv2d_grad_weights_cols_per_image(cols, gz, B, F, oh, ow, C, kh, kw):
    gw = np.empty((F, C * kh * kw), cols.dtype)
    gz = np.ascontiguousarray(gz).reshape(B, F, oh * ow)
    for b in range(B):  # gw <- gw + gz[b] @ cols[b].T, the first time gw <- ...
        nb_gemm(gw, 1.0, gz[b], cols[b].T, 1.0 if b else 0.0)
    return gw.reshape(F, C, kh, kw)


@inline
def nb_conv2d_grad_weights_cols_batch(cols, gz, B, F, oh, ow, C, kh, kw):
    # gw.T = (C*kh*kw, B*oh*ow) @ (B*oh*ow, F), then transposed: BLAS is
    # faster this way round than as gz @ cols.T at the book's second layer
    K = C * kh * kw
    gwT = np.empty((K, F), cols.dtype)
    nb_gemm(gwT, 1.0, cols[0], nb_filter_major(gz, B, F, oh, ow).T, 0.0)
    gw = np.empty((F, K), cols.dtype)
    for f in range(F):
        for k in range(K):
            gw[f, k] = gwT[k, f]
    return gw.reshape(F, C, kh, kw)


#### BLAS for Numba: gemm with any operand layout, and a sum of squares
def _numpy_cblas():
    """numpy's own OpenBLAS (the scipy-openblas64 library of numpy's Linux
    wheels), made callable from Numba as the symbols ``network3_cblas_sgemm``
    and ``network3_cblas_dgemm``; None where it is not found.

    Why: Numba's BLAS binding goes through SciPy's OpenBLAS, and the two
    wheels bundle different builds; numpy's ran the book's small-batch
    products faster (scripts/bench_products.py, docs/performance.md)."""
    import ctypes

    import llvmlite.binding as llvm
    libs = sorted((Path(np.__file__).parent.parent / "numpy.libs").glob(
        "libscipy_openblas64_*.so"))
    for path in libs:
        try:
            lib = ctypes.CDLL(str(path))
            functions = {kind: getattr(lib, f"scipy_cblas_{kind}gemm64_") for kind in "sd"}
        except (OSError, AttributeError):
            continue
        for kind, function in functions.items():
            llvm.add_symbol(f"network3_cblas_{kind}gemm",
                            ctypes.cast(function, ctypes.c_void_p).value)
        return path.name
    return None


_NUMPY_CBLAS = _numpy_cblas()


@intrinsic
def _xgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major BLAS gemm, c = alpha * op(a) @ op(b) + beta * c, through
    numpy's OpenBLAS (above) or else ``numba_xxgemm``, the helper Numba's own
    np.dot uses.  Both are called by symbol name, so a function using them
    can be cached on disk."""
    from numba.np.linalg import ensure_blas
    ensure_blas()
    dtype = c.dtype
    sig = types.void(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        ta, tb, m_, n_, k_, al, a_, lda_, b_, ldb_, be, c_, ldc_ = args
        st = signature.args
        char, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        intp = context.get_value_type(types.intp)
        void_p = cgutils.voidptr_t
        value_t = context.get_value_type(dtype)

        def scalar(value, ty):
            return context.cast(builder, value, ty, dtype)

        def data(value, ty):
            return builder.bitcast(context.make_array(ty)(context, builder, value).data,
                                   void_p)

        def integer(value, ty, int_t=intp):
            return builder.sext(value, int_t) if value.type.width < int_t.width \
                else builder.trunc(value, int_t) if value.type.width > int_t.width else value

        if _NUMPY_CBLAS:  # cblas_xgemm(order, transa, transb, m, n, k, alpha, ...)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                ir.VoidType(), [i32, i32, i32, i64, i64, i64, value_t, void_p, i64,
                                void_p, i64, value_t, void_p, i64]),
                f"network3_cblas_{'s' if dtype == types.float32 else 'd'}gemm")

            def trans(t):  # 'n' -> CblasNoTrans (111), 't' -> CblasTrans (112)
                is_t = builder.icmp_unsigned("==", integer(t, None, i32),
                                             ir.Constant(i32, ord("t")))
                return builder.select(is_t, ir.Constant(i32, 112), ir.Constant(i32, 111))

            builder.call(fn, [
                ir.Constant(i32, 102), trans(ta), trans(tb),  # 102: column-major
                integer(m_, st[2], i64), integer(n_, st[3], i64), integer(k_, st[4], i64),
                scalar(al, st[5]), data(a_, st[6]), integer(lda_, st[7], i64),
                data(b_, st[8]), integer(ldb_, st[9], i64), scalar(be, st[10]),
                data(c_, st[11]), integer(ldc_, st[12], i64)])
            return context.get_dummy_value()

        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            i32, [char, char, char, intp, intp, intp, void_p, void_p,
                  intp, void_p, intp, void_p, void_p, intp]), "numba_xxgemm")

        def slot(value, ty):  # a pointer to the scalar, in the array's dtype
            ptr = cgutils.alloca_once_value(builder, scalar(value, ty))
            return builder.bitcast(ptr, void_p)

        kind = ir.Constant(char, ord("s" if dtype == types.float32 else "d"))
        builder.call(fn, [
            kind, builder.trunc(ta, char), builder.trunc(tb, char),
            integer(m_, st[2]), integer(n_, st[3]), integer(k_, st[4]),
            slot(al, st[5]), data(a_, st[6]), integer(lda_, st[7]),
            data(b_, st[8]), integer(ldb_, st[9]), slot(be, st[10]),
            data(c_, st[11]), integer(ldc_, st[12])])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _data(typingctx, x):
    """The data pointer of array x."""
    def codegen(context, builder, signature, args):
        return context.make_array(signature.args[0])(context, builder, args[0]).data
    return types.CPointer(x.dtype)(x), codegen


@inner
def nb_sum_of_squares(x):
    if x.flags.c_contiguous or x.flags.f_contiguous:  # x's memory, as a vector
        v = numba.carray(_data(x), x.size)
    else:
        v = np.ascontiguousarray(x).ravel()
    return np.asarray(x.dtype.type(_sum_of_squares(v)))


# A loop, not BLAS's dot: the same speed (both read x once, at memory
# speed), a float64 sum, and none of the code Numba compiles for np.dot
@inner(fastmath={"reassoc", "contract"})
def _sum_of_squares(v):
    total = 0.0
    for i in range(v.size):
        total += np.float64(v[i]) * v[i]
    return total


@numba.njit(inline="always")
def _layout(p, rows, cols):
    """How BLAS can read the (rows, cols) array p in place: (transpose flag,
    leading dimension) for column-major BLAS, or (0, 0) when p is neither
    C- nor F-contiguous.  Strides of length-1 dimensions do not matter."""
    size = p.itemsize
    if (cols == 1 or p.strides[1] == size) and (rows == 1 or p.strides[0] == cols * size):
        return ord("n"), max(cols, 1)  # C order: p.T in column-major
    if (rows == 1 or p.strides[0] == size) and (cols == 1 or p.strides[1] == rows * size):
        return ord("t"), max(rows, 1)  # F order: p in column-major
    return 0, 0


@numba.njit(inline="always")
def _flip(t):
    return ord("t") if t == ord("n") else ord("n")


@intrinsic
def _any_layout(typingctx, x):
    """Array x, typed as an array of any layout (the same data)."""
    def codegen(context, builder, signature, args):
        return impl_ret_borrowed(context, builder, signature.return_type, args[0])
    return x.copy(layout="A")(x), codegen


@numba.njit(inline="always")
def nb_gemm(z, a, x, y, b):
    """z <- b * z + a * (x @ y), in place: one BLAS call.  z, x and y may
    each be C- or F-ordered (transposed views included); other layouts are
    copied first.  The arrays are passed on as of any layout, so that one
    compilation of ``_gemm`` (per dtype) serves every node."""
    _gemm(_any_layout(z), np.float64(a), _any_layout(x), _any_layout(y), np.float64(b))
    return z


@inner
def _gemm(z, a, x, y, b):
    M, N = z.shape
    K = x.shape[1]
    if x.shape[0] != M or y.shape[0] != K or y.shape[1] != N:
        raise ValueError("gemm: shapes of z, x and y do not match")
    if M == 0 or N == 0:
        return z
    if K == 0:  # BLAS's convention: z is not read when b is 0
        if b == 0:
            z[...] = 0
        else:
            z *= b
        return z
    out = z
    tz, _ = _layout(z, M, N)
    if tz == 0:  # compute into a contiguous copy, written back below
        out = np.ascontiguousarray(z)
        tz, _ = _layout(out, M, N)
    ty, ldy = _layout(y, K, N)
    if ty == 0:
        y = np.ascontiguousarray(y)
        ty, ldy = _layout(y, K, N)
    tx, ldx = _layout(x, M, K)
    if tx == 0:
        x = np.ascontiguousarray(x)
        tx, ldx = _layout(x, M, K)
    if tz == ord("n"):
        # row-major z = b z + a x y is column-major z.T = b z.T + a y.T x.T
        _xgemm(ty, tx, N, M, K, a, y, ldy, x, ldx, b, out, N)
    else:  # an F-ordered z is column-major already: each operand flips
        _xgemm(_flip(tx), _flip(ty), M, N, K, a, x, ldx, y, ldy, b, out, M)
    if out.ctypes.data != z.ctypes.data:
        # a loop, not z[...] = out: Numba would compile a shape-mismatch
        # error message for that, seconds of a first run's compile
        for i in range(M):
            for j in range(N):
                z[i, j] = out[i, j]
    return z


#### The logistic sigmoid, vectorised
# Numba computes np.exp by calling the C library's exp for one number at a
# time (about 4 ns each here), and the sigmoid of the book's first conv layer
# takes 28,800 of them a step.  nb_sigmoid computes exp with arithmetic
# alone, which LLVM turns into SIMD code: 2**n * exp(r), with n = round(t /
# ln 2) and |r| <= ln(2) / 2, exp(r) by its Taylor series and 2**n by
# writing n into a float64's exponent bits.  It works in float64 for a
# float32 result: the error (the first term left out of the series, r**8/8!,
# about 6e-9 relative) is below a tenth of a float32 rounding step.
@intrinsic
def _float64_from_bits(typingctx, bits):
    """The float64 whose IEEE bit pattern is the int64 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@inline
def nb_sigmoid(x):
    """1 / (1 + exp(-x)) of a float32 x, as a float32 (NaN stays NaN)."""
    t = -np.float64(x)
    # beyond +-110 the float32 result no longer changes (0 or 1)
    t = 110.0 if t > 110.0 else t
    t = -110.0 if t < -110.0 else t
    # n = t / ln 2 rounded (an integer conversion, which truncates, of a
    # positive number: np.floor would be a call to the C library)
    n = np.int64(t * 1.4426950408889634 + 512.5) - 512
    r = t - np.float64(n) * 0.6931471805599453       # |r| <= ln(2) / 2
    e = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (
        1 / 120 + r * (1 / 720 + r * (1 / 5040)))))))
    e *= _float64_from_bits((n + 1023) << 52)        # * 2**n
    # np.divide, not /: Python's division checks for a zero divisor, and
    # that branch keeps LLVM from vectorising the loop
    s = np.float32(np.divide(1.0, 1.0 + e))
    return s if x == x else x


#### Loops for rewrites.py's Ops: softmax over rows, one entry per row, sums
# PyTensor's own versions compile to several nested functions each (Softmax
# is a small graph of max, exp, sum and divide; the label pick is general
# advanced indexing); these are one loop nest each.
def softmax_rows(x, log=False):
    """numpy: (log-)softmax of each row of the matrix x."""
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True, dtype=np.float64)
    out = shifted - np.log(s) if log else e / s
    return out.astype(x.dtype)


@inner
def nb_softmax_rows(x, log):
    """As ``softmax_rows``: the maximum, then exp(x - max) summed in
    float64, as PyTensor's graph does."""
    N, K = x.shape
    out = np.empty((N, K), x.dtype)
    for i in range(N):
        m = x[i, 0]
        for j in range(1, K):
            m = max(m, x[i, j])
        s = 0.0
        for j in range(K):
            e = np.exp(x[i, j] - m)
            out[i, j] = e
            s += e
        if log:
            log_s = np.log(s)
            for j in range(K):
                out[i, j] = (x[i, j] - m) - log_s
        else:
            for j in range(K):
                out[i, j] = out[i, j] / s
    return out


@inner
def nb_take_rows(x, labels):
    """out[i] = x[i, labels[i]]: the book's log(p)[arange(n), y]."""
    N, K = x.shape
    out = np.empty(N, x.dtype)
    for i in range(N):
        j = labels[i]
        if j < 0 or j >= K:
            raise IndexError("a label is out of range for the output layer")
        out[i] = x[i, j]
    return out


@inner
def nb_put_rows(g, labels, K):
    """The gradient of ``nb_take_rows``: zeros, with g[i] at (i, labels[i])."""
    N = g.shape[0]
    out = np.zeros((N, K), g.dtype)
    for i in range(N):
        j = labels[i]
        if j < 0 or j >= K:
            raise IndexError("a label is out of range for the output layer")
        out[i, j] = g[i]
    return out


@inner
def nb_sum_keep(x):
    """Sums of the (A, J, C) array x over its first and last axes, in
    float64: out[j] = sum over a, c of x[a, j, c]."""
    A, J, C = x.shape
    out = np.zeros(J, np.float64)
    for a in range(A):
        for j in range(J):
            s = 0.0
            for c in range(C):
                s += x[a, j, c]
            out[j] += s
    return out


@inner
def nb_argmax_rows(x):
    """np.argmax(x, axis=1) of a matrix: the first maximum of each row (the
    first NaN, if the row has one, as numpy)."""
    N, K = x.shape
    out = np.empty(N, np.int64)
    for i in range(N):
        best = 0
        for j in range(K):
            if np.isnan(x[i, j]):
                best = j
                break
            if x[i, j] > x[i, best]:
                best = j
        out[i] = best
    return out


# this file and numba_ops.py, whose loops the kernels inline
_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest() + numba_ops._SOURCE
