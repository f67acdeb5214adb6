"""An exponential moving average of a model's weights during training (`weight_ema`).

Short trainings on small data end with weights that swing from one epoch to the next: on
CWFID the 16-filter U-Net's validation mIoU moved between 0.63 and 0.72 over its last seven
epochs at a learning rate already near the cosine floor (RESULTS.md). An average of the
weights over the last epochs is the usual cure (Polyak averaging; SWA; timm's ModelEma).

`WeightAverage` keeps the average of every weight of the model — the trainable ones and
BatchNorm's moving statistics, as timm does, so the statistics match the averaged weights —
and puts it in the model wherever the model is judged or saved: during validation, at the end
of each epoch (so that KerasTuner's checkpoint and the objective are the average's), and
after training. Training itself steps the raw weights. Keras' own `use_ema` averages only
the trainable weights and its `SwapEMAWeights` assumes training runs its planned epochs,
which a time budget does not guarantee.

The horizon is given in epochs: after n steps the momentum is
`min(1 - 1 / (horizon * steps_per_epoch), (1 + n) / (10 + n))`, so early weights leave the
average quickly and a horizon means the same thing whatever the dataset's size. A continued
trial (`continued=True`) starts from its past trial's checkpoint, which is that trial's
average: its average goes on at the horizon's momentum from the first step. Warming up
again, the first epoch's average would hold little more than that epoch's last steps: on
CamVid a fork that continued the recipe read 0.272 val mIoU after its first epoch against
the recipe's 0.293 (RESULTS.md, "Adam's moments and the weight average across a lineage").
"""

from __future__ import annotations

import keras


class WeightAverage(keras.callbacks.Callback):
    """Averages `model.weights` over about `horizon_epochs` epochs; see the module."""

    def __init__(self, horizon_epochs: float, continued: bool = False):
        super().__init__()
        if horizon_epochs <= 0:
            raise ValueError(f"horizon_epochs must be > 0, got {horizon_epochs}")
        self.horizon_epochs = float(horizon_epochs)
        self.continued = continued
        self._average: list | None = None
        self._steps = 0
        self._average_in_model = False

    def momentum(self, step: int, steps_per_epoch: int) -> float:
        """The averaging momentum at `step` (0-based count of updates so far)."""
        target = 1.0 - 1.0 / max(1.0, self.horizon_epochs * max(1, steps_per_epoch))
        if self.continued:
            return target
        return min(target, (1.0 + step) / (10.0 + step))

    def on_train_begin(self, logs=None):
        self._average = [keras.Variable(w, trainable=False, name=f"average_{i}")
                         for i, w in enumerate(self._weights())]
        self._steps = 0
        self._average_in_model = False

    def on_train_batch_end(self, batch, logs=None):
        m = self.momentum(self._steps, int(self.params.get("steps") or 1))
        for average, weight in zip(self._average, self._weights()):
            average.assign(m * average + (1.0 - m) * keras.ops.cast(weight, average.dtype))
        self._steps += 1

    def on_epoch_begin(self, epoch, logs=None):
        self._use_raw()

    def on_test_begin(self, logs=None):
        self._use_average()

    def on_test_end(self, logs=None):
        self._use_raw()

    def on_epoch_end(self, epoch, logs=None):
        self._use_average()  # before the checkpoint callbacks that follow this one

    def on_train_end(self, logs=None):
        self._use_average()

    def _weights(self) -> list:
        return [w for w in self.model.weights if w.dtype in ("float32", "float16", "bfloat16")
                and "seed_generator" not in w.path]

    def _swap(self) -> None:
        for average, weight in zip(self._average, self._weights()):
            raw = keras.ops.convert_to_numpy(weight)  # a copy: a tensor may alias the variable
            weight.assign(keras.ops.cast(average, weight.dtype))
            average.assign(keras.ops.cast(raw, average.dtype))
        self._average_in_model = not self._average_in_model

    def _use_average(self) -> None:
        if self._average is not None and self._steps and not self._average_in_model:
            self._swap()

    def _use_raw(self) -> None:
        if self._average is not None and self._average_in_model:
            self._swap()
