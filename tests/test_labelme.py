"""Labelme import: labels files, shape drawing, image sources, and labelme's own examples."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autoseg.data import labelme
from autoseg.data.dataset import load_dataset
from autoseg.data.sources import prepare
from autoseg.errors import DatasetError


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def shape(label, points, shape_type="polygon", **extra):
    return {"label": label, "points": points, "group_id": None, "shape_type": shape_type,
            "flags": {}, **extra}


def write_labelme(folder: Path, stem: str, shapes, size=(40, 30), embed=False,
                  image_path=None, write_image=True) -> Path:
    """Writes `<stem>.png` (unless embedded) and `<stem>.json`; size is (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), 90, np.uint8)
    data = {"version": "5.7.0", "flags": {}, "shapes": shapes,
            "imagePath": image_path or f"{stem}.png", "imageData": None,
            "imageHeight": size[1], "imageWidth": size[0]}
    if embed:
        data["imageData"] = base64.b64encode(png_bytes(pixels)).decode()
    elif write_image:
        Image.fromarray(pixels).save(folder / f"{stem}.png")
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data))
    return path


def draw(shapes, size=(40, 30), classes=("background", "a", "b")):
    checked = [labelme._validate_shape(s, i, "t.json") for i, s in enumerate(shapes, 1)]
    return labelme.rasterize(checked, size, {c: i for i, c in enumerate(classes)}, "t.json")


# --- labels files ---------------------------------------------------------------------

def test_labels_file_follows_labelme2voc(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("__ignore__\n_background_\ncar\n\ntrack\n")
    label_map = labelme.read_labels_file(path)
    assert label_map.classes == ["background", "car", "track"]
    assert label_map.label_to_index == {
        "__ignore__": 255, "_background_": 0, "background": 0, "car": 1, "track": 2
    }


def test_labels_file_rejects_duplicates(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("_background_\ncar\ncar\n")
    with pytest.raises(DatasetError, match=r"line 3: class 'car' is listed twice"):
        labelme.read_labels_file(path)


def test_gathered_labels_are_background_then_sorted(tmp_path):
    files = [
        labelme.read_labelme_file(
            write_labelme(tmp_path, stem, [shape(label, [[0, 0], [5, 0], [5, 5]]) for label in labels]),
            stem,
        )
        for stem, labels in (("a", ["zebra", "__ignore__"]), ("b", ["ant", "person-1", "_background_"]))
    ]
    label_map = labelme.gather_labels(files)
    assert label_map.classes == ["background", "ant", "person-1", "zebra"]
    assert label_map.label_to_index["__ignore__"] == 255
    assert label_map.label_to_index["_background_"] == 0


# --- drawing ----------------------------------------------------------------------------

def test_rectangle_is_filled_with_edges_whatever_the_corner_order():
    for corners in ([[1, 1], [4, 3]], [[4, 3], [1, 1]]):
        mask = draw([shape("a", corners, "rectangle")])
        expected = np.zeros((30, 40), np.uint8)
        expected[1:4, 1:5] = 1
        np.testing.assert_array_equal(mask, expected)


def test_polygon_covers_its_edges_like_labelme():
    # labelme draws polygon(outline=1, fill=1): a sliver thinner than a pixel still marks
    # every pixel its edges cross (a centre-sampling rasteriser would mark none).
    mask = draw([shape("b", [[5, 5], [20, 5], [20, 5.2]])])
    assert mask[5, 5:21].tolist() == [2] * 16
    assert mask.sum() == 2 * 16


def test_circle_is_centre_and_point_on_circumference():
    mask = draw([shape("a", [[20, 15], [23, 19]], "circle")])  # radius 5
    assert np.flatnonzero(mask[15]).tolist() == list(range(15, 26))
    assert abs(int(mask.sum()) - math.pi * 25) < 20


def test_line_and_linestrip_are_ten_pixels_wide():
    line = draw([shape("a", [[2, 10], [30, 10]], "line")])
    assert np.flatnonzero(line[:, 15]).tolist() == list(range(6, 16))
    strip = draw([shape("a", [[2, 10], [30, 10], [30, 28]], "linestrip")])
    assert np.count_nonzero(strip[:, 15]) == labelme.LINE_WIDTH == 10
    assert np.count_nonzero(strip[20, :]) == 10


def test_point_is_a_disc_of_radius_five():
    mask = draw([shape("b", [[20, 15]], "point")])
    assert np.flatnonzero(mask[15]).tolist() == list(range(15, 26))
    assert np.flatnonzero(mask[:, 20]).tolist() == list(range(10, 21))


def test_mask_shape_is_placed_at_its_first_point_and_clipped():
    stencil = np.array([[1, 0, 1], [1, 1, 0]], np.uint8) * 255
    encoded = base64.b64encode(png_bytes(stencil)).decode()
    mask = draw([shape("a", [[5.7, 2.2], [7.7, 3.2]], "mask", mask=encoded)])
    assert np.argwhere(mask).tolist() == [[2, 5], [2, 7], [3, 5], [3, 6]]
    clipped = draw([shape("a", [[38.5, 29.0], [40.5, 30.0]], "mask", mask=encoded)])
    assert np.argwhere(clipped).tolist() == [[29, 38]]


def test_later_shapes_are_drawn_over_earlier_ones():
    first = shape("a", [[0, 0], [9, 9]], "rectangle")
    mask = draw([first, shape("b", [[5, 5], [14, 14]], "rectangle")])
    assert mask[2, 2] == 1 and mask[7, 7] == 2 and mask[12, 12] == 2
    mask = draw([shape("b", [[5, 5], [14, 14]], "rectangle"), first])
    assert mask[7, 7] == 1 and mask[12, 12] == 2


@pytest.mark.parametrize(
    "bad, message",
    [
        (shape("a", [[0, 0], [1, 1]], "cuboid"),
         r"shape #1 \('a', cuboid\) has a shape_type autoseg cannot draw. Supported: polygon, "),
        (shape("a", [[0, 0], [1, 1]]),
         r"shape #1 \('a', polygon\) has 2 point\(s\); a polygon needs at least 3"),
        (shape("a", [[0, 0]], "circle"),
         r"shape #1 \('a', circle\) has 1 point\(s\); a circle needs 2\."),
        (shape("a", [[0, "x"], [1, 1]], "line"),
         r"shape #1 \('a', line\): `points` must be a list of \[x, y\] numbers"),
        (shape(None, [[0, 0], [1, 1]], "line"), r"shape #1 has no text `label`"),
        (shape("a", [[0, 0], [1, 1]], "mask"),
         r"shape #1 \('a', mask\) has no base64 PNG in its `mask` field"),
    ],
)
def test_malformed_shapes_are_refused(tmp_path, bad, message):
    path = write_labelme(tmp_path, "x", [bad])
    with pytest.raises(DatasetError, match=r"^x.json: " + message):
        labelme.read_labelme_file(path, "x.json")


# --- images ------------------------------------------------------------------------------

def test_image_data_is_preferred_over_image_path(tmp_path):
    src = tmp_path / "src"
    write_labelme(src, "x", [shape("a", [[0, 0], [4, 4]], "rectangle")], size=(20, 10), embed=True,
                  image_path="other.png")
    Image.new("RGB", (64, 64)).save(src / "other.png")
    dataset = prepare(src, tmp_path / "out", skip_orphans=False)
    assert dataset.image_path("x").suffix == ".png"
    assert Image.open(dataset.image_path("x")).size == (20, 10)
    assert np.asarray(Image.open(dataset.mask_path("x"))).shape == (10, 20)


def test_image_path_with_backslashes_is_found_and_copied_unchanged(tmp_path):
    src = tmp_path / "src"
    (src / "pics").mkdir(parents=True)
    Image.new("RGB", (30, 20), (10, 20, 30)).save(src / "pics" / "p.jpg", quality=90)
    write_labelme(src, "x", [shape("a", [[0, 0], [4, 4]], "rectangle")], image_path="pics\\p.jpg",
                  write_image=False)
    dataset = prepare(src, tmp_path / "out")
    assert dataset.image_path("x").read_bytes() == (src / "pics" / "p.jpg").read_bytes()
    assert dataset.classes == ["background", "a"]


def test_exif_rotated_image_is_stored_upright_as_png(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20)).save(src / "x.jpg", exif=exif)
    write_labelme(src, "x", [shape("a", [[0, 0], [3, 3]], "rectangle")], size=(20, 40),
                  image_path="x.jpg", write_image=False)
    dataset = prepare(src, tmp_path / "out")
    stored = Image.open(dataset.image_path("x"))
    assert (dataset.image_path("x").suffix, stored.size) == (".png", (20, 40))
    assert 0x0112 not in stored.getexif()
    assert np.asarray(Image.open(dataset.mask_path("x"))).shape == (40, 20)


def test_label_missing_from_labels_file_names_file_label_and_fix(tmp_path):
    src = tmp_path / "src"
    write_labelme(src, "x", [shape("dgo", [[0, 0], [4, 4]], "rectangle")])
    (src / "labels.txt").write_text("__ignore__\n_background_\ndog\n")
    with pytest.raises(DatasetError) as info:
        prepare(src, tmp_path / "out")
    message = str(info.value)
    assert message.startswith("x.json: label(s) 'dgo' not in ")
    assert "labels.txt (classes: background, dog)" in message
    assert "Add them to the labels file or fix the shape labels" in message
    assert not (tmp_path / "out").exists()


# --- labelme's own examples (../shared/datasets) -------------------------------------------

def agreement(ours: Path, reference: Path) -> float:
    theirs = np.asarray(Image.open(reference))
    mine = np.asarray(Image.open(ours))
    assert Image.open(reference).mode == "P" and mine.shape == theirs.shape
    return float((mine == theirs).mean())


@pytest.mark.parametrize("example", ["semantic_segmentation", "video_annotation"])
def test_examples_match_labelme2voc_reference_masks(labelme_examples_dir, tmp_path, example):
    root = labelme_examples_dir / example
    dataset = prepare(root / "data_annotated", tmp_path / "out", labels=root / "labels.txt")
    references = sorted((root / "reference_masks").glob("*.png"))
    assert dataset.stems == [p.stem for p in references]
    for reference in references:
        assert agreement(dataset.mask_path(reference.stem), reference) >= 0.999, reference.name
        source = root / "data_annotated" / f"{reference.stem}.jpg"
        assert dataset.image_path(reference.stem).read_bytes() == source.read_bytes()
    names = (root / "reference_masks" / "class_names.txt").read_text().splitlines()
    assert dataset.classes == ["background", *names[1:]]


def test_semantic_segmentation_classes_follow_labels_txt(labelme_examples_dir, tmp_path):
    root = labelme_examples_dir / "semantic_segmentation"
    dataset = prepare(root / "data_annotated", tmp_path / "out", labels=root / "labels.txt")
    assert len(dataset.classes) == 21
    assert dataset.classes[:3] == ["background", "aeroplane", "bicycle"]
    assert dataset.classes[15] == "person" and dataset.classes[20] == "tv/monitor"
    values = np.unique(np.asarray(Image.open(dataset.mask_path("2011_000003"))))
    assert values.tolist() == [0, 5, 15, 255]


def test_embedded_image_data_converts(labelme_examples_dir, tmp_path):
    root = labelme_examples_dir / "embedded_imagedata"
    # The folder holds the JSON, the same photo beside it, and reference_masks/.
    dataset = prepare(root, tmp_path / "out")
    names = (root / "reference_masks" / "label_names.txt").read_text().split()
    assert dataset.classes == ["background", *names[1:]]
    reference = root / "reference_masks" / "apc2016_obj3.png"
    assert agreement(dataset.mask_path("apc2016_obj3"), reference) >= 0.999
    assert dataset.image_path("apc2016_obj3").read_bytes() == (root / "apc2016_obj3.jpg").read_bytes()


def test_primitives_every_shape_type_is_drawn(labelme_examples_dir, tmp_path):
    root = labelme_examples_dir / "primitives"
    dataset = prepare(root, tmp_path / "out")
    shapes = json.loads((root / "primitives.json").read_text())["shapes"]
    assert {s["shape_type"] for s in shapes} == set(labelme.SHAPE_TYPES)
    mask = np.asarray(Image.open(dataset.mask_path("primitives")))
    assert mask.shape == (450, 560)
    index = {name: i for i, name in enumerate(dataset.classes)}

    def box(label):
        ys, xs = np.nonzero(mask == index[label])
        return [xs.min(), ys.min(), xs.max(), ys.max()], len(xs)

    # Two rectangles (32,35)-(132,135) and (391,33)-(542,135), edges included.
    assert box("rectangle") == ([32, 33, 542, 135], 101 * 101 + 152 * 103)
    (x0, y0, x1, y1), area = box("circle")  # centre (195, 84), radius |(30, 41)| = 50.8
    assert (x0, x1, y0, y1) == (144, 245, 33, 134) and abs(area - math.pi * 50.8**2) < 200
    (x0, y0, x1, y1), area = box("point")  # (345, 174), radius 5
    assert (x0, y0, x1, y1, area) == (340, 169, 350, 179, 97)
    _, area = box("line")  # length |(-28, 46)| = 53.9, 10 px wide
    assert abs(area - 10 * 53.9) < 60
    _, area = box("line_strip")  # two segments of 100.5 and 142.0 px
    assert abs(area - 10 * (100.5 + 142.0)) < 150
    stencil = np.asarray(Image.open(io.BytesIO(base64.b64decode(shapes[-1]["mask"])))).astype(bool)
    octagon = mask[305:405, 417:517] == index["octagon"]
    assert octagon.sum() == stencil.sum() == box("octagon")[1]
    assert (octagon == stencil).all()
    _, area = box("polygon")  # shoelace area 10,996; the outline adds under its length, 434
    assert 10996 <= area <= 10996 + 434
    assert load_dataset(dataset.root).fingerprint["class_image_count"]["point"] == 1


# --- subfolders ------------------------------------------------------------------------------

def test_subfolders_are_read_recursively_with_folder_prefixed_stems(tmp_path, capsys):
    """Two field days share the stem img_001: each keeps its own image, shapes and stem."""
    from autoseg.data.sources import detect_format

    src = tmp_path / "src"
    write_labelme(src / "day1", "img_001", [shape("a", [[0, 0], [9, 9]], "rectangle")], size=(40, 30))
    write_labelme(src / "day2", "img_001", [shape("b", [[2, 2], [5, 5]], "rectangle")], size=(24, 16))
    write_labelme(src / "day2" / "am", "img_002", [shape("a", [[0, 0], [1, 1]], "rectangle")],
                  size=(8, 6), embed=True)
    write_labelme(src, "top", [shape("b", [[0, 0], [3, 3]], "rectangle")], size=(10, 10))
    (src / ".trash").mkdir()
    (src / ".trash" / "broken.json").write_text("{not json")  # hidden: never read
    (src / "day1" / ".draft.json").write_text("{not json")
    assert [labelme.relative_name(p, src) for p in labelme.find_labelme_files(src)] == [
        "day1/img_001.json", "day2/am/img_002.json", "day2/img_001.json", "top.json"]
    assert detect_format(src) == "labelme"

    dataset = prepare(src, tmp_path / "out")
    assert dataset.stems == ["day1__img_001", "day2__am__img_002", "day2__img_001", "top"]
    assert dataset.classes == ["background", "a", "b"]
    day1 = np.asarray(Image.open(dataset.mask_path("day1__img_001")))
    day2 = np.asarray(Image.open(dataset.mask_path("day2__img_001")))
    assert day1.shape == (30, 40) and day2.shape == (16, 24)  # each from its own folder's image
    assert (day1 == 1).sum() == 100 and set(np.unique(day1)) == {0, 1}
    assert (day2 == 2).sum() == 16 and set(np.unique(day2)) == {0, 2}
    assert dataset.image_path("day1__img_001").read_bytes() == (src / "day1" / "img_001.png").read_bytes()
    assert Image.open(dataset.image_path("day2__am__img_002")).size == (8, 6)  # imageData
    assert prepare(src, tmp_path / "again").stems == dataset.stems


def test_a_file_alone_in_a_subfolder_is_prefixed_too(tmp_path):
    """No clash: the prefix is always there, so a stem never changes when files are added."""
    src = tmp_path / "src"
    write_labelme(src, "b", [shape("x", [[0, 0], [3, 3]], "rectangle")])
    write_labelme(src / "day1", "a", [shape("x", [[0, 0], [3, 3]], "rectangle")])
    assert prepare(src, tmp_path / "out").stems == ["b", "day1__a"]
    assert labelme.output_stem(src / "day1" / "a.json", src) == "day1__a"


def test_image_path_resolves_from_the_json_folder(tmp_path):
    src = tmp_path / "src"
    (src / "photos").mkdir(parents=True)
    Image.new("RGB", (12, 8), (1, 2, 3)).save(src / "photos" / "p.png")
    write_labelme(src / "day1", "x", [shape("a", [[0, 0], [2, 2]], "rectangle")], size=(12, 8),
                  image_path="../photos/p.png", write_image=False)
    write_labelme(src / "day2", "y", [shape("a", [[0, 0], [2, 2]], "rectangle")], size=(12, 8),
                  image_path="p.png", write_image=False)
    with pytest.raises(DatasetError, match=r"^day2/y.json has no `imageData` and its imagePath "
                       r"'p.png' does not exist \(.*day2/p.png\)"):
        prepare(src, tmp_path / "out")
    Image.new("RGB", (12, 8), (7, 8, 9)).save(src / "day2" / "p.png")
    dataset = prepare(src, tmp_path / "out")
    assert dataset.image_path("day1__x").read_bytes() == (src / "photos" / "p.png").read_bytes()
    assert dataset.image_path("day2__y").read_bytes() == (src / "day2" / "p.png").read_bytes()


def test_stems_that_would_clash_are_refused_naming_both_files(tmp_path):
    src = tmp_path / "src"
    write_labelme(src, "day1__x", [shape("a", [[0, 0], [3, 3]], "rectangle")])
    write_labelme(src / "day1", "x", [shape("a", [[0, 0], [3, 3]], "rectangle")])
    with pytest.raises(DatasetError) as info:
        prepare(src, tmp_path / "out")
    assert str(info.value) == (
        "day1/x.json and day1__x.json would both be written as 'day1__x' (files in subfolders "
        "are named <folder>__<stem>). Rename one of them."
    )
    assert not (tmp_path / "out").exists()


def test_orphans_are_looked_for_in_every_json_folder(tmp_path, capsys):
    src = tmp_path / "src"
    write_labelme(src / "day1", "x", [shape("a", [[0, 0], [3, 3]], "rectangle")])
    (src / "exports").mkdir()
    Image.new("RGB", (4, 4)).save(src / "exports" / "x.png")  # no JSON here: not the annotator's
    Image.new("RGB", (4, 4)).save(src / "day1" / "lonely.png")
    with pytest.raises(DatasetError, match=r"^1 image\(s\) in .* have no Labelme JSON: day1/lonely.png\. "):
        prepare(src, tmp_path / "out")
    assert prepare(src, tmp_path / "out", skip_orphans=True).stems == ["day1__x"]
    assert "no JSON file annotates: day1/lonely.png." in capsys.readouterr().err


def test_auto_format_prefers_a_mask_folder_over_labelme_files_in_subfolders(tmp_path):
    from autoseg.data.sources import detect_format

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    Image.new("RGB", (4, 4)).save(src / "images" / "a.png")
    Image.new("RGB", (4, 4)).save(src / "masks" / "a.png")
    write_labelme(src / "originals", "a", [shape("a", [[0, 0], [3, 3]], "rectangle")])
    assert detect_format(src) == "color"
    write_labelme(src, "top", [shape("a", [[0, 0], [3, 3]], "rectangle")])
    assert detect_format(src) == "labelme"  # a Labelme file in SRC itself still wins, as before


def test_real_labelme_files_in_two_day_folders_match_labelme2voc(labelme_examples_dir, tmp_path):
    import shutil

    root = labelme_examples_dir / "video_annotation"
    src = tmp_path / "src"
    for day, frame in (("day1", "00000100"), ("day2", "00000101")):
        (src / day).mkdir(parents=True)
        # The same JSON stem in both days; imagePath still names the frame's JPEG beside it.
        shutil.copy(root / "data_annotated" / f"{frame}.json", src / day / "img_001.json")
        shutil.copy(root / "data_annotated" / f"{frame}.jpg", src / day / f"{frame}.jpg")
    dataset = prepare(src, tmp_path / "out", labels=root / "labels.txt")
    assert dataset.stems == ["day1__img_001", "day2__img_001"]
    for day, frame in (("day1", "00000100"), ("day2", "00000101")):
        reference = root / "reference_masks" / f"{frame}.png"
        assert agreement(dataset.mask_path(f"{day}__img_001"), reference) >= 0.999
        source = root / "data_annotated" / f"{frame}.jpg"
        assert dataset.image_path(f"{day}__img_001").read_bytes() == source.read_bytes()
