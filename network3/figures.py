"""figures.py: the chapter's figures, drawn from networks and their runs.

* ``plot_misclassified``: the test digits a network (or the ensemble) gets
  wrong, true label top right, prediction bottom right (the book's figure of
  its 33 errors);
* ``plot_filters``: the learned first-layer 5x5 filters of a ConvPoolLayer,
  dark for a large weight and white for a small one, as in the book;
* ``plot_accuracy_curves``: per-epoch validation accuracy of several runs
  (the problem that compares tanh with sigmoid networks);
* ``plot_training_curves``: one run's training cost and validation accuracy;
* ``plot_augmented``: digits and random distortions of each
  (``network3.augment.Augment``), originals in the top row.

A history is a list of per-epoch dicts like ``net.history`` (keys epoch,
training_cost, validation_accuracy, test_accuracy, seconds); a results
record with an "epochs" list is accepted too.  Each function writes a PNG
and returns its path.  Matplotlib (``pip install network3[plots]``) is
imported only when a figure is drawn, and only through its object API on
the Agg canvas: no window opens, no global matplotlib state changes, and it
works on a machine with no display.
"""

import math
from pathlib import Path

import numpy as np

from .data import atomic_file

TRUE_COLOUR = "black"
PREDICTED_COLOUR = "tab:red"


def plot_misclassified(images, true_labels, predicted_labels, filename,
                       title=None, ncols=None):
    """A grid of the ``images`` (N, 784) or (N, 28, 28), each with its true
    label at the top right and the predicted one (in red) at the bottom
    right.  ``title`` defaults to "N misclassified test images"."""
    images = np.asarray(images)
    true_labels, predicted_labels = np.asarray(true_labels), np.asarray(
        predicted_labels)
    n = len(images)
    if not (len(true_labels) == len(predicted_labels) == n):
        raise ValueError(
            f"plot_misclassified: {n} images but {len(true_labels)} true and "
            f"{len(predicted_labels)} predicted labels")
    images = images.reshape(n, *_square_shape(images))
    if title is None:
        title = f"{n} misclassified test image{'s' if n != 1 else ''}"
    ncols = ncols or max(1, min(n, 11))
    nrows = max(1, math.ceil(n / ncols))

    height = 0.95 * nrows + 0.75                # inches; 0.6 for the title
    fig = _figure(figsize=(0.95 * ncols + 0.3, height))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.subplots_adjust(left=0.02, right=0.96, bottom=0.02,
                        top=1 - 0.65 / height, wspace=0.45,
                        hspace=0.15)
    for ax in axes:
        ax.set_axis_off()
    for ax, image, true, predicted in zip(axes, images, true_labels,
                                          predicted_labels):
        # the book's look: dark ink on white paper
        ax.imshow(image, cmap="Greys", vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.text(1.06, 1.0, str(true), transform=ax.transAxes, fontsize=9,
                ha="left", va="top", color=TRUE_COLOUR)
        ax.text(1.06, 0.0, str(predicted), transform=ax.transAxes, fontsize=9,
                ha="left", va="bottom", color=PREDICTED_COLOUR,
                fontweight="bold")
    if n == 0:
        axes[0].text(0.5, 0.5, "none", ha="center", va="center",
                     transform=axes[0].transAxes)
    fig.suptitle(f"{title}\ntrue label top right, prediction bottom right "
                 "(red)", fontsize=10)
    return _save(fig, filename)


def plot_filters(w, filename, title=None, ncols=10, channel=0):
    """The filters ``w`` of a ConvPoolLayer (``layer.w.get_value()``, shape
    (filters, channels, height, width), or (filters, height, width)) as a
    grid of grey squares on one shared scale: dark is a large weight, white
    a small (typically negative) one, as in the book.  For a layer with
    several input channels, ``channel`` picks the one shown."""
    w = np.asarray(w, dtype=float)
    if w.ndim == 4:
        if not 0 <= channel < w.shape[1]:
            raise ValueError(f"plot_filters: channel {channel} but w has "
                             f"{w.shape[1]} input channels")
        w = w[:, channel]
    if w.ndim != 3 or len(w) == 0:
        raise ValueError("plot_filters: w must be (filters, channels, height, "
                         f"width) or (filters, height, width), got {w.shape}")
    n, height, width = w.shape
    if title is None:
        title = (f"The {n} learned {height}x{width} filters of the first "
                 "convolutional layer")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    limit = float(np.abs(w).max()) or 1.0    # symmetric: 0 is mid-grey

    fig = _figure(figsize=(0.8 * ncols + 1.2, 0.8 * nrows + 1.0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.84, bottom=0.04,
                        top=1 - 0.75 / (0.8 * nrows + 1.0), wspace=0.1,
                        hspace=0.3)
    image = None
    for index, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if index < n:
            image = ax.imshow(w[index], cmap="Greys", vmin=-limit, vmax=limit,
                              interpolation="nearest")
            ax.set_title(str(index), fontsize=7, pad=2)
    bar = fig.colorbar(image, cax=fig.add_axes((0.87, 0.1, 0.025, 0.65)))
    bar.set_label("weight (dark = large)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, filename)


def plot_accuracy_curves(histories, labels, filename, title=None):
    """Validation accuracy (%) against epoch for several runs on one plot,
    one labelled line each, the best epoch of each marked."""
    histories = [_epochs(h) for h in histories]
    labels = list(labels)
    if len(histories) != len(labels) or not histories:
        raise ValueError(f"plot_accuracy_curves: {len(histories)} histories "
                         f"but {len(labels)} labels")
    fig = _figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for history, label in zip(histories, labels):
        epochs, accuracy = _series(history, "validation_accuracy")
        (line,) = ax.plot(epochs, 100 * accuracy, label=label, linewidth=1.5)
        if len(accuracy):
            # the book's best epoch: the last one at the maximum (its >=)
            best = len(accuracy) - 1 - int(np.argmax(accuracy[::-1]))
            ax.plot(epochs[best], 100 * accuracy[best], "o",
                    color=line.get_color())
    _epoch_axis(ax)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "Validation accuracy per epoch (dot: best epoch)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, filename)


def plot_training_curves(history, filename, title=None):
    """One run: training cost (left) and validation accuracy (right) per
    epoch, with the training accuracy when the history has it (SGD's
    ``monitor_training=True``: the overfitting diagnostic) and the test
    accuracy measured at each new best epoch."""
    history = _epochs(history)
    fig = _figure(figsize=(10, 4), layout="constrained")
    cost_ax, accuracy_ax = fig.subplots(1, 2)
    epochs, cost = _series(history, "training_cost")
    cost_ax.plot(epochs, cost, color="tab:blue")
    cost_ax.set_ylabel("training cost (mean over mini-batches)")
    cost_ax.set_title("Training cost")
    if any(h.get("training_accuracy") is not None for h in history):
        epochs, accuracy = _series(history, "training_accuracy")
        accuracy_ax.plot(epochs, 100 * accuracy, color="tab:red",
                         label="training")
    epochs, accuracy = _series(history, "validation_accuracy")
    accuracy_ax.plot(epochs, 100 * accuracy, color="tab:green",
                     label="validation")
    test_epochs, test = _series(history, "test_accuracy")
    accuracy_ax.plot(test_epochs, 100 * test, "o", color="tab:orange",
                     label="test (at each new best validation epoch)")
    accuracy_ax.set_ylabel("accuracy (%)")
    accuracy_ax.set_title("Accuracy")
    accuracy_ax.legend(loc="lower right")
    for ax in (cost_ax, accuracy_ax):
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Training curves")
    return _save(fig, filename)


def plot_augmented(images, augmented_list, filename, title=None):
    """The ``images`` (N, 784) or (N, 28, 28) in the top row and, in each
    row below, one array of ``augmented_list`` (each shaped like
    ``images``: a distorted copy of every image), so that each column is
    one digit and its distortions.  ``title`` defaults to "N digits (top)
    and M random distortions of each"."""
    images = np.asarray(images)
    rows = [images] + [np.asarray(a) for a in augmented_list]
    for k, array in enumerate(rows[1:], start=1):
        if array.shape != images.shape:
            raise ValueError(f"plot_augmented: augmented_list[{k - 1}] has shape "
                             f"{array.shape}, images {images.shape}")
    n, m = len(images), len(rows) - 1
    if n == 0:
        raise ValueError("plot_augmented: no images")
    shape = _square_shape(images)
    if title is None:
        title = (f"{n} digit{'s' if n != 1 else ''} (top) and {m} random "
                 f"distortion{'s' if m != 1 else ''} of each")

    height = 0.8 * (m + 1) + 0.2 + 0.7          # inches; 0.7 for the title
    fig = _figure(figsize=(0.8 * n + 1.0, height))
    axes = fig.subplots(m + 1, n, squeeze=False)
    fig.subplots_adjust(left=0.9 / (0.8 * n + 1.0), right=0.99, bottom=0.02,
                        top=1 - 0.75 / height, wspace=0.08, hspace=0.08)
    for r, array in enumerate(rows):
        for ax, image in zip(axes[r], array.reshape(n, *shape)):
            ax.imshow(image, cmap="Greys", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:                         # frame the originals
                for spine in ax.spines.values():
                    spine.set_color("tab:blue")
                    spine.set_linewidth(1.5)
            else:
                for spine in ax.spines.values():
                    spine.set_color("0.8")
        axes[r, 0].set_ylabel("original" if r == 0 else str(r), fontsize=8,
                              rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    return _save(fig, filename)


#### Helpers
def _figure(**kwargs):
    # a bare Figure, not pyplot: nothing registered globally, no GUI backend
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def _save(fig, filename):
    """Write the figure as PNG through a temporary file renamed into place."""
    path = Path(filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:  # a name of this writer's own
        fig.savefig(tmp, format="png", dpi=120)
    return path


def _square_shape(images):
    if images.ndim == 3:
        return images.shape[1:]
    side = int(round(math.sqrt(images.shape[-1]))) if images.ndim == 2 else 0
    if images.ndim != 2 or side * side != images.shape[1]:
        raise ValueError(f"images must be (N, side*side) or (N, side, side), "
                         f"got shape {images.shape}")
    return side, side


def _epochs(history):
    """The per-epoch dicts of a history, or of a results record."""
    if isinstance(history, dict):
        history = history.get("epochs", history.get("history"))
    if not isinstance(history, (list, tuple)):
        raise ValueError("a history must be a list of per-epoch dicts (like "
                         "net.history) or a record with an 'epochs' list")
    return history


def _series(history, key):
    """(epochs, values) of ``key`` over the epochs where it is not None."""
    pairs = [(record.get("epoch", i), record[key])
             for i, record in enumerate(history) if record.get(key) is not None]
    epochs = np.array([e for e, _ in pairs], dtype=float)
    values = np.array([v for _, v in pairs], dtype=float)
    return epochs, values


def _epoch_axis(ax):
    from matplotlib.ticker import MaxNLocator
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
