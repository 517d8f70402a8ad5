"""accel/pooled.py: a conv layer's gradients through its max-pooling, from
the numbers that are not zero.

The gradient that reaches a conv layer through max-pooling, ``gz =
MaxPool2dGrad(z, pooled, gp)``, is zero except at each window's maximum: a
(2, 2) pool leaves at most a quarter of it (more only where numbers tie for
a window's maximum), and a ReLU above the pool zeroes about half of that.
The im2col products of the weights' gradient and the input's gradient
multiply all of it.  The two Ops here take the pool's inputs instead of gz
and visit only the windows whose gradient ``gp`` is not zero, and in each
the elements equal to the window's maximum (each gets the window's
gradient, as ``MaxPool2dGrad`` gives it):

* ``PooledConv2dGradWeights``: for each such element (b, f, i, j) with
  gradient g, ``gw[f] += g * (the image patch under it)``;
* ``PooledConv2dGradInputs``: ``gx[b, patch] += g * (kernel f)``.

Where more than ``DENSE_ABOVE`` of the windows have a gradient (a sigmoid or
tanh layer: all of them), the products are as fast, and each node takes
PyTensor's path instead (gz, then the BLAS product, over the forward's
im2col columns for the weights), decided at each call.

Both work on channel-last copies, (B, H, W*C), in which each row of a patch
is one run of kw*C numbers in memory, so the inner loop is a long
vectorised multiply-add.  The numbers are the book's to rounding (each sum
in an order of its own); they differ only where a skipped product would
have been 0 * inf or 0 * NaN (NaN in the plain graph).

``local_pooled_conv_grads`` replaces ``Conv2dGradWeights(x, gz)`` and
``Conv2dGradInputs(gz, w)`` when gz is a ``MaxPool2dGrad`` and a patch row
has at least ``MIN_ROW`` numbers (the book's second conv layers: 20
channels times 5; its first layers, 1 times 5, stay on BLAS).  It runs
before rewrites.py's ``local_conv_cols``.  docs/performance.md has the
times against BLAS, with how they were measured.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.tensor.shape import SpecifyShape

from ..numba_ops import nb_max_pool_grad
from ..ops import (
    Conv2dGradInputs,
    Conv2dGradWeights,
    MaxPool2dGrad,
    np_conv2d_grad_inputs,
    np_conv2d_grad_weights,
    np_max_pool_grad,
)
from . import kernels
from .kernels import inner

# Shorter patch rows (C * kw numbers) vectorise poorly: BLAS is faster
MIN_ROW = 64
# the nodes take BLAS's path where a larger share of the pooled gradient is
# nonzero
DENSE_ABOVE = 0.75


#### The Ops
class PooledConv2dGradWeights(Op):
    """(cols, x, z, pooled, gp) -> ``Conv2dGradWeights(x, MaxPool2dGrad(z,
    pooled, gp))`` for kernels of shape (kh, kw); cols is x's ``Im2col``
    (rewrites.py), which the forward product reads too."""

    __props__ = ("poolsize", "kh", "kw")

    def __init__(self, poolsize, kh, kw):
        self.poolsize, self.kh, self.kw = tuple(poolsize), kh, kw

    def make_node(self, cols, x, z, pooled, gp):
        F, C = z.type.shape[1], x.type.shape[1]
        gw = pt.tensor(dtype=x.dtype, shape=(F, C, self.kh, self.kw))
        return Apply(self, [cols, x, z, pooled, gp], [gw])

    def perform(self, node, inputs, outputs):
        _cols, x, z, pooled, gp = inputs
        gz = np_max_pool_grad(z, pooled, gp, *self.poolsize)
        outputs[0][0] = np_conv2d_grad_weights(x, gz).astype(node.outputs[0].dtype)


class PooledConv2dGradInputs(Op):
    """(z, pooled, gp, w) -> ``Conv2dGradInputs(MaxPool2dGrad(z, pooled,
    gp), w)``."""

    __props__ = ("poolsize",)

    def __init__(self, poolsize):
        self.poolsize = tuple(poolsize)

    def make_node(self, z, pooled, gp, w):
        B, _F, oh, ow = z.type.shape
        _, C, kh, kw = w.type.shape
        gx = pt.tensor(dtype=w.dtype, shape=(B, C, oh + kh - 1, ow + kw - 1))
        return Apply(self, [z, pooled, gp, w], [gx])

    def perform(self, node, inputs, outputs):
        z, pooled, gp, w = inputs
        gz = np_max_pool_grad(z, pooled, gp, *self.poolsize)
        outputs[0][0] = np_conv2d_grad_inputs(gz, w).astype(node.outputs[0].dtype)


#### The rewrite
def _pool_gradient(gz):
    """The ``MaxPool2dGrad`` node that gz comes from (through shape checks),
    or None."""
    while gz.owner is not None and isinstance(gz.owner.op, SpecifyShape):
        gz = gz.owner.inputs[0]
    if gz.owner is not None and isinstance(gz.owner.op, MaxPool2dGrad):
        return gz.owner
    return None


@node_rewriter([Conv2dGradWeights, Conv2dGradInputs])
def local_pooled_conv_grads(fgraph, node):
    """Conv2dGradWeights(x, MaxPool2dGrad(z, pooled, gp))
        ->  PooledConv2dGradWeights(Im2col(x), x, z, pooled, gp)
    Conv2dGradInputs(MaxPool2dGrad(z, pooled, gp), w)
        ->  PooledConv2dGradInputs(z, pooled, gp, w)
    (static shapes, one dtype, patch rows of at least MIN_ROW numbers)"""
    weights = isinstance(node.op, Conv2dGradWeights)
    x_or_w = node.inputs[0] if weights else node.inputs[1]
    pool = _pool_gradient(node.inputs[1] if weights else node.inputs[0])
    if pool is None:
        return None
    z, pooled, gp = pool.inputs
    variables = [x_or_w, z, pooled, gp]
    if (any(None in v.type.shape for v in variables)
            or len({v.type.dtype for v in variables}) != 1):
        return None
    C = x_or_w.type.shape[1]
    kh, kw = x_or_w.type.shape[2:]  # w's, or x's H and W
    if weights:
        kh, kw = kh - z.type.shape[2] + 1, kw - z.type.shape[3] + 1
    if C * kw < MIN_ROW:
        return None
    if weights:
        from .rewrites import Im2col  # (rewrites.py imports this module)
        im2col = Im2col(kh, kw)
        cols = next((client.outputs[0] for client, _ in fgraph.clients[x_or_w]
                     if client.op == im2col), None)
        if cols is None:  # local_conv_cols gives the forward product this one
            cols = im2col(x_or_w)
        return [PooledConv2dGradWeights(pool.op.poolsize, kh, kw)(
            cols, x_or_w, z, pooled, gp)]
    return [PooledConv2dGradInputs(pool.op.poolsize)(z, pooled, gp, x_or_w)]


# before rewrites.py's _REWRITES (48.5), whose local_conv_cols and
# local_blas_conv_grad_inputs would take these nodes to BLAS
REWRITES = dfs_rewriter(local_pooled_conv_grads, name="network3_pooled_conv_grads")
POSITIONS = ((REWRITES, 48.4),)


#### Numba
@inner
def nb_channels_last(x):
    """(B, C, H, W) -> (B, H, W * C)."""
    B, C, H, W = x.shape
    out = np.empty((B, H, W * C), x.dtype)
    for b in range(B):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    out[b, i, j * C + c] = x[b, c, i, j]
    return out


# The sums below are chains of multiply-adds ("contract": fused, one
# rounding each); the order of the terms is the loops'
@inner(fastmath={"contract"})
def nb_pooled_grad_weights(x, z, pooled, gp, kh, kw, ph, pw):
    """``PooledConv2dGradWeights`` of C-ordered arrays."""
    B, C = x.shape[:2]
    F, oh, ow = z.shape[1:]
    row = kw * C
    xc = nb_channels_last(x)
    # gw[f, c, kh-1-u, kw-1-v] (the kernels are flipped: a true convolution)
    # is at flipped[f, u, v*C + c]
    flipped = np.zeros((F, kh, row), x.dtype)
    for b in range(B):
        for f in range(F):
            for pi in range(oh // ph):
                for pj in range(ow // pw):
                    g = gp[b, f, pi, pj]
                    if g == 0:
                        continue
                    top = pooled[b, f, pi, pj]
                    for i in range(pi * ph, pi * ph + ph):
                        for j in range(pj * pw, pj * pw + pw):
                            if z[b, f, i, j] != top:
                                continue
                            for u in range(kh):
                                patch = xc[b, i + u, j * C:j * C + row]
                                acc = flipped[f, u]
                                for k in range(row):
                                    acc[k] += g * patch[k]
    gw = np.empty((F, C, kh, kw), x.dtype)
    for f in range(F):
        for c in range(C):
            for u in range(kh):
                for v in range(kw):
                    gw[f, c, u, v] = flipped[f, kh - 1 - u, (kw - 1 - v) * C + c]
    return gw


@inner(fastmath={"contract"})
def nb_pooled_grad_inputs(z, pooled, gp, w, ph, pw):
    """``PooledConv2dGradInputs`` of C-ordered arrays."""
    B, F, oh, ow = z.shape
    C, kh, kw = w.shape[1:]
    H, W, row = oh + kh - 1, ow + kw - 1, kw * C
    flipped = np.empty((F, kh, row), w.dtype)   # as in nb_pooled_grad_weights
    for f in range(F):
        for c in range(C):
            for u in range(kh):
                for v in range(kw):
                    flipped[f, kh - 1 - u, (kw - 1 - v) * C + c] = w[f, c, u, v]
    gxc = np.zeros((B, H, W * C), w.dtype)      # gx, channels last
    for b in range(B):
        for f in range(F):
            for pi in range(oh // ph):
                for pj in range(ow // pw):
                    g = gp[b, f, pi, pj]
                    if g == 0:
                        continue
                    top = pooled[b, f, pi, pj]
                    for i in range(pi * ph, pi * ph + ph):
                        for j in range(pj * pw, pj * pw + pw):
                            if z[b, f, i, j] != top:
                                continue
                            for u in range(kh):
                                patch = gxc[b, i + u, j * C:j * C + row]
                                kernel = flipped[f, u]
                                for k in range(row):
                                    patch[k] += g * kernel[k]
    gx = np.empty((B, C, H, W), w.dtype)
    for b in range(B):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    gx[b, c, i, j] = gxc[b, i, j * C + c]
    return gx


def _cache_key(name):
    return hashlib.sha256(f"network3 pooled {name} {_SOURCE}".encode()).hexdigest()


def _numba_funcify_grad_weights(op, node, **kwargs):
    (ph, pw), kh, kw = op.poolsize, op.kh, op.kw
    B, C = node.inputs[1].type.shape[:2]
    _, F, oh, ow = node.inputs[2].type.shape
    dense_above = int(DENSE_ABOVE * B * F * (oh // ph) * (ow // pw))
    per_image = kernels.per_image(oh, ow)
    from_cols = (kernels.nb_conv2d_grad_weights_cols_per_image if per_image
                 else kernels.nb_conv2d_grad_weights_cols_batch)

    @inner
    def pooled_conv2d_grad_weights(cols, x, z, pooled, gp):
        gp = np.ascontiguousarray(gp)
        if np.count_nonzero(gp) > dense_above:  # BLAS's product is faster
            gz = nb_max_pool_grad(z, pooled, gp, B, F, oh, ow, ph, pw)
            return from_cols(cols, gz, B, F, oh, ow, C, kh, kw)
        return nb_pooled_grad_weights(
            np.ascontiguousarray(x), np.ascontiguousarray(z), np.ascontiguousarray(pooled),
            gp, kh, kw, ph, pw)
    return pooled_conv2d_grad_weights, _cache_key(
        f"grad_weights {B} {C} {F} {oh} {ow} {ph} {pw} {kh} {kw} {dense_above} {per_image}")


def _numba_funcify_grad_inputs(op, node, **kwargs):
    ph, pw = op.poolsize
    B, F, oh, ow = node.inputs[0].type.shape
    _, C, kh, kw = node.inputs[3].type.shape
    dense_above = int(DENSE_ABOVE * B * F * (oh // ph) * (ow // pw))

    @inner
    def pooled_conv2d_grad_inputs(z, pooled, gp, w):
        gp = np.ascontiguousarray(gp)
        if np.count_nonzero(gp) > dense_above:  # as fast as BLAS's product
            gz = nb_max_pool_grad(z, pooled, gp, B, F, oh, ow, ph, pw)
            return kernels.nb_conv2d_grad_inputs(gz, w, B, F, oh, ow, C, kh, kw)
        return nb_pooled_grad_inputs(
            np.ascontiguousarray(z), np.ascontiguousarray(pooled), gp,
            np.ascontiguousarray(w), ph, pw)
    return pooled_conv2d_grad_inputs, _cache_key(
        f"grad_inputs {B} {F} {oh} {ow} {C} {kh} {kw} {ph} {pw} {dense_above}")


NUMBA_FUNCTIONS = {
    PooledConv2dGradWeights: _numba_funcify_grad_weights,
    PooledConv2dGradInputs: _numba_funcify_grad_inputs,
}

# the cache keys: this file and kernels.py
_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest() + kernels._SOURCE
