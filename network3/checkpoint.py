"""checkpoint.py: SGD's per-epoch checkpoints, from which a run resumes
exactly.

``net.SGD(..., checkpoint=PATH)`` writes PATH at the end of every epoch and,
when PATH already exists, continues the run from it.  A resumed run ends
where the uninterrupted run ends, bit for bit, because the file holds
everything the rest of the run depends on:

* the parameters, and the other variables the training step updates (the
  momentum velocities, each dropout layer's random generator: a numpy
  Generator, or on the JAX backend the state PyTensor's JAX code keeps in
  its place, from which a run resumes on the same kind of backend only);
* the generator that shuffles and augments the training data;
* the learning-rate schedule's state (an object's plain-number attributes,
  such as ``HalveOnPlateau``'s halved eta);
* the loop's own: the last finished epoch, the best validation accuracy,
  its iteration, test accuracy and parameters, the early-stopping count,
  and ``net.history``.

It also holds a *signature* of the run: the architecture, a digest of each
data set, and SGD's arguments.  A checkpoint is only continued by a call
with the same signature; any difference is a ValueError naming it.

The format is the saved network's (``saving.py``): one ``.npz`` of plain
arrays and JSON, no pickle, so ``network3.load(PATH)`` gives the network
of the last finished epoch.  Files are written atomically: a reader (or a
resumed run) sees the previous epoch's file or the new one, never half.
"""

import hashlib
import io
import json
import types
from pathlib import Path

import numpy as np

from . import backend, saving
from .data import as_array, atomic_write

FORMAT = "network3-checkpoint/1"
PREFIX = "checkpoint_"  # the arrays beyond a saved network's start with this


#### The run's signature: what a checkpoint may only be continued with
def signature(net, data, arguments):
    """A JSON-able description of a run: the layers and parameter shapes,
    a digest of each data set (``data``: name -> (x, y) pair or None), and
    SGD's ``arguments`` (name -> value; callables by their description)."""
    return {
        "layers": [_describe_layer(layer) for layer in net.layers],
        "parameters": [[p.name, list(p.get_value(borrow=True).shape),
                        str(p.get_value(borrow=True).dtype)] for p in net.params],
        "data": {name: None if pair is None else _digest(pair)
                 for name, pair in data.items()},
        "arguments": {name: describe_callable(value) if callable(value) else value
                      for name, value in arguments.items()},
    }


def _describe_layer(layer):
    try:
        return saving.describe(layer)
    except (TypeError, ValueError):  # a layer of the reader's own
        return {"type": type(layer).__name__}


def _digest(pair):
    """Size and BLAKE2 digest of an (x, y) data set: a different image,
    label or order gives another digest (about 1 s per GB of images)."""
    digest = hashlib.blake2b(digest_size=12)
    x, y = (np.ascontiguousarray(as_array(v)) for v in pair)
    for array in (x, y):
        digest.update(str((array.shape, array.dtype.str)).encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return f"{len(y)} examples, digest {digest.hexdigest()}"


def describe_callable(f):
    """A description of a schedule or augmentation that is the same in every
    process: a function's qualified name and the numbers it closes over
    (``step_decay(0.1, every=20)`` gives its 0.1, 0.5 and 20); an object's
    repr when its class writes one (``Augment(...)``), else its class."""
    if isinstance(f, (types.FunctionType, types.MethodType)):
        cells = [c.cell_contents for c in (getattr(f, "__closure__", None) or ())]
        numbers = [v for v in cells if isinstance(v, (int, float, str, bool))]
        return f"{f.__module__}.{f.__qualname__}" + (f"{numbers}" if numbers else "")
    cls = type(f)
    if cls.__repr__ is not object.__repr__:
        return repr(f)
    return f"{cls.__module__}.{cls.__qualname__}"


def differences(saved, current):
    """The lines that say how signature ``current`` differs from ``saved``."""
    lines = [f"the architecture ({name}): the checkpoint's are {saved[name]}, "
             f"this network's are {current[name]}"
             for name in ("layers", "parameters") if saved[name] != current[name]]
    for kind in ("data", "arguments"):
        for name in sorted(set(saved[kind]) | set(current[kind])):
            old, new = saved[kind].get(name), current[kind].get(name)
            if old != new:
                lines.append(f"{name}: the checkpoint's is {old!r}, this call's is {new!r}")
    return lines


#### Writing and reading
def write(path, net, state_vars, loop, signature):
    """Write the checkpoint ``path`` atomically: ``net``'s architecture and
    parameters (as ``net.save`` would), the values of ``state_vars`` (the
    other shared variables the training step updates) and ``loop`` (a
    JSON-able dict of the loop's state; its ``"best_params"`` entry, a
    list of arrays or None, is stored as arrays)."""
    loop = dict(loop)
    arrays = saving.parameters(net)
    best = loop.pop("best_params")
    for i, value in enumerate(best or ()):
        arrays[f"{PREFIX}best{i}"] = value
    states = []
    for i, var in enumerate(state_vars):
        value = var.get_value(borrow=True)
        if isinstance(value, np.random.Generator):  # a dropout layer's stream
            states.append({"generator": generator_state(value)})
        elif isinstance(value, dict) and "jax_state" in value:  # the stream on JAX
            states.append({"jax_generator": _plain(value)})
        else:  # a momentum velocity
            arrays[f"{PREFIX}state{i}"] = np.asarray(value)
            states.append({"array": f"{PREFIX}state{i}"})
    info = {"format": FORMAT, "signature": signature, "state_vars": states,
            "best_params": best is not None, **loop}
    arrays["architecture"] = np.array(json.dumps(_architecture(net)))
    arrays[f"{PREFIX}info"] = np.array(json.dumps(info))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(Path(path), buffer.getvalue())


def _architecture(net):
    try:
        return saving.architecture(net)
    except (TypeError, ValueError):  # a layer of the reader's own: not loadable
        return {"format": None}


def read(path):
    """``(info, arrays)`` of the checkpoint ``path``; a file that is not one
    is a ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        info = json.loads(str(arrays.pop(f"{PREFIX}info")))
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise ValueError(f"SGD: {path} exists but is not a network3 checkpoint "
                         f"({type(err).__name__}: {err}); give another path, "
                         "or remove the file to start a new run") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"SGD: {path} is not a {FORMAT} checkpoint")
    return info, arrays


def restore(info, arrays, net, state_vars):
    """Give ``net``'s parameters and ``state_vars`` the checkpoint's values;
    return the best epoch's parameters (a list of arrays, or None)."""
    if len(info["state_vars"]) != len(state_vars):
        raise ValueError(
            f"SGD: the checkpoint holds {len(info['state_vars'])} training-state "
            f"variables (momentum velocities, dropout streams), this network's "
            f"training step updates {len(state_vars)}")
    saving.set_parameters(net, {k: v for k, v in arrays.items() if k.startswith("layer")},
                          "the checkpoint")
    on_jax = backend.backend() == "jax"
    for var, saved in zip(state_vars, info["state_vars"]):
        if ("generator" in saved and on_jax) or ("jax_generator" in saved and not on_jax):
            written = "the JAX backend" if "jax_generator" in saved else "a numpy backend"
            raise ValueError(
                f"SGD: the checkpoint's dropout streams were written on {written}, "
                f"and this run is on the {backend.backend()} backend, whose masks "
                "come from another stream; resume it on the backend that wrote it, "
                "or give another path to start a new run")
        if "generator" in saved:
            var.set_value(generator_from_state(saved["generator"]))
        elif "jax_generator" in saved:
            var.set_value(_from_plain(saved["jax_generator"]))
        else:
            var.set_value(arrays[saved["array"]].astype(var.dtype))
    if not info["best_params"]:
        return None
    return [arrays[f"{PREFIX}best{i}"] for i in range(len(net.params))]


def generator_state(rng):
    """A numpy Generator's state as JSON-able data."""
    return rng.bit_generator.state


def generator_from_state(state):
    """A new numpy Generator in the state ``generator_state`` gave."""
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _plain(value):
    """A JAX random stream's state (a dict of numbers and JAX arrays) as
    JSON: each array as its dtype and numbers."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    array = np.asarray(value)
    if array.dtype == object:  # a Python int too big for 64 bits
        return {"int": int(value)}
    return {"array": [array.dtype.str, array.tolist()]}


def _from_plain(state):
    if set(state) == {"int"}:
        return state["int"]
    if set(state) == {"array"}:
        dtype, numbers = state["array"]
        return np.asarray(numbers, dtype=dtype)[()]  # a number as a numpy scalar
    return {key: _from_plain(item) for key, item in state.items()}


def schedule_state(eta):
    """The plain-number attributes of a schedule object (HalveOnPlateau's
    current eta and counts); a function or a number has none."""
    if isinstance(eta, (types.FunctionType, types.MethodType)) or not callable(eta):
        return {}
    return {k: v for k, v in vars(eta).items()
            if isinstance(v, (int, float, str, bool)) or v is None}


def set_schedule_state(eta, state):
    for name, value in state.items():
        setattr(eta, name, value)
