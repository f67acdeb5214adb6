"""Mixed precision: the policy while a trial builds, a float32 head, loss scaling, a halved
activation estimate, and what `--precision auto` picks on a CPU.

Every registered architecture (the fast cases of `test_models`) is built under
`mixed_float16`: its convolutions compute in float16, its head in float32, it trains a step
with a finite loss through Keras' automatic `LossScaleOptimizer`, round-trips through
`.keras`, and its weights load into the float32 model that export rebuilds. Under
`mixed_bfloat16` likewise, without loss scaling. `--precision auto` on a CPU picks bfloat16
only for the architectures benchmarks/RESULTS.md measured faster in it with val mIoU within
0.01 (the plain U-Net, DeepLabV3+), and only where the CPU has the instructions (flags faked
here); float32 elsewhere.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from autoseg import budget, devices, models  # noqa: E402
from autoseg.errors import ConfigError  # noqa: E402
from test_models import FAST_CASES, NUM_CLASSES, _all_layers, _images, check_output_contract  # noqa: E402

MIXED = "mixed_float16"
BF16 = "mixed_bfloat16"
#: The float32 layers of a mixed model: the shared head, and the critic's patch logits.
FLOAT32_LAYERS = {"head_conv", "head_upsample", "predictions", "pix2pix_disc_logits"}


def _options(case) -> dict:
    options = case.options()
    if case.name == "pix2pix":  # float16 is emulated on CPU: narrow the default generator too
        unet = next(c for c in FAST_CASES if c.id == "unet-none")
        options["generator_options"] = unet.options()
    return options


def _build(case, policy: str):
    keras.utils.set_random_seed(0)
    with devices.dtype_policy(policy):
        return models.build(case.name, NUM_CLASSES, case.input_shape(), **_options(case))


@pytest.fixture(scope="module", params=FAST_CASES, ids=[c.id for c in FAST_CASES])
def mixed(request):
    return request.param, _build(request.param, MIXED)


@pytest.fixture(scope="module", params=FAST_CASES, ids=[c.id for c in FAST_CASES])
def bf16(request):
    return request.param, _build(request.param, BF16)


def _convolutions(model):
    return [layer for layer in _all_layers(model)
            if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose
                          | keras.layers.DepthwiseConv2D)]


def test_dtype_policy_is_restored_after_the_block_even_on_error():
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with devices.dtype_policy(MIXED):
            assert keras.config.dtype_policy().name == MIXED
            raise RuntimeError("a failing build")
    assert keras.config.dtype_policy().name == "float32"


def test_mixed_model_computes_in_float16_with_a_float32_head(mixed):
    case, model = mixed
    assert keras.config.dtype_policy().name == "float32"  # nothing leaked from the build
    convolutions = _convolutions(model)
    body = [c for c in convolutions if c.name not in FLOAT32_LAYERS]
    assert body and all(c.compute_dtype == "float16" for c in body), [
        (c.name, c.compute_dtype) for c in body if c.compute_dtype != "float16"
    ]
    assert all(c.variable_dtype == "float32" for c in convolutions)
    head = {layer.name: layer.compute_dtype for layer in _all_layers(model)
            if layer.name in FLOAT32_LAYERS}
    assert {"head_conv", "predictions"} <= set(head)
    assert set(head.values()) == {"float32"}, head
    check_output_contract(case, model)  # float32 output, probabilities summing to 1


def test_mixed_model_trains_a_step_with_loss_scaling(mixed):
    case, model = mixed
    # Outside the policy block: compile reads the model's own policy.
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  jit_compile=False, run_eagerly=True)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    if hasattr(model, "disc_optimizer"):  # Pix2Pix trains its critic with a second optimizer
        assert isinstance(model.disc_optimizer, keras.optimizers.LossScaleOptimizer)
    height, width, _ = case.input_shape()
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, (2, height, width))
    before = {v.path: np.array(v) for v in model.trainable_variables if "kernel" in v.path}
    logs = model.train_on_batch(_images(case), labels, return_dict=True)
    assert np.isfinite(float(logs["loss"])) and float(logs["loss"]) > 0, logs
    moved = [p for p, v in before.items()
             if not np.array_equal(v, np.array(next(w for w in model.trainable_variables
                                                     if w.path == p)))]
    assert moved, "no kernel moved: the scaled gradients were all skipped"


# A float32 Pix2Pix's critic optimizer has no loss scale to load (export keeps the generator).
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer 'disc_optimizer'")
def test_mixed_model_round_trips_and_its_weights_load_into_float32(mixed, tmp_path):
    case, model = mixed
    images = _images(case, seed=5)
    expected = np.asarray(model(images, training=False))
    path = tmp_path / f"{case.id}.keras"
    model.save(path)
    # As predict loads it. (Compiled, the loaded model would get a plain Adam and skip the
    # saved LossScaleOptimizer's state: Keras does not save a functional model's policy.)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert {c.compute_dtype for c in _convolutions(loaded)} == {"float16", "float32"}
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), expected, atol=1e-5)
    # What export does: rebuild in float32 and load the checkpoint's weights.
    weights = tmp_path / f"{case.id}.weights.h5"
    model.save_weights(weights)
    plain = _build(case, "float32")
    plain.load_weights(weights)
    assert {c.compute_dtype for c in _convolutions(plain)} == {"float32"}
    np.testing.assert_allclose(np.asarray(plain(images, training=False)), expected, atol=0.02)


def test_bfloat16_model_computes_in_bfloat16_with_a_float32_head(bf16):
    case, model = bf16
    assert keras.config.dtype_policy().name == "float32"
    body = [c for c in _convolutions(model) if c.name not in FLOAT32_LAYERS]
    assert body and all(c.compute_dtype == "bfloat16" for c in body), [
        (c.name, c.compute_dtype) for c in body if c.compute_dtype != "bfloat16"
    ]
    assert all(c.variable_dtype == "float32" for c in _convolutions(model))
    head = {layer.name: layer.compute_dtype for layer in _all_layers(model)
            if layer.name in FLOAT32_LAYERS}
    assert {"head_conv", "predictions"} <= set(head)
    assert set(head.values()) == {"float32"}, head
    check_output_contract(case, model)  # float32 output, probabilities summing to 1


# A float32 Pix2Pix's critic optimizer has no state to load (export keeps the generator).
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer 'disc_optimizer'")
def test_bfloat16_model_trains_without_loss_scaling_and_its_weights_load_into_float32(
        bf16, tmp_path):
    case, model = bf16
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  jit_compile=False, run_eagerly=True)
    # bfloat16 has float32's exponent range: Keras scales the loss for float16 only.
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    height, width, _ = case.input_shape()
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, (2, height, width))
    before = {v.path: np.array(v) for v in model.trainable_variables if "kernel" in v.path}
    logs = model.train_on_batch(_images(case), labels, return_dict=True)
    assert np.isfinite(float(logs["loss"])) and float(logs["loss"]) > 0, logs
    after = {v.path: np.array(v) for v in model.trainable_variables}
    assert any(not np.array_equal(v, after[p]) for p, v in before.items())
    # What export does with a trial's checkpoint: a float32 rebuild of the same weights.
    images = _images(case, seed=5)
    expected = np.asarray(model(images, training=False))
    weights = tmp_path / f"{case.id}.weights.h5"
    model.save_weights(weights)
    plain = _build(case, "float32")
    plain.load_weights(weights)
    got = plain(images, training=False)
    assert got.dtype == "float32" and plain.input.dtype == "float32"
    # bfloat16 keeps 8 bits of mantissa: the float32 rebuild is close, not equal.
    np.testing.assert_allclose(np.asarray(got), expected, atol=0.05)


@pytest.mark.parametrize("policy", [MIXED, BF16])
def test_mixed_estimate_halves_activations_and_keeps_float32_parameters(policy):
    case = next(c for c in FAST_CASES if c.id == "unet-none")
    model = _build(case, policy)
    full = budget.estimate_training_memory(model, 4, family="unet")
    half = budget.estimate_training_memory(model, 4, precision=policy, family="unet")
    assert (full.bytes_per_element, half.bytes_per_element) == (4, 2)
    assert half.per_sample_bytes == pytest.approx(full.per_sample_bytes / 2, abs=1)
    assert half.parameter_bytes == full.parameter_bytes == 16 * model.count_params()
    assert half.overhead_bytes == full.overhead_bytes
    assert half.total_bytes < full.total_bytes
    assert budget.admissible_batch_sizes(model, [1, 2, 4, 8, 16], full.total_bytes,
                                         precision=policy, family="unet")[-1] > 4


#: What `--precision auto` trains each architecture in on a CPU with native bfloat16, by
#: benchmarks/RESULTS.md ("bfloat16 on a CPU that has it", "bfloat16 quality of SegNet,
#: DeepLabV3+ and pix2pix"): bfloat16 only where it measured faster with val mIoU within 0.01
#: on the mean over seeds. Written out here so that changing
#: `devices.BFLOAT16_MODELS` without the measurements (and this table) fails.
AUTO_ON_A_BFLOAT16_CPU = {
    "unet": BF16,  # 1.62x at 32 filters, equal val mIoU over 3 seeds (RESULTS.md)
    "light_unet": "float32",  # 1.31x since batch norm is fused (0.80x with AMX before): LIGHT_UNET
    "segnet": BF16,  # 1.64x (2.05x with AMX), val mIoU -0.007 over 5 seeds
    "deeplabv3plus": BF16,  # 1.64x (1.54x with AMX), val mIoU -0.008 over 3 seeds (ResNet-50)
    "pix2pix": "float32",  # faster (1.70x, 2.14x with AMX), 2 seeds +0.077 / -0.032: unsettled
}
#: /proc/cpuinfo flags: this AMD EPYC's (AVX-512 with BF16), a Sapphire Rapids' (AMX), and
#: an Ice Lake's (AVX-512 without BF16: oneDNN emulates bfloat16 there, slower).
EPYC_FLAGS = "fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 vaes".split()
AMX_FLAGS = "fpu sse2 avx2 avx512f avx512bw avx512_vnni amx_tile amx_bf16 amx_int8".split()
ICELAKE_FLAGS = "fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_vbmi2 vaes".split()


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)


def test_auto_precision_table_covers_every_architecture():
    from autoseg.registry import ARCHITECTURES

    names = set(ARCHITECTURES.names())
    assert set(AUTO_ON_A_BFLOAT16_CPU) == names
    assert devices.BFLOAT16_MODELS <= names
    assert set(devices.BFLOAT16_SPEEDUP) == devices.BFLOAT16_CPU_FLAGS
    for speedups in devices.BFLOAT16_SPEEDUP.values():
        assert set(speedups) == names  # each measured (RESULTS.md)


@pytest.mark.parametrize("model", sorted(AUTO_ON_A_BFLOAT16_CPU))
@pytest.mark.parametrize("flags", [EPYC_FLAGS, AMX_FLAGS], ids=["avx512_bf16", "amx_bf16"])
def test_auto_on_a_cpu_with_bfloat16_picks_what_results_md_measured(no_gpu, model, flags):
    assert devices.resolve_precision("auto", model=model, cpu_flags=flags) == (
        AUTO_ON_A_BFLOAT16_CPU[model])
    # --precision float32 opts out; explicit choices are kept whatever the family.
    assert devices.resolve_precision("float32", model=model, cpu_flags=flags) == "float32"
    assert devices.resolve_precision("bfloat16", model=model, cpu_flags=flags) == BF16
    assert devices.resolve_precision("mixed", model=model, cpu_flags=flags) == MIXED


@pytest.mark.parametrize("model", sorted(AUTO_ON_A_BFLOAT16_CPU))
@pytest.mark.parametrize("flags", [ICELAKE_FLAGS, []], ids=["avx512-without-bf16", "none"])
def test_auto_on_a_cpu_without_bfloat16_is_float32(no_gpu, model, flags):
    assert devices.resolve_precision("auto", model=model, cpu_flags=flags) == "float32"
    # Asked for, bfloat16 is still given (oneDNN emulates it).
    assert devices.resolve_precision("bfloat16", model=model, cpu_flags=flags) == BF16


@pytest.mark.parametrize("flags, expected", [(EPYC_FLAGS, BF16), (AMX_FLAGS, BF16),
                                             (ICELAKE_FLAGS, "float32"), ([], "float32")],
                         ids=["avx512_bf16", "amx_bf16", "avx512-without-bf16", "none"])
def test_auto_picks_bfloat16_for_a_listed_family_only_where_the_cpu_has_it(
        no_gpu, monkeypatch, flags, expected):
    monkeypatch.setattr(devices, "BFLOAT16_MODELS", frozenset({"segnet"}))
    assert devices.resolve_precision("auto", model="segnet", cpu_flags=flags) == expected
    assert devices.resolve_precision("auto", model="unet", cpu_flags=flags) == "float32"
    assert devices.resolve_precision("float32", model="segnet", cpu_flags=flags) == "float32"


def test_auto_without_an_architecture_is_float32_on_a_bfloat16_cpu(no_gpu, monkeypatch):
    monkeypatch.setattr(devices, "BFLOAT16_MODELS", frozenset({"unet"}))
    assert devices.resolve_precision("auto", cpu_flags=EPYC_FLAGS) == "float32"


def test_auto_on_a_gpu_is_mixed_float16_whatever_the_cpu(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 1)
    assert devices.resolve_precision("auto", model="unet", cpu_flags=EPYC_FLAGS) == MIXED
    assert devices.resolve_precision("auto", model="segnet", cpu_flags=[]) == MIXED


def test_auto_reads_the_flags_of_this_cpu(no_gpu, monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: "
                       + " ".join(EPYC_FLAGS) + "\n\nprocessor\t: 1\n")
    assert devices.read_cpu_flags(cpuinfo) == frozenset(EPYC_FLAGS)
    assert devices.read_cpu_flags(tmp_path / "missing") == frozenset()
    monkeypatch.setattr(devices, "BFLOAT16_MODELS", frozenset({"unet"}))
    monkeypatch.setattr(devices, "read_cpu_flags", lambda: frozenset(EPYC_FLAGS))
    assert devices.resolve_precision("auto", model="unet") == BF16
    monkeypatch.setattr(devices, "read_cpu_flags", lambda: frozenset(ICELAKE_FLAGS))
    assert devices.resolve_precision("auto", model="unet") == "float32"


def test_names_are_checked():
    assert devices.resolve_precision("mixed_bfloat16") == BF16
    assert devices.resolve_precision("mixed_float16") == MIXED
    with pytest.raises(ConfigError, match=r"--precision 'half' is unknown\. Valid values: "
                                          r"auto, float32, mixed, bfloat16 "):
        devices.resolve_precision("half")


def test_search_rejects_an_unknown_precision_before_anything(tiny_dataset, tmp_path):
    from autoseg.search import search

    with pytest.raises(ConfigError, match="--precision 'fp16' is unknown"):
        search(tiny_dataset, space="ci", out=tmp_path / "run", precision="fp16")
    assert not (tmp_path / "run").exists()


def test_hypermodel_builds_mixed_trains_and_records_the_precision(tiny_dataset):
    import keras_tuner as kt

    from autoseg.hypermodel import AutosegHyperModel, TrainingData

    data = TrainingData.from_path(tiny_dataset, memory_budget_bytes=64 * 2**30)
    hypermodel = AutosegHyperModel(space="ci", data=data, precision="mixed")
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert keras.config.dtype_policy().name == "float32"
    assert model.dtype_policy.name == MIXED and model.output.dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = hypermodel.fit(hp, model, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])
    record = hypermodel.last_fit
    assert record["precision"] == MIXED
    assert record["replicas"] == 1 and record["global_batch_size"] == record["batch_size"]
    estimate = budget.estimate_training_memory(model, record["batch_size"], family="unet")
    assert record["predicted_peak_memory_bytes"] < estimate.total_bytes  # float32's
    json.dumps(record)  # goes to autoseg.json as is


def test_auto_resolves_per_architecture_in_one_search(tiny_dataset, no_gpu, monkeypatch):
    import keras_tuner as kt

    from autoseg import speed
    from autoseg.hypermodel import AutosegHyperModel, TrainingData

    monkeypatch.setattr(devices, "BFLOAT16_MODELS", frozenset({"unet"}))
    monkeypatch.setattr(devices, "read_cpu_flags", lambda *args: frozenset(EPYC_FLAGS))
    data = TrainingData.from_path(tiny_dataset, memory_budget_bytes=64 * 2**30)
    hypermodel = AutosegHyperModel(space="ci", data=data, precision="auto")
    assert hypermodel.precisions() == {"light_unet": "float32", "unet": BF16}
    for name, policy in [("unet", BF16), ("light_unet", "float32")]:
        hp = kt.HyperParameters()
        hp.values["model_name"] = name
        model = hypermodel.build(hp)
        assert model.dtype_policy.name == policy and model.output.dtype == "float32"
        hypermodel.fit(hp, model, epochs=1, verbose=0)
        assert hypermodel.last_fit["precision"] == policy
    # --precision float32 opts out for every architecture.
    assert AutosegHyperModel(space="ci", data=data, precision="float32").precisions() == "float32"
    # The plan's cost model counts the measured speed-up where bfloat16 is native, only there.
    cost = speed.ModelCost(model_name="unet", options={}, key="unet", family="unet",
                           train_flops_per_pixel=1e6, infer_flops_per_pixel=1e5, static_bytes=0,
                           sample_bytes_per_pixel=1.0, params=1, precision=BF16)
    costs = speed.CostModel(gflops=100.0)
    bf16_seconds = costs.epoch_seconds(cost, (64, 64), 10, 2)
    float32_seconds = costs.epoch_seconds(dataclasses.replace(cost, precision="float32"),
                                          (64, 64), 10, 2)
    assert float32_seconds / bf16_seconds == pytest.approx(
        devices.BFLOAT16_SPEEDUP["avx512_bf16"]["unet"])
    # An AMX CPU counts AMX's own (larger) measured speed-up.
    monkeypatch.setattr(devices, "read_cpu_flags", lambda *args: frozenset(AMX_FLAGS))
    assert float32_seconds / costs.epoch_seconds(cost, (64, 64), 10, 2) == pytest.approx(
        devices.BFLOAT16_SPEEDUP["amx_bf16"]["unet"])
    monkeypatch.setattr(devices, "read_cpu_flags", lambda *args: frozenset(ICELAKE_FLAGS))
    assert costs.epoch_seconds(cost, (64, 64), 10, 2) == pytest.approx(float32_seconds)


@pytest.mark.parametrize("precision, policy", [
    # float16 is a GPU policy: its ~35 s search runs with the slow tests; bfloat16 (CPUs) stays.
    pytest.param("mixed", MIXED, marks=pytest.mark.slow), ("bfloat16", BF16)])
def test_search_with_mixed_precision_records_it_and_exports_float32(
        tiny_dataset, tmp_path, precision, policy):
    from autoseg.export import export
    from autoseg.search import search

    rundir = tmp_path / "run"
    result = search(tiny_dataset, space="ci", out=rundir, tuner="random", max_trials=1,
                    max_epochs=1, precision=precision, log=lambda line: None)
    assert result.counts == {"COMPLETED": 1}
    run = json.loads((rundir / "run.json").read_text())
    assert (run["precision"], run["strategy"], run["replicas"]) == (policy, "none", 1)
    (record_file,) = (rundir / "trials").glob("trial_*/autoseg.json")
    record = json.loads(record_file.read_text())
    assert record["precision"] == policy and record["status"] == "COMPLETED"
    assert 0.0 <= float(result.best["val_mean_iou"]) <= 1.0
    assert keras.config.dtype_policy().name == "float32"
    # The trial's checkpoint exports as a float32 model: float32 in, float32 out.
    exported = export("best", run=rundir, out=tmp_path / "model", formats="keras",
                      log=lambda line: None)
    model = keras.saving.load_model(exported.out / "model.keras", safe_mode=True, compile=False)
    assert model.input.dtype == "float32" and model.output.dtype == "float32"
    assert {c.compute_dtype for c in _convolutions(model)} == {"float32"}
