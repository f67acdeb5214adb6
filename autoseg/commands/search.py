"""`autoseg search --dataset PATH`: find the best model for a dataset and this machine."""

from __future__ import annotations

from autoseg.devices import BFLOAT16_MODELS, PRECISIONS, STRATEGIES

TUNER_CHOICES = ("hyperband", "bayesian", "random", "grid")
#: `plan.EXPLORE_MODES` and `plan.FINISH_ON`, spelt out so that `--help` does not import the
#: plan (tests/test_explore.py keeps them equal).
EXPLORE_CHOICES = ("auto", "always")
FINISH_ON_CHOICES = ("train", "train+val")

#: `--precision`'s help; the architectures from `devices.BFLOAT16_MODELS`, their one source.
PRECISION_HELP = (
    "mixed: float16 compute with float32 weights, head and loss scaling; bfloat16: bfloat16 "
    "compute, no loss scaling; auto: mixed on a GPU, bfloat16 on a CPU with avx512_bf16 or "
    f"amx_bf16 for the architectures measured to gain ({', '.join(sorted(BFLOAT16_MODELS))}), "
    "else float32 (default: auto)"
)


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
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help=PRECISION_HELP)
    p.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="mirrored: one replica per GPU, batch size per replica and memory "
                        "budget per device; auto: mirrored with 2+ GPUs (default: auto)")
    p.add_argument("--objective", default="val_mean_iou",
                   help="validation metric to maximise (default: val_mean_iou)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, tuner, augmentation")
    _add_plan_options(p)
    p.add_argument("--val-groups", metavar="REGEX",
                   help="validate on whole groups of images: the regex's first group (or match) "
                        "on each file stem names its group, e.g. '^([^_]+)_' for video sequences")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    p.add_argument("--continue-on-new-data", action="store_true", help="resume although the "
                   "data changed since the run started (later trials use the new data)")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("--verbose", action="store_true",
                      help="Keras' own per-epoch output and TensorFlow's log, instead of "
                           "autoseg's progress line")
    talk.add_argument("--quiet", action="store_true",
                      help="print only errors and the final leaderboard")
    _add_cluster_options(p)
    p.set_defaults(run=run)


def _add_plan_options(p) -> None:
    """What the planned search does with its time (`autoseg.plan`)."""
    plan = p.add_argument_group("the plan (the planned hyperband tuner, with a time budget)")
    plan.add_argument("--recipe-only", action="store_true",
                      help="train the plan's recipe alone for the whole budget (a baseline)")
    plan.add_argument("--explore", choices=EXPLORE_CHOICES, default="auto",
                      help="hyperband with a time budget: auto explores around the recipe "
                           "only when the budget would train it alone on at least 20000 "
                           "crops (plan.EXPLORE_AFTER_IMAGES), else the recipe takes the "
                           "budget; always: wherever exploring fits (default: auto)")
    plan.add_argument("--finish-on", choices=FINISH_ON_CHOICES, default="train",
                      help="what the best trains on at the end; train+val: its val score "
                           "not held out")


def _add_cluster_options(p) -> None:
    """KerasTuner's chief/worker mode (docs/cluster.md)."""
    cluster = p.add_argument_group(
        "distributed search (KerasTuner's chief/worker mode; RUNDIR on a shared filesystem; "
        "see docs/cluster.md)"
    )
    cluster.add_argument("--role", choices=("chief", "worker"),
                         help="chief: serve the oracle and write the leaderboard; worker: run trials")
    cluster.add_argument("--oracle", metavar="HOST:PORT",
                         help="where the chief listens (its address, or 0.0.0.0) and workers reach it")
    cluster.add_argument("--worker-id", metavar="ID",
                         help="this worker's name (default: worker-<hostname>-<pid>)")
    cluster.add_argument("--oracle-timeout", metavar="DURATION",
                         help="how long a worker waits for a silent chief and the chief for a "
                              "silent worker, whose trial then fails (default: 2m)")


def run(args) -> int:
    from autoseg.leaderboard import backbone_of, format_table, held_out_note
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
        precision=args.precision,
        strategy=args.strategy,
        objective=args.objective,
        seed=args.seed,
        val_groups=args.val_groups,
        recipe_only=args.recipe_only,
        finish_on=args.finish_on,
        explore=args.explore,
        overwrite=args.overwrite,
        continue_on_new_data=args.continue_on_new_data,
        verbose=args.verbose,
        log=(lambda line: None) if args.quiet else print,
        role=args.role,
        oracle=args.oracle,
        worker_id=args.worker_id,
        oracle_timeout=args.oracle_timeout,
    )
    if result.worker_id:
        mine = [r["trial_id"] for r in result.rows if r.get("worker") == result.worker_id]
        print(f"Worker {result.worker_id} done: ran trials {', '.join(mine) or 'none'}. "
              f"The chief writes the leaderboard: {result.rundir / 'leaderboard.csv'}")
        return 0
    print(format_table(result.rows, top=10))
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items()))
    best = result.best
    print(
        f"Best: trial {best['trial_id']} ({best.get('model_name', '?')}"
        + (f", backbone {backbone_of(best)}" if backbone_of(best) not in (None, "", "none") else "")
        + ") "
        f"{args.objective}={best.get(args.objective)}{held_out_note(best)}; trials: {counts}. "
        f"Leaderboard: {result.rundir / 'leaderboard.csv'}"
    )
    return 0
