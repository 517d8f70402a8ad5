"""ops.py: the two CNN primitives PyTensor 3 no longer ships.

Theano had ``conv.conv2d`` and ``downsample.max_pool_2d``; PyTensor removed
both.  Each is here twice:

* as a **definition** in ordinary tensor algebra (``conv2d_reference``,
  ``max_pool_2d_reference``): slicing, stacking, one ``dot``, a reshape and a
  ``max``.  PyTensor differentiates these by itself and they compile on every
  backend.  They are the readable statement of what the ops compute, and the
  tests check everything else against them and against scipy;
* as five small PyTensor **Ops** (``Conv2d`` and its two gradients,
  ``MaxPool2d`` and its gradient), which is what the layers use.  Why not the
  definitions?  Differentiated, the convolution's graph holds 25 slices and
  25 ``inc_subtensor`` per layer: Numba took minutes to compile the book's
  two-layer network and ran it slower than PyTorch.  A few big Ops with
  hand-written kernels compile in a fraction of that and run faster
  (docs/performance.md).

The Ops' arithmetic is here in numpy (``perform``: the C backend and the
Python VM run it); ``numba_ops.py`` gives PyTensor's Numba backend the same
arithmetic and ``jax_ops.py`` its JAX backend.  Both are registered through
PyTensor's dispatch the first time an Op of this module is put in a graph
(``_register_backends``), so that a function a user compiles of a layer's
output with any mode runs them, and importing network3 loads neither Numba
nor jax.  The Numba accelerator (``network3/accel``) adds faster versions
of its own; nothing here imports it.
"""

import sys

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.scalar import upcast


#### The public functions (what the layers call)
def conv2d(x, w, image_shape, filter_shape):
    """Valid 2-D *true* convolution, as Theano's ``conv.conv2d``.

    ``x``: (batch, channels, h, w) images; ``w``: (filters, channels, fh, fw)
    kernels.  Returns (batch, filters, h - fh + 1, w - fw + 1) with

        out[b, f, i, j] = sum_{c,u,v} x[b, c, i+u, j+v] * w[f, c, fh-1-u, fw-1-v]

    i.e. the kernel is flipped (a true convolution, not a correlation), which
    matters when loading weights trained by Theano.

    The shapes are passed in as Python tuples: they fix the graph's static
    shapes, which the JAX backend needs and the Numba kernels specialise on.
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
    each window (the alternative to max pooling that the chapter mentions).
    Plain tensor algebra: cheap enough not to need an Op."""
    batch, channels, h, wd = input_shape
    ph, pw = poolsize
    oh, ow = h // ph, wd // pw
    x = pt.specify_shape(x, tuple(input_shape))[:, :, :oh * ph, :ow * pw]
    windows = x.reshape((batch, channels, oh, ph, ow, pw))
    return pt.sqrt((windows ** 2).sum(axis=(3, 5)))


#### The definitions, in tensor algebra
def conv2d_reference(x, w, image_shape, filter_shape):
    """``conv2d`` written with ordinary tensor operations (``im2col_conv``
    on PyTensor tensors)."""
    x = pt.specify_shape(x, tuple(image_shape))
    w = pt.specify_shape(w, tuple(filter_shape))
    return im2col_conv(pt, x, w, image_shape, filter_shape)


def im2col_conv(xp, x, w, image_shape, filter_shape):
    """The valid true convolution as im2col and one matrix product, for
    PyTensor's tensors (``xp`` = pytensor.tensor) or jax.numpy's arrays
    (jax_ops.py): one shifted view of the image per kernel position,
    stacked, then one product with the kernels.  The views are taken in
    reverse order: pairing view (u, v) with kernel entry (fh-1-u, fw-1-v) is
    the kernel flip, done without a negative-step slice (which some backends
    reject)."""
    batch, channels, h, wd = image_shape
    n_filters, _, fh, fw = filter_shape
    oh, ow = h - fh + 1, wd - fw + 1
    views = [x[:, :, u:u + oh, v:v + ow]
             for u in reversed(range(fh)) for v in reversed(range(fw))]
    cols = xp.stack(views, axis=2)                # (B, C, fh*fw, oh, ow)
    cols = cols.transpose(0, 3, 4, 1, 2)          # (B, oh, ow, C, fh*fw)
    cols = cols.reshape((batch * oh * ow, channels * fh * fw))
    kernels_ = w.reshape((n_filters, channels * fh * fw))
    out = xp.dot(cols, kernels_.T)                # (B*oh*ow, F): one matrix product
    out = out.reshape((batch, oh, ow, n_filters))
    return out.transpose(0, 3, 1, 2)              # (B, F, oh, ow)


def max_pool_2d_reference(x, input_shape, poolsize):
    """``max_pool_2d`` as a crop, a reshape into windows and a ``max``."""
    x = pt.specify_shape(x, tuple(input_shape))
    return window_max(x, input_shape, poolsize)


def window_max(x, input_shape, poolsize):
    """The max of each complete window, for PyTensor's tensors or
    jax.numpy's arrays."""
    batch, channels, h, wd = input_shape
    ph, pw = poolsize
    oh, ow = h // ph, wd // pw
    x = x[:, :, :oh * ph, :ow * pw]               # crop the incomplete windows
    windows = x.reshape((batch, channels, oh, ph, ow, pw))
    return windows.max(axis=(3, 5))               # (B, C, oh, ow)


#### The Ops' arithmetic in numpy
# Notation: x (B, C, H, W) images, w (F, C, kh, kw) kernels, z (B, F, oh, ow)
# the convolution's output, g* gradients, (ph, pw) the pooling window.
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


def np_conv2d(x, w):
    F, _C, kh, kw = w.shape
    B, _, H, W = x.shape
    z = w.reshape(F, -1) @ im2col(x, kh, kw)     # (F, B*oh*ow)
    return z.reshape(F, B, H - kh + 1, W - kw + 1).transpose(1, 0, 2, 3)


def np_conv2d_grad_inputs(gz, w):
    B, F, oh, ow = gz.shape
    _, C, kh, kw = w.shape
    gz = gz.transpose(1, 0, 2, 3).reshape(F, -1)  # (F, B*oh*ow)
    gcols = w.reshape(F, -1).T @ gz               # (C*kh*kw, B*oh*ow)
    return col2im(gcols, (B, C, oh + kh - 1, ow + kw - 1), kh, kw)


def np_conv2d_grad_weights(x, gz):
    _B, F, oh, ow = gz.shape
    kh, kw = x.shape[2] - oh + 1, x.shape[3] - ow + 1
    gz = gz.transpose(1, 0, 2, 3).reshape(F, -1)  # (F, B*oh*ow)
    gw = gz @ im2col(x, kh, kw).T                 # (F, C*kh*kw)
    return gw.reshape(F, x.shape[1], kh, kw)


def _windows(x, ph, pw, oh, ow):
    B, C = x.shape[:2]
    return x[:, :, :oh * ph, :ow * pw].reshape(B, C, oh, ph, ow, pw)


def np_max_pool(x, ph, pw):
    return _windows(x, ph, pw, x.shape[2] // ph, x.shape[3] // pw).max(axis=(3, 5))


def np_max_pool_grad(x, pooled, gz, ph, pw):
    B, C, oh, ow = pooled.shape
    is_max = _windows(x, ph, pw, oh, ow) == pooled[:, :, :, None, :, None]
    gx = np.zeros_like(x)                         # the dropped border stays 0
    gx[:, :, :oh * ph, :ow * pw] = (
        is_max * gz[:, :, :, None, :, None]).reshape(B, C, oh * ph, ow * pw)
    return gx


#### The Ops
# An Op says what its output looks like (make_node), how to compute it
# (perform: the numpy arithmetic above; the compiled backends use
# numba_ops.py's and jax_ops.py's registrations instead), its output shape
# (infer_shape) and, for the forward Ops, its gradient as other Ops
# (pullback).  infer_shape takes ``*args``: PyTensor 3.0 passes (fgraph,
# node, shapes), 3.3 passes (node, shapes) and deprecates the first form.

def _register_backends():
    """Give PyTensor's Numba backend (and JAX's, once jax is imported) this
    module's Ops: called by every make_node, so before any graph with one of
    them is compiled; each registration runs once."""
    if "numba" not in _REGISTERED:
        _REGISTERED.add("numba")
        from . import numba_ops  # noqa: F401  (registers on import)
    if "jax" not in _REGISTERED and "jax" in sys.modules:
        _REGISTERED.add("jax")
        from . import jax_ops  # noqa: F401


_REGISTERED = set()


def _tensor4(value):
    _register_backends()
    value = pt.as_tensor_variable(value)
    if value.ndim != 4:
        raise ValueError(f"expected a 4-d tensor, got {value.ndim} dimensions")
    return value


def _same_dtype(*values):
    dtype = upcast(*(v.dtype for v in values))
    return [pt.cast(v, dtype) for v in values]


def _valid(a, b):
    """a - b + 1 for static shapes, None when either is unknown."""
    return None if a is None or b is None else a - b + 1


def _full(a, b):
    """a + b - 1 for static shapes, None when either is unknown."""
    return None if a is None or b is None else a + b - 1


class Conv2d(Op):
    """(x, w) -> z: valid true convolution, see ``conv2d``."""

    __props__ = ()

    def make_node(self, x, w):
        x, w = _same_dtype(_tensor4(x), _tensor4(w))
        (B, _C, H, W), (F, _, kh, kw) = x.type.shape, w.type.shape
        z = pt.tensor(dtype=x.dtype, shape=(B, F, _valid(H, kh), _valid(W, kw)))
        return Apply(self, [x, w], [z])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np_conv2d(*inputs).astype(node.outputs[0].dtype)

    def infer_shape(self, *args):
        shapes = args[-1]
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
        gx = pt.tensor(dtype=gz.dtype, shape=(B, C, _full(oh, kh), _full(ow, kw)))
        return Apply(self, [gz, w], [gx])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np_conv2d_grad_inputs(*inputs).astype(
            node.outputs[0].dtype)

    def infer_shape(self, *args):
        shapes = args[-1]
        (B, _F, oh, ow), (_, C, kh, kw) = shapes
        return [(B, C, oh + kh - 1, ow + kw - 1)]


class Conv2dGradWeights(Op):
    """(x, gz) -> gw: the gradient of ``conv2d`` with respect to the kernels
    (a valid correlation of the images with gz)."""

    __props__ = ()

    def make_node(self, x, gz):
        x, gz = _same_dtype(_tensor4(x), _tensor4(gz))
        (_B, C, H, W), (_, F, oh, ow) = x.type.shape, gz.type.shape
        gw = pt.tensor(dtype=x.dtype, shape=(F, C, _valid(H, oh), _valid(W, ow)))
        return Apply(self, [x, gz], [gw])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np_conv2d_grad_weights(*inputs).astype(
            node.outputs[0].dtype)

    def infer_shape(self, *args):
        shapes = args[-1]
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
        out = pt.tensor(dtype=x.dtype, shape=(
            B, C, None if H is None else H // ph, None if W is None else W // pw))
        return Apply(self, [x], [out])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np_max_pool(inputs[0], *self.poolsize)

    def infer_shape(self, *args):
        shapes = args[-1]
        (B, C, H, W), = shapes
        ph, pw = self.poolsize
        return [(B, C, H // ph, W // pw)]

    def pullback(self, inputs, outputs, cotangents):
        # the pooled output is passed on: the gradient need not pool again
        return [MaxPool2dGrad(self.poolsize)(inputs[0], outputs[0], cotangents[0])]


class MaxPool2dGrad(Op):
    """(x, pooled, gz) -> gx: each window's gradient goes to every element
    equal to the window's maximum; the dropped border gets zero."""

    __props__ = ("poolsize",)

    def __init__(self, poolsize):
        self.poolsize = tuple(poolsize)

    def make_node(self, x, pooled, gz):
        x, pooled, gz = _same_dtype(_tensor4(x), _tensor4(pooled), _tensor4(gz))
        return Apply(self, [x, pooled, gz], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np_max_pool_grad(*inputs, *self.poolsize)

    def infer_shape(self, *args):
        shapes = args[-1]
        return [shapes[0]]

