"""`autoseg prepare` and `resolve_dataset`: bad input fails cleanly, nothing half-written."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from autoseg.cli import main
from autoseg.data.dataset import load_dataset
from autoseg.data.sources import prepare, resolve_dataset, source_hash
from autoseg.errors import ConfigError, DatasetError

COLOURS = np.array([[0, 0, 0], [0, 255, 0], [255, 0, 0]], np.uint8)


def colour_source(src: Path, stems=("a", "b"), size=(12, 9), image_ext=".png") -> Path:
    """images/<stem><ext> + masks/<stem>.png RGB colour masks of classes 0-2."""
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    rng = np.random.default_rng(0)
    for stem in stems:
        labels = rng.integers(0, 3, (size[1], size[0]))
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(src / "images" / f"{stem}{image_ext}")
        Image.fromarray(COLOURS[labels]).save(src / "masks" / f"{stem}.png")
    return src


def labelme_source(src: Path, shapes=None, **fields) -> Path:
    """x.png + x.json with one rectangle labelled `a` (fields override the JSON)."""
    src.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 10), (50, 60, 70)).save(src / "x.png")
    data = {"version": "4.0.0", "flags": {}, "imagePath": "x.png", "imageData": None,
            "imageHeight": 10, "imageWidth": 20,
            "shapes": shapes or [{"label": "a", "points": [[1, 1], [5, 5]],
                                  "shape_type": "rectangle", "group_id": None, "flags": {}}]}
    data.update(fields)
    (src / "x.json").write_text(json.dumps(data))
    return src


def corrupt_jpeg(path: Path) -> None:
    """A JPEG whose header identifies it but whose Huffman table is garbage."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (9, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    table = data.index(b"\xff\xc4")
    data[table + 5: table + 25] = b"\xff" * 20
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def build_corrupt_jpeg(src):
    colour_source(src, image_ext=".jpg")
    corrupt_jpeg(src / "images" / "a.jpg")


def build_zero_byte(src):
    colour_source(src)
    (src / "images" / "a.png").write_bytes(b"")


def build_truncated_png(src):
    colour_source(src, size=(64, 48))
    truncate(src / "masks" / "b.png")


def build_not_an_image(src):
    colour_source(src)
    (src / "images" / "c.jpg").write_text("this is a text file, not a photo")
    Image.fromarray(COLOURS[np.zeros((9, 12), int)]).save(src / "masks" / "c.png")


def build_size_mismatch(src):
    colour_source(src, stems=("017",), size=(12, 9), image_ext=".jpg")
    Image.fromarray(COLOURS[np.zeros((6, 8), int)]).save(src / "masks" / "017.png")


def build_unknown_colour(src):
    colour_source(src)
    mask = np.array(Image.open(src / "masks" / "b.png"))
    mask[0, :3] = (7, 8, 9)
    Image.fromarray(mask).save(src / "masks" / "b.png")
    (src.parent / "palette.yaml").write_text(
        "background: [0, 0, 0]\ncrop: [0, 255, 0]\nweed: [255, 0, 0]\n"
    )


def build_orphan_image(src):
    colour_source(src)
    Image.new("RGB", (12, 9)).save(src / "images" / "c.png")


def build_orphan_mask(src):
    colour_source(src)
    Image.new("RGB", (12, 9)).save(src / "masks" / "c.png")


def build_invalid_json(src):
    src.mkdir()
    (src / "x.json").write_text('{"version": "5.0.1", "shapes": [')


def build_no_image(src):
    labelme_source(src, imagePath="x.json")


def build_missing_image(src):
    labelme_source(src, imagePath="gone.png")
    (src / "x.png").unlink()


def build_escaping_image_path(src):
    labelme_source(src, imagePath="../outside.png")
    Image.new("RGB", (20, 10)).save(src.parent / "outside.png")


def build_unknown_shape(src):
    labelme_source(src, shapes=[{"label": "a", "points": [[1, 1], [5, 5]], "shape_type": "cuboid"}])


def build_empty(src):
    src.mkdir()


BAD_INPUTS = {
    "corrupt_jpeg": (build_corrupt_jpeg, [], "images/a.jpg is corrupt or truncated"),
    "zero_byte": (build_zero_byte, [], "images/a.png is empty (0 bytes)"),
    "truncated_png": (build_truncated_png, [], "masks/b.png is corrupt or truncated (image file is truncated"),
    "not_an_image": (build_not_an_image, [], "images/c.jpg is not an image Pillow can read"),
    "size_mismatch": (build_size_mismatch, [],
                      "masks/017.png is 8x6 but images/017.jpg is 12x9. Masks must match their image."),
    "unknown_colour": (build_unknown_colour, ["--palette", "{tmp}/palette.yaml"],
                       "masks/b.png has colour(s) not in --palette {tmp}/palette.yaml: (7, 8, 9) on 3 pixels"),
    "orphan_image": (build_orphan_image, [], "1 image(s) have no mask: images/c.png. "),
    "orphan_mask": (build_orphan_mask, [], "1 mask(s) have no image: masks/c.png. "),
    "invalid_json": (build_invalid_json, [], "x.json is not valid JSON (line 1, column 33"),
    "no_image": (build_no_image, [],
                 "x.json has no `imageData` and its imagePath 'x.json' is not a readable image: "
                 "x.json is not an image Pillow can read"),
    "missing_image": (build_missing_image, [],
                      "x.json has no `imageData` and its imagePath 'gone.png' does not exist "
                      "({tmp}/src/gone.png)."),
    "escaping_image_path": (build_escaping_image_path, [],
                            "x.json: imagePath '../outside.png' resolves to {tmp}/outside.png, "
                            "outside the source folder {tmp}/src."),
    "unknown_shape": (build_unknown_shape, [],
                      "x.json: shape #1 ('a', cuboid) has a shape_type autoseg cannot draw."),
    "empty_source": (build_empty, [],
                     "{tmp}/src holds neither Labelme files (*.json) nor images/ and masks/ folders"),
}


def leftovers(folder: Path) -> list[str]:
    """Output or temporary folders `prepare` may have left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name == "out" or p.name.startswith(".out"))


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly(tmp_path, capsys, case):
    build, options, expected = BAD_INPUTS[case]
    src = tmp_path / "src"
    build(src)
    options = [o.format(tmp=tmp_path) for o in options]
    code = main(["prepare", str(src), "--out", str(tmp_path / "out"), *options])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("Error: "), err
    assert expected.format(tmp=tmp_path) in err
    assert "Traceback" not in err
    assert leftovers(tmp_path) == []


def test_non_empty_output_is_refused_unless_overwrite(tmp_path, capsys):
    src = colour_source(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["prepare", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"Error: --out {out} already exists and is not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["prepare", str(src), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dataset.yaml", "images", "masks"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_replacing_the_source_is_refused(tmp_path):
    src = colour_source(tmp_path / "src")
    for out in (src, tmp_path):
        with pytest.raises(ConfigError, match="would replace the source folder"):
            prepare(src, out, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == ["images", "masks"]


def test_skip_orphans_warns_and_keeps_the_pairs(tmp_path, capsys):
    src = colour_source(tmp_path / "src")
    Image.new("RGB", (12, 9)).save(src / "images" / "c.png")
    Image.new("RGB", (12, 9)).save(src / "masks" / "d.png")
    assert main(["prepare", str(src), "--out", str(tmp_path / "out"), "--skip-orphans"]) == 0
    err = capsys.readouterr().err
    assert "Warning: skipping orphans" in err
    assert "1 image(s) have no mask: images/c.png" in err and "1 mask(s) have no image: masks/d.png" in err
    assert load_dataset(tmp_path / "out").stems == ["a", "b"]


def test_labelme_orphan_image_is_refused_or_skipped(tmp_path, capsys):
    src = labelme_source(tmp_path / "src")
    Image.new("RGB", (20, 10)).save(src / "unannotated.jpg")
    with pytest.raises(DatasetError, match=r"1 image\(s\) in .* have no Labelme JSON: unannotated.jpg"):
        prepare(src, tmp_path / "out")
    dataset = prepare(src, tmp_path / "out", skip_orphans=True)
    assert dataset.stems == ["x"]
    assert "Warning: skipping 1 image(s) that no JSON file annotates: unannotated.jpg" in capsys.readouterr().err


def test_labelme_file_without_its_image_is_skipped_with_skip_orphans(tmp_path, capsys):
    src = labelme_source(tmp_path / "src")
    (src / "y.json").write_text((src / "x.json").read_text().replace('"x.png"', '"y.png"'))
    with pytest.raises(DatasetError, match=r"y.json has no `imageData` and its imagePath 'y.png' does not exist"):
        prepare(src, tmp_path / "out")
    assert prepare(src, tmp_path / "out", skip_orphans=True).stems == ["x"]
    assert "Warning: skipping 1 Labelme file(s) whose image is missing: y.json." in capsys.readouterr().err


def test_palette_with_labelme_and_labels_with_palette_are_refused(tmp_path, capsys):
    palette = tmp_path / "p.yaml"
    palette.write_text("background: [0, 0, 0]\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("background\n")
    labelme_src = labelme_source(tmp_path / "lm")
    assert main(["prepare", str(labelme_src), "--out", str(tmp_path / "o1"), "--palette", str(palette)]) == 2
    assert "Error: --palette applies to colour and index masks" in capsys.readouterr().err
    colour_src = colour_source(tmp_path / "col")
    assert main(["prepare", str(colour_src), "--out", str(tmp_path / "o2"),
                 "--palette", str(palette), "--labels", str(labels)]) == 2
    assert "Error: --labels and --palette both name the classes" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_prepare_writes_the_canonical_layout(tmp_path, capsys):
    src = colour_source(tmp_path / "src", image_ext=".JPG")
    assert main(["prepare", str(src), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "Prepared" in out and "2 images, 3 classes" in out and " green " in out
    root = tmp_path / "out"
    assert sorted(p.name for p in (root / "images").iterdir()) == ["a.jpg", "b.jpg"]
    assert (root / "images" / "a.jpg").read_bytes() == (src / "images" / "a.JPG").read_bytes()
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    assert meta["classes"] == ["background", "green", "red"]
    assert meta["ignore_index"] == 255
    assert set(meta["fingerprint"]) == {"num_images", "image_size", "channels", "pixel_dtype",
                                        "value_range", "value_percentiles", "class_pixel_fraction",
                                        "class_image_count", "ignore_fraction"}
    assert meta["channels"] == 3 and "intensity" not in meta  # 8-bit RGB: no rule
    assert meta["fingerprint"]["pixel_dtype"] == ["uint8"]
    low, high = meta["fingerprint"]["value_range"]
    assert 0 <= low < 10 and 245 < high <= 255  # uniform noise photos
    assert oct(root.stat().st_mode & 0o777) != oct(0o700)
    colours = np.asarray(Image.open(src / "masks" / "a.png"))
    expected = np.argmax((colours[:, :, None, :] == COLOURS).all(-1), -1)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "masks" / "a.png")), expected)


# --- resolve_dataset ------------------------------------------------------------------

def test_resolve_dataset_loads_a_canonical_folder_as_it_is(tiny_dataset, tmp_path):
    dataset = resolve_dataset(tiny_dataset, cache_root=tmp_path / "cache")
    assert dataset.root == tiny_dataset and len(dataset.stems) == 6
    assert not (tmp_path / "cache").exists()


def test_resolve_dataset_prepares_once_and_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSEG_CACHE_DIR", str(tmp_path / "cache"))
    src = colour_source(tmp_path / "raw")
    first = resolve_dataset(src)
    assert first.root == tmp_path / "cache" / f"raw-{source_hash(src)}"
    assert not (tmp_path / ".autoseg-cache").exists()  # never beside the source
    stamp = (first.root / "dataset.yaml").stat().st_mtime_ns
    again = resolve_dataset(src)
    assert again.root == first.root
    assert (again.root / "dataset.yaml").stat().st_mtime_ns == stamp
    os.utime(src / "masks" / "a.png", ns=(1, 1))
    changed = resolve_dataset(src)
    assert changed.root != first.root and changed.root.parent == first.root.parent
    assert changed.classes == ["background", "green", "red"]


def test_resolve_dataset_uses_the_given_cache_root(tmp_path):
    src = colour_source(tmp_path / "raw")
    dataset = resolve_dataset(src, cache_root=tmp_path / "elsewhere")
    assert dataset.root.parent == tmp_path / "elsewhere"
    assert not (tmp_path / ".autoseg-cache").exists()
