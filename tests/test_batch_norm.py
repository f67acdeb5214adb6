"""`autoseg.batch_norm.BatchNormalization`: Keras' layer, trained with the fused kernel."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from autoseg.batch_norm import BatchNormalization


def _pair(shape, dtype_policy=None, **kwargs):
    """Keras' layer and ours, built alike, with the same random (non-default) weights."""
    theirs = keras.layers.BatchNormalization(dtype=dtype_policy, **kwargs)
    ours = BatchNormalization(dtype=dtype_policy, **kwargs)
    theirs.build(shape)
    ours.build(shape)
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in theirs.get_weights()]
    theirs.set_weights(weights)
    ours.set_weights(weights)
    return theirs, ours


def _train_step(layer, x):
    """Output and gradients (input and trainable weights) of one training-mode pass."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") ** 3)
    return y, tape.gradient(loss, [x, *layer.trainable_variables])


@pytest.mark.parametrize("options", [
    {"momentum": 0.9}, {"momentum": 0.99, "epsilon": 1e-3},
    {"momentum": 0.9, "center": False}, {"momentum": 0.9, "scale": False},
])
def test_training_matches_keras_outputs_gradients_and_moving_statistics(options):
    x = tf.constant(np.random.default_rng(1).normal(1.0, 3.0, (2, 12, 10, 5)), "float32")
    theirs, ours = _pair(x.shape, **options)
    for _ in range(3):  # the moving statistics accumulate over steps
        y_theirs, g_theirs = _train_step(theirs, x)
        y_ours, g_ours = _train_step(ours, x)
        np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-4, atol=1e-4)
        for a, b in zip(g_ours, g_theirs):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(tf.reduce_max(tf.abs(b))))
    for a, b in zip(ours.get_weights(), theirs.get_weights()):  # gamma, beta, moving mean, var
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Inference on those statistics: Keras' own code, equal to rounding.
    np.testing.assert_allclose(ours(x, training=False), theirs(x, training=False), rtol=1e-5,
                               atol=1e-5)


def test_it_runs_the_fused_kernel_in_training_and_keras_code_in_inference():
    layer = BatchNormalization()
    x = tf.ones((2, 4, 4, 3))
    layer.build(x.shape)
    ops_of = lambda training: {op.type for op in tf.function(  # noqa: E731
        lambda v: layer(v, training=training)).get_concrete_function(x).graph.get_operations()}
    assert "FusedBatchNormV3" in ops_of(True)
    assert "FusedBatchNormV3" not in ops_of(False)  # exported graphs stay as they were


def test_in_bfloat16_it_reads_the_16_bit_input_and_returns_the_compute_dtype():
    x = tf.constant(np.random.default_rng(2).normal(0.5, 2.0, (2, 8, 8, 4)), "bfloat16")
    theirs, ours = _pair(x.shape, dtype_policy="mixed_bfloat16", momentum=0.9)
    y_theirs, _ = _train_step(theirs, x)
    y_ours, _ = _train_step(ours, x)
    assert y_ours.dtype == tf.bfloat16
    # The same statistics in float32; the outputs differ by bfloat16's rounding at most.
    np.testing.assert_allclose(tf.cast(y_ours, "float32"), tf.cast(y_theirs, "float32"),
                               rtol=2 ** -7, atol=2 ** -7)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_what_the_kernel_cannot_compute_falls_back_to_keras():
    # A 2-D input, channels first, and an epsilon below the kernel's minimum: Keras' code.
    cases = (((6, 5), {}), ((2, 3, 4, 4), {"axis": 1}), ((2, 4, 4, 3), {"epsilon": 1e-6}))
    for shape, options in cases:
        x = tf.constant(np.random.default_rng(3).normal(size=shape), "float32")
        theirs, ours = _pair(x.shape, **options)
        np.testing.assert_allclose(_train_step(ours, x)[0], _train_step(theirs, x)[0], rtol=1e-5,
                                   atol=1e-5)


def test_weights_load_across_keras_and_ours_and_a_saved_model_reloads(tmp_path):
    def model(norm):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
        return keras.Model(inputs, norm(name="conv_bn")(x))

    theirs, ours = model(keras.layers.BatchNormalization), model(BatchNormalization)
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 3)).astype("float32")
    theirs(x, training=True)  # moving statistics away from their initial values
    theirs.save_weights(tmp_path / "w.weights.h5")
    ours.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_array_equal(ours(x), theirs(x))
    ours.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(again.get_layer("conv_bn"), BatchNormalization)
    np.testing.assert_array_equal(again(x), ours(x))
