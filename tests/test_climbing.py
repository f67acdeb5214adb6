"""`autoseg.climbing`: the recipe that still climbs at the end of its share takes the budget."""

import math
import random

import pytest

from autoseg import climbing
from autoseg import plan as search_plan
from test_plan import CPU, CWFID_SPACE, cost_model, cwfid_plan, make_space, models_of, summary

pytestmark = pytest.mark.usefixtures("explore_at_any_budget")

OBJ = "val_mean_iou"


@pytest.fixture
def forking(explore_at_any_budget):
    """CWFID at 60 minutes on the test CPU: the plan forks the recipe."""
    p = cwfid_plan(make_space(CWFID_SPACE), budget=3600, runs_recipe=True)
    assert not p.recipe_only and p.exploration == "forks"
    return p


def _curve(start, rate, epochs, noise=0.0, seed=0):
    rng = random.Random(seed)
    return [start + rate * e + rng.gauss(0, noise) for e in range(epochs)]


def test_the_slope_of_a_line_is_exact_and_its_error_zero():
    rate, error = climbing.slope([0.3, 0.32, 0.34, 0.36])
    assert rate == pytest.approx(0.02) and error == pytest.approx(0.0, abs=1e-12)
    assert climbing.slope([0.5, 0.5]) is None  # two points: no error to speak of


def test_the_slopes_error_grows_with_the_scatter():
    calm = climbing.slope(_curve(0.3, 0.005, 10, noise=0.002))
    swinging = climbing.slope(_curve(0.3, 0.005, 10, noise=0.02))
    assert calm[1] < swinging[1]


def test_the_window_is_the_last_half_and_at_least_four_epochs():
    assert climbing.window(list(range(20))) == list(range(10, 20))
    assert climbing.window(list(range(5))) == [1, 2, 3, 4]
    assert climbing.window([0.1, 0.2, 0.3]) is None  # fewer than MIN_EPOCHS
    # A missing or NaN score among the last ones: not judged; before them, no matter.
    assert climbing.window([None, 0.1, 0.2, 0.3, 0.4]) == [0.1, 0.2, 0.3, 0.4]
    assert climbing.window([0.1, 0.2, math.nan, 0.3, 0.4]) is None
    assert climbing.window([0.1, 0.2, 0.3, None]) is None


def test_exploring_costs_more_epochs_the_cheaper_an_epoch_is(forking):
    """Two forks' epochs whatever the epoch time; four trials' fixed costs, the more epochs'
    worth the cheaper an epoch."""
    fast, slow = (climbing.exploring_cost_epochs(forking, s) for s in (10.0, 60.0))
    forks = 2 * search_plan.fork_epochs(forking)
    assert forks < slow < fast
    assert fast - forks == pytest.approx(6 * (slow - forks))


def test_the_lower_bound_takes_students_t_for_few_epochs():
    scores = [0.30, 0.33, 0.33, 0.36]  # slope 0.018, error 0.0067 (2 degrees of freedom)
    rate, error = climbing.slope(scores)
    assert climbing.lower_bound(scores) == pytest.approx(rate - 1.886 * error)
    many = _curve(0.3, 0.002, 30, noise=0.01)
    rate, error = climbing.slope(many)
    assert climbing.lower_bound(many) == pytest.approx(rate - climbing.T90_MANY * error)


def test_a_recipe_still_climbing_takes_the_budget_with_its_reason(forking):
    scores = _curve(0.30, 0.004, 20, noise=0.005)
    reason = climbing.still_climbs(forking, scores, 30.0, OBJ)
    assert reason is not None
    assert "val_mean_iou still climbs at the end of its share" in reason
    assert "over its last 10 epochs" in reason
    assert reason.endswith("the recipe trains to the end of the budget")
    # The objective the search ranks by is named.
    assert "val_iou_crop" in climbing.still_climbs(forking, scores, 30.0, "val_iou_crop")


@pytest.mark.parametrize("curve", [
    _curve(0.60, 0.0, 16, noise=0.01),             # flat, swinging
    _curve(0.40, 0.02, 8) + [0.56] * 8,             # rose, then flat
    _curve(0.60, -0.003, 16, noise=0.005),         # falling
    _curve(0.30, 0.0004, 16),                       # rising, too slowly to pay for the forks
], ids=["flat", "plateau", "falling", "slow"])
def test_a_recipe_that_has_flattened_is_forked(forking, curve):
    assert 0.0004 * climbing.exploring_cost_epochs(forking, 30.0) < climbing.MIN_GAIN
    assert climbing.still_climbs(forking, curve, 30.0, OBJ) is None


def test_a_rise_lost_in_the_swing_is_not_taken_for_a_climb(forking):
    """The same mean rise, read from calm and from swinging epochs: the lower bound of the
    slope decides, so only the calm one counts as climbing."""
    rate = 0.0015
    calm = _curve(0.30, rate, 16, noise=0.001)
    swinging = _curve(0.30, rate, 16, noise=0.03, seed=3)
    cost = climbing.exploring_cost_epochs(forking, 30.0)
    assert rate * cost > climbing.MIN_GAIN  # the rise alone would pay for the forks
    assert climbing.still_climbs(forking, calm, 30.0, OBJ) is not None
    assert climbing.still_climbs(forking, swinging, 30.0, OBJ) is None


def test_too_few_epochs_or_a_missing_score_are_not_judged(forking):
    assert climbing.still_climbs(forking, [0.1, 0.2, 0.3], 30.0, OBJ) is None
    assert climbing.still_climbs(forking, _curve(0.3, 0.01, 15) + [None], 30.0, OBJ) is None


def test_only_a_plan_that_forks_its_recipe_asks(forking):
    rising = _curve(0.30, 0.01, 20)
    alone = cwfid_plan(make_space(CWFID_SPACE), budget=900, runs_recipe=True)
    assert alone.recipe_only and climbing.still_climbs(alone, rising, 30.0, OBJ) is None
    scratch = search_plan.make_plan(make_space(CWFID_SPACE), models_of(make_space(CWFID_SPACE)),
                                    summary(), CPU, cost_model(), 6 * 3600, None,
                                    runs_recipe=True)
    assert scratch.exploration != "forks"
    assert climbing.still_climbs(scratch, rising, 30.0, OBJ) is None


def test_the_recipe_a_search_fits_is_judged_by_the_searchs_objective(tiny_dataset, forking,
                                                                     monkeypatch):
    """Through `AutosegHyperModel.fit`, the family's HyperModel that trains the recipe is
    given the judgement with the search's objective; a fork, a recipe-only plan or a search
    without a deadline are not."""
    import time

    import keras_tuner as kt

    from autoseg.hypermodel import AutosegHyperModel, FamilyHyperModel, TrainingData

    asked = []
    monkeypatch.setattr(FamilyHyperModel, "fit", lambda self, hp, model, *a, **k: asked.append(
        self._climbs(hp)))
    data = TrainingData.from_path(tiny_dataset)
    data.deadline = time.time() + 3600
    hypermodel = AutosegHyperModel(space="quick", data=data)
    hypermodel.plan, hypermodel.objective = forking, "val_dice"

    def fit(bracket):
        hp = kt.HyperParameters()
        hp.values = {"tuner/bracket": bracket, "model_name": "unet"}
        hypermodel.fit(hp, None)
        return asked.pop()

    climbs = fit(search_plan.RECIPE_BRACKET)
    assert "the recipe's val_dice still climbs" in climbs(_curve(0.3, 0.01, 20), 30.0)
    assert climbs(_curve(0.6, 0.0, 20), 30.0) is None
    assert fit(-3) is None  # a fork continues the recipe: never asked
    hypermodel.plan = cwfid_plan(make_space(CWFID_SPACE), budget=900, runs_recipe=True)
    assert fit(search_plan.RECIPE_BRACKET) is None  # the recipe alone
    hypermodel.plan, data.deadline = forking, None
    assert fit(search_plan.RECIPE_BRACKET) is None  # no budget
