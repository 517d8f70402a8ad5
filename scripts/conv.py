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

From a Python prompt in scripts/, as with the book's conv.py: its
functions, with its signatures, each training at every call and printing
the book's lines (nothing recorded or skipped), and its module-level
``training_data``, ``validation_data``, ``test_data`` (loaded on first
use, so ``import conv`` is quick) and ``mini_batch_size``:

    >>> from conv import *
    >>> dbl_conv(activation_fn=ReLU)
    >>> nets = double_fc_dropout(0.5, 0.5, 0.5, 5)
    >>> error_locations, erroneous_predictions = ensemble(nets)  # Accuracy is ...%
    >>> plot_errors(error_locations, erroneous_predictions).savefig("errors.png")

``--init corrected`` reruns an experiment with the initialisation the book's
author intended (sqrt(1/n_in); He's sqrt(2/n_in) for ReLU layers).  The
networks, settings and run machinery are in network3/experiments/.

network3 (and with it PyTensor) is imported inside the functions below, not
at the top: the worker processes of a local Dask cluster re-import this
script when they start, before each is given compile-cache folders of its
own, and PyTensor fixes its cache folder when it is first imported.  (So
``--help`` is quick, too.)
"""

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
mini_batch_size = 10

# The experiments' names, for the command line; their networks and the
# book's settings are network3.experiments.EXPERIMENTS and .build.
NAMES = ("shallow", "basic_conv", "omit_FC", "dbl_conv", "dbl_conv_tanh",
         "regularized_dbl_conv", "dbl_conv_relu", "expanded_data",
         "expanded_data_double_fc", "double_fc_dropout", "ensemble", "beyond")
# the experiments whose recorded runs vote, after they run (the book's
# ensemble; beyond's networks, beyond the book)
VOTING = ("ensemble", "beyond")


# What `from conv import *` gives, as the book's conv.py: its functions, its
# data and the network3 names it imported (the book's chapter calls
# dbl_conv(activation_fn=ReLU)).  The data and network3's names are
# fetched by __getattr__ when first asked for.
_BOOK_DATA = ("training_data", "validation_data", "test_data")
_NETWORK3_NAMES = ("network3", "Network", "ConvPoolLayer", "FullyConnectedLayer",
                   "SoftmaxLayer", "sigmoid", "tanh", "ReLU")
__all__ = ["shallow", "basic_conv", "omit_FC", "dbl_conv", "regularized_dbl_conv",
           "dbl_conv_relu", "expanded_data", "expanded_data_double_fc",
           "double_fc_dropout", "ensemble", "plot_errors", "plot_filters",
           "run_experiments", "mini_batch_size", *_BOOK_DATA, *_NETWORK3_NAMES]


def __getattr__(name):
    # conv.training_data, ... load the book's data (once); conv.ReLU, ...
    # are network3's; conv.EXPERIMENTS, conv.build, conv.load, ... are
    # network3.experiments'; all imported on first use
    if name.startswith("__"):
        raise AttributeError(name)
    if name in _BOOK_DATA:
        return _book_data()[_BOOK_DATA.index(name)]
    if name in _NETWORK3_NAMES:
        import network3
        return network3 if name == "network3" else getattr(network3, name)
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


#### The book's conv.py, for a prompt in scripts/
#
# The functions of the book's conv.py, with its signatures, loops, printed
# headings and return values.  As the book's, each trains at every call,
# printing the book's lines; nothing is recorded or skipped (that is the
# command line's job, above).  Arguments after ``*`` are the port's, with
# the book's values as defaults: ``omit_FC(runs=1, epochs=2)`` is a quick
# look.  network3 is imported inside the functions (see the docstring).

def shallow(n=3, epochs=60):
    from network3 import FullyConnectedLayer, SoftmaxLayer
    training_data, _, _ = _book_data()
    nets = []
    for _ in range(_count("n", n)):
        print("A shallow net with 100 hidden neurons")
        nets.append(_train([
            FullyConnectedLayer(n_in=784, n_out=100),
            SoftmaxLayer(n_in=100, n_out=10)], training_data, epochs, 0.1))
    return nets


def basic_conv(n=3, epochs=60):
    from network3 import FullyConnectedLayer, SoftmaxLayer, sigmoid
    training_data, _, _ = _book_data()
    net = None
    for _ in range(_count("n", n)):
        print("Conv + FC architecture")
        net = _train([
            _conv_pool_1(sigmoid),
            FullyConnectedLayer(n_in=20*12*12, n_out=100),
            SoftmaxLayer(n_in=100, n_out=10)], training_data, epochs, 0.1)
    return net  # the book's: the last net trained


def omit_FC(*, runs=3, epochs=60):
    from network3 import SoftmaxLayer, sigmoid
    training_data, _, _ = _book_data()
    net = None
    for _ in range(_count("runs", runs)):
        print("Conv only, no FC")
        net = _train([
            _conv_pool_1(sigmoid),
            SoftmaxLayer(n_in=20*12*12, n_out=10)], training_data, epochs, 0.1)
    return net


def dbl_conv(activation_fn=None, *, runs=3, epochs=60):
    """The book's default is ``activation_fn=sigmoid``; here None stands for
    it, because naming network3.sigmoid would import PyTensor with this
    file.  Any activation function works: ReLU, tanh, or one of yours."""
    from network3 import FullyConnectedLayer, SoftmaxLayer, sigmoid
    if activation_fn is None:
        activation_fn = sigmoid
    training_data, _, _ = _book_data()
    net = None
    for _ in range(_count("runs", runs)):
        print("Conv + Conv + FC architecture")
        net = _train([
            _conv_pool_1(activation_fn),
            _conv_pool_2(activation_fn),
            FullyConnectedLayer(n_in=40*4*4, n_out=100, activation_fn=activation_fn),
            SoftmaxLayer(n_in=100, n_out=10)], training_data, epochs, 0.1)
    return net


# The book left this one out of the chapter (and run_experiments) as a
# negative result: L2 regularization barely helps a network whose
# convolutional-pooling layers already regularize it.
def regularized_dbl_conv(*, lmbdas=(0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0),
                         runs=3, epochs=60):
    from network3 import FullyConnectedLayer, SoftmaxLayer, sigmoid
    training_data, _, _ = _book_data()
    for lmbda in lmbdas:
        for j in range(_count("runs", runs)):
            print(f"Conv + Conv + FC num {j}, with regularization {lmbda}")
            _train([
                _conv_pool_1(sigmoid),
                _conv_pool_2(sigmoid),
                FullyConnectedLayer(n_in=40*4*4, n_out=100),
                SoftmaxLayer(n_in=100, n_out=10)], training_data, epochs, 0.1, lmbda)


# The book's code sweeps lmbda; its text reports lmbda = 0.1 (99.23%).
def dbl_conv_relu(*, lmbdas=(0.0, 0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0),
                  runs=3, epochs=60):
    from network3 import FullyConnectedLayer, ReLU, SoftmaxLayer
    training_data, _, _ = _book_data()
    for lmbda in lmbdas:
        for j in range(_count("runs", runs)):
            print(f"Conv + Conv + FC num {j}, relu, with regularization {lmbda}")
            _train([
                _conv_pool_1(ReLU),
                _conv_pool_2(ReLU),
                FullyConnectedLayer(n_in=40*4*4, n_out=100, activation_fn=ReLU),
                SoftmaxLayer(n_in=100, n_out=10)], training_data, epochs, 0.03, lmbda)


#### The expanded training set (python scripts/expand_mnist.py makes it)

def expanded_data(n=100, *, runs=3, epochs=60):
    """n is the number of neurons in the fully-connected layer (the book
    tries 100, 300 and 1000)."""
    from network3 import FullyConnectedLayer, ReLU, SoftmaxLayer
    expanded_training_data = _expanded_training_data()
    net = None
    for j in range(_count("runs", runs)):
        print(f"Training with expanded data, {n} neurons in the FC layer, run num {j}")
        net = _train([
            _conv_pool_1(ReLU),
            _conv_pool_2(ReLU),
            FullyConnectedLayer(n_in=40*4*4, n_out=n, activation_fn=ReLU),
            SoftmaxLayer(n_in=n, n_out=10)], expanded_training_data, epochs, 0.03, 0.1)
    return net


def expanded_data_double_fc(n=100, *, runs=3, epochs=60):
    """n is the number of neurons in both fully-connected layers."""
    from network3 import FullyConnectedLayer, ReLU, SoftmaxLayer
    expanded_training_data = _expanded_training_data()
    for j in range(_count("runs", runs)):
        print(f"Training with expanded data, {n} neurons in two FC layers, run num {j}")
        _train([
            _conv_pool_1(ReLU),
            _conv_pool_2(ReLU),
            FullyConnectedLayer(n_in=40*4*4, n_out=n, activation_fn=ReLU),
            FullyConnectedLayer(n_in=n, n_out=n, activation_fn=ReLU),
            SoftmaxLayer(n_in=n, n_out=10)], expanded_training_data, epochs, 0.03, 0.1)


def double_fc_dropout(p0, p1, p2, repetitions, *, epochs=40):
    """``repetitions`` nets with dropout p0, p1, p2 on the last three
    layers, trained on the expanded set; returns them (to vote in
    ``ensemble``)."""
    from network3 import FullyConnectedLayer, ReLU, SoftmaxLayer
    expanded_training_data = _expanded_training_data()
    nets = []
    for j in range(_count("repetitions", repetitions)):
        print("\n\nTraining using a dropout network with parameters ", p0, p1, p2)
        print(f"Training with expanded data, run num {j}")
        nets.append(_train([
            _conv_pool_1(ReLU),
            _conv_pool_2(ReLU),
            FullyConnectedLayer(n_in=40*4*4, n_out=1000, activation_fn=ReLU, p_dropout=p0),
            FullyConnectedLayer(n_in=1000, n_out=1000, activation_fn=ReLU, p_dropout=p1),
            SoftmaxLayer(n_in=1000, n_out=10, p_dropout=p2)],
            expanded_training_data, epochs, 0.03))
    return nets


def ensemble(nets):
    """The plurality vote of ``nets`` on the test images: prints its
    accuracy and returns ``(error_locations, erroneous_predictions)``, the
    indices of the images the vote gets wrong and the labels it gives them.
    A tie goes to the tied label the first net in ``nets`` gives, as the
    book's ``Counter(p).most_common(1)[0][0]`` (network3.ensemble.vote)."""
    from network3.ensemble import ensemble_accuracy
    _, _, test_data = _book_data()
    result = ensemble_accuracy(nets, test_data)
    print(f"Accuracy is {result.accuracy:.2%}")
    error_locations = result.misclassified.tolist()
    erroneous_predictions = result.labels[result.misclassified].tolist()
    return error_locations, erroneous_predictions


def plot_errors(error_locations, erroneous_predictions=None):
    """The first 40 test images of ``error_locations``, 8 to a row, each
    with its label (top right) and, if given, the erroneous prediction
    (bottom right).  Returns pyplot: ``plot_errors(...).savefig("errors.png")``."""
    import matplotlib
    import matplotlib.pyplot as plt

    from network3.data import as_array
    _, _, (test_x, test_y) = _book_data()
    test_x, test_y = as_array(test_x), as_array(test_y)
    plt.figure()
    for j, i in enumerate(error_locations[:40]):
        ax = plt.subplot2grid((5, 8), (j // 8, j % 8))
        ax.matshow(test_x[i].reshape(28, -1), cmap=matplotlib.cm.binary)
        ax.text(24, 5, test_y[i])
        if erroneous_predictions is not None:
            ax.text(24, 24, erroneous_predictions[j])
        ax.set_xticks([])
        ax.set_yticks([])
    plt.tight_layout()
    return plt


def plot_filters(net, layer, x, y):
    """The filters of ``net``'s convolutional layer number ``layer``, in a
    grid x wide and y high (the first layer's 20: ``plot_filters(net, 0, 5,
    4)``); of a filter with several input maps, the first.  Returns pyplot."""
    import matplotlib
    import matplotlib.pyplot as plt
    w = getattr(net.layers[layer], "w", None)
    filters = w.get_value() if w is not None else None
    if filters is None or filters.ndim != 4:
        raise ValueError(f"plot_filters: layer {layer} of the net is "
                         f"{type(net.layers[layer]).__name__}, not a convolutional layer")
    if len(filters) > x * y:
        raise ValueError(f"plot_filters: layer {layer} has {len(filters)} filters, "
                         f"more than a grid {x} wide and {y} high holds")
    fig = plt.figure()
    for j in range(len(filters)):  # filters: (filters, input maps, rows, columns)
        # subplots count from 1; the book's add_subplot(y, x, j) from 0,
        # which matplotlib 3 refuses
        ax = fig.add_subplot(y, x, j + 1)
        ax.matshow(filters[j][0], cmap=matplotlib.cm.binary)
        ax.set_xticks([])
        ax.set_yticks([])
    plt.tight_layout()
    return plt


def run_experiments():
    """The book's experiments, as its conv.py runs them (a few days on a
    CPU; the expanded set must be made first)."""
    shallow()
    basic_conv()
    omit_FC()
    dbl_conv()  # the book's dbl_conv(activation_fn=sigmoid)
    # omitted, but still interesting: regularized_dbl_conv()
    dbl_conv_relu()
    expanded_data(n=100)
    expanded_data(n=300)
    expanded_data(n=1000)
    expanded_data_double_fc(n=100)
    expanded_data_double_fc(n=300)
    expanded_data_double_fc(n=1000)
    nets = double_fc_dropout(0.5, 0.5, 0.5, 5)
    # the test digits the ensemble of the nets just trained gets wrong
    error_locations, erroneous_predictions = ensemble(nets)
    plt = plot_errors(error_locations, erroneous_predictions)
    plt.savefig("ensemble_errors.png")
    # the filters the first of those nets learned
    plt = plot_filters(nets[0], 0, 5, 4)
    plt.savefig("net_full_layer_0.png")
    plt = plot_filters(nets[0], 1, 8, 5)
    plt.savefig("net_full_layer_1.png")


# The pieces the book's functions share
def _book_data():
    """The module's training_data, validation_data, test_data (the book's
    MNIST), loaded on first use; set them (conv.training_data = ...) to
    train the book's functions on other data."""
    names = globals()
    if not all(name in names for name in _BOOK_DATA):
        from network3 import experiments
        names.update(zip(_BOOK_DATA, experiments.load("mnist")))
    return tuple(names[name] for name in _BOOK_DATA)


def _expanded_training_data():
    # the book's load_data_shared("../data/mnist_expanded.pkl.gz"): its
    # 250,000 images, loaded once per process (a clear error if missing)
    from network3 import experiments
    return experiments.load("expanded")[0]


def _conv_pool_1(activation_fn):
    # 20 5x5 filters over the 28x28 image, max-pooled 2x2: 20 maps of 12x12
    from network3 import ConvPoolLayer
    return ConvPoolLayer(image_shape=(mini_batch_size, 1, 28, 28),
                         filter_shape=(20, 1, 5, 5), poolsize=(2, 2),
                         activation_fn=activation_fn)


def _conv_pool_2(activation_fn):
    # 40 5x5 filters over those 20 maps, max-pooled 2x2: 40 maps of 4x4
    from network3 import ConvPoolLayer
    return ConvPoolLayer(image_shape=(mini_batch_size, 20, 12, 12),
                         filter_shape=(40, 20, 5, 5), poolsize=(2, 2),
                         activation_fn=activation_fn)


def _train(layers, training_data, epochs, eta, lmbda=0.0):
    # the book's two lines: the network, and SGD scored on the book's
    # validation and test data
    from network3 import Network
    _, validation_data, test_data = _book_data()
    net = Network(layers, mini_batch_size)
    net.SGD(training_data, epochs, mini_batch_size, eta, validation_data, test_data,
            lmbda=lmbda)
    return net


def _count(name, value):
    # how many runs: the book's range(n) would say only "'float' object
    # cannot be interpreted as an integer"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} is the number of runs, a whole number >= 0; "
                         f"got {value!r}")
    return value


#### The port's recorded ensemble (the command line's "ensemble")
def run_ensemble(runs=5, epochs=40, seed=0, train_size=None, data=None, out=None,
                 init="book"):
    """The book's last experiment as the command line runs it: ``runs``
    double_fc_dropout nets (recorded as experiment "ensemble", seeds seed,
    seed+1, ...) vote on the test set.  Members already recorded are not
    trained again: the vote is taken from the records' test predictions, so
    members trained in other invocations count.  Returns (nets,
    EnsembleResult)."""
    nets, planned = _run("ensemble", runs=runs, epochs=epochs, seed=seed, init=init,
                         train_size=train_size, data=data, out=out)
    result, members = _vote(planned, data)
    return nets, result


def _vote(planned, data=None):
    """Vote the recorded members of the ensemble (or beyond) runs in
    ``planned``, per results file and settings, and print each vote."""
    from network3 import experiments
    from network3.data import as_array
    groups = {}
    for run in planned:
        if run.experiment in VOTING:
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
    # quoted as a shell needs it (--augment 'rotate=5, elastic=None')
    return shlex.join(["python", "scripts/conv.py"] + sys.argv[1:])


def parser():
    p = argparse.ArgumentParser(
        description="Run experiments of chapter 6 with the book's settings, "
        "recording each run to results/<experiment>.jsonl; runs already recorded "
        "are skipped, and an interrupted command, run again, continues each "
        "unfinished run from its last finished epoch.",
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
    p.add_argument("--augment", nargs="?", const="", metavar="OPTIONS",
                   help="on-the-fly random translations, rotations, skews and "
                   "elastic distortions of the training images each epoch "
                   "(network3.augment.Augment's defaults, or the options given, "
                   "e.g. --augment 'rotate=5, scale=0.1, elastic=None')")
    p.add_argument("--data", choices=["mnist", "expanded"],
                   help="training set (default: the book's for the experiment)")
    p.add_argument("--train-size", type=int,
                   help="train on the first N images only, for a quick look")
    p.add_argument("--set", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="run every combination of these values (repeatable): "
                   "eta, lmbda, epochs, n, init, data, train_size, momentum, arch "
                   "(beyond: padded); e.g. "
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
    p.add_argument("--checkpoint-dir",
                   help="folder for the runs' checkpoints, written at the end of each "
                   "epoch and removed once the run is recorded (default: checkpoints/ "
                   "beside the results file; on a cluster of several machines, a "
                   "folder every worker can reach at the same path)")
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
        if args.augment is not None:
            from network3.augment import Augment
            augment = repr(Augment.parse(args.augment))
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
            save=not args.no_save, cache_dir=args.cache_dir,
            checkpoint_dir=args.checkpoint_dir, command=_command(), root=ROOT)
    except (experiments.ClusterError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if any(run.experiment in VOTING for run in planned):
        try:
            _vote(planned)
        except (OSError, ValueError) as err:
            print(f"Ensemble: cannot vote here: {err}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
