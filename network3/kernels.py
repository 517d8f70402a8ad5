"""kernels.py: the arithmetic behind ops.py's Ops, once per backend.

Notation: x (B, C, H, W) images, w (F, C, kh, kw) kernels, z (B, F, oh, ow)
the convolution's output, g* gradients, (ph, pw) the pooling window.

* numpy (the Ops' ``perform``: the C backend and the Python VM);
* Numba (PyTensor's default backend): im2col and BLAS matrix products (one
  per image or one per batch, see ``PER_IMAGE_MIN_PIXELS``), plain loops for
  pooling.  Each kernel takes its array sizes as arguments and is inlined
  into a small wrapper made for each node of the graph, with the node's
  static shapes as constants: with every loop bound known, LLVM unrolls and
  vectorises the loops (measured: im2col 2x, pooling 7x and its gradient
  10x faster than the same loops over run-time sizes).  Functions that only
  jitted code calls are compiled with ``inner``: no entry point from Python,
  and no machine code of their own (linker.py);
* jax.numpy (the JAX backend), registered when jax is installed;
* BLAS for Numba: ``nb_gemm`` (z <- b z + a x y in place, with any operand
  layout, which Numba's np.dot cannot do), used by rewrites.py's Ops and the
  conv kernels, and ``nb_sum_of_squares`` (a loop);
* plain Numba loops for rewrites.py's other Ops (softmax over rows, the
  cost's label pick and its gradient, sums keeping one axis, argmax over
  rows): each compiles in a fraction of the time of PyTensor's general
  version, which is what they are for.

The tests check all three against independent numpy/scipy references and
against ``ops.conv2d_reference``/``max_pool_2d_reference``.
"""

import hashlib
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic


#### numpy
def im2col(x, kh, kw):
    """(B, C, H, W) -> (C*kh*kw, B*oh*ow): column (b, i, j) holds the
    flipped patch of x that output pixel (b, i, j) sees."""
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    windows = windows[..., ::-1, ::-1]            # (B, C, oh, ow, kh, kw), flipped
    return windows.transpose(1, 4, 5, 0, 2, 3).reshape(x.shape[1] * kh * kw, -1)


def col2im(cols, x_shape, kh, kw):
    """The transpose of ``im2col``: add each column back onto its patch."""
    B, C, H, W = x_shape
    oh, ow = H - kh + 1, W - kw + 1
    cols = cols.reshape(C, kh, kw, B, oh, ow)
    gx = np.zeros(x_shape, cols.dtype)
    for u in range(kh):
        for v in range(kw):
            # kernel entry (u, v) met the pixels shifted by (kh-1-u, kw-1-v)
            su, sv = kh - 1 - u, kw - 1 - v
            gx[:, :, su:su + oh, sv:sv + ow] += cols[:, u, v].transpose(1, 0, 2, 3)
    return gx


def conv2d(x, w):
    F, _C, kh, kw = w.shape
    B, _, H, W = x.shape
    z = w.reshape(F, -1) @ im2col(x, kh, kw)     # (F, B*oh*ow)
    return z.reshape(F, B, H - kh + 1, W - kw + 1).transpose(1, 0, 2, 3)


def im2col_groups(x, kh, kw):
    """As ``nb_im2col_groups``: (B, C*kh*kw, oh*ow) per image when
    oh*ow >= PER_IMAGE_MIN_PIXELS, else (1, C*kh*kw, B*oh*ow)."""
    B, _C, H, W = x.shape
    if (H - kh + 1) * (W - kw + 1) >= PER_IMAGE_MIN_PIXELS:
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


def conv2d_grad_inputs(gz, w):
    B, F, oh, ow = gz.shape
    _, C, kh, kw = w.shape
    gz = gz.transpose(1, 0, 2, 3).reshape(F, -1)  # (F, B*oh*ow)
    gcols = w.reshape(F, -1).T @ gz               # (C*kh*kw, B*oh*ow)
    return col2im(gcols, (B, C, oh + kh - 1, ow + kw - 1), kh, kw)


def conv2d_grad_weights(x, gz):
    _B, F, oh, ow = gz.shape
    kh, kw = x.shape[2] - oh + 1, x.shape[3] - ow + 1
    gz = gz.transpose(1, 0, 2, 3).reshape(F, -1)  # (F, B*oh*ow)
    gw = gz @ im2col(x, kh, kw).T                 # (F, C*kh*kw)
    return gw.reshape(F, x.shape[1], kh, kw)


def _windows(x, ph, pw, oh, ow):
    B, C = x.shape[:2]
    return x[:, :, :oh * ph, :ow * pw].reshape(B, C, oh, ph, ow, pw)


def max_pool(x, ph, pw):
    return _windows(x, ph, pw, x.shape[2] // ph, x.shape[3] // pw).max(axis=(3, 5))


def max_pool_grad(x, pooled, gz, ph, pw):
    B, C, oh, ow = pooled.shape
    is_max = _windows(x, ph, pw, oh, ow) == pooled[:, :, :, None, :, None]
    gx = np.zeros_like(x)                         # the dropped border stays 0
    gx[:, :, :oh * ph, :ow * pw] = (
        is_max * gz[:, :, :, None, :, None]).reshape(B, C, oh * ph, ow * pw)
    return gx


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
def nb_im2col(x, B, C, H, W, kh, kw):
    """As ``im2col``."""
    x = np.ascontiguousarray(x)
    oh, ow = H - kh + 1, W - kw + 1
    cols = np.empty((C, kh, kw, B, oh, ow), x.dtype)
    for c in range(C):
        for u in range(kh):
            for v in range(kw):
                su, sv = kh - 1 - u, kw - 1 - v   # the kernel flip
                for b in range(B):
                    for i in range(oh):
                        for j in range(ow):
                            cols[c, u, v, b, i, j] = x[b, c, i + su, j + sv]
    return cols.reshape(C * kh * kw, B * oh * ow)


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
# then transposed.  Measured on the book's layers (forward, weight gradient,
# ms; scripts/bench_products.py): first layer 0.12, 0.16 per batch vs 0.07,
# 0.10 per image; second layer 0.27, 0.31 per batch vs 0.35, 0.35 per image.
PER_IMAGE_MIN_PIXELS = 256


@inline
def nb_filter_major(z, B, F, oh, ow):
    """(B, F, oh, ow) -> (F, B*oh*ow), the layout of the matrix products."""
    z = np.ascontiguousarray(z).reshape(B, F, oh * ow)
    out = np.empty((F, B, oh * ow), z.dtype)
    for f in range(F):
        for b in range(B):
            for p in range(oh * ow):
                out[f, b, p] = z[b, f, p]
    return out.reshape(F, B * oh * ow)


@inline
def nb_im2col_groups(x, B, C, H, W, kh, kw):
    """The columns both products of a layer read, grouped as those products
    take them: (B, C*kh*kw, oh*ow), a matrix per image, for large outputs;
    else (1, C*kh*kw, B*oh*ow), one for the batch."""
    oh, ow = H - kh + 1, W - kw + 1
    if oh * ow >= PER_IMAGE_MIN_PIXELS:
        return nb_im2col_per_image(x, B, C, H, W, kh, kw)
    return nb_im2col_batch(x, B, C, H, W, kh, kw)


@inline
def nb_im2col_batch(x, B, C, H, W, kh, kw):
    """``nb_im2col`` as (1, C*kh*kw, B*oh*ow)."""
    oh, ow = H - kh + 1, W - kw + 1
    return nb_im2col(x, B, C, H, W, kh, kw).reshape(1, C * kh * kw, B * oh * ow)


@inline
def nb_conv2d(x, w, B, C, H, W, F, kh, kw):
    cols = nb_im2col_groups(x, B, C, H, W, kh, kw)
    return nb_conv2d_cols(cols, w, B, F, H - kh + 1, W - kw + 1, C * kh * kw)


@inline
def nb_conv2d_cols(cols, w, B, F, oh, ow, K):
    """The convolution from ``nb_im2col_groups``'s columns (K = C*kh*kw)."""
    if oh * ow >= PER_IMAGE_MIN_PIXELS:
        return nb_conv2d_cols_per_image(cols, w, B, F, oh, ow, K)
    return nb_conv2d_cols_batch(cols, w, B, F, oh, ow, K)


# The two groupings as functions of their own, so that rewrites.py can
# compile just the one a layer uses (Numba compiles both branches of an if)
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
    z = z.reshape(F, B, oh * ow)
    out = np.empty((B, F, oh * ow), cols.dtype)
    for b in range(B):
        for f in range(F):
            for p in range(oh * ow):
                out[b, f, p] = z[f, b, p]
    return out.reshape(B, F, oh, ow)


@inline
def nb_conv2d_grad_inputs(gz, w, B, F, oh, ow, C, kh, kw):
    kernels = np.ascontiguousarray(w).reshape(F, C * kh * kw)
    gcols = np.empty((C * kh * kw, B * oh * ow), gz.dtype)
    nb_gemm(gcols, 1.0, kernels.T, nb_filter_major(gz, B, F, oh, ow), 0.0)
    gcols = gcols.reshape(C, kh, kw, B, oh, ow)
    gx = np.zeros((B, C, oh + kh - 1, ow + kw - 1), gcols.dtype)
    for c in range(C):                            # col2im
        for u in range(kh):
            for v in range(kw):
                su, sv = kh - 1 - u, kw - 1 - v
                for b in range(B):
                    for i in range(oh):
                        for j in range(ow):
                            gx[b, c, i + su, j + sv] += gcols[c, u, v, b, i, j]
    return gx


@inline
def nb_conv2d_grad_weights(x, gz, B, C, H, W, F, oh, ow):
    kh, kw = H - oh + 1, W - ow + 1
    cols = nb_im2col_groups(x, B, C, H, W, kh, kw)
    return nb_conv2d_grad_weights_cols(cols, gz, B, F, oh, ow, C, kh, kw)


@inline
def nb_conv2d_grad_weights_cols(cols, gz, B, F, oh, ow, C, kh, kw):
    """The weight gradient from ``nb_im2col_groups``'s columns."""
    if oh * ow >= PER_IMAGE_MIN_PIXELS:
        return nb_conv2d_grad_weights_cols_per_image(cols, gz, B, F, oh, ow, C, kh, kw)
    return nb_conv2d_grad_weights_cols_batch(cols, gz, B, F, oh, ow, C, kh, kw)


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
    # faster this way round than as gz @ cols.T (the book's second layer,
    # throwaway timing: 0.31 -> 0.28 ms)
    K = C * kh * kw
    gwT = np.empty((K, F), cols.dtype)
    nb_gemm(gwT, 1.0, cols[0], nb_filter_major(gz, B, F, oh, ow).T, 0.0)
    gw = np.empty((F, K), cols.dtype)
    for f in range(F):
        for k in range(K):
            gw[f, k] = gwT[k, f]
    return gw.reshape(F, C, kh, kw)


@inline
def nb_max_pool(x, B, C, H, W, ph, pw):
    oh, ow = H // ph, W // pw
    x = np.ascontiguousarray(x).reshape(B * C, H, W)
    out = np.empty((B * C, oh, ow), x.dtype)
    for p in range(B * C):
        for i in range(oh):
            for j in range(ow):
                m = x[p, i * ph, j * pw]
                for u in range(ph):
                    for v in range(pw):
                        t = x[p, i * ph + u, j * pw + v]
                        # a NaN, once met, is kept (as np.max)
                        m = t if (t > m or t != t) else m
                out[p, i, j] = m
    return out.reshape(B, C, oh, ow)


@inline
def nb_max_pool_grad(x, pooled, gz, B, C, H, W, ph, pw):
    oh, ow = H // ph, W // pw
    x = np.ascontiguousarray(x).reshape(B * C, H, W)
    pooled = np.ascontiguousarray(pooled).reshape(B * C, oh, ow)
    gz = np.ascontiguousarray(gz).reshape(B * C, oh, ow)
    if H % ph or W % pw:
        gx = np.zeros((B * C, H, W), gz.dtype)   # the dropped border stays 0
    else:
        gx = np.empty((B * C, H, W), gz.dtype)   # every element written below
    zero = gz.dtype.type(0)
    for p in range(B * C):
        for i in range(oh):
            for u in range(ph):
                for j in range(ow):
                    m, g = pooled[p, i, j], gz[p, i, j]
                    for v in range(pw):
                        # gz * (x == max), as PyTensor's gradient of max
                        at_max = x[p, i * ph + u, j * pw + v] == m
                        gx[p, i * ph + u, j * pw + v] = g if at_max else zero
    return gx.reshape(B, C, H, W)


#### BLAS for Numba: gemm with any operand layout, and a sum of squares
def _numpy_cblas():
    """numpy's own OpenBLAS (the scipy-openblas64 library of numpy's Linux
    wheels), made callable from Numba as the symbols ``network3_cblas_sgemm``
    and ``network3_cblas_dgemm``; None where it is not found.

    Why: Numba's BLAS binding goes through SciPy's OpenBLAS, and the two
    wheels bundle different builds.  Measured here (numpy's 0.3.31, SciPy's
    0.3.30), a (10, 1000) by (1000, 1000) product took 0.45 ms through
    numpy's and 0.67 ms through SciPy's (scripts/bench_products.py)."""
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
# speed), a float64 sum, and none of the code Numba compiles for np.dot (a
# first run's compile: about 0.5 s)
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
        # error message for that (about 2 s of a first run's compile)
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


def _numba_wrapper(node, op):
    """A jitted function of the node's inputs that calls the node's kernel
    with the sizes as constants where the graph knows them statically."""
    in_shapes = [v.type.shape for v in node.inputs]
    static = all(d is not None for shape in in_shapes for d in shape)
    name = type(op).__name__
    if name == "Conv2d":
        (B, C, H, W), (F, _, kh, kw) = in_shapes
        if static:
            def fn(x, w):
                return nb_conv2d(x, w, B, C, H, W, F, kh, kw)
        else:
            def fn(x, w):
                B, C, H, W = x.shape
                F, _, kh, kw = w.shape
                return nb_conv2d(x, w, B, C, H, W, F, kh, kw)
    elif name == "Conv2dGradInputs":
        (B, F, oh, ow), (_, C, kh, kw) = in_shapes
        if static:
            def fn(gz, w):
                return nb_conv2d_grad_inputs(gz, w, B, F, oh, ow, C, kh, kw)
        else:
            def fn(gz, w):
                B, F, oh, ow = gz.shape
                _, C, kh, kw = w.shape
                return nb_conv2d_grad_inputs(gz, w, B, F, oh, ow, C, kh, kw)
    elif name == "Conv2dGradWeights":
        (B, C, H, W), (_, F, oh, ow) = in_shapes
        if static:
            def fn(x, gz):
                return nb_conv2d_grad_weights(x, gz, B, C, H, W, F, oh, ow)
        else:
            def fn(x, gz):
                B, C, H, W = x.shape
                _, F, oh, ow = gz.shape
                return nb_conv2d_grad_weights(x, gz, B, C, H, W, F, oh, ow)
    elif name == "MaxPool2d":
        (B, C, H, W), = in_shapes
        ph, pw = op.poolsize
        if static:
            def fn(x):
                return nb_max_pool(x, B, C, H, W, ph, pw)
        else:
            def fn(x):
                B, C, H, W = x.shape
                return nb_max_pool(x, B, C, H, W, ph, pw)
    elif name == "MaxPool2dGrad":
        (B, C, H, W) = in_shapes[0]
        ph, pw = op.poolsize
        if static:
            def fn(x, pooled, gz):
                return nb_max_pool_grad(x, pooled, gz, B, C, H, W, ph, pw)
        else:
            def fn(x, pooled, gz):
                B, C, H, W = x.shape
                return nb_max_pool_grad(x, pooled, gz, B, C, H, W, ph, pw)
    else:
        raise TypeError(f"no Numba kernel for {op}")
    fn.__name__ = name
    # PyTensor's on-disk cache key: the Op, the static shapes and this
    # file's source, so that editing a kernel never runs a stale cached one
    key = hashlib.sha256(
        f"network3 {name} {op._props_dict()} {in_shapes} {_SOURCE}".encode()).hexdigest()
    return inner(fn), key


#### JAX
def _jax_functions():
    import jax
    import jax.numpy as jnp

    # The same im2col formulation in jax.numpy (on CPU at small batches it
    # beat XLA's own convolution); the gradients are JAX's own VJPs of it.
    def conv(x, w):
        B, C, H, W = x.shape
        F, _, kh, kw = w.shape
        oh, ow = H - kh + 1, W - kw + 1
        views = [x[:, :, u:u + oh, v:v + ow]
                 for u in reversed(range(kh)) for v in reversed(range(kw))]
        cols = jnp.stack(views, axis=2)           # (B, C, kh*kw, oh, ow)
        cols = cols.transpose(0, 3, 4, 1, 2).reshape(B * oh * ow, C * kh * kw)
        z = cols @ w.reshape(F, C * kh * kw).T    # (B*oh*ow, F)
        return z.reshape(B, oh, ow, F).transpose(0, 3, 1, 2)

    def conv_grad_inputs(gz, w):
        x = jnp.zeros((gz.shape[0], w.shape[1], gz.shape[2] + w.shape[2] - 1,
                       gz.shape[3] + w.shape[3] - 1), gz.dtype)
        return jax.vjp(lambda x: conv(x, w), x)[1](gz)[0]

    def conv_grad_weights(x, gz):
        w = jnp.zeros((gz.shape[1], x.shape[1], x.shape[2] - gz.shape[2] + 1,
                       x.shape[3] - gz.shape[3] + 1), x.dtype)
        return jax.vjp(lambda w: conv(x, w), w)[1](gz)[0]

    def windows(x, ph, pw, oh, ow):
        B, C = x.shape[:2]
        return x[:, :, :oh * ph, :ow * pw].reshape(B, C, oh, ph, ow, pw)

    def pool(x, ph, pw):
        return windows(x, ph, pw, x.shape[2] // ph, x.shape[3] // pw).max(axis=(3, 5))

    def pool_grad(x, pooled, gz, ph, pw):
        B, C, oh, ow = pooled.shape
        is_max = windows(x, ph, pw, oh, ow) == pooled[:, :, :, None, :, None]
        g = (is_max * gz[:, :, :, None, :, None]).astype(gz.dtype)
        g = g.reshape(B, C, oh * ph, ow * pw)
        return jnp.zeros(x.shape, gz.dtype).at[:, :, :oh * ph, :ow * pw].set(g)

    return {"Conv2d": conv, "Conv2dGradInputs": conv_grad_inputs,
            "Conv2dGradWeights": conv_grad_weights, "MaxPool2d": pool,
            "MaxPool2dGrad": pool_grad}


#### Registration with PyTensor's backends
def register(*op_classes):
    """Tell PyTensor's Numba and JAX backends how to run ``op_classes``."""
    from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key
    for op_class in op_classes:
        register_funcify_and_cache_key(op_class)(
            lambda op, node, **kwargs: _numba_wrapper(node, op))
    try:
        from pytensor.link.jax.dispatch import jax_funcify
        functions = _jax_functions()
    except ImportError:  # jax is optional: only the JAX backend needs it
        return
    for op_class in op_classes:
        jax_funcify.register(op_class)(_jax_funcify)
    _JAX.update(functions)


_JAX = {}


def _jax_funcify(op, node=None, **kwargs):
    function = _JAX[type(op).__name__]
    poolsize = getattr(op, "poolsize", ())
    # PyTensor's JAX backend may hand a float32 Op a float64 input: cast to
    # the output's dtype
    dtype = node.outputs[0].dtype
    return lambda *inputs: function(*(i.astype(dtype) for i in inputs), *poolsize)


_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
