"""The book's expanded training set (network3.augment, scripts/expand_mnist.py).

The reference for each shift is the book's own ``expand_mnist.py`` method:
``np.roll`` by one pixel, then zero the row or column that wrapped round.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from network3 import data as n3data
from network3.augment import SHIFTS, expand, shift

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "expand_mnist.py"


def book_shift(image, direction):
    """expand_mnist.py's displacement of one (784,) image."""
    d, axis, index_position, index = {
        "down": (1, 0, "first", 0),
        "up": (-1, 0, "first", 27),
        "right": (1, 1, "last", 0),
        "left": (-1, 1, "last", 27)}[direction]
    new_img = np.roll(np.reshape(image, (-1, 28)), d, axis)
    if index_position == "first":
        new_img[index, :] = np.zeros(28)
    else:
        new_img[:, index] = np.zeros(28)
    return np.reshape(new_img, 784)


def synthetic(n=6, seed=0):
    """Images with ink up to every edge, so lost and zeroed pixels show."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(1, 256, size=(n, 784)) / 256).astype(np.float32)
    return x, np.arange(n, dtype=np.int64)   # a distinct label per image


def test_shift_moves_one_pixel_each_way():
    image = np.zeros((1, 28, 28), np.float32)
    image[0, 5, 9] = 1.0
    image[0, 27, 0] = 0.5                    # on the bottom and left edges
    for direction, (r, c), edge_kept in [("down", (6, 9), False),
                                         ("up", (4, 9), True),
                                         ("right", (5, 10), True),
                                         ("left", (5, 8), False)]:
        moved = shift(image, direction)[0]
        assert moved[r, c] == 1.0, direction
        # the edge pixel moves with the image, or falls off the edge
        assert (moved == 0.5).sum() == (1 if edge_kept else 0), direction
        assert moved.sum() == pytest.approx(1.0 + 0.5 * edge_kept)


@pytest.mark.parametrize("direction", SHIFTS)
def test_shift_matches_the_books_roll_and_zero(direction):
    x, _ = synthetic()
    moved = shift(x, direction)
    assert moved.shape == x.shape and moved.dtype == x.dtype
    for image, result in zip(x, moved):
        np.testing.assert_array_equal(result, book_shift(image, direction))


def test_shift_rejects_an_unknown_direction_and_shape():
    with pytest.raises(ValueError, match="direction"):
        shift(np.zeros((1, 784)), "diagonal")
    with pytest.raises(ValueError, match="shape"):
        shift(np.zeros((1, 785)), "up")


def test_expand_unshuffled_is_the_books_order():
    x, y = synthetic()
    xe, ye = expand(x, y, shuffle=False)
    assert xe.shape == (5 * len(x), 784) and ye.shape == (5 * len(x),)
    assert xe.dtype == x.dtype and ye.dtype == y.dtype
    for i, (image, label) in enumerate(zip(x, y)):
        np.testing.assert_array_equal(xe[5 * i], image)
        for k, direction in enumerate(SHIFTS, start=1):
            np.testing.assert_array_equal(xe[5 * i + k],
                                          book_shift(image, direction))
        assert (ye[5 * i:5 * i + 5] == label).all()


def test_expand_shuffles_and_keeps_labels_with_their_images():
    x, y = synthetic(n=40)
    plain_x, plain_y = expand(x, y, shuffle=False)
    xe, ye = expand(x, y, seed=0)
    assert not np.array_equal(xe, plain_x)                 # shuffled
    assert np.array_equal(np.sort(ye), np.sort(plain_y))   # 5 of each label
    for label in range(len(x)):    # each label's 5 images: original + shifts
        ours = xe[ye == label]
        book = plain_x[plain_y == label]
        key = lambda a: np.lexsort(a.T[::-1])  # noqa: E731 (sort rows)
        np.testing.assert_array_equal(ours[key(ours)], book[key(book)])


def test_expand_shuffle_is_seeded():
    x, y = synthetic(n=20)
    a, b, c = expand(x, y, seed=3), expand(x, y, seed=3), expand(x, y, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_expand_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="shapes"):
        expand(np.zeros((3, 784)), np.zeros(4, int))


@pytest.mark.mnist
def test_expand_real_mnist_images(mnist):
    x, y = mnist[0][0][:200], mnist[0][1][:200]
    xe, ye = expand(x, y, shuffle=False)
    for i in range(0, 200, 7):
        for k, direction in enumerate(SHIFTS, start=1):
            np.testing.assert_array_equal(xe[5 * i + k],
                                          book_shift(x[i], direction))
    assert (ye.reshape(200, 5) == y[:, None]).all()


def load_script():
    spec = importlib.util.spec_from_file_location("expand_mnist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_a_loadable_expanded_file(tmp_path, capsys):
    x, y = synthetic(n=30)
    small = ((x[:20], y[:20]), (x[20:25], y[20:25]), (x[25:], y[25:]))
    source, out = tmp_path / "mnist.pkl.gz", tmp_path / "expanded.pkl.gz"
    n3data.save_data(small, source)
    script = load_script()
    script.main(["--input", str(source), "--out", str(out), "--seed", "1"])
    training, validation, test = n3data.load_data(out)
    assert training[0].shape == (100, 784) and training[1].shape == (100,)
    np.testing.assert_array_equal(validation[0], x[20:25])
    np.testing.assert_array_equal(test[1], y[25:])
    np.testing.assert_array_equal(training[0],
                                  expand(x[:20], y[:20], seed=1)[0])
    # as in the book, an existing file is left alone unless --force
    mtime = out.stat().st_mtime_ns
    script.main(["--input", str(source), "--out", str(out)])
    assert "already exists" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == mtime
