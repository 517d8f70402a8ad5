"""network3.accel: the Numba accelerator.

PyTensor's Numba mode runs network3's graphs as they are.  The accelerator
runs the same arithmetic faster, to compile and to run: graph rewrites that
turn the book's SGD step into BLAS calls and single loop nests
(``rewrites.py``), Numba kernels specialised on each layer's shapes and a
BLAS binding to numpy's own OpenBLAS (``kernels.py``), a linker that
compiles each graph once and makes machine code for it alone
(``linker.py``), and glibc malloc settings (``memory.py``).

It is fast because it reaches into private internals of Numba, llvmlite,
PyTensor and numpy's wheel, which any upgrade may move.  So it is loaded
only when network3 first compiles a function in Numba mode, and before its
first use in a process it checks itself: a small network's training step,
compiled with it and run on PyTensor's Python linker (the Ops' numpy code),
must give the same numbers.  ``backend`` catches any failure, warns once,
and runs PyTensor's stock Numba mode instead.  Nothing in the rest of
network3 imports this package.
"""

import numpy as np

_checked = []  # the checked Mode, once made


class AcceleratorError(RuntimeError):
    """The accelerator failed its self-check."""


def numba_mode():
    """The accelerated Numba mode, checked once per process; raises on any
    failure (an import error, a moved private name, a wrong number)."""
    if not _checked:
        from . import memory, rewrites
        memory.tune_malloc()
        mode = rewrites.numba_mode()
        self_check(mode)
        _checked.append(mode)
    return _checked[0]


def self_check(mode):
    """Train a tiny network for three SGD steps in ``mode`` and on PyTensor's
    Python linker (numpy); raise AcceleratorError if they differ.  A sigmoid
    layer (the vectorised float32 sigmoid), softmax, the book's cost and the
    L2 term: the private machinery every book network goes through (the
    linker and its code libraries, the BLAS binding and Numba intrinsics,
    the SGD-step rewrites, dense.py's kernels).  No conv layer: its kernels
    are plain Numba loops and the same BLAS binding, and compiling them
    would add seconds to every first run (the tests check them against
    numpy and scipy)."""
    import pytensor
    import pytensor.tensor as pt
    from pytensor.compile.mode import Mode

    from . import dense

    rng = np.random.default_rng(0)
    f32 = "float32"
    B = 2
    # 20 and 16 units: wide enough for dense.py's kernels (LLVM code of
    # their own), with an input gradient and without (its rewrites then
    # take matrices of any size: ``dense.everywhere``)
    shapes = {"w2": (6, 20), "b2": (20,), "w3": (20, 16), "b3": (16,)}
    start = {name: rng.normal(0, 0.5, shape).astype(f32) for name, shape in shapes.items()}
    x_value = rng.random((3 * B, 6)).astype(f32)
    y_value = rng.integers(0, 3, 3 * B).astype("int32")

    def step(compile_mode):
        p = {name: pytensor.shared(value.copy(), name=name, shape=value.shape)
             for name, value in start.items()}
        x = pt.matrix("x", dtype=f32, shape=(B, 6))
        y = pt.vector("y", dtype="int32", shape=(B,))
        a2 = pt.sigmoid(pt.dot(x, p["w2"]) + p["b2"])
        z3 = pt.dot(a2, p["w3"]) + p["b3"]
        if compile_mode is mode:
            out = pt.special.softmax(z3, axis=1)
        else:  # PyTensor's Softmax Op would compile its inner graph in Numba
            e = pt.exp(z3 - z3.max(axis=1, keepdims=True))
            out = e / e.sum(axis=1, keepdims=True)
        l2 = sum((p[w] ** 2).sum() for w in ("w2", "w3"))
        cost = -pt.mean(pt.log(out)[pt.arange(B), y]) + 0.5 * 0.1 * l2 / 3
        params = list(p.values())
        grads = pt.grad(cost, params)
        updates = [(v, v - np.float32(0.5) * g) for v, g in zip(params, grads)]
        fn = pytensor.function([x, y], [cost, pt.argmax(out, axis=1)],
                               updates=updates, mode=compile_mode)
        results = [fn(x_value[i * B:(i + 1) * B], y_value[i * B:(i + 1) * B])
                   for i in range(3)]
        return results, {name: v.get_value() for name, v in p.items()}

    with dense.everywhere():
        ours, our_params = step(mode)
    reference, ref_params = step(Mode(linker="py", optimizer=None))
    for i, ((cost, labels), (ref_cost, ref_labels)) in enumerate(zip(ours, reference)):
        if not np.allclose(cost, ref_cost, rtol=1e-4, atol=1e-5):
            raise AcceleratorError(f"self-check: cost of step {i} is {cost}, expected {ref_cost}")
        if not np.array_equal(labels, ref_labels):
            raise AcceleratorError(
                f"self-check: predictions of step {i} are {labels}, expected {ref_labels}")
    for name, value in our_params.items():
        if not np.allclose(value, ref_params[name], rtol=1e-4, atol=1e-5):
            worst = np.abs(value - ref_params[name]).max()
            raise AcceleratorError(
                f"self-check: parameter {name} after 3 steps is off by up to {worst:.3g}")
