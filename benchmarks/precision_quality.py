"""Does mixed bfloat16 train a model as well as float32? The same training on CWFID in each.

Issue #13 §1: `--precision auto` may choose Keras' `mixed_bfloat16` policy on CPUs with
native bfloat16 only where it trains at equal quality (val mIoU within 0.01 of float32).
Each precision trains in its own subprocess, one after the other, from the same seed: the
same initial weights (drawn in float32 before the policy matters: variables are float32 in
both), the same split, augmentation and batch order. Training is what a trial does:
BatchNormalization momentum `hypermodel.BATCHNORM_MOMENTUM`, Adam with
`hypermodel.CosineSchedule`, the loss and metrics of `autoseg.losses` / `autoseg.metrics`.

`--model` picks the family, each built like one the default search space offers (`MODELS`)
at the `--filters` width: the plain U-Net (depth 4), SegNet (its own encoder, depth 5),
DeepLabV3+ on ResNet-50 at output stride 16 (no width option), pix2pix around that
U-Net (the default space's pix2pix has the U-Net's own 64 filters), and the light U-Net
(depth 4).

Per precision it reports val mIoU at the input resolution (the search's objective) at the
last epoch and the best over epochs, the per-class IoU of the last epoch, and the last
epoch's val mIoU of the weights rebuilt in float32 (what `autoseg export` does with a
trial's checkpoint), with the seconds per epoch and the load average. The data are CWFID
(../shared/datasets/cwfid_carrot_weed) prepared outside the repository by
`bench_data.canonical_dataset`.

Without `avx512_bf16` / `amx_bf16` oneDNN emulates bfloat16: the rounding (hence the quality)
is bfloat16's as on a CPU that has them, the times are not.

    python benchmarks/precision_quality.py [--model unet] [--epochs 10] [--input-size 128x176]
                                           [--filters 16] [--batch 4] [--seeds 0]
                                           [--out /tmp/autoseg_precision_quality]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import CWFID, canonical_dataset  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")
VAL_FRACTION = 0.2
LOSS = "ce_dice"
LEARNING_RATE = 2e-3
AUG_STRENGTH = 0.25
#: The whole 1296x966 photo resized to `--input-size`: a 10-epoch U-Net learns soil and weed
#: (and some crop) in minutes, and validation needs no tiling.
POLICY = "resize"

#: `--model` -> (architecture, its options given the `--filters` width): each family as the
#: default search space (search_spaces/default.yaml) builds it, at that width.
MODELS = {
    "unet": lambda f: ("unet", {"depth": 4, "filters": f, "backbone": "none"}),
    "segnet": lambda f: ("segnet", {"depth": 5, "filters": f, "backbone": "none"}),
    "deeplabv3plus": lambda f: ("deeplabv3plus", {"backbone": "resnet50", "output_stride": 16}),
    "light_unet": lambda f: ("light_unet", {"depth": 4, "filters": f}),
    "pix2pix": lambda f: ("pix2pix", {"generator": "unet",
                                      "generator_options": {"depth": 4, "filters": f,
                                                            "backbone": "none"}}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="unet", choices=sorted(MODELS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--input-size", default="128x176", help="HxW, multiples of 16")
    parser.add_argument("--filters", type=int, default=16,
                        help="base width of U-Net (also pix2pix's) and SegNet")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each a pair of runs")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--out", default="/tmp/autoseg_precision_quality",
                        help="where CWFID is prepared and the results are written")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def train_once(config: dict) -> dict:
    """One training run in this process (see the module docstring)."""
    import keras
    import numpy as np

    from autoseg import devices, losses, metrics, models
    from autoseg.data import pipeline
    from autoseg.data.dataset import load_dataset
    from autoseg.hypermodel import BATCHNORM_MOMENTUM, CosineSchedule, set_batchnorm_momentum

    ds = load_dataset(config["dataset"])
    seed, size, epochs, batch = config["seed"], tuple(config["input_size"]), config["epochs"], config["batch"]
    train, val = pipeline.split_stems(ds, val_fraction=VAL_FRACTION, seed=seed)

    architecture, options = MODELS[config["model"]](config["filters"])

    def build():
        keras.utils.set_random_seed(seed)
        model = models.build(architecture, ds.num_classes, (*size, 3), **options)
        set_batchnorm_momentum(model, BATCHNORM_MOMENTUM)
        return model

    def compile_(model):
        model.compile(
            optimizer=keras.optimizers.Adam(LEARNING_RATE),
            loss=losses.get_loss(LOSS, ds.num_classes, ignore_index=ds.ignore_index),
            metrics=metrics.segmentation_metrics(ds.classes, ignore_index=ds.ignore_index),
            jit_compile=False,
        )

    with devices.dtype_policy(config["precision"]):
        model = build()
        compile_(model)
    head = _find_layer(model, lambda layer: layer.name == "predictions")
    first_conv = _find_layer(model, lambda layer: isinstance(layer, keras.layers.Conv2D))
    # Both precisions must start from the same weights (float32 variables in both).
    initial_checksum = float(sum(np.abs(w).sum() for w in model.get_weights()))
    train_ds = pipeline.make_dataset(ds, train, input_size=size, policy=POLICY,
                                     aug_strength=AUG_STRENGTH, batch_size=batch,
                                     training=True, seed=seed, repeat=True)
    val_ds = pipeline.make_dataset(ds, val, input_size=size, policy=POLICY, batch_size=batch,
                                   training=False, seed=seed)
    epoch_seconds = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.begun = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.begun)

    load_start = os.getloadavg()[0]
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0,
                        steps_per_epoch=pipeline.steps_per_pass(len(train), batch),
                        callbacks=[CosineSchedule(epochs), EpochTimer()]).history
    # What export does with a trial's checkpoint: rebuild in float32, load the weights.
    exported = build()
    exported.set_weights(model.get_weights())
    compile_(exported)
    exported_logs = exported.evaluate(val_ds, verbose=0, return_dict=True)
    curve = [float(v) for v in history["val_mean_iou"]]
    return {
        "precision": config["precision"],
        "seed": seed,
        "model": config["model"],
        "compute_dtype": first_conv.compute_dtype,
        "initial_weights_checksum": initial_checksum,
        "head_dtype": head.compute_dtype,
        "output_dtype": str(model.output.dtype),
        "val_mean_iou_curve": [round(v, 4) for v in curve],
        "val_mean_iou_last": round(curve[-1], 4),
        "val_mean_iou_best": round(max(curve), 4),
        "val_iou_last": {c: round(float(history[f"val_iou_{c}"][-1]), 4) for c in ds.classes},
        "train_loss_last": round(float(history["loss"][-1]), 4),
        "exported_float32_val_mean_iou": round(float(exported_logs["mean_iou"]), 4),
        "exported_output_dtype": str(exported.output.dtype),
        "finite": bool(np.all(np.isfinite(history["loss"]))),
        "epoch_seconds": [round(s, 1) for s in epoch_seconds],
        "load_start": round(load_start, 2),
        "load_end": round(os.getloadavg()[0], 2),
    }


def _find_layer(model, wanted):
    """The first layer of `model`, nested models included, for which `wanted(layer)` holds."""
    for layer in model.layers:
        if wanted(layer):
            return layer
        found = _find_layer(layer, wanted) if hasattr(layer, "layers") else None
        if found is not None:
            return found
    return None


def run_in_subprocess(config: dict, timeout: float) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(config)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**config, "error": f"timed out after {timeout:.0f} s"}
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {**config, "error": f"exit {result.returncode}: {tail}"}
    return json.loads(lines[-1])


def table(rows: list[dict], classes: list[str]) -> str:
    lines = [
        "| seed | precision | val mIoU last | best | " + " | ".join(f"IoU {c}" for c in classes)
        + " | exported float32 val mIoU | train loss | s/epoch (median) | load |",
        "|---:|---|---:|---:|" + "---:|" * len(classes) + "---:|---:|---:|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['seed']} | {row['precision']} | {row['error']} |")
            continue
        seconds = sorted(row["epoch_seconds"])[len(row["epoch_seconds"]) // 2]
        lines.append(
            f"| {row['seed']} | {row['precision']} | {row['val_mean_iou_last']:.3f} "
            f"| {row['val_mean_iou_best']:.3f} | "
            + " | ".join(f"{row['val_iou_last'][c]:.3f}" for c in classes)
            + f" | {row['exported_float32_val_mean_iou']:.3f} | {row['train_loss_last']:.3f} "
            f"| {seconds:.1f} | {row['load_start']:.1f}-{row['load_end']:.1f} |"
        )
    return "\n".join(lines)


def differences(rows: list[dict], precisions: list[str]) -> str:
    """Per seed: each precision's last and best val mIoU minus the first precision's."""
    lines = []
    for seed in sorted({r["seed"] for r in rows}):
        runs = {r["precision"]: r for r in rows if r["seed"] == seed and "error" not in r}
        base = runs.get(precisions[0])
        for precision in precisions[1:]:
            if base and precision in runs:
                run = runs[precision]
                lines.append(
                    f"seed {seed}: {precision} - {precisions[0]}: val mIoU last "
                    f"{run['val_mean_iou_last'] - base['val_mean_iou_last']:+.3f}, best "
                    f"{run['val_mean_iou_best'] - base['val_mean_iou_best']:+.3f}; "
                    f"time per epoch x{_median(run['epoch_seconds']) / _median(base['epoch_seconds']):.2f}"
                )
    return "\n".join(lines)


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(train_once(json.loads(args.worker))))
        return 0
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        sys.exit(f"Error: --precisions {args.precisions!r}: valid values are {', '.join(PRECISIONS)}.")
    try:
        height, width = (int(v) for v in args.input_size.lower().split("x"))
    except ValueError:
        sys.exit(f"Error: --input-size {args.input_size!r} is not HxW, e.g. 128x176.")
    out = Path(args.out)
    ds, how = canonical_dataset(CWFID, out / "data")
    print(f"python {' '.join(sys.argv)}")
    print(f"CWFID ({how}): {len(ds.stems)} images, classes "
          f"{', '.join(ds.classes)}; {args.model} {MODELS[args.model](args.filters)[1]}, "
          f"{height}x{width} "
          f"({POLICY}), batch {args.batch}, {LOSS}, Adam {LEARNING_RATE} with cosine decay, "
          f"aug {AUG_STRENGTH}, {args.epochs} epochs; load average before: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()), flush=True)
    started = time.time()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for precision in precisions:
            config = {"dataset": str(ds.root), "model": args.model, "precision": precision,
                      "seed": seed,
                      "input_size": [height, width], "filters": args.filters,
                      "batch": args.batch, "epochs": args.epochs}
            begun = time.time()
            rows.append(run_in_subprocess(config, args.timeout))
            row = rows[-1]
            print(f"  seed {seed} {precision}: {time.time() - begun:.0f} s, "
                  + (row["error"] if "error" in row else
                     f"val mIoU last {row['val_mean_iou_last']:.3f} best "
                     f"{row['val_mean_iou_best']:.3f}, {_median(row['epoch_seconds']):.1f} "
                     f"s/epoch"), flush=True)
    print(f"\nTotal {(time.time() - started) / 60:.1f} min; load average after: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print()
    print(table(rows, list(ds.classes)))
    print()
    print(differences(rows, precisions))
    for row in rows:
        if "error" not in row:
            print(f"seed {row['seed']} {row['precision']}: compute {row['compute_dtype']}, head "
                  f"{row['head_dtype']}, output {row['output_dtype']}, exported output "
                  f"{row['exported_output_dtype']}; initial weights checksum "
                  f"{row['initial_weights_checksum']:.6g}; val mIoU by epoch "
                  f"{row['val_mean_iou_curve']}")
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / "results.json.tmp"
    temporary.write_text(json.dumps(rows, indent=1))
    os.replace(temporary, out / "results.json")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
