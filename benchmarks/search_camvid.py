"""The default search against its own recipe on CamVid, at equal wall time (issue #11 §6).

The CamVid counterpart of `search_cwfid.py`. Arms, each in its own subprocess (its own
TensorFlow, memory and threads):

- `recipe` (#11 arm A): `autoseg.search(recipe_only=True)` with the default space and the
  hyperband tuner: the plan's recipe (`autoseg.plan`) trained for the whole budget.
- `planned` (#11 arm B): `autoseg.search` as a user runs it: default space, default tuner,
  `time_budget`: the plan, the recipe as trial 0, its variants, the best continued.

Data: the 184 frames of `../shared/datasets/camvid11_train` (every second frame of SegNet's
train split, 480x360, 11 classes + void), prepared once into `<out>/dataset` as a user would:
`autoseg prepare SRC --format index --labels SRC/labels.txt --ignore-values 11` (void becomes
255, ignored in training and scoring).

Split by video sequence, never at random: consecutive frames are near duplicates. Both arms
pass `val_groups=VAL_GROUPS` (the stem's text before the first underscore) with
`val_fraction=0.2`, which holds out the whole `0001TP` sequence: 31 frames for validation,
153 (`0006R0`, `0016E5`) for training. All 11 classes occur in the validation frames
(fence least: 0.4% of their labelled pixels), so every mean below is over all 11.
`--prepare-only` prints the split and those shares.

Each result is scored twice:
- `val mIoU (search)`: the objective the search ranks by, at the model's input resolution
  (the leaderboard's `val_mean_iou`);
- `val mIoU (full res)`: the 31 validation frames predicted at 480x360 through
  `autoseg.predict` and scored with `autoseg.metrics`, as `search_cwfid.py` does
  (`full_resolution_scores`): mean IoU over the 11 classes (void excluded), and each
  class's IoU. The search picks its best trial on these same frames, so the figure is
  optimistic by that selection.

The published reference, SegNet-Basic from scratch at about 0.46 mIoU (SOURCE.md: 46-47%),
is measured on the full CamVid test split (233 frames, none of them here) after training on
all 367 train frames. It is a sense of scale only, not comparable with a figure on our 31
frames of one sequence after training on 153.

Usage (from the repository root):
```
python benchmarks/search_camvid.py                     # 30 min per arm, one after the other
python benchmarks/search_camvid.py --budget 60m --arms planned
python benchmarks/search_camvid.py --prepare-only      # prepare, print the split, exit
python benchmarks/search_camvid.py --report            # print the table of finished arms
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
from bench_data import CAMVID, canonical_dataset  # noqa: E402
from search_cwfid import report, search_scores  # noqa: E402

ARMS = ("recipe", "planned")
SEED = 0
VAL_FRACTION = 0.2
#: A frame's video sequence: the stem's text before the first underscore (`0001TP_006690`).
VAL_GROUPS = r"^([^_]+)_"
#: CamVid's mask value for void (its SOURCE.md).
VOID = 11

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check in every process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="30m", help="time budget per arm (default: 30m)")
    parser.add_argument("--arms", type=arm_list, default=ARMS,
                        help=f"comma-separated arms (default: {','.join(ARMS)})")
    parser.add_argument("--out", default="/tmp/autoseg_search_camvid", help="results folder")
    parser.add_argument("--rerun", action="store_true", help="run finished arms again")
    parser.add_argument("--report", action="store_true", help="only print the table")
    parser.add_argument("--prepare-only", action="store_true",
                        help="prepare the dataset, print the split and exit")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # a subprocess runs one arm
    args = parser.parse_args()
    out = Path(args.out)
    if args.arm:
        return run_arm(args.arm, out, args.budget)
    if args.report:
        print(report(out, args.arms))
        return 0
    if not CAMVID.is_dir():
        print(f"CamVid is not at {CAMVID}; nothing to run.")
        return 1
    print_split(camvid(out))  # prepared once, before the arms start
    if args.prepare_only:
        return 0
    for arm in args.arms:
        if args.rerun or not (out / f"{arm}.json").is_file():
            subprocess.run([sys.executable, __file__, "--arm", arm, "--out", str(out),
                            "--budget", args.budget], check=True)
    print(report(out, args.arms))
    return 0


def arm_list(text: str) -> list[str]:
    """`--arms`: names from `ARMS`, comma-separated."""
    arms = [a for a in text.split(",") if a]
    if not arms or not set(arms) <= set(ARMS):
        raise argparse.ArgumentTypeError(f"unknown arm in {text!r}; valid arms: {', '.join(ARMS)}")
    return arms


def camvid(out: Path):
    """CamVid, read from ../shared, prepared once into `out/dataset` as a user would."""
    ds, how = canonical_dataset(CAMVID, out, format="index", labels=CAMVID / "labels.txt",
                                ignore_values=[VOID])
    print(f"[data] {ds.root}: {how}")
    return ds


def print_split(ds) -> None:
    """The split both arms get (`search` calls `split_stems` with the same arguments)."""
    from autoseg.data import pipeline

    train, val = pipeline.split_stems(ds, val_fraction=VAL_FRACTION, seed=SEED,
                                      group_pattern=VAL_GROUPS)
    for name, stems in (("train", train), ("val", val)):
        groups = pipeline.image_groups(stems, VAL_GROUPS)
        print(f"[split] {name}: {len(stems)} frames: "
              + ", ".join(f"{g} ({len(s)})" for g, s in sorted(groups.items())))
    fraction = pipeline.class_pixel_fraction(ds, val)
    print(f"[split] val pixels by class ({len(ds.classes)} classes, void ignored): "
          + ", ".join(f"{c} {f:.2%}" for c, f in zip(ds.classes, fraction)))


def run_arm(arm: str, out: Path, budget: str) -> int:
    """One arm, in its own process: the search, its best trial scored, `out/<arm>.json`."""
    import autoseg
    from autoseg import atomic
    from autoseg.search import parse_duration

    ds = camvid(out)
    seconds = parse_duration(budget)
    start, load_before = time.time(), os.getloadavg()[0]
    result = autoseg.search(ds.root, out=out / arm, seed=SEED, overwrite=True,
                            time_budget=seconds, val_fraction=VAL_FRACTION,
                            val_groups=VAL_GROUPS, recipe_only=arm == "recipe")
    record = {"arm": arm, "budget_seconds": seconds, "equal": "time",
              **search_scores(result, ds),
              "wall_seconds": round(time.time() - start, 1),
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    atomic.write_text(out / f"{arm}.json", json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
