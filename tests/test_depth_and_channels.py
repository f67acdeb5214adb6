"""Photos deeper than 8 bits and grey photos: read at full depth, scaled by one rule, kept grey.

Also the datasets no model can learn from (fewer than two classes), which every command after
`prepare` refuses.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from autoseg.cli import main
from autoseg.data import intensity, pipeline
from autoseg.data.dataset import check_trainable, load_dataset
from autoseg.data.sources import prepare
from autoseg.errors import ConfigError, DatasetError

# 12-bit photos whose classes differ only below the top byte: soil 1994..2006, discs
# 2034..2046. Cut to 8 bits (value >> 8, what OpenCV's IMREAD_COLOR does) both are 7.
SOIL, DISC, NOISE = 2000, 2040, 6


def twelve_bit_source(src, num_images=8, size=(32, 48), seed=0, channels=1):
    """images/*.png 16-bit grey (or RGB) photos of discs on soil, masks/*.png 0/255."""
    rng = np.random.default_rng(seed)
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for i in range(num_images):
        mask = np.zeros((h, w), np.uint8)
        for _ in range(2):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(h // 6, h // 3)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 255
        photo = np.where(mask > 0, DISC, SOIL) + rng.integers(-NOISE, NOISE + 1, (h, w))
        photo = photo.astype(np.uint16)
        if channels == 3:
            photo = np.dstack([photo, photo + 100, photo + 200]).astype(np.uint16)
        cv2.imwrite(str(src / "images" / f"f{i:02d}.png"), photo[..., ::-1] if channels == 3 else photo)
        Image.fromarray(mask).save(src / "masks" / f"f{i:02d}.png")
    return src


def grey_8bit_source(src, num_images=3, size=(16, 24)):
    rng = np.random.default_rng(1)
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for i in range(num_images):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(src / "images" / f"g{i}.png")
        Image.fromarray(rng.integers(0, 3, size).astype(np.uint8)).save(src / "masks" / f"g{i}.png")
    return src


def class_means(image, mask):
    return float(image[mask == 1].mean()), float(image[mask == 0].mean())


# --- reading and scaling ---------------------------------------------------------------------


def test_twelve_bit_photos_keep_the_contrast_8_bits_would_lose(tmp_path, capsys):
    src = twelve_bit_source(tmp_path / "src")
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "read as binary masks, 2 classes" in out
    assert f"Depth     16-bit (uint16), values {SOIL - NOISE}..{DISC + NOISE}" in out
    assert "Scaling   percentile_clip:" in out
    dataset = load_dataset(tmp_path / "ds")
    assert dataset.classes == ["background", "foreground"] and dataset.channels == 1
    meta = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    rule = meta["intensity"]
    assert rule["rule"] == "percentile_clip" and rule["dtype"] == "uint16"
    assert rule["percentiles"] == [0.5, 99.5]
    assert SOIL - NOISE <= rule["low"] < SOIL - NOISE + 2 and DISC + NOISE - 2 < rule["high"] <= DISC + NOISE
    assert (tmp_path / "ds" / "images" / "f00.png").read_bytes() == (src / "images" / "f00.png").read_bytes()

    examples = list(pipeline.make_dataset(dataset, dataset.stems, input_size=(32, 48),
                                          training=False, cache=False))
    assert len(examples) == 8
    for (image, mask), stem in zip(examples, dataset.stems):
        image, mask = image.numpy(), mask.numpy()
        assert image.shape == (32, 48, 1) and image.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 255
        disc, soil = class_means(image[..., 0], mask)
        assert disc - soil > 150, stem  # (40 of a 52-wide range) x 255
        truncated = cv2.imread(str(dataset.image_path(stem)), cv2.IMREAD_COLOR)[..., 0]
        assert set(np.unique(truncated)) == {7}  # what 8 bits gave: no contrast at all
        raw = cv2.imread(str(dataset.image_path(stem)), cv2.IMREAD_UNCHANGED)
        np.testing.assert_allclose(image[..., 0], intensity.apply_rule(raw, rule), atol=1e-4)


def test_sixteen_bit_rgb_and_float_tiffs_are_read_at_full_depth(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "g16.png": rng.integers(0, 65536, (5, 7), dtype=np.uint16),
        "c16.png": rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16),
        "c16.tif": rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16),
        "gf.tif": rng.random((5, 7), dtype=np.float32),
        "cf.tif": rng.random((5, 7, 3), dtype=np.float32),
    }
    for name, array in arrays.items():
        cv2.imwrite(str(tmp_path / name), array[..., ::-1] if array.ndim == 3 else array)
        pixels = pipeline.read_pixels(tmp_path / name)
        expected = array if array.ndim == 3 else array[..., None]
        assert pixels.dtype == array.dtype, name
        np.testing.assert_array_equal(pixels, expected, err_msg=name)  # RGB order, every bit
    # Pillow cuts 16-bit RGB PNGs to 8 bits and cannot open float RGB TIFFs; prepare can.
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for i in range(2):
        photo = rng.random((6, 8, 3), dtype=np.float32) * 3 - 1  # values -1..2
        cv2.imwrite(str(src / "images" / f"p{i}.tif"), photo[..., ::-1])
        Image.fromarray(np.eye(6, 8, dtype=np.uint8)).save(src / "masks" / f"p{i}.png")
    dataset = prepare(src, tmp_path / "ds", format="index")
    assert dataset.image_path("p0").name == "p0.tif"
    assert dataset.channels == 3 and dataset.intensity["dtype"] == "float32"
    assert dataset.fingerprint["pixel_dtype"] == ["float32"]
    low, high = dataset.fingerprint["value_range"]
    assert -1 <= low < -0.9 and 1.9 < high <= 2
    images = [pipeline.load_example(dataset, stem)[0] for stem in ("p0", "p1")]
    assert images[0].shape == (6, 8, 3) and images[0].dtype == np.float32
    both = np.stack(images)
    assert both.min() == 0 and both.max() == 255  # the 0.5/99.5 percentiles clip the ends
    assert len(np.unique(both)) > 250  # float values, not 256 levels


def _with_exif_orientation(png: bytes, orientation: int) -> bytes:
    """`png` with an eXIf chunk holding only the EXIF orientation tag."""
    import struct
    import zlib

    exif = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    exif += struct.pack(">I", 0)
    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif))
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


def test_a_pending_exif_rotation_keeps_sixteen_bits(tmp_path):
    photo = np.random.default_rng(0).integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    png = cv2.imencode(".png", photo[..., ::-1])[1].tobytes()
    (src / "images" / "r.png").write_bytes(_with_exif_orientation(png, 6))
    assert Image.open(src / "images" / "r.png").getexif().get(0x0112) == 6
    Image.fromarray(np.eye(4, 6, dtype=np.uint8)).save(src / "masks" / "r.png")
    dataset = prepare(src, tmp_path / "ds", format="index")
    stored = dataset.image_path("r")
    assert stored.read_bytes() != (src / "images" / "r.png").read_bytes()  # EXIF dropped
    assert Image.open(stored).getexif().get(0x0112) is None
    np.testing.assert_array_equal(pipeline.read_pixels(stored), photo)  # as stored, every bit


def test_mixed_bit_depths_and_bad_rules_are_refused(tmp_path, capsys):
    src = twelve_bit_source(tmp_path / "src", num_images=2)
    Image.fromarray(np.full((32, 48), 9, np.uint8)).save(src / "images" / "f01.png")
    assert main(["prepare", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Error: The photos mix sample types (images/f00.png is uint16, images/f01.png is uint8)" in err
    assert not (tmp_path / "out").exists()

    dataset = prepare(twelve_bit_source(tmp_path / "src2", num_images=2), tmp_path / "ds")
    meta_path = tmp_path / "ds" / "dataset.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    for rule, message in [
        ({**meta["intensity"], "low": 5000}, r"intensity.low must be below intensity.high"),
        ({**meta["intensity"], "rule": "zscore"}, r"`intensity` must be a mapping with rule: percentile_clip"),
        ({**meta["intensity"], "gamma": 2}, r"unknown key\(s\) \['gamma'\] in `intensity`"),
    ]:
        meta_path.write_text(yaml.safe_dump({**meta, "intensity": rule}))
        with pytest.raises(DatasetError, match=rf"dataset.yaml: {message}"):
            load_dataset(dataset.root)
    meta_path.write_text(yaml.safe_dump({**meta, "channels": 2}))
    with pytest.raises(DatasetError, match=r"`channels` must be 1 \(grey\) or 3 \(RGB\). Received: 2"):
        load_dataset(dataset.root)
    # A 16-bit photo in a dataset without a rule is refused, not cut to 8 bits.
    meta.pop("intensity")
    meta_path.write_text(yaml.safe_dump(meta))
    with pytest.raises(DatasetError, match=r"images/f00.png holds uint16 pixels, but 8-bit images"):
        pipeline.load_example(load_dataset(dataset.root), "f00")


def test_eight_bit_photos_are_read_as_before_and_grey_stays_grey(tmp_path, tiny_dataset):
    rgb = load_dataset(tiny_dataset)  # hand-made: no `channels` key, RGB
    assert rgb.channels == 3 and rgb.intensity is None
    image, _ = pipeline.load_example(rgb, rgb.stems[0])
    before = cv2.cvtColor(cv2.imread(str(rgb.image_path(rgb.stems[0])), cv2.IMREAD_COLOR),
                          cv2.COLOR_BGR2RGB)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, before)

    grey = prepare(grey_8bit_source(tmp_path / "src"), tmp_path / "grey")
    assert grey.channels == 1 and grey.intensity is None
    assert grey.fingerprint["channels"] == [1] and grey.fingerprint["pixel_dtype"] == ["uint8"]
    ((image, _),) = list(pipeline.make_dataset(grey, ["g0"], input_size=(16, 24), training=False))
    assert image.shape == (16, 24, 1)
    np.testing.assert_array_equal(image.numpy()[..., 0], np.asarray(Image.open(grey.image_path("g0"))))
    # with colour photos among them, grey photos are repeated over RGB
    Image.new("RGB", (24, 16), (1, 2, 3)).save(tmp_path / "src" / "images" / "g1.png")
    mixed = prepare(tmp_path / "src", tmp_path / "mixed")
    assert mixed.channels == 3 and mixed.fingerprint["channels"] == [1, 3]
    image, _ = pipeline.load_example(mixed, "g0")
    assert image.shape == (16, 24, 3) and (image[..., 0] == image[..., 2]).all()


# --- models take what they were trained on ---------------------------------------------------


def _model(channels=3, rule=None, policy="resize"):
    """A SegmentationModel whose network records its input and predicts 2 classes."""
    from autoseg.predict import SegmentationModel

    seen = []

    def runner(batch):
        seen.append(batch)
        return np.zeros((*batch.shape[:3], 2), np.float32)

    metadata = {"classes": ["background", "cell"], "palette": [[0, 0, 0], [255, 0, 0]],
                "ignore_index": 255, "input_size": [8, 8], "policy": policy, "crop_scale": 1.0,
                "channels": channels, "intensity": rule}
    return SegmentationModel("m", metadata, runner, "keras"), seen


def test_models_take_the_depth_and_channels_they_were_trained_on():
    rule = {"rule": "percentile_clip", "low": 1000.0, "high": 3000.0, "dtype": "uint16"}
    deep, seen = _model(channels=1, rule=rule)
    photo = np.full((8, 8), 2000, np.uint16)
    deep.predict(photo)
    assert seen[-1].shape == (1, 8, 8, 1) and np.allclose(seen[-1], 127.5)
    with pytest.raises(ConfigError, match=r"image holds 8-bit pixels, but the images here are uint16"):
        deep.predict(np.zeros((8, 8), np.uint8))
    with pytest.raises(ConfigError, match=r"image is a colour image, but the model takes single-channel"):
        deep.predict(np.dstack([photo, photo, photo + 1]))
    deep.predict(np.dstack([photo] * 3))  # grey stored as RGB: accepted
    assert seen[-1].shape == (1, 8, 8, 1)

    eight_bit, seen = _model(channels=3)
    with pytest.raises(ConfigError, match=r"image holds uint16 pixels, but 8-bit images \(uint8\) are expected"):
        eight_bit.predict(photo)
    eight_bit.predict(np.full((8, 8), 9, np.uint8))  # grey repeated over RGB
    assert seen[-1].shape == (1, 8, 8, 3) and (seen[-1] == 9).all()


def test_autoseg_json_channels_and_intensity_are_validated(tmp_path):
    import json

    from autoseg.predict import read_metadata

    metadata = {"classes": ["a", "b"], "palette": [[0, 0, 0], [1, 1, 1]], "ignore_index": 255,
                "input_size": [8, 8], "policy": "resize", "crop_scale": 1.0,
                "formats": {"keras": "model.keras"}}
    (tmp_path / "autoseg.json").write_text(json.dumps(metadata))
    assert read_metadata(tmp_path)["channels"] == 3 and read_metadata(tmp_path)["intensity"] is None
    (tmp_path / "autoseg.json").write_text(json.dumps({**metadata, "channels": 4}))
    with pytest.raises(ConfigError, match=r"autoseg.json: `channels` must be 1 or 3. Received: channels=4"):
        read_metadata(tmp_path)
    (tmp_path / "autoseg.json").write_text(json.dumps({**metadata, "intensity": {"rule": "x"}}))
    with pytest.raises(ConfigError, match=r"autoseg.json: `intensity` must be a mapping with rule"):
        read_metadata(tmp_path)


def test_imagenet_backbones_repeat_grey_over_rgb():
    from autoseg import models

    rgb = models.build("unet", 2, (32, 32, 3), backbone="mobilenetv2", depth=3)
    grey = models.build("unet", 2, (32, 32, 1), backbone="mobilenetv2", depth=3)
    assert grey.input_shape == (None, 32, 32, 1)
    assert [w.shape for w in grey.get_weights()] == [w.shape for w in rgb.get_weights()]
    grey.set_weights(rgb.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(grey(x), rgb(np.repeat(x, 3, axis=-1)), atol=1e-5)


# --- fewer than two classes ------------------------------------------------------------------


def test_datasets_with_fewer_than_two_classes_are_named_and_refused(tmp_path, capsys):
    src = twelve_bit_source(tmp_path / "src", num_images=2)
    # 255 confirmed as "ignore": one class is left; prepare writes it but says so.
    assert main(["prepare", str(src), "--out", str(tmp_path / "one"), "--format", "index",
                 "--ignore-values", "255"]) == 0
    err = capsys.readouterr().err
    one = load_dataset(tmp_path / "one")
    assert one.classes == ["class_0"]
    assert f"Warning: {one.root} has 1 class (class_0): a segmentation model needs at least two" in err
    with pytest.raises(DatasetError, match=r"ignored \(mask value 255\): if the source masks are binary, "
                                           r"0 and 255, prepare it again with --format binary"):
        check_trainable(one)
    # two classes named, one labelled
    (tmp_path / "src" / "labels.txt").write_text("background\nplant\n")
    for stem in ("f00", "f01"):
        Image.fromarray(np.zeros((32, 48), np.uint8)).save(src / "masks" / f"{stem}.png")
    unlabelled = prepare(src, tmp_path / "unlabelled", format="index")
    with pytest.raises(DatasetError, match=r"has 2 classes, but only background label\(s\) any pixel"):
        check_trainable(unlabelled)
    assert check_trainable(load_dataset(prepare(twelve_bit_source(tmp_path / "ok"), tmp_path / "ok_ds").root)) is None


# --- end to end: prepare -> search -> export (every format) -> predict -> evaluate ------------

E2E_SPACE = """\
models: {unet: {depth: 3, filters: 8, backbone: none}}
input_size: 32
policy: resize
batch_size: 4
loss: ce_dice
aug_strength: 0.0
learning_rate: 0.01
max_epochs: 12
"""


@pytest.mark.slow
def test_grey_twelve_bit_binary_folder_end_to_end(tmp_path, capsys):
    import json

    import autoseg
    from autoseg import leaderboard
    from autoseg.export import FORMATS, onnx_available

    src = twelve_bit_source(tmp_path / "src", num_images=16, size=(32, 32))
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds")]) == 0
    dataset = load_dataset(tmp_path / "ds")
    assert dataset.classes == ["background", "foreground"] and dataset.channels == 1
    (tmp_path / "space.yaml").write_text(E2E_SPACE)
    rundir = tmp_path / "run"
    assert main(["search", "--dataset", str(dataset.root), "--space", str(tmp_path / "space.yaml"),
                 "--tuner", "random", "--max-trials", "1", "--out", str(rundir)]) == 0
    rows = leaderboard.read_leaderboard(rundir / "leaderboard.csv")
    assert [r["status"] for r in rows] == ["COMPLETED"]
    # Cut to 8 bits every photo is one flat grey (7): the best a model could do is one class
    # everywhere, mean IoU = background's share / 2.
    flat = dataset.fingerprint["class_pixel_fraction"]["background"] / 2
    assert float(rows[0]["val_mean_iou"]) > max(0.75, flat + 0.3)

    model_dir = tmp_path / "model"
    assert main(["export", "best", "--run", str(rundir), "--out", str(model_dir)]) == 0
    meta = json.loads((model_dir / "autoseg.json").read_text())
    formats = [f for f in FORMATS if f != "onnx" or onnx_available()]
    assert sorted(meta["formats"]) == sorted(formats)
    assert meta["channels"] == 1 and meta["intensity"] == dataset.intensity
    assert "grey (1 channel)" in meta["normalisation"] and "intensity" in meta["normalisation"]
    raw = [pipeline.read_pixels(dataset.image_path(s)) for s in dataset.stems]
    assert raw[0].dtype == np.uint16 and raw[0].shape == (32, 32, 1)
    reference = [autoseg.load(model_dir).predict(image) for image in raw]
    for fmt in formats:
        model = autoseg.load(model_dir, format=fmt)
        differing = sum(int((model.predict(im) != ref).sum()) for im, ref in zip(raw, reference))
        assert differing <= 0.001 * 16 * 32 * 32, fmt

    capsys.readouterr()
    assert main(["predict", str(model_dir), str(src / "images"), "--out", str(tmp_path / "pred"),
                 "--format", "tflite"]) == 0
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == 16
    predicted = np.asarray(Image.open(tmp_path / "pred" / "f00_mask.png"))
    truth = np.asarray(Image.open(dataset.mask_path("f00")))
    assert (predicted == truth).mean() > 0.9

    assert main(["evaluate", str(model_dir), "--dataset", str(dataset.root), "--split", "all"]) == 0
    metrics = json.loads((model_dir / "eval-ds" / "metrics.json").read_text())
    assert metrics["mean_iou"] > 0.75

    # a dataset with one class is refused before anything is read or written
    one = prepare(src, tmp_path / "one", format="index", ignore_values=[255], log=lambda _: None)
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--dataset", str(one.root)]) == 2
    err = capsys.readouterr().err
    assert f"Error: {one.root} has 1 class (class_0): a segmentation model needs" in err
