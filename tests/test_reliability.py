"""Reliability: bad input, damaged files and interrupted runs give clear
errors, and nothing is lost.

* Property test (hypothesis) of random layer stacks, good and bad, against an
  independent model of what a valid network is: every stack either builds a
  network whose inference output is (mini_batch_size, n_out) rows summing to
  1 (finite outputs, and an SGD that asks for the cost, when the last layer
  is not a SoftmaxLayer), or fails with a plain ValueError/TypeError naming
  the layer and an offending number.  Never a PyTensor traceback,
  IndexError, etc.
* Property test of SGD's call-time checks (training stopped before anything
  is compiled).
* Fuzzing of ``network3.data.load_data``, ``network3.data.read_idx`` and
  ``network3.load`` with truncated and mutated versions of small valid
  files.  Each load runs in a forked child, so a crash of the interpreter is
  reported as a failure instead of killing the test run.
* Malicious pickles of several kinds are refused without running anything.
* Interrupts in the middle of training (or of saving) leave a network that
  can be saved and loaded, with the best parameters; SGD then lets the
  KeyboardInterrupt through, to stop the caller.

Nothing here compiles with Numba: graphs are evaluated with PyTensor's
FAST_COMPILE mode on tiny inputs.  The number of cases each property test
tried, by outcome, is printed in the terminal summary (see conftest.py).
"""

import contextlib
import gzip
import io
import json
import math
import os
import pickle
import select
import signal
import subprocess
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

import network3
from network3 import (
    ConvPoolLayer,
    FullyConnectedLayer,
    Network,
    ReLU,
    SoftmaxLayer,
    linear,
    sigmoid,
    tanh,
)
from network3 import data as n3data
from network3.data import DataError

STACK_EXAMPLES = 200
SGD_EXAMPLES = 200
FUZZ_EXAMPLES = 300
IDX_EXAMPLES = 150

# No "explain" phase and one bug per test: shrinking a failure stays quick.
PROPERTY = settings(deadline=None, database=None, print_blob=True,
                    report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow,
                                           HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def fast_function(inputs, outputs, **kwargs):
    """pytensor.function without Numba: a quick compile for tiny graphs."""
    return pytensor.function(inputs, outputs, mode="FAST_COMPILE", **kwargs)


def clean_type(err, *allowed):
    """True for an exception of one of the ``allowed`` types itself (or one
    of network3's own subclasses): not, say, a json.JSONDecodeError or a
    numpy AxisError, which are ValueErrors from deep inside a library."""
    kind = type(err)
    return kind in allowed or (kind.__module__.startswith("network3")
                               and issubclass(kind, allowed))


#### 1. Random layer stacks
def _fails(z):
    raise RuntimeError("this activation only takes numpy arrays")


def _returns_number(z):
    return 0.5


def _relu_typo(z):
    return pt.max(z, 0)  # meant pt.maximum(z, 0): reduces over axis 0


GOOD_ACTIVATIONS = [sigmoid, tanh, ReLU, linear]
BAD_ACTIVATIONS = [None, 3, "ReLU", _fails, _returns_number, _relu_typo]
BAD_SIZES = [0, -1, 2.5, math.nan, math.inf, "3", None, True]
GOOD_P = [0, 0.0, 0.25, 0.5, 0.9]
BAD_P = [1, 1.0, -0.1, 1.5, math.nan, math.inf, "0.5", None, True]
BAD_SHAPE_ENTRIES = [0, -1, 2.5, math.nan, math.inf, -math.inf, "2", None]
BAD_MINI_BATCH_SIZES = [0, -2, 2.5, "2", None, True]


def _activation(draw):
    """Mostly a good activation function; one in 12 times the shape-changing
    typo, one in 12 another bad value."""
    k = draw(st.integers(0, 11))
    if k == 10:
        return _relu_typo
    if k == 11:
        return draw(st.sampled_from(BAD_ACTIVATIONS))
    return draw(st.sampled_from(GOOD_ACTIVATIONS))


def _rare(draw, one_in):
    """True once in ``one_in`` draws; shrinks towards False."""
    return draw(st.integers(0, one_in - 1)) == one_in - 1


def _maybe_bad(draw, value, bad, one_in=10):
    return draw(st.sampled_from(bad)) if _rare(draw, one_in) else value


def _shape(draw, values, bad_entries):
    """The tuple ``values``, now and then with a bad entry, the wrong length
    or not a tuple at all."""
    values = tuple(values)
    if _rare(draw, 8):
        i = draw(st.integers(0, len(values) - 1))
        values = values[:i] + (draw(st.sampled_from(bad_entries)),) + values[i + 1:]
    if _rare(draw, 40):
        values = draw(st.sampled_from([values[:-1], values + (1,), values[0]]))
    return values


@st.composite
def stacks(draw):
    """(layer specs, mini_batch_size).  A spec is (kind, kwargs); kind
    "class" is the layer class itself, not an instance (a common slip)."""
    m = draw(st.integers(1, 4))
    good_m = m
    if _rare(draw, 20):
        m = draw(st.sampled_from(BAD_MINI_BATCH_SIZES))
    n_hidden = draw(st.integers(0, 3))
    prev = ("image", (draw(st.integers(1, 2)), draw(st.integers(1, 8)),
                      draw(st.integers(1, 8))))
    specs = []
    for index in range(n_hidden + 1):
        last = index == n_hidden
        if last:
            kind = "SoftmaxLayer" if not _rare(draw, 15) else draw(
                st.sampled_from(["FullyConnectedLayer", "ConvPoolLayer", "none"]))
        else:
            kind = draw(st.sampled_from(["ConvPoolLayer", "FullyConnectedLayer"]))
            if _rare(draw, 40):
                kind = "class"
        if kind == "none":
            break
        if kind == "class":
            specs.append(("class", {}))
            continue
        consistent = not _rare(draw, 4)
        if kind == "ConvPoolLayer":
            if consistent and prev[0] in ("image", "conv"):
                c, h, w = prev[1]
            elif consistent:
                c, h, w = 1, 1, prev[1]
            else:
                c, h, w = (draw(st.integers(1, 3)), draw(st.integers(1, 8)),
                           draw(st.integers(1, 8)))
            batch = good_m if not _rare(draw, 6) else draw(st.integers(1, 5))
            fit = not _rare(draw, 6)
            fh = draw(st.integers(1, h)) if fit else draw(st.integers(1, 9))
            fw = draw(st.integers(1, min(w, 5))) if fit else draw(st.integers(1, 9))
            ch, cw = max(h - fh + 1, 1), max(w - fw + 1, 1)
            fit = not _rare(draw, 4)
            ph = draw(st.integers(1, min(ch, 3))) if fit else draw(st.integers(1, 5))
            pw = draw(st.integers(1, min(cw, 3))) if fit else draw(st.integers(1, 5))
            channels = c if not _rare(draw, 6) else draw(st.integers(1, 3))
            n_filters = draw(st.integers(1, 3))
            kwargs = {
                "filter_shape": _shape(draw, (n_filters, channels, fh, fw),
                                       BAD_SHAPE_ENTRIES),
                "image_shape": _shape(draw, (batch, c, h, w), BAD_SHAPE_ENTRIES),
                "poolsize": _shape(draw, (ph, pw), BAD_SHAPE_ENTRIES),
                "activation_fn": _activation(draw)}
            if fh <= h and fw <= w and ph <= h - fh + 1 and pw <= w - fw + 1:
                prev = ("conv", (n_filters, (h - fh + 1) // ph, (w - fw + 1) // pw))
            else:
                prev = ("fc", 1)
        else:
            size = prev[1] if prev[0] == "fc" else int(np.prod(prev[1]))
            n_in = size if consistent else draw(st.integers(1, 20))
            n_out = draw(st.integers(1, 8))
            kwargs = {"n_in": _maybe_bad(draw, n_in, BAD_SIZES),
                      "n_out": _maybe_bad(draw, n_out, BAD_SIZES),
                      "p_dropout": _maybe_bad(draw, draw(st.sampled_from(GOOD_P)),
                                              BAD_P)}
            if kind == "FullyConnectedLayer":
                kwargs["activation_fn"] = _activation(draw)
            prev = ("fc", n_out)
        specs.append((kind, kwargs))
    return specs, m


class Problem:
    """Something that must make the stack fail: the error's message must
    name ``subject`` (any of these strings; "layer" matches any case) and
    show at least one of ``numbers``."""

    activation = False  # a bad activation function (sizes still usable)

    def __init__(self, what, subject, numbers):
        self.what, self.subject, self.numbers = what, subject, numbers

    def shown_by(self, message):
        named = any(s.lower() in message.lower() if s == "layer" else s in message
                    for s in self.subject)
        return named and any(n in message for n in self.numbers)

    def __repr__(self):
        return f"<{self.what}: expects one of {self.subject} and one of {self.numbers}>"


def _is_pos_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0


def _is_shape(v, length):
    if not isinstance(v, (tuple, list)) or len(v) != length:
        return False
    return all(isinstance(e, (int, float, np.integer)) and not isinstance(e, bool)
               and math.isfinite(e) and e == int(e) and e > 0 for e in v)


def _bad_shape_tokens(v, length):
    if not isinstance(v, (tuple, list)) or len(v) != length:
        return [repr(v)]
    return [repr(e) for e in v if not _is_shape((e,), 1)]


def layer_problems(kind, kw):
    """What is wrong with one layer's arguments (independent model of the
    construction-time checks).  Problems with the activation function come
    last, tagged ``activation``: the layer's sizes are still usable."""
    subject = [kind, "layer"]
    found = []

    def bad(what, numbers):
        found.append(Problem(what, subject, numbers))

    if kind == "ConvPoolLayer":
        shapes = {}
        for name, length in (("filter_shape", 4), ("image_shape", 4), ("poolsize", 2)):
            if _is_shape(kw[name], length):
                shapes[name] = tuple(int(e) for e in kw[name])
            else:
                bad(f"{name} not {length} positive integers",
                    _bad_shape_tokens(kw[name], length))
        if len(shapes) == 3:
            n_filters, channels, fh, fw = shapes["filter_shape"]
            _, image_channels, h, w = shapes["image_shape"]
            ph, pw = shapes["poolsize"]
            if channels != image_channels:
                bad("filter channels != image channels",
                    [str(channels), str(image_channels)])
            if fh > h or fw > w:
                bad("filter larger than image", [f"{fh}x{fw}", str(fh), str(fw)])
            elif ph > h - fh + 1 or pw > w - fw + 1:
                bad("pool larger than feature map",
                    [str((ph, pw)), f"{h - fh + 1}x{w - fw + 1}"])
    else:
        for name in ("n_in", "n_out"):
            if not _is_pos_int(kw[name]):
                bad(f"{name} not a positive integer", [repr(kw[name])])
        p = kw["p_dropout"]
        if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1):
            bad("p_dropout outside [0, 1)", [repr(p)])
    act = kw.get("activation_fn", sigmoid)
    if any(act is b for b in BAD_ACTIVATIONS):
        bad("activation_fn not a shape-preserving function of a tensor",
            ["activation_fn"])
        found[-1].activation = True
    return found


def _output(kind, kw):
    """The output shape of one example for a valid layer: (filters, h, w) or
    (n_out,)."""
    if kind == "ConvPoolLayer":
        n_filters, _, fh, fw = (int(e) for e in kw["filter_shape"])
        _, _, h, w = (int(e) for e in kw["image_shape"])
        ph, pw = (int(e) for e in kw["poolsize"])
        return (n_filters, (h - fh + 1) // ph, (w - fw + 1) // pw)
    return (kw["n_out"],)


def _input(kind, kw):
    if kind == "ConvPoolLayer":
        return int(np.prod([int(e) for e in kw["image_shape"][1:]]))
    return kw["n_in"]


def stack_problems(specs, m):
    """Everything wrong with a stack: each layer's own problems, then the
    network's (independent model of the checks)."""
    found = []
    valid = []  # per layer: sizes usable for the network-level checks
    for kind, kw in specs:
        if kind == "class":
            valid.append(False)
            continue
        own = layer_problems(kind, kw)
        found += own
        valid.append(all(p.activation for p in own))
    if not _is_pos_int(m):
        found.append(Problem("mini_batch_size not a positive integer",
                             ["mini_batch_size"], [repr(m)]))
    if not specs:
        found.append(Problem("no layers", ["layers"], ["[]"]))
        return found
    for i, (kind, kw) in enumerate(specs):
        name = f"layer {i}"
        if kind == "class":
            found.append(Problem("a layer class, not a layer", [name],
                                 ["not a network3 layer"]))
        elif valid[i] and kind == "ConvPoolLayer" and _is_pos_int(m) and \
                int(kw["image_shape"][0]) != m:
            found.append(Problem("image_shape batch != mini_batch_size", [name],
                                 [str(int(kw["image_shape"][0])), str(m)]))
    for i in range(1, len(specs)):
        if valid[i - 1] and valid[i]:
            out = int(np.prod(_output(*specs[i - 1])))
            inp = _input(*specs[i])
            if out != inp:
                found.append(Problem("input size != previous output size",
                                     [f"layer {i}"], [str(inp), str(out)]))
    # a last layer without a cost is fine here: SGD asks for it (below)
    return found


LAYER_TYPES = {"ConvPoolLayer": ConvPoolLayer, "FullyConnectedLayer": FullyConnectedLayer,
               "SoftmaxLayer": SoftmaxLayer}


def build(specs, m):
    layers = [FullyConnectedLayer if kind == "class" else LAYER_TYPES[kind](**kw)
              for kind, kw in specs]
    return Network(layers, m)


def infer(net, rng):
    """The inference output of ``net`` for one random mini-batch, with the
    output layer's weights made random so that the rows are not trivially
    uniform."""
    out_layer = net.layers[-1]
    out_layer.w.set_value(rng.normal(size=out_layer.w.get_value().shape)
                          .astype(out_layer.w.dtype))
    forward = fast_function([net.x], net.output)
    x = rng.random((net.mini_batch_size, net.layers[0].input_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # exp overflow in sigmoid
        return np.asarray(forward(x.astype(net.x.dtype)))


# last layers without a cost, which random stacks seldom reach valid
NO_COST_LAYER = [
    ([("FullyConnectedLayer", {"n_in": 4, "n_out": 3, "p_dropout": 0.0,
                               "activation_fn": sigmoid}),
      ("FullyConnectedLayer", {"n_in": 3, "n_out": 2, "p_dropout": 0.5,
                               "activation_fn": ReLU})], 2),
    ([("ConvPoolLayer", {"filter_shape": (2, 1, 2, 2), "image_shape": (3, 1, 5, 5),
                         "poolsize": (2, 2), "activation_fn": tanh})], 3),
]


@settings(PROPERTY, max_examples=STACK_EXAMPLES)
@given(stack=stacks(), seed=st.integers(0, 2**16))
@example(stack=NO_COST_LAYER[0], seed=0)
@example(stack=NO_COST_LAYER[1], seed=1)
def test_random_layer_stacks_build_a_working_network_or_fail_clearly(
        stack, seed, case_counts):
    specs, m = stack
    counts = case_counts.setdefault("stack property (random layer stacks)", Counter())
    note(f"layers={specs!r}, mini_batch_size={m!r}")
    problems = stack_problems(specs, m)
    note(f"expected problems: {problems}")
    try:
        net = build(specs, m)
    except (ValueError, TypeError) as err:
        message = f"{type(err).__name__}: {err}"
        note(message)
        if not clean_type(err, ValueError, TypeError):
            counts["defect: library exception"] += 1
            pytest.fail(f"{type(err).__module__}.{type(err).__name__} from inside a "
                        f"library, not a network3 check: {message}")
        if not problems:
            counts["defect: valid stack rejected"] += 1
            pytest.fail(f"a valid stack was rejected: {message}")
        if not any(p.shown_by(str(err)) for p in problems):
            counts["defect: unclear message"] += 1
            pytest.fail(f"the message names none of {problems}: {message}")
        counts[f"clean {type(err).__name__}"] += 1
        return
    except Exception as err:
        counts[f"defect: {type(err).__name__}"] += 1
        pytest.fail(f"building the network raised {type(err).__name__} (expected "
                    f"a clean ValueError/TypeError): {err}\n{traceback.format_exc()}")
    try:
        out = infer(net, np.random.default_rng(seed))
    except Exception as err:
        counts[f"defect: {type(err).__name__} at inference"] += 1
        pytest.fail(f"the network was built but its inference graph fails "
                    f"(expected problems {problems}): {type(err).__name__}: {err}")
    if problems:
        counts["defect: invalid stack accepted"] += 1
        pytest.fail(f"an invalid stack built a network {net!r} (giving output of "
                    f"shape {out.shape}); expected an error for {problems}")
    n_out = net.layers[-1].output_size
    assert out.reshape(m, -1).shape == (m, n_out)
    assert np.all(np.isfinite(out))
    if specs[-1][0] != "SoftmaxLayer":
        # usable in compiled functions; SGD, which needs the cost, says so
        with pytest.raises(TypeError, match=r"SGD: the last layer must define cost"):
            net.SGD(None, 1, m, 0.1, None)
        counts["working network, no cost layer (SGD refuses)"] += 1
        return
    assert np.allclose(out.sum(axis=1), 1, atol=1e-4)
    counts["working network"] += 1


# Each defect the property test can hit, as a plain test.
def test_shape_entries_of_infinity_are_a_clean_value_error():
    for kwargs in ({"poolsize": (math.inf, 2)},
                   {"image_shape": (2, 1, math.inf, 8)},
                   {"filter_shape": (2, 1, 3, -math.inf)}):
        args = {"filter_shape": (2, 1, 3, 3), "image_shape": (2, 1, 8, 8), **kwargs}
        with pytest.raises(ValueError, match=r"ConvPoolLayer.*inf"):
            ConvPoolLayer(**args)


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("first", ["FullyConnectedLayer", "ConvPoolLayer"])
def test_activation_that_changes_the_shape_is_refused(first, m):
    """``pt.max(z, 0)`` (a typo for ``pt.maximum(z, 0)``) is a function of a
    tensor, but reduces it: the layer (or Network) must say so."""
    if first == "ConvPoolLayer":
        def make():
            return [ConvPoolLayer((2, 1, 3, 3), (m, 1, 6, 6), activation_fn=_relu_typo),
                    SoftmaxLayer(8, 3)]
    else:
        def make():
            return [FullyConnectedLayer(4, 5, activation_fn=_relu_typo),
                    SoftmaxLayer(5, 3)]
    with pytest.raises((ValueError, TypeError)) as info:
        Network(make(), m)
    assert clean_type(info.value, ValueError, TypeError), repr(info.value)
    assert "activation_fn" in str(info.value)
    assert first in str(info.value)


#### 2. SGD's call-time checks
class _ChecksPassed(Exception):
    """Raised where SGD would compile the training function."""


def _stop_before_compiling(self, *args):
    raise _ChecksPassed


M, N_IN, N_OUT = 3, 4, 3


@st.composite
def data_sets(draw, name):
    """(x, y, problems) for one data set of a network of N_IN inputs and
    N_OUT classes, trained with mini-batches of M."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n = draw(st.integers(M, 4 * M)) if not _rare(draw, 20) else draw(st.integers(0, M - 1))
    width = N_IN if not _rare(draw, 20) else draw(st.integers(1, 8))
    n_y = n if not _rare(draw, 30) else n + draw(st.sampled_from([-1, 1]))
    x = rng.random((n, width)).astype(draw(st.sampled_from(["float32", "float64"])))
    y = rng.integers(0, N_OUT, max(n_y, 0))
    problems = []
    subject = [name]
    if len(y) != n:
        problems.append(Problem("x and y lengths differ", subject,
                                [str(x.shape), str(y.shape)]))
    elif width != N_IN:
        problems.append(Problem("wrong image size", subject, [str(width), str(N_IN)]))
    elif n < M:
        problems.append(Problem("fewer examples than a mini-batch", subject, [str(n)]))
    if n and _rare(draw, 15):
        bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        x[draw(st.integers(0, n - 1)), draw(st.integers(0, width - 1))] = bad
        problems.append(Problem("NaN or infinite pixels", subject,
                                ["NaN", "nan", "inf"]))
    if len(y) and _rare(draw, 6):
        label = draw(st.sampled_from([-1, N_OUT, 100, 1.5, 2.5, np.nan]))
        if not isinstance(label, int):
            y = y.astype(float)
        y[draw(st.integers(0, len(y) - 1))] = label
        problems.append(Problem("label not a class", subject,
                                [repr(label), str(label)]))
    elif len(y) and _rare(draw, 8):
        y = y.astype(float)  # whole-number float labels are fine
    return (x, y), problems


# SGD's number arguments, case by case: each value with the verdict a user
# should get (True: accepted).  Written out by hand, independently of
# network3's checks: whole numbers for counts (a bool is not one, nor 2.0),
# any real number for rates, never NaN, infinity, a string or None.
SGD_NUMBER_CASES = {
    "mini_batch_size": [(M, True), (np.int64(M), True), (1, False), (2, False),
                        (10, False), (0, False), ("3", False), (3.5, False)],
    "epochs": [(1, True), (5, True), (np.int64(2), True), (0, False), (-1, False),
               (1.5, False), (2.0, False), ("2", False), (math.inf, False),
               (None, False), (True, False)],
    "eta": [(0, True),  # eta = 0 evaluates without training
            (0.0, True), (3, True), (np.float32(0.1), True), (1e-12, True),
            (-0.1, False), (-1, False), (math.nan, False), (math.inf, False),
            (-math.inf, False), ("0.1", False), (None, False), (True, False)],
    "lmbda": [(0, True), (0.0, True), (5, True), (np.float64(0.5), True),
              (-1.0, False), (math.nan, False), (math.inf, False), ("0", False),
              (None, False), (False, False)],
}


def _mostly(good, name, one_in=12):
    """(value, valid): ``good`` values (valid), but once in ``one_in`` a case
    of ``SGD_NUMBER_CASES[name]``, with its verdict."""
    return st.integers(0, one_in - 1).flatmap(
        lambda k: st.sampled_from(SGD_NUMBER_CASES[name]) if k == one_in - 1
        else good.map(lambda value: (value, True)))


def _number_problem(name, case):
    value, valid = case
    return [] if valid else [Problem(f"bad {name}", [name], [repr(value)])]


@pytest.mark.parametrize("name, value, valid", [
    (name, value, valid) for name, cases in SGD_NUMBER_CASES.items()
    for value, valid in cases])
def test_sgd_number_arguments_case_by_case(sgd_checks_only, rng, name, value, valid):
    """Each row of the table, with every other argument valid."""
    arguments = {"mini_batch_size": M, "epochs": 1, "eta": 0.1, "lmbda": 0.0, name: value}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            sgd_checks_only.SGD(_pairs(rng), arguments["epochs"], arguments["mini_batch_size"],
                                arguments["eta"], _pairs(rng), None, arguments["lmbda"])
        except _ChecksPassed:
            assert valid, f"SGD accepted {name}={value!r}"
            return
        except ValueError as err:
            assert not valid, f"SGD refused {name}={value!r}: {err}"
            assert name in str(err) and repr(value) in str(err), str(err)
            return
    pytest.fail("SGD returned")


@settings(PROPERTY, max_examples=SGD_EXAMPLES)
@given(mini_batch_size=_mostly(st.just(M), "mini_batch_size"),
       epochs=_mostly(st.integers(1, 5), "epochs"),
       eta=_mostly(st.floats(0.001, 10), "eta"),
       lmbda=_mostly(st.floats(0, 5), "lmbda"),
       training=data_sets("training_data"), validation=data_sets("validation_data"),
       test=st.one_of(st.none(), data_sets("test_data")))
def test_sgd_rejects_bad_arguments_before_compiling(
        mini_batch_size, epochs, eta, lmbda, training, validation, test, case_counts):
    counts = case_counts.setdefault("SGD property (call-time checks)", Counter())
    problems = []
    for name, case in [("mini_batch_size", mini_batch_size), ("epochs", epochs),
                       ("eta", eta), ("lmbda", lmbda)]:
        problems += _number_problem(name, case)
    mini_batch_size, epochs, eta, lmbda = (
        case[0] for case in (mini_batch_size, epochs, eta, lmbda))
    for data in (training, validation, test):
        problems += data[1] if data else []
    note(f"expected problems: {problems}")
    net = Network([FullyConnectedLayer(N_IN, 5), SoftmaxLayer(5, N_OUT)], M)
    with mock.patch.object(Network, "train_mb_function", _stop_before_compiling), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # as a user runs it
        try:
            net.SGD(training[0], epochs, mini_batch_size, eta, validation[0],
                    test[0] if test else None, lmbda)
        except _ChecksPassed:
            if problems:
                counts["defect: bad arguments accepted"] += 1
                pytest.fail(f"SGD accepted bad arguments: {problems}")
            counts["accepted (valid)"] += 1
            return
        except Exception as err:
            message = f"{type(err).__name__}: {err}"
            note(message)
            if not clean_type(err, ValueError, TypeError):
                counts[f"defect: {type(err).__name__}"] += 1
                pytest.fail(f"not a clean SGD error: {message}")
            if not problems:
                counts["defect: valid arguments rejected"] += 1
                pytest.fail(f"valid arguments rejected: {message}")
            if not any(p.shown_by(str(err)) for p in problems):
                counts["defect: unclear message"] += 1
                pytest.fail(f"the message names none of {problems}: {message}")
            counts[f"clean {type(err).__name__}"] += 1


@pytest.fixture
def sgd_checks_only():
    """A tiny network whose SGD stops (raising _ChecksPassed) once the
    arguments pass the checks, before compiling anything."""
    with mock.patch.object(Network, "train_mb_function", _stop_before_compiling):
        yield Network([FullyConnectedLayer(N_IN, 5), SoftmaxLayer(5, N_OUT)], M)


def _pairs(rng, n=2 * M):
    return (rng.random((n, N_IN)).astype("float32"), rng.integers(0, N_OUT, n))


def sgd_error(net, *args):
    """The exception SGD(*args) raises in its checks (with warnings
    ignored, as a user would see them go by); fails if it accepts them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net.SGD(*args)
        except _ChecksPassed:
            pytest.fail("SGD accepted the data and went on to compile")
        except Exception as err:
            return err
    pytest.fail("SGD returned")


@pytest.mark.parametrize("labels, shown", [
    ([0.0, 1.5, 2.0, 0.0, 1.0, 2.0], "1.5"),
    ([0.0, np.nan, 2.0, 0.0, 1.0, 2.0], "nan"),
], ids=["fractional", "nan"])
def test_sgd_rejects_labels_that_are_not_class_numbers(sgd_checks_only, rng, labels,
                                                       shown):
    x, _ = _pairs(rng)
    err = sgd_error(sgd_checks_only, (x, np.array(labels)), 1, M, 0.1, _pairs(rng))
    assert type(err) is ValueError and "training_data" in str(err), repr(err)
    assert shown in str(err).lower()


@pytest.mark.parametrize("x", [
    np.array([["a"] * N_IN] * (2 * M)),
    np.array([[object()] * N_IN] * (2 * M), dtype=object),
    np.full((2 * M, N_IN), 1e300),  # finite, but not in float32
], ids=["strings", "objects", "overflows-float32"])
def test_sgd_rejects_pixels_that_are_not_float32_numbers(sgd_checks_only, rng, x):
    err = sgd_error(sgd_checks_only, (x, _pairs(rng)[1]), 1, M, 0.1, _pairs(rng))
    assert type(err) is ValueError and "training_data" in str(err), repr(err)


#### 3. Damaged files, fuzzed.  Each load runs in a forked child.
def isolated(fn, timeout=60):
    """Run ``fn()`` (which returns a JSON-able value or raises) in a forked
    child, with warnings ignored (as a user sees them: printed, not raised).
    Returns ("ok", value), ("error", module, type name, message, is a
    DataError, is a ValueError or FileNotFoundError) or ("crash", how): a
    segmentation fault or a hang in ``fn`` does not take the test run with
    it."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python and JAX (when an earlier test started it) warn about fork
        # with threads; the child only loads a file and exits
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_end)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = {"ok": fn()}
            except BaseException as err:
                result = {"error": [type(err).__module__, type(err).__name__, str(err),
                                    isinstance(err, DataError),
                                    isinstance(err, (ValueError, FileNotFoundError))]}
            payload = json.dumps(result).encode()
            with os.fdopen(write_end, "wb") as f:
                f.write(payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as f:
        while True:
            ready, _, _ = select.select([f], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return ("crash", f"no answer in {timeout} s (hung)")
            chunk = os.read(f.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ("crash", f"the interpreter died of signal {sig} "
                         f"({signal.Signals(sig).name})")
    result = json.loads(b"".join(chunks) or b"{}")
    if "ok" in result:
        return ("ok", result["ok"])
    if "error" in result:
        return ("error", *result["error"])
    return ("crash", f"the child exited with status {status} and no answer")


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
)


def mutate(raw, mutations):
    b = bytearray(raw)
    for op in mutations:
        if not b:
            break
        k = op[1] % len(b)
        if op[0] == "truncate":
            del b[k:]
        elif op[0] == "flip":
            b[k] ^= 1 << op[2]
        else:
            del b[k]
    return bytes(b)


def small_data(rng):
    def split(n):
        return (rng.random((n, 6)).astype(np.float32), rng.integers(0, 4, n))
    return split(4), split(3), split(2)


class Valid:
    """A valid file and what it holds (short repr for hypothesis' reports)."""

    def __init__(self, path, content, extra=None):
        self.path, self.content, self.extra = path, content, extra
        self.raw = path.read_bytes()
        self.fuzzed = path.parent / ("fuzzed" + "".join(path.suffixes))

    def __repr__(self):
        return f"<valid {self.path.name}>"


@pytest.fixture(scope="module")
def valid_data_file(tmp_path_factory):
    data = small_data(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("data") / "small.pkl.gz"
    n3data.save_data(data, path)
    assert [np.array_equal(a, b) for pair, orig in zip(n3data.load_data(path), data)
            for a, b in zip(pair, orig)] == [True] * 6
    return Valid(path, data)


def _data_summary(result, original):
    """What a successful load gave: "same" (identical arrays), "valid" (the
    book's layout, other values) or what is wrong with it."""
    if not (isinstance(result, tuple) and len(result) == 3):
        return f"not a 3-tuple: {type(result).__name__}"
    for pair in result:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            return "a split is not an (x, y) pair"
        x, y = pair
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim == 2
                and y.ndim == 1 and len(x) == len(y) and x.dtype.kind == "f"
                and y.dtype.kind in "iu"):
            return "a split has the wrong shapes or dtypes"
    same = all(a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
               for pair, orig in zip(result, original) for a, b in zip(pair, orig))
    return "same" if same else "valid"


def check_outcome(outcome, path, counts, *, may_differ, allowed):
    """Fail unless ``outcome`` is a valid load, or a clean error of the
    ``allowed`` kind ("data" or "network") naming ``path``."""
    kind = outcome[0]
    if kind == "crash":
        counts["defect: crash"] += 1
        pytest.fail(f"loading a damaged {path.name} crashed: {outcome[1]}")
    if kind == "ok":
        summary = outcome[1]
        if summary == "same" or (summary == "valid" and may_differ):
            counts[f"loaded ({summary})"] += 1
            return
        counts["defect: damaged content loaded"] += 1
        pytest.fail(f"a damaged {path.name} loaded as: {summary}")
    _, module, name, message, is_data_error, is_value_or_missing = outcome
    builtin = module == "builtins"
    clean = (is_data_error or (builtin and name in ("ValueError", "FileNotFoundError"))
             if allowed == "data" else
             (builtin and name == "ValueError") or (module.startswith("network3")
                                                   and is_value_or_missing))
    if not clean:
        counts[f"defect: {name}"] += 1
        pytest.fail(f"damaged {path.name}: {module}.{name} is not a documented "
                    f"error of this loader: {message}")
    if str(path) not in message:
        counts[f"defect: {name} without the file name"] += 1
        pytest.fail(f"damaged {path.name}: the message does not name the file: "
                    f"{name}: {message}")
    counts[f"clean {name}"] += 1


@settings(PROPERTY, max_examples=FUZZ_EXAMPLES)
@given(level=st.sampled_from(["gzip", "pickle"]),
       mutations=st.lists(mutation, min_size=1, max_size=3))
def test_fuzzed_data_file_loads_or_fails_clearly(valid_data_file, level, mutations,
                                                  case_counts):
    """``level`` "gzip": the file's bytes are damaged (gzip's CRC must then
    catch any change in the content); "pickle": the pickle inside is damaged
    and gzipped again (a valid gzip of a wrong pickle)."""
    counts = case_counts.setdefault(
        "data-file fuzz (network3.data.load_data)", Counter())
    raw, path = valid_data_file.raw, valid_data_file.fuzzed
    if level == "gzip":
        damaged = mutate(raw, mutations)
    else:
        damaged = gzip.compress(mutate(gzip.decompress(raw), mutations))
    path.write_bytes(damaged)
    outcome = isolated(
        lambda: _data_summary(n3data.load_data(str(path)), valid_data_file.content))
    note(f"{level} {mutations}: {outcome}")
    check_outcome(outcome, path, counts, may_differ=level == "pickle", allowed="data")


@pytest.fixture(scope="module")
def small_idx_file(tmp_path_factory):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = tmp_path_factory.mktemp("idx") / "small-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big")
                                                    for n in images.shape)
                     + images.tobytes())
    assert np.array_equal(n3data.read_idx(path), images)
    return Valid(path, images)


@settings(PROPERTY, max_examples=IDX_EXAMPLES)
@given(compressed=st.booleans(), mutations=st.lists(mutation, min_size=1, max_size=3))
def test_fuzzed_idx_file_reads_or_fails_clearly(small_idx_file, compressed, mutations,
                                                case_counts):
    counts = case_counts.setdefault("IDX fuzz (network3.data.read_idx)", Counter())
    raw, images, path = small_idx_file.raw, small_idx_file.content, small_idx_file.fuzzed
    path.write_bytes(mutate(gzip.compress(raw) if compressed else raw, mutations))

    def read():
        array = n3data.read_idx(path)
        assert isinstance(array, np.ndarray) and array.dtype == np.uint8
        return "same" if np.array_equal(array, images) else "valid"
    outcome = isolated(read)
    note(f"compressed={compressed} {mutations}: {outcome}")
    check_outcome(outcome, path, counts, may_differ=True, allowed="data")


def small_network():
    return Network([ConvPoolLayer((2, 1, 3, 3), (2, 1, 6, 6), activation_fn=ReLU),
                    FullyConnectedLayer(8, 5, p_dropout=0.2),
                    SoftmaxLayer(5, 3, p_dropout=0.1)], 2)


@pytest.fixture(scope="module")
def valid_network_file(tmp_path_factory):
    network3.seed(5)
    net = small_network()
    path = tmp_path_factory.mktemp("net") / "small.npz"
    net.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return Valid(path, net, arrays)


def _network_summary(loaded, original):
    if not isinstance(loaded, Network):
        return f"not a Network: {type(loaded).__name__}"
    if repr(loaded) != repr(original):
        return "valid"
    same = all(np.array_equal(p.get_value(), q.get_value())
               for p, q in zip(loaded.params, original.params))
    return "same" if same else "valid"


ARRAY_CHANGES = ["transpose", "drop-axis", "extra-axis", "int64", "float64", "complex",
                 "string", "datetime", "object", "missing", "extra", "architecture-int",
                 "architecture-list"]


def _change_array(arrays, change, key):
    arrays = dict(arrays)
    a = arrays[key]
    if change == "transpose":
        arrays[key] = a.T if a.ndim > 1 else a[:-1]
    elif change == "drop-axis":
        arrays[key] = a.reshape(-1)[:1].reshape(()) if a.ndim == 1 else a[0]
    elif change == "extra-axis":
        arrays[key] = a[None]
    elif change in ("int64", "float64"):
        arrays[key] = a.astype(change)
    elif change == "complex":
        arrays[key] = a.astype(np.complex64) + 1j
    elif change == "string":
        arrays[key] = a.astype(str)
    elif change == "datetime":
        arrays[key] = np.ones(a.shape, "datetime64[s]")
    elif change == "object":
        arrays[key] = a.astype(object)
    elif change == "missing":
        del arrays[key]
    elif change == "extra":
        arrays["layer9_w"] = np.zeros((2, 2), np.float32)
    elif change == "architecture-int":
        arrays["architecture"] = np.array(5)
    elif change == "architecture-list":
        arrays["architecture"] = np.array(["a", "b"])
    return arrays


@settings(PROPERTY, max_examples=FUZZ_EXAMPLES)
@given(level=st.sampled_from(["file", "architecture", "array"]),
       mutations=st.lists(mutation, min_size=1, max_size=3),
       change=st.sampled_from(ARRAY_CHANGES), key_index=st.integers(0, 5))
def test_fuzzed_network_file_loads_or_fails_clearly(valid_network_file, level, mutations,
                                                     change, key_index, case_counts):
    """``level`` "file": the .npz bytes are damaged (the zip's CRCs must then
    catch any change); "architecture": the JSON description is damaged and
    saved again; "array": a parameter gets the wrong shape or dtype."""
    counts = case_counts.setdefault("network-file fuzz (network3.load)", Counter())
    original, arrays = valid_network_file.content, valid_network_file.extra
    path = valid_network_file.fuzzed
    if level == "file":
        path.write_bytes(mutate(valid_network_file.raw, mutations))
    else:
        if level == "architecture":
            text = str(arrays["architecture"]).encode()
            changed = dict(arrays, architecture=np.array(
                mutate(text, mutations).decode("latin1")))
        else:
            keys = sorted(k for k in arrays if k != "architecture")
            changed = _change_array(arrays, change, keys[key_index % len(keys)])
        buffer = io.BytesIO()
        np.savez(buffer, **changed)
        path.write_bytes(buffer.getvalue())
    outcome = isolated(lambda: _network_summary(network3.load(str(path)), original))
    note(f"{level} {mutations if level != 'array' else change}: {outcome}")
    # int64/float64 parameters of the right shape are fine; any other
    # dtype change must fail
    if outcome[0] == "ok" and level == "array" and change not in ("int64", "float64"):
        counts["defect: wrong dtype or shape loaded"] += 1
        pytest.fail(f"a network file with a {change} parameter was loaded "
                    "without complaint")
    check_outcome(outcome, path, counts, may_differ=level == "architecture"
                  or change in ("int64", "float64"), allowed="network")


# The defects the fuzzers find, each as a plain test.
def _dtype_state_pickle():
    """A data pickle whose numpy.dtype gets a malformed state (the kind of
    thing one damaged byte produces)."""
    class BadDtype:
        def __reduce__(self):
            return (np.dtype, ("i8", False, True), (3, "<", None, -1, -1, 0))
    return pickle.dumps(((np.zeros((1, 2), np.float32), BadDtype()), (), ()), protocol=4)


def test_malformed_dtype_state_in_a_data_pickle_is_refused_not_a_crash(tmp_path):
    path = tmp_path / "damaged.pkl.gz"
    path.write_bytes(gzip.compress(_dtype_state_pickle()))
    code = ("import sys, network3.data as d\n"
            "try:\n    d.load_data(sys.argv[1])\n"
            "except d.DataError as err:\n    print('DataError:', err); sys.exit(0)\n"
            "print('loaded'); sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, (
        f"load_data of {path} exited with status {done.returncode} "
        f"({'segmentation fault' if done.returncode == -11 else done.stdout}); "
        f"it should raise DataError naming the file. {done.stderr[-500:]}")
    assert str(path) in done.stdout


def test_gzip_damage_is_detected_before_the_pickle_is_read(tmp_path, rng):
    """A bit flipped in the compressed bytes changes the pickle that gzip
    streams to the unpickler before it checks the CRC: the damage must be
    reported as damage (DataError naming the file), whatever the pickle then
    looks like."""
    path = tmp_path / "small.pkl.gz"
    data = small_data(rng)
    n3data.save_data(data, path)
    raw = path.read_bytes()
    results = Counter()
    for k in range(20, len(raw) - 8, 7):  # the deflate stream, not the header
        damaged = bytearray(raw)
        damaged[k] ^= 0x10
        path.write_bytes(bytes(damaged))
        outcome = isolated(lambda: _data_summary(n3data.load_data(str(path)), data))
        if outcome[0] == "crash":
            results["crash"] += 1
        elif outcome[0] == "error" and outcome[4] and "gzip" in outcome[3].lower():
            results["reported as damaged gzip"] += 1
        elif outcome[0] == "error":
            results[f"{outcome[2]}: {outcome[3][:70]}"] += 1
        else:
            results[f"loaded ({outcome[1]})"] += 1
    # "same": the flipped bit was in a part of the stream that does not
    # change the content
    assert set(results) <= {"reported as damaged gzip", "loaded (same)"}, "\n".join(
        f"{n} x {outcome}" for outcome, n in results.most_common())


@pytest.mark.parametrize("how", ["BadZipFile", "JSONDecodeError", "KeyError",
                                 "unknown-argument", "layer-check", "architecture-int"])
def test_damaged_network_file_is_a_value_error_naming_the_file(valid_network_file,
                                                               tmp_path, how):
    original_path, arrays = valid_network_file.path, valid_network_file.extra
    path = tmp_path / "damaged.npz"
    spec = json.loads(str(arrays["architecture"]))
    if how == "BadZipFile":
        raw = bytearray(original_path.read_bytes())
        raw[len(raw) // 2] ^= 1  # the zip's CRC-32 no longer matches
        path.write_bytes(bytes(raw))
    else:
        if how == "JSONDecodeError":
            architecture = np.array(str(arrays["architecture"])[:40])
        elif how == "architecture-int":
            architecture = np.array(5)
        else:
            if how == "KeyError":
                del spec["layers"]
            elif how == "unknown-argument":
                spec["layers"][1]["n_hidden"] = spec["layers"][1].pop("n_out")
            else:
                spec["layers"][1]["p_dropout"] = 1.5
            architecture = np.array(json.dumps(spec))
        np.savez(path, **dict(arrays, architecture=architecture))
    with pytest.raises(ValueError) as info:
        network3.load(path)
    assert type(info.value) is ValueError, repr(info.value)
    assert str(path) in str(info.value)


def test_wrong_format_data_file_is_not_called_truncated(valid_network_file, tmp_path):
    """A network file (a zip) or a text file given to load_data is not a
    gzip file at all; "it may be truncated" sends the user the wrong way."""
    text = tmp_path / "notes.txt"
    text.write_text("these are not the images you are looking for\n")
    for path in (valid_network_file.path, text):
        with pytest.raises(DataError) as info:
            n3data.load_data(path)
        message = str(info.value)
        assert str(path) in message
        assert "truncated" not in message, message


def test_load_does_not_advise_unpickling_a_non_network_file(valid_data_file, tmp_path):
    """network3.load of a pickle (a data file, or an attack) must not relay
    numpy's advice to load it with allow_pickle or pickle.load."""
    with pytest.raises(ValueError) as info:
        network3.load(valid_data_file.path)
    message = str(info.value)
    assert str(valid_data_file.path) in message
    assert "allow_pickle" not in message and "pickle.load" not in message, message


@pytest.mark.parametrize("change", ["complex", "string", "datetime"])
def test_network_file_with_parameters_of_the_wrong_dtype_is_refused(
        valid_network_file, tmp_path, change):
    arrays = valid_network_file.extra
    path = tmp_path / "damaged.npz"
    np.savez(path, **_change_array(arrays, change, "layer1_w"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
        with pytest.raises(ValueError, match="layer1_w") as info:
            network3.load(path)
    assert str(path) in str(info.value)


#### 4. Malicious pickles
def _text(s):
    return b"V" + s.encode("raw-unicode-escape") + b"\n"


def _call(module, name, *args):
    """Protocol-0 opcodes for ``module.name(*args)`` (GLOBAL + REDUCE);
    args are strings, lists of strings, dicts ({}) or None."""
    out = b"c" + module.encode() + b"\n" + name.encode() + b"\n("
    for a in args:
        if isinstance(a, str):
            out += _text(a)
        elif isinstance(a, list):
            out += b"(l" + b"".join(_text(s) + b"a" for s in a)
        elif isinstance(a, dict):
            out += b"(d"
        elif a is None:
            out += b"N"
        elif a is True:
            out += b"I01\n"
        elif isinstance(a, int):
            out += b"I%d\n" % a
    return out + b"tR"


class _CheckCallPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.check_call, (["touch", str(self.marker)],))


def malicious_pickles(marker, folder):
    """name -> pickle bytes; each, loaded by pickle.loads, creates marker
    (those that need it read ``folder``/inner.npy: see write_inner_npy)."""
    touch = f"touch {marker}"
    python = f"open({str(marker)!r}, 'w').close()"
    npy = folder / "inner.npy"
    return {
        "os.system via REDUCE": _call("os", "system", touch) + b".",
        "posix.system via REDUCE": _call("posix", "system", touch) + b".",
        "builtins.eval": _call("builtins", "eval", python) + b".",
        "builtins.exec under its Python 2 name __builtin__":
            _call("__builtin__", "exec", python) + b".",
        "subprocess.getoutput": _call("subprocess", "getoutput", touch) + b".",
        "subprocess.check_call via STACK_GLOBAL (protocol 4)":
            pickle.dumps(_CheckCallPayload(marker), protocol=4),
        "os.system via INST": b"(" + _text(touch) + b"ios\nsystem\n.",
        "numpy.load (allowed module, disallowed name)":
            _call("numpy", "load", str(npy), None, True) + b".",
        "numpy.testing.runstring (a numpy module not allowed)":
            _call("numpy.testing", "runstring", python, {}) + b".",
        "numpy.core.multiarray.empty (allowed module, disallowed name), then os.system":
            _call("numpy.core.multiarray", "empty", 3) + _call("os", "system", touch)
            + b"\x86.",
        "nested in the book's (training, validation, test) tuple":
            b"((" + _call("os", "system", touch) + b"I1\nt(I1\nI2\nt(I1\nI2\ntt.",
        "inside an object ndarray":
            pickle.dumps(np.array([_CheckCallPayload(marker)], dtype=object), protocol=2),
    }


def write_inner_npy(folder, marker):
    """An .npy file whose object array runs ``touch marker`` when
    numpy.load(path, None, True) (allow_pickle=True) reads it."""
    np.save(folder / "inner.npy", np.array([_CheckCallPayload(marker)], dtype=object),
            allow_pickle=True)


MALICIOUS = list(malicious_pickles(Path("marker"), Path("folder")))


def test_malicious_pickles_are_live_payloads(tmp_path):
    """The pickles of the next test do run their command when loaded by
    pickle.loads, so refusing them means something."""
    marker = tmp_path / "pwned"
    write_inner_npy(tmp_path, marker)
    for name, payload in malicious_pickles(marker, tmp_path).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core
            pickle.loads(payload)
        assert marker.exists(), f"{name}: the payload does not run"
        marker.unlink()


@pytest.mark.parametrize("name", MALICIOUS)
def test_malicious_pickle_is_refused_without_running_anything(tmp_path, name):
    marker = tmp_path / "pwned"
    write_inner_npy(tmp_path, marker)
    payload = malicious_pickles(marker, tmp_path)[name]
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(payload))
    with pytest.raises(DataError, match="refusing to load") as info:
        n3data.load_data(path)
    assert str(path) in str(info.value)
    # the same, not gzipped, and as a network file
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(payload)
    with pytest.raises(DataError) as info:
        n3data.load_data(raw)
    assert str(raw) in str(info.value)
    with pytest.raises(ValueError) as info:
        network3.load(raw)
    assert str(raw) in str(info.value)
    assert not marker.exists(), "the malicious pickle ran its command"


def test_persistent_id_pickle_is_refused(tmp_path):
    path = tmp_path / "persid.pkl.gz"
    path.write_bytes(gzip.compress(b"(" + _text("anything") + b"tQ."))
    with pytest.raises(DataError) as info:
        n3data.load_data(path)
    assert str(path) in str(info.value)


def test_network_file_with_a_pickled_object_array_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, architecture=np.array([_CheckCallPayload(marker)], dtype=object))
    with pytest.raises(ValueError) as info:
        network3.load(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


#### 5. Interrupted runs
def toy_data(n, rng):
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x[:, :3] + 0.3 * x[:, 3:]).argmax(axis=1).astype("int32")


class Interrupter:
    """Wraps the functions SGD compiles (with FAST_COMPILE): records the
    parameters at the end of each epoch's training and the validation
    accuracies, and raises KeyboardInterrupt at call ``at`` of function
    ``phase`` ("train", "validation" or "test")."""

    def __init__(self, net, phase, at):
        self.net, self.phase, self.at = net, phase, at
        self.calls = Counter()
        self.epoch_params, self.epoch_accuracy = [], []
        self.initial = [p.get_value() for p in net.params]
        self.made = []

    def function(self, inputs, outputs, **kwargs):
        fn = fast_function(inputs, outputs, **kwargs)
        phase = ("train" if "updates" in kwargs else
                 ["validation", "test", "predictions"][len(self.made) - 1])
        self.made.append(phase)

        def call(i):
            self.calls[phase] += 1
            if phase == "validation" and i == 0:
                self.epoch_params.append([p.get_value() for p in self.net.params])
                self.epoch_accuracy.append([])
            if phase == self.phase and self.calls[phase] == self.at:
                raise KeyboardInterrupt
            result = fn(i)
            if phase == "validation":
                self.epoch_accuracy[-1].append(float(result))
            return result
        return call

    def best_params(self, num_validation_batches):
        """The parameters of the last epoch with the best complete validation
        accuracy: what SGD keeps (>= as in the book)."""
        done = [(np.mean(a), e) for e, a in enumerate(self.epoch_accuracy)
                if len(a) == num_validation_batches]
        if not done:
            return self.initial
        return self.epoch_params[max(done)[1]]


@pytest.mark.parametrize("phase, at", [
    ("train", 3),        # epoch 0: nothing validated yet
    ("train", 8 * 2 + 3),  # epoch 2, its third mini-batch
    ("validation", 4 * 2 + 2),  # epoch 2, after its training
    ("test", 4 * 1 + 1),  # the test accuracy of the 2nd best epoch
])
def test_interrupt_leaves_a_network_with_the_best_parameters_that_saves_and_loads(
        tmp_path, capsys, phase, at):
    rng = np.random.default_rng(3)
    training, validation, test = toy_data(40, rng), toy_data(20, rng), toy_data(20, rng)
    net = Network([FullyConnectedLayer(6, 8, p_dropout=0.2),
                   SoftmaxLayer(8, 3)], 5)  # 8 training, 4 validation batches
    spy = Interrupter(net, phase, at)
    with mock.patch.object(network3.network, "function", spy.function), \
            pytest.raises(KeyboardInterrupt):  # SGD stops its caller too
        net.SGD(training, 6, 5, 2.0, validation, test)
    assert spy.calls[phase] >= at, "the interrupt never came"
    best = spy.best_params(4)
    kept_best = all(np.array_equal(p.get_value(), value)
                    for p, value in zip(net.params, best))
    assert kept_best, (
        f"after an interrupt during {phase} the network does not hold the "
        "parameters of the best epoch so far")
    path = tmp_path / "interrupted.npz"
    net.save(path)
    loaded = network3.load(path)
    assert repr(loaded) == repr(net)
    for p, value in zip(loaded.params, best):
        np.testing.assert_array_equal(p.get_value(), value)
    out = capsys.readouterr().out
    assert "Training interrupted" in out and "Finished training network." in out


@contextlib.contextmanager
def interrupted_writes():
    """Path.write_bytes writes half its bytes, then Ctrl-C arrives."""
    def half(self, data):
        with open(self, "wb") as f:
            f.write(data[:len(data) // 2])
        raise KeyboardInterrupt
    with mock.patch.object(Path, "write_bytes", half):
        yield


def test_interrupted_save_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "net.npz"
    network3.seed(1)
    first = small_network()
    first.save(path)
    network3.seed(2)
    second = small_network()
    with interrupted_writes(), pytest.raises(KeyboardInterrupt):
        second.save(path)
    loaded = network3.load(path)
    for p, q in zip(loaded.params, first.params):
        np.testing.assert_array_equal(p.get_value(), q.get_value())


def test_interrupted_save_data_leaves_the_previous_file_intact(tmp_path, rng):
    path = tmp_path / "small.pkl.gz"
    data = small_data(rng)
    n3data.save_data(data, path)
    original = path.read_bytes()

    def interrupted_dump(obj, f, protocol=None):
        f.write(pickle.dumps(obj, protocol=protocol)[:100])
        raise KeyboardInterrupt
    with mock.patch.object(n3data.pickle, "dump", interrupted_dump), \
            pytest.raises(KeyboardInterrupt):
        n3data.save_data(small_data(rng), path)
    assert path.read_bytes() == original
    loaded = n3data.load_data(path)
    assert all(np.array_equal(a, b) for pair, orig in zip(loaded, data)
               for a, b in zip(pair, orig))
