"""Labelme JSON files (4.x and 5.x) to class-index masks, drawn as labelme2voc draws them.

Shapes are drawn in file order, later over earlier, with Pillow's `ImageDraw` exactly as
Labelme's own `shape_to_mask` draws them, with its default widths (`line_width=10`,
`point_size=5`), so masks agree with labelme2voc's:

- `polygon` (or no type), >= 3 points: `ImageDraw.polygon(xy, outline=c, fill=c)`.
- `rectangle`, 2 corners: filled, edges included.
- `circle`, 2 points: a filled disc; the centre, then a point on the circumference.
- `line` (2 points) and `linestrip` (>= 2 points): lines `LINE_WIDTH` = 10 px wide.
- `point`, 1 point: a filled disc of radius `POINT_RADIUS` = 5 px.
- `mask` (5.x), 2 corners: the base64 PNG in the `mask` field, its top-left pixel at the
  top-left corner (coordinates truncated to int, as Labelme does), clipped to the image.

Any other shape type is refused with an error naming the file and shape.

The JSON files are found in the source folder and, recursively, in its subfolders (one per
field day, say); hidden files and folders (names starting with '.') are skipped. A file
directly in the source folder keeps its stem (`img_001.json` -> `img_001`); a file in a
subfolder takes its folder path as a prefix, parts joined by `__` (`day1/img_001.json` ->
`day1__img_001`, `day1/am/img_001.json` -> `day1__am__img_001`), always, not only when two
stems clash, so a file's stem does not change when another file is added. Two files that
would still share a stem (`day1__img_001.json` beside `day1/img_001.json`) are refused.

The image comes from base64 `imageData` when present (some files' `imagePath` points at the
JSON itself), else from `imagePath`, relative to the JSON's own folder. An `imagePath` that
resolves outside the source folder is refused. Images read from `imagePath` are rotated per
EXIF, as Labelme shows them to the annotator. An image in a folder that holds JSON files
is an orphan when no JSON file annotates it (same folder and stem, or its `imagePath`).

Classes, as labelme2voc reads `labels.txt` (`--labels`, else `labels.txt` directly in the
source folder; one name a line, blank lines skipped):
`__ignore__` is no class (its shapes become 255, the ignore index), the other lines are
classes 0, 1, 2, ... in file order; `_background_` (class 0 in labelme2voc) is named
`background`. Without a labels file, class 0 is `background` and the labels found in the
files follow, sorted. Unlabelled pixels are class 0. A label such as `person-1` is the class
`person-1`: labels are used exactly as written.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageDraw

from autoseg.data import imageio
from autoseg.data.dataset import IGNORE_INDEX, IMAGE_EXTENSIONS, default_palette, warn
from autoseg.errors import DatasetError

LINE_WIDTH = 10
POINT_RADIUS = 5
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask")
IGNORE_LABEL = "__ignore__"
BACKGROUND_LABEL = "_background_"
BACKGROUND_CLASS = "background"

# shape_type -> (minimum, maximum) number of points; None = no maximum.
_POINT_COUNTS = {
    "polygon": (3, None),
    "rectangle": (2, 2),
    "circle": (2, 2),
    "line": (2, 2),
    "linestrip": (2, None),
    "point": (1, 1),
    "mask": (2, 2),
}


@dataclasses.dataclass
class LabelMap:
    """Class names and the mask value of each shape label.

    Attributes:
        classes: Class names in index order.
        label_to_index: Shape label -> mask value (255 for `__ignore__`).
        source: Where the names came from, for error messages (e.g. "labels.txt").
    """

    classes: list[str]
    label_to_index: dict[str, int]
    source: str


@dataclasses.dataclass
class LabelmeFile:
    """One parsed Labelme annotation (without its image data).

    Attributes:
        path: The JSON file.
        name: How messages refer to it (relative to the source folder).
        shapes: The validated shapes, in file order.
        image_path: The `imagePath` field, or None.
        has_image_data: Whether `imageData` holds an embedded image.
        declared_size: `(imageWidth, imageHeight)` if both are given.
    """

    path: Path
    name: str
    shapes: list[dict[str, Any]]
    image_path: str | None
    has_image_data: bool
    declared_size: tuple[int, int] | None

    @property
    def labels(self) -> list[str]:
        return [shape["label"] for shape in self.shapes]


STEM_SEPARATOR = "__"


def find_labelme_files(src: Path) -> list[Path]:
    """The `*.json` files in `src` and its subfolders, hidden ones skipped.

    Returns:
        The files sorted by their path relative to `src`, compared folder by folder
        (`day1/b.json`, `day1/pm/a.json`, `top.json`).
    """
    found = []
    for folder, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(folder, f) for f in files
            if f.lower().endswith(".json") and not f.startswith(".")
        ]
    return sorted(found, key=lambda p: p.relative_to(src).parts)


def relative_name(path: Path, src: Path) -> str:
    """How messages refer to a file under `src`: `x.json`, `day1/x.json`."""
    return path.relative_to(src).as_posix()


def output_stem(path: Path, src: Path) -> str:
    """The dataset stem of a Labelme file: `img_001`, or `day1__img_001` in `src/day1/`."""
    return STEM_SEPARATOR.join((*path.parent.relative_to(src).parts, path.stem))


def output_stems(paths: list[Path], src: Path) -> list[str]:
    """`output_stem` of each file.

    Raises:
        DatasetError: two files would write the same stem.
    """
    seen: dict[str, Path] = {}
    for path in paths:
        stem = output_stem(path, src)
        if stem in seen:
            raise DatasetError(
                f"{relative_name(seen[stem], src)} and {relative_name(path, src)} would both "
                f"be written as {stem!r} (files in subfolders are named "
                f"<folder>{STEM_SEPARATOR}<stem>). Rename one of them."
            )
        seen[stem] = path
    return list(seen)


def load_json(path: Path, name: str) -> Any:
    """Parses a JSON file.

    Raises:
        DatasetError: unreadable, not UTF-8 or not valid JSON (with line and column).
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
            "Re-save it from Labelme or fix it by hand."
        ) from None
    except UnicodeDecodeError:
        raise DatasetError(f"{name} is not UTF-8 text, so not a Labelme JSON file.") from None
    except OSError as exc:
        raise DatasetError(f"{name} cannot be read: {exc.strerror or exc}.") from None


def is_labelme_file(path: Path) -> bool:
    """True if `path` parses as a JSON object with a `shapes` key."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and "shapes" in data


def read_labelme_file(path: Path, name: str) -> LabelmeFile:
    """Parses and validates a Labelme JSON file (image data is not decoded here).

    Raises:
        DatasetError: invalid JSON, no `shapes` list, or a malformed or unsupported shape.
    """
    data = load_json(path, name)
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DatasetError(
            f"{name} is not a Labelme file: it has no `shapes` list. "
            "Move it out of the source folder or re-save it from Labelme."
        )
    shapes = [_validate_shape(shape, i, name) for i, shape in enumerate(data["shapes"], 1)]
    image_path = data.get("imagePath")
    width, height = data.get("imageWidth"), data.get("imageHeight")
    declared = (width, height) if isinstance(width, int) and isinstance(height, int) else None
    return LabelmeFile(
        path=path,
        name=name,
        shapes=shapes,
        image_path=image_path if isinstance(image_path, str) and image_path else None,
        has_image_data=isinstance(data.get("imageData"), str) and bool(data["imageData"]),
        declared_size=declared,
    )


def _validate_shape(shape: Any, i: int, name: str) -> dict[str, Any]:
    where = f"{name}: shape #{i}"
    if not isinstance(shape, dict):
        raise DatasetError(f"{where} is not an object. Received: {shape!r:.80}.")
    label = shape.get("label")
    if not isinstance(label, str):
        raise DatasetError(f"{where} has no text `label`. Received: {label!r}.")
    shape_type = shape.get("shape_type") or "polygon"
    where = f"{name}: shape #{i} ({label!r}, {shape_type})"
    if shape_type not in SHAPE_TYPES:
        raise DatasetError(
            f"{where} has a shape_type autoseg cannot draw. Supported: {', '.join(SHAPE_TYPES)}. "
            "Redraw it as a polygon in Labelme or delete it."
        )
    points = shape.get("points")
    if not isinstance(points, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in p)
        for p in points
    ):
        raise DatasetError(
            f"{where}: `points` must be a list of [x, y] numbers. Received: {points!r:.80}."
        )
    low, high = _POINT_COUNTS[shape_type]
    if len(points) < low or (high is not None and len(points) > high):
        expected = f"{low}" if low == high else f"at least {low}"
        raise DatasetError(
            f"{where} has {len(points)} point(s); a {shape_type} needs {expected}. "
            "Fix or delete the shape in Labelme."
        )
    if shape_type == "mask" and not (isinstance(shape.get("mask"), str) and shape["mask"]):
        raise DatasetError(f"{where} has no base64 PNG in its `mask` field.")
    return {
        "label": label,
        "shape_type": shape_type,
        "points": [(float(x), float(y)) for x, y in points],
        "mask": shape.get("mask"),
    }


def read_labels_file(path: str | Path) -> LabelMap:
    """Reads a labelme2voc `labels.txt`: one class name a line, in index order.

    `__ignore__` maps shapes to 255 and takes no index; `_background_` is named `background`.

    Raises:
        DatasetError: the file is unreadable, empty, or names a class twice.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Labels file {path} cannot be read: {exc}.") from None
    classes: list[str] = []
    label_to_index: dict[str, int] = {}
    for line_number, line in enumerate(lines, 1):
        label = line.strip()
        if not label:
            continue
        if label == IGNORE_LABEL:
            label_to_index[label] = IGNORE_INDEX
            continue
        name = BACKGROUND_CLASS if label == BACKGROUND_LABEL else label
        if name in classes or label in label_to_index:
            raise DatasetError(
                f"{path} line {line_number}: class {name!r} is listed twice. "
                "Each class must appear once."
            )
        label_to_index[label] = len(classes)
        classes.append(name)
    if not classes:
        raise DatasetError(f"Labels file {path} lists no class. Write one class name a line.")
    if len(classes) > IGNORE_INDEX:
        raise DatasetError(
            f"{path} lists {len(classes)} classes; at most {IGNORE_INDEX} fit in 8-bit masks "
            f"({IGNORE_INDEX} is the ignore index)."
        )
    if classes[0] == BACKGROUND_CLASS:
        label_to_index.setdefault(BACKGROUND_CLASS, 0)
    return LabelMap(classes, label_to_index, source=str(path))


def gather_labels(files: Iterable[LabelmeFile]) -> LabelMap:
    """Class 0 `background`, then every other label found in `files`, sorted."""
    found = {label for f in files for label in f.labels}
    found -= {IGNORE_LABEL, BACKGROUND_LABEL, BACKGROUND_CLASS}
    classes = [BACKGROUND_CLASS, *sorted(found)]
    if len(classes) > IGNORE_INDEX:
        raise DatasetError(
            f"The Labelme files use {len(classes)} labels; at most {IGNORE_INDEX} classes fit "
            "in 8-bit masks. Merge labels or list the classes in a labels file."
        )
    label_to_index = {name: i for i, name in enumerate(classes)}
    label_to_index.update({BACKGROUND_LABEL: 0, IGNORE_LABEL: IGNORE_INDEX})
    return LabelMap(classes, label_to_index, source="the labels found in the JSON files")


def rasterize(
    shapes: list[dict[str, Any]],
    size: tuple[int, int],
    label_to_index: dict[str, int],
    name: str = "<shapes>",
) -> np.ndarray:
    """Draws shapes into a class-index mask, later shapes over earlier ones.

    Args:
        shapes: Validated shapes (see `read_labelme_file`).
        size: `(width, height)` of the image.
        label_to_index: Shape label -> mask value.
        name: The file, for error messages.

    Returns:
        A `(height, width)` uint8 array; pixels no shape covers are 0.

    Raises:
        DatasetError: a label is not in `label_to_index`, or a `mask` shape is not a PNG.
    """
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for i, shape in enumerate(shapes, 1):
        label, shape_type, xy = shape["label"], shape["shape_type"], shape["points"]
        if label not in label_to_index:
            raise DatasetError(f"{name}: shape #{i} has label {label!r}, which is not a class.")
        value = label_to_index[label]
        if shape_type == "polygon":
            draw.polygon(xy, outline=value, fill=value)
        elif shape_type == "rectangle":
            (x0, y0), (x1, y1) = xy
            draw.rectangle(
                [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=value, fill=value
            )
        elif shape_type == "circle":
            (cx, cy), (px, py) = xy
            r = math.hypot(cx - px, cy - py)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=value, fill=value)
        elif shape_type in ("line", "linestrip"):
            draw.line(xy, fill=value, width=LINE_WIDTH)
        elif shape_type == "point":
            (cx, cy), r = xy[0], POINT_RADIUS
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=value, fill=value)
        else:  # "mask": validated above
            on = _decode_shape_mask(shape["mask"], f"{name}: shape #{i} ({label!r}, mask)")
            x0 = int(min(xy[0][0], xy[1][0]))
            y0 = int(min(xy[0][1], xy[1][1]))
            stencil = Image.fromarray(on.astype(np.uint8) * 255)
            canvas.paste(value, (x0, y0, x0 + stencil.width, y0 + stencil.height), stencil)
    return np.asarray(canvas).copy()


def _decode_shape_mask(encoded: str, where: str) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        image.load()
    except (binascii.Error, ValueError, OSError):
        raise DatasetError(f"{where}: `mask` is not a base64-encoded PNG.") from None
    on = np.asarray(image)
    return (on[..., 0] if on.ndim == 3 else on).astype(bool)


def load_image(
    file: LabelmeFile, src: Path
) -> tuple[bytes, Image.Image, str, bool]:
    """Reads the image of a Labelme file: its `imageData`, else its `imagePath`.

    Returns:
        `(file_bytes, decoded_image, original_suffix, apply_exif_orientation)`.

    Raises:
        DatasetError: `imageData` is not a valid image, `imagePath` escapes `src`, or there
            is neither embedded data nor a readable image at `imagePath`.
    """
    if file.has_image_data:
        encoded = load_json(file.path, file.name)["imageData"]
        try:
            data = base64.b64decode(encoded)
        except (binascii.Error, ValueError):
            raise DatasetError(
                f"{file.name}: `imageData` is not valid base64. Re-save the file from Labelme."
            ) from None
        return data, imageio.decode_image(data, f"{file.name} (imageData)"), "", False
    if file.image_path is None:
        raise DatasetError(
            f"{file.name} has neither `imageData` nor an `imagePath`: no image to annotate. "
            "Re-save it from Labelme with the image beside it."
        )
    image_path = resolve_image_path(file, src)
    if not image_path.is_file():
        raise DatasetError(
            f"{file.name} has no `imageData` and its imagePath {file.image_path!r} does not "
            f"exist ({image_path}). Put the image there or re-save the file from Labelme with "
            "the image data embedded."
        )
    try:
        data, image = imageio.read_image(image_path, image_path.name)
    except DatasetError as exc:
        raise DatasetError(
            f"{file.name} has no `imageData` and its imagePath {file.image_path!r} is not a "
            f"readable image: {exc}"
        ) from None
    return data, image, image_path.suffix, True


def resolve_image_path(file: LabelmeFile, src: Path) -> Path:
    """The absolute path `imagePath` names, relative to the JSON file.

    Raises:
        DatasetError: the path resolves outside `src`.
    """
    # Labelme on Windows writes backslashes.
    relative = file.image_path.replace("\\", "/")
    resolved = (file.path.parent / relative).resolve()
    root = src.resolve()
    if resolved != root and root not in resolved.parents:
        raise DatasetError(
            f"{file.name}: imagePath {file.image_path!r} resolves to {resolved}, outside the "
            f"source folder {src}. Move the image into the source folder (and fix imagePath) "
            "or embed it with Labelme's imageData."
        )
    return resolved


def image_size(image: Image.Image, apply_orientation: bool) -> tuple[int, int]:
    """`(width, height)` as the annotator saw the image."""
    width, height = image.size
    if apply_orientation and imageio.exif_orientation(image) in (5, 6, 7, 8):
        return height, width
    return width, height


def convert_folder(
    src: Path,
    out: Path,
    labels: str | Path | None = None,
    skip_orphans: bool = False,
) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Converts the Labelme files in `src` into `out/images/` and `out/masks/`.

    Args:
        src: The folder holding the `*.json` files, directly or in subfolders (see the
            module docstring for the stems they are written as).
        out: A folder with empty `images/` and `masks/` subfolders.
        labels: A labels file. Defaults to `src/labels.txt` if present, else the labels
            found in the files.
        skip_orphans: Leave out, with a warning, images that no JSON annotates and JSON
            files whose image is missing, instead of failing.

    Returns:
        `(classes, palette)` of the converted dataset.

    Raises:
        DatasetError: any unreadable, invalid or inconsistent input.
    """
    paths = find_labelme_files(src)
    if not paths:
        raise DatasetError(f"{src} holds no Labelme *.json file.")
    stems = dict(zip(paths, output_stems(paths, src)))
    files = [read_labelme_file(p, relative_name(p, src)) for p in paths]
    if labels is None and (src / "labels.txt").is_file():
        labels = src / "labels.txt"
    label_map = read_labels_file(labels) if labels is not None else gather_labels(files)
    for f in files:
        unknown = sorted({label for label in f.labels if label not in label_map.label_to_index})
        if unknown:
            raise DatasetError(
                f"{f.name}: label(s) {', '.join(map(repr, unknown))} not in {label_map.source} "
                f"(classes: {', '.join(label_map.classes)}). Add them to the labels file or "
                "fix the shape labels in Labelme."
            )
    _check_orphan_images(src, files, skip_orphans)
    if skip_orphans:
        files = _skip_files_without_image(src, files)
    for f in files:
        data, image, suffix, oriented = load_image(f, src)
        size = image_size(image, oriented)
        if f.declared_size and f.declared_size != size:
            warn(
                f"{f.name} declares a {f.declared_size[0]}x{f.declared_size[1]} image but its "
                f"image is {size[0]}x{size[1]}; the shapes are drawn on the real image."
            )
        mask = rasterize(f.shapes, size, label_map.label_to_index, f.name)
        image_bytes, ext = imageio.canonical_image(data, image, suffix, oriented)
        stem = stems[f.path]
        (out / "images" / f"{stem}{ext}").write_bytes(image_bytes)
        imageio.write_mask(out / "masks" / f"{stem}.png", mask)
    return label_map.classes, default_palette(len(label_map.classes))


def _skip_files_without_image(src: Path, files: list[LabelmeFile]) -> list[LabelmeFile]:
    """Drops (with a warning) files whose image is neither embedded nor on disk."""
    kept, missing = [], []
    for f in files:
        if f.has_image_data or (
            f.image_path is not None and resolve_image_path(f, src).is_file()
        ):
            kept.append(f)
        else:
            missing.append(f.name)
    if missing:
        warn(
            f"skipping {len(missing)} Labelme file(s) whose image is missing: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}."
        )
    if not kept:
        raise DatasetError(f"No Labelme file in {src} has its image; there is nothing to convert.")
    return kept


def _check_orphan_images(src: Path, files: list[LabelmeFile], skip_orphans: bool) -> None:
    """Fails (or warns) on images beside the JSON files that no JSON file annotates.

    Only `src` and the folders holding JSON files are looked at: a folder of reference
    masks or exports without JSON files is not the annotator's.
    """
    annotated = {(f.path.parent, f.path.stem) for f in files}
    referenced = set()
    for f in files:
        if f.image_path is not None:
            try:
                referenced.add(resolve_image_path(f, src))
            except DatasetError:
                pass  # reported when (and if) the image is needed
    folders = sorted({src, *(f.path.parent for f in files)})
    orphans = [
        relative_name(p, src) for folder in folders for p in sorted(folder.iterdir())
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        and (folder, p.stem) not in annotated and p.resolve() not in referenced
    ]
    if not orphans:
        return
    listed = ", ".join(orphans[:10]) + (" ..." if len(orphans) > 10 else "")
    if skip_orphans:
        warn(f"skipping {len(orphans)} image(s) that no JSON file annotates: {listed}.")
        return
    raise DatasetError(
        f"{len(orphans)} image(s) in {src} have no Labelme JSON: {listed}. Annotate them, "
        "move them out, or pass --skip-orphans to leave them out."
    )
