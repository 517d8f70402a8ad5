"""figures.py: the chapter's three figures, drawn from the runs of scripts/conv.py.

    python scripts/figures.py                   # from results/<experiment>.jsonl
    python scripts/figures.py --train-quick     # no results yet: train small
                                                # nets first (a few minutes)

Writes into ``docs/figures/`` (``--out``):

* ``misclassified.png``: the test digits the ensemble gets wrong, true label
  top right, prediction bottom right (the book's 33).  The voters are the
  saved nets of ``results/ensemble.jsonl``; without them, the saved net with
  the best test accuracy in any results file (``--misclassified EXP``: the
  best net of EXP, or all of them voting if EXP is ``ensemble``).
* ``filters.png``: the 20 learned 5x5 filters of the first layer of the best
  ensemble net (the book's come from its final network); without one, of
  the best saved conv net in any results file (``--filters EXP``).
* ``tanh_vs_sigmoid.png``: validation accuracy per epoch of the
  ``dbl_conv`` (sigmoid) and ``dbl_conv_tanh`` runs (``--curves EXP ...``),
  the chapter's problem on tanh.

An experiment's file may hold runs with different settings (a quick look,
then the full run); each figure uses the latest group of runs with the
settings of the file's last record.  The titles say what was trained and
how long, so a quick run's figure is not mistaken for the book's.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import network3
from network3 import figures
from network3.ensemble import ensemble_accuracy
from network3.experiments import read_records

ROOT = Path(__file__).resolve().parent.parent
# most advanced first: the book's figures come from its final networks
ADVANCED_FIRST = ("ensemble", "double_fc_dropout", "expanded_data_double_fc",
                  "expanded_data", "dbl_conv_relu", "regularized_dbl_conv",
                  "dbl_conv", "dbl_conv_tanh", "basic_conv", "omit_FC",
                  "shallow")
CURVES = ("dbl_conv", "dbl_conv_tanh")
MAX_DIGITS = 66      # 6 rows of 11; the book's 33 fit in 3


#### Reading results
def read_runs(results_dir, experiment):
    """The latest group of runs of ``experiment``: the records of
    ``results_dir/<experiment>.jsonl`` whose config equals the last one's
    (read as conv.py does: a line cut off by a crash is skipped)."""
    records = read_records(Path(results_dir) / f"{experiment}.jsonl")
    if not records:
        return []
    latest = json.dumps(records[-1].get("config"), sort_keys=True)
    return [r for r in records
            if json.dumps(r.get("config"), sort_keys=True) == latest]


def saved_nets(records):
    """(record, path) for the runs whose saved network file exists."""
    found = []
    for record in records:
        if record.get("saved"):
            path = Path(record["saved"])
            path = path if path.is_absolute() else ROOT / path
            if path.exists():
                found.append((record, path))
    return found


def describe_runs(records):
    """'3 runs, 60 epochs on 50,000 images' from the runs' config."""
    config = records[0].get("config", {})
    runs = f"{len(records)} run{'s' if len(records) != 1 else ''}, "
    what = f"{config.get('epochs', '?')} epochs"
    if config.get("train_size"):
        what += f" on {config['train_size']:,} images"
    return runs + what


def best(found):
    """The saved run with the highest test accuracy."""
    return max(found, key=lambda pair: pair[0].get("test_accuracy") or 0.0)


#### The three figures
def voters(results_dir, experiment=None, conv_only=False):
    """(experiment, [(record, path), ...]): the saved nets a figure draws
    on.  ``experiment`` given: its nets.  Otherwise the ensemble's, when it
    has saved nets, else the single saved net with the best test accuracy
    in any results file (the most advanced experiment first on a tie)."""
    if experiment:
        names = [experiment]
    else:
        on_file = sorted(p.stem for p in Path(results_dir).glob("*.jsonl"))
        names = [n for n in ADVANCED_FIRST if n in on_file] + \
            [n for n in on_file if n not in ADVANCED_FIRST]
    found = [(name, record, path) for name in names
             for record, path in saved_nets(read_runs(results_dir, name))
             if not conv_only or _first_layer(record) == "ConvPoolLayer"]
    if not found:
        return None, []
    if found[0][0] == "ensemble" or experiment:
        name = found[0][0]
        return name, [(r, p) for n, r, p in found if n == name]
    name, record, path = max(found, key=lambda f: f[1].get("test_accuracy")
                             or 0.0)  # max keeps the first of equals
    return name, [(record, path)]


def misclassified_figure(results_dir, test_data, out, experiment=None):
    name, found = voters(results_dir, experiment)
    if not found:
        return _missing("misclassified", experiment, "saved networks")
    if name in ("ensemble", "beyond"):  # the experiments whose nets vote
        # the nets of one setting (that of the best net), in seed order: ties
        settings = max(found, key=lambda f: f[0].get("test_accuracy") or 0)[0].get("settings")
        chosen = sorted([f for f in found if f[0].get("settings") == settings],
                        key=lambda f: f[0]["seed"])
        who = (f"an ensemble of {len(chosen)} nets voting" if name == "ensemble"
               else f"a vote of {len(chosen)} {name} nets")
    else:
        chosen = [best(found)]
        who = f"the best {name} net (run {chosen[0][0]['run']})"
    nets = [network3.load(path) for _, path in chosen]
    result = ensemble_accuracy(nets, test_data)
    x, y = test_data
    wrong = result.misclassified
    shown = wrong[:MAX_DIGITS]
    count = (f"{len(wrong)}" if len(shown) == len(wrong)
             else f"first {len(shown)} of the {len(wrong)}")
    title = (f"The {count} test images misclassified by {who} "
             f"({result.accuracy:.2%} accuracy)\n"
             f"{name}: {describe_runs([r for r, _ in chosen])}")
    return figures.plot_misclassified(x[shown], y[shown], result.labels[shown],
                                      Path(out) / "misclassified.png",
                                      title=title)


def filters_figure(results_dir, out, experiment=None):
    name, found = voters(results_dir, experiment, conv_only=True)
    if not found:
        return _missing("filters", experiment,
                        "saved network whose first layer is a ConvPoolLayer")
    record, path = best(found)
    w = network3.load(path).layers[0].w.get_value()
    n, _, height, width = w.shape
    title = (f"The {n} learned {height}x{width} filters of the first "
             f"convolutional layer\n{name}, run {record['run']}: "
             f"{describe_runs([record])}, test accuracy "
             f"{record.get('test_accuracy') or 0:.2%}")
    return figures.plot_filters(w, Path(out) / "filters.png", title=title)


def _first_layer(record):
    layers = record.get("config", {}).get("layers") or [{}]
    return layers[0].get("type")


def curves_figure(results_dir, out, experiments=CURVES):
    histories, labels, settings = [], [], []
    for name in experiments:
        records = read_runs(results_dir, name)
        for record in records:
            layers = record.get("config", {}).get("layers") or [{}]
            activation = layers[0].get("activation_fn", "?")
            histories.append(record["epochs"])
            labels.append(f"{activation} ({name}, run {record['run']})")
        if records:
            settings.append(f"{name}: {describe_runs(records)}")
    if not histories:
        return _missing("tanh_vs_sigmoid", experiments[0], "runs")
    return figures.plot_accuracy_curves(
        histories, labels, Path(out) / "tanh_vs_sigmoid.png",
        title="Validation accuracy per epoch, tanh vs sigmoid\n"
              + "\n".join(settings))


def _missing(figure, experiment, what):
    where = f"results/{experiment}.jsonl" if experiment else "the results"
    print(f"figures.py: no {what} for {figure}.png in {where}; run "
          f"`python scripts/conv.py {experiment or 'EXPERIMENT'}` or "
          "`python scripts/figures.py --train-quick`", file=sys.stderr)
    return None


#### Quick runs, when there are no results yet
def train_quick(results_dir, data, train_size=5000, epochs=3,
                validation_size=2000):
    """Train dbl_conv (sigmoid) and dbl_conv_tanh for ``epochs`` on the
    first ``train_size`` training images, validating on the first
    ``validation_size`` validation images, recording the runs as
    scripts/conv.py does (into ``results_dir``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import conv
    training, validation, test = data
    quick = ((training[0][:train_size], training[1][:train_size]),
             (validation[0][:validation_size], validation[1][:validation_size]),
             test)
    for name in CURVES:
        conv.run(name, epochs=epochs, data=quick,
                 out=Path(results_dir) / f"{name}.jsonl")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Draw the chapter's figures from the results of "
        "scripts/conv.py into docs/figures/.")
    parser.add_argument("--results", default=str(ROOT / "results"),
                        help="folder of <experiment>.jsonl files "
                        "(default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures"),
                        help="folder for the PNG files (default: %(default)s)")
    parser.add_argument("--data", help="the book's mnist.pkl.gz (default: as "
                        "network3.load_data() finds it); its test set is used")
    parser.add_argument("--misclassified", metavar="EXP",
                        help="experiment whose saved nets vote "
                        "(default: the most advanced one with saved nets)")
    parser.add_argument("--filters", metavar="EXP",
                        help="experiment whose first-layer filters are shown")
    parser.add_argument("--curves", metavar="EXP", nargs="+",
                        default=list(CURVES),
                        help="experiments compared per epoch (default: "
                        "%(default)s)")
    parser.add_argument("--train-quick", action="store_true",
                        help="first train dbl_conv and dbl_conv_tanh briefly "
                        "(results in a temporary folder unless --quick-dir)")
    parser.add_argument("--quick-dir", help="keep the quick runs' results here")
    parser.add_argument("--quick-train-size", type=int, default=5000,
                        help="training images of the quick runs (default: %(default)s)")
    parser.add_argument("--quick-epochs", type=int, default=3,
                        help="epochs of the quick runs (default: %(default)s)")
    args = parser.parse_args(argv)

    data = network3.load_data(args.data)
    with tempfile.TemporaryDirectory() as scratch:
        results = args.results
        if args.train_quick:
            results = args.quick_dir or scratch
            train_quick(results, data, args.quick_train_size, args.quick_epochs)
        made = [misclassified_figure(results, data[2], args.out,
                                     args.misclassified),
                filters_figure(results, args.out, args.filters),
                curves_figure(results, args.out, args.curves)]
    for path in made:
        if path:
            print(f"wrote {path}")
    return 0 if all(made) else 1


if __name__ == "__main__":
    sys.exit(main())
