"""The tf.data input pipeline: decode once, resize or crop, augment, batch.

Every example is `(image, mask)`:

- image: float32 `(H, W, C)` in [0, 255], C = `dataset.channels` (3 RGB, or 1 when every
  photo is grey). 8-bit photos keep their pixel values; photos deeper than 8 bits are read
  at full depth and scaled by the dataset's `intensity` rule (`autoseg.data.intensity`).
  Normalisation belongs to the models (each backbone knows its own).
- mask: int32 `(H, W)`, class indices, `dataset.ignore_index` (255) where no loss or metric
  should look: pixels that augmentation moved in from outside, padding, and pixels that a
  validation tile shares with an earlier tile.

Two policies bring a photo to the model's `input_size`:

- `resize`: the whole photo is resized (area interpolation when shrinking, bilinear when
  enlarging; the mask nearest-neighbour). Training augmentation then runs on the small image.
- `crop`: the photo is scaled by `crop_scale` (so thin plants keep some pixels) and
  training takes one random `input_size` crop per photo and epoch (a share `rare_crops` of
  them placed over a pixel of a rare class: `autoseg.data.rare_crops`); validation tiles the
  scaled photo with `tile_positions` so every pixel is scored exactly once. `predict` reuses
  `tile_positions`, `extract_tiles` and `stitch` to tile the same way.

Decoded (and resized or scaled) examples are kept in memory when their estimated size fits
the cache budget; otherwise they are decoded again each epoch. The per-example work runs in
`tf.numpy_function` under a parallel, order-preserving `map`. Randomness comes from one
seed per example drawn from `tf.data.Dataset.random(seed)`, so a pipeline built twice with
the same seed yields the same tensors whatever thread handles which example.

tf.data's model-based autotuning is off (`pipeline_options`). Its optimisation thread sleeps
for a period that doubles up to a minute and does not wake when the iterator is deleted, so
deleting an iterator waited for the rest of that sleep: 0-50 s at the end of every
`model.fit` with validation (Keras drops its validation iterator there), measured in real
trials' records and with gdb (the main thread in `~RootDataset::Iterator`, waiting on the
thread in `Model::OptimizeLoop`). The parallel maps then use the machine's cores and
`prefetch` its adaptive buffer; an epoch was as fast (benchmarks/RESULTS.md, "The end of a
fit").
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from autoseg.data.augment import build_augmentation, check_fraction, check_strength, reseed
from autoseg.data import imageio, intensity
from autoseg.data.dataset import Dataset
from autoseg.data.rare_crops import CropSampler, rare_classes
from autoseg.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

POLICIES = ("resize", "crop")
CLASS_WEIGHT_METHODS = ("median_frequency", "sqrt_median_frequency", "inverse_frequency", "uniform")
# Upper bound of the in-memory cache when `cache_max_bytes` is not given; the default is
# also held below a quarter of the memory available when the pipeline is built.
DEFAULT_CACHE_MAX_BYTES = 4 * 1024**3


# --------------------------------------------------------------------------------------------
# Reading and resizing one example (NumPy; shared with predict and evaluate).


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file's pixels at full depth: `(H, W, C)` in the file's dtype.

    C is 1 (grey), 3 (RGB) or 4 (RGBA). Pixels are taken as stored: EXIF orientation is
    ignored, as PIL does, so images and the masks drawn on them stay aligned.

    Raises:
        DatasetError: the file cannot be decoded.
    """
    return imageio.read_pixels(path, _relative_name(path))


def model_input(
    pixels: np.ndarray, channels: int, rule: dict | None, name: str, error=DatasetError
) -> np.ndarray:
    """Brings raw pixels to what a model takes: `channels` channels, scaled by `rule`.

    Args:
        pixels: `(H, W)` or `(H, W, C)` as read (`read_pixels`).
        channels: 1 or 3.
        rule: The intensity rule (`autoseg.data.intensity`), or None for 8-bit images.
        name: The file or array, for error messages.
        error: The exception class to raise. Defaults to `DatasetError`.

    Returns:
        uint8 `(H, W, channels)` without a rule (the pixels as they are), float32 0..255
        with one.

    Raises:
        error: a colour image for a grey model, an image deeper than 8 bits without a rule,
            or an 8-bit image for a model of deeper images.
    """
    image = imageio.to_channels(np.asarray(pixels), channels, name, error)
    if rule is None:
        if image.dtype != np.uint8:
            raise error(
                f"{name} holds {image.dtype} pixels, but 8-bit images (uint8) are expected "
                "here: no intensity rule says how to scale deeper ones, and cutting them to "
                "8 bits would lose their contrast. Prepare the deeper images with `autoseg "
                "prepare` (it records the rule in dataset.yaml) and train on them."
            )
        return np.ascontiguousarray(image)
    if image.dtype == np.uint8 and rule.get("dtype", "uint8") != "uint8":
        raise error(
            f"{name} holds 8-bit pixels, but the images here are {rule['dtype']}, scaled by "
            f"{intensity.describe_rule(rule)}. Pass the image at its full depth (e.g. "
            "cv2.imread(path, cv2.IMREAD_UNCHANGED)), not converted to 8 bits."
        )
    if image.dtype.kind not in "uif":
        raise error(f"{name} holds {image.dtype} values; expected numbers (uint, int, float).")
    return intensity.apply_rule(image, rule)


def read_image(
    path: str | os.PathLike, channels: int = 3, rule: dict | None = None
) -> np.ndarray:
    """Reads an image file as a model takes it: see `model_input`.

    Args:
        path: The image file.
        channels: 1 (grey) or 3 (RGB). Defaults to 3.
        rule: The intensity rule for images deeper than 8 bits. Defaults to None.

    Returns:
        uint8 `(H, W, channels)` without a rule, float32 0..255 with one.

    Raises:
        DatasetError: the file cannot be decoded, or does not fit `channels` and `rule`.
    """
    return model_input(read_pixels(path), channels, rule, _relative_name(path))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Reads an index mask as uint8 `(H, W)`.

    Grey ("L"), palette ("P": the indices, not the colours) and binary PNGs are accepted.

    Raises:
        DatasetError: the file is unreadable or not a single-channel 8-bit index mask.
    """
    return imageio.read_index_mask(path, _relative_name(path))


def _relative_name(path: str | os.PathLike) -> str:
    """`masks/017.png` for messages: the file and the dataset folder it sits in."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def load_example(
    dataset: Dataset, stem: str, *, raw: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Reads one image and its mask at full size.

    Args:
        dataset: The dataset.
        stem: The image.
        raw: Return the pixels as stored (`read_pixels`) instead of as the models take them.
            Defaults to False.

    Returns:
        `(image, mask uint8 (H, W))`; the image is `(H, W, dataset.channels)`, uint8 for 8-bit
        datasets and float32 0..255 for datasets with an intensity rule (or as stored, `raw`).

    Raises:
        DatasetError: unreadable files, or a mask whose size differs from its image's.
    """
    if raw:
        image = read_pixels(dataset.image_path(stem))
    else:
        image = read_image(dataset.image_path(stem), dataset.channels, dataset.intensity)
    mask = read_mask(dataset.mask_path(stem))
    if image.shape[:2] != mask.shape:
        raise imageio.size_mismatch(
            _relative_name(dataset.mask_path(stem)), mask.shape[::-1],
            _relative_name(dataset.image_path(stem)), image.shape[1::-1],
        )
    return image, mask


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes an image to `size = (height, width)`.

    Area interpolation when both sides shrink (it averages, so thin structures fade rather
    than alias), bilinear otherwise. A `(H, W, 1)` image stays `(height, width, 1)`.
    """
    height, width = size
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    shrinking = height <= h and width <= w
    resized = cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    return resized[..., None] if image.ndim == 3 and resized.ndim == 2 else resized


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes an index mask (or any label map) to `size = (height, width)`, nearest-neighbour.

    `INTER_NEAREST_EXACT` samples pixel centres like the image interpolations do; plain
    `INTER_NEAREST` is off by half a pixel.
    """
    height, width = size
    if mask.shape[:2] == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """`(height, width)` multiplied by `scale`, rounded, at least 1 pixel."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def crop_with_fill(
    array: np.ndarray, y: int, x: int, height: int, width: int, fill: float
) -> np.ndarray:
    """The `height x width` window of `array` at `(y, x)`; parts outside are `fill`.

    `y` and `x` may be negative or run past the far edge.
    """
    out = np.full((height, width) + array.shape[2:], fill, dtype=array.dtype)
    h, w = array.shape[:2]
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + height, h), min(x + width, w)
    if y1 > y0 and x1 > x0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = array[y0:y1, x0:x1]
    return out


# --------------------------------------------------------------------------------------------
# Tiling (validation with policy "crop", and predict).


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer. Received: {name}={value!r}.")
    return int(value)


def tile_positions(
    height: int, width: int, tile_h: int, tile_w: int, overlap: int = 0
) -> list[tuple[int, int]]:
    """Top-left corners of the tiles that cover a `height x width` image.

    Tiles step by `tile - overlap`; the last row and column are shifted back to end exactly
    at the image's edge, so no tile leaves the image. Where the image is smaller than a tile
    along a side, that side has one tile at 0 that runs past the edge (callers pad it, see
    `extract_tiles`).

    Args:
        height: Image height.
        width: Image width.
        tile_h: Tile height.
        tile_w: Tile width.
        overlap: Pixels shared by neighbouring tiles (before the last-tile shift).
            Defaults to 0.

    Returns:
        `[(y, x), ...]` row by row.

    Raises:
        ConfigError: a size is not a positive integer, or `overlap` is not in
            `[0, min(tile_h, tile_w))`.

    Example:
    ```python
    >>> tile_positions(5, 7, 4, 4)
    [(0, 0), (0, 3), (1, 0), (1, 3)]
    ```
    """
    height = _check_positive_int("height", height)
    width = _check_positive_int("width", width)
    tile_h = _check_positive_int("tile_h", tile_h)
    tile_w = _check_positive_int("tile_w", tile_w)
    if (
        isinstance(overlap, bool)
        or not isinstance(overlap, numbers.Integral)
        or not 0 <= overlap < min(tile_h, tile_w)
    ):
        raise ConfigError(
            f"overlap must be an integer in [0, {min(tile_h, tile_w)}) for {tile_h}x{tile_w} "
            f"tiles. Received: overlap={overlap!r}."
        )

    def starts(size: int, tile: int) -> list[int]:
        if size <= tile:
            return [0]
        return list(range(0, size - tile, tile - overlap)) + [size - tile]

    return [(y, x) for y in starts(height, tile_h) for x in starts(width, tile_w)]


def extract_tiles(
    array: np.ndarray,
    positions: Sequence[tuple[int, int]],
    tile_h: int,
    tile_w: int,
    fill: float = 0,
) -> np.ndarray:
    """Stacks the tiles of `array` (an image `(H, W, C)` or a mask `(H, W)`) at `positions`.

    Args:
        array: The image or mask.
        positions: From `tile_positions`.
        tile_h: Tile height.
        tile_w: Tile width.
        fill: Value of tile pixels outside the array. Defaults to 0 (use the ignore index
            for masks).

    Returns:
        `(len(positions), tile_h, tile_w, ...)` of `array`'s dtype.
    """
    return np.stack([crop_with_fill(array, y, x, tile_h, tile_w, fill) for y, x in positions])


def stitch(
    tiles: np.ndarray, positions: Sequence[tuple[int, int]], height: int, width: int
) -> np.ndarray:
    """Reassembles per-tile outputs into one `height x width` map, averaging overlaps.

    Args:
        tiles: `(n, tile_h, tile_w, ...)`, e.g. per-tile class scores `(n, th, tw, C)`.
        positions: The `(y, x)` of each tile, from `tile_positions`.
        height: Height of the image the tiles came from.
        width: Width of that image.

    Returns:
        float32 `(height, width, ...)`: the mean of the tiles covering each pixel.

    Raises:
        ValueError: the counts differ, or some pixel is covered by no tile.
    """
    tiles = np.asarray(tiles)
    if len(tiles) != len(positions):
        raise ValueError(f"{len(tiles)} tiles but {len(positions)} positions.")
    tile_h, tile_w = tiles.shape[1:3]
    canvas_h = max(height, max((y for y, _ in positions), default=0) + tile_h)
    canvas_w = max(width, max((x for _, x in positions), default=0) + tile_w)
    total = np.zeros((canvas_h, canvas_w) + tiles.shape[3:], np.float64)
    count = np.zeros((canvas_h, canvas_w), np.int64)
    for tile, (y, x) in zip(tiles, positions):
        total[y : y + tile_h, x : x + tile_w] += tile
        count[y : y + tile_h, x : x + tile_w] += 1
    total, count = total[:height, :width], count[:height, :width]
    if (count == 0).any():
        raise ValueError("the tiles leave pixels uncovered; use tile_positions().")
    count = count.reshape(count.shape + (1,) * (total.ndim - 2))
    return (total / count).astype(np.float32)


def tile_ownership(
    positions: Sequence[tuple[int, int]], height: int, width: int, tile_h: int, tile_w: int
) -> np.ndarray:
    """For each tile, True where it is the first tile to cover an image pixel.

    Validation sets the mask to ignore where this is False, so overlapping tiles and padding
    never count a pixel twice or a pixel that is not in the image.

    Returns:
        bool `(len(positions), tile_h, tile_w)`.
    """
    covered = np.zeros((height, width), bool)
    owned = np.zeros((len(positions), tile_h, tile_w), bool)
    for i, (y, x) in enumerate(positions):
        inside = ~crop_with_fill(covered, y, x, tile_h, tile_w, True)
        owned[i] = inside
        covered[y : y + tile_h, x : x + tile_w] = True
    return owned


# --------------------------------------------------------------------------------------------
# Splits and class weights.


def split_stems(
    dataset: Dataset,
    val_fraction: float = 0.2,
    seed: int = 0,
    group_pattern: str | None = None,
) -> tuple[list[str], list[str]]:
    """Splits a dataset's images into training and validation stems.

    `dataset.yaml` splits win: with both `train` and `val` listed they are returned as
    they are. Otherwise the pool (`train` if listed, else every image not in `val` or
    `test`) is shuffled with `seed` and `val_fraction` of it, at least one image, is held
    out; with only `val` listed, training gets every other image outside `test`.

    With `group_pattern`, whole groups are held out instead of single images, so that near
    duplicates (frames of one video, tiles of one slide) never sit on both sides. The group
    of an image is the pattern's first capture group, or its whole match, searched in the
    stem. Groups are taken in a seeded order, each one held out when it brings the validation
    count closer to `val_fraction` of the pool; at least one group goes to each side.

    Args:
        dataset: The dataset.
        val_fraction: Fraction of the pool held out, in (0, 1). Defaults to 0.2.
        seed: Seeds the shuffle. Defaults to 0.
        group_pattern: A regular expression that finds each stem's group, e.g.
            `^([^_]+)_` (the text before the first underscore). Defaults to None (images
            are held out one by one).

    Returns:
        `(train_stems, val_stems)`, each sorted.

    Raises:
        ConfigError: `val_fraction` is not in (0, 1), `group_pattern` is not a valid regular
            expression or does not match some stem.
        DatasetError: fewer than 2 images (or groups) to split.

    Example:
    ```python
    train, val = split_stems(load_dataset("data/camvid"), 0.2, seed=0, group_pattern=r"^([^_]+)_")
    ```
    """
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, numbers.Real)
        or not 0.0 < float(val_fraction) < 1.0
    ):
        raise ConfigError(
            f"val_fraction must be a number in (0, 1). Received: val_fraction={val_fraction!r}."
        )
    compiled = _compile_group_pattern(group_pattern)
    splits = dataset.splits or {}
    given_train, given_val = splits.get("train") or [], splits.get("val") or []
    test = set(splits.get("test") or [])
    if given_train and given_val:
        return list(given_train), list(given_val)
    if given_val:
        held = set(given_val) | test
        return [s for s in dataset.stems if s not in held], list(given_val)
    pool = sorted(given_train or [s for s in dataset.stems if s not in test])
    where = (
        "splits.train" if given_train
        else "images/ (outside splits.test)" if test
        else "images/"
    )
    if len(pool) < 2:
        raise DatasetError(
            f"{dataset.root}: {where} holds {len(pool)} image(s); at least 2 are needed to "
            f"keep one for validation. Add images, or list `val` in dataset.yaml splits."
        )
    rng = np.random.default_rng(seed)
    if compiled is not None:
        return _split_groups(dataset, pool, where, compiled, float(val_fraction), rng)
    num_val = min(len(pool) - 1, max(1, int(round(len(pool) * float(val_fraction)))))
    order = rng.permutation(len(pool))
    val = sorted(pool[i] for i in order[:num_val])
    train = sorted(pool[i] for i in order[num_val:])
    return train, val


def _compile_group_pattern(group_pattern: str | None) -> re.Pattern | None:
    if group_pattern is None:
        return None
    if not isinstance(group_pattern, str) or not group_pattern:
        raise ConfigError(
            f"group_pattern must be a regular expression. Received: {group_pattern!r}."
        )
    try:
        return re.compile(group_pattern)
    except re.error as exc:
        raise ConfigError(
            f"group_pattern {group_pattern!r} is not a valid regular expression ({exc}). "
            r"Example: '^([^_]+)_' groups images by the text before the first underscore."
        ) from None


def image_groups(stems: Sequence[str], pattern: str | re.Pattern) -> dict[str, list[str]]:
    """Groups stems by `pattern`: its first capture group, or its whole match.

    Returns:
        group key -> its stems, in the order of `stems`.

    Raises:
        ConfigError: the pattern does not match some stem (the message lists them).
    """
    compiled = pattern if isinstance(pattern, re.Pattern) else _compile_group_pattern(pattern)
    groups: dict[str, list[str]] = {}
    unmatched = []
    for stem in stems:
        match = compiled.search(stem)
        key = (match.group(1) if compiled.groups else match.group(0)) if match else None
        if key is None:
            unmatched.append(stem)
            continue
        groups.setdefault(key, []).append(stem)
    if unmatched:
        raise ConfigError(
            f"group_pattern {compiled.pattern!r} does not match {len(unmatched)} of "
            f"{len(stems)} image stem(s): {', '.join(unmatched[:5])}"
            f"{' ...' if len(unmatched) > 5 else ''}. Every stem needs a group; e.g. "
            r"'^([^_]+)_' takes the text before the first underscore."
        )
    return groups


def _split_groups(dataset, pool, where, pattern, val_fraction, rng):
    groups = image_groups(pool, pattern)
    if len(groups) < 2:
        (key, members), = groups.items()
        raise DatasetError(
            f"{dataset.root}: group_pattern {pattern.pattern!r} puts all {len(members)} "
            f"images of {where} in one group ({key!r}); a group-aware split needs at least "
            "two groups. Choose a pattern that separates them, or list `val` in dataset.yaml "
            "splits."
        )
    keys = sorted(groups)
    target = len(pool) * val_fraction
    held: list[str] = []
    count = 0
    for i in rng.permutation(len(keys)):
        size = len(groups[keys[i]])
        if len(held) < len(keys) - 1 and abs(count + size - target) < abs(count - target):
            held.append(keys[i])
            count += size
    if not held:  # every group is larger than twice the target: the one closest to it
        held.append(min(keys, key=lambda k: (abs(len(groups[k]) - target), k)))
    val = sorted(s for k in held for s in groups[k])
    chosen = set(val)
    return [s for s in pool if s not in chosen], val


def class_pixel_fraction(dataset: Dataset, stems: Sequence[str] | None = None) -> np.ndarray:
    """The fraction of labelled (non-ignore) pixels in each class.

    Read from `dataset.fingerprint["class_pixel_fraction"]` (a mapping class name ->
    fraction, or a list in class order) when `stems` is None and the fingerprint has it;
    otherwise counted from the masks of `stems` (all images when None).

    Returns:
        float64 `(num_classes,)` summing to 1.

    Raises:
        DatasetError: a mask holds a value that is neither a class nor the ignore index, or
            no pixel is labelled.
    """
    if stems is None:
        from_fingerprint = _fingerprint_fraction(dataset)
        if from_fingerprint is not None:
            return from_fingerprint
    counts = np.zeros(256, np.int64)
    for stem in dataset.stems if stems is None else stems:
        stem_counts = np.bincount(read_mask(dataset.mask_path(stem)).ravel(), minlength=256)
        bad = [
            int(v)
            for v in np.flatnonzero(stem_counts)
            if v >= dataset.num_classes and v != dataset.ignore_index
        ]
        if bad:
            raise DatasetError(
                f"masks/{stem}.png holds value(s) {bad[:10]}, but the dataset has "
                f"{dataset.num_classes} classes (0..{dataset.num_classes - 1}) and ignore "
                f"index {dataset.ignore_index}."
            )
        counts += stem_counts
    counts = counts[: dataset.num_classes].astype(np.float64)
    if counts.sum() == 0:
        raise DatasetError(f"{dataset.root}: the masks label no pixel (all are ignore).")
    return counts / counts.sum()


def _fingerprint_fraction(dataset: Dataset) -> np.ndarray | None:
    raw = (dataset.fingerprint or {}).get("class_pixel_fraction")
    if isinstance(raw, dict) and set(raw) >= set(dataset.classes):
        values = [raw[name] for name in dataset.classes]
    elif isinstance(raw, (list, tuple)) and len(raw) == dataset.num_classes:
        values = list(raw)
    else:
        if raw is not None:
            logger.warning(
                "dataset.yaml fingerprint.class_pixel_fraction does not match the classes "
                "%s; counting mask pixels instead.",
                dataset.classes,
            )
        return None
    try:
        fraction = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        return None
    if not np.all(np.isfinite(fraction)) or (fraction < 0).any() or fraction.sum() <= 0:
        return None
    return fraction / fraction.sum()


def class_weights(
    dataset: Dataset, method: str = "median_frequency", *, stems: Sequence[str] | None = None
) -> np.ndarray:
    """Per-class loss weights for the class-weighted losses (`losses.CLASS_WEIGHTING`).

    Methods, with `f_c` the fraction of labelled pixels in class c (`class_pixel_fraction`):

    - `median_frequency` (Eigen & Fergus 2015, over the whole dataset): `median(f) / f_c`.
    - `sqrt_median_frequency`: `sqrt(median(f) / f_c)`, a milder balance.
    - `inverse_frequency`: `1 / (K f_c)` with K present classes, so the mean weight per
      labelled pixel is 1.
    - `uniform`: all ones.

    A class with no pixel gets weight 0 (it cannot contribute to the loss anyway); the
    median is taken over present classes.

    Args:
        dataset: The dataset.
        method: One of `CLASS_WEIGHT_METHODS`. Defaults to "median_frequency".
        stems: Count only these images (e.g. the training split). Defaults to None: the
            fingerprint if present, else every image.

    Returns:
        float32 `(num_classes,)`.

    Raises:
        ConfigError: unknown `method`.
        DatasetError: see `class_pixel_fraction`.

    Example:
    ```python
    weights = class_weights(load_dataset("data/weeds"))  # e.g. [0.1, 4.9, 1.0]
    ```
    """
    if method not in CLASS_WEIGHT_METHODS:
        raise ConfigError(
            f"Unknown class weight method {method!r}. Valid methods: "
            f"{', '.join(CLASS_WEIGHT_METHODS)}."
        )
    if method == "uniform":
        return np.ones(dataset.num_classes, np.float32)
    fraction = class_pixel_fraction(dataset, stems)
    present = fraction > 0
    weights = np.zeros_like(fraction)
    if method in ("median_frequency", "sqrt_median_frequency"):
        weights[present] = np.median(fraction[present]) / fraction[present]
        if method == "sqrt_median_frequency":
            weights = np.sqrt(weights)
    else:
        weights[present] = 1.0 / (present.sum() * fraction[present])
    return weights.astype(np.float32)


# --------------------------------------------------------------------------------------------
# The tf.data pipeline.


def _check_input_size(input_size: object) -> tuple[int, int]:
    if (
        not isinstance(input_size, (tuple, list))
        or len(input_size) != 2
        or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
            for v in input_size
        )
    ):
        raise ConfigError(
            f"input_size must be (height, width), two positive integers. "
            f"Received: input_size={input_size!r}."
        )
    return int(input_size[0]), int(input_size[1])


def image_sizes(dataset: Dataset, stems: Sequence[str]) -> list[tuple[int, int]]:
    """`(height, width)` of each image, read from the file headers (not the pixels).

    Raises:
        DatasetError: an unreadable header, or a mask whose size differs from its image's.
    """
    sizes = []
    for stem in stems:
        image_name = _relative_name(dataset.image_path(stem))
        mask_name = _relative_name(dataset.mask_path(stem))
        image_size = imageio.image_size(dataset.image_path(stem), image_name)
        with imageio.open_header(dataset.mask_path(stem), mask_name) as im:
            mask_size = im.size
        if image_size != mask_size:
            raise imageio.size_mismatch(mask_name, mask_size, image_name, image_size)
        sizes.append((image_size[1], image_size[0]))
    return sizes


def estimate_cache_bytes(
    dataset: Dataset,
    stems: Sequence[str],
    *,
    input_size: tuple[int, int],
    policy: str = "resize",
    crop_scale: float = 1.0,
) -> int:
    """Bytes that `make_dataset` would hold in memory to cache `stems` (image + mask).

    An image pixel takes a byte per channel (8-bit datasets) or four (float32, datasets
    with an intensity rule); a mask pixel one byte. With policy "crop" this reads each
    image's header (not its pixels) for its size.
    """
    sizes = [input_size] * len(stems) if policy == "resize" else image_sizes(dataset, stems)
    return _cache_bytes(sizes, policy, input_size, crop_scale, _pixel_bytes(dataset))


def _pixel_bytes(dataset: Dataset) -> int:
    """Cached bytes per pixel: the image's channels (1 or 4 bytes each) and the mask's byte."""
    return dataset.channels * (4 if dataset.intensity else 1) + 1


def _cache_bytes(
    sizes: Sequence[tuple[int, int]], policy: str, input_size: tuple[int, int], crop_scale: float,
    pixel_bytes: int = 4,
) -> int:
    if policy == "resize":
        return len(sizes) * input_size[0] * input_size[1] * pixel_bytes
    return sum(h * w * pixel_bytes for h, w in (scaled_size(*size, crop_scale) for size in sizes))


def default_cache_max_bytes() -> int:
    """`DEFAULT_CACHE_MAX_BYTES`, or a quarter of the memory available now if less."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_CACHE_MAX_BYTES
    return int(min(DEFAULT_CACHE_MAX_BYTES, available // 4))


class _ExampleStore:
    """`get(i)` -> the prepared example i, computed once when caching, else every call."""

    def __init__(self, prepare: Callable[[int], tuple[np.ndarray, np.ndarray]], cache: bool):
        self._prepare = prepare
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        cache = self._cache
        if cache is None:
            return self._prepare(index)
        example = cache.get(index)
        if example is None:
            example = self._prepare(index)
            for array in example:
                array.flags.writeable = False  # augmentations must not edit the cache
            cache[index] = example
        return example

    def close(self) -> None:
        """Frees the cache; later calls decode again."""
        self._cache = None


def steps_per_pass(num_examples: int, batch_size: int | None) -> int:
    """Batches in one pass over `num_examples` (the last batch may be smaller)."""
    return num_examples if not batch_size else -(-num_examples // batch_size)


def make_dataset(
    dataset: Dataset,
    stems: Sequence[str],
    *,
    input_size: tuple[int, int],
    policy: str = "resize",
    crop_scale: float = 1.0,
    aug_strength: float = 0.0,
    rare_crops: float = 0.0,
    batch_size: int | None = None,
    training: bool = True,
    seed: int = 0,
    cache: bool = True,
    shuffle: bool | None = None,
    cache_max_bytes: int | None = None,
    repeat: bool = False,
):
    """Builds the `tf.data.Dataset` of `(image, mask)` for training or validation.

    Args:
        dataset: The canonical dataset.
        stems: The images to use (e.g. from `split_stems`).
        input_size: `(height, width)` of the examples.
        policy: "resize" the whole photo to `input_size`, or "crop": scale the photo by
            `crop_scale`, then take random crops (training) or tiles covering it
            (validation). Defaults to "resize".
        crop_scale: Scale applied before cropping or tiling (policy "crop" only), e.g. 0.5
            for half-size photos. Defaults to 1.0.
        aug_strength: Augmentation strength in [0, 1], used when training. Defaults to 0.0.
        rare_crops: The share of training crops (policy "crop") placed over a pixel of a
            rare class, in [0, 1] (see `autoseg.data.rare_crops`; rarity is read from
            `class_pixel_fraction(dataset)`). Defaults to 0.0 (uniform crops).
        batch_size: Batch the examples (the last batch may be smaller). Defaults to None
            (unbatched).
        training: Random crops and augmentation when True; tiles (policy "crop") and no
            augmentation when False. Defaults to True.
        seed: Seeds the shuffle, the crops and the augmentation. Defaults to 0.
        cache: Keep prepared examples in memory when they fit `cache_max_bytes`.
            Defaults to True.
        shuffle: Shuffle the images each epoch. Defaults to None (= `training`).
        cache_max_bytes: The cache budget. Defaults to None (`default_cache_max_bytes()`).
        repeat: Repeat the (batched) passes without end; train with
            `steps_per_epoch=steps_per_pass(len(stems), batch_size)` so that an epoch is one
            pass. One iterator then lives through every epoch, instead of the pipeline
            draining and restarting at each epoch's end. Defaults to False.

    Returns:
        A `tf.data.Dataset` of `(float32 (H, W, C) in [0, 255], int32 (H, W))`, C =
        `dataset.channels`, with a
        leading batch axis when `batch_size` is given. Validation with policy "crop" yields
        one element per tile; pixels a tile shares with an earlier one, and padding, are
        ignore in its mask, so each image pixel is scored once.

    Raises:
        ConfigError: a bad option.
        DatasetError: unknown stems, unreadable file headers, or a mask whose size differs
            from its image's (all checked here). Pixel data that fails to decode is only
            found while iterating, where TensorFlow reports it inside its own error.

    Example:
    ```python
    train, val = split_stems(ds)
    train_ds = make_dataset(ds, train, input_size=(256, 256), aug_strength=0.5, batch_size=8)
    val_ds = make_dataset(ds, val, input_size=(256, 256), batch_size=8, training=False)
    ```
    """
    import tensorflow as tf

    input_size = _check_input_size(input_size)
    crop_scale = _check_policy_and_crop_scale(policy, crop_scale)
    strength = check_strength(aug_strength)
    rare_crops = check_fraction("rare_crops", rare_crops)
    if batch_size is not None:
        batch_size = _check_positive_int("batch_size", batch_size)
    stems = _check_stems(dataset, stems)
    sizes = image_sizes(dataset, stems)  # fail here, not inside a tf.data worker
    shuffle = training if shuffle is None else bool(shuffle)
    tiling = policy == "crop" and not training

    def prepare(index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = load_example(dataset, stems[index])
        if policy == "resize":
            size = input_size
        else:
            size = scaled_size(image.shape[0], image.shape[1], crop_scale)
        return resize_image(image, size), resize_mask(mask, size)

    use_cache = False
    if cache:
        use_cache = _cache_fits(dataset, sizes, policy, input_size, crop_scale, cache_max_bytes)
    store = _ExampleStore(prepare, use_cache)

    indices = tf.data.Dataset.range(len(stems))
    if shuffle:
        indices = indices.shuffle(len(stems), seed=seed, reshuffle_each_iteration=True)
    if tiling:
        tiles = _tiles_function(store, input_size, dataset.ignore_index)
        ds = _map_tiles(indices, tiles, sizes, input_size, crop_scale, dataset.channels)
    else:
        sampler = None
        if policy == "crop" and training:
            classes = rare_classes(class_pixel_fraction(dataset)) if rare_crops > 0 else []
            sampler = CropSampler(input_size, classes, rare_crops, cache=use_cache)
        example = _example_function(
            store, input_size, dataset.ignore_index, sampler=sampler, training=training,
            strength=strength,
        )
        ds = _map_examples(indices, example, seed, input_size, dataset.channels)
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=False)
    if repeat:
        if tiling:
            raise ConfigError("repeat=True needs a known number of examples per pass; "
                              "tiled validation (policy 'crop', training=False) has not.")
        ds = ds.repeat()
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(pipeline_options())
    # tf.numpy_function ties its Python function to the global graph, so the function (and
    # the store it closes over) outlives the dataset; empty the cache when the dataset goes.
    weakref.finalize(ds, store.close)
    return ds


def pipeline_options():
    """`tf.data.Options` of every autoseg pipeline: model-based autotuning off (see the
    module's docstring: deleting an iterator otherwise waits up to a minute)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def _check_policy_and_crop_scale(policy: str, crop_scale: object) -> float:
    """Checks `policy` and returns `crop_scale` as a float in (0, 4]."""
    if policy not in POLICIES:
        raise ConfigError(f"Unknown policy {policy!r}. Valid policies: {', '.join(POLICIES)}.")
    if (
        isinstance(crop_scale, bool)
        or not isinstance(crop_scale, numbers.Real)
        or not math.isfinite(float(crop_scale))
        or not 0.0 < float(crop_scale) <= 4.0
    ):
        raise ConfigError(
            f"crop_scale must be a number in (0, 4]. Received: crop_scale={crop_scale!r}."
        )
    return float(crop_scale)


def _check_stems(dataset: Dataset, stems: Sequence[str]) -> list[str]:
    """`stems` as strings, after checking there is one and that each names an image."""
    stems = [str(s) for s in stems]
    if not stems:
        raise ConfigError("make_dataset needs at least one image stem. Received: stems=[].")
    unknown = [s for s in stems if s not in dataset.images]
    if unknown:
        raise DatasetError(
            f"{dataset.root}: no image for stem(s) {unknown[:10]} in images/."
        )
    return stems


def _cache_fits(
    dataset: Dataset,
    sizes: Sequence[tuple[int, int]],
    policy: str,
    input_size: tuple[int, int],
    crop_scale: float,
    cache_max_bytes: int | None,
) -> bool:
    """True when the prepared examples fit the cache budget; logs the sizes when not."""
    budget = default_cache_max_bytes() if cache_max_bytes is None else int(cache_max_bytes)
    needed = _cache_bytes(sizes, policy, input_size, crop_scale, _pixel_bytes(dataset))
    fits = needed <= budget
    if not fits:
        logger.info(
            "Not caching %d images: they need %.1f MiB, over the %.1f MiB budget; "
            "decoding them each epoch instead.",
            len(sizes), needed / 2**20, budget / 2**20,
        )
    return fits


def _example_function(
    store: _ExampleStore,
    input_size: tuple[int, int],
    ignore_index: int,
    *,
    sampler: CropSampler | None,
    training: bool,
    strength: float,
) -> Callable[[Any, Any], tuple[np.ndarray, np.ndarray]]:
    """`example(index, example_seed)`: one `(image, mask)`, cropped where `sampler` says
    (policy "crop", training) and augmented when training; what `tf.numpy_function` runs for
    non-tiled pipelines."""
    height, width = input_size
    # An albumentations Compose is not thread-safe: one per tf.data worker thread. A dict
    # keyed by thread id, not a threading.local: tf.numpy_function runs on threads whose
    # locals do not persist, and rebuilding the Compose tripled the per-image cost.
    augmentations: dict[int, Any] = {}

    def augmentation():
        key = threading.get_ident()
        compose = augmentations.get(key)
        if compose is None:
            compose = augmentations[key] = build_augmentation(
                strength, input_size=input_size, ignore_index=ignore_index
            )
        return compose

    def example(index, example_seed):
        image, mask = store.get(int(index))
        rng = np.random.default_rng(int(example_seed) & 0xFFFFFFFFFFFFFFFF)
        if sampler is not None:
            y, x = sampler.origin(int(index), mask, rng)
            image = crop_with_fill(image, y, x, height, width, 0)
            mask = crop_with_fill(mask, y, x, height, width, ignore_index)
        if training and strength > 0:
            compose = augmentation()
            reseed(compose, int(rng.integers(2**63)))
            if image.dtype == np.float32:  # albumentations' float images are 0..1
                out = compose(image=image * np.float32(1 / 255), mask=mask)
                image, mask = out["image"] * np.float32(255), out["mask"]
            else:
                out = compose(image=image, mask=mask)
                image, mask = out["image"], out["mask"]
        return image.astype(np.float32), mask.astype(np.int32)

    return example


def _tiles_function(
    store: _ExampleStore, input_size: tuple[int, int], ignore_index: int
) -> Callable[[Any], tuple[np.ndarray, np.ndarray]]:
    """`tiles(index)`: the validation tiles of one example, stacked, with the mask set to
    `ignore_index` where a pixel belongs to an earlier tile or lies outside the image."""
    height, width = input_size

    def tiles(index):
        image, mask = store.get(int(index))
        h, w = mask.shape
        positions = tile_positions(h, w, height, width)
        owned = tile_ownership(positions, h, w, height, width)
        mask_tiles = extract_tiles(mask, positions, height, width, ignore_index)
        mask_tiles[~owned] = ignore_index
        image_tiles = extract_tiles(image, positions, height, width, 0)
        return image_tiles.astype(np.float32), mask_tiles.astype(np.int32)

    return tiles


def _map_tiles(
    indices,
    tiles: Callable[[Any], tuple[np.ndarray, np.ndarray]],
    sizes: Sequence[tuple[int, int]],
    input_size: tuple[int, int],
    crop_scale: float,
    channels: int,
):
    """Maps image indices to their validation tiles, one element per tile, with the tile
    count declared as the dataset's cardinality."""
    import tensorflow as tf

    height, width = input_size

    def load(index):
        image, mask = tf.numpy_function(tiles, [index], [tf.float32, tf.int32])
        image.set_shape([None, height, width, channels])
        mask.set_shape([None, height, width])
        return image, mask

    ds = indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # The tile count is known from the headers: telling tf.data lets Keras count the
    # validation steps (instead of warning that the input "ran out of data").
    tile_count = sum(
        len(tile_positions(*scaled_size(h, w, crop_scale), height, width)) for h, w in sizes
    )
    return ds.unbatch().apply(tf.data.experimental.assert_cardinality(tile_count))


def _map_examples(
    indices,
    example: Callable[[Any, Any], tuple[np.ndarray, np.ndarray]],
    seed: int,
    input_size: tuple[int, int],
    channels: int,
):
    """Maps image indices, each paired with a seed from `tf.data.Dataset.random(seed)`, to
    one `(image, mask)` example each."""
    import tensorflow as tf

    height, width = input_size

    def load(index, example_seed):
        image, mask = tf.numpy_function(
            example, [index, example_seed], [tf.float32, tf.int32]
        )
        image.set_shape([height, width, channels])
        mask.set_shape([height, width])
        return image, mask

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip(indices, seeds)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
