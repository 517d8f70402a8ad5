"""conv.py: the experiments of chapter 6, by their book names.

Each experiment builds the book's network with the book's hyper-parameters,
trains it ``runs`` times (the book reports the best of 3), prints the book's
lines as it goes, and appends one JSON record per run to
``results/<experiment>.jsonl`` (configuration, seed, per-epoch costs and
accuracies, wall time, machine, the command).  From the shell:

    python scripts/conv.py shallow --epochs 60 --runs 1
    python scripts/conv.py dbl_conv_relu --epochs 5 --train-size 10000

or from the REPL, as with the book's script (data is loaded on first use,
not at import):

    >>> import conv
    >>> nets = conv.shallow(n=1, epochs=2)

``--init corrected`` reruns an experiment with the initialisation the book's
author intended (sqrt(1/n_in); He's sqrt(2/n_in) for ReLU layers).
"""

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import network3
from network3 import (
    ConvPoolLayer,
    FullyConnectedLayer,
    Network,
    ReLU,
    SoftmaxLayer,
    sigmoid,
    tanh,
)
from network3.saving import describe

ROOT = Path(__file__).resolve().parent.parent
mini_batch_size = 10

_data = {}


def load(name="mnist"):
    """The book's data (``mnist``) or the expanded training set
    (``expanded``, built by scripts/expand_mnist.py), loaded once."""
    if name not in _data:
        if name == "mnist":
            _data[name] = network3.load_data_shared()
        else:
            path = network3.data.data_dir() / "mnist_expanded.pkl.gz"
            if not path.exists():
                sys.exit(f"{path} is missing: run `python scripts/expand_mnist.py`")
            _data[name] = network3.load_data_shared(str(path))
    return _data[name]


#### The book's networks
def _init(init, activation_fn):
    # "corrected": the author's intended sqrt(1/n_in), and He for ReLU layers
    if init == "corrected" and activation_fn is ReLU:
        return "he"
    return init


def conv1(activation_fn=sigmoid, init="book"):
    return ConvPoolLayer(image_shape=(mini_batch_size, 1, 28, 28),
                         filter_shape=(20, 1, 5, 5), poolsize=(2, 2),
                         activation_fn=activation_fn, init=_init(init, activation_fn))


def conv2(activation_fn=sigmoid, init="book"):
    return ConvPoolLayer(image_shape=(mini_batch_size, 20, 12, 12),
                         filter_shape=(40, 20, 5, 5), poolsize=(2, 2),
                         activation_fn=activation_fn, init=_init(init, activation_fn))


def fc(n_in, n_out, activation_fn=sigmoid, p_dropout=0.0, init="book"):
    return FullyConnectedLayer(n_in=n_in, n_out=n_out, activation_fn=activation_fn,
                               p_dropout=p_dropout, init=_init(init, activation_fn))


def build(experiment, init="book", n=100):
    """The layers of ``experiment``'s network; ``n`` is the FC width of the
    expanded-data experiments."""
    act = {"dbl_conv_tanh": tanh}.get(experiment, sigmoid)
    if experiment in ("dbl_conv_relu", "expanded_data", "expanded_data_double_fc",
                      "double_fc_dropout", "ensemble"):
        act = ReLU
    if experiment == "shallow":
        return [fc(784, 100, init=init), SoftmaxLayer(n_in=100, n_out=10)]
    if experiment == "basic_conv":
        return [conv1(init=init), fc(20 * 12 * 12, 100, init=init),
                SoftmaxLayer(n_in=100, n_out=10)]
    if experiment == "omit_FC":
        return [conv1(init=init), SoftmaxLayer(n_in=20 * 12 * 12, n_out=10)]
    if experiment in ("dbl_conv", "dbl_conv_tanh", "regularized_dbl_conv",
                      "dbl_conv_relu"):
        return [conv1(act, init), conv2(act, init), fc(40 * 4 * 4, 100, act, init=init),
                SoftmaxLayer(n_in=100, n_out=10)]
    if experiment == "expanded_data":
        return [conv1(act, init), conv2(act, init), fc(40 * 4 * 4, n, act, init=init),
                SoftmaxLayer(n_in=n, n_out=10)]
    if experiment == "expanded_data_double_fc":
        return [conv1(act, init), conv2(act, init), fc(40 * 4 * 4, n, act, init=init),
                fc(n, n, act, init=init), SoftmaxLayer(n_in=n, n_out=10)]
    if experiment in ("double_fc_dropout", "ensemble"):
        return [conv1(act, init), conv2(act, init),
                fc(40 * 4 * 4, 1000, act, p_dropout=0.5, init=init),
                fc(1000, 1000, act, p_dropout=0.5, init=init),
                SoftmaxLayer(n_in=1000, n_out=10, p_dropout=0.5)]
    raise ValueError(f"unknown experiment {experiment!r}; choose one of "
                     f"{', '.join(EXPERIMENTS)}")


# name: (data, epochs, eta, lmbda), the book's settings
EXPERIMENTS = {
    "shallow": ("mnist", 60, 0.1, 0.0),
    "basic_conv": ("mnist", 60, 0.1, 0.0),
    "omit_FC": ("mnist", 60, 0.1, 0.0),
    "dbl_conv": ("mnist", 60, 0.1, 0.0),
    "dbl_conv_tanh": ("mnist", 60, 0.1, 0.0),
    "regularized_dbl_conv": ("mnist", 60, 0.1, 0.1),
    "dbl_conv_relu": ("mnist", 60, 0.03, 0.1),
    "expanded_data": ("expanded", 60, 0.03, 0.1),
    "expanded_data_double_fc": ("expanded", 60, 0.03, 0.1),
    "double_fc_dropout": ("expanded", 40, 0.03, 0.0),
    "ensemble": ("expanded", 40, 0.03, 0.0),
}


def run(experiment, runs=1, epochs=None, eta=None, lmbda=None, seed=0,
        init="book", n=100, train_size=None, out=None, save=True, data=None,
        augment=None, data_name=None):
    """Train ``experiment``'s network ``runs`` times; return the nets.  Each
    run appends a record to ``out`` (default results/<experiment>.jsonl).
    ``augment``: an on-the-fly augmentation such as
    ``network3.augment.Augment()``, applied to the training images each
    epoch."""
    book_data, book_epochs, book_eta, book_lmbda = EXPERIMENTS[experiment]
    data_name = data_name or book_data
    epochs = book_epochs if epochs is None else epochs
    eta = book_eta if eta is None else eta
    lmbda = book_lmbda if lmbda is None else lmbda
    training_data, validation_data, test_data = data or load(data_name)
    if train_size:
        training_data = network3.data.subset(training_data, train_size)
    out = Path(out) if out else ROOT / "results" / f"{experiment}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    nets = []
    for r in range(runs):
        run_seed = seed + r
        network3.seed(run_seed)
        net = Network(build(experiment, init, n), mini_batch_size)
        config = {"epochs": epochs, "eta": eta, "lmbda": lmbda,
                  "mini_batch_size": mini_batch_size, "init": init,
                  "data": data_name, "train_size": train_size or
                  int(network3.size(training_data)),
                  "layers": [describe(layer) for layer in net.layers],
                  "backend": network3.backend.backend(),
                  "floatX": network3.floatX(),
                  "augment": repr(augment) if augment is not None else None}
        print(f"{experiment}: run {r} of {runs}, seed {run_seed}, "
              f"{epochs} epochs, eta {eta}, lmbda {lmbda}, init {init}")
        start = time.perf_counter()
        net.SGD(training_data, epochs, mini_batch_size, eta,
                validation_data, test_data, lmbda=lmbda, augment=augment)
        wall = time.perf_counter() - start
        saved = None
        if save:
            saved = out.parent / "nets" / f"{out.stem}-seed{run_seed}.npz"
            saved.parent.mkdir(parents=True, exist_ok=True)
            net.save(saved)
            saved = str(saved.relative_to(ROOT)) if saved.is_relative_to(ROOT) \
                else str(saved)
        record = {"experiment": experiment, "run": r, "seed": run_seed,
                  "config": config, "epochs": net.history,
                  "best_validation_accuracy": net.best_validation_accuracy,
                  "best_iteration": net.best_iteration,
                  "test_accuracy": net.test_accuracy, "wall_seconds": wall,
                  "machine": machine(),
                  "date": datetime.now(UTC).isoformat(timespec="seconds"),
                  "command": _command(),
                  "saved": saved}
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        nets.append(net)
    return nets


def machine():
    """The CPU model and the cores this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {cpus} cores"


#### The book's functions, for REPL use
def shallow(n=3, epochs=60):
    return run("shallow", runs=n, epochs=epochs)


def basic_conv(n=3, epochs=60):
    return run("basic_conv", runs=n, epochs=epochs)


def omit_FC(n=3, epochs=60):
    return run("omit_FC", runs=n, epochs=epochs)


def dbl_conv(activation_fn=sigmoid, n=3, epochs=60):
    name = "dbl_conv_tanh" if activation_fn is tanh else "dbl_conv"
    return run(name, runs=n, epochs=epochs)


def regularized_dbl_conv(lmbdas=(0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0), n=3,
                         epochs=60):
    return [run("regularized_dbl_conv", runs=n, epochs=epochs, lmbda=lmbda)
            for lmbda in lmbdas]


def dbl_conv_relu(n=3, epochs=60):
    return run("dbl_conv_relu", runs=n, epochs=epochs)


def expanded_data(n=100, runs=3, epochs=60):
    return run("expanded_data", runs=runs, epochs=epochs, n=n)


def expanded_data_double_fc(n=100, runs=3, epochs=60):
    return run("expanded_data_double_fc", runs=runs, epochs=epochs, n=n)


def double_fc_dropout(runs=3, epochs=40):
    return run("double_fc_dropout", runs=runs, epochs=epochs)


def ensemble(runs=5, epochs=40, seed=0, train_size=None, data=None, out=None,
             init="book"):
    """The book's last experiment: train ``runs`` double_fc_dropout nets
    (recorded as experiment "ensemble") and let them vote on the test set.
    The vote is recorded in results/ensemble_vote.jsonl with the indices of
    the misclassified test images.  Returns (nets, EnsembleResult)."""
    from network3.ensemble import ensemble_accuracy
    start = time.perf_counter()
    nets = run("ensemble", runs=runs, epochs=epochs, seed=seed, init=init,
               train_size=train_size, data=data, out=out)
    test_data = (data or load(EXPERIMENTS["ensemble"][0]))[2]
    result = ensemble_accuracy(nets, test_data)
    print(f"Ensemble of {runs} nets: test accuracy {result.accuracy:.2%} "
          f"({len(result.misclassified)} errors)")
    out = Path(out) if out else ROOT / "results" / "ensemble.jsonl"
    members = [json.loads(line) for line in out.read_text().splitlines()[-runs:]]
    record = {"experiment": "ensemble_vote", "run": 0, "seed": seed,
              "config": dict(members[0]["config"], runs=runs),
              "members": [m["saved"] for m in members],
              "member_test_accuracies": [m["test_accuracy"] for m in members],
              "test_accuracy": result.accuracy,
              "errors": len(result.misclassified),
              "misclassified": result.misclassified.tolist(),
              "wall_seconds": time.perf_counter() - start, "machine": machine(),
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": _command()}
    with open(out.with_name(out.stem + "_vote.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    return nets, result


def _command():
    if Path(sys.argv[0]).name != "conv.py":
        return None  # called from the REPL or a test
    return " ".join(["python", "scripts/conv.py"] + sys.argv[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Run an experiment of chapter 6 with the book's settings.")
    parser.add_argument("experiment", choices=list(EXPERIMENTS))
    parser.add_argument("--epochs", type=int, help="default: the book's")
    parser.add_argument("--runs", type=int,
                        help="independent runs, seeds seed..seed+runs-1 (book: 3; "
                        "ensemble: the number of voting nets, book 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eta", type=float, help="default: the book's")
    parser.add_argument("--lmbda", type=float, help="default: the book's")
    parser.add_argument("--n", type=int, default=100,
                        help="FC width of the expanded_data experiments (100/300/1000)")
    parser.add_argument("--init", default="book", choices=["book", "corrected"])
    parser.add_argument("--augment", action="store_true",
                        help="on-the-fly random translations, rotations, skews and "
                        "elastic distortions of the training images each epoch "
                        "(network3.augment.Augment's defaults)")
    parser.add_argument("--data", choices=["mnist", "expanded"],
                        help="training set (default: the book's for the experiment)")
    parser.add_argument("--train-size", type=int,
                        help="train on the first N images only, for a quick look")
    parser.add_argument("--out", help="results file (JSON Lines); default "
                        "results/<experiment>.jsonl")
    parser.add_argument("--no-save", action="store_true",
                        help="do not save the trained networks")
    args = parser.parse_args(argv)
    if args.experiment == "ensemble":
        ensemble(runs=args.runs or 5, epochs=args.epochs or 40, seed=args.seed,
                 train_size=args.train_size, out=args.out, init=args.init)
        return
    augment = None
    if args.augment:
        from network3.augment import Augment
        augment = Augment()
    data = load(args.data) if args.data else None
    runs = run(args.experiment, runs=args.runs or 1, epochs=args.epochs, eta=args.eta,
               lmbda=args.lmbda, seed=args.seed, init=args.init, n=args.n,
               train_size=args.train_size, out=args.out, save=not args.no_save,
               augment=augment, data=data, data_name=args.data)
    accs = [net.test_accuracy for net in runs]
    print(f"{args.experiment}: test accuracy of each run "
          f"{', '.join(f'{a:.2%}' for a in accs)}; best {max(accs):.2%}")


if __name__ == "__main__":
    main()
