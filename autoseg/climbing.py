"""Whether the recipe still climbs at the end of its share: then forking it costs more than
it can find, and the recipe trains on to the end of the budget instead.

A plan that forks the recipe (`plan.FORK_FIDELITY`) gives it `RECIPE_SHARE` of the budget,
then trains the control and `MIN_VARIANTS` forks of it for a few epochs each, and the best
on to the end. Two forks' epochs and four trials' fixed costs are epochs the returned
model's lineage does not train. While the recipe's validation score still rises at the end
of its share, those epochs are worth more to it than anything a fork compared after a few
epochs can be told to have found: over every 30-minute single-core run on CWFID and CamVid,
forks moved B − A by +0.008, +0.006, −0.025 and −0.012, +0.016, −0.022, −0.031, −0.030, and
on CamVid at 30 minutes the recipe was still rising at its last epoch (seed 1: 0.356 at
epoch 41, 0.392 at 62; benchmarks/RESULTS.md).

The rule (`still_climbs`): the least-squares slope of the objective over the last
`WINDOW_SHARE` of the recipe's epochs (at least `MIN_EPOCHS`), less one standard error (the
epoch-to-epoch swing of a few validation photos), times the epochs exploring would cost its
lineage (`exploring_cost_epochs`), at least `MIN_GAIN`: the least a fork must gain over the
control to be told from it (4-5-epoch forks on CamVid ranked within 0.003-0.008 of each
other, by noise). Then the recipe takes the whole budget (`hypermodel.TimeBudget`), as when
exploring no longer fits its time (`plan.recipe_takes_all`), and the search log says why.
"""

from __future__ import annotations

import math
import statistics

from autoseg import plan as search_plan

#: The share of the recipe's epochs (its last) the slope is fitted over.
WINDOW_SHARE = 0.5
#: The fewest epochs the slope is fitted over; fewer scores are not judged.
MIN_EPOCHS = 4
#: The least gain, in the objective, that a fork must find to be told from the control.
MIN_GAIN = 0.01


def slope(scores: list[float]) -> tuple[float, float] | None:
    """(slope per epoch, its standard error) of the least-squares line through `scores`
    (one per epoch, in order), or None for fewer than three."""
    n = len(scores)
    if n < 3:
        return None
    xs = range(n)
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(scores)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    rate = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, scores)) / sxx
    residual = sum((y - mean_y - rate * (x - mean_x)) ** 2 for x, y in zip(xs, scores))
    return rate, math.sqrt(residual / (n - 2) / sxx)


def window(scores: list[float | None]) -> list[float] | None:
    """The last `WINDOW_SHARE` of the epochs' scores (at least `MIN_EPOCHS`), or None when
    there are fewer or one of them is missing or not finite."""
    size = max(MIN_EPOCHS, math.ceil(len(scores) * WINDOW_SHARE))
    last = scores[-size:]
    if len(last) < size or any(s is None or not math.isfinite(s) for s in last):
        return None
    return [float(s) for s in last]


def exploring_cost_epochs(plan: "search_plan.Plan", epoch_seconds: float) -> float:
    """The recipe's epochs that forking it costs the lineage the search returns: the
    `MIN_VARIANTS` forks besides the control, and the fixed costs of the control, the forks
    and the finish, at the recipe's measured epoch time."""
    trials = search_plan.MIN_VARIANTS + 2
    return (search_plan.MIN_VARIANTS * search_plan.fork_epochs(plan)
            + trials * plan.cost_model.fixed_seconds / max(epoch_seconds, 1e-9))


def still_climbs(plan: "search_plan.Plan", scores: list[float | None], epoch_seconds: float,
                 objective: str = "val_mean_iou") -> str | None:
    """At the end of the recipe's share, with its objective's `scores` (one per epoch) and
    its steady `epoch_seconds`: the reason it should train to the end of the budget rather
    than be forked, or None (also for a plan that does not fork it)."""
    if plan.budget_seconds is None or plan.recipe_only or plan.exploration != "forks":
        return None
    last = window(scores)
    fit = slope(last) if last else None
    if fit is None:
        return None
    rate, error = fit
    cost = exploring_cost_epochs(plan, epoch_seconds)
    gain = (rate - error) * cost
    if gain < MIN_GAIN:
        return None
    return (f"the recipe's {objective} still climbs at the end of its share "
            f"({rate:+.4f} ± {error:.4f} an epoch over its last {len(last)} epochs): the "
            f"~{cost:.0f} epochs forking it would cost are worth at least {gain:+.3f} to it, "
            f"more than the {MIN_GAIN:g} a fork must gain to be told from the control; the "
            "recipe trains to the end of the budget")
