"""Augmentation: strength scaling, label safety, image/mask alignment, seeding."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoseg.data.augment import (
    build_augmentation,
    geometric_transforms,
    photometric_transforms,
    reseed,
)
from autoseg.errors import ConfigError

# Sparse labels: an interpolated mask would show values between them (e.g. 1 or 100).
LABELS = (0, 3, 7, 200, 255)


def _by_type(compose):
    found = {}
    for t in compose.transforms:
        found[type(t).__name__] = t
        if isinstance(t, A.OneOf):
            for inner in t.transforms:
                found[type(inner).__name__] = inner
    return found


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_strength_outside_unit_interval_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"aug_strength.*\[0, 1\].*Received: aug_strength="):
        build_augmentation(bad)


def test_strength_zero_is_no_augmentation():
    assert build_augmentation(0.0) is None
    assert build_augmentation(0) is None
    assert geometric_transforms(0.0) == [] and photometric_transforms(0.0) == []


def test_every_transform_family_is_present_and_grows_with_strength():
    weak, strong = _by_type(build_augmentation(0.2)), _by_type(build_augmentation(1.0))
    expected = {
        "HorizontalFlip", "VerticalFlip", "RandomRotate90", "Affine", "OneOf",
        "GaussianBlur", "MotionBlur", "RandomBrightnessContrast", "HueSaturationValue",
    }
    assert expected <= set(weak) and expected <= set(strong)
    for name in expected - {"GaussianBlur", "MotionBlur"}:  # those two sit inside OneOf
        assert weak[name].p < strong[name].p, name
    assert strong["Affine"].p == pytest.approx(0.75)
    assert weak["Affine"].rotate == pytest.approx((-9.0, 9.0))
    assert strong["Affine"].rotate == pytest.approx((-45.0, 45.0))
    assert strong["Affine"].scale["x"] == pytest.approx((0.7, 1.3))
    assert strong["RandomBrightnessContrast"].brightness_limit == pytest.approx((-0.3, 0.3))
    assert weak["RandomBrightnessContrast"].brightness_limit == pytest.approx((-0.06, 0.06))
    assert weak["MotionBlur"].blur_limit[1] < strong["MotionBlur"].blur_limit[1] == 7


def test_affine_fills_mask_with_ignore_and_uses_nearest():
    affine = _by_type(build_augmentation(0.5))["Affine"]
    assert affine.mask_interpolation == cv2.INTER_NEAREST
    assert affine.fill == 0 and affine.fill_mask == 255
    assert affine.border_mode == cv2.BORDER_CONSTANT


def test_non_square_inputs_skip_90_degree_rotations_and_keep_their_shape():
    aug = build_augmentation(1.0, seed=0, input_size=(24, 40))
    assert "RandomRotate90" not in _by_type(aug)
    image = np.zeros((24, 40, 3), np.uint8)
    mask = np.zeros((24, 40), np.uint8)
    for seed in range(100):
        reseed(aug, seed)
        out = aug(image=image, mask=mask)
        assert out["image"].shape == (24, 40, 3) and out["mask"].shape == (24, 40)


def test_same_seed_same_result_and_different_seeds_differ():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (32, 32), dtype=np.uint8)
    first = build_augmentation(0.8, seed=5)(image=image, mask=mask)
    second = build_augmentation(0.8, seed=5)(image=image, mask=mask)
    np.testing.assert_array_equal(first["image"], second["image"])
    np.testing.assert_array_equal(first["mask"], second["mask"])
    aug = build_augmentation(0.8)
    outputs = set()
    for seed in range(8):
        reseed(aug, seed)
        outputs.add(aug(image=image, mask=mask)["image"].tobytes())
    assert len(outputs) > 4


def test_transforms_draw_independently():
    # albumentations' Compose(seed=s) seeds each transform with s, so two flips of equal
    # probability always fire together; reseed shares one stream instead.
    image = np.arange(4, dtype=np.uint8).reshape(2, 2)
    flips = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    outcomes = set()
    for seed in range(40):
        reseed(flips, seed)
        outcomes.add(flips(image=image)["image"].tobytes())
    assert len(outcomes) == 4  # none, h, v, both


masks = st.tuples(
    st.integers(8, 40),
    st.integers(8, 40),
    st.lists(st.sampled_from(LABELS), min_size=1, max_size=5),
    st.integers(0, 2**31 - 1),
).map(
    lambda t: np.random.default_rng(t[3])
    .choice(np.array(t[2], np.uint8), size=(t[0], t[1]))
    # blocks of 4x4 so regions are larger than a pixel, as in real masks
    .repeat(4, axis=0)
    .repeat(4, axis=1)
)


@settings(max_examples=60, deadline=None)
@given(mask=masks, strength=st.floats(0.05, 1.0), seed=st.integers(0, 2**31 - 1))
def test_augmentation_never_invents_a_label(mask, strength, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, mask.shape + (3,), dtype=np.uint8)
    aug = build_augmentation(strength, seed=seed, input_size=mask.shape)
    out = aug(image=image, mask=mask)
    assert out["mask"].dtype == np.uint8
    assert out["mask"].shape == mask.shape
    assert out["image"].shape == image.shape
    assert set(np.unique(out["mask"])) <= set(np.unique(mask)) | {255}


# Every label has its own colour; 255 (ignore in the input) has one too. Fill is black.
COLOURS = {
    0: (10, 80, 30), 3: (200, 20, 20), 7: (20, 20, 200), 200: (250, 250, 10), 255: (90, 90, 90)
}


@settings(max_examples=60, deadline=None)
@given(mask=masks, strength=st.floats(0.05, 1.0), seed=st.integers(0, 2**31 - 1))
def test_geometric_transforms_keep_image_and_mask_aligned(mask, strength, seed):
    # Nearest-neighbour for the image too, so every output pixel is a copy of an input pixel
    # and its colour must name the label the mask holds there.
    lut = np.zeros((256, 3), np.uint8)
    for label, colour in COLOURS.items():
        lut[label] = colour
    image = lut[mask]
    aug = A.Compose(
        geometric_transforms(strength, input_size=mask.shape, interpolation=cv2.INTER_NEAREST)
    )
    reseed(aug, seed)
    out = aug(image=image, mask=mask)
    out_image, out_mask = out["image"], out["mask"]
    labelled = out_mask != 255
    np.testing.assert_array_equal(out_image[labelled], lut[out_mask[labelled]])
    ignored = out_image[~labelled]
    is_fill = (ignored == 0).all(axis=1)
    is_ignore_colour = (ignored == COLOURS[255]).all(axis=1)
    assert (is_fill | is_ignore_colour).all()


@settings(max_examples=30, deadline=None)
@given(mask=masks, strength=st.floats(0.05, 1.0), seed=st.integers(0, 2**31 - 1))
def test_photometric_transforms_leave_the_mask_alone(mask, strength, seed):
    image = np.random.default_rng(seed).integers(0, 256, mask.shape + (3,), dtype=np.uint8)
    aug = A.Compose(photometric_transforms(strength))
    reseed(aug, seed)
    np.testing.assert_array_equal(aug(image=image, mask=mask)["mask"], mask)
