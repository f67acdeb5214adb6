"""Training augmentation driven by one `aug_strength` in [0, 1].

Every probability and magnitude grows linearly with the strength, so the search has one
hyperparameter to tune instead of a dozen. Geometric transforms move image and mask together:
the image is interpolated bilinearly and filled with 0, the mask is interpolated with nearest
neighbour and filled with `ignore_index` (255), so augmentation never invents a class: a mask
comes out with only the values it went in with, plus 255 where pixels were moved in from
outside the picture. Photometric transforms (blur, brightness, contrast, hue, saturation)
touch the image only.

albumentations 2.0.8 seeds every transform of a `Compose(seed=s)` with the same `s`, which
makes transforms with equal probabilities fire together (a horizontal flip would always come
with a vertical one). `build_augmentation` therefore gives all transforms one shared pair of
generators; `reseed` does the same for one example at a time.
"""

from __future__ import annotations

import math
import numbers
import random

import albumentations as A
import cv2
import numpy as np

from autoseg.data.dataset import IGNORE_INDEX
from autoseg.errors import ConfigError


def check_strength(strength: float) -> float:
    """Returns `strength` as a float after checking it lies in [0, 1].

    Raises:
        ConfigError: `strength` is not a finite number in [0, 1].
    """
    return check_fraction("aug_strength", strength, "0 = no augmentation, 1 = strongest")


def check_fraction(name: str, value: object, meaning: str = "") -> float:
    """Returns the option `name`'s `value` as a float after checking it lies in [0, 1];
    `meaning` explains the ends in the error message.

    Raises:
        ConfigError: `value` is not a finite number in [0, 1].
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or not 0.0 <= float(value) <= 1.0
    ):
        raise ConfigError(
            f"{name} must be a number in [0, 1]{f' ({meaning})' if meaning else ''}. "
            f"Received: {name}={value!r}."
        )
    return float(value)


def geometric_transforms(
    strength: float,
    *,
    input_size: tuple[int, int] | None = None,
    interpolation: int = cv2.INTER_LINEAR,
    ignore_index: int = IGNORE_INDEX,
) -> list[A.BasicTransform]:
    """The transforms that move pixels: flips, 90-degree rotations, rotation, scale, shift.

    Args:
        strength: In [0, 1]; 0 returns no transform.
        input_size: `(height, width)` of the images to augment. 90-degree rotations swap
            height and width, so they are left out when the size is known and not square
            (180 degrees is still reached through the two flips). Defaults to None (square
            or unknown: 90-degree rotations included).
        interpolation: OpenCV interpolation of the image. Defaults to bilinear; masks are
            always nearest-neighbour.
        ignore_index: The mask value of pixels moved in from outside. Defaults to 255.

    Returns:
        A list of albumentations transforms.
    """
    s = check_strength(strength)
    if s == 0.0:
        return []
    transforms: list[A.BasicTransform] = [
        A.HorizontalFlip(p=0.5 * s),
        A.VerticalFlip(p=0.5 * s),
    ]
    if input_size is None or input_size[0] == input_size[1]:
        transforms.append(A.RandomRotate90(p=0.5 * s))
    transforms.append(
        A.Affine(
            scale=(1.0 - 0.3 * s, 1.0 + 0.3 * s),
            translate_percent=(-0.1 * s, 0.1 * s),
            rotate=(-45.0 * s, 45.0 * s),
            interpolation=interpolation,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=ignore_index,
            p=0.75 * s,
        )
    )
    return transforms


def photometric_transforms(strength: float) -> list[A.BasicTransform]:
    """The image-only transforms: blur, brightness/contrast, hue/saturation.

    Args:
        strength: In [0, 1]; 0 returns no transform.

    Returns:
        A list of albumentations transforms that leave masks untouched.
    """
    s = check_strength(strength)
    if s == 0.0:
        return []
    largest_kernel = 3 + 2 * round(2 * s)  # odd: 3, 5 or 7
    return [
        A.OneOf(
            [
                A.GaussianBlur(
                    blur_limit=(3, largest_kernel), sigma_limit=(0.1, max(0.2, 2.0 * s))
                ),
                A.MotionBlur(blur_limit=(3, largest_kernel)),
            ],
            p=0.3 * s,
        ),
        A.RandomBrightnessContrast(
            brightness_limit=0.3 * s, contrast_limit=0.3 * s, p=0.6 * s
        ),
        A.HueSaturationValue(
            hue_shift_limit=10.0 * s, sat_shift_limit=25.0 * s, val_shift_limit=0.0, p=0.5 * s
        ),
    ]


def build_augmentation(
    strength: float,
    seed: int | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> A.Compose | None:
    """Builds the training augmentation for one strength.

    Args:
        strength: In [0, 1]. Probabilities and magnitudes of every transform scale with it;
            0 means no augmentation at all.
        seed: Seeds the augmentation's random stream. Defaults to None (unseeded).
        input_size: `(height, width)` of the images; see `geometric_transforms`. Defaults
            to None.
        ignore_index: The mask fill value. Defaults to 255.

    Returns:
        An `albumentations.Compose` called as `aug(image=uint8 HxWx3, mask=uint8 HxW)`, or
        None at strength 0 (the identity).

    Raises:
        ConfigError: `strength` is not in [0, 1].

    Example:
    ```python
    aug = build_augmentation(0.5, seed=0)
    out = aug(image=image, mask=mask)
    image, mask = out["image"], out["mask"]
    ```
    """
    s = check_strength(strength)
    if s == 0.0:
        return None
    compose = A.Compose(
        geometric_transforms(s, input_size=input_size, ignore_index=ignore_index)
        + photometric_transforms(s)
    )
    reseed(compose, seed)
    return compose


def reseed(compose: A.Compose, seed: int | None) -> None:
    """Gives every transform of `compose` one shared random stream started from `seed`.

    Calling it before each example with a per-example seed makes the result depend on that
    seed only, whichever thread runs it and in whatever order.
    """
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
