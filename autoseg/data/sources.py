"""Raw sources: which format a folder holds, and its conversion into a canonical dataset.

`prepare` converts a raw source (Labelme files, see `autoseg.data.labelme`, or `images/` +
colour, index or binary `masks/`, see `autoseg.data.masks`) into the layout of
`autoseg.data.dataset`, written whole or not at all; `resolve_dataset` does so once per
version of a source, into a cache keyed by `source_hash`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

from autoseg import atomic
from autoseg.data import labelme, masks
from autoseg.data.dataset import (
    Dataset, compute_fingerprint, intensity_rule, is_canonical, load_dataset, model_channels,
    write_dataset_yaml,
)
from autoseg.errors import ConfigError, DatasetError
from autoseg.user_cache import cache_home

FORMATS = ("auto", "labelme", "color", "index", "binary")
# Bump when `prepare` would write a different dataset from the same source: it renames
# every `resolve_dataset` cache entry.
CACHE_VERSION = 3


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
        cache_root = os.environ.get("AUTOSEG_CACHE_DIR") or cache_home() / "datasets"
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
