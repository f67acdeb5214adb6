"""Issue #12 §4: what each step of finishing the winner adds, scored on photos no search saw.

Given two finished searches of the same data and budget, one that ends by training the best
on its training photos (`--finish-on train`, the default) and one that ends by training it
on the training and validation photos (`--finish-on train+val`), it exports, scores and
times four models, each step adding one thing to the one before:

1. `winner`: the first search's best trial alone (`--tta none`);
2. `+ train+val`: the second search's best (its finish trained on the validation photos too);
3. `+ flip TTA`: the same, exported with `--tta <flips>` (default `hv`);
4. `+ ensemble of K`: the same with `--ensemble K` (default 3) and the flips.

Each export holds model.keras, model.tflite and model.onnx (checked against each other by
`autoseg export` itself). The scores are the dataset's `splits.test` photos (held out of
both searches: make them with `SEARCH_TEST=N benchmarks/search_cwfid.py`) predicted at their
own size through the TFLite model, as a robot would run it, and scored with `autoseg.metrics`;
the table gives the mean IoU, the rarest class's IoU (rarest in the test masks' pixels) and
each step's gain over the one before. The inference cost is the median wall time of
`SegmentationModel.predict` over the test photos (tiling, flips and resizing included, one
warm-up photo first), for TFLite and ONNX, in this process (both cores).

    python benchmarks/finish_steps.py --train RUN_A --train-val RUN_B --dataset DATASET \\
        [--flips hv] [--ensemble 3] [--out DIR]

`RUN_A` and `RUN_B` are run folders (`search_cwfid.py`'s `planned` and `planned+tv`);
`DATASET` is the prepared dataset whose `dataset.yaml` lists the test photos (for
`search_cwfid.py`, `OUT/data/test<N>_seed<S>`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FORMATS = ("tflite", "onnx")


def steps(args) -> list[dict]:
    """The four exports: name, run folder, and export options."""
    return [
        {"step": "winner", "run": args.train, "tta": "none", "ensemble": 1},
        {"step": "+ train+val", "run": args.train_val, "tta": "none", "ensemble": 1},
        {"step": f"+ flip TTA ({args.flips})", "run": args.train_val, "tta": args.flips, "ensemble": 1},
        {"step": f"+ ensemble of {args.ensemble}", "run": args.train_val, "tta": args.flips,
         "ensemble": args.ensemble},
    ]


def export_step(step: dict, folder: Path) -> dict:
    """Exports one step's model to `folder` (kept when it is already there)."""
    import autoseg

    if not (folder / "autoseg.json").is_file():
        autoseg.export("best", run=step["run"], out=folder, formats=("keras", "tflite", "onnx"),
                       tta=step["tta"], ensemble=step["ensemble"], overwrite=True,
                       log=lambda line: print(f"    {line}", flush=True))
    return json.loads((folder / "autoseg.json").read_text())


def score_and_time(folder: Path, data, stems: list[str]) -> dict:
    """Test scores through the TFLite model; median ms per photo for each format."""
    import numpy as np

    import autoseg
    from autoseg.data import pipeline
    from autoseg.evaluate import score_images
    from autoseg.metrics import scores_from_confusion

    confusion, _ = score_images(autoseg.load(folder, format="tflite"), data, stems, log=lambda _: None)
    scores = scores_from_confusion(confusion)
    result = {
        "mean_iou": float(scores["mean_iou"]),
        "iou": {c: float(v) for c, v in zip(data.classes, scores["per_class_iou"])},
        "pixels": np.asarray(confusion).sum(axis=1).tolist(),
    }
    images = [pipeline.load_example(data, stem, raw=True)[0] for stem in stems]
    for fmt in FORMATS:
        model = autoseg.load(folder, format=fmt)
        model.predict(images[0])  # warm-up: the first call builds the interpreter's plan
        seconds = []
        for image in images:
            start = time.perf_counter()
            model.predict(image)
            seconds.append(time.perf_counter() - start)
        result[f"ms_{fmt}"] = 1000 * statistics.median(seconds)
    return result


def table(rows: list[dict], classes: list[str], rarest: str) -> str:
    lines = [
        f"| step | trial(s) | trained on | TTA | **mIoU (test)** | Δ | {rarest} IoU | Δ | "
        + " | ".join(f"{c}" for c in classes if c != rarest)
        + " | ms/photo TFLite | ms/photo ONNX |",
        "|---|---|---|---|---:|---:|---:|---:|" + "---:|" * (len(classes) - 1) + "---:|---:|",
    ]
    previous = None
    for row in rows:
        d_miou = "" if previous is None else f"{row['mean_iou'] - previous['mean_iou']:+.4f}"
        d_rare = "" if previous is None else f"{row['iou'][rarest] - previous['iou'][rarest]:+.3f}"
        others = " | ".join(f"{row['iou'][c]:.3f}" for c in classes if c != rarest)
        lines.append(
            f"| {row['step']} | {row['trials']} | {row['trained_on']} | {row['tta']} | "
            f"**{row['mean_iou']:.4f}** | {d_miou} | {row['iou'][rarest]:.3f} | {d_rare} | "
            f"{others} | {row['ms_tflite']:.0f} | {row['ms_onnx']:.0f} |")
        previous = row
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, type=Path, help="run folder, --finish-on train")
    parser.add_argument("--train-val", required=True, type=Path, help="run folder, --finish-on train+val")
    parser.add_argument("--dataset", required=True, type=Path, help="dataset with splits.test")
    parser.add_argument("--flips", default="hv", choices=("h", "hv"), help="TTA flips (default hv)")
    parser.add_argument("--ensemble", type=int, default=3, help="ensemble size (default 3)")
    parser.add_argument("--out", type=Path, help="exports and results (default: beside --train)")
    args = parser.parse_args()
    out = args.out or args.train.parent / "finish_steps"
    out.mkdir(parents=True, exist_ok=True)

    from autoseg.data.dataset import load_dataset
    from autoseg.errors import ConfigError

    data = load_dataset(args.dataset)
    stems = list((data.splits or {}).get("test") or [])
    if not stems:
        raise SystemExit(f"{args.dataset}/dataset.yaml lists no splits.test: nothing held out to score.")
    rows = []
    for number, step in enumerate(steps(args)):
        print(f"[{step['step']}] exporting from {step['run']}", flush=True)
        try:
            metadata = export_step(step, out / f"step{number}")
        except ConfigError as error:  # e.g. fewer trials than the ensemble's size can join
            print(f"[{step['step']}] not exported: {error}", flush=True)
            continue
        members = (metadata.get("ensemble") or {}).get("members")
        trials = ", ".join(str(m["trial_id"]) for m in members) if members else str(metadata.get("trial_id"))
        result = score_and_time(out / f"step{number}", data, stems)
        rows.append({**step, **result, "run": str(step["run"]), "trials": trials,
                     "trained_on": metadata.get("trained_on", "train"),
                     "tta": (metadata.get("tta") or {}).get("flips", "none")})
        print(f"[{step['step']}] test mIoU {result['mean_iou']:.4f}, "
              f"{result['ms_tflite']:.0f} ms (TFLite), {result['ms_onnx']:.0f} ms (ONNX)", flush=True)
    pixels = rows[0]["pixels"]
    classes = list(data.classes)
    rarest = classes[min(range(len(classes)), key=lambda i: pixels[i])]
    (out / "finish_steps.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{len(stems)} test photos at full size; rarest class: {rarest}\n")
    print(table(rows, classes, rarest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
