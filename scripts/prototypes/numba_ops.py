"""PROTOTYPE, not used by network3: custom-Op versions of network3/ops.py.

A drop-in replacement for ``network3/ops.py`` (same public functions and
semantics), measured on 2026-11-27 on the project's 2-core machine under
heavy load, dbl_conv at mini-batch 10, one BLAS thread, old ops vs these in
the same script: per-step time 3.4-5.3 ms vs 3.7-5.0 ms (within the noise;
PyTorch 1 thread 5.7 ms); first call with a cold cache 127-331 s vs 41-76 s;
cached 2.2-4.3 s vs 2.2 s.  The cold compile gain is real; the rest of the
cold compile is PyTensor compiling the other layers.  Kept here for the
speed issue: to try it, copy it over network3/ops.py and run
``scripts/prototypes/test_numba_ops.py`` and the test suite.

Original docstring:

ops.py: the two CNN primitives PyTensor 3 no longer ships.

Theano had ``conv.conv2d`` and ``downsample.max_pool_2d``; PyTensor removed
both.  Here they are rebuilt as five small PyTensor Ops:

* ``Conv2d`` (the convolution) and its two gradients, ``Conv2dGradInputs``
  and ``Conv2dGradWeights``;
* ``MaxPool2d`` and its gradient ``MaxPool2dGrad``.

Each Op has three implementations of the same arithmetic:

* a Numba kernel (``numba.njit(cache=True)``) for PyTensor's default Numba
  backend: im2col into one buffer and a single matrix product (which Numba
  hands to BLAS) for the convolutions, plain loops for pooling;
* a numpy ``perform`` for the C backend and the Python VM;
* a ``jax.numpy`` function for the JAX backend (registered when jax is
  installed).

Why Ops and not plain tensor algebra?  ``conv2d_reference`` below writes the
convolution with ordinary tensor operations (k*k shifted slices, one ``dot``)
and PyTensor differentiates it by itself; it is kept as the readable
definition and the tests compare the Ops against it.  But its graph has
hundreds of nodes once differentiated (25 slices, and 25 ``inc_subtensor``
in the gradient of each layer): Numba needed about 150 s to compile the
book's two-conv-layer network and ran it slower than PyTorch.  A few big
Ops compile in seconds and run 2-3x faster.

All tested against independent numpy/scipy references in
``tests/test_ops.py``.
"""

import hashlib
from pathlib import Path

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.scalar import upcast


# ---------------------------------------------------------------- public API
def conv2d(x, w, image_shape, filter_shape):
    """Valid 2-D *true* convolution, as Theano's ``conv.conv2d``.

    ``x``: (batch, channels, h, w) images; ``w``: (filters, channels, fh, fw)
    kernels.  Returns (batch, filters, h - fh + 1, w - fw + 1) with

        out[b, f, i, j] = sum_{c,u,v} x[b, c, i+u, j+v] * w[f, c, fh-1-u, fw-1-v]

    i.e. the kernel is flipped (a true convolution, not a correlation), which
    matters when loading weights trained by Theano.

    The shapes are passed in as Python tuples; they fix the static shapes of
    the graph (the JAX backend requires static shapes).
    """
    x = pt.specify_shape(x, tuple(image_shape))
    w = pt.specify_shape(w, tuple(filter_shape))
    return Conv2d()(x, w)


def max_pool_2d(x, input_shape, poolsize):
    """Non-overlapping max pooling that ignores the border.

    ``x``: (batch, channels, h, w).  Windows of ``poolsize`` = (ph, pw) that
    do not fit entirely are dropped (Theano's ``ignore_border=True``), so the
    result is (batch, channels, h // ph, w // pw).  The gradient goes to every
    element equal to its window's maximum (as Theano's and ``pt.max``'s).
    """
    x = pt.specify_shape(x, tuple(input_shape))
    return MaxPool2d(tuple(int(p) for p in poolsize))(x)


def l2_pool_2d(x, input_shape, poolsize):
    """Non-overlapping L2 pooling: the square root of the sum of squares of
    each window (the alternative to max pooling that the chapter mentions)."""
    batch, channels, h, wd = input_shape
    ph, pw = poolsize
    oh, ow = h // ph, wd // pw
    x = x[:, :, :oh * ph, :ow * pw]
    windows = x.reshape((batch, channels, oh, ph, ow, pw))
    return pt.sqrt((windows ** 2).sum(axis=(3, 5)))


# ------------------------------------------ the definitions, as tensor algebra
def conv2d_reference(x, w, image_shape, filter_shape):
    """``conv2d`` written with ordinary tensor operations (im2col: one shifted
    view of the image per kernel position, then one ``dot``).  Slow to compile
    on Numba, but PyTensor differentiates it by itself: the tests check the
    Ops and their gradients against it."""
    batch, channels, h, wd = image_shape
    n_filters, _w_channels, fh, fw = filter_shape
    oh, ow = h - fh + 1, wd - fw + 1
    # views in reverse order: pairing view (u, v) with kernel entry
    # (fh-1-u, fw-1-v) is the kernel flip
    views = [x[:, :, u:u + oh, v:v + ow]
             for u in reversed(range(fh)) for v in reversed(range(fw))]
    cols = pt.stack(views, axis=2)                # (B, C, fh*fw, oh, ow)
    cols = cols.dimshuffle(0, 3, 4, 1, 2)         # (B, oh, ow, C, fh*fw)
    cols = cols.reshape((batch * oh * ow, channels * fh * fw))
    kernels = w.reshape((n_filters, channels * fh * fw))
    out = pt.dot(cols, kernels.T)                 # (B*oh*ow, F)
    out = out.reshape((batch, oh, ow, n_filters))
    return out.dimshuffle(0, 3, 1, 2)             # (B, F, oh, ow)


def max_pool_2d_reference(x, input_shape, poolsize):
    """``max_pool_2d`` as a reshape and a ``max`` (differentiated by PyTensor)."""
    batch, channels, h, wd = input_shape
    ph, pw = poolsize
    oh, ow = h // ph, wd // pw
    x = x[:, :, :oh * ph, :ow * pw]               # crop the incomplete windows
    windows = x.reshape((batch, channels, oh, ph, ow, pw))
    return windows.max(axis=(3, 5))               # (B, C, oh, ow)


# -------------------------------------------------------------- numpy kernels
# The numpy versions (used by ``perform``: C backend, Python VM) and the
# Numba versions compute the same thing.  Notation: x (B, C, H, W) images,
# w (F, C, kh, kw) kernels, z (B, F, oh, ow) convolution output, g* gradients.

def _np_im2col(x, kh, kw):
    """(B, C, H, W) -> (C*kh*kw, B*oh*ow): column (b, i, j) holds the flipped
    patch of x that output pixel (b, i, j) sees."""
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    windows = windows[..., ::-1, ::-1]            # (B, C, oh, ow, kh, kw), flipped
    return windows.transpose(1, 4, 5, 0, 2, 3).reshape(
        x.shape[1] * kh * kw, -1)


def _np_col2im(cols, x_shape, kh, kw):
    """The transpose of ``_np_im2col``: add each column back onto the patch it
    came from."""
    B, C, H, W = x_shape
    oh, ow = H - kh + 1, W - kw + 1
    cols = cols.reshape(C, kh, kw, B, oh, ow)
    gx = np.zeros(x_shape, cols.dtype)
    for u in range(kh):
        for v in range(kw):
            # kernel entry (u, v) met pixels shifted by (kh-1-u, kw-1-v)
            su, sv = kh - 1 - u, kw - 1 - v
            gx[:, :, su:su + oh, sv:sv + ow] += cols[:, u, v].transpose(1, 0, 2, 3)
    return gx


def _np_conv2d(x, w):
    F, _C, kh, kw = w.shape
    B, _, H, W = x.shape
    z = w.reshape(F, -1) @ _np_im2col(x, kh, kw)  # (F, B*oh*ow)
    return z.reshape(F, B, H - kh + 1, W - kw + 1).transpose(1, 0, 2, 3)


def _np_conv2d_grad_inputs(gz, w):
    B, F, oh, ow = gz.shape
    _, C, kh, kw = w.shape
    gz = gz.transpose(1, 0, 2, 3).reshape(F, -1)  # (F, B*oh*ow)
    gcols = w.reshape(F, -1).T @ gz               # (C*kh*kw, B*oh*ow)
    return _np_col2im(gcols, (B, C, oh + kh - 1, ow + kw - 1), kh, kw)


def _np_conv2d_grad_weights(x, gz):
    _B, F, oh, ow = gz.shape
    kh, kw = x.shape[2] - oh + 1, x.shape[3] - ow + 1
    gz = gz.transpose(1, 0, 2, 3).reshape(F, -1)  # (F, B*oh*ow)
    gw = gz @ _np_im2col(x, kh, kw).T             # (F, C*kh*kw)
    return gw.reshape(F, x.shape[1], kh, kw)


def _np_max_pool(x, ph, pw):
    B, C, H, W = x.shape
    oh, ow = H // ph, W // pw
    windows = x[:, :, :oh * ph, :ow * pw].reshape(B, C, oh, ph, ow, pw)
    return windows.max(axis=(3, 5))


def _np_max_pool_grad(x, gz, ph, pw):
    B, C, oh, ow = gz.shape
    windows = x[:, :, :oh * ph, :ow * pw].reshape(B, C, oh, ph, ow, pw)
    is_max = windows == windows.max(axis=(3, 5), keepdims=True)
    gx = np.zeros_like(x)
    gx[:, :, :oh * ph, :ow * pw] = (
        is_max * gz[:, :, :, None, :, None]).reshape(B, C, oh * ph, ow * pw)
    return gx


# -------------------------------------------------------------- Numba kernels
# Loops over contiguous arrays (``np.ascontiguousarray`` tells Numba the
# layout, so the inner loops vectorise) and one BLAS matrix product each.

@numba.njit(cache=True)
def _nb_im2col(x, kh, kw):
    """(B, C, H, W) -> (C*kh*kw, B*oh*ow), as ``_np_im2col``."""
    x = np.ascontiguousarray(x)
    B, C, H, W = x.shape
    oh, ow = H - kh + 1, W - kw + 1
    cols = np.empty((C, kh, kw, B, oh, ow), x.dtype)
    for c in range(C):
        for u in range(kh):
            for v in range(kw):
                su, sv = kh - 1 - u, kw - 1 - v       # the kernel flip
                for b in range(B):
                    for i in range(oh):
                        for j in range(ow):
                            cols[c, u, v, b, i, j] = x[b, c, i + su, j + sv]
    return cols.reshape(C * kh * kw, B * oh * ow)


@numba.njit(cache=True)
def _nb_z_matrix(z):
    """(B, F, oh, ow) -> (F, B*oh*ow), contiguous."""
    z = np.ascontiguousarray(z)
    B, F, oh, ow = z.shape
    out = np.empty((F, B, oh, ow), z.dtype)
    for b in range(B):
        for f in range(F):
            out[f, b] = z[b, f]
    return out.reshape(F, B * oh * ow)


@numba.njit(cache=True)
def _nb_conv2d(x, w):
    F, C, kh, kw = w.shape
    B, _, H, W = x.shape
    oh, ow = H - kh + 1, W - kw + 1
    kernels = np.ascontiguousarray(w).reshape(F, C * kh * kw)
    z = np.dot(kernels, _nb_im2col(x, kh, kw)).reshape(F, B, oh, ow)
    out = np.empty((B, F, oh, ow), z.dtype)
    for b in range(B):                            # (F, B, oh, ow) -> (B, F, oh, ow)
        for f in range(F):
            out[b, f] = z[f, b]
    return out


@numba.njit(cache=True)
def _nb_conv2d_grad_inputs(gz, w):
    B, F, oh, ow = gz.shape
    _, C, kh, kw = w.shape
    kernels = np.ascontiguousarray(w).reshape(F, C * kh * kw)
    gcols = np.dot(kernels.T, _nb_z_matrix(gz))   # (C*kh*kw, B*oh*ow)
    gcols = gcols.reshape(C, kh, kw, B, oh, ow)
    gx = np.zeros((B, C, oh + kh - 1, ow + kw - 1), gcols.dtype)
    for c in range(C):                            # col2im: the transpose of im2col
        for u in range(kh):
            for v in range(kw):
                su, sv = kh - 1 - u, kw - 1 - v
                for b in range(B):
                    for i in range(oh):
                        for j in range(ow):
                            gx[b, c, i + su, j + sv] += gcols[c, u, v, b, i, j]
    return gx


@numba.njit(cache=True)
def _nb_conv2d_grad_weights(x, gz):
    _B, F, oh, ow = gz.shape
    C = x.shape[1]
    kh, kw = x.shape[2] - oh + 1, x.shape[3] - ow + 1
    # (F, B*oh*ow) @ (B*oh*ow, C*kh*kw): BLAS reads the transpose in place
    gw = np.dot(_nb_z_matrix(gz), _nb_im2col(x, kh, kw).T)
    return gw.reshape(F, C, kh, kw)


@numba.njit(cache=True)
def _nb_max_pool(x, ph, pw):
    x = np.ascontiguousarray(x)
    B, C, H, W = x.shape
    oh, ow = H // ph, W // pw
    out = np.empty((B, C, oh, ow), x.dtype)
    for b in range(B):
        for c in range(C):
            for i in range(oh):
                out[b, c, i] = x[b, c, i * ph, :ow * pw:pw]
                for u in range(ph):               # row by row: contiguous reads
                    for j in range(ow):
                        for v in range(pw):
                            value = x[b, c, i * ph + u, j * pw + v]
                            m = out[b, c, i, j]
                            # a NaN, once met, is kept (as np.max)
                            out[b, c, i, j] = (value if value > m or np.isnan(value)
                                               else m)
    return out


@numba.njit(cache=True)
def _nb_max_pool_grad(x, gz, ph, pw):
    x = np.ascontiguousarray(x)
    gz = np.ascontiguousarray(gz)
    B, C, oh, ow = gz.shape
    pooled = _nb_max_pool(x, ph, pw)
    gx = np.zeros_like(x)                         # the dropped border stays 0
    for b in range(B):
        for c in range(C):
            for i in range(oh):
                for u in range(ph):
                    for j in range(ow):
                        for v in range(pw):
                            # gz * (x == max), as PyTensor's gradient of max
                            hi, wj = i * ph + u, j * pw + v
                            at_max = x[b, c, hi, wj] == pooled[b, c, i, j]
                            gx[b, c, hi, wj] = gz[b, c, i, j] * at_max
    return gx


# ---------------------------------------------------------------------- Ops
def _tensor4(value):
    value = pt.as_tensor_variable(value)
    if value.ndim != 4:
        raise ValueError(f"expected a 4-d tensor, got {value.ndim} dimensions")
    return value


def _same_dtype(*values):
    dtype = upcast(*(v.dtype for v in values))
    return [pt.cast(v, dtype) for v in values]


def _output(dtype, shape):
    return pt.tensor(dtype=dtype, shape=tuple(shape))


def _sub(a, b):
    """a - b + 1 on static shapes, None when either is unknown."""
    return None if a is None or b is None else a - b + 1


class Conv2d(Op):
    """(x, w) -> z: valid true convolution, see ``conv2d``."""

    __props__ = ()

    def make_node(self, x, w):
        x, w = _same_dtype(_tensor4(x), _tensor4(w))
        (B, _C, H, W), (F, _, kh, kw) = x.type.shape, w.type.shape
        z = _output(x.dtype, (B, F, _sub(H, kh), _sub(W, kw)))
        return Apply(self, [x, w], [z])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = _np_conv2d(*inputs).astype(node.outputs[0].dtype)

    def infer_shape(self, fgraph, node, shapes):
        (B, _C, H, W), (F, _, kh, kw) = shapes
        return [(B, F, H - kh + 1, W - kw + 1)]

    def pullback(self, inputs, outputs, cotangents):
        x, w = inputs
        (gz,) = cotangents
        return [Conv2dGradInputs()(gz, w), Conv2dGradWeights()(x, gz)]


class Conv2dGradInputs(Op):
    """(gz, w) -> gx: the gradient of ``conv2d`` with respect to the images
    (a "full" correlation of gz with the kernels)."""

    __props__ = ()

    def make_node(self, gz, w):
        gz, w = _same_dtype(_tensor4(gz), _tensor4(w))
        (B, _F, oh, ow), (_, C, kh, kw) = gz.type.shape, w.type.shape
        H = None if oh is None or kh is None else oh + kh - 1
        W = None if ow is None or kw is None else ow + kw - 1
        return Apply(self, [gz, w], [_output(gz.dtype, (B, C, H, W))])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = _np_conv2d_grad_inputs(*inputs).astype(node.outputs[0].dtype)

    def infer_shape(self, fgraph, node, shapes):
        (B, _F, oh, ow), (_, C, kh, kw) = shapes
        return [(B, C, oh + kh - 1, ow + kw - 1)]


class Conv2dGradWeights(Op):
    """(x, gz) -> gw: the gradient of ``conv2d`` with respect to the kernels
    (a valid correlation of the images with gz)."""

    __props__ = ()

    def make_node(self, x, gz):
        x, gz = _same_dtype(_tensor4(x), _tensor4(gz))
        (_B, C, H, W), (_, F, oh, ow) = x.type.shape, gz.type.shape
        gw = _output(x.dtype, (F, C, _sub(H, oh), _sub(W, ow)))
        return Apply(self, [x, gz], [gw])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = _np_conv2d_grad_weights(*inputs).astype(
            node.outputs[0].dtype)

    def infer_shape(self, fgraph, node, shapes):
        (_B, C, H, W), (_, F, oh, ow) = shapes
        return [(F, C, H - oh + 1, W - ow + 1)]


class MaxPool2d(Op):
    """x -> the max of each complete (ph, pw) window, see ``max_pool_2d``."""

    __props__ = ("poolsize",)

    def __init__(self, poolsize):
        self.poolsize = tuple(poolsize)

    def make_node(self, x):
        x = _tensor4(x)
        ph, pw = self.poolsize
        B, C, H, W = x.type.shape
        out = _output(x.dtype, (B, C, None if H is None else H // ph,
                                None if W is None else W // pw))
        return Apply(self, [x], [out])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = _np_max_pool(inputs[0], *self.poolsize)

    def infer_shape(self, fgraph, node, shapes):
        (B, C, H, W), = shapes
        ph, pw = self.poolsize
        return [(B, C, H // ph, W // pw)]

    def pullback(self, inputs, outputs, cotangents):
        return [MaxPool2dGrad(self.poolsize)(inputs[0], cotangents[0])]


class MaxPool2dGrad(Op):
    """(x, gz) -> gx: each window's gradient goes to every element equal to
    the window's maximum; the dropped border gets zero."""

    __props__ = ("poolsize",)

    def __init__(self, poolsize):
        self.poolsize = tuple(poolsize)

    def make_node(self, x, gz):
        x, gz = _same_dtype(_tensor4(x), _tensor4(gz))
        return Apply(self, [x, gz], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = _np_max_pool_grad(*inputs, *self.poolsize)

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[0]]


# ------------------------------------------------- backend registrations
def _register_numba():
    from pytensor.link.numba.dispatch.basic import (
        register_funcify_default_op_cache_key,
    )

    # Each returns a jitted function of the Op's inputs, and a version number
    # for PyTensor's on-disk cache (keyed by the Op's class and props): a hash
    # of this file, so that editing a kernel can never run a stale cached one.
    @register_funcify_default_op_cache_key(Conv2d)
    def _conv(op, node, **kwargs):
        return _nb_conv2d, _SOURCE_VERSION

    @register_funcify_default_op_cache_key(Conv2dGradInputs)
    def _conv_grad_inputs(op, node, **kwargs):
        return _nb_conv2d_grad_inputs, _SOURCE_VERSION

    @register_funcify_default_op_cache_key(Conv2dGradWeights)
    def _conv_grad_weights(op, node, **kwargs):
        return _nb_conv2d_grad_weights, _SOURCE_VERSION

    @register_funcify_default_op_cache_key(MaxPool2d)
    def _pool(op, node, **kwargs):
        ph, pw = op.poolsize

        @numba.njit
        def max_pool(x):
            return _nb_max_pool(x, ph, pw)
        return max_pool, _SOURCE_VERSION

    @register_funcify_default_op_cache_key(MaxPool2dGrad)
    def _pool_grad(op, node, **kwargs):
        ph, pw = op.poolsize

        @numba.njit
        def max_pool_grad(x, gz):
            return _nb_max_pool_grad(x, gz, ph, pw)
        return max_pool_grad, _SOURCE_VERSION


def _register_jax():
    import jax
    import jax.numpy as jnp
    from pytensor.link.jax.dispatch import jax_funcify

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

    def pool_max_mask(x, ph, pw):
        B, C, H, W = x.shape
        oh, ow = H // ph, W // pw
        windows = x[:, :, :oh * ph, :ow * pw].reshape(B, C, oh, ph, ow, pw)
        return windows, windows.max(axis=(3, 5))

    # (PyTensor's JAX backend may hand a float32 Op a float64 input: each
    # function casts to its output's dtype.)
    @jax_funcify.register(Conv2d)
    def _conv(op, node=None, **kwargs):
        dtype = node.outputs[0].dtype
        return lambda x, w: conv(x.astype(dtype), w.astype(dtype))

    @jax_funcify.register(Conv2dGradInputs)
    def _conv_grad_inputs(op, node=None, **kwargs):
        dtype = node.outputs[0].dtype

        def conv_grad_inputs(gz, w):
            gz, w = gz.astype(dtype), w.astype(dtype)
            x = jnp.zeros((gz.shape[0], w.shape[1], gz.shape[2] + w.shape[2] - 1,
                           gz.shape[3] + w.shape[3] - 1), gz.dtype)
            return jax.vjp(lambda x: conv(x, w), x)[1](gz)[0]
        return conv_grad_inputs

    @jax_funcify.register(Conv2dGradWeights)
    def _conv_grad_weights(op, node=None, **kwargs):
        dtype = node.outputs[0].dtype

        def conv_grad_weights(x, gz):
            x, gz = x.astype(dtype), gz.astype(dtype)
            w = jnp.zeros((gz.shape[1], x.shape[1], x.shape[2] - gz.shape[2] + 1,
                           x.shape[3] - gz.shape[3] + 1), x.dtype)
            return jax.vjp(lambda w: conv(x, w), w)[1](gz)[0]
        return conv_grad_weights

    @jax_funcify.register(MaxPool2d)
    def _pool(op, node=None, **kwargs):
        ph, pw = op.poolsize
        dtype = node.outputs[0].dtype
        return lambda x: pool_max_mask(x.astype(dtype), ph, pw)[1]

    @jax_funcify.register(MaxPool2dGrad)
    def _pool_grad(op, node=None, **kwargs):
        ph, pw = op.poolsize
        dtype = node.outputs[0].dtype

        def max_pool_grad(x, gz):
            x, gz = x.astype(dtype), gz.astype(dtype)
            windows, pooled = pool_max_mask(x, ph, pw)
            B, C, oh, ow = pooled.shape
            is_max = windows == pooled[:, :, :, None, :, None]
            g = (is_max * gz[:, :, :, None, :, None]).astype(dtype)
            g = g.reshape(B, C, oh * ph, ow * pw)
            return jnp.zeros_like(x).at[:, :, :oh * ph, :ow * pw].set(g)
        return max_pool_grad


_SOURCE_VERSION = int(hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12], 16)
_register_numba()
try:
    _register_jax()
except ImportError:  # jax is optional: only the JAX backend needs it
    pass
