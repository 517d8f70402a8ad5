"""network3: the book's ``network3.py`` on Python 3 and PyTensor.

A port of Michael Nielsen's ``network3.py`` (chapter 6 of *Neural Networks
and Deep Learning*) from Theano, which is no longer maintained, to PyTensor,
its successor.  The chapter's code runs unchanged:

    >>> import network3
    >>> from network3 import Network, FullyConnectedLayer, SoftmaxLayer
    >>> training_data, validation_data, test_data = network3.load_data_shared()
    >>> net = Network([FullyConnectedLayer(n_in=784, n_out=100),
    ...                SoftmaxLayer(n_in=100, n_out=10)], 10)
    >>> net.SGD(training_data, 60, 10, 0.1, validation_data, test_data)

Modules: ``ops`` (convolution and pooling, which PyTensor 3 lacks),
``layers`` (the layers, activations, dropout), ``network`` (``Network`` and
SGD), ``data`` (MNIST), ``backend`` (float type, backend, random seed).

Importing network3 sets one global PyTensor setting, as the original did:
``pytensor.config.floatX`` becomes network3's float type, float32
(``NETWORK3_KEEP_FLOATX=1`` in the environment leaves it alone).
"""

from . import augment, backend, data, ensemble, figures, layers, ops, saving, schedules  # noqa: F401
from .backend import (  # noqa: F401
    floatX,
    keep_freed_memory,
    seed,
    set_backend,
    set_floatX,
    use_accelerator,
)
from .data import load_data, load_data_shared, size  # noqa: F401
from .layers import (  # noqa: F401
    ConvLayer,
    ConvPoolLayer,
    FullyConnectedLayer,
    PoolLayer,
    ReLU,
    SoftmaxLayer,
    dropout_layer,
    linear,
    sigmoid,
    softmax,
    tanh,
)
from .network import Network, load  # noqa: F401

#### Constants
# The book's flag.  Set ``network3.GPU = True`` before building a network to
# compile it with PyTensor's JAX backend on a CUDA GPU (needs a CUDA jax).
GPU = False

__version__ = "0.1.0"
