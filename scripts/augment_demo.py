"""augment_demo.py: what ``network3.augment.Augment`` does to MNIST digits.

    python scripts/augment_demo.py             # docs/figures/augmented.png
    python scripts/augment_demo.py --time      # and time all 50,000 images

Draws the first training digit of each class (top row) and, below, several
random distortions of each: translation, rotation, skew and elastic
distortion with ``Augment``'s default settings unless ``--translate``,
``--rotate``, ``--skew``, ``--alpha``/``--sigma`` (``--alpha 0``: no
elastic distortion) say otherwise.  Each row below the top is one call of
the augmenter, as ``Network.SGD(..., augment=...)`` makes at the start of
an epoch.  ``--time`` also distorts the whole training set once and prints
how long it took.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from network3 import data, figures
from network3.augment import Augment

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    defaults = Augment()
    parser = argparse.ArgumentParser(
        description="Draw MNIST digits and random distortions of each.")
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "augmented.png"),
                        help="output PNG (default: %(default)s)")
    parser.add_argument("--data", help="mnist.pkl.gz (default: found or built as by "
                        "network3.load_data())")
    parser.add_argument("--versions", type=int, default=6,
                        help="distortions of each digit (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the distortions (default: %(default)s)")
    parser.add_argument("--translate", type=float, default=defaults.translate,
                        help="largest shift, pixels (default: %(default)s)")
    parser.add_argument("--rotate", type=float, default=defaults.rotate,
                        help="largest rotation, degrees (default: %(default)s)")
    parser.add_argument("--skew", type=float, default=defaults.skew,
                        help="largest horizontal shear factor (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=defaults.elastic[0],
                        help="elastic distortion's alpha; 0: none (default: %(default)s)")
    parser.add_argument("--sigma", type=float, default=defaults.elastic[1],
                        help="elastic distortion's sigma (default: %(default)s)")
    parser.add_argument("--time", action="store_true",
                        help="also time one pass over the whole training set")
    args = parser.parse_args(argv)

    augment = Augment(translate=args.translate, rotate=args.rotate, skew=args.skew,
                      elastic=(args.alpha, args.sigma) if args.alpha > 0 else None)
    (x, y), _, _ = data.load_data(args.data)
    # the first training image of each digit, 0 to 9
    digits = x[[int(np.flatnonzero(y == d)[0]) for d in range(10) if (y == d).any()]]
    rng = np.random.default_rng(args.seed)
    versions = [augment(digits, rng) for _ in range(args.versions)]
    title = (f"{len(digits)} MNIST training digits (top) and {args.versions} random "
             f"distortions of each (seed {args.seed})\n{augment!r}")
    path = figures.plot_augmented(digits, versions, args.out, title=title)
    print(f"Wrote {path}")

    if args.time:
        start = time.perf_counter()
        augment(x, rng)
        print(f"{augment!r}: {len(x)} images in {time.perf_counter() - start:.2f} s")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
