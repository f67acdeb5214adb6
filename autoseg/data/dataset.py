"""The canonical dataset layout, the contract every command after `prepare` reads.

```
DATASET/images/<stem>.<ext>    RGB photos (jpg, png, ...)
DATASET/masks/<stem>.png       single-channel uint8 class index, 255 = ignore
DATASET/dataset.yaml           classes, palette, ignore_index, [splits], [fingerprint]
```
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from autoseg import atomic
from autoseg.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255


@dataclasses.dataclass
class Dataset:
    """A canonical dataset on disk.

    Attributes:
        root: The DATASET folder.
        classes: Class names in index order (index 0 is usually background).
        palette: One RGB triple per class, for colour masks and overlays.
        ignore_index: The mask value that no loss or metric counts. Defaults to 255.
        splits: Optional `{"train": [...], "val": [...], "test": [...]}` stem lists.
        fingerprint: Optional statistics from `compute_fingerprint`.
        images: `stem -> image path`, sorted by stem.
    """

    root: Path
    classes: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int = IGNORE_INDEX
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
        }
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
    known = {"classes", "palette", "ignore_index", "splits", "fingerprint"}
    unknown = sorted(set(meta) - known)
    if unknown:
        raise DatasetError(
            f"{meta_path}: unknown key(s) {unknown}. Valid keys: {sorted(known)}."
        )
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
    images: dict[str, Path] = {}
    image_dir = root / "images"
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
    splits = meta.get("splits")
    if splits is not None:
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
        splits = {k: [str(s) for s in (v or [])] for k, v in splits.items()}
    return Dataset(
        root=root,
        classes=list(classes),
        palette=[tuple(int(v) for v in c) for c in palette],
        ignore_index=int(meta.get("ignore_index", IGNORE_INDEX)),
        splits=splits,
        fingerprint=meta.get("fingerprint"),
        images=images,
    )


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
