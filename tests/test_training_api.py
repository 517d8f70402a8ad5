"""The opt-in training extras: schedules, early stopping, restore_best,
history, interrupts, divergence, predict/accuracy, save/load."""

import ast
from pathlib import Path

import numpy as np
import pytest

import network3
from network3 import FullyConnectedLayer, Network, SoftmaxLayer, linear, schedules

# three fixed random directions in the space of 6 inputs
PROJECTIONS = np.random.default_rng(42).normal(size=(6, 3))


def toy_data(n, rng):
    """Linearly separable 3-class data: the label is the argmax of three
    fixed projections.  small_net learns it (validation accuracy 71% after
    one epoch at eta 0.5, 95% after five), so a check of which epoch's
    parameters a network holds can tell epochs apart."""
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x @ PROJECTIONS).argmax(axis=1).astype("int32")


@pytest.fixture
def toy(rng):
    return toy_data(400, rng), toy_data(100, rng), toy_data(100, rng)


def small_net(activation_fn=network3.sigmoid, n_in=6):
    return Network([FullyConnectedLayer(n_in=n_in, n_out=8,
                                        activation_fn=activation_fn),
                    SoftmaxLayer(n_in=8, n_out=3)], 10)


def test_schedule_function_sets_eta_each_epoch(toy, capsys):
    net = small_net()
    net.SGD(toy[0], 4, 10, schedules.step_decay(0.4, factor=0.5, every=2), toy[1])
    assert [h["eta"] for h in net.history] == pytest.approx([0.4, 0.4, 0.2, 0.2])


def test_schedule_returning_none_stops(toy, capsys):
    net = small_net()
    net.SGD(toy[0], 10, 10, lambda epoch: 0.1 if epoch < 3 else None, toy[1])
    assert len(net.history) == 3


def test_exponential_decay():
    f = schedules.exponential_decay(1.0, rate=0.5)
    assert [f(e) for e in range(3)] == [1.0, 0.5, 0.25]


def test_halve_on_plateau_halves_then_stops():
    class FakeNet:
        history = []
    net = FakeNet()
    schedule = schedules.HalveOnPlateau(net, eta=1.0, patience=2)
    etas = []
    for epoch in range(30):
        eta = schedule(epoch)
        if eta is None:
            break
        etas.append(eta)
        # accuracy never improves after the first epoch
        net.history.append({"validation_accuracy": 0.5})
    # halved every 2 stalled epochs: 1, 1/2, ..., stopping at 1/128
    assert etas[0] == 1.0 and min(etas) == 1 / 64
    assert sorted(set(etas), reverse=True) == [2.0 ** -k for k in range(7)]


def test_early_stopping_stops_after_patience(toy, capsys):
    net = small_net()
    # eta = tiny: the accuracy cannot improve after epoch 0 (equal is not
    # an improvement for early stopping)
    net.SGD(toy[0], 20, 10, 1e-12, toy[1], early_stopping=3)
    assert len(net.history) == 4
    assert "Early stopping: no improvement in 3 epochs." in capsys.readouterr().out


def test_restore_best_restores_best_epoch_parameters(toy, capsys):
    net = small_net()
    net.SGD(toy[0], 5, 10, 3.0, toy[1], restore_best=True)
    best = max(range(5), key=lambda e: (net.history[e]["validation_accuracy"], e))
    # the check can tell: eta 3 overshoots, and the last epoch is not the best
    assert net.history[4]["validation_accuracy"] < net.history[best]["validation_accuracy"]
    # the restored network scores the best epoch's validation accuracy
    assert net.accuracy(toy[1]) == pytest.approx(
        net.history[best]["validation_accuracy"])


def test_history_records_each_epoch(toy, capsys, monkeypatch):
    costs = []
    compile_train = Network.train_mb_function

    def recording(self, *args):
        train_mb = compile_train(self, *args)

        def step(i):
            cost = train_mb(i)
            costs.append(float(cost))
            return cost
        return step
    monkeypatch.setattr(Network, "train_mb_function", recording)
    net = small_net()
    net.SGD(toy[0], 5, 10, 3.0, toy[1], toy[2])  # eta 3: not every epoch is best
    lines = capsys.readouterr().out.splitlines()
    assert [h["epoch"] for h in net.history] == [0, 1, 2, 3, 4]
    best = 0.0
    for h, epoch_costs in zip(net.history, np.reshape(costs, (5, 40))):
        assert set(h) >= {"epoch", "eta", "training_cost", "validation_accuracy",
                          "test_accuracy", "seconds"}
        assert h["eta"] == 3.0 and h["seconds"] > 0
        # the mean cost of the epoch's 40 mini-batches, as the steps returned it
        assert h["training_cost"] == pytest.approx(np.mean(epoch_costs), rel=1e-6)
        line = lines.index(f"Epoch {h['epoch']}: validation accuracy "
                           f"{h['validation_accuracy']:.2%}")
        if h["validation_accuracy"] >= best:  # a best epoch: its test accuracy
            best = h["validation_accuracy"]
            assert lines[line + 2] == \
                f"The corresponding test accuracy is {h['test_accuracy']:.2%}"
        else:
            assert h["test_accuracy"] is None
    assert None in [h["test_accuracy"] for h in net.history]  # the check can tell


def _assert_stopped_in_epoch_2_with_best_parameters(net, toy, capsys):
    """After Ctrl-C in the second epoch: the summary printed, two epochs
    recorded, and the network holds the better epoch's parameters."""
    out = capsys.readouterr().out
    assert "Training interrupted in epoch 2" in out
    assert "Finished training network." in out
    assert len(net.history) == 2
    best = max(range(2), key=lambda e: (net.history[e]["validation_accuracy"], e))
    assert net.accuracy(toy[1]) == pytest.approx(
        net.history[best]["validation_accuracy"])


def test_keyboard_interrupt_keeps_best_parameters_and_summary_then_propagates(
        toy, monkeypatch, capsys):
    compile_train = Network.train_mb_function
    calls = {"n": 0}

    def interrupted(self, *args):
        train_mb = compile_train(self, *args)

        def step(i):
            calls["n"] += 1
            if calls["n"] == 95:  # in epoch 2 of 40 mini-batches
                raise KeyboardInterrupt
            return train_mb(i)
        return step
    monkeypatch.setattr(Network, "train_mb_function", interrupted)
    net = small_net()
    with pytest.raises(KeyboardInterrupt):  # it stops the caller, as the original
        net.SGD(toy[0], 10, 10, 0.5, toy[1], toy[2])
    _assert_stopped_in_epoch_2_with_best_parameters(net, toy, capsys)


def test_keyboard_interrupt_while_augmenting_keeps_best_parameters_and_summary(
        toy, capsys):
    """Ctrl-C at the start of an epoch (augmenting 50,000 images takes
    seconds) ends training as anywhere else in the epoch."""
    calls = []

    def augment(x, rng):
        calls.append(1)
        if len(calls) == 3:  # the start of epoch 2
            raise KeyboardInterrupt
        return x
    net = small_net()
    with pytest.raises(KeyboardInterrupt):
        net.SGD(toy[0], 5, 10, 0.5, toy[1], augment=augment)
    _assert_stopped_in_epoch_2_with_best_parameters(net, toy, capsys)


def test_divergence_stops_with_message_and_finite_parameters(toy, capsys):
    net = Network([FullyConnectedLayer(n_in=6, n_out=8, activation_fn=linear),
                   FullyConnectedLayer(n_in=8, n_out=8, activation_fn=linear),
                   SoftmaxLayer(n_in=8, n_out=3)], 10)
    net.SGD(toy[0], 5, 10, 1e30, toy[1])
    out = capsys.readouterr().out
    assert "Training stopped: the cost became" in out
    assert "try a smaller eta" in out
    assert all(np.isfinite(p.get_value()).all() for p in net.params)


def test_predict_any_count_matches_test_mb_predictions(toy, capsys):
    net = small_net()
    net.SGD(toy[0], 2, 10, 0.5, toy[1], toy[2])
    per_batch = np.concatenate([net.test_mb_predictions(i) for i in range(10)])
    assert np.array_equal(net.predict(toy[2][0], batch_size=7), per_batch)
    labels, probs = net.predict(toy[2][0][:13], probabilities=True)
    assert probs.shape == (13, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(labels, per_batch[:13])
    assert net.accuracy(toy[2]) == pytest.approx(np.mean(per_batch == toy[2][1]))


def test_predict_rejects_wrong_image_size():
    with pytest.raises(ValueError, match="takes 6 values per image"):
        small_net().predict(np.zeros((3, 5)))


def test_save_load_round_trip_gives_identical_predictions(toy, tmp_path, capsys):
    net = Network([FullyConnectedLayer(n_in=6, n_out=8, activation_fn=network3.ReLU,
                                       p_dropout=0.3),
                   SoftmaxLayer(n_in=8, n_out=3, p_dropout=0.2)], 10)
    net.SGD(toy[0], 2, 10, 0.3, toy[1])
    net.save(tmp_path / "net.npz")
    loaded = network3.load(tmp_path / "net.npz")
    assert repr(loaded) == repr(net)
    _, p1 = net.predict(toy[2][0], probabilities=True)
    _, p2 = loaded.predict(toy[2][0], probabilities=True)
    assert np.array_equal(p1, p2)


def test_saving_does_not_import_network():
    """network.py imports saving.py (the file format), not the other way
    round: no import cycle."""
    tree = ast.parse(Path(network3.saving.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree)
                 if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    assert not {"network", "network3.network"} & imported, imported


def test_load_rejects_mismatched_shapes(tmp_path):
    net = small_net()
    net.save(tmp_path / "net.npz")
    with np.load(tmp_path / "net.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["layer0_w"] = np.zeros((5, 8), dtype="float32")
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"layer0_w has shape \(5, 8\)"):
        network3.load(tmp_path / "bad.npz")


def test_load_rejects_missing_parameters_and_non_network_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved network3 network"):
        network3.load(tmp_path / "x.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a saved network3 network"):
        network3.load(tmp_path / "junk.npz")


def test_same_seed_gives_identical_history(toy, capsys):
    histories = []
    for _ in range(2):
        network3.seed(7)
        net = Network([FullyConnectedLayer(n_in=6, n_out=8, p_dropout=0.5),
                       SoftmaxLayer(n_in=8, n_out=3)], 10)
        net.SGD(toy[0], 2, 10, 0.5, toy[1])
        histories.append([(h["training_cost"], h["validation_accuracy"])
                          for h in net.history])
    assert histories[0] == histories[1]


def test_shuffle_changes_order_each_epoch_but_not_the_data(toy, capsys, monkeypatch):
    seen = []
    net = small_net()
    original = type(net.layers[0].w).set_value

    def spy(self, value, borrow=False):
        if self.name == "training_y":
            seen.append(np.array(value))
        return original(self, value, borrow=borrow)
    monkeypatch.setattr(type(net.layers[0].w), "set_value", spy)
    net.SGD(toy[0], 3, 10, 0.1, toy[1], shuffle=True)
    assert len(seen) == 3
    assert not np.array_equal(seen[0], seen[1])
    for labels in seen:  # a permutation of the same labels
        assert np.array_equal(np.sort(labels), np.sort(toy[0][1]))


def test_augment_is_called_each_epoch_on_the_original_images(toy, capsys):
    calls = []

    def augment(x, rng):
        calls.append(x.copy())
        return x + np.float32(1)  # an obvious change
    net = small_net()
    net.SGD(toy[0], 3, 10, 0.1, toy[1], augment=augment)
    assert len(calls) == 3
    for x in calls:  # always the untouched originals, in the book's order
        np.testing.assert_array_equal(x, toy[0][0])


def test_same_seed_same_history_with_shuffle_and_augment(toy, capsys):
    def jitter(x, rng):
        return x + rng.normal(scale=0.1, size=x.shape).astype(x.dtype)
    histories = []
    for _ in range(2):
        network3.seed(11)
        net = small_net()
        net.SGD(toy[0], 2, 10, 0.3, toy[1], shuffle=True, augment=jitter)
        histories.append([h["training_cost"] for h in net.history])
    assert histories[0] == histories[1]


def test_momentum_update_matches_numpy(capsys):
    """Two steps of momentum SGD on a linear softmax layer, against numpy."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 4)).astype("float32")
    y = rng.integers(0, 3, 20).astype("int32")
    net = Network([SoftmaxLayer(n_in=4, n_out=3)], 10)
    w0 = rng.normal(size=(4, 3)).astype("float32")
    net.layers[0].w.set_value(w0)
    import pytensor
    train_mb = net.train_mb_function(pytensor.shared(x), pytensor.shared(y), 0.5, 0.0,
                                     2, momentum=0.9)
    train_mb(0)
    train_mb(1)
    w, b, v_w, v_b = w0.astype("float64"), np.zeros(3), 0.0, 0.0
    for i in range(2):
        xb, yb = x[i * 10:(i + 1) * 10], y[i * 10:(i + 1) * 10]
        z = xb @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(10), yb] -= 1
        gw, gb = xb.T @ p / 10, p.mean(0)
        v_w, v_b = 0.9 * v_w - 0.5 * gw, 0.9 * v_b - 0.5 * gb
        w, b = w + v_w, b + v_b
    np.testing.assert_allclose(net.layers[0].w.get_value(), w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.layers[0].b.get_value(), b, rtol=1e-4, atol=1e-5)


def test_momentum_must_be_in_range(toy):
    with pytest.raises(ValueError, match="momentum must be in"):
        small_net().SGD(toy[0], 1, 10, 0.1, toy[1], momentum=1.5)


def test_monitor_training_records_training_accuracy(toy, capsys):
    """Each epoch's training accuracy is that of the network after the
    epoch: epoch 0's is that of the same network trained for one epoch."""
    network3.seed(5)
    net = small_net()
    net.SGD(toy[0], 2, 10, 0.5, toy[1], monitor_training=True)
    network3.seed(5)
    one_epoch = small_net()
    one_epoch.SGD(toy[0], 1, 10, 0.5, toy[1])
    first, last = (h["training_accuracy"] for h in net.history)
    assert first == pytest.approx(one_epoch.accuracy(toy[0]))
    assert last == pytest.approx(net.accuracy(toy[0]))
