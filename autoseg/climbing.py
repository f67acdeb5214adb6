"""Whether the recipe still climbs at the end of its share: then forking it costs more than
it can find, and the recipe trains on to the end of the budget instead.

A plan that forks the recipe (`Plan.forks_recipe`) gives it `RECIPE_SHARE` of the budget,
then trains the control and `MIN_VARIANTS` forks of it for a few epochs each, and the best
on to the end. The forks besides the control, and four trials' fixed costs, are epochs the
returned model's lineage does not train. While the recipe's validation score still rises
at the end of its share, those epochs are worth more to it than a difference a fork
compared after a few epochs can show (forks of 4-5 epochs rank by noise: benchmarks/
RESULTS.md, issue #11, where the default search did not beat the recipe alone at 30
minutes on one core, on CWFID or on CamVid).

The rule (`still_climbs`): fit a line through the objective over the last `WINDOW_SHARE` of
the recipe's epochs (at least `MIN_EPOCHS`); take its slope's lower one-sided 90 %
confidence bound (Student's t); times the epochs exploring would cost the lineage
(`exploring_cost_epochs`), it must reach `MIN_GAIN`. Then the recipe takes the whole
budget (`hypermodel.TimeBudget`), as when exploring no longer fits its time
(`plan.recipe_takes_all`), and the search's log says why.

What it does not model: the curve is concave, so the window's slope overstates the end's,
and consecutive epochs' scores are correlated (the weights, and their average, carry over),
so the bound is narrower than it should be. Both err towards training the recipe on,
which is the side the measurements favour at the budgets where the plan forks.
"""

from __future__ import annotations

import math
import statistics

from autoseg import plan as search_plan

#: The share of the recipe's epochs (its last) the slope is fitted over.
WINDOW_SHARE = 0.5
#: The fewest epochs the slope is fitted over; fewer scores are not judged.
MIN_EPOCHS = 4
#: The gain, in the objective, below which the epochs a fork costs are not worth training
#: the recipe on for.
MIN_GAIN = 0.01
#: Student's t at one-sided 90 % for 1, 2, ... degrees of freedom; `T90_MANY` beyond.
T90 = (3.078, 1.886, 1.638, 1.533, 1.476, 1.440, 1.415, 1.397, 1.383, 1.372)
T90_MANY = 1.36


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


def lower_bound(scores: list[float]) -> float | None:
    """The slope's one-sided 90 % lower confidence bound, or None for fewer than three."""
    fit = slope(scores)
    if fit is None:
        return None
    rate, error = fit
    freedom = len(scores) - 2
    return rate - (T90[freedom - 1] if freedom <= len(T90) else T90_MANY) * error


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
                 objective: str) -> str | None:
    """At the end of the recipe's share, with its `objective`'s `scores` (one per epoch) and
    its steady `epoch_seconds`: the reason it should train to the end of the budget rather
    than be forked, or None (also for a plan that does not fork it)."""
    if not plan.forks_recipe:
        return None
    last = window(scores)
    bound = lower_bound(last) if last else None
    if bound is None:
        return None
    cost = exploring_cost_epochs(plan, epoch_seconds)
    if bound * cost < MIN_GAIN:
        return None
    rate, _ = slope(last)
    return (f"the recipe's {objective} still climbs at the end of its share ({rate:+.4f} an "
            f"epoch over its last {len(last)} epochs, at least {bound:+.4f} at 90 %): the "
            f"~{cost:.0f} epochs forking it would cost are worth ~{bound * cost:+.3f} or more "
            f"to it at that rate, where a fork's gain under {MIN_GAIN:g} cannot be told from "
            "noise; the recipe trains to the end of the budget")
