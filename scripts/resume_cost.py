"""resume_cost.py: what conv.py's per-epoch checkpoints cost, and what a
kill costs with them (docs/experiments.md), for double_fc_dropout with the
book's settings on the expanded set (scripts/expand_mnist.py).

    python scripts/resume_cost.py save --epochs 2     # each checkpoint's seconds
    python scripts/resume_cost.py restart             # a kill, then the same command

``save`` trains in this process with a checkpoint and times each save
(gathering the run's state, writing the file, fsync, rename) beside the
epoch before it.  ``restart`` runs ``conv.py double_fc_dropout``, kills it
with SIGKILL at the first mini-batch of epoch 1 (epoch 0 is checkpointed),
runs the same command again and times it from its start to its first
mini-batch of epoch 1.  Both write only in a temporary folder.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def save_cost(train_size, epochs, folder):
    from network3 import experiments, network
    from network3.experiments import training

    saves = []
    real_save = network._Checkpointer.save

    def timed_save(self, epoch, finished):
        start = time.perf_counter()
        real_save(self, epoch, finished)
        saves.append(time.perf_counter() - start)

    network._Checkpointer.save = timed_save
    [run] = experiments.plan(["double_fc_dropout"], train_size=train_size, epochs=epochs)
    path = Path(folder) / "checkpoint.npz"
    spec = {"experiment": run.experiment, "settings": dict(run.settings), "seed": 0,
            "checkpoint": str(path)}
    record, _ = training.train(spec)
    print(f"\n{record['config']['train_size']:,} images; checkpoint {path.stat().st_size / 1e6:.1f}"
          " MB")
    for epoch, save in zip(record["epochs"], saves):
        print(f"epoch {epoch['epoch']}: {epoch['seconds']:.1f} s, then its checkpoint "
              f"{save:.3f} s ({100 * save / epoch['seconds']:.2f}% of the epoch)")


def restart_cost(train_size, folder):
    out = Path(folder) / "r.jsonl"
    command = [sys.executable, str(ROOT / "scripts" / "conv.py"), "double_fc_dropout",
               "--no-save", "--out", str(out)]
    if train_size:
        command += ["--train-size", str(train_size)]
    first_of_epoch_1 = f"Training mini-batch number {(train_size or 250_000) // 10}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def until_epoch_1():
        """Run the command up to epoch 1's first mini-batch, then kill it;
        the seconds at which the lines of interest came."""
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
        seen = {}
        for line in child.stdout:
            for key in ("Training mini-batch number 0", "Epoch 0:",
                        "Resuming from checkpoint", first_of_epoch_1):
                if line.startswith(key) and key not in seen:
                    seen[key] = time.perf_counter() - start
            if line.rstrip() == first_of_epoch_1:
                os.kill(child.pid, signal.SIGKILL)
                break
        child.wait()
        return seen

    print(" ".join(command))
    first = until_epoch_1()
    epoch_0 = first["Epoch 0:"] - first["Training mini-batch number 0"]
    print(f"first command: epoch 0 trained in {epoch_0:.1f} s; killed at epoch 1")
    again = until_epoch_1()
    if "Resuming from checkpoint" not in again:
        sys.exit("the second command did not resume")
    print(f"the same command again: resumed, and trained epoch 1's first mini-batch "
          f"{again[first_of_epoch_1]:.1f} s after it started")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="What conv.py's per-epoch checkpoints cost (save), and what a "
        "kill costs with them (restart), for double_fc_dropout on the expanded set.")
    parser.add_argument("measure", choices=["save", "restart"])
    parser.add_argument("--train-size", type=int,
                        help="training images (default: all 250,000)")
    parser.add_argument("--epochs", type=int, default=2, help="save: epochs to train")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        if args.measure == "save":
            save_cost(args.train_size, args.epochs, folder)
        else:
            restart_cost(args.train_size, folder)


if __name__ == "__main__":
    main()
