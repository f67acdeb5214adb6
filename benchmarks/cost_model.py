"""How well the plan's cost model predicts a training step, with FLOPs alone and with FLOPs
plus activations (`autoseg.speed.fit_rates`), against steps timed on this machine.

Every configuration of `--configs` is built as a trial builds it (`AutosegHyperModel.build`,
`--precision`, the dataset's classes and channels, batch `--batch-size`, input `--size`²)
and timed as the plan's calibration times the recipe (`speed.step_seconds`: the median of
`--steps` training steps on random tensors after one that traces; no input pipeline, no
validation). Then two cost models are calibrated as `plan.calibrate` would:

- **FLOPs alone** (before): the rate of the recipe's model (`--recipe`, a plain U-Net of
  32 filters) alone, every other configuration scaled by its FLOPs and its efficiency
  (today's `speed.EFFICIENCY`, which is fitted to the two-term model);
- **FLOPs + activations** (now): the recipe and its sibling (`--sibling`, half the
  filters) fitted to a FLOP rate and an activation rate.

Each prints the predicted step and measured over predicted: 1.00 is exact, above 1 the
model was optimistic; and the efficiency (`speed.EFFICIENCY`, the share of a plain U-Net's
FLOP rate an architecture reaches; under FLOPs + activations, in its FLOP term only) that
would have made each model exact on that row. The recipe's row is exact by construction
under both models, and the sibling's under the second where the two timings split (else
the activation rate is assumed, `speed.FLOPS_PER_ELEMENT`, and the sibling is predicted).
The summary is the geometric mean of each model's error factor (max(r, 1/r)) over the rows
it did not calibrate on. `speed.EFFICIENCY` was fitted on these configurations (RESULTS.md),
so only a run in another precision, on another machine or of other configurations tests it
out of sample.

    python benchmarks/cost_model.py                    # CWFID, 256 px, batch 4, auto precision
    python benchmarks/cost_model.py --precision float32 --cores 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import CWFID, canonical_dataset  # noqa: E402

#: `name: (model_name, options)`: the default space's families at the recipe's depth.
CONFIGS = {
    "unet-16": ("unet", {"depth": 4, "filters": 16, "backbone": "none"}),
    "unet-32": ("unet", {"depth": 4, "filters": 32, "backbone": "none"}),
    "unet-64": ("unet", {"depth": 4, "filters": 64, "backbone": "none"}),
    "unet-32-d5": ("unet", {"depth": 5, "filters": 32, "backbone": "none"}),
    "unet-resnet50": ("unet", {"depth": 5, "filters": 32, "backbone": "resnet50"}),
    "segnet-32": ("segnet", {"depth": 5, "filters": 32, "backbone": "none"}),
    "deeplabv3plus-resnet50": ("deeplabv3plus", {"backbone": "resnet50", "output_stride": 16}),
    "segnet-resnet50": ("segnet", {"depth": 5, "filters": 32, "backbone": "resnet50"}),
    "deeplabv3plus-vgg16": ("deeplabv3plus", {"backbone": "vgg16", "output_stride": 16}),
    "unet-mobilenetv2": ("unet", {"depth": 5, "filters": 32, "backbone": "mobilenetv2"}),
    "light_unet-16": ("light_unet", {"depth": 4, "filters": 16}),
    "pix2pix": ("pix2pix", {"generator": "unet"}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=CWFID,
                        help="a dataset (prepared or CWFID-like source); sets classes and "
                             "channels only (default: CWFID)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--recipe", default="unet-32")
    parser.add_argument("--sibling", default="unet-16")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="auto",
                        help="float32, mixed_bfloat16, or auto (per family, as a search)")
    parser.add_argument("--cores", type=int, default=None,
                        help="pin to this many cores (default: all)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names + [args.recipe, args.sibling] if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    args.names = list(dict.fromkeys([args.recipe, args.sibling] + names))
    return args


def implied_efficiency(cost, size, batch_size, seconds, before, now) -> dict[str, str]:
    """The efficiency that would make each cost model exact on this row: the plain U-Net's
    time for its FLOPs over the time its FLOPs took (under FLOPs + activations, the step's
    time less its activations' time); "-" where its activations alone exceed the step."""
    from autoseg import speed

    step = speed.timing(cost, size, batch_size, seconds, efficiency={cost.key: 1.0})
    flops, elements, plain = step.flops / 1e9, step.elements / 1e9, step.seconds
    out = {"before": f"{flops / before.gflops / plain:.2f}"}
    rest = plain - (elements / now.gelements if now.gelements else 0.0)
    out["now"] = f"{flops / now.gflops / rest:.2f}" if rest > 0 else "-"
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import keras
    import keras_tuner as kt

    from autoseg import budget, speed
    from autoseg.hypermodel import AutosegHyperModel, TrainingData
    from autoseg.search_space import load_space

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    size = (args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        dataset, how = canonical_dataset(args.dataset, Path(tmp))
        data = TrainingData.from_path(dataset.root, seed=0,
                                      memory_budget_bytes=budget.memory_budget_bytes())
        timings, costs, seconds, precisions = {}, {}, {}, {}
        for name in args.names:
            model_name, options = CONFIGS[name]
            hypermodel = AutosegHyperModel(load_space({
                "models": {model_name: options}, "input_size": args.size, "policy": "resize",
                "batch_size": [args.batch_size], "loss": ["ce_dice"], "learning_rate": [1e-3],
            }), data, precision=args.precision)
            precisions[name] = hypermodel.precision_of(model_name)
            cost, = speed.measure_models([(model_name, options)], dataset.num_classes,
                                         precision_of=hypermodel.precision_of,
                                         channels=dataset.channels)
            model = hypermodel.build(kt.HyperParameters())
            seconds[name] = speed.step_seconds(model, args.batch_size, args.steps)
            costs[name] = cost
            timings[name] = speed.timing(cost, size, args.batch_size, seconds[name])
            del model
            keras.backend.clear_session()
            print(f"  timed {name} ({precisions[name]}): {seconds[name]:.2f} s a step",
                  flush=True)

    recipe = timings[args.recipe]
    before = speed.CostModel(gflops=recipe.flops / recipe.seconds / 1e9)
    gflops, gelements, measured = speed.fit_rates(
        recipe, timings[args.sibling], ratio=speed.flops_per_element(costs[args.recipe].precision))
    now = speed.CostModel(gflops=gflops, gelements=gelements, gelements_measured=measured)
    load_after = os.getloadavg()

    print(f"\n{started}; {how} dataset {args.dataset} ({dataset.num_classes} classes); "
          f"{args.size}x{args.size}, batch {args.batch_size}, median of {args.steps} steps; "
          f"{len(os.sched_getaffinity(0))} core(s); load {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}")
    print(f"FLOPs alone: a plain U-Net at {before.gflops:.1f} GFLOP/s (from {args.recipe}); "
          + f"FLOPs + activations: {now.gflops:.1f} GFLOP/s and {now.gelements:.3f} G "
          + (f"activations/s (from {args.recipe} and {args.sibling})" if measured else
             f"activations/s (from {args.recipe}: the two timings did not split, so the "
             "activation rate is assumed)"))
    print()
    print("| configuration | precision | GFLOPs/img | activations M/img | measured s | "
          "FLOPs alone s | ratio | FLOPs + activations s | ratio | efficiency: table | "
          "implied, FLOPs alone | implied, FLOPs + activations |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    errors = {"before": [], "now": []}
    pixels = args.size * args.size
    for name in args.names:
        cost = costs[name]
        predicted = {key: model.epoch_seconds(cost, size, args.batch_size, 0)
                     for key, model in (("before", before), ("now", now))}
        ratio = {key: seconds[name] / p for key, p in predicted.items()}
        for key in ratio:
            calibrated = {args.recipe} | ({args.sibling} if key == "now" and measured else set())
            if name not in calibrated:
                errors[key].append(max(ratio[key], 1 / ratio[key]))
        mark = {"before": " (calibration)" if name == args.recipe else "",
                "now": " (calibration)" if name == args.recipe
                or (name == args.sibling and measured) else ""}
        implied = implied_efficiency(cost, size, args.batch_size, seconds[name], before, now)
        print(f"| {name} | {precisions[name]} | {cost.train_flops_per_pixel * pixels / 1e9:.1f} | "
              f"{cost.train_elements_per_pixel * pixels / 1e6:.1f} | {seconds[name]:.2f} | "
              f"{predicted['before']:.2f} | {ratio['before']:.2f}{mark['before']} | "
              f"{predicted['now']:.2f} | {ratio['now']:.2f}{mark['now']} | "
              f"{speed.EFFICIENCY.get(cost.key, speed.DEFAULT_EFFICIENCY):.2f} | "
              f"{implied['before']} | {implied['now']} |")
    print()
    for key, label in (("before", "FLOPs alone"), ("now", "FLOPs + activations")):
        if errors[key]:
            print(f"{label}: error factor over {len(errors[key])} predicted rows, geometric "
                  f"mean {statistics.geometric_mean(errors[key]):.2f}, worst "
                  f"{max(errors[key]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
