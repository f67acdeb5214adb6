"""The moving average of the weights (`autoseg.weight_average`): what a fit trains, judges
and keeps."""

import keras
import numpy as np
import pytest

from autoseg.weight_average import WeightAverage


class _Watch(keras.callbacks.Callback):
    """Records the model's weights where each event sees them."""

    def __init__(self):
        super().__init__()
        self.raw_after_batch, self.at_test, self.at_epoch_end, self.at_epoch_begin = [], [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.raw_after_batch.append(self.model.get_weights())

    def on_test_begin(self, logs=None):
        self.at_test.append(self.model.get_weights())

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end.append(self.model.get_weights())

    def on_epoch_begin(self, epoch, logs=None):
        self.at_epoch_begin.append(self.model.get_weights())


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.5)(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _expected_average(averager, raw_after_batch, first, steps_per_epoch):
    average = [w.copy() for w in first]
    for step, weights in enumerate(raw_after_batch):
        m = averager.momentum(step, steps_per_epoch)
        average = [m * a + (1 - m) * w for a, w in zip(average, weights)]
    return average


def test_the_average_is_judged_and_kept_while_the_raw_weights_train():
    model = _model()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)), rng.normal(size=(32, 2))
    first = model.get_weights()
    averager, watch = WeightAverage(horizon_epochs=1.5), _Watch()
    model.fit(x, y, batch_size=8, epochs=3, validation_data=(x, y), verbose=0,
              callbacks=[averager, watch], shuffle=False)
    steps = 4
    # Every weight (BatchNorm's moving statistics too) is averaged; validation, the end of
    # each epoch (where a checkpoint follows) and the end of training see the average.
    for epoch in range(3):
        expected = _expected_average(averager, watch.raw_after_batch[:steps * (epoch + 1)],
                                     first, steps)
        for seen in (watch.at_test[epoch], watch.at_epoch_end[epoch]):
            for got, want in zip(seen, expected):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    final = _expected_average(averager, watch.raw_after_batch, first, steps)
    for got, want in zip(model.get_weights(), final):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Each epoch trains on from the raw weights, not from the average.
    for epoch in (1, 2):
        for got, want in zip(watch.at_epoch_begin[epoch], watch.raw_after_batch[steps * epoch - 1]):
            np.testing.assert_array_equal(got, want)
    assert not np.allclose(watch.at_epoch_end[0][0], watch.raw_after_batch[steps - 1][0])


def test_the_average_is_kept_when_training_stops_early():
    model = _model()
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 2))
    first = model.get_weights()

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True  # as TimeBudget does

    averager, watch = WeightAverage(horizon_epochs=2), _Watch()
    model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[averager, watch, Stop()])
    assert len(watch.at_epoch_end) == 1
    for got, want in zip(model.get_weights(),
                         _expected_average(averager, watch.raw_after_batch, first, 4)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_momentum_warms_up_to_the_horizon():
    averager = WeightAverage(horizon_epochs=2)
    assert averager.momentum(0, 16) == pytest.approx(0.1)
    assert averager.momentum(10_000, 16) == pytest.approx(1 - 1 / 32)
    assert averager.momentum(10_000, 1) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        WeightAverage(0)


def test_a_continued_average_goes_on_at_the_horizons_momentum():
    """A continued trial starts from its past trial's average: its first steps do not push
    the starting point out of the average as a warm-up would."""
    continued = WeightAverage(horizon_epochs=2, continued=True)
    assert continued.momentum(0, 16) == pytest.approx(1 - 1 / 32)
    model = _model()
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 2))
    first = model.get_weights()
    watch = _Watch()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[continued, watch],
              shuffle=False)
    expected = _expected_average(continued, watch.raw_after_batch, first, 4)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Four steps at momentum 7/8 keep 0.59 of the starting point (a warm-up keeps 0.002).
    kept = np.prod([continued.momentum(n, 4) for n in range(4)])
    assert kept == pytest.approx((7 / 8) ** 4)
