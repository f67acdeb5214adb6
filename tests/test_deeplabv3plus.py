"""DeepLabV3+-specific tests: ASPP rates, the image-pooling branch, the decoder, backbones,
and autoseg's dilated convolutions (`autoseg.backbones.Conv2D`, `DepthwiseConv2D`) against
the plain Keras ones autoseg built before.

The generic contract (output shape, a training step, `.keras` round trip) is in
tests/test_models.py, which parametrises over every registry entry.
"""

from __future__ import annotations

import numpy as np
import pytest

import keras
from autoseg import backbones
from autoseg.architectures.deeplabv3plus import build_deeplabv3plus
from autoseg.errors import ConfigError
from autoseg.registry import ARCHITECTURES

TINY = {"backbone": "tiny", "aspp_filters": 8, "decoder_filters": 8}


def _image(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (2, *shape)).astype("float32")


@pytest.mark.parametrize(
    "output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))], ids=["os16", "os8"]
)
def test_aspp_rates_follow_the_output_stride(output_stride, rates):
    model = build_deeplabv3plus(3, (64, 64, 3), output_stride=output_stride, **TINY)
    dilations = [model.get_layer(f"aspp_atrous{i}").dilation_rate for i in (1, 2, 3)]
    assert dilations == [(rate, rate) for rate in rates]
    assert model.get_layer("aspp_1x1").kernel_size == (1, 1)
    # ASPP reads the backbone's deepest map, at 1/output_stride of the input.
    assert model.get_layer("aspp_1x1").input.shape[1:3] == (64 // output_stride,) * 2


def test_separable_aspp_keeps_the_rates():
    model = build_deeplabv3plus(3, (64, 64, 3), separable=True, **TINY)
    rates = [model.get_layer(f"aspp_atrous{i}_depthwise").dilation_rate[0] for i in (1, 2, 3)]
    assert rates == [6, 12, 18]
    dense = build_deeplabv3plus(3, (64, 64, 3), **TINY)
    assert model.count_params() < dense.count_params()


def test_image_pooling_broadcasts_the_global_mean():
    model = build_deeplabv3plus(3, (64, 48, 3), **TINY)
    pool = model.get_layer("aspp_pool")
    probe = keras.Model(
        model.input,
        [pool.input, pool.output, model.get_layer("aspp_pool_conv_relu").output,
         model.get_layer("aspp_pool_upsample").output],
    )
    high, pooled, context, broadcast = (np.asarray(t) for t in probe(_image((64, 48, 3))))
    np.testing.assert_allclose(pooled, high.mean(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-6)
    assert context.shape == (2, 1, 1, 8)
    # The branch is the same vector at every position of the ASPP map (4 x 3 at stride 16).
    assert broadcast.shape == (2, 4, 3, 8)
    np.testing.assert_array_equal(broadcast, np.broadcast_to(context, broadcast.shape))
    # Different images give different context (the branch is not constant).
    assert not np.allclose(broadcast[0], broadcast[1])
    concat = model.get_layer("aspp_concat")
    assert len(concat.input) == 5 and concat.output.shape[-1] == 5 * 8


@pytest.mark.parametrize("output_stride", [8, 16], ids=["os8", "os16"])
def test_decoder_joins_aspp_and_the_stride_4_map(output_stride):
    model = build_deeplabv3plus(4, (32, 64, 3), output_stride=output_stride, **TINY)
    assert model.get_layer("decoder_upsample").size == (output_stride // 4,) * 2
    skip = model.get_layer("decoder_skip")
    assert skip.filters == 48 and skip.input.shape[1:3] == (8, 16)
    assert model.get_layer("decoder_concat").output.shape == (None, 8, 16, 8 + 48)
    assert model.get_layer("head_upsample").size == (4, 4)
    probabilities = np.asarray(model(_image((32, 64, 3))))
    assert probabilities.shape == (2, 32, 64, 4)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("backbone, channels", [("resnet50", 2048), ("vgg16", 512)])
def test_real_backbones_build_at_64(backbone, channels):
    model = build_deeplabv3plus(3, (64, 64, 3), backbone=backbone)
    assert model.output_shape == (None, 64, 64, 3)
    assert model.get_layer("aspp_1x1").input.shape == (None, 4, 4, channels)
    assert model.get_layer("aspp_proj").filters == 256


def test_input_divisor_is_the_output_stride():
    spec = ARCHITECTURES.get("deeplabv3plus")
    assert spec.defaults["backbone"] == "resnet50" and spec.defaults["output_stride"] == 16
    assert [spec.input_divisor({**spec.defaults, "output_stride": s}) for s in (8, 16)] == [8, 16]
    assert build_deeplabv3plus(2, (40, 56, 3), output_stride=8, **TINY).output_shape == (
        None, 40, 56, 2,
    )


def test_misspelt_alias_resolves_to_deeplabv3plus():
    spec, preset = ARCHITECTURES.resolve("depplabv3plus")
    assert spec.name == "deeplabv3plus" and preset == {}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"output_stride": 32}, "output_stride must be 8 or 16"),
        ({"input_shape": (72, 64, 3)}, "multiples of 16"),
        ({"input_shape": (None, None, 3)}, "static input height"),
        ({"backbone": "xception"}, "Valid backbones"),
        ({"aspp_filters": 0}, "aspp_filters must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_options_raise_config_error(options, message):
    options = {**TINY, "input_shape": (64, 64, 3), **options}
    with pytest.raises(ConfigError, match=message):
        build_deeplabv3plus(3, **options)


@pytest.mark.slow
def test_resnet50_compiled_training_step_at_output_stride_8():
    """tests/test_models.py trains every backbone at the default output stride 16; this is
    the dilated ResNet-50 at 8, where the ASPP rates (24, 36) exceed the 8x8 map."""
    keras.utils.set_random_seed(0)
    model = build_deeplabv3plus(3, (64, 64, 3), backbone="resnet50", output_stride=8)
    assert model.get_layer("aspp_1x1").input.shape == (None, 8, 8, 2048)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=False)
    images = _image((64, 64, 3))
    masks = (images[..., :1] > 127).astype("int32") + (images[..., 1:2] > 200)
    kernels = {v.path: np.array(v) for v in model.trainable_variables if "kernel" in v.path}
    loss = model.train_on_batch(images, masks)
    assert np.isfinite(loss)
    unchanged = [
        v.path for v in model.trainable_variables
        if v.path in kernels and np.array_equal(np.array(v), kernels[v.path])
    ]
    assert not unchanged, f"kernels without gradient: {unchanged}"
    # Batch-norm statistics updated by the step stay usable at inference.
    probabilities = np.asarray(model(images, training=False))
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)


# --- atrous convolutions: the same outputs as the plain dilated Keras layers ---------------

_PLAIN = {backbones.Conv2D: keras.layers.Conv2D,
          backbones.DepthwiseConv2D: keras.layers.DepthwiseConv2D}


def _with_keras_convolutions(model):
    """The model as autoseg built it before: each of autoseg's dilated `Conv2D` and
    `DepthwiseConv2D` a plain Keras layer of the same config, with the same weights."""
    reference = keras.models.clone_model(
        model,
        clone_function=lambda layer: _PLAIN.get(type(layer), type(layer)).from_config(
            layer.get_config()),
    )
    reference.set_weights(model.get_weights())
    assert not any(type(layer) in _PLAIN for layer in reference.layers)
    return reference


def _taps(model, name):
    """`(kernel taps run, dilation left)` of one layer, as the model computes it."""
    layer = model.get_layer(name)
    kernel, rates = backbones._reachable_taps(layer.kernel_size, layer.dilation_rate,
                                              layer.input.shape[1:3])
    return tuple(k.stop - k.start for k in kernel), rates


@pytest.mark.parametrize(
    "input_shape, options, expected",
    [
        # 4x4 map: every rate is past it, so all three branches are their 1x1 centre tap.
        ((64, 64, 3), {}, [((1, 1), (1, 1))] * 3),
        # 16x16 map (256² input): only rate 18 is past it.
        ((256, 256, 3), {}, [((3, 3), (6, 6)), ((3, 3), (12, 12)), ((1, 1), (1, 1))]),
        # 4x18 map: rates past the height only keep the kernel's middle row.
        ((64, 288, 3), {}, [((1, 3), (1, 6)), ((1, 3), (1, 12)), ((1, 1), (1, 1))]),
        # Output stride 8, 16x16 map: rate 12 stays, 24 and 36 do not.
        ((128, 128, 3), {"output_stride": 8}, [((3, 3), (12, 12)), ((1, 1), (1, 1)),
                                               ((1, 1), (1, 1))]),
    ],
    ids=["all-past", "rate18-past", "height-only", "os8"],
)
def test_aspp_runs_only_the_taps_that_reach_the_map(input_shape, options, expected):
    model = build_deeplabv3plus(3, input_shape, **TINY, **options)
    assert [_taps(model, f"aspp_atrous{i}") for i in (1, 2, 3)] == expected
    # The variables stay 3x3, as saved before.
    assert all(model.get_layer(f"aspp_atrous{i}").kernel.shape[:2] == (3, 3) for i in (1, 2, 3))


@pytest.mark.parametrize(
    "input_shape, options",
    [
        ((64, 64, 3), {}),
        ((256, 256, 3), {}),
        ((64, 288, 3), {}),
        ((128, 96, 3), {"output_stride": 8}),
        ((64, 64, 3), {"separable": True}),
        ((256, 256, 3), {"separable": True}),
    ],
    ids=["all-past", "rate18-past", "height-only", "os8", "separable-all-past",
         "separable-rate18-past"],
)
def test_same_outputs_and_gradients_as_plain_dilated_convolutions(input_shape, options):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    # No dropout: training-mode gradients are then deterministic.
    model = build_deeplabv3plus(3, input_shape, **TINY, dropout=0.0, **options)
    atrous = [layer.name for layer in model.layers if type(layer) in _PLAIN]
    # ASPP's three, and at output stride 8 the tiny backbone's dilated last level.
    assert len(atrous) == 3 + (options.get("output_stride") == 8), atrous
    reference = _with_keras_convolutions(model)
    images = _image(input_shape)
    labels = np.random.default_rng(1).integers(0, 3, (2, *input_shape[:2]))
    np.testing.assert_allclose(np.asarray(model(images, training=False)),
                               np.asarray(reference(images, training=False)), atol=1e-5)

    def gradients(m):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(labels, m(images, training=True))
        return [np.asarray(g) for g in tape.gradient(loss, m.trainable_variables)]

    for got, want, variable in zip(gradients(model), gradients(reference),
                                   model.trainable_variables):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max(),
                                   err_msg=variable.path)


@pytest.mark.parametrize("size, rate", [(16, 6), (16, 12), (8, 2), (16, 18), (9, 4)])
def test_atrous_conv_equals_keras_dilated_conv(size, rate):
    """Against `keras.ops.conv` itself (TensorFlow's space-to-batch), on every path: native
    dilation (6, 12, 2, and an odd map at 4) and the centre tap alone (18 on 16)."""
    import tensorflow as tf

    layer = backbones.Conv2D(5, 3, padding="same", dilation_rate=rate, use_bias=True)
    x = tf.constant(np.random.default_rng(0).normal(size=(2, size, size + 3, 7)), "float32")
    layer.build(x.shape)
    layer.bias.assign(np.arange(5, dtype="float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        got = layer(x)
        want = keras.ops.conv(x, layer.kernel, padding="same", dilation_rate=rate) + layer.bias
        weights = tf.constant(np.random.default_rng(1).normal(size=got.shape), "float32")
        got_loss, want_loss = tf.reduce_sum(got * weights), tf.reduce_sum(want * weights)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)
    for a, b in zip(tape.gradient(got_loss, [x, layer.kernel]),
                    tape.gradient(want_loss, [x, layer.kernel])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)


def test_a_model_saved_with_plain_dilated_convolutions_still_loads(tmp_path):
    """What autoseg saved before: a `.keras` file with Keras' dilated `Conv2D`s, and a trial
    checkpoint's weights (which export loads into a model rebuilt by today's code)."""
    model = build_deeplabv3plus(3, (64, 48, 3), **TINY)
    before = _with_keras_convolutions(model)
    images = _image((64, 48, 3), seed=3)
    expected = np.asarray(before(images, training=False))
    before.save(tmp_path / "before.keras")
    before.save_weights(tmp_path / "before.weights.h5")

    loaded = keras.saving.load_model(tmp_path / "before.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), expected, atol=1e-6)
    rebuilt = build_deeplabv3plus(3, (64, 48, 3), **TINY)
    assert isinstance(rebuilt.get_layer("aspp_atrous1"), backbones.Conv2D)
    rebuilt.load_weights(tmp_path / "before.weights.h5")
    np.testing.assert_allclose(np.asarray(rebuilt(images, training=False)), expected, atol=1e-5)
    # A model saved now keeps autoseg's layers through a safe `.keras` round trip.
    rebuilt.save(tmp_path / "now.keras")
    again = keras.saving.load_model(tmp_path / "now.keras", safe_mode=True, compile=False)
    assert type(again.get_layer("aspp_atrous3")) is backbones.Conv2D
    np.testing.assert_allclose(np.asarray(again(images, training=False)), expected, atol=1e-5)


@pytest.mark.slow
def test_resnet50_at_256_gives_the_outputs_of_plain_dilated_convolutions():
    """The configuration the speed-up was measured on (benchmarks/RESULTS.md): ResNet-50,
    output stride 16, 256² (conv5 dilated by 2, ASPP rates 6 and 12 native, 18 its centre)."""
    keras.utils.set_random_seed(0)
    model = build_deeplabv3plus(3, (256, 256, 3), backbone="resnet50")
    assert isinstance(model.get_layer("conv5_block2_2_conv"), backbones.Conv2D)
    assert _taps(model, "aspp_atrous3") == ((1, 1), (1, 1))
    reference = _with_keras_convolutions(model)
    images = _image((256, 256, 3))
    got, want = (np.asarray(m(images, training=False)) for m in (model, reference))
    np.testing.assert_allclose(got, want, atol=1e-4)
