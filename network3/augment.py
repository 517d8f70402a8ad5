"""augment.py: the book's expanded training set, as ``expand_mnist.py`` made it.

Each training image is kept and joined by four copies displaced by one
pixel, down, up, right and left, with zeros shifted in along the edge the
image moves away from (a pixel pushed off the far edge is lost).  The
50,000 training images become 250,000, shuffled; labels travel with their
images.  ``scripts/expand_mnist.py`` writes the result as the book's
``mnist_expanded.pkl.gz`` (validation and test data unchanged).

The book looped over the images in Python, shifting each with ``np.roll``
and zeroing the wrapped row or column, then shuffled a list of pairs.  Here
each shift is one slice assignment over the whole (N, 28, 28) array, and
every copy is written straight into its shuffled place, so the expanded set
costs one output array (784 MB as float32 for MNIST) plus one shifted block.
The shuffle is seeded, so the file is repeatable; the book's
``random.shuffle`` was not.
"""

import numpy as np

# The book's order: each image is followed by its copies moved down, up,
# right and left (before shuffling).
SHIFTS = ("down", "up", "right", "left")

# (destination, source) slices on the (row, column) axes of an image: moving
# down by one fills rows 1.. from rows ..-1 and leaves row 0 zero, and so on.
_ALL = slice(None)
_MOVES = {
    "down": ((slice(1, None), _ALL), (slice(None, -1), _ALL)),
    "up": ((slice(None, -1), _ALL), (slice(1, None), _ALL)),
    "right": ((_ALL, slice(1, None)), (_ALL, slice(None, -1))),
    "left": ((_ALL, slice(None, -1)), (_ALL, slice(1, None))),
}


def shift(images, direction):
    """``images`` (N, 784) or (N, 28, 28) (any square size) moved one pixel
    in ``direction`` ("down", "up", "right" or "left"), zeros shifted in.
    Returns a new array of the same shape and dtype."""
    if direction not in _MOVES:
        raise ValueError(f"shift: direction must be one of {SHIFTS}, "
                         f"got {direction!r}")
    images = np.asarray(images)
    square = _as_square(images, "shift")          # (N, side, side) view
    moved = np.zeros_like(square)
    dst, src = _MOVES[direction]
    moved[(Ellipsis, *dst)] = square[(Ellipsis, *src)]
    return moved.reshape(images.shape)


def expand(x, y, seed=0, shuffle=True):
    """The book's expanded training set from images ``x`` (N, 784) and
    labels ``y`` (N,): each image and its four one-pixel shifts, 5N images
    in all, shuffled by a generator seeded with ``seed``.  With
    ``shuffle=False`` the order is the book's before its shuffle: image 0,
    its shifts down, up, right and left, then image 1, and so on.
    Returns ``(x_expanded, y_expanded)`` with the dtypes of ``x`` and ``y``."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"expand: x must be (N, pixels) and y (N,), got "
                         f"shapes {x.shape} and {y.shape}")
    _as_square(x, "expand")
    n, copies = len(x), 1 + len(SHIFTS)
    # Copy k of image i is number copies*i + k in the unshuffled order; the
    # shuffle sends number j to place[j], i.e. x_out[place[j]] = unshuffled[j].
    if shuffle:
        order = np.random.default_rng(seed).permutation(copies * n)
        place = np.empty_like(order)
        place[order] = np.arange(copies * n)    # x_out = unshuffled[order]
    else:
        place = np.arange(copies * n)
    place = place.reshape(n, copies)            # (N, 5): where each copy goes
    x_out = np.empty((copies * n, x.shape[1]), dtype=x.dtype)
    y_out = np.empty(copies * n, dtype=y.dtype)
    for k, direction in enumerate((None, *SHIFTS)):
        x_out[place[:, k]] = x if direction is None else shift(x, direction)
        y_out[place[:, k]] = y
    return x_out, y_out


def _as_square(images, caller):
    """A (N, side, side) view of (N, side*side) or (N, side, side) images."""
    if images.ndim == 3 and images.shape[1] == images.shape[2]:
        return images
    side = int(round(np.sqrt(images.shape[-1]))) if images.ndim == 2 else 0
    if images.ndim != 2 or side * side != images.shape[1]:
        raise ValueError(
            f"{caller}: images must be (N, side*side) or (N, side, side), "
            f"got shape {images.shape}")
    return images.reshape(len(images), side, side)
