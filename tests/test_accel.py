"""The Numba accelerator (network3/accel): loaded only when a function is
compiled in Numba mode, checked before use, and never in the way: when it
breaks, network3 warns once and trains on PyTensor's stock Numba mode.

Each case runs in a fresh process, as a user's script would: the
accelerator loads once per process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import network3


@pytest.fixture(autouse=True)
def _accelerator_setting_restored():
    """Tests that switch the accelerator leave the default (the
    NETWORK3_ACCELERATOR variable) to the tests after them."""
    yield
    network3.use_accelerator(None)

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


def test_a_wrong_number_in_a_check_falls_back():
    # a kernel that computes the wrong thing: softmax as log-softmax
    wrong = _run(
        "from network3.accel import rewrites\n"
        "rewrites.NUMBA_FUNCTIONS[rewrites.RowSoftmax] = "
        "lambda op, node, **kw: rewrites._numba_funcify_row_softmax(\n"
        "    rewrites.RowSoftmax(True), node)")
    assert wrong["status"].startswith("failed: CheckError: loops")
    assert len(wrong["warnings"]) == 1
    assert "RowSoftmax" in wrong["warnings"][0]
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
    network3.use_accelerator(False)
    off = function([x], x * 2)
    network3.use_accelerator(True)
    on = function([x], x * 2)
    assert type(off.maker.linker) is NumbaLinker
    assert type(on.maker.linker).__name__ == "GraphLinker"


#### Every family of the accelerator's Ops, checked where it runs
# A network with every family in its training step (mini-batch 10): a conv
# layer (conv kernels), a second whose patch rows are long enough for
# pooled.py, a fully connected layer at BLAS's sizes (BLAS binding), one of
# 100 x 1000 weights with dropout (dense kernels, masks) and a softmax
# (loops); ReLU for exact zeros.  Trained for one epoch of 5 mini-batches
# with network3.seed(0) and the given momentum (not 0: the momentum kernels
# in place of the dense update); the parameters go to {out}.
_ALL_FAMILIES = """
import json, sys, warnings
warnings.simplefilter("always")
{before}
import numpy as np
import network3
from network3 import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer
from network3.backend import AcceleratorWarning, accelerator_status
rng = np.random.default_rng(0)
data = (rng.random((50, 400), dtype=np.float32), rng.integers(0, 10, 50))
network3.seed(0)
net = Network([ConvPoolLayer((16, 1, 5, 5), (10, 1, 20, 20), activation_fn=ReLU),
               ConvPoolLayer((8, 16, 5, 5), (10, 16, 8, 8), activation_fn=ReLU),
               FullyConnectedLayer(32, 100, ReLU),
               FullyConnectedLayer(100, 1000, ReLU, p_dropout=0.5),
               SoftmaxLayer(1000, 10, p_dropout=0.5)], 10)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    net.SGD(data, 1, 10, 0.03, data, lmbda=0.1, momentum={momentum})
np.savez("{out}", *[p.get_value() for p in net.params])
checked = sorted(sys.modules["network3.accel.checks"]._checked) \
    if "network3.accel.checks" in sys.modules else []
print(json.dumps({{
    "status": accelerator_status(),
    "warnings": [str(w.message) for w in caught if w.category is AcceleratorWarning],
    "checked": checked,
}}))
"""


def _run_all_families(tmp_path, before="", env=None, momentum=0.0):
    out = tmp_path / f"params{len(list(tmp_path.iterdir()))}.npz"
    script = _ALL_FAMILIES.format(before=before, out=out, momentum=momentum)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=900, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    with np.load(out) as params:
        report["params"] = [params[k] for k in params.files]
    return report


def _same_numbers(a, b):
    """The same training within float32 rounding (sums in other orders)."""
    for x, y in zip(a["params"], b["params"]):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6)


@pytest.fixture(scope="module")
def all_families(tmp_path_factory):
    """The network trained with the accelerator and without it."""
    tmp = tmp_path_factory.mktemp("all_families")
    return (_run_all_families(tmp), _run_all_families(tmp, env={"NETWORK3_ACCELERATOR": "0"}))


@pytest.fixture(scope="module")
def all_families_momentum(tmp_path_factory):
    """The same with momentum 0.9 (the momentum kernels)."""
    tmp = tmp_path_factory.mktemp("all_families_momentum")
    return (_run_all_families(tmp, momentum=0.9),
            _run_all_families(tmp, env={"NETWORK3_ACCELERATOR": "0"}, momentum=0.9))


def test_a_dropout_network_seeded_trains_the_same_with_the_accelerator_on_and_off(all_families):
    """network3.seed(0): the same masks, so the same parameters, whichever
    engine runs the graph (CONTRACT section 7)."""
    on, off = all_families
    assert on["status"] == "on" and on["warnings"] == []
    assert off["status"] == "off"
    _same_numbers(on, off)


def test_with_momentum_the_network_trains_the_same_with_the_accelerator_on_and_off(
        all_families_momentum):
    on, off = all_families_momentum
    assert on["status"] == "on" and on["warnings"] == []
    assert any(name.startswith("momentum kernels") for name in on["checked"])
    _same_numbers(on, off)


# Each family's Op classes in the Numba dispatch table, and the variable
# they are in (rewrites.NUMBA_FUNCTIONS: rewrites.py's and those of dense.py
# and pooled.py it gathers)
FAMILY_OPS = {
    "BLAS binding": "Gemm",
    "dense kernels": "dense.DenseUpdate",
    "momentum kernels": "dense.DenseMomentum",
    "dropout masks": "dense.DropoutBits",
    "conv kernels": "rewrites.Conv2dFromCols",
    "pooled gradients": "pooled.PooledConv2dGradInputs",
    "loops": "rewrites.SumKeep",
}

# Break one Op's Numba implementation: raise while compiling (a private
# name that moved), or return numbers off (times 1.5, a mask inverted)
_BREAK = """
from numba import njit
from pytensor.tensor.blas import Gemm
from pytensor.tensor.random.type import RandomGeneratorType
from network3.accel import dense, pooled, rewrites
op_class = {op_class}
original = rewrites.NUMBA_FUNCTIONS[op_class]

def broken(op, node, **kwargs):
    if "{how}" == "raise":
        raise AttributeError("module 'numba.core' has no attribute 'moved_name'")
    fn, key = original(op, node, **kwargs)
    args = ", ".join(f"a{{i}}" for i in range(len(node.inputs)))
    outs = []
    for k, out in enumerate(node.outputs):
        got = f"out[{{k}}]" if len(node.outputs) > 1 else "out"
        if isinstance(out.type, RandomGeneratorType):
            outs.append(got)
        elif out.type.dtype == "bool":
            outs.append(f"~{{got}}")
        else:
            outs.append(f"{{got}} * 1.5")
    result = outs[0] if len(outs) == 1 else "(" + ", ".join(outs) + ",)"
    scope = dict(fn=fn)
    exec(f"def wrong({{args}}):\\n    out = fn({{args}})\\n    return {{result}}\\n", scope)
    return njit(scope["wrong"]), key + "broken"

rewrites.NUMBA_FUNCTIONS[op_class] = broken
"""


@pytest.mark.parametrize("how", ["raise", "wrong"])
@pytest.mark.parametrize("family", list(FAMILY_OPS))
def test_each_family_broken_falls_back_with_one_warning_and_the_same_numbers(
        family, how, request, tmp_path):
    # (the momentum kernels: in the step with momentum only)
    momentum = 0.9 if family == "momentum kernels" else 0.0
    on, off = request.getfixturevalue("all_families_momentum" if momentum else "all_families")
    assert any(name.startswith(family) for name in on["checked"])  # the graph has it
    broken = _run_all_families(tmp_path, _BREAK.format(op_class=FAMILY_OPS[family], how=how),
                               momentum=momentum)
    assert broken["status"].startswith("failed:"), broken["status"]
    assert len(broken["warnings"]) == 1, broken["warnings"]
    message = broken["warnings"][0]
    assert "stock Numba mode" in message and "numba " in message and "pytensor " in message
    if how == "wrong":  # found by the family's check, which names it
        assert family in message, message
    else:
        assert "moved_name" in message
    _same_numbers(broken, off)


def test_each_family_is_checked_the_first_time_it_enters_a_graph():
    """A fully connected network checks the families in its graph, and not
    the convolution's; a conv network's graph then checks those it adds."""
    script = """
import json, sys
import numpy as np, pytensor
import network3
from network3 import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer
checks = __import__("network3.accel.checks").accel.checks
x = pytensor.shared(np.zeros((20, 784), np.float32)); y = pytensor.shared(np.zeros(20, np.int32))
fc = Network([FullyConnectedLayer(784, 200, ReLU, 0.5), SoftmaxLayer(200, 10)], 10)
fc.train_mb_function(x, y, 0.1, 0.0, 2)
after_fc = sorted(checks._checked)
conv = Network([ConvPoolLayer((20, 1, 5, 5), (10, 1, 28, 28), activation_fn=ReLU),
                FullyConnectedLayer(20 * 12 * 12, 30, ReLU), SoftmaxLayer(30, 10)], 10)
conv.train_mb_function(x, y, 0.1, 0.0, 2)
print(json.dumps([after_fc, sorted(checks._checked)]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    after_fc, after_conv = json.loads(out.stdout.strip().splitlines()[-1])
    short = {name.split(" (")[0] for name in after_fc}
    assert short == {"dense kernels", "dropout masks", "loops", "BLAS binding"}
    assert {name.split(" (")[0] for name in after_conv} == short | {"conv kernels"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_checks_find_a_kernel_off_by_one_rounding_step_more_than_allowed(dtype):
    """The comparison itself: within the dtype's rounding passes, beyond
    it fails, naming the family and the Op."""
    import pytensor.tensor as pt

    from network3.accel import checks
    x = pt.matrix("x", dtype=dtype, shape=(10, 3))
    out = (x * 2).sum()
    want = np.asarray(3.0, dtype)
    close = want * (1 + (5e-5 if dtype == "float32" else 5e-11))
    far = want * (1 + (1e-3 if dtype == "float32" else 1e-8))
    checks._compare("a family", out, close, want)
    with pytest.raises(checks.CheckError, match="a family: .* off by up to"):
        checks._compare("a family", out, far, want)


def test_moved_rewrite_positions_fall_back_with_one_warning():
    moved = _run("from pytensor.compile.mode import optdb\n"
                 "optdb.__position__['add_destroy_handler'] = 49.7")
    assert moved["status"].startswith("failed: AcceleratorError: PyTensor's rewrite passes")
    assert len(moved["warnings"]) == 1
    assert "add_destroy_handler at 49.7" in moved["warnings"][0]
    assert moved["weights"] == pytest.approx(_run()["weights"], rel=1e-4)


def test_check_positions_names_what_moved():
    from network3.accel import PYTENSOR_POSITIONS, AcceleratorError, check_positions
    check_positions(dict(PYTENSOR_POSITIONS))
    with pytest.raises(AcceleratorError, match="elemwise_fusion at 48"):
        check_positions({**PYTENSOR_POSITIONS, "elemwise_fusion": 48})
    with pytest.raises(AcceleratorError, match="InplaceBlasOpt at None"):
        check_positions({k: v for k, v in PYTENSOR_POSITIONS.items() if k != "InplaceBlasOpt"})


def test_malloc_is_tuned_only_after_a_check_passes():
    script = """
import json, sys
{before}
import numpy as np
import network3
from network3 import FullyConnectedLayer, Network, SoftmaxLayer
import network3.accel.memory as memory
calls = []
memory.tune_malloc = lambda: calls.append(1)
rng = np.random.default_rng(0)
data = (rng.random((20, 784), dtype=np.float32), rng.integers(0, 10, 20))
import warnings
warnings.simplefilter("ignore")
Network([FullyConnectedLayer(784, 30), SoftmaxLayer(30, 10)], 10).SGD(data, 1, 10, 0.1, data)
print(json.dumps(len(calls)))
"""
    wrong = ("from network3.accel import rewrites\n"
             "rewrites.NUMBA_FUNCTIONS[rewrites.RowSoftmax] = "
             "lambda op, node, **kw: rewrites._numba_funcify_row_softmax("
             "rewrites.RowSoftmax(True), node)")
    counts = []
    for before in ("", wrong):
        out = subprocess.run([sys.executable, "-c", script.format(before=before)],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        counts.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert counts[0] >= 1 and counts[1] == 0


def test_a_first_call_that_fails_is_made_again_in_the_stock_mode_with_one_warning():
    """What the first call changed in place is put back first."""
    import warnings

    import pytensor
    from pytensor.compile.mode import Mode

    from network3 import backend
    w = pytensor.shared(np.zeros(3), name="w")
    fn = pytensor.function([], w.sum(), updates=[(w, w + 1)], mode=Mode(linker="py"))

    class Failing:  # the accelerated function: changes w, then fails
        maker, input_storage = fn.maker, fn.input_storage

        def __call__(self):
            w.container.storage[0][:] = 99.0
            raise RuntimeError("LLVM ERROR: symbol not found")

    saved = dict(backend._accelerator)
    try:
        wrapped = backend._FirstCall(Failing(), lambda: fn)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert wrapped() == 0.0 and wrapped() == 3.0
        assert [str(c.message).count("symbol not found") for c in caught] == [1]
        assert backend.accelerator_status().startswith("failed: RuntimeError")
        np.testing.assert_array_equal(w.get_value(), [2.0, 2.0, 2.0])
    finally:
        backend._accelerator.clear()
        backend._accelerator.update(saved)
