"""The Numba accelerator (network3/accel): loaded only when a function is
compiled in Numba mode, checked before use, and never in the way: when it
breaks, network3 warns once and trains on PyTensor's stock Numba mode.

Each case runs in a fresh process, as a user's script would: the
accelerator loads once per process."""

import json
import os
import subprocess
import sys

import pytest

# A user's script: build a small network, train it for one epoch on random
# data, report what happened.  {before} runs first (to break something).
_SCRIPT = """
import json, warnings
warnings.simplefilter("always")
{before}
import numpy as np
import network3
from network3 import Network, FullyConnectedLayer, SoftmaxLayer
from network3.backend import AcceleratorWarning, accelerator_status
rng = np.random.default_rng(0)
data = (rng.random((200, 784), dtype=np.float32), rng.integers(0, 10, 200))
network3.seed(0)
net = Network([FullyConnectedLayer(784, 30), SoftmaxLayer(30, 10)], 10)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    net.SGD(data, 2, 10, 0.5, data, lmbda=0.1)
    net.accuracy(data)   # another compile: no second warning
print(json.dumps({{
    "status": accelerator_status(),
    "warnings": [str(w.message) for w in caught if w.category is AcceleratorWarning],
    "weights": float(np.abs(net.layers[0].w.get_value()).sum()),
    "accel_loaded": "network3.accel" in __import__("sys").modules,
}}))
"""


def _run(before="", env=None):
    environment = {**os.environ, **(env or {})}
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(before=before)],
                         capture_output=True, text=True, timeout=600, env=environment)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_network3_loads_neither_jax_nor_numba_nor_the_accelerator():
    out = subprocess.run([sys.executable, "-c", (
        "import importlib.util, sys, network3\n"
        "assert importlib.util.find_spec('jax')  # installed, and yet not imported\n"
        "loaded = [m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'numba',"
        " 'llvmlite', 'network3.accel', 'network3.jax_ops', 'network3.numba_ops'))]\n"
        "print(loaded)")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_training_runs_accelerated_by_default():
    result = _run()
    assert result["status"] == "on"
    assert result["warnings"] == []
    assert result["accel_loaded"]


def test_a_missing_private_name_falls_back_with_one_warning():
    # an upgrade of Numba that moved a name the linker needs
    broken = _run("import numba.core.codegen as codegen\ndel codegen.JITCodeLibrary")
    assert broken["status"].startswith("failed: ImportError")
    assert len(broken["warnings"]) == 1, broken["warnings"]
    message = broken["warnings"][0]
    assert "JITCodeLibrary" in message and "stock Numba mode" in message
    assert "numba " in message and "pytensor " in message  # the versions
    # and training ran, to the same weights as with the accelerator
    assert broken["weights"] == pytest.approx(_run()["weights"], rel=1e-4)


def test_a_wrong_number_in_the_self_check_falls_back():
    # a kernel that computes the wrong thing: softmax as log-softmax
    wrong = _run(
        "from network3.accel import rewrites\n"
        "rewrites.NUMBA_FUNCTIONS[rewrites.RowSoftmax] = "
        "lambda op, node, **kw: rewrites._numba_funcify_row_softmax(\n"
        "    rewrites.RowSoftmax(True), node)")
    assert wrong["status"].startswith("failed: AcceleratorError: self-check")
    assert len(wrong["warnings"]) == 1
    assert wrong["weights"] == pytest.approx(_run()["weights"], rel=1e-4)


def test_the_environment_variable_turns_the_accelerator_off():
    off = _run(env={"NETWORK3_ACCELERATOR": "0"})
    assert off["status"] == "off" and off["warnings"] == []
    assert not off["accel_loaded"]


def test_use_accelerator_false_compiles_with_pytensors_stock_linker():
    import pytensor.tensor as pt
    from pytensor.link.numba.linker import NumbaLinker

    import network3
    from network3.backend import function
    x = pt.vector("x", dtype="float64")
    try:
        network3.use_accelerator(False)
        off = function([x], x * 2)
    finally:
        network3.use_accelerator(True)
    on = function([x], x * 2)
    assert type(off.maker.linker) is NumbaLinker
    assert type(on.maker.linker).__name__ == "GraphLinker"
