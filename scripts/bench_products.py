"""bench_products.py: the single-product and single-kernel timings that the
README's "what made the difference" list quotes, in one run.

* a (10, 1000) by (1000, 1000) product (double_fc_dropout's forward pass)
  through numpy's OpenBLAS build (``kernels.nb_gemm``) and through Numba's
  np.dot (SciPy's OpenBLAS);
* the backward product with transposed weights, (10, 1000) by
  (1000, 1000).T, with the result in C order (BLAS packs the weights with a
  transposing copy) and in F order (what ``rewrites.Dot22`` does);
* the book's two conv layers, forward and weight gradient, with one BLAS
  product per image and one per batch (``kernels.per_image`` chooses).

Medians of repeated calls, one BLAS thread, after a warm-up call:

    python scripts/bench_products.py
"""

import argparse
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from network3.accel import kernels
from network3.accel.kernels import nb_gemm


def median_ms(fn, *args, calls=300, rounds=5):
    fn(*args)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        times.append((time.perf_counter() - start) / calls * 1e3)
    return float(np.median(times))


@numba.njit
def numba_dot(x, y):
    return np.dot(x, y)


@numba.njit
def gemm_c(x, y):
    return nb_gemm(np.empty((x.shape[0], y.shape[1]), x.dtype), 1.0, x, y, 0.0)


@numba.njit
def gemm_f(x, y):
    return nb_gemm(np.empty((y.shape[1], x.shape[0]), x.dtype).T, 1.0, x, y, 0.0)


def conv_functions(B, C, H, W, F, k, per_image):
    """Forward and weight gradient of one conv layer from its im2col columns,
    with one product per image or one per batch."""
    oh, ow, K = H - k + 1, W - k + 1, C * k * k
    if per_image:
        im2col, conv = kernels.nb_im2col_per_image, kernels.nb_conv2d_cols_per_image
        grad = kernels.nb_conv2d_grad_weights_cols_per_image
    else:
        im2col, conv = kernels.nb_im2col_batch, kernels.nb_conv2d_cols_batch
        grad = kernels.nb_conv2d_grad_weights_cols_batch
    forward = numba.njit(lambda x, w: conv(im2col(x, B, C, H, W, k, k), w, B, F, oh, ow, K))
    grad_w = numba.njit(
        lambda x, gz: grad(im2col(x, B, C, H, W, k, k), gz, B, F, oh, ow, C, k, k))
    return forward, grad_w


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    with threadpool_limits(limits=1, user_api="blas"):
        measure()


def measure():
    rng = np.random.default_rng(0)
    f32 = np.float32
    print(f"# numpy's BLAS for nb_gemm: {kernels._NUMPY_CBLAS or 'not found'}; "
          "medians in ms, one BLAS thread")
    x = rng.random((10, 1000), dtype=f32)
    w = rng.random((1000, 1000), dtype=f32)
    print("| product | ms |\n| --- | --- |")
    print(f"| (10,1000) x (1000,1000), nb_gemm (numpy's BLAS) | {median_ms(gemm_c, x, w):.3f} |")
    print(f"| same, Numba np.dot (SciPy's BLAS) | {median_ms(numba_dot, x, w):.3f} |")
    print(f"| (10,1000) x (1000,1000).T, result C-ordered | {median_ms(gemm_c, x, w.T):.3f} |")
    print(f"| same, result F-ordered (Dot22) | {median_ms(gemm_f, x, w.T):.3f} |")

    print("\n| conv layer | products | forward ms | weight gradient ms |")
    print("| --- | --- | --- | --- |")
    for B, C, H, W, F in [(10, 1, 28, 28, 20), (10, 20, 12, 12, 40)]:
        images = rng.random((B, C, H, W), dtype=f32)
        kernels_ = rng.random((F, C, 5, 5), dtype=f32)
        gz = rng.random((B, F, H - 4, W - 4), dtype=f32)
        for label, per_image in [("per image", True), ("per batch", False)]:
            forward, grad_w = conv_functions(B, C, H, W, F, 5, per_image)
            print(f"| {C}->{F} channels, {H}x{W} | {label} | "
                  f"{median_ms(forward, images, kernels_):.3f} | "
                  f"{median_ms(grad_w, images, gz):.3f} |")


if __name__ == "__main__":
    main()
