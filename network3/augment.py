"""augment.py: more training data from the training data, two ways.

1. The book's expanded training set, as ``expand_mnist.py`` made it.

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

2. Random distortions drawn afresh every epoch (the chapter's problem).

"Earlier in the chapter I described a technique for expanding the training
data by applying (small) rotations, skewing, and translation.  Modify
network3.py to incorporate all these techniques.  Note: Unless you have a
tremendous amount of memory, it is not practical to explicitly generate the
entire expanded data set."  So nothing is stored: ``Augment()`` is handed
to ``Network.SGD(..., augment=Augment())``, which at the start of each
epoch replaces the training images by ``augment(original_images, rng)``,
one new random distortion of each, and trains on those with the same
compiled step.  Besides the book's three it offers the elastic distortions
of Simard, Steinkraus and Platt, "Best practices for convolutional neural
networks applied to visual document analysis" (ICDAR 2003), whose section 2
is the source of the book's remark: a random displacement field per image,
each component uniform in [-1, 1], smoothed by a Gaussian of standard
deviation sigma and scaled by alpha, the image resampled by bilinear
interpolation.

The transforms ``translate``, ``rotate``, ``skew``, ``scale`` and ``elastic`` work on
a whole batch (N, 784) or (N, 28, 28) at once, with no loop over images:
each computes, for every output pixel, the point of the input it comes from
(a (3, N, H, W) coordinate array: image, row, column) and reads it with one
``scipy.ndimage.map_coordinates`` call (bilinear, zero outside the image).
Rotation and skew are about the image centre.  ``Augment`` composes all
four into one such read per image, so an image is interpolated (and
blurred) once, not four times.
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


#### Random distortions, drawn every epoch
# Images are read CHUNK at a time, so the coordinate array (3, CHUNK, 28,
# 28) float32 (94 MB) and the elastic fields (2 * CHUNK, 28, 28) float32
# (63 MB) stay bounded however many images there are; the output is the only
# full-size array.  The result does not depend on the chunk size.
CHUNK = 10_000


def translate(images, dy, dx):
    """``images`` (N, 784) or (N, 28, 28) moved ``dy`` pixels down and
    ``dx`` pixels right (negative: up, left); ``dy`` and ``dx`` are numbers
    or one per image, and may be fractional (bilinear interpolation).
    Zeros come in from the edges.  Returns a new array, same shape and
    dtype."""
    square = _as_square(np.asarray(images), "translate")
    n = len(square)
    shift = np.stack([_per_image(dy, n, "translate", "dy"),
                      _per_image(dx, n, "translate", "dx")], axis=1)
    return _warp(square, _identity(n), shift).reshape(np.shape(images))


def rotate(images, degrees):
    """``images`` (N, 784) or (N, 28, 28) rotated anticlockwise by
    ``degrees`` (a number or one per image) about the image centre, as
    ``np.rot90`` turns by 90.  Returns a new array, same shape and dtype."""
    square = _as_square(np.asarray(images), "rotate")
    n = len(square)
    matrix = _source_matrix(_per_image(degrees, n, "rotate", "degrees"),
                            np.zeros(n))
    return _warp(square, matrix, np.zeros((n, 2))).reshape(np.shape(images))


def skew(images, factor):
    """``images`` (N, 784) or (N, 28, 28) sheared horizontally about the
    image centre: a pixel ``d`` rows above the centre moves ``factor * d``
    to the right (below: to the left), so a positive factor slants an
    upright stroke like italic type.  ``factor`` is a number or one per
    image.  Returns a new array, same shape and dtype."""
    square = _as_square(np.asarray(images), "skew")
    n = len(square)
    matrix = _source_matrix(np.zeros(n), _per_image(factor, n, "skew", "factor"))
    return _warp(square, matrix, np.zeros((n, 2))).reshape(np.shape(images))


def scale(images, sy, sx):
    """``images`` (N, 784) or (N, 28, 28) stretched about the image centre
    by ``sy`` in height and ``sx`` in width (1: unchanged; 1.1: 10% larger,
    0.9: 10% smaller; numbers or one per image).  Returns a new array, same
    shape and dtype."""
    square = _as_square(np.asarray(images), "scale")
    n = len(square)
    factors = [_per_image(v, n, "scale", name) for v, name in ((sy, "sy"), (sx, "sx"))]
    if any((f <= 0).any() for f in factors):
        raise ValueError(f"scale: sy and sx must be positive, got {sy!r} and {sx!r}")
    matrix = _unscaled(_identity(n), *factors)
    return _warp(square, matrix, np.zeros((n, 2))).reshape(np.shape(images))


def elastic(images, alpha, sigma, rng):
    """Simard et al.'s elastic distortion of ``images`` (N, 784) or (N, 28,
    28): for each image a random displacement field, each component uniform
    in [-1, 1] at every pixel, smoothed by a Gaussian of standard deviation
    ``sigma`` pixels (zero beyond the image) and scaled by ``alpha``; output
    pixel p is the input read at p + displacement(p), bilinearly.  A large
    sigma gives a nearly uniform, small shift; a small one, noise.  For MNIST
    the paper used alpha=34, sigma=4 (displacements of about 1.4 pixels rms,
    varying over a few pixels).  ``rng`` is a numpy Generator (or a seed).
    Returns a new array, same shape and dtype."""
    alpha, sigma = _check_elastic((alpha, sigma), "elastic")
    square = _as_square(np.asarray(images), "elastic")
    n = len(square)
    return _warp(square, _identity(n), np.zeros((n, 2)), (alpha, sigma),
                 np.random.default_rng(rng)).reshape(np.shape(images))


class Augment:
    """A random distortion of every training image, new each time it is
    called: ``Augment()(x, rng)`` takes the training images ``x`` (N, 784)
    float32 and a numpy Generator and returns a new (N, 784) float32 array,
    each image translated, rotated, skewed and elastically distorted by its
    own random amounts, read with one bilinear interpolation.  The result
    depends only on ``x`` and the generator's state.  Give it to
    ``Network.SGD(..., augment=Augment())``.

    Per image, drawn uniformly:

    * ``translate``: a shift of up to this many pixels down or up and,
      independently, right or left (fractional).  Default 2: the book's
      expanded set used 1; MNIST digits are centred by their centre of mass
      in a 28x28 field with a 4-pixel blank margin, so 2 pixels stays
      inside it.
    * ``rotate``: an angle of up to this many degrees either way.  Default
      10: a slanted 1 or 7 stays itself; a 6 is not yet a 9.
    * ``skew``: a horizontal shear factor of up to this either way (see
      ``skew``); 0.2 slants an upright stroke by 11 degrees.
    * ``scale``: a stretch of height and, independently, width by up to
      this fraction either way (see ``scale``; 0.1: 90 to 110%).  Default 0,
      none: not one of the book's three; Ciresan et al. scaled by up to 15%.
    * ``elastic``: ``(alpha, sigma)`` of Simard et al.'s elastic distortion
      (see ``elastic``), default their (34, 4) for MNIST; ``None`` for none.
    * ``p_original``: the fraction of images left exactly as they are each
      epoch.  Default 0: the distortions are small, and every draw near
      zero is already close to the original, so the network still sees
      undistorted digits like the validation and test ones; raise it if a
      strong setting hurts accuracy.

    ``draw(n, rng)`` returns the per-image amounts (without the elastic
    fields); ``__call__`` draws them, then the elastic fields ``CHUNK``
    images at a time.

    Most of the cost is the elastic fields' Gaussian smoothing
    (``elastic=None`` skips it); working memory is about the size of the
    result.  docs/performance.md has the measurement.
    """

    def __init__(self, translate=2.0, rotate=10.0, skew=0.2, elastic=(34.0, 4.0),
                 p_original=0.0, scale=0.0):
        for name, value in (("translate", translate), ("rotate", rotate),
                            ("skew", skew), ("scale", scale)):
            if not (np.isscalar(value) and np.isfinite(value) and value >= 0):
                raise ValueError(f"Augment: {name} must be a number >= 0 (the "
                                 f"largest amount either way), got {value!r}")
        if rotate > 180:
            raise ValueError(f"Augment: rotate must be at most 180 degrees, "
                             f"got {rotate!r}")
        if scale >= 1:
            raise ValueError(f"Augment: scale must be below 1 (a fraction of the "
                             f"size), got {scale!r}")
        if not (np.isscalar(p_original) and 0 <= p_original <= 1):
            raise ValueError(f"Augment: p_original must be in [0, 1], got "
                             f"{p_original!r}")
        self.translate, self.rotate, self.skew = (float(translate), float(rotate),
                                                  float(skew))
        self.scale = float(scale)
        self.elastic = None if elastic is None else _check_elastic(elastic, "Augment")
        self.p_original = float(p_original)

    def __repr__(self):
        elastic = (None if self.elastic is None
                   else "({:g}, {:g})".format(*self.elastic))
        # scale only when used: the name of an Augment without it, which
        # run records key on, is the one it had before scale existed
        scale = f"scale={self.scale:g}, " if self.scale else ""
        return (f"Augment(translate={self.translate:g}, rotate={self.rotate:g}, "
                f"skew={self.skew:g}, {scale}elastic={elastic}, "
                f"p_original={self.p_original:g})")

    @classmethod
    def parse(cls, text):
        """The Augment that ``text`` names: its repr, ``"Augment(rotate=5,
        elastic=None)"``, or just the keywords, ``"rotate=5, elastic=None"``
        (numbers, None and tuples only).  A text that is not one raises
        ValueError naming it."""
        import ast
        source = text.strip()
        if not source.startswith("Augment("):
            source = f"Augment({source})"
        try:
            call = ast.parse(source, mode="eval").body
            if not (isinstance(call, ast.Call) and not call.args
                    and isinstance(call.func, ast.Name) and call.func.id == "Augment"):
                raise ValueError("not a call of Augment with keywords")
            options = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
            if None in options:
                raise ValueError("** is not allowed")
        except (SyntaxError, ValueError) as err:
            raise ValueError(f"Augment.parse: {text!r} is not Augment's options, such "
                             f"as 'rotate=5, elastic=None' ({err})") from None
        try:
            return cls(**options)
        except TypeError as err:
            raise ValueError(f"Augment.parse: {text!r}: {err}") from None

    def draw(self, n, rng):
        """The random amounts for ``n`` images: a dict of arrays of length
        ``n``: ``dy``, ``dx`` (pixels), ``degrees``, ``factor`` (skew),
        ``original`` (True for an image left as it is) and, with ``scale``,
        ``sy`` and ``sx`` (the stretch of height and width)."""
        rng = np.random.default_rng(rng)
        amounts = {"dy": rng.uniform(-self.translate, self.translate, n),
                   "dx": rng.uniform(-self.translate, self.translate, n),
                   "degrees": rng.uniform(-self.rotate, self.rotate, n),
                   "factor": rng.uniform(-self.skew, self.skew, n),
                   "original": rng.random(n) < self.p_original}
        if self.scale:  # drawn last, and only when used: without it, the
            # numbers drawn (and the images) are those of before scale existed
            amounts["sy"] = 1 + rng.uniform(-self.scale, self.scale, n)
            amounts["sx"] = 1 + rng.uniform(-self.scale, self.scale, n)
        return amounts

    def __call__(self, x, rng):
        x = np.asarray(x)
        square = _as_square(x, "Augment")               # (N, 28, 28) view
        rng = np.random.default_rng(rng)
        amounts = self.draw(len(square), rng)
        # one read per image: scale, skew, then rotate (all about the
        # centre), then translate, then the elastic field
        matrix = _source_matrix(amounts["degrees"], amounts["factor"])
        if self.scale:
            matrix = _unscaled(matrix, amounts["sy"], amounts["sx"])
        out = _warp(square, matrix, np.stack([amounts["dy"], amounts["dx"]], axis=1),
                    self.elastic, rng)
        keep = amounts["original"]
        out[keep] = square[keep]
        return out.reshape(x.shape)


#### Geometry
def _source_matrix(degrees, factor):
    """(N, 2, 2): for a pixel's (row, column) offset from the centre in the
    output, its offset in the input, undoing a skew by ``factor`` followed
    by an anticlockwise rotation by ``degrees``.  Rows point down, so the
    inverse rotation is [[cos, sin], [-sin, cos]] on (row, column), and the
    inverse skew adds ``factor * row`` to the column."""
    theta = np.radians(degrees)
    cos, sin = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([cos, sin], axis=-1),
                     np.stack([factor * cos - sin, factor * sin + cos], axis=-1)],
                    axis=-2)


def _unscaled(matrix, sy, sx):
    """``matrix`` (N, 2, 2) preceded, in the forward direction, by a stretch
    of ``sy`` in height and ``sx`` in width: its source offsets divided by
    them."""
    factors = np.stack([1 / np.asarray(sy, np.float64), 1 / np.asarray(sx, np.float64)],
                       axis=-1)                                       # (N, 2)
    return matrix * factors[:, :, None]


def _identity(n):
    return np.broadcast_to(np.eye(2), (n, 2, 2))


def _warp(square, matrix, shift, elastic=None, rng=None):
    """Read ``square`` (N, H, W) at, for each output pixel p, the point
    ``matrix @ (p - centre - shift) + centre`` (per image: ``matrix`` (N, 2,
    2), ``shift`` (N, 2) as (down, right)), plus an elastic displacement
    drawn from ``rng`` when ``elastic`` is (alpha, sigma).  Bilinear, zero
    outside the image.  Returns a new (N, H, W) array of ``square``'s dtype."""
    from scipy import ndimage  # on first use: importing network3 stays light
    n, height, width = square.shape
    # offsets from the centre, which for 28 pixels lies between 13 and 14
    rows = np.arange(height, dtype=np.float32) - (height - 1) / 2   # (H,)
    cols = np.arange(width, dtype=np.float32) - (width - 1) / 2     # (W,)
    matrix = matrix.astype(np.float32)
    shift = shift.astype(np.float32)
    out = np.empty_like(square)
    # buffers reused chunk after chunk: (image, row, column) for each output
    # pixel, and the elastic fields
    coords = np.empty((3, min(n, CHUNK), height, width), np.float32)
    field = np.empty((min(n, CHUNK), 2, height, width), np.float32)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        c = coords[:, :stop - start]                                  # (3, n, H, W)
        m = matrix[start:stop, :, :, None, None]                      # (n, 2, 2, 1, 1)
        y = rows[:, None] - shift[start:stop, 0, None, None]          # (n, H, 1)
        x = cols[None, :] - shift[start:stop, 1, None, None]          # (n, 1, W)
        c[0] = np.arange(start, stop, dtype=np.float32)[:, None, None]
        np.add(m[:, 0, 0] * y, m[:, 0, 1] * x, out=c[1])
        np.add(m[:, 1, 0] * y, m[:, 1, 1] * x, out=c[2])
        c[1] += (height - 1) / 2
        c[2] += (width - 1) / 2
        if elastic is not None:
            alpha, sigma = elastic
            # (n, 2, H, W): an image's two fields side by side, so drawing
            # chunk by chunk draws the same numbers as all at once
            f = field[:stop - start]
            rng.random(out=f, dtype=np.float32)                       # [0, 1)
            f *= 2
            f -= 1                                                    # [-1, 1)
            ndimage.gaussian_filter(f, (0, 0, sigma, sigma), mode="constant",
                                    cval=0.0, output=f)
            f *= alpha
            c[1:] += f.transpose(1, 0, 2, 3)
        # "constant": a point outside the image reads cval (no interpolation
        # with the border); the image coordinate is always a whole number
        ndimage.map_coordinates(square, c, output=out[start:stop], order=1,
                                mode="constant", cval=0.0, prefilter=False)
    return out


def _per_image(value, n, caller, name):
    """``value`` (a number or N numbers) as a float64 array of length N."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim > 1 or (array.ndim == 1 and len(array) != n):
        raise ValueError(f"{caller}: {name} must be a number or one per image "
                         f"({n}), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{caller}: {name} must be finite, got {value!r}")
    return np.broadcast_to(array, (n,))


def _check_elastic(elastic, caller):
    """(alpha, sigma) as floats: alpha >= 0, sigma > 0."""
    try:
        alpha, sigma = (float(v) for v in elastic)
    except (TypeError, ValueError):
        raise ValueError(f"{caller}: elastic must be (alpha, sigma), got "
                         f"{elastic!r}") from None
    if not (np.isfinite(alpha) and alpha >= 0 and np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"{caller}: elastic needs alpha >= 0 and sigma > 0, got "
                         f"alpha={alpha!r}, sigma={sigma!r}")
    return alpha, sigma
