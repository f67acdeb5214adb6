"""CPU inference speed of each export format, at batch 1, against `model.predict`.

Builds a U-Net (depth 4, 32 filters, no backbone) at 256x256 with `autoseg.models.build`
(untrained: speed does not depend on the weights), writes it in every format with
`autoseg.export.write_formats` (the export's own code path), loads each file with
`autoseg.predict.open_runner` (what `autoseg.load` and `autoseg predict` use), and times one
network call on one image: `--warmup` calls first, then the median of `--runs` calls, the
runtimes taking turns.
`model.predict` is the baseline; a direct `model(x, training=False)` call shows how much of
it is `predict`'s per-call overhead (building a dataset, callbacks, the progress bar).
Prints a Markdown table.

    python benchmarks/inference.py [--size 256] [--runs 50] [--warmup 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--depth", type=int, default=4, help="U-Net depth")
    parser.add_argument("--filters", type=int, default=32, help="U-Net filters of the first stage")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=50, help="timed calls per runtime")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    return parser.parse_args(argv)


def median_ms(calls: dict, x, runs: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each runtime.

    The runtimes take turns, one call each per round, so that load from other processes on a
    shared machine slows them all alike instead of whichever happened to run then.
    """
    for call in calls.values():
        for _ in range(warmup):
            call(x)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call(x)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def main(argv=None) -> None:
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    from autoseg import export, models
    from autoseg.predict import open_runner

    model = models.build("unet", args.classes, (args.size, args.size, 3), depth=args.depth,
                         filters=args.filters, backbone="none")
    x = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)).astype(np.float32)
    formats = [f for f in export.FORMATS if f != "onnx" or export.onnx_available()]
    with tempfile.TemporaryDirectory() as tmp:
        written, _ = export.write_formats(model, Path(tmp), formats, explicit=True,
                                          log=lambda _: None)
        calls = {
            "`model.predict(x)`": lambda batch: model.predict(batch, verbose=0),
            "`model(x, training=False)`": lambda batch: np.asarray(model(batch, training=False)),
        }
        for fmt in formats:
            calls[f"{fmt} (`{written[fmt]}`)"] = open_runner(Path(tmp) / written[fmt], fmt)
        results = list(median_ms(calls, x, args.runs, args.warmup).items())
    baseline = results[0][1]
    print(
        f"U-Net depth {args.depth}, {args.filters} filters, {args.size}x{args.size}x3 -> "
        f"{args.classes} classes, {model.count_params():,} parameters; batch 1, median of "
        f"{args.runs} calls after {args.warmup} warm-up calls"
    )
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
        + (f", onnxruntime {__import__('onnxruntime').__version__}" if "onnx" in formats else "")
    )
    print()
    print("| Runtime | ms/image | Speed-up vs model.predict |")
    print("|---|---:|---:|")
    for name, ms in results:
        print(f"| {name} | {ms:.1f} | {baseline / ms:.2f}x |")
    if "onnx" not in formats:
        print(f"\nONNX not measured: {export.EXPORT_EXTRA_HINT}")


if __name__ == "__main__":
    main()
