"""backend.py: where the graph runs, which float type it uses, and the one
seedable source of randomness.

Nothing here touches PyTensor's global configuration: the float type is
passed explicitly to every shared variable and symbolic input network3
creates, and every ``pytensor.function`` is compiled with an explicit mode.
Importing network3 therefore changes nothing for other PyTensor code.

Backends (choose with ``network3.set_backend`` or the environment variable
``NETWORK3_BACKEND``):

* ``"numba"`` (default): PyTensor's default linker; compiled code is cached on
  disk under ``~/.pytensor``, so the second run of a network starts fast.
* ``"jax"``: PyTensor's JAX backend (``pip install network3[jax]``); on a
  machine with a CUDA build of jax this is the GPU path
  (``network3.GPU = True``).
* ``"c"``: PyTensor's C virtual machine (needs a BLAS that PyTensor can link).
"""

import contextlib
import os
import sys
import warnings

import numpy as np
import pytensor

BACKENDS = ("numba", "jax", "c")

_settings = {"floatX": "float32", "backend": None, "blas_threads": 1,
             "keep_freed_memory": True, "malloc_tuned": False}
_rng = np.random.default_rng()


# ---------------------------------------------------------------- float type
def floatX():
    """The float dtype of network3's parameters and data ("float32" unless
    changed with ``set_floatX``)."""
    return _settings["floatX"]


def set_floatX(dtype):
    """Use ``dtype`` ("float32" or "float64") for networks built from now on."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"floatX must be 'float32' or 'float64', not {dtype!r}")
    _settings["floatX"] = dtype


def as_floatX(value):
    """A numpy array of ``value`` in network3's float type."""
    return np.asarray(value, dtype=floatX())


# ---------------------------------------------------------------- BLAS threads
def set_blas_threads(n):
    """BLAS threads used while network3 trains or predicts (default 1;
    ``None`` leaves the BLAS libraries' own setting).  Measured on a 2-core
    machine with another process busy: a dbl_conv step took 48-61 ms with
    OpenBLAS's default thread pool and 5-6 ms with one thread; the matrices
    of a mini-batch of 10 are too small to gain from threads."""
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
# A compiled training step allocates its temporaries (a conv layer's
# im2col columns: 1.3 MB in the book's second layer) and frees them again,
# thousands of times an epoch.  glibc's malloc hands freed memory at the top
# of its heap back to the kernel once more than M_TRIM_THRESHOLD of it is
# free (by default twice the largest block it has recently mmapped), and
# serves large blocks with a fresh mmap: either way the next step touches
# new pages, and the kernel zeroes each one (a page fault).  Measured on the
# benchmark's dbl_conv network with a warm compile cache: 600 page faults
# and 2.1 ms a step, against 1.5 ms with the settings below, which keep up
# to 256 MB of freed memory for reuse and take blocks under 64 MB from the
# heap.  (A fresh compile leaves a fragmented heap that hides the effect.)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(enabled=True):
    """Whether network3 tunes glibc's malloc, as above, when it compiles a
    function (on by default; Linux only; a process-wide setting that stays
    once made).  ``keep_freed_memory(False)`` before building a network
    leaves malloc alone."""
    _settings["keep_freed_memory"] = bool(enabled)


def _tune_malloc():
    if not _settings["keep_freed_memory"] or _settings["malloc_tuned"]:
        return
    _settings["malloc_tuned"] = True
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc
    except (OSError, AttributeError):  # another C library: leave it be
        return
    mallopt(_M_MMAP_THRESHOLD, 64 << 20)
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)


# ------------------------------------------------------------------ randomness
def seed(value):
    """Seed network3's random generator: weight initialisation and dropout
    masks drawn after this call are repeatable.  Call it before building the
    layers."""
    global _rng
    _rng = np.random.default_rng(value)


def get_rng():
    """The numpy Generator behind initialisation and dropout seeds."""
    return _rng


# ------------------------------------------------------------------- backends
def set_backend(name):
    """Compile networks built from now on with backend ``name``
    ("numba", "jax" or "c"); ``None`` restores the default."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    _settings["backend"] = name


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
    if name == "numba":  # PyTensor's Numba mode plus rewrites.py's
        from .rewrites import numba_mode
        return numba_mode()
    if name == "c":
        return pytensor.compile.mode.get_mode("CVM")
    try:
        import jax
    except ImportError:
        raise RuntimeError(
            "the 'jax' backend needs jax: pip install 'network3[jax]' "
            "(or set network3.GPU = False / NETWORK3_BACKEND=numba)") from None
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


def function(inputs, outputs, **kwargs):
    """``pytensor.function`` compiled with network3's chosen backend."""
    name = backend()
    _tune_malloc()
    if name != "jax":
        return pytensor.function(inputs, outputs, mode=_mode(name), **kwargs)
    with _quiet_jax():
        fn = pytensor.function(inputs, outputs, mode=_mode(name), **kwargs)
    # Keep the data and parameters on the JAX device: left as numpy arrays,
    # every call copies the whole training set to it (measured: shallow net,
    # 100 ms per step instead of 3.7).
    _device_put(getattr(fn, "input_storage", ()))
    return _Quiet(fn)


def to_device(*variables):
    """After ``set_value`` on shared variables that a JAX-compiled function
    reads, move their new values to the device (no-op for other backends)."""
    if backend() == "jax":
        _device_put(v.container for v in variables)


def _device_put(containers):
    import jax
    for container in containers:
        value = container.storage[0]
        if isinstance(value, np.ndarray):
            container.storage[0] = jax.device_put(value)


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
