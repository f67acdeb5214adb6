"""Flip test-time augmentation: the wrapper's arithmetic, the auto rule, and the export.

The fast lane checks the wrapper on a tiny untrained U-Net and the choice rule with made-up
scores; the slow lane exports the hand-made run of `test_export` with flips in every format
and predicts and evaluates with the result.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.errors import ConfigError
from autoseg.tta import FLIPS, MIN_GAIN, Measurement, choose_flips, describe, flip_tta_model

from test_export import exported_crop_model


@pytest.fixture(scope="module")
def base_model():
    import keras

    from autoseg import models

    keras.utils.set_random_seed(0)
    return models.build("unet", 3, (32, 32, 3), depth=3, filters=4)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)


def _hand_mean(model, x, views):
    """The mean over `views` of un-flipped predictions of flipped copies, in numpy."""
    total = 0
    for axes in views:
        flipped = np.flip(x, axis=axes) if axes else x
        scores = np.asarray(model(flipped))
        total = total + (np.flip(scores, axis=axes) if axes else scores)
    return total / len(views)


# --- the wrapper --------------------------------------------------------------------------


@pytest.mark.parametrize("flips,views", [
    ("h", [(), (2,)]),
    ("hv", [(), (2,), (1,), (1, 2)]),
], ids=["h", "hv"])
def test_wrapper_equals_the_hand_computed_mean_of_flipped_predictions(base_model, images, flips, views):
    tta = flip_tta_model(base_model, flips)
    expected = _hand_mean(base_model, images, views)
    np.testing.assert_allclose(np.asarray(tta(images)), expected, atol=1e-6)
    # The flips change something, or the comparison above proves nothing.
    assert np.abs(expected - np.asarray(base_model(images))).max() > 1e-4
    # Still probabilities: the output contract of the single model.
    np.testing.assert_allclose(np.asarray(tta(images)).sum(-1), 1.0, atol=1e-5)
    assert tta.input_shape == base_model.input_shape and tta.output_shape == base_model.output_shape


def test_none_is_the_single_model_itself(base_model, images):
    assert flip_tta_model(base_model, "none") is base_model


def test_the_wrapper_shares_the_weights(base_model):
    tta = flip_tta_model(base_model, "hv")
    assert tta.count_params() == base_model.count_params()


def test_the_wrapper_round_trips_through_keras_in_safe_mode(base_model, images, tmp_path):
    import keras

    tta = flip_tta_model(base_model, "h")
    tta.save(tmp_path / "tta.keras")
    loaded = keras.saving.load_model(tmp_path / "tta.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(tta(images)), atol=1e-6)


def test_unknown_flips_are_a_config_error(base_model):
    with pytest.raises(ConfigError, match="Valid choices: auto, none, h, hv"):
        flip_tta_model(base_model, "v")


def test_cli_choices_match_the_library():
    from autoseg.commands.export import TTA_CHOICES
    from autoseg.tta import CHOICES

    assert tuple(TTA_CHOICES) == tuple(CHOICES) and set(FLIPS) == {"none", "h", "hv"}


# --- the auto rule ------------------------------------------------------------------------


def _scorer(ious):
    return lambda option: Measurement(ious[option], 0.01 * len(FLIPS[option]))


def test_auto_keeps_the_best_option():
    record = choose_flips(_scorer({"none": 0.70, "h": 0.74, "hv": 0.72}))
    assert record["flips"] == "h"
    assert record["val_mean_iou"] == {"none": 0.70, "h": 0.74, "hv": 0.72}
    assert record["seconds_per_photo"] == {"none": 0.01, "h": 0.02, "hv": 0.04}
    assert describe(record) == "flip TTA: h (val mIoU 0.740 vs 0.700 without)"


def test_auto_keeps_more_flips_only_for_a_gain_worth_their_cost():
    assert choose_flips(_scorer({"none": 0.70, "h": 0.70, "hv": 0.69}))["flips"] == "none"
    assert choose_flips(_scorer({"none": 0.70, "h": 0.71, "hv": 0.71}))["flips"] == "h"
    # CWFID's figures: +0.004 for twice the inference is noise.
    assert choose_flips(_scorer({"none": 0.702, "h": 0.706, "hv": 0.701}))["flips"] == "none"
    assert choose_flips(_scorer({"none": 0.70, "h": 0.71, "hv": 0.714}))["flips"] == "h"
    assert choose_flips(_scorer({"none": 0.70, "h": 0.702, "hv": 0.72}))["flips"] == "hv"


def test_auto_without_validation_photos_is_none_with_the_reason():
    record = choose_flips(None, "the run's dataset data/x is not readable")
    assert record["flips"] == "none" and record["val_mean_iou"] is None
    assert "data/x is not readable" in record["reason"] and "not readable" in describe(record)


def test_unknown_tta_on_the_command_line_exits_2(capsys):
    assert main(["export", "best", "--tta", "vh"]) == 2
    assert "invalid choice: 'vh'" in capsys.readouterr().err


def test_predict_refuses_a_bad_tta_record(tmp_path):
    from autoseg.predict import read_metadata

    meta = {"classes": ["a", "b"], "palette": [[0, 0, 0], [1, 1, 1]], "ignore_index": 255,
            "input_size": [32, 32], "policy": "resize", "crop_scale": 1.0,
            "formats": {"keras": "model.keras"}, "tta": {"flips": "v"}}
    (tmp_path / "autoseg.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="`tta` must be null or an object whose `flips`"):
        read_metadata(tmp_path)
    meta.pop("tta")
    (tmp_path / "autoseg.json").write_text(json.dumps(meta))
    assert read_metadata(tmp_path)["tta"] is None  # an older export: the single model


# --- the export ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_crop_model(tmp_path_factory)


@pytest.fixture(scope="module")
def tta_export(exported, tmp_path_factory):
    """The hand-made run exported with hv flips in every available format."""
    from autoseg.export import export

    _, rundir, _ = exported
    out = tmp_path_factory.mktemp("tta") / "model"
    return export("best", run=rundir, out=out, tta="hv", log=lambda _: None).out


def _checkpoint_model(rundir):
    from autoseg.export import load_trial_model

    run = json.loads((rundir / "run.json").read_text())
    return load_trial_model(rundir, run, "0")


def _photos(dataset):
    from autoseg.data import pipeline

    images = [pipeline.read_image(p) for p in sorted((dataset / "images").iterdir())]
    rng = np.random.default_rng(1)
    return images + [rng.integers(0, 256, size, dtype=np.uint8) for size in [(37, 53, 3), (90, 41, 3)]]


@pytest.mark.slow
def test_tta_export_agrees_across_the_four_formats(exported, tta_export):
    import autoseg
    from autoseg.export import onnx_available

    dataset, _, _ = exported
    images = _photos(dataset)
    reference = autoseg.load(tta_export)
    expected = [reference.predict(image) for image in images]
    assert len({int(c) for m in expected for c in np.unique(m)}) >= 2, "a constant model proves little"
    formats = ["saved_model", "tflite"] + (["onnx"] if onnx_available() else [])
    for fmt in formats:
        model = autoseg.load(tta_export, format=fmt)
        assert model.tta == "hv"
        differing = sum(int((model.predict(im) != ref).sum()) for im, ref in zip(images, expected))
        total = sum(ref.size for ref in expected)
        assert differing <= 0.001 * total, f"{fmt}: {differing} of {total} pixels differ"
    if not onnx_available():
        pytest.skip("ONNX not checked: the export extra (tf2onnx, onnx, onnxruntime) is not installed")


@pytest.mark.slow
def test_predict_runs_the_flips_the_export_records(exported, tta_export):
    """Every format's scores are the tiled hv mean of the checkpoint's model, not the single model's."""
    import autoseg
    from autoseg.predict import SegmentationModel

    dataset, rundir, _ = exported
    meta = json.loads((tta_export / "autoseg.json").read_text())
    assert meta["tta"]["flips"] == "hv" and meta["tta"]["requested"] == "hv"
    base = _checkpoint_model(rundir)
    hand = SegmentationModel(tta_export, meta, lambda b: _hand_mean(base, b, FLIPS["hv"]), "keras")
    single = SegmentationModel(tta_export, meta, lambda b: np.asarray(base(b)), "keras")
    image = _photos(dataset)[0]
    for fmt in meta["formats"]:
        scores = autoseg.load(tta_export, format=fmt).predict_scores(image)
        np.testing.assert_allclose(scores, hand.predict_scores(image), atol=1e-4, err_msg=fmt)
    assert np.abs(hand.predict_scores(image) - single.predict_scores(image)).max() > 1e-3


@pytest.mark.slow
def test_tta_none_gives_exactly_the_single_models_output(exported, tmp_path):
    import autoseg
    from autoseg.export import export
    from autoseg.predict import SegmentationModel

    dataset, rundir, _ = exported
    out = export("best", run=rundir, out=tmp_path / "none", formats="keras,tflite", tta="none",
                 log=lambda _: None).out
    meta = json.loads((out / "autoseg.json").read_text())
    assert meta["tta"]["flips"] == "none"
    base = _checkpoint_model(rundir)
    single = SegmentationModel(out, meta, lambda b: np.asarray(base(b, training=False)), "keras")
    model = autoseg.load(out)
    assert model.tta == "none"
    for image in _photos(dataset)[:3]:
        assert np.array_equal(model.predict_scores(image), single.predict_scores(image))


@pytest.mark.slow
def test_auto_records_each_option_and_keeps_what_evaluate_measures(exported, tmp_path, capsys):
    """`--tta auto` scores through predict's path: evaluate on the val split gives the same IoU."""
    from autoseg.evaluate import evaluate

    dataset, rundir, _ = exported
    out = tmp_path / "auto"
    assert main(["export", "best", "--run", str(rundir), "--out", str(out), "--format", "keras"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "autoseg.json").read_text())["tta"]
    ious = record["val_mean_iou"]
    assert record["requested"] == "auto" and set(ious) == {"none", "h", "hv"}
    assert set(record["seconds_per_photo"]) == {"none", "h", "hv"}
    assert record["val_images"] == len(json.loads((rundir / "run.json").read_text())["split"]["val"])
    best = "none"
    for option in ("h", "hv"):
        if ious[option] >= ious[best] + MIN_GAIN:
            best = option
    assert record["flips"] == best
    assert describe(record) in printed and "flip TTA:" in printed
    result = evaluate(out, dataset, split="val", out=tmp_path / "eval", log=lambda _: None)
    assert result.split_source == "the search run's validation split"
    assert result.tta == record["flips"]
    assert result.scores["mean_iou"] == pytest.approx(ious[record["flips"]], abs=1e-9)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["tta"] == record["flips"]
