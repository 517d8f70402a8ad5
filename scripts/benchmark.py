"""benchmark.py: network3's training speed against PyTorch, in one run.

For the book's shallow, dbl_conv and double_fc_dropout networks at the
book's settings (mini-batch 10, float32), it measures in a fresh process per
measurement:

* first-call time: building the graph, compiling it and the first SGD step
  (Numba compiles on the first call; its on-disk cache makes later runs fast),
* the per-epoch training time: ``--steps`` SGD steps timed after a warm-up,
  extrapolated to the 5,000 mini-batches of an epoch of 50,000 images; the
  fastest of ``--repeats`` runs, interleaved with PyTorch's runs so that both
  meet the same load on a shared machine,
* peak memory (max RSS of the process),

and the same networks in PyTorch (CPU, eager, the book's semantics: plain
SGD, non-inverted dropout on the layer inputs, the same initialisation) if
torch is installed (``pip install torch``: a benchmark-only extra).  Data is
random images of MNIST's shape: the timing does not depend on the values.

    python scripts/benchmark.py                       # all three networks
    python scripts/benchmark.py --nets shallow --steps 2000
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

NETS = ("shallow", "basic_conv", "dbl_conv", "dbl_conv_relu", "double_fc_dropout")
MINI_BATCH = 10
STEPS_PER_EPOCH = 5000


def layers_spec(name):
    """(kind, args) per layer, shared by both frameworks."""
    conv1 = ("conv", dict(filters=20, channels=1, size=28))
    conv2 = ("conv", dict(filters=40, channels=20, size=12))
    if name == "shallow":
        return "sigmoid", [("fc", (784, 100, 0.0)), ("softmax", (100, 10, 0.0))]
    if name == "basic_conv":
        return "sigmoid", [conv1, ("fc", (2880, 100, 0.0)), ("softmax", (100, 10, 0.0))]
    if name in ("dbl_conv", "dbl_conv_relu"):
        return ("relu" if name == "dbl_conv_relu" else "sigmoid"), [
            conv1, conv2, ("fc", (640, 100, 0.0)), ("softmax", (100, 10, 0.0))]
    if name == "double_fc_dropout":
        return "relu", [conv1, conv2, ("fc", (640, 1000, 0.5)),
                        ("fc", (1000, 1000, 0.5)), ("softmax", (1000, 10, 0.5))]
    raise ValueError(name)


def synthetic(n):
    rng = np.random.default_rng(0)
    return (rng.random((n, 784), dtype=np.float32),
            rng.integers(0, 10, n).astype(np.int32))


#### network3
def time_network3(name, steps, backend, gpu=False):
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
    act_name, spec = layers_spec(name)
    act = ReLU if act_name == "relu" else sigmoid
    layers = []
    for kind, args in spec:
        if kind == "conv":
            c, s = args["channels"], args["size"]
            layers.append(ConvPoolLayer(
                filter_shape=(args["filters"], c, 5, 5),
                image_shape=(MINI_BATCH, c, s, s), activation_fn=act))
        elif kind == "fc":
            layers.append(FullyConnectedLayer(*args[:2], activation_fn=act,
                                              p_dropout=args[2]))
        else:
            layers.append(SoftmaxLayer(*args[:2], p_dropout=args[2]))
    net = Network(layers, MINI_BATCH)
    n = (steps + 100) * MINI_BATCH
    x, y = synthetic(n)
    train_mb = net.train_mb_function(
        pytensor.shared(x), pytensor.shared(y), 0.03, 0.1, n // MINI_BATCH)
    with network3.backend.blas_threads():  # as SGD does
        train_mb(0)
        first_call = time.perf_counter() - start
        for i in range(1, 100):  # warm-up
            train_mb(i)
        start = time.perf_counter()
        for i in range(steps):
            train_mb(100 + i)
    return first_call, (time.perf_counter() - start) / steps


#### PyTorch, with the book's semantics
def time_torch(name, steps, threads):
    start = time.perf_counter()
    import torch
    import torch.nn.functional as F
    if threads:
        torch.set_num_threads(threads)
    global _threads
    _threads = torch.get_num_threads()
    torch.manual_seed(0)
    act_name, spec = layers_spec(name)
    act = torch.relu if act_name == "relu" else torch.sigmoid
    params = []
    for kind, args in spec:
        if kind == "conv":
            f, c = args["filters"], args["channels"]
            w = torch.randn(f, c, 5, 5) * np.sqrt(1.0 / (f * 25 / 4))
            params.append((kind, w.requires_grad_(), torch.randn(f).requires_grad_(),
                           0.0))
        else:
            n_in, n_out, p = args
            w = torch.randn(n_in, n_out) * np.sqrt(1.0 / n_out)
            b = torch.randn(n_out)
            if kind == "softmax":
                w, b = torch.zeros(n_in, n_out), torch.zeros(n_out)
            params.append((kind, w.requires_grad_(), b.requires_grad_(), p))
    flat = [t for _, w, b, _ in params for t in (w, b)]

    def cost(xb, yb):
        a = xb.view(MINI_BATCH, 1, 28, 28)
        for kind, w, b, p in params:
            if kind == "conv":
                # conv2d is a correlation: flip the kernel for a true convolution
                z = F.conv2d(a, torch.flip(w, (2, 3)))
                a = act(F.max_pool2d(z, 2) + b.view(1, -1, 1, 1))
                continue
            a = a.reshape(MINI_BATCH, -1)
            if p:  # non-inverted dropout on the layer input
                a = a * torch.bernoulli(torch.full_like(a, 1 - p))
            z = a @ w + b
            if kind == "softmax":
                return F.cross_entropy(z, yb) + \
                    0.5 * 0.1 * sum((w_ ** 2).sum() for _, w_, _, _ in params) / 5000
            a = act(z)

    n = (steps + 100) * MINI_BATCH
    x, y = synthetic(n)
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()

    def step(i):
        batch = slice(i * MINI_BATCH, (i + 1) * MINI_BATCH)
        c = cost(x[batch], y[batch])
        grads = torch.autograd.grad(c, flat)
        with torch.no_grad():
            for t, g in zip(flat, grads):
                t.sub_(0.03 * g)

    step(0)
    first_call = time.perf_counter() - start
    for i in range(1, 100):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(100 + i)
    return first_call, (time.perf_counter() - start) / steps


_threads = None


def worker(args):
    if args.worker == "network3":
        first, per_step = time_network3(args.net, args.steps, args.backend, args.gpu)
    else:
        first, per_step = time_torch(args.net, args.steps, args.threads)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"threads": _threads, "first_call_s": first,
                      "step_ms": per_step * 1e3,
                      "epoch_s": per_step * STEPS_PER_EPOCH, "peak_mb": peak_mb}))


def measure(framework, net, steps, backend=None, threads=None, cache=None):
    """Run one measurement in a fresh process; ``cache``: the PyTensor/Numba
    compile cache folder to use (an empty one is a user's first run)."""
    cmd = [sys.executable, __file__, "--worker", framework, "--net", net,
           "--steps", str(steps)]
    if backend:
        cmd += ["--backend", backend]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    if cache:
        env["PYTENSOR_FLAGS"] = f"base_compiledir={cache}"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fastest(runs):
    ok = [r for r in runs if "error" not in r]
    return min(ok, key=lambda r: r["epoch_s"]) if ok else runs[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=["shallow", "dbl_conv",
                                                      "double_fc_dropout"],
                        choices=NETS)
    parser.add_argument("--steps", type=int, default=500,
                        help="timed SGD steps per measurement (after 100 warm-up)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs of each framework, interleaved; the "
                        "fastest counts (the machine is shared and noisy)")
    parser.add_argument("--backend", default="numba",
                        help="network3 backend: numba, jax or c")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads (default: the faster of 1 "
                        "and PyTorch's default)")
    parser.add_argument("--worker", choices=["network3", "torch"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--net", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    try:
        import torch
        have_torch = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        have_torch = None
    # asked of a child process: importing network3 here would raise the peak
    # memory that the measuring processes inherit
    blas = subprocess.run(
        [sys.executable, "-c", "from network3.accel import kernels; "
         "print(kernels._NUMPY_CBLAS or \"SciPy's, through Numba\")"],
        capture_output=True, text=True).stdout.strip() or "unknown"
    print(f"# {os.cpu_count()} cores; mini-batch {MINI_BATCH}, float32; "
          f"{args.steps} timed steps, per epoch = x {STEPS_PER_EPOCH}, fastest "
          f"of {args.repeats} runs each; "
          f"network3 backend {args.backend} (its products: {blas}); "
          f"{have_torch or 'torch not installed: no baseline'}")
    print("| net | network3 s/epoch | first call, cold cache s | first call, "
          "cached s | peak MB | PyTorch s/epoch | PyTorch peak MB | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for net in args.nets:
        # the first run fills an empty compile cache; the second reuses it
        cache = tempfile.mkdtemp(prefix="network3-bench-")
        cold = measure("network3", net, 10, args.backend, cache=cache)
        runs, torch_runs = [], []
        for _ in range(args.repeats):  # interleaved: both meet the same noise
            runs.append(measure("network3", net, args.steps, args.backend, cache=cache))
            if have_torch:
                # PyTorch's best of one thread and its default (on a busy
                # 2-core machine its default thread pool can be several
                # times slower)
                torch_runs += [measure("torch", net, args.steps, threads=t) for t in
                               ([args.torch_threads] if args.torch_threads else [1, 0])]
        shutil.rmtree(cache, ignore_errors=True)
        warm = _fastest(runs)
        row = [net]
        if "error" in warm:
            row += [warm["error"], "", "", ""]
        else:
            row += [f"{warm['epoch_s']:.1f}", f"{cold['first_call_s']:.1f}",
                    f"{warm['first_call_s']:.1f}", f"{warm['peak_mb']:.0f}"]
        if have_torch:
            ref = _fastest(torch_runs)
            if "error" in ref or "error" in warm:
                row += [ref.get("error", f"{ref.get('epoch_s', 0):.1f}"), "", ""]
            else:
                row += [f"{ref['epoch_s']:.1f} ({ref['threads']} thr)",
                        f"{ref['peak_mb']:.0f}",
                        f"{ref['epoch_s'] / warm['epoch_s']:.2f}x"]
        else:
            row += ["-", "-", "-"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
