"""step_time.py: before-and-after timing of one of the accelerator's
rewrites on a network's SGD step.

Runs the benchmark's networks (scripts/benchmark.py, the book's settings,
mini-batch 10) with the rewrite on and off, alternating, each run in a fresh
process, and prints each run's fastest batch of steps in process CPU time
(which a busy machine's scheduling does not inflate, unlike wall time):

    python scripts/step_time.py dbl_conv_relu --without pooled --rounds 3

``--without pooled``: accel/pooled.py's conv gradients through max-pooling.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
SWITCHES = {"pooled": "from network3.accel import pooled; pooled.MIN_ROW = 10**9"}


def time_step(name, steps, batches):
    """Fastest of ``batches`` batches of ``steps`` steps, ms per step."""
    sys.path.insert(0, str(SCRIPTS))
    import benchmark

    best = []

    def loop(step, _steps, _warmup, _start, max_s=None):
        for i in range(200):  # warm-up
            step(i % 10)
        for _ in range(batches):
            start = time.process_time()
            for i in range(steps):
                step(i % 10)
            best.append((time.process_time() - start) / steps)
        return 0.0, min(best), steps

    benchmark._timed_loop = loop
    benchmark.time_network3(name, 9, warmup=0)  # 10 mini-batches of data
    return min(best) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nets", nargs="+", metavar="NET",
                        help="networks of scripts/benchmark.py")
    parser.add_argument("--without", choices=sorted(SWITCHES), required=True,
                        help="the rewrite to switch off in every other run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="steps per batch")
    parser.add_argument("--batches", type=int, default=5, help="batches per run")
    parser.add_argument("--run", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:  # one run, in this process
        if args.run == "off":
            exec(SWITCHES[args.without])
        for name in args.nets:
            print(f"{time_step(name, args.steps, args.batches):.3f}")
        return
    runs = {}
    for _ in range(args.rounds):
        for name in args.nets:
            for state in ("on", "off"):
                out = subprocess.run(
                    [sys.executable, __file__, name, "--without", args.without,
                     "--run", state, "--steps", str(args.steps),
                     "--batches", str(args.batches)],
                    check=True, capture_output=True, text=True).stdout
                runs.setdefault((name, state), []).append(float(out.split()[-1]))
    print(f"ms per step, process CPU time, {args.rounds} alternating runs "
          f"(fastest of {args.batches} x {args.steps} steps each)")
    for name in args.nets:
        on, off = runs[(name, "on")], runs[(name, "off")]
        print(f"{name}: with {args.without} {min(on):.3f} ({min(on):.3f}-{max(on):.3f}), "
              f"without {min(off):.3f} ({min(off):.3f}-{max(off):.3f}), "
              f"ratio {min(off) / min(on):.2f}x")


if __name__ == "__main__":
    main()
