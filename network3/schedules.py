"""schedules.py: learning-rate schedules for ``Network.SGD``.

``SGD``'s ``eta`` may be a function of the epoch number (0, 1, ...) instead
of a number; a schedule that returns ``None`` ends training.

    >>> net.SGD(training_data, 60, 10, schedules.step_decay(0.1, every=20),
    ...         validation_data, test_data)
"""

import math


def step_decay(eta, factor=0.5, every=10):
    """``eta`` multiplied by ``factor`` every ``every`` epochs."""
    return lambda epoch: eta * factor ** (epoch // every)


def exponential_decay(eta, rate=0.95):
    """``eta * rate ** epoch``."""
    return lambda epoch: eta * rate ** epoch


class HalveOnPlateau:
    """Chapter 3's schedule: halve eta each time the validation accuracy has
    not improved for ``patience`` epochs (the "no-improvement-in-n" rule),
    and stop when eta has fallen to ``floor`` (1/128) of its first value.

    It reads the validation accuracies from ``net.history``:

        >>> schedule = HalveOnPlateau(net, eta=0.1, patience=10)
        >>> net.SGD(training_data, 1000, 10, schedule, validation_data)
    """

    def __init__(self, net, eta, patience=10, floor=1 / 128):
        self.net, self.eta0, self.patience, self.floor = net, eta, patience, floor
        self.eta = eta
        self._best, self._since_best, self._seen = -math.inf, 0, 0

    def __repr__(self):  # its settings, not its state (a checkpoint compares it)
        return (f"HalveOnPlateau(eta={self.eta0!r}, patience={self.patience!r}, "
                f"floor={self.floor!r})")

    def __call__(self, epoch):
        if epoch == 0:  # a new SGD call starts a new history
            self.eta, self._best, self._since_best, self._seen = \
                self.eta0, -math.inf, 0, 0
        for record in self.net.history[self._seen:]:
            self._seen += 1
            if record["validation_accuracy"] > self._best:
                self._best, self._since_best = record["validation_accuracy"], 0
            else:
                self._since_best += 1
                if self._since_best >= self.patience:
                    self.eta, self._since_best = self.eta / 2, 0
        if self.eta <= self.eta0 * self.floor * (1 + 1e-9):
            return None
        return self.eta
