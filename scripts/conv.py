"""conv.py: the experiments of chapter 6, by their book names.

Each experiment builds the book's network with the book's hyper-parameters,
trains it ``--runs`` times (the book reports the best of 3), and appends
one JSON record per run to ``results/<experiment>.jsonl`` (settings, seed,
per-epoch costs and accuracies, wall time, machine, the command, and the
labels the net gives the validation and test images).  From the shell:

    python scripts/conv.py shallow --epochs 60 --runs 3
    python scripts/conv.py dbl_conv_relu --epochs 5 --train-size 10000
    python scripts/conv.py all --workers 2          # the book's run_experiments
    python scripts/conv.py shallow --set eta=0.03,0.1 --set lmbda=0,0.1 --runs 3

A run already recorded in its results file is skipped, so an interrupted
command resumes when run again (``--force`` runs it anyway).  Without
``--workers`` or ``--scheduler`` the runs train one after another in this
process, printing the book's lines; ``--workers K`` trains them on a local
Dask cluster of K worker processes, ``--scheduler tcp://HOST:PORT`` on an
existing Dask cluster (``pip install -e ".[cluster]"``).

From the REPL, as with the book's script (data is loaded on first use):

    >>> import conv
    >>> nets = conv.shallow(n=1, epochs=2)

``--init corrected`` reruns an experiment with the initialisation the book's
author intended (sqrt(1/n_in); He's sqrt(2/n_in) for ReLU layers).  The
networks, settings and run machinery are in network3/experiments.py.

network3 (and with it PyTensor) is imported inside the functions below, not
at the top: the worker processes of a local Dask cluster re-import this
script when they start, before each is given compile-cache folders of its
own, and PyTensor fixes its cache folder when it is first imported.  (So
``--help`` is quick, too.)
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
mini_batch_size = 10

# The experiments' names, for the command line; their networks and the
# book's settings are network3.experiments.EXPERIMENTS and .build.
NAMES = ("shallow", "basic_conv", "omit_FC", "dbl_conv", "dbl_conv_tanh",
         "regularized_dbl_conv", "dbl_conv_relu", "expanded_data",
         "expanded_data_double_fc", "double_fc_dropout", "ensemble")


def __getattr__(name):
    # conv.EXPERIMENTS, conv.build, conv.load, conv.machine, ... are
    # network3.experiments', imported on first use
    if name.startswith("__"):
        raise AttributeError(name)
    from network3 import experiments
    try:
        return getattr(experiments, name)
    except AttributeError:
        raise AttributeError(f"module 'conv' has no attribute {name!r}") from None


def _plan(experiment, runs=1, epochs=None, eta=None, lmbda=None, seed=0,
          init="book", n=100, train_size=None, out=None, data=None, augment=None,
          data_name=None):
    from network3 import experiments
    from network3.data import size
    if data is not None and train_size is None:
        train_size = size(data[0])  # the key names the size of the data given
    return experiments.plan(
        [experiment], runs=runs, seed=seed, out=out, results_dir=ROOT / "results",
        data=data_name, epochs=epochs, eta=eta, lmbda=lmbda, init=init,
        n=n if experiment in experiments.WIDTH_EXPERIMENTS else None,
        train_size=train_size, augment=repr(augment) if augment is not None else None)


def run(experiment, runs=1, epochs=None, eta=None, lmbda=None, seed=0,
        init="book", n=100, train_size=None, out=None, save=True, data=None,
        augment=None, data_name=None, force=False):
    """Train ``experiment``'s network ``runs`` times (seeds seed, seed+1,
    ...) in this process; return the nets.  Each run appends a record to
    ``out`` (default results/<experiment>.jsonl).  A run already recorded
    there is skipped (its saved net is loaded and returned, if it is on
    disk) unless ``force``.  ``data``: the (training, validation, test)
    data to use; ``augment``: an on-the-fly augmentation such as
    ``network3.augment.Augment()``, applied to the training images each
    epoch."""
    return _run(experiment, runs, epochs, eta, lmbda, seed, init, n, train_size,
                out, save, data, augment, data_name, force)[0]


def _run(experiment, runs=1, epochs=None, eta=None, lmbda=None, seed=0,
         init="book", n=100, train_size=None, out=None, save=True, data=None,
         augment=None, data_name=None, force=False):
    import network3
    from network3 import experiments
    planned = _plan(experiment, runs, epochs, eta, lmbda, seed, init, n, train_size,
                    out, data, augment, data_name)
    outcomes = experiments.execute(planned, force=force, save=save, command=_command(),
                                   root=ROOT, data=data, augment=augment,
                                   raise_errors=True)
    nets = []
    for outcome in outcomes:
        if outcome.net is not None:
            nets.append(outcome.net)
        elif outcome.status == "skipped":
            saved = _saved_net(outcome.run)
            if saved:
                nets.append(network3.load(saved))
    return nets, planned


def _saved_net(run):
    from network3 import experiments
    for record in reversed(experiments.read_records(run.out)):
        if experiments.record_key(record) == run.key and record.get("saved"):
            path = Path(record["saved"])
            path = path if path.is_absolute() else ROOT / path
            if path.exists():
                return path
    return None


#### The book's functions, for REPL use
def shallow(n=3, epochs=60):
    return run("shallow", runs=n, epochs=epochs)


def basic_conv(n=3, epochs=60):
    return run("basic_conv", runs=n, epochs=epochs)


def omit_FC(n=3, epochs=60):
    return run("omit_FC", runs=n, epochs=epochs)


def dbl_conv(activation_fn=None, n=3, epochs=60):
    import network3
    name = "dbl_conv_tanh" if activation_fn is network3.tanh else "dbl_conv"
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
    """The book's last experiment: ``runs`` double_fc_dropout nets (recorded
    as experiment "ensemble", seeds seed, seed+1, ...) vote on the test set.
    Members already recorded are not trained again: the vote is taken from
    the records' test predictions, so members trained in other invocations
    count.  Returns (nets, EnsembleResult)."""
    nets, planned = _run("ensemble", runs=runs, epochs=epochs, seed=seed, init=init,
                         train_size=train_size, data=data, out=out)
    result, members = _vote(planned, data)
    return nets, result


def _vote(planned, data=None):
    """Vote the recorded members of the ensemble runs in ``planned``, per
    results file and settings, and print each vote."""
    from network3 import experiments
    from network3.data import as_array
    groups = {}
    for run in planned:
        if run.experiment == "ensemble":
            groups.setdefault((run.out, run.settings), []).append(run)
    result = members = None
    for (out, _), runs in groups.items():
        labels = as_array(data[2][1]) if data is not None else mnist_test_labels()
        result, members = experiments.ensemble_from_records(out, runs, labels)
        if result is None:
            print(f"Ensemble: no recorded members in {out} to vote")
            continue
        print(f"Ensemble of {len(members)} nets (of {len(runs)} asked for): test "
              f"accuracy {result.accuracy:.2%} ({len(result.misclassified)} errors)")
    return result, members


def mnist_test_labels():
    """The MNIST test labels (those of the expanded set too)."""
    import network3
    return network3.data.load_data()[2][1]


def _command():
    if Path(sys.argv[0]).name != "conv.py":
        return None  # called from the REPL or a test
    return " ".join(["python", "scripts/conv.py"] + sys.argv[1:])


def parser():
    p = argparse.ArgumentParser(
        description="Run experiments of chapter 6 with the book's settings, "
        "recording each run to results/<experiment>.jsonl; runs already recorded "
        "are skipped, so an interrupted command resumes when run again.",
        epilog="all: the book's run_experiments: shallow, basic_conv, omit_FC, "
        "dbl_conv, dbl_conv_relu, expanded_data and expanded_data_double_fc with "
        "FC 100, 300 and 1000, 3 runs each, and the ensemble of 5 "
        "double_fc_dropout nets.  Examples: conv.py shallow --runs 3 --workers 2; "
        "conv.py dbl_conv_relu --set eta=0.01,0.03,0.1 --set lmbda=0,0.1 "
        "--scheduler tcp://HOST:8786")
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                   choices=NAMES + ("all",),
                   help=f"one or more of: {', '.join(NAMES)}, or all")
    p.add_argument("--runs", type=int,
                   help="runs of each experiment and setting, seeds seed..seed+runs-1 "
                   "(default 1; with all, the book's 3, and 5 for the ensemble; "
                   "ensemble: the number of voting nets, book 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="default: the book's")
    p.add_argument("--eta", type=float, help="default: the book's")
    p.add_argument("--lmbda", type=float, help="default: the book's")
    p.add_argument("--n", type=int,
                   help="FC width of the expanded_data experiments (book: 100, 300, 1000)")
    p.add_argument("--init", choices=["book", "corrected"], help="default: book")
    p.add_argument("--augment", action="store_true",
                   help="on-the-fly random translations, rotations, skews and "
                   "elastic distortions of the training images each epoch "
                   "(network3.augment.Augment's defaults)")
    p.add_argument("--data", choices=["mnist", "expanded"],
                   help="training set (default: the book's for the experiment)")
    p.add_argument("--train-size", type=int,
                   help="train on the first N images only, for a quick look")
    p.add_argument("--set", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="run every combination of these values (repeatable): "
                   "eta, lmbda, epochs, n, init, data, train_size; e.g. "
                   "--set eta=0.01,0.03,0.1 --set lmbda=0,0.1")
    p.add_argument("--out", help="results file (JSON Lines); default "
                   "results/<experiment>.jsonl")
    p.add_argument("--no-save", action="store_true",
                   help="do not save the trained networks (results/nets/)")
    p.add_argument("--force", action="store_true",
                   help="run (and record) runs that are already recorded")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="K",
                       help="run on a local Dask cluster of K worker processes "
                       "(one thread each)")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="run on an existing Dask cluster")
    p.add_argument("--cache-dir",
                   help="with --workers: folder for the workers' compile caches "
                   "(default: network3-workers/ in PyTensor's base_compiledir)")
    return p


def main(argv=None):
    """The command line; returns the exit status (1 if a run failed)."""
    p = parser()
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be at least 1")
    if args.runs is not None and args.runs < 1:
        p.error("--runs must be at least 1")
    from network3 import experiments
    try:
        sets = {}
        for text in args.set:
            name, values = experiments.parse_set(text)
            if name in sets:
                raise ValueError(f"--set {name} is given twice; list all its values once")
            sets[name] = values
        augment = None
        if args.augment:
            from network3.augment import Augment
            augment = repr(Augment())
        planned = experiments.plan(
            args.experiments, runs=args.runs, seed=args.seed, sets=sets, out=args.out,
            results_dir=ROOT / "results", data=args.data, epochs=args.epochs,
            eta=args.eta, lmbda=args.lmbda, init=args.init, n=args.n,
            train_size=args.train_size, augment=augment)
    except ValueError as err:
        p.error(str(err))
    try:
        outcomes = experiments.execute(
            planned, workers=args.workers, scheduler=args.scheduler, force=args.force,
            save=not args.no_save, cache_dir=args.cache_dir, command=_command(),
            root=ROOT)
    except (experiments.MissingDask, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if any(run.experiment == "ensemble" for run in planned):
        try:
            _vote(planned)
        except (OSError, ValueError) as err:
            print(f"Ensemble: cannot vote here: {err}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
