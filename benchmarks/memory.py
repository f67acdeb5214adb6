"""Measures training memory per architecture and calibrates `autoseg.budget`.

For every registered architecture (narrowed so that it runs on 2 CPU cores), two input sizes
and two batch sizes, a fresh process builds the model, compiles it as the search does
(Adam, the `ce` loss, the segmentation metrics) and runs a few `model.fit` steps on a
tf.data dataset of random images, inside `autoseg.budget.PeakMemory`. The block covers
build + compile + fit, because the estimate's growth includes the weights.

Two sets of runs:
- overhead: every architecture at tiny widths, 32 px, batch 2 (plus U-Net on MobileNetV2),
  where activations are negligible, so growth is the batch-independent overhead;
- calibration: the narrowed defaults at `--sizes` x `--batches`.

It prints a Markdown table (activation elements per sample, predicted and measured growth)
and the least-squares fit over both sets

    measured growth - parameter_bytes
        = base + per_variable * trainable_variables
          + factor[family] * batch * (activation + temporary elements) * 4 bytes

whose terms are `budget.TRAINING_OVERHEAD_BYTES`, `budget.OVERHEAD_BYTES_PER_VARIABLE` and
`budget.FAMILY_ACTIVATION_FACTORS` (one common factor too: `budget.ACTIVATION_FACTOR`), and
per configuration the factor from its two batch sizes alone.

Usage:
    python benchmarks/memory.py                      # every architecture, 128 and 192 px
    python benchmarks/memory.py --models unet segnet --sizes 64 128 --batches 2 4
    python benchmarks/memory.py --json rows.json     # also write the raw rows
    python benchmarks/memory.py --rows a.json b.json # refit saved runs, predict with the
                                                     # constants now in autoseg.budget
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

NUM_CLASSES = 3
#: Options that narrow the default configurations enough to train here; only the options an
#: architecture has are applied.
NARROW = {
    "unet": {"filters": 32},
    "segnet": {"filters": 32},
    "pix2pix": {"generator_options": {"filters": 32}, "disc_filters": 32},
}
#: Tiny configurations of the overhead set (activations negligible at 32 px).
TINY = {
    "unet": {"filters": 4, "depth": 3},
    "light_unet": {"filters": 4, "depth": 3},
    "segnet": {"filters": 4, "depth": 3},
    "deeplabv3plus": {"backbone": "tiny", "aspp_filters": 8, "decoder_filters": 8},
    "pix2pix": {"generator_options": {"filters": 4, "depth": 3}, "disc_filters": 4},
}
#: A deep tiny-width configuration, so that the overhead fit sees 40 to 150 variables (the
#: default DeepLabV3+ of the calibration set has 241).
TINY_DEEP = [("unet", {"filters": 4, "backbone": "mobilenetv2"})]
#: Configurations too slow for 2 cores at the larger size (reported as skipped).
HEAVY_BACKBONES = ("resnet50", "vgg16")


def narrow_options(name: str) -> dict:
    from autoseg.registry import ARCHITECTURES

    spec = ARCHITECTURES.get(name)
    return {k: v for k, v in NARROW.get(spec.name, {}).items() if k in spec.defaults}


def measure(name: str, options: dict, size: int, batch: int, steps: int) -> dict:
    """Builds and fits one configuration in this process; returns one row."""
    import numpy as np
    import tensorflow as tf
    import keras

    from autoseg import budget, losses, metrics, models
    from autoseg.registry import ARCHITECTURES

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    masks = rng.integers(0, NUM_CLASSES, (batch, size, size)).astype("int32")
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, masks))
        .repeat().batch(batch).prefetch(tf.data.AUTOTUNE)
    )
    fixed = budget._proc_status_bytes("VmRSS")
    start = time.time()
    with budget.PeakMemory(device="cpu") as peak:
        model = models.build(name, NUM_CLASSES, (size, size, 3), **options)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=losses.get_loss("ce", NUM_CLASSES),
            metrics=metrics.segmentation_metrics([f"c{i}" for i in range(NUM_CLASSES)]),
            jit_compile=False,
        )
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    family = ARCHITECTURES.get(name).family
    estimate = budget.estimate_training_memory(model, batch, family=family)
    return {
        "model": name,
        "family": family,
        "options": options,
        "input": size,
        "batch": batch,
        "params": int(model.count_params()),
        "trainable_variables": len(model.trainable_weights),
        "activation_elements": estimate.activation_elements,
        "temporary_elements": estimate.temporary_elements,
        "parameter_bytes": estimate.parameter_bytes,
        "fixed_bytes": int(fixed),
        "predicted_growth_bytes": estimate.growth_bytes,
        "measured_growth_bytes": int(peak.growth_bytes),
        "seconds": round(time.time() - start, 1),
    }


def measure_in_subprocess(name: str, options: dict, size: int, batch: int, steps: int,
                          timeout: float = 600) -> dict:
    """`measure` in a fresh interpreter, so that configurations do not pollute each other."""
    command = [sys.executable, os.path.abspath(__file__), "--worker",
               json.dumps({"name": name, "options": options, "size": size, "batch": batch,
                           "steps": steps})]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{name} {size}px batch {batch} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def fit_memory_model(rows: list[dict], families: list[str] | None = None,
                     bytes_per_element: int = 4) -> dict:
    """Least squares of `measured - parameter_bytes` on the overhead and activation terms.

    Args:
        rows: Measured rows.
        families: One activation factor per family listed here; None: one common factor.

    Returns:
        `{"base": bytes, "per_variable": bytes, "factor": {family or "*": factor}}`.
    """
    import numpy as np

    groups = families or ["*"]
    columns = [[1.0] * len(rows), [r["trainable_variables"] for r in rows]]
    for group in groups:
        columns.append([
            r["batch"] * _elements(r) * bytes_per_element
            if group in ("*", r["family"]) else 0.0
            for r in rows
        ])
    design = np.array(columns, float).T
    target = np.array([r["measured_growth_bytes"] - r["parameter_bytes"] for r in rows], float)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return {
        "base": float(solution[0]),
        "per_variable": float(solution[1]),
        "factor": {g: float(f) for g, f in zip(groups, solution[2:])},
    }


def repredict(row: dict) -> dict:
    """`row` with its predicted growth from the constants now in `autoseg.budget`."""
    from autoseg import budget

    estimate = budget._estimate(
        row["activation_elements"], row.get("temporary_elements", 0), row["params"],
        row["trainable_variables"], row["batch"], "float32", None, row["family"],
    )
    return {**row, "predicted_growth_bytes": estimate.growth_bytes}


def _elements(row: dict) -> int:
    """Per-sample elements the factor multiplies: layer outputs plus per-op temporaries."""
    return row["activation_elements"] + row.get("temporary_elements", 0)


def pair_factors(rows: list[dict], bytes_per_element: int = 4) -> list[tuple]:
    """Per (model, options, input): the factor from its smallest and largest batch alone."""
    by_config: dict = {}
    for r in rows:
        by_config.setdefault((r["model"], json.dumps(r["options"]), r["input"]), []).append(r)
    out = []
    for (model, options, size), members in by_config.items():
        if len({r["batch"] for r in members}) < 2:
            continue
        low, high = min(r["batch"] for r in members), max(r["batch"] for r in members)

        def mean_growth(batch):  # over repeated runs (several --rows files)
            growths = [r["measured_growth_bytes"] for r in members if r["batch"] == batch]
            return sum(growths) / len(growths)

        delta = mean_growth(high) - mean_growth(low)
        per = (high - low) * _elements(members[0]) * bytes_per_element
        out.append((model, options, size, delta / per))
    return out


def table(rows: list[dict]) -> str:
    mib = 2**20
    out = ["| set | model | options | input | batch | params | variables | "
           "activation elements/sample | temporary elements/sample | predicted growth (MiB) | "
           "measured growth (MiB) | measured/predicted | s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        out.append(
            f"| {r['set']} | {r['model']} | {options} | {r['input']} | {r['batch']} | "
            f"{r['params']:,} | {r['trainable_variables']} | "
            f"{r['activation_elements']:,} | {r['temporary_elements']:,} | "
            f"{r['predicted_growth_bytes'] / mib:.0f} | "
            f"{r['measured_growth_bytes'] / mib:.0f} | "
            f"{r['measured_growth_bytes'] / r['predicted_growth_bytes']:.2f} | {r['seconds']} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", help="Architectures (default: the registry).")
    parser.add_argument("--sizes", nargs="*", type=int, default=[128, 192],
                        help="Input sizes of the calibration set (default: 128 192).")
    parser.add_argument("--batches", nargs="*", type=int, default=[2, 8],
                        help="Batch sizes of the calibration set (default: 2 8).")
    parser.add_argument("--steps", type=int, default=2, help="Training steps per run.")
    parser.add_argument("--heavy-at-large", action="store_true",
                        help=f"Also run {'/'.join(HEAVY_BACKBONES)} backbones at the larger size.")
    parser.add_argument("--no-overhead", action="store_true",
                        help="Skip the overhead set (tiny models at 32 px).")
    parser.add_argument("--json", help="Write the rows to this file too.")
    parser.add_argument("--rows", nargs="*", metavar="JSON",
                        help="Measure nothing: report on rows saved with --json.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        config = json.loads(args.worker)
        print(json.dumps(measure(config["name"], config["options"], config["size"],
                                 config["batch"], config["steps"])))
        return 0

    from autoseg import budget
    from autoseg.registry import ARCHITECTURES
    import autoseg.models  # noqa: F401  (registers the architectures)

    names = args.models or ARCHITECTURES.names()
    plan, skipped = [], []
    if not args.no_overhead:
        tiny = [(n, TINY[n]) for n in names if n in TINY] + [c for c in TINY_DEEP if c[0] in names]
        plan += [("overhead", name, options, 32, 2) for name, options in tiny]
    for name in names:
        spec = ARCHITECTURES.get(name)
        options = narrow_options(name)
        backbone = options.get("backbone", spec.defaults.get("backbone"))
        for size in args.sizes:
            if size > min(args.sizes) and backbone in HEAVY_BACKBONES and not args.heavy_at_large:
                skipped.append(f"{name} (backbone {backbone}) at {size}px: too slow on 2 cores")
                continue
            plan += [("calibration", name, options, size, batch) for batch in args.batches]

    rows = []
    started = time.time()
    if args.rows:
        plan, skipped = [], []
        for path in args.rows:
            with open(path) as f:
                rows += [repredict(row) for row in json.load(f)]
    for kind, name, options, size, batch in plan:
        row = {"set": kind, **measure_in_subprocess(name, options, size, batch, args.steps)}
        rows.append(row)
        print(f"[{time.time() - started:.0f} s] {kind} {name} {options} {size}px b{batch}: "
              f"measured {row['measured_growth_bytes'] / 2**20:.0f} MiB, "
              f"predicted {row['predicted_growth_bytes'] / 2**20:.0f} MiB ({row['seconds']} s)",
              file=sys.stderr, flush=True)

    mib = 2**20
    print(table(rows))
    print()
    families = sorted({r["family"] for r in rows})
    common = fit_memory_model(rows)
    print(f"Common fit: base {common['base'] / mib:.0f} MiB, per variable "
          f"{common['per_variable'] / mib:.2f} MiB, factor {common['factor']['*']:.3f}")
    per_family = fit_memory_model(rows, families)
    print(f"Per-family fit: base {per_family['base'] / mib:.0f} MiB, per variable "
          f"{per_family['per_variable'] / mib:.2f} MiB, factors "
          + ", ".join(f"{f} {v:.3f}" for f, v in per_family["factor"].items()))
    print(f"In use: base {budget.TRAINING_OVERHEAD_BYTES / mib:.0f} MiB, per variable "
          f"{budget.OVERHEAD_BYTES_PER_VARIABLE / mib:.2f} MiB, factors "
          + ", ".join(f"{f} {budget.activation_factor(f):.3f}" for f in families)
          + f" (default {budget.ACTIVATION_FACTOR})")
    print("Factor from two batch sizes alone:")
    for model, options, size, factor in pair_factors(rows):
        print(f"  {model} {options} {size}px: {factor:.3f}")
    ratios = [r["measured_growth_bytes"] / r["predicted_growth_bytes"] for r in rows]
    print(f"measured/predicted: {min(ratios):.2f} to {max(ratios):.2f} over {len(rows)} runs")
    fixed = [r["fixed_bytes"] for r in rows]
    print(f"Fixed (RSS before the model): {min(fixed) / mib:.0f}-{max(fixed) / mib:.0f} MiB "
          f"(FIXED_BYTES {budget.FIXED_BYTES / mib:.0f} MiB)")
    for line in skipped:
        print(f"Skipped: {line}")
    if not args.rows:
        print(f"Total time: {time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
