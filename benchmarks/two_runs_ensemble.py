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
    from search_cwfid import full_resolution_scores

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
        print(f"| {spec} | {_row(full_resolution_scores(model, dataset, stems, config))}",
              flush=True)
    ensemble = MeanOf([m[1] for m in members])
    print(f"| mean of the {len(members)} | "
          f"{_row(full_resolution_scores(ensemble, dataset, stems, members[0][2]))}", flush=True)
    return 0


class MeanOf:
    """Keras models called as one: the mean of their softmax probabilities."""

    def __init__(self, models):
        self.models = models

    def __call__(self, batch, training=False):
        import numpy as np

        return np.mean([np.asarray(m(batch, training=training), np.float32)
                        for m in self.models], axis=0)


def _row(scores: dict) -> str:
    per_class = ", ".join(f"{c} {v:.4f}" for c, v in scores["full_res_iou"].items())
    return f"**{scores['full_res_mean_iou']:.4f}** | {per_class} |"


if __name__ == "__main__":
    sys.exit(main())
