"""Where a trial's fixed cost goes, for a U-Net at 256 px on CWFID (issue #13 §3).

One search of `--trials` trials (`tuner="grid"` over a space of one configuration but for
its learning rate: the recipe's U-Net of 16 filters on 256x256 crops of the half-size photo;
an epoch is one pass over the 32 training photos, as in any search without a plan) per run,
each search in a fresh subprocess with the autoseg of a checkout given on the command line,
so that two versions run back to back, alternating (A B A B ...), on the same machine. The
first trial of a search differs from the others: only a later trial can find its process
started ahead (`autoseg.warm_process`), so the table has a row for each. Each trial's wall
time, from the search's `[trial N] started` line to its `ended` line, is split with the
timestamps the trial writes (`progress.jsonl`, `autoseg.json`):

- `start-up`: from `started` to the first epoch's start: a fresh Python importing TensorFlow
  and Keras (unless a spare did), the model's build, the datasets;
- `first epoch extra`: the first epoch's seconds less the median of the others: tracing the
  train and validation steps, filling the example cache;
- `end`: from the last epoch's end to `ended`: the end of `model.fit` (deleting its
  iterators), the trial's records and checkpoint, the process's exit;
- `fixed`: the three together; `epoch`: the median steady epoch (training and validation).

    python benchmarks/trial_phases.py [--runs 3] [--trials 3] [--epochs 3] [--before CHECKOUT]

Without `--before` only this checkout runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

SPACE = {
    "models": {"unet": {"depth": 4, "filters": 16, "backbone": "none"}},
    "input_size": [256], "policy": "crop", "crop_scale": 0.5, "loss": "ce_dice",
    "aug_strength": 0.5, "batch_size": 4,
}
#: The one hyperparameter the trials differ in (a grid search runs each value once).
LEARNING_RATES = [1e-3, 9e-4, 8e-4, 7e-4, 6e-4, 5e-4]

SCRIPT = """
import json, re, sys, time
from autoseg import search
marks = {}
def log(line):
    found = re.match(r"\\[trial (\\d+)\\] (started|ended)", line)
    if found:
        marks.setdefault(found[1], {})[found[2]] = time.time()
search.search(sys.argv[1], space=json.loads(sys.argv[2]), out=sys.argv[3], tuner="grid",
              max_trials=int(sys.argv[5]), max_epochs=int(sys.argv[4]), seed=0, log=log)
print("MARKS", json.dumps(marks))
"""


def run(checkout: Path, dataset: Path, out: Path, epochs: int, trials: int) -> list[dict]:
    """One search in a fresh process with `checkout`'s autoseg; each trial's phases."""
    env = dict(os.environ, PYTHONPATH=str(checkout))  # with `set_threads`' variables
    space = dict(SPACE, learning_rate=LEARNING_RATES[:trials])
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(dataset), json.dumps(space),
                           str(out), str(epochs), str(trials)], env=env, capture_output=True,
                          text=True, cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(f"{checkout}: the search failed:\n{done.stderr[-3000:]}")
    marks = json.loads(done.stdout.split("MARKS", 1)[1])
    return [_phases(out / "trials" / f"trial_{int(number)}", marks[number])
            for number in sorted(marks, key=int)]


def _phases(trial: Path, marks: dict) -> dict:
    events = [json.loads(line) for line in (trial / "progress.jsonl").read_text().splitlines()]
    ends = [e for e in events if e["kind"] == "epoch"]
    seconds = [e["seconds"] for e in ends]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    record = json.loads((trial / "autoseg.json").read_text())
    phases = {
        "start-up": ends[0]["t"] - seconds[0] - marks["started"],
        "first epoch extra": seconds[0] - steady,
        "end": marks["ended"] - ends[-1]["t"],
    }
    return {**phases, "fixed": sum(phases.values()), "epoch": steady,
            "fit tail": record["train_seconds"] - sum(record["epoch_seconds"]),
            "trial": marks["ended"] - marks["started"]}


COLUMNS = ("start-up", "first epoch extra", "end", "fixed", "epoch", "trial")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per checkout (default: 3)")
    parser.add_argument("--trials", type=int, default=3, choices=range(1, len(LEARNING_RATES) + 1),
                        metavar="N", help="trials per search (default: 3)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default: 3)")
    parser.add_argument("--before", type=Path, help="another checkout, run alternately first")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (default: all)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "trial_phases")
    args = parser.parse_args()
    from bench_data import CWFID, canonical_dataset, set_threads

    set_threads(args.threads)  # for every search's process and its trials'

    if not CWFID.is_dir():
        raise SystemExit(f"CWFID is not at {CWFID}")
    dataset, _ = canonical_dataset(CWFID, args.out / "data")
    checkouts = ([("before", args.before.resolve())] if args.before else []) + [("this", REPO)]
    rows = []  # (checkout, run, trial, phases)
    load = [os.getloadavg()[0]]
    for index in range(args.runs):
        for name, checkout in checkouts:
            out = args.out / f"{name}{index}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            for number, phases in enumerate(run(checkout, dataset.root, out, args.epochs,
                                                args.trials)):
                rows.append((name, index, number, phases))
                print(name, index, number, {k: round(v, 1) for k, v in phases.items()}, flush=True)
    load.append(os.getloadavg()[0])
    print(f"\n{args.runs} runs per checkout, {args.trials} trials per search, {args.epochs} "
          f"epochs per trial, load average {load[0]:.2f} at the start, {load[1]:.2f} at the end\n")
    print("| checkout | trial | run | " + " | ".join(f"{c} s" for c in COLUMNS) + " | fit tail s |")
    print("|---|---|---:|" + "---:|" * (len(COLUMNS) + 1))
    for name, _ in checkouts:
        for which, first in (("first", True), ("later", False)):
            mine = [(i, n, r) for c, i, n, r in rows if c == name and (n == 0) == first]
            for index, number, r in mine:
                print(f"| {name} | {number} | {index} | "
                      + " | ".join(f"{r[c]:.1f}" for c in COLUMNS) + f" | {r['fit tail']:.1f} |")
            if mine:
                print(f"| {name} | {which}: mean | | " + " | ".join(
                    f"{statistics.fmean(r[c] for _, _, r in mine):.1f}" for c in COLUMNS)
                    + f" | {statistics.fmean(r['fit tail'] for _, _, r in mine):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
