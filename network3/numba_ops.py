"""numba_ops.py: ops.py's Ops for PyTensor's Numba backend.

The same arithmetic as the Ops' numpy ``perform``, as Numba loops and
``np.dot``, registered through PyTensor's dispatch for Numba
(``register_funcify_and_cache_key``).  ``ops.py`` imports this module the
first time one of its Ops is put in a graph, so any function compiled in
PyTensor's Numba mode (network3's own, or one a user compiles of a layer's
output with ``pytensor.function``) runs them.  Public APIs of Numba and
PyTensor only: this is what runs when the accelerator (``network3/accel``)
is off, and the accelerator uses the pooling loops as they are.

Each node gets a small function of its inputs that calls a kernel with the
node's static sizes as constants: with every loop bound known, LLVM unrolls
and vectorises the loops.
"""

import hashlib
from pathlib import Path

import numba
import numpy as np
from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key

from . import ops

# inlined into the caller, where the sizes are constants
inline = numba.njit(inline="always")


def node_function(fn):
    """``numba.njit`` for a function only jitted code calls (a graph node's
    function): no entry point from Python, which Numba need not compile."""
    return numba.njit(no_cpython_wrapper=True, no_cfunc_wrapper=True)(fn)


#### Kernels
@inline
def nb_im2col(x, B, C, H, W, kh, kw):
    """As ``ops.im2col``: (C*kh*kw, B*oh*ow)."""
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
def nb_batch_major(z, B, F, oh, ow):
    """(F, B*oh*ow) -> (B, F, oh, ow), the inverse of ``nb_filter_major``."""
    z = z.reshape(F, B, oh * ow)
    out = np.empty((B, F, oh * ow), z.dtype)
    for b in range(B):
        for f in range(F):
            for p in range(oh * ow):
                out[b, f, p] = z[f, b, p]
    return out.reshape(B, F, oh, ow)


@inline
def nb_col2im(gcols, B, C, H, W, kh, kw):
    """As ``ops.col2im``: add each column back onto its patch."""
    oh, ow = H - kh + 1, W - kw + 1
    gcols = gcols.reshape(C, kh, kw, B, oh, ow)
    gx = np.zeros((B, C, H, W), gcols.dtype)
    for c in range(C):
        for u in range(kh):
            for v in range(kw):
                su, sv = kh - 1 - u, kw - 1 - v
                for b in range(B):
                    for i in range(oh):
                        for j in range(ow):
                            gx[b, c, i + su, j + sv] += gcols[c, u, v, b, i, j]
    return gx


@inline
def nb_conv2d(x, w, B, C, H, W, F, kh, kw):
    kernels = np.ascontiguousarray(w).reshape(F, C * kh * kw)
    z = np.dot(kernels, nb_im2col(x, B, C, H, W, kh, kw))     # (F, B*oh*ow)
    return nb_batch_major(z, B, F, H - kh + 1, W - kw + 1)


@inline
def nb_conv2d_grad_inputs(gz, w, B, F, oh, ow, C, kh, kw):
    kernels_t = np.ascontiguousarray(
        np.ascontiguousarray(w).reshape(F, C * kh * kw).T)    # (C*kh*kw, F)
    gcols = np.dot(kernels_t, nb_filter_major(gz, B, F, oh, ow))
    return nb_col2im(gcols, B, C, oh + kh - 1, ow + kw - 1, kh, kw)


@inline
def nb_conv2d_grad_weights(x, gz, B, C, H, W, F, oh, ow):
    kh, kw = H - oh + 1, W - ow + 1
    cols_t = np.ascontiguousarray(nb_im2col(x, B, C, H, W, kh, kw).T)
    gw = np.dot(nb_filter_major(gz, B, F, oh, ow), cols_t)   # (F, C*kh*kw)
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


#### One function per node, the sizes as constants where the graph knows them
def _static(shapes):
    return all(d is not None for shape in shapes for d in shape)


def conv2d_function(op, node):
    (B, C, H, W), (F, _, kh, kw) = shapes = [v.type.shape for v in node.inputs]
    if _static(shapes):
        def conv2d(x, w):
            return nb_conv2d(x, w, B, C, H, W, F, kh, kw)
    else:
        def conv2d(x, w):
            B, C, H, W = x.shape
            F, _, kh, kw = w.shape
            return nb_conv2d(x, w, B, C, H, W, F, kh, kw)
    return conv2d


def conv2d_grad_inputs_function(op, node):
    (B, F, oh, ow), (_, C, kh, kw) = shapes = [v.type.shape for v in node.inputs]
    if _static(shapes):
        def conv2d_grad_inputs(gz, w):
            return nb_conv2d_grad_inputs(gz, w, B, F, oh, ow, C, kh, kw)
    else:
        def conv2d_grad_inputs(gz, w):
            B, F, oh, ow = gz.shape
            _, C, kh, kw = w.shape
            return nb_conv2d_grad_inputs(gz, w, B, F, oh, ow, C, kh, kw)
    return conv2d_grad_inputs


def conv2d_grad_weights_function(op, node):
    (B, C, H, W), (_, F, oh, ow) = shapes = [v.type.shape for v in node.inputs]
    if _static(shapes):
        def conv2d_grad_weights(x, gz):
            return nb_conv2d_grad_weights(x, gz, B, C, H, W, F, oh, ow)
    else:
        def conv2d_grad_weights(x, gz):
            B, C, H, W = x.shape
            _, F, oh, ow = gz.shape
            return nb_conv2d_grad_weights(x, gz, B, C, H, W, F, oh, ow)
    return conv2d_grad_weights


def max_pool_function(op, node):
    (B, C, H, W), = shapes = [v.type.shape for v in node.inputs]
    ph, pw = op.poolsize
    if _static(shapes):
        def max_pool(x):
            return nb_max_pool(x, B, C, H, W, ph, pw)
    else:
        def max_pool(x):
            B, C, H, W = x.shape
            return nb_max_pool(x, B, C, H, W, ph, pw)
    return max_pool


def max_pool_grad_function(op, node):
    B, C, H, W = node.inputs[0].type.shape
    ph, pw = op.poolsize
    if _static([node.inputs[0].type.shape]):
        def max_pool_grad(x, pooled, gz):
            return nb_max_pool_grad(x, pooled, gz, B, C, H, W, ph, pw)
    else:
        def max_pool_grad(x, pooled, gz):
            B, C, H, W = x.shape
            return nb_max_pool_grad(x, pooled, gz, B, C, H, W, ph, pw)
    return max_pool_grad


FUNCTIONS = {
    ops.Conv2d: conv2d_function,
    ops.Conv2dGradInputs: conv2d_grad_inputs_function,
    ops.Conv2dGradWeights: conv2d_grad_weights_function,
    ops.MaxPool2d: max_pool_function,
    ops.MaxPool2dGrad: max_pool_grad_function,
}


_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _funcify(op, node, **kwargs):
    fn = FUNCTIONS[type(op)](op, node)
    # PyTensor's on-disk cache key: the Op, the static shapes and this
    # file's source, so that an edited kernel never runs a stale cached one
    shapes = [v.type.shape for v in node.inputs]
    key = hashlib.sha256(
        f"network3 {type(op).__name__} {op._props_dict()} {shapes} {_SOURCE}"
        .encode()).hexdigest()
    return node_function(fn), key


for _op_class in FUNCTIONS:
    register_funcify_and_cache_key(_op_class)(_funcify)
