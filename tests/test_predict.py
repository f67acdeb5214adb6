"""`autoseg.load` and `autoseg predict`: pre/post-processing, outputs, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from autoseg.cli import main
from autoseg.errors import ConfigError

from test_export import exported_crop_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_crop_model(tmp_path_factory)


@pytest.fixture(scope="module")
def keras_model(exported):
    import keras

    return keras.saving.load_model(exported[2] / "model.keras", safe_mode=True)


def _odd_image(height=37, width=53, seed=3):
    """A smooth photo-like image (discs on soil) of an odd size."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (120, 90, 60)
    yy, xx = np.mgrid[:height, :width]
    for colour in ((40, 200, 40), (220, 40, 40)):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= (min(height, width) // 3) ** 2] = colour
    return np.clip(image + rng.integers(-15, 15, image.shape), 0, 255).astype(np.uint8)


def _manual_tiled_scores(keras_model, image, tile, scale, overlap=0):
    """Tile-and-stitch written out by hand: scale, pad, tile, average overlaps, upsample."""
    height, width = image.shape[:2]
    sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
    interpolation = cv2.INTER_AREA if sh <= height and sw <= width else cv2.INTER_LINEAR
    scaled = cv2.resize(image, (sw, sh), interpolation=interpolation).astype(np.float32)
    step = tile - overlap
    ys = [0] if sh <= tile else list(range(0, sh - tile, step)) + [sh - tile]
    xs = [0] if sw <= tile else list(range(0, sw - tile, step)) + [sw - tile]
    canvas = np.zeros((max(sh, tile), max(sw, tile), 3), np.float32)
    canvas[:sh, :sw] = scaled
    total = np.zeros((canvas.shape[0], canvas.shape[1], 3), np.float64)
    count = np.zeros(canvas.shape[:2], np.float64)
    for y in ys:
        for x in xs:
            scores = np.asarray(keras_model(canvas[None, y : y + tile, x : x + tile]))[0]
            total[y : y + tile, x : x + tile] += scores
            count[y : y + tile, x : x + tile] += 1
    stitched = (total / count[..., None])[:sh, :sw].astype(np.float32)
    return cv2.resize(stitched, (width, height), interpolation=cv2.INTER_LINEAR)


# --- the Python API -----------------------------------------------------------------------


def test_load_reads_the_metadata(exported):
    import autoseg

    model = autoseg.load(exported[2])
    assert model.classes == ["background", "crop", "weed"]
    assert model.palette == [(0, 0, 0), (0, 255, 0), (255, 0, 0)]
    assert (model.policy, model.crop_scale, model.input_size) == ("crop", 0.5, (32, 32))


@pytest.mark.parametrize("size", [(37, 53), (90, 41), (20, 30), (200, 151)],
                         ids=["odd", "tall", "smaller-than-a-tile", "many-tiles"])
def test_crop_policy_prediction_equals_a_manual_tile_and_stitch(exported, keras_model, size):
    import autoseg

    model = autoseg.load(exported[2])
    image = _odd_image(*size)
    expected = _manual_tiled_scores(keras_model, image, 32, 0.5)
    scores = model.predict_scores(image)
    assert scores.shape == (*size, 3)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    class_map = model.predict(image)
    assert class_map.shape == size and class_map.dtype == np.uint8
    np.testing.assert_array_equal(class_map, expected.argmax(-1))


def test_tile_overlap_averages_the_scores_of_overlapping_tiles(exported, keras_model, tmp_path,
                                                               capsys):
    import autoseg
    image = _odd_image(200, 151)
    expected = _manual_tiled_scores(keras_model, image, 32, 0.5, overlap=12)
    assert not np.allclose(expected, _manual_tiled_scores(keras_model, image, 32, 0.5), atol=1e-5)
    model = autoseg.load(exported[2], tile_overlap=12)
    np.testing.assert_allclose(model.predict_scores(image), expected, atol=1e-5)

    cv2.imwrite(str(tmp_path / "photo.png"), image[..., ::-1])
    assert main(["predict", str(exported[2]), str(tmp_path / "photo.png"), "--out",
                 str(tmp_path / "out"), "--no-overlay", "--tile-overlap", "12"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "photo_mask.png")),
                                  expected.argmax(-1))

    assert main(["predict", str(exported[2]), str(tmp_path / "photo.png"), "--out",
                 str(tmp_path / "out2"), "--tile-overlap", "32"]) == 2
    assert "--tile-overlap must be an integer in [0, 32)" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_resize_policy_prediction_equals_a_manual_resize(exported, keras_model):
    """The same network with the resize policy: resize (area), predict, bilinear back, argmax."""
    from autoseg.predict import SegmentationModel, open_runner, read_metadata

    model_dir = exported[2]
    metadata = {**read_metadata(model_dir), "policy": "resize"}
    model = SegmentationModel(model_dir, metadata, open_runner(model_dir / "model.keras", "keras"),
                              "keras")
    image = _odd_image(75, 61)
    small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    scores = np.asarray(keras_model(small[None]))[0]
    expected = cv2.resize(scores, (61, 75), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(model.predict_scores(image), expected, atol=1e-5)
    np.testing.assert_array_equal(model.predict(image), expected.argmax(-1))
    assert model.predict(_odd_image(17, 23)).shape == (17, 23)  # enlarged, not shrunk


def test_predict_accepts_grey_and_rgba_and_refuses_floats(exported):
    import autoseg

    model = autoseg.load(exported[2])
    rgb = _odd_image()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(model.predict(rgba), model.predict(rgb))
    assert model.predict(rgb[..., 0]).shape == rgb.shape[:2]
    with pytest.raises(ConfigError, match="uint8"):
        model.predict(rgb.astype(np.float32))
    with pytest.raises(ConfigError, match=r"\(height, width, 3\)"):
        model.predict(np.zeros((4, 4, 2), np.uint8))


# --- the command ----------------------------------------------------------------------------


def test_predict_folder_with_a_corrupt_file(exported, tmp_path, capsys):
    import autoseg

    dataset, _, model_dir = exported
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted((dataset / "images").iterdir())[:2]:
        shutil.copy(path, inputs / path.name)
    Image.fromarray(_odd_image()).save(inputs / "odd.jpg")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = main(["predict", str(model_dir), str(inputs), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.png" in captured.err and "not a readable image" in captured.err
    assert "1 of 4 input(s) failed" in captured.err
    assert "notes.txt" in captured.err  # ignored, with a note
    assert "[predict 4/4] odd.jpg (53x37)" in captured.out
    model = autoseg.load(model_dir)
    stems = ["img000", "img001", "odd"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}_{kind}.png" for s in stems for kind in ("mask", "color", "overlay")
    )
    for stem in stems:
        source = next(inputs.glob(f"{stem}.*"))
        photo = np.asarray(Image.open(source).convert("RGB"))
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        colour = np.asarray(Image.open(out / f"{stem}_color.png"))
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert mask.shape == photo.shape[:2] and mask.dtype == np.uint8
        assert colour.shape == overlay.shape == photo.shape
        from autoseg.data import pipeline

        np.testing.assert_array_equal(mask, model.predict(pipeline.read_image(source)))
        np.testing.assert_array_equal(colour, np.asarray(model.palette, np.uint8)[mask])
        assert np.abs(overlay.astype(int) - photo.astype(int)).mean() > 10, "overlay == photo"


def test_overlay_blends_the_mask_and_draws_a_legend():
    from autoseg.predict import overlay

    photo = np.full((120, 160, 3), 200, np.uint8)
    class_map = np.zeros((120, 160), np.uint8)
    class_map[60:, 80:] = 1
    out = overlay(photo, class_map, [(0, 0, 0), (0, 255, 0)], ["soil", "crop"])
    assert out.shape == photo.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[100, 120], [100, 228, 100])  # 50% photo, 50% green
    np.testing.assert_array_equal(out[100, 20], [100, 100, 100])  # 50% photo, 50% black
    legend = out[:30, :60]
    assert (np.abs(legend.astype(int) - out[100, 20]).sum(-1) > 0).mean() > 0.5, "no legend"
    assert ((legend == [0, 255, 0]).all(-1)).any(), "no swatch of the crop colour"


def test_predict_without_overlay_and_with_tflite(exported, tmp_path, capsys):
    dataset, _, model_dir = exported
    image = sorted((dataset / "images").iterdir())[0]
    out = tmp_path / "out"
    assert main(["predict", str(model_dir), str(image), "--out", str(out), "--format",
                 "tflite", "--no-overlay"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img000_color.png", "img000_mask.png"]


def test_predict_refuses_colliding_stems_and_missing_inputs(exported, tmp_path, capsys):
    dataset, _, model_dir = exported
    source = sorted((dataset / "images").iterdir())[0]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(source, tmp_path / "a" / "x.png")
    shutil.copy(source, tmp_path / "b" / "x.png")
    out = tmp_path / "out"
    code = main(["predict", str(model_dir), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert code == 2 and "share the stem 'x'" in capsys.readouterr().err
    code = main(["predict", str(model_dir), str(tmp_path / "nope.png"), "--out", str(out)])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert not out.exists()


# --- refusals: unsafe and damaged model folders ---------------------------------------------


def _copy_model_dir(exported, tmp_path, files=("autoseg.json", "model.keras")) -> Path:
    target = tmp_path / "model"
    target.mkdir()
    for name in files:
        shutil.copy(exported[2] / name, target / name)
    meta = json.loads((target / "autoseg.json").read_text())
    meta["formats"] = {"keras": "model.keras"}
    (target / "autoseg.json").write_text(json.dumps(meta))
    return target


def test_a_keras_file_with_a_lambda_layer_is_refused(exported, tmp_path, capsys):
    import keras

    import autoseg

    model_dir = _copy_model_dir(exported, tmp_path)
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Lambda(lambda t: keras.ops.softmax(t * 2.0))(inputs)
    keras.Model(inputs, outputs).save(model_dir / "model.keras")
    with pytest.raises(ConfigError, match="safe_mode=False.*never runs code"):
        autoseg.load(model_dir)
    image = tmp_path / "x.png"
    Image.fromarray(_odd_image()).save(image)
    assert main(["predict", str(model_dir), str(image), "--out", str(tmp_path / "out")]) == 2
    assert "Lambda" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_metadata", "autoseg.json is missing"),
        ("bad_json", "is damaged: it is not valid JSON"),
        ("missing_key", "lacks the key `classes`"),
        ("wrong_type", r"`input_size` must be \[height, width\].*Received: input_size='32'"),
        ("short_palette", "`palette` has 2 colours for 3 classes"),
        ("truncated_keras", "model.keras is damaged"),
        ("missing_file", "model.keras is missing"),
        ("format_not_exported", "holds no onnx model. It holds: keras"),
    ],
)
def test_a_damaged_model_folder_is_refused(exported, tmp_path, damage, message):
    import autoseg

    model_dir = _copy_model_dir(exported, tmp_path)
    meta_path = model_dir / "autoseg.json"
    meta = json.loads(meta_path.read_text())
    fmt = "keras"
    if damage == "no_metadata":
        meta_path.unlink()
    elif damage == "bad_json":
        meta_path.write_text(meta_path.read_text()[:40])
    elif damage == "missing_key":
        del meta["classes"]
        meta_path.write_text(json.dumps(meta))
    elif damage == "wrong_type":
        meta["input_size"] = "32"
        meta_path.write_text(json.dumps(meta))
    elif damage == "short_palette":
        meta["palette"] = meta["palette"][:2]
        meta_path.write_text(json.dumps(meta))
    elif damage == "truncated_keras":
        data = (model_dir / "model.keras").read_bytes()
        (model_dir / "model.keras").write_bytes(data[: len(data) // 2])
    elif damage == "missing_file":
        (model_dir / "model.keras").unlink()
    elif damage == "format_not_exported":
        fmt = "onnx"
    with pytest.raises(ConfigError, match=message) as info:
        autoseg.load(model_dir, format=fmt)
    if damage in ("missing_key", "wrong_type", "bad_json"):
        assert str(meta_path) in str(info.value)


def test_a_keras_file_of_another_export_is_refused_at_predict(exported, tmp_path):
    """autoseg.json says 3 classes at 32x32; a model with other outputs is caught."""
    from autoseg import models

    import autoseg

    model_dir = _copy_model_dir(exported, tmp_path)
    models.build("unet", 5, (32, 32, 3), depth=3, filters=4).save(model_dir / "model.keras")
    model = autoseg.load(model_dir)
    with pytest.raises(ConfigError, match="mixes files of different exports"):
        model.predict(_odd_image())
