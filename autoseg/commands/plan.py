"""`autoseg plan DATASET`: the plan a search would follow, without training."""

from __future__ import annotations

from autoseg.commands.search import EXPLORE_CHOICES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="print the plan a search would follow (recipe, dropped configurations)",
        description=(
            "Measure the space's models and this machine, then print the plan `autoseg "
            "search` would follow with the same options: the recipe it trains first, the "
            "configurations it drops and why, and how it shares the time budget. Trains nothing."
        ),
    )
    p.add_argument("dataset", metavar="DATASET",
                   help="a prepared dataset or a raw folder that `autoseg prepare` understands")
    p.add_argument("--space", metavar="FILE",
                   help="search space YAML or a bundled name: default, quick, ci (default: default)")
    p.add_argument("--time-budget", metavar="DURATION", help="e.g. 30m, 2h, 90s")
    p.add_argument("--memory-budget", metavar="SIZE", help="training memory per trial, e.g. 8GB")
    p.add_argument("--max-epochs", type=int, metavar="N", help="epochs per trial at most")
    p.add_argument("--precision", default="auto", help="as for `autoseg search`")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--val-groups", metavar="REGEX", help="as for `autoseg search`")
    p.add_argument("--explore", choices=EXPLORE_CHOICES, default="auto",
                   help="as for `autoseg search` (default: auto)")
    p.add_argument("--json", metavar="FILE", help="also write the whole plan to FILE")
    p.set_defaults(run=run)


def run(args) -> int:
    from autoseg.search import SearchOptions, plan_only

    options = SearchOptions(
        dataset=args.dataset, space=args.space, time_budget=args.time_budget,
        memory_budget=args.memory_budget, max_epochs=args.max_epochs,
        precision=args.precision, seed=args.seed, val_groups=args.val_groups,
        explore=args.explore,
    )
    plan = plan_only(options)
    if args.json:
        import json

        from autoseg import atomic

        atomic.write_text(args.json, json.dumps(plan.to_dict(), indent=1))
    return 0
