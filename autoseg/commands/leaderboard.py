"""`autoseg leaderboard [RUNDIR] [--top N] [--plot FILE.png]`: a search's trials, ranked."""

from __future__ import annotations

import argparse

from autoseg import leaderboard

_WIDTH = 120
_FAILURES_SHOWN = 5


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "leaderboard",
        help="show a search's trials ranked by the objective",
        description=(
            "Print the trials of a search, best first, from RUNDIR/leaderboard.csv "
            "(it is rewritten after every trial, so this works while a search runs)."
        ),
    )
    parser.add_argument(
        "rundir",
        nargs="?",
        metavar="RUNDIR",
        help="run folder holding leaderboard.csv (or the CSV itself); defaults to the run "
        "under ./runs whose leaderboard was written last",
    )
    parser.add_argument(
        "--top", type=_positive_int, metavar="N", help="show only the N best trials"
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also plot the objective against parameter count, Pareto front marked "
        "(needs matplotlib: pip install 'autoseg[plot]')",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    board = leaderboard.leaderboard(args.rundir)  # the plot comes after the table
    path, rows, objective, direction = board.path, board.rows, board.objective, board.direction
    print(f"{path}  ({objective}, {'higher' if direction == 'max' else 'lower'} is better)")
    print(leaderboard.format_table(rows, top=args.top, width=_WIDTH))
    # The table cuts messages short; a failure's reason is worth a whole line.
    failed = [row for row in rows if row.get("status") == "FAILED" and row.get("message")]
    for row in failed[:_FAILURES_SHOWN]:
        print(leaderboard.cut(f"Trial {row['trial_id']} FAILED: {row['message']}", _WIDTH))
    if len(failed) > _FAILURES_SHOWN:
        more = len(failed) - _FAILURES_SHOWN
        print(f"... {more} more failures: see the message column of {path}")
    print(f"{len(rows)} trials: "
          + ", ".join(f"{n} {s}" for s, n in sorted(board.counts.items())))
    best = board.best
    if best is None:
        print("No trial has COMPLETED yet: there is no best trial.")
    else:
        backbone = leaderboard.backbone_of(best)
        about = [best.get("model_name"), f"backbone {backbone}" if backbone else ""]
        if best.get("params"):
            about.append(f"{leaderboard.format_params(best['params'])} params")
        detail = ", ".join(a for a in about if a)
        print(
            f"Best: trial {best['trial_id']} with {objective} = {best[objective]}"
            + (f" ({detail})" if detail else "") + leaderboard.held_out_note(best)
        )
    for entry in board.ensembles:
        print(leaderboard.ensemble_line(entry))
    if args.plot:
        out = leaderboard.plot_leaderboard(rows, args.plot, objective, direction)
        front = leaderboard.pareto_front(rows, objective, direction)
        print(f"Wrote {out} ({objective} against parameters; {len(front)} on the Pareto front).")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number. Received: {text!r}")
    return value
