"""Independent numpy/scipy references the tests compare network3 against.

Nothing here imports network3: each function restates the book's definition
in plain loops (or scipy), so a bug in the package cannot hide in both.
"""

import numpy as np
from scipy.signal import convolve2d, correlate2d


#### Convolution and pooling
def conv2d(x, w):
    """Valid *true* convolution, Theano's ``conv.conv2d``: x (B, C, H, W),
    w (F, C, fh, fw) -> (B, F, H-fh+1, W-fw+1).  scipy's ``convolve2d``
    flips the kernel, as Theano did."""
    batch, channels, h, wd = x.shape
    n_filters, _, fh, fw = w.shape
    out = np.zeros((batch, n_filters, h - fh + 1, wd - fw + 1), dtype=np.float64)
    for b in range(batch):
        for f in range(n_filters):
            for c in range(channels):
                out[b, f] += convolve2d(x[b, c].astype(np.float64),
                                        w[f, c].astype(np.float64), mode="valid")
    return out


def conv2d_grads(x, w, g):
    """Gradients of ``sum(conv2d(x, w) * g)`` with respect to x and w."""
    batch, channels = x.shape[:2]
    n_filters = w.shape[0]
    dx = np.zeros(x.shape, dtype=np.float64)
    dw = np.zeros(w.shape, dtype=np.float64)
    for b in range(batch):
        for f in range(n_filters):
            for c in range(channels):
                dx[b, c] += correlate2d(g[b, f], w[f, c], mode="full")
                dw[f, c] += correlate2d(x[b, c], g[b, f], mode="valid")[::-1, ::-1]
    return dx, dw


def _windows(x, poolsize):
    """Yield (b, c, i, j, window) for each complete pooling window."""
    ph, pw = poolsize
    batch, channels, h, w = x.shape
    for b in range(batch):
        for c in range(channels):
            for i in range(h // ph):
                for j in range(w // pw):
                    yield b, c, i, j, x[b, c, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw]


def max_pool(x, poolsize):
    """Non-overlapping max pooling, incomplete border windows dropped."""
    ph, pw = poolsize
    out = np.zeros(x.shape[:2] + (x.shape[2] // ph, x.shape[3] // pw), x.dtype)
    for b, c, i, j, window in _windows(x, poolsize):
        out[b, c, i, j] = window.max()
    return out


def max_pool_grad(x, poolsize, g):
    """Gradient of ``sum(max_pool(x) * g)``: each window's g goes to its
    largest element (x must have no ties within a window)."""
    ph, pw = poolsize
    dx = np.zeros(x.shape, dtype=np.float64)
    for b, c, i, j, window in _windows(x, poolsize):
        u, v = np.unravel_index(np.argmax(window), window.shape)
        dx[b, c, i * ph + u, j * pw + v] = g[b, c, i, j]
    return dx


def l2_pool(x, poolsize):
    """Non-overlapping L2 pooling: sqrt of the sum of squares per window."""
    ph, pw = poolsize
    out = np.zeros(x.shape[:2] + (x.shape[2] // ph, x.shape[3] // pw), np.float64)
    for b, c, i, j, window in _windows(x, poolsize):
        out[b, c, i, j] = np.sqrt((window.astype(np.float64) ** 2).sum())
    return out


#### Activations
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


#### The book's FC(sigmoid) + softmax network, trained as in SGD
def fc_softmax_forward(params, x):
    """(hidden activations, softmax probabilities) of the book's
    FullyConnectedLayer(sigmoid) -> SoftmaxLayer network, no dropout."""
    w1, b1, w2, b2 = params
    a1 = sigmoid(x @ w1 + b1)
    return a1, softmax(a1 @ w2 + b2)


def fc_softmax_step(params, x, y, eta, lmbda, num_training_batches):
    """One SGD step on the mini-batch (x, y), by hand-written backprop:
    cost = mean(-log p[y]) + 0.5 * lmbda * (|w1|^2 + |w2|^2) / num_batches;
    each parameter becomes param - eta * dcost/dparam.  Returns the new
    params and the cost before the step."""
    w1, b1, w2, b2 = params
    m = len(x)
    a1, p = fc_softmax_forward(params, x)
    l2 = 0.5 * lmbda * ((w1 ** 2).sum() + (w2 ** 2).sum()) / num_training_batches
    cost = -np.mean(np.log(p[np.arange(m), y])) + l2
    delta2 = p.copy()
    delta2[np.arange(m), y] -= 1.0
    delta2 /= m                                   # d mean-NLL / d z2
    gw2 = a1.T @ delta2 + lmbda / num_training_batches * w2
    gb2 = delta2.sum(axis=0)
    delta1 = (delta2 @ w2.T) * a1 * (1 - a1)      # back through the sigmoid
    gw1 = x.T @ delta1 + lmbda / num_training_batches * w1
    gb1 = delta1.sum(axis=0)
    new = [w1 - eta * gw1, b1 - eta * gb1, w2 - eta * gw2, b2 - eta * gb2]
    return new, cost


def accuracy(params, x, y, m):
    """The book's accuracy of a data set: the mean over its complete
    mini-batches of size m of each mini-batch's accuracy."""
    n = len(x) // m
    return np.mean([np.mean(fc_softmax_forward(params, x[i * m:(i + 1) * m])[1]
                             .argmax(axis=1) == y[i * m:(i + 1) * m])
                    for i in range(n)])


def fc_softmax_sgd(params, training, epochs, m, eta, validation, test=None,
                   lmbda=0.0):
    """The book's SGD loop in numpy: fixed contiguous mini-batches in order,
    trailing partial batch dropped, selection by validation accuracy with
    >=.  Returns (final params, the lines the book prints, per-epoch
    params)."""
    (tx, ty), (vx, vy) = training, validation
    num_batches = len(tx) // m
    lines, per_epoch = [], []
    best, best_iteration, test_acc = 0.0, None, None
    for epoch in range(epochs):
        for i in range(num_batches):
            iteration = num_batches * epoch + i
            if iteration % 1000 == 0:
                lines.append(f"Training mini-batch number {iteration}")
            batch = slice(i * m, (i + 1) * m)
            params, _ = fc_softmax_step(params, tx[batch], ty[batch], eta, lmbda,
                                        num_batches)
        per_epoch.append([p.copy() for p in params])
        valid_acc = accuracy(params, vx, vy, m)
        lines.append(f"Epoch {epoch}: validation accuracy {valid_acc:.2%}")
        if valid_acc >= best:
            lines.append("This is the best validation accuracy to date.")
            best, best_iteration = valid_acc, iteration
            if test is not None:
                test_acc = accuracy(params, test[0], test[1], m)
                lines.append(f"The corresponding test accuracy is {test_acc:.2%}")
    lines.append("Finished training network.")
    lines.append(f"Best validation accuracy of {best:.2%} obtained at "
                 f"iteration {best_iteration}")
    if test is not None:
        lines.append(f"Corresponding test accuracy of {test_acc:.2%}")
    return params, lines, per_epoch
