"""Rare-class crops: where training crops fall, alone and through `make_dataset`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from autoseg.data import rare_crops
from autoseg.data.pipeline import make_dataset
from autoseg.data.rare_crops import CropSampler, origin_holding, rare_classes, uniform_origin
from autoseg.errors import ConfigError
from autoseg.search_space import validate_space

from test_pipeline import write_dataset


def test_rare_classes_are_those_under_an_equal_share_with_some_pixels():
    assert rare_classes([0.917, 0.016, 0.067]) == [1, 2]  # CWFID: soil, crop, weed
    assert rare_classes([0.5, 0.5]) == []
    assert rare_classes([0.9, 0.0, 0.1]) == [2]  # an absent class cannot be sampled
    # 11 classes: the share is 1/11 ~ 0.091
    fractions = [0.2, 0.25, 0.15, 0.1, 0.092, 0.09, 0.05, 0.03, 0.02, 0.015, 0.003]
    assert rare_classes(fractions) == [5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize("shape, crop", [((40, 60), (16, 24)), ((10, 60), (16, 24)),
                                         ((16, 24), (16, 24))])
def test_origin_holding_holds_the_pixel_and_stays_inside(shape, crop):
    rng = np.random.default_rng(0)
    origins = set()
    for _ in range(400):
        pixel = (int(rng.integers(shape[0])), int(rng.integers(shape[1])))
        y, x = origin_holding(pixel, shape, crop, rng)
        assert y <= pixel[0] < y + crop[0] and x <= pixel[1] < x + crop[1]
        for start, size, length in ((y, shape[0], crop[0]), (x, shape[1], crop[1])):
            if size >= length:
                assert 0 <= start <= size - length  # inside the photo
            else:
                assert size - length <= start <= 0  # the photo inside the padded crop
        origins.add((y, x))
    assert len(origins) > 1 or shape == crop


def test_the_pixel_is_not_always_at_the_centre():
    rng = np.random.default_rng(0)
    offsets = {20 - origin_holding((20, 30), (100, 100), (16, 16), rng)[0] for _ in range(200)}
    assert offsets == set(range(16))


def blob_mask(shape=(64, 96), at=(50, 80), size=3, cls=1) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[at[0]:at[0] + size, at[1]:at[1] + size] = cls
    return mask


def holds(mask, origin, crop, cls=1) -> bool:
    y, x = origin
    return bool((mask[max(y, 0):y + crop[0], max(x, 0):x + crop[1]] == cls).any())


def test_sampler_places_its_share_of_crops_over_a_rare_pixel():
    mask, crop = blob_mask(), (16, 16)
    rng = np.random.default_rng(1)
    hit = {p: np.mean([holds(mask, CropSampler(crop, [1], p).origin(0, mask, rng), crop)
                       for _ in range(600)]) for p in (0.0, 0.33, 1.0)}
    assert hit[1.0] == 1.0
    # uniform: a 16x16 crop holds the 3x3 blob from (18 x 18) of the (49 x 81) origins
    assert 0.05 < hit[0.0] < 0.14
    assert hit[0.0] + 0.2 < hit[0.33] < 0.33 + hit[0.0] + 0.08


def test_sampler_draws_the_class_uniformly_among_those_present():
    mask = blob_mask(size=2, cls=1)
    mask[:30, :40] = 2  # class 2 has far more pixels than class 1
    sampler, rng, crop = CropSampler((8, 8), [1, 2, 3], 1.0), np.random.default_rng(2), (8, 8)
    ones = np.mean([holds(mask, sampler.origin(0, mask, rng), crop, 1) for _ in range(400)])
    assert 0.4 < ones < 0.6  # about half the crops go to class 1 despite its 4 pixels


def test_sampler_without_a_rare_class_in_the_photo_is_uniform_and_consumes_the_same_draws():
    mask = np.zeros((40, 60), np.uint8)
    sampler = CropSampler((16, 16), [1], 1.0)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert sampler.origin(0, mask, a) == (lambda: (b.random(), uniform_origin((40, 60), (16, 16), b))[1])()
    # probability 0 (or no rare class at all) draws exactly what the old uniform crop drew
    for sampler in (CropSampler((16, 16), [1], 0.0), CropSampler((16, 16), [], 1.0)):
        a, b = np.random.default_rng(7), np.random.default_rng(7)
        assert [sampler.origin(0, blob_mask(), a) for _ in range(20)] == \
               [uniform_origin((64, 96), (16, 16), b) for _ in range(20)]


def test_locations_are_bounded_cached_and_only_when_asked(monkeypatch):
    monkeypatch.setattr(rare_crops, "MAX_LOCATIONS", 50)
    mask = blob_mask(size=20)  # 400 pixels of class 1
    cached = CropSampler((8, 8), [1, 2], 1.0, cache=True)
    found = cached.locations(3, mask)
    assert list(found) == [1] and len(found[1]) == 50
    assert (mask.ravel()[found[1]] == 1).all()
    assert cached.locations(3, np.zeros_like(mask)) is found  # the photo's first answer
    uncached = CropSampler((8, 8), [1, 2], 1.0, cache=False)
    uncached.locations(3, mask)
    assert uncached.locations(3, np.zeros_like(mask)) == {}


def test_sampler_rejects_a_share_outside_0_1():
    with pytest.raises(ValueError, match="probability"):
        CropSampler((8, 8), [1], 1.5)


def write_rare_dataset(root):
    """Four 64x96 photos of background with one 3x3 crop blob each (crop ~0.15 % of
    pixels, weed absent)."""
    masks = [blob_mask(at=(5 + 12 * i, 10 + 20 * i)) for i in range(4)]
    return write_dataset(root, masks)


def crop_hit_rate(ds, rare_share, seeds=range(6)) -> float:
    hits = []
    for seed in seeds:
        for _, mask in make_dataset(ds, ds.stems, input_size=(16, 16), policy="crop",
                                    rare_crops=rare_share, seed=seed):
            hits.append(bool((mask.numpy() == 1).any()))
    return float(np.mean(hits))


def test_make_dataset_rare_crops_show_the_rare_class(tmp_path):
    ds = write_rare_dataset(tmp_path / "d")
    always, never = crop_hit_rate(ds, 1.0), crop_hit_rate(ds, 0.0)
    assert always == 1.0
    assert never < 0.3


def test_make_dataset_rare_crops_leave_validation_and_resize_alone(tmp_path):
    ds = write_rare_dataset(tmp_path / "d")
    for kwargs in (dict(policy="crop", training=False), dict(policy="resize")):
        a = [m.numpy() for _, m in make_dataset(ds, ds.stems, input_size=(16, 16), seed=3,
                                                rare_crops=1.0, **kwargs)]
        b = [m.numpy() for _, m in make_dataset(ds, ds.stems, input_size=(16, 16), seed=3,
                                                **kwargs)]
        assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "half"])
def test_make_dataset_rejects_a_bad_rare_crops(tmp_path, bad):
    ds = write_rare_dataset(tmp_path / "d")
    with pytest.raises(ConfigError, match="rare_crops"):
        make_dataset(ds, ds.stems, input_size=(16, 16), policy="crop", rare_crops=bad)


def test_search_space_validates_rare_crops():
    space = validate_space({"models": {"unet": {}}}, "s.yaml")
    assert space.params["rare_crops"] == 0.0  # a user's space without the key: uniform
    assert validate_space({"models": {"unet": {}}, "rare_crops": [0.0, 0.5]}, "s.yaml") \
        .params["rare_crops"] == [0.0, 0.5]
    with pytest.raises(ConfigError, match=r"s.yaml: rare_crops values must be numbers in \[0, 1\]"):
        validate_space({"models": {"unet": {}}, "rare_crops": 2}, "s.yaml")
