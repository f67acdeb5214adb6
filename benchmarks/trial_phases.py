"""Where a trial's fixed cost goes, for a U-Net at 256 px on CWFID (issue #13 §3).

One search of one trial (`tuner="random"`, `max_trials=1`, a space of one configuration: the
recipe's U-Net of 16 filters on 256x256 crops of the half-size photo; an epoch is one pass
over the 32 training photos, as in any search without a plan) per run, each in a fresh
subprocess with the autoseg of a checkout given on the command line, so that two versions
run back to back, alternating (A B A B ...), on the same machine. The
trial's wall time, from the search's `[trial 0] started` line to its `ended` line, is split
with the timestamps the trial writes (`progress.jsonl`, `autoseg.json`):

- `start-up`: from `started` to the first epoch's start: a fresh Python importing TensorFlow
  and Keras, the model's build, the datasets;
- `first epoch extra`: the first epoch's seconds less the median of the others: tracing the
  train and validation steps, filling the example cache;
- `end`: from the last epoch's end to `ended`: the end of `model.fit` (deleting its
  iterators), the trial's records and checkpoint, the process's exit;
- `fixed`: the three together; `epoch`: the median steady epoch (training and validation).

    python benchmarks/trial_phases.py [--runs 3] [--epochs 3] [--before /tmp/old_checkout]

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
    "aug_strength": 0.5, "learning_rate": 1e-3, "batch_size": 4,
}

SCRIPT = """
import json, sys, time
from autoseg import search
marks = {}
def log(line):
    for key in ("started", "ended"):
        if line.startswith("[trial ") and f"] {key}" in line:
            marks[key] = time.time()
search.search(sys.argv[1], space=json.loads(sys.argv[2]), out=sys.argv[3], tuner="random",
              max_trials=1, max_epochs=int(sys.argv[4]), seed=0, log=log)
print("MARKS", json.dumps(marks))
"""


def run(checkout: Path, dataset: Path, out: Path, epochs: int, threads: int) -> dict:
    """One search in a fresh process with `checkout`'s autoseg; the trial's phases."""
    env = dict(os.environ, PYTHONPATH=str(checkout), NO_ALBUMENTATIONS_UPDATE="1")
    if threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(dataset), json.dumps(SPACE),
                           str(out), str(epochs)], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(f"{checkout}: the search failed:\n{done.stderr[-3000:]}")
    marks = json.loads(done.stdout.split("MARKS", 1)[1])
    trial = next((out / "trials").glob("trial_*"))
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
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default: 3)")
    parser.add_argument("--before", type=Path, help="another checkout, run alternately first")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (default: all)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "trial_phases")
    args = parser.parse_args()
    from bench_data import CWFID, canonical_dataset

    if not CWFID.is_dir():
        raise SystemExit(f"CWFID is not at {CWFID}")
    dataset, _ = canonical_dataset(CWFID, args.out / "data")
    checkouts = ([("before", args.before.resolve())] if args.before else []) + [("this", REPO)]
    rows = []
    load = [os.getloadavg()[0]]
    for index in range(args.runs):
        for name, checkout in checkouts:
            out = args.out / f"{name}{index}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            rows.append((name, run(checkout, dataset.root, out, args.epochs, args.threads)))
            print(name, {k: round(v, 1) for k, v in rows[-1][1].items()}, flush=True)
    load.append(os.getloadavg()[0])
    print(f"\n{args.runs} runs per checkout, {args.epochs} epochs per trial, "
          f"load average {load[0]:.2f} at the start, {load[1]:.2f} at the end\n")
    print("| checkout | run | " + " | ".join(f"{c} s" for c in COLUMNS) + " | fit tail s |")
    print("|---|---:|" + "---:|" * (len(COLUMNS) + 1))
    for name, _ in checkouts:
        mine = [r for n, r in rows if n == name]
        for index, r in enumerate(mine):
            print(f"| {name} | {index} | " + " | ".join(f"{r[c]:.1f}" for c in COLUMNS)
                  + f" | {r['fit tail']:.1f} |")
        print(f"| {name} | mean | " + " | ".join(
            f"{statistics.fmean(r[c] for r in mine):.1f}" for c in COLUMNS)
            + f" | {statistics.fmean(r['fit tail'] for r in mine):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
