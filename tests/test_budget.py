"""autoseg.budget: sizes, activation counts, the memory estimate, budgets, peak memory.

The slow lane checks the estimate against measured training memory for every registered
architecture, one fresh process per configuration (RSS is per process, so earlier tests and
other configurations would distort it).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from autoseg import backbones, budget, devices
from autoseg.errors import BudgetError, ConfigError

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

MiB = 2**20


# --- parse_size -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "value, expected",
    [
        ("8GB", 8 * 10**9),
        ("512MB", 512 * 10**6),
        ("1.5GiB", 3 * 2**29),
        ("512MiB", 512 * 2**20),
        ("2 kib", 2048),
        (" 3 tb ", 3 * 10**12),
        ("100", 100),
        ("100B", 100),
        (".5KiB", 512),
        (4096, 4096),
    ],
)
def test_parse_size(value, expected):
    assert budget.parse_size(value) == expected


@pytest.mark.parametrize(
    "value", ["8 parsecs", "", "GB", "-1GB", "1e3GB", "8G", "0.1B", "1,5GB", 0, -5, True, 1.5, None]
)
def test_parse_size_rejects_junk_naming_value_and_forms(value):
    with pytest.raises(ConfigError) as info:
        budget.parse_size(value)
    message = str(info.value)
    assert repr(value) in message
    assert "GiB" in message and "MB" in message


def test_module_import_stays_free_of_tensorflow():
    code = "import sys, autoseg.budget; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- activation_elements --------------------------------------------------------------------

def test_activation_elements_of_a_sequential_model():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        layers.Conv2D(4, 3),  # 6 x 6 x 4 = 144
        layers.MaxPooling2D(),  # 3 x 3 x 4 = 36
        layers.Flatten(),  # 36
        layers.Dense(5),  # 5
    ])
    assert budget.activation_elements(model) == 144 + 36 + 36 + 5


def test_activation_elements_recurses_into_nested_models_and_counts_each_call():
    block = keras.Sequential(
        [keras.Input((4, 4, 2)), layers.Conv2D(2, 1), layers.ReLU()], name="block"
    )
    shared = layers.Dense(6, name="shared")
    inputs = keras.Input((4, 4, 2))
    x = block(inputs)  # 32 + 32, not the block's output once more
    a = shared(x)  # 4 x 4 x 6 = 96
    b = shared(inputs)  # 96 again: a second call
    outputs = layers.Concatenate()([a, b])  # 192
    model = keras.Model(inputs, outputs)
    assert budget.activation_elements(model) == 32 + 32 + 96 + 96 + 192


def test_activation_elements_counts_the_declared_training_passes():
    generator = keras.Sequential([keras.Input((4, 4, 3)), layers.Conv2D(2, 1)], name="g")  # 32
    discriminator = keras.Sequential([keras.Input((4, 4, 2)), layers.Conv2D(1, 3)], name="d")  # 4
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, generator(inputs))
    model.discriminator = discriminator  # a sub-model alone is not a training pass
    assert budget.activation_elements(model) == 32
    model.training_passes = [(discriminator, 2)]  # pix2pix's: on the real and the fake pair
    assert budget.activation_elements(model) == 32 + 2 * 4
    model.training_passes = [(discriminator, 3)]
    assert budget.activation_elements(model) == 32 + 3 * 4


def test_activation_elements_of_pix2pix_is_generator_plus_two_critic_passes():
    from autoseg import models

    model = models.build("pix2pix", 3, (32, 32, 3),
                         generator_options={"filters": 4, "depth": 3}, disc_filters=4)
    generator = budget.activation_elements(model.generator)
    critic = budget.activation_elements(model.discriminator)
    assert generator > 0 and critic > 0
    assert budget.activation_elements(model) == generator + 2 * critic


def test_activation_elements_needs_a_fixed_input_size():
    model = keras.Sequential([keras.Input((None, None, 3)), layers.Conv2D(4, 3)])
    with pytest.raises(ConfigError, match="unknown dimension"):
        budget.activation_elements(model)


# --- temporary_elements ---------------------------------------------------------------------

def _dilated_model():
    return keras.Sequential(
        [keras.Input((8, 8, 7)), layers.Conv2D(5, 3, padding="same", dilation_rate=18)]
    )


def test_temporary_elements_of_a_dilated_conv_by_hand():
    # 8x8x7 input, 3x3 kernel at rate 18, "same": padded to ceil((8 + 36) / 18) * 18 = 54;
    # the dense convolution's output in the batched space is (54 - 36)^2 x 5.
    model = _dilated_model()
    assert budget.temporary_elements(model) == 54 * 54 * 7 + 18 * 18 * 5
    plain = keras.Sequential([keras.Input((8, 8, 7)), layers.Conv2D(5, 3, padding="same")])
    assert budget.temporary_elements(plain) == 0


@pytest.mark.parametrize(
    "size, layer",
    [
        (8, lambda: layers.Conv2D(5, 3, padding="same", dilation_rate=18)),
        (12, lambda: layers.Conv2D(5, 3, padding="same", dilation_rate=2)),
        (11, lambda: layers.Conv2D(5, 3, padding="valid", dilation_rate=2)),
        (13, lambda: layers.DepthwiseConv2D(3, padding="same", dilation_rate=3)),
        (10, lambda: layers.SeparableConv2D(6, 3, padding="same", dilation_rate=4)),
    ],
    ids=["conv-rate18", "conv-rate2", "conv-valid", "depthwise", "separable"],
)
def test_temporary_elements_match_tensorflows_graph(size, layer):
    tf = pytest.importorskip("tensorflow")
    model = keras.Sequential([keras.Input((size, size, 7)), layer()])
    graph = tf.function(lambda x: model(x)).get_concrete_function(
        tf.TensorSpec((1, size, size, 7))).graph
    output = math.prod(model.output_shape[1:])
    temporaries = -output  # every convolution output but the layer's own
    for op in graph.get_operations():
        if op.type in ("SpaceToBatchND", "BatchToSpaceND", "Conv2D", "DepthwiseConv2dNative"):
            temporaries += math.prod(op.outputs[0].shape)
    assert budget.temporary_elements(model) == temporaries > 0


@pytest.mark.parametrize(
    "size, layer",
    [
        (8, lambda: backbones.Conv2D(5, 3, padding="same", dilation_rate=18)),
        (12, lambda: backbones.Conv2D(5, 3, padding="same", dilation_rate=2)),
        (13, lambda: backbones.DepthwiseConv2D(3, padding="same", dilation_rate=3)),
        (8, lambda: backbones.DepthwiseConv2D(3, padding="same", dilation_rate=18)),
    ],
    ids=["conv-centre-tap", "conv-rate2", "depthwise-rate3", "depthwise-centre-tap"],
)
def test_temporary_elements_of_autosegs_dilated_layers_match_tensorflows_graph(size, layer):
    """autoseg's own dilated layers copy less or nothing: the count follows what they run."""
    tf = pytest.importorskip("tensorflow")
    model = keras.Sequential([keras.Input((size, size, 7)), layer()])
    graph = tf.function(lambda x: model(x)).get_concrete_function(
        tf.TensorSpec((1, size, size, 7))).graph
    types = [op.type for op in graph.get_operations()]
    temporaries = -math.prod(model.output_shape[1:])
    for op in graph.get_operations():
        if op.type in ("SpaceToBatchND", "BatchToSpaceND", "Conv2D", "DepthwiseConv2dNative"):
            temporaries += math.prod(op.outputs[0].shape)
    assert budget.temporary_elements(model) == temporaries
    # Space-to-batch is left where taps reach the map and TensorFlow cannot dilate natively:
    # the depthwise convolution, and the plain one without oneDNN.
    dilation_left = size in (12, 13)
    native = isinstance(model.layers[0], backbones.Conv2D) and backbones._tf_runs_dilation_natively()
    assert ("SpaceToBatchND" in types) == (dilation_left and not native), types


# --- estimate_training_memory / admissible_batch_sizes --------------------------------------

@pytest.fixture(scope="module")
def small_model():
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        layers.Conv2D(8, 3, padding="same"),  # 2048
        layers.BatchNormalization(),  # 2048
        layers.Conv2D(2, 1),  # 512
    ])
    return model


def test_estimate_components(small_model):
    params = small_model.count_params()
    variables = len(small_model.trainable_weights)
    estimate = budget.estimate_training_memory(small_model, 3, factor=1.5)
    assert estimate.activation_elements == 2048 + 2048 + 512
    assert estimate.temporary_elements == 0
    assert estimate.parameter_bytes == 4 * params * 4
    assert estimate.per_sample_bytes == round(1.5 * 4608 * 4)
    assert estimate.overhead_bytes == (
        budget.TRAINING_OVERHEAD_BYTES + budget.OVERHEAD_BYTES_PER_VARIABLE * variables
    )
    assert estimate.fixed_bytes == budget.FIXED_BYTES
    assert estimate.growth_bytes == (
        estimate.overhead_bytes + estimate.parameter_bytes + 3 * estimate.per_sample_bytes
    )
    assert estimate.total_bytes == estimate.fixed_bytes + estimate.growth_bytes
    half = budget.estimate_training_memory(small_model, 3, factor=1.5, precision="mixed_float16")
    assert half.per_sample_bytes == estimate.per_sample_bytes // 2
    assert half.parameter_bytes == estimate.parameter_bytes


def test_estimate_adds_temporaries_to_activations():
    model = _dilated_model()
    estimate = budget.estimate_training_memory(model, 1, factor=1.0)
    assert estimate.activation_elements == 8 * 8 * 5
    assert estimate.temporary_elements == 54 * 54 * 7 + 18 * 18 * 5
    assert estimate.per_sample_bytes == 4 * (8 * 8 * 5 + 54 * 54 * 7 + 18 * 18 * 5)


def test_estimate_is_linear_in_batch(small_model):
    totals = [budget.estimate_training_memory(small_model, b).total_bytes for b in (1, 2, 5, 9)]
    step = totals[1] - totals[0]
    assert step > 0
    assert totals[2] - totals[0] == 4 * step
    assert totals[3] - totals[0] == 8 * step


def test_family_factor_is_used(small_model, monkeypatch):
    monkeypatch.setattr(budget, "FAMILY_ACTIVATION_FACTORS", {"segnet": 2.0})
    monkeypatch.setattr(budget, "ACTIVATION_FACTOR", 1.0)
    plain = budget.estimate_training_memory(small_model, 1, family="unet")
    segnet = budget.estimate_training_memory(small_model, 1, family="segnet")
    assert plain.factor == 1.0 and segnet.factor == 2.0
    assert segnet.per_sample_bytes == 2 * plain.per_sample_bytes


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 2.0},
                                    {"batch_size": 2, "precision": "float64"},
                                    {"batch_size": 2, "factor": -1.0}])
def test_estimate_rejects_bad_arguments(small_model, kwargs):
    with pytest.raises(ConfigError):
        budget.estimate_training_memory(small_model, **kwargs)


def test_admissible_batch_sizes(small_model):
    total = {b: budget.estimate_training_memory(small_model, b).total_bytes for b in (1, 2, 4, 8)}
    candidates = [8, 4, 2, 1, 4]
    assert budget.admissible_batch_sizes(small_model, candidates, total[4]) == [1, 2, 4]
    assert budget.admissible_batch_sizes(small_model, candidates, total[4] - 1) == [1, 2]
    assert budget.admissible_batch_sizes(small_model, candidates, total[8]) == [1, 2, 4, 8]
    assert budget.admissible_batch_sizes(small_model, candidates, 1 * MiB) == []


# --- budgets --------------------------------------------------------------------------------

def test_memory_budget_bytes(monkeypatch):
    assert budget.memory_budget_bytes("8GB") == 8 * 10**9
    assert budget.memory_budget_bytes(1000, safety=0.5) == 1000  # explicit: as given
    monkeypatch.setattr(budget, "available_memory_bytes", lambda: (10_000, "meminfo"))
    assert budget.memory_budget_bytes() == 8000
    assert budget.memory_budget_bytes(safety=0.5) == 5000
    for safety in (0, 1.5, "0.8"):
        with pytest.raises(ConfigError, match="safety"):
            budget.memory_budget_bytes(safety=safety)


def test_available_memory_on_cpu_is_this_process_plus_meminfo(monkeypatch):
    monkeypatch.setattr(devices, "gpu_visible", lambda: False)
    monkeypatch.setattr(budget, "_CGROUP_FILES", ())
    available, source = budget.available_memory_bytes()
    assert source == "meminfo"
    rss = budget._proc_status_bytes("VmRSS")
    total = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) * 1024
    assert rss < available <= total + 2 * rss


def test_available_memory_is_capped_by_the_cgroup_limit(monkeypatch, tmp_path):
    (tmp_path / "max").write_text("3000000000\n")
    (tmp_path / "current").write_text("1000000000\n")
    (tmp_path / "unlimited").write_text("max\n")
    monkeypatch.setattr(devices, "gpu_visible", lambda: False)
    monkeypatch.setattr(budget, "_meminfo_available_bytes", lambda: 10**12)
    monkeypatch.setattr(budget, "_CGROUP_FILES",
                        ((str(tmp_path / "max"), str(tmp_path / "current")),))
    available, _ = budget.available_memory_bytes()
    assert available == budget._proc_status_bytes("VmRSS") + 2 * 10**9
    monkeypatch.setattr(budget, "_CGROUP_FILES",
                        ((str(tmp_path / "unlimited"), str(tmp_path / "current")),))
    assert budget.available_memory_bytes()[0] >= 10**12


def test_gpu_without_nvidia_smi_asks_for_an_explicit_budget(monkeypatch):
    monkeypatch.setattr(devices, "gpu_visible", lambda: True)
    monkeypatch.setattr(budget, "_nvidia_smi_total_bytes", lambda: None)
    with pytest.raises(BudgetError, match="explicitly"):
        budget.available_memory_bytes()


# --- PeakMemory -----------------------------------------------------------------------------

def _allocate_and_free(num_bytes: int, hold: float = 0.0) -> None:
    array = np.ones(num_bytes // 8)  # np.ones touches every page
    time.sleep(hold)
    del array


def test_peak_memory_measures_a_200mb_allocation():
    with budget.PeakMemory(device="cpu") as peak:
        _allocate_and_free(200 * MiB)
    assert peak.source == "rss"
    assert 160 * MiB <= peak.growth_bytes <= 240 * MiB
    assert peak.peak_bytes == peak.start_bytes + peak.growth_bytes


def test_peak_memory_without_clear_refs_samples(monkeypatch):
    monkeypatch.setattr(budget, "_CLEAR_REFS", "/proc/self/no-such-file/clear_refs")
    with budget.PeakMemory(device="cpu") as peak:
        _allocate_and_free(200 * MiB, hold=0.3)
    assert peak._sampler is not None and not peak._sampler.is_alive()
    assert 160 * MiB <= peak.growth_bytes <= 240 * MiB


def test_peak_memory_sees_nothing_for_an_empty_block():
    _allocate_and_free(200 * MiB)  # an earlier peak must not count
    with budget.PeakMemory(device="cpu") as peak:
        pass
    assert peak.growth_bytes < 20 * MiB


# --- slow lane: the estimate against measured training memory -------------------------------

#: Tiny configurations of every architecture, at sizes the calibration did not use.
TINY = {
    "unet": {"filters": 4, "depth": 3},
    "light_unet": {"filters": 4, "depth": 3},
    "segnet": {"filters": 4, "depth": 3},
    "deeplabv3plus": {"backbone": "tiny", "aspp_filters": 8, "decoder_filters": 8},
    "pix2pix": {"generator_options": {"filters": 4, "depth": 3}, "disc_filters": 4},
}
SIZES = (64, 128)
BATCH = 4

_CHILD = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras, numpy as np, tensorflow as tf
    from autoseg import budget, losses, metrics, models
    from autoseg.registry import ARCHITECTURES
    name, options, size, batch = json.loads(sys.argv[1])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    masks = rng.integers(0, 3, (batch, size, size)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((images, masks)).repeat().batch(batch).prefetch(2)
    with budget.PeakMemory(device="cpu") as peak:
        model = models.build(name, 3, (size, size, 3), **options)
        model.compile(optimizer="adam", loss=losses.get_loss("ce", 3),
                      metrics=metrics.segmentation_metrics(["a", "b", "c"]), jit_compile=False)
        model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    estimate = budget.estimate_training_memory(
        model, batch, family=ARCHITECTURES.get(name).family)
    print(json.dumps({"measured": peak.growth_bytes, "predicted": estimate.growth_bytes,
                      "activation_share":
                          batch * estimate.per_sample_bytes / estimate.growth_bytes}))
    """
)


#: Wider configurations whose growth is mostly activations (and DeepLabV3+'s dilated-conv
#: temporaries), so that the activation term, not the overhead, is what is checked.
WIDE = {
    "unet": ({"filters": 16}, 128, 8),
    "light_unet": ({}, 128, 8),
    "segnet": ({"filters": 16}, 128, 8),
    "deeplabv3plus": (
        # Batch 12: with the padding-only taps of the dilated layers gone (backbones.Conv2D),
        # batch 8 left activations at 38 % of the growth.
        {"backbone": "mobilenetv2", "aspp_filters": 64, "decoder_filters": 64}, 128, 12
    ),
    "pix2pix": ({"generator_options": {"filters": 16}, "disc_filters": 16}, 128, 8),
}


def _measure_in_fresh_process(name: str, options: dict, size: int, batch: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([name, options, size, batch])],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_architecture_has_a_tiny_configuration():
    from autoseg.registry import ARCHITECTURES
    import autoseg.models  # noqa: F401

    assert sorted(TINY) == sorted(WIDE) == ARCHITECTURES.names()


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", sorted(TINY))
def test_predicted_growth_matches_measured_training_memory(name, size):
    row = _measure_in_fresh_process(name, TINY[name], size, BATCH)
    ratio = row["measured"] / row["predicted"]
    assert 0.75 <= ratio <= 1.25, (
        f"{name} at {size}px, batch {BATCH}: measured {row['measured'] / MiB:.0f} MiB, "
        f"predicted {row['predicted'] / MiB:.0f} MiB (ratio {ratio:.2f})"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WIDE))
def test_predicted_growth_matches_when_activations_dominate(name):
    options, size, batch = WIDE[name]
    row = _measure_in_fresh_process(name, options, size, batch)
    assert row["activation_share"] > 0.4, row  # else this would test the overhead again
    ratio = row["measured"] / row["predicted"]
    assert 0.75 <= ratio <= 1.25, (
        f"{name} {options} at {size}px, batch {batch}: measured "
        f"{row['measured'] / MiB:.0f} MiB, predicted {row['predicted'] / MiB:.0f} MiB "
        f"(ratio {ratio:.2f})"
    )


def test_every_shipped_family_has_a_calibrated_memory_factor():
    # A family without an entry would silently get the common factor: calibrate it with
    # `benchmarks/memory.py` and add it to FAMILY_ACTIVATION_FACTORS.
    from autoseg import models  # noqa: F401  (registers every architecture)
    from autoseg.registry import ARCHITECTURES

    specs = [ARCHITECTURES.resolve(name)[0] for name in ARCHITECTURES.names()]
    shipped = {s.family for s in specs if s.builder.__module__.startswith("autoseg.architectures.")}
    assert {"unet", "segnet", "deeplabv3plus", "pix2pix"} <= shipped
    assert sorted(shipped - set(budget.FAMILY_ACTIVATION_FACTORS)) == []
