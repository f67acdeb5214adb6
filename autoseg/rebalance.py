"""Class weights turned on during training when a trial does not learn some classes (`rebalance`).

What a person watching the first epochs would do. On CamVid the plan's recipe (a U-Net with
`ce_dice`) predicts none of pole, sign, fence, pedestrian or bicyclist, even on its own
training crops, for its first 25 epochs and more; trained from the start with
`weighted_ce_dice` (the cross-entropy weighted by the square root of median frequency) it
scores +0.026 and +0.011 mIoU on two seeds. On CWFID the same weighting costs 0.024: there
`ce_dice` learns the rare class (crop, 1.6 % of the pixels) within 3-4 epochs, and the
weights only make it predict more crop. The class shares do not tell the two datasets apart
(pole is ~1 % of CamVid's pixels); the trial's own per-class scores do. The recipe that
rebalances itself after 14 of its ~62 epochs scored +0.020 and +0.027 on CamVid's two seeds
(benchmarks/RESULTS.md, "the recipe that rebalances itself").

`Rebalance` is a Keras callback for a trial whose loss has a weighted form (`plan.REBALANCED`:
`ce_dice` -> `weighted_ce_dice`) and whose `rebalance` is `auto` (`plan.rebalances`). At the
end of epoch `plan.rebalance_epoch(target)` (a fifth of the epochs the trial aims at, at least
`plan.MIN_REBALANCE_EPOCH`) it reads the epoch's per-class IoUs,
`iou_<class>` on the training crops and `val_iou_<class>` on the validation photos. When
`plan.missed_classes` finds classes under `plan.MISSED_IOU` on both, it sets the loss's class
weights (`losses.switchable_weights`: a variable the compiled step reads, so nothing is traced
again) to the weighted form's, for the rest of the trial, and says so in the trial's record
(`RECORD_KEY`): the epoch, the classes and the loss it now trains with. It decides once.
Only a trial that starts from scratch decides: one that continues a trial (a fork, the
finish) trains with the loss its past trial ended with (`continued_values`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras

from autoseg.plan import MISSED_IOU, missed_classes, rebalance_epoch

#: The key of a trial's record (`trials/trial_<id>/autoseg.json`) that says it rebalanced.
RECORD_KEY = "rebalanced"


def continued_values(values: dict, record: dict) -> dict:
    """A past trial's hyperparameter values as a trial that continues it trains: with the loss
    it ended with (the weighted form, when its record says it rebalanced)."""
    switched = (record or {}).get(RECORD_KEY)
    if not switched:
        return dict(values)
    return {**values, "loss": switched["loss"]}


def describe(switched: dict) -> str:
    """The line that says a trial rebalanced (its log, the search's log)."""
    return (f"rebalanced after epoch {switched['epoch']}: {', '.join(switched['classes'])} "
            f"under {MISSED_IOU:g} IoU on the training crops and validation photos, "
            f"so {switched['loss']} from here")


class Rebalance(keras.callbacks.Callback):
    """Sets a loss's class weights once the scores show classes it misses; see the module.

    Args:
        variable: The loss's class weights (`losses.switchable_weights`), all 1 until then.
        weights: The weights to set, one per class.
        loss: The name of the loss the weights make (recorded).
        target: The epoch count the trial aims at (a callable: a time budget moves it).
        record: The trial's record; gets `RECORD_KEY` when the weights are set.
        log: Where the line that says so goes (the trial's log).
    """

    def __init__(self, variable, weights: Sequence[float], loss: str,
                 target: Callable[[], int | None], record: dict,
                 log: Callable[[str], None] = print):
        super().__init__()
        self.variable = variable
        self.weights = [float(w) for w in weights]
        self.loss = loss
        self.target = target
        self.record = record
        self.log = log
        self.decided = False

    def on_epoch_end(self, epoch, logs=None):
        at = rebalance_epoch(self.target())
        if self.decided or at is None or epoch + 1 < at:
            return
        self.decided = True
        missed = missed_classes({k: float(v) for k, v in (logs or {}).items()
                                 if hasattr(v, "__float__")})
        if not missed:
            return
        self.variable.assign(self.weights)
        self.record[RECORD_KEY] = {"epoch": epoch + 1, "classes": missed, "loss": self.loss}
        self.log(describe(self.record[RECORD_KEY]))
