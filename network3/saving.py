"""saving.py: the file format of a saved network.

Following ``network2.py``'s precedent (``net.save(filename)``,
``network3.load(filename)``), but in a format that cannot run code when
loaded: one ``.npz`` file holding the weights as plain arrays and the
architecture as a JSON string, read back with ``allow_pickle=False``.

This module knows layers, not ``Network``: ``Network.save`` calls ``save``
here, and ``network3.load`` (in network.py, beside ``Network``, where
network2.py had it) builds the network from what ``read`` returns.
"""

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from .backend import as_floatX
from .data import atomic_write
from .layers import (
    ConvLayer,
    ConvPoolLayer,
    FullyConnectedLayer,
    PoolLayer,
    ReLU,
    SoftmaxLayer,
    linear,
    sigmoid,
    tanh,
)

FORMAT = "network3/1"
ACTIVATIONS = {"sigmoid": sigmoid, "tanh": tanh, "ReLU": ReLU, "linear": linear}


def describe(layer):
    """A JSON-able description of ``layer`` from which it can be rebuilt."""
    if isinstance(layer, ConvPoolLayer):
        return {"type": "ConvPoolLayer", "filter_shape": list(layer.filter_shape),
                "image_shape": list(layer.image_shape),
                "poolsize": list(layer.poolsize),
                "activation_fn": _activation_name(layer.activation_fn)}
    if isinstance(layer, ConvLayer):
        return {"type": "ConvLayer", "filter_shape": list(layer.filter_shape),
                "image_shape": list(layer.image_shape), "stride": list(layer.stride),
                "padding": list(layer.padding),
                "activation_fn": _activation_name(layer.activation_fn)}
    if isinstance(layer, PoolLayer):
        return {"type": "PoolLayer", "input_shape": list(layer.input_shape),
                "poolsize": list(layer.poolsize), "mode": layer.mode,
                "activation_fn": _activation_name(layer.activation_fn)}
    if isinstance(layer, SoftmaxLayer):
        return {"type": "SoftmaxLayer", "n_in": layer.n_in, "n_out": layer.n_out,
                "p_dropout": layer.p_dropout}
    if isinstance(layer, FullyConnectedLayer):
        return {"type": "FullyConnectedLayer", "n_in": layer.n_in,
                "n_out": layer.n_out, "p_dropout": layer.p_dropout,
                "activation_fn": _activation_name(layer.activation_fn)}
    raise TypeError(f"cannot save a layer of type {type(layer).__name__}")


def save(net, filename):
    """Write ``net``'s architecture and parameters to ``filename`` (.npz)."""
    buffer = io.BytesIO()
    np.savez(buffer, architecture=np.array(json.dumps(architecture(net))),
             **parameters(net))
    atomic_write(Path(filename), buffer.getvalue())


def architecture(net):
    """The file's JSON description of ``net`` (TypeError or ValueError for
    a layer it cannot describe)."""
    return {"format": FORMAT, "mini_batch_size": net.mini_batch_size,
            "layers": [describe(layer) for layer in net.layers]}


def parameters(net):
    """``net``'s parameter values by their name in the file."""
    return {f"layer{i}_{p.name}": p.get_value()
            for i, layer in enumerate(net.layers) for p in layer.params}


@contextlib.contextmanager
def errors_naming(filename):
    """Any error while loading ``filename`` becomes a ValueError naming it
    (a damaged file: zip, JSON or layout errors)."""
    try:
        yield
    except ValueError as err:
        if str(filename) in str(err):
            raise
        raise ValueError(f"{filename}: {err}") from None
    except Exception as err:
        raise ValueError(f"{filename}: not a valid saved network3 network "
                         f"({type(err).__name__}: {err})") from None


def read(filename, activations=None):
    """``(layers, mini_batch_size, arrays)`` from a file that ``save`` wrote:
    the layers rebuilt (with fresh parameters) and the saved parameters by
    name.  ``activations`` maps the names of custom activation functions to
    the functions themselves."""
    known = dict(ACTIVATIONS, **(activations or {}))
    try:
        with np.load(filename, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(f"{filename}: not a saved network3 network (it "
                             "holds pickled objects, which network3 never loads)"
                             ) from None
        raise ValueError(f"{filename}: not a saved network3 network ({err})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{filename}: not a saved network3 network ({err})") from None
    if "architecture" not in arrays:
        raise ValueError(f"{filename}: not a saved network3 network (no architecture)")
    spec = json.loads(str(arrays.pop("architecture")))
    # a checkpoint (checkpoint.py) is a saved network plus the run's state
    arrays = {k: v for k, v in arrays.items() if not k.startswith("checkpoint_")}
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{filename}: format is not {FORMAT!r}")
    layers = []
    for i, d in enumerate(spec["layers"]):
        kind = d.pop("type")
        if "activation_fn" in d:
            name = d["activation_fn"]
            if name not in known:
                raise ValueError(
                    f"{filename}: layer {i} uses activation {name!r}; pass "
                    f"load(..., activations={{{name!r}: function}})")
            d["activation_fn"] = known[name]
        cls = {"ConvPoolLayer": ConvPoolLayer, "SoftmaxLayer": SoftmaxLayer,
               "FullyConnectedLayer": FullyConnectedLayer, "ConvLayer": ConvLayer,
               "PoolLayer": PoolLayer}.get(kind)
        if cls is None:
            raise ValueError(f"{filename}: layer {i} has unknown type {kind!r}")
        layers.append(cls(**d))
    return layers, spec["mini_batch_size"], arrays


def set_parameters(net, arrays, filename):
    """Give ``net``'s parameters the saved ``arrays``, after checking that
    their names, shapes and types are the architecture's."""
    expected = {f"layer{i}_{p.name}": p for i, layer in enumerate(net.layers)
                for p in layer.params}
    if set(expected) != set(arrays):
        raise ValueError(
            f"{filename}: parameters {sorted(arrays)} do not match the "
            f"architecture's {sorted(expected)}")
    for key, param in expected.items():
        shape = param.get_value(borrow=True).shape
        if arrays[key].shape != shape:
            raise ValueError(f"{filename}: {key} has shape {arrays[key].shape}, "
                             f"the architecture needs {shape}")
        if arrays[key].dtype.kind != "f":
            raise ValueError(f"{filename}: {key} has dtype {arrays[key].dtype}, "
                             "not a float type")
        param.set_value(as_floatX(arrays[key]))


def _activation_name(fn):
    for name, known in ACTIVATIONS.items():
        if fn is known:
            return name
    name = getattr(fn, "__name__", None)
    if not name or name == "<lambda>":
        raise ValueError(f"cannot save activation {fn!r}: give it a name (a def)")
    return name
