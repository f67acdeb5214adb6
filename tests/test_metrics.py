"""Streaming metrics and the numpy scores against a per-class reference and hand values."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from autoseg import metrics
from autoseg.errors import ConfigError, DatasetError


def reference(y, pred, c):
    """Per-class IoU/dice by boolean masks (not through a confusion matrix)."""
    valid = y != 255
    ious, dices = [], []
    for k in range(c):
        t, p = (y == k) & valid, (pred == k) & valid
        union = (t | p).sum()
        ious.append((t & p).sum() / union if union else math.nan)
        dices.append(2 * (t & p).sum() / (t.sum() + p.sum()) if union else math.nan)
    return {
        "per_class_iou": np.array(ious),
        "mean_iou": float(np.nanmean(ious)),
        "dice": float(np.nanmean(dices)),
        "pixel_accuracy": float((y == pred)[valid].mean()),
    }


def probabilities(pred, c, rng=None):
    """Probabilities whose argmax is `pred`."""
    rng = rng or np.random.default_rng(0)
    p = rng.uniform(0, 0.4, pred.shape + (c,))
    np.put_along_axis(p, pred[..., None], 1.0, axis=-1)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def keras_scores(y, p, c, updates=None):
    """Results of the four Keras metrics after update_state on each (y, p) in `updates`."""
    ms = [metrics.MeanIoU(c), metrics.Dice(c), metrics.PixelAccuracy(c)]
    ms += [metrics.ClassIoU(c, k) for k in range(c)]
    for y_part, p_part in updates or [(y, p)]:
        for m in ms:
            m.update_state(y_part, p_part)
    return {
        "mean_iou": float(ms[0].result()),
        "dice": float(ms[1].result()),
        "pixel_accuracy": float(ms[2].result()),
        "per_class_iou": np.array([float(m.result()) for m in ms[3:]]),
    }


def assert_scores_equal(got, want):
    for key in ("mean_iou", "dice", "pixel_accuracy"):
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), key
    np.testing.assert_allclose(got["per_class_iou"], want["per_class_iou"], rtol=1e-6)


@pytest.fixture
def case():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, (2, 6, 7))
    pred = np.where(rng.random(y.shape) < 0.6, y, rng.integers(0, 3, y.shape))
    y[1, :2, :] = 255
    return y, pred


def test_hand_computed_partial():
    y = np.array([[[0, 0, 1, 1]]])
    pred = np.array([[[0, 1, 1, 1]]])
    want = {
        "per_class_iou": np.array([1 / 2, 2 / 3]),
        "mean_iou": (1 / 2 + 2 / 3) / 2,
        "dice": (2 / 3 + 4 / 5) / 2,
        "pixel_accuracy": 3 / 4,
    }
    assert_scores_equal(metrics.scores_from_confusion(metrics.confusion_matrix(y, pred, 2)), want)
    assert_scores_equal(keras_scores(y, probabilities(pred, 2), 2), want)
    np.testing.assert_array_equal(metrics.confusion_matrix(y, pred, 2), [[1, 1], [0, 2]])


def test_partial_matches_reference(case):
    y, pred = case
    want = reference(y, pred, 3)
    assert_scores_equal(metrics.scores_from_confusion(metrics.confusion_matrix(y, pred, 3)), want)
    assert_scores_equal(keras_scores(y, probabilities(pred, 3), 3), want)


def test_perfect_and_all_wrong(case):
    y, _ = case
    labels = np.where(y == 255, 0, y)
    perfect = keras_scores(y, probabilities(labels, 3), 3)
    assert perfect["mean_iou"] == perfect["dice"] == perfect["pixel_accuracy"] == 1.0
    np.testing.assert_array_equal(perfect["per_class_iou"], [1, 1, 1])
    wrong = keras_scores(y, probabilities((labels + 1) % 3, 3), 3)
    assert wrong["mean_iou"] == wrong["dice"] == wrong["pixel_accuracy"] == 0.0
    assert_scores_equal(wrong, reference(y, (labels + 1) % 3, 3))


def test_ignored_pixels_are_not_counted(case):
    y, pred = case
    other = pred.copy()
    other[y == 255] = (pred[y == 255] + 1) % 3
    assert_scores_equal(
        keras_scores(y, probabilities(other, 3), 3), keras_scores(y, probabilities(pred, 3), 3)
    )
    cm = metrics.confusion_matrix(y, other, 3)
    assert cm.sum() == (y != 255).sum()


def test_class_absent_from_target_and_prediction_is_excluded(case):
    y, pred = case
    y, pred = np.where(y == 2, 0, y), np.where(pred == 2, 1, pred)  # class 2 nowhere
    got = keras_scores(y, probabilities(pred, 3), 3)
    two_class = reference(y, pred, 2)
    assert got["mean_iou"] == pytest.approx(two_class["mean_iou"], rel=1e-6)
    assert got["dice"] == pytest.approx(two_class["dice"], rel=1e-6)
    assert math.isnan(got["per_class_iou"][2])
    numpy_scores = metrics.scores_from_confusion(metrics.confusion_matrix(y, pred, 3))
    assert math.isnan(numpy_scores["per_class_iou"][2])
    assert numpy_scores["mean_iou"] == pytest.approx(two_class["mean_iou"], rel=1e-9)


def test_class_predicted_but_absent_from_target_counts_as_zero():
    y = np.array([[[0, 0, 0, 1]]])
    pred = np.array([[[0, 2, 0, 1]]])
    got = keras_scores(y, probabilities(pred, 3), 3)
    np.testing.assert_allclose(got["per_class_iou"], [2 / 3, 1, 0])
    assert got["mean_iou"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_all_ignored():
    y = np.full((1, 2, 2), 255)
    got = keras_scores(y, probabilities(np.zeros((1, 2, 2), int), 2), 2)
    assert got["mean_iou"] == got["dice"] == got["pixel_accuracy"] == 0.0
    assert np.isnan(got["per_class_iou"]).all()


def test_two_updates_equal_one_on_the_concatenation_and_reset(case):
    y, pred = case
    p = probabilities(pred, 3)
    split = keras_scores(None, None, 3, updates=[(y[:1], p[:1]), (y[1:], p[1:])])
    assert_scores_equal(split, keras_scores(y, p, 3))
    # Not a mean of per-batch scores: that would differ here.
    first, second = keras_scores(y[:1], p[:1], 3), keras_scores(y[1:], p[1:], 3)
    assert split["mean_iou"] != pytest.approx((first["mean_iou"] + second["mean_iou"]) / 2)
    m = metrics.MeanIoU(3)
    m.update_state(y, p)
    m.reset_state()
    m.update_state(y[1:], p[1:])
    assert float(m.result()) == pytest.approx(second["mean_iou"], rel=1e-6)


def test_labels_with_trailing_axis_and_sample_weight(case):
    y, pred = case
    p = probabilities(pred, 3)
    m = metrics.MeanIoU(3)
    m.update_state(y[..., None], p, sample_weight=np.array([0.0, 1.0]))
    assert float(m.result()) == pytest.approx(reference(y[1:], pred[1:], 3)["mean_iou"], rel=1e-6)


def test_fractional_sample_weight_scales_counts_not_scores():
    y = np.array([[[0, 0, 1, 1]]])
    p = probabilities(np.array([[[0, 1, 1, 1]]]), 2)
    for metric, want in (
        (metrics.MeanIoU(2), (1 / 2 + 2 / 3) / 2),
        (metrics.ClassIoU(2, 0), 1 / 2),
        (metrics.PixelAccuracy(2), 3 / 4),
        (metrics.Dice(2), (2 / 3 + 4 / 5) / 2),
    ):
        metric.update_state(y, p, sample_weight=np.array([0.1]))
        assert float(metric.result()) == pytest.approx(want, rel=1e-6), metric.name


def test_numpy_confusion_matrix_inputs():
    y = np.array([[0, 1], [255, 2]])
    pred = np.array([[0, 2], [1, 2]])
    want = [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    np.testing.assert_array_equal(metrics.confusion_matrix(y, pred, 3), want)
    np.testing.assert_array_equal(metrics.confusion_matrix(y, probabilities(pred, 3), 3), want)
    np.testing.assert_array_equal(metrics.confusion_matrix(y[..., None], pred, 3), want)
    with pytest.raises(DatasetError, match=r"Labels must be class indices in \[0, 3\).*\[7\]"):
        metrics.confusion_matrix(np.array([[7, 0]]), np.array([[0, 0]]), 3)
    with pytest.raises(DatasetError, match="do not match"):
        metrics.confusion_matrix(y, pred[:1], 3)


def test_segmentation_metrics_names_and_config_round_trip():
    ms = metrics.segmentation_metrics(["background", "Crop", "weed (broad-leaf)", "crop", "?"])
    assert [m.name for m in ms] == [
        "mean_iou", "iou_background", "iou_crop", "iou_weed_broad_leaf", "iou_crop_3",
        "iou_class4", "dice", "pixel_accuracy",
    ]
    assert [m.class_id for m in ms[1:6]] == [0, 1, 2, 3, 4]
    for m in ms:
        revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
        assert type(revived) is type(m) and revived.get_config() == m.get_config()
    with pytest.raises(ConfigError, match="class_id must be in"):
        metrics.ClassIoU(3, 3)


def test_val_mean_iou_in_fit_history_equals_numpy_on_predictions(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    y = (x[..., 0] > 0).astype(int) + (x[..., 1] > 1).astype(int)
    y[:, :1] = 255
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Conv2D(3, 1, activation="softmax")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=255),
        metrics=metrics.segmentation_metrics(["soil", "crop", "weed"]),
        jit_compile=False,
    )
    history = model.fit(x[:2], y[:2], validation_data=(x[2:], y[2:]), epochs=2, verbose=0)
    for key in ("mean_iou", "val_mean_iou", "val_iou_soil", "val_iou_weed", "val_dice",
                "val_pixel_accuracy"):
        assert key in history.history, key
    # Validation runs with the final weights: its scores are those of model.predict.
    scores = metrics.scores_from_confusion(
        metrics.confusion_matrix(y[2:], model.predict(x[2:], verbose=0), 3)
    )
    assert history.history["val_mean_iou"][-1] == pytest.approx(scores["mean_iou"], rel=1e-5)
    assert history.history["val_pixel_accuracy"][-1] == pytest.approx(
        scores["pixel_accuracy"], rel=1e-5
    )
    model.save(tmp_path / "m.keras")
    revived = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    result = revived.evaluate(x[2:], y[2:], verbose=0, return_dict=True)
    assert result["mean_iou"] == pytest.approx(scores["mean_iou"], rel=1e-5)
