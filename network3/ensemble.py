"""ensemble.py: several networks voting, as at the end of chapter 6.

The book trains five networks and lets them vote: each image gets the label
most of the networks give it (a plurality vote), which classifies all but
33 of the 10,000 test images correctly (99.67%).  The book's conv.py does it
in ``ensemble(nets)`` (scripts/conv.py has it, printing the book's line),
with ``Counter(p).most_common(1)[0][0]`` over the labels the nets give an
image.  This module is that vote for any data set:

    >>> result = ensemble_accuracy([net1, net2, net3, net4, net5], test_data)
    >>> result.accuracy, len(result.misclassified)

The voters may be trained ``Network`` objects (asked with ``net.predict``)
or arrays of labels they predicted earlier, for networks trained or saved
elsewhere, mixed freely.
"""

from typing import NamedTuple

import numpy as np

from .data import as_array


class EnsembleResult(NamedTuple):
    """What ``ensemble_accuracy`` returns (unpacks as a 3-tuple)."""
    accuracy: float              # fraction of examples voted correctly
    misclassified: np.ndarray    # (errors,) indices of the wrong examples
    labels: np.ndarray           # (N,) the voted labels


def vote(predictions):
    """The plurality vote of ``predictions``, an (n_nets, N) array of
    integer labels: for each example, the label given by the most nets.
    A tie goes, as with the book's ``Counter(p).most_common(1)[0][0]``, to
    the tied label that comes first in the nets' order (nets saying 7, 1,
    1, 7, 4 vote 7; saying 1, 7, 7, 1, 4, they vote 1).  Returns an (N,)
    int64 array."""
    predictions = np.asarray(predictions)
    if predictions.ndim == 1:               # a single net votes alone
        predictions = predictions[None, :]
    if predictions.ndim != 2 or predictions.shape[0] == 0:
        raise ValueError(f"vote: predictions must be an (n_nets, N) array "
                         f"of labels, got shape {predictions.shape}")
    if predictions.dtype.kind not in "iu":
        raise ValueError(f"vote: predictions must be integer labels, "
                         f"got dtype {predictions.dtype}")
    if predictions.size and predictions.min() < 0:
        raise ValueError(f"vote: labels must be non-negative, found "
                         f"{predictions.min()}")
    n_nets, n = predictions.shape
    n_classes = int(predictions.max()) + 1 if predictions.size else 1
    counts = np.zeros((n, n_classes), dtype=np.int64)   # (N, classes) votes
    examples = np.arange(n)
    for labels in predictions:
        counts[examples, labels] += 1
    # (n_nets, N): how many votes the label each net gives has; the first
    # net (argmax takes the first of equal maxima) whose label has the most
    # votes names the winner, as Counter, which keeps the order labels are
    # first seen in, does
    support = counts[examples, predictions]
    first = (support == counts.max(axis=1)).argmax(axis=0)
    return predictions[first, examples].astype(np.int64)


def predict_all(nets_or_predictions, x, batch_size=500):
    """An (n_nets, N) array of the labels each voter gives the images ``x``:
    a ``Network`` is asked (``net.predict(x)``); an array of labels is
    taken as it is (and must hold N of them)."""
    x = as_array(x)
    voters = nets_or_predictions
    if hasattr(voters, "predict"):          # one network: a vote of one
        voters = [voters]
    if isinstance(voters, np.ndarray) and voters.ndim == 2:
        voters = list(voters)
    if not len(voters):
        raise ValueError("ensemble: no networks or predictions given")
    rows = []
    for index, voter in enumerate(voters):
        if hasattr(voter, "predict"):
            labels = np.asarray(voter.predict(x, batch_size=batch_size))
        else:
            labels = np.asarray(voter)
        if labels.shape != (len(x),):
            raise ValueError(
                f"ensemble: voter {index} gives labels of shape {labels.shape} "
                f"but the data has {len(x)} examples")
        rows.append(labels.astype(np.int64, copy=False))
    return np.stack(rows)


def ensemble_accuracy(nets_or_predictions, data, batch_size=500):
    """Accuracy of the plurality vote of several networks on ``data`` (an
    (x, y) pair of numpy arrays or shared variables, as from ``load_data``
    or ``load_data_shared``).  ``nets_or_predictions``: a list of trained
    ``Network`` objects and/or (N,) label arrays, or one (n_nets, N) array.
    Returns ``EnsembleResult(accuracy, misclassified, labels)``."""
    try:
        x, y = data
    except (TypeError, ValueError):
        raise ValueError("ensemble_accuracy: data must be an (x, y) pair, "
                         f"got {type(data).__name__}") from None
    y = as_array(y)
    if len(y) == 0:
        raise ValueError("ensemble_accuracy: data has no examples")
    labels = vote(predict_all(nets_or_predictions, x, batch_size))
    if labels.shape != y.shape:
        raise ValueError(f"ensemble_accuracy: {len(labels)} predictions but "
                         f"{len(y)} labels")
    wrong = np.flatnonzero(labels != y)
    return EnsembleResult(1.0 - len(wrong) / len(y), wrong, labels)
