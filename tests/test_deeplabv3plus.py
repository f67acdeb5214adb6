"""DeepLabV3+-specific tests: ASPP rates, the image-pooling branch, the decoder, backbones.

The generic contract (output shape, a training step, `.keras` round trip) is in
tests/test_models.py, which parametrises over every registry entry.
"""

from __future__ import annotations

import numpy as np
import pytest

import keras
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
