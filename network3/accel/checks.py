"""accel/checks.py: each family of the accelerator's Ops checked where it
runs, the first time it enters a graph.

The accelerator's kernels reach into Numba, llvmlite and numpy's OpenBLAS,
which an upgrade may change under them.  So before a compiled function is
first called, every family of its Ops that this process has not checked yet
is run on test numbers, node by node at the graph's own shapes and dtypes,
and compared with the same Ops' numpy ``perform`` on PyTensor's Python
linker.  The check graph holds the same nodes as the user's, so Numba
compiles each node's function once for both: a fully connected network
never pays for the convolution kernels' check, and a conv network pays
mostly for linking and running them.

The test numbers have what the book's graphs give the kernels: exact zeros
(ReLU, dropout: the kernels skip them), maximum ties in max-pooling windows,
sparse and dense pooled gradients (the pooled kernels switch between two
paths), labels within range.  docs/performance.md has the cost of each
family's check, cold and cached.
"""

import copy

import numpy as np
import pytensor
from pytensor.compile.io import In
from pytensor.compile.mode import Mode
from pytensor.tensor.blas import Dot22, Gemm
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.random.type import RandomGeneratorType

from ..ops import np_max_pool
from . import dense, kernels, pooled, rewrites


class CheckError(RuntimeError):
    """A family of the accelerator's Ops gave wrong numbers (or failed) in
    its first-use check; ``family`` names it."""

    def __init__(self, family, message):
        super().__init__(f"{family}: {message}")
        self.family = family


def _has_fast_sigmoid(op):
    scalar = op.scalar_op
    inner = [n.op for n in scalar.fgraph.apply_nodes] if hasattr(scalar, "fgraph") else []
    return any(isinstance(s, rewrites.FastSigmoid) for s in [scalar] + inner)


# The families, by what they reach into: name -> does this node belong to it
FAMILIES = {
    "BLAS binding (Gemm, Dot22 through numpy's OpenBLAS)":
        lambda op: type(op) in (Gemm, Dot22),
    "dense kernels (DenseUpdate, DenseForward)":
        lambda op: isinstance(op, dense.DenseUpdate | dense.DenseForward),
    "momentum kernels (DenseMomentum)":
        lambda op: isinstance(op, dense.DenseMomentum),
    "dropout masks (DropoutBits)":
        lambda op: isinstance(op, dense.DropoutBits),
    "conv kernels (Im2col, Conv2dFromCols, Conv2dGradWeightsFromCols, BlasConv2dGradInputs)":
        lambda op: isinstance(op, rewrites.Im2col | rewrites.Conv2dFromCols
                              | rewrites.Conv2dGradWeightsFromCols
                              | rewrites.BlasConv2dGradInputs),
    "pooled gradients (pooled.py)":
        lambda op: isinstance(op, pooled.PooledConv2dGradWeights
                              | pooled.PooledConv2dGradInputs),
    "loops (softmax, label pick, sums, argmax, shape check, sigmoid)":
        lambda op: isinstance(op, rewrites.RowSoftmax | rewrites.TakeRows | rewrites.PutRows
                              | rewrites.SumKeep | rewrites.ShapeCheck | rewrites.RowArgmax
                              | rewrites.SumOfSquares)
        or (isinstance(op, Elemwise) and _has_fast_sigmoid(op)),
}

_checked = set()  # the families checked in this process


def family_of(op):
    return next((name for name, belongs in FAMILIES.items() if belongs(op)), None)


def check_graph(fgraph):
    """Check every family of the accelerator's Ops in ``fgraph`` that this
    process has not checked yet; raise CheckError naming the first that
    fails.  Returns the families checked now."""
    unchecked = {}
    for node in fgraph.toposort():
        family = family_of(node.op)
        if family is None or family in _checked:
            continue
        if all(None not in getattr(v.type, "shape", ()) for v in node.inputs):
            key = (node.op, tuple(v.type for v in node.inputs))
            unchecked.setdefault(family, {}).setdefault(key, node)
    for family, nodes in unchecked.items():
        check_nodes(family, list(nodes.values()))
        _checked.add(family)
    return list(unchecked)


def check_nodes(family, nodes):
    """Run copies of ``nodes`` (one graph) compiled by the accelerator and
    on PyTensor's Python linker on the same test numbers (twice for the
    pooled kernels: sparse and dense gradients); raise CheckError if any
    output differs by more than the dtype's rounding."""
    from .linker import GraphLinker

    rng = np.random.default_rng(0)
    # the pooled kernels take one path for sparse gradients, another for
    # dense ones: two rounds; one for the others
    pooled_family = any(isinstance(node.op, pooled.PooledConv2dGradWeights
                                   | pooled.PooledConv2dGradInputs) for node in nodes)
    inputs, outputs, rounds = [], [], [[], []] if pooled_family else [[]]
    for node in nodes:
        fresh = [v.type() for v in node.inputs]
        outputs += node.op.make_node(*fresh).outputs
        destroyed = {i for out in getattr(node.op, "destroy_map", {}).values() for i in out}
        inputs += [In(v, mutable=i in destroyed) for i, v in enumerate(fresh)]
        for values, dense_gradient in zip(rounds, (False, True)):
            values += _test_values(node, rng, dense_gradient)
    try:
        fast, slow = (pytensor.function(inputs, outputs, mode=Mode(linker=linker, optimizer=None),
                                        accept_inplace=True)
                      for linker in (GraphLinker(), "py"))
        for values in rounds:
            ours = fast(*copy.deepcopy(values))
            expected = slow(*copy.deepcopy(values))
            for out, got, want in zip(outputs, ours, expected):
                _compare(family, out, got, want)
    except CheckError:
        raise
    except Exception as error:  # noqa: BLE001  (any failure: this family is broken)
        raise CheckError(family, f"{type(error).__name__}: {error}") from error


def _compare(family, out, got, want):
    if isinstance(out.type, RandomGeneratorType):
        if got.bit_generator.state != want.bit_generator.state:
            raise CheckError(family, "the generator's next state differs from numpy's")
        return
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise CheckError(family, f"an output of {out.owner.op} is {got.dtype} {got.shape}, "
                                 f"expected {want.dtype} {want.shape}")
    if want.dtype.kind in "fc":
        tolerance = (dict(rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max(initial=0)))
                     if want.dtype == np.float32 else dict(rtol=1e-10, atol=1e-10))
        ok = np.allclose(got, want, equal_nan=True, **tolerance)
    else:
        ok = np.array_equal(got, want)
    if not ok:
        worst = np.abs(got.astype(float) - want.astype(float)).max()
        raise CheckError(family, f"{out.owner.op} is off by up to {worst:.3g}")


def _test_values(node, rng, dense_gradient):
    """Numbers for ``node``'s inputs such as the book's graphs give it."""
    op = node.op
    if isinstance(op, pooled.PooledConv2dGradWeights | pooled.PooledConv2dGradInputs):
        return _pooled_values(node, rng, dense_gradient)
    values = []
    for i, var in enumerate(node.inputs):
        t = var.type
        if isinstance(t, RandomGeneratorType):
            values.append(np.random.default_rng(1))
        elif t.dtype.startswith(("int", "uint")):
            high = (op.n_classes if isinstance(op, rewrites.PutRows)
                    else node.inputs[0].type.shape[1])  # TakeRows: labels of x's columns
            values.append(rng.integers(0, high, t.shape).astype(t.dtype))
        elif t.ndim == 0:  # Gemm's and DenseUpdate's alpha and beta, DenseMomentum's too
            values.append(np.asarray(_SCALARS.get((type(op), i), 0.99), t.dtype))
        else:
            values.append(_with_zeros_and_ties(rng, t.shape, t.dtype))
    return values


# The scalar inputs' test numbers, by Op and position (0.99 where not here):
# a small negative learning rate (alpha = -eta), a momentum of 0.9
_SCALARS = {(Gemm, 1): -0.03, (dense.DenseUpdate, 3): -0.03,
            (dense.DenseMomentum, 4): -0.03, (dense.DenseMomentum, 5): 0.9}


def _with_zeros_and_ties(rng, shape, dtype):
    """Numbers in steps of 1/4 (ties), about 40% of them exact zeros."""
    x = np.round(rng.standard_normal(shape) * 4) / 4
    return (x * (rng.random(shape) < 0.6)).astype(dtype)


def _pooled_values(node, rng, dense_gradient):
    """(cols, x, z, pooled, gp) or (z, pooled, gp, w): z with ties, pooled
    its max-pooling, cols x's Im2col, gp a quarter nonzero (the kernels'
    own path) or all of it (BLAS's)."""
    op = node.op
    ph, pw = op.poolsize
    weights = isinstance(op, pooled.PooledConv2dGradWeights)
    z_type = node.inputs[2 if weights else 0].type
    dtype = z_type.dtype
    z = _with_zeros_and_ties(rng, z_type.shape, dtype)
    pooled_z = np_max_pool(z, ph, pw)
    gp = rng.standard_normal(pooled_z.shape).astype(dtype)
    if not dense_gradient:
        gp *= rng.random(gp.shape) < 0.25
    if weights:
        x = _with_zeros_and_ties(rng, node.inputs[1].type.shape, dtype)
        cols = kernels.im2col_groups(x, op.kh, op.kw).astype(dtype)
        return [cols, x, z, pooled_z, gp]
    w = rng.standard_normal(node.inputs[3].type.shape).astype(dtype)
    return [z, pooled_z, gp, w]
