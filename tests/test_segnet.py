"""SegNet-specific tests: argmax pooling / unpooling and the index wiring of the decoder.

The generic contract (output shape, a training step, `.keras` round trip) is in
tests/test_models.py, which parametrises over every registry entry.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras
from autoseg.architectures.segnet import (
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    build_segnet,
)
from autoseg.errors import ConfigError
from autoseg.registry import ARCHITECTURES

# Two channels; channel 1 is the negation of channel 0, so its maxima sit elsewhere.
_HAND = np.array(
    [
        [1, 5, 2, 0],
        [3, 4, 8, 7],
        [9, 0, 1, 6],
        [2, 6, 3, 4],
    ],
    dtype="float32",
)
HAND_EXAMPLE = np.stack([_HAND, -_HAND], axis=-1)[None]  # (1, 4, 4, 2)


def numpy_pool_unpool(x: np.ndarray, p: int):
    """Reference: max of each p x p window, and that max back in place with zeros around."""
    batch, height, width, channels = x.shape
    pooled = np.zeros((batch, height // p, width // p, channels), x.dtype)
    unpooled = np.zeros_like(x)
    for b in range(batch):
        for c in range(channels):
            for i in range(0, height, p):
                for j in range(0, width, p):
                    window = x[b, i : i + p, j : j + p, c]
                    di, dj = np.unravel_index(np.argmax(window), window.shape)
                    pooled[b, i // p, j // p, c] = window[di, dj]
                    unpooled[b, i + di, j + dj, c] = window[di, dj]
    return pooled, unpooled


def test_pool_and_unpool_on_a_hand_made_example():
    pooled, indices = MaxPoolingWithArgmax2D()(HAND_EXAMPLE)
    np.testing.assert_array_equal(np.asarray(pooled)[0, :, :, 0], [[5, 8], [9, 6]])
    np.testing.assert_array_equal(np.asarray(pooled)[0, :, :, 1], [[-1, 0], [0, -1]])
    # Row-major position inside each 2x2 window.
    np.testing.assert_array_equal(np.asarray(indices)[0, :, :, 0], [[1, 2], [0, 1]])
    np.testing.assert_array_equal(np.asarray(indices)[0, :, :, 1], [[0, 1], [1, 0]])
    assert np.asarray(indices).dtype == np.int32

    unpooled = np.asarray(MaxUnpooling2D()([pooled, indices]))
    np.testing.assert_array_equal(
        unpooled[0, :, :, 0],
        [
            [0, 5, 0, 0],
            [0, 0, 8, 0],
            [9, 0, 0, 6],
            [0, 0, 0, 0],
        ],
    )
    np.testing.assert_array_equal(unpooled, numpy_pool_unpool(HAND_EXAMPLE, 2)[1])


@pytest.mark.parametrize("pool_size", [2, 3])
def test_pool_and_unpool_match_numpy_reference(pool_size):
    rng = np.random.default_rng(0)
    # A permutation: no ties, so the argmax is unambiguous.
    x = rng.permutation(2 * 6 * 12 * 3).reshape(2, 6, 12, 3).astype("float32")
    pooled, indices = MaxPoolingWithArgmax2D(pool_size)(x)
    unpooled = MaxUnpooling2D(pool_size)([pooled, indices])
    expected_pooled, expected_unpooled = numpy_pool_unpool(x, pool_size)
    np.testing.assert_array_equal(np.asarray(pooled), expected_pooled)
    np.testing.assert_array_equal(np.asarray(unpooled), expected_unpooled)


def test_unpool_gradient_reaches_values_through_the_argmax_positions():
    pooled, indices = MaxPoolingWithArgmax2D()(HAND_EXAMPLE)
    upstream = np.arange(1, 33, dtype="float32").reshape(1, 4, 4, 2)
    values = tf.Variable(pooled)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(MaxUnpooling2D()([values, indices]) * upstream)
    grad = tape.gradient(loss, values).numpy()
    # d loss / d value = the upstream weight at the position its maximum came from.
    expected = np.zeros((1, 2, 2, 2), "float32")
    for i in range(2):
        for j in range(2):
            for c in range(2):
                window = HAND_EXAMPLE[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c]
                di, dj = np.unravel_index(np.argmax(window), window.shape)
                expected[0, i, j, c] = upstream[0, 2 * i + di, 2 * j + dj, c]
    np.testing.assert_array_equal(grad, expected)
    assert np.all(grad > 0)


def test_pool_rejects_sizes_that_unpooling_cannot_restore():
    with pytest.raises(ValueError, match="multiple of pool_size=2"):
        MaxPoolingWithArgmax2D()(np.zeros((1, 5, 4, 1), "float32"))


def test_unpool_rejects_values_and_indices_of_different_shapes():
    _, indices = MaxPoolingWithArgmax2D()(np.zeros((1, 4, 4, 2), "float32"))
    with pytest.raises(ValueError, match="same"):
        MaxUnpooling2D()([np.zeros((1, 2, 2, 3), "float32"), indices])


def test_layer_configs_round_trip():
    for layer in (MaxPoolingWithArgmax2D(3, name="p"), MaxUnpooling2D(3, name="u")):
        clone = type(layer).from_config(layer.get_config())
        assert (clone.pool_size, clone.name) == (3, layer.name)


def _unpool_outputs(model, stage):
    """(unpooled decoder map, indices it used) of decoder stage `stage`, as numpy arrays."""
    unpool = model.get_layer(f"dec{stage}_unpool")
    probe = keras.Model(model.input, [unpool.output, unpool.input[1]])
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (2, *model.input.shape[1:])).astype("float32")
    return [np.asarray(t) for t in probe(image)]


def _assert_values_only_at_indices(unpooled, indices):
    p = unpooled.shape[1] // indices.shape[1]
    allowed = np.zeros(unpooled.shape, bool)
    b, i, j, c = np.indices(indices.shape)
    allowed[b, i * p + indices // p, j * p + indices % p, c] = True
    assert np.all(unpooled[~allowed] == 0)
    assert np.count_nonzero(unpooled[allowed]) > 0


def test_own_decoder_unpools_with_its_encoder_stage_indices():
    model = build_segnet(3, (32, 32, 3), depth=3, filters=4)
    assert [layer.name for layer in model.layers if isinstance(layer, MaxUnpooling2D)] == [
        "dec3_unpool",
        "dec2_unpool",
        "dec1_unpool",
    ]
    for stage in (1, 2, 3):
        pool = model.get_layer(f"enc{stage}_pool")
        unpool = model.get_layer(f"dec{stage}_unpool")
        assert unpool.input[1] is pool.output[1]
        assert unpool.output.shape == pool.input.shape
    _assert_values_only_at_indices(*_unpool_outputs(model, 1))


def test_backbone_decoder_unpools_with_indices_of_the_taps():
    model = build_segnet(3, (32, 32, 3), backbone="tiny", depth=4, filters=4)
    for stage in (1, 2, 3, 4):
        argmax = model.get_layer(f"enc{stage}_argmax")
        # The tiny backbone's deepest map at stride 2**(stage - 1).
        assert argmax.input.shape[1] == 32 // 2 ** (stage - 1)
        assert model.get_layer(f"dec{stage}_unpool").input[1] is argmax.output[1]
    _assert_values_only_at_indices(*_unpool_outputs(model, 2))
    assert model.output_shape == (None, 32, 32, 3)


def test_vgg16_backbone_reuses_vgg16s_own_pooling():
    """With VGG16 the argmax pools read the maps VGG16's max pools read: SegNet proper."""
    model = build_segnet(2, (32, 32, 3), backbone="vgg16", depth=5, filters=4)
    probe = keras.Model(
        model.input,
        [model.get_layer(f"enc{stage}_argmax").output[0] for stage in (1, 2, 3, 4)]
        + [model.get_layer(f"block{block}_pool").output for block in (1, 2, 3, 4)],
    )
    outputs = probe(np.random.default_rng(2).uniform(0, 255, (1, 32, 32, 3)).astype("float32"))
    for ours, vgg in zip(outputs[:4], outputs[4:]):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(vgg))
    assert model.get_layer("enc5_argmax").input is model.get_layer("block5_conv3").output


def test_segnet_resnet_alias_builds_on_resnet50():
    spec, preset = ARCHITECTURES.resolve("segnet_resnet")
    assert spec.name == "segnet" and preset == {"backbone": "resnet50"}
    model = spec.builder(3, (64, 64, 3), **{**spec.defaults, **preset, "filters": 8})
    names = {layer.name for layer in model.layers}
    assert {"conv5_block3_out", "enc5_argmax", "enc2_argmax", "dec2_unpool"} <= names
    # ResNet-50 has no stride-1 map to take indices from: the last x2 is bilinear.
    assert "dec1_upsample" in names and "enc1_argmax" not in names
    assert model.output_shape == (None, 64, 64, 3)


@pytest.mark.parametrize("size", [9, 12])
def test_overlapping_pool_and_unpool_are_max_pooling_and_its_gradient(size):
    """3x3 windows at stride 2: the pooled values are Keras' MaxPooling2D's, and unpooling
    routes values exactly as max pooling's gradient does (overlaps add)."""
    x = tf.constant(np.random.default_rng(size).normal(size=(2, size, size + 2, 3)), "float32")
    pooled, indices = MaxPoolingWithArgmax2D(3, 2)(x)
    reference = keras.layers.MaxPooling2D(3, strides=2)(x)
    np.testing.assert_array_equal(np.asarray(pooled), np.asarray(reference))
    upstream = tf.constant(np.random.default_rng(7).normal(size=reference.shape), "float32")
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(keras.layers.MaxPooling2D(3, strides=2)(x) * upstream)
    gradient = tape.gradient(loss, x)
    unpooled = MaxUnpooling2D(3, 2)([upstream, indices])
    rows, cols = unpooled.shape[1:3]  # a last row or column no window reads stays out
    assert (rows, cols) == ((pooled.shape[1] - 1) * 2 + 3, (pooled.shape[2] - 1) * 2 + 3)
    np.testing.assert_allclose(np.asarray(unpooled), np.asarray(gradient)[:, :rows, :cols],
                               rtol=1e-6, atol=1e-6)


def test_strided_layer_configs_round_trip():
    for layer in (MaxPoolingWithArgmax2D(3, 2, name="p"), MaxUnpooling2D(3, 2)):
        clone = type(layer).from_config(layer.get_config())
        assert (clone.pool_size, clone.strides) == (3, 2)
    assert MaxUnpooling2D.from_config({"pool_size": 2}).strides == 2  # saved before strides
    for pool_size, strides in ((2, 3), (3, 0), (3, 1.5)):
        with pytest.raises(ValueError, match="strides"):
            MaxPoolingWithArgmax2D(pool_size, strides)


def test_segnet_resnet_unpools_with_its_stem_pools_own_indices():
    """ResNet-50's one max pool (stem, 3x3 stride 2 after a zero padding of 1): the decoder
    stage from stride 4 to 2 takes that pool's windows and indices, not a 2x2 argmax."""
    model = build_segnet(3, (64, 64, 3), backbone="resnet50", depth=5, filters=4)
    argmax = model.get_layer("enc2_argmax")
    assert (argmax.pool_size, argmax.strides) == (3, 2)
    assert argmax.input is model.get_layer("pool1_pad").output
    assert model.get_layer("dec2_unpool").strides == 2
    assert model.get_layer("dec2_crop").output.shape[1:3] == (32, 32)
    probe = keras.Model(model.input, [argmax.output[0], model.get_layer("pool1_pool").output])
    ours, resnet = probe(np.random.default_rng(3).uniform(0, 255, (1, 64, 64, 3)).astype("float32"))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(resnet))
    # Strided convolutions keep no indices: those stages take a 2x2 argmax of the map.
    assert model.get_layer("enc3_argmax").strides == model.get_layer("enc3_argmax").pool_size == 2
    assert model.output_shape == (None, 64, 64, 3)


def test_depth_sets_stages_and_input_divisor():
    spec = ARCHITECTURES.get("segnet")
    assert [spec.input_divisor({**spec.defaults, "depth": d}) for d in (3, 4, 5)] == [8, 16, 32]
    model = build_segnet(2, (32, 48, 3), depth=4, filters=4)
    pools = [layer for layer in model.layers if isinstance(layer, MaxPoolingWithArgmax2D)]
    assert len(pools) == 4 and pools[-1].output[0].shape == (None, 2, 3, 32)
    assert model.output_shape == (None, 32, 48, 2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"depth": 5, "input_shape": (48, 64, 3)}, "multiples of 32"),
        ({"depth": 6}, "depth must be 3, 4 or 5"),
        ({"backbone": "xception"}, "Valid backbones: none, mobilenetv2"),
        ({"weights": "imagenet"}, r"own encoder \(backbone='none'\) has no pretrained weights"),
        ({"filters": 0}, "filters must be a positive integer"),
    ],
)
def test_bad_options_raise_config_error(options, message):
    options = {"input_shape": (32, 32, 3), **options}
    with pytest.raises(ConfigError, match=message):
        build_segnet(3, **options)
