"""Multi-device trials: `strategy=` picks the `tf.distribute` strategy KerasTuner builds each
trial under; the batch size is per replica and the dataset is batched at batch x replicas.

Two replicas without a GPU: two logical CPU devices, which must be configured before
TensorFlow initialises, so those tests run in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from autoseg import devices
from autoseg.errors import ConfigError

TWO_CPUS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
""")

TWO_CPU_SEARCH = TWO_CPUS + textwrap.dedent("""
    from autoseg import budget, devices, registry
    from autoseg.data import pipeline
    from autoseg.hypermodel import build_trial_model
    from autoseg.search import search

    batches = []
    make_dataset = pipeline.make_dataset
    def recording_make_dataset(*args, **kwargs):
        batches.append(kwargs["batch_size"])
        return make_dataset(*args, **kwargs)
    pipeline.make_dataset = recording_make_dataset

    dataset, rundir = sys.argv[1], sys.argv[2]
    result = search(dataset, space="ci", out=rundir, tuner="random", max_trials=1,
                    max_epochs=1, strategy="mirrored", precision="float32",
                    log=lambda line: None)
    (row,) = result.rows
    trial_dir = f"{rundir}/trials/trial_{row['trial_id']}"
    with open(f"{trial_dir}/autoseg.json") as f:
        record = json.load(f)
    with open(f"{trial_dir}/trial.json") as f:
        values = json.load(f)["hyperparameters"]["values"]
    model = build_trial_model(values, 3)
    family = registry.ARCHITECTURES.get(row["model_name"]).family
    per_replica_estimate = budget.estimate_training_memory(
        model, record["batch_size"], family=family).total_bytes
    print("RESULT=" + json.dumps({
        "replicas_in_sync": devices.make_strategy("mirrored").num_replicas_in_sync,
        "run": json.load(open(f"{rundir}/run.json")),
        "record": record,
        "row": row,
        "batches": batches,
        "per_replica_estimate": per_replica_estimate,
    }))
""")


#: The same weights and batch evaluated on one device and on two replicas.
TWO_CPU_LOSSES = TWO_CPUS + textwrap.dedent("""
    import contextlib
    import numpy as np
    import keras
    from autoseg import devices, losses, metrics, models

    strategy = devices.make_strategy("mirrored")
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    labels = np.random.default_rng(1).integers(0, 3, (4, 32, 32)).astype("int32")
    labels[:, :4] = 255  # ignored pixels
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    out = {}
    for name, options in [("unet", {"depth": 3, "filters": 4, "backbone": "none"}),
                          ("pix2pix", {"disc_filters": 4, "generator_options": {
                              "depth": 3, "filters": 4, "backbone": "none"}})]:
        for loss in ("ce", "ce_dice"):
            logs = []
            for scope in (None, strategy):
                keras.utils.set_random_seed(0)
                with scope.scope() if scope else contextlib.nullcontext():
                    model = models.build(name, 3, (32, 32, 3), **options)
                    model.compile(optimizer="adam", loss=losses.get_loss(loss, 3),
                                  metrics=metrics.segmentation_metrics(["a", "b", "c"]),
                                  jit_compile=False)
                if scope is None:
                    weights = model.get_weights()
                else:
                    model.set_weights(weights)
                logs.append(model.evaluate(data, verbose=0, return_dict=True))
            if loss == "ce":  # and a training step on the replicas
                logs[-1]["fit_loss"] = model.fit(data, verbose=0).history["loss"][0]
            out[f"{name}-{loss}"] = logs
    print("RESULT=" + json.dumps(out))
""")


def _run_on_two_cpus(script: str, *args) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT="))
    return json.loads(line[len("RESULT="):])


def test_strategy_names_are_checked():
    assert devices.make_strategy("none") is None
    assert devices.num_replicas(None) == 1
    with pytest.raises(ConfigError, match=r"--strategy 'tpu' is unknown\. Valid values: "
                                          r"auto, mirrored, none"):
        devices.make_strategy("tpu")


def test_auto_is_no_strategy_without_two_gpus():
    if devices.gpu_count() > 1:
        pytest.skip("several GPUs are visible: auto mirrors over them")
    assert devices.make_strategy("auto") is None


def test_search_rejects_an_unknown_strategy_before_anything(tiny_dataset, tmp_path):
    from autoseg.search import search

    with pytest.raises(ConfigError, match="--strategy 'multi' is unknown"):
        search(tiny_dataset, space="ci", out=tmp_path / "run", strategy="multi")
    assert not (tmp_path / "run").exists()


def test_replica_batches_are_full_for_training_and_padded_with_ignored_pixels_for_validation():
    import numpy as np
    import tensorflow as tf

    from autoseg.hypermodel import _even_replica_batches

    def examples(n):
        images = np.arange(1, n + 1, dtype="float32")[:, None, None, None] * np.ones((n, 4, 4, 3))
        masks = np.ones((n, 4, 4), "int32")
        return tf.data.Dataset.from_tensor_slices((images.astype("float32"), masks))

    train, val = _even_replica_batches(examples(5).batch(4).repeat(), examples(5).batch(4),
                                       global_batch=4, replicas=3, ignore_index=255)
    train_batches = [int(images.shape[0]) for images, _ in train.take(4)]
    assert train_batches == [4, 4, 4, 4]  # never the pass's remainder of 1
    (first_images, first_masks), (last_images, last_masks) = list(val)
    assert first_images.shape[0] == 6 and last_images.shape[0] == 3  # 4 -> 6, 1 -> 3
    np.testing.assert_array_equal(first_images[:4, 0, 0, 0], [1, 2, 3, 4])
    assert np.all(first_images[4:] == 0) and np.all(first_masks[4:] == 255)
    assert np.all(first_masks[:4] == 1)
    assert np.all(last_images[0] == 5) and np.all(last_masks[1:] == 255)


@pytest.mark.slow  # ~35 s: a real search under MirroredStrategy
def test_mirrored_search_on_two_logical_cpus(tiny_dataset, tmp_path):
    out = _run_on_two_cpus(TWO_CPU_SEARCH, tiny_dataset, tmp_path / "run")
    assert out["replicas_in_sync"] == 2
    run, record, row = out["run"], out["record"], out["row"]
    assert (run["strategy"], run["replicas"], run["precision"]) == ("mirrored", 2, "float32")
    assert record["status"] == "COMPLETED" and row["status"] == "COMPLETED"
    # The model was built under the strategy's scope (else Keras trains on one replica).
    assert record["replicas"] == 2
    per_replica = record["batch_size"]
    assert per_replica in (2, 4)  # ci.yaml's batch sizes
    assert record["global_batch_size"] == 2 * per_replica
    assert out["batches"] == [2 * per_replica, 2 * per_replica]  # train and val datasets
    assert int(row["batch_size"]) == per_replica  # the leaderboard shows the per-replica one
    # The memory bound and the prediction are per replica (one device's share).
    assert record["predicted_peak_memory_bytes"] == out["per_replica_estimate"]
    for metric in ("val_mean_iou", "val_dice", "val_pixel_accuracy"):
        assert 0.0 <= float(row[metric]) <= 1.0, (metric, row[metric])  # finite, not NaN


@pytest.mark.slow  # ~50 s: tracing Pix2Pix's train step on two replicas
def test_losses_and_metrics_on_two_replicas_equal_one_device():
    """Each replica's loss is its share (the replicas' gradients are summed), so the loss
    Keras reports, Pix2Pix's own losses included, is that of the whole batch."""
    out = _run_on_two_cpus(TWO_CPU_LOSSES)
    assert set(out) == {"unet-ce", "unet-ce_dice", "pix2pix-ce", "pix2pix-ce_dice"}
    for case, (single, mirrored) in out.items():
        assert single["loss"] > 0, case
        if "fit_loss" in mirrored:
            assert 0 < mirrored["fit_loss"] < 1e4, (case, mirrored["fit_loss"])  # finite
        keys = ["loss", "mean_iou", "pixel_accuracy"] + (
            ["seg_loss", "g_adv_loss", "d_loss"] if case.startswith("pix2pix") else [])
        for key in keys:
            assert mirrored[key] == pytest.approx(single[key], rel=0.02), (case, key)
