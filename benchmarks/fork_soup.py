"""The forks of a search's recipe, and their weights averaged (a "model soup"), scored.

    python benchmarks/fork_soup.py RUN_DIR [--threads 1]

A planned search forks the recipe's checkpoint (`autoseg.hyperband`, `FORK_BRACKET`): the
control and variants of its training choices each train the same weights on for a few
epochs, and only the best goes on. Forks of one checkpoint stay in one basin, so the
average of their weights (Wortsman et al. 2022, "Model soups") might beat each of them and
use the compute the search otherwise throws away (issue #11). This scores, on the run's own
validation photos at full resolution (as `search_cwfid.py` scores an arm), every trial of
the run, then the uniform average of all its forks' weights (BatchNorm's moving statistics
averaged too) and of every pair of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import set_threads  # noqa: E402

TRAINING_KEYS = ("loss", "learning_rate", "aug_strength", "batch_size", "weight_ema", "rare_crops")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a planned search's run folder")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import numpy as np

    from autoseg.data.dataset import load_dataset
    from autoseg.export import load_trial_model, read_trial, trial_values
    from autoseg.hyperband import FORK_BRACKET
    from autoseg.search_space import trial_model_config
    from search_cwfid import full_resolution_scores

    run = json.loads((args.run / "run.json").read_text())
    dataset = load_dataset(run["dataset"])
    stems = run["split"]["val"]
    trials = {d.name.removeprefix("trial_"): read_trial(args.run, d.name.removeprefix("trial_"))
              for d in sorted((args.run / "trials").glob("trial_*"))}
    forks = [i for i, t in trials.items()
             if t["hyperparameters"]["values"].get("tuner/bracket") == FORK_BRACKET]
    print(f"{args.run}: {len(stems)} validation photos at full resolution; forks {forks}")
    print("| trial(s) | bracket | val mIoU (search) | **full-res mIoU** | per class | training |")
    print("|---|---:|---:|---:|---|---|")
    weights = {}
    for trial_id, trial in trials.items():
        values = trial_values(trial)
        model = load_trial_model(args.run, run, trial_id)
        scores = full_resolution_scores(model, dataset, stems, trial_model_config(values))
        training = ", ".join(f"{k} {values[k]}" for k in TRAINING_KEYS if k in values)
        print(f"| {trial_id} | {trial['hyperparameters']['values'].get('tuner/bracket')} | "
              f"{trial['score'] or 0:.4f} | **{scores['full_res_mean_iou']:.4f}** | "
              f"{_classes(scores)} | {training} |", flush=True)
        if trial_id in forks:
            weights[trial_id] = model.get_weights()
    if len(forks) < 2:
        print("fewer than two forks: nothing to average")
        return 0
    config = trial_model_config(trial_values(trials[forks[0]]))
    pairs = [[a, b] for n, a in enumerate(forks) for b in forks[n + 1:]] if len(forks) > 2 else []
    for group in [forks, *pairs]:
        soup = load_trial_model(args.run, run, group[0])
        soup.set_weights([np.mean([weights[i][k] for i in group], axis=0)
                          for k in range(len(weights[group[0]]))])
        scores = full_resolution_scores(soup, dataset, stems, config)
        print(f"| average of {' + '.join(group)} | | | **{scores['full_res_mean_iou']:.4f}** | "
              f"{_classes(scores)} | |", flush=True)
    return 0


def _classes(scores: dict) -> str:
    return ", ".join(f"{c} {v:.3f}" for c, v in scores["full_res_iou"].items())


if __name__ == "__main__":
    sys.exit(main())
