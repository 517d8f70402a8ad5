"""network3.accel: the Numba accelerator.

PyTensor's Numba mode runs network3's graphs as they are.  The accelerator
runs the same arithmetic faster, to compile and to run: graph rewrites that
turn the book's SGD step into BLAS calls and single loop nests
(``rewrites.py``, ``dense.py``, ``pooled.py``), Numba kernels specialised on
each layer's shapes and a BLAS binding to numpy's own OpenBLAS
(``kernels.py``), a linker that compiles each graph once and makes machine
code for it alone (``linker.py``), and glibc malloc settings (``memory.py``).

It is fast because it reaches into private internals of Numba, llvmlite,
PyTensor and numpy's wheel, which any upgrade may move.  So it is loaded
only when network3 first compiles a function in Numba mode, and it is
checked where it runs:

* at load (``numba_mode``), that PyTensor's rewrite passes are where its
  rewrites are placed among them (``PYTENSOR_POSITIONS``);
* before a compiled function's first call (``check``), each family of its
  Ops in that graph that this process has not checked yet, on test numbers
  against the Ops' numpy code (``checks.py``).

``network3.backend`` catches any failure, at load, while compiling, in a
check or in a function's first call, warns once (naming the part and the
versions), and compiles that function and every later one in PyTensor's
stock Numba mode.  Nothing in the rest of network3 imports this package.
"""

_loaded = []  # the Mode, once made


class AcceleratorError(RuntimeError):
    """The accelerator cannot be used with this PyTensor."""


# Where PyTensor's own rewrite passes are, among which the accelerator's are
# placed (rewrites.py, dense.py, pooled.py: after its first merge and before
# its canonicalisation; between its specialisation and its fusion of
# element-wise loops; between that and its destroy handler, which in-place
# rewrites need; with its in-place BLAS and random-variable rewrites).  If a
# PyTensor release renumbers them, the accelerator's would run at the wrong
# time or be dropped without a word: it is not used then.
PYTENSOR_POSITIONS = {
    "merge1": 0, "canonicalize": 1, "specialize": 2, "elemwise_fusion": 49,
    "add_destroy_handler": 49.5, "InplaceBlasOpt": 50.2, "random_make_inplace": 50.9,
}


def numba_mode():
    """The accelerated Numba mode, made once per process; raises on any
    failure (an import error, a moved private name, moved rewrite passes)."""
    if not _loaded:
        check_positions()
        from . import rewrites
        _loaded.append(rewrites.numba_mode())
    return _loaded[0]


def check_positions(positions=None):
    """Raise AcceleratorError unless PyTensor's rewrite passes are at
    ``PYTENSOR_POSITIONS`` (``positions``: name -> position, PyTensor's
    optdb by default)."""
    if positions is None:
        from pytensor.compile.mode import optdb
        positions = optdb.__position__
    moved = {name: positions.get(name) for name, where in PYTENSOR_POSITIONS.items()
             if positions.get(name) != where}
    if moved:
        found = ", ".join(f"{name} at {where}" for name, where in moved.items())
        raise AcceleratorError(
            f"PyTensor's rewrite passes have moved ({found}; expected "
            f"{', '.join(f'{n} at {p}' for n, p in PYTENSOR_POSITIONS.items() if n in moved)})")


def check(fgraph):
    """Check the families of the accelerator's Ops in the compiled graph
    ``fgraph`` that this process has not checked yet (raises CheckError);
    then, the first time, tune glibc's malloc (memory.py), so that a
    process whose check fails is left as it was."""
    from . import checks, memory
    checked = checks.check_graph(fgraph)
    memory.tune_malloc()
    return checked
