"""Predict with an exported model: `autoseg.load(MODEL_DIR)` and `autoseg predict`.

A model directory is what `autoseg export` writes (see `autoseg.export`): `autoseg.json`
(classes, palette, input size, channels, intensity rule, policy, ...) and the model in one or
more formats. Every format goes through the same pre- and post-processing, so they give the
same class maps:

- the photo is brought to the model's `channels` (grey repeated over RGB for an RGB model;
  a grey photo stored as RGB made grey for a grey model) and, for models of photos deeper
  than 8 bits, scaled to 0..255 by the `intensity` rule they were trained with
  (`autoseg.data.intensity`). A model takes the photos it was trained on: 8-bit photos for
  8-bit models, photos at their full depth (uint16, float) for the others.

- policy `resize`: the photo is resized to the model's `input_size` (area interpolation when
  shrinking, as in training), the network's class scores are resized bilinearly back to the
  photo's size, then the argmax is taken.
- policy `crop`: the photo is scaled by `crop_scale`, cut into `input_size` tiles with
  `pipeline.tile_positions` (as validation does), the tiles' class scores are averaged where
  tiles overlap (`pipeline.stitch`), resized bilinearly to the photo's size, then argmaxed.

Resizing class scores rather than the class map keeps boundaries smooth: measured on CWFID,
bilinear scores beat a nearest-neighbour resize of the class map.

Flip test-time augmentation (`autoseg.tta`) is inside the exported graph of every format, so
it needs no code here: `autoseg.json`'s `tta` says what the model does (`SegmentationModel.tta`;
"none" for exports older than it).

Example:
```python
model = autoseg.load("exports/cwfid-0007")
class_map = model.predict(image)          # (H, W) uint8, image: (H, W, 3) uint8 RGB (as trained)
model.classes, model.palette
```
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import numbers
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from autoseg import atomic
from autoseg.callable_module import make_callable
from autoseg.data import intensity, pipeline
from autoseg.data.dataset import IMAGE_EXTENSIONS
from autoseg.errors import AutosegError, ConfigError, DatasetError
from autoseg.model_dir import FORMATS, METADATA_FILE
from autoseg.tta import FLIPS

#: Tiles per network call with the crop policy.
DEFAULT_BATCH_SIZE = 8
#: Opacity of the colour mask in overlays.
OVERLAY_ALPHA = 0.5
# Required keys of autoseg.json and a check of each value: (test, what it must be).
_METADATA_SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "classes": (
        lambda v: isinstance(v, list) and 1 <= len(v) <= 255 and all(isinstance(c, str) for c in v),
        "a list of 1 to 255 class names (strings)",
    ),
    "palette": (
        lambda v: isinstance(v, list)
        and all(
            isinstance(c, list) and len(c) == 3 and all(_is_int(x) and 0 <= x <= 255 for x in c)
            for c in v
        ),
        "a list of [R, G, B] triples of integers in 0..255",
    ),
    "ignore_index": (lambda v: _is_int(v) and 0 <= v <= 255, "an integer in 0..255"),
    "input_size": (
        lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v),
        "[height, width], two positive integers",
    ),
    "policy": (lambda v: v in pipeline.POLICIES, f"one of {', '.join(pipeline.POLICIES)}"),
    "crop_scale": (
        lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
        "a positive number",
    ),
    "formats": (
        lambda v: isinstance(v, dict)
        and bool(v)
        and all(k in FORMATS and isinstance(f, str) for k, f in v.items()),
        f"a non-empty mapping of format ({', '.join(FORMATS)}) to file name",
    ),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def read_metadata(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates `MODEL_DIR/autoseg.json`.

    Returns:
        The metadata dict (extra keys kept).

    Raises:
        ConfigError: the folder or file is missing, is not JSON, lacks a required key or holds
            a value of the wrong type; the message names the key and the file.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(
            f"Model folder {model_dir} {'is not a folder' if model_dir.exists() else 'does not exist'}. "
            "Pass a folder written by `autoseg export`."
        )
    path = model_dir / METADATA_FILE
    if not path.is_file():
        raise ConfigError(
            f"{model_dir} is not an exported model: {path} is missing. "
            "Create one with `autoseg export best --run RUNDIR`."
        )
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"{path} is damaged: it is not valid JSON ({exc}). Export the model again."
        ) from None
    if not isinstance(metadata, dict):
        raise ConfigError(f"{path} must hold a JSON object. Received: {type(metadata).__name__}.")
    for key, (valid, what) in _METADATA_SCHEMA.items():
        if key not in metadata:
            raise ConfigError(f"{path} lacks the key `{key}` ({what}). Export the model again.")
        if not valid(metadata[key]):
            raise ConfigError(
                f"{path}: `{key}` must be {what}. Received: {key}={metadata[key]!r}."
            )
    channels = metadata.setdefault("channels", 3)  # exports before grey models took RGB
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ConfigError(f"{path}: `channels` must be 1 or 3. Received: channels={channels!r}.")
    try:
        metadata["intensity"] = intensity.check_rule(metadata.get("intensity"), str(path))
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    tta = metadata.setdefault("tta", None)  # exports before flip TTA ran the single model
    if tta is not None and not (isinstance(tta, dict) and tta.get("flips") in FLIPS):
        raise ConfigError(
            f"{path}: `tta` must be null or an object whose `flips` is one of "
            f"{', '.join(FLIPS)}. Received: tta={tta!r}."
        )
    if len(metadata["palette"]) != len(metadata["classes"]):
        raise ConfigError(
            f"{path}: `palette` has {len(metadata['palette'])} colours for "
            f"{len(metadata['classes'])} classes; it needs one [R, G, B] per class."
        )
    return metadata


# --------------------------------------------------------------------------------------------
# Runners: one per format, each `(N, h, w, channels) float32 -> (N, h, w, C) float32`.


def _keras_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import keras

    import autoseg.models  # noqa: F401  (registers autoseg's layers and models)

    try:
        # safe_mode: a .keras file may carry Python code (Lambda layers); never run it.
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise ConfigError(
                f"{path} is refused: it holds code that only loads with safe_mode=False "
                f"({str(exc).splitlines()[0]}). autoseg never runs code stored in a model file; "
                "export the model with `autoseg export`, whose models hold none."
            ) from None
        raise _damaged(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a bad config, ...
        raise _damaged(path, exc) from None

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(batch, training=False))

    return run


def _saved_model_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
        serve = loaded.serve
    except Exception as exc:  # noqa: BLE001
        raise _damaged(path, exc) from None

    def run(batch: np.ndarray, _keep=loaded) -> np.ndarray:  # `serve` needs `loaded` alive
        return np.asarray(serve(tf.constant(batch)))

    return run


def _tflite_runner(path: Path, num_threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    try:
        with warnings.catch_warnings():
            # TF 2.21 still ships it; the LiteRT package (ai-edge-litert) is its successor.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            interpreter = tf.lite.Interpreter(
                model_path=str(path), num_threads=num_threads or os.cpu_count() or 1
            )
        interpreter.allocate_tensors()
        input_index = interpreter.get_input_details()[0]["index"]
        output_index = interpreter.get_output_details()[0]["index"]
    except Exception as exc:  # noqa: BLE001
        raise _damaged(path, exc) from None

    def run(batch: np.ndarray) -> np.ndarray:
        # One image per invoke: the batch-1 graph the converter made (XNNPACK's fast path).
        outputs = []
        for image in batch:
            interpreter.set_tensor(input_index, image[None])
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(output_index)[0].copy())
        return np.stack(outputs)

    return run


def _onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            f"{path} needs onnxruntime to run: pip install 'autoseg[export]'"
        ) from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
    except Exception as exc:  # noqa: BLE001
        raise _damaged(path, exc) from None

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {input_name: batch})[0])

    return run


def _damaged(path: Path, exc: BaseException) -> ConfigError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return ConfigError(
        f"{path} is damaged or not a model of its format ({type(exc).__name__}: {reason}). "
        "Export the model again with `autoseg export`."
    )


def open_runner(path: str | os.PathLike, format: str) -> Callable[[np.ndarray], np.ndarray]:
    """Loads one model file and returns its network call.

    Args:
        path: The model file or folder (`model.keras`, `saved_model/`, ...).
        format: One of `FORMATS`.

    Returns:
        A function `(N, h, w, channels) float32 0..255 -> (N, h, w, C) float32` probabilities.

    Raises:
        ConfigError: unknown format, a missing, damaged or unsafe file.
    """
    if format not in FORMATS:
        raise ConfigError(f"Unknown model format {format!r}. Valid formats: {', '.join(FORMATS)}.")
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} is missing. Export the model again with `autoseg export`.")
    opener = {
        "keras": _keras_runner,
        "saved_model": _saved_model_runner,
        "tflite": _tflite_runner,
        "onnx": _onnx_runner,
    }[format]
    return opener(path)


# --------------------------------------------------------------------------------------------
# The model.


class SegmentationModel:
    """An exported model with the pre- and post-processing it was trained with.

    Create it with `autoseg.load(MODEL_DIR)`.

    Attributes:
        model_dir: The model folder.
        format: The format in use (keras, saved_model, tflite, onnx).
        metadata: `autoseg.json`.
        classes: Class names, in index order.
        palette: One `(R, G, B)` per class.
        ignore_index: The label value that marks unlabelled pixels (255).
        input_size: `(height, width)` the network sees.
        channels: Input channels: 1 (grey) or 3 (RGB).
        intensity: The rule scaling photos deeper than 8 bits to 0..255, or None.
        policy: "resize" or "crop".
        crop_scale: The photo's scale before tiling (policy "crop"; 1.0 otherwise).
        tile_overlap: Pixels shared by neighbouring tiles (policy "crop").
        batch_size: Tiles per network call.
        tta: The flips the model file averages over, in its graph (`autoseg.tta.FLIPS`).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        metadata: dict[str, Any],
        runner: Callable[[np.ndarray], np.ndarray],
        format: str,
        tile_overlap: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        self.model_dir = Path(model_dir)
        self.metadata = metadata
        self.format = format
        self.classes = list(metadata["classes"])
        self.palette = [tuple(int(v) for v in c) for c in metadata["palette"]]
        self.ignore_index = int(metadata["ignore_index"])
        self.input_size = (int(metadata["input_size"][0]), int(metadata["input_size"][1]))
        self.channels = int(metadata.get("channels", 3))
        self.intensity = metadata.get("intensity")
        self.policy = metadata["policy"]
        self.crop_scale = float(metadata["crop_scale"]) if self.policy == "crop" else 1.0
        self.tta = (metadata.get("tta") or {}).get("flips", "none")
        if self.policy == "crop":
            try:
                pipeline.tile_positions(*self.input_size, *self.input_size, overlap=tile_overlap)
            except ConfigError:
                raise ConfigError(
                    f"--tile-overlap must be an integer in [0, {min(self.input_size)}) for this "
                    f"model's {self.input_size[1]}x{self.input_size[0]} tiles. "
                    f"Received: {tile_overlap!r}."
                ) from None
        self.tile_overlap = int(tile_overlap)
        self.batch_size = int(batch_size)
        self._runner = runner

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"SegmentationModel({str(self.model_dir)!r}, format={self.format!r}, "
            f"classes={self.classes}, input_size={self.input_size}, policy={self.policy!r}, "
            f"tta={self.tta!r})"
        )

    def predict_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """Runs the network alone on inputs of the model's `input_size`.

        Args:
            tiles: float32 `(N, h, w, channels)` 0..255 (normalisation is in the model).

        Returns:
            float32 `(N, h, w, C)` class probabilities.

        Raises:
            ConfigError: the model file's output does not match `autoseg.json`.
        """
        tiles = np.ascontiguousarray(tiles, dtype=np.float32)
        expected = (len(tiles), *self.input_size, self.num_classes)
        outputs = [
            self._runner(tiles[i : i + self.batch_size]) for i in range(0, len(tiles), self.batch_size)
        ]
        scores = np.concatenate(outputs) if outputs else np.zeros(expected, np.float32)
        if scores.shape != expected:
            raise ConfigError(
                f"The {self.format} model in {self.model_dir} returns shape {scores.shape}, but "
                f"{METADATA_FILE} says {self.num_classes} classes at input {self.input_size} "
                f"(expected {expected}). The folder mixes files of different exports."
            )
        return scores.astype(np.float32, copy=False)

    def model_input(self, image: np.ndarray, name: str = "image", error=ConfigError) -> np.ndarray:
        """A photo as the network takes it: the model's channels, scaled by its rule.

        Args:
            image: The photo as stored: `(H, W)` or `(H, W, 1)` grey, `(H, W, 3)` RGB or
                `(H, W, 4)` RGBA; uint8 for 8-bit models, the full depth (uint16, float,
                ...) for models with an intensity rule.
            name: How error messages refer to it.
            error: The exception class to raise. Defaults to `ConfigError`.

        Returns:
            `(H, W, channels)`: uint8 for 8-bit models, float32 0..255 otherwise.

        Raises:
            error: not a photo array this model takes (with what it takes).
        """
        if not isinstance(image, np.ndarray):
            raise error(f"{name} must be a numpy array. Received: {type(image).__name__}.")
        return pipeline.model_input(image, self.channels, self.intensity, name, error)

    def predict_scores(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Class probabilities of a photo, at the photo's size.

        Args:
            image: The photo as stored (see `model_input`): uint8 RGB `(H, W, 3)` for an 8-bit
                RGB model (also accepted: grey `(H, W)`, RGBA `(H, W, 4)`).
            name: How error messages refer to it. Defaults to "image".

        Returns:
            float32 `(H, W, C)`.

        Raises:
            ConfigError: `image` is not a photo array this model takes.
        """
        return self._scores(self.model_input(image, name))

    def _scores(self, image: np.ndarray) -> np.ndarray:
        """`predict_scores` of a photo already brought to the model (`model_input`)."""
        height, width = image.shape[:2]
        tile_h, tile_w = self.input_size
        if self.policy == "resize":
            x = pipeline.resize_image(image, self.input_size).astype(np.float32)[None]
            scores = self.predict_tiles(x)[0]
        else:
            scaled_h, scaled_w = pipeline.scaled_size(height, width, self.crop_scale)
            scaled = pipeline.resize_image(image, (scaled_h, scaled_w))
            positions = pipeline.tile_positions(scaled_h, scaled_w, tile_h, tile_w, self.tile_overlap)
            tiles = pipeline.extract_tiles(scaled, positions, tile_h, tile_w, 0).astype(np.float32)
            scores = pipeline.stitch(self.predict_tiles(tiles), positions, scaled_h, scaled_w)
        return resize_scores(scores, (height, width))

    def predict(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """The class map of a photo, at the photo's size.

        Args:
            image: The photo as stored (see `model_input`): uint8 RGB `(H, W, 3)` for an 8-bit
                RGB model (also accepted: grey `(H, W)`, RGBA `(H, W, 4)`).
            name: How error messages refer to it. Defaults to "image".

        Returns:
            uint8 `(H, W)` class indices.

        Example:
        ```python
        model = autoseg.load("exports/weeds-0007")
        class_map = model.predict(np.asarray(Image.open("field.jpg").convert("RGB")))
        ```
        """
        return np.argmax(self.predict_scores(image, name), axis=-1).astype(np.uint8)


def load(
    model_dir: str | os.PathLike,
    format: str = "keras",
    *,
    tile_overlap: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> SegmentationModel:
    """Loads an exported model folder.

    Args:
        model_dir: A folder written by `autoseg export`.
        format: keras (default), saved_model, tflite or onnx; the folder must hold it.
        tile_overlap: Pixels shared by neighbouring tiles with the crop policy. Defaults to 0,
            the tiling validation scored.
        batch_size: Tiles per network call. Defaults to 8.

    Returns:
        A `SegmentationModel`.

    Raises:
        ConfigError: a missing or invalid `autoseg.json`, a format the folder does not hold,
            a missing or damaged model file, or a `.keras` file that needs `safe_mode=False`.

    Example:
    ```python
    model = autoseg.load("exports/weeds-0007", format="tflite")
    class_map = model.predict(image)
    ```
    """
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    if format not in FORMATS:
        raise ConfigError(f"Unknown --format {format!r}. Valid formats: {', '.join(FORMATS)}.")
    formats = metadata["formats"]
    if format not in formats:
        raise ConfigError(
            f"{model_dir} holds no {format} model. It holds: {', '.join(formats)}. "
            f"Pass --format {next(iter(formats))}, or export again with --format {format}."
        )
    runner = open_runner(model_dir / formats[format], format)
    return SegmentationModel(model_dir, metadata, runner, format, tile_overlap, batch_size)


# --------------------------------------------------------------------------------------------
# Images in and out.


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Checks a photo array and returns it as uint8 RGB `(H, W, 3)`.

    Grey `(H, W)` or `(H, W, 1)` is repeated over three channels; RGBA drops its alpha.

    Raises:
        ConfigError: not a uint8 array of one of those shapes.
    """
    if not isinstance(image, np.ndarray):
        raise ConfigError(f"image must be a numpy array. Received: {type(image).__name__}.")
    if image.dtype != np.uint8:
        raise ConfigError(
            f"image must be uint8 RGB (0..255). Received: dtype={image.dtype}. "
            "Convert it with image.astype(np.uint8) if its values are 0..255."
        )
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ConfigError(f"image must be (height, width, 3) RGB. Received: shape={image.shape}.")
    return np.ascontiguousarray(image)


def resize_scores(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes a `(h, w, C)` score map bilinearly to `size = (height, width)`."""
    height, width = size
    if scores.shape[:2] == (height, width):
        return np.asarray(scores, np.float32)
    # cv2.resize takes at most 4 channels in one call with every interpolation.
    parts = [
        cv2.resize(
            np.ascontiguousarray(scores[..., i : i + 4], np.float32), (width, height),
            interpolation=cv2.INTER_LINEAR,
        ).reshape(height, width, -1)
        for i in range(0, scores.shape[-1], 4)
    ]
    return np.concatenate(parts, axis=-1)


def colorize(class_map: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The palette colour of each pixel: uint8 `(H, W, 3)`. Values past the palette are white."""
    table = np.full((256, 3), 255, np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
    return table[np.asarray(class_map, np.uint8)]


def overlay(
    image: np.ndarray,
    class_map: np.ndarray,
    palette: Sequence[Sequence[int]],
    classes: Sequence[str],
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """The photo blended with its colour mask, with a legend of class names and colours.

    The legend (top left) lists every class when it fits in the image, else the classes
    present in `class_map`.

    Returns:
        uint8 RGB `(H, W, 3)`, the photo's size.
    """
    image = as_rgb(image)
    color = colorize(class_map, palette)
    blended = (image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha)
    canvas = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    _draw_legend(canvas, class_map, palette, classes)
    return np.asarray(canvas)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _draw_legend(canvas: Image.Image, class_map, palette, classes) -> None:
    width, height = canvas.size
    size = max(10, min(32, height // 30))
    pad = max(2, size // 4)
    font = _font(size)
    shown = list(range(len(classes)))
    if len(shown) * (size + pad) + pad > height:
        shown = [int(c) for c in np.unique(class_map) if int(c) < len(classes)]
    draw = ImageDraw.Draw(canvas, "RGBA")
    text_width = max(
        (draw.textbbox((0, 0), str(classes[c]), font=font)[2] for c in shown), default=0
    )
    box_w = pad * 3 + size + text_width
    box_h = pad + len(shown) * (size + pad)
    draw.rectangle([0, 0, box_w, box_h], fill=(255, 255, 255, 190))
    for row, c in enumerate(shown):
        y = pad + row * (size + pad)
        draw.rectangle([pad, y, pad + size, y + size], fill=tuple(palette[c]) + (255,),
                       outline=(0, 0, 0, 255))
        draw.text((pad * 2 + size, y), str(classes[c]), fill=(0, 0, 0, 255), font=font)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Files and folders.


@dataclasses.dataclass
class PredictReport:
    """What `predict_files` did.

    Attributes:
        written: `(input, [output files])` per image predicted.
        failed: `(input, reason)` per input that could not be read.
        ignored: Files in input folders without an image extension.
        tta: The flips the model averaged (`autoseg.json`'s `tta`: "none", "h", "hv").
    """

    written: list[tuple[Path, list[Path]]] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    ignored: list[Path] = dataclasses.field(default_factory=list)
    tta: str = "none"


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Expands files and folders into the files to predict.

    Files given by name are always tried; a folder contributes its files (not sub-folders)
    whose extension is an image extension, sorted by name.

    Returns:
        `(files, ignored)`: the files to predict and the folder files left out.

    Raises:
        ConfigError: an input does not exist, none is given, two inputs share a file stem
            (their outputs would collide), or nothing is left to predict.
    """
    files: list[Path] = []
    ignored: list[Path] = []
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ConfigError("Give at least one image file or folder to predict.")
    for path in inputs:
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if not child.is_file() or child.name.startswith("."):
                    continue
                (files if child.suffix.lower() in IMAGE_EXTENSIONS else ignored).append(child)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"Input {path} does not exist.")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen and seen[path.stem].resolve() != path.resolve():
            raise ConfigError(
                f"{seen[path.stem]} and {path} share the stem {path.stem!r}: their outputs "
                f"({path.stem}_mask.png, ...) would overwrite each other. Rename one, or "
                "predict them into different --out folders."
            )
        seen[path.stem] = path
    files = list(dict.fromkeys(p.resolve() for p in files))
    if not files:
        raise ConfigError(
            f"No image to predict in {', '.join(map(str, inputs))} "
            f"(image extensions: {', '.join(IMAGE_EXTENSIONS)})."
        )
    return files, ignored


def predict_files(
    model: SegmentationModel,
    inputs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    with_overlay: bool = True,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> PredictReport:
    """Predicts image files and folders; writes masks, colour masks and overlays.

    For each image, at its original size: `<stem>_mask.png` (uint8 class index),
    `<stem>_color.png` (the palette's colours) and, unless `with_overlay` is False,
    `<stem>_overlay.png` (the photo blended with the colour mask, with a legend). Each file
    is written whole (a temporary file, then `os.replace`). An unreadable image is reported
    through `warn` and skipped; the others are still predicted.

    Args:
        model: From `load`.
        inputs: Image files and folders.
        out: The output folder (created if needed).
        with_overlay: Also write overlays. Defaults to True.
        log: Where the progress line of each image goes.
        warn: Where problems with single inputs go. Defaults to stderr.

    Returns:
        A `PredictReport`.

    Raises:
        ConfigError: see `collect_inputs`.
    """
    if warn is None:
        warn = lambda message: print(message, file=sys.stderr)  # noqa: E731
    files, ignored = collect_inputs(inputs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder.")
    out.mkdir(parents=True, exist_ok=True)
    report = PredictReport(ignored=ignored, tta=model.tta)
    if ignored:
        warn(
            f"Note: ignored {len(ignored)} file(s) without an image extension: "
            f"{', '.join(p.name for p in ignored[:5])}{' ...' if len(ignored) > 5 else ''}"
        )
    total = len(files)
    for number, path in enumerate(files, start=1):
        start = time.perf_counter()
        try:
            image = model.model_input(pipeline.read_pixels(path), str(path), DatasetError)
        except (DatasetError, OSError) as exc:
            reason = str(exc) if isinstance(exc, AutosegError) else f"{path} cannot be read: {exc}"
            report.failed.append((path, reason))
            warn(f"Skipped {path}: {reason}")
            continue
        class_map = np.argmax(model._scores(image), axis=-1).astype(np.uint8)
        outputs = {
            out / f"{path.stem}_mask.png": class_map,
            out / f"{path.stem}_color.png": colorize(class_map, model.palette),
        }
        if with_overlay:
            display = image if image.dtype == np.uint8 else np.clip(np.rint(image), 0, 255).astype(np.uint8)
            outputs[out / f"{path.stem}_overlay.png"] = overlay(
                display, class_map, model.palette, model.classes
            )
        for target, array in outputs.items():
            atomic.write_bytes(target, _png(array))
        report.written.append((path, list(outputs)))
        log(
            f"[predict {number}/{total}] {path.name} ({image.shape[1]}x{image.shape[0]}) -> "
            f"{out / path.stem}_*.png in {time.perf_counter() - start:.2f}s"
        )
    return report


def predict(
    model_dir: str | os.PathLike,
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    format: str = "keras",
    tile_overlap: int = 0,
    overlay: bool = True,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> PredictReport:
    """Segments image files and folders with an exported model, as `autoseg predict` does.

    `load` then `predict_files`: for each image, at its original size, `<stem>_mask.png`,
    `<stem>_color.png` and (unless `overlay` is False) `<stem>_overlay.png` in `out`.
    Unreadable images are skipped and listed in the report's `failed`; the CLI then exits
    with 1, this function returns normally.

    Args:
        model_dir: A folder written by `autoseg export`.
        inputs: An image file or folder, or several.
        out: The output folder (created if needed).
        format: The model file to run: keras, saved_model, tflite or onnx. Defaults to
            "keras".
        tile_overlap: Pixels shared by neighbouring tiles for a crop-policy model. Defaults
            to 0, the tiling validation scored.
        overlay: Also write `<stem>_overlay.png` (the CLI's `--no-overlay` sets it to False).
            Defaults to True.
        log: Where the progress line of each image goes. Defaults to print.
        warn: Where problems with single inputs go. Defaults to stderr.

    Returns:
        A `PredictReport`.

    Raises:
        ConfigError: a missing input, no image to predict, two inputs with the same stem,
            `out` is a file, or a bad model folder or format (see `load`).

    Example:
    ```python
    report = autoseg.predict("exports/weeds-0007", "field/", out="masks", format="tflite")
    [outputs for _, outputs in report.written]
    ```
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    collect_inputs(inputs)  # a bad input is reported before the model loads
    model = load(model_dir, format=format, tile_overlap=tile_overlap)
    return predict_files(model, inputs, out, with_overlay=overlay, log=log, warn=warn)


# `autoseg.predict(...)` runs `predict(...)` although `autoseg.predict` is this module.
make_callable(__name__, "predict")
