"""Training throughput of an autoseg trial against plain `model.fit` on the same tensors.

Issue #4 §11: autoseg's harness should cost at most 5% of training throughput.

Runs, on one U-Net (`depth=4, filters=32`, input 128x128, batch 8, loss ce_dice, Adam),
built and compiled by `AutosegHyperModel.build`:

- autoseg: what a search trial runs, `AutosegHyperModel.fit(hp, model, epochs=E)` over a
  fixed space (policy resize; aug_strength 0, and again 0.5): autoseg's pipeline (decode
  cache, `tf.numpy_function` augmentation), the compiled `segmentation_metrics`, the
  callbacks (`TimeBudget`, `CosineSchedule` and a TensorBoard callback as `search` passes
  it), the memory budget and `PeakMemory`.
- plain: `model.fit` on `from_tensor_slices((images, masks)).shuffle().batch(8)
  .prefetch(AUTOTUNE)` of the same decoded and resized tensors (and the validation images the
  same way), with the same compiled model; once more compiled with the loss alone, to show
  what the metrics cost.

The runs take turns fit by fit (autoseg 0, autoseg 0.5, plain, plain loss-only, then the
reverse order; `--rounds` rounds), so load from other processes on a shared machine slows
them alike; each fit builds a fresh model, and `keras.backend.clear_session()` runs between
fits, as between trials. Steady state is epochs 2..E of every fit; the setup before
`on_train_begin` and the first epoch (tracing; autoseg also decodes the photos then) are
reported apart, since short trials pay them. Process CPU time per image is reported beside
wall time: on a shared machine it measures the work a harness adds far more steadily.

Why whole fits and not epochs take turns: Keras 3.15 makes a spare tf.data iterator each
time a pass's batches run out and drops it when the next pass starts, and dropping an
iterator can wait seconds for tf.data's autotuning thread ("iterator churn", reported).
With fits interleaved epoch by epoch in threads, spares sat idle through the other runs'
turns and the waits grew to 10-60 s, which no trial sees.

A profile follows: `fit`'s setup, autoseg's callbacks and `PeakMemory`, each input pipeline
iterated alone, one augmentation call, the augmentation's Compose built per example (as
now) against cached per thread (a proposed patch), the compiled metrics alone (C+3
confusion matrices against one), the TensorBoard callback's hooks (timed inside the
autoseg fits), and the checkpoint KerasTuner writes whenever a trial's objective improves.
`--patched` adds a fifth run with the other proposed patch: one training iterator per fit
(`one_iterator_per_fit`). Prints Markdown.

Dataset: CWFID colour masks converted to index masks with NumPy into a temporary canonical
dataset (black soil 0, green crop 1, red weed 2); a prepared dataset is used as it is, and
any other folder (e.g. sample/, Labelme) goes through `autoseg.data.dataset.prepare`.

    python benchmarks/overhead.py [--dataset ../shared/datasets/cwfid_carrot_weed] [--epochs 4]
        [--rounds 2] [--patched]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench_data import CWFID, canonical_dataset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        type=Path,
        default=CWFID,
        help="CWFID (images/ + RGB masks/), a prepared dataset, or a raw folder for "
        "`prepare` such as sample/ (default: ../shared/datasets/cwfid_carrot_weed).",
    )
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4, help="U-Net depth")
    parser.add_argument("--filters", type=int, default=32, help="U-Net filters of the first level")
    parser.add_argument("--loss", default="ce_dice")
    parser.add_argument(
        "--epochs", type=int, default=4, help="epochs per fit; the first is tracing"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="fits of each run; the runs take turns"
    )
    parser.add_argument("--strength", type=float, default=0.5, help="the second aug_strength")
    parser.add_argument("--profile-calls", type=int, default=30, help="calls per profiled op")
    parser.add_argument(
        "--patched", action="store_true",
        help="add a fifth run: autoseg at aug_strength 0 with the proposed patch (one training "
        "iterator per fit: the dataset repeated, `steps_per_epoch` given), emulated here",
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# The dataset.


def space_dict(args, strength: float) -> dict:
    return {
        "models": {"unet": {"depth": args.depth, "filters": args.filters, "backbone": "none"}},
        "input_size": args.size,
        "policy": "resize",
        "batch_size": [args.batch_size],
        "loss": [args.loss],
        "aug_strength": [strength],
        "learning_rate": [0.003],
        "max_epochs": args.epochs,
    }


def decoded_tensors(dataset, stems, size):
    """The pipeline's own decoded, resized examples, unaugmented, in order."""
    from autoseg.data.pipeline import make_dataset

    images, masks = [], []
    for image, mask in make_dataset(dataset, stems, input_size=size, training=False):
        images.append(image.numpy())
        masks.append(mask.numpy())
    return np.stack(images), np.stack(masks)


def plain_dataset(images, masks, batch_size, shuffle: bool):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, masks))
    if shuffle:
        ds = ds.shuffle(len(images), seed=0, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


@contextlib.contextmanager
def one_iterator_per_fit():
    """Emulates, while active, the proposed patch to `BaseSegmentationHyperModel.fit`.

    Training datasets made by `fit` are repeated (the caller passes `steps_per_epoch`), so
    Keras keeps one training iterator for the whole fit instead of making two per epoch. The
    examples are the same, in the same order, with the same augmentation.
    """
    from autoseg.data import pipeline

    original = pipeline.make_dataset

    def make_dataset(*args, **kwargs):
        ds = original(*args, **kwargs)
        return ds.repeat() if kwargs.get("training", True) else ds

    pipeline.make_dataset = make_dataset
    try:
        yield
    finally:
        pipeline.make_dataset = original


# --------------------------------------------------------------------------------------------
# Clocks.


def make_clock():
    """`(first, last)` callbacks: put `first` before and `last` after the run's own ones.

    Together they stamp each epoch's start, first training batch, validation and end, with
    every epoch-end callback inside except the two `fit` appends after `last`
    (`TimeBudget`, `CosineSchedule`: microseconds, see the profile), and the process CPU
    time. No batch-end hook is added, so Keras' asynchronous batch-callback dispatch stays
    as it was.
    """
    import keras

    class First(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.setup_begin = self.train_begin = None
            # Per epoch: wall times "begin", "batch" (first batch), "test" (validation
            # begins), "end"; process CPU seconds "cpu_begin", "cpu_end".
            self.epochs: list[dict[str, float]] = []
            self._stamps: dict[str, float] = {}

        def on_train_begin(self, logs=None):
            self.train_begin = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self._stamps = {"begin": time.perf_counter(), "cpu_begin": _cpu_seconds()}

        def on_train_batch_begin(self, batch, logs=None):
            self._stamps.setdefault("batch", time.perf_counter())

        def on_test_begin(self, logs=None):
            self._stamps.setdefault("test", time.perf_counter())

    first = First()

    class Last(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            end, stamps = time.perf_counter(), first._stamps
            stamps["cpu_end"] = _cpu_seconds()
            stamps.setdefault("batch", end)
            stamps.setdefault("test", end)
            stamps["end"] = end
            first.epochs.append(stamps)

    return first, Last()


def time_hooks(callback, totals: dict) -> None:
    """Wraps each hook `callback` overrides so that its seconds add up in `totals`.

    Hooks left at Keras' default are not wrapped: wrapping them would switch off Keras'
    asynchronous batch-callback dispatch and change what is measured.
    """
    for name in dir(type(callback)):
        if not name.startswith("on_"):
            continue
        method = getattr(callback, name)
        if not callable(method) or getattr(method, "_is_default", False):
            continue

        def timed(*a, _method=method, _name=name, **k):
            start = time.perf_counter()
            try:
                return _method(*a, **k)
            finally:
                totals[_name] = totals.get(_name, 0.0) + time.perf_counter() - start

        setattr(callback, name, timed)


# --------------------------------------------------------------------------------------------
# The profile.


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def profile_setup(model, dataset, data, size, batch_size) -> dict[str, float]:
    """Milliseconds of what `BaseSegmentationHyperModel.fit` does before `model.fit`."""
    from autoseg import budget
    from autoseg.data.pipeline import make_dataset

    times = {}
    start = time.perf_counter()
    budget.estimate_training_memory(model, 1, family="unet")
    budget.admissible_batch_sizes(model, [batch_size], data.memory_budget_bytes, family="unet")
    budget.estimate_training_memory(model, batch_size, family="unet")
    times["memory estimates (budget.py)"] = 1000 * (time.perf_counter() - start)
    start = time.perf_counter()
    pipelines = [
        make_dataset(dataset, stems, input_size=size, batch_size=batch_size, training=training)
        for stems, training in ((data.train_stems, True), (data.val_stems, False))
    ]
    times["make_dataset, training + validation (file headers read)"] = (
        1000 * (time.perf_counter() - start)
    )
    start = time.perf_counter()
    for ds in pipelines:
        for _ in ds:
            pass
    times["first pass of both pipelines (decode + resize every photo; in the first epoch)"] = (
        1000 * (time.perf_counter() - start)
    )
    return times


def profile_callbacks(model, epochs: int, calls: int = 20) -> dict[str, float]:
    """Microseconds of autoseg's own callbacks per epoch and of `PeakMemory` per fit."""
    from autoseg.budget import PeakMemory
    from autoseg.hypermodel import CosineSchedule, TimeBudget

    time_budget = TimeBudget(time.time() + 86400)
    schedule = CosineSchedule(epochs)
    for callback in (time_budget, schedule):
        callback.set_model(model)
    schedule.on_train_begin()
    start = time.perf_counter()
    for epoch in range(calls):
        time_budget.on_epoch_begin(epoch)
        schedule.on_epoch_begin(epoch % epochs)
        time_budget.on_epoch_end(epoch)
    per_epoch = 1e6 * (time.perf_counter() - start) / calls
    start = time.perf_counter()
    for _ in range(calls):
        with PeakMemory():
            pass
    per_fit = 1e6 * (time.perf_counter() - start) / calls
    return {
        "`TimeBudget` + `CosineSchedule` hooks, per epoch": per_epoch,
        "`PeakMemory` enter + exit, per fit": per_fit,
    }


def profile_pipelines(pipelines: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """`name -> (wall ms per batch, CPU ms per image)`: median over `rounds` epochs, taking turns.

    One untimed epoch first, which fills autoseg's decode cache.
    """
    for ds in pipelines.values():
        for _ in ds:
            pass
    walls = {name: [] for name in pipelines}
    cpus = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, ds in pipelines.items():
            cpu0, wall0, batches, images = _cpu_seconds(), time.perf_counter(), 0, 0
            for image, _ in ds:
                batches += 1
                images += int(image.shape[0])
            walls[name].append(1000 * (time.perf_counter() - wall0) / batches)
            cpus[name].append(1000 * (_cpu_seconds() - cpu0) / images)
    return {n: (statistics.median(walls[n]), statistics.median(cpus[n])) for n in pipelines}


def profile_compose_cache(dataset, stems, size, strength, batch_size, rounds=5) -> dict:
    """The augmentation's Compose built for every example (now) against cached (a patch).

    `make_dataset` keeps one Compose per thread in a `threading.local`, but
    `tf.numpy_function` calls run on TensorFlow's own threads, where Python makes a fresh
    thread state for every call: the local is always empty and the Compose is built again
    for every example. The proposed patch keys the cache by `threading.get_ident()` (the
    OS thread, which runs one call at a time); emulated here by caching
    `build_augmentation` per OS thread while the patched pipeline is iterated.

    Returns:
        `{"builds": (per epoch now, in all epochs patched), "cpu_ms": (now, patched) CPU
        ms per image (median over `rounds` epochs after a first one), "identical": bool,
        "epochs": rounds + 1}`.
    """
    from autoseg.data import pipeline

    original = pipeline.build_augmentation
    state = {"cache": None, "builds": 0}

    def build_augmentation(*args, **kwargs):
        cache = state["cache"]
        if cache is not None and threading.get_ident() in cache:
            return cache[threading.get_ident()]
        state["builds"] += 1
        compose = original(*args, **kwargs)
        if cache is not None:
            cache[threading.get_ident()] = compose
        return compose

    variants = {
        name: pipeline.make_dataset(
            dataset, stems, input_size=size, aug_strength=strength, batch_size=batch_size,
            training=True, seed=0,
        )
        for name in ("now", "patched")
    }
    caches = {"now": None, "patched": {}}
    cpu_ms = {name: [] for name in variants}
    builds = {name: [] for name in variants}
    identical = True
    pipeline.build_augmentation = build_augmentation
    try:
        for round_index in range(rounds + 1):  # the first round fills the decode caches
            images = {}
            for name, ds in variants.items():
                state["cache"], state["builds"] = caches[name], 0
                cpu0 = _cpu_seconds()
                images[name] = np.concatenate([image.numpy() for image, _ in ds])
                if round_index:
                    cpu_ms[name].append(1000 * (_cpu_seconds() - cpu0) / len(images[name]))
                builds[name].append(state["builds"])
            identical &= np.array_equal(images["now"], images["patched"])
    finally:
        pipeline.build_augmentation = original
    return {
        "builds": (statistics.median(builds["now"]), sum(builds["patched"])),
        "cpu_ms": (statistics.median(cpu_ms["now"]), statistics.median(cpu_ms["patched"])),
        "identical": identical,
        "epochs": rounds + 1,
    }


def profile_metrics(classes, ignore_index, masks, batch_size, calls: int) -> dict[str, float]:
    """Median ms of one compiled metrics update + results on one batch, per metric set.

    - all: `segmentation_metrics` as compiled, C+3 metrics, each with its own confusion
      matrix (an argmax and a segment_sum over every pixel each).
    - one matrix: the same C+3 results, but only the first metric updates (the cost of a
      shared confusion matrix).
    - mean_iou only: one metric.
    """
    import tensorflow as tf

    from autoseg.metrics import segmentation_metrics

    num_classes = len(classes)
    rng = np.random.default_rng(0)
    y_true = tf.constant(masks[:batch_size])
    logits = rng.normal(size=(*masks[:batch_size].shape, num_classes)).astype(np.float32)
    y_pred = tf.nn.softmax(tf.constant(logits))

    def compiled(metrics, updating):
        @tf.function
        def step(y_true, y_pred):
            for metric in updating:
                metric.update_state(y_true, y_pred)
            return [metric.result() for metric in metrics]

        return step

    all_metrics = segmentation_metrics(classes, ignore_index=ignore_index)
    shared = segmentation_metrics(classes, ignore_index=ignore_index)
    single = segmentation_metrics(classes, ignore_index=ignore_index)[:1]
    steps = {
        f"all {len(all_metrics)} (as compiled)": compiled(all_metrics, all_metrics),
        "one matrix, same results": compiled(shared, shared[:1]),
        "mean_iou only": compiled(single, single),
    }
    times = {name: [] for name in steps}
    for step in steps.values():
        step(y_true, y_pred)
    for _ in range(calls):
        for name, step in steps.items():
            start = time.perf_counter()
            step(y_true, y_pred)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def profile_augmentation(images, masks, strength, size, ignore_index, calls) -> float:
    """Median µs of one `reseed` + augmentation call, as the pipeline's numpy function runs it."""
    from autoseg.data.augment import build_augmentation, reseed

    compose = build_augmentation(strength, input_size=size, ignore_index=ignore_index)
    times = []
    for i in range(calls * 4):
        image = images[i % len(images)].astype(np.uint8)
        mask = masks[i % len(masks)].astype(np.uint8)
        start = time.perf_counter()
        reseed(compose, i)
        out = compose(image=image, mask=mask)
        out["image"].astype(np.float32), out["mask"].astype(np.int32)
        times.append(1e6 * (time.perf_counter() - start))
    return statistics.median(times)


def profile_checkpoint(model, directory: Path, calls: int = 3) -> float:
    """Median seconds of KerasTuner's `SaveBestEpoch` save (`save_weights` to .weights.h5)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model.save_weights(str(directory / "checkpoint.weights.h5"))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.dataset.is_dir():
        print(f"Error: {args.dataset} is not a folder.", file=sys.stderr)
        return 2
    if args.epochs < 2 or args.rounds < 1:
        print("Error: --epochs must be at least 2 (the first is tracing), --rounds at least 1.",
              file=sys.stderr)
        return 2
    import albumentations
    import keras
    import keras_tuner as kt
    import tensorflow as tf

    from autoseg import budget
    from autoseg.data.pipeline import make_dataset
    from autoseg.hypermodel import AutosegHyperModel, TrainingData
    from autoseg.search_space import load_space

    load_before = os.getloadavg()
    wall_start = time.perf_counter()
    size = (args.size, args.size)
    epochs = args.epochs
    names = {
        "a0": "autoseg, aug_strength 0",
        "a1": f"autoseg, aug_strength {args.strength:g}",
        "b": "plain model.fit, same metrics",
        "b_loss": "plain model.fit, loss only",
    }
    if args.patched:
        names["a0_patch"] = "autoseg, aug_strength 0, proposed patch (one iterator per fit)"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        dataset, how = canonical_dataset(args.dataset, tmp)
        data = TrainingData.from_path(
            dataset.root, seed=0, memory_budget_bytes=budget.memory_budget_bytes(),
            deadline=time.time() + 86400,  # far away, but TimeBudget does its bookkeeping
        )
        n_train, n_val = len(data.train_stems), len(data.val_stems)
        images, masks = decoded_tensors(dataset, data.train_stems, size)
        val_images, val_masks = decoded_tensors(dataset, data.val_stems, size)
        hypermodels = {
            key: AutosegHyperModel(load_space(space_dict(args, strength)), data)
            for key, strength in (("a0", 0.0), ("a1", args.strength), ("b", 0.0), ("b_loss", 0.0))
        }
        hypermodels["a0_patch"] = hypermodels["a0"]
        clocks: dict[str, list] = {key: [] for key in names}
        tb_hooks: dict[str, dict[str, float]] = {k: {} for k in names if k.startswith("a")}

        def build(key):
            keras.utils.set_random_seed(0)
            hp = kt.HyperParameters()
            model = hypermodels[key].build(hp)  # compiled as a trial compiles it
            if key == "b_loss":
                learning_rate = keras.ops.convert_to_numpy(model.optimizer.learning_rate)
                model.compile(
                    optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)),
                    loss=model.loss,
                    jit_compile=False,
                )
            return hp, model

        def fit(key, round_index):
            hp, model = build(key)
            first, last = make_clock()
            clocks[key].append(first)
            if key not in tb_hooks:
                first.setup_begin = time.perf_counter()
                train = plain_dataset(images, masks, args.batch_size, shuffle=True)
                val = plain_dataset(val_images, val_masks, args.batch_size, shuffle=False)
                model.fit(train, validation_data=val, epochs=epochs, callbacks=[first, last],
                          verbose=0)
                return
            # As `autoseg.search` passes it (KerasTuner moves it to a folder per trial).
            tensorboard = keras.callbacks.TensorBoard(
                log_dir=str(tmp / "tensorboard" / f"{key}_{round_index}"),
                write_graph=False, profile_batch=0,
            )
            time_hooks(tensorboard, tb_hooks[key])
            patch, kwargs = contextlib.nullcontext(), {}
            if key == "a0_patch":
                patch = one_iterator_per_fit()
                kwargs["steps_per_epoch"] = -(-n_train // args.batch_size)
            first.setup_begin = time.perf_counter()
            with patch:
                hypermodels[key].fit(hp, model, epochs=epochs,
                                     callbacks=[first, tensorboard, last], **kwargs)
            used = hypermodels[key].last_fit.get("batch_size")
            if used != args.batch_size:
                raise RuntimeError(f"{names[key]} trained at batch {used}, not {args.batch_size}.")

        run_start = time.perf_counter()
        for round_index in range(args.rounds):
            order = list(names) if round_index % 2 == 0 else list(reversed(names))
            for key in order:
                fit(key, round_index)
                keras.backend.clear_session()  # as the tuner does between trials
                gc.collect()
        run_seconds = time.perf_counter() - run_start
        load_mid = os.getloadavg()

        # The profile.
        profile_start = time.perf_counter()
        hp, model = build("a0")
        params = model.count_params()
        setup_ms = profile_setup(model, dataset, data, size, args.batch_size)
        callback_us = profile_callbacks(model, epochs)
        pipelines = {
            f"autoseg, aug {s:g}": make_dataset(
                dataset, data.train_stems, input_size=size, aug_strength=s,
                batch_size=args.batch_size, training=True, seed=0,
            )
            for s in (0.0, args.strength)
        }
        pipelines["plain"] = plain_dataset(images, masks, args.batch_size, shuffle=True)
        pipeline_ms = profile_pipelines(pipelines, rounds=5)
        compose = profile_compose_cache(
            dataset, data.train_stems, size, args.strength, args.batch_size
        )
        metric_ms = profile_metrics(
            dataset.classes, dataset.ignore_index, masks, args.batch_size, args.profile_calls
        )
        augment_us = profile_augmentation(
            images, masks, args.strength, size, dataset.ignore_index, args.profile_calls
        )
        checkpoint_s = profile_checkpoint(model, tmp)
        profile_seconds = time.perf_counter() - profile_start
    load_after = os.getloadavg()

    # ---- the report -------------------------------------------------------------------
    s = {key: summarise(clocks[key], n_train, args.batch_size) for key in names}
    base = s["b"]
    steps = -(-n_train // args.batch_size)
    print(
        f"Trial overhead: U-Net depth {args.depth}, {args.filters} filters, {params / 1e6:.2f} M "
        f"params, input {args.size}x{args.size}, batch {args.batch_size}, loss {args.loss}, "
        f"{dataset.num_classes} classes ({dataset.num_classes + 3} compiled metrics).\n"
        f"Dataset {args.dataset} ({how}): {n_train} training images ({steps} steps/epoch), "
        f"{n_val} validation. {args.rounds} rounds of {len(names)} fits (the order reversed "
        f"every other round), {epochs} epochs each, a fresh model per fit; steady state = "
        f"epochs 2..{epochs} of every fit.\n"
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        f"TF {tf.__version__}, Keras {keras.__version__}, KerasTuner {kt.__version__}, "
        f"albumentations {albumentations.__version__}.\n"
        f"Load average (1/5/15 min): before {_load(load_before)}, after the fits "
        f"{_load(load_mid)}, at the end {_load(load_after)}. Fits {run_seconds:.0f} s, "
        f"profile {profile_seconds:.0f} s, total {time.perf_counter() - wall_start:.0f} s.\n"
    )
    print(
        "| run | train img/s | A/B | epoch img/s (with val) | A/B | per-epoch A/B, median "
        "(range) | A/B, iterator churn excluded | CPU s/img | A/B by CPU | setup s "
        "| first epoch s | first-epoch extra s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, label in names.items():
        r = s[key]
        ratios = [b / a for a, b in zip(r["whole"], base["whole"])]
        print(
            f"| {label} | {r['train_rate']:.2f} | {r['train_rate'] / base['train_rate']:.3f} "
            f"| {r['epoch_rate']:.2f} | {r['epoch_rate'] / base['epoch_rate']:.3f} "
            f"| {statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"| {r['net_rate'] / base['net_rate']:.3f} "
            f"| {r['cpu_per_image']:.3f} | {base['cpu_per_image'] / r['cpu_per_image']:.3f} "
            f"| {r['setup']:.2f} | {r['first']:.1f} "
            f"| {r['first'] - statistics.mean(r['whole']):.1f} |"
        )
    print(
        "\nA/B = throughput over the throughput of `plain model.fit, same metrics`, from the "
        "totals over the steady epochs; the per-epoch ratios pair each epoch with the plain "
        "run's epoch of the same round and number. train = `on_epoch_begin` to "
        "validation; epoch = training + validation + epoch-end callbacks. Iterator churn = "
        "`on_epoch_begin` to the first batch: Keras drops the spare iterator it made when the "
        "last epoch's batches ran out, and makes another. A/B by CPU = plain's process CPU "
        "seconds per image (whole epochs) over the run's: the work a harness adds, blind to "
        "waiting and far less sensitive to other processes' load than wall time. setup = "
        "`fit` called -> `on_train_begin`; first-epoch extra = first epoch minus the mean "
        "steady epoch.\n"
    )
    print(
        "| run | validation s/epoch | iterator churn s/epoch (max) "
        "| TensorBoard hooks s/epoch |"
    )
    print("|---|---|---|---|")
    for key, label in names.items():
        r = s[key]
        hooks = tb_hooks.get(key)
        tb = f"{sum(hooks.values()) / r['epochs']:.3f}" if hooks is not None else "-"
        print(f"| {label} | {r['val']:.2f} | {r['churn']:.2f} ({r['churn_max']:.2f}) | {tb} |")

    step_ms = 1000 * base["busy_step"]
    epoch_s = statistics.mean(s["a0"]["whole"])
    print(
        f"\nProfile, against the plain run's training step of {step_ms:.0f} ms "
        f"(steady, first batch to validation) and the autoseg epoch of {epoch_s:.1f} s:\n"
    )
    print("| what | cost | share |")
    print("|---|---|---|")
    for name, (wall, cpu) in pipeline_ms.items():
        print(
            f"| pipeline alone, {name}: wall per batch / CPU per image | {wall:.1f} ms / "
            f"{cpu:.2f} ms | {wall / step_ms:.1%} of a step (wall) |"
        )
    print(
        f"| augmentation (aug_strength {args.strength:g}), one example: reseed + Compose | "
        f"{augment_us:.0f} µs | {args.batch_size * augment_us / 1000 / step_ms:.1%} of a step "
        f"(CPU, per batch of {args.batch_size}) |"
    )
    now_ms, patched_ms = compose["cpu_ms"]
    print(
        f"| augmentation Compose built per example now ({compose['builds'][0]:.0f} builds per "
        f"epoch of {n_train} images) vs cached per OS thread (proposed patch: "
        f"{compose['builds'][1]} builds in {compose['epochs']} epochs), pipeline CPU per image, "
        f"aug_strength {args.strength:g}; same output: {compose['identical']} "
        f"| {now_ms:.2f} ms -> {patched_ms:.2f} ms "
        f"| {(now_ms - patched_ms) / 1000 / base['cpu_per_image']:.1%} of the training CPU "
        f"per image |"
    )
    for name, ms in metric_ms.items():
        print(f"| compiled metrics update + results, {name}, one batch | {ms:.1f} ms "
              f"| {ms / step_ms:.1%} of a step |")
    for name, us in callback_us.items():
        print(f"| {name} | {us:.0f} µs | {us / 1e6 / epoch_s:.3%} of an epoch |")
    for name, ms in setup_ms.items():
        print(f"| `fit` setup: {name} | {ms:.0f} ms | once per trial |")
    print(
        f"| KerasTuner `SaveBestEpoch`: `save_weights` ({params / 1e6:.1f} M params), each "
        f"epoch the objective improves | {checkpoint_s:.2f} s | {checkpoint_s / epoch_s:.1%} "
        f"of an epoch |"
    )
    return 0


def summarise(clocks, n_train: int, batch_size: int) -> dict:
    """Steady-state and first-epoch figures of one run."""
    steady = [e for clock in clocks for e in clock.epochs[1:]]
    train = [e["test"] - e["begin"] for e in steady]
    busy = [e["test"] - e["batch"] for e in steady]
    whole = [e["end"] - e["begin"] for e in steady]
    churn = [e["batch"] - e["begin"] for e in steady]
    cpu = [e["cpu_end"] - e["cpu_begin"] for e in steady]
    steps = -(-n_train // batch_size)
    return {
        "epochs": sum(len(clock.epochs) for clock in clocks),
        "train_rate": n_train * len(train) / sum(train),
        "epoch_rate": n_train * len(whole) / sum(whole),
        "net_rate": n_train * len(whole) / (sum(whole) - sum(churn)),
        "busy_step": statistics.mean(busy) / steps,
        "cpu_per_image": sum(cpu) / (n_train * len(cpu)),
        "whole": whole,
        "val": statistics.mean(e["end"] - e["test"] for e in steady),
        "churn": statistics.mean(churn),
        "churn_max": max(churn),
        "setup": statistics.mean(c.train_begin - c.setup_begin for c in clocks),
        "first": statistics.mean(c.epochs[0]["end"] - c.epochs[0]["begin"] for c in clocks),
    }


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
