"""gpu_check.py: a short, prepared check of network3 on a GPU.

For a machine with an NVIDIA GPU: installs a CUDA build of jax if jax sees
no GPU, then times the book's dbl_conv_relu and double_fc_dropout networks
for a fixed number of mini-batches on the GPU (``network3.GPU = True``: the
JAX backend) and on the CPU (the default Numba backend), each in a fresh
process, and projects the time of the book's full runs: dbl_conv_relu for
60 epochs of 50,000 images and the ensemble of 5 double_fc_dropout networks
for 40 epochs of the 250,000-image expanded set.  A few minutes in all.

    python scripts/gpu_check.py            # after pip install -e .
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(net, steps, gpu):
    cmd = [sys.executable, str(HERE / "benchmark.py"), "--worker", "network3",
           "--net", net, "--steps", str(steps)]
    if gpu:
        cmd += ["--backend", "jax", "--gpu"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def gpus():
    """The GPUs jax sees, asked in a fresh process (a process that imported
    a CPU build of jax keeps it, even after pip installs a CUDA one); None
    when it sees none or jax is missing."""
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices('gpu'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--cpu-steps", type=int, default=200)
    args = parser.parse_args(argv)
    found = gpus()
    if found is None:
        print("jax sees no GPU: installing jax[cuda12]", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "jax[cuda12]"],
                       check=True)
        found = gpus()
        if found is None:
            sys.exit("jax still sees no GPU after installing jax[cuda12]")
    print(f"GPU: {found}")
    # (epochs, mini-batches per epoch, networks) of the book's runs
    book = {"dbl_conv_relu": (60, 5000, 1), "double_fc_dropout": (40, 25000, 5)}
    print("| net | device | ms per step | s per epoch (50,000 images) | first call s "
          "| projected book run |")
    print("| --- | --- | --- | --- | --- | --- |")
    for net, (epochs, steps_per_epoch, n) in book.items():
        for gpu, steps in ((True, args.steps), (False, args.cpu_steps)):
            r = worker(net, steps, gpu)
            device = "GPU (JAX)" if gpu else "CPU (Numba)"
            if "error" in r:
                print(f"| {net} | {device} | {r['error']} | | | |", flush=True)
                continue
            hours = r["step_ms"] * steps_per_epoch * epochs * n / 3.6e6
            what = "5 nets x 40 epochs expanded" if n > 1 else "60 epochs"
            print(f"| {net} | {device} | {r['step_ms']:.2f} | {r['epoch_s']:.1f} | "
                  f"{r['first_call_s']:.1f} | {hours:.2f} h ({what}) |", flush=True)


if __name__ == "__main__":
    main()
