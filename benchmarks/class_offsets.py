"""Per-class offsets of the log-probabilities, chosen on some validation photos, scored on others.

    python benchmarks/class_offsets.py RUN_DIR [TRIAL_ID] [--threads 1] [--halves alternate|split]

A search could choose, besides its training, a per-class offset added to the model's
log-probabilities before the argmax (a prior shift; baked into the last layer's bias it
would cost nothing at inference), to trade a rare class's recall against its precision for
mIoU. Chosen and scored on the same photos it always gains; this measures what it gains on
photos it was not chosen on: the run's validation photos (at full resolution, as
`search_cwfid.py` scores an arm, every second pixel in each direction) split in two halves
(`alternate`: every other photo, for independent photos; `split`: first and second half, for
the frames of one video sequence), offsets chosen on each half by coordinate ascent on a grid
of -2..2 in steps of 0.25 (two sweeps), scored on the other. TRIAL_ID defaults to the run's
best on its leaderboard.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import set_threads  # noqa: E402

GRID = [v / 4 for v in range(-8, 9)]
SWEEPS = 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("trial", nargs="?")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--halves", choices=("alternate", "split"), default="alternate")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import numpy as np

    trial = args.trial or _best(args.run)
    log_p, labels, classes = _validation_scores(args.run, trial)
    n = len(labels)
    halves = ([list(range(0, n, 2)), list(range(1, n, 2))] if args.halves == "alternate"
              else [list(range(n // 2)), list(range(n // 2, n))])
    zero = np.zeros(len(classes), np.float32)
    everything = list(range(n))
    print(f"{args.run} trial {trial}: {n} validation photos, {len(classes)} classes")
    print("| chosen on | offsets (" + ", ".join(classes) + ") | mIoU where chosen | "
          "**other half: none → offsets** | Δ |")
    print("|---|---|---:|---:|---:|")
    for k in (0, 1):
        offsets, fitted = _choose(log_p, labels, halves[k], len(classes))
        before = _miou(log_p, labels, halves[1 - k], zero)
        after = _miou(log_p, labels, halves[1 - k], offsets)
        print(f"| half {k} | {', '.join(f'{v:+.2f}' for v in offsets)} | {fitted:.4f} | "
              f"**{before:.4f} → {after:.4f}** | {after - before:+.4f} |", flush=True)
    offsets, fitted = _choose(log_p, labels, everything, len(classes))
    before = _miou(log_p, labels, everything, zero)
    print(f"| all (scored where chosen) | {', '.join(f'{v:+.2f}' for v in offsets)} | {fitted:.4f} | "
          f"{before:.4f} → {fitted:.4f} | {fitted - before:+.4f} |")
    return 0


def _best(run: Path) -> str:
    from autoseg.leaderboard import best_row, read_leaderboard
    from autoseg.run_dir import LEADERBOARD_FILE

    return best_row(read_leaderboard(run / LEADERBOARD_FILE))["trial_id"]


def _validation_scores(run_dir: Path, trial_id: str):
    """Log-probabilities and labels of the labelled pixels of each validation photo."""
    import numpy as np

    from autoseg.data import pipeline
    from autoseg.data.dataset import load_dataset
    from autoseg.export import load_trial_model, read_trial, trial_values
    from autoseg.search_space import trial_model_config
    from search_cwfid import segmenter

    run = json.loads((run_dir / "run.json").read_text())
    ds = load_dataset(run["dataset"])
    config = trial_model_config(trial_values(read_trial(run_dir, trial_id)))
    model = segmenter(load_trial_model(run_dir, run, trial_id), ds, config)
    log_p, labels = [], []
    start = time.perf_counter()
    for stem in run["split"]["val"]:
        image, mask = pipeline.load_example(ds, stem, raw=True)
        scores, mask = model.predict_scores(image)[::2, ::2], mask[::2, ::2]
        keep = mask != ds.ignore_index
        log_p.append(np.log(np.clip(scores[keep], 1e-6, 1.0)).astype(np.float32))
        labels.append(mask[keep].astype(np.int64))
    print(f"predicted in {time.perf_counter() - start:.0f} s")
    return log_p, labels, list(ds.classes)


def _miou(log_p, labels, photos, offsets) -> float:
    import numpy as np

    from autoseg.metrics import confusion_matrix, scores_from_confusion

    confusion = sum(confusion_matrix(labels[i], np.argmax(log_p[i] + offsets, axis=1), len(offsets))
                    for i in photos)
    return float(scores_from_confusion(confusion)["mean_iou"])


def _choose(log_p, labels, photos, num_classes):
    """Coordinate ascent of the offsets on `photos`' mIoU."""
    import numpy as np

    offsets = np.zeros(num_classes, np.float32)
    best = _miou(log_p, labels, photos, offsets)
    for _ in range(SWEEPS):
        for c in range(num_classes):
            for value in GRID:
                trial = offsets.copy()
                trial[c] = value
                score = _miou(log_p, labels, photos, trial)
                if score > best + 1e-5:
                    best, offsets = score, trial
    return offsets, best


if __name__ == "__main__":
    sys.exit(main())
