"""Evaluate an exported model on a dataset, at the images' original size.

Each image is predicted as `autoseg predict` does (resize or tiling, scores resized
bilinearly, argmax) and compared with its full-size mask. One confusion matrix is summed over
every image and scored with `autoseg.metrics.confusion_matrix` / `scores_from_confusion`, the
same code as the training metrics: pixels labelled `ignore_index` (255) are not counted, and
mean IoU and dice average over the classes present in target or prediction.

Training scores its metrics at the model's input size (resized masks, or tiles of the scaled
photo); evaluation scores the original masks, so its numbers differ slightly from the
leaderboard's and are the ones a user of the masks sees. A model exported with flip
test-time augmentation does its flips in its graph; the results record which (`tta`).

Outputs (`--out`, default `MODEL_DIR/eval-<dataset name>`):
```
metrics.json            mean_iou, per_class_iou, dice, pixel_accuracy, confusion_matrix, split, ...
confusion_matrix.csv    rows = target class, columns = predicted class, pixel counts
confusion_matrix.png    the same, coloured by the share of each target row
per_image.csv           stem, pixels, pixel_accuracy, mean_iou
```
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from autoseg import atomic
from autoseg.callable_module import make_callable
from autoseg.errors import ConfigError

SPLITS = ("val", "test", "all")
METRICS_FILE = "metrics.json"


@dataclasses.dataclass
class Evaluation:
    """The result of `evaluate`.

    Attributes:
        dataset: The dataset folder.
        split: "val", "test" or "all" as asked.
        split_source: Where the image list came from, in words.
        stems: The images evaluated.
        classes: Class names.
        confusion: int64 `(C, C)`, rows = target, columns = prediction.
        scores: `scores_from_confusion(confusion)`.
        per_image: `{"stem", "pixels", "pixel_accuracy", "mean_iou"}` per image.
        notes: Things the user should know (e.g. a split that fell back to every image).
        out: The folder written, or None.
        tta: The flip test-time augmentation the model does (`autoseg.json` `tta`).
    """

    dataset: Path
    split: str
    split_source: str
    stems: list[str]
    classes: list[str]
    confusion: np.ndarray
    scores: dict[str, Any]
    per_image: list[dict[str, Any]]
    notes: list[str]
    out: Path | None = None
    tta: str = "none"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; an undefined per-class IoU (class absent) is null."""
        return {
            "dataset": str(Path(self.dataset).resolve()),
            "split": self.split,
            "split_source": self.split_source,
            "num_images": len(self.stems),
            "stems": list(self.stems),
            "classes": list(self.classes),
            "mean_iou": self.scores["mean_iou"],
            "per_class_iou": {
                name: _finite_or_none(value)
                for name, value in zip(self.classes, self.scores["per_class_iou"])
            },
            "dice": self.scores["dice"],
            "pixel_accuracy": self.scores["pixel_accuracy"],
            "confusion_matrix": self.confusion.tolist(),
            "tta": self.tta,
            "notes": list(self.notes),
        }


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _same_dataset(dataset, metadata: dict[str, Any]) -> bool:
    recorded = metadata.get("dataset")
    if recorded and Path(recorded).resolve() == Path(dataset.root).resolve():
        return True
    fingerprint = metadata.get("fingerprint")
    return bool(fingerprint) and fingerprint == dataset.fingerprint


def choose_stems(dataset, metadata: dict[str, Any], split: str) -> tuple[list[str], str, list[str]]:
    """The images of `split`.

    `val`: the run's recorded validation split when `dataset` is the run's dataset, else
    dataset.yaml's `splits.val`, else every image (with a note). `test`: dataset.yaml's
    `splits.test`. `all`: every image.

    Returns:
        `(stems, source, notes)`.

    Raises:
        ConfigError: an unknown split, or `test` without `splits.test` in dataset.yaml.
    """
    if split not in SPLITS:
        raise ConfigError(f"Unknown --split {split!r}. Valid splits: {', '.join(SPLITS)}.")
    splits = dataset.splits or {}
    same = _same_dataset(dataset, metadata)
    if split == "all":
        notes = []
        if same:
            notes.append("--split all includes the images the model was trained on.")
        return list(dataset.stems), "every image", notes
    if split == "test":
        stems = splits.get("test") or []
        if not stems:
            raise ConfigError(
                f"{dataset.root / 'dataset.yaml'} lists no `splits.test`. Add one, or pass "
                "--split val or --split all."
            )
        return list(stems), "dataset.yaml splits.test", []
    recorded = (metadata.get("split") or {}).get("val") or []
    if same and recorded:
        missing = [s for s in recorded if s not in dataset.images]
        if not missing:
            return list(recorded), "the search run's validation split", []
        note = (
            f"{len(missing)} image(s) of the run's validation split are gone from "
            f"{dataset.root} ({', '.join(missing[:5])}); "
        )
    else:
        note = ""
    if splits.get("val"):
        notes = [note + "using dataset.yaml splits.val."] if note else []
        return list(splits["val"]), "dataset.yaml splits.val", notes
    return list(dataset.stems), "every image (no validation split known)", [
        note + f"{dataset.root.name} has no validation split for this model (not the run's "
        "dataset, and no splits.val in dataset.yaml): evaluating every image, which may "
        "include training images."
    ]


def score_images(model, data, stems, log: Callable[[str], None] = print):
    """Predicts each image of `stems` at its own size and counts it against its mask.

    Args:
        model: A `SegmentationModel` (from `autoseg.load`).
        data: The dataset holding the images and masks.
        stems: The images to score.
        log: Where a progress line goes every 10 images.

    Returns:
        `(confusion, per_image)`: the `(C, C)` confusion matrix over all images, and one
        `{"stem", "pixels", "pixel_accuracy", "mean_iou"}` per image.
    """
    from autoseg.data import pipeline
    from autoseg.metrics import confusion_matrix, scores_from_confusion

    num_classes = len(data.classes)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    per_image = []
    start = time.perf_counter()
    for number, stem in enumerate(stems, start=1):
        # As stored: the model brings it to its own channels and intensity rule.
        image, mask = pipeline.load_example(data, stem, raw=True)
        prediction = model.predict(image, f"images/{data.image_path(stem).name}")
        image_cm = confusion_matrix(mask, prediction, num_classes, ignore_index=data.ignore_index)
        confusion += image_cm
        image_scores = scores_from_confusion(image_cm)
        per_image.append({
            "stem": stem,
            "pixels": int(image_cm.sum()),
            "pixel_accuracy": image_scores["pixel_accuracy"],
            "mean_iou": image_scores["mean_iou"],
        })
        if number == len(stems) or number % 10 == 0:
            log(f"[evaluate {number}/{len(stems)}] {time.perf_counter() - start:.1f}s")
    return confusion, per_image


def evaluate(
    model_dir: str | os.PathLike,
    dataset: str | os.PathLike,
    split: str = "val",
    out: str | os.PathLike | None = None,
    format: str = "keras",
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    tile_overlap: int = 0,
) -> Evaluation:
    """Evaluates an exported model on a dataset and writes the results.

    Args:
        model_dir: A folder written by `autoseg export`.
        dataset: A prepared dataset (or a raw folder `autoseg prepare` understands).
        split: "val" (default), "test" or "all"; see `choose_stems`.
        out: Where to write the results. Defaults to `MODEL_DIR/eval-<dataset name>`. An
            earlier evaluation there is replaced; another non-empty folder needs `overwrite`.
        format: The model file to run (keras, saved_model, tflite, onnx). Defaults to keras.
        overwrite: Replace a non-empty `out` that is not an evaluation.
        log: Where progress lines go.
        tile_overlap: Pixels shared by neighbouring tiles for a crop-policy model.
            Defaults to 0, the tiling validation scored.

    Returns:
        An `Evaluation`.

    Raises:
        ConfigError: a bad model folder, split or output folder, classes that differ
            between the model and the dataset, or photos the model does not take (8-bit
            photos for a model of 16-bit ones, say).
        DatasetError: unreadable images or masks, mask values outside the classes, or a
            dataset with fewer than two classes (`check_trainable`).

    Example:
    ```python
    result = autoseg.evaluate("exports/weeds-0007", "data/weeds", split="val")
    result.scores["mean_iou"]
    ```
    """
    from autoseg.data.dataset import check_trainable
    from autoseg.data.sources import resolve_dataset
    from autoseg.metrics import scores_from_confusion
    from autoseg.predict import load, read_metadata

    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    data = resolve_dataset(dataset)
    check_trainable(data)
    if list(data.classes) != list(metadata["classes"]):
        raise ConfigError(
            f"The model in {model_dir} predicts classes {metadata['classes']}, but "
            f"{data.root} has classes {data.classes}. Evaluate on a dataset with the same "
            "classes in the same order."
        )
    stems, source, notes = choose_stems(data, metadata, split)
    out = Path(out) if out is not None else model_dir / f"eval-{Path(dataset).resolve().name}"
    overwrite = overwrite or (out / METRICS_FILE).is_file()
    atomic.check_output_dir(out, overwrite)
    model = load(model_dir, format=format, tile_overlap=tile_overlap)
    for note in notes:
        log(f"Note: {note}")
    confusion, per_image = score_images(model, data, stems, log=log)
    result = Evaluation(
        dataset=data.root, split=split, split_source=source, stems=stems,
        classes=list(data.classes), confusion=confusion,
        scores=scores_from_confusion(confusion), per_image=per_image, notes=notes,
        tta=model.tta,
    )
    record = {
        **result.to_json(),
        "model_dir": str(model_dir.resolve()),
        "format": format,
        "trial_id": metadata.get("trial_id"),
        "ignore_index": data.ignore_index,
    }
    with atomic.output_dir(out, overwrite) as tmp:
        (tmp / METRICS_FILE).write_text(json.dumps(record, indent=1))
        (tmp / "confusion_matrix.csv").write_text(confusion_csv(confusion, result.classes))
        (tmp / "per_image.csv").write_text(_per_image_csv(per_image))
        (tmp / "confusion_matrix.png").write_bytes(confusion_png(confusion, result.classes))
    result.out = out
    return result


def confusion_csv(confusion: np.ndarray, classes: list[str]) -> str:
    """The confusion matrix as CSV: a header of predicted classes, one row per target class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["target \\ predicted", *classes])
    for name, row in zip(classes, confusion):
        writer.writerow([name, *(int(v) for v in row)])
    return buffer.getvalue()


def _per_image_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["stem", "pixels", "pixel_accuracy", "mean_iou"])
    for row in rows:
        writer.writerow([row["stem"], row["pixels"], f"{row['pixel_accuracy']:.6f}",
                         f"{row['mean_iou']:.6f}"])
    return buffer.getvalue()


def confusion_png(confusion: np.ndarray, classes: list[str], cell: int = 84) -> bytes:
    """Draws the confusion matrix: counts and row shares, cells shaded by the row share.

    Returns:
        PNG bytes.
    """
    confusion = np.asarray(confusion, np.int64)
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, np.float64), where=rows > 0)
    try:
        font = ImageFont.load_default(size=13)
        small = ImageFont.load_default(size=11)
    except (TypeError, OSError):
        font = small = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(probe.textbbox((0, 0), name, font=font)[2] for name in classes) + 16
    label_w = max(label_w, 90)
    top = 60
    n = len(classes)
    title = "columns: predicted class; rows: target class"
    width = max(label_w + n * cell, label_w + probe.textbbox((0, 0), title, font=font)[2]) + 10
    canvas = Image.new("RGB", (width, top + label_w + n * cell + 10), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 8), title, fill="black", font=font)
    draw.text((label_w, 28), "cell: pixels and share of the target row", fill="gray", font=small)
    # Column labels, rotated, in the strip under the title.
    for j, name in enumerate(classes):
        text_w = probe.textbbox((0, 0), name, font=font)[2] + 4
        label = Image.new("RGB", (text_w, 18), "white")
        ImageDraw.Draw(label).text((2, 1), name, fill="black", font=font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (label_w + j * cell + cell // 2 - 9, top + label_w - label.size[1] - 4))
    grid_top = top + label_w
    for i, name in enumerate(classes):
        draw.text((6, grid_top + i * cell + cell // 2 - 8), name, fill="black", font=font)
        for j in range(n):
            x0, y0 = label_w + j * cell, grid_top + i * cell
            level = int(round(255 * (1 - share[i, j])))
            fill = (level, level, 255) if i == j else (255, level, level)
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=fill, outline="gray")
            colour = "white" if share[i, j] > 0.6 else "black"
            draw.text((x0 + 6, y0 + cell // 2 - 16), f"{confusion[i, j]:,}", fill=colour, font=small)
            draw.text((x0 + 6, y0 + cell // 2 + 2), f"{share[i, j]:.1%}", fill=colour, font=small)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def format_report(result: Evaluation) -> str:
    """The evaluation as text: per-class IoU, then mean IoU, dice and pixel accuracy."""
    width = max([len("class")] + [len(c) for c in result.classes])
    lines = [
        f"Evaluated {len(result.stems)} image(s) of {result.dataset} "
        f"(--split {result.split}: {result.split_source}; flip TTA: {result.tta})",
        f"{'class'.ljust(width)}  IoU",
    ]
    for name, value in zip(result.classes, result.scores["per_class_iou"]):
        shown = f"{value:.4f}" if math.isfinite(value) else "n/a (absent from target and prediction)"
        lines.append(f"{name.ljust(width)}  {shown}")
    s = result.scores
    lines.append(
        f"mean IoU {s['mean_iou']:.4f}  dice {s['dice']:.4f}  pixel accuracy {s['pixel_accuracy']:.4f}"
    )
    return "\n".join(lines)


# `autoseg.evaluate(...)` runs `evaluate(...)` although `autoseg.evaluate` is this module.
make_callable(__name__, "evaluate")
