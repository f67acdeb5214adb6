"""Dataset fingerprints and `autoseg info`."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from autoseg.cli import main
from autoseg.data.dataset import compute_fingerprint, load_dataset
from autoseg.data.sources import prepare
from autoseg.errors import DatasetError


def write_pairs(root, masks, channels=("RGB",) * 3):
    """images/i<k>.png sized like each mask + masks/i<k>.png; returns the (image, mask) pairs."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs = []
    for k, (mask, mode) in enumerate(zip(masks, channels)):
        mask = np.asarray(mask, np.uint8)
        image, mask_path = root / "images" / f"i{k}.png", root / "masks" / f"i{k}.png"
        Image.new(mode, mask.shape[::-1]).save(image)
        Image.fromarray(mask).save(mask_path)
        pairs.append((image, mask_path))
    return pairs


MASKS = [
    np.array([[0, 0, 1, 1], [0, 0, 255, 255]]),  # 2x4
    np.array([[0, 0, 0], [2, 2, 0], [0, 0, 255]]),  # 3x3
    np.array([[0], [0], [1], [1], [0]]),  # 5x1
]


def test_fingerprint_counts_pixels_images_and_sizes(tmp_path):
    pairs = write_pairs(tmp_path, MASKS, channels=("RGB", "L", "RGB"))
    fingerprint = compute_fingerprint(pairs, classes=["soil", "crop", "weed"])
    # 22 pixels, 3 ignored; the other 19 are soil 13, crop 4, weed 2.
    assert fingerprint == {
        "num_images": 3,
        "image_size": {"min": [2, 1], "median": [3, 3], "max": [5, 4]},
        "channels": [1, 3],
        "pixel_dtype": ["uint8"],
        "value_range": [0, 0],  # black photos
        "value_percentiles": [0, 0],
        "class_pixel_fraction": {"soil": round(13 / 19, 6), "crop": round(4 / 19, 6),
                                 "weed": round(2 / 19, 6)},
        "class_image_count": {"soil": 3, "crop": 2, "weed": 1},
        "ignore_fraction": round(3 / 22, 6),
    }
    assert yaml.safe_load(yaml.safe_dump(fingerprint)) == fingerprint


def test_fingerprint_without_classes_names_them_from_the_values(tmp_path):
    fingerprint = compute_fingerprint(write_pairs(tmp_path, MASKS))
    assert list(fingerprint["class_pixel_fraction"]) == ["class_0", "class_1", "class_2"]


def test_fingerprint_refuses_values_beyond_the_classes_and_size_mismatches(tmp_path):
    pairs = write_pairs(tmp_path, MASKS)
    with pytest.raises(DatasetError, match=r"^masks/i1.png holds value\(s\) 2 but the dataset has 2 classes"):
        compute_fingerprint(pairs, classes=["soil", "crop"])
    Image.new("RGB", (7, 7)).save(pairs[0][0])
    with pytest.raises(DatasetError, match=r"^masks/i0.png is 4x2 but images/i0.png is 7x7\. Masks must match"):
        compute_fingerprint(pairs, classes=["soil", "crop", "weed"])


def test_info_computes_a_missing_fingerprint_and_prints_a_table(tiny_dataset, capsys):
    assert load_dataset(tiny_dataset).fingerprint is None
    assert main(["info", str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    expected = compute_fingerprint(tiny_dataset)
    assert "Images    6" in out and "48x64 min, 48x64 median, 48x64 max" in out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert list(rows) == ["background", "crop", "weed"]
    for name, row in rows.items():
        assert float(row[-2]) == pytest.approx(100 * expected["class_pixel_fraction"][name], abs=0.006)
        assert int(row[-1]) == expected["class_image_count"][name]
    assert "fingerprint" not in yaml.safe_load((tiny_dataset / "dataset.yaml").read_text())


def test_info_reads_the_stored_fingerprint(tmp_path, capsys):
    write_pairs(tmp_path / "raw", MASKS[:1])
    dataset = prepare(tmp_path / "raw", tmp_path / "ds", format="index")
    meta = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    assert meta["fingerprint"] == dataset.fingerprint
    meta["fingerprint"]["class_image_count"]["class_1"] = 41  # proves it is read, not recomputed
    (tmp_path / "ds" / "dataset.yaml").write_text(yaml.safe_dump(meta))
    assert main(["info", str(tmp_path / "ds")]) == 0
    assert " 41" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "ds"), "--recompute"]) == 0
    assert " 41" not in capsys.readouterr().out


def test_info_on_a_raw_folder_says_to_prepare_it(tmp_path, capsys):
    write_pairs(tmp_path / "raw", MASKS[:1])
    assert main(["info", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "dataset.yaml is missing" in err and "autoseg prepare" in err
    assert "Traceback" not in err


def test_info_shows_colour_names_and_renaming_in_dataset_yaml_works(tmp_path, capsys):
    from autoseg.data.pipeline import class_pixel_fraction

    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "raw" / "masks").mkdir()
    mask = np.zeros((4, 6, 3), np.uint8)
    mask[:, 4:] = (0, 255, 0)  # 8 px
    mask[3, :3] = (255, 0, 0)  # 3 px
    Image.new("RGB", (6, 4)).save(tmp_path / "raw" / "images" / "a.png")
    Image.fromarray(mask).save(tmp_path / "raw" / "masks" / "a.png")
    ds = tmp_path / "ds"
    dataset = prepare(tmp_path / "raw", ds)
    assert dataset.classes == ["background", "green", "red"]
    before = class_pixel_fraction(dataset)
    np.testing.assert_allclose(before, [13 / 24, 8 / 24, 3 / 24], atol=1e-6)
    capsys.readouterr()

    assert main(["info", str(ds)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert list(rows) == ["background", "green", "red"]
    assert f"Rename classes: edit the `classes:` list in {ds / 'dataset.yaml'}" in out
    assert "--labels FILE" in out and "Note:" not in out

    meta = yaml.safe_load((ds / "dataset.yaml").read_text())
    meta["classes"] = ["soil", "crop", "weed"]
    (ds / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    renamed = load_dataset(ds)
    assert renamed.classes == ["soil", "crop", "weed"]
    np.testing.assert_allclose(class_pixel_fraction(renamed), before, atol=1e-6)  # by index
    assert main(["info", str(ds)]) == 0
    out = capsys.readouterr().out
    assert "counts classes background, green, red, not the classes listed" in out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert list(rows) == ["soil", "crop", "weed"]
    assert [float(rows[n][-2]) for n in rows] == pytest.approx([54.17, 33.33, 12.5], abs=0.01)
    assert [int(rows[n][-1]) for n in rows] == [1, 1, 1]
