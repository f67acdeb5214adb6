"""Registry facts that the CLI and search spaces read: test-only backbones stay out of sight."""

from __future__ import annotations

import numpy as np
import pytest

from autoseg import models, registry
from autoseg.cli import main
from autoseg.errors import ConfigError
from autoseg.registry import ARCHITECTURES
from autoseg.search_space import validate_space

#: The architectures that take a backbone, and the test-only backbone they all build with.
WITH_BACKBONES = [name for name in ARCHITECTURES.names() if ARCHITECTURES.get(name).backbones]


def test_tiny_is_the_test_only_backbone():
    assert registry.is_test_backbone("tiny")
    assert not registry.is_test_backbone("resnet50")
    assert not registry.is_test_backbone("none") and not registry.is_test_backbone("nope")


@pytest.mark.parametrize("name", WITH_BACKBONES, ids=str)
def test_user_backbones_leave_out_tiny_but_models_build_with_it(name, monkeypatch):
    monkeypatch.delenv(registry.TEST_BACKBONES_ENV, raising=False)
    spec = ARCHITECTURES.get(name)
    assert "tiny" in spec.backbones  # what the builders and models.build accept
    assert spec.user_backbones == tuple(b for b in spec.backbones if b != "tiny")
    assert {"resnet50", "vgg16", "mobilenetv2"} <= set(spec.user_backbones)
    monkeypatch.setenv(registry.TEST_BACKBONES_ENV, "1")
    assert spec.user_backbones == spec.backbones


def test_a_search_space_refuses_tiny(monkeypatch):
    monkeypatch.delenv(registry.TEST_BACKBONES_ENV, raising=False)
    space = {"models": {"deeplabv3plus": {"backbone": ["resnet50", "tiny"]}}, "input_size": 64}
    with pytest.raises(ConfigError) as info:
        validate_space(space, "space.yaml")
    assert str(info.value) == (
        "space.yaml: models.deeplabv3plus.backbone has 'tiny'; valid values for deeplabv3plus: "
        "mobilenetv2, resnet50, vgg16."
    )


def test_tests_opt_in_to_tiny_in_a_search_space(monkeypatch):
    monkeypatch.setenv(registry.TEST_BACKBONES_ENV, "1")
    space = validate_space(
        {"models": {"unet": {"backbone": "tiny", "depth": 3}}, "input_size": 32}, "test space"
    )
    assert space.models["unet"]["backbone"] == "tiny"


def test_models_command_does_not_offer_tiny(monkeypatch, capsys):
    monkeypatch.delenv(registry.TEST_BACKBONES_ENV, raising=False)
    monkeypatch.setattr(models, "count_params", lambda name, *args, **kwargs: 1234)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny" not in out
    unet = out[out.index("\nunet  ("):]
    assert "  backbones:  none, mobilenetv2, resnet50, vgg16\n" in unet
    assert "backbone=none [none|mobilenetv2|resnet50|vgg16]" in unet
    assert "  backbones:  mobilenetv2, resnet50, vgg16\n" in out  # deeplabv3plus


def test_an_architectures_defaults_are_its_builders_signature():
    assert ARCHITECTURES.get("segnet").defaults == {
        "backbone": "none", "depth": 5, "filters": 64, "weights": None}
    assert ARCHITECTURES.get("unet").defaults["filters"] == 64
    assert ARCHITECTURES.get("light_unet").defaults["filters"] == 16

    def build_toy(num_classes, input_shape, width=8, *, act="relu"):
        raise AssertionError("not built here")

    assert registry.builder_defaults(build_toy) == {"width": 8, "act": "relu"}


@pytest.mark.parametrize("signature", ["width", "width=8, **options", "*layers"])
def test_a_builder_option_without_a_default_is_refused_at_registration(signature):
    namespace: dict = {}
    exec(f"def build_toy(num_classes, input_shape, {signature}): pass", namespace)
    with pytest.raises(TypeError, match="needs a default"):
        registry.register_architecture("toy_no_default", family="toy")(namespace["build_toy"])
    assert "toy_no_default" not in ARCHITECTURES.names()


# -- a family registered at run time: one builder, one decorator, and it works end to end --


def register_toy_family(monkeypatch):
    """Registers `toy_seg` (its own family, no calibrated memory factor) for this test only."""
    import keras

    monkeypatch.setattr(ARCHITECTURES, "_entries", dict(ARCHITECTURES._entries))

    @registry.register_architecture("toy_seg", family="toy_seg", choices={"depth": (1, 2)},
                                    input_divisor=lambda options: 2 ** options["depth"],
                                    description="Toy: strided convolutions and upsampling")
    def build_toy(num_classes, input_shape, depth=1, filters=4):
        inputs = keras.Input(shape=input_shape)
        x = inputs
        for level in range(depth):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                                    name=f"toy_down{level}")(x)
        x = keras.layers.UpSampling2D(2 ** depth, interpolation="bilinear")(x)
        outputs = keras.layers.Conv2D(num_classes, 1, activation="softmax", dtype="float32",
                                      name="toy_head")(x)
        return keras.Model(inputs, outputs, name="toy_seg")


@pytest.mark.slow
def test_a_family_registered_at_run_time_works_end_to_end(tiny_dataset, tmp_path, monkeypatch,
                                                           capsys):
    from autoseg import budget
    from autoseg.export import export
    from autoseg.predict import load
    from autoseg.search import search

    register_toy_family(monkeypatch)
    monkeypatch.setenv("AUTOSEG_TRIAL_PROCESS", "0")  # run-time registrations stay in-process
    # `autoseg models` lists it, with its defaults, choices and divisor.
    assert main(["models"]) == 0
    assert "toy_seg" in capsys.readouterr().out
    row = models.describe("toy_seg")
    assert row["options"] == {"depth": 1, "filters": 4} and row["choices"] == {"depth": [1, 2]}
    assert row["divisor"] == 2 and row["divisor_depends_on"] == ["depth"]
    # A search space accepts it, and checks its options like a shipped family's.
    space = {"models": {"toy_seg": {"depth": [1, 2], "filters": [4, 8]}}, "input_size": 32,
             "policy": "resize", "batch_size": 2, "loss": "ce", "aug_strength": 0.0,
             "learning_rate": 0.01, "max_epochs": 1}
    validate_space(space, "space.yaml")
    with pytest.raises(ConfigError, match="depth"):
        validate_space({**space, "models": {"toy_seg": {"depth": 3}}}, "space.yaml")
    # The memory estimate takes it, with the common factor (it has no calibrated one).
    model = models.build("toy_seg", 3, (32, 32, 3), depth=2)
    estimate = budget.estimate_training_memory(model, 2, family="toy_seg")
    assert budget.activation_factor("toy_seg") == budget.ACTIVATION_FACTOR
    assert 0 < estimate.per_sample_bytes and estimate.total_bytes > budget.FIXED_BYTES
    # A search trains it within a memory budget; the export predicts with it.
    result = search(tiny_dataset, space=space, out=tmp_path / "run", tuner="random",
                    max_trials=2, memory_budget="4GB", seed=0, log=lambda _: None)
    assert result.counts.get("COMPLETED") == 2 and result.best["model_name"] == "toy_seg"
    exported = export("best", run=result.rundir, out=tmp_path / "model", formats="keras",
                      tta="none", log=lambda _: None)
    segmenter = load(exported.out)
    image = np.full((48, 64, 3), 120, np.uint8)
    labels = segmenter.predict(image)
    assert labels.shape == (48, 64) and set(np.unique(labels)) <= {0, 1, 2}
