"""The demo dataset generator and the `sample/` folder it made (committed to the repo)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from autoseg import sample
from autoseg.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample"
CLASSES = ["background", "crop", "broadleaf_weed", "grass_weed"]
FILE_KEYS = {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"}
SHAPE_KEYS = {"label", "points", "group_id", "description", "shape_type", "flags", "mask"}
PIXEL_FRACTION_RANGES = {
    "background": (0.6, 0.8),
    "crop": (0.1, 0.2),
    "broadleaf_weed": (0.05, 0.15),
    "grass_weed": (0.02, 0.06),
}
MAX_SAMPLE_BYTES = 3 * 1024 * 1024


def rasterise(record: dict) -> np.ndarray:
    """Draws a Labelme record's polygons as labelme does: class indices, later over earlier."""
    canvas = Image.new("L", (record["imageWidth"], record["imageHeight"]), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in record["shapes"]:
        index = CLASSES.index(shape["label"])
        draw.polygon([tuple(p) for p in shape["points"]], outline=index, fill=index)
    return np.asarray(canvas)


def is_simple(points: np.ndarray) -> bool:
    """True if a closed polygon has distinct vertices and no two non-adjacent edges meet."""
    n = len(points)
    if len(np.unique(points, axis=0)) != n:
        return False
    start, end = points, np.roll(points, -1, axis=0)

    def side(a, b, c):
        cross = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1])
        return np.sign(cross - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0]))

    def within(a, b, c):  # c, collinear with a-b, lies on the segment a-b
        low, high = np.minimum(a, b), np.maximum(a, b)
        return ((low <= c) & (c <= high)).all(-1)

    a, b, c, d = start[:, None], end[:, None], start[None], end[None]
    o1, o2, o3, o4 = side(a, b, c), side(a, b, d), side(c, d, a), side(c, d, b)
    meet = ((o1 * o2 < 0) & (o3 * o4 < 0)) | ((o1 == 0) & within(a, b, c)) | (
        (o2 == 0) & within(a, b, d)) | ((o3 == 0) & within(c, d, a)) | ((o4 == 0) & within(c, d, b))
    i, j = np.triu_indices(n, 1)
    apart = (j != i + 1) & ~((i == 0) & (j == n - 1))
    return not meet[i[apart], j[apart]].any()


@pytest.fixture(scope="module")
def committed() -> list[tuple[Path, dict]]:
    """The committed sample's Labelme files, parsed, in name order."""
    paths = sorted(SAMPLE.glob("*.json"))
    assert paths, f"{SAMPLE} holds no Labelme file; run the command in sample/README.md"
    return [(path, json.loads(path.read_text())) for path in paths]


def test_same_seed_writes_identical_bytes_and_another_seed_differs(tmp_path):
    def files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    first = files(sample.generate_sample(tmp_path / "a", count=3, size=(160, 128), seed=7))
    again = files(sample.generate_sample(tmp_path / "b", count=3, size=(160, 128), seed=7))
    other = files(sample.generate_sample(tmp_path / "c", count=3, size=(160, 128), seed=8))
    assert len(first) == 3 * 2 + 2
    assert first == again
    for name in ("field_000.json", "field_002.json", "field_000.jpg", "field_002.jpg"):
        assert first[name] != other[name], name


def test_bad_arguments_are_refused_and_leave_the_output_alone(tmp_path, capsys):
    with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
        sample.parse_size("320by256")
    with pytest.raises(ConfigError, match="Received: size='32x256'"):
        sample.parse_size("32x256")
    assert sample.parse_size("320x256") == (320, 256)
    with pytest.raises(ConfigError, match="count=0"):
        sample.generate_sample(tmp_path / "none", count=0)
    assert not (tmp_path / "none").exists()

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert sample.main(["--out", str(out), "--count", "1", "--size", "96x64"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sample.main(["--out", str(out), "--count", "1", "--size", "96x64", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "field_000.jpg", "field_000.json", "labels.txt"
    ]


def test_committed_sample_is_valid_labelme_5(committed):
    for path, record in committed:
        assert set(record) == FILE_KEYS, path.name
        assert re.fullmatch(r"5\.\d+\.\d+", record["version"]), path.name
        assert record["imageData"] is None and record["flags"] == {}
        assert record["imagePath"] == f"{path.stem}.jpg"
        with Image.open(SAMPLE / record["imagePath"]) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (record["imageWidth"], record["imageHeight"]), path.name
        assert min(image.size) >= 256
        width, height = image.size
        for i, shape in enumerate(record["shapes"]):
            where = f"{path.name} shape #{i}"
            assert set(shape) == SHAPE_KEYS, where
            assert shape["shape_type"] == "polygon" and shape["mask"] is None, where
            assert shape["label"] in CLASSES[1:], where
            assert isinstance(shape["group_id"], int) and shape["flags"] == {}, where
            points = shape["points"]
            assert len(points) >= 3 and all(
                len(p) == 2 and all(isinstance(v, float) for v in p) for p in points
            ), where
            points = np.array(points)
            assert points.min() >= 0, where
            assert (points <= [width - 1, height - 1]).all(), where
            assert is_simple(points), where


def test_simplicity_check():
    square = [[0.0, 0.0], [4.0, 0.0], [4.0, 3.0], [0.0, 3.0]]
    bow_tie = [[0.0, 0.0], [4.0, 3.0], [4.0, 0.0], [0.0, 3.0]]
    # Two collinear edges that do not meet (as in a straight grass blade) are fine...
    blade = [[0.0, 0.0], [1.0, 4.0], [2.0, 8.0], [3.0, 12.0], [3.0, 0.0]]
    # ...but a vertex touching a non-adjacent edge is not.
    pinched = [[0.0, 0.0], [4.0, 0.0], [2.0, 3.0], [2.0, 0.0], [0.0, 3.0]]
    assert is_simple(np.array(square)) and is_simple(np.array(blade))
    assert not is_simple(np.array(bow_tie)) and not is_simple(np.array(pinched))


def test_committed_sample_files_count_and_size():
    jpgs = sorted(p.stem for p in SAMPLE.glob("*.jpg"))
    jsons = sorted(p.stem for p in SAMPLE.glob("*.json"))
    assert jpgs == jsons
    assert 24 <= len(jpgs) <= 40
    assert (SAMPLE / "labels.txt").read_text().split() == [
        "__ignore__", "_background_", "crop", "broadleaf_weed", "grass_weed"
    ]
    assert {p.name for p in SAMPLE.iterdir()} == (
        {f"{s}.jpg" for s in jpgs} | {f"{s}.json" for s in jsons} | {"labels.txt", "README.md"}
    )
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < MAX_SAMPLE_BYTES


def test_committed_sample_class_fractions(committed):
    counts = np.zeros(len(CLASSES))
    for path, record in committed:
        per_image = np.bincount(rasterise(record).ravel(), minlength=len(CLASSES))
        assert (per_image > 0).all(), f"{path.name} lacks a class: {per_image}"
        counts += per_image
    fractions = dict(zip(CLASSES, counts / counts.sum()))
    for name, (low, high) in PIXEL_FRACTION_RANGES.items():
        assert low <= fractions[name] <= high, fractions


def test_classes_are_told_apart_by_colour(committed):
    # Nearest class-mean colour, pixel by pixel: shape and context are left to the models.
    colours, labels = [], []
    for path, record in committed[:8]:
        colours.append(np.asarray(Image.open(SAMPLE / record["imagePath"]), float).reshape(-1, 3))
        labels.append(rasterise(record).ravel())
    colours, labels = np.concatenate(colours), np.concatenate(labels)
    means = np.array([colours[labels == k].mean(0) for k in range(len(CLASSES))])
    predicted = np.argmin(((colours[:, None] - means[None]) ** 2).sum(-1), axis=1)
    recall = [(predicted[labels == k] == k).mean() for k in range(len(CLASSES))]
    assert (predicted == labels).mean() > 0.75
    assert min(recall) > 0.4, dict(zip(CLASSES, recall))


def test_committed_sample_regenerates_from_its_readme_command(committed, tmp_path):
    readme = (SAMPLE / "README.md").read_text()
    (command,) = re.findall(r"^python -m autoseg\.sample .*$", readme, flags=re.MULTILINE)
    argv = shlex.split(command)[3:]
    argv[argv.index("--out") + 1] = str(tmp_path / "sample")
    assert sample.main(argv) == 0
    fresh = tmp_path / "sample"
    assert sorted(p.name for p in fresh.iterdir()) == sorted(p.name for p in SAMPLE.iterdir())
    for name in ("labels.txt", "README.md"):
        assert (fresh / name).read_text() == (SAMPLE / name).read_text(), name
    for path, _ in committed:
        assert (fresh / path.name).read_text() == path.read_text(), path.name
        new = np.asarray(Image.open(fresh / f"{path.stem}.jpg"), float)
        old = np.asarray(Image.open(SAMPLE / f"{path.stem}.jpg"), float)
        assert np.abs(new - old).mean() < 1, path.stem
