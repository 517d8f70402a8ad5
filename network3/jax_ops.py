"""jax_ops.py: ops.py's Ops for PyTensor's JAX backend (CPU or GPU).

The Ops' definitions from ops.py (``im2col_conv``, ``window_max``) on
jax.numpy arrays (on the CPU at small batches im2col beat XLA's own
convolution); the conv gradients are JAX's own VJPs of it, the pooling
gradient goes to every element equal to its window's maximum, as
MaxPool2dGrad's.
``ops.py`` imports this module when an Op is put in a graph after jax was
imported, and ``backend`` when the JAX backend is chosen: importing
network3 never imports jax.
"""

import jax
import jax.numpy as jnp
from pytensor.link.jax.dispatch import jax_funcify
from pytensor.tensor.elemwise import CAReduce

from . import ops

# PyTensor's JAX backend turns JAX's 64-bit types on only when floatX is
# float64 as it imports; network3 sets floatX to float32, and its float64
# networks (and PyTensor's float64 accumulators) need them on.
jax.config.update("jax_enable_x64", True)


def conv(x, w):
    return ops.im2col_conv(jnp, x, w, x.shape, w.shape)


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
    return ops.window_max(x, x.shape, (ph, pw))


def pool_grad(x, pooled, gz, ph, pw):
    B, C, oh, ow = pooled.shape
    is_max = windows(x, ph, pw, oh, ow) == pooled[:, :, :, None, :, None]
    g = (is_max * gz[:, :, :, None, :, None]).astype(gz.dtype)
    g = g.reshape(B, C, oh * ph, ow * pw)
    return jnp.zeros(x.shape, gz.dtype).at[:, :, :oh * ph, :ow * pw].set(g)


FUNCTIONS = {ops.Conv2d: conv, ops.Conv2dGradInputs: conv_grad_inputs,
             ops.Conv2dGradWeights: conv_grad_weights, ops.MaxPool2d: pool,
             ops.MaxPool2dGrad: pool_grad}


def _jax_funcify(op, node=None, **kwargs):
    function = FUNCTIONS[type(op)]
    poolsize = getattr(op, "poolsize", ())
    # PyTensor's JAX backend may hand a float32 Op a float64 input: cast to
    # the output's dtype
    dtype = node.outputs[0].dtype
    return lambda *inputs: function(*(i.astype(dtype) for i in inputs), *poolsize)


for _op_class in FUNCTIONS:
    jax_funcify.register(_op_class)(_jax_funcify)


# PyTensor's JAX reductions (3.0 to 3.3) return their accumulator's dtype,
# not their output's: a float32 sum accumulates in float64 and stayed
# float64, which spread through the step until a float32 network's
# parameters came back float64.  Accumulate as PyTensor says, return the
# output's dtype, as its C and Numba backends do.
_stock_careduce = jax_funcify.dispatch(CAReduce)


@jax_funcify.register(CAReduce)
def _careduce_in_output_dtype(op, node=None, **kwargs):
    reduce = _stock_careduce(op, node=node, **kwargs)
    if node is None:
        return reduce
    dtype = node.outputs[0].dtype
    return lambda x: reduce(x).astype(dtype)
