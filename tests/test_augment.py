"""Random distortions for on-the-fly augmentation (network3.augment).

The references are independent of the interpolation code: ``np.roll`` with
the wrapped border zeroed for whole-pixel shifts, ``np.rot90`` for quarter
turns, centres of mass for rotations and skews, and a linear ramp (which
bilinear interpolation reproduces exactly) to read off elastic
displacements.
"""

import numpy as np
import pytest

from network3 import augment
from network3.augment import Augment, elastic, rotate, scale, skew, translate

CENTRE = 13.5            # of a 28x28 image: between pixels 13 and 14


def synthetic(n=5, seed=0):
    """Images with ink up to every edge, values k/256 as in MNIST."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 28, 28)) / 256).astype(np.float32)


def blob(row, col, sd=(2.0, 2.0)):
    """A (28, 28) Gaussian blob centred at (row, col)."""
    r, c = np.mgrid[:28, :28]
    return np.exp(-((r - row) / sd[0]) ** 2 / 2
                  - ((c - col) / sd[1]) ** 2 / 2).astype(np.float32)


def centre_of_mass(image):
    r, c = np.mgrid[:28, :28]
    return np.array([(r * image).sum(), (c * image).sum()]) / image.sum()


def rolled(image, dy, dx):
    """``image`` moved by whole pixels: np.roll, then zero what wrapped."""
    moved = np.roll(image, (dy, dx), axis=(0, 1))
    if dy > 0:
        moved[:dy] = 0
    elif dy < 0:
        moved[dy:] = 0
    if dx > 0:
        moved[:, :dx] = 0
    elif dx < 0:
        moved[:, dx:] = 0
    return moved


#### The transforms
def test_translate_by_whole_pixels_is_roll_with_a_zeroed_border():
    x = synthetic(n=6)
    dy, dx = [0, 1, -1, 3, -5, 2], [0, 2, -3, 0, 1, -2]
    moved = translate(x, dy, dx)
    for image, result, i, j in zip(x, moved, dy, dx):
        np.testing.assert_array_equal(result, rolled(image, i, j))
    # one shift for all, on (N, 784) images
    flat = translate(x.reshape(6, 784), 2, -1)
    assert flat.shape == (6, 784)
    np.testing.assert_array_equal(flat[4].reshape(28, 28), rolled(x[4], 2, -1))


def test_translate_by_half_a_pixel_averages_the_neighbours():
    x = synthetic(n=2)
    half = translate(x, 0, 0.5)
    mean = (x[:, :, :-1] + x[:, :, 1:]) / 2                 # columns 1..27
    np.testing.assert_allclose(half[:, :, 1:], mean, atol=1e-6)


def test_zero_amounts_are_the_identity():
    x = synthetic()
    for result in (translate(x, 0, 0), rotate(x, 0), skew(x, 0),
                   elastic(x, 0, 4, np.random.default_rng(0)),
                   Augment(translate=0, rotate=0, skew=0, elastic=None)(
                       x, np.random.default_rng(0))):
        np.testing.assert_array_equal(result, x)


def test_rotate_by_90_degrees_is_rot90():
    x = synthetic()
    np.testing.assert_allclose(rotate(x, 90), np.rot90(x, 1, axes=(1, 2)),
                               atol=1e-6)
    np.testing.assert_allclose(rotate(x, -90), np.rot90(x, -1, axes=(1, 2)),
                               atol=1e-6)
    np.testing.assert_allclose(rotate(x, 180), x[:, ::-1, ::-1], atol=1e-6)


def test_rotation_keeps_a_centred_blob_centred():
    image = blob(CENTRE, CENTRE, sd=(4.0, 1.5))              # elongated
    for degrees in (7, 30, -45):
        turned = rotate(image[None], degrees)[0]
        assert not np.allclose(turned, image, atol=0.05)
        np.testing.assert_allclose(centre_of_mass(turned), [CENTRE, CENTRE],
                                   atol=0.05)


def test_rotation_is_anticlockwise_about_the_centre():
    # a blob 6 pixels above the centre goes round to the left of it
    image = blob(CENTRE - 6, CENTRE)
    for degrees, (row, col) in [(90, (CENTRE, CENTRE - 6)),
                                (30, (CENTRE - 6 * np.cos(np.pi / 6),
                                      CENTRE - 6 * np.sin(np.pi / 6)))]:
        turned = rotate(image[None], degrees)[0]
        np.testing.assert_allclose(centre_of_mass(turned), [row, col],
                                   atol=0.05)


def test_skew_slants_an_upright_stroke_like_italics():
    image = np.zeros((28, 28), np.float32)
    image[4:24, 10:13] = 1.0                       # upright bar, columns 10-12
    factor = 0.3
    slanted = skew(image[None], factor)[0]
    c = np.arange(28)
    for row in range(6, 22):
        ink = slanted[row]
        centre = (c * ink).sum() / ink.sum()
        # d rows above the centre moves factor * d to the right
        assert centre == pytest.approx(11 + factor * (CENTRE - row), abs=1e-4)
        assert ink.sum() == pytest.approx(3.0, abs=1e-4)      # width kept


def test_per_image_amounts():
    x = synthetic(n=3)
    turned = rotate(x, [0, 90, 180])
    np.testing.assert_array_equal(turned[0], x[0])
    np.testing.assert_allclose(turned[1], np.rot90(x[1]), atol=1e-6)
    np.testing.assert_allclose(turned[2], x[2, ::-1, ::-1], atol=1e-6)


def test_elastic_displacements_have_the_expected_size():
    """On a ramp along the columns, output minus input is the column
    displacement (bilinear interpolation is exact on a linear function).
    Uniform [-1, 1] noise (variance 1/3) smoothed by a normalised Gaussian
    kernel k has variance sum(k**2) / 3, and sum(k**2) is close to
    1 / (4 pi sigma**2) in 2-D; scaled by alpha, for (34, 4): 1.38 pixels.
    Measured at the centre, where the zero border does not reach."""
    ramp = np.tile(np.arange(28, dtype=np.float32) / 32, (400, 28, 1))
    alpha, sigma = 34.0, 4.0
    moved = elastic(ramp, alpha, sigma, np.random.default_rng(0))
    shift = (moved - ramp)[:, 12:16, 12:16] * 32             # in pixels
    expected = alpha * np.sqrt(1 / (4 * np.pi * sigma ** 2) / 3)
    assert shift.std() == pytest.approx(expected, rel=0.1)
    assert abs(shift.mean()) < 0.1
    # smooth: neighbouring pixels move almost together
    step = np.diff(shift, axis=2)
    assert step.std() < 0.2 * shift.std()


def test_elastic_is_seeded():
    x = synthetic()
    a = elastic(x, 34, 4, np.random.default_rng(3))
    np.testing.assert_array_equal(a, elastic(x, 34, 4, np.random.default_rng(3)))
    np.testing.assert_array_equal(a, elastic(x, 34, 4, 3))     # a seed will do
    assert not np.array_equal(a, elastic(x, 34, 4, np.random.default_rng(4)))


def test_transforms_keep_shape_dtype_and_range():
    x = synthetic()
    rng = np.random.default_rng(0)
    for images in (x, x.reshape(len(x), 784)):
        for result in (translate(images, 0.3, -1.7), rotate(images, 12.5),
                       skew(images, -0.25), elastic(images, 34, 4, rng),
                       Augment()(images, rng)):
            assert result.shape == images.shape
            assert result.dtype == np.float32
            assert result.min() >= 0 and result.max() <= x.max() < 1
    assert rotate(x.astype(np.float64), 10).dtype == np.float64


def test_bad_arguments_are_named():
    x = synthetic(n=3)
    with pytest.raises(ValueError, match=r"dy must be a number or one per image \(3\)"):
        translate(x, [1, 2], 0)
    with pytest.raises(ValueError, match="shape"):
        rotate(np.zeros((2, 785), np.float32), 10)
    with pytest.raises(ValueError, match="sigma > 0"):
        elastic(x, 34, 0, 0)
    with pytest.raises(ValueError, match="rotate must be a number >= 0"):
        Augment(rotate=-5)
    with pytest.raises(ValueError, match="at most 180"):
        Augment(rotate=270)
    with pytest.raises(ValueError, match="elastic must be"):
        Augment(elastic=34)
    with pytest.raises(ValueError, match="p_original"):
        Augment(p_original=1.5)
    with pytest.raises(ValueError, match="scale must be below 1"):
        Augment(scale=1)
    with pytest.raises(ValueError, match="scale must be a number >= 0"):
        Augment(scale=-0.1)
    with pytest.raises(ValueError, match="sy and sx must be positive"):
        scale(x, 0, 1)


#### Augment
def test_augment_is_seeded():
    x = synthetic(n=20).reshape(20, 784)
    augment_ = Augment()
    a = augment_(x, np.random.default_rng(7))
    np.testing.assert_array_equal(a, augment_(x, np.random.default_rng(7)))
    b = augment_(x, np.random.default_rng(8))
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, x)
    # successive epochs from one generator differ, and the input is untouched
    rng, before = np.random.default_rng(7), x.copy()
    assert not np.array_equal(augment_(x, rng), augment_(x, rng))
    np.testing.assert_array_equal(x, before)


def test_augment_does_not_depend_on_the_chunk_size(monkeypatch):
    x = synthetic(n=23).reshape(23, 784)
    whole = Augment()(x, np.random.default_rng(1))
    monkeypatch.setattr(augment, "CHUNK", 5)
    np.testing.assert_array_equal(Augment()(x, np.random.default_rng(1)), whole)


@pytest.mark.parametrize("only", ["translate", "rotate", "skew", "elastic", "scale"])
def test_augment_draws_each_transform(only):
    """With one transform switched on, Augment is that function applied
    with the amounts ``draw`` gives."""
    x = synthetic(n=8)
    settings = dict(translate=0, rotate=0, skew=0, elastic=None)
    settings[only] = {"translate": 2, "rotate": 10, "skew": 0.2,
                      "elastic": (34, 4), "scale": 0.2}[only]
    augment_ = Augment(**settings)
    result = augment_(x, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    amounts = augment_.draw(len(x), rng)
    expected = {"translate": lambda: translate(x, amounts["dy"], amounts["dx"]),
                "rotate": lambda: rotate(x, amounts["degrees"]),
                "skew": lambda: skew(x, amounts["factor"]),
                "elastic": lambda: elastic(x, 34, 4, rng),
                "scale": lambda: scale(x, amounts["sy"], amounts["sx"])}[only]()
    np.testing.assert_allclose(result, expected, atol=1e-5)
    assert np.abs(amounts["dy"]).max() <= settings["translate"]
    assert not np.array_equal(result, x)


def test_scale_stretches_about_the_centre():
    # a blob 4 rows above and 2 columns right of the centre, 1.5 times as
    # tall and half as wide: its centre 1.5 times as far up, half as far right
    image = blob(CENTRE - 4, CENTRE + 2)[None]
    result = scale(image, 1.5, 0.5)[0]
    np.testing.assert_allclose(centre_of_mass(result), [CENTRE - 6, CENTRE + 1], atol=0.05)
    r, c = np.mgrid[:28, :28]
    row_sd = np.sqrt(((r - CENTRE + 6) ** 2 * result).sum() / result.sum())
    assert row_sd == pytest.approx(3.0, rel=0.05)   # the blob's sd 2, times 1.5
    np.testing.assert_allclose(scale(image, 1, 1), image, atol=1e-6)


def test_scale_leaves_the_other_draws_as_they_were():
    """scale is drawn last and only when used: an Augment without it draws
    (and makes) what it did before scale existed, and one with it the same
    shifts, angles and skews."""
    plain = Augment().draw(50, np.random.default_rng(3))
    assert set(plain) == {"dy", "dx", "degrees", "factor", "original"}
    scaled = Augment(scale=0.15).draw(50, np.random.default_rng(3))
    for name in plain:
        np.testing.assert_array_equal(scaled[name], plain[name])
    assert 0.85 <= scaled["sy"].min() and scaled["sx"].max() <= 1.15
    assert not np.array_equal(scaled["sy"], scaled["sx"])


def test_augment_composes_skew_rotation_and_translation():
    # a blob above the centre: skewed right, turned anticlockwise by 90
    # degrees (to the left of the centre), then moved
    image = blob(CENTRE - 6, CENTRE)[None]
    augment_ = Augment(elastic=None)

    def fixed(n, rng):
        return {"dy": np.array([1.0]), "dx": np.array([-2.0]),
                "degrees": np.array([90.0]), "factor": np.array([0.5]),
                "original": np.array([False])}
    augment_.draw = fixed
    result = augment_(image, np.random.default_rng(0))[0]
    # skew: (-6, 0) -> (-6, 3); rotate: -> (-3, -6); translate: -> (-2, -8)
    np.testing.assert_allclose(centre_of_mass(result),
                               [CENTRE - 2, CENTRE - 8], atol=0.05)


def test_augment_scales_before_it_skews():
    image = blob(CENTRE - 6, CENTRE)[None]
    augment_ = Augment(elastic=None, scale=0.5)

    def fixed(n, rng):
        return {"dy": np.array([1.0]), "dx": np.array([-2.0]),
                "degrees": np.array([90.0]), "factor": np.array([0.5]),
                "original": np.array([False]), "sy": np.array([0.5]),
                "sx": np.array([1.2])}
    augment_.draw = fixed
    result = augment_(image, np.random.default_rng(0))[0]
    # scale: (-6, 0) -> (-3, 0); skew: -> (-3, 1.5); rotate: -> (-1.5, -3);
    # translate: -> (-0.5, -5)
    np.testing.assert_allclose(centre_of_mass(result),
                               [CENTRE - 0.5, CENTRE - 5], atol=0.05)


def test_p_original_leaves_that_fraction_untouched():
    x = synthetic(n=200).reshape(200, 784)
    augment_ = Augment(p_original=0.25)
    result = augment_(x, np.random.default_rng(2))
    kept = augment_.draw(200, np.random.default_rng(2))["original"]
    assert 30 < kept.sum() < 70
    same = (result == x).all(axis=1)
    np.testing.assert_array_equal(same, kept)
    np.testing.assert_array_equal(Augment(p_original=1)(x, 0), x)


def test_augment_repr():
    assert repr(Augment()) == (
        "Augment(translate=2, rotate=10, skew=0.2, elastic=(34, 4), p_original=0)")
    assert "elastic=None" in repr(Augment(elastic=None))
    assert repr(Augment(scale=0.1, elastic=None)) == (
        "Augment(translate=2, rotate=10, skew=0.2, scale=0.1, elastic=None, p_original=0)")


@pytest.mark.parametrize("options", [
    {}, {"elastic": None}, {"scale": 0.15, "rotate": 5.5}, {"elastic": (36, 5.5)},
    {"p_original": 0.25, "translate": 0}])
def test_parse_gives_back_the_augment_a_name_stands_for(options):
    made = Augment(**options)
    assert repr(Augment.parse(repr(made))) == repr(made)
    keywords = ", ".join(f"{k}={v!r}" for k, v in options.items())
    assert repr(Augment.parse(keywords)) == repr(made)


@pytest.mark.parametrize("text, message", [
    ("rotate=five", "is not Augment's options"),
    ("__import__('os').system('true')", "is not Augment's options"),
    ("Augment(1)", "is not Augment's options"),
    ("Augment(**{'rotate': 5})", "is not Augment's options"),
    ("speed=3", "unexpected keyword argument 'speed'"),
    ("rotate=500", "rotate must be at most 180 degrees"),
])
def test_parse_refuses_what_is_not_augments_options(text, message):
    with pytest.raises(ValueError, match=message) as refused:
        Augment.parse(text)
    assert repr(text) in str(refused.value) or "rotate must be" in str(refused.value)


@pytest.mark.mnist
def test_augmented_mnist_digits_stay_recognisable(mnist):
    x = mnist[0][0][:500]
    result = Augment()(x, np.random.default_rng(0))     # the defaults
    assert result.shape == x.shape and result.dtype == np.float32
    assert result.min() >= 0 and result.max() < 1
    centred = lambda a: a - a.mean(axis=1, keepdims=True)  # noqa: E731
    a, b = centred(x), centred(result)
    correlation = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    # measured 0.50 for these 500 (0.64 without the elastic distortion).
    # A weak test: among the same 500 originals, two different digits of
    # one class correlate 0.48 on average, of different classes 0.28.
    assert 0.3 < correlation.mean() < 0.9
    # the ink is moved, not lost: a digit keeps most of it
    ink = result.sum(1) / x.sum(1)
    assert 0.8 < np.median(ink) < 1.2
