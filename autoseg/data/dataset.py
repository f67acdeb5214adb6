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

`prepare` builds this layout from a raw source (Labelme files, or `images/` + colour or
index `masks/`, see `autoseg.data.labelme` and `autoseg.data.masks`), `resolve_dataset`
does so once per source version into a cache, and `compute_fingerprint` summarises a
dataset (sizes, class balance) for `dataset.yaml` and `autoseg info`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import yaml

from autoseg import atomic
from autoseg.data import imageio, intensity
from autoseg.errors import ConfigError, DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255
FORMATS = ("auto", "labelme", "color", "index", "binary")
CHANNELS = (1, 3)
# Bump when `prepare` would write a different dataset from the same source: it renames
# every `resolve_dataset` cache entry.
CACHE_VERSION = 3


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
        channels=int(channels),
        intensity=rule,
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


def warn(message: str) -> None:
    """Prints a warning for the user on stderr as ``Warning: <message>``."""
    print(f"Warning: {message}", file=sys.stderr)


def detect_format(src: str | Path) -> str:
    """Tells which raw format a source folder holds.

    Any `*.json` directly in `src` with a `shapes` key makes it "labelme"; else `images/` +
    `masks/` make it "color" or "index" by the masks' mode (see `autoseg.data.masks`); else
    such a `*.json` in a subfolder (not hidden) makes it "labelme" (one folder per field day,
    say). Subfolders come after `images/` + `masks/` so that a mask source keeping its
    Labelme originals in a subfolder stays a mask source.

    Raises:
        DatasetError: none of these, or only invalid JSON files (the first one's problem).
    """
    from autoseg.data import labelme, masks

    src = Path(src)
    jsons = labelme.find_labelme_files(src)
    top = [p for p in jsons if p.parent == src]
    if any(labelme.is_labelme_file(p) for p in top):
        return "labelme"
    if (src / "images").is_dir() and (src / "masks").is_dir():
        return masks.detect_kind(src)
    if any(labelme.is_labelme_file(p) for p in jsons if p.parent != src):
        return "labelme"
    for p in top:
        labelme.read_labelme_file(p, p.name)  # raises with the reason it is not Labelme
    nested = sorted(
        p.name for p in src.iterdir()
        if p.is_dir() and not p.name.startswith(".")
        and (any(p.glob("*.json")) or ((p / "images").is_dir() and (p / "masks").is_dir()))
    )
    hint = f" Did you mean {', '.join(str(src / n) for n in nested[:3])}?" if nested else ""
    raise DatasetError(
        f"{src} holds neither Labelme files (*.json) nor images/ and masks/ folders: "
        f"nothing to prepare. Expected Labelme *.json files, or photos in images/ and "
        f"masks in masks/ with the same file stems.{hint}"
    )


def _check_ignore_values(ignore_values: Sequence[int] | None, kind: str) -> tuple[int, ...]:
    values = tuple(ignore_values or ())
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise ConfigError(
                f"--ignore-values takes mask values 0-255. Received: {value!r}."
            )
    if values and kind in ("labelme", "color"):
        how = ("name the label __ignore__ in --labels (labelme2voc's labels.txt convention)"
               if kind == "labelme" else "name the colour __ignore__ in --palette")
        raise ConfigError(
            f"--ignore-values applies to index and binary masks, not to {kind} sources: {how}."
        )
    return tuple(sorted(set(values)))


def prepare(
    src: str | Path,
    out: str | Path,
    format: str = "auto",
    labels: str | Path | None = None,
    palette: str | Path | None = None,
    overwrite: bool = False,
    skip_orphans: bool = False,
    ignore_values: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> Dataset:
    """Converts a raw source folder into a canonical dataset, written whole or not at all.

    Besides the masks, `prepare` records what the models need to know about the photos:
    `channels` (1 when every photo is grey) and, for photos deeper than 8 bits, the
    `intensity` rule that scales them to 0..255 (see `autoseg.data.intensity`).

    Args:
        src: Labelme files, or `images/` + `masks/` (colour, class-index or binary masks).
        out: The DATASET folder to write.
        format: "labelme", "color", "index", "binary", or "auto" to detect it (single-channel
            masks holding only 0 and 255, or only 0 and 1, are then binary). Defaults to
            "auto".
        labels: A labels file (labelme2voc `labels.txt` convention) naming the classes.
        palette: A palette YAML for colour masks (see `autoseg.data.masks`).
        overwrite: Replace `out` if it exists and is not empty. Defaults to False.
        skip_orphans: Leave out images without annotation and masks without image, with a
            warning, instead of failing. Defaults to False.
        ignore_values: Index or binary mask values to ignore: they become 255 and their
            names leave the class list. Defaults to None.
        log: Where notes for the user go (how binary masks were read). Defaults to print.

    Returns:
        The written dataset, fingerprint included.

    Raises:
        ConfigError: bad options, or `out` exists and `overwrite` is False.
        DatasetError: a source that cannot be read or converted (nothing is written).

    Example:
    ```python
    dataset = prepare("raw/camvid", "data/camvid", format="index",
                      labels="raw/camvid/labels.txt", ignore_values=[11])
    dataset.fingerprint["class_pixel_fraction"]  # {"sky": 0.15, ...}
    ```
    """
    from autoseg.data import labelme, masks

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(
            f"Source folder {src} {'is not a folder' if src.exists() else 'does not exist'}."
        )
    if format not in FORMATS:
        raise ConfigError(f"Unknown format {format!r}. Valid formats: {', '.join(FORMATS)}.")
    for option, path in (("--labels", labels), ("--palette", palette)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{option} {path} is not a file.")
    src_abs, out_abs = src.resolve(), out.resolve()
    if out_abs == src_abs or out_abs in src_abs.parents:
        raise ConfigError(
            f"--out {out} would replace the source folder {src}. Choose an output folder "
            "outside the source."
        )
    atomic.check_output_dir(out, overwrite)
    kind = detect_format(src) if format == "auto" else format
    ignore_values = _check_ignore_values(ignore_values, kind)
    if kind == "labelme" and palette is not None:
        raise ConfigError(
            "--palette applies to colour and index masks; name the classes of Labelme files "
            "with --labels FILE."
        )
    with atomic.output_dir(out, overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        if kind == "labelme":
            classes, colors = labelme.convert_folder(src, tmp, labels, skip_orphans)
        else:
            classes, colors = masks.convert_folder(
                src, tmp, kind, labels, palette, skip_orphans, ignore_values=ignore_values,
                detect_binary=format == "auto", log=log,
            )
        duplicates = sorted({c for c in classes if classes.count(c) > 1})
        if duplicates:
            raise DatasetError(
                f"Class name(s) {duplicates} appear twice in the class list {classes}. "
                "Each class needs its own name."
            )
        write_dataset_yaml(tmp, Dataset(root=tmp, classes=classes, palette=colors))
        dataset = load_dataset(tmp)
        dataset.fingerprint = compute_fingerprint(dataset)
        dataset.channels = model_channels(dataset.fingerprint)
        dataset.intensity = intensity_rule(dataset.fingerprint)
        write_dataset_yaml(tmp, dataset)
    return load_dataset(out)


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


def resolve_dataset(
    path: str | Path,
    cache_root: str | Path | None = None,
    *,
    format: str = "auto",
    labels: str | Path | None = None,
    palette: str | Path | None = None,
    skip_orphans: bool = False,
    ignore_values: Sequence[int] | None = None,
) -> Dataset:
    """Returns a canonical dataset for `path`, preparing a raw source once into a cache.

    A canonical folder (with `dataset.yaml`) is loaded as it is. A raw source is prepared
    into `<cache_root>/<name>-<hash>`, where the hash covers the source's file names, sizes
    and modification times and the options; a later call with an unchanged source reuses it.

    Args:
        path: A canonical dataset or a raw source folder.
        cache_root: Where cached datasets go. Defaults to `$AUTOSEG_CACHE_DIR`, else
            `$XDG_CACHE_HOME/autoseg/datasets` (`~/.cache/autoseg/datasets`): never beside
            the user's source data, which may be read-only or shared.
        format, labels, palette, skip_orphans, ignore_values: As for `prepare`.

    Raises:
        DatasetError: the source cannot be converted, or no cache folder is writable.
    """
    path = Path(path)
    if is_canonical(path):
        return load_dataset(path)
    if not path.is_dir():
        raise DatasetError(
            f"Dataset {path} {'is not a folder' if path.exists() else 'does not exist'}."
        )
    digest = source_hash(path, format, labels, palette, skip_orphans, ignore_values)
    name = f"{path.resolve().name}-{digest}"
    if cache_root is None:
        cache_root = os.environ.get("AUTOSEG_CACHE_DIR") or (
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoseg" / "datasets"
        )
    roots = [Path(cache_root)]
    for root in roots:
        if is_canonical(root / name):
            return load_dataset(root / name)
    for root in roots:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(root, os.W_OK):
            return prepare(
                path, root / name, format=format, labels=labels, palette=palette,
                overwrite=True, skip_orphans=skip_orphans, ignore_values=ignore_values,
            )
    raise DatasetError(
        f"No writable cache folder for preparing {path} (tried {', '.join(map(str, roots))}). "
        f"Run `autoseg prepare {path} --out DATASET` and pass DATASET instead."
    )


def source_hash(
    src: str | Path,
    format: str = "auto",
    labels: str | Path | None = None,
    palette: str | Path | None = None,
    skip_orphans: bool = False,
    ignore_values: Sequence[int] | None = None,
) -> str:
    """12 hex digits that change when a file under `src` (name, size, mtime) or an option does."""
    src = Path(src)
    ignored = ",".join(str(v) for v in sorted(set(ignore_values or ())))
    digest = hashlib.sha256(f"v{CACHE_VERSION} {format} {skip_orphans} {ignored}\n".encode())
    for option in (labels, palette):
        digest.update(Path(option).read_bytes() if option is not None else b"-")
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(f for f in files if not f.startswith(".")):
            path = Path(folder, file)
            stat = path.stat()
            rel = path.relative_to(src).as_posix()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


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
    pixel_counts = np.zeros(256, np.int64)
    image_counts = np.zeros(256, np.int64)
    heights, widths, channels = [], [], set()
    dtypes: dict[str, str] = {}  # dtype -> the first image of that dtype
    low, high = math.inf, -math.inf
    samples = []
    rng = np.random.default_rng(0)
    for image_path, mask_path in pairs:
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
        pixel_counts += counts
        image_counts += counts > 0
        widths.append(size[0])
        heights.append(size[1])
        channels.add(int(pixels.shape[2]))
        dtypes.setdefault(pixels.dtype.name, image_name)
        colour = pixels[..., :3] if pixels.shape[2] == 4 else pixels  # not the alpha
        finite = colour[np.isfinite(colour)] if colour.dtype.kind == "f" else colour
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
            samples.append(intensity.sample_values(finite, rng))
    if len(dtypes) > 1:
        examples = ", ".join(f"{name} is {dtype}" for dtype, name in dtypes.items())
        raise DatasetError(
            f"The photos mix sample types ({examples}): one intensity rule cannot scale them "
            "alike. Convert them to one bit depth (e.g. every photo 16-bit)."
        )
    if classes is None:
        used = [v for v in np.flatnonzero(pixel_counts) if v != ignore_index]
        classes = [f"class_{i}" for i in range(max(used, default=0) + 1)]
    total = int(pixel_counts.sum())
    ignored = int(pixel_counts[ignore_index])
    labelled = total - ignored
    if not samples:
        low = high = 0.0
    percentiles = intensity.percentiles(samples) or (low, high)
    return {
        "num_images": len(pairs),
        "image_size": {
            "min": [min(heights), min(widths)],
            "median": [statistics.median_low(heights), statistics.median_low(widths)],
            "max": [max(heights), max(widths)],
        },
        "channels": sorted(channels),
        "pixel_dtype": sorted(dtypes),
        "value_range": [_plain_number(low), _plain_number(high)],
        "value_percentiles": [_plain_number(v) for v in percentiles],
        "class_pixel_fraction": {
            name: round(int(pixel_counts[i]) / labelled, 6) if labelled else 0.0
            for i, name in enumerate(classes)
        },
        "class_image_count": {name: int(image_counts[i]) for i, name in enumerate(classes)},
        "ignore_fraction": round(ignored / total, 6) if total else 0.0,
    }


def _plain_number(value: float) -> int | float:
    """An integer when `value` is whole (8- and 16-bit ranges read better), else a float."""
    return int(value) if float(value).is_integer() else round(float(value), 6)
