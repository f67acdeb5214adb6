"""What running each trial in its own process costs in time, and saves in memory.

The same tiny search (`space: ci`, random, seeded) twice, each in a fresh subprocess: trials
in the search's process (`AUTOSEG_TRIAL_PROCESS=0`) and one process per trial (the default).
Prints the mean seconds per trial (the search's own `[trial] ... ended in Ns` lines) and the
search process's RSS after trial 3 and after the last trial.

    python benchmarks/trial_process.py [--trials 12]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

SCRIPT = """
import sys, time
from autoseg import search
from autoseg.budget import _proc_status_bytes
rss = []
def log(line):
    if " ended in " in line:
        rss.append(_proc_status_bytes("VmRSS"))
        print(line, flush=True)
start = time.time()
search.search(sys.argv[1], space="ci", out=sys.argv[2], tuner="random", max_trials=int(sys.argv[3]),
              max_epochs=1, seed=0, log=log)
print("RSS", rss[2], rss[-1], "WALL", time.time() - start)
"""


def run(dataset: Path, out: Path, trials: int, isolated: bool) -> dict:
    env = dict(os.environ, AUTOSEG_TRIAL_PROCESS="1" if isolated else "0",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(dataset), str(out), str(trials)],
                          env=env, capture_output=True, text=True, check=True)
    seconds = [float(s) for s in re.findall(r" ended in (\d+)s", done.stdout)]
    rss = re.search(r"RSS (\d+) (\d+) WALL ([\d.]+)", done.stdout)
    return {"seconds": seconds, "rss3": int(rss[1]), "rss_last": int(rss[2]), "wall": float(rss[3])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    from conftest import write_canonical_dataset

    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_canonical_dataset(Path(tmp) / "data", num_images=8, size=(48, 64))
        results = {}
        for isolated in (False, True):
            results[isolated] = run(dataset, Path(tmp) / f"run{int(isolated)}", args.trials, isolated)
    print(f"{args.trials} trials of the `ci` space, load average {os.getloadavg()[0]:.1f}\n")
    print("| trials run | s/trial (mean) | search wall s | RSS after trial 3 | after last | growth |")
    print("|---|---:|---:|---:|---:|---:|")
    for isolated, r in results.items():
        name = "one process per trial" if isolated else "in the search's process"
        print(f"| {name} | {statistics.fmean(r['seconds']):.1f} | {r['wall']:.0f} | "
              f"{r['rss3'] / 2**20:.0f} MB | {r['rss_last'] / 2**20:.0f} MB | "
              f"{r['rss_last'] / r['rss3'] - 1:+.0%} |")
    ratio = results[True]["wall"] / results[False]["wall"]
    print(f"\nsearch wall time, per-process / in-process: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
