"""expand_mnist.py: the book's expanded MNIST training set.

Takes the 50,000 MNIST training images and prepares an expanded training
set of 250,000: each image plus four copies displaced by one pixel (down,
up, right, left; zeros shifted in), shuffled.  Validation and test data are
unchanged.  Run it as the book did, from ``scripts/``:

    $ python expand_mnist.py

and load the result with ``network3.load_data_shared(
"../data/mnist_expanded.pkl.gz")``.  Options: ``--input`` (default: the
book's mnist.pkl.gz, built if missing), ``--out`` (default
``data/mnist_expanded.pkl.gz`` in the project), ``--seed`` (of the shuffle,
default 0), ``--force`` (overwrite an existing file; without it the script
leaves the file alone, as the book's did).  The work is done by
``network3.augment.expand``.
"""

import argparse
import sys
import time
from pathlib import Path

from network3 import data
from network3.augment import expand


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Build the book's mnist_expanded.pkl.gz: 50,000 training "
        "images plus their one-pixel shifts = 250,000, shuffled.")
    parser.add_argument("--input", help="the book's mnist.pkl.gz (default: "
                        "found or built as by network3.load_data())")
    parser.add_argument("--out", default=str(data.data_dir() /
                                             "mnist_expanded.pkl.gz"),
                        help="output file (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the shuffle (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite the output file if it exists")
    args = parser.parse_args(argv)

    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"The expanded training set already exists ({out}). Exiting. "
              "(Use --force to rebuild it.)")
        return out
    print("Expanding the MNIST training set")
    start = time.perf_counter()
    training, validation, test = data.load_data(args.input)
    x, y = expand(*training, seed=args.seed)
    print(f"{len(training[0])} training images -> {len(x)} "
          f"({time.perf_counter() - start:.1f} s); saving to {out}")
    data.save_data(((x, y), validation, test), out)
    print(f"Done in {time.perf_counter() - start:.1f} s")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
