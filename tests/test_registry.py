"""Registry facts that the CLI and search spaces read: test-only backbones stay out of sight."""

from __future__ import annotations

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
