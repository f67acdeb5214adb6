"""The default search against its own recipe on CamVid, at equal wall time (issue #11 §6).

The CamVid counterpart of `search_cwfid.py`. Arms, each in its own subprocess (its own
TensorFlow, memory and threads):

- `recipe` (#11 arm A): `autoseg.search(recipe_only=True)` with the default space and the
  hyperband tuner: the plan's recipe (`autoseg.plan`) trained for the whole budget.
- `planned` (#11 arm B): `autoseg.search` as a user runs it: default space, default tuner,
  `time_budget`: the plan, the recipe as trial 0, its variants, the best continued.
- `<arm>+<variant>`: the same with the default space's input handling replaced by one of
  `VARIANTS` (the plan then derives its recipe from that space), to compare how the frames
  reach the model: `recipe+crop` trains on 256x256 crops of the full 480x360 frames and
  validates tiled at full resolution; `recipe+wide` resizes whole frames to 352x256 (width x
  height), keeping their aspect, where the default space's `auto` resizes them to 256x256;
  `recipe+f16` makes the recipe a U-Net of 16 filters (the space's only model), and
  `recipe+s192` resizes the frames to 192x192: cheaper recipes, more epochs in the budget;
  `recipe+f32` keeps the U-Net of 32 filters whatever the budget (the plan cannot step down
  from the space's only model), `recipe+f16at256` and `recipe+f16at128` the U-Net of 16
  filters at 256x256 or 128x128; `recipe+wce` trains the recipe with cross-entropy weighted
  by median frequency (`weighted_ce`, SegNet's weighting) instead of `ce_dice`, and
  `recipe+wcd` with `weighted_ce_dice` (dice plus a cross-entropy weighted by the square
  root of median frequency), and `recipe+nrb` with `rebalance: off` (ce_dice throughout:
  the recipe before `autoseg.rebalance`).
  `SEARCH_SEED=N` (default 0) seeds the training.
- `planned+tv` (issue #12 §4): `planned` with `finish_on="train+val"`, the best trained
  further on the validation frames too; compare it with `planned` on `--test-sequence`.

Data: the 184 frames of `../shared/datasets/camvid11_train` (every second frame of SegNet's
train split, 480x360, 11 classes + void), prepared once into `<out>/dataset` as a user would:
`autoseg prepare SRC --format index --labels SRC/labels.txt --ignore-values 11` (void becomes
255, ignored in training and scoring).

Split by video sequence, never at random: consecutive frames are near duplicates. The whole
sequence `--val-sequence` is held out, listed as `splits: {val: [...]}` in the prepared
dataset's `dataset.yaml` as a user would (`split_stems` honours it; every arm reads the same
file). The default, `0006R0` (51 daylight frames), leaves `0001TP` (31 dusk frames) and
`0016E5` (102 daylight) for training, so training sees both lights. Holding out `0001TP`
instead, the split of the first CamVid figures in RESULTS.md, tests generalisation from
daylight to dusk more than segmentation: the model reached mIoU 0.40 on its training frames
and 0.19 on the dusk ones (sky 0.89 against 0.23). `--prepare-only` prints the split and the
validation frames' class shares.

`--test-sequence SEQ` (issue #12 §4) holds the whole sequence SEQ out of every search as
`splits: {test: [...]}` instead, and scores every arm on it; the search then validates on
the last fifth of each other sequence, with the 4 frames before it left out of training as a
gap (near duplicates of the first validation frames), so validation too sees both lights.
`planned+tv` needs it (its finish trains on the validation frames). The prepared dataset
holds one layout at a time: give each layout its own `--out` (an arm recorded under another
layout stops the run).

Each result is scored twice:
- `val mIoU (search)`: the objective the search ranks by, at the model's input resolution
  (the leaderboard's `val_mean_iou`);
- `val mIoU (full res)`: the validation frames (by default `0006R0`'s 51) predicted at
  480x360 through `autoseg.predict` and scored with `autoseg.metrics`, as `search_cwfid.py`
  does (`full_resolution_scores`): mean IoU over the 11 classes (void excluded), and each
  class's IoU. The search picks its best trial on these same frames, so the figure is
  optimistic by that selection. With `--test-sequence`, this column scores the test
  sequence's frames instead, which no search saw.

The published reference, SegNet-Basic from scratch at about 0.46 mIoU (SOURCE.md: 46-47%),
is measured on the full CamVid test split (233 frames, none of them here) after training on
all 367 train frames. It is a sense of scale only, not comparable with a figure on the
frames of one sequence after training on the other two.

Usage (from the repository root):
```
python benchmarks/search_camvid.py                     # 30 min per arm, one after the other
python benchmarks/search_camvid.py --budget 60m --arms planned
python benchmarks/search_camvid.py --parallel          # both arms at once, one core each
python benchmarks/search_camvid.py --prepare-only      # prepare, print the split, exit
python benchmarks/search_camvid.py --val-sequence 0001TP   # hold out the dusk sequence
python benchmarks/search_camvid.py --report            # print the table of finished arms
python benchmarks/search_camvid.py --parallel --test-sequence 0006R0 --arms planned,planned+tv --out DIR
python benchmarks/finish_steps.py --train DIR/planned --train-val DIR/planned+tv --dataset DIR/dataset --flips h
```
Results go to `--out` (default `/tmp/autoseg_search_camvid`): the prepared dataset, one run
folder and one `<arm>.json` per arm; a finished arm is not run again unless `--rerun`.
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
from bench_data import CAMVID, canonical_dataset, set_threads  # noqa: E402
from search_cwfid import (  # noqa: E402
    OPTION_VARIANTS, default_space, launch_parallel, report, search_scores,
)

ARMS = ("recipe", "planned")
#: Input handling that replaces the default space's (`<arm>+<variant>`).
VARIANTS = {
    "crop": {"policy": "crop", "crop_scale": [1.0], "input_size": 256},
    "wide": {"policy": "resize", "input_size": "352x256"},
    # Cheaper recipes for a budget that trains the default one only a few epochs.
    "f16": {"models": {"unet": {"depth": 4, "filters": 16, "backbone": "none"}}},
    # The recipe before it stepped down on a short budget: a U-Net of 32 filters only.
    "f32": {"models": {"unet": {"depth": 4, "filters": 32, "backbone": "none"}}},
    # A U-Net of 16 filters at one input size (nothing to step down to).
    "f16at256": {"models": {"unet": {"depth": 4, "filters": 16, "backbone": "none"}},
                 "policy": "resize", "input_size": 256},
    "f16at128": {"models": {"unet": {"depth": 4, "filters": 16, "backbone": "none"}},
                 "policy": "resize", "input_size": 128},
    "s192": {"policy": "resize", "input_size": 192},
    # The thin classes' loss: pole and sign stay at IoU 0 even on the training frames under
    # ce_dice; SegNet weights its cross-entropy by median frequency.
    "wce": {"loss": ["weighted_ce"]},
    # A milder weighting: the cross-entropy weighted by the square root of median frequency,
    # plus dice (`weighted_ce_dice`).
    "wcd": {"loss": ["weighted_ce_dice"]},
    # The recipe as it was before `rebalance` (issue #11): ce_dice throughout, whatever its
    # per-class scores show.
    "nrb": {"rebalance": "off"},
}
#: The training seed of every arm (and of CWFID's split); `SEARCH_SEED=1` for another run.
SEED = int(os.environ.get("SEARCH_SEED", "0"))
#: The held-out sequence (`--val-sequence`): daylight, as two of the three are.
VAL_SEQUENCE = "0006R0"
#: A frame's video sequence: the stem's text before the first underscore (`0001TP_006690`).
VAL_GROUPS = r"^([^_]+)_"
#: With `--test-sequence`: the share of each other sequence's last frames validated on, and
#: the frames before them that neither side gets.
VAL_TAIL = 0.2
GAP_FRAMES = 4
#: CamVid's mask value for void (its SOURCE.md).
VOID = 11

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check in every process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="30m", help="time budget per arm (default: 30m)")
    parser.add_argument("--arms", type=arm_list, default=ARMS,
                        help=f"comma-separated arms (default: {','.join(ARMS)})")
    parser.add_argument("--out", default="/tmp/autoseg_search_camvid", help="results folder")
    parser.add_argument("--parallel", action="store_true",
                        help="run the arms at once, each pinned to its own share of the cores")
    parser.add_argument("--rerun", action="store_true", help="run finished arms again")
    parser.add_argument("--report", action="store_true", help="only print the table")
    parser.add_argument("--prepare-only", action="store_true",
                        help="prepare the dataset, print the split and exit")
    parser.add_argument("--val-sequence", default=VAL_SEQUENCE,
                        help=f"the video sequence held out for validation (default: {VAL_SEQUENCE})")
    parser.add_argument("--test-sequence", metavar="SEQ",
                        help="hold this video sequence out of every search and score the arms "
                             "on it; validate on the last fifth of each other sequence")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # a subprocess runs one arm
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.arm:
        return run_arm(args.arm, out, args.budget, args.threads)
    if args.report:
        print(report(out, args.arms))
        return 0
    if not CAMVID.is_dir():
        print(f"CamVid is not at {CAMVID}; nothing to run.")
        return 1
    if not args.test_sequence and any(a.partition("+")[2] == "tv" for a in args.arms):
        parser.error("planned+tv trains its finish on the validation frames: give "
                     "--test-sequence to score it on frames it never trained on")
    ds = camvid(out)
    if args.test_sequence:
        ds = hold_out_test(ds, args.test_sequence)
    else:
        ds = hold_out(ds, args.val_sequence)
    print_split(ds)  # once, before the arms start
    if args.prepare_only:
        return 0
    check_layout(out, ds)
    todo = [a for a in args.arms if args.rerun or not (out / f"{a}.json").is_file()]
    if args.parallel:
        launch_parallel(__file__, todo, out, args.budget)
    for arm in [] if args.parallel else todo:
        subprocess.run([sys.executable, __file__, "--arm", arm, "--out", str(out),
                        "--budget", args.budget], check=True)
    print(report(out, args.arms))
    return 0


def arm_list(text: str) -> list[str]:
    """`--arms`: names from `ARMS`, each optionally `+` one of `VARIANTS` (or `planned+tv`),
    comma-separated."""
    arms = [a for a in text.split(",") if a]
    valid = {a for a in arms if (a.partition("+")[0] in ARMS
                                 and a.partition("+")[2] in ("", *VARIANTS))
             or (a.partition("+")[0] == "planned" and a.partition("+")[2] in OPTION_VARIANTS)}
    if not arms or set(arms) != valid:
        raise argparse.ArgumentTypeError(
            f"unknown arm in {text!r}; valid arms: {', '.join(ARMS)}, each optionally "
            f"+{' or +'.join(VARIANTS)}; planned+{' or planned+'.join(OPTION_VARIANTS)}")
    return arms


def camvid(out: Path):
    """CamVid, read from ../shared, prepared once into `out/dataset` as a user would."""
    ds, how = canonical_dataset(CAMVID, out, format="index", labels=CAMVID / "labels.txt",
                                ignore_values=[VOID])
    print(f"[data] {ds.root}: {how}")
    return ds


def hold_out(ds, sequence: str):
    """`ds` with every frame of `sequence` listed as its validation split in dataset.yaml."""
    import yaml

    from autoseg import atomic
    from autoseg.data import pipeline
    from autoseg.data.dataset import load_dataset

    groups = pipeline.image_groups(ds.stems, VAL_GROUPS)
    if sequence not in groups:
        raise SystemExit(f"--val-sequence {sequence!r} is not a sequence of {ds.root}; "
                         f"its sequences: {', '.join(sorted(groups))}.")
    meta_path = Path(ds.root) / "dataset.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["splits"] = {"val": sorted(groups[sequence])}
    atomic.write_text(meta_path, yaml.safe_dump(meta, sort_keys=False))
    return load_dataset(ds.root)


def hold_out_test(ds, sequence: str):
    """`ds` with `sequence` as its test split, the last `VAL_TAIL` of every other sequence as
    its validation split and the rest, less `GAP_FRAMES` before each validation block, as its
    training split (dataset.yaml's `splits`)."""
    import math

    import yaml

    from autoseg import atomic
    from autoseg.data import pipeline
    from autoseg.data.dataset import load_dataset

    groups = pipeline.image_groups(ds.stems, VAL_GROUPS)
    if sequence not in groups:
        raise SystemExit(f"--test-sequence {sequence!r} is not a sequence of {ds.root}; "
                         f"its sequences: {', '.join(sorted(groups))}.")
    train, val = [], []
    for name, stems in sorted(groups.items()):
        if name == sequence:
            continue
        frames = sorted(stems)  # a stem's number is the frame's: sorted is time order
        tail = max(1, math.ceil(VAL_TAIL * len(frames)))
        val += frames[-tail:]
        train += frames[:max(0, len(frames) - tail - GAP_FRAMES)]
    meta_path = Path(ds.root) / "dataset.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["splits"] = {"train": train, "val": val, "test": sorted(groups[sequence])}
    atomic.write_text(meta_path, yaml.safe_dump(meta, sort_keys=False))
    return load_dataset(ds.root)


def sequences(stems) -> list[str]:
    """The video sequences of `stems`, sorted."""
    from autoseg.data import pipeline

    return sorted(pipeline.image_groups(stems, VAL_GROUPS))


def check_layout(out: Path, ds) -> None:
    """Stops when an arm recorded in `out` was split otherwise than `ds` now is (its scores
    would not compare with the new arms')."""
    splits = ds.splits or {}
    now = {"val_sequences": sequences(splits.get("val") or []),
           "test_sequences": sequences(splits.get("test") or [])}
    for path in sorted(out.glob("*.json")):
        record = json.loads(path.read_text())
        then = {k: record.get(k) or [] for k in now}
        if "arm" in record and then != now:
            raise SystemExit(f"{path} was split as {then}, this run as {now}: give another "
                             "--out (or delete it).")


def print_split(ds) -> None:
    """The split every arm gets (`search` calls `split_stems`, which reads dataset.yaml)."""
    from autoseg.data import pipeline

    train, val = pipeline.split_stems(ds, seed=SEED)
    test = (ds.splits or {}).get("test") or []
    for name, stems in (("train", train), ("val", val), ("test", test)):
        if not stems:
            continue
        groups = pipeline.image_groups(stems, VAL_GROUPS)
        print(f"[split] {name}: {len(stems)} frames: "
              + ", ".join(f"{g} ({len(s)})" for g, s in sorted(groups.items())))
    fraction = pipeline.class_pixel_fraction(ds, val)
    print(f"[split] val pixels by class ({len(ds.classes)} classes, void ignored): "
          + ", ".join(f"{c} {f:.2%}" for c, f in zip(ds.classes, fraction)))


def run_arm(arm: str, out: Path, budget: str, threads: int = 0) -> int:
    """One arm, in its own process: the search, its best trial scored, `out/<arm>.json`."""
    set_threads(threads)  # read by TensorFlow here and in each trial's own process
    import autoseg
    from autoseg import atomic
    from autoseg.data import pipeline
    from autoseg.durations import parse_duration

    ds = camvid(out)
    seconds = parse_duration(budget)
    start, load_before = time.time(), os.getloadavg()[0]
    base, _, variant = arm.partition("+")
    result = autoseg.search(ds.root, out=out / arm, seed=SEED, overwrite=True,
                            space=default_space(VARIANTS.get(variant)), time_budget=seconds,
                            recipe_only=base == "recipe", **OPTION_VARIANTS.get(variant, {}))
    val, test = sequences(ds.splits["val"]), sequences((ds.splits or {}).get("test") or [])
    record = {"arm": arm, "budget_seconds": seconds, "equal": "time", "val_sequences": val,
              "test_sequences": test, "seed": SEED,
              **search_scores(result, ds),
              "wall_seconds": round(time.time() - start, 1),
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "threads": threads or None}
    atomic.write_text(out / f"{arm}.json", json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
