"""`autoseg export`: trial choice, the model folder, each format against model.keras.

The fast lane exports from a hand-made run whose one trained trial is a real KerasTuner-style
record (trained by `AutosegHyperModel`, checkpoint saved with `save_weights`) with the crop
policy; the slow lane searches for real, exports `best` through the CLI and predicts and
evaluates with the result.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main

CLASSES = ["background", "crop", "weed"]
# Tiny, fixed: a crop-policy U-Net at 32 px, so export, tiling and evaluation all run.
CROP_SPACE = {
    "models": {"unet": {"depth": 3, "filters": 4, "backbone": "none"}},
    "input_size": 32,
    "policy": "crop",
    "crop_scale": 0.5,
    "batch_size": 2,
    "loss": "ce",
    "aug_strength": 0.0,
    "learning_rate": 0.01,
    "max_epochs": 1,
}
_CACHE: dict = {}


def make_run(root: Path, dataset: Path, space: dict = CROP_SPACE, failed_ids=("1",),
             epochs: int = 8) -> Path:
    """A run folder as `autoseg search` leaves it, with trial "0" trained for `epochs` epochs.

    8 epochs: enough for the tiny U-Net to predict more than one class.

    Trial "0" is COMPLETED with a checkpoint; each of `failed_ids` is FAILED without one.
    """
    from autoseg.hypermodel import TrainingData

    data = TrainingData.from_path(dataset, seed=0)
    rundir = root / "run"
    record = train_trial(rundir, data, space, "0", epochs)
    records = [record] + [{"trial_id": trial_id, "status": "FAILED",
                           "hyperparameters": record["hyperparameters"], "message": "loss diverged"}
                          for trial_id in failed_ids]
    for trial_id in failed_ids:
        (rundir / "trials" / f"trial_{trial_id}").mkdir(parents=True)
    write_run_files(rundir, dataset, data, space, records)
    return rundir


def train_trial(rundir: Path, data, space: dict, trial_id: str, epochs: int) -> dict:
    """Trains `space`'s one configuration (`AutosegHyperModel`, seed 0) for `epochs` epochs as
    trial `trial_id` of `rundir`: its checkpoint and KerasTuner `trial.json`.

    Returns:
        Its COMPLETED record for `leaderboard.write_leaderboard`.
    """
    import keras
    import keras_tuner as kt

    from autoseg.hypermodel import AutosegHyperModel
    from autoseg.search_space import validate_space

    keras.utils.set_random_seed(0)
    hypermodel = AutosegHyperModel(validate_space(space, "<test space>"), data)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    history = hypermodel.fit(hp, model, epochs=epochs, verbose=0)
    trial_dir = rundir / "trials" / f"trial_{trial_id}"
    trial_dir.mkdir(parents=True)
    model.save_weights(trial_dir / "checkpoint.weights.h5")
    score = float(history.history["val_mean_iou"][-1])
    (trial_dir / "trial.json").write_text(json.dumps({
        "trial_id": trial_id, "hyperparameters": hp.get_config(), "status": "COMPLETED",
        "score": score, "best_step": epochs - 1, "metrics": {}, "message": None,
    }))
    return {
        "trial_id": trial_id, "status": "COMPLETED",
        "hyperparameters": dict(hp.values),
        "metrics": {k: float(v[-1]) for k, v in history.history.items() if k.startswith("val_")},
        "epochs": epochs, "params": model.count_params(),
    }


def write_run_files(rundir: Path, dataset: Path, data, space: dict, records: list[dict]) -> None:
    """The run's leaderboard of `records` and its run.json (`space` as its space)."""
    from autoseg import leaderboard
    from autoseg.search_space import validate_space

    leaderboard.write_leaderboard(rundir / "leaderboard.csv", records, class_names=CLASSES)
    (rundir / "run.json").write_text(json.dumps({
        "dataset": str(Path(dataset).resolve()),
        "classes": CLASSES,
        "palette": [[0, 0, 0], [0, 255, 0], [255, 0, 0]],
        "ignore_index": 255,
        "fingerprint": None,
        "space": validate_space(space, "<test space>").to_yaml_dict(),
        "tuner": "random",
        "objective": "val_mean_iou",
        "seed": 0,
        "val_fraction": 0.2,
        "split": {"train": data.train_stems, "val": data.val_stems},
    }, indent=1))


def exported_crop_model(tmp_path_factory) -> tuple[Path, Path, Path]:
    """`(dataset, rundir, model_dir)`: the hand-made run exported in every format, once per session.

    Other test modules import this, so that the session trains and converts only once.
    """
    if "crop" not in _CACHE:
        from conftest import write_canonical_dataset

        from autoseg.export import export

        root = tmp_path_factory.mktemp("export")
        dataset = write_canonical_dataset(root / "data", num_images=6, size=(48, 64))
        rundir = make_run(root, dataset)
        # The single model (tests compare it with its checkpoint); flip TTA: test_tta.py.
        result = export("best", run=rundir, out=root / "model", log=lambda _: None, tta="none")
        _CACHE["crop"] = (dataset, rundir, result.out)
    return _CACHE["crop"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_crop_model(tmp_path_factory)


def _metadata(model_dir: Path) -> dict:
    return json.loads((model_dir / "autoseg.json").read_text())


# --- the model folder ---------------------------------------------------------------------


def test_export_writes_every_format_and_the_leaderboard(exported):
    from autoseg.export import onnx_available

    _, rundir, model_dir = exported
    expected = {"model.keras", "saved_model", "model.tflite", "autoseg.json", "leaderboard.csv"}
    if onnx_available():
        expected.add("model.onnx")
    assert {p.name for p in model_dir.iterdir()} == expected
    assert (model_dir / "saved_model" / "saved_model.pb").is_file()
    assert (model_dir / "leaderboard.csv").read_bytes() == (rundir / "leaderboard.csv").read_bytes()
    assert not list(model_dir.parent.glob(".model.*")), "a temporary folder was left behind"


def test_autoseg_json_describes_the_trial(exported):
    dataset, rundir, model_dir = exported
    meta = _metadata(model_dir)
    with open(rundir / "leaderboard.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["trial_id"] == "0")
    trial = json.loads((rundir / "trials" / "trial_0" / "trial.json").read_text())
    assert meta["classes"] == CLASSES
    assert meta["palette"] == [[0, 0, 0], [0, 255, 0], [255, 0, 0]]
    assert meta["ignore_index"] == 255
    assert meta["input_size"] == [32, 32]
    assert meta["policy"] == "crop" and meta["crop_scale"] == 0.5
    assert meta["normalisation"] == "raw RGB 0..255 float32, normalised inside the model"
    assert meta["trial_id"] == "0" and meta["model_name"] == "unet"
    assert meta["hyperparameters"] == trial["hyperparameters"]["values"]
    assert meta["metrics"]["val_mean_iou"] == pytest.approx(float(row["val_mean_iou"]))
    assert meta["metrics"]["val_iou_crop"] == pytest.approx(float(row["val_iou_crop"]))
    assert meta["run"] == str(rundir.resolve()) and meta["dataset"] == str(dataset.resolve())
    assert "fingerprint" in meta and meta["split"]["val"]
    assert set(meta["versions"]) >= {"autoseg", "tensorflow", "keras", "keras-tuner"}
    assert all(meta["versions"][k] for k in ("autoseg", "tensorflow", "keras", "keras-tuner"))
    assert meta["formats"]["keras"] == "model.keras"
    assert set(meta["verification"]["formats"]) == set(meta["formats"]) - {"keras"}
    assert meta["refit"] is None
    assert meta["trained_on"] == "train"


def test_every_format_gives_the_class_maps_of_model_keras(exported):
    """The same images through each format: saved_model identical, TFLite/ONNX <= 0.1%."""
    import autoseg
    from autoseg.data import pipeline
    from autoseg.export import onnx_available

    dataset, _, model_dir = exported
    images = [pipeline.read_image(p) for p in sorted((dataset / "images").iterdir())]
    # Also sizes the tiling must pad (smaller than a tile after scaling) and odd sizes.
    rng = np.random.default_rng(1)
    images += [rng.integers(0, 256, size, dtype=np.uint8) for size in [(37, 53, 3), (90, 41, 3)]]
    reference = autoseg.load(model_dir)
    expected = [reference.predict(image) for image in images]
    assert len({int(c) for m in expected for c in np.unique(m)}) >= 2, "a constant model proves little"
    formats = ["saved_model", "tflite"] + (["onnx"] if onnx_available() else [])
    for fmt in formats:
        model = autoseg.load(model_dir, format=fmt)
        differing = sum(int((model.predict(im) != ref).sum()) for im, ref in zip(images, expected))
        total = sum(ref.size for ref in expected)
        limit = 0 if fmt == "saved_model" else 0.001 * total
        assert differing <= limit, f"{fmt}: {differing} of {total} pixels differ"
    if not onnx_available():
        pytest.skip("ONNX not checked: the export extra (tf2onnx, onnx, onnxruntime) is not installed")


def test_exported_weights_are_the_checkpoints(exported):
    """model.keras predicts what the trial's checkpoint predicts, not a fresh model."""
    import keras

    from autoseg.export import read_trial, trial_values
    from autoseg.hypermodel import build_trial_model

    _, rundir, model_dir = exported
    run = json.loads((rundir / "run.json").read_text())
    values = trial_values(read_trial(rundir, "0"))
    trained = build_trial_model(values, 3, space=run["space"])
    trained.load_weights(rundir / "trials" / "trial_0" / "checkpoint.weights.h5")
    fresh = build_trial_model(values, 3, space=run["space"])
    exported_model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(exported_model(x), trained(x), atol=1e-6)
    assert np.abs(np.asarray(fresh(x)) - np.asarray(trained(x))).max() > 1e-3


# --- choosing the run and the trial -------------------------------------------------------


def test_unknown_trial_id_exits_2_naming_the_run_and_valid_ids(exported, tmp_path, capsys):
    _, rundir, _ = exported
    code = main(["export", "7", "--run", str(rundir), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert "no trial '7'" in err and str(rundir) in err and "Valid trial ids: 0" in err
    assert not (tmp_path / "x").exists()


def test_failed_trial_id_exits_2(exported, tmp_path, capsys):
    _, rundir, _ = exported
    code = main(["export", "1", "--run", str(rundir), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "FAILED" in err and "Valid trial ids: 0" in err


def test_run_without_completed_trial_exits_2(exported, tmp_path, capsys):
    from autoseg import leaderboard

    _, rundir, _ = exported
    broken = tmp_path / "failed-run"
    shutil.copytree(rundir, broken)
    rows = [{"trial_id": i, "status": "FAILED", "hyperparameters": {"model_name": "unet"},
             "message": "out of memory"} for i in ("0", "1")]
    leaderboard.write_leaderboard(broken / "leaderboard.csv", rows)
    code = main(["export", "best", "--run", str(broken), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert "no COMPLETED trial" in err and str(broken) in err and "0 FAILED, 1 FAILED" in err


def test_run_defaults_to_the_latest_under_runs(exported, tmp_path, monkeypatch, capsys):
    _, rundir, _ = exported
    monkeypatch.chdir(tmp_path)
    shutil.copytree(rundir, tmp_path / "runs" / "weeds")
    code = main(["export", "0", "--format", "keras"])
    out = capsys.readouterr().out
    assert code == 0, out
    model_dir = tmp_path / "exports" / "weeds-0"
    assert sorted(p.name for p in model_dir.iterdir()) == ["autoseg.json", "leaderboard.csv", "model.keras"]
    assert _metadata(model_dir)["formats"] == {"keras": "model.keras"}
    assert "Exported trial 0 to exports/weeds-0" in out
    # A second export into the same folder needs --overwrite.
    assert main(["export", "0", "--format", "keras"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_not_a_run_folder_exits_2(tmp_path, capsys):
    assert main(["export", "best", "--run", str(tmp_path)]) == 2
    assert "is not an autoseg run folder" in capsys.readouterr().err


# --- formats ------------------------------------------------------------------------------


def test_onnx_without_the_export_extra(monkeypatch, exported, tmp_path, capsys):
    from autoseg import export

    monkeypatch.setattr(export, "onnx_available", lambda: False)
    formats, explicit, notes = export.resolve_formats(None)
    assert formats == ["keras", "saved_model", "tflite"] and not explicit
    assert "pip install 'autoseg[export]'" in notes[0]
    _, rundir, _ = exported
    code = main(["export", "best", "--run", str(rundir), "--format", "keras,onnx",
                 "--out", str(tmp_path / "x")])
    assert code == 2
    assert "pip install 'autoseg[export]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_format_exits_2(exported, tmp_path, capsys):
    _, rundir, _ = exported
    code = main(["export", "best", "--run", str(rundir), "--format", "keras,pt",
                 "--out", str(tmp_path / "x")])
    assert code == 2 and "Valid formats: keras, saved_model, tflite, onnx" in capsys.readouterr().err


def _failing_tflite(saved_model, path):
    raise ValueError("Some ops are not supported by the native TFLite runtime.\n"
                     "Unsupported ops: Bitcast")


def test_a_format_that_fails_to_convert_is_left_out_with_its_reason(tmp_path, monkeypatch):
    """By default (formats not named) a converter's failure is a note, not an error."""
    from autoseg import export, models

    monkeypatch.setattr(export, "_export_tflite", _failing_tflite)
    model = models.build("unet", 3, (32, 32, 3), depth=3, filters=4)
    written, skipped = export.write_formats(model, tmp_path, ["saved_model", "tflite"],
                                            explicit=False, log=lambda _: None)
    assert written == {"saved_model": "saved_model"}
    assert skipped["tflite"] == "ValueError: Unsupported ops: Bitcast"
    assert [p.name for p in tmp_path.iterdir()] == ["saved_model"]


def test_a_named_format_that_fails_to_convert_is_an_error(tmp_path, monkeypatch):
    from autoseg import export, models
    from autoseg.errors import RunError

    monkeypatch.setattr(export, "_export_tflite", _failing_tflite)
    model = models.build("unet", 3, (32, 32, 3), depth=3, filters=4)
    with pytest.raises(RunError, match="to tflite failed.*--format keras"):
        export.write_formats(model, tmp_path, ["keras", "tflite"], explicit=True, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"], "scratch files left behind"


@pytest.mark.parametrize("backbone", ["none", "tiny"])
def test_segnet_exports_to_tflite_and_onnx_with_the_same_scores(tmp_path, backbone):
    """SegNet's argmax pooling is built from integer ops TFLite and ONNX both have."""
    import tensorflow as tf

    from autoseg import export, models

    model = models.build("segnet", 3, (32, 32, 3), depth=3, filters=4, backbone=backbone)
    # Train a step so that the scores are not all alike and ties are rare.
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    model.fit(images, rng.integers(0, 3, (4, 32, 32)), epochs=1, verbose=0)
    written, skipped = export.write_formats(model, tmp_path, ["tflite", "onnx"], log=lambda _: None)
    assert skipped == {} and set(written) == {"tflite", "onnx"}
    expected = model.predict(images, verbose=0)

    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "model.tflite"))
    interpreter.allocate_tensors()
    tflite_scores = []
    for image in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        tflite_scores.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
    np.testing.assert_allclose(np.stack(tflite_scores), expected, atol=1e-4)

    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_scores,) = session.run(None, {session.get_inputs()[0].name: images})
    np.testing.assert_allclose(onnx_scores, expected, atol=1e-4)


def test_sample_images_fall_back_to_synthetic_ones(tmp_path):
    from autoseg.export import sample_images

    images, source = sample_images({"dataset": str(tmp_path / "gone")}, (32, 32), count=3)
    assert "synthetic" in source and len(images) == 3
    assert all(im.dtype == np.uint8 and im.shape == (49, 51, 3) for im in images)
    assert all(im.std() > 10 for im in images)


def test_pix2pix_exports_its_generator_as_a_plain_model(tmp_path):
    """A pix2pix trial's checkpoint holds both networks; the export is the generator alone."""
    import keras

    from autoseg import leaderboard, losses, models
    from autoseg.architectures.pix2pix import Pix2Pix
    from autoseg.export import export

    generator_options = {"depth": 3, "filters": 4, "backbone": "none"}
    options = {"generator": "unet", "generator_options": generator_options,
               "disc_filters": 4, "disc_layers": 1}
    model = models.build("pix2pix", 3, (32, 32, 3), **options)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.get_loss("ce", 3))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    model.fit(x, rng.integers(0, 3, (2, 32, 32)), epochs=1, verbose=0)
    rundir = tmp_path / "run"
    trial_dir = rundir / "trials" / "trial_0"
    trial_dir.mkdir(parents=True)
    model.save_weights(trial_dir / "checkpoint.weights.h5")
    values = {"model_name": "pix2pix", "pix2pix/generator": "unet", "pix2pix/disc_filters": 4,
              "pix2pix/disc_layers": 1, "input_size": 32, "policy": "resize", "loss": "ce"}
    (trial_dir / "trial.json").write_text(json.dumps(
        {"trial_id": "0", "hyperparameters": {"values": values}, "status": "COMPLETED", "best_step": 0}))
    leaderboard.write_leaderboard(rundir / "leaderboard.csv", [
        {"trial_id": "0", "status": "COMPLETED", "hyperparameters": values,
         "metrics": {"val_mean_iou": 0.5}, "epochs": 1}])
    (rundir / "run.json").write_text(json.dumps({
        "dataset": str(tmp_path / "gone"), "classes": CLASSES,
        "palette": [[0, 0, 0], [0, 255, 0], [255, 0, 0]], "ignore_index": 255,
        "fingerprint": None, "objective": "val_mean_iou", "seed": 0,
        "space": {"models": {"pix2pix": {**options, "generator_options": generator_options}}},
    }))
    result = export("best", run=rundir, out=tmp_path / "model", formats="keras",
                    log=lambda _: None)
    loaded = keras.saving.load_model(result.out / "model.keras", safe_mode=True)
    assert not isinstance(loaded, Pix2Pix)
    assert type(loaded).__name__ == "Functional"
    assert not any("disc" in layer.name for layer in loaded.layers)
    assert loaded.count_params() == model.generator.count_params() < model.count_params()
    np.testing.assert_allclose(loaded(x), model.generator(x, training=False), atol=1e-6)
    assert result.metadata["model_name"] == "pix2pix"


# --- slow lane: a real search, exported, predicted and evaluated through the CLI -----------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from conftest import write_canonical_dataset

    root = tmp_path_factory.mktemp("search-export")
    dataset = write_canonical_dataset(root / "data", num_images=8, size=(48, 64))
    rundir = root / "run"
    code = main(["search", "--dataset", str(dataset), "--space", "ci", "--tuner", "random",
                 "--max-trials", "2", "--out", str(rundir)])
    assert code == 0
    return dataset, rundir


@pytest.mark.slow
def test_search_export_predict_evaluate_end_to_end(searched, tmp_path, capsys):
    import autoseg
    from autoseg import leaderboard
    from autoseg.data import pipeline
    from autoseg.export import onnx_available

    dataset, rundir = searched
    rows = leaderboard.read_leaderboard(rundir / "leaderboard.csv")
    assert {r["status"] for r in rows} == {"COMPLETED"}
    best = leaderboard.best_row(rows, "val_mean_iou", "max")
    model_dir = tmp_path / "model"
    assert main(["export", "best", "--run", str(rundir), "--out", str(model_dir)]) == 0
    meta = _metadata(model_dir)
    assert meta["trial_id"] == best["trial_id"]
    assert meta["metrics"]["val_mean_iou"] == pytest.approx(float(best["val_mean_iou"]))
    assert meta["policy"] == "resize" and meta["input_size"] == [32, 32]
    images = [pipeline.read_image(p) for p in sorted((dataset / "images").iterdir())]
    keras_model = autoseg.load(model_dir)
    reference_scores = [keras_model.predict_scores(im) for im in images]
    reference = [scores.argmax(-1) for scores in reference_scores]
    # SavedModel runs the same float32 graph as model.keras: its scores agree to rounding
    # (oneDNN may order the sums differently in graph and Keras calls), so a label may differ
    # only at a tie within 2e-4, which the bound on the scores implies.
    saved = autoseg.load(model_dir, format="saved_model")
    for im, ref_scores in zip(images, reference_scores):
        assert np.abs(saved.predict_scores(im) - ref_scores).max() < 1e-4
    for fmt in ["tflite"] + (["onnx"] if onnx_available() else []):
        model = autoseg.load(model_dir, format=fmt)
        differing = sum(int((model.predict(im) != ref).sum()) for im, ref in zip(images, reference))
        assert differing <= 0.001 * sum(r.size for r in reference)
    capsys.readouterr()
    assert main(["predict", str(model_dir), str(dataset / "images"), "--out",
                 str(tmp_path / "pred"), "--format", "tflite"]) == 0
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == len(images)
    assert main(["evaluate", str(model_dir), "--dataset", str(dataset)]) == 0
    metrics = json.loads((model_dir / f"eval-{dataset.name}" / "metrics.json").read_text())
    assert metrics["stems"] == meta["split"]["val"]
    assert metrics["split_source"] == "the search run's validation split"


@pytest.mark.slow
def test_refit_epochs_are_as_long_as_the_trials(searched, tmp_path):
    """A trial of a planned search trained epochs of 2 passes over its photos: its refit too."""
    from autoseg.export import export
    from autoseg.run_dir import record_path

    _, searched_run = searched
    rundir = tmp_path / "run"
    shutil.copytree(searched_run, rundir)
    path = record_path(rundir, "0")
    record = json.loads(path.read_text())
    assert record["passes_per_epoch"] == 1  # no time budget: one pass
    path.write_text(json.dumps({**record, "passes_per_epoch": 2}))
    result = export("0", run=rundir, out=tmp_path / "refit", formats="keras", refit=True,
                    log=lambda _: None, tta="none")
    assert result.metadata["refit"]["passes_per_epoch"] == 2


@pytest.mark.slow
def test_the_refit_of_a_continued_trial_trains_from_scratch(searched, tmp_path, monkeypatch):
    """A fork or finish that won is refitted from scratch: its trial values of a past
    checkpoint, a restored optimizer and a lineage's schedule do not reach `fit`, so its
    learning rate decays over the refit's own epochs, which are its lineage's up to its best
    epoch: the epochs before its own start and its best step."""
    from autoseg import hypermodel
    from autoseg.export import export
    from autoseg.plan import SCHEDULE_EPOCHS
    from autoseg.run_dir import trial_path

    _, searched_run = searched
    rundir = tmp_path / "run"
    shutil.copytree(searched_run, rundir)
    trial_json = trial_path(rundir, "0")
    trial = json.loads(trial_json.read_text())
    trial["hyperparameters"]["values"].update({
        "tuner/trial_id": "1", "tuner/initial_epoch": 1, "tuner/epochs": 2, "tuner/bracket": -3,
        SCHEDULE_EPOCHS: 40})
    trial_json.write_text(json.dumps(trial))
    seen, epochs = [], []
    fit = hypermodel.AutosegHyperModel.fit

    def spy(self, hp, model, *args, **kwargs):
        seen.append(dict(hp.values))
        epochs.append(kwargs["epochs"])
        return fit(self, hp, model, *args, **kwargs)

    monkeypatch.setattr(hypermodel.AutosegHyperModel, "fit", spy)
    export("0", run=rundir, out=tmp_path / "refit", formats="keras", refit=True,
           log=lambda _: None, tta="none")
    assert len(seen) == 1 and seen[0] and not any(k.startswith("tuner/") for k in seen[0])
    assert epochs == [1 + trial["best_step"] + 1]


@pytest.mark.slow
def test_refit_trains_in_the_precision_of_the_trial(searched, tmp_path, monkeypatch):
    """A trial trained in mixed bfloat16 (its record's `precision`, here set so whatever the
    CPU) is refitted in it too, not in float32, and exported in float32 all the same."""
    import keras

    from autoseg import hypermodel
    from autoseg.export import export
    from autoseg.run_dir import record_path

    _, searched_run = searched
    rundir = tmp_path / "run"
    shutil.copytree(searched_run, rundir)
    path = record_path(rundir, "0")
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "precision": "mixed_bfloat16"}))
    trained_in = []
    build_optimizer = hypermodel.build_optimizer

    def spy(model):  # called just before model.fit: what the refit's layers compute in
        trained_in.extend(layer.compute_dtype for layer in model.layers
                          if isinstance(layer, keras.layers.Conv2D))
        build_optimizer(model)

    monkeypatch.setattr(hypermodel, "build_optimizer", spy)
    lines = []
    result = export("0", run=rundir, out=tmp_path / "refit", formats="keras", refit=True,
                    log=lines.append, tta="none")
    # Every convolution but the head's (float32 under any policy) computes in bfloat16.
    assert trained_in.count("bfloat16") == len(trained_in) - 1 >= 1
    assert result.metadata["refit"]["precision"] == "mixed_bfloat16"
    assert any("in mixed_bfloat16" in line for line in lines)
    model = keras.saving.load_model(result.out / "model.keras", safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    assert np.asarray(model(x)).dtype == np.float32


def test_refit_trains_on_train_and_val_for_the_best_epoch_count(searched, tmp_path):
    import keras

    from autoseg.export import export, read_trial

    _, rundir = searched
    result = export("0", run=rundir, out=tmp_path / "refit", formats="keras", refit=True,
                    log=lambda _: None, tta="none")
    trial = read_trial(rundir, "0")
    refit = result.metadata["refit"]
    run = json.loads((rundir / "run.json").read_text())
    assert refit["epochs"] == trial["best_step"] + 1
    assert refit["images"] == len(run["split"]["train"]) + len(run["split"]["val"])
    assert result.metadata["trained_on"] == "train+val"
    checkpoint_export = export("0", run=rundir, out=tmp_path / "plain", formats="keras",
                               log=lambda _: None, tta="none")
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    refitted = keras.saving.load_model(result.out / "model.keras", safe_mode=True)
    original = keras.saving.load_model(checkpoint_export.out / "model.keras", safe_mode=True)
    assert np.abs(np.asarray(refitted(x)) - np.asarray(original(x))).max() > 1e-4
