"""The tf.data pipeline: shapes and values for both policies, tiling, splits, cache, weights."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from autoseg.data import pipeline
from autoseg.data.dataset import load_dataset
from autoseg.data.pipeline import (
    class_pixel_fraction,
    class_weights,
    extract_tiles,
    make_dataset,
    read_image,
    read_mask,
    resize_image,
    resize_mask,
    scaled_size,
    split_stems,
    stitch,
    tile_ownership,
    tile_positions,
)
from autoseg.errors import ConfigError, DatasetError

# Class colours of the "colour-coded" datasets: an image pixel names its mask's class.
LUT = np.zeros((256, 3), np.uint8)
LUT[:3] = [(10, 80, 30), (40, 200, 40), (220, 40, 40)]


def write_dataset(root, masks, *, images=None, splits=None, fingerprint=None):
    """A canonical dataset from explicit masks; images default to the masks' class colours."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, mask in enumerate(masks):
        image = LUT[mask] if images is None else images[i]
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"im{i}.png")
    meta = {"classes": ["background", "crop", "weed"], "ignore_index": 255}
    if splits:
        meta["splits"] = splits
    if fingerprint:
        meta["fingerprint"] = fingerprint
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return load_dataset(root)


def random_masks(n, size, seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    # 4x4 blocks so that regions are wider than a pixel
    return [
        rng.integers(0, 3, ((h + 3) // 4, (w + 3) // 4)).repeat(4, 0).repeat(4, 1)[:h, :w]
        .astype(np.uint8)
        for _ in range(n)
    ]


def collect(ds):
    return [(image.numpy(), mask.numpy()) for image, mask in ds]


def assert_same_tensors(first, second):
    assert len(first) == len(second)
    for (image_a, mask_a), (image_b, mask_b) in zip(first, second):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(mask_a, mask_b)


@pytest.fixture
def tiny(tiny_dataset):
    return load_dataset(tiny_dataset)  # 6 images, 48x64, classes 0..2


# ------------------------------------------------------------------ shapes, dtypes, values


@pytest.mark.parametrize("policy", ["resize", "crop"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "val"])
def test_examples_have_the_documented_shapes_dtypes_and_ranges(tiny, policy, training):
    ds = make_dataset(
        tiny, tiny.stems, input_size=(32, 40), policy=policy, crop_scale=0.75,
        aug_strength=0.7, training=training,
    )
    examples = collect(ds)
    # resize: one per image. crop: one crop per image when training; tiles of the 36x48
    # scaled image when validating (2 rows x 2 columns of 32x40).
    expected = 6 if training or policy == "resize" else 6 * len(tile_positions(36, 48, 32, 40))
    assert len(examples) == expected
    for image, mask in examples:
        assert image.shape == (32, 40, 3) and image.dtype == np.float32
        assert mask.shape == (32, 40) and mask.dtype == np.int32
        assert 0.0 <= image.min() and image.max() <= 255.0
        assert set(np.unique(mask)) <= {0, 1, 2, 255}
    # raw pixel values, not [0, 1]: the soil colour (~120) is there
    assert max(image.max() for image, _ in examples) > 100


def test_batches_keep_the_last_partial_batch(tiny):
    batches = collect(make_dataset(tiny, tiny.stems, input_size=(32, 32), batch_size=4))
    assert [image.shape for image, _ in batches] == [(4, 32, 32, 3), (2, 32, 32, 3)]
    assert [mask.shape for _, mask in batches] == [(4, 32, 32), (2, 32, 32)]


def test_resize_validation_is_the_resized_photo_and_nearest_mask(tiny):
    examples = collect(make_dataset(tiny, tiny.stems, input_size=(24, 40), training=False))
    for stem, (image, mask) in zip(tiny.stems, examples):
        np.testing.assert_array_equal(
            image, resize_image(read_image(tiny.image_path(stem)), (24, 40)).astype(np.float32)
        )
        np.testing.assert_array_equal(mask, resize_mask(read_mask(tiny.mask_path(stem)), (24, 40)))


def test_resize_interpolates_images_but_never_masks():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 3:] = 200
    assert set(np.unique(resize_image(image, (4, 6)))) > {0, 200}  # a blended column
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 3:] = 7
    for size in [(4, 6), (5, 5), (16, 13)]:
        assert set(np.unique(resize_mask(mask, size))) == {0, 7}


# ------------------------------------------------------------------ strength 0 is identity


def test_resize_strength_zero_is_the_unaugmented_pipeline(tiny):
    plain = collect(make_dataset(tiny, tiny.stems, input_size=(32, 32), training=False))
    identity = collect(make_dataset(
        tiny, tiny.stems, input_size=(32, 32), training=True, aug_strength=0.0, shuffle=False
    ))
    assert_same_tensors(plain, identity)
    augmented = collect(make_dataset(
        tiny, tiny.stems, input_size=(32, 32), training=True, aug_strength=1.0, shuffle=False
    ))
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(plain, augmented))


def test_crop_strength_zero_is_the_unaugmented_pipeline(tiny):
    # The crop is as large as the half-size photo (24x32), so its only position is (0, 0).
    kwargs = dict(input_size=(24, 32), policy="crop", crop_scale=0.5)
    plain = collect(make_dataset(tiny, tiny.stems, training=False, **kwargs))
    identity = collect(make_dataset(tiny, tiny.stems, training=True, shuffle=False, **kwargs))
    assert_same_tensors(plain, identity)
    for stem, (image, _) in zip(tiny.stems, plain):
        photo = read_image(tiny.image_path(stem))
        np.testing.assert_array_equal(image, resize_image(photo, (24, 32)).astype(np.float32))


# ------------------------------------------------------------------ crop policy


def test_training_crops_stay_aligned_and_pad_with_zero_and_ignore(tmp_path):
    ds = write_dataset(tmp_path / "d", random_masks(4, (40, 56)))
    crops = []
    for epoch_seed in (0, 1):
        crops += collect(make_dataset(
            ds, ds.stems, input_size=(48, 32), policy="crop", seed=epoch_seed, shuffle=False
        ))
    for image, mask in crops:
        labelled = mask != 255
        np.testing.assert_array_equal(image[labelled], LUT[mask[labelled]].astype(np.float32))
        assert (image[~labelled] == 0).all()
        # 40 rows in a 48-row crop: 8 rows of padding, anywhere above or below
        assert (~labelled).all(axis=1).sum() == 8
    # the crop windows move: the same photo gives different crops under different seeds
    assert any(not np.array_equal(crops[i][1], crops[i + 4][1]) for i in range(4))


@pytest.mark.parametrize(
    "photo_size, crop_scale", [((50, 70), 1.0), ((20, 20), 1.0), ((64, 90), 0.5)]
)
def test_validation_tiles_score_every_pixel_exactly_once(tmp_path, photo_size, crop_scale):
    ds = write_dataset(tmp_path / "d", random_masks(1, photo_size, seed=3))
    tiles = collect(make_dataset(
        ds, ds.stems, input_size=(32, 32), policy="crop", crop_scale=crop_scale, training=False
    ))
    h, w = scaled_size(*photo_size, crop_scale)
    photo = resize_image(read_image(ds.image_path("im0")), (h, w))
    full_mask = resize_mask(read_mask(ds.mask_path("im0")), (h, w))
    positions = tile_positions(h, w, 32, 32)
    assert len(tiles) == len(positions)
    batched = make_dataset(ds, ds.stems, input_size=(32, 32), policy="crop",
                           crop_scale=crop_scale, training=False, batch_size=2)
    assert int(batched.cardinality()) == -(-len(positions) // 2)  # known to Keras up front
    image_tiles = np.stack([image for image, _ in tiles])
    mask_tiles = np.stack([mask for _, mask in tiles])
    np.testing.assert_array_equal(stitch(image_tiles, positions, h, w), photo)
    counts = np.zeros((h, w))
    for (y, x), mask in zip(positions, mask_tiles):
        counts[y : y + 32, x : x + 32] += (mask != 255)[: h - y, : w - x]
    np.testing.assert_array_equal(counts, np.ones((h, w)))  # each pixel scored once
    labels = np.full((h, w), -1)
    for (y, x), mask in zip(positions, mask_tiles):
        region = mask[: h - y, : w - x]
        labels[y : y + 32, x : x + 32][region != 255] = region[region != 255]
    np.testing.assert_array_equal(labels, full_mask)
    if photo_size == (20, 20):  # smaller than a tile: padded with 0 / ignore
        assert (mask_tiles[0][20:] == 255).all() and (image_tiles[0][:, 20:] == 0).all()


def test_tile_positions_known_values():
    assert tile_positions(5, 7, 4, 4) == [(0, 0), (0, 3), (1, 0), (1, 3)]
    assert tile_positions(8, 8, 4, 4) == [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert tile_positions(10, 4, 4, 4, overlap=2) == [(0, 0), (2, 0), (4, 0), (6, 0)]
    assert tile_positions(3, 3, 4, 4) == [(0, 0)]
    assert tile_positions(4, 9, 4, 4, overlap=1) == [(0, 0), (0, 3), (0, 5)]


@pytest.mark.parametrize(
    "bad", [dict(overlap=4), dict(overlap=-1), dict(tile_h=0), dict(height=2.5)]
)
def test_tile_positions_rejects_bad_arguments(bad):
    args = dict(height=10, width=10, tile_h=4, tile_w=4, overlap=0) | bad
    with pytest.raises(ConfigError, match="Received"):
        tile_positions(**args)


@settings(max_examples=80, deadline=None)
@given(
    h=st.integers(1, 60), w=st.integers(1, 60), th=st.integers(1, 24), tw=st.integers(1, 24),
    overlap=st.integers(0, 23), channels=st.integers(1, 3),
)
def test_extract_then_stitch_is_the_identity(h, w, th, tw, overlap, channels):
    overlap = overlap % min(th, tw)
    array = np.random.default_rng(h * 61 + w).random((h, w, channels)).astype(np.float32)
    positions = tile_positions(h, w, th, tw, overlap)
    for y, x in positions:  # tiles never start outside, and only overhang a too-small side
        assert 0 <= y and 0 <= x
        assert y + th <= h or (y == 0 and h < th)
        assert x + tw <= w or (x == 0 and w < tw)
    tiles = extract_tiles(array, positions, th, tw, fill=-1)
    np.testing.assert_allclose(stitch(tiles, positions, h, w), array, rtol=0, atol=1e-6)
    owned = tile_ownership(positions, h, w, th, tw)
    assert owned.sum() == h * w


def test_stitch_averages_overlapping_scores():
    tiles = np.stack([np.full((2, 3, 2), 1.0), np.full((2, 3, 2), 3.0)])
    out = stitch(tiles, [(0, 0), (0, 2)], 2, 5)
    np.testing.assert_array_equal(out[0, :, 0], [1, 1, 2, 3, 3])
    assert out.shape == (2, 5, 2) and out.dtype == np.float32
    with pytest.raises(ValueError, match="uncovered"):
        stitch(tiles, [(0, 0), (0, 3)], 2, 7)


# ------------------------------------------------------------------ seeding and cache


def test_pipeline_is_reproducible_per_seed_and_varies_per_epoch(tiny):
    def build(seed):
        return make_dataset(
            tiny, tiny.stems, input_size=(32, 32), policy="crop", aug_strength=1.0,
            seed=seed, batch_size=3,
        )

    ds = build(7)
    epoch1, epoch2 = collect(ds), collect(ds)
    again = build(7)
    assert_same_tensors(epoch1, collect(again))
    assert_same_tensors(epoch2, collect(again))
    assert not np.array_equal(epoch1[0][0], epoch2[0][0])
    assert not np.array_equal(epoch1[0][0], collect(build(8))[0][0])


def test_repeat_yields_whole_passes_each_reshuffled_and_reaugmented(tiny):
    """An epoch of `steps_per_pass` batches of a repeated dataset is exactly one pass."""
    steps = pipeline.steps_per_pass(len(tiny.stems), 4)
    assert steps == 2 and pipeline.steps_per_pass(8, 4) == 2 and pipeline.steps_per_pass(5, None) == 5
    kwargs = dict(input_size=(32, 32), aug_strength=1.0, batch_size=4, seed=3)
    repeated = iter(make_dataset(tiny, tiny.stems, repeat=True, **kwargs))
    passes = [[tuple(t.numpy() for t in next(repeated)) for _ in range(steps)] for _ in range(3)]
    for batches in passes:
        assert [image.shape[0] for image, _ in batches] == [4, 2]
    # The same tensors as the un-repeated dataset iterated epoch by epoch.
    finite = make_dataset(tiny, tiny.stems, **kwargs)
    for batches in passes:
        assert_same_tensors(batches, collect(finite))
    assert not np.array_equal(passes[0][0][0], passes[1][0][0])
    with pytest.raises(ConfigError, match="repeat=True needs"):
        make_dataset(tiny, tiny.stems, input_size=(32, 32), policy="crop", training=False,
                     repeat=True)


def test_each_worker_thread_builds_its_augmentation_once(tiny, monkeypatch):
    built = []
    real = pipeline.build_augmentation
    monkeypatch.setattr(pipeline, "build_augmentation",
                        lambda *a, **k: built.append(threading.get_ident()) or real(*a, **k))
    ds = make_dataset(tiny, tiny.stems, input_size=(32, 32), aug_strength=1.0, batch_size=2)
    for _ in range(4):
        collect(ds)
    assert len(built) == len(set(built)), "a thread rebuilt its Compose"
    assert 0 < len(built) < 24  # built at all, and far fewer times than the 24 examples seen


def test_augmentation_changes_every_epoch_even_unshuffled(tiny):
    ds = make_dataset(
        tiny, tiny.stems, input_size=(32, 32), aug_strength=1.0, shuffle=False, seed=2
    )
    epoch1, epoch2 = collect(ds), collect(ds)
    assert sum(not np.array_equal(a[0], b[0]) for a, b in zip(epoch1, epoch2)) >= 4


def test_shuffle_reorders_each_epoch_and_validation_keeps_stem_order(tiny):
    ds = make_dataset(tiny, tiny.stems, input_size=(32, 32), seed=0)  # training: shuffled
    orders = [[mask.tobytes() for _, mask in collect(ds)] for _ in range(3)]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(orders[2])
    assert len({tuple(order) for order in orders}) > 1
    val = make_dataset(tiny, tiny.stems, input_size=(32, 32), training=False)
    expected = [resize_mask(read_mask(tiny.mask_path(s)), (32, 32)).astype(np.int32).tobytes()
                for s in tiny.stems]
    assert [mask.tobytes() for _, mask in collect(val)] == expected


@pytest.mark.parametrize("policy", ["resize", "crop"])
def test_cache_gives_the_same_tensors_and_decodes_once(tiny, policy, monkeypatch):
    loads = []
    real_load = pipeline.load_example
    monkeypatch.setattr(
        pipeline, "load_example", lambda ds, stem: loads.append(stem) or real_load(ds, stem)
    )
    kwargs = dict(input_size=(32, 32), policy=policy, aug_strength=1.0, crop_scale=0.75, seed=1)
    cached = make_dataset(tiny, tiny.stems, cache=True, **kwargs)
    cached_epochs = [collect(cached), collect(cached)]
    assert sorted(loads) == sorted(tiny.stems)  # decoded once over two epochs
    loads.clear()
    uncached = make_dataset(tiny, tiny.stems, cache=False, **kwargs)
    uncached_epochs = [collect(uncached), collect(uncached)]
    assert len(loads) == 12
    loads.clear()
    over_budget = make_dataset(tiny, tiny.stems, cache_max_bytes=1000, **kwargs)
    over_budget_epochs = [collect(over_budget), collect(over_budget)]
    assert len(loads) == 12  # 6 images x 32x32x4 bytes do not fit in 1000 bytes
    for epoch in range(2):
        assert_same_tensors(cached_epochs[epoch], uncached_epochs[epoch])
        assert_same_tensors(cached_epochs[epoch], over_budget_epochs[epoch])


@pytest.mark.parametrize("policy", ["resize", "crop"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "val"])
def test_pipelines_run_without_tf_data_model_autotuning(tiny, policy, training):
    # Its optimisation thread made deleting an iterator wait up to a minute (the end of
    # every fit with validation); the options must survive batching and repeating.
    ds = make_dataset(tiny, tiny.stems, input_size=(32, 40), policy=policy, batch_size=2,
                      training=training, repeat=training)
    assert ds.options().autotune.enabled is False
    assert ds.unbatch().batch(3).options().autotune.enabled is False
    assert len(collect(ds.take(2))) == 2


def test_cache_is_freed_with_its_dataset(tiny, monkeypatch):
    decoded = []
    real_load = pipeline.load_example

    def load(ds, stem):
        image, mask = real_load(ds, stem)
        decoded.append(weakref.ref(image))
        return image, mask

    monkeypatch.setattr(pipeline, "load_example", load)
    # input_size = photo size: nothing is resized, so the cache holds the decoded arrays
    ds = make_dataset(tiny, tiny.stems, input_size=(48, 64), training=False)
    collect(ds)
    gc.collect()
    assert len(decoded) == 6 and all(ref() is not None for ref in decoded)
    del ds
    gc.collect()
    assert all(ref() is None for ref in decoded)


def test_cache_estimate(tiny):
    assert pipeline.estimate_cache_bytes(tiny, tiny.stems, input_size=(32, 16)) == 6 * 32 * 16 * 4
    assert pipeline.estimate_cache_bytes(
        tiny, tiny.stems, input_size=(32, 16), policy="crop", crop_scale=0.5
    ) == 6 * 24 * 32 * 4


# ------------------------------------------------------------------ splits


def test_split_is_seeded_disjoint_and_complete(tmp_path):
    ds = write_dataset(tmp_path / "d", random_masks(10, (8, 8)))
    train, val = split_stems(ds, val_fraction=0.2, seed=0)
    assert (train, val) == split_stems(ds, val_fraction=0.2, seed=0)
    assert len(val) == 2 and len(train) == 8
    assert sorted(train + val) == sorted(ds.stems) and not set(train) & set(val)
    assert len({tuple(split_stems(ds, seed=s)[1]) for s in range(6)}) > 1


def test_split_holds_out_one_image_of_two_and_refuses_one(tmp_path):
    two = write_dataset(tmp_path / "two", random_masks(2, (8, 8)))
    train, val = split_stems(two, val_fraction=0.1)
    assert len(train) == 1 and len(val) == 1
    one = write_dataset(tmp_path / "one", random_masks(1, (8, 8)))
    with pytest.raises(DatasetError, match="at least 2"):
        split_stems(one)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_stems(two, val_fraction=1.0)


def test_dataset_yaml_splits_win(tmp_path):
    masks = random_masks(6, (8, 8))
    given = write_dataset(
        tmp_path / "given", masks, splits={"train": ["im0", "im5", "im2"], "val": ["im3"]}
    )
    assert split_stems(given, seed=4) == (["im0", "im5", "im2"], ["im3"])
    train_only = write_dataset(
        tmp_path / "train_only", masks, splits={"train": ["im0", "im1", "im2", "im3", "im4"],
                                                "test": ["im5"]}
    )
    train, val = split_stems(train_only, val_fraction=0.2)
    assert len(val) == 1 and sorted(train + val) == ["im0", "im1", "im2", "im3", "im4"]
    val_only = write_dataset(tmp_path / "val_only", masks, splits={"val": ["im1"], "test": ["im2"]})
    assert split_stems(val_only) == (["im0", "im3", "im4", "im5"], ["im1"])


def write_named_dataset(root, stems, splits=None):
    """A canonical dataset whose images have the given stems (4x4, all background)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in stems:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "masks" / f"{stem}.png")
    meta = {"classes": ["background", "crop"], "splits": splits} if splits else {"classes": ["background", "crop"]}
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return load_dataset(root)


# Three "videos" of 3, 5 and 12 frames, like CamVid's sequences.
SEQUENCES = {"seqA": 3, "seqB": 5, "seqC": 12}
SEQUENCE_STEMS = [f"{name}_{i:03d}" for name, count in SEQUENCES.items() for i in range(count)]


@pytest.mark.parametrize("pattern", [r"^([^_]+)_", r"^seq[A-Z]"], ids=["group", "match"])
def test_group_split_keeps_every_group_on_one_side(tmp_path, pattern):
    ds = write_named_dataset(tmp_path / "d", SEQUENCE_STEMS)
    group = lambda stem: stem.split("_")[0]  # noqa: E731
    seen_val = set()
    for seed in range(8):
        train, val = split_stems(ds, 0.2, seed=seed, group_pattern=pattern)
        assert sorted(train + val) == sorted(SEQUENCE_STEMS)
        assert not {group(s) for s in train} & {group(s) for s in val}
        assert train and val
        seen_val.add(tuple(sorted({group(s) for s in val})))
        assert (train, val) == split_stems(ds, 0.2, seed=seed, group_pattern=pattern)
    # 20 % of 20 images is 4: the groups closest to it are seqA (3) and seqB (5)
    assert seen_val == {("seqA",), ("seqB",)}


def test_group_split_errors_and_yaml_splits_win(tmp_path):
    ds = write_named_dataset(tmp_path / "d", SEQUENCE_STEMS + ["odd-one"])
    with pytest.raises(ConfigError, match=r"group_pattern '\^\(\[\^_\]\+\)_' does not match 1 of "
                                          r"21 image stem\(s\): odd-one\. Every stem needs a group"):
        split_stems(ds, group_pattern=r"^([^_]+)_")
    with pytest.raises(ConfigError, match=r"group_pattern '\(' is not a valid regular expression"):
        split_stems(ds, group_pattern="(")
    with pytest.raises(DatasetError, match=r"puts all 21 images of images/ in one group \('e'\); "
                                           r"a group-aware split needs at least two groups"):
        split_stems(ds, group_pattern=r"(e)")
    given = write_named_dataset(tmp_path / "given", SEQUENCE_STEMS,
                                splits={"train": SEQUENCE_STEMS[:10], "val": SEQUENCE_STEMS[10:]})
    assert split_stems(given, group_pattern=r"^([^_]+)_") == (SEQUENCE_STEMS[:10], SEQUENCE_STEMS[10:])


# ------------------------------------------------------------------ class weights


def test_class_weights_from_counted_pixels(tmp_path):
    mask = np.array([[0] * 4, [0] * 4, [1] * 4, [2, 2, 255, 255]], np.uint8)
    ds = write_dataset(tmp_path / "d", [mask])
    np.testing.assert_allclose(class_pixel_fraction(ds), [8 / 14, 4 / 14, 2 / 14])
    np.testing.assert_allclose(class_weights(ds), [0.5, 1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(class_weights(ds, "sqrt_median_frequency"),
                               [0.5 ** 0.5, 1.0, 2.0 ** 0.5], rtol=1e-6)
    np.testing.assert_allclose(
        class_weights(ds, "inverse_frequency"), [14 / 24, 14 / 12, 14 / 6], rtol=1e-6
    )
    np.testing.assert_array_equal(class_weights(ds, "uniform"), [1, 1, 1])
    assert class_weights(ds).dtype == np.float32


def test_class_weights_prefer_the_fingerprint(tmp_path):
    mask = np.array([[0, 0], [1, 2]], np.uint8)
    fingerprint = {"class_pixel_fraction": {"background": 0.5, "crop": 0.25, "weed": 0.25}}
    ds = write_dataset(tmp_path / "d", [mask], fingerprint=fingerprint)
    np.testing.assert_allclose(class_weights(ds), [0.5, 1.0, 1.0])
    # counting the only mask instead gives the same here; a training subset is counted
    np.testing.assert_allclose(class_weights(ds, stems=["im0"]), [0.5, 1.0, 1.0])


def test_class_weights_fingerprint_differs_from_counts(tmp_path):
    mask = np.array([[0, 0, 0, 1]], np.uint8)  # weed absent from the masks
    fingerprint = {"class_pixel_fraction": {"background": 0.6, "crop": 0.3, "weed": 0.1}}
    ds = write_dataset(tmp_path / "d", [mask], fingerprint=fingerprint)
    np.testing.assert_allclose(class_weights(ds), [0.5, 1.0, 3.0], rtol=1e-6)
    # counted: an absent class gets 0, the median is over present classes
    np.testing.assert_allclose(class_weights(ds, stems=["im0"]), [2 / 3, 2.0, 0.0], rtol=1e-6)


def test_class_weights_errors(tmp_path):
    ds = write_dataset(tmp_path / "d", [np.array([[0, 7]], np.uint8)])
    with pytest.raises(DatasetError, match=r"im0.png holds value\(s\) \[7\]"):
        class_weights(ds)
    with pytest.raises(ConfigError, match="median_frequency"):
        class_weights(ds, "log")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(policy="tile"), "Valid policies: resize, crop"),
        (dict(input_size=(32,)), "input_size"),
        (dict(input_size=(0, 32)), "input_size"),
        (dict(crop_scale=0), "crop_scale"),
        (dict(batch_size=0), "batch_size"),
        (dict(aug_strength=2), "aug_strength"),
    ],
)
def test_bad_options_are_config_errors(tiny, kwargs, match):
    args = dict(input_size=(32, 32)) | kwargs
    with pytest.raises(ConfigError, match=match):
        make_dataset(tiny, tiny.stems, **args)


def test_dataset_problems_are_reported_before_iterating(tmp_path, tiny):
    with pytest.raises(DatasetError, match="nope"):
        make_dataset(tiny, ["img000", "nope"], input_size=(32, 32))
    ds = write_dataset(tmp_path / "d", random_masks(2, (8, 8)))
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(ds.mask_path("im1"))
    with pytest.raises(DatasetError, match=r"masks/im1.png is 8x9 but images/im1.png is 8x8"):
        make_dataset(ds, ds.stems, input_size=(8, 8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ds.mask_path("im1"))
    with pytest.raises(DatasetError, match="single-channel"):
        read_mask(ds.mask_path("im1"))


def test_palette_masks_are_read_as_indices(tmp_path):
    mask = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="P")
    mask.putpalette([0, 0, 0, 0, 255, 0, 255, 0, 0] + [9] * (256 * 3 - 9))
    mask.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[0, 1], [2, 255]])
