"""Backbones: keras.applications parity (names, shapes, parameters, outputs), output
stride by dilation, weights from ImageNet / local files, and the tiny test backbone."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from autoseg.backbones import (  # noqa: E402
    ImageNetPreprocessing,
    build_backbone,
    transfer_weights_by_name,
)
from autoseg.errors import ConfigError  # noqa: E402
from autoseg.registry import BACKBONES  # noqa: E402

SIZE = 64

# keras.applications' notop parameter counts, and the layer behind each stride's tap.
APPLICATIONS = {
    "resnet50": dict(
        application="ResNet50",
        preprocess=lambda x: keras.applications.resnet50.preprocess_input(x),
        params=23_587_712,
        taps={
            2: "conv1_relu",
            4: "conv2_block3_out",
            8: "conv3_block4_out",
            16: "conv4_block6_out",
            32: "conv5_block3_out",
        },
    ),
    "vgg16": dict(
        application="VGG16",
        preprocess=lambda x: keras.applications.vgg16.preprocess_input(x),
        params=14_714_688,
        taps={
            1: "block1_conv2",
            2: "block2_conv2",
            4: "block3_conv3",
            8: "block4_conv3",
            16: "block5_conv3",
            32: "block5_pool",
        },
    ),
    "mobilenetv2": dict(
        application="MobileNetV2",
        preprocess=lambda x: keras.applications.mobilenet_v2.preprocess_input(x),
        params=2_257_984,
        taps={
            2: "block_1_expand_relu",
            4: "block_3_expand_relu",
            8: "block_6_expand_relu",
            16: "block_13_expand_relu",
            32: "out_relu",
        },
    ),
}


def _layer_of(tensor):
    return tensor._keras_history[0]


def _randomise(model, seed=0):
    """Non-default weights everywhere (BN statistics included) so a missed transfer shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for weight in layer.weights:
            value = np.asarray(weight)
            if weight.path.endswith("moving_variance"):
                value = rng.uniform(0.5, 1.5, value.shape)
            else:
                value = value + rng.normal(0.0, 0.05, value.shape)
            values.append(value.astype("float32"))
        if values:
            layer.set_weights(values)


def _backbone_model(name, size=SIZE, **kwargs):
    inputs = keras.Input((size, size, 3))
    taps = build_backbone(name, inputs, **kwargs)
    return keras.Model(inputs, taps), taps


@pytest.mark.parametrize("name", sorted(APPLICATIONS), ids=str)
def test_matches_keras_applications(name):
    """Same layer names, parameters and outputs as the keras.applications notop model."""
    expected = APPLICATIONS[name]
    model, taps = _backbone_model(name)
    assert model.count_params() == expected["params"]
    assert {s: _layer_of(t).name for s, t in taps.items()} == expected["taps"]

    reference = getattr(keras.applications, expected["application"])(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    assert reference.count_params() == expected["params"]
    _randomise(reference)
    copied = transfer_weights_by_name(reference, model)
    assert copied == sum(1 for layer in reference.layers if layer.weights)

    probe = keras.Model(
        reference.input, [reference.get_layer(n).output for n in expected["taps"].values()]
    )
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    ours = model(images)
    theirs = probe(expected["preprocess"](images.copy()))
    for (stride, tensor), reference_tensor in zip(sorted(ours.items()), theirs):
        got, want = np.asarray(tensor), np.asarray(reference_tensor)
        assert got.shape == (2, SIZE // stride, SIZE // stride, got.shape[-1])
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=1e-4 * scale, err_msg=f"stride {stride}")


@pytest.mark.parametrize(
    "name,output_stride",
    [("resnet50", 8), ("resnet50", 16), ("vgg16", 8), ("mobilenetv2", 16), ("tiny", 8)],
    ids=lambda v: str(v),
)
def test_output_stride_dilates_instead_of_striding(name, output_stride):
    model, taps = _backbone_model(name, output_stride=output_stride)
    assert max(taps) == output_stride
    for stride, tensor in taps.items():
        assert tuple(tensor.shape[1:3]) == (SIZE // stride, SIZE // stride)
    # Dilation changes no weight shape: the same parameters, so the same pretrained weights.
    full, _ = _backbone_model(name)
    assert model.count_params() == full.count_params()
    dilated = [
        layer.name
        for layer in model.layers
        if max(getattr(layer, "dilation_rate", (1, 1))) > 1
    ]
    assert dilated, "no layer dilates past the output stride"


def test_resnet50_dilation_rates_follow_deeplab():
    """Output stride 8: conv4 dilates by 2 and conv5 by 4; each stage's first block keeps
    the previous rate (as torchvision's replace_stride_with_dilation)."""
    model, _ = _backbone_model("resnet50", output_stride=8)
    rate = {
        layer.name: layer.dilation_rate[0]
        for layer in model.layers
        if hasattr(layer, "dilation_rate")
    }
    assert rate["conv3_block4_2_conv"] == 1
    assert rate["conv4_block1_2_conv"] == 1 and rate["conv4_block2_2_conv"] == 2
    assert rate["conv5_block1_2_conv"] == 2 and rate["conv5_block3_2_conv"] == 4
    assert model.get_layer("conv4_block1_1_conv").strides == (1, 1)


def test_tiny_backbone_has_every_stride_and_a_width_option():
    model, taps = _backbone_model("tiny", width=4)
    assert sorted(taps) == [1, 2, 4, 8, 16, 32]
    assert [t.shape[-1] for t in taps.values()] == [4, 4, 8, 8, 16, 16]
    assert model.count_params() < 20_000
    assert BACKBONES.get("tiny")[1]["strides"] == tuple(sorted(taps))


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "mobilenetv2"], ids=str)
def test_registered_strides_match_the_taps(name):
    _, taps = _backbone_model(name)
    assert BACKBONES.get(name)[1]["strides"] == tuple(sorted(taps))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="resnet51"), "Unknown backbone 'resnet51'. Valid names: mobilenetv2, resnet50"),
        (dict(name="tiny", output_stride=4), r"output_stride must be one of \(8, 16, 32\)"),
        (dict(name="tiny", depth=3), "Unknown option.*depth.*Valid options: width"),
        (dict(name="resnet50", width=3), "Valid options: none"),
        (dict(name="tiny", weights="imagenet"), "'tiny' has no pretrained weights"),
        (dict(name="vgg16", weights=123), "weights must be None, 'imagenet' or the path"),
        (dict(name="vgg16", weights="/nonexistent/w.h5"), "does not exist.*vgg16_weights_tf"),
    ],
    ids=[
        "unknown", "output_stride", "option", "no-options",
        "tiny-weights", "weights-type", "missing-file",
    ],  # fmt: skip
)
def test_bad_arguments_raise_config_error(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ConfigError, match=match):
        build_backbone(name, keras.Input((SIZE, SIZE, 3)), **kwargs)


def test_names_are_case_insensitive():
    _, taps = _backbone_model("TINY")
    assert sorted(taps) == [1, 2, 4, 8, 16, 32]


def test_imagenet_without_network_fails_fast_saying_how_to_use_a_local_file(monkeypatch):
    """No network (simulated, so the test does not depend on the machine): a ConfigError
    naming the file to download and how to pass it."""
    from keras.src.utils import file_utils

    calls = []

    def offline(fname, origin=None, **kwargs):
        calls.append(origin)
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ConfigError) as info:
        build_backbone("resnet50", keras.Input((SIZE, SIZE, 3)), weights="imagenet")
    message = str(info.value)
    assert "download resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 elsewhere" in message
    assert "weights='/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5'" in message
    assert calls and calls[0].endswith("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")


@pytest.mark.parametrize("file_name", ["saved.weights.h5", "legacy_full_model.h5"], ids=str)
def test_weights_from_a_local_file(tmp_path, file_name):
    """A file saved from the keras.applications model (Keras 3 `.weights.h5`, or the legacy
    HDF5 layout of the downloaded `..._notop.h5`) loads by layer name into the backbone."""
    reference = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    _randomise(reference, seed=3)
    path = tmp_path / file_name
    if file_name.endswith(".weights.h5"):
        reference.save_weights(path)
    else:
        reference.save(path)  # legacy HDF5: "layer_names" / "weight_names" like the downloads
    model, _ = _backbone_model("mobilenetv2", weights=str(path))
    compared = 0
    for layer in (layer for layer in reference.layers if layer.weights):
        for want, got in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(got, want, err_msg=layer.name)
            compared += 1
    assert compared == len(reference.weights) == 260


def test_a_corrupt_weights_file_is_a_config_error(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(ConfigError, match="Could not load weights file .*broken.h5.*MobileNetV2"):
        build_backbone("mobilenetv2", keras.Input((SIZE, SIZE, 3)), weights=str(path))


@pytest.mark.parametrize(
    "mode,reference",
    [
        ("caffe", lambda x: keras.applications.resnet50.preprocess_input(x)),
        ("tf", lambda x: keras.applications.mobilenet_v2.preprocess_input(x)),
    ],
    ids=["caffe", "tf"],
)
def test_imagenet_preprocessing_matches_keras_applications(mode, reference):
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    layer = ImageNetPreprocessing(mode)
    np.testing.assert_allclose(np.asarray(layer(images)), reference(images.copy()), atol=1e-4)
    clone = ImageNetPreprocessing.from_config(layer.get_config())
    assert clone.mode == mode
    with pytest.raises(ValueError, match="mode"):
        ImageNetPreprocessing("torch")
