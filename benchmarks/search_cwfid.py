"""A time-budgeted search on CWFID against a plain U-Net trained under the same budget.

Issue #4 §10 and #11 §6. Arms, each in its own subprocess (its own TensorFlow, memory and
threads):

- `recipe` (#11 arm A): `autoseg search --recipe-only` with the default space: the plan's
  recipe (`autoseg.plan`) trained for the whole budget, nothing else.
- `planned` (#11 arm B): `autoseg search` as a user runs it: default space, default tuner,
  `--budget`: the plan, the recipe as trial 0, its variants, the best continued.
- `<arm>@<precision>` (e.g. `planned@float32`): that arm with `--precision <precision>`
  instead of the default `auto`.
- `<arm>+<variant>` (e.g. `recipe+rare`): `recipe` or `planned` on the default space with
  the changes of `VARIANTS[variant]`; `rare` places a third of the training crops over a
  rare-class pixel (`rare_crops: 0.33`, nnU-Net's share; the recipe's own is 0); `f16`
  and `f32` make the recipe a U-Net of 16 or 32 filters (the space's only model, so the
  plan cannot step down from it); `f16s1`, `f16b2`, `f16aug1`, `f16c384`, `f16s375`,
  `f16ema` and `f16noema` change the 16-filter recipe's crop scale to 1, its batch to 2, its
  augmentation to 1, its crops to 384, its scale to 0.375, its weight averaging to 2 epochs
  or none; `wcd` trains with `weighted_ce_dice` (dice plus a cross-entropy weighted by the
  square root of median frequency) instead of `ce_dice`; `nrb` sets `rebalance: off`
  (ce_dice throughout: the recipe before `autoseg.rebalance`).

`SEARCH_SEED=N` (default 0) seeds the training and the split (8 other photos held out).
- `planned+tv`: `planned` with `finish_on="train+val"`: the best trial trained further at the
  end on the validation photos as well (issue #12 §1). Its validation score is then not held
  out, so compare it with `SEARCH_TEST`.

`SEARCH_TEST=N` (default 0: none) holds N photos (seeded by `SEARCH_SEED`) out of every
search, as a user would with `splits: {test: [...]}` in `dataset.yaml` (the arms search a
folder beside the prepared dataset with that file and links to its images and masks), and
scores the arms on them instead of on their validation photos: the searches then split the
other 40 - N photos into their own training and validation photos.

- `hyperband`: `autoseg.search(tuner="hyperband")` over `SPACE` with `--budget`.
- `random`: `autoseg.search(tuner="random")` over the same space. Run after `hyperband`
  (the default, sequential order), it gets the same number of *epochs* as hyperband spent
  (`max_trials = hyperband epochs // max_epochs`, no time limit); run in parallel with
  it (`--parallel`), the same *time* budget instead. The table says which.
- `baseline`: the plain U-Net with fixed default settings, as a user without autoseg would
  train it: `unet` depth 4, 32 filters, the whole photo resized to 384x288, cross-entropy,
  Adam at a constant 1e-3, batch 4, no augmentation, `model.fit` until the budget is spent
  (checked at epoch ends), the final weights.

All arms use the same split: `pipeline.split_stems(val_fraction=0.2, seed)`, 8 of the 40
photos held out. Each result is scored twice:
- `val mIoU (search)`: the objective the search ranks by, at the model's input resolution
  (the leaderboard's `val_mean_iou`; for the baseline, its last epoch's `val_mean_iou`);
- `val mIoU (full res)`: the 8 held-out photos predicted at their own 1296x966 size through
  `autoseg.predict` (tiling for the crop policy, scores upsampled bilinearly before the
  argmax) and scored with `autoseg.metrics` against the original masks, for every arm alike.
  The search arms pick their best trial on these same 8 photos, so their figure is
  optimistic by that selection; the baseline makes no choice.

Usage (from the repository root):
```
python benchmarks/search_cwfid.py                       # 60 min per arm, one arm at a time
python benchmarks/search_cwfid.py --budget 20m --arms hyperband,baseline --parallel
python benchmarks/search_cwfid.py --report              # print the table of finished arms
```
Results go to `--out` (default `/tmp/autoseg_search_cwfid`): one run folder and one
`<arm>.json` per arm; a finished arm is not run again unless `--rerun`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import CWFID, canonical_dataset, set_threads  # noqa: E402

ARMS = ("recipe", "planned", "hyperband", "random", "baseline")
#: The training seed of every arm (and of CWFID's split); `SEARCH_SEED=1` for another run.
SEED = int(os.environ.get("SEARCH_SEED", "0"))
VAL_FRACTION = 0.2

#: The searched space: U-Nets, with what the dataset's fingerprint suggests for input size
#: (auto: 128 and 256), policy (auto: crop, the photos are 1296x966) and losses (auto: crop
#: covers 1.6% of the pixels, so weighted_ce and focal join ce and ce_dice). Half-size crops
#: only: at full size a 256 crop sees too little of a plant, and validation tiles cost 4x.
SPACE = {
    "description": "CWFID benchmark: U-Nets, fingerprint-driven sizes, policy and losses.",
    "models": {"unet": {"depth": 4, "filters": [16, 32], "backbone": "none"}},
    "input_size": "auto",
    "policy": "auto",
    "crop_scale": [0.5],
    "batch_size": [4, 8],
    "loss": "auto",
    "aug_strength": [0.25, 0.5],
    "learning_rate": {"min": 0.0003, "max": 0.003, "sampling": "log"},
    "max_epochs": 40,
}

#: Arm variants: changes to the default space (`recipe+rare`, `planned+rare`).
_F16 = {"models": {"unet": {"depth": 4, "filters": 16, "backbone": "none"}}}

VARIANTS = {
    "rare": {"rare_crops": 0.33},
    # A cheaper recipe (issue #11, budget-aware recipe): a U-Net of 16 filters, the space's
    # only model.
    "f16": _F16,
    # The recipe before it stepped down on a short budget: a U-Net of 32 filters only.
    "f32": {"models": {"unet": {"depth": 4, "filters": 32, "backbone": "none"}}},
    # The 16-filter recipe with one change (issue #11, looking for a better recipe): crops of
    # the photo at full scale, batch 2 (twice the optimizer steps for the same pixels), the
    # strongest augmentation.
    "f16s1": {**_F16, "crop_scale": [1.0]},
    "f16b2": {**_F16, "batch_size": [2]},
    "f16aug1": {**_F16, "aug_strength": [1.0]},
    # More context per crop (issue #11: full scale lost by seeing less of a plant): 384 crops
    # of the half-size photo; 256 crops of the photo at 0.375.
    "f16c384": {**_F16, "input_size": [384]},
    "f16s375": {**_F16, "crop_scale": [0.375]},
    # The weights averaged over 2 epochs (`autoseg.weight_average`), and not averaged: the
    # recipe averages since that measurement, so `f16` now equals `f16ema` and the control of
    # that measurement is `f16noema`.
    "f16ema": {**_F16, "weight_ema": [2]},
    "f16noema": {**_F16, "weight_ema": [0]},
    # The loss with the cross-entropy weighted by the square root of median frequency.
    "wcd": {"loss": ["weighted_ce_dice"]},
    # The recipe as it was before `rebalance` (issue #11): ce_dice throughout, whatever its
    # per-class scores show.
    "nrb": {"rebalance": "off"},
}

#: Arm variants that change the search's options rather than its space.
OPTION_VARIANTS = {"tv": {"finish_on": "train+val"},
                   # The default search as it was before `explore` (issue #11): exploring
                   # wherever it fits, whatever the crops the recipe alone would train.
                   "always": {"explore": "always"}}

#: Photos held out of every search and scored instead (see the module docstring).
TEST_PHOTOS = int(os.environ.get("SEARCH_TEST", "0"))

BASELINE = {"depth": 4, "filters": 32, "input_size": (288, 384), "batch_size": 4,
            "learning_rate": 1e-3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="60m", help="time budget per arm (default: 60m)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--out", default="/tmp/autoseg_search_cwfid", help="results folder")
    parser.add_argument("--parallel", action="store_true",
                        help="run the arms at once, each pinned to its own share of the cores")
    parser.add_argument("--rerun", action="store_true", help="run finished arms again")
    parser.add_argument("--report", action="store_true", help="only print the table")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # a subprocess runs one arm
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.arm:
        return run_arm(args.arm, out, args.budget, args.threads)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted({a for a in arms if not _valid_arm(a)})
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; valid arms: {', '.join(ARMS)}, recipe and "
                     f"planned optionally +{' or +'.join(VARIANTS)}; planned+"
                     f"{' or planned+'.join(OPTION_VARIANTS)}")
    if not args.report:
        if not CWFID.is_dir():
            print(f"CWFID is not at {CWFID}; nothing to run.")
            return 1
        dataset_root(out)  # prepare once, before arms start
        todo = [a for a in arms if args.rerun or not (out / f"{a}.json").is_file()]
        if args.parallel:
            launch_parallel(__file__, todo, out, args.budget)
        else:
            for arm in sorted(todo, key=lambda a: ARMS.index(parse_arm(a)[0])):  # random
                # after hyperband: equal epochs
                subprocess.run([sys.executable, __file__, "--arm", arm, "--out", str(out),
                                "--budget", args.budget], check=True)
    print(report(out, arms))
    return 0


def parse_arm(arm: str) -> tuple[str, str, str]:
    """`"recipe+rare@float32"` -> `("recipe", "rare", "float32")`: the arm, its variant and
    its precision ("" when not given)."""
    name, _, precision = arm.partition("@")
    base, _, variant = name.partition("+")
    return base, variant, precision


def _valid_arm(arm: str) -> bool:
    base, variant, _ = parse_arm(arm)
    if variant in OPTION_VARIANTS:
        return base == "planned"
    return base in ARMS and (not variant or (variant in VARIANTS and base in ("recipe", "planned")))


def launch_parallel(script: str, arms, out: Path, budget: str) -> None:
    """Run `script --arm A` for every arm at once, each pinned to its share of the cores
    (`--threads` tells TensorFlow how many), its output in `out/<arm>.log`."""
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // max(1, len(arms)))
    procs = []
    for i, arm in enumerate(arms):
        mine = cores[(i * share) % len(cores):][:share] or cores[:1]
        cmd = ["taskset", "-c", ",".join(map(str, mine)), sys.executable, script, "--arm",
               arm, "--out", str(out), "--budget", budget, "--threads", str(len(mine))]
        env = {**os.environ, "SEARCH_CWFID_PARALLEL": "1"}
        with open(out / f"{arm}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    for proc in procs:
        proc.wait()


def dataset_root(out: Path) -> Path:
    """CWFID, read from ../shared, prepared once into `out/data/dataset`, then reused."""
    ds, _ = canonical_dataset(CWFID, out / "data")
    return Path(ds.root)


def searched_root(out: Path) -> Path:
    """The dataset the arms search: `dataset_root`, or with `SEARCH_TEST` a folder beside it
    whose `dataset.yaml` lists the held-out photos as `splits: {test: [...]}`."""
    import random

    import yaml

    full = dataset_root(out)
    if not TEST_PHOTOS:
        return full
    folder = out / "data" / f"test{TEST_PHOTOS}_seed{SEED}"
    if not (folder / "dataset.yaml").is_file():
        stems = sorted(p.stem for p in (full / "images").iterdir())
        meta = yaml.safe_load((full / "dataset.yaml").read_text())
        meta["splits"] = {"test": sorted(random.Random(SEED).sample(stems, TEST_PHOTOS))}
        folder.mkdir(parents=True, exist_ok=True)
        for sub in ("images", "masks"):
            if not (folder / sub).exists():
                (folder / sub).symlink_to(full / sub)
        (folder / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return folder


def scored_stems(ds, run: dict) -> list[str]:
    """The photos an arm is scored on: the held-out test photos, else its validation ones."""
    return list((ds.splits or {}).get("test") or run["split"]["val"])


# --------------------------------------------------------------------------------------------
# One arm, in its own process.


def run_arm(arm: str, out: Path, budget: str, threads: int) -> int:
    set_threads(threads)  # read by TensorFlow here and in each trial's own process
    from autoseg.data.dataset import load_dataset
    from autoseg.durations import parse_duration

    ds = load_dataset(searched_root(out))
    seconds = parse_duration(budget)
    start = time.time()
    load_before = os.getloadavg()[0]
    if arm == "baseline":
        result = run_baseline(ds, out, seconds)
    else:
        result = run_search(arm, ds, out, seconds)
    result.update(arm=arm, budget_seconds=seconds, wall_seconds=round(time.time() - start, 1),
                  load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)],
                  threads=threads or None, seed=SEED, test_photos=TEST_PHOTOS)
    (out / f"{arm}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


def run_search(arm: str, ds, out: Path, seconds: float) -> dict:
    import autoseg

    folder = out / arm  # e.g. planned@float32: --precision float32; recipe+rare: a variant
    arm, variant, precision = parse_arm(arm)
    kwargs = dict(space=SPACE, out=folder,
                  tuner=arm, seed=SEED, overwrite=True, val_fraction=VAL_FRACTION,
                  precision=precision or "auto")
    if arm in ("recipe", "planned"):  # issue #11: what a user gets, and its recipe alone
        kwargs.update(space=default_space(VARIANTS.get(variant)), tuner="hyperband",
                      recipe_only=arm == "recipe", **OPTION_VARIANTS.get(variant, {}))
    hyperband = out / "hyperband.json"
    equal = "time"
    if arm == "random" and hyperband.is_file() and not os.environ.get("SEARCH_CWFID_PARALLEL"):
        spent = json.loads(hyperband.read_text())["epochs_total"]
        kwargs["max_epochs"] = min(SPACE["max_epochs"], spent)
        kwargs["max_trials"] = max(1, spent // kwargs["max_epochs"])
        equal = f"epochs ({spent}, as hyperband)"
    else:
        kwargs["time_budget"] = seconds
        if arm == "random":
            kwargs["max_trials"] = 1000  # the budget decides
    result = autoseg.search(ds.root, **kwargs)
    return {"equal": equal, **search_scores(result, ds)}


def default_space(changes: dict | None) -> dict | None:
    """None (the default space) without `changes`, else the default space with them: the
    space of an arm variant (here and in search_camvid.py)."""
    import yaml

    from autoseg.search_space import bundled_space_path

    if not changes:
        return None
    return {**yaml.safe_load(bundled_space_path("default").read_text()), **changes}


def search_scores(result, ds) -> dict:
    """A search's trials, its best trial, and that trial's model scored at full resolution."""
    from autoseg import export
    from autoseg.hypermodel import trial_model_config
    from autoseg.run_dir import load_run

    rows = result.rows
    best = result.best
    run = load_run(result.rundir)
    model = export.load_trial_model(result.rundir, run, best["trial_id"])
    config = trial_model_config(export.trial_values(export.read_trial(result.rundir, best["trial_id"])))
    scores = full_resolution_scores(model, ds, scored_stems(ds, run), config)
    return {
        "trials": {s: sum(1 for r in rows if r["status"] == s) for s in {r["status"] for r in rows}},
        "epochs_total": sum(int(float(r.get("epochs") or 0)) for r in rows),
        "best": {k: best.get(k) for k in best if k in ("trial_id", "model_name", "epochs") or
                 "/" in k or k in ("input_size", "policy", "crop_scale", "batch_size", "loss",
                                   "aug_strength", "learning_rate")},
        "search_val_mean_iou": _float(best.get("val_mean_iou")),
        "search_val_iou": {c: _float(best.get(f"val_iou_{c}")) for c in ds.classes},
        "best_trained_on": best.get("trained_on") or "train",
        "scored_photos": len(scored_stems(ds, run)),
        **scores,
    }


def _float(value):
    try:
        return round(float(value), 4)
    except (TypeError, ValueError):
        return None


def run_baseline(ds, out: Path, seconds: float) -> dict:
    import keras

    from autoseg import losses, metrics, models
    from autoseg.data import pipeline
    from autoseg.hypermodel import TimeBudget

    keras.utils.set_random_seed(SEED)
    train, val = pipeline.split_stems(ds, val_fraction=VAL_FRACTION, seed=SEED)
    height, width = BASELINE["input_size"]
    model = models.build("unet", ds.num_classes, (height, width, 3), depth=BASELINE["depth"],
                         filters=BASELINE["filters"], backbone="none")
    model.compile(
        optimizer=keras.optimizers.Adam(BASELINE["learning_rate"]),
        loss=losses.get_loss("ce", ds.num_classes, ignore_index=ds.ignore_index),
        metrics=metrics.segmentation_metrics(ds.classes, ignore_index=ds.ignore_index),
    )
    batch = BASELINE["batch_size"]
    train_ds = pipeline.make_dataset(ds, train, input_size=(height, width), batch_size=batch,
                                     training=True, seed=SEED, repeat=True)
    val_ds = pipeline.make_dataset(ds, val, input_size=(height, width), batch_size=batch,
                                   training=False, seed=SEED)
    deadline = time.time() + seconds
    history = model.fit(train_ds, validation_data=val_ds, epochs=100000, verbose=2,
                        steps_per_epoch=pipeline.steps_per_pass(len(train), batch),
                        callbacks=[TimeBudget(deadline)])
    logs = history.history
    config = {"input_size": (height, width), "policy": "resize", "crop_scale": 1.0}
    scores = full_resolution_scores(model, ds, scored_stems(ds, {"split": {"val": val}}), config)
    return {
        "equal": "time",
        "epochs_total": len(logs["loss"]),
        "search_val_mean_iou": _float(logs["val_mean_iou"][-1]),
        "search_val_iou": {c: _float(logs[f"val_iou_{c}"][-1]) for c in ds.classes},
        "val_mean_iou_curve": [round(v, 4) for v in logs["val_mean_iou"]],
        **scores,
    }


def segmenter(model, ds, config):
    """A trial's Keras `model` as `autoseg.load` would give it: a `SegmentationModel` that
    predicts a photo at full size the way `config` (`trial_model_config`) trained it."""
    import numpy as np

    from autoseg.predict import SegmentationModel

    metadata = {
        "classes": list(ds.classes), "palette": [list(c) for c in ds.palette],
        "ignore_index": ds.ignore_index, "input_size": list(config["input_size"]),
        "policy": config["policy"], "crop_scale": config["crop_scale"],
    }
    runner = lambda batch: np.asarray(model(batch, training=False))  # noqa: E731
    return SegmentationModel(Path("."), metadata, runner, "keras")


def full_resolution_scores(model, ds, stems, config) -> dict:
    """mIoU and per-class IoU of `stems` predicted at full size, as `autoseg evaluate` does."""
    from autoseg.evaluate import score_images
    from autoseg.metrics import scores_from_confusion

    confusion, _ = score_images(segmenter(model, ds, config), ds, stems, log=lambda _: None)
    scores = scores_from_confusion(confusion)
    return {
        "full_res_mean_iou": round(float(scores["mean_iou"]), 4),
        "full_res_iou": {c: round(float(v), 4) for c, v in zip(ds.classes, scores["per_class_iou"])},
        "full_res_pixel_accuracy": round(float(scores["pixel_accuracy"]), 4),
    }


# --------------------------------------------------------------------------------------------
# The table.


def report(out: Path, arms) -> str:
    rows = [json.loads((out / f"{a}.json").read_text()) for a in arms if (out / f"{a}.json").is_file()]
    if not rows:
        return "No finished arm yet."
    classes = list(rows[0]["full_res_iou"])
    head = ("| arm | budget | equal | trials | epochs | val mIoU (search) | val mIoU (full res) | "
            + " | ".join(f"IoU {c}" for c in classes) + " | best configuration | load |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        trials = ", ".join(f"{n} {s}" for s, n in sorted(r.get("trials", {}).items())) or "1"
        best = r.get("best") or {}
        config = ", ".join(f"{k}={v}" for k, v in best.items() if k not in ("trial_id", "epochs")
                           and v not in (None, "")) or "unet d4 f32, 384x288 resize, ce, lr 1e-3, b4"
        lines.append(
            f"| {r['arm']} | {r['budget_seconds'] / 60:.0f} min | {r['equal']} | {trials} | "
            f"{r['epochs_total']} | {r['search_val_mean_iou']} | **{r['full_res_mean_iou']}** | "
            + " | ".join(str(r["full_res_iou"][c]) for c in classes)
            + f" | {config} | {r['load_average'][0]}->{r['load_average'][1]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
