"""Segmentation metrics from a confusion matrix, streaming (Keras) and in numpy.

All scores come from one confusion matrix `cm` accumulated over every valid pixel seen
(rows: target class, columns: predicted class = argmax of the probabilities). Pixels labelled
`ignore_index` (255) are not counted. For class c, with TP_c = cm[c, c], G_c = row sum,
P_c = column sum:

- IoU_c = TP_c / (G_c + P_c - TP_c), dice_c = 2 TP_c / (G_c + P_c).
- A class is *present* if G_c + P_c > 0 (it appears in the target or the prediction).
  `mean_iou` and `dice` average over present classes only: a class absent from both has no
  defined IoU and is excluded, as in the standard (PASCAL VOC, Cityscapes) definition. A
  class that is predicted but absent from the target is present, with IoU 0.
- `iou_<class>` of a class absent from both is NaN (undefined); KerasTuner and the numpy
  summaries skip NaN.
- `pixel_accuracy` = trace(cm) / sum(cm).
- With nothing counted at all (every pixel ignored), `mean_iou`, `dice` and
  `pixel_accuracy` are 0.

The Keras metrics and `scores_from_confusion(confusion_matrix(...))` agree on the same data.
In a compiled graph, labels outside `[0, num_classes)` are not counted (like the losses);
the numpy `confusion_matrix` raises on them instead.
"""

from __future__ import annotations

import re
from typing import Sequence

import keras
import numpy as np
from keras import ops

from autoseg.errors import ConfigError, DatasetError


def confusion_matrix(y_true, y_pred, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Counts (target, predicted) class pairs over the non-ignored pixels.

    Args:
        y_true: Integer labels, any shape (e.g. `(N, H, W)` or `(N, H, W, 1)`).
        y_pred: Predicted class indices of the same shape as `y_true` (trailing 1 allowed),
            or probabilities with one more trailing axis of size `num_classes` (argmax taken).
        num_classes: Number of classes C.
        ignore_index: Label value that is not counted. Defaults to 255.

    Returns:
        An int64 array `(C, C)`; `cm[t, p]` is the number of pixels of class t predicted p.

    Raises:
        DatasetError: labels or predictions outside `[0, C)` (other than `ignore_index`), or
            shapes that do not match.

    Example:
    ```python
    cm = confusion_matrix(masks, model.predict(images), num_classes=3)
    scores_from_confusion(cm)["mean_iou"]
    ```
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    true_shapes = {y_true.shape}
    if y_true.shape[-1:] == (1,):
        true_shapes.add(y_true.shape[:-1])
    if (
        np.issubdtype(y_pred.dtype, np.floating)
        and y_pred.shape[-1:] == (num_classes,)
        and y_pred.shape[:-1] in true_shapes
    ):
        y_pred = np.argmax(y_pred, axis=-1)
    if y_pred.shape != y_true.shape:
        if y_true.shape[-1:] == (1,) and y_true.shape[:-1] == y_pred.shape:
            y_true = y_true[..., 0]
        elif y_pred.shape[-1:] == (1,) and y_pred.shape[:-1] == y_true.shape:
            y_pred = y_pred[..., 0]
    if y_pred.shape != y_true.shape:
        raise DatasetError(
            "Targets and predictions do not match. Received: "
            f"y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}. Give class indices of "
            "the target's shape or probabilities with one more axis of size num_classes."
        )
    y_true = y_true.astype(np.int64).ravel()
    y_pred = y_pred.astype(np.int64).ravel()
    valid = y_true != ignore_index
    y_true, y_pred = y_true[valid], y_pred[valid]
    for what, values in (("Labels", y_true), ("Predictions", y_pred)):
        bad = (values < 0) | (values >= num_classes)
        if bad.any():
            raise DatasetError(
                f"{what} must be class indices in [0, {num_classes}) or {ignore_index} "
                f"(ignore). Received: {sorted(set(values[bad].tolist()))[:10]}."
            )
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def scores_from_confusion(cm) -> dict:
    """Scores from a confusion matrix, as defined in the module docstring.

    Args:
        cm: A `(C, C)` array of counts, rows = target, columns = prediction.

    Returns:
        A dict with `mean_iou` (float), `per_class_iou` (float64 array `(C,)`, NaN for a class
        absent from target and prediction), `dice` (float) and `pixel_accuracy` (float).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    actual = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    union = actual + predicted - tp
    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class_iou = np.where(present, tp / union, np.nan)
        per_class_dice = np.where(present, 2 * tp / (actual + predicted), np.nan)
    total = cm.sum()
    return {
        "mean_iou": float(np.nanmean(per_class_iou)) if present.any() else 0.0,
        "per_class_iou": per_class_iou,
        "dice": float(np.nanmean(per_class_dice)) if present.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else 0.0,
    }


class ConfusionMatrixMetric(keras.metrics.Metric):
    """Base class: accumulates a `(C, C)` confusion matrix over batches.

    `update_state(y_true, y_pred, sample_weight=None)` takes integer labels `(B, H, W)` or
    `(B, H, W, 1)` and probabilities `(B, H, W, C)`; the argmax is the prediction.
    `sample_weight`, if given, must broadcast to `(B, H, W)` and weights each pixel's count.
    The matrix is kept in float64 so that counts stay exact past 2**24 pixels.

    Args:
        num_classes: Number of classes C.
        ignore_index: Label value that is not counted. Defaults to 255.
        name: Name of the metric (the history key).
        dtype: Dtype of the result. Defaults to float32.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype or "float32")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(
                f"num_classes must be a positive integer. Received: num_classes={num_classes!r}."
            )
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.total_cm = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="float64",
            name="total_confusion_matrix",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        labels = ops.cast(y_true, "int32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        c = self.num_classes
        valid = ops.logical_and(
            ops.not_equal(labels, self.ignore_index),
            ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, c)),
        )
        weights = ops.cast(valid, "float32")
        if sample_weight is not None:
            sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            while len(sample_weight.shape) < len(weights.shape):
                sample_weight = ops.expand_dims(sample_weight, -1)
            if len(sample_weight.shape) > len(weights.shape):
                sample_weight = ops.squeeze(sample_weight, axis=-1)
            weights = weights * sample_weight
        pair = ops.where(valid, labels, 0) * c + predicted
        counts = ops.segment_sum(
            ops.reshape(weights, (-1,)), ops.reshape(pair, (-1,)), num_segments=c * c
        )
        self.total_cm.assign_add(ops.cast(ops.reshape(counts, (c, c)), "float64"))

    def reset_state(self):
        self.total_cm.assign(ops.zeros((self.num_classes, self.num_classes), "float64"))

    def _sums(self):
        cm = ops.convert_to_tensor(self.total_cm)
        tp = ops.diagonal(cm)
        actual = ops.sum(cm, axis=1)
        predicted = ops.sum(cm, axis=0)
        return cm, tp, actual, predicted

    def _mean_over_present(self, numerator, denominator):
        present = ops.greater(denominator, 0)
        per_class = ops.where(present, numerator / ops.where(present, denominator, 1.0), 0.0)
        num_present = ops.sum(ops.cast(present, "float64"))
        mean = ops.sum(per_class) / ops.maximum(num_present, 1.0)
        return ops.cast(mean, self.dtype)

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "name": self.name,
            "dtype": self.dtype,
        }


@keras.saving.register_keras_serializable(package="autoseg")
class MeanIoU(ConfusionMatrixMetric):
    """Mean intersection over union over the classes present in target or prediction.

    Args:
        num_classes: Number of classes C.
        ignore_index: Label value that is not counted. Defaults to 255.
        name: Defaults to "mean_iou" (the leaderboard reads `val_mean_iou`).
        dtype: Dtype of the result. Defaults to float32.

    Example:
    ```python
    model.compile(optimizer="adam", loss=get_loss("ce", 3), metrics=[MeanIoU(3)])
    ```
    """

    def __init__(self, num_classes, ignore_index=255, name="mean_iou", dtype=None):
        super().__init__(num_classes, ignore_index, name, dtype)

    def result(self):
        _, tp, actual, predicted = self._sums()
        return self._mean_over_present(tp, actual + predicted - tp)


@keras.saving.register_keras_serializable(package="autoseg")
class ClassIoU(ConfusionMatrixMetric):
    """IoU of one class; NaN while the class is absent from target and prediction.

    Args:
        num_classes: Number of classes C.
        class_id: The class index in `[0, C)`.
        ignore_index: Label value that is not counted. Defaults to 255.
        name: Defaults to "iou_<class_id>"; `segmentation_metrics` names it
            "iou_<class name>".
        dtype: Dtype of the result. Defaults to float32.
    """

    def __init__(self, num_classes, class_id, ignore_index=255, name=None, dtype=None):
        super().__init__(num_classes, ignore_index, name or f"iou_{class_id}", dtype)
        if isinstance(class_id, bool) or not isinstance(class_id, int):
            raise ConfigError(f"class_id must be an integer. Received: class_id={class_id!r}.")
        if not 0 <= class_id < num_classes:
            raise ConfigError(
                f"class_id must be in [0, {num_classes}). Received: class_id={class_id}."
            )
        self.class_id = class_id

    def result(self):
        cm = ops.convert_to_tensor(self.total_cm)
        tp = cm[self.class_id, self.class_id]
        union = ops.sum(cm[self.class_id, :]) + ops.sum(cm[:, self.class_id]) - tp
        present = ops.greater(union, 0)
        iou = ops.where(present, tp / ops.where(present, union, 1.0), float("nan"))
        return ops.cast(iou, self.dtype)

    def get_config(self):
        return {**super().get_config(), "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="autoseg")
class Dice(ConfusionMatrixMetric):
    """Mean dice (F1) over the classes present in target or prediction.

    Args:
        num_classes: Number of classes C.
        ignore_index: Label value that is not counted. Defaults to 255.
        name: Defaults to "dice".
        dtype: Dtype of the result. Defaults to float32.
    """

    def __init__(self, num_classes, ignore_index=255, name="dice", dtype=None):
        super().__init__(num_classes, ignore_index, name, dtype)

    def result(self):
        _, tp, actual, predicted = self._sums()
        return self._mean_over_present(2.0 * tp, actual + predicted)


@keras.saving.register_keras_serializable(package="autoseg")
class PixelAccuracy(ConfusionMatrixMetric):
    """Fraction of non-ignored pixels whose argmax is the target class.

    Args:
        num_classes: Number of classes C.
        ignore_index: Label value that is not counted. Defaults to 255.
        name: Defaults to "pixel_accuracy".
        dtype: Dtype of the result. Defaults to float32.
    """

    def __init__(self, num_classes, ignore_index=255, name="pixel_accuracy", dtype=None):
        super().__init__(num_classes, ignore_index, name, dtype)

    def result(self):
        cm, tp, _, _ = self._sums()
        total = ops.sum(cm)
        accuracy = ops.where(total > 0, ops.sum(tp) / ops.where(total > 0, total, 1.0), 0.0)
        return ops.cast(accuracy, self.dtype)


def sanitise_class_name(name: str) -> str:
    """Lower-cases a class name and turns every run of characters outside [a-z0-9] into "_".

    Example: `sanitise_class_name("Weed (broad-leaf)")` is `"weed_broad_leaf"`.
    """
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def class_metric_names(class_names: Sequence[str]) -> list[str]:
    """The `iou_<class>` names `segmentation_metrics` gives, one per class, unique.

    An empty sanitised name becomes `class<i>`; a name that collides with an earlier one gets
    `_<i>` appended (i = class index).
    """
    names = []
    for i, class_name in enumerate(class_names):
        name = "iou_" + (sanitise_class_name(class_name) or f"class{i}")
        if name in names:
            name = f"{name}_{i}"
        names.append(name)
    return names


def segmentation_metrics(
    class_names: Sequence[str], ignore_index: int = 255
) -> list[keras.metrics.Metric]:
    """The metrics every model is compiled with, in leaderboard order.

    Args:
        class_names: One name per class, class index order.
        ignore_index: Label value that is not counted. Defaults to 255.

    Returns:
        `[MeanIoU ("mean_iou"), ClassIoU ("iou_<class>") per class, Dice ("dice"),
        PixelAccuracy ("pixel_accuracy")]`; with validation data Keras logs them as
        `val_mean_iou`, `val_iou_<class>`, ...

    Raises:
        ConfigError: no class names.

    Example:
    ```python
    segmentation_metrics(["background", "Crop", "weed (broad-leaf)"])
    # names: mean_iou, iou_background, iou_crop, iou_weed_broad_leaf, dice, pixel_accuracy
    ```
    """
    class_names = list(class_names)
    if not class_names:
        raise ConfigError("segmentation_metrics needs at least one class name. Received: [].")
    num_classes = len(class_names)
    return [
        MeanIoU(num_classes, ignore_index),
        *(
            ClassIoU(num_classes, i, ignore_index, name=name)
            for i, name in enumerate(class_metric_names(class_names))
        ),
        Dice(num_classes, ignore_index),
        PixelAccuracy(num_classes, ignore_index),
    ]
