"""Throughput of the training input pipeline on CWFID: decode + augment + batch.

Converts the CWFID colour masks (black soil, green crop, red weed) to index masks in a
temporary canonical dataset (a folder with a dataset.yaml is used as it is), then times `make_dataset` for policy "resize" and policy
"crop": the first epoch (cold: decoding the JPEGs) and the following ones (warm: from the
in-memory cache). Prints a Markdown table.

    python benchmarks/pipeline.py [--dataset ../shared/datasets/cwfid_carrot_weed]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from PIL import Image

from bench_data import CWFID, canonical_dataset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        type=Path,
        default=CWFID,
        help="CWFID folder with images/ and RGB masks/, or a prepared dataset (default: "
        "../shared/datasets/cwfid_carrot_weed beside the repo).",
    )
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--strength", type=float, default=0.5, help="aug_strength")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-scale", type=float, default=0.5)
    parser.add_argument("--warm-epochs", type=int, default=5, help="epochs timed after the first")
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="fresh pipelines timed per policy; the best is reported (other processes on a "
        "shared machine only ever slow a run down)",
    )
    return parser.parse_args(argv)


def time_epochs(ds, epochs: int) -> list[tuple[float, float, int]]:
    """`(wall seconds, CPU seconds, images)` for each of `epochs` passes over `ds`."""
    results = []
    for _ in range(epochs):
        cpu0, wall0, images = _cpu_seconds(), time.perf_counter(), 0
        for image, _ in ds:
            images += int(image.shape[0])
        results.append((time.perf_counter() - wall0, _cpu_seconds() - cpu0, images))
    return results


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (args.dataset / "images").is_dir():
        print(f"Error: {args.dataset}/images not found.", file=sys.stderr)
        return 2
    import albumentations
    import cv2
    import tensorflow as tf

    from autoseg.data.pipeline import estimate_cache_bytes, make_dataset

    size = (args.size, args.size)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        dataset, _ = canonical_dataset(args.dataset, Path(tmp))
        stems = dataset.stems
        with Image.open(dataset.image_path(stems[0])) as im:
            photo_width, photo_height = im.size
        # Start the tf.data runtime on two images first, so the cold epoch times decoding.
        for _ in make_dataset(dataset, stems[:2], input_size=(32, 32), batch_size=2):
            pass
        rows = []
        for policy, crop_scale in (("resize", 1.0), ("crop", args.crop_scale)):
            best_cold, best_warm = (0.0, 0.0), (0.0, 0.0)
            for _ in range(args.repeats):
                ds = make_dataset(
                    dataset, stems, input_size=size, policy=policy, crop_scale=crop_scale,
                    aug_strength=args.strength, batch_size=args.batch_size, training=True,
                    seed=0,
                )
                (wall, cpu, images), *warm = time_epochs(ds, 1 + args.warm_epochs)
                best_cold = max(best_cold, (images / wall, cpu / wall))
                warm_wall = sum(w for w, _, _ in warm)
                warm_rate = sum(n for _, _, n in warm) / warm_wall
                best_warm = max(best_warm, (warm_rate, sum(c for _, c, _ in warm) / warm_wall))
            cache_mib = estimate_cache_bytes(
                dataset, stems, input_size=size, policy=policy, crop_scale=crop_scale
            ) / 2**20
            rows.append(
                f"| {policy} | {crop_scale:g} | {best_cold[0]:.0f} | {best_cold[1]:.2f} | "
                f"{best_warm[0]:.0f} | {best_warm[1]:.2f} | {cache_mib:.1f} |"
            )
    print(
        f"Training pipeline, {len(stems)} CWFID photos ({photo_width}x{photo_height} JPEG), "
        f"input {args.size}x{args.size}, aug_strength {args.strength}, batch "
        f"{args.batch_size}; cold = first epoch (decode + resize/scale + crop + augment), "
        f"warm = mean of the next {args.warm_epochs} epochs (cached); best of "
        f"{args.repeats} fresh pipelines. CPU/wall = cores this process kept busy.\n"
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        f"TF {tf.__version__}, albumentations {albumentations.__version__}, "
        f"OpenCV {cv2.__version__}. Load average (1 min) {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after.\n"
    )
    print(
        "| policy | crop_scale | cold img/s | cold CPU/wall | warm img/s | warm CPU/wall "
        "| cache MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
