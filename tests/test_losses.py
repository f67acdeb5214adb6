"""Losses against a numpy reference of their documented definitions, and hand-computed values."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from autoseg import losses
from autoseg.errors import ConfigError
from autoseg.registry import LOSSES

NAMES = ("ce", "weighted_ce", "focal", "dice", "ce_dice", "weighted_ce_dice", "jaccard", "tversky")
WEIGHTS = [0.5, 2.0, 1.0]


# -- numpy reference of the definitions in autoseg/losses.py ------------------------------
def _valid(y, c):
    return (y != 255) & (y >= 0) & (y < c)


def ref_pixel(y, p, gamma=0.0, weights=None):
    c = p.shape[-1]
    valid = _valid(y, c)
    if not valid.any():
        return 0.0
    p_true = np.take_along_axis(p[valid], y[valid][:, None], axis=-1)[:, 0]
    p_true = np.clip(p_true.astype(np.float64), 1e-7, 1.0)
    terms = -np.log(p_true) * (1 - p_true) ** gamma
    if weights is not None:
        terms = terms * np.asarray(weights)[y[valid]]
    return terms.sum() / valid.sum()


def ref_region(y, p, kind, smooth=1.0, alpha=0.3, beta=0.7):
    c = p.shape[-1]
    valid = _valid(y, c)
    terms = []
    for k in range(c):
        g = (y[valid] == k).astype(np.float64)
        q = p[valid][:, k].astype(np.float64)
        if g.sum() == 0:
            continue  # only classes present in the target are averaged
        tp, fp, fn = (q * g).sum(), (q * (1 - g)).sum(), ((1 - q) * g).sum()
        if kind == "dice":
            score = (2 * tp + smooth) / (q.sum() + g.sum() + smooth)
        elif kind == "jaccard":
            score = (tp + smooth) / (tp + fp + fn + smooth)
        else:
            score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
        terms.append(1 - score)
    return float(np.mean(terms)) if terms else 0.0


def reference(name, y, p):
    if name == "ce":
        return ref_pixel(y, p)
    if name == "weighted_ce":
        return ref_pixel(y, p, weights=WEIGHTS[: p.shape[-1]])
    if name == "focal":
        return ref_pixel(y, p, gamma=2.0)
    if name == "ce_dice":
        return ref_pixel(y, p) + ref_region(y, p, "dice")
    if name == "weighted_ce_dice":
        return ref_pixel(y, p, weights=WEIGHTS[: p.shape[-1]]) + ref_region(y, p, "dice")
    return ref_region(y, p, name)


def make(name, num_classes=3):
    weights = WEIGHTS[:num_classes] + [1.0] * (num_classes - len(WEIGHTS))
    return losses.get_loss(
        name, num_classes, class_weights=weights if name in losses.CLASS_WEIGHTING else None
    )


def value(loss, y, p, sample_weight=None):
    return float(loss(y, p.astype(np.float32), sample_weight))


@pytest.fixture
def case():
    """Labels (2, 5, 6) in 0..2 with a 255 region, and random softmax probabilities."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (2, 5, 6))
    y[0, :2, :3] = 255
    logits = rng.normal(size=(2, 5, 6, 3)) * 2
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return y, p


def one_hot(y, c):
    return np.eye(c)[np.where(y == 255, 0, y)]


# -- tests ------------------------------------------------------------------------------------
def test_registry_has_every_loss():
    assert set(NAMES) <= set(LOSSES.names())


def test_hand_computed_values():
    # One image, two pixels: class 0 predicted 0.8, class 1 predicted 0.6.
    y = np.array([[[0, 1]]])
    p = np.array([[[[0.8, 0.2], [0.4, 0.6]]]])
    expected = {
        "ce": (-np.log(0.8) - np.log(0.6)) / 2,
        "focal": (0.2**2 * -np.log(0.8) + 0.4**2 * -np.log(0.6)) / 2,
        # 1 - (2 TP + 1) / (|P| + |G| + 1) per class: (1 - 2.6 / 3.2 + 1 - 2.2 / 2.8) / 2
        "dice": (1 - 2.6 / 3.2 + 1 - 2.2 / 2.8) / 2,
        "jaccard": (1 - 1.8 / 2.4 + 1 - 1.6 / 2.2) / 2,
        "tversky": (1 - 1.8 / (0.8 + 0.3 * 0.4 + 0.7 * 0.2 + 1)
                    + 1 - 1.6 / (0.6 + 0.3 * 0.2 + 0.7 * 0.4 + 1)) / 2,
    }
    expected["ce_dice"] = expected["ce"] + expected["dice"]
    for name, want in expected.items():
        assert value(make(name, 2), y, p) == pytest.approx(want, rel=1e-5), name
    weighted = losses.get_loss("weighted_ce", 2, class_weights=[3.0, 0.5])
    assert value(weighted, y, p) == pytest.approx(
        (3.0 * -np.log(0.8) + 0.5 * -np.log(0.6)) / 2, rel=1e-5
    )


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_on_partial_prediction(name, case):
    y, p = case
    assert value(make(name), y, p) == pytest.approx(reference(name, y, p), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_perfect_prediction_is_zero(name, case):
    y, _ = case
    assert value(make(name), y, one_hot(y, 3)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_all_wrong_matches_reference_and_is_large(name, case):
    y, _ = case
    p = one_hot((np.where(y == 255, 0, y) + 1) % 3, 3)
    got = value(make(name), y, p)
    assert got == pytest.approx(reference(name, y, p), rel=1e-5)
    if name in ("ce", "weighted_ce", "focal", "ce_dice", "weighted_ce_dice"):
        assert got > 10  # -log(1e-7) = 16.1 per pixel for ce and focal
    else:
        assert got > 0.9  # 1 - smooth / (~18 pixels per class + smooth)


@pytest.mark.parametrize("name", NAMES)
def test_ignored_pixels_count_nowhere(name, case):
    y, p = case
    loss = make(name)
    base = value(loss, y, p)
    scrambled = p.copy()
    scrambled[y == 255] = np.roll(p[y == 255], 1, axis=-1)[:, ::-1]  # other probabilities
    assert not np.allclose(scrambled[y == 255], p[y == 255])
    assert value(loss, y, scrambled) == pytest.approx(base, rel=1e-6)
    # Normalised by valid pixels: equal to the loss over the valid pixels alone.
    valid = y != 255
    flat = value(loss, y[valid][None, None, :], p[valid][None, None, :, :])
    assert flat == pytest.approx(base, rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_all_ignored_batch_is_zero_with_finite_gradient(name, case):
    _, p = case
    y = np.full(p.shape[:-1], 255)
    probabilities = tf.Variable(p.astype(np.float32))
    with tf.GradientTape() as tape:
        result = make(name)(y, probabilities)
    assert float(result) == 0.0
    assert np.isfinite(tape.gradient(result, probabilities).numpy()).all()


@pytest.mark.parametrize("name", NAMES)
def test_class_absent_from_prediction_and_target_changes_nothing(name, case):
    y, p = case
    with_absent = np.concatenate([p, np.zeros(p.shape[:-1] + (1,))], axis=-1)
    assert value(make(name, 4), y, with_absent) == pytest.approx(
        value(make(name, 3), y, p), rel=1e-6
    )


@pytest.mark.parametrize("name", NAMES)
def test_gradient_is_finite_at_hard_zeros_and_ones(name, case):
    y, _ = case
    p = one_hot((np.where(y == 255, 0, y) + 1) % 3, 3)  # log(0) without clipping
    p[0, 2:, :] = one_hot(y[0, 2:, :], 3)  # and exact ones
    probabilities = tf.Variable(p.astype(np.float32))
    with tf.GradientTape() as tape:
        result = make(name)(y, probabilities)
    grad = tape.gradient(result, probabilities).numpy()
    assert np.isfinite(float(result)) and np.isfinite(grad).all()
    assert np.abs(grad).sum() > 0
    assert (grad[y == 255] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_labels_with_trailing_channel_axis(name, case):
    y, p = case
    assert value(make(name), y[..., None], p) == pytest.approx(value(make(name), y, p), rel=1e-7)


def test_sample_weight_zero_drops_an_image_from_the_numerator(case):
    y, p = case
    loss = make("ce")
    got = value(loss, y, p, sample_weight=np.array([0.0, 1.0]))
    valid = y != 255
    terms = -np.log(np.take_along_axis(p, np.where(valid, y, 0)[..., None], -1)[..., 0])
    assert got == pytest.approx((terms[1][valid[1]]).sum() / valid.sum(), rel=1e-5)


def test_weighted_ce_needs_matching_class_weights():
    with pytest.raises(ConfigError, match="needs class_weights"):
        losses.get_loss("weighted_ce", 3)
    with pytest.raises(ConfigError, match="'weighted_ce_dice' needs class_weights.*the loss 'ce_dice'"):
        losses.get_loss("weighted_ce_dice", 3)
    with pytest.raises(ConfigError, match="2 entries but there are 3 classes"):
        losses.get_loss("weighted_ce", 3, class_weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="non-negative"):
        losses.get_loss("weighted_ce", 3, class_weights=[1.0, -2.0, 1.0])
    with pytest.raises(ConfigError, match="Unknown loss 'l2'. Valid names: ce, ce_dice"):
        losses.get_loss("l2", 3)


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name, case):
    y, p = case
    loss = make(name)
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(revived) is type(loss)
    assert revived.get_config() == loss.get_config()
    assert value(revived, y, p) == pytest.approx(value(loss, y, p), rel=1e-7)


def _tiny_model(num_classes=3):
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Conv2D(num_classes, 1, activation="softmax", name="head")(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("name", NAMES)
def test_fit_step_in_graph_matches_eager_and_saves(name, case, tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, (2, 8, 8))
    y[:, :2] = 255
    model = _tiny_model()
    loss = make(name)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, jit_compile=False)
    before = value(loss, y, model.predict(x, verbose=0))
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0)
    # The first epoch's loss is the graph-mode loss at the initial weights.
    assert history.history["loss"][0] == pytest.approx(before, rel=1e-4)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][1] < history.history["loss"][0]
    model.save(tmp_path / "model.keras")
    revived = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert type(revived.loss) is type(loss)
    assert revived.loss.get_config() == loss.get_config()
