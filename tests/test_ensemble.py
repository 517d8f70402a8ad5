"""Plurality vote of several networks (network3.ensemble)."""

import numpy as np
import pytensor
import pytest

import network3
from network3.ensemble import EnsembleResult, ensemble_accuracy, predict_all, vote


def test_vote_takes_the_most_common_label():
    predictions = np.array([[1, 2, 3, 9],
                            [1, 3, 3, 9],
                            [2, 3, 3, 0]])
    np.testing.assert_array_equal(vote(predictions), [1, 3, 3, 9])


def test_vote_breaks_ties_as_the_books_counter():
    """The book's conv.py votes with ``Counter(p).most_common(1)[0][0]``:
    among tied labels, the one that comes first in the nets' order."""
    # 7, 1, 1, 7, 4: 7 and 1 tie with two votes each; 7 is said first
    assert vote([[7], [1], [1], [7], [4]]).tolist() == [7]
    assert vote([[1], [7], [7], [1], [4]]).tolist() == [1]
    # two nets that disagree: the first net's label
    assert vote([[5, 2], [2, 5]]).tolist() == [5, 2]
    # all different: the first net's; a tie of a later pair does not win
    assert vote([[8], [3], [6]]).tolist() == [8]
    assert vote([[9], [2], [2], [9], [5]]).tolist() == [9]


def test_vote_is_the_books_counter_most_common():
    # 5 nets and 3 labels: many 2-2-1 ties, against the book's own rule
    from collections import Counter
    predictions = np.random.default_rng(0).integers(0, 3, (5, 2000))
    book = [Counter(p).most_common(1)[0][0] for p in predictions.T.tolist()]
    np.testing.assert_array_equal(vote(predictions), book)


def test_vote_of_one_net_is_its_prediction():
    labels = np.array([4, 0, 9, 9])
    np.testing.assert_array_equal(vote(labels), labels)
    np.testing.assert_array_equal(vote(labels[None, :]), labels)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3, 4), int), "shape"),
    (np.zeros((0, 3), int), "shape"),
    (np.array([[0.5, 1.0]]), "integer"),
    (np.array([[-1, 2]]), "non-negative"),
])
def test_vote_rejects_bad_predictions(bad, message):
    with pytest.raises(ValueError, match=message):
        vote(bad)


def test_ensemble_accuracy_from_prediction_arrays():
    y = np.array([0, 1, 2, 3, 4, 5])
    predictions = np.array([[0, 1, 2, 0, 4, 0],
                            [0, 1, 9, 0, 4, 5],
                            [0, 7, 2, 3, 9, 1]])
    # votes: 0, 1, 2, 0 (3 loses 0,0,3), 4, tie 0/5/1 -> 0
    result = ensemble_accuracy(predictions, (y.reshape(-1, 1), y))
    assert isinstance(result, EnsembleResult)
    np.testing.assert_array_equal(result.labels, [0, 1, 2, 0, 4, 0])
    np.testing.assert_array_equal(result.misclassified, [3, 5])
    assert result.accuracy == pytest.approx(4 / 6)
    accuracy, wrong, labels = result                     # unpacks as a tuple
    assert accuracy == result.accuracy


class FixedNet:
    """Stands in for a trained Network: predicts preset labels."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)
        self.calls = []

    def predict(self, x, probabilities=False, batch_size=500):
        self.calls.append((len(x), batch_size))
        return self.labels


def test_ensemble_accuracy_asks_networks_and_mixes_with_arrays():
    y = np.array([3, 3, 8, 8])
    x = pytensor.shared(np.zeros((4, 784), dtype="float32"))
    shared_y = pytensor.shared(y.astype("int32"))
    nets = [FixedNet([3, 3, 8, 1]), FixedNet([3, 5, 1, 1]), [3, 5, 8, 8]]
    result = ensemble_accuracy(nets, (x, shared_y), batch_size=2)
    np.testing.assert_array_equal(result.labels, [3, 5, 8, 1])
    np.testing.assert_array_equal(result.misclassified, [1, 3])
    assert result.accuracy == 0.5
    assert nets[0].calls == [(4, 2)]


def test_ensemble_accuracy_with_real_networks():
    network3.seed(0)
    nets = [network3.Network([network3.SoftmaxLayer(n_in=784, n_out=10)], 5)
            for _ in range(3)]
    rng = np.random.default_rng(0)
    for net in nets:    # the book's softmax layer starts at zero: randomise
        w = net.layers[0].w
        w.set_value(rng.normal(size=(784, 10)).astype(w.dtype))
    x = rng.random((7, 784)).astype("float32")
    y = rng.integers(0, 10, size=7)
    predictions = np.stack([net.predict(x) for net in nets])
    assert len(np.unique(predictions)) > 1
    result = ensemble_accuracy(nets, (x, y))
    np.testing.assert_array_equal(predict_all(nets, x), predictions)
    np.testing.assert_array_equal(result.labels, vote(predictions))
    # 1 - errors / N, the book's formula: equal to the fraction right up
    # to rounding
    assert result.accuracy == pytest.approx(np.mean(vote(predictions) == y))


def test_ensemble_accuracy_names_a_length_mismatch():
    y = np.arange(5) % 10
    with pytest.raises(ValueError, match="voter 1 .* 5 examples"):
        ensemble_accuracy([y, y[:4]], (np.zeros((5, 784)), y))
    with pytest.raises(ValueError, match="no networks"):
        ensemble_accuracy([], (np.zeros((5, 784)), y))
