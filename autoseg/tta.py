"""Flip test-time augmentation: class probabilities averaged over flipped copies of the input.

`flip_tta_model(model, "h")` returns a Keras model that takes what `model` takes, runs it on
the image and on its mirror image, flips the second output back and outputs the mean of the
two probability maps. The flips are `keras.ops.flip` nodes of a functional graph (ReverseV2 in
TensorFlow, REVERSE_V2 in TFLite, a negative-step Slice in ONNX), so every exported format
does them itself: one image in, averaged probabilities out, the same contract as the single
model (float32 `(N, H, W, C)` softmax probabilities), and `autoseg.predict` needs no TTA code.
The graph loads with `safe_mode=True` and no `custom_objects`.

Which flips (`FLIPS`): "none" (the model itself, bit for bit), "h" (identity + horizontal
mirror), "hv" (identity, horizontal, vertical and both: the four flips of a top-down photo,
harmful where up and down differ, as in street scenes). `choose_flips` keeps the option with
the best validation mean IoU, and "none" unless a flip raises it by `MIN_GAIN`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

#: Option -> the axes of an `(N, H, W, C)` tensor each averaged view reverses (() = as is).
FLIPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "h": ((), (2,)),
    "hv": ((), (2,), (1,), (1, 2)),
}
#: What `--tta` takes: "auto" chooses among `FLIPS` by validation mean IoU.
CHOICES = ("auto", *FLIPS)
#: The validation mean IoU a flip option must add over the option with fewer flips to be
#: kept by "auto": it costs 2x (h) or 4x (hv) the inference. On CWFID's 8 validation photos
#: the options moved the mean IoU by -0.008 to +0.004 for two U-Nets trained with flip
#: augmentation (benchmarks/RESULTS.md): noise, not worth doubling a robot's latency.
MIN_GAIN = 0.005


def check_choice(tta: str, where: str = "--tta") -> str:
    """Returns `tta` if it is one of `CHOICES`.

    Raises:
        ConfigError: anything else, with the valid choices.
    """
    from autoseg.errors import ConfigError

    if tta not in CHOICES:
        raise ConfigError(f"Unknown {where} {tta!r}. Valid choices: {', '.join(CHOICES)}.")
    return tta


def flip_tta_model(model, flips: str):
    """Wraps a segmentation model into one that averages its probabilities over `flips`.

    Args:
        model: A Keras model, `(N, H, W, channels)` in, `(N, H, W, C)` probabilities out.
        flips: A key of `FLIPS`.

    Returns:
        `model` itself for "none"; else a functional model sharing `model`'s weights whose
        output is the mean over the views of `unflip(model(flip(x)))`.

    Example:
    ```python
    tta = flip_tta_model(model, "h")
    tta(x) == (model(x) + flip(model(flip(x, 2)), 2)) / 2
    ```
    """
    import keras

    check_choice(flips)
    if flips == "auto":
        raise ValueError("flip_tta_model takes a chosen option, not 'auto' (see choose_flips).")
    if flips == "none":
        return model
    image = keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype, name="image")
    views = []
    for axes in FLIPS[flips]:
        flipped = keras.ops.flip(image, axis=axes) if axes else image
        scores = model(flipped)
        views.append(keras.ops.flip(scores, axis=axes) if axes else scores)
    mean = keras.layers.Average(name="tta_mean", dtype="float32")(views)
    return keras.Model(image, mean, name=f"{model.name}_tta_{flips}")


@dataclasses.dataclass
class Measurement:
    """One option scored on the validation photos.

    Attributes:
        mean_iou: Mean IoU over the photos at full resolution.
        seconds_per_photo: Wall time of a photo's prediction.
    """

    mean_iou: float
    seconds_per_photo: float


def choose_flips(score: Callable[[str], Measurement] | None, reason_if_none: str = "",
                 options: tuple[str, ...] = tuple(FLIPS)) -> dict[str, Any]:
    """Scores each option and keeps the best: the `tta` record of `autoseg.json`.

    Args:
        score: Option -> its `Measurement` on the validation photos; None when there are
            no validation photos (then the choice is "none").
        reason_if_none: Why `score` is None, for the record.
        options: The options to score, "none" first. Defaults to every key of `FLIPS`.

    Returns:
        `{"flips", "requested": "auto", "val_mean_iou", "seconds_per_photo", "reason"}`:
        the option with the highest mean IoU, where more flips must beat fewer by at least
        `MIN_GAIN` ("none" unless a flip adds that much).
    """
    if score is None:
        return {"flips": "none", "requested": "auto", "val_mean_iou": None,
                "seconds_per_photo": None, "reason": reason_if_none or "no validation photos"}
    measured = {option: score(option) for option in options}
    best = options[0]
    for option in options[1:]:  # each option doubles the network runs of the one before
        if measured[option].mean_iou >= measured[best].mean_iou + MIN_GAIN:
            best = option
    return {
        "flips": best,
        "requested": "auto",
        "val_mean_iou": {k: m.mean_iou for k, m in measured.items()},
        "seconds_per_photo": {k: m.seconds_per_photo for k, m in measured.items()},
        "reason": (f"highest validation mean IoU (full resolution, as predict runs); more "
                   f"flips kept only for +{MIN_GAIN} or more"),
    }


def requested(flips: str) -> dict[str, Any]:
    """The `tta` record of an option named by the user (nothing measured)."""
    return {"flips": flips, "requested": flips, "val_mean_iou": None, "seconds_per_photo": None,
            "reason": f"tta={flips} asked for, not measured"}


def describe(record: dict[str, Any] | None) -> str:
    """`flip TTA: h (val mIoU 0.812 vs 0.797 without)`, from a `tta` record (None = "none")."""
    record = record or {"flips": "none"}
    flips = record.get("flips", "none")
    scores = record.get("val_mean_iou") or {}
    if flips != "none" and "none" in scores and flips in scores:
        return f"flip TTA: {flips} (val mIoU {scores[flips]:.3f} vs {scores['none']:.3f} without)"
    if flips == "none" and scores:
        tried = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
        return f"flip TTA: none (val mIoU {tried})"
    reason = record.get("reason")
    return f"flip TTA: {flips}" + (f" ({reason})" if reason else "")
