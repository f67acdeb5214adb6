"""The one test base every architecture goes through, parametrised over the registry.

For every registered architecture and every value of its `backbone` option: it builds, its
output is `(N, H, W, num_classes)` softmax probabilities, one training step gives a finite
loss and moves every kernel, and it round-trips through `.keras` with `safe_mode=True` and
no `custom_objects`. Architectures registered later are picked up automatically.

To keep this fast, every integer option whose name ends in `filters`, `channels` or `width`
is narrowed to 8, a `depth` option with choices takes its smallest, and the `tiny` backbone
stands in for real ones. Real backbones (ResNet-50,
VGG16, MobileNetV2) build here in the fast lane; their training step and round trip are
marked slow. The fast lane's training step runs eagerly; the graph-mode (tf.function) step of
every case is in the slow lane.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import autoseg.architectures  # noqa: E402
from autoseg import models  # noqa: E402
from autoseg.backbones import build_backbone  # noqa: E402
from autoseg.errors import ConfigError  # noqa: E402
from autoseg.registry import ARCHITECTURES, BACKBONES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NUM_CLASSES = 3
NARROW = 8
_WIDTH_OPTION = re.compile(r"(filters|channels|width)$")
# Backbone values that need no real encoder: the plain encoder and the test backbone.
_CHEAP_BACKBONES = {None, "none"} | {
    name for name in BACKBONES.names() if BACKBONES.get(name)[1].get("for_tests")
}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    backbone: str | None

    @property
    def id(self) -> str:
        return self.name if self.backbone is None else f"{self.name}-{self.backbone}"

    @property
    def real_backbone(self) -> bool:
        return self.backbone not in _CHEAP_BACKBONES

    @property
    def spec(self):
        return ARCHITECTURES.get(self.name)

    def options(self) -> dict:
        options = {
            key: NARROW
            for key, default in self.spec.defaults.items()
            if _WIDTH_OPTION.search(key)
            and isinstance(default, int)
            and not isinstance(default, bool)
            and default > NARROW
        }
        if "depth" in self.spec.choices:
            options["depth"] = min(self.spec.choices["depth"])
        if self.backbone is not None:
            options["backbone"] = self.backbone
        return options

    def input_shape(self) -> tuple[int, int, int]:
        """At least 64 px high, and not square (catches height/width mix-ups)."""
        divisor = models.input_divisor(self.name, **self.options())
        height = math.ceil(64 / divisor) * divisor
        return (height, height + divisor, 3)


def _cases() -> list[Case]:
    cases = []
    for name in ARCHITECTURES.names():
        backbones = ARCHITECTURES.get(name).backbones
        cases += [Case(name, b) for b in backbones] if backbones else [Case(name, None)]
    return cases


CASES = _cases()
FAST_CASES = [c for c in CASES if not c.real_backbone]
REAL_CASES = [c for c in CASES if c.real_backbone]


def _build(case: Case) -> keras.Model:
    keras.utils.set_random_seed(0)
    return models.build(case.name, NUM_CLASSES, case.input_shape(), **case.options())


def _images(case: Case, n: int = 2, seed: int = 0) -> np.ndarray:
    height, width, _ = case.input_shape()
    return np.random.default_rng(seed).uniform(0, 255, (n, height, width, 3)).astype("float32")


@pytest.fixture(scope="module", params=FAST_CASES, ids=[c.id for c in FAST_CASES])
def fast(request):
    return request.param, _build(request.param)


@pytest.fixture(scope="module", params=REAL_CASES, ids=[c.id for c in REAL_CASES])
def real(request):
    return request.param, _build(request.param)


# --- the contract checks, shared by the fast and the real-backbone cases -------------------


def _output_layer(model):
    """The layer that makes the model's output, looking inside nested models."""
    layer = model.output._keras_history[0]
    while isinstance(layer, keras.Model):
        layer = layer.output._keras_history[0]
    return layer


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def check_output_contract(case: Case, model: keras.Model) -> None:
    height, width, _ = case.input_shape()
    assert model.name == case.spec.name
    assert tuple(model.input.shape) == (None, height, width, 3)
    assert tuple(model.output.shape) == (None, height, width, NUM_CLASSES)
    assert model.output.dtype == "float32"
    assert _output_layer(model).name == "predictions"
    for layer in _all_layers(model):
        assert not isinstance(layer, keras.layers.Lambda), layer.name
        cls = type(layer)
        assert cls.__module__.startswith("keras.") or keras.saving.get_registered_name(
            cls
        ).startswith("autoseg>"), f"{layer.name}: {cls} is not registered with package='autoseg'"
    probabilities = np.asarray(model(_images(case), training=False))
    assert probabilities.shape == (2, height, width, NUM_CLASSES)
    assert np.all(probabilities >= 0) and np.all(probabilities <= 1)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)


def check_training_step(case: Case, model: keras.Model, run_eagerly: bool) -> None:
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        jit_compile=False,
        run_eagerly=run_eagerly,
    )
    height, width, _ = case.input_shape()
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, (2, height, width))
    kernels = {v.path: np.array(v) for v in model.trainable_variables if "kernel" in v.path}
    assert kernels, "the model has no trainable kernels"
    logs = model.train_on_batch(_images(case), labels, return_dict=True)
    assert "loss" in logs
    assert all(np.isfinite(float(value)) for value in logs.values()), logs
    unchanged = [
        v.path
        for v in model.trainable_variables
        if v.path in kernels and np.array_equal(np.array(v), kernels[v.path])
    ]
    assert not unchanged, f"kernels without gradient: {unchanged}"


def check_keras_round_trip(case: Case, model: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / f"{case.id}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = _images(case, seed=5)
    assert loaded.name == model.name
    np.testing.assert_allclose(
        np.asarray(loaded(images, training=False)),
        np.asarray(model(images, training=False)),
        atol=1e-5,
    )


def test_output_contract(fast):
    check_output_contract(*fast)


def test_training_step(fast):
    # Eager: the same train_step, gradients and optimizer; tracing the tf.function costs
    # 5-15 s per model on 2 cores, so the graph-mode step is in the slow lane below.
    check_training_step(*fast, run_eagerly=True)


@pytest.mark.slow
def test_compiled_training_step(fast):
    check_training_step(*fast, run_eagerly=False)


def test_keras_round_trip(fast, tmp_path):
    check_keras_round_trip(*fast, tmp_path)


def test_real_backbone_builds(real):
    check_output_contract(*real)


@pytest.mark.slow
def test_real_backbone_training_step(real):
    check_training_step(*real, run_eagerly=False)


@pytest.mark.slow
def test_real_backbone_keras_round_trip(real, tmp_path):
    check_keras_round_trip(*real, tmp_path)


# --- name, option and size validation, for every architecture ------------------------------

ARCH_NAMES = ARCHITECTURES.names()


@pytest.mark.parametrize("name", ARCH_NAMES, ids=str)
def test_invalid_input_size_names_the_nearest_valid_sizes(name):
    case = Case(name, None)
    divisor = models.input_divisor(name, **case.options())
    if divisor == 1:
        pytest.skip(f"{name} accepts every input size")
    bad = 3 * divisor + 1
    with pytest.raises(ConfigError) as info:
        models.build(name, NUM_CLASSES, (bad, bad, 3), **case.options())
    message = str(info.value)
    assert f"input size {bad} is not a multiple of {divisor} for {name}" in message
    assert f"nearest valid sizes: {3 * divisor}, {4 * divisor}" in message
    with pytest.raises(ConfigError, match=f"input width {bad} is not a multiple of {divisor}"):
        models.build(name, NUM_CLASSES, (2 * divisor, bad, 3), **case.options())


@pytest.mark.parametrize("name", ARCH_NAMES, ids=str)
def test_unknown_option_lists_the_valid_ones(name):
    spec = ARCHITECTURES.get(name)
    with pytest.raises(ConfigError) as info:
        models.build(name, NUM_CLASSES, (64, 64, 3), no_such_option=1)
    message = str(info.value)
    assert "Unknown option(s) no_such_option" in message
    for key, default in spec.defaults.items():
        assert f"{key}={default!r}" in message


@pytest.mark.parametrize("name", ARCH_NAMES, ids=str)
def test_registered_defaults_are_the_builders_keyword_defaults(name):
    spec = ARCHITECTURES.get(name)
    parameters = list(inspect.signature(spec.builder).parameters.values())
    assert [p.name for p in parameters[:2]] == ["num_classes", "input_shape"]
    keywords = {p.name: p.default for p in parameters[2:]}
    assert keywords == dict(spec.defaults)
    for key, allowed in spec.choices.items():
        assert spec.defaults[key] in allowed, f"default {key} not among its choices"
    if "backbone" in spec.defaults:
        assert tuple(spec.choices["backbone"]) == spec.backbones


@pytest.mark.parametrize("name", ARCH_NAMES, ids=str)
def test_describe_lists_every_option(name):
    row = models.describe(name.upper())
    spec = ARCHITECTURES.get(name)
    assert row["name"] == spec.name and row["family"] == spec.family
    assert row["options"] == dict(spec.defaults)
    assert row["divisor"] == spec.input_divisor(dict(spec.defaults))
    assert row["description"]


def test_list_architectures_covers_the_registry():
    assert [row["name"] for row in models.list_architectures()] == ARCHITECTURES.names()


def test_every_architecture_module_registers_something():
    """A module in autoseg/architectures/ that registers nothing (e.g. a missing import
    line in __init__.py) fails here."""
    registering = {spec.builder.__module__ for spec in map(ARCHITECTURES.get, ARCH_NAMES)}
    modules = [
        f"autoseg.architectures.{info.name}"
        for info in pkgutil.iter_modules(autoseg.architectures.__path__)
        if info.name != "layers"  # shared blocks, no family
    ]
    assert "autoseg.architectures.unet" in modules
    silent = sorted(set(modules) - registering)
    assert not silent, f"modules that register no architecture (imported in __init__?): {silent}"


# The model names of the original project's table, and the family each belongs to.
ORIGINAL_NAMES = {
    "unet": ("unet", "unet", {}),
    "unet_resnet": ("unet", "unet", {"backbone": "resnet50"}),
    "Light_weight_unet": ("unet", "light_unet", {}),
    "segnet_resnet": ("segnet", None, {}),
    "depplabv3plus": ("deeplabv3plus", None, {}),
    "pix2pixunet": ("pix2pix", None, {}),
}


@pytest.mark.parametrize("original", sorted(ORIGINAL_NAMES), ids=str)
def test_original_model_names_resolve_case_insensitively(original):
    family, target, preset = ORIGINAL_NAMES[original]
    families = {ARCHITECTURES.get(n).family for n in ARCH_NAMES}
    assert family in families, f"the {family} family is not registered"
    for spelling in (original, original.upper(), original.swapcase()):
        spec, options = models.resolve(spelling)
        assert spec.family == family
        if target is not None:
            assert spec.name == target
        assert {k: options[k] for k in preset} == preset


@pytest.mark.parametrize("alias", sorted(ARCHITECTURES.aliases()), ids=str)
def test_alias_presets_are_valid_options(alias):
    target, preset = ARCHITECTURES.aliases()[alias]
    spec, options = models.resolve(alias.upper())
    assert spec.name == target
    assert set(preset) <= set(spec.defaults)
    assert {k: options[k] for k in preset} == preset
    # Explicit options override an alias's presets.
    key = next(iter(preset), None)
    if key == "backbone":
        assert models.resolve(alias, backbone="none")[1]["backbone"] == "none"


# --- unet and light_unet --------------------------------------------------------------------


def test_unet_size_error_message_matches_the_documented_form():
    with pytest.raises(ConfigError) as info:
        models.build("unet", 3, (100, 100, 3))
    assert str(info.value) == (
        "input size 100 is not a multiple of 16 for unet with depth 4; "
        "nearest valid sizes: 96, 112."
    )
    with pytest.raises(ConfigError, match="multiple of 8 for unet with depth 3; .* 8, 16"):
        models.build("unet", 3, (12, 16, 3), depth=3)
    with pytest.raises(ConfigError, match=r"nearest valid sizes: 32\.$"):
        models.build("light_unet", 3, (20, 20, 3), depth=5)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(depth=6), r"Invalid depth .* Received: depth=6. Valid values: 3, 4, 5"),
        (dict(filters="64"), r"filters of architecture 'unet' must be of type int .*filters='64'"),
        (dict(filters=0), "filters must be a positive integer"),
        (dict(dropout=1.5), r"dropout must be a number in \[0, 1\)"),
        (dict(batch_norm=1), "batch_norm of architecture 'unet' must be of type bool"),
        (dict(backbone="resnet18"), r"Invalid backbone .* Valid values: 'none', 'mobilenetv2'"),
        (dict(weights="imagenet"), "weights need a backbone"),
        (dict(upsampling="cubic"), "Valid values: 'bilinear', 'nearest', 'transpose'"),
    ],
    ids=[
        "depth", "filters-type", "filters-value", "dropout",
        "batch_norm", "backbone", "weights", "upsampling",
    ],  # fmt: skip
)
def test_unet_rejects_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        models.build("unet", 3, (64, 64, 3), **options)


def test_build_rejects_bad_classes_and_shapes():
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 2"):
        models.build("unet", 1, (64, 64, 3))
    with pytest.raises(ConfigError, match=r"input_shape must be \(height, width, 3\) for RGB or \(height, width, 1\)"):
        models.build("unet", 3, (64, 64, 2))
    with pytest.raises(ConfigError, match="Unknown architecture 'vnet'"):
        models.build("vnet", 3, (64, 64, 3))


def test_option_values_are_case_insensitive_too():
    _, options = models.resolve("UNET", backbone="ResNet50", upsampling="Transpose")
    assert options["backbone"] == "resnet50" and options["upsampling"] == "transpose"


@pytest.mark.parametrize("depth", [3, 4, 5], ids=lambda d: f"depth{d}")
def test_light_unet_has_under_a_tenth_of_unets_parameters(depth):
    light = models.count_params("light_unet", 3, 32, depth=depth)
    full = models.count_params("unet", 3, 32, depth=depth)
    assert light * 10 < full, f"light_unet {light:,} vs unet {full:,}"
    assert light > 10_000  # a real network, not an empty one


def test_unet_options_shape_the_graph():
    model = models.build(
        "unet", 3, (32, 32, 3), depth=3, filters=4, upsampling="transpose", dropout=0.5,
        batch_norm=False,
    )
    names = {layer.name: layer for layer in model.layers}
    assert {"dec3_upconv", "dec2_upconv", "dec1_upconv", "bottleneck_dropout"} <= set(names)
    assert "enc4_conv1" not in names and "enc3_conv2" in names
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
    assert names["bottleneck_conv1"].filters == 4 * 2**3
    assert names["dec1_conv2"].filters == 4
    light = models.build("light_unet", 3, (32, 32, 3), depth=3, filters=4)
    depthwise = [l.name for l in light.layers if isinstance(l, keras.layers.DepthwiseConv2D)]
    assert "enc1_conv2_depthwise" in depthwise and "enc1_conv1_depthwise" not in depthwise
    assert len(depthwise) == 2 * (3 + 1 + 3) - 1


def test_unet_depth5_holds_the_whole_keras_applications_encoder():
    """At depth 5 the bottleneck is the stride-32 tap, so the whole notop encoder is in
    (test_backbones checks every backbone against keras.applications)."""
    backbone, encoder_params = "resnet50", 23_587_712
    inputs = keras.Input((64, 64, 3))
    backbone_layers = {
        layer.name for layer in keras.Model(inputs, build_backbone(backbone, inputs)).layers
    }
    model = models.build("unet", 3, (64, 64, 3), backbone=backbone, depth=5, filters=4)
    encoder = sum(l.count_params() for l in model.layers if l.name in backbone_layers)
    assert encoder == encoder_params


def test_count_params_matches_the_model():
    assert models.count_params("unet", 3, (32, 48), depth=3, filters=4) == models.build(
        "unet", 3, (32, 48, 3), depth=3, filters=4
    ).count_params()


def test_describe_unet():
    row = models.describe("Light_Weight_UNet")
    assert row["name"] == "light_unet" and row["aliases"] == {"light_weight_unet": {}}
    row = models.describe("unet")
    assert row["aliases"]["unet_resnet"] == {"backbone": "resnet50"}
    assert row["divisor"] == 16 and row["divisor_depends_on"] == ["depth"]
    assert {"none", "resnet50", "vgg16", "mobilenetv2", "tiny"} <= set(row["backbones"])


# --- README table and the `models` command ----------------------------------------------------


def test_readme_model_table_is_generated_from_the_registry():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- models:start -->\n(.*?)<!-- models:end -->", text, re.S)
    assert match, "README.md lost its <!-- models:start --> ... <!-- models:end --> markers"
    assert match.group(1) == models.model_table_markdown(), (
        "README model table is stale; paste autoseg.models.model_table_markdown() "
        "between the markers"
    )


def test_model_table_markdown_rows(monkeypatch):
    monkeypatch.setattr(models, "count_params", lambda name, *a, **k: 1234567)
    table = models.model_table_markdown()
    lines = table.splitlines()
    assert lines[0].startswith("| Model | Aliases | Backbones | Parameters (256², 3 classes)")
    assert len(lines) == 2 + len(ARCH_NAMES)
    unet_row = next(line for line in lines if line.startswith("| `unet` |"))
    assert "`unet_resnet` (backbone=resnet50)" in unet_row
    assert "**none**, mobilenetv2, resnet50, vgg16" in unet_row and "tiny" not in unet_row
    assert "| 1,234,567 | 16 (varies with depth) |" in unet_row


def test_models_command_help_imports_no_tensorflow():
    code = (
        "import sys\n"
        "from autoseg.cli import main\n"
        "assert main(['models', '--help']) == 0\n"
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--input-size N" in result.stdout and "--classes C" in result.stdout


def test_models_command_lists_every_architecture(monkeypatch, capsys):
    from autoseg.cli import main

    counted = []
    monkeypatch.setattr(
        models, "count_params", lambda name, c, size, **o: counted.append((name, c, size)) or 4321
    )
    assert main(["models", "--input-size", "100", "--classes", "5"]) == 0
    out = capsys.readouterr().out
    for name in ARCH_NAMES:
        assert re.search(rf"^{name}  \(", out, re.M), name
    assert "unet_resnet (backbone=resnet50)" in out
    assert "depth=4 [3|4|5]" in out
    assert "a multiple of 16 with the defaults (depends on depth)" in out
    assert "100 is not a valid size; nearest: 96, 112" in out
    assert all(size == 100 and c == 5 for _, c, size in counted)
    valid_at_100 = [n for n in ARCH_NAMES if 100 % models.describe(n)["divisor"] == 0]
    assert sorted(n for n, _, _ in counted) == sorted(valid_at_100)
    assert out.count("parameters: 4,321 at 100x100, 5 classes") == len(valid_at_100)
