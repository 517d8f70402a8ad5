"""layers.py: the book's three layer types, activation functions and dropout.

Each layer is three small parts, as in the book: a constructor that checks
its arguments and creates the shared parameters ``w`` and ``b``;
``params = [w, b]``; and ``set_inpt``, which builds the layer's part of the
symbolic graph twice: ``output`` (used for accuracy and prediction) and
``output_dropout`` (used for the training cost).

Semantics follow the book's ``network3.py`` exactly (see CONTRACT.md):
dropout is *not* inverted (the training graph masks the layer's input, the
inference graph scales the weighted input by 1 - p_dropout); the activation
of a ConvPoolLayer comes after pooling; the default initialisation is the
book's.  Two quirks of the original are fixed: every dropout layer draws its
own random stream (the original seeded them all with the same constant), and
a seed (``network3.seed``) makes initialisation and masks repeatable.  As in
the original, a dropout stream advances on every call of any function
compiled from a graph that draws its masks (``default_update``), and the
initial weights come from numpy's global generator unless ``network3.seed``
was called.
"""

import math
import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.traversal import ancestors
from pytensor.tensor import sigmoid, tanh  # re-exported, as the book did  # noqa: F401
from pytensor.tensor.random.op import RandomVariable

from . import ops
from .backend import as_floatX, floatX, get_rng


#### Activation functions for neurons
def linear(z):
    return z


def ReLU(z):
    # the book's expression: where z == 0, PyTensor's maximum sends the
    # gradient to its first argument, the constant, so ReLU's gradient at
    # exactly 0 is 0, as the original's (pt.maximum(z, 0) would give 1)
    return pt.maximum(0.0, z)


#### Initialisation
INITS = ("book", "corrected", "glorot", "he")


def init_weights(shape, n_in, n_out, init="book"):
    """Gaussian weights of ``shape``, zero mean, with the standard deviation
    of scheme ``init``:

    * ``"book"``: sqrt(1/n_out), what the book's experiments used (its author
      later called the n_out a mistake);
    * ``"corrected"``: sqrt(1/n_in), what the author intended;
    * ``"glorot"``: sqrt(2/(n_in + n_out));
    * ``"he"``: sqrt(2/n_in), for ReLU networks.
    """
    scales = {"book": np.sqrt(1.0 / n_out),
              "corrected": np.sqrt(1.0 / n_in),
              "glorot": np.sqrt(2.0 / (n_in + n_out)),
              "he": np.sqrt(2.0 / n_in)}
    if init not in scales:
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    return as_floatX(get_rng().normal(loc=0.0, scale=scales[init], size=shape))


def _shared(value, name):
    # With its shape in the type, every product and sum of the graph has a
    # static shape, and PyTensor needs no shape checks (SpecifyShape,
    # Assert) between the nodes: fewer nodes to compile and to run.
    # set_value then takes arrays of this shape only.
    value = as_floatX(value)
    return pytensor.shared(value, name=name, borrow=True, shape=value.shape)


#### Argument checks shared by the layers
def _check_positive_ints(layer, **values):
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or value <= 0:
            raise ValueError(
                f"{layer}: {name} must be a positive integer, got {value!r}")


def _check_p_dropout(layer, p_dropout):
    if not isinstance(p_dropout, (int, float, np.floating)) or \
            not 0.0 <= p_dropout < 1.0:
        raise ValueError(
            f"{layer}: p_dropout must be in [0, 1), got {p_dropout!r} "
            "(it is the probability of dropping a unit; 0 means no dropout)")


def _check_activation(layer, activation_fn):
    if not callable(activation_fn):
        raise TypeError(
            f"{layer}: activation_fn must be a function of a symbolic tensor "
            f"(such as network3.sigmoid or network3.ReLU), got {activation_fn!r}")
    # it must map a tensor elementwise: same number of dimensions and the
    # same static shape, for the 2-D (FC) and 4-D (conv) inputs it will get
    for z in (pt.tensor(dtype=floatX(), shape=(2, 3)),
              pt.tensor(dtype=floatX(), shape=(2, 3, 4, 5))):
        try:
            out = activation_fn(z)
        except Exception as err:
            raise TypeError(
                f"{layer}: activation_fn {activation_fn!r} failed on a symbolic "
                f"tensor: {err}") from None
        if not isinstance(out, pytensor.graph.basic.Variable):
            raise TypeError(
                f"{layer}: activation_fn {activation_fn!r} returned "
                f"{type(out).__name__}, not a symbolic tensor; write it with "
                "pytensor.tensor operations (e.g. pt.maximum(z, 0))")
        if out.ndim != z.ndim or any(
                o is not None and o != i for o, i in zip(out.type.shape, z.type.shape)):
            raise TypeError(
                f"{layer}: activation_fn {activation_fn!r} must act elementwise, "
                f"but it turns a tensor of shape {z.type.shape} into one of shape "
                f"{out.type.shape} (pt.max(z, 0) instead of pt.maximum(z, 0)?)")


#### Define layer types
class ConvPoolLayer:
    """A convolutional layer followed by max-pooling, as in the book:
    valid true convolution, non-overlapping max-pool (border ignored), then
    ``+ b`` and the activation.  No dropout in convolutional layers.

    ``filter_shape`` = (filters, input feature maps, filter height, width);
    ``image_shape`` = (mini-batch size, input feature maps, height, width);
    ``poolsize`` = (pool height, pool width).
    """

    def __init__(self, filter_shape, image_shape, poolsize=(2, 2),
                 activation_fn=sigmoid, init="book"):
        name = "ConvPoolLayer"
        filter_shape, image_shape, poolsize = (
            _int_tuple(name, "filter_shape", filter_shape, 4),
            _int_tuple(name, "image_shape", image_shape, 4),
            _int_tuple(name, "poolsize", poolsize, 2))
        n_filters, channels, fh, fw = filter_shape
        _, image_channels, h, w = image_shape
        if channels != image_channels:
            raise ValueError(
                f"{name}: filter_shape {filter_shape} expects {channels} input "
                f"feature maps but image_shape {image_shape} has "
                f"{image_channels}; make filter_shape[1] == image_shape[1]")
        if fh > h or fw > w:
            raise ValueError(
                f"{name}: filter {fh}x{fw} is larger than the {h}x{w} image "
                f"(filter_shape {filter_shape}, image_shape {image_shape})")
        ch, cw = h - fh + 1, w - fw + 1
        if poolsize[0] > ch or poolsize[1] > cw:
            raise ValueError(
                f"{name}: poolsize {poolsize} is larger than the {ch}x{cw} "
                "feature maps the convolution produces")
        _check_activation(name, activation_fn)
        self.filter_shape = filter_shape
        self.image_shape = image_shape
        self.poolsize = poolsize
        self.activation_fn = activation_fn
        # the book's n_out: each unit of the layer below feeds
        # filters * fh * fw / (pool area) units of this one
        n_in = channels * fh * fw
        n_out = n_filters * fh * fw / np.prod(poolsize)
        self.w = _shared(init_weights(filter_shape, n_in, n_out, init), "w")
        self.b = _shared(get_rng().normal(0.0, 1.0, size=(n_filters,)), "b")
        self.params = [self.w, self.b]

    @property
    def output_shape(self):
        """(filters, pooled height, pooled width) of one example's output."""
        n_filters, _, fh, fw = self.filter_shape
        _, _, h, w = self.image_shape
        return (n_filters, (h - fh + 1) // self.poolsize[0],
                (w - fw + 1) // self.poolsize[1])

    @property
    def input_size(self):
        return int(np.prod(self.image_shape[1:]))

    @property
    def output_size(self):
        return int(np.prod(self.output_shape))

    def output_for(self, inpt, batch_size):
        """The layer's output for ``batch_size`` examples (inference graph)."""
        image_shape = (batch_size,) + self.image_shape[1:]
        return self._output(inpt.reshape(image_shape), image_shape)

    def _output(self, x, image_shape):
        batch_size = image_shape[0]
        conv_out = ops.conv2d(x, self.w, image_shape, self.filter_shape)
        n_filters, _, fh, fw = self.filter_shape
        conv_shape = (batch_size, n_filters, image_shape[2] - fh + 1,
                      image_shape[3] - fw + 1)
        pooled_out = ops.max_pool_2d(conv_out, conv_shape, self.poolsize)
        # bias broadcast over (batch, ., height, width); activation after pooling
        return self.activation_fn(pooled_out + self.b.dimshuffle("x", 0, "x", "x"))

    def set_inpt(self, inpt, inpt_dropout, mini_batch_size):
        self.inpt = inpt.reshape(self.image_shape)
        # computed from self.inpt, so that the cost's gradient with respect
        # to it exists, as in the original
        self.output = self._output(self.inpt, self.image_shape)
        self.output_dropout = self.output  # no dropout in the convolutional layers

    def __repr__(self):
        return (f"ConvPoolLayer(filter_shape={self.filter_shape}, "
                f"image_shape={self.image_shape}, poolsize={self.poolsize}, "
                f"activation_fn={_fn_name(self.activation_fn)})")


class ConvLayer:
    """A convolutional layer on its own (the chapter: "it is easy to modify
    network3.py so the layers can be specified separately"):
    ``activation_fn(conv(inpt, w) + b)``.  ``ConvLayer(..., activation_fn=linear)``
    followed by ``PoolLayer(..., activation_fn=f)`` computes exactly what
    ``ConvPoolLayer(..., activation_fn=f)`` does.

    ``padding`` = (rows, columns) of zeros added on each side of the image;
    ``stride`` = (sy, sx) keeps every sy-th row and sx-th column of the
    convolution's output (computed in full: simple, not fast).
    """

    def __init__(self, filter_shape, image_shape, activation_fn=linear,
                 stride=(1, 1), padding=(0, 0), init="book"):
        name = "ConvLayer"
        filter_shape, image_shape, stride = (
            _int_tuple(name, "filter_shape", filter_shape, 4),
            _int_tuple(name, "image_shape", image_shape, 4),
            _int_tuple(name, "stride", stride, 2))
        padding = tuple(padding)
        if len(padding) != 2 or any(
                not isinstance(p, (int, np.integer)) or p < 0 for p in padding):
            raise ValueError(
                f"{name}: padding must be two non-negative integers, got {padding!r}")
        n_filters, channels, fh, fw = filter_shape
        _, image_channels, h, w = image_shape
        if channels != image_channels:
            raise ValueError(
                f"{name}: filter_shape {filter_shape} expects {channels} input "
                f"feature maps but image_shape {image_shape} has {image_channels}")
        if fh > h + 2 * padding[0] or fw > w + 2 * padding[1]:
            raise ValueError(
                f"{name}: filter {fh}x{fw} is larger than the padded "
                f"{h + 2 * padding[0]}x{w + 2 * padding[1]} image")
        _check_activation(name, activation_fn)
        self.filter_shape, self.image_shape = filter_shape, image_shape
        self.stride, self.padding = stride, (int(padding[0]), int(padding[1]))
        self.activation_fn = activation_fn
        n_in, n_out = channels * fh * fw, n_filters * fh * fw
        self.w = _shared(init_weights(filter_shape, n_in, n_out, init), "w")
        self.b = _shared(get_rng().normal(0.0, 1.0, size=(n_filters,)), "b")
        self.params = [self.w, self.b]

    @property
    def output_shape(self):
        n_filters, _, fh, fw = self.filter_shape
        _, _, h, w = self.image_shape
        (py, px), (sy, sx) = self.padding, self.stride
        return (n_filters, (h + 2 * py - fh) // sy + 1, (w + 2 * px - fw) // sx + 1)

    input_size = property(lambda self: int(np.prod(self.image_shape[1:])))
    output_size = property(lambda self: int(np.prod(self.output_shape)))

    def output_for(self, inpt, batch_size):
        x = inpt.reshape((batch_size,) + self.image_shape[1:])
        return self._output(x, batch_size)

    def _output(self, x, batch_size):
        _, channels, h, w = self.image_shape
        (py, px), (sy, sx) = self.padding, self.stride
        if py or px:  # zeros around the image
            padded = pt.zeros((batch_size, channels, h + 2 * py, w + 2 * px),
                              dtype=x.dtype)
            x = pt.set_subtensor(padded[:, :, py:py + h, px:px + w], x)
        shape = (batch_size, channels, h + 2 * py, w + 2 * px)
        conv_out = ops.conv2d(x, self.w, shape, self.filter_shape)
        if (sy, sx) != (1, 1):
            conv_out = conv_out[:, :, ::sy, ::sx]
        return self.activation_fn(conv_out + self.b.dimshuffle("x", 0, "x", "x"))

    def set_inpt(self, inpt, inpt_dropout, mini_batch_size):
        self.inpt = inpt.reshape((mini_batch_size,) + self.image_shape[1:])
        self.output = self._output(self.inpt, mini_batch_size)  # from self.inpt
        self.output_dropout = self.output  # no dropout in convolutional layers

    def __repr__(self):
        return (f"ConvLayer(filter_shape={self.filter_shape}, image_shape="
                f"{self.image_shape}, activation_fn={_fn_name(self.activation_fn)}, "
                f"stride={self.stride}, padding={self.padding})")


class PoolLayer:
    """Non-overlapping pooling of (batch, maps, h, w) inputs, the border
    ignored, then ``activation_fn``: ``mode="max"`` (the book's) or
    ``mode="l2"`` (the square root of each window's sum of squares, which
    the chapter mentions).  It has no parameters."""

    def __init__(self, input_shape, poolsize=(2, 2), mode="max",
                 activation_fn=linear):
        name = "PoolLayer"
        input_shape = _int_tuple(name, "input_shape", input_shape, 4)
        poolsize = _int_tuple(name, "poolsize", poolsize, 2)
        if poolsize[0] > input_shape[2] or poolsize[1] > input_shape[3]:
            raise ValueError(
                f"{name}: poolsize {poolsize} is larger than the "
                f"{input_shape[2]}x{input_shape[3]} feature maps")
        if mode not in ("max", "l2"):
            raise ValueError(f"{name}: mode must be 'max' or 'l2', got {mode!r}")
        _check_activation(name, activation_fn)
        self.input_shape, self.poolsize, self.mode = input_shape, poolsize, mode
        self.image_shape = input_shape  # the Network's batch-size check reads it
        self.activation_fn = activation_fn
        self.params = []

    @property
    def output_shape(self):
        _, maps, h, w = self.input_shape
        return (maps, h // self.poolsize[0], w // self.poolsize[1])

    input_size = property(lambda self: int(np.prod(self.input_shape[1:])))
    output_size = property(lambda self: int(np.prod(self.output_shape)))

    def output_for(self, inpt, batch_size):
        shape = (batch_size,) + self.input_shape[1:]
        return self._output(inpt.reshape(shape), shape)

    def _output(self, x, shape):
        pool = ops.max_pool_2d if self.mode == "max" else ops.l2_pool_2d
        return self.activation_fn(pool(x, shape, self.poolsize))

    def set_inpt(self, inpt, inpt_dropout, mini_batch_size):
        shape = (mini_batch_size,) + self.input_shape[1:]
        self.inpt = inpt.reshape(shape)
        self.output = self._output(self.inpt, shape)  # connected to self.inpt
        self.output_dropout = self.output

    def __repr__(self):
        return (f"PoolLayer(input_shape={self.input_shape}, poolsize="
                f"{self.poolsize}, mode={self.mode!r}, "
                f"activation_fn={_fn_name(self.activation_fn)})")


class FullyConnectedLayer:
    """A dense layer: ``activation_fn(dot(inpt, w) + b)``, with optional
    (non-inverted) dropout on its input during training."""

    def __init__(self, n_in, n_out, activation_fn=sigmoid, p_dropout=0.0,
                 init="book"):
        name = "FullyConnectedLayer"
        _check_positive_ints(name, n_in=n_in, n_out=n_out)
        _check_p_dropout(name, p_dropout)
        _check_activation(name, activation_fn)
        self.n_in = int(n_in)
        self.n_out = int(n_out)
        self.activation_fn = activation_fn
        self.p_dropout = p_dropout
        self.w = _shared(init_weights((n_in, n_out), n_in, n_out, init), "w")
        self.b = _shared(get_rng().normal(0.0, 1.0, size=(n_out,)), "b")
        self.params = [self.w, self.b]

    input_size = property(lambda self: self.n_in)
    output_size = property(lambda self: self.n_out)

    def _weighted_input(self, x):
        # inference: the weights saw only (1 - p) of their inputs in training
        if self.p_dropout:
            return as_floatX(1 - self.p_dropout) * pt.dot(x, self.w) + self.b
        return pt.dot(x, self.w) + self.b

    def output_for(self, inpt, batch_size):
        x = inpt.reshape((batch_size, self.n_in))
        return self.activation_fn(self._weighted_input(x))

    def set_inpt(self, inpt, inpt_dropout, mini_batch_size):
        self.inpt = inpt.reshape((mini_batch_size, self.n_in))
        self.output = self.activation_fn(self._weighted_input(self.inpt))
        self.y_out = pt.argmax(self.output, axis=1)
        self.inpt_dropout = dropout_layer(
            inpt_dropout.reshape((mini_batch_size, self.n_in)), self.p_dropout)
        self.output_dropout = self.activation_fn(
            pt.dot(self.inpt_dropout, self.w) + self.b)

    def accuracy(self, y):
        "Return the accuracy for the mini-batch."
        return pt.mean(pt.eq(y, self.y_out))

    def __repr__(self):
        return (f"FullyConnectedLayer(n_in={self.n_in}, n_out={self.n_out}, "
                f"activation_fn={_fn_name(self.activation_fn)}, "
                f"p_dropout={self.p_dropout})")


class SoftmaxLayer(FullyConnectedLayer):
    """The output layer: softmax of the weighted input, log-likelihood cost.
    Weights and biases start at zero, as in the book."""

    def __init__(self, n_in, n_out, p_dropout=0.0):
        name = "SoftmaxLayer"
        _check_positive_ints(name, n_in=n_in, n_out=n_out)
        _check_p_dropout(name, p_dropout)
        self.n_in = int(n_in)
        self.n_out = int(n_out)
        self.p_dropout = p_dropout
        self.activation_fn = softmax
        self.w = _shared(np.zeros((n_in, n_out)), "w")
        self.b = _shared(np.zeros((n_out,)), "b")
        self.params = [self.w, self.b]

    def cost(self, net):
        "Return the log-likelihood cost."
        # log(p)[arange(n), y] picks each example's log-probability of its
        # label; n is the static mini-batch size (JAX needs a concrete arange)
        n = net.mini_batch_size
        return -pt.mean(pt.log(self.output_dropout)[pt.arange(n), net.y])

    def __repr__(self):
        return (f"SoftmaxLayer(n_in={self.n_in}, n_out={self.n_out}, "
                f"p_dropout={self.p_dropout})")


def softmax(z):
    return pt.special.softmax(z, axis=-1)


#### Miscellanea
def dropout_layer(layer, p_dropout):
    """Multiply ``layer`` by a random keep-mask: each unit survives with
    probability 1 - p_dropout.  Each call makes its own random stream,
    seeded from network3's generator (``network3.seed``).  Every call of a
    function compiled from a graph that uses the mask draws a new one, with
    no update passed (as Theano's ``RandomStreams`` did).

    The mask is numpy's integer draws and integer arithmetic, so that every
    engine (PyTensor's Python, C and Numba modes, network3's accelerator)
    makes the same mask from the same generator.  ``rng.integers(0, 2**30)``
    is 30 random bits.  Where 1 - p_dropout = k / 2**m (m <= 16: dropout's
    0.5 is 1 / 2), each unit takes the next m bits of a draw, 30 // m units
    a draw, and is kept where they are below k; otherwise each unit takes a
    draw of its own and is kept where it is below (1 - p_dropout) * 2**30,
    rounded up.  (JAX draws its own numbers, from a key made from the
    generator, and makes its masks from them the same way.)"""
    if p_dropout == 0:
        return layer  # no mask at all: drawing one would cost 7x the step
    rng = pytensor.shared(
        np.random.default_rng(get_rng().integers(2**63)), name="dropout_rng")
    k, m = _keep_bits(1.0 - p_dropout)
    per_draw = DRAW_BITS // m
    static = None not in layer.type.shape  # then the sizes are constants
    shape = layer.type.shape if static else layer.shape
    n = int(np.prod(shape)) if static else pt.prod(shape)
    # the draws' node also outputs the generator's next state; every
    # function compiled with the mask stores it back into rng (int32: JAX's
    # default integers, as wide as the draws need)
    next_rng, draws = pt.random.integers(
        0, 2**DRAW_BITS, size=((n + per_draw - 1) // per_draw,), rng=rng,
        dtype="int32", return_next_rng=True)
    advance_on_every_call(rng, next_rng)
    # (draws, per_draw): each draw's m-bit numbers, lowest bits first
    shifts = (2 ** (m * np.arange(per_draw))).astype(np.int32)
    chunks = (draws[:, None] // shifts) % np.int32(2**m)
    keep = chunks.flatten()[:n].reshape(shape) < k
    return layer * pt.cast(keep, layer.dtype)


# A dropout draw's random bits: numpy's integers(0, 2**30) is the top 30
# bits of one 32-bit draw, in every engine; JAX's fit its 32-bit integers
DRAW_BITS = 30


def _keep_bits(keep):
    """(k, m) with keep = k / 2**m for the smallest m <= 16, else (the
    smallest k with k / 2**30 >= keep, 30)."""
    for m in range(1, 17):
        if keep * 2**m == int(keep * 2**m):
            return int(keep * 2**m), m
    return math.ceil(keep * 2**DRAW_BITS), DRAW_BITS


# PyTensor (3.0 and 3.3 alike) deprecates setting default_update, the
# mechanism by which Theano's random streams advanced in every compiled
# function, but still applies it; PyTensor's own RandomStream sets it too.
_DEPRECATED = "Setting default_update is deprecated"
_default_updates = {}  # "works": the probe's result, once per process


def advance_on_every_call(rng, next_rng):
    """Make every ``pytensor.function`` compiled from a graph that uses the
    shared generator ``rng`` store ``next_rng`` into it after each call
    (``SharedVariable.default_update``).  Raises RuntimeError if this
    PyTensor no longer applies default updates: a mask would then stay the
    same on every call of a function a user compiles, silently."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEPRECATED,
                                    category=DeprecationWarning)
            rng.default_update = next_rng
    except AttributeError:
        _default_updates["works"] = False
    if "works" not in _default_updates:
        _default_updates["works"] = _probe_default_updates()
    if not _default_updates["works"]:
        raise RuntimeError(
            f"PyTensor {pytensor.__version__} no longer applies "
            "SharedVariable.default_update, by which a dropout layer's random "
            "stream advances on every call of a function compiled from its "
            "graph; without it, a function you compile would use the same "
            "dropout mask on every call.  network3 does not support this "
            "PyTensor version for networks with dropout (p_dropout > 0).")


def _probe_default_updates():
    # a shared counter with a default update, in a function compiled
    # without optimisation (cheap): does one call advance it?
    probe = pytensor.shared(np.int64(0), name="default_update_probe")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEPRECATED,
                                    category=DeprecationWarning)
            probe.default_update = probe + 1
        mode = pytensor.compile.mode.Mode(linker="py", optimizer=None)
        pytensor.function([], probe, mode=mode)()
    except AttributeError:
        return False
    return int(probe.get_value()) == 1


def rng_updates(outputs):
    """The ``(rng, next_rng)`` updates that advance every shared random
    generator used by ``outputs`` (the dropout masks), for
    ``pytensor.function(..., updates=...)``."""
    updates = {}
    for var in ancestors(outputs):
        node = var.owner
        if node is not None and isinstance(node.op, RandomVariable):
            rng = node.op.rng_param(node)
            if isinstance(rng, SharedVariable):
                updates[rng] = node.outputs[0]
    return list(updates.items())


def _int_tuple(layer, name, value, length):
    try:
        out = tuple(int(v) for v in value)
        ok = len(out) == length and all(v > 0 for v in out) and \
            all(int(v) == v for v in value)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(
            f"{layer}: {name} must be a tuple of {length} positive integers, "
            f"got {value!r}")
    return out


def _fn_name(fn):
    if fn is sigmoid:
        return "sigmoid"
    if fn is tanh:
        return "tanh"
    return getattr(fn, "__name__", repr(fn))
