"""`autoseg evaluate`: the scores against a plain numpy computation, splits, outputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from autoseg.cli import main

from test_export import exported_crop_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_crop_model(tmp_path_factory)


@pytest.fixture
def dataset_copy(exported, tmp_path):
    """The run's dataset copied elsewhere, with ignore (255) pixels in one mask."""
    target = tmp_path / "copy"
    shutil.copytree(exported[0], target)
    mask_path = target / "masks" / "img002.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[:10, :20] = 255
    Image.fromarray(mask).save(mask_path)
    return target


def _numpy_scores(model_dir: Path, dataset: Path, stems: list[str]) -> dict:
    """IoU, dice and accuracy written out with numpy alone, on `autoseg.load`'s predictions."""
    import autoseg

    model = autoseg.load(model_dir)
    intersection = np.zeros(3)
    target_pixels = np.zeros(3)
    predicted_pixels = np.zeros(3)
    correct = counted = 0
    confusion = np.zeros((3, 3), np.int64)
    for stem in stems:
        image = np.asarray(Image.open(dataset / "images" / f"{stem}.png").convert("RGB"))
        mask = np.asarray(Image.open(dataset / "masks" / f"{stem}.png")).astype(np.int64)
        predicted = model.predict(image).astype(np.int64)
        valid = mask != 255
        for c in range(3):
            intersection[c] += np.sum((mask == c) & (predicted == c) & valid)
            target_pixels[c] += np.sum((mask == c) & valid)
            predicted_pixels[c] += np.sum((predicted == c) & valid)
        correct += np.sum((mask == predicted) & valid)
        counted += valid.sum()
        for t, p in zip(mask[valid], predicted[valid]):
            confusion[t, p] += 1
    union = target_pixels + predicted_pixels - intersection
    present = union > 0
    iou = [float(intersection[c] / union[c]) if present[c] else None for c in range(3)]
    dice = [2 * intersection[c] / (target_pixels[c] + predicted_pixels[c]) for c in range(3) if present[c]]
    return {
        "per_class_iou": iou,
        "mean_iou": float(np.mean([v for v in iou if v is not None])),
        "dice": float(np.mean(dice)),
        "pixel_accuracy": float(correct / counted),
        "confusion": confusion,
        "counted": int(counted),
    }


def test_evaluate_numbers_equal_a_numpy_computation(exported, dataset_copy, tmp_path, capsys):
    _, _, model_dir = exported
    out = tmp_path / "eval"
    code = main(["evaluate", str(model_dir), "--dataset", str(dataset_copy), "--split", "all",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())
    stems = [f"img{i:03d}" for i in range(6)]
    assert metrics["stems"] == stems and metrics["num_images"] == 6
    expected = _numpy_scores(model_dir, dataset_copy, stems)
    assert expected["counted"] == 6 * 48 * 64 - 200  # the 10x20 ignore block is not counted
    assert len([v for v in expected["per_class_iou"] if v]) >= 2, "a constant model proves little"
    assert metrics["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    assert metrics["dice"] == pytest.approx(expected["dice"], abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    assert list(metrics["per_class_iou"]) == ["background", "crop", "weed"]
    for got, want in zip(metrics["per_class_iou"].values(), expected["per_class_iou"]):
        assert got == (pytest.approx(want, abs=1e-12) if want is not None else None)
    np.testing.assert_array_equal(metrics["confusion_matrix"], expected["confusion"])
    with open(out / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["target \\ predicted", "background", "crop", "weed"]
    np.testing.assert_array_equal([[int(v) for v in r[1:]] for r in rows[1:]], expected["confusion"])
    png = Image.open(out / "confusion_matrix.png")
    assert png.format == "PNG" and png.size[0] > 200 and png.size[1] > 200
    assert f"mean IoU {expected['mean_iou']:.4f}" in printed
    assert "includes the images the model was trained on" not in printed  # another dataset path


def test_val_split_is_the_runs_when_the_dataset_is_the_runs(exported, tmp_path, capsys):
    dataset, rundir, shared_model_dir = exported
    model_dir = tmp_path / "model"  # the default --out is inside the model folder
    shutil.copytree(shared_model_dir, model_dir)
    run = json.loads((rundir / "run.json").read_text())
    code = main(["evaluate", str(model_dir), "--dataset", str(dataset)])
    assert code == 0
    metrics = json.loads((model_dir / "eval-data" / "metrics.json").read_text())
    assert metrics["stems"] == run["split"]["val"]
    assert metrics["split_source"] == "the search run's validation split"
    # A second evaluation replaces the first without --overwrite.
    assert main(["evaluate", str(model_dir), "--dataset", str(dataset), "--split", "all"]) == 0
    assert json.loads((model_dir / "eval-data" / "metrics.json").read_text())["num_images"] == 6


def test_val_split_of_another_dataset(exported, dataset_copy, tmp_path, capsys):
    from autoseg.evaluate import evaluate

    _, _, model_dir = exported
    notes = []
    result = evaluate(model_dir, dataset_copy, out=tmp_path / "a", log=notes.append)
    assert result.split_source.startswith("every image") and len(result.stems) == 6
    assert any("no validation split" in n for n in notes)
    meta_path = dataset_copy / "dataset.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["splits"] = {"val": ["img001", "img004"]}
    meta_path.write_text(yaml.safe_dump(meta))
    result = evaluate(model_dir, dataset_copy, out=tmp_path / "b", log=notes.append)
    assert result.stems == ["img001", "img004"] and result.split_source == "dataset.yaml splits.val"


def test_test_split_needs_splits_test(exported, dataset_copy, capsys):
    _, _, model_dir = exported
    code = main(["evaluate", str(model_dir), "--dataset", str(dataset_copy), "--split", "test"])
    assert code == 2 and "lists no `splits.test`" in capsys.readouterr().err


def test_classes_must_match(exported, dataset_copy, capsys):
    _, _, model_dir = exported
    meta_path = dataset_copy / "dataset.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["classes"] = ["background", "weed", "crop"]
    meta_path.write_text(yaml.safe_dump(meta))
    code = main(["evaluate", str(model_dir), "--dataset", str(dataset_copy)])
    assert code == 2 and "same order" in capsys.readouterr().err


def test_an_unrelated_non_empty_out_needs_overwrite(exported, dataset_copy, tmp_path, capsys):
    _, _, model_dir = exported
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["evaluate", str(model_dir), "--dataset", str(dataset_copy), "--out", str(out)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
