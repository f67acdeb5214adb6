"""Search-space YAML: validation before any trial, auto values from the fingerprint."""

from __future__ import annotations

import keras_tuner as kt
import pytest
import yaml

from autoseg.errors import ConfigError
from autoseg.search_space import (
    Range,
    bundled_space_path,
    load_space,
    parse_input_size,
    resolve_auto,
    validate_space,
)

MINIMAL = {"models": {"unet": {"depth": 3, "filters": 8}}, "input_size": 64}


def space_with(**changes):
    data = {**MINIMAL, **changes}
    return validate_space(data, "space.yaml")


@pytest.mark.parametrize("name", ["default", "quick", "ci"])
def test_bundled_spaces_load_and_resolve(name):
    space = load_space(name)
    assert bundled_space_path(name) is not None
    resolved = resolve_auto(space, {"image_size": {"median": [256, 320]},
                                    "class_pixel_fraction": {"a": 0.9, "b": 0.1}})
    assert resolved.input_sizes()
    assert "auto" not in (resolved.params["loss"], resolved.params["policy"])


def test_default_space_covers_every_family():
    from autoseg import registry

    space = load_space("default")
    families = {registry.ARCHITECTURES.get(n).family for n in space.models}
    all_families = {registry.ARCHITECTURES.get(n).family for n in registry.ARCHITECTURES.names()}
    assert families == all_families


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({**MINIMAL, "epochz": 3}, "unknown key(s) ['epochz']"),
        ({"input_size": 64}, "`models` must map"),
        ({"models": {"unett": {}}}, "Unknown architecture 'unett'"),
        ({"models": {"unet": {"depht": 3}}}, "depht is not an option of unet"),
        ({"models": {"unet": {"backbone": ["resnet51"]}}}, "valid values for unet"),
        ({**MINIMAL, "loss": ["ce", "dicey"]}, "loss 'dicey' is unknown"),
        ({**MINIMAL, "batch_size": []}, "batch_size is an empty list"),
        ({**MINIMAL, "batch_size": [0, 2]}, "batch_size values must be positive integers"),
        ({**MINIMAL, "aug_strength": [1.5]}, "aug_strength values must be numbers in [0, 1]"),
        ({**MINIMAL, "learning_rate": {"min": 0.1, "max": 0.01}}, "min 0.1 > max 0.01"),
        ({**MINIMAL, "policy": "squash"}, "policy 'squash' is unknown"),
        ({**MINIMAL, "input_size": "big"}, "input_size 'big' is not valid"),
        ({**MINIMAL, "input_size": 60}, "Nearest valid sizes: 56, 64"),
        ({**MINIMAL, "max_epochs": 0}, "max_epochs must be a positive integer"),
        ({**MINIMAL, "batch_size": [2, 2]}, "lists a value twice"),
        ({**MINIMAL, "rebalance": "always"}, "rebalance 'always' is unknown. Valid: auto, off"),
    ],
)
def test_invalid_spaces_are_rejected_with_the_key(data, fragment):
    with pytest.raises(ConfigError) as info:
        validate_space(data, "space.yaml")
    assert "space.yaml" in str(info.value)
    assert fragment in str(info.value)


def test_unknown_model_error_lists_the_valid_names():
    with pytest.raises(ConfigError, match="deeplabv3plus.*segnet.*unet"):
        validate_space({"models": {"mask_rcnn": {}}}, "s.yaml")


def test_aliases_resolve_to_canonical_names_with_presets():
    space = validate_space({"models": {"unet_resnet": {}, "Light_weight_unet": {"depth": 4}},
                            "input_size": 64}, "s.yaml")
    assert set(space.models) == {"unet", "light_unet"}
    assert space.models["unet"]["backbone"] == "resnet50"


def test_values_parse_as_choice_fixed_and_range():
    space = space_with(learning_rate={"min": 1e-4, "max": 1e-2, "sampling": "log"},
                       batch_size=[2, 4], aug_strength=0.3)
    assert space.params["learning_rate"] == Range(1e-4, 1e-2, None, "log")
    assert space.params["batch_size"] == [2, 4]
    assert space.params["aug_strength"] == 0.3


def test_rebalance_is_auto_unless_the_space_says_otherwise():
    assert validate_space(MINIMAL, "s.yaml").params["rebalance"] == "auto"
    assert space_with(rebalance="off").params["rebalance"] == "off"
    assert space_with(rebalance=["auto", "off"]).params["rebalance"] == ["auto", "off"]


def test_yaml_file_round_trip(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "loss": ["ce", "dice"]}))
    space = load_space(path)
    again = validate_space(yaml.safe_load(space.to_yaml()), "again")
    assert again.models == space.models and again.params == space.params


def test_missing_space_file_names_the_fix():
    with pytest.raises(ConfigError, match="--space PATH"):
        load_space("no/such/space.yaml")


def test_parse_input_size():
    assert parse_input_size(128) == (128, 128)
    assert parse_input_size("384x288") == (288, 384)
    with pytest.raises(ConfigError):
        parse_input_size(8)


def test_auto_values_follow_the_fingerprint():
    space = validate_space({"models": {"unet": {"depth": 4}}, "input_size": "auto",
                            "policy": "auto", "loss": "auto"}, "s.yaml")
    small = resolve_auto(space, {"image_size": {"median": [256, 320]},
                                 "class_pixel_fraction": {"bg": 0.6, "a": 0.4}})
    assert small.params["policy"] == "resize"
    assert small.input_sizes() == [(128, 128), (256, 256)]
    assert "weighted_ce" not in small.params["loss"]
    # Large photos and a rare class (CWFID-like): crops, weighted losses.
    large = resolve_auto(space, {"image_size": {"median": [966, 1296]},
                                 "class_pixel_fraction": {"bg": 0.926, "crop": 0.016, "weed": 0.058}})
    assert large.params["policy"] == "crop"
    assert "weighted_ce" in large.params["loss"]
    for h, w in large.input_sizes():
        assert h % 16 == 0 and w % 16 == 0


def test_per_model_hyperparameters_are_namespaced_and_conditional(tiny_dataset):
    from autoseg.hypermodel import AutosegHyperModel, TrainingData

    data = TrainingData.from_path(tiny_dataset)
    space = validate_space({"models": {"unet": {"depth": [3, 4], "filters": 8},
                                       "light_unet": {"depth": [3, 4], "filters": 8}},
                            "input_size": 32}, "s.yaml")
    hypermodel = AutosegHyperModel(space, data)
    hp = kt.HyperParameters()
    hypermodel.declare_model(hp)
    names = [h.name for h in hp.space]
    assert {"model_name", "unet/depth", "light_unet/depth"} <= set(names)
    assert "depth" not in names
    hp.values["model_name"] = "light_unet"
    assert not hp.is_active("unet/depth") and hp.is_active("light_unet/depth")


@pytest.mark.parametrize("loss, method", [("weighted_ce", "median_frequency"),
                                          ("weighted_ce_dice", "sqrt_median_frequency"),
                                          ("ce_dice", None)])
def test_a_weighted_loss_gets_its_weights_from_the_training_split(tiny_dataset, loss, method):
    import numpy as np

    from autoseg.data.pipeline import class_weights
    from autoseg.hypermodel import AutosegHyperModel, TrainingData

    data = TrainingData.from_path(tiny_dataset)
    hypermodel = AutosegHyperModel(space_with(input_size=32, loss=[loss]), data)
    config = hypermodel.build(kt.HyperParameters()).loss.get_config()
    if method is None:
        assert config.get("class_weights") is None
        return
    expected = class_weights(data.dataset, method, stems=data.train_stems)
    everywhere = class_weights(data.dataset, method)
    assert not np.allclose(expected, everywhere)  # the split's own, not the whole dataset's
    np.testing.assert_allclose(config["class_weights"], expected, rtol=1e-6)
