"""The share of an epoch that validation takes in a search's trials (issue #13 §4).

Reads the `progress.jsonl` every trial writes (a line per training step, a line per epoch,
each with its time) in one or more run folders, and splits each steady epoch (every one after
a trial's first, whose start is the epoch before's end) into:

- `train`: from the epoch's start to its last training step's end;
- `validate`: from there to the epoch's end: the tiled full-resolution validation of the
  validation photos, plus what Keras' callbacks do at an epoch's end (the checkpoint, the
  weight average's swap, the records).

`share` is validate / (train + validate) as the trial ran, with the run plan's
`passes_per_epoch` passes over the training photos an epoch (`plan.VALIDATION_SHARE` sets
them); `share at 1 pass` is the same epochs' validation against one pass of their training,
the epoch of a search without a plan (and of every search before the plan): what validating
after every pass would cost.

    python benchmarks/validation_share.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from autoseg.run_dir import PLAN_FILE, TRIALS_DIR


def epoch_splits(progress: Path) -> list[tuple[float, float]]:
    """`(train s, validate s)` of each steady epoch of one trial whose last training step has
    its line (`progress.EpochProgress` writes a step's line at most every 2 s: where it skipped
    the last one, the split cannot be read and the epoch is left out)."""
    events = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    splits, start, last = [], None, None
    for event in events:
        if event["kind"] == "batch":
            last = event
        elif event["kind"] == "epoch":
            if start is not None and last is not None and last["step"] == last["steps"]:
                splits.append((last["t"] - start, event["t"] - last["t"]))
            start, last = event["t"], None
    return splits


def passes(run: Path) -> int:
    plan = run / PLAN_FILE
    return int(json.loads(plan.read_text()).get("passes_per_epoch") or 1) if plan.is_file() else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    args = parser.parse_args()
    print("| run | trial | passes an epoch | steady epochs | train s | validate s | **share** "
          "| share at 1 pass |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        count = passes(run)
        for progress in sorted((run / TRIALS_DIR).glob("trial_*/progress.jsonl")):
            splits = epoch_splits(progress)
            if not splits:
                continue
            train = statistics.median(t for t, _ in splits)
            validate = statistics.median(v for _, v in splits)
            print(f"| {run} | {progress.parent.name} | {count} | {len(splits)} | {train:.1f} "
                  f"| {validate:.1f} | **{validate / (train + validate):.0%}** "
                  f"| {validate / (train / count + validate):.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
