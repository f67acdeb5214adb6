"""Where a training crop falls: uniformly, or over a pixel of a rare class.

Random crops of a photo rarely hold its rare classes: on CWFID (half-size photos, 256²
crops) carrots are 1.6 % of the pixels, and a uniform crop misses them often enough that
the model sees few. nnU-Net therefore centres a third of its training patches on a voxel of
a foreground class present in the case (`oversample_foreground_percent = 0.33`). autoseg
does the same for the `crop` policy, with "foreground" read from the data, since a class
index 0 need not be background: a class is **rare** when it holds some labelled pixels of
the training set but less than an equal share of them (`1 / num_classes`).

With probability `rare_crops`, a crop is placed so that it holds one pixel of a rare class:
the class is drawn uniformly among the rare classes present in the photo, the pixel
uniformly among that class's pixels (at most `MAX_LOCATIONS` per class are kept), and the
crop's origin uniformly among those whose crop holds the pixel and stays inside the photo
(the pixel is not always at the centre). Otherwise, and for photos without a rare class, the
origin is uniform as before.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Pixel locations kept per class and photo (a random subset beyond it): bounds the memory
#: of the location cache at 16 KiB per rare class and photo.
MAX_LOCATIONS = 4096


def rare_classes(fraction: Sequence[float]) -> list[int]:
    """The classes holding some pixels but less than an equal share (`1 / len(fraction)`).

    Example: CWFID's `[0.917, 0.016, 0.067]` (soil, crop, weed) -> `[1, 2]`.
    """
    fraction = np.asarray(fraction, np.float64)
    share = 1.0 / max(len(fraction), 1)
    return [int(c) for c in np.flatnonzero((fraction > 0) & (fraction < share))]


def uniform_origin(shape: tuple[int, int], crop: tuple[int, int],
                   rng: np.random.Generator) -> tuple[int, int]:
    """A uniform crop origin; negative when the photo is smaller than the crop (padding)."""
    (h, w), (height, width) = shape, crop
    y = int(rng.integers(min(0, h - height), max(0, h - height) + 1))
    x = int(rng.integers(min(0, w - width), max(0, w - width) + 1))
    return y, x


def origin_holding(pixel: tuple[int, int], shape: tuple[int, int], crop: tuple[int, int],
                   rng: np.random.Generator) -> tuple[int, int]:
    """A uniform origin among those whose crop holds `pixel` and stays inside the photo
    (along an axis where the photo is smaller than the crop, the uniform padded origin)."""
    origin = []
    for p, size, length in zip(pixel, shape, crop):
        lo, hi = min(0, size - length), max(0, size - length)  # the origins a crop may take
        lo, hi = max(lo, p - length + 1), min(hi, p)
        origin.append(int(rng.integers(lo, hi + 1)))
    return origin[0], origin[1]


class CropSampler:
    """`origin(index, mask, rng)` -> the `(y, x)` of one training crop of photo `index`.

    Args:
        crop: `(height, width)` of the crops.
        classes: The rare classes (`rare_classes`); empty turns the sampler uniform.
        probability: The share of crops placed over a rare pixel, in [0, 1].
        cache: Keep each photo's rare-pixel locations after their first use (when the
            prepared photos are cached too: the masks must not change between calls).
    """

    def __init__(self, crop: tuple[int, int], classes: Sequence[int], probability: float,
                 cache: bool = True):
        if not 0.0 <= float(probability) <= 1.0:
            raise ValueError(f"probability must be in [0, 1]. Received: probability={probability!r}.")
        self.crop = (int(crop[0]), int(crop[1]))
        self.classes = np.asarray(sorted(set(int(c) for c in classes)), np.int64)
        self.probability = float(probability) if len(self.classes) else 0.0
        self._locations: dict[int, dict[int, np.ndarray]] | None = {} if cache else None

    def locations(self, index: int, mask: np.ndarray) -> dict[int, np.ndarray]:
        """Rare class -> flat pixel indices in `mask` (at most `MAX_LOCATIONS`, a fixed
        random subset per photo); classes absent from the photo are left out."""
        cached = None if self._locations is None else self._locations.get(index)
        if cached is not None:
            return cached
        flat = mask.ravel()
        present = np.intersect1d(self.classes, np.unique(flat), assume_unique=True)
        rng = np.random.default_rng(index)
        found = {}
        for c in present:
            where = np.flatnonzero(flat == c)
            if len(where) > MAX_LOCATIONS:
                where = np.sort(rng.choice(where, MAX_LOCATIONS, replace=False))
            found[int(c)] = where.astype(np.int64)
        if self._locations is not None:
            self._locations[index] = found
        return found

    def origin(self, index: int, mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        shape = mask.shape[:2]
        if self.probability > 0 and rng.random() < self.probability:
            found = self.locations(index, mask)
            if found:
                where = found[list(found)[int(rng.integers(len(found)))]]
                y, x = divmod(int(where[int(rng.integers(len(where)))]), shape[1])
                return origin_holding((y, x), shape, self.crop, rng)
        return uniform_origin(shape, self.crop, rng)
