"""Segmentation losses on softmax probabilities, with an ignore label.

Every loss takes integer labels `y_true` of shape `(B, H, W)` (or `(B, H, W, 1)`) and softmax
probabilities `y_pred` of shape `(B, H, W, C)`, and returns a scalar. Pixels labelled
`ignore_index` (255) count nowhere: not in a numerator, not in a denominator. Labels outside
`[0, num_classes)` are treated like `ignore_index`; masks are validated when a dataset is
loaded, and inside a compiled graph there is nowhere to raise.

Two kinds of loss:

- Pixel losses (`ce`, `weighted_ce`, `focal`) sum a per-pixel term over the valid pixels of
  the batch and divide by their number. A batch with no valid pixel gives 0.
- Region losses (`dice`, `jaccard`, `tversky`) first sum, over the valid pixels of the whole
  batch and per class c, TP_c = sum(p_c * g_c), |P_c| = sum(p_c), |G_c| = sum(g_c)
  (p: probabilities, g: one-hot target), FP_c = |P_c| - TP_c and FN_c = |G_c| - TP_c. The
  loss is the mean, over the classes present in the batch's valid target (|G_c| > 0), of
  `1 - score_c`, e.g. for dice `1 - (2 TP_c + s) / (|P_c| + |G_c| + s)` with `s = 1`.
  A class absent from the target has no term of its own: probability it wrongly receives is
  taken from the true class, whose TP falls, so it is still penalised. Averaging only over
  present classes keeps a correct prediction at 0 whatever classes a batch lacks. A batch with
  no valid pixel gives 0.

`ce_dice` is `ce + dice`; `weighted_ce_dice` is `weighted_ce + dice`. Losses are registered
by name in `autoseg.registry.LOSSES` as factories `factory(num_classes, class_weights=None,
ignore_index=255)`; only the losses of `CLASS_WEIGHTING` use `class_weights`, so `ce` against
`weighted_ce` is the search's choice of weighting. `CLASS_WEIGHTING` also names the weights
each wants (`autoseg.data.pipeline.class_weights`' method): SegNet's median frequency for
`weighted_ce`, its square root for `weighted_ce_dice`, whose dice term already balances the
classes (on CamVid, median-frequency weights made pole and sign appear but took building from
0.44 to 0.14 IoU: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
from keras import ops

from autoseg.errors import ConfigError
from autoseg.registry import LOSSES, register_loss

EPSILON = 1e-7
"""Probabilities are clipped to [EPSILON, 1] before a logarithm."""

#: The losses that take class weights, and the `pipeline.class_weights` method of each.
CLASS_WEIGHTING = {"weighted_ce": "median_frequency", "weighted_ce_dice": "sqrt_median_frequency"}


def replica_share(loss):
    """A loss over one replica's batch, divided by the replicas in sync, as Keras' own are.

    Under a `tf.distribute` strategy the replicas' gradients are summed, and Keras reports
    the loss multiplied back by the replicas. A loss that is a mean over its replica's
    share of the batch must therefore be divided by them, or the gradients and the reported
    loss grow with the replicas. Outside any strategy (one replica) `loss` is unchanged.
    """
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * (1.0 / replicas)


def _validate_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"num_classes must be a positive integer. Received: num_classes={num_classes!r}."
        )
    return num_classes


def _validate_class_weights(class_weights, num_classes: int) -> list[float] | None:
    if class_weights is None:
        return None
    try:
        weights = [float(w) for w in class_weights]
    except (TypeError, ValueError):
        raise ConfigError(
            "class_weights must be a sequence of numbers, one per class. "
            f"Received: class_weights={class_weights!r}."
        ) from None
    if len(weights) != num_classes:
        raise ConfigError(
            f"class_weights has {len(weights)} entries but there are {num_classes} classes. "
            f"Received: class_weights={weights}. Give one weight per class."
        )
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise ConfigError(
            "class_weights must be finite, non-negative and not all zero. "
            f"Received: class_weights={weights}."
        )
    return weights


def _labels_and_weights(y_true, y_pred, num_classes, ignore_index, sample_weight=None):
    """Returns `(one_hot, pixel_weight)`: `(B, H, W, C)` and `(B, H, W)`, both float32.

    `pixel_weight` is 0 on ignored (or out-of-range) pixels, otherwise 1, times
    `sample_weight` broadcast to `(B, H, W)` if given.
    """
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    labels = ops.cast(y_true, "int32")
    valid = ops.logical_and(
        ops.not_equal(labels, ignore_index),
        ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, num_classes)),
    )
    one_hot = ops.one_hot(ops.where(valid, labels, 0), num_classes, dtype="float32")
    pixel_weight = ops.cast(valid, "float32")
    one_hot = one_hot * pixel_weight[..., None]
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        # A per-image weight (B,) or (B, 1) must broadcast over (B, H, W).
        while len(sample_weight.shape) < len(pixel_weight.shape):
            sample_weight = ops.expand_dims(sample_weight, -1)
        if len(sample_weight.shape) > len(pixel_weight.shape):
            sample_weight = ops.squeeze(sample_weight, axis=-1)
        pixel_weight = pixel_weight * sample_weight
    return one_hot, pixel_weight


class SegmentationLoss(keras.losses.Loss):
    """Base class: integer labels with an ignore label against softmax probabilities.

    Subclasses implement `compute(one_hot, probabilities, pixel_weight, num_valid)` and return
    a scalar. `sample_weight`, if given, must broadcast to `(B, H, W)` and multiplies each
    pixel's contribution; normalisation stays by the number of valid pixels.

    Args:
        num_classes: Number of classes C (the last axis of `y_pred`).
        ignore_index: Label value that no term counts. Defaults to 255.
        name: Name of the loss.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, name: str | None = None):
        super().__init__(name=name, reduction="sum_over_batch_size", dtype="float32")
        self.num_classes = _validate_num_classes(num_classes)
        self.ignore_index = int(ignore_index)

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
            y_true = ops.convert_to_tensor(y_true)
            one_hot, pixel_weight = _labels_and_weights(
                y_true, y_pred, self.num_classes, self.ignore_index, sample_weight
            )
            num_valid = ops.sum(ops.cast(ops.greater(ops.sum(one_hot, axis=-1), 0), "float32"))
            return replica_share(self.compute(one_hot, y_pred, pixel_weight, num_valid))

    def call(self, y_true, y_pred):
        return self(y_true, y_pred)

    def compute(self, one_hot, probabilities, pixel_weight, num_valid):
        raise NotImplementedError

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="autoseg")
class CrossEntropyLoss(SegmentationLoss):
    """Sparse categorical cross-entropy, optionally class-weighted, ignoring `ignore_index`.

    `loss = sum_i w_{y_i} * -log(p_i[y_i]) / N`, over the N valid pixels i of the batch,
    where `w` is `class_weights` (all 1 if None). With weights, normalisation is still by N.

    Args:
        num_classes: Number of classes C.
        class_weights: One non-negative weight per class, or None. Defaults to None.
        ignore_index: Label value that counts nowhere. Defaults to 255.
        name: Name of the loss. Defaults to "ce".

    Example:
    ```python
    loss = CrossEntropyLoss(3)
    loss(np.array([[[0, 255]]]), np.array([[[[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]]]))
    # -log(0.9) = 0.105: the pixel labelled 255 does not count.
    ```
    """

    def __init__(self, num_classes, class_weights=None, ignore_index=255, name="ce"):
        super().__init__(num_classes, ignore_index, name)
        self.class_weights = _validate_class_weights(class_weights, self.num_classes)
        self.weight_variable = None  # `switchable_weights`

    def _pixel_terms(self, one_hot, probabilities):
        """Per-pixel -log(p_true) times the class weight, with p_true."""
        p_true = ops.sum(one_hot * probabilities, axis=-1)
        log_p = ops.log(ops.clip(p_true, EPSILON, 1.0))
        weights = self.weight_variable if self.weight_variable is not None else self.class_weights
        if weights is not None:
            weights = ops.cast(ops.convert_to_tensor(weights), "float32")
            log_p = log_p * ops.sum(one_hot * weights, axis=-1)
        return -log_p, p_true

    def compute(self, one_hot, probabilities, pixel_weight, num_valid):
        terms, _ = self._pixel_terms(one_hot, probabilities)
        return ops.sum(terms * pixel_weight) / ops.maximum(num_valid, 1.0)

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="autoseg")
class FocalLoss(CrossEntropyLoss):
    """Focal loss (Lin et al., 2017): `(1 - p_true)^gamma * -log(p_true)`, per valid pixel.

    Normalised like `CrossEntropyLoss`; `gamma = 0` is cross-entropy. `class_weights` play the
    role of the paper's alpha.

    Args:
        num_classes: Number of classes C.
        gamma: Focusing exponent. Defaults to 2.
        class_weights: One weight per class, or None. Defaults to None.
        ignore_index: Label value that counts nowhere. Defaults to 255.
        name: Name of the loss. Defaults to "focal".
    """

    def __init__(self, num_classes, gamma=2.0, class_weights=None, ignore_index=255, name="focal"):
        super().__init__(num_classes, class_weights, ignore_index, name)
        if not (isinstance(gamma, (int, float)) and gamma >= 0):
            raise ConfigError(f"gamma must be a number >= 0. Received: gamma={gamma!r}.")
        self.gamma = float(gamma)

    def compute(self, one_hot, probabilities, pixel_weight, num_valid):
        terms, p_true = self._pixel_terms(one_hot, probabilities)
        modulating = ops.power(1.0 - ops.clip(p_true, 0.0, 1.0), self.gamma)
        return ops.sum(modulating * terms * pixel_weight) / ops.maximum(num_valid, 1.0)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


class RegionLoss(SegmentationLoss):
    """Base class of the overlap losses: `mean over present classes of 1 - score_c`.

    See the module docstring for the definition. Subclasses implement
    `score(tp, fp, fn)` on per-class sums.

    Args:
        num_classes: Number of classes C.
        smooth: Added to numerator and denominator of every score. Defaults to 1.
        ignore_index: Label value that counts nowhere. Defaults to 255.
        name: Name of the loss.
    """

    def __init__(self, num_classes, smooth=1.0, ignore_index=255, name=None):
        super().__init__(num_classes, ignore_index, name)
        if not (isinstance(smooth, (int, float)) and smooth > 0):
            raise ConfigError(f"smooth must be a number > 0. Received: smooth={smooth!r}.")
        self.smooth = float(smooth)

    def score(self, tp, fp, fn):
        raise NotImplementedError

    def compute(self, one_hot, probabilities, pixel_weight, num_valid):
        probabilities = ops.clip(probabilities, 0.0, 1.0) * pixel_weight[..., None]
        target = one_hot * pixel_weight[..., None]
        axes = tuple(range(len(probabilities.shape) - 1))
        tp = ops.sum(probabilities * target, axis=axes)
        predicted = ops.sum(probabilities, axis=axes)
        actual = ops.sum(target, axis=axes)
        per_class = 1.0 - self.score(tp, predicted - tp, actual - tp)
        present = ops.cast(ops.greater(actual, 0.0), "float32")
        return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="autoseg")
class DiceLoss(RegionLoss):
    """Soft multi-class dice loss: `1 - (2 TP_c + s) / (|P_c| + |G_c| + s)`, mean over the
    classes present in the batch's target.

    Args:
        num_classes: Number of classes C.
        smooth: Smoothing s. Defaults to 1.
        ignore_index: Label value that counts nowhere. Defaults to 255.
        name: Name of the loss. Defaults to "dice".
    """

    def __init__(self, num_classes, smooth=1.0, ignore_index=255, name="dice"):
        super().__init__(num_classes, smooth, ignore_index, name)

    def score(self, tp, fp, fn):
        return (2.0 * tp + self.smooth) / (2.0 * tp + fp + fn + self.smooth)


@keras.saving.register_keras_serializable(package="autoseg")
class JaccardLoss(RegionLoss):
    """Soft Jaccard (IoU) loss: `1 - (TP_c + s) / (TP_c + FP_c + FN_c + s)`, mean over the
    classes present in the batch's target.

    Args:
        num_classes: Number of classes C.
        smooth: Smoothing s. Defaults to 1.
        ignore_index: Label value that counts nowhere. Defaults to 255.
        name: Name of the loss. Defaults to "jaccard".
    """

    def __init__(self, num_classes, smooth=1.0, ignore_index=255, name="jaccard"):
        super().__init__(num_classes, smooth, ignore_index, name)

    def score(self, tp, fp, fn):
        return (tp + self.smooth) / (tp + fp + fn + self.smooth)


@keras.saving.register_keras_serializable(package="autoseg")
class TverskyLoss(RegionLoss):
    """Tversky loss (Salehi et al., 2017): `1 - (TP + s) / (TP + alpha FP + beta FN + s)`.

    `beta > alpha` weighs missed pixels above false alarms, which favours recall of small
    classes; alpha = beta = 0.5 is dice, alpha = beta = 1 is Jaccard.

    Args:
        num_classes: Number of classes C.
        alpha: Weight of false positives. Defaults to 0.3.
        beta: Weight of false negatives. Defaults to 0.7.
        smooth: Smoothing s. Defaults to 1.
        ignore_index: Label value that counts nowhere. Defaults to 255.
        name: Name of the loss. Defaults to "tversky".
    """

    def __init__(
        self, num_classes, alpha=0.3, beta=0.7, smooth=1.0, ignore_index=255, name="tversky"
    ):
        super().__init__(num_classes, smooth, ignore_index, name)
        for key, value in (("alpha", alpha), ("beta", beta)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ConfigError(f"{key} must be a number >= 0. Received: {key}={value!r}.")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def score(self, tp, fp, fn):
        return (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


@keras.saving.register_keras_serializable(package="autoseg")
class CrossEntropyDiceLoss(SegmentationLoss):
    """`CrossEntropyLoss + DiceLoss`, unweighted sum; the cross-entropy optionally class-weighted.

    Args:
        num_classes: Number of classes C.
        smooth: Dice smoothing. Defaults to 1.
        ignore_index: Label value that counts nowhere. Defaults to 255.
        name: Name of the loss. Defaults to "ce_dice".
        class_weights: One non-negative weight per class for the cross-entropy term, or None.
            Defaults to None.
    """

    def __init__(self, num_classes, smooth=1.0, ignore_index=255, name="ce_dice",
                 class_weights=None):
        super().__init__(num_classes, ignore_index, name)
        self.ce = CrossEntropyLoss(num_classes, class_weights, ignore_index=ignore_index)
        self.dice = DiceLoss(num_classes, smooth=smooth, ignore_index=ignore_index)

    def compute(self, one_hot, probabilities, pixel_weight, num_valid):
        return self.ce.compute(one_hot, probabilities, pixel_weight, num_valid) + (
            self.dice.compute(one_hot, probabilities, pixel_weight, num_valid)
        )

    def get_config(self):
        return {**super().get_config(), "smooth": self.dice.smooth,
                "class_weights": self.ce.class_weights}


def switchable_weights(loss: CrossEntropyDiceLoss):
    """Holds the class weights of `loss`'s cross-entropy in a variable, all 1 (`loss` computes
    what it did), and returns it: a compiled training step reads it at every step, so weights
    assigned to it during training (`autoseg.rebalance`) act from the next step without
    tracing the step again. Create it under the model's distribution strategy, before training.

    Raises:
        ValueError: `loss` is not an unweighted `CrossEntropyDiceLoss`.
    """
    if not isinstance(loss, CrossEntropyDiceLoss) or loss.ce.class_weights is not None:
        raise ValueError("switchable_weights needs an unweighted CrossEntropyDiceLoss. "
                         f"Received: {loss!r}.")
    if loss.ce.weight_variable is None:
        loss.ce.weight_variable = keras.Variable([1.0] * loss.num_classes, dtype="float32",
                                                 trainable=False, name="class_weights")
    return loss.ce.weight_variable


@register_loss("ce")
def _ce(num_classes, class_weights=None, ignore_index=255):
    """Unweighted cross-entropy; `class_weights` is ignored (that is `weighted_ce`)."""
    return CrossEntropyLoss(num_classes, ignore_index=ignore_index, name="ce")


def _needs_weights(name: str, class_weights, unweighted: str) -> None:
    if class_weights is None:
        raise ConfigError(
            f"The loss {name!r} needs class_weights (one per class, e.g. from median "
            "frequency balancing of the training masks). Received: class_weights=None. "
            f"Pass class_weights or choose the loss {unweighted!r}."
        )


@register_loss("weighted_ce")
def _weighted_ce(num_classes, class_weights=None, ignore_index=255):
    _needs_weights("weighted_ce", class_weights, "ce")
    return CrossEntropyLoss(num_classes, class_weights, ignore_index, name="weighted_ce")


@register_loss("focal")
def _focal(num_classes, class_weights=None, ignore_index=255):
    return FocalLoss(num_classes, gamma=2.0, ignore_index=ignore_index)


@register_loss("dice")
def _dice(num_classes, class_weights=None, ignore_index=255):
    return DiceLoss(num_classes, ignore_index=ignore_index)


@register_loss("ce_dice")
def _ce_dice(num_classes, class_weights=None, ignore_index=255):
    return CrossEntropyDiceLoss(num_classes, ignore_index=ignore_index)


@register_loss("weighted_ce_dice")
def _weighted_ce_dice(num_classes, class_weights=None, ignore_index=255):
    _needs_weights("weighted_ce_dice", class_weights, "ce_dice")
    return CrossEntropyDiceLoss(num_classes, ignore_index=ignore_index, name="weighted_ce_dice",
                                class_weights=class_weights)


@register_loss("jaccard")
def _jaccard(num_classes, class_weights=None, ignore_index=255):
    return JaccardLoss(num_classes, ignore_index=ignore_index)


@register_loss("tversky")
def _tversky(num_classes, class_weights=None, ignore_index=255):
    return TverskyLoss(num_classes, alpha=0.3, beta=0.7, ignore_index=ignore_index)


def get_loss(
    name: str,
    num_classes: int,
    class_weights: Sequence[float] | None = None,
    ignore_index: int = 255,
) -> keras.losses.Loss:
    """Builds the registered loss `name`.

    Args:
        name: A key of `autoseg.registry.LOSSES` ("ce", "weighted_ce", "focal", "dice",
            "ce_dice", "weighted_ce_dice", "jaccard", "tversky"); case-insensitive.
        num_classes: Number of classes C.
        class_weights: One weight per class. Only the losses of `CLASS_WEIGHTING` use them
            (and require them); the other losses ignore them. Defaults to None.
        ignore_index: Label value that counts nowhere. Defaults to 255.

    Returns:
        A serializable `keras.losses.Loss` returning a scalar.

    Raises:
        ConfigError: unknown name, bad `num_classes`, or bad or missing `class_weights`.

    Example:
    ```python
    model.compile(optimizer="adam", loss=get_loss("ce_dice", num_classes=3))
    ```
    """
    return LOSSES.get(name)(num_classes, class_weights=class_weights, ignore_index=ignore_index)
