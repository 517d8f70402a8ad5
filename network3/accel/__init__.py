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
    """Train a tiny conv network for two SGD steps in ``mode`` and on
    PyTensor's Python linker; raise AcceleratorError if they differ.  The
    network has both of the accelerator's conv layouts (one product per
    image, one per batch), sigmoid and ReLU, the L2 term and the book's cost,
    so every rewrite and kernel of the book's networks runs."""
    import pytensor
    import pytensor.tensor as pt
    from pytensor.compile.mode import Mode

    from .. import ops

    rng = np.random.default_rng(0)
    f32 = "float32"
    B = 2
    shapes = {"w1": (2, 1, 3, 3), "b1": (2,), "w2": (3, 2, 3, 3), "b2": (3,),
              "w3": (27, 4), "b3": (4,), "w4": (4, 3), "b4": (3,)}
    start = {name: rng.normal(0, 0.5, shape).astype(f32) for name, shape in shapes.items()}
    x_value = rng.random((3 * B, 400)).astype(f32)
    y_value = rng.integers(0, 3, 3 * B).astype("int32")

    def step(compile_mode):
        p = {name: pytensor.shared(value.copy(), name=name, shape=value.shape)
             for name, value in start.items()}
        x = pt.matrix("x", dtype=f32, shape=(B, 400))
        y = pt.vector("y", dtype="int32", shape=(B,))
        images = x.reshape((B, 1, 20, 20))
        z1 = ops.conv2d(images, p["w1"], (B, 1, 20, 20), shapes["w1"])   # 18 x 18
        a1 = pt.sigmoid(ops.max_pool_2d(z1, (B, 2, 18, 18), (2, 2))
                        + p["b1"].dimshuffle("x", 0, "x", "x"))         # 9 x 9
        z2 = ops.conv2d(a1, p["w2"], (B, 2, 9, 9), shapes["w2"])          # 7 x 7
        a2 = pt.maximum(0.0, ops.max_pool_2d(z2, (B, 3, 7, 7), (2, 2))
                        + p["b2"].dimshuffle("x", 0, "x", "x"))         # 3 x 3
        a3 = pt.sigmoid(pt.dot(a2.flatten(2), p["w3"]) + p["b3"])
        out = pt.special.softmax(pt.dot(a3, p["w4"]) + p["b4"], axis=1)
        l2 = sum((p[w] ** 2).sum() for w in ("w1", "w2", "w3", "w4"))
        cost = -pt.mean(pt.log(out)[pt.arange(B), y]) + 0.5 * 0.1 * l2 / 3
        params = list(p.values())
        grads = pt.grad(cost, params)
        updates = [(v, v - np.float32(0.5) * g) for v, g in zip(params, grads)]
        fn = pytensor.function([x, y], [cost, pt.argmax(out, axis=1)],
                               updates=updates, mode=compile_mode)
        results = [fn(x_value[i * B:(i + 1) * B], y_value[i * B:(i + 1) * B])
                   for i in range(3)]
        return results, {name: v.get_value() for name, v in p.items()}

    ours, our_params = step(mode)
    reference, ref_params = step(Mode(linker="py", optimizer="fast_compile"))
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
