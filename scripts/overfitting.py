"""overfitting.py: the overfitting diagnostic of chapter 3, with network3.

Trains the book's shallow network (784-100-10, sigmoid, eta 0.1) on only the
first 1,000 training images, measuring the training accuracy each epoch
(``monitor_training=True``), and plots training against validation accuracy:
the training accuracy climbs to 100% while the validation accuracy stalls
far below it.  Writes docs/figures/overfitting.png and
results/overfitting.jsonl.

    python scripts/overfitting.py --epochs 100
"""

import argparse
import json
from pathlib import Path

import network3
from network3 import FullyConnectedLayer, Network, SoftmaxLayer, figures

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100,
                        help="epochs to train (default: %(default)s)")
    parser.add_argument("--train-size", type=int, default=1000,
                        help="training images, the first of the set (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="network3.seed (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "overfitting.png"),
                        help="output PNG (default: %(default)s)")
    args = parser.parse_args(argv)
    training_data, validation_data, test_data = network3.load_data_shared()
    training_data = network3.data.subset(training_data, args.train_size)
    network3.seed(args.seed)
    net = Network([FullyConnectedLayer(n_in=784, n_out=100),
                   SoftmaxLayer(n_in=100, n_out=10)], 10)
    net.SGD(training_data, args.epochs, 10, 0.1, validation_data, test_data,
            monitor_training=True)
    figures.plot_training_curves(
        net.history, args.out,
        title=f"Overfitting: shallow net (784-100-10) trained on "
              f"{args.train_size:,} images, eta 0.1, seed {args.seed}")
    with open(ROOT / "results" / "overfitting.jsonl", "a") as f:
        f.write(json.dumps({"train_size": args.train_size, "seed": args.seed,
                            "epochs": net.history}) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
