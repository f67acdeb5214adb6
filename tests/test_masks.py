"""Colour and index mask folders: palettes, detection, conversion, and CWFID."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from autoseg.cli import main
from autoseg.data import masks
from autoseg.data.sources import prepare
from autoseg.errors import ConfigError, DatasetError

BLACK, GREEN, RED = (0, 0, 0), (0, 255, 0), (255, 0, 0)
CWFID_FRACTIONS = {"background": 0.926, "crop": 0.016, "weed": 0.059}


def write_pair(src: Path, stem: str, mask, image_size=None, mode=None):
    """Writes images/<stem>.png (grey) and masks/<stem>.png from an array."""
    mask = np.asarray(mask, np.uint8)
    (src / "images").mkdir(parents=True, exist_ok=True)
    (src / "masks").mkdir(exist_ok=True)
    width, height = image_size or (mask.shape[1], mask.shape[0])
    Image.new("RGB", (width, height), (120, 100, 80)).save(src / "images" / f"{stem}.png")
    image = Image.fromarray(mask)
    if mode == "P":
        image = Image.new("P", image.size)
        image.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [255] * (768 - 9))
        image.putdata(mask.ravel().tolist())
    image.save(src / "masks" / f"{stem}.png")


def colour_mask(labels, colours=(BLACK, GREEN, RED)):
    return np.array(colours, np.uint8)[np.asarray(labels)]


def write_palette(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- palettes -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "data",
    [
        {"background": [0, 0, 0], "crop": [0, 255, 0], "weed": [255, 0, 0], "__ignore__": [255, 255, 255]},
        [{"name": "background", "color": [0, 0, 0]}, {"name": "crop", "color": [0, 255, 0]},
         {"name": "weed", "color": [255, 0, 0]}, {"name": "__ignore__", "color": [255, 255, 255]}],
    ],
    ids=["mapping", "list"],
)
def test_palette_file_forms(tmp_path, data):
    palette = masks.read_palette_file(write_palette(tmp_path / "p.yaml", data))
    assert palette.classes == ["background", "crop", "weed"]
    assert palette.colors == [BLACK, GREEN, RED]
    assert palette.ignore_colors == [(255, 255, 255)]


def test_palette_file_accepts_a_dataset_yaml(tmp_path):
    path = write_palette(tmp_path / "dataset.yaml", {
        "classes": ["soil", "plant"], "palette": [[1, 2, 3], [4, 5, 6]], "ignore_index": 255})
    palette = masks.read_palette_file(path)
    assert (palette.classes, palette.colors) == (["soil", "plant"], [(1, 2, 3), (4, 5, 6)])


@pytest.mark.parametrize(
    "data, message",
    [
        ({"a": [0, 0, 256]}, r"'a' must be \[R, G, B\] with values 0-255. Received: \[0, 0, 256\]"),
        ({"a": [0, 0]}, r"'a' must be \[R, G, B\]"),
        ({"a": [1, 2, 3], "b": [1, 2, 3]}, r"'b' and 'a' have the same colour \(1, 2, 3\)"),
        (["not", "a", "mapping"], r"must be a mapping of class name to colour"),
    ],
)
def test_bad_palette_files_are_refused(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        masks.read_palette_file(write_palette(tmp_path / "p.yaml", data))


# --- colour masks ----------------------------------------------------------------------

def test_colors_map_to_indices_and_ignore():
    palette = masks.Palette(["background", "crop", "weed"], [BLACK, GREEN, RED], [(255, 255, 255)])
    rgb = colour_mask([[0, 1, 2, 3], [3, 2, 1, 0]], (BLACK, GREEN, RED, (255, 255, 255)))
    index = masks.colors_to_index(rgb, palette, "masks/x.png")
    assert index.dtype == np.uint8
    assert index.tolist() == [[0, 1, 2, 255], [255, 2, 1, 0]]


def test_unknown_colour_names_file_colour_and_pixel_count():
    palette = masks.Palette(["background", "crop"], [BLACK, GREEN], source="--palette p.yaml")
    rgb = colour_mask([[0, 1, 2, 2], [3, 3, 3, 1]], (BLACK, GREEN, (7, 8, 9), (1, 2, 3)))
    with pytest.raises(DatasetError) as info:
        masks.colors_to_index(rgb, palette, "masks/x.png")
    assert str(info.value).startswith(
        "masks/x.png has colour(s) not in --palette p.yaml: (1, 2, 3) on 3 pixels, "
        "(7, 8, 9) on 2 pixels. Palette: background (0, 0, 0), crop (0, 255, 0)."
    )


def test_discovered_palette_is_black_first_then_sorted(tmp_path):
    write_pair(tmp_path, "a", colour_mask([[2, 2], [0, 0]]))
    write_pair(tmp_path, "b", colour_mask([[1, 3], [0, 0]], (BLACK, (9, 9, 9), RED, (0, 0, 200))))
    palette = masks.discover_palette(masks.find_pairs(tmp_path))
    assert palette.colors == [BLACK, (0, 0, 200), (9, 9, 9), RED]
    assert palette.classes == ["background", "blue", "black", "red"]  # named by colour
    with pytest.raises(DatasetError, match=r"The masks hold 4 colours .* but 3 class names were given"):
        masks.discover_palette(masks.find_pairs(tmp_path), ["a", "b", "c"])


def test_too_many_colours_are_refused(tmp_path):
    noisy = np.arange(300 * 3, dtype=np.uint32).reshape(1, 300, 3) % 256
    write_pair(tmp_path, "a", noisy.astype(np.uint8))
    with pytest.raises(DatasetError, match=r"over 255 distinct colours .* antialiased"):
        masks.discover_palette(masks.find_pairs(tmp_path))


def test_colour_folder_prepares_with_discovered_and_given_palette(tmp_path):
    src = tmp_path / "src"
    write_pair(src, "a", colour_mask([[0, 1, 2], [2, 2, 0]]))
    write_pair(src, "b", colour_mask([[0, 0, 0], [0, 0, 2]]))
    discovered = prepare(src, tmp_path / "d")
    assert discovered.classes == ["background", "green", "red"]
    assert np.asarray(Image.open(discovered.mask_path("a"))).tolist() == [[0, 1, 2], [2, 2, 0]]
    (tmp_path / "labels.txt").write_text("soil\ncrop\nweed\n")
    named = prepare(src, tmp_path / "n", labels=tmp_path / "labels.txt")
    assert named.classes == ["soil", "crop", "weed"]
    assert named.fingerprint["class_pixel_fraction"] == {"soil": 0.583333, "crop": 0.083333, "weed": 0.333333}
    palette = write_palette(tmp_path / "p.yaml", {"soil": [0, 0, 0], "weed": [255, 0, 0], "crop": [0, 255, 0]})
    given = prepare(src, tmp_path / "g", palette=palette)
    assert given.classes == ["soil", "weed", "crop"]
    assert given.palette == [BLACK, RED, GREEN]
    assert np.asarray(Image.open(given.mask_path("a"))).tolist() == [[0, 2, 1], [1, 1, 0]]
    mask_file = Image.open(given.mask_path("b"))
    assert mask_file.mode == "L" and mask_file.format == "PNG"
    assert given.image_path("a").read_bytes() == (src / "images" / "a.png").read_bytes()


# --- index masks -----------------------------------------------------------------------

def test_mask_kind_by_mode(tmp_path):
    write_pair(tmp_path, "rgb", colour_mask([[0, 1]]))
    write_pair(tmp_path, "grey", [[0, 1]])
    write_pair(tmp_path, "pal", [[0, 2]], mode="P")
    kinds = {p.stem: masks.mask_kind(p, p.name) for p in (tmp_path / "masks").iterdir()}
    assert kinds == {"rgb": "color", "grey": "index", "pal": "index"}
    with pytest.raises(DatasetError, match=r"mixes colour masks \(e.g. rgb.png\) and single-channel"):
        masks.detect_kind(tmp_path)


def test_index_masks_are_kept_and_named_from_their_values(tmp_path):
    src = tmp_path / "src"
    write_pair(src, "a", [[0, 3, 255]], mode="P")
    write_pair(src, "b", [[1, 1, 0]], mode="P")
    dataset = prepare(src, tmp_path / "out")
    assert dataset.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert np.asarray(Image.open(dataset.mask_path("a"))).tolist() == [[0, 3, 255]]
    assert dataset.fingerprint["class_image_count"] == {"class_0": 2, "class_1": 1, "class_2": 0, "class_3": 1}


def test_index_values_beyond_the_classes_are_refused(tmp_path):
    src = tmp_path / "src"
    write_pair(src, "a", [[0, 1, 255]])
    write_pair(src, "b", [[0, 2, 7]])
    (src / "labels.txt").write_text("background\nplant\n")
    expected = r"^masks/b.png holds value\(s\) 2, 7 but there are only 2 classes \(0-1; 255 = ignore\)"
    with pytest.raises(DatasetError, match=expected):
        prepare(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_index_masks_of_a_dataset_yaml_keep_its_classes_and_remap_its_ignore(tmp_path):
    src = tmp_path / "src"
    write_pair(src, "a", [[0, 1, 9]])
    (src / "dataset.yaml").write_text(yaml.safe_dump(
        {"classes": ["soil", "plant"], "palette": [[1, 1, 1], [2, 2, 2]], "ignore_index": 9}))
    dataset = prepare(src, tmp_path / "out", format="index")
    assert (dataset.classes, dataset.palette) == (["soil", "plant"], [(1, 1, 1), (2, 2, 2)])
    assert np.asarray(Image.open(dataset.mask_path("a"))).tolist() == [[0, 1, 255]]


def test_rgb_masks_with_format_index_are_refused(tmp_path):
    write_pair(tmp_path / "src", "a", colour_mask([[0, 1]]))
    expected = r"masks/a.png is a RGB image, not a single-channel class-index mask. Use --format color"
    with pytest.raises(DatasetError, match=expected):
        prepare(tmp_path / "src", tmp_path / "out", format="index")


def test_jpeg_masks_are_refused(tmp_path):
    write_pair(tmp_path, "a", [[0, 1]])
    Image.new("RGB", (2, 1)).save(tmp_path / "masks" / "b.jpg")
    Image.new("RGB", (2, 1)).save(tmp_path / "images" / "b.png")
    with pytest.raises(DatasetError, match=r"masks/b.jpg is a JPEG .* Export masks as PNG"):
        masks.find_pairs(tmp_path)


# --- binary masks and --ignore-values --------------------------------------------------

BINARY_MASKS = {"a": [[0, 255, 255], [0, 0, 255]], "b": [[0, 0, 0], [255, 0, 0]]}


def binary_source(src: Path, foreground: int = 255, mode=None) -> Path:
    for stem, values in BINARY_MASKS.items():
        write_pair(src, stem, np.array(values) // 255 * foreground, mode=mode)
    return src


@pytest.mark.parametrize("foreground", [255, 1])
def test_binary_masks_import_as_two_classes_with_a_note(tmp_path, capsys, foreground):
    src = binary_source(tmp_path / "src", foreground)
    assert main(["prepare", str(src), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("Note:")]
    assert len(notes) == 1
    assert f"the masks hold only 0 and {foreground}: read as binary masks, 2 classes" in notes[0]
    assert "--labels FILE" in notes[0]
    assert ("--ignore-values 255" if foreground == 255 else "--format index") in notes[0]
    assert "Prepared" in out and "2 images, 2 classes" in out
    from autoseg.data.dataset import load_dataset

    dataset = load_dataset(tmp_path / "out")
    assert dataset.classes == ["background", "foreground"]
    assert np.asarray(Image.open(dataset.mask_path("a"))).tolist() == [[0, 1, 1], [0, 0, 1]]
    # 4 of 12 pixels are foreground, none is ignored
    assert dataset.fingerprint["class_pixel_fraction"] == {"background": round(8 / 12, 6),
                                                           "foreground": round(4 / 12, 6)}
    assert dataset.fingerprint["ignore_fraction"] == 0.0


def test_binary_masks_with_format_index_are_refused(tmp_path, capsys):
    src = binary_source(tmp_path / "src")
    assert main(["prepare", str(src), "--out", str(tmp_path / "out"), "--format", "index"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: The masks hold only 0 and 255 (e.g. masks/a.png). With --format "
                          "index, 255 means ignore") and "Traceback" not in err
    assert "use --format binary" in err and "--ignore-values 255" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing half-written


def test_format_binary_takes_any_foreground_value_grey_rgb_and_names(tmp_path):
    src = binary_source(tmp_path / "src", foreground=128)
    for stem in BINARY_MASKS:  # grey masks saved as RGB
        grey = np.asarray(Image.open(src / "masks" / f"{stem}.png"))
        Image.fromarray(np.dstack([grey] * 3)).save(src / "masks" / f"{stem}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\ncell\n")
    dataset = prepare(src, tmp_path / "out", format="binary", labels=labels)
    assert dataset.classes == ["background", "cell"]
    assert np.asarray(Image.open(dataset.mask_path("b"))).tolist() == [[0, 0, 0], [1, 0, 0]]


def test_format_binary_refuses_a_third_value_and_wrong_names(tmp_path):
    src = binary_source(tmp_path / "src")
    write_pair(src, "c", [[0, 7, 255]])
    with pytest.raises(DatasetError, match=r"hold 2 values besides 0: 255 \(e.g. masks/a.png\); "
                                           r"7 \(e.g. masks/c.png\)\. Use --format index"):
        prepare(src, tmp_path / "out", format="binary")
    # --ignore-values takes the third value out
    dataset = prepare(src, tmp_path / "out", format="binary", ignore_values=[7])
    assert np.asarray(Image.open(dataset.mask_path("c"))).tolist() == [[0, 255, 1]]
    labels = tmp_path / "labels.txt"
    labels.write_text("soil\nroot\nleaf\n")
    with pytest.raises(DatasetError, match=r"Binary masks have 2 classes .* but 3 class names"):
        prepare(src, tmp_path / "out2", format="binary", labels=labels, ignore_values=[7])


def test_ignore_values_drop_their_names_and_renumber_the_classes(tmp_path):
    src = tmp_path / "src"
    write_pair(src, "a", [[0, 1, 2, 3]])
    write_pair(src, "b", [[3, 3, 255, 0]])
    (src / "labels.txt").write_text("soil\nunsure\ncrop\nweed\n")
    dataset = prepare(src, tmp_path / "out", format="index", ignore_values=[1])
    assert dataset.classes == ["soil", "crop", "weed"]
    assert np.asarray(Image.open(dataset.mask_path("a"))).tolist() == [[0, 255, 1, 2]]
    assert np.asarray(Image.open(dataset.mask_path("b"))).tolist() == [[2, 2, 255, 0]]
    assert dataset.fingerprint["ignore_fraction"] == 0.25
    # without names, classes are named by their mask value
    (src / "labels.txt").unlink()
    dataset = prepare(src, tmp_path / "out2", ignore_values=[1])
    assert dataset.classes == ["class_0", "class_2", "class_3"]


def test_ignore_values_are_refused_for_colour_and_labelme_sources(tmp_path, capsys):
    write_pair(tmp_path / "src", "a", colour_mask([[0, 1]]))
    assert main(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                 "--ignore-values", "1"]) == 2
    err = capsys.readouterr().err
    assert "Error: --ignore-values applies to index and binary masks, not to color sources: " \
           "name the colour __ignore__ in --palette." in err
    assert not (tmp_path / "out").exists()


# --- CamVid (../shared/datasets) ---------------------------------------------------------

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence",
                  "car", "pedestrian", "bicyclist"]


def test_camvid_imports_with_void_ignored_and_splits_by_sequence(camvid_dir, tmp_path, capsys):
    from autoseg.data import pipeline
    from autoseg.data.dataset import load_dataset

    out = tmp_path / "camvid"
    assert main(["prepare", str(camvid_dir), "--out", str(out), "--format", "index",
                 "--labels", str(camvid_dir / "labels.txt"), "--ignore-values", "11"]) == 0
    assert "Prepared" in capsys.readouterr().out
    dataset = load_dataset(out)
    assert dataset.classes == CAMVID_CLASSES and len(dataset.stems) == 184
    assert dataset.channels == 3 and dataset.intensity is None
    void = 0
    for stem in dataset.stems:
        mask = np.asarray(Image.open(dataset.mask_path(stem)))
        values = set(np.unique(mask).tolist())
        assert values <= set(range(11)) | {255}, (stem, values)
        source = np.asarray(Image.open(camvid_dir / "masks" / f"{stem}.png"))
        np.testing.assert_array_equal(mask == 255, source == 11)
        np.testing.assert_array_equal(mask[source != 11], source[source != 11])
        void += int((source == 11).sum())
    assert dataset.fingerprint["ignore_fraction"] == pytest.approx(void / (184 * 360 * 480), abs=1e-6)
    assert sum(dataset.fingerprint["class_pixel_fraction"].values()) == pytest.approx(1, abs=1e-4)

    train, val = pipeline.split_stems(dataset, 0.2, seed=0, group_pattern=r"^([^_]+)_")
    sequences = lambda stems: {s.split("_")[0] for s in stems}  # noqa: E731
    assert not sequences(train) & sequences(val)
    assert sorted(train + val) == dataset.stems
    assert len(val) == 31  # 0001TP: the sequence closest to 20 % of 184


# --- CWFID (../shared/datasets) ----------------------------------------------------------

def assert_cwfid(dataset, names):
    assert dataset.num_classes == 3 and len(dataset.stems) == 40
    fractions = dataset.fingerprint["class_pixel_fraction"]
    for name, expected in zip(names, CWFID_FRACTIONS.values()):
        assert fractions[name] == pytest.approx(expected, abs=0.002), name
    assert dataset.fingerprint["image_size"]["median"] == [966, 1296]
    assert dataset.fingerprint["class_image_count"][names[2]] == 39


def test_cwfid_with_given_palette(cwfid_dir, tmp_path, capsys):
    palette = write_palette(
        tmp_path / "p.yaml", {"background": [0, 0, 0], "crop": [0, 255, 0], "weed": [255, 0, 0]}
    )
    dataset = prepare(cwfid_dir, tmp_path / "out", palette=palette)
    assert dataset.classes == ["background", "crop", "weed"]
    assert_cwfid(dataset, dataset.classes)
    assert dataset.image_path("017").read_bytes() == (cwfid_dir / "images" / "017.jpg").read_bytes()
    assert main(["info", str(dataset.root), "--recompute"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "(0, 255, 0)" in line]
    assert rows[0][1] == "crop" and float(rows[0][-2]) == pytest.approx(1.58, abs=0.01)


def test_cwfid_with_discovered_palette(cwfid_dir, tmp_path):
    dataset = prepare(cwfid_dir, tmp_path / "out")
    assert dataset.classes == ["background", "green", "red"]
    assert dataset.palette == [BLACK, GREEN, RED]
    assert_cwfid(dataset, dataset.classes)
