"""Top-K ensembles (`autoseg.ensemble`, `autoseg export --ensemble K`)."""

from __future__ import annotations

import json
import shutil
import numpy as np
import pytest

from autoseg.cli import main
from autoseg.ensemble import ensemble_model, incompatibility, member_input_size

RESIZE = {"policy": "resize", "crop_scale": 1.0, "input_size": (32, 32)}


def _tiny(size: tuple[int, int], seed: int, name: str = "unet"):
    """A functional model of the segmentation contract: 0..255 in, softmax over 3 classes out."""
    import keras

    image = keras.Input((*size, 3))
    x = keras.layers.Rescaling(1 / 255)(image)
    x = keras.layers.Conv2D(3, 3, padding="same",
                            kernel_initializer=keras.initializers.RandomNormal(seed=seed))(x)
    return keras.Model(image, keras.layers.Softmax()(x), name=name)


def test_the_ensemble_outputs_the_mean_of_its_members_probabilities():
    a, b = _tiny((32, 32), 1), _tiny((32, 32), 2)
    both = ensemble_model([a, b], (32, 32))
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    expected = (np.asarray(a(images)) + np.asarray(b(images))) / 2
    np.testing.assert_allclose(np.asarray(both(images)), expected, atol=1e-6)
    assert both.output_shape == (None, 32, 32, 3)


def test_a_member_of_another_size_sees_the_image_resized_and_is_resized_back():
    import keras

    small, large = _tiny((32, 32), 1), _tiny((48, 40), 2)
    both = ensemble_model([small, large], (32, 32))
    images = np.random.default_rng(1).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    seen = keras.ops.image.resize(images, (48, 40), interpolation="bilinear")
    back = keras.ops.image.resize(large(seen), (32, 32), interpolation="bilinear")
    expected = (np.asarray(small(images)) + np.asarray(back)) / 2
    np.testing.assert_allclose(np.asarray(both(images)), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(both(images)).sum(-1), 1.0, atol=1e-5)


def test_members_with_one_name_save_and_load_in_safe_mode(tmp_path):
    import keras

    both = ensemble_model([_tiny((32, 32), 1), _tiny((24, 24), 2)], (32, 32))
    both.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    images = np.full((1, 32, 32, 3), 100.0, np.float32)
    np.testing.assert_allclose(np.asarray(again(images)), np.asarray(both(images)), atol=1e-6)


def test_an_ensemble_needs_two_members_of_one_kind():
    with pytest.raises(ValueError, match="at least two"):
        ensemble_model([_tiny((32, 32), 1)], (32, 32))
    import keras

    image = keras.Input((32, 32, 1))
    grey = keras.Model(image, keras.layers.Conv2D(3, 1, activation="softmax")(image))
    with pytest.raises(ValueError, match="channels"):
        ensemble_model([_tiny((32, 32), 1), grey], (32, 32))


def test_the_saved_model_runs_members_behind_a_resize_in_inference_mode(tmp_path):
    """Keras 3.15's own `model.export` endpoint lets Resizing's default `training=True` reach
    a member's BatchNormalization (batch statistics: 42 % of an ensemble's pixels changed
    class); autoseg's endpoint calls the model with `training=False`."""
    import keras
    import tensorflow as tf

    from autoseg.export import _export_saved_model

    inner_input = keras.Input((48, 48, 3))
    inner = keras.Model(inner_input, keras.layers.BatchNormalization()(
        keras.layers.Conv2D(3, 3, padding="same")(inner_input)))
    image = keras.Input((32, 32, 3))
    model = keras.Model(image, inner(keras.layers.Resizing(48, 48)(image)))
    _export_saved_model(model, tmp_path / "saved_model")
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded.serve(tf.constant(images))),
                               np.asarray(model(images, training=False)), atol=1e-4)


def test_only_trials_that_see_the_photo_the_same_way_can_join():
    crop = {"policy": "crop", "crop_scale": 0.5, "input_size": (64, 64)}
    assert incompatibility(RESIZE, {**RESIZE, "input_size": (48, 64)}) == ""
    assert "policy crop" in incompatibility(RESIZE, crop)
    assert "crop_scale 1.0" in incompatibility(crop, {**crop, "crop_scale": 1.0})
    assert incompatibility(crop, {**crop, "input_size": (32, 32)}) == ""
    # A crop member is rebuilt at the leader's tile (same pixel scale), a resize member not.
    assert member_input_size(crop, {**crop, "input_size": (32, 32)}) == (64, 64)
    assert member_input_size(RESIZE, {**RESIZE, "input_size": (48, 64)}) == (48, 64)


# --- export --ensemble K on a hand-made run ---------------------------------------------------

_SPACE = {
    "models": {"unet": {"depth": 3, "filters": 4, "backbone": "none"}},
    "input_size": 32, "policy": "resize", "batch_size": 2, "loss": "ce",
    "aug_strength": 0.0, "learning_rate": 0.01, "max_epochs": 1,
}


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """A run of four COMPLETED trials: "0" and "1" (resize at 32 and 48 px), "2" a crop
    trial (cannot join) and "3" trial 0's configuration again (Hyperband's continuation);
    the leaderboard ranks 3, 0, 2, 1 by their real val mean IoU nudged into that order."""
    from conftest import write_canonical_dataset
    from test_export import train_trial, write_run_files

    from autoseg.hypermodel import TrainingData

    root = tmp_path_factory.mktemp("ensemble")
    dataset = write_canonical_dataset(root / "data", num_images=6, size=(48, 64))
    data = TrainingData.from_path(dataset, seed=0)
    rundir = root / "run"
    spaces = {"0": _SPACE, "1": {**_SPACE, "input_size": 48},
              "2": {**_SPACE, "policy": "crop", "crop_scale": 0.5}}
    records = [train_trial(rundir, data, space, trial_id, epochs=6)
               for trial_id, space in spaces.items()]
    # Trial 3 continues trial 0 (same hyperparameters): a copy serves.
    shutil.copytree(rundir / "trials" / "trial_0", rundir / "trials" / "trial_3")
    trial = json.loads((rundir / "trials" / "trial_3" / "trial.json").read_text())
    (rundir / "trials" / "trial_3" / "trial.json").write_text(json.dumps({**trial, "trial_id": "3"}))
    records.append({**records[0], "trial_id": "3", "metrics": dict(records[0]["metrics"])})
    for record, score in zip(records, (0.8, 0.6, 0.7, 0.9)):
        record["metrics"]["val_mean_iou"] = score
    write_run_files(rundir, dataset, data, _SPACE, records)
    return dataset, rundir


@pytest.mark.slow
def test_export_ensemble_averages_the_best_trials_that_can_join_in_every_format(
        ensemble_run, tmp_path, capsys):
    from autoseg.export import onnx_available
    from autoseg.predict import load

    dataset, rundir = ensemble_run
    out = tmp_path / "ens"
    code = main(["export", "best", "--run", str(rundir), "--ensemble", "2", "--tta", "none",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Exported the ensemble of trials 3, 1" in printed
    assert "trial 0 left out of the ensemble: the configuration of trial 3" in printed
    assert "trial 2 left out of the ensemble: policy crop" in printed
    metadata = json.loads((out / "autoseg.json").read_text())
    record = metadata["ensemble"]
    assert metadata["model_name"] == "ensemble" and metadata["trial_id"] == "3"
    assert [(m["trial_id"], m["input_size"]) for m in record["members"]] == [("3", [32, 32]),
                                                                              ("1", [48, 48])]
    assert [m["val_mean_iou"] for m in record["members"]] == [0.9, 0.6]
    assert record["val_images"] >= 1
    for value in [record["val_mean_iou_full_res"]] + [m["val_mean_iou_full_res"] for m in record["members"]]:
        assert 0.0 <= value <= 1.0
    assert len(record["left_out"]) == 2
    formats = {"keras", "saved_model", "tflite"} | ({"onnx"} if onnx_available() else set())
    assert set(metadata["verification"]["formats"]) == formats - {"keras"}
    # The exported graph is the mean of the two members' probabilities.
    import keras

    from autoseg.export import load_trial_model

    run = json.loads((rundir / "run.json").read_text())
    members = [load_trial_model(rundir, run, t) for t in ("3", "1")]
    image = np.random.default_rng(2).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(ensemble_model(members, (32, 32))(image))
    exported = keras.saving.load_model(out / "model.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(exported(image)), expected, atol=1e-5)
    assert load(out, "tflite").predict_scores(image[0].astype(np.uint8)).shape == (32, 32, 3)

@pytest.mark.slow
def test_export_ensemble_refuses_what_it_cannot_do(ensemble_run, tmp_path, capsys):
    _, rundir = ensemble_run
    for extra, message in ((["--ensemble", "3"], "only 2 trial(s)"),
                           (["--ensemble", "0"], "1 or more"),
                           (["--ensemble", "2", "--refit"], "cannot be combined")):
        out = tmp_path / "never"
        code = main(["export", "best", "--run", str(rundir), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert "Traceback" not in err
        assert not out.exists()


@pytest.mark.slow
def test_export_ensemble_with_tta_auto_scores_the_ensemble_once_per_option(
        ensemble_run, tmp_path, capsys, monkeypatch):
    import autoseg.evaluate

    dataset, rundir = ensemble_run
    calls = []
    real = autoseg.evaluate.score_images
    monkeypatch.setattr(autoseg.evaluate, "score_images",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "ens_auto"
    code = main(["export", "best", "--run", str(rundir), "--ensemble", "2", "--tta", "auto",
                 "--format", "keras", "--out", str(out)])
    assert code == 0, capsys.readouterr().out
    metadata = json.loads((out / "autoseg.json").read_text())
    # Two members, then the ensemble without flips (once: the tta choice reuses it), h, hv.
    assert len(calls) == 2 + 3
    assert metadata["tta"]["val_mean_iou"]["none"] == metadata["ensemble"]["val_mean_iou_full_res"]
    # The run's leaderboard shows the ensemble beside its members.
    from autoseg import leaderboard

    entry = next(e for e in leaderboard.leaderboard(rundir).ensembles if e["out"] == str(out))
    assert entry["members"] == ["3", "1"]
    assert entry["val_mean_iou_full_res"] == metadata["ensemble"]["val_mean_iou_full_res"]
    assert entry["members_val_mean_iou_full_res"] == {
        m["trial_id"]: m["val_mean_iou_full_res"] for m in metadata["ensemble"]["members"]}
    assert entry["tta"] == metadata["tta"]["flips"]
    assert main(["leaderboard", str(rundir)]) == 0
    printed = capsys.readouterr().out
    assert (f"Ensemble of trials 3, 1 ({out}): val mIoU "
            f"{entry['val_mean_iou_full_res']:.4f} at full resolution") in printed
