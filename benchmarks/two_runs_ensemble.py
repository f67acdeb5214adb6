"""Two independently trained models of the same validation photos, and their ensemble, scored.

    python benchmarks/two_runs_ensemble.py RUN:TRIAL RUN:TRIAL [...] [--threads 1]

Where the recipe saturates long before the budget ends (CWFID: its validation flat from
epoch ~17 of 71 at 30 minutes), could the search spend the rest on a second model trained
from scratch and return both averaged, as nnU-Net ensembles its folds (issue #11)? This
scores each trial alone and the mean of their softmax probabilities, on the validation
photos of the first run at full resolution (as `search_cwfid.py` scores an arm). The runs
must share those photos (two arms of one seed do). Each member here had the whole budget,
so the ensemble costs twice the training of either: an upper bound on what splitting one
budget between two members could give.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import set_threads  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("members", nargs="+", help="RUN_DIR:TRIAL_ID, two or more")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from autoseg.data.dataset import load_dataset
    from autoseg.ensemble import incompatibility
    from autoseg.export import load_trial_model, read_trial, trial_values
    from autoseg.search_space import trial_model_config

    members = []
    for spec in args.members:
        run_dir, trial_id = spec.rsplit(":", 1)
        run = json.loads((Path(run_dir) / "run.json").read_text())
        config = trial_model_config(trial_values(read_trial(Path(run_dir), trial_id)))
        members.append((spec, load_trial_model(Path(run_dir), run, trial_id), config, run))
    stems = members[0][3]["split"]["val"]
    if any(m[3]["split"]["val"] != stems for m in members) or len(members) < 2:
        parser.error("give two or more RUN:TRIAL whose runs share their validation photos")
    for spec, _, config, _ in members[1:]:
        why = incompatibility(members[0][2], config)  # each is fed the first one's tiles
        if why or list(config["input_size"]) != list(members[0][2]["input_size"]):
            parser.error(f"{spec}: {why or 'another input size than the first member'}")
    dataset = load_dataset(members[0][3]["dataset"])
    print(f"{len(stems)} validation photos at full resolution")
    print("| model | **full-res mIoU** | per class |\n|---|---:|---|")
    for spec, model, config, _ in members:
        print(f"| {spec} | {_row(score(dataset, stems, [model], config))}", flush=True)
    ensemble = score(dataset, stems, [m[1] for m in members], members[0][2])
    print(f"| mean of the {len(members)} | {_row(ensemble)}", flush=True)
    return 0


def score(dataset, stems, models, config) -> dict:
    """mIoU and per-class IoU of the mean of `models`' probabilities, photos at full size."""
    import numpy as np

    from autoseg.evaluate import score_images
    from autoseg.metrics import scores_from_confusion
    from autoseg.predict import SegmentationModel

    metadata = {
        "classes": list(dataset.classes), "palette": [list(c) for c in dataset.palette],
        "ignore_index": dataset.ignore_index, "input_size": list(config["input_size"]),
        "policy": config["policy"], "crop_scale": config["crop_scale"],
    }

    def runner(batch):
        return np.mean([np.asarray(m(batch, training=False), np.float32) for m in models], axis=0)

    model = SegmentationModel(Path("."), metadata, runner, "keras")
    confusion, _ = score_images(model, dataset, stems, log=lambda _: None)
    scores = scores_from_confusion(confusion)
    return {"mean_iou": float(scores["mean_iou"]),
            "iou": dict(zip(dataset.classes, map(float, scores["per_class_iou"])))}


def _row(scores: dict) -> str:
    per_class = ", ".join(f"{c} {v:.3f}" for c, v in scores["iou"].items())
    return f"**{scores['mean_iou']:.4f}** | {per_class} |"


if __name__ == "__main__":
    sys.exit(main())
