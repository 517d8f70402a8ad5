"""network.py: the ``Network`` class, which wires the layers into one
symbolic graph and trains it by mini-batch stochastic gradient descent.

As in the book: the cost is the output layer's log-likelihood (on the
dropout path) plus ``0.5 * lmbda * sum(w**2) / num_training_batches``; the
update is plain ``param - eta * grad``; mini-batches are the fixed contiguous
slices ``[i*m:(i+1)*m]`` of the training data, in order, every epoch; the
validation accuracy is measured once per epoch and, when it is at least the
best so far, the test accuracy too.  The printed lines are the book's.

``SGD`` reads as the book's loop; the extras live in small helpers below it
(``_prepare_data``, ``_start_epoch``, ``_Record``, ``_stopped``).  Beyond
the book, ``SGD``'s keyword-only extras, all off by default:

* ``eta`` may also be a function of the epoch number (a learning-rate
  schedule; see ``network3.schedules``); returning ``None`` stops training.
* ``early_stopping=n``: stop when the validation accuracy has not improved
  for ``n`` epochs.
* ``restore_best=True``: end with the parameters of the best validation
  epoch (always done after an interrupt or divergence).
* ``progress=True``: a tqdm progress bar over each epoch's mini-batches.
* ``momentum=mu``: momentum-based gradient descent (chapter 3):
  ``v = mu * v - eta * grad; param = param + v``.
* ``monitor_training=True``: also measure the accuracy on the (unaugmented)
  training data each epoch, for overfitting diagnostics.
* ``shuffle=True``: a new random order of the training data each epoch (the
  book keeps one fixed order).
* ``augment=f``: at the start of each epoch the training images become
  ``f(images, rng)``, e.g. ``network3.augment.Augment()``'s random
  translations, rotations, skews and elastic distortions; only one
  transformed copy is ever in memory.
* ``checkpoint=path``: write the run's whole state to ``path`` at the end
  of every epoch; when ``path`` exists, continue the run from it, exactly
  as the uninterrupted run would have gone on (``checkpoint.py``).
  ``net.resumed_from`` is then the first epoch this call trained.

Each epoch's training cost, accuracies, learning rate and time are kept in
``net.history``.  Ctrl-C leaves the network with the best epoch's parameters
and prints the summary, then raises KeyboardInterrupt, which stops the
calling script as the original did; a NaN or infinite cost (eta too large)
stops training with a message.  ``eta=0`` evaluates without training.
``net.save(filename)`` and ``load(filename)`` (``network3.load``) keep a
network in a file; the format is ``saving.py``'s.
"""

import time
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt

from . import checkpoint as checkpoints
from . import saving
from .backend import (
    CompiledCopy,
    as_floatX,
    blas_threads,
    floatX,
    function,
    get_rng,
    held_by,
    to_device,
)
from .data import as_array
from .layers import rng_updates


#### Main class used to construct and train networks
class Network:

    def __init__(self, layers, mini_batch_size):
        """Takes a list of ``layers``, describing the network architecture,
        and the ``mini_batch_size`` used during training.  Checks that the
        layers fit together before building any graph."""
        _check_architecture(layers, mini_batch_size)
        self.layers = list(layers)
        self.mini_batch_size = int(mini_batch_size)
        self.params = [param for layer in self.layers for param in layer.params]
        self.x = pt.matrix("x", dtype=floatX())
        self.y = pt.ivector("y")
        init_layer = self.layers[0]
        init_layer.set_inpt(self.x, self.x, self.mini_batch_size)
        for prev_layer, layer in zip(self.layers[:-1], self.layers[1:]):
            layer.set_inpt(
                prev_layer.output, prev_layer.output_dropout, self.mini_batch_size)
        self.output = self.layers[-1].output
        self.output_dropout = self.layers[-1].output_dropout
        self.history = []

    def SGD(self, training_data, epochs, mini_batch_size, eta,
            validation_data=None, test_data=None, lmbda=0.0, *,
            early_stopping=None, restore_best=False, progress=False,
            shuffle=False, augment=None, momentum=0.0, monitor_training=False,
            checkpoint=None):
        """Train the network using mini-batch stochastic gradient descent.

        The book's arguments behave and print exactly as in the book; the
        keyword-only extras (off by default), ``net.history``, Ctrl-C and a
        diverging cost are described in this module's docstring."""
        training, validation, test = self._prepare_data(
            training_data, epochs, mini_batch_size, eta, lmbda, validation_data,
            test_data, momentum, early_stopping, shuffle, augment)

        # compute number of mini-batches for training, validation and testing
        num_training_batches = training.size // self.mini_batch_size
        num_validation_batches = validation.size // self.mini_batch_size
        num_test_batches = 0 if test is None else test.size // self.mini_batch_size

        # define functions to train a mini-batch, and to compute the accuracy in
        # validation and test mini-batches (eta is shared: a schedule changes it)
        self.eta = pytensor.shared(as_floatX(0.0), name="eta")
        train_mb = self.train_mb_function(training.x, training.y, self.eta, lmbda,
                                          num_training_batches, momentum)
        accuracy = self.layers[-1].accuracy(self.y)
        validate_mb_accuracy = self._mb_function(accuracy, validation)
        if test is not None:
            test_mb_accuracy = self._mb_function(accuracy, test)
            if hasattr(self.layers[-1], "y_out"):  # (a duck-typed layer may lack it)
                self.test_mb_predictions = self._mb_function(
                    self.layers[-1].y_out, test, labels=False)

        # Do the actual training (from the checkpoint's next epoch, if any)
        record = _Record(self, early_stopping, training_data if monitor_training else None)
        saver = None if checkpoint is None else _Checkpointer(
            checkpoint, self, training, eta, record,
            data={"training_data": training_data, "validation_data": validation_data,
                  "test_data": test_data},
            arguments={"epochs": epochs, "mini_batch_size": mini_batch_size, "eta": eta,
                       "lmbda": lmbda, "early_stopping": early_stopping,
                       "restore_best": restore_best, "shuffle": shuffle,
                       "augment": augment, "momentum": momentum,
                       "monitor_training": monitor_training})
        first_epoch = 0 if saver is None else saver.resume(epochs)
        self.resumed_from = first_epoch if first_epoch else None
        interrupt = None
        with blas_threads():  # one BLAS thread: a mini-batch's products are small
            for epoch in range(first_epoch, epochs):
                snapshot = self._get_params()
                try:  # Ctrl-C or a NaN cost anywhere in the epoch ends training
                    if self._start_epoch(epoch, eta, training, record) is None:
                        break  # the learning-rate schedule ended training
                    for minibatch_index in _progress(range(num_training_batches), progress, epoch):
                        iteration = num_training_batches * epoch + minibatch_index
                        if iteration % 1000 == 0:
                            print(f"Training mini-batch number {iteration}")
                        cost_ij = train_mb(minibatch_index)
                        record.add_cost(cost_ij, iteration)
                    validation_accuracy = np.mean(
                        [validate_mb_accuracy(j) for j in range(num_validation_batches)])
                    print(f"Epoch {epoch}: validation accuracy {validation_accuracy:.2%}")
                    if validation_accuracy >= record.best_validation_accuracy:
                        print("This is the best validation accuracy to date.")
                        record.new_best(validation_accuracy, iteration, self._get_params())
                        if test is not None:
                            record.test_accuracy = float(np.mean(  # (a checkpoint's JSON)
                                [test_mb_accuracy(j) for j in range(num_test_batches)]))
                            print(f"The corresponding test accuracy is {record.test_accuracy:.2%}")
                    record.end_epoch(validation_accuracy)
                except (KeyboardInterrupt, _Diverged) as err:
                    interrupt = _stopped(err, epoch)
                    self._set_params(record.best_params or snapshot)
                    break
                stop = record.stop_early()
                if saver is not None:  # the state at the end of this epoch, on disk
                    saver.save(epoch, finished=stop or epoch == epochs - 1)
                if stop:
                    break
        if restore_best and record.best_params is not None:
            self._set_params(record.best_params)
        print("Finished training network.")
        print(f"Best validation accuracy of {record.best_validation_accuracy:.2%} "
              f"obtained at iteration {record.best_iteration}")
        if record.test_accuracy is not None:
            print(f"Corresponding test accuracy of {record.test_accuracy:.2%}")
        self.best_validation_accuracy = float(record.best_validation_accuracy)
        self.best_iteration = record.best_iteration
        self.test_accuracy = None if record.test_accuracy is None else \
            float(record.test_accuracy)
        if interrupt is not None:
            raise interrupt  # Ctrl-C stops the caller too, as it stopped the original

    #### SGD's helpers: preparing the data, starting an epoch, evaluation
    def _prepare_data(self, training_data, epochs, mini_batch_size, eta, lmbda,
                      validation_data, test_data, momentum, early_stopping,
                      shuffle, augment):
        """Check SGD's arguments; return the training, validation and test
        data as ``_Data`` (test: None without test data).  With ``shuffle``
        or ``augment``, the training data are a private copy, rewritten at
        the start of each epoch."""
        _check_output_layer(self.layers)
        m = self.mini_batch_size
        if mini_batch_size != m:
            raise ValueError(
                f"SGD: mini_batch_size={mini_batch_size!r} but the network was "
                f"built with mini_batch_size={m}; pass the same value (the "
                "layers' shapes are fixed when the network is built)")
        _check_number("epochs", epochs, integer=True)
        if not callable(eta):
            _check_number("eta", eta, allow_zero=True)
        _check_number("lmbda", lmbda, allow_zero=True)
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        if early_stopping is not None:
            _check_number("early_stopping", early_stopping, integer=True)
        if validation_data is None:
            raise ValueError(
                "SGD: validation_data is required: the book selects the best "
                "epoch by validation accuracy")
        training = _Data(*self._data(training_data, "training_data"))
        validation = _Data(*self._data(validation_data, "validation_data"))
        test = None if test_data is None else _Data(*self._data(test_data, "test_data"))
        if shuffle or augment is not None:
            training = _RewrittenEachEpoch(training, shuffle, augment)
        return training, validation, test

    def _start_epoch(self, epoch, eta, training, record):
        """The epoch's learning rate (``eta``, or ``eta(epoch)`` for a
        schedule; None: the schedule ends training), set in ``self.eta``;
        the training data shuffled or augmented, if asked."""
        eta_now = eta(epoch) if callable(eta) else eta
        if eta_now is None:
            return None
        _check_number("eta", eta_now, allow_zero=True)
        self.eta.set_value(as_floatX(eta_now))
        record.start_epoch(epoch, eta_now)
        training.new_epoch()
        return eta_now

    def _mb_function(self, output, data, labels=True):
        """Compile ``f(i)``: ``output`` on mini-batch ``i`` of ``data`` (its
        images, and its labels when ``labels``)."""
        i = pt.lscalar("i")  # mini-batch index
        batch = minibatch(i, self.mini_batch_size)
        givens = {self.x: data.x[batch]}
        if labels:
            givens[self.y] = data.y[batch]
        return function([i], output, givens=givens)

    def _get_params(self):
        return [p.get_value() for p in self.params]  # copies

    def _set_params(self, values):
        for p, v in zip(self.params, values):
            p.set_value(v)

    def train_mb_function(self, training_x, training_y, eta, lmbda,
                          num_training_batches, momentum=0.0):
        """Compile ``train_mb(i)``: one SGD step on mini-batch ``i`` of the
        shared training data; returns the mini-batch's cost."""
        _check_output_layer(self.layers)
        # define the (regularized) cost function, symbolic gradients, and updates
        cost = self.layers[-1].cost(self)
        if lmbda:  # lmbda = 0 adds nothing: leave the term out of the graph
            l2_norm_squared = sum((layer.w ** 2).sum() for layer in self.layers
                                  if hasattr(layer, "w"))
            # a shared coefficient: the compiled step (and Numba's disk
            # cache of it) does not depend on lmbda or the data set's size
            l2_coefficient = pytensor.shared(
                as_floatX(0.5 * lmbda / num_training_batches), name="l2_coefficient")
            cost = cost + l2_coefficient * l2_norm_squared
        grads = pytensor.grad(cost, self.params)
        eta = eta if isinstance(eta, pytensor.graph.basic.Variable) else as_floatX(eta)
        if momentum:
            updates = momentum_updates(self.params, grads, eta, momentum)
        else:  # the book's plain gradient step
            updates = [(param, param - eta * grad)
                       for param, grad in zip(self.params, grads)]
        i = pt.lscalar("i")  # mini-batch index
        m = self.mini_batch_size
        batch = minibatch(i, m)
        # new dropout masks every step (the generators' default updates do
        # this too; explicit updates make it independent of them)
        updates += rng_updates([cost])
        train_mb = function(
            [i], cost, updates=updates,
            givens={self.x: training_x[batch], self.y: training_y[batch]})
        # what the step changes besides the parameters (velocities, dropout
        # streams), where the step keeps it: a checkpoint saves it
        earlier = {id(c.variable): c for c in getattr(self, "training_state", ())
                   if isinstance(c, CompiledCopy)}
        self.training_state = held_by(
            train_mb, [var for var, _ in updates if var not in self.params])
        for held in self.training_state:
            # on JAX, a new step's copy of a dropout stream goes on from
            # where the last SGD call's copy stopped (as the stream itself
            # does on the other backends), not from its first state again
            if isinstance(held, CompiledCopy) and id(held.variable) in earlier:
                held.set_value(earlier[id(held.variable)].get_value(borrow=True))
        return train_mb

    #### Beyond the book: prediction and accuracy on any data
    def predict(self, x, probabilities=False, batch_size=500):
        """Predicted labels for the images ``x`` (numpy, shape (N, 784) or
        (N, 28, 28); any N).  With ``probabilities=True``, also return the
        (N, classes) softmax outputs.  Uses the inference graph (dropout
        layers scaled by 1 - p), compiled once per ``batch_size`` (with a
        layer of the original's interface, which cannot be rebuilt for
        another batch size, the network's own graph, ``mini_batch_size`` at
        a time)."""
        n_in = _input_size(self.layers[0])
        x = np.asarray(x, dtype=floatX())
        if n_in is None:  # a layer that does not say: one image per row
            n_in = x[0].size if x.ndim > 1 else x.size
        if x.size % n_in or (x.ndim > 1 and x[0].size != n_in):
            raise ValueError(
                f"predict: images of shape {x.shape[1:]} do not match the "
                f"first layer, which takes {n_in} values per image")
        x = x.reshape(-1, n_in)
        if all(hasattr(layer, "output_for") for layer in self.layers):
            forward = self._forward_fn(batch_size)
        else:
            batch_size = self.mini_batch_size
            forward = self._network_forward_fn()
        n = len(x)
        probs = np.empty((n, _output_size(self.layers[-1]) or 0), dtype=floatX())
        for start in range(0, n, batch_size):
            chunk = x[start:start + batch_size]
            if len(chunk) < batch_size:  # pad the last, partial batch
                chunk = np.concatenate(
                    [chunk, np.zeros((batch_size - len(chunk), n_in), chunk.dtype)])
            out = np.asarray(forward(chunk)).reshape(batch_size, -1)[:n - start]
            if start == 0 and probs.shape[1] != out.shape[1]:
                probs = np.empty((n, out.shape[1]), dtype=out.dtype)
            probs[start:start + batch_size] = out
        labels = probs.argmax(axis=1)
        return (labels, probs) if probabilities else labels

    def accuracy(self, data, batch_size=500):
        """Fraction of the examples of ``data`` (an (x, y) pair of arrays or
        shared variables, any size) that the network classifies correctly."""
        x, y = (as_array(v) for v in data)
        return float(np.mean(self.predict(x, batch_size=batch_size) == y))

    def save(self, filename):
        """Save architecture and parameters to ``filename`` (a safe .npz);
        ``network3.load(filename)`` gives the network back."""
        saving.save(self, filename)

    def _forward_fn(self, batch_size):
        # the layers' inference graph, rebuilt for another batch size
        cache = self.__dict__.setdefault("_forward_fns", {})
        if batch_size not in cache:
            x = pt.matrix("x", dtype=floatX())
            out = x
            for layer in self.layers:
                out = layer.output_for(out, batch_size)
            cache[batch_size] = function([x], out)
        return cache[batch_size]

    def _network_forward_fn(self):
        cache = self.__dict__.setdefault("_forward_fns", {})
        if "network" not in cache:
            cache["network"] = function([self.x], self.output)
        return cache["network"]

    def _data(self, data, name):
        """Check a data set against the network; return (x, y, size) where x
        and y are symbolic (shared) variables usable in ``givens``."""
        try:
            x, y = data
        except (TypeError, ValueError):
            raise ValueError(
                f"SGD: {name} must be an (x, y) pair as returned by "
                f"load_data_shared(), got {type(data).__name__}") from None
        x_value, y_value = as_array(x), as_array(y)
        if x_value.ndim != 2 or y_value.ndim != 1 or \
                len(x_value) != len(y_value):
            raise ValueError(
                f"SGD: {name} must hold images of shape (N, pixels) and labels "
                f"of shape (N,), got {x_value.shape} and {y_value.shape}")
        n_in = _input_size(self.layers[0])
        if n_in is not None and x_value.shape[1] != n_in:
            raise ValueError(
                f"SGD: {name} has {x_value.shape[1]} values per image but the "
                f"first layer ({_layer_name(0, self.layers[0])}) takes {n_in}")
        if len(x_value) < self.mini_batch_size:
            raise ValueError(
                f"SGD: {name} has {len(x_value)} examples, fewer than one "
                f"mini-batch of {self.mini_batch_size}")
        if x_value.dtype.kind not in "fiub":
            raise ValueError(f"SGD: {name} pixel values must be numbers, found "
                             f"dtype {x_value.dtype}")
        if not np.isfinite(x_value).all():
            raise ValueError(f"SGD: {name} contains NaN or infinite pixel values")
        if x_value.dtype.kind == "f":  # (max and min: no temporary copy)
            largest = max(x_value.max(), -x_value.min())
            if largest > np.finfo(floatX()).max:
                raise ValueError(f"SGD: {name} has pixel values too large for "
                                 f"{floatX()} (max {largest:g})")
        if y_value.dtype.kind not in "iu":
            if y_value.dtype.kind != "f":
                raise ValueError(f"SGD: {name} labels must be whole numbers, "
                                 f"found dtype {y_value.dtype}")
            bad = y_value[~np.isfinite(y_value) | (y_value != np.round(y_value))]
            if bad.size:
                raise ValueError(f"SGD: {name} labels must be whole numbers, "
                                 f"found {bad[0]!r}")
        n_out = _output_size(self.layers[-1])
        if y_value.min() < 0 or (n_out is not None and y_value.max() >= n_out):
            raise ValueError(
                f"SGD: {name} has labels in [{y_value.min()}, {y_value.max()}] "
                f"but the output layer has {n_out} classes (labels 0..{n_out - 1})"
                if n_out is not None else
                f"SGD: {name} has a negative label ({y_value.min()})")
        if not isinstance(x, pytensor.graph.basic.Variable) or x.dtype != floatX():
            x = pytensor.shared(np.asarray(x_value, dtype=floatX()), borrow=True)
        if not isinstance(y, pytensor.graph.basic.Variable):
            y = pytensor.shared(np.asarray(y_value, dtype="int32"), borrow=True)
        elif y.dtype != "int32":
            y = pt.cast(y, "int32")
        return x, y, len(x_value)

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        return f"Network([\n    {inner}],\n    mini_batch_size={self.mini_batch_size})"


def momentum_updates(params, grads, eta, momentum):
    """Chapter 3's momentum: each parameter gets a velocity ``v`` (starting
    at zero); ``v = momentum * v - eta * grad``, ``param = param + v``."""
    updates = []
    for param, grad in zip(params, grads):
        v = pytensor.shared(np.zeros_like(param.get_value()), name=f"v_{param.name}")
        v_new = as_floatX(momentum) * v - eta * grad
        updates += [(v, v_new), (param, param + v_new)]
    return updates


def minibatch(i, m):
    """The rows of mini-batch ``i``: ``i*m, ..., (i+1)*m - 1``, the book's
    slice ``[i*m:(i+1)*m]``, written as an index vector of static length
    ``m`` (the JAX backend cannot compile a slice whose bounds are
    symbolic)."""
    return i * m + pt.arange(m)


def load(filename, activations=None):
    """The network saved by ``net.save(filename)``.  ``activations`` maps
    the names of custom activation functions to the functions themselves.
    A file that is not a saved network is a ValueError naming it."""
    with saving.errors_naming(filename):
        layers, mini_batch_size, arrays = saving.read(filename, activations)
        net = Network(layers, mini_batch_size)
        saving.set_parameters(net, arrays, filename)
    return net


#### SGD's helpers: the data, the record and the stopping rules
class _Data:
    """A data set as SGD uses it: images ``x`` and labels ``y`` (symbolic,
    usable in ``givens``) and the number of examples, ``size``."""

    def __init__(self, x, y, size):
        self.x, self.y, self.size = x, y, size

    def new_epoch(self):
        """The book's data stay as they are, in the same order, every epoch."""


class _RewrittenEachEpoch(_Data):
    """The training data rewritten at the start of each epoch: a new random
    order (``shuffle``) and/or new random distortions (``augment(images,
    rng)``) of the caller's data, in a private copy (one at a time)."""

    def __init__(self, data, shuffle, augment):
        self.images, self.labels = as_array(data.x), as_array(data.y)
        super().__init__(
            pytensor.shared(self.images.copy(), name="training_x"),
            pytensor.shared(np.asarray(self.labels, dtype="int32"), name="training_y"),
            data.size)
        self.shuffle, self.augment = shuffle, augment
        self.rng = np.random.default_rng(get_rng().integers(2**63))

    def new_epoch(self):
        order = self.rng.permutation(self.size) if self.shuffle else slice(None)
        images = self.images[order]
        if self.augment is not None:
            images = np.asarray(self.augment(images, self.rng), dtype=floatX())
        self.x.set_value(images, borrow=True)
        self.y.set_value(np.asarray(self.labels[order], "int32"), borrow=True)
        to_device(self.x, self.y)


class _Record:
    """What SGD keeps as it goes: the book's best so far (validation
    accuracy, its iteration, the test accuracy then, and the parameters),
    each epoch's numbers in ``net.history`` (learning rate, mean training
    cost, accuracies, seconds), a check of each cost, and the
    early-stopping rule (no strict improvement of the validation accuracy
    in ``early_stopping`` epochs).  With ``training_data``, also the
    accuracy on it each epoch."""

    def __init__(self, net, early_stopping, training_data=None):
        self.net, self.early_stopping = net, early_stopping
        self.training_data = training_data
        self.best_validation_accuracy, self.best_iteration = 0.0, None
        self.test_accuracy = self.best_params = None
        self.highest, self.improved_epoch = -np.inf, 0
        net.history = []

    # what a checkpoint saves and restores (checkpoint.py)
    STATE = ("best_validation_accuracy", "best_iteration", "test_accuracy",
             "highest", "improved_epoch")

    def start_epoch(self, epoch, eta):
        self.epoch, self.eta, self.is_best = epoch, eta, False
        self.start, self.total_cost, self.batches = time.perf_counter(), 0.0, 0

    def add_cost(self, cost, iteration):
        """Add a mini-batch's cost; a NaN or infinite one stops training."""
        cost = float(cost)
        if not np.isfinite(cost):
            raise _Diverged(cost, iteration, self.eta)
        self.total_cost += cost
        self.batches += 1

    def new_best(self, validation_accuracy, iteration, params):
        self.best_validation_accuracy = float(validation_accuracy)
        self.best_iteration, self.best_params = iteration, params
        self.test_accuracy, self.is_best = None, True

    def end_epoch(self, validation_accuracy):
        test_accuracy = self.test_accuracy if self.is_best else None
        record = {"epoch": self.epoch, "eta": float(self.eta),
                  "training_cost": self.total_cost / self.batches,
                  "validation_accuracy": float(validation_accuracy),
                  "test_accuracy": None if test_accuracy is None else float(test_accuracy)}
        if self.training_data is not None:  # the caller's data, unaugmented
            record["training_accuracy"] = self.net.accuracy(self.training_data)
        if validation_accuracy > self.highest or self.epoch == 0:
            self.improved_epoch = self.epoch
        self.highest = float(max(self.highest, validation_accuracy))
        record["seconds"] = time.perf_counter() - self.start
        self.net.history.append(record)

    def stop_early(self):
        """Whether the early-stopping rule ends training (it says so)."""
        if self.early_stopping and \
                self.epoch - self.improved_epoch >= self.early_stopping:
            print(f"Early stopping: no improvement in {self.early_stopping} epochs.")
            return True
        return False


class _Checkpointer:
    """``SGD(checkpoint=path)``: write the run's state to ``path`` at the end
    of each epoch (``save``), and continue a run from it (``resume``); the
    format and what it holds are checkpoint.py's."""

    def __init__(self, path, net, training, eta, record, data, arguments):
        self.path, self.net, self.training = Path(path), net, training
        self.eta, self.record = eta, record
        self.signature = checkpoints.signature(net, data, arguments)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def resume(self, epochs):
        """Restore the checkpoint's state, if the file exists; return the
        epoch to train next (0 without a checkpoint, ``epochs`` when its run
        had finished)."""
        if not self.path.exists():
            return 0
        info, arrays = checkpoints.read(self.path)
        problems = checkpoints.differences(info["signature"], self.signature)
        if problems:
            raise ValueError(
                f"SGD: the checkpoint {self.path} is of another run; it differs in "
                + "; ".join(problems)
                + ".  Give another checkpoint path to start a new run.")
        record = self.record
        record.best_params = checkpoints.restore(
            info, arrays, self.net, self.net.training_state)
        for name in record.STATE:
            setattr(record, name, info["record"][name])
        self.net.history[:] = info["history"]
        if info["training_rng"] is not None:
            self.training.rng = checkpoints.generator_from_state(info["training_rng"])
        checkpoints.set_schedule_state(self.eta, info["schedule"])
        done = info["epoch"]
        if info["finished"]:
            print(f"Resuming from checkpoint {self.path}: the run finished after "
                  f"epoch {done}; nothing left to train.")
            return epochs
        print(f"Resuming from checkpoint {self.path}: epochs 0-{done} done, "
              f"continuing with epoch {done + 1}.")
        return done + 1

    def save(self, epoch, finished):
        record, rng = self.record, getattr(self.training, "rng", None)
        loop = {"epoch": epoch, "finished": bool(finished),
                "record": {name: getattr(record, name) for name in record.STATE},
                "best_params": record.best_params,
                "history": self.net.history,
                "training_rng": None if rng is None else checkpoints.generator_state(rng),
                "schedule": checkpoints.schedule_state(self.eta)}
        checkpoints.write(self.path, self.net, self.net.training_state, loop,
                          self.signature)


class _Diverged(Exception):
    def __init__(self, cost, iteration, eta):
        self.cost, self.iteration, self.eta = cost, iteration, eta


def _stopped(err, epoch):
    """Say why training stopped in ``epoch`` (Ctrl-C or a diverging cost);
    return the KeyboardInterrupt that SGD raises again at the end."""
    if isinstance(err, KeyboardInterrupt):
        print(f"Training interrupted in epoch {epoch}; keeping the parameters "
              "of the best epoch so far.")
        return err
    print(f"Training stopped: the cost became {err.cost} at mini-batch "
          f"{err.iteration} (eta = {err.eta} is probably too large; try a "
          "smaller eta).")
    return None


def _progress(batches, show, epoch):
    if not show:
        return batches
    try:
        from tqdm import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from None
    return tqdm(batches, desc=f"epoch {epoch}", unit="mini-batch", leave=False)


#### Checks
def _layer_name(index, layer):
    return f"layer {index} ({type(layer).__name__})"


def _input_size(layer):
    """A layer's number of inputs per example: its ``input_size``, else
    ``n_in``, else what its ``image_shape`` gives; None for a layer that
    says none of these (one written to the original's interface)."""
    for name in ("input_size", "n_in"):
        size = getattr(layer, name, None)
        if _is_count(size):
            return int(size)
    try:
        return int(np.prod(layer.image_shape[1:]))
    except (AttributeError, TypeError, ValueError):
        return None


def _output_size(layer):
    """A layer's number of outputs per example (``output_size`` or
    ``n_out``), or None."""
    for name in ("output_size", "n_out"):
        size = getattr(layer, name, None)
        if _is_count(size):
            return int(size)
    return None


def _is_count(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_output_layer(layers):
    """The last layer must define the cost and the accuracy that SGD uses."""
    last = layers[-1]
    missing = [name for name in ("cost", "accuracy")
               if not callable(getattr(last, name, None))]
    if missing:
        raise TypeError(
            f"SGD: the last layer must define {' and '.join(missing)} (a "
            f"SoftmaxLayer does), got {_layer_name(len(layers) - 1, last)}")


def _check_architecture(layers, mini_batch_size):
    if isinstance(mini_batch_size, bool) or \
            not isinstance(mini_batch_size, (int, np.integer)) or mini_batch_size <= 0:
        raise ValueError(
            f"Network: mini_batch_size must be a positive integer, "
            f"got {mini_batch_size!r}")
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"Network: layers must be a non-empty list, got {layers!r}")
    for index, layer in enumerate(layers):
        if not hasattr(layer, "set_inpt") or not hasattr(layer, "params"):
            raise TypeError(
                f"Network: layer {index} is {layer!r}, not a network3 layer "
                "(ConvPoolLayer, FullyConnectedLayer or SoftmaxLayer, or an "
                "object with set_inpt and params)")
        if _batch_of(layer) not in (None, mini_batch_size):
            raise ValueError(
                f"Network: {_layer_name(index, layer)} has image_shape "
                f"{layer.image_shape} whose first entry {layer.image_shape[0]} "
                f"is not mini_batch_size={mini_batch_size}; use image_shape="
                f"({mini_batch_size}, {', '.join(map(str, layer.image_shape[1:]))})")
    # sizes are checked where the layers give them; a layer written to the
    # original's interface (set_inpt, params, output, output_dropout) need not
    for index in range(1, len(layers)):
        prev, layer = layers[index - 1], layers[index]
        out, inp = _output_size(prev), _input_size(layer)
        if out is not None and inp is not None and out != inp:
            if len(getattr(prev, "output_shape", ())) == 3:
                f, h, w = prev.output_shape
                got = f"{f}*{h}*{w} = {out} ({f} feature maps of {h}x{w})"
            else:
                got = str(out)
            if hasattr(layer, "image_shape"):
                fix = f"make image_shape[1:] multiply to {out}"
            else:
                fix = f"use n_in={out}"
            raise ValueError(
                f"Network: {_layer_name(index, layer)} takes {inp} "
                f"inputs but {_layer_name(index - 1, prev)} gives {got}; {fix}")


def _batch_of(layer):
    """The mini-batch size a layer's ``image_shape`` fixes, if it has one."""
    try:
        return layer.image_shape[0]
    except (AttributeError, TypeError, IndexError, KeyError):
        return None


def _check_number(name, value, integer=False, allow_zero=False):
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and \
        np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        what = "a positive integer" if integer else (
            "a non-negative number" if allow_zero else "a positive number")
        raise ValueError(f"SGD: {name} must be {what}, got {value!r}")


