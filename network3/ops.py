"""ops.py: the two CNN primitives PyTensor 3 no longer ships.

Theano had ``conv.conv2d`` and ``downsample.max_pool_2d``; PyTensor removed
both.  Here they are rebuilt from ordinary tensor operations (slicing,
stacking, reshaping, ``dot`` and ``max``), so that

* PyTensor differentiates them itself (no hand-written gradient to get wrong),
* they compile on every backend: Numba, C and JAX (measured: the im2col form
  below beat both ``pytensor.tensor.signal.convolve2d``, which runs in Python
  object mode, and XLA's own convolution on small batches).

Both are tested against independent numpy/scipy references in
``tests/test_ops.py``.
"""

import pytensor.tensor as pt


def conv2d(x, w, image_shape, filter_shape):
    """Valid 2-D *true* convolution, as Theano's ``conv.conv2d``.

    ``x``: (batch, channels, h, w) images; ``w``: (filters, channels, fh, fw)
    kernels.  Returns (batch, filters, h - fh + 1, w - fw + 1) with

        out[b, f, i, j] = sum_{c,u,v} x[b, c, i+u, j+v] * w[f, c, fh-1-u, fw-1-v]

    i.e. the kernel is flipped (a true convolution, not a correlation), which
    matters when loading weights trained by Theano.

    The shapes are passed in as Python tuples, so every reshape below has
    static sizes (the JAX backend requires that).
    """
    batch, channels, h, wd = image_shape
    n_filters, w_channels, fh, fw = filter_shape
    oh, ow = h - fh + 1, wd - fw + 1
    # static shapes let every reshape (and its gradient) compile on JAX
    x = pt.specify_shape(x, image_shape)
    w = pt.specify_shape(w, filter_shape)
    # im2col: one shifted view of the image per kernel position.  The
    # positions are taken in reverse order: pairing view (u, v) with kernel
    # entry (fh-1-u, fw-1-v) is the kernel flip, done without a negative-step
    # slice (which some backends reject).
    views = [x[:, :, u:u + oh, v:v + ow]
             for u in reversed(range(fh)) for v in reversed(range(fw))]
    cols = pt.stack(views, axis=2)                # (B, C, fh*fw, oh, ow)
    cols = cols.dimshuffle(0, 3, 4, 1, 2)         # (B, oh, ow, C, fh*fw)
    cols = cols.reshape((batch * oh * ow, channels * fh * fw))
    kernels = w.reshape((n_filters, channels * fh * fw))
    out = pt.dot(cols, kernels.T)                 # (B*oh*ow, F): one matrix product
    out = out.reshape((batch, oh, ow, n_filters))
    return out.dimshuffle(0, 3, 1, 2)             # (B, F, oh, ow)


def max_pool_2d(x, input_shape, poolsize):
    """Non-overlapping max pooling that ignores the border.

    ``x``: (batch, channels, h, w).  Windows of ``poolsize`` = (ph, pw) that
    do not fit entirely are dropped (Theano's ``ignore_border=True``), so the
    result is (batch, channels, h // ph, w // pw).
    """
    batch, channels, h, wd = input_shape
    ph, pw = poolsize
    oh, ow = h // ph, wd // pw
    x = pt.specify_shape(x, input_shape)
    x = x[:, :, :oh * ph, :ow * pw]               # crop the incomplete windows
    windows = x.reshape((batch, channels, oh, ph, ow, pw))
    return windows.max(axis=(3, 5))               # (B, C, oh, ow)


def l2_pool_2d(x, input_shape, poolsize):
    """Non-overlapping L2 pooling: the square root of the sum of squares of
    each window (the alternative to max pooling that the chapter mentions)."""
    batch, channels, h, wd = input_shape
    ph, pw = poolsize
    oh, ow = h // ph, wd // pw
    x = pt.specify_shape(x, input_shape)[:, :, :oh * ph, :ow * pw]
    windows = x.reshape((batch, channels, oh, ph, ow, pw))
    return pt.sqrt((windows ** 2).sum(axis=(3, 5)))
