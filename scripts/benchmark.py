"""benchmark.py: network3's training speed at the book's settings, against
the PyTorch a user would write and against network3's own JAX backend.

Each network of chapter 6 is trained at the chapter's settings (eta, lmbda,
dropout; mini-batch 10, float32) on random images of MNIST's shape (the
timing does not depend on the values).  Every measurement runs in a fresh
process, and the runs are interleaved, round after round, so that all meet
the same load on a shared machine:

    network3 (first call with an empty compile cache), network3 (cache
    filled), PyTorch on 1 thread, PyTorch on its default threads,
    network3's JAX backend on the CPU; then again (--repeats rounds).

What one step is: network3's ``Network.train_mb_function`` (the book's
cost, its gradient and the update ``w - eta*grad``, in BLAS threads as SGD
sets them); PyTorch's ``zero_grad``, forward, ``backward`` and
``torch.optim.SGD(lr=eta, foreach=True).step()`` with the book's semantics:
the L2 term as ``weight_decay = lmbda / num_training_batches`` on the
weights only (the gradient of the book's ``0.5*lmbda/n * sum(w**2)``),
non-inverted dropout masks on the layer inputs, true convolutions (flipped
kernels) with max-pooling, the mean negative log-likelihood of the softmax
(``F.cross_entropy``), the book's initialisation.  With ``--momentum MU``
(chapter 3's momentum, off in the book's chapter 6): network3's
``momentum=MU`` in its step, PyTorch's ``torch.optim.SGD(...,
momentum=MU)``, as their users write them (the same steps at a constant
eta: PyTorch's velocity is network3's divided by -eta).  Per step: the mean over
--steps steps after --warmup steps (a run stops timing after 30 s and
warming up after 7.5 s: PyTorch's thread pool on a busy machine can take
a hundred times longer a step), waiting for JAX's asynchronous results;
per epoch: x 5,000 (50,000 images at mini-batch 10); the fastest of the
rounds counts, and their spread (min-max) is shown.  First call:
importing, building, compiling and the first step, with an empty
PyTensor/Numba cache (base_compiledir and NUMBA_CACHE_DIR in a new
temporary folder) and then with that cache filled.

"Where the time goes": per network a floor for one step, the larger of
compute (the FLOPs the step needs, 2*m*n*k per matrix product, convolutions
as their im2col products, less the multiplications by inputs that dropout
masked, at the fastest one-thread sgemm speed measured) and memory (the
bytes the step must move, at the one-thread bandwidth of numpy's sum and
copy over an array of the step's working-set size): the weights read by the
forward product, then read and written once by an update that gives the
input's gradient from the same read; each activation and its gradient
written once and read twice (``step_work`` says more).  Element-wise work,
dropout masks and the softmax are left out: a floor, not a model.  Beside
it: the step's dense products as one-thread sgemm calls at their shapes,
what a step built on BLAS pays for them.

PyTorch is not a dependency of network3: ``--torch-python`` names an
interpreter that has it (default: this one), so that network3 on one
Python can be measured against PyTorch on another.  Nothing is written
unless --out is given.  OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, where set,
slow numpy's OpenBLAS: the header says whether they were set.

    python scripts/benchmark.py --out results/benchmark.md
    python scripts/benchmark.py --nets dbl_conv_relu --steps 200 --repeats 3
    python scripts/benchmark.py --nets double_fc_dropout --momentum 0.9 --no-cold
    /work/venv313/bin/python scripts/benchmark.py --torch-python .venv/bin/python
    python scripts/benchmark.py --check-cost --nets dbl_conv_relu double_fc_dropout
"""

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

MINI_BATCH = 10
STEPS_PER_EPOCH = 5000  # 50,000 images at mini-batch 10
SIZE = 28  # MNIST's images

# The chapter's networks and their settings (shared/reference CONTRACT.md,
# section 4).  Layers: ("conv", filters, channels, image size) with 5x5
# kernels and 2x2 max-pooling, ("fc" | "softmax", n_in, n_out, p_dropout).
_CONV1 = ("conv", 20, 1, 28)
_CONV2 = ("conv", 40, 20, 12)
NETS = {
    "shallow": dict(act="sigmoid", eta=0.1, lmbda=0.0, images=50_000, layers=[
        ("fc", 784, 100, 0.0), ("softmax", 100, 10, 0.0)]),
    "basic_conv": dict(act="sigmoid", eta=0.1, lmbda=0.0, images=50_000, layers=[
        _CONV1, ("fc", 2880, 100, 0.0), ("softmax", 100, 10, 0.0)]),
    "dbl_conv": dict(act="sigmoid", eta=0.1, lmbda=0.0, images=50_000, layers=[
        _CONV1, _CONV2, ("fc", 640, 100, 0.0), ("softmax", 100, 10, 0.0)]),
    "dbl_conv_relu": dict(act="relu", eta=0.03, lmbda=0.1, images=50_000, layers=[
        _CONV1, _CONV2, ("fc", 640, 100, 0.0), ("softmax", 100, 10, 0.0)]),
    # trained on the expanded set of 250,000 images (the L2 term would be
    # lmbda / 25,000; lmbda is 0); an epoch of it is 5 of the 50,000 here
    "double_fc_dropout": dict(act="relu", eta=0.03, lmbda=0.0, images=250_000, layers=[
        _CONV1, _CONV2, ("fc", 640, 1000, 0.5), ("fc", 1000, 1000, 0.5),
        ("softmax", 1000, 10, 0.5)]),
    # conv.py's beyond (issue 25): wider conv layers, on the 50,000 images
    # (the step only: its on-the-fly augmentation is not timed)
    "beyond": dict(act="relu", eta=0.03, lmbda=0.1, images=50_000, layers=[
        ("conv", 32, 1, 28), ("conv", 64, 32, 12), ("fc", 1024, 1000, 0.5),
        ("fc", 1000, 1000, 0.5), ("softmax", 1000, 10, 0.5)]),
}
DEFAULT_NETS = ("shallow", "dbl_conv", "dbl_conv_relu", "double_fc_dropout")


def layers_spec(name):
    """The old interface: (activation name, [(kind, args)]), kept for
    scripts that read it."""
    spec = NETS[name]
    out = []
    for layer in spec["layers"]:
        if layer[0] == "conv":
            out.append(("conv", dict(filters=layer[1], channels=layer[2], size=layer[3])))
        else:
            out.append((layer[0], layer[1:]))
    return spec["act"], out


def settings(name, momentum=0.0):
    spec = NETS[name]
    p = max(layer[3] for layer in spec["layers"] if layer[0] != "conv")
    text = f"eta {spec['eta']}, lmbda {spec['lmbda']}"
    return text + (f", p_dropout {p}" if p else "") + (f", momentum {momentum}" if momentum
                                                       else "")


def synthetic(n):
    rng = np.random.default_rng(0)
    return (rng.random((n, SIZE * SIZE), dtype=np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def _sync(out):
    """Wait for ``out``: JAX dispatches asynchronously (its function returns
    before the step is computed); numpy and PyTorch on the CPU need nothing."""
    for value in out if isinstance(out, (list, tuple)) else [out]:
        if hasattr(value, "block_until_ready"):
            value.block_until_ready()


# a run's timed steps stop after this many seconds (a run that slow, such
# as PyTorch's thread pool on a busy machine, is then timed over fewer steps)
MAX_TIMED_S = 30.0


def _timed_loop(step, steps, warmup, start, max_s=None):
    """Run ``step(0)`` (the first call, timed from ``start``), ``warmup``
    more steps (or those that fit in ``max_s / 4`` seconds), then ``steps``
    timed ones, or as many as fit in ``max_s`` seconds: (first call s, s per
    step, steps timed).  Each step's cost depends on the parameters the step
    before updated, so waiting for the last one waits for them all."""
    max_s = MAX_TIMED_S if max_s is None else max_s
    _sync(step(0))
    first_call = time.perf_counter() - start
    out = None
    t0 = time.perf_counter()
    for i in range(1, warmup + 1):
        out = step(i)
        if time.perf_counter() - t0 > max_s / 4:  # warm enough
            break
    _sync(out)
    if not steps:
        return first_call, None, 0
    t0 = time.perf_counter()
    done = 0
    for i in range(warmup + 1, warmup + 1 + steps):
        out = step(i)
        done += 1
        if time.perf_counter() - t0 > max_s:
            break
    _sync(out)
    return first_call, (time.perf_counter() - t0) / done, done


_steps_timed = 0  # the last run's timed steps


#### network3
def time_network3(name, steps, backend="numba", gpu=False, warmup=100, momentum=0.0):
    """(first call s, s per step) of network3's training step for network
    ``name`` at the book's settings (and ``momentum``); the first call
    includes importing network3, building the network and compiling its
    step."""
    start = time.perf_counter()
    import pytensor

    import network3
    network3.GPU = gpu  # the book's flag: JAX on a CUDA GPU
    from network3 import (
        ConvPoolLayer,
        FullyConnectedLayer,
        Network,
        ReLU,
        SoftmaxLayer,
        sigmoid,
    )
    network3.set_backend(backend)
    network3.seed(0)
    spec = NETS[name]
    act = ReLU if spec["act"] == "relu" else sigmoid
    layers = []
    for kind, a, b, c in spec["layers"]:
        if kind == "conv":
            filters, channels, size = a, b, c
            layers.append(ConvPoolLayer(
                filter_shape=(filters, channels, 5, 5),
                image_shape=(MINI_BATCH, channels, size, size), activation_fn=act))
        elif kind == "fc":
            layers.append(FullyConnectedLayer(a, b, activation_fn=act, p_dropout=c))
        else:
            layers.append(SoftmaxLayer(a, b, p_dropout=c))
    net = Network(layers, MINI_BATCH)
    x, y = synthetic((steps + warmup + 1) * MINI_BATCH)
    train_mb = net.train_mb_function(
        pytensor.shared(x), pytensor.shared(y), spec["eta"], spec["lmbda"],
        spec["images"] // MINI_BATCH, momentum=momentum)
    with network3.backend.blas_threads():  # as SGD does
        first_call, per_step, done = _timed_loop(train_mb, steps, warmup, start)
    global _steps_timed
    _steps_timed = done
    return first_call, per_step


#### PyTorch, as its users write it, with the book's semantics
def time_torch(name, steps, threads=None, warmup=100, momentum=0.0):
    """(first call s, s per step) of the same network's step in PyTorch
    (eager, CPU); ``threads``: torch.set_num_threads (None: its default)."""
    start = time.perf_counter()
    import torch
    import torch.nn.functional as F
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = NETS[name]
    act = torch.relu if spec["act"] == "relu" else torch.sigmoid

    class BookNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList()
            self.p = []
            with torch.no_grad():
                for kind, a, b, c in spec["layers"]:
                    if kind == "conv":
                        filters, channels = a, b
                        m = torch.nn.Conv2d(channels, filters, 5)
                        # the book: sd sqrt(1/n_out), n_out = filters*25/4
                        m.weight.normal_(0.0, math.sqrt(4.0 / (filters * 25)))
                        m.bias.normal_(0.0, 1.0)
                        self.p.append(None)
                    else:
                        m = torch.nn.Linear(a, b)
                        if kind == "softmax":  # zeros, as in the book
                            m.weight.zero_()
                            m.bias.zero_()
                        else:
                            m.weight.normal_(0.0, math.sqrt(1.0 / b))
                            m.bias.normal_(0.0, 1.0)
                        self.p.append(c)
                    self.layers.append(m)

        def forward(self, x):
            a = x.view(-1, 1, SIZE, SIZE)
            last = len(self.layers) - 1
            for i, (m, p) in enumerate(zip(self.layers, self.p)):
                if p is None:
                    # conv2d correlates: flipping the kernel makes it the
                    # book's convolution; the per-channel bias commutes
                    # with max-pooling
                    z = F.conv2d(a, torch.flip(m.weight, (2, 3)), m.bias)
                    a = act(F.max_pool2d(z, 2))
                    continue
                a = a.flatten(1)
                if p:  # non-inverted dropout on the layer's input, as the book
                    a = a * torch.empty_like(a).bernoulli_(1.0 - p)
                a = m(a)
                if i != last:
                    a = act(a)
            return a  # the softmax layer's weighted input

    model = BookNet()
    weights = [m.weight for m in model.layers]
    biases = [m.bias for m in model.layers]
    weight_decay = spec["lmbda"] / (spec["images"] // MINI_BATCH)
    optimizer = torch.optim.SGD(
        [{"params": weights, "weight_decay": weight_decay},
         {"params": biases, "weight_decay": 0.0}], lr=spec["eta"], momentum=momentum,
        foreach=True)
    x, y = synthetic((steps + warmup + 1) * MINI_BATCH)
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()

    def step(i):
        batch = slice(i * MINI_BATCH, (i + 1) * MINI_BATCH)
        optimizer.zero_grad()
        # the book's cost: the mean negative log-likelihood of the softmax
        loss = F.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        return loss

    first_call, per_step, done = _timed_loop(step, steps, warmup, start)
    global _steps_timed
    _steps_timed = done
    return first_call, per_step, torch.get_num_threads()


#### The floor: products at the measured speed, bytes at the measured bandwidth
def step_work(name):
    """What one training step must do, float32: its matrix products
    ``(m, k, n, kept)`` (an (m, k) @ (k, n) product; ``kept``: the fraction
    of its multiplications that a dropout mask on the layer's input leaves
    to do), the bytes it must move (weights and activations) and the
    working set they live in.

    Products per layer: forward, the weights' gradient and (not for the
    first layer, whose input needs no gradient) the input's gradient;
    convolutions as their im2col products.  A masked input contributes
    nothing to the forward product, its row of the weights' gradient is
    zero and its gradient is not needed: with dropout p on the input, each
    product needs (1 - p) of its multiplications.  Weights: read by the
    forward product, then read and written once by the update, which can
    give the input's gradient from the same read (per-example masks leave
    almost every row in use by some example of a mini-batch of 10, so no
    bytes are saved); each activation and its gradient: written once, read
    twice."""
    products, weight_bytes, act_bytes, work_set = [], 0, 0, 0
    m = MINI_BATCH
    act_bytes += 2 * 4 * m * SIZE * SIZE  # the images: read twice
    work_set += 4 * m * SIZE * SIZE
    for index, (kind, a, b, c) in enumerate(NETS[name]["layers"]):
        first = index == 0
        if kind == "conv":
            filters, channels, size = a, b, c
            out = size - 4
            M, K = m * out * out, channels * 25  # im2col: (M, K) @ (K, filters)
            shapes = [(M, K, filters), (filters, M, K)] + ([] if first else
                                                             [(M, filters, K)])
            kept = 1.0
            n_weights, n_bias = filters * K, filters
            outputs = m * filters * (out // 2) ** 2  # after pooling
        else:
            shapes = [(m, a, b), (a, m, b)] + ([] if first else [(m, b, a)])
            kept = 1.0 - c
            n_weights, n_bias = a * b, b
            outputs = m * b
        products += [shape + (kept,) for shape in shapes]
        weight_bytes += 3 * 4 * (n_weights + n_bias)
        act_bytes += 6 * 4 * outputs
        work_set += 4 * (n_weights + n_bias + 2 * outputs)
    return {"products": products, "weight_bytes": weight_bytes,
            "act_bytes": act_bytes, "working_set": work_set}


def _best_time(fn, min_time=0.02, rounds=5):
    """The fastest mean time of ``fn()`` over ``rounds`` timed loops of at
    least ``min_time`` s each."""
    fn()
    reps, t = 1, 0.0
    while True:  # calibrate
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time / 4:
            break
        reps *= 4
    reps = max(1, int(reps * min_time / max(t, 1e-9)))
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def bandwidth(nbytes):
    """One thread's bandwidth (bytes/s) over a float32 array of ``nbytes``:
    the faster of numpy's sum (bytes read) and copy (read + written)."""
    a = np.ones(max(nbytes // 4, 256), dtype=np.float32)
    b = np.empty_like(a)
    read = a.nbytes / _best_time(a.sum)
    copy = 2 * a.nbytes / _best_time(lambda: np.copyto(b, a))
    return max(read, copy), read, copy


def sgemm_time(m, k, n):
    """The time of one (m, k) @ (k, n) float32 product through numpy."""
    rng = np.random.default_rng(0)
    a = rng.random((m, k), dtype=np.float32)
    b = rng.random((k, n), dtype=np.float32)
    c = np.empty((m, n), dtype=np.float32)
    return _best_time(lambda: np.matmul(a, b, out=c))


def floor_worker(nets):
    """Measured in this process, one BLAS thread: the bandwidths and product
    speeds behind each network's floor."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        limit = threadpool_limits(limits=1)
        blas = [f"{i.get('internal_api')} {i.get('version')} "
                f"({i.get('architecture')})" for i in threadpool_info()
                if i.get("user_api") == "blas"]
    except ImportError:
        limit, blas = None, []
    large = 256 << 20
    bw_large = bandwidth(large)
    peak = 2 * 1024 ** 3 / sgemm_time(1024, 1024, 1024)
    out = {"blas": blas, "large_bytes": large, "bw_large": bw_large[0],
           "sgemm_1024_flops": peak, "nets": {}}
    times = {}
    for name in nets:
        work = step_work(name)
        shapes = [p[:3] for p in work["products"]]
        for shape in shapes:
            if shape not in times:
                times[shape] = sgemm_time(*shape)
        bw = bandwidth(work["working_set"])[0]
        moved = work["weight_bytes"] + work["act_bytes"]
        out["nets"][name] = {
            "products": len(shapes),
            "dense_flops": sum(2 * m * k * n for m, k, n in shapes),
            "flops": sum(2 * m * k * n * kept for m, k, n, kept in work["products"]),
            # what the step's products cost as BLAS calls at their shapes
            "blas_s": sum(times[shape] for shape in shapes),
            "bytes": moved, "working_set": work["working_set"], "bw": bw}
    # the fastest product speed measured: the large product's or one of the
    # steps' own shapes'
    out["flop_rate"] = max([peak] + [2 * m * k * n / t for (m, k, n), t in times.items()])
    if limit is not None:
        limit.restore_original_limits()
    return out


def best_floor(floors):
    """The best of several floor measurements, and each network's floor from
    it: the larger of its FLOPs at the fastest product speed measured and
    its bytes at the highest bandwidth measured over its working set."""
    ok = [f for f in floors if "error" not in f]
    if not ok:
        return floors[0]
    rate = max(f["flop_rate"] for f in ok)
    best = dict(ok[0], runs=len(ok), bw_large=max(f["bw_large"] for f in ok),
                sgemm_1024_flops=max(f["sgemm_1024_flops"] for f in ok),
                flop_rate=rate, nets={})
    for name in ok[0]["nets"]:
        runs = [f["nets"][name] for f in ok]
        bw = max(r["bw"] for r in runs)
        net = dict(runs[0], blas_s=min(r["blas_s"] for r in runs), bw=bw,
                   compute_s=runs[0]["flops"] / rate, memory_s=runs[0]["bytes"] / bw)
        net["floor_s"] = max(net["compute_s"], net["memory_s"])
        best["nets"][name] = net
    return best


#### Workers: one measurement per fresh process, a JSON line on stdout
def worker(args):
    if args.worker == "floor":
        print(json.dumps(floor_worker(args.nets)))
        return
    if args.worker == "checks":
        print(json.dumps(checks_worker(args.net)))
        return
    threads = None
    if args.worker == "network3":
        first, per_step = time_network3(args.net, args.steps, args.backend, args.gpu,
                                        warmup=args.warmup, momentum=args.momentum)
    else:
        first, per_step, threads = time_torch(args.net, args.steps, args.threads,
                                              warmup=args.warmup, momentum=args.momentum)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "threads": threads, "first_call_s": first, "steps": _steps_timed,
        "step_ms": None if per_step is None else per_step * 1e3,
        "epoch_s": None if per_step is None else per_step * STEPS_PER_EPOCH,
        "peak_mb": peak_mb}))


def checks_worker(name):
    """The first call of network ``name``'s step (importing, building,
    compiling and one step) and, within it, the seconds of each family's
    first-use check (network3/accel/checks.py)."""
    import network3.accel.checks as checks
    spent, check_nodes = {}, checks.check_nodes

    def timed(family, nodes):
        start = time.perf_counter()
        check_nodes(family, nodes)
        spent[family.split(" (")[0]] = time.perf_counter() - start
    checks.check_nodes = timed
    first, _ = time_network3(name, 0, warmup=0)
    return {"first_call_s": first, "checks": spent}


def check_cost(args):
    """Markdown: per network, each family's check in its first call, with an
    empty compile cache and then with that cache filled (fastest of
    --repeats rounds, min-max in brackets)."""
    me = sys.executable
    rows = []
    for name in args.nets:
        runs = {"cold": [], "cached": []}
        for _ in range(args.repeats):
            cache = tempfile.mkdtemp(prefix="network3-checks-")
            try:
                for kind in ("cold", "cached"):
                    runs[kind].append(run_worker(me, ["--worker", "checks", "--net", name],
                                                 env=_cache_env(cache)))
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        for kind, results in runs.items():
            bad = [r["error"] for r in results if "error" in r]
            if bad:
                rows.append(f"| {name} | {kind} | error: {bad[0]} | |")
                continue
            families = sorted({f for r in results for f in r["checks"]})
            cells = "; ".join(
                f"{f} {_spread([r['checks'].get(f, 0.0) for r in results], 2)}"
                for f in families)
            total = _spread([sum(r["checks"].values()) for r in results], 2)
            first = _spread([r["first_call_s"] for r in results], 1)
            rows.append(f"| {name} | {kind} | {cells or 'none'} | {total} | {first} |")
    header = ["| net | cache | each family's check, s | all checks, s | first call, s |",
              "| --- | --- | --- | --- | --- |"]
    print("\n".join(header + rows))


def run_worker(python, argv, env=None, timeout=1800):
    """Run ``python benchmark.py --worker ...`` in a fresh process: its JSON
    line, or {"error": the last line of its stderr}."""
    try:
        out = subprocess.run([python, os.path.abspath(__file__), *argv],
                             capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = out.stdout.strip().splitlines()
    err = out.stderr.strip().splitlines()
    if out.returncode or not lines:
        return {"error": (err or [f"exit status {out.returncode}"])[-1][:200]}
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"no JSON: {lines[-1][:200]}"}
    if err:  # warnings: shown in the progress lines, not in the report
        result["stderr"] = err[-1][:200]
    return result


def _cache_env(cache):
    """The environment of a process whose PyTensor and Numba caches are in
    ``cache`` (an empty folder: a user's very first run)."""
    env = dict(os.environ)
    flags = env.get("PYTENSOR_FLAGS", "")
    # PyTensor's Numba cache lives in base_compiledir (compiledir is a
    # folder inside it): setting compiledir alone would keep the old cache
    env["PYTENSOR_FLAGS"] = ",".join(
        [f for f in flags.split(",") if f and not f.startswith(("base_compiledir", "compiledir"))]
        + [f"base_compiledir={cache}"])
    env["NUMBA_CACHE_DIR"] = os.path.join(cache, "numba-cache")
    return env


def _torch_env(threads):
    """The environment of a PyTorch worker: with its default threads, the
    default of torch itself (no OMP/MKL setting inherited)."""
    env = dict(os.environ)
    if not threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(name, None)
    return env


def _probe(python, code):
    """What ``python -c code`` prints (None if it fails).  It runs in this
    script's folder, as the timed runs do: ``-c`` puts the current folder
    first on sys.path, where another checkout's network3 could shadow
    PYTHONPATH's and the header would name the wrong code."""
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                             timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


_NETWORK3_VERSIONS = """
import os, platform, numpy, pytensor, numba, network3
from network3.accel import kernels
print(f"Python {platform.python_version()}, PyTensor {pytensor.__version__}, "
      f"Numba {numba.__version__}, numpy {numpy.__version__} (products: "
      f"{kernels._NUMPY_CBLAS or 'SciPy BLAS through Numba'})|"
      f"{os.path.dirname(os.path.abspath(network3.__file__))}")
"""
_TORCH_VERSIONS = """
import platform, torch
print(f"torch {torch.__version__} on Python {platform.python_version()}|"
      f"{torch.get_num_threads()}")
"""
_JAX_VERSIONS = "import jax; print(f'jax {jax.__version__}, devices {jax.devices()}')"


#### Reporting
def _ms(runs):
    """'fastest (min-max)' of the runs' ms per step."""
    ok = [r["step_ms"] for r in runs if r.get("step_ms") is not None]
    if not ok:
        return _error(runs)
    return f"{min(ok):.3g} ({min(ok):.3g}-{max(ok):.3g})" if len(ok) > 1 else f"{ok[0]:.3g}"


def _error(runs):
    errors = [r["error"] for r in runs if "error" in r]
    return f"error: {errors[0]}" if errors else "-"


def _fastest(runs, key="step_ms"):
    ok = [r[key] for r in runs if r.get(key) is not None]
    return min(ok) if ok else None


def _spread(values, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, hi = (f"{v:.{digits}f}" for v in (min(values), max(values)))
    return lo if len(values) == 1 else f"{lo} ({lo}-{hi})"


def _epoch(best_ms):
    return "-" if best_ms is None else f"{best_ms * STEPS_PER_EPOCH / 1e3:.1f}"


def _first(runs):
    return _spread([x.get("first_call_s") for x in runs], 1) if runs else "-"


def _peak(runs):
    ok = [x["peak_mb"] for x in runs if x.get("peak_mb") is not None]
    return f"{max(ok):.0f}" if ok else "-"


def _cell(v):
    return "-" if v is None else f"{v:.3g}"


def _times(v, floor_ms):
    return "-" if v is None else f"{v / floor_ms:.1f}x"


def _load():
    try:
        return os.getloadavg()
    except OSError:
        return (math.nan,) * 3


def _portable(arg):
    """A command-line argument without this machine's paths: a file in the
    repository by its path there, another by its name."""
    if not os.path.isabs(arg):
        return arg
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    inside = os.path.commonpath([root, os.path.abspath(arg)]) == root
    return os.path.relpath(arg, root) if inside else os.path.basename(arg)


def _git_commit(package):
    """The commit of the git tree that holds ``package`` (network3's
    folder), and whether that folder differs from it."""
    if not package:
        return "unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=package,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=package,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    if not rev:
        return "unknown (not a git tree)"
    return rev + (" (network3/ has uncommitted changes)" if dirty else
                  " (network3/ as committed)")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build_report(ctx, results, floor):
    """The markdown: header, the per-step/per-epoch table, first calls, and
    where the time goes."""
    lines = [f"## network3 at the book's settings: {ctx['network3']}", ""]
    lines += [f"- command: `{ctx['command']}`",
              f"- date: {ctx['date']} (ended {ctx['end']}), commit {ctx['commit']}",
              f"- machine: {ctx['cores']} cores ({ctx['cpu']}); load average "
              f"(1, 5, 15 min) {ctx['load_start']} at the start, {ctx['load_end']} "
              f"at the end; 1-min load before each run {ctx['load_range']}",
              f"- network3: {ctx['network3']}; backend {ctx['backend']}; "
              f"OPENBLAS_CORETYPE {ctx['coretype']}, OPENBLAS_L2_SIZE {ctx['l2size']}",
              f"- PyTorch: {ctx['torch']}",
              f"- JAX: {ctx['jax']}",
              f"- method: mini-batch {MINI_BATCH}, float32, random images of MNIST's "
              f"shape; per step: the mean of {ctx['steps']} steps after "
              f"{ctx['warmup']} warm-up steps; per epoch: x {STEPS_PER_EPOCH} "
              f"(50,000 images); each cell: the fastest of {ctx['repeats']} "
              "interleaved runs, each in a fresh process (min-max of the runs "
              "in brackets); speed-up: PyTorch's faster thread setting over "
              "network3, fastest against fastest (each round's own ratio in "
              "brackets)", ""]
    t_threads = ctx.get("torch_threads", "default")
    momentum = ctx.get("momentum", 0.0)
    lines += ["| net (book's settings) | network3 ms/step | PyTorch 1 thread ms/step | "
              f"PyTorch {t_threads} threads ms/step | network3 JAX (CPU) ms/step | "
              "network3 s/epoch | PyTorch s/epoch | speed-up per epoch | "
              "JAX s/epoch |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        n3, t1, td, jx = r["network3"], r["torch1"], r["torch"], r["jax"]
        n3_best = _fastest(n3)
        torch_best = _fastest(t1 + td)
        jax_best = _fastest(jx)
        ratio, rounds = "-", []
        for a, b, c in zip(n3, t1 or [{}] * len(n3), td or [{}] * len(n3)):
            t = _fastest([b, c])
            if a.get("step_ms") and t:
                rounds.append(t / a["step_ms"])
        if n3_best and torch_best:
            ratio = f"{torch_best / n3_best:.2f}x"
            if len(rounds) > 1:
                ratio += f" ({min(rounds):.2f}-{max(rounds):.2f}x)"
        lines.append(
            f"| {name} ({settings(name, momentum)}) | {_ms(n3)} | {_ms(t1) if t1 else '-'} | "
            f"{_ms(td) if td else '-'} | {_ms(jx) if jx else '-'} | {_epoch(n3_best)} | "
            f"{_epoch(torch_best)} | {ratio} | {_epoch(jax_best)} |")
    cut = [f"{name} {label} ({', '.join(str(x['steps']) for x in runs if 'steps' in x)})"
           for name, r in results.items()
           for key, label in (("network3", "network3"), ("torch1", "PyTorch 1 thread"),
                              ("torch", "PyTorch default threads"), ("jax", "JAX"))
           if (runs := r[key]) and any(x.get("steps", ctx["steps"]) < ctx["steps"]
                                       for x in runs)]
    if cut:
        lines += ["", f"Runs whose timed steps were stopped after {MAX_TIMED_S:.0f} s "
                  "(steps timed per run): " + "; ".join(cut) + "."]
    lines += ["", "First call (importing, building, compiling and the first step), "
              "seconds, fastest (min-max); peak memory of the timed runs (max RSS):", "",
              "| net | network3, empty cache | network3, cache filled | JAX | "
              "PyTorch | network3 peak MB | JAX peak MB | PyTorch peak MB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        torch_runs = r["torch1"] + r["torch"]
        lines.append(f"| {name} | {_first(r['cold'])} | {_first(r['network3'])} | "
                     f"{_first(r['jax'])} | {_first(torch_runs)} | {_peak(r['network3'])} | "
                     f"{_peak(r['jax'])} | {_peak(torch_runs)} |")
    if floor:
        lines += ["", "Where the time goes: ms per step, fastest runs, against the floor "
                  "(the larger of the step's FLOPs at the one-thread product speed and "
                  "its bytes at the one-thread bandwidth; the model below the table):", ""]
        if "error" in floor:
            lines.append(f"floor: {floor['error']}")
        else:
            lines += ["| net | MFLOP needed (dense) | compute floor ms | bytes moved, MB "
                      "(working set) | memory floor ms (GB/s) | floor ms | the products as "
                      "BLAS calls, ms | network3 | network3 JAX | PyTorch | network3 / floor "
                      "| PyTorch / floor |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for name, r in results.items():
                f = floor["nets"].get(name)
                if not f:
                    continue
                fl = f["floor_s"] * 1e3
                n3 = _fastest(r["network3"])
                tb = _fastest(r["torch1"] + r["torch"])
                jx = _fastest(r["jax"])
                lines.append(
                    f"| {name} | {f['flops'] / 1e6:.1f} ({f['dense_flops'] / 1e6:.1f}) | "
                    f"{f['compute_s'] * 1e3:.3f} | "
                    f"{f['bytes'] / 1e6:.2f} ({f['working_set'] / 1e6:.2f}) | "
                    f"{f['memory_s'] * 1e3:.3f} ({f['bw'] / 1e9:.0f}) | {fl:.3f} | "
                    f"{f['blas_s'] * 1e3:.3f} ({f['products']}) | "
                    f"{_cell(n3)} | {_cell(jx)} | {_cell(tb)} | {_times(n3, fl)} | "
                    f"{_times(tb, fl)} |")
            lines += ["", "The floor: the larger of the FLOPs the step needs at the fastest "
                      f"one-thread product speed measured ({floor['flop_rate'] / 1e9:.0f} "
                      "GFLOP/s) and the bytes it must move at the one-thread bandwidth "
                      "(numpy sum or copy, the faster) over an array of the step's working "
                      "set. FLOPs: 2*m*n*k for each product of the step (per layer: "
                      "forward, the weights' gradient and, but for the first layer, the "
                      "input's gradient; convolutions as their im2col products), times "
                      "1 - p where dropout p masks the layer's input (a dropped input "
                      "needs no multiplication); dense: without that. Bytes: the weights "
                      "read by the forward product, then read and written once by an "
                      "update that gives the input's gradient from the same read; each "
                      "activation and its gradient written once and read twice. "
                      "Element-wise work, dropout masks and the softmax are left out. "
                      "'The products as BLAS calls': the step's dense products (their "
                      "number in brackets) as one-thread numpy sgemm calls at their "
                      "shapes, what a step built on BLAS pays for them. The best of "
                      f"{floor.get('runs', 1)} measurements, one thread (BLAS: "
                      f"{', '.join(floor['blas']) or 'unknown'}); for scale: bandwidth "
                      f"{floor['bw_large'] / 1e9:.1f} GB/s over "
                      f"{floor['large_bytes'] >> 20} MB, sgemm 1024x1024x1024 "
                      f"{floor['sgemm_1024_flops'] / 1e9:.0f} GFLOP/s."]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Networks: " + ", ".join(f"{n} ({settings(n)})" for n in NETS))
    parser.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS), choices=list(NETS),
                        metavar="NET", help="networks to measure (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=500,
                        help="timed SGD steps per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="untimed steps before them (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds; the fastest run of each counts "
                        "(default: %(default)s)")
    parser.add_argument("--momentum", type=float, default=0.0, metavar="MU",
                        help="train with momentum MU (network3's momentum=MU, "
                        "torch.optim.SGD's momentum=MU; default: 0, the book's)")
    parser.add_argument("--backend", default="numba", choices=["numba", "jax", "c"],
                        help="network3's backend for the main column (default: numba)")
    parser.add_argument("--torch-python", default=sys.executable, metavar="PATH",
                        help="the Python that runs the PyTorch workers (default: "
                        "this one)")
    parser.add_argument("--torch-threads", type=int, default=0, metavar="N",
                        help="PyTorch's threads besides 1 (default: torch's own default)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX column")
    parser.add_argument("--no-cold", action="store_true",
                        help="skip the first call with an empty compile cache")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor")
    parser.add_argument("--out", metavar="FILE",
                        help="write the markdown there too (default: print only)")
    parser.add_argument("--append", action="store_true",
                        help="with --out: append to FILE instead of replacing it")
    parser.add_argument("--record", metavar="FILE",
                        help="append the run's figures to FILE as one JSON line "
                        "(scripts/benchmark_table.py makes the README's table of them)")
    # one measurement in this process (what the main run starts)
    parser.add_argument("--check-cost", action="store_true",
                        help="instead: the accelerator's first-use checks per family in "
                        "each network's first call, empty cache and filled")
    parser.add_argument("--worker", choices=["network3", "torch", "floor", "checks"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--net", choices=list(NETS), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker in ("network3", "torch", "checks") and not args.net:
        parser.error("--worker needs --net")
    if args.steps < 0 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps and --warmup must be >= 0, --repeats >= 1")
    if not 0 <= args.momentum < 1:
        parser.error(f"--momentum must be in [0, 1), got {args.momentum}")
    return args


def main(argv=None):
    raw = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(raw)
    if args.worker:
        return worker(args)
    if args.check_cost:
        return check_cost(args)
    return run(args, raw)


def run(args, raw):
    me = sys.executable
    # no paths of this machine: the Python by its version, files by their
    # path in the repository, or their name
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    command = shlex.join([python, "scripts/benchmark.py", *map(_portable, raw)])
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = ", ".join(f"{v:.2f}" for v in _load())
    loads = []
    found = _probe(me, _NETWORK3_VERSIONS)
    network3, package = found.split("|") if found else ("network3 not importable", None)
    torch_info, torch_default = None, None
    if not args.no_torch:
        found = _probe(args.torch_python, _TORCH_VERSIONS)
        if found:
            torch_info, torch_default = found.split("|")
            torch_default = int(torch_default)
    jax_info = None if args.no_jax else _probe(me, _JAX_VERSIONS)
    threads = args.torch_threads or torch_default
    ctx = dict(
        command=command, date=date, commit=_git_commit(package), cores=os.cpu_count(),
        cpu=_cpu_name(), load_start=load_start, network3=network3, backend=args.backend,
        coretype=os.environ.get("OPENBLAS_CORETYPE", "unset"),
        l2size=os.environ.get("OPENBLAS_L2_SIZE", "unset"),
        torch=(f"{torch_info}; eager, CPU, "
               "torch.optim.SGD(foreach=True), weight_decay lmbda/num_training_batches "
               "on the weights") if torch_info else
        ("skipped (--no-torch)" if args.no_torch else
         f"not importable by {args.torch_python}: no baseline"),
        jax=(f"{jax_info}; network3.set_backend('jax')" if jax_info else
             "skipped (--no-jax)" if args.no_jax else "jax not importable: no column"),
        steps=args.steps, warmup=args.warmup, repeats=args.repeats,
        torch_threads=threads or "default", momentum=args.momentum)
    print(f"# {command}\n# {date}, load {load_start}; {network3}; "
          f"PyTorch: {torch_info or 'none'}; JAX: {jax_info or 'none'}", flush=True)

    def measure(label, python, argv, env=None):
        loads.append(_load()[0])
        r = run_worker(python, argv, env=env)
        if "nets" in r:  # a floor: its two machine figures
            r_shown = {"bw_large_GBs": r["bw_large"] / 1e9,
                       "sgemm_1024_GFLOPs": r["sgemm_1024_flops"] / 1e9}
        else:
            r_shown = r
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r_shown.items()}
        print(f"  {label}: {shown}", flush=True)
        return r

    results = {}
    steps = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    # every worker's step with it (the empty-cache run's too)
    momentum = ["--momentum", str(args.momentum)] if args.momentum else []
    for name in args.nets:
        r = results[name] = {"cold": [], "network3": [], "torch1": [], "torch": [],
                             "jax": []}
        print(f"{name} ({settings(name, args.momentum)})", flush=True)
        for round_ in range(args.repeats):
            cache = tempfile.mkdtemp(prefix="network3-bench-")
            try:
                # a new, empty cache each round, filled by its first run;
                # with --no-cold, the user's own cache
                env = None if args.no_cold else _cache_env(cache)
                base = ["--worker", "network3", "--net", name, "--backend", args.backend,
                        *momentum]
                if not args.no_cold:  # fills the empty cache
                    r["cold"].append(measure(f"round {round_ + 1} network3, empty cache",
                                             me, base + ["--steps", "0", "--warmup", "0"],
                                             env))
                r["network3"].append(measure(f"round {round_ + 1} network3", me,
                                             base + steps, env))
                if torch_info:
                    t = ["--worker", "torch", "--net", name, *steps, *momentum]
                    r["torch1"].append(measure(f"round {round_ + 1} PyTorch 1 thread",
                                               args.torch_python, t + ["--threads", "1"],
                                               _torch_env(1)))
                    if threads and threads != 1:
                        extra = ["--threads", str(args.torch_threads)] \
                            if args.torch_threads else []
                        r["torch"].append(measure(
                            f"round {round_ + 1} PyTorch {threads} threads",
                            args.torch_python, t + extra, _torch_env(args.torch_threads)))
                if jax_info:
                    r["jax"].append(measure(
                        f"round {round_ + 1} network3 JAX", me,
                        ["--worker", "network3", "--net", name, "--backend", "jax", *steps,
                         *momentum],
                        env))
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    floor = None
    if not args.no_floor:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        floors = [measure(f"floor {i + 1}", me, ["--worker", "floor", "--nets", *args.nets],
                          env) for i in range(args.repeats)]
        floor = best_floor(floors)
    ctx["end"] = datetime.datetime.now().astimezone().strftime("%H:%M %Z")
    ctx["load_end"] = ", ".join(f"{v:.2f}" for v in _load())
    ctx["load_range"] = f"{min(loads):.2f}-{max(loads):.2f}" if loads else "-"
    report = build_report(ctx, results, floor)
    print()
    print(report, end="", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a" if args.append else "w") as f:
            if args.append:
                f.write("\n")
            f.write(report)
        print(f"# written to {args.out}")
    if args.record:
        os.makedirs(os.path.dirname(os.path.abspath(args.record)), exist_ok=True)
        with open(args.record, "a") as f:
            f.write(json.dumps(record(ctx, results)) + "\n")
        print(f"# recorded in {args.record}")
    return results


def record(ctx, results):
    """The run's figures, for scripts/benchmark_table.py: per network the
    fastest network3, PyTorch (its faster thread setting) and JAX step in
    ms, the speed-up and first calls in s (None where not measured)."""
    nets = {}
    for name, r in results.items():
        n3, torch_best = _fastest(r["network3"]), _fastest(r["torch1"] + r["torch"])
        nets[name] = dict(
            settings=settings(name, ctx.get("momentum", 0.0)), network3_ms=n3, torch_ms=torch_best,
            torch1_ms=_fastest(r["torch1"]), torch_default_ms=_fastest(r["torch"]),
            jax_ms=_fastest(r["jax"]),
            speedup=torch_best / n3 if n3 and torch_best else None,
            cold_s=_fastest(r["cold"], "first_call_s"),
            cached_s=_fastest(r["network3"], "first_call_s"))
    keys = ("command", "date", "end", "commit", "network3", "torch", "jax", "cores",
            "cpu", "load_start", "load_end", "load_range", "steps", "repeats")
    return {**{k: ctx[k] for k in keys}, "nets": nets}


if __name__ == "__main__":
    main()
