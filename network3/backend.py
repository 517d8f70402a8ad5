"""backend.py: where the graph runs, which float type it uses, and the one
seedable source of randomness.

Importing network3 changes one global PyTensor setting, as the book's
``network3.py`` did: ``pytensor.config.floatX`` becomes network3's float type
(float32), so that code written around a network (``T.matrix()``, arrays
made with ``dtype=config.floatX``, the book's update ``param - eta*grad``
with a Python float ``eta``) stays in the network's float type.  With
``NETWORK3_KEEP_FLOATX=1`` in the environment it changes nothing: network3
passes its float type explicitly to every shared variable and symbolic
input it creates, and compiles every ``pytensor.function`` with an explicit
mode, so its own graphs need no global setting.

Backends (choose with ``network3.set_backend`` or the environment variable
``NETWORK3_BACKEND``):

* ``"numba"`` (default): PyTensor's default linker, with network3's
  accelerator (network3/accel, see ``use_accelerator``); compiled code is
  cached on disk under ``~/.pytensor``, so the second run of a network
  starts fast.
* ``"jax"``: PyTensor's JAX backend (``pip install network3[jax]``); on a
  machine with a CUDA build of jax this is the GPU path
  (``network3.GPU = True``).
* ``"c"``: PyTensor's C virtual machine (needs a BLAS that PyTensor can link).
"""

import contextlib
import copy
import importlib
import os
import sys
import warnings
import weakref

import numpy as np
import pytensor

BACKENDS = ("numba", "jax", "c")

_settings = {"floatX": "float32", "backend": None, "blas_threads": 1,
             "keep_freed_memory": True, "accelerator": None}
_rng = None  # network3.seed's Generator; None: numpy's global generator


# ---------------------------------------------------------------- float type
FLOAT_TYPES = ("float32", "float64")
# The book's network3.py set theano.config.floatX to float32 at import;
# network3 does the same with PyTensor's, unless this variable is set (to
# anything but "" or "0"): then PyTensor's setting is left alone.
KEEP_FLOATX = "NETWORK3_KEEP_FLOATX"
_settings["pytensor_floatX"] = os.environ.get(KEEP_FLOATX, "").strip() in ("", "0")


def floatX():
    """The float dtype of network3's parameters and data: "float32" unless
    changed with ``set_floatX``.  While network3 manages PyTensor's floatX
    (the default), it is ``pytensor.config.floatX``, so a script that sets
    that (as the book's readers set Theano's) changes both."""
    if _settings["pytensor_floatX"]:
        value = pytensor.config.floatX
        if value in FLOAT_TYPES:
            return value
    return _settings["floatX"]


def set_floatX(dtype):
    """Use ``dtype`` ("float32" or "float64") for networks built from now
    on; PyTensor's floatX too, unless NETWORK3_KEEP_FLOATX is set."""
    if dtype not in FLOAT_TYPES:
        raise ValueError(f"floatX must be 'float32' or 'float64', not {dtype!r}")
    _settings["floatX"] = dtype
    if _settings["pytensor_floatX"]:
        pytensor.config.floatX = dtype


set_floatX(_settings["floatX"])  # at import, as the original did


def as_floatX(value):
    """A numpy array of ``value`` in network3's float type."""
    return np.asarray(value, dtype=floatX())


# ---------------------------------------------------------------- BLAS threads
def set_blas_threads(n):
    """BLAS threads used while network3 trains or predicts (default 1;
    ``None`` leaves the BLAS libraries' own setting).  The matrices of a
    mini-batch of 10 are too small to gain from threads, and on a busy
    machine OpenBLAS's spinning threads made a step ten times slower
    (docs/performance.md)."""
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"BLAS threads must be a positive integer or None, not {n!r}")
    _settings["blas_threads"] = n


def blas_threads():
    """A context in which BLAS uses ``set_blas_threads``'s count; outside
    it nothing is changed (no process-wide setting at import)."""
    n = _settings["blas_threads"]
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    if n is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


# ------------------------------------------------------------------ memory
def keep_freed_memory(enabled=True):
    """Whether the Numba accelerator tunes glibc's malloc to keep freed
    memory for reuse when it first compiles a function (on by default;
    Linux only; a process-wide setting that stays once made; see
    network3/accel/memory.py).  ``keep_freed_memory(False)`` before building
    a network leaves malloc alone."""
    _settings["keep_freed_memory"] = bool(enabled)


def keeps_freed_memory():
    return _settings["keep_freed_memory"]


# ------------------------------------------------------------------ randomness
def seed(value):
    """Seed network3's own random generator: initial weights, dropout masks,
    shuffling and augmentation drawn after this call are repeatable, whatever
    else the program draws from numpy.  Call it before building the layers.

    Until it is called (or after ``seed(None)``), they are drawn from numpy's
    global generator, as in the book's network3.py, so ``np.random.seed(s)``
    before building a network makes them repeatable too (the initial weights
    are then the very numbers the original drew)."""
    global _rng
    _rng = None if value is None else np.random.default_rng(value)


class _NumpyGlobal:
    """numpy's global generator (``np.random.normal`` and friends, which
    ``np.random.seed`` seeds) with the two Generator methods network3 uses."""

    def normal(self, loc=0.0, scale=1.0, size=None):
        return np.random.normal(loc, scale, size)

    def integers(self, high):
        return np.random.randint(high, dtype=np.int64)


_NUMPY_GLOBAL = _NumpyGlobal()


def get_rng():
    """The generator behind initial weights and the seeds of dropout masks,
    shuffling and augmentation: network3's numpy Generator after
    ``network3.seed``, else numpy's global generator (``normal`` and
    ``integers`` only)."""
    return _NUMPY_GLOBAL if _rng is None else _rng


# ------------------------------------------------------------------- backends
def set_backend(name):
    """Compile networks built from now on with backend ``name``
    ("numba", "jax" or "c"); ``None`` restores the default."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    _settings["backend"] = name
    if backend() != "jax":
        _to_host()
    elif _ON_DEVICE:  # back on the device, as their JAX functions left them
        _device_put(list(_ON_DEVICE))


def backend():
    """The backend the next compiled function will use."""
    if _gpu_requested():
        return "jax"
    name = _settings["backend"] or os.environ.get("NETWORK3_BACKEND", "numba")
    name = name.lower()
    if name not in BACKENDS:
        raise ValueError(
            f"NETWORK3_BACKEND={name!r} is not a backend; choose one of {BACKENDS}")
    return name


def _gpu_requested():
    # The book's flag: ``network3.GPU = True`` before building a network.
    package = sys.modules.get("network3")
    return bool(getattr(package, "GPU", False))


def _mode(name):
    if name == "numba":
        return _numba_mode()
    if name == "c":
        return pytensor.compile.mode.get_mode("CVM")
    try:
        import jax
    except ImportError:
        raise RuntimeError(
            "the 'jax' backend needs jax: pip install 'network3[jax]' "
            "(or set network3.GPU = False / NETWORK3_BACKEND=numba)") from None
    from . import jax_ops  # noqa: F401  (the Ops' JAX implementations)
    if _gpu_requested():
        try:
            jax.devices("gpu")
        except RuntimeError:
            raise RuntimeError(
                "network3.GPU is True but jax sees no GPU (devices: "
                f"{jax.devices()}). Install a CUDA build of jax "
                "(pip install 'jax[cuda12]') or set network3.GPU = False."
            ) from None
    return pytensor.compile.mode.get_mode("JAX")


# ------------------------------------------------------------ the accelerator
# network3/accel: PyTensor's Numba mode made faster with rewrites, kernels
# and a linker that reach into Numba's and PyTensor's internals.  Loaded on
# the first compile in Numba mode and checked where it acts; on any failure
# (loading it, compiling a function with it, its check of the Ops in that
# function, the function's first call) network3 warns once and compiles
# that function and every later one in PyTensor's stock Numba mode.
class AcceleratorWarning(RuntimeWarning):
    """The Numba accelerator could not be used; network3 runs slower, on
    PyTensor's stock Numba mode."""


_ACCELERATOR_OFF = ("0", "off", "false", "no")


def use_accelerator(enabled=True):
    """Whether functions compiled from now on in Numba mode use network3's
    accelerator (on by default; ``NETWORK3_ACCELERATOR=0`` turns it off for
    a whole run; ``None`` goes back to that default).  Off, they use
    PyTensor's stock Numba mode: slower, the same numbers."""
    _settings["accelerator"] = None if enabled is None else bool(enabled)


def accelerator_enabled():
    """Whether the next function compiled in Numba mode uses the accelerator
    (``use_accelerator``, else the NETWORK3_ACCELERATOR variable)."""
    if _settings["accelerator"] is not None:
        return _settings["accelerator"]
    return os.environ.get("NETWORK3_ACCELERATOR", "1").strip().lower() not in _ACCELERATOR_OFF


_accelerator = {}  # "mode" once loaded, or "error" once failed


def accelerator_status():
    """"on", "off" (switched off), "failed: <reason>", or "not loaded"."""
    if not accelerator_enabled():
        return "off"
    if "error" in _accelerator:
        return f"failed: {_accelerator['error']}"
    return "on" if "mode" in _accelerator else "not loaded"


def _numba_mode():
    stock = pytensor.compile.mode.get_mode("NUMBA")
    if not accelerator_enabled() or "error" in _accelerator:
        return stock
    if "mode" not in _accelerator:
        try:
            accel = importlib.import_module("network3.accel")
            _accelerator["mode"] = accel.numba_mode()
        except Exception as error:  # noqa: BLE001  (any failure: fall back)
            _accelerator_failed(error)
            return stock
    return _accelerator["mode"]


def _accelerator_failed(error):
    """Turn the accelerator off for this process, with one warning naming
    the part that failed and the versions."""
    reason = f"{type(error).__name__}: {error}"
    _accelerator["error"] = reason
    warnings.warn(
        f"network3's Numba accelerator is off for this process ({_part(error)} failed: "
        f"{reason}); running on PyTensor's stock Numba mode, which is slower, with "
        f"the same numbers. Versions: {_versions()}. Set NETWORK3_ACCELERATOR=0 to "
        "skip it (and this warning).", AcceleratorWarning, stacklevel=4)


def _part(error):
    """The accelerator's part that raised: a family of its Ops (its
    checks name one), else its deepest module in the traceback."""
    if getattr(error, "family", None):
        return error.family
    part, tb = "network3/accel", error.__traceback__
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename.replace(os.sep, "/")
        if "/network3/accel/" in path:
            part = "network3/accel/" + path.rsplit("/", 1)[1]
        tb = tb.tb_next
    return part


def _versions():
    from importlib.metadata import PackageNotFoundError, version
    found = []
    for name in ("numba", "llvmlite", "pytensor", "numpy"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found) + f", Python {sys.version.split()[0]}"


def function(inputs, outputs, **kwargs):
    """``pytensor.function`` compiled with network3's chosen backend."""
    name = backend()
    if name != "jax":
        _to_host()
        mode = _mode(name)
        if name == "numba" and "mode" in _accelerator and mode is _accelerator["mode"]:
            return _accelerated(inputs, outputs, mode, kwargs)
        return pytensor.function(inputs, outputs, mode=mode, **kwargs)
    with _quiet_jax():
        fn = pytensor.function(inputs, outputs, mode=_mode(name), **kwargs)
    # Keep the data and parameters on the JAX device: left as numpy arrays,
    # every call copies the whole training set to it.
    _device_put(getattr(fn, "input_storage", ()))
    return _Quiet(fn)


def _accelerated(inputs, outputs, mode, kwargs):
    """The function compiled with the accelerator, its Ops checked (the
    families not checked yet); on a failure, compiled in the stock mode."""
    def stock():
        return pytensor.function(inputs, outputs, mode=pytensor.compile.mode.get_mode("NUMBA"),
                                 **kwargs)
    try:
        fn = pytensor.function(inputs, outputs, mode=mode, **kwargs)
        maker = getattr(fn, "maker", None)  # (None: pytensor.function wrapped by a caller)
        if maker is not None:
            sys.modules["network3.accel"].check(maker.fgraph)
    except Exception as error:  # noqa: BLE001  (any failure: fall back)
        fn = stock()  # (a mistake in the graph itself raises here too)
        _accelerator_failed(error)
        return fn
    return _FirstCall(fn, stock)


class _FirstCall:
    """A function compiled with the accelerator.  Numba compiles it at its
    first call: if that call fails, the values it may have changed in place
    (the shared variables it updates) are put back, and the call is made
    again by the function compiled in the stock mode, which is kept."""

    def __init__(self, fn, stock):
        self.fn, self._stock, self._first = fn, stock, True

    def __call__(self, *args, **kwargs):
        if not self._first:
            return self.fn(*args, **kwargs)
        maker = getattr(self.fn, "maker", None)
        saved = [(c, copy.deepcopy(c.storage[0]))
                 for i, c in zip(maker.inputs, self.fn.input_storage)
                 if i.update is not None or i.mutable] if maker is not None else []
        try:
            out = self.fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001  (any failure: fall back)
            for container, value in saved:
                container.storage[0] = value
            stock = self._stock()
            out = stock(*args, **kwargs)  # (a mistake in the arguments raises here too)
            _accelerator_failed(error)
            self.fn = stock
        self._first = False
        return out

    def __getattr__(self, name):
        return getattr(self.fn, name)


def held_by(fn, variables):
    """Where the compiled ``fn`` keeps each of ``variables`` (shared
    variables its updates change): the variable itself, except a random
    stream on the JAX backend, of which PyTensor's JAX linker compiles a
    copy that the calls advance (the variable keeps its first value); that
    copy is given as a ``CompiledCopy``, with the variable's
    ``get_value``/``set_value``."""
    maker = getattr(fn, "maker", None)
    if maker is None:  # pytensor.function wrapped by a caller: nothing copied
        return list(variables)
    storage = {id(i.variable): c for i, c in zip(maker.inputs, fn.input_storage)}
    held = []
    for var in variables:
        container = storage.get(id(var))
        copied = container is not None and container.storage is not var.container.storage
        held.append(CompiledCopy(var, container) if copied else var)
    return held


class CompiledCopy:
    """A shared variable's copy inside a compiled function (see ``held_by``)."""

    def __init__(self, variable, container):
        self.variable, self.container = variable, container
        self.name, self.type = variable.name, variable.type

    def get_value(self, borrow=False):
        value = self.container.storage[0]
        return value if borrow else copy.deepcopy(value)

    def set_value(self, value, borrow=False):
        # (not the type's filter: it takes a stream's state only as JAX left it)
        self.container.storage[0] = value if borrow else copy.deepcopy(value)

    def __repr__(self):
        return f"CompiledCopy({self.variable!r})"


def to_device(*variables):
    """After ``set_value`` on shared variables that a JAX-compiled function
    reads, move their new values to the device (no-op for other backends)."""
    if backend() == "jax":
        _device_put(v.container for v in variables)


def _device_put(containers):
    import jax
    for container in containers:
        _ON_DEVICE.add(container)
        value = container.storage[0]
        if isinstance(value, np.ndarray):
            container.storage[0] = jax.device_put(value)


# The JAX functions' input containers (shared variables among them), which
# hold JAX arrays once _device_put or the functions' updates put them there.
# Numba and C functions, and .eval(), need numpy arrays: _to_host copies
# them back when another backend is chosen or compiles a function.
_ON_DEVICE = weakref.WeakSet()


def _to_host():
    for container in list(_ON_DEVICE):
        value = container.storage[0]
        if not isinstance(value, np.ndarray) and hasattr(value, "__array__"):
            container.storage[0] = np.array(value)  # a writable copy


# Warnings PyTensor's JAX backend gives for every network3 graph, none of
# which changes the results: the dropout generators are copied into the JAX
# graph; broadcasting checks are dropped while tracing; a float64 constant
# inside JAX's own scatter (PyTensor runs JAX with 64-bit types enabled).
_JAX_NOISE = ("The RandomType SharedVariables", "Skipping Assert",
              "scatter inputs have incompatible types")


@contextlib.contextmanager
def _quiet_jax():
    with warnings.catch_warnings():
        for message in _JAX_NOISE:
            warnings.filterwarnings("ignore", message=message)
        yield


class _Quiet:
    """A compiled JAX function that hides the warnings above (JAX raises
    the scatter one at every call of a graph it runs op by op)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        with _quiet_jax():
            return self.fn(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.fn, name)
