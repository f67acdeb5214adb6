"""A trial's checkpoint trained on, as a fork or the finish does: validation per epoch.

    python benchmarks/continuation.py --run RUN_DIR --trial 0000 --epochs 4 [--threads 1]

Builds the trial's model from its hyperparameters as a continued trial (`tuner/trial_id`
set), loads its checkpoint and trains it on for `--epochs` from where it stopped, along the
learning-rate schedule its record ends at (`schedule_epochs`), on the run's own split. It
prints the trial's own last readings and the continuation's loss and validation mIoU each
epoch. Run it from two checkouts (`PYTHONPATH=<clone>`) to compare how two versions of
autoseg continue the same weights (issue #11: the Adam moments and the weight average a
continued trial starts with). No timing is reported: the wall time of the epochs is the
search's business (`benchmarks/search_cwfid.py`).
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
    parser.add_argument("--run", type=Path, required=True, help="a search's run folder")
    parser.add_argument("--trial", default="0000", help="the trial to continue")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import keras
    import keras_tuner as kt

    from autoseg import run_dir
    from autoseg.data.dataset import load_dataset
    from autoseg.export import read_trial
    from autoseg.hyperband import FORK_BRACKET
    from autoseg.hypermodel import AutosegHyperModel, TrainingData
    from autoseg.plan import SCHEDULE_EPOCHS
    from autoseg.search_space import load_space

    run = json.loads((args.run / "run.json").read_text())
    trial = read_trial(args.run, args.trial)
    values = trial["hyperparameters"]["values"]
    record = run_dir.read_record(args.run, args.trial)
    # `hyperband.checkpoint_epoch`'s rule, written out: the script runs against checkouts
    # older than that function (the "before" of RESULTS.md). The checkpoint is the best epoch.
    reached = int(values.get("tuner/initial_epoch", 0)) + min(int(trial.get("best_step") or 0) + 1,
                                                               int(record["epochs"]))
    keras.utils.set_random_seed(args.seed)
    dataset = load_dataset(run["dataset"])
    data = TrainingData(dataset, run["split"]["train"], run["split"]["val"], seed=args.seed)
    hypermodel = AutosegHyperModel(load_space(args.run / "space.yaml"), data, precision="auto")
    hp = kt.HyperParameters()
    hp.values = {**values, "tuner/trial_id": args.trial, "tuner/initial_epoch": reached,
                 "tuner/epochs": reached + args.epochs, "tuner/bracket": FORK_BRACKET, "tuner/round": 1}
    horizon = int(record.get("schedule_epochs") or 0)
    if horizon > reached + args.epochs:
        hp.values[SCHEDULE_EPOCHS] = horizon
    model = hypermodel.build(hp)
    model.load_weights(run_dir.checkpoint_path(args.run, args.trial))
    history = hypermodel.fit(hp, model, epochs=reached + args.epochs, initial_epoch=reached,
                             verbose=0)
    import autoseg

    print(f"autoseg at {Path(autoseg.__file__).parent.parent}; trial {args.trial} of {args.run}: "
          f"{reached} epochs, schedule ends at {horizon or reached}")
    print("| epoch | loss | val loss | val mIoU |")
    print("|---:|---:|---:|---:|")
    h = history.history
    for i, epoch in enumerate(range(reached + 1, reached + args.epochs + 1)):
        print(f"| {epoch} | {h['loss'][i]:.4f} | {h['val_loss'][i]:.4f} | "
              f"{h['val_mean_iou'][i]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
