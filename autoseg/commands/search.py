"""`autoseg search --dataset PATH`: find the best model for a dataset and this machine."""

from __future__ import annotations

TUNER_CHOICES = ("hyperband", "bayesian", "random", "grid")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "search",
        help="search architectures and training settings (resumable)",
        description=(
            "Search the model zoo for the best model on a dataset within a time and memory "
            "budget. Running the same command again resumes the run."
        ),
    )
    p.add_argument("--dataset", required=True, metavar="PATH",
                   help="a prepared dataset or a raw folder that `autoseg prepare` understands")
    p.add_argument("--space", metavar="FILE",
                   help="search space YAML or a bundled name: default, quick, ci (default: default)")
    p.add_argument("--out", metavar="RUNDIR", help="run folder (default: runs/<dataset name>)")
    p.add_argument("--tuner", choices=TUNER_CHOICES, default="hyperband",
                   help="KerasTuner oracle (default: hyperband)")
    p.add_argument("--max-trials", type=int, metavar="N", help="trials at most")
    p.add_argument("--max-epochs", type=int, metavar="N", help="epochs per trial at most")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="no trial starts after this (e.g. 30m, 2h, 90s)")
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="training memory per trial, e.g. 8GB (default: free GPU memory, else available RAM)")
    p.add_argument("--objective", default="val_mean_iou",
                   help="validation metric to maximise (default: val_mean_iou)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, tuner, augmentation")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    p.add_argument("--verbose", action="store_true", help="Keras per-epoch progress")
    p.set_defaults(run=run)


def run(args) -> int:
    from autoseg.leaderboard import format_table
    from autoseg.search import search

    result = search(
        args.dataset,
        space=args.space,
        out=args.out,
        tuner=args.tuner,
        max_trials=args.max_trials,
        max_epochs=args.max_epochs,
        time_budget=args.time_budget,
        memory_budget=args.memory_budget,
        objective=args.objective,
        seed=args.seed,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    print(format_table(result.rows, top=10))
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items()))
    best = result.best
    print(
        f"Best: trial {best['trial_id']} ({best.get('model_name', '?')}) "
        f"{args.objective}={best.get(args.objective)}; trials: {counts}. "
        f"Leaderboard: {result.rundir / 'leaderboard.csv'}"
    )
    return 0
