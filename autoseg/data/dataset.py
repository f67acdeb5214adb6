"""The canonical dataset layout, the contract every command after `prepare` reads.

```
DATASET/images/<stem>.<ext>    photos (jpg, png, tif, ...): RGB or grey, 8 bits or deeper
DATASET/masks/<stem>.png       single-channel uint8 class index, 255 = ignore
DATASET/dataset.yaml           classes, palette, ignore_index, channels, [intensity],
                               [splits], [fingerprint]
```

`channels` is what the models take: 1 when every photo is grey, else 3 (grey photos among
colour ones are repeated over RGB). `intensity` is the rule that scales photos deeper than
8 bits to 0..255 (`autoseg.data.intensity`); 8-bit datasets have none.

`autoseg.data.sources.prepare` builds this layout from a raw source (Labelme files, or
`images/` + colour or index `masks/`); `compute_fingerprint` summarises a dataset (sizes,
class balance) for `dataset.yaml` and `autoseg info`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from autoseg import atomic
from autoseg.data import imageio, intensity
from autoseg.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255
CHANNELS = (1, 3)


@dataclasses.dataclass
class Dataset:
    """A canonical dataset on disk.

    Attributes:
        root: The DATASET folder.
        classes: Class names in index order (index 0 is usually background).
        palette: One RGB triple per class, for colour masks and overlays.
        ignore_index: The mask value that no loss or metric counts. Defaults to 255.
        channels: The channels models take: 1 (grey) or 3 (RGB). Defaults to 3.
        intensity: The rule scaling photos deeper than 8 bits to 0..255
            (`autoseg.data.intensity`), or None for 8-bit photos. Defaults to None.
        splits: Optional `{"train": [...], "val": [...], "test": [...]}` stem lists.
        fingerprint: Optional statistics from `compute_fingerprint`.
        images: `stem -> image path`, sorted by stem.
    """

    root: Path
    classes: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int = IGNORE_INDEX
    channels: int = 3
    intensity: dict[str, Any] | None = None
    splits: dict[str, list[str]] | None = None
    fingerprint: dict[str, Any] | None = None
    images: dict[str, Path] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def stems(self) -> list[str]:
        return list(self.images)

    def image_path(self, stem: str) -> Path:
        return self.images[stem]

    def mask_path(self, stem: str) -> Path:
        return self.root / "masks" / f"{stem}.png"

    def to_yaml_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "classes": list(self.classes),
            "palette": [list(map(int, c)) for c in self.palette],
            "ignore_index": int(self.ignore_index),
            "channels": int(self.channels),
        }
        if self.intensity:
            data["intensity"] = dict(self.intensity)
        if self.splits:
            data["splits"] = {k: list(v) for k, v in self.splits.items()}
        if self.fingerprint:
            data["fingerprint"] = self.fingerprint
        return data


def write_dataset_yaml(root: str | Path, dataset: Dataset) -> None:
    """Atomically writes `root/dataset.yaml` for `dataset`."""
    atomic.write_text(
        Path(root) / "dataset.yaml",
        yaml.safe_dump(dataset.to_yaml_dict(), sort_keys=False, default_flow_style=None),
    )


def is_canonical(path: str | Path) -> bool:
    """True if `path` holds a `dataset.yaml` (a prepared dataset)."""
    return (Path(path) / "dataset.yaml").is_file()


def load_dataset(path: str | Path) -> Dataset:
    """Reads a canonical dataset folder.

    Raises:
        DatasetError: no dataset.yaml, a malformed one, or images without masks.
    """
    root = Path(path)
    meta_path = root / "dataset.yaml"
    meta = _read_meta(root, meta_path)
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(
        isinstance(c, str) for c in classes
    ):
        raise DatasetError(
            f"{meta_path}: `classes` must be a non-empty list of names. Received: {classes!r}."
        )
    palette = meta.get("palette") or default_palette(len(classes))
    if len(palette) != len(classes) or not all(
        isinstance(c, (list, tuple)) and len(c) == 3 for c in palette
    ):
        raise DatasetError(
            f"{meta_path}: `palette` must hold one [R, G, B] per class "
            f"({len(classes)} classes). Received: {palette!r}."
        )
    channels = meta.get("channels", 3)
    if channels not in CHANNELS or isinstance(channels, bool):
        raise DatasetError(
            f"{meta_path}: `channels` must be 1 (grey) or 3 (RGB). Received: {channels!r}."
        )
    rule = intensity.check_rule(meta.get("intensity"), str(meta_path))
    image_dir = root / "images"
    images = _find_images(root, image_dir)
    splits = _check_splits(meta.get("splits"), meta_path, image_dir, images)
    return Dataset(
        root=root,
        classes=list(classes),
        palette=[tuple(int(v) for v in c) for c in palette],
        ignore_index=int(meta.get("ignore_index", IGNORE_INDEX)),
        channels=int(channels),
        intensity=rule,
        splits=splits,
        fingerprint=meta.get("fingerprint"),
        images=images,
    )


def _read_meta(root: Path, meta_path: Path) -> dict[str, Any]:
    """The mapping in `meta_path` (dataset.yaml), after checking it holds only known keys."""
    if not meta_path.is_file():
        raise DatasetError(
            f"{root} is not a prepared dataset: {meta_path} is missing. "
            f"Run `autoseg prepare {root} --out DATASET` first."
        )
    try:
        meta = yaml.safe_load(meta_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DatasetError(f"{meta_path} is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path} must be a mapping with a `classes` key.")
    known = {"classes", "palette", "ignore_index", "channels", "intensity", "splits", "fingerprint"}
    unknown = sorted(set(meta) - known)
    if unknown:
        raise DatasetError(
            f"{meta_path}: unknown key(s) {unknown}. Valid keys: {sorted(known)}."
        )
    return meta


def _find_images(root: Path, image_dir: Path) -> dict[str, Path]:
    """`stem -> image path` for the photos in `image_dir`, sorted, each with its mask."""
    images: dict[str, Path] = {}
    if image_dir.is_dir():
        for p in sorted(image_dir.iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
                images[p.stem] = p
    if not images:
        raise DatasetError(f"{image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    missing = [s for s in images if not (root / "masks" / f"{s}.png").is_file()]
    if missing:
        raise DatasetError(
            f"{root}: {len(missing)} image(s) have no mask in masks/: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}."
        )
    return images


def _check_splits(
    splits: Any, meta_path: Path, image_dir: Path, images: dict[str, Path]
) -> dict[str, list[str]] | None:
    """dataset.yaml's `splits` with string stems, after checking each names a known image."""
    if splits is None:
        return None
    if not isinstance(splits, dict) or set(splits) - {"train", "val", "test"}:
        raise DatasetError(
            f"{meta_path}: `splits` must map train/val/test to stem lists. "
            f"Received keys: {list(splits) if isinstance(splits, dict) else splits!r}."
        )
    for split, stems in splits.items():
        unknown_stems = [s for s in stems or [] if str(s) not in images]
        if unknown_stems:
            raise DatasetError(
                f"{meta_path}: splits.{split} names images that are not in "
                f"{image_dir}: {unknown_stems[:10]}."
            )
    return {k: [str(s) for s in (v or [])] for k, v in splits.items()}


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map: black background, then distinct colours."""
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


def warn(message: str) -> None:
    """Prints a warning for the user on stderr as ``Warning: <message>``."""
    print(f"Warning: {message}", file=sys.stderr)


def model_channels(fingerprint: dict[str, Any]) -> int:
    """1 when every photo of a fingerprinted dataset is single-channel, else 3."""
    return 1 if list(fingerprint.get("channels") or [3]) == [1] else 3


def intensity_rule(fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The intensity rule of a fingerprinted dataset: None for 8-bit photos."""
    dtypes = fingerprint.get("pixel_dtype") or ["uint8"]
    if dtypes == ["uint8"]:
        return None
    return intensity.make_rule(*fingerprint["value_percentiles"], fingerprint["value_range"],
                               dtypes[0])


def check_trainable(dataset: Dataset) -> None:
    """Refuses a dataset that cannot train a segmentation model: fewer than two classes.

    A class counts when the dataset names it and its masks label some pixels with it
    (from the fingerprint's `class_image_count` when there is one, else counted from the
    masks).

    Args:
        dataset: The dataset.

    Raises:
        DatasetError: fewer than two classes, or fewer than two with labelled pixels; the
            message names the folder, what it holds, and the likely fix.

    Example:
    ```python
    check_trainable(load_dataset("data/cells"))
    ```
    """
    counts = _class_presence(dataset)
    present = [name for name, count in zip(dataset.classes, counts) if count > 0]
    if dataset.num_classes >= 2 and len(present) >= 2:
        return
    ignored = dataset.fingerprint.get("ignore_fraction") if dataset.fingerprint else None
    if dataset.num_classes < 2:
        found = f"{dataset.num_classes} class ({', '.join(dataset.classes)})"
    else:
        found = (f"{dataset.num_classes} classes, but only "
                 f"{', '.join(present) or 'none'} label(s) any pixel")
    hint = ""
    if isinstance(ignored, (int, float)) and ignored > 0:
        hint = (f" {100 * ignored:.2f} % of the pixels are ignored (mask value "
                f"{dataset.ignore_index}): if the source masks are binary, 0 and 255, prepare it "
                "again with --format binary (255 = foreground).")
    raise DatasetError(
        f"{dataset.root} has {found}: a segmentation model needs at least two classes with "
        f"labelled pixels (e.g. background and one object).{hint} Add masks that label "
        "another class, or check how the source was prepared (`autoseg info "
        f"{dataset.root}`)."
    )


def _class_presence(dataset: Dataset) -> np.ndarray:
    """Per class, a count that is 0 exactly when no pixel has the class: the fingerprint's
    image counts (exact, unlike its rounded fractions), else pixels counted from the masks."""
    image_counts = (dataset.fingerprint or {}).get("class_image_count")
    if isinstance(image_counts, dict) and set(image_counts) == set(dataset.classes):
        return np.array([float(image_counts[c] or 0) for c in dataset.classes])
    counts = np.zeros(256, np.int64)
    for stem in dataset.stems:
        mask_path = dataset.mask_path(stem)
        mask = imageio.read_index_mask(mask_path, f"masks/{mask_path.name}")
        counts += np.bincount(mask.ravel(), minlength=256)
    return counts[: dataset.num_classes].astype(np.float64)


def compute_fingerprint(
    dataset_or_paths: Dataset | str | Path | Iterable[tuple[str | Path, str | Path]],
    classes: list[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, Any]:
    """Summarises a dataset: image sizes, channels, pixel depth and range, class balance.

    Reads every mask and every image's pixels (at full depth).

    Args:
        dataset_or_paths: A `Dataset`, a canonical dataset folder, or `(image, mask)` path
            pairs.
        classes: Class names, for pairs. Defaults to the dataset's, else `class_<i>` up to
            the largest mask value.
        ignore_index: The ignored mask value, for pairs. Defaults to 255.

    Returns:
        A dict of plain Python values (for `yaml.safe_dump`):
        `num_images`; `image_size` with `min`, `median` and `max`, each `[height, width]`
        taken per dimension; `channels`, the sorted distinct channel counts as decoded
        (1 grey, 3 RGB, 4 RGBA); `pixel_dtype`, the photos' sample type (`["uint8"]`,
        `["uint16"]`, `["float32"]`); `value_range`, `[min, max]` of every pixel value;
        `value_percentiles`, the 0.5th and 99.5th percentiles of a sample of the pixel
        values; `class_pixel_fraction`, class name -> share of the non-ignored pixels;
        `class_image_count`, class name -> number of images where it appears;
        `ignore_fraction`, the share of all pixels that are ignored.

    Raises:
        DatasetError: unreadable files, a mask whose size differs from its image, mask
            values that are not classes, or photos of different sample types (8-bit and
            16-bit mixed).

    Example:
    ```python
    compute_fingerprint("data/cwfid")["class_pixel_fraction"]
    # {"background": 0.9257, "crop": 0.0158, "weed": 0.0585}
    ```
    """
    pairs, classes, ignore_index = _fingerprint_pairs(dataset_or_paths, classes, ignore_index)
    tally = _FingerprintTally()
    for image_path, mask_path in pairs:
        pixels, mask_counts, image_name = _read_checked_pair(
            image_path, mask_path, classes, ignore_index
        )
        tally.add(pixels, mask_counts, image_name)
    return tally.summary(classes, ignore_index)


def _fingerprint_pairs(
    dataset_or_paths: Dataset | str | Path | Iterable[tuple[str | Path, str | Path]],
    classes: list[str] | None,
    ignore_index: int,
) -> tuple[list[tuple[Path, Path]], list[str] | None, int]:
    """The `(image, mask)` paths to fingerprint, and the classes and ignore index that their
    masks are checked against (a dataset's own, else the ones given)."""
    if isinstance(dataset_or_paths, (str, os.PathLike)):
        dataset_or_paths = load_dataset(dataset_or_paths)
    if isinstance(dataset_or_paths, Dataset):
        ds = dataset_or_paths
        pairs = [(ds.image_path(s), ds.mask_path(s)) for s in ds.stems]
        classes, ignore_index = ds.classes, ds.ignore_index
    else:
        pairs = [(Path(image), Path(mask)) for image, mask in dataset_or_paths]
    if not pairs:
        raise DatasetError("There are no images to fingerprint.")
    return pairs, classes, ignore_index


def _read_checked_pair(
    image_path: Path, mask_path: Path, classes: list[str] | None, ignore_index: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """`(pixels, mask value counts, image name)` of one pair, after checking that the mask
    matches the image's size and holds only classes (when known) and the ignore index."""
    image_name = f"{image_path.parent.name}/{image_path.name}"
    mask_name = f"{mask_path.parent.name}/{mask_path.name}"
    pixels = imageio.read_pixels(image_path, image_name)
    size = (pixels.shape[1], pixels.shape[0])
    mask = imageio.read_index_mask(mask_path, mask_name)
    if (mask.shape[1], mask.shape[0]) != size:
        raise imageio.size_mismatch(mask_name, mask.shape[::-1], image_name, size)
    counts = np.bincount(mask.ravel(), minlength=256)
    if classes is not None:
        bad = [v for v in np.flatnonzero(counts) if v >= len(classes) and v != ignore_index]
        if bad:
            raise DatasetError(
                f"{mask_name} holds value(s) {', '.join(map(str, bad[:10]))} but the "
                f"dataset has {len(classes)} classes (0-{len(classes) - 1}, "
                f"{ignore_index} = ignore). Fix the mask or the classes in dataset.yaml."
            )
    return pixels, counts, image_name


class _FingerprintTally:
    """The statistics of `compute_fingerprint`, gathered one image and mask at a time."""

    def __init__(self) -> None:
        self.pixel_counts = np.zeros(256, np.int64)
        self.image_counts = np.zeros(256, np.int64)
        self.heights: list[int] = []
        self.widths: list[int] = []
        self.channels: set[int] = set()
        self.dtypes: dict[str, str] = {}  # dtype -> the first image of that dtype
        self.low, self.high = math.inf, -math.inf
        self.samples: list[np.ndarray] = []
        self.rng = np.random.default_rng(0)

    def add(self, pixels: np.ndarray, mask_counts: np.ndarray, image_name: str) -> None:
        """Adds one image (pixels as read, `(H, W, C)`) and its mask's value counts."""
        self.pixel_counts += mask_counts
        self.image_counts += mask_counts > 0
        self.widths.append(pixels.shape[1])
        self.heights.append(pixels.shape[0])
        self.channels.add(int(pixels.shape[2]))
        self.dtypes.setdefault(pixels.dtype.name, image_name)
        colour = pixels[..., :3] if pixels.shape[2] == 4 else pixels  # not the alpha
        finite = colour[np.isfinite(colour)] if colour.dtype.kind == "f" else colour
        if finite.size:
            self.low = min(self.low, float(finite.min()))
            self.high = max(self.high, float(finite.max()))
            self.samples.append(intensity.sample_values(finite, self.rng))

    def summary(self, classes: list[str] | None, ignore_index: int) -> dict[str, Any]:
        """The fingerprint dict (see `compute_fingerprint`).

        Raises:
            DatasetError: the photos mix sample types.
        """
        if len(self.dtypes) > 1:
            examples = ", ".join(f"{name} is {dtype}" for dtype, name in self.dtypes.items())
            raise DatasetError(
                f"The photos mix sample types ({examples}): one intensity rule cannot scale "
                "them alike. Convert them to one bit depth (e.g. every photo 16-bit)."
            )
        pixel_counts, heights, widths = self.pixel_counts, self.heights, self.widths
        if classes is None:
            used = [v for v in np.flatnonzero(pixel_counts) if v != ignore_index]
            classes = [f"class_{i}" for i in range(max(used, default=0) + 1)]
        total = int(pixel_counts.sum())
        ignored = int(pixel_counts[ignore_index])
        labelled = total - ignored
        low, high = (self.low, self.high) if self.samples else (0.0, 0.0)
        percentiles = intensity.percentiles(self.samples) or (low, high)
        return {
            "num_images": len(heights),
            "image_size": {
                "min": [min(heights), min(widths)],
                "median": [statistics.median_low(heights), statistics.median_low(widths)],
                "max": [max(heights), max(widths)],
            },
            "channels": sorted(self.channels),
            "pixel_dtype": sorted(self.dtypes),
            "value_range": [_plain_number(low), _plain_number(high)],
            "value_percentiles": [_plain_number(v) for v in percentiles],
            "class_pixel_fraction": {
                name: round(int(pixel_counts[i]) / labelled, 6) if labelled else 0.0
                for i, name in enumerate(classes)
            },
            "class_image_count": {
                name: int(self.image_counts[i]) for i, name in enumerate(classes)
            },
            "ignore_fraction": round(ignored / total, 6) if total else 0.0,
        }


def _plain_number(value: float) -> int | float:
    """An integer when `value` is whole (8- and 16-bit ranges read better), else a float."""
    return int(value) if float(value).is_integer() else round(float(value), 6)
