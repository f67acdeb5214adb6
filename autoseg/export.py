"""Export a trial of a search as a self-describing model folder.

`export("best", run="runs/weeds")` rebuilds the trial's model from its hyperparameters
(`hypermodel.build_trial_model`), loads KerasTuner's best-epoch checkpoint (or, with
`refit=True`, retrains the configuration on train + val for its best epoch count), and writes:

```
DIR/model.keras         the Keras model (loads with safe_mode=True, no custom_objects)
DIR/saved_model/        TensorFlow SavedModel (`model.export(..., format="tf_saved_model")`)
DIR/model.tflite        TensorFlow Lite, float32, converted from the SavedModel
DIR/model.onnx          ONNX (tf2onnx; needs the `export` extra)
DIR/autoseg.json        classes, palette, input size, channels, intensity, policy, tta, trial, ...
DIR/leaderboard.csv     a copy of the run's leaderboard
```

With `ensemble=K` (`--ensemble K`), the model is the trial averaged with the next best
K-1 trials that can join it (`autoseg.ensemble`: one graph, every format), and `autoseg.json`
lists the members under `ensemble` with each one's and the ensemble's validation mean IoU at
full resolution.

With `tta` other than "none", every format is the flip test-time-augmented model of
`autoseg.tta`: the graph flips the image itself and outputs the mean probabilities. `tta="auto"`
scores none, h and hv on the run's validation photos through `autoseg.predict`'s path (full
resolution, the trial's resizing or tiling) and keeps the best (`autoseg.tta.choose_flips`);
`autoseg.json` records the choice, each option's mean IoU and its time per photo (`tta`).

Every model takes float32 `(N, H, W, channels)` pixel values 0..255 (RGB, or grey when the
dataset's photos were all grey: `channels` 1) and returns `(N, H, W, C)` softmax
probabilities; the normalisation is inside the model. Photos deeper than 8 bits are first
scaled to 0..255 by the dataset's `intensity` rule, which `autoseg.json` carries (see
`autoseg.data.intensity`: `(v - low) / (high - low) * 255`, clipped): `autoseg.predict`
applies it for every format, with the resizing or tiling of the trial's `policy`. A pix2pix
trial exports its generator alone, a plain model.

Before the folder is moved into place, each format is loaded back through `autoseg.load` and
its class maps are compared with `model.keras` on sample images (up to `VERIFY_IMAGES` of
the run's dataset, validation images first; synthetic ones when the dataset is gone); a format
that disagrees on more than `MAX_DIFFERING_FRACTION` of the pixels fails the export. The
results are recorded in `autoseg.json` under `verification`.

A format that fails to convert (a custom layer whose ops TFLite or ONNX lack) is
an error when named with `formats`, and left out with a note when `formats` is the default.

This module imports TensorFlow only inside its functions. The folder's file names are
`autoseg.model_dir`'s.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from autoseg import atomic, run_dir
from autoseg.callable_module import make_callable
from autoseg.errors import AutosegError, ConfigError, DatasetError, RunError
from autoseg.model_contract import inference_model
from autoseg.model_dir import FORMAT_FILES, FORMATS, METADATA_FILE, METADATA_VERSION

NORMALISATION = "raw RGB 0..255 float32, normalised inside the model"
ONNX_OPSET = 17
INPUT_NAME = "image"
#: Largest share of sample pixels whose class may differ from model.keras's.
MAX_DIFFERING_FRACTION = 0.001
#: Sample images the export compares formats on.
VERIFY_IMAGES = 4
EXPORT_EXTRA_HINT = "pip install 'autoseg[export]'"
# The exportable statuses: a budget-STOPPED trial trained and was evaluated like a COMPLETED one.
EXPORTABLE_STATUSES = ("COMPLETED", "STOPPED")
#: The objective of a run whose run.json names none.
_DEFAULT_OBJECTIVE = "val_mean_iou"
_PACKAGES = ("autoseg", "tensorflow", "keras", "keras-tuner")
_ONNX_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")


@dataclasses.dataclass
class ExportResult:
    """What `export` wrote.

    Attributes:
        out: The model folder.
        trial_id: The exported trial.
        formats: Format -> file or folder name inside `out`.
        metadata: The contents of `autoseg.json`.
        notes: Things the user should know (a format left out, and why).
    """

    out: Path
    trial_id: str
    formats: dict[str, str]
    metadata: dict[str, Any]
    notes: list[str]


def onnx_available() -> bool:
    """True when the `export` extra (tf2onnx, onnx, onnxruntime) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("tf2onnx", "onnx", "onnxruntime"))


def resolve_formats(formats: str | Sequence[str] | None) -> tuple[list[str], bool, list[str]]:
    """Parses `--format` and checks that its converters are installed.

    Args:
        formats: "keras,tflite", a list, or None for every format available.

    Returns:
        `(formats, explicit, notes)`: the formats in `FORMATS` order, whether the user named
        them (then a conversion that fails is an error, not a note), and notes.

    Raises:
        ConfigError: an unknown format, or onnx asked for without the `export` extra.
    """
    if formats is None or formats == "":
        if onnx_available():
            return list(FORMATS), False, []
        return [f for f in FORMATS if f != "onnx"], False, [
            f"ONNX left out: tf2onnx, onnx or onnxruntime is not installed ({EXPORT_EXTRA_HINT})."
        ]
    names = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ConfigError(
            f"Unknown --format {', '.join(unknown) or repr(formats)}. Valid formats: "
            f"{', '.join(FORMATS)} (comma-separated)."
        )
    if "onnx" in names and not onnx_available():
        raise ConfigError(
            f"--format onnx needs tf2onnx, onnx and onnxruntime: {EXPORT_EXTRA_HINT}"
        )
    return [f for f in FORMATS if f in names], True, []


# --------------------------------------------------------------------------------------------
# Finding the run and the trial.


def find_run(run: str | os.PathLike | None = None, runs_dir: str | os.PathLike = "runs") -> Path:
    """The run folder: `run`, or the run under `runs_dir` whose leaderboard was written last.

    Raises:
        ConfigError: no such run, or no run under `runs_dir`.
    """
    from autoseg import leaderboard

    if run is not None:
        run = Path(run)
        if run.is_file() and run.name in (run_dir.LEADERBOARD_FILE, run_dir.RUN_FILE):
            run = run.parent
        if not run_dir.is_run(run):
            raise ConfigError(
                f"{run} is not an autoseg run folder ({run / run_dir.RUN_FILE} is missing). "
                "Pass the --out folder of `autoseg search`."
            )
        return run
    return leaderboard.find_leaderboard(None, runs_dir).parent


def _leaderboard_rows(rundir: Path) -> list[dict[str, str]]:
    from autoseg import leaderboard

    path = rundir / run_dir.LEADERBOARD_FILE
    if not path.is_file():
        raise ConfigError(f"{rundir} holds no {run_dir.LEADERBOARD_FILE}: no trial has ended yet.")
    return leaderboard.read_leaderboard(path)


def select_trial(rundir: Path, rows: list[dict[str, str]], trial: str, objective: str) -> dict[str, str]:
    """The leaderboard row of `trial` ("best" or a trial id).

    "best" is the top COMPLETED (or STOPPED) trial by the objective, from the leaderboard's
    statuses (never KerasTuner's `get_best_*`, which can return a FAILED trial).

    Raises:
        ConfigError: no exportable trial, an unknown id, or a trial that did not complete;
            the message names the run and the valid ids.
    """
    from autoseg import leaderboard

    exportable = [r for r in rows if r.get("status") in EXPORTABLE_STATUSES]
    statuses = ", ".join(f"{r['trial_id']} {r.get('status')}" for r in rows) or "no trials"
    if not exportable:
        raise ConfigError(
            f"Run {rundir} has no COMPLETED trial to export ({statuses}). Run or resume "
            "`autoseg search` until a trial completes."
        )
    valid = ", ".join(r["trial_id"] for r in exportable)
    if trial == "best":
        best = leaderboard.best_row(rows, objective, "max")
        if best is None:
            raise ConfigError(
                f"Run {rundir}: no COMPLETED trial has a finite {objective} ({statuses}). "
                f"Export one by id: {valid}."
            )
        return dict(best)
    matches = [r for r in rows if r["trial_id"] == trial] or [
        r for r in rows
        if trial.isdigit() and r["trial_id"].isdigit() and int(r["trial_id"]) == int(trial)
    ]
    if not matches:
        raise ConfigError(
            f"Run {rundir} has no trial {trial!r}. Valid trial ids: {valid} (or `best`)."
        )
    row = matches[0]
    if row.get("status") not in EXPORTABLE_STATUSES:
        raise ConfigError(
            f"Trial {row['trial_id']} of run {rundir} is {row.get('status')}, not COMPLETED: "
            f"it has no trained model to export. Valid trial ids: {valid} (or `best`)."
        )
    return row


def read_trial(rundir: Path, trial_id: str) -> dict[str, Any]:
    """KerasTuner's `trial.json` of a trial.

    Raises:
        ConfigError: the file is missing or damaged.
    """
    path = run_dir.trial_path(rundir, trial_id)
    try:
        trial = json.loads(path.read_text())
        trial["hyperparameters"]["values"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is missing or damaged ({exc}); the trial cannot be rebuilt.") from None
    return trial


def trial_values(trial: dict[str, Any]) -> dict[str, Any]:
    """The trial's hyperparameter values, without KerasTuner's `tuner/*` bookkeeping."""
    from autoseg.search_space import hyperparameter_values

    return hyperparameter_values(trial["hyperparameters"]["values"])


# --------------------------------------------------------------------------------------------
# Models.


def image_format(run: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """`(channels, intensity rule)` the run's models take.

    From `run.json` when it records them, else from the run's `dataset.yaml`; a run whose
    dataset is gone and whose fingerprint has no deeper-than-8-bit photos takes 3 channels
    and no rule (what every run took before grey and deep photos were kept).

    Raises:
        ConfigError: the rule is unknown: the photos were deeper than 8 bits (by the run's
            fingerprint) and neither run.json nor the dataset records the rule.
    """
    from autoseg.data.dataset import load_dataset
    from autoseg.data.intensity import check_rule

    if "channels" in run:
        return int(run["channels"]), check_rule(run.get("intensity"), "run.json")
    try:
        dataset = load_dataset(run["dataset"])
        return dataset.channels, dataset.intensity
    except (AutosegError, OSError, KeyError, TypeError):
        pass
    dtypes = (run.get("fingerprint") or {}).get("pixel_dtype") or ["uint8"]
    if dtypes != ["uint8"]:
        raise ConfigError(
            f"The run's photos are {', '.join(dtypes)}, but neither its run.json nor its "
            f"dataset ({run.get('dataset')}, gone) records the intensity rule that scaled "
            "them. Restore the dataset folder, then export again."
        )
    return 3, None


def normalisation(channels: int, rule: dict[str, Any] | None) -> str:
    """What the exported models take, in words (autoseg.json `normalisation`)."""
    if channels == 3 and rule is None:
        return NORMALISATION
    pixels = "RGB" if channels == 3 else "grey (1 channel)"
    scale = " after the `intensity` rule" if rule else ""
    return f"raw {pixels} 0..255 float32{scale}, normalised inside the model"


def load_trial_model(rundir: Path, run: dict[str, Any], trial_id: str, channels: int = 3,
                     input_size: tuple[int, int] | None = None):
    """Rebuilds a trial's model and loads its best-epoch checkpoint.

    Args:
        rundir: The run folder.
        run: Its run.json.
        trial_id: The trial.
        channels: The models' input channels (`image_format`). Defaults to 3.
        input_size: `(height, width)` to build it at instead of its own (a fully
            convolutional model's weights fit any size its depth divides). Defaults to None.

    Returns:
        The uncompiled inference model (a pix2pix trial's generator).

    Raises:
        ConfigError: the checkpoint is missing or does not fit the rebuilt model.
    """
    from autoseg.hypermodel import build_trial_model
    from autoseg.search_space import format_input_size

    trial = read_trial(rundir, trial_id)
    checkpoint = run_dir.checkpoint_path(rundir, trial_id)
    if not checkpoint.is_file():
        raise ConfigError(
            f"{checkpoint} is missing: trial {trial_id} of run {rundir} left no weights to export."
        )
    values = trial_values(trial)
    if input_size is not None:
        values["input_size"] = format_input_size(tuple(input_size))
    model = build_trial_model(values, len(run["classes"]), space=run.get("space"),
                              channels=channels)
    try:
        model.load_weights(checkpoint)
    except Exception as exc:  # noqa: BLE001 - h5py and Keras raise many kinds
        raise ConfigError(
            f"{checkpoint} does not load into trial {trial_id}'s rebuilt model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})."
        ) from None
    return inference_model(model)


def refit_trial_model(rundir: Path, run: dict[str, Any], trial_id: str, epochs: int,
                      log: Callable[[str], None] = print):
    """Retrains a trial's configuration on train + val for `epochs` epochs.

    The run's recorded split is used; validation metrics during the refit are computed on
    the val images, which the model now trains on, so they are not held out.

    Returns:
        `(model, record)`: the uncompiled inference model and what the refit did.

    Raises:
        ConfigError, DatasetError: the run's dataset is gone or changed its classes.
    """
    import keras
    import keras_tuner as kt

    from autoseg import budget
    from autoseg.data.dataset import check_trainable
    from autoseg.data.sources import resolve_dataset
    from autoseg.data import pipeline
    from autoseg.hypermodel import AutosegHyperModel, TrainingData, build_trial_model
    from autoseg.search_space import validate_space

    trial = read_trial(rundir, trial_id)
    dataset = resolve_dataset(run["dataset"])
    check_trainable(dataset)
    if list(dataset.classes) != list(run["classes"]):
        raise ConfigError(
            f"--refit: the dataset {run['dataset']} now has classes {dataset.classes}, but run "
            f"{rundir} was searched with {run['classes']}. Refit on the dataset the run used."
        )
    split = run.get("split") or {}
    train, val = split.get("train"), split.get("val")
    if not train or not val:
        train, val = pipeline.split_stems(dataset, run.get("val_fraction", 0.2), run.get("seed", 0))
    stems = sorted(set(train) | set(val))
    data = TrainingData(dataset, stems, list(val), seed=int(run.get("seed", 0)),
                        memory_budget_bytes=budget.memory_budget_bytes())
    space = validate_space(run["space"], f"{rundir / 'run.json'} (space)")
    trial_record = run_dir.read_record(rundir, trial_id)
    # The precision the trial trained in (its record; runs before records had it: float32).
    precision = trial_record.get("precision") or "float32"
    hypermodel = AutosegHyperModel(space, data, precision=precision)
    # An epoch as long as the trial's (the plan's passes over the photos; 1 before plans).
    hypermodel.passes_per_epoch = int(trial_record.get("passes_per_epoch") or 1)
    hp = kt.HyperParameters.from_config(trial["hyperparameters"])
    # From scratch: none of a continued trial's values applies (its past checkpoint and Adam
    # moments, a fork's longer schedule, the finish's training photos).
    hp.values = trial_values(trial)
    keras.utils.set_random_seed(int(run.get("seed", 0)))
    log(f"[export] refitting trial {trial_id} on {len(stems)} images (train + val) for {epochs} "
        f"epochs in {precision}")
    trained = hypermodel.build(hp)
    history = hypermodel.fit(hp, trained, epochs=epochs, verbose=0)
    fresh = inference_model(
        build_trial_model(trial_values(trial), len(run["classes"]), space=run.get("space"),
                          channels=dataset.channels)
    )
    fresh.set_weights(inference_model(trained).get_weights())
    record = {
        "epochs": len(history.history.get("loss", [])),
        "images": len(stems),
        "passes_per_epoch": hypermodel.last_fit.get("passes_per_epoch"),
        "batch_size": hypermodel.last_fit.get("batch_size"),
        "precision": hypermodel.last_fit.get("precision"),
        "train_seconds": hypermodel.last_fit.get("train_seconds"),
        "final_loss": float(history.history["loss"][-1]),
        "note": "trained on train + val; `metrics` are the search trial's, on held-out val",
    }
    return fresh, record


def write_formats(model, out: Path, formats: Sequence[str], explicit: bool = True,
                  log: Callable[[str], None] = print) -> tuple[dict[str, str], dict[str, str]]:
    """Writes `model` in each format into the folder `out`.

    Args:
        model: A plain Keras model, float32 `(H, W, 3)` in, `(H, W, C)` probabilities out.
        out: An existing folder.
        formats: Formats from `FORMATS`.
        explicit: A format that fails to convert raises (True) or is skipped with its reason
            (False: the user asked for "whatever is available").
        log: Where a line per format goes.

    Returns:
        `(written, skipped)`: format -> file name in `out`, and format -> reason.

    Raises:
        RunError: a conversion failed and `explicit` is True.
    """
    out = Path(out)
    written: dict[str, str] = {}
    skipped: dict[str, str] = {}
    saved_model = out / FORMAT_FILES["saved_model"]
    scratch = None
    for fmt in formats:
        target = out / FORMAT_FILES[fmt]
        try:
            if fmt == "keras":
                model.save(target)
            elif fmt == "saved_model":
                _export_saved_model(model, target)
            elif fmt == "tflite":
                source = saved_model
                if "saved_model" not in written:
                    scratch = scratch or Path(tempfile.mkdtemp(prefix=".saved_model.", dir=out))
                    source = scratch / "saved_model"
                    if not source.exists():
                        _export_saved_model(model, source)
                _export_tflite(source, target)
            elif fmt == "onnx":
                _export_onnx(model, target)
        except Exception as exc:  # noqa: BLE001 - converters raise anything
            reason = _conversion_failure(exc)
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()
            if explicit:
                if scratch:
                    shutil.rmtree(scratch, ignore_errors=True)
                raise RunError(
                    f"Converting {model.name} to {fmt} failed: {reason}. Export the other "
                    f"formats with --format {','.join(f for f in formats if f != fmt) or 'keras'}."
                ) from None
            skipped[fmt] = reason
            log(f"[export] {fmt} left out: {reason}")
            continue
        written[fmt] = FORMAT_FILES[fmt]
        log(f"[export] wrote {target.name}{'/' if target.is_dir() else ''}")
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return written, skipped


def _conversion_failure(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("TF Select ops:", "Unsupported ops:", "not supported"):
        for line in text.splitlines():
            if marker in line:
                return f"{type(exc).__name__}: {line.strip()[:300]}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:300]}"


def _export_saved_model(model, path: Path) -> None:
    """`model.export(format="tf_saved_model")`, whose `serve` endpoint calls the model with
    `training=False`. Keras 3.15's own endpoint calls it with no `training`: a Resizing layer's
    default `training=True` then reaches the layers after it, and a member's
    BatchNormalization in an ensemble (`autoseg.ensemble`) used batch statistics (42 % of the
    pixels changed class against model.keras)."""
    import keras
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda image: model(image, training=False), input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def _export_tflite(saved_model: Path, path: Path) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    # float32 as trained: no quantisation, builtin ops only (a Flex-op model would not
    # run in a plain TFLite or LiteRT interpreter).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    atomic.write_bytes(path, converter.convert())


def _export_onnx(model, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    height, width, channels = model.input_shape[1:]
    spec = (tf.TensorSpec((None, height, width, channels), tf.float32, name=INPUT_NAME),)
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET)
    finally:
        logger.setLevel(level)
    import onnx

    onnx.checker.check_model(proto)
    atomic.write_bytes(path, proto.SerializeToString())


# --------------------------------------------------------------------------------------------
# Checking the formats against each other.


def sample_images(run: dict[str, Any], input_size: tuple[int, int], count: int = VERIFY_IMAGES,
                  channels: int = 3, rule: dict[str, Any] | None = None):
    """Images to compare the formats on: the run's val images, else synthetic ones.

    Args:
        run: The run's run.json.
        input_size: The model's `(height, width)`.
        count: How many. Defaults to `VERIFY_IMAGES`.
        channels: The model's input channels, for synthetic images. Defaults to 3.
        rule: The model's intensity rule, for synthetic images. Defaults to None (8-bit).

    Returns:
        `(images, source)`: photos as stored (what `autoseg.load(...).predict` takes) and a
        description of where they came from.
    """
    import numpy as np

    from autoseg.data import pipeline
    from autoseg.data.dataset import load_dataset

    try:
        dataset = load_dataset(run["dataset"])
        val = [s for s in (run.get("split") or {}).get("val") or [] if s in dataset.images]
        stems = (val + [s for s in dataset.stems if s not in val])[:count]
        images = [pipeline.read_pixels(dataset.image_path(s)) for s in stems]
        if images:
            return images, f"{len(images)} images of {run['dataset']}"
    except (AutosegError, OSError, KeyError, TypeError):
        pass
    # Smooth random fields: like photos, they have regions a model would label as one class.
    rng = np.random.default_rng(0)
    height, width = input_size[0] * 3 // 2 + 1, input_size[1] * 3 // 2 + 3
    images = []
    for _ in range(count):
        shape = (max(2, height // 8), max(2, width // 8), channels)
        coarse = rng.uniform(0, 255, shape).astype(np.float32)
        smooth = np.clip(pipeline.resize_image(coarse, (height, width)), 0, 255)
        if rule is None:
            images.append(smooth.astype(np.uint8))
        else:  # raw values that the rule maps back onto 0..255
            raw = rule["low"] + smooth / 255.0 * (rule["high"] - rule["low"])
            images.append(raw.astype(np.dtype(rule.get("dtype") or "float32")))
    return images, f"{count} synthetic images (the run's dataset is not readable)"


def verify_formats(model_dir: Path, formats: Sequence[str], images) -> dict[str, dict[str, float]]:
    """Compares each format's class maps (through `autoseg.load`) with model.keras's.

    Returns:
        Format -> `{"differing_fraction", "max_abs_score_difference"}`.
    """
    import numpy as np

    from autoseg.predict import load

    reference = load(model_dir, "keras")
    expected = [reference.predict_scores(image) for image in images]
    results = {}
    for fmt in formats:
        if fmt == "keras":
            continue
        candidate = load(model_dir, fmt)
        differing = total = 0
        max_diff = 0.0
        for image, ref_scores in zip(images, expected):
            scores = candidate.predict_scores(image)
            differing += int((scores.argmax(-1) != ref_scores.argmax(-1)).sum())
            total += ref_scores.shape[0] * ref_scores.shape[1]
            max_diff = max(max_diff, float(np.abs(scores - ref_scores).max()))
        results[fmt] = {
            "differing_fraction": differing / max(total, 1),
            "max_abs_score_difference": max_diff,
        }
    return results


# --------------------------------------------------------------------------------------------
# Choosing the flip test-time augmentation.


def validation_photos(run: dict[str, Any]):
    """`(dataset, stems, reason)`: the run's validation photos, or `(None, [], why not)`."""
    from autoseg.data.dataset import load_dataset

    try:
        dataset = load_dataset(run["dataset"])
    except (AutosegError, OSError, KeyError, TypeError) as exc:
        return None, [], f"the run's dataset {run.get('dataset')} is not readable ({exc})"
    stems = [s for s in (run.get("split") or {}).get("val") or [] if s in dataset.images]
    if not stems:
        return None, [], f"no validation photos of the run are left in {dataset.root}"
    return dataset, stems, ""


def tta_scorer(model, metadata: dict[str, Any], dataset, stems: Sequence[str]):
    """Option -> `autoseg.tta.Measurement` of `model` wrapped with it, on `stems` of `dataset`.

    The photos go through `autoseg.predict.SegmentationModel` (the path `autoseg predict` and
    `autoseg evaluate` take) with the in-memory Keras model as its network. Each option is
    measured once: asking again returns the first measurement.
    """
    import time

    import numpy as np

    from autoseg.evaluate import score_images
    from autoseg.metrics import scores_from_confusion
    from autoseg.predict import SegmentationModel
    from autoseg.tta import Measurement, flip_tta_model

    measured: dict[str, Measurement] = {}

    def score(flips: str) -> Measurement:
        if flips in measured:
            return measured[flips]
        network = flip_tta_model(model, flips)
        runner = lambda batch: np.asarray(network(batch, training=False))  # noqa: E731
        predictor = SegmentationModel(Path("."), metadata, runner, "keras")
        start = time.perf_counter()
        confusion, _ = score_images(predictor, dataset, stems, log=lambda _: None)
        seconds = (time.perf_counter() - start) / max(len(stems), 1)
        measured[flips] = Measurement(float(scores_from_confusion(confusion)["mean_iou"]), seconds)
        return measured[flips]

    return score


def choose_tta(model, metadata: dict[str, Any], run: dict[str, Any], tta: str,
               log: Callable[[str], None] = print, scorer=None) -> dict[str, Any]:
    """The `tta` record of `autoseg.json`: `tta` itself, or for "auto" the measured best
    (with `scorer`, a `tta_scorer` of `model` on the run's validation photos that may hold
    measurements already: an ensemble's, without flips)."""
    from autoseg.tta import choose_flips, describe, requested

    if tta != "auto":
        return requested(tta)
    dataset, stems, reason = validation_photos(run)
    if dataset is None:
        record = choose_flips(None, reason)
    else:
        log(f"[export] choosing flip TTA on {len(stems)} validation photo(s)")
        record = choose_flips(scorer or tta_scorer(model, metadata, dataset, stems))
        record["val_images"] = len(stems)
        if metadata.get("refit"):
            record["reason"] += "; the refit trained on these photos, so the scores are not held out"
        elif metadata.get("trained_on") == "train+val":
            record["reason"] += ("; the search's finish trained on these photos, so the scores "
                                 "are not held out")
    log(f"[export] {describe(record)}")
    return record


# --------------------------------------------------------------------------------------------
# Top-K ensembles (`autoseg.ensemble`).


def ensemble_members(chosen: "_ChosenTrial", size: int) -> tuple[list["_ChosenTrial"], list[str]]:
    """`chosen` and the best other trials that can be averaged with it, `size` in all.

    Candidates come best first by the run's objective (`leaderboard.ranked_rows`); a trial is
    left out when `ensemble.incompatibility` says so, or when it repeats the hyperparameters
    of a member (a Hyperband trial continued from another: the same model, trained longer).

    Returns:
        `(members, notes)`: the members, `chosen` first, and why each passed trial was left out.

    Raises:
        ConfigError: fewer than `size` trials can join.
    """
    from autoseg import leaderboard
    from autoseg.ensemble import incompatibility

    rows = _leaderboard_rows(chosen.rundir)
    members, notes = [chosen], []
    seen = {json.dumps(chosen.values, sort_keys=True): chosen.trial_id}
    for row in leaderboard.ranked_rows(rows, chosen.objective, "max"):
        if len(members) == size:
            break
        if row["trial_id"] == chosen.trial_id or row.get("status") not in EXPORTABLE_STATUSES:
            continue
        candidate = _read_chosen_trial(chosen.rundir, chosen.run, row, (chosen.channels, chosen.rule))
        key = json.dumps(candidate.values, sort_keys=True)
        reason = (f"the configuration of trial {seen[key]}" if key in seen
                  else incompatibility(chosen.config, candidate.config))
        if reason:
            notes.append(f"trial {row['trial_id']} left out of the ensemble: {reason}")
            continue
        seen[key] = row["trial_id"]
        members.append(candidate)
    if len(members) < size:
        joined = ", ".join(m.trial_id for m in members)
        raise ConfigError(
            f"--ensemble {size}: only {len(members)} trial(s) of run {chosen.rundir} can be "
            f"averaged with trial {chosen.trial_id} ({joined}; "
            f"{'; '.join(notes) or 'no other COMPLETED trial'}). Give --ensemble "
            f"{len(members)}{'' if len(members) > 1 else ' (no ensemble)'} or search longer."
        )
    return members, notes


def ensemble_of(members: Sequence["_ChosenTrial"]):
    """`(ensemble model, member models)`: each member rebuilt with its best-epoch weights
    (a crop member at the leader's tile size: `ensemble.member_input_size`)."""
    from autoseg.ensemble import ensemble_model, member_input_size

    leader = members[0]
    models = []
    for member in members:
        models.append(load_trial_model(member.rundir, member.run, member.trial_id, member.channels,
                                       member_input_size(leader.config, member.config)))
    return ensemble_model(models, tuple(leader.config["input_size"])), models


def measure_ensemble(model, member_models, members: Sequence["_ChosenTrial"],
                     metadata: dict[str, Any], log: Callable[[str], None] = print):
    """`(record, scorer)`: the `ensemble` record of `autoseg.json`, i.e. the members and, on
    the run's validation photos at full resolution (`tta_scorer`, no flips), each member's
    mean IoU and the ensemble's; and the ensemble's `tta_scorer` holding that measurement
    (None without validation photos)."""
    run = members[0].run
    record: dict[str, Any] = {"members": [
        {"trial_id": m.trial_id, "model_name": m.config["model_name"],
         "input_size": [int(d) for d in net.input_shape[1:3]],
         m.objective: _row_metrics(m.row, m.objective).get(m.objective)}
        for m, net in zip(members, member_models)
    ]}
    dataset, stems, reason = validation_photos(run)
    if dataset is None:
        record["val_images"], record["reason"] = 0, reason
        log(f"[export] ensemble of trials {', '.join(m.trial_id for m in members)} not scored: {reason}")
        return record, None
    log(f"[export] scoring the ensemble and its {len(members)} members on {len(stems)} "
        "validation photo(s) at full resolution")
    for entry, net in zip(record["members"], member_models):
        own = {**metadata, "input_size": entry["input_size"]}
        entry["val_mean_iou_full_res"] = tta_scorer(net, own, dataset, stems)("none").mean_iou
    scorer = tta_scorer(model, metadata, dataset, stems)
    record["val_mean_iou_full_res"] = scorer("none").mean_iou
    record["val_images"] = len(stems)
    for entry in record["members"]:
        log(f"[export]   trial {entry['trial_id']} ({entry['model_name']}): "
            f"{entry['val_mean_iou_full_res']:.4f}")
    log(f"[export]   ensemble: {record['val_mean_iou_full_res']:.4f}")
    return record, scorer


def ensemble_entry(metadata: dict[str, Any], out: Path) -> dict[str, Any]:
    """What `RUNDIR/ensembles.json` keeps of an exported ensemble (`autoseg leaderboard`
    shows it): its members, the model folder, and the validation mean IoUs at full resolution
    of the ensemble, of each member, and of the ensemble with the flips chosen."""
    ensemble, tta = metadata["ensemble"], metadata.get("tta") or {}
    return {
        "members": [m["trial_id"] for m in ensemble["members"]],
        "out": str(out),
        "val_images": ensemble.get("val_images", 0),
        "val_mean_iou_full_res": ensemble.get("val_mean_iou_full_res"),
        "members_val_mean_iou_full_res": {m["trial_id"]: m.get("val_mean_iou_full_res")
                                          for m in ensemble["members"]},
        "tta": tta.get("flips", "none"),
        "tta_val_mean_iou_full_res": (tta.get("val_mean_iou") or {}).get(tta.get("flips")),
    }


# --------------------------------------------------------------------------------------------
# The export.


def package_versions(names: Sequence[str] = _PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _row_metrics(row: dict[str, str], objective: str) -> dict[str, float]:
    metrics = {}
    for key, value in row.items():
        if key == objective or (key.startswith("val_") and not key.startswith("hp:")):
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            metrics[key] = number if math.isfinite(number) else None
    return metrics


def _int_or_none(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass
class _ChosenTrial:
    """The trial `export` writes, with what its run folder records about it.

    Attributes:
        rundir: The run folder.
        run: The run's run.json.
        row: The trial's leaderboard row.
        record: The trial's KerasTuner trial.json.
        values: Its hyperparameter values (`trial_values`).
        config: Its model configuration (`hypermodel.trial_model_config`).
        channels: The models' input channels (`image_format`).
        rule: The models' intensity rule (`image_format`).
    """

    rundir: Path
    run: dict[str, Any]
    row: dict[str, str]
    record: dict[str, Any]
    values: dict[str, Any]
    config: dict[str, Any]
    channels: int
    rule: dict[str, Any] | None

    @property
    def trial_id(self) -> str:
        return self.row["trial_id"]

    @property
    def objective(self) -> str:
        return self.run.get("objective", _DEFAULT_OBJECTIVE)


def _formats_argument(format: str | Sequence[str] | None,
                      formats: str | Sequence[str] | None) -> str | Sequence[str] | None:
    """The formats `export` was given, as `format=` (the CLI's `--format`) or `formats=`.

    Raises:
        ConfigError: both are given.
    """
    if format is None:
        return formats
    if formats is not None:
        raise ConfigError(
            "Give the formats once, as format= (the CLI's --format) or formats=. "
            f"Received: format={format!r}, formats={formats!r}."
        )
    return format


def _ensemble_size(ensemble, refit: bool) -> int:
    """`ensemble` checked: a positive integer, and 1 with `refit`.

    Raises:
        ConfigError: anything else.
    """
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
        raise ConfigError(f"--ensemble must be a whole number of trials, 1 or more. "
                          f"Received: {ensemble!r}.")
    if ensemble > 1 and refit:
        raise ConfigError(
            "--ensemble and --refit cannot be combined: an ensemble averages the trials' "
            "own best-epoch weights. Export the ensemble without --refit."
        )
    return ensemble


def _choose_trial(trial: str, run: str | os.PathLike | None,
                  runs_dir: str | os.PathLike) -> tuple[Path, dict[str, Any], dict[str, str]]:
    """`(rundir, run.json, leaderboard row)` of the trial to export (see `select_trial`).

    Raises:
        ConfigError: no such run or no such exportable trial.
        DatasetError: the run was searched on fewer than two classes.
    """

    rundir = find_run(run, runs_dir)
    run_config = run_dir.load_run(rundir)
    objective = run_config.get("objective", _DEFAULT_OBJECTIVE)
    if len(run_config.get("classes") or []) < 2:
        raise DatasetError(
            f"Run {rundir} was searched on {run_config.get('dataset')} with classes "
            f"{run_config.get('classes')}: fewer than two classes, nothing a model can "
            "separate. Prepare the dataset again (binary masks: --format binary)."
        )
    rows = _leaderboard_rows(rundir)
    return rundir, run_config, select_trial(rundir, rows, str(trial), objective)


def _read_chosen_trial(rundir: Path, run_config: dict[str, Any], row: dict[str, str],
                       image: tuple[int, dict[str, Any] | None] | None = None) -> _ChosenTrial:
    """The trial's trial.json, hyperparameters, model configuration and image format
    (`image`, `(channels, rule)`, when known: every trial of a run shares it).

    Raises:
        ConfigError: trial.json is missing or damaged, or the intensity rule is unknown.
    """
    from autoseg.hypermodel import trial_model_config

    record = read_trial(rundir, row["trial_id"])
    values = trial_values(record)
    channels, rule = image or image_format(run_config)
    return _ChosenTrial(rundir=rundir, run=run_config, row=row, record=record, values=values,
                        config=trial_model_config(values), channels=channels, rule=rule)


def _trained_model(chosen: _ChosenTrial, refit: bool, log: Callable[[str], None]):
    """`(model, refit record)`: the trial's checkpoint (record None), or with `refit` the
    configuration retrained for its best epoch count, the epochs its lineage trained before
    it included (`refit_trial_model`).

    Raises:
        ConfigError: the checkpoint does not load, or `refit` and no best epoch is recorded.
    """
    rundir, trial_id = chosen.rundir, chosen.trial_id
    if not refit:
        return load_trial_model(rundir, chosen.run, trial_id, chosen.channels), None
    from autoseg.plan import checkpoint_epoch

    best_step = chosen.record.get("best_step")
    # From scratch, the epochs of the trial's whole lineage up to its checkpoint.
    epochs = (checkpoint_epoch(chosen.record["hyperparameters"]["values"], best_step)
              if isinstance(best_step, int) else _int_or_none(chosen.row.get("epochs")))
    if not epochs:
        raise ConfigError(
            f"--refit: trial {trial_id} of run {rundir} records no best epoch "
            "(trial.json best_step); export it without --refit."
        )
    return refit_trial_model(rundir, chosen.run, trial_id, epochs, log=log)


def _metadata(chosen: _ChosenTrial, model, refit_record: dict[str, Any] | None,
              formats: Sequence[str]) -> dict[str, Any]:
    """The contents of `autoseg.json` before the tta choice and the files are known."""
    run_config, row, objective = chosen.run, chosen.row, chosen.objective
    channels = int(model.input_shape[-1])
    return {
        "format_version": METADATA_VERSION,
        "classes": list(run_config["classes"]),
        "palette": [[int(v) for v in c] for c in run_config["palette"]],
        "ignore_index": int(run_config.get("ignore_index", 255)),
        "input_size": [int(d) for d in model.input_shape[1:3]],
        "channels": channels,
        "intensity": chosen.rule,
        "policy": chosen.config["policy"],
        "crop_scale": float(chosen.config["crop_scale"]),
        "normalisation": normalisation(channels, chosen.rule),
        "model_name": chosen.config["model_name"],
        "hyperparameters": chosen.values,
        "objective": objective,
        "metrics": _row_metrics(row, objective),
        "epochs": _int_or_none(row.get("epochs")),
        "params": int(model.count_params()),
        "refit": refit_record,
        # What the exported weights trained on: "train+val" (a refit, or the search's
        # finish with --finish-on train+val) makes `metrics` scores on photos it trained on.
        "trained_on": "train+val" if refit_record else (row.get("trained_on") or "train"),
        "trial_id": chosen.trial_id,
        "run": str(chosen.rundir.resolve()),
        "dataset": run_config.get("dataset"),
        "fingerprint": run_config.get("fingerprint"),
        "split": run_config.get("split"),
        "versions": package_versions(_PACKAGES + (_ONNX_PACKAGES if "onnx" in formats else ())),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _check_formats(tmp: Path, written: Sequence[str], metadata: dict[str, Any],
                   run_config: dict[str, Any]) -> tuple[dict[str, dict[str, float]], str]:
    """`(checks, source)`: each written format compared with model.keras (`verify_formats`)
    on `sample_images`, and where the images came from.

    Raises:
        RunError: a format's class maps differ on more than `MAX_DIFFERING_FRACTION` of the pixels.
    """
    images, source = sample_images(run_config, tuple(metadata["input_size"]),
                                   channels=metadata["channels"], rule=metadata["intensity"])
    checks = verify_formats(tmp, list(written), images)
    bad = {f: c for f, c in checks.items() if c["differing_fraction"] > MAX_DIFFERING_FRACTION}
    if bad:
        detail = "; ".join(f"{f}: {c['differing_fraction']:.3%} of pixels" for f, c in bad.items())
        raise RunError(
            f"Exported formats disagree with model.keras on {source} ({detail}; at most "
            f"{MAX_DIFFERING_FRACTION:.1%} allowed). Export without them: --format "
            f"{','.join(f for f in written if f not in bad)}."
        )
    return checks, source


def _write_model_dir(model, out: Path, overwrite: bool, formats: Sequence[str], explicit: bool,
                     metadata: dict[str, Any], chosen: _ChosenTrial,
                     log: Callable[[str], None]) -> tuple[dict[str, dict[str, float]], str, dict[str, str]]:
    """Writes the model folder whole (`atomic.output_dir`): the formats, checked against
    model.keras, `autoseg.json` (completed in `metadata`) and the run's leaderboard.

    Returns:
        `(checks, source, skipped)`: `_check_formats`'s results, and format -> reason for
        each format left out.

    Raises:
        RunError: a named format failed to convert, or a format disagrees with model.keras.
    """
    with atomic.output_dir(out, overwrite) as tmp:
        written, skipped = write_formats(model, tmp, formats, explicit=explicit, log=log)
        if "keras" not in written:
            # The reference the other formats are checked against; it is small.
            written_keras, _ = write_formats(model, tmp, ["keras"], explicit=True, log=lambda _: None)
            keras_is_extra = True
        else:
            written_keras, keras_is_extra = {}, False
        metadata["formats"] = {**written_keras, **written}
        metadata["skipped_formats"] = skipped
        atomic.write_text(tmp / METADATA_FILE, json.dumps(metadata, indent=1))
        checks, source = _check_formats(tmp, list(written), metadata, chosen.run)
        if keras_is_extra:
            (tmp / FORMAT_FILES["keras"]).unlink()
            metadata["formats"] = dict(written)
        metadata["verification"] = {"images": source, "max_differing_fraction": MAX_DIFFERING_FRACTION,
                                    "formats": checks}
        atomic.write_text(tmp / METADATA_FILE, json.dumps(metadata, indent=1))
        shutil.copyfile(chosen.rundir / run_dir.LEADERBOARD_FILE, tmp / run_dir.LEADERBOARD_FILE)
    return checks, source, skipped


def _model_and_metadata(chosen: _ChosenTrial, size: int, refit: bool, formats: Sequence[str],
                        out: Path, log: Callable[[str], None]):
    """`(model, metadata, notes, scorer)`: what `export` writes, before the tta choice: the
    trial's model (`_trained_model`), or with `size` > 1 the ensemble it leads, measured
    (`ensemble_members`, `ensemble_of`, `measure_ensemble`); notes say which trials were
    left out of the ensemble; `scorer` is the ensemble's `tta_scorer` (else None)."""
    members, notes = ensemble_members(chosen, size) if size > 1 else ([chosen], [])
    refit_record = None
    if size > 1:
        model, member_models = ensemble_of(members)
    else:
        model, refit_record = _trained_model(chosen, refit, log)
    metadata = _metadata(chosen, model, refit_record, formats)
    about = (f"ensemble of trials {', '.join(m.trial_id for m in members)}" if size > 1
             else f"trial {chosen.trial_id}")
    log(f"[export] {about} of {chosen.rundir} ({chosen.config['model_name']}, {chosen.objective}="
        f"{chosen.row.get(chosen.objective)}) -> {out}: {', '.join(formats)}")
    scorer = None
    if size > 1:
        metadata["model_name"] = "ensemble"
        record, scorer = measure_ensemble(model, member_models, members, metadata, log)
        metadata["ensemble"] = {**record, "left_out": notes}
    return model, metadata, notes, scorer


def export(
    trial: str = "best",
    run: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    formats: str | Sequence[str] | None = None,
    refit: bool = False,
    overwrite: bool = False,
    runs_dir: str | os.PathLike = "runs",
    log: Callable[[str], None] = print,
    tta: str = "auto",
    format: str | Sequence[str] | None = None,
    ensemble: int = 1,
) -> ExportResult:
    """Exports a trial of a search as a model folder (see the module docstring).

    Args:
        trial: "best" (the top COMPLETED or STOPPED trial by the run's objective) or a
            trial id. Defaults to "best".
        run: The run folder. Defaults to the run under `runs_dir` written last.
        out: The model folder. Defaults to `exports/<run name>-<trial id>` (`-refit` added
            with `refit`).
        formats: Comma-separated or a list of keras, saved_model, tflite, onnx. Defaults to
            all four when the `export` extra is installed, else the first three (with a note);
            a format that fails to convert is then left out with a note, whereas a format
            named here that fails is an error.
        refit: Retrain the configuration on train + val for its best epoch count
            (KerasTuner's `best_step + 1`) before export. Defaults to False.
        overwrite: Replace `out` if it exists. Defaults to False.
        runs_dir: Where runs live. Defaults to "runs".
        log: Where progress lines go.
        tta: Flip test-time augmentation: "none", "h", "hv" (`autoseg.tta.FLIPS`) or "auto"
            (the best on the run's validation photos; "none" without them). Defaults to
            "auto", as `autoseg export` does.
        format: The CLI's name for `formats` (`--format`); give one of the two. Defaults
            to None.
        ensemble: Export `trial` averaged with the next best trials that can join it, this
            many models in all, as one model (`autoseg.ensemble`; `autoseg.json` lists the
            members and each one's and the ensemble's validation mean IoU at full
            resolution). Defaults to 1 (the trial alone).

    Returns:
        An `ExportResult`.

    Raises:
        ConfigError: no such run, no COMPLETED trial, an unknown trial id, an unknown format,
            onnx without the `export` extra, `out` exists without `overwrite`, both
            `format` and `formats` are given, `ensemble` is not a positive integer, fewer
            trials than `ensemble` can join, or `ensemble` with `refit`.
        RunError: a named format failed to convert, or a format's class maps differ from
            model.keras's on more than `MAX_DIFFERING_FRACTION` of the sample pixels.

    Example:
    ```python
    result = autoseg.export("best", run="runs/weeds", format="keras,tflite")
    model = autoseg.load(result.out, format="tflite")
    ```
    """
    from autoseg.tta import check_choice, flip_tta_model

    formats = _formats_argument(format, formats)
    rundir, run_config, row = _choose_trial(trial, run, runs_dir)
    trial_id = row["trial_id"]
    names, explicit, notes = resolve_formats(formats)
    check_choice(tta)
    size = _ensemble_size(ensemble, refit)
    if out is None:
        suffix = f"-ensemble{size}" if size > 1 else "-refit" if refit else ""
        out = Path("exports") / f"{rundir.resolve().name}-{trial_id}{suffix}"
    out = atomic.check_output_dir(out, overwrite)
    chosen = _read_chosen_trial(rundir, run_config, row)
    model, metadata, left_out, scorer = _model_and_metadata(chosen, size, refit, names, out, log)
    notes += left_out
    metadata["tta"] = choose_tta(model, metadata, run_config, tta, log=log, scorer=scorer)
    model = flip_tta_model(model, metadata["tta"]["flips"])
    checks, source, skipped = _write_model_dir(model, out, overwrite, names, explicit, metadata,
                                               chosen, log)
    notes += [f"{fmt} left out: {reason}" for fmt, reason in skipped.items()]
    if size > 1:
        run_dir.record_ensemble(chosen.rundir, ensemble_entry(metadata, out))
    for fmt, check in checks.items():
        log(f"[export] {fmt}: {check['differing_fraction']:.4%} of pixels differ from model.keras "
            f"({source})")
    return ExportResult(out=Path(out), trial_id=trial_id, formats=metadata["formats"],
                        metadata=metadata, notes=notes)


# `autoseg.export(...)` runs `export(...)` although `autoseg.export` is this module.
make_callable(__name__, "export")
