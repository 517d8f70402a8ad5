"""linker.py's GraphLinker: same results as PyTensor's Numba linker, one
disk-cache entry per graph whose key tells graphs apart, node functions
shared within a process, machine code for the graph's function only."""

import ctypes
import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from network3.accel import kernels, linker
from network3.accel.rewrites import numba_mode

rng = np.random.default_rng(5)


def _graph():
    x, w = pt.matrix("x", dtype="float64"), pt.matrix("w", dtype="float64")
    y = pt.lvector("y")
    p = pt.special.softmax(pt.tanh(x @ w) * 3.0 + 0.5, axis=1)
    cost = -pt.mean(pt.log(p)[pt.arange(y.shape[0]), y])
    return [x, w, y], [cost, pt.grad(cost, w), pt.argmax(p, axis=1)]


# PyTensor's own linker compiles its Dot with Numba's np.dot, which warns
# about the transposed operand of the gradient (on a cold cache only)
@pytest.mark.filterwarnings("ignore:np.dot.. is faster on contiguous arrays")
def test_graph_linker_computes_what_pytensors_numba_linker_does():
    inputs, outputs = _graph()
    ours = pytensor.function(inputs, outputs, mode=numba_mode())
    theirs = pytensor.function(inputs, outputs, mode="NUMBA")
    assert isinstance(ours.maker.linker, linker.GraphLinker)
    args = (rng.standard_normal((6, 4)), rng.standard_normal((4, 5)),
            rng.integers(0, 5, 6))
    for a, b in zip(ours(*args), theirs(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_graph_linker_keeps_updates_of_shared_variables():
    w = pytensor.shared(np.ones(3), name="w")
    x = pt.vector("x", dtype="float64")
    step = pytensor.function([x], (w * x).sum(), updates={w: w - 0.5 * x},
                             mode=numba_mode())
    assert step(np.arange(3.0)) == 3.0
    np.testing.assert_array_equal(w.get_value(), [1.0, 0.5, 0.0])
    assert step(np.arange(3.0)) == 0.5


def test_nodes_with_the_same_key_share_one_jitted_function():
    # static shapes no other test uses: nodes of types new to this process
    a = pt.tensor("a", dtype="float64", shape=(3, 4))
    b = pt.tensor("b", dtype="float64", shape=(4, 2))
    before = set(linker._NODE_FUNCTIONS)
    first = pytensor.function([a, b], pt.dot(a, b), mode=numba_mode())
    ours = {k: f for k, f in linker._NODE_FUNCTIONS.items() if k not in before}
    assert len(ours) == 1  # the product
    # another graph with the same node, plus one
    second = pytensor.function([a, b], [pt.dot(a, b), pt.argmax(a, axis=1)],
                               mode=numba_mode())
    new = set(linker._NODE_FUNCTIONS) - before - set(ours)
    assert len(new) == 1   # only the argmax node is new
    (key, fn), = ours.items()
    assert linker._NODE_FUNCTIONS[key] is fn
    called = second.vm.jit_fn.py_func.__globals__.values()
    assert any(g is fn for g in called)  # the second graph calls it
    u, v = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    np.testing.assert_allclose(first(u, v), u @ v)
    np.testing.assert_allclose(second(u, v)[0], u @ v)
    np.testing.assert_array_equal(second(u, v)[1], u.argmax(axis=1))


def test_nodes_of_other_dimensions_get_functions_of_their_own():
    # the same Op (a sum over axis 0) on a matrix and on a 3-d tensor: one
    # PyTensor key, two generated functions
    m, t = pt.matrix("m", dtype="float64"), pt.tensor3("t", dtype="float64")
    f = pytensor.function([m, t], [m.sum(axis=0), t.sum(axis=0)], mode=numba_mode())
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4, 5))
    out = f(a, b)
    np.testing.assert_allclose(out[0], a.sum(axis=0))
    np.testing.assert_allclose(out[1], b.sum(axis=0))


# One process per run, all sharing one compile directory: a user's first run
# and the runs after it.
_RUN = """
import json, sys
import numpy as np, pytensor, pytensor.tensor as pt
from network3.accel.rewrites import numba_mode
x = pt.matrix("x", dtype="float64")
f = pytensor.function([x], pt.exp(x @ x.T) * {scale} + 1.0, mode=numba_mode())
out = f(np.arange(6.0).reshape(2, 3) / 10)
stats = f.vm.jit_fn.stats
# the libraries of the graph's function and of its nodes' jitted functions
# (the product's; none when the graph came from the disk cache)
from network3.accel import linker
graph, = f.vm.jit_fn.overloads.values()
nodes = [c.library for fn in linker._NODE_FUNCTIONS.values()
         for c in getattr(fn, "overloads", {{}}).values()]
print(json.dumps({{"out": out.tolist(), "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values()),
                  "graph_pending": graph.library._pending,
                  "nodes": len(nodes),
                  "nodes_pending": sum(lib._pending for lib in nodes)}}))
"""


def _run(tmp_path, scale):
    env = dict(os.environ, PYTENSOR_FLAGS=f"base_compiledir={tmp_path}")
    out = subprocess.run([sys.executable, "-c", _RUN.format(scale=scale)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_graph_is_compiled_once_then_loaded_from_the_disk_cache(tmp_path):
    first = _run(tmp_path, 2.0)
    assert (first["hits"], first["misses"]) == (0, 1)
    # compiled: machine code for the graph's function, none for its nodes'
    assert first["nodes"] >= 1 and first["nodes_pending"] == first["nodes"]
    assert not first["graph_pending"]
    again = _run(tmp_path, 2.0)
    assert (again["hits"], again["misses"]) == (1, 0)
    assert again["nodes"] == 0 and not again["graph_pending"]
    a = np.arange(6.0).reshape(2, 3) / 10
    np.testing.assert_allclose(again["out"], np.exp(a @ a.T) * 2 + 1)
    # a graph that differs only in a constant has its own entry
    other = _run(tmp_path, 3.0)
    assert (other["hits"], other["misses"]) == (0, 1)
    np.testing.assert_allclose(other["out"], np.exp(a @ a.T) * 3 + 1)


#### LinkOnlyLibrary: machine code only when asked for
def _library(dispatcher):
    (compiled,) = dispatcher.overloads.values()
    return compiled.library


def test_callees_compiled_in_the_block_get_no_machine_code_until_asked():
    inner = kernels.inner(lambda x: x * 2.0 + 1.0)  # no entry point from Python

    @numba.njit
    def outer(x):
        return inner(x) - 1.0

    with linker.link_only_libraries():
        assert outer(3.0) == 6.0
    # outer was called from Python: machine code; inner runs inside it
    assert isinstance(_library(outer), linker.LinkOnlyLibrary)
    assert not _library(outer)._pending
    library = _library(inner)
    assert isinstance(library, linker.LinkOnlyLibrary) and library._pending

    # after the block, a new caller links inner's code in as any other
    @numba.njit
    def other(x):
        return inner(x) * 2.0

    assert other(1.0) == 6.0
    assert library._pending
    # asking for inner's machine code makes it, with Numba's environment
    # pointer set as Numba would have at compile time
    (compiled,) = inner.overloads.values()
    assert "ret" in inner.inspect_asm(compiled.signature.args)
    assert not library._pending
    name = compiled.fndesc.env_name
    address = library.codegen._engine.get_global_value_address(name)
    assert ctypes.c_void_p.from_address(address).value == id(compiled.environment)


def test_the_block_restores_numbas_code_libraries():
    codegen = numba.core.registry.cpu_target.target_context.codegen()
    with pytest.raises(RuntimeError, match="a compile that fails"):
        with linker.link_only_libraries():
            assert codegen._library_class is linker.LinkOnlyLibrary
            with linker.link_only_libraries():  # nested: no change
                pass
            assert codegen._library_class is linker.LinkOnlyLibrary
            raise RuntimeError("a compile that fails")
    assert "_library_class" not in vars(codegen)
    assert "set_env" not in vars(codegen)
    f = numba.njit(lambda x: x + 1)
    assert f(1) == 2
    assert not isinstance(_library(f), linker.LinkOnlyLibrary)
