"""The headline figure of issue #13 §5: five families through the real trial machinery.

One search (`autoseg.search`, grid tuner, `precision="auto"`, seed 0) over a space of
exactly five configurations, every one on 256x256 crops of the half-size CWFID photo, batch
4, CE + soft dice, `max_epochs` epochs each:

- U-Net (4 levels, 32 filters), U-Net with a ResNet-50 encoder, light U-Net (4 levels, 32
  filters), SegNet (5 levels, 32 filters), DeepLabV3+ with a ResNet-50 encoder (stride 16).

Each search runs in a fresh subprocess with the autoseg of a checkout given on the command
line, so two versions run back to back on the same machine (`--before` first, then this
one). A trial's wall time, from the search's `[trial N] started` line to its `ended` line,
is split with the `epoch_seconds` each trial records in its `autoseg.json` (an epoch's
training and validation) into its **epochs**, as many as it trained at its steady epoch
time (the median of all but the first), and its **fixed cost**, the rest: a process's start
where trials get one, imports, build, datasets, the first epoch's tracing, the checkpoint
and records. The search's own wall time (its subprocess, start to end) is printed as well:
it adds the search's set-up (and, where there is one, the plan's calibration).

    python benchmarks/search_throughput.py [--epochs 3] [--before /tmp/before_checkout]

Without `--before` only this checkout runs. The "before" of issue #13 is main when the issue
was filed: `git clone /work/main /tmp/b13 && git -C /tmp/b13 checkout 68d36ef^`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

SPACE = {
    "models": {
        "unet": {"depth": 4, "filters": 32, "backbone": ["none", "resnet50"]},
        "light_unet": {"depth": 4, "filters": 32},
        "segnet": {"backbone": "none", "depth": 5, "filters": 32},
        "deeplabv3plus": {"backbone": "resnet50", "output_stride": 16},
    },
    "input_size": [256], "policy": "crop", "crop_scale": 0.5, "loss": "ce_dice",
    "aug_strength": 0.5, "learning_rate": 1e-3, "batch_size": 4,
}
CONFIGURATIONS = 5

SCRIPT = """
import json, re, sys, time
from autoseg import search
marks = {}
def log(line):
    # "[trial 0003] started (4/10)", "[trial 0003] ended in ..."; before #14's one name,
    # "[trial 1/5] 00 started ..." and "[trial] 00 ended ...".
    found = re.match(r"\\[trial(?: (\\w+))?(?:/\\d+)?\\] (?:(\\w+) )?(started|ended)", line)
    if found:
        marks.setdefault(found.group(2) or found.group(1), {})[found.group(3)] = time.time()
    print(line, flush=True)
search.search(sys.argv[1], space=json.loads(sys.argv[2]), out=sys.argv[3], tuner="grid",
              max_trials=int(sys.argv[5]), max_epochs=int(sys.argv[4]), seed=0,
              precision="auto", log=log)
print("MARKS", json.dumps(marks))
"""


def run(checkout: Path, dataset: Path, out: Path, epochs: int) -> dict:
    """One search in a fresh process with `checkout`'s autoseg: its trials and wall time."""
    env = dict(os.environ, PYTHONPATH=str(checkout), NO_ALBUMENTATIONS_UPDATE="1")
    start = time.time()
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(dataset), json.dumps(SPACE),
                           str(out), str(epochs), str(CONFIGURATIONS)], env=env,
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    wall = time.time() - start
    if done.returncode or "MARKS" not in done.stdout:
        raise SystemExit(f"{checkout}: the search failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    marks = json.loads(done.stdout.split("MARKS", 1)[1])
    trials = []
    for trial_id, mark in marks.items():
        folder = out / "trials" / f"trial_{trial_id}"
        record = json.loads((folder / "autoseg.json").read_text())
        values = json.loads((folder / "trial.json").read_text())["hyperparameters"]["values"]
        epoch_seconds = [float(s) for s in record.get("epoch_seconds") or []]
        steady = statistics.median(epoch_seconds[1:] or epoch_seconds or [0.0])
        trial_wall = mark["ended"] - mark["started"]
        trials.append({
            "trial": trial_id, "configuration": _name(values), "status": record.get("status"),
            "epochs": len(epoch_seconds), "passes": record.get("passes_per_epoch") or 1,
            "epochs s": steady * len(epoch_seconds),
            "fixed s": trial_wall - steady * len(epoch_seconds),
            "trial s": trial_wall,
        })
    return {"wall": wall, "trials": trials}


def older_layout(root: Path, folder: Path) -> Path:
    """The prepared dataset as an older autoseg reads it: links to its images and masks, and
    its dataset.yaml without the keys added since (`channels`, which 68d36ef^ refuses)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name != "dataset.yaml" and not (folder / entry.name).exists():
            (folder / entry.name).symlink_to(entry.resolve())
    data = yaml.safe_load((root / "dataset.yaml").read_text())
    data.pop("channels", None)
    (folder / "dataset.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def _name(values: dict) -> str:
    family = values.get("model_name", "?")
    backbone = next((v for k, v in values.items() if k.endswith("backbone")
                     and k.startswith(f"{family}/")), None)
    return family + (f"/{backbone}" if backbone and backbone != "none" else "")


def table(name: str, result: dict) -> str:
    rows = [f"| {name} | {t['configuration']} | {t['status']} | {t['epochs']} | {t['passes']} | "
            f"{t['fixed s']:.1f} | {t['epochs s']:.1f} | {t['trial s']:.1f} |"
            for t in result["trials"]]
    fixed = sum(t["fixed s"] for t in result["trials"])
    epochs = sum(t["epochs s"] for t in result["trials"])
    rows.append(f"| {name} | **all trials** | | | | **{fixed:.1f}** | **{epochs:.1f}** | "
                f"**{fixed + epochs:.1f}** |")
    rows.append(f"| {name} | the search's process, start to end | | | | | | {result['wall']:.1f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default: 3)")
    parser.add_argument("--before", type=Path, help="another checkout, run first")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "search_throughput")
    args = parser.parse_args()
    from bench_data import CWFID, canonical_dataset

    if not CWFID.is_dir():
        raise SystemExit(f"CWFID is not at {CWFID}")
    dataset, _ = canonical_dataset(CWFID, args.out / "data")
    checkouts = ([("before", args.before.resolve())] if args.before else []) + [("this", REPO)]
    results = {}
    for name, checkout in checkouts:
        out = args.out / name
        subprocess.run(["rm", "-rf", str(out)], check=True)
        load = os.getloadavg()[0]
        root = dataset.root if name == "this" else older_layout(dataset.root, args.out / f"data_{name}")
        results[name] = run(checkout, root, out, args.epochs)
        results[name]["load"] = (load, os.getloadavg()[0])
        (args.out / f"{name}.json").write_text(json.dumps(results[name], indent=1))
        print(f"{name}: {results[name]['wall']:.0f} s, load {load:.2f} -> "
              f"{results[name]['load'][1]:.2f}", flush=True)
    print(f"\n{args.epochs} epochs per trial; the load average at each search's start and end: "
          + ", ".join(f"{n} {r['load'][0]:.2f} -> {r['load'][1]:.2f}" for n, r in results.items())
          + "\n")
    print("| checkout | configuration | status | epochs | passes an epoch | fixed s | epochs s | trial s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        print(table(name, result))
    if "before" in results:
        total = {n: sum(t["trial s"] for t in r["trials"]) for n, r in results.items()}
        print(f"\nAll trials, this / before: {total['this'] / total['before']:.2f}; the searches' "
              f"wall time, this / before: {results['this']['wall'] / results['before']['wall']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
