"""Hyperband under a time budget: the plan from measured costs, and the winner trained on."""

from __future__ import annotations

import csv
import math
import json
import time

import keras_tuner as kt
import pytest

from autoseg.hyperband import (
    FORK_BRACKET, PROBES, RECIPE_BRACKET, REFINE_BRACKET, TRAIN_AND_VAL, TRAIN_ON,
    BudgetHyperbandOracle, trial_role,
)


class Run:
    """Drives an oracle as one tuner would, on a fake clock: each trial of n epochs costs
    `overhead + n * per_epoch` seconds, and its score is `quality(x) + epochs / 1000`."""

    def __init__(self, oracle, tmp_path, overhead=25.0, per_epoch=10.0, first_epoch_extra=5.0,
                 refine=None):
        self.refine = refine  # (seconds per epoch, score) of continuations beyond the plan
        self.best_back = 0  # a trial's best epoch is this many before its last
        self.oracle = oracle
        self.now = 1000.0
        self.overhead, self.per_epoch, self.first_extra = overhead, per_epoch, first_epoch_extra
        self.records: dict[str, dict] = {}
        self.ends: dict[str, float] = {}  # each trial's end on the fake clock
        oracle.clock = lambda: self.now
        oracle._set_project_dir(str(tmp_path), "p")
        if hasattr(oracle, "set_budget"):
            oracle.set_budget(None, lambda trial_id: self.records.get(trial_id, {}))

    def cost(self, values) -> tuple[float, float]:
        """(seconds per epoch, score) of a trial."""
        if self.refine and values["tuner/bracket"] == REFINE_BRACKET:
            return self.refine
        return self.per_epoch, 1 - abs(values["x"] - 0.3) + values["tuner/epochs"] / 1000

    def metrics(self, values) -> dict[str, float]:
        """A trial's metrics besides its score (per-class IoUs), at its best epoch."""
        return {}

    def step(self):
        """Runs one trial; returns it (status STOPPED when the oracle gives none)."""
        trial = self.oracle.create_trial("tuner0")
        if trial.status != "RUNNING":
            return trial
        values = trial.hyperparameters.values
        epochs = values["tuner/epochs"] - values["tuner/initial_epoch"]
        per_epoch, score = self.cost(values)
        seconds = [per_epoch + self.first_extra] + [per_epoch] * (epochs - 1)
        self.now += self.overhead + sum(seconds)
        self.ends[trial.trial_id] = self.now
        self.records[trial.trial_id] = {"epoch_seconds": seconds, "epochs": epochs}
        # Its best epoch, `best_back` epochs before its last (KerasTuner counts the step from
        # the start of the fit): the one its checkpoint holds.
        best = max(0, epochs - 1 - self.best_back)
        self.oracle.update_trial(trial.trial_id, {"score": score, **self.metrics(values)},
                                 step=best)
        trial.status = "COMPLETED"
        self.oracle.end_trial(trial)
        return trial


def make_oracle(max_epochs=40, seed=1, cls=BudgetHyperbandOracle):
    hp = kt.HyperParameters()
    hp.Float("x", 0.0, 1.0)
    return cls(objective=kt.Objective("score", "max"), max_epochs=max_epochs, factor=3,
               seed=seed, hyperparameters=hp)


def test_without_a_deadline_it_is_kerastuners_hyperband(tmp_path):
    ours = Run(make_oracle(), tmp_path / "a")
    theirs = Run(make_oracle(cls=kt.oracles.HyperbandOracle), tmp_path / "b")
    for _ in range(40):
        a, b = ours.step(), theirs.step()
        assert a.hyperparameters.values == b.hyperparameters.values
    assert ours.oracle.plan is None


def test_bracket_costs_follow_kerastuners_rounds():
    oracle = make_oracle(max_epochs=40)
    # Bracket 3 at 40 epochs: 34 trials x 2 epochs, 12 continued to 5, 4 to 14, 2 to 40.
    assert oracle.bracket_cost(3, 40, overhead=1.0, per_epoch=0.0) == 34 + 12 + 4 + 2
    assert oracle.bracket_cost(3, 40, overhead=0.0, per_epoch=1.0) == 34 * 2 + 12 * 3 + 4 * 9 + 2 * 26
    assert oracle.bracket_cost(0, 40, overhead=0.0, per_epoch=1.0) == 5 * 40
    assert oracle.max_epochs == 40  # costing another max_epochs leaves the oracle's alone


def test_the_plan_is_the_most_exploratory_bracket_that_fits_half_the_time_left(tmp_path):
    run = Run(make_oracle(max_epochs=40), tmp_path)
    run.oracle.set_budget(run.now + 3600, run.oracle.read_record)
    # KerasTuner's first trials: 2 epochs each, 25 + 15 + 10 seconds; no plan before PROBES.
    probes = [run.step() for _ in range(PROBES)]
    assert all(p.hyperparameters.values["tuner/epochs"] == 2 for p in probes)
    assert run.oracle.plan is None
    after = run.step()
    plan = run.oracle.plan
    assert plan["overhead_seconds"] == pytest.approx(30.0)  # 50 s wall - 2 x 10 s steady
    assert plan["seconds_per_epoch"] == pytest.approx(10.0)
    share = 0.5 * (3600 - PROBES * 50)
    # At 40 epochs no bracket fits half the time left; at 14 the most exploratory does.
    assert all(run.oracle.bracket_cost(b, 40, 30.0, 10.0) > share for b in range(4))
    assert (plan["max_epochs"], plan["bracket"]) == (14, 2)
    assert plan["estimate_seconds"] <= share
    # Bracket 2 at 14 epochs opens with 12 trials of 2 epochs: the probes are among them.
    bracket = run.oracle._brackets[0]
    assert [info["id"] for info in bracket["rounds"][0]] == [t.trial_id for t in [*probes, after]]
    assert after.hyperparameters.values["tuner/epochs"] == 2


def test_after_the_bracket_the_best_trial_trains_on_until_the_budget_is_spent(tmp_path):
    run = Run(make_oracle(max_epochs=40), tmp_path)
    deadline = run.now + 3600
    run.oracle.set_budget(deadline, run.oracle.read_record)
    trials = []
    while True:
        trial = run.step()
        if trial.status != "RUNNING" and trial.status != "COMPLETED":
            break
        trials.append(trial)
        assert len(trials) < 100
    planned = [t for t in trials if t.hyperparameters.values["tuner/bracket"] != REFINE_BRACKET]
    refined = [t for t in trials if t.hyperparameters.values["tuner/bracket"] == REFINE_BRACKET]
    assert len(planned) == 12 + 4 + 2  # the probes count in round 0
    assert {t.hyperparameters.values["tuner/bracket"] for t in planned[PROBES:]} == {2}
    assert refined, "the time left after the bracket went unused"
    first = refined[0].hyperparameters.values
    completed = [t for t in planned if t.status == "COMPLETED"]
    best = max(completed, key=lambda t: t.score)
    assert first["tuner/trial_id"] == best.trial_id
    assert first["tuner/initial_epoch"] == 14
    # As many epochs as the time left allows at 10 s each after the overhead, and no more.
    assert first["tuner/epochs"] - 14 > 100
    assert run.now <= deadline
    assert deadline - run.now < run.overhead + 2 * run.per_epoch + run.first_extra


def test_a_continuation_that_scored_worse_is_not_started_again(tmp_path):
    # Continuations run twice as fast as estimated (time is left after the first) and
    # score 0: the second must not restart from the first one's starting trial.
    run = Run(make_oracle(max_epochs=40), tmp_path, refine=(5.0, 0.0))
    run.oracle.set_budget(run.now + 3600, run.oracle.read_record)
    refined = []
    for _ in range(60):
        trial = run.step()
        if trial.status not in ("RUNNING", "COMPLETED"):
            break
        if trial.hyperparameters.values["tuner/bracket"] == REFINE_BRACKET:
            refined.append(trial.hyperparameters.values["tuner/trial_id"])
    assert len(refined) >= 2
    assert len(set(refined)) == len(refined), refined


def test_the_plan_and_wall_times_survive_a_reload(tmp_path):
    run = Run(make_oracle(max_epochs=40), tmp_path)
    run.oracle.set_budget(run.now + 3600, run.oracle.read_record)
    for _ in range(PROBES + 1):
        run.step()
    state = json.loads(json.dumps(run.oracle.get_state()))
    again = make_oracle(max_epochs=40)
    again.set_state(state)
    assert again.plan == run.oracle.plan
    assert again.wall_seconds == run.oracle.wall_seconds
    assert again.max_epochs == 14 and again.configured_max_epochs == 40


@pytest.mark.slow
def test_a_short_budgeted_search_gives_the_recipe_the_whole_budget(tiny_dataset, tmp_path):
    """A real search of 150 s: exploring (the recipe and two variants, each a third of the
    recipe's epochs and a trial's start-up) does not fit its 40 %, so the plan gives the
    recipe all of it, and the one trial trains until the deadline."""
    from autoseg.search import search

    rundir = tmp_path / "run"
    start = time.time()
    search(str(tiny_dataset), space="ci", out=str(rundir), tuner="hyperband", max_epochs=3,
           time_budget="150s", log=lambda line: None)
    elapsed = time.time() - start
    plan = json.loads((rundir / "plan.json").read_text())
    assert plan["shares"] == {"recipe": 1.0, "explore": 0.0, "finish": 0.0}
    assert "the recipe gets the whole budget" in plan["recipe_only_reason"]
    trials = []
    for path in (rundir / "trials").glob("trial_*/trial.json"):
        trial = json.loads(path.read_text())
        record = json.loads((path.parent / "autoseg.json").read_text())
        trials.append((trial["hyperparameters"]["values"], record))
    assert len(trials) == 1
    values, record = trials[0]
    assert values["tuner/bracket"] == RECIPE_BRACKET
    assert {k: values[k] for k in plan["recipe"]} == plan["recipe"]
    assert len(record["epoch_seconds"]) == record["epochs"] > 3  # past max_epochs
    with open(rundir / "leaderboard.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert elapsed < 150 + 90  # pre-flight, and the trial running at the deadline


# -- the planned search: the recipe first, then its variants, then the best trained on ------

from autoseg import plan as search_plan  # noqa: E402
from autoseg import rebalance  # noqa: E402
from test_plan import (  # noqa: E402
    CPU, CWFID_SPACE, FIXED, cost_model, make_space, models_of, summary,
)

pytestmark = pytest.mark.usefixtures("explore_at_any_budget")


class PlannedRun(Run):
    """A planned oracle on the fake clock: a trial costs `overhead` plus `slowdown` x the
    plan's own estimate per epoch; its score peaks at lr 1e-3 and grows with epochs. Six
    hours by default: a budget in which the plan explores (see test_plan)."""

    def __init__(self, tmp_path, budget=6 * 3600.0, recipe_only=False, slowdown=1.0, overhead=30.0,
                 explore_slowdown=1.0):
        self.space = make_space(CWFID_SPACE)
        self.plan = search_plan.make_plan(
            self.space, models_of(self.space), summary(), CPU, cost_model(), budget, None,
            recipe_only=recipe_only)
        super().__init__(planned_oracle(), tmp_path, overhead=overhead, first_epoch_extra=0.0)
        self.slowdown = slowdown
        self.explore_slowdown = explore_slowdown  # trials after the recipe
        self.deadline = self.now + budget
        self.oracle.set_budget(self.deadline, lambda trial_id: self.records.get(trial_id, {}))
        self.oracle.set_search_plan(self.plan, self.space, seed=0)

    def cost(self, values) -> tuple[float, float]:
        per_epoch = self.plan.epoch_seconds(values, corrected=False) * self.slowdown
        if values["tuner/bracket"] != RECIPE_BRACKET:
            per_epoch *= self.explore_slowdown
        return per_epoch, 1 - abs(math.log10(values["learning_rate"]) + 3) / 3 + values["tuner/epochs"] / 1000

    def step(self):
        trial = super().step()
        values = trial.hyperparameters.values if trial.status == "COMPLETED" else {}
        if values.get("tuner/bracket") == RECIPE_BRACKET:  # as the HyperModel records it
            stretch, extra = self.plan.schedule_extension() or (1.0, 0)
            self.records[trial.trial_id]["schedule_epochs"] = round(
                values["tuner/epochs"] * stretch) + extra
        return trial

    def run(self, limit=200):
        trials = []
        for _ in range(limit):
            trial = self.step()
            if trial.status != "COMPLETED":
                break
            trials.append(trial)
        return trials


def planned_oracle():
    return BudgetHyperbandOracle(objective=kt.Objective("score", "max"), max_epochs=40, factor=3,
                                 seed=1)


def _config(values):
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}


def test_a_planned_search_runs_the_recipe_then_its_variants_then_the_best_further(tmp_path):
    run = PlannedRun(tmp_path)
    trials = run.run()
    recipe = trials[0].hyperparameters.values
    assert _config(recipe) == run.plan.recipe
    assert recipe["tuner/bracket"] == RECIPE_BRACKET
    assert recipe["tuner/epochs"] == run.plan.recipe_epochs
    explore = [t for t in trials[1:] if t.hyperparameters.values["tuner/bracket"] >= 0]
    refine = [t for t in trials if t.hyperparameters.values["tuner/bracket"] == REFINE_BRACKET]
    assert explore and refine
    # The bracket opens with the recipe as its control; its fresh trials are variants of
    # the recipe that the plan admits.
    assert _config(explore[0].hyperparameters.values) == run.plan.recipe
    fresh = [t.hyperparameters.values for t in explore[1:]
             if t.hyperparameters.values["tuner/round"] == 0]
    assert fresh
    for values in fresh:
        assert _config(values) != run.plan.recipe
        assert run.plan.admits(values) is None
        changed = {k for k in set(values) | set(run.plan.recipe) if not k.startswith("tuner/")
                   and values.get(k) != run.plan.recipe.get(k)}
        assert changed
    # Exploration ends before the finishing share; the continuations run to the deadline.
    finish = run.plan.budget_seconds * run.plan.shares["finish"]
    assert max(run.ends[t.trial_id] for t in explore) <= run.deadline - finish + 1e-6
    assert all(run.ends[t.trial_id] <= run.deadline + 1e-6 for t in trials)
    assert trials[-1] in refine
    assert run.deadline - run.now < run.oracle._trial_seconds(
        {**trials[-1].hyperparameters.values, "tuner/initial_epoch": 0, "tuner/epochs": 1})


def test_when_the_recipe_measures_no_room_for_a_bracket_the_recipe_goes_on(tmp_path):
    """The plan expected exploration to fit, but the recipe ran 2x slower than estimated:
    the cheapest bracket no longer fits before the finish, so no control or variant starts
    and the recipe is continued (as on CWFID, RESULTS.md: a 5-epoch copy of the recipe
    was all that started)."""
    run = PlannedRun(tmp_path, budget=5 * 3600, slowdown=2.0)
    assert not run.plan.recipe_only and run.plan.exploration == "scratch"
    trials = run.run()
    assert trials[0].hyperparameters.values["tuner/bracket"] == RECIPE_BRACKET
    assert run.oracle.plan["explored"] and "no bracket whose first round" in run.oracle.plan["skipped"]
    assert run.oracle.plan["estimate_seconds"] > run.oracle.plan["seconds_left"] - (
        run.plan.budget_seconds * run.plan.shares["finish"])
    assert [t.hyperparameters.values["tuner/bracket"] for t in trials[1:]] == [REFINE_BRACKET]
    assert trials[1].hyperparameters.values["tuner/trial_id"] == trials[0].trial_id


class ClimbingRun(PlannedRun):
    """The recipe still climbs at the end of its share, so it trains to the deadline (as
    `TimeBudget` does with `autoseg.climbing`): its record holds the epochs that fit."""

    def step(self):
        trial = self.oracle.create_trial("tuner0")
        values = trial.hyperparameters.values
        if trial.status != "RUNNING" or values.get("tuner/bracket") != RECIPE_BRACKET:
            return trial
        per_epoch, score = self.cost(values)
        epochs = int((self.deadline - self.now - self.overhead) // per_epoch)
        self.now += self.overhead + epochs * per_epoch
        self.records[trial.trial_id] = {"epoch_seconds": [per_epoch] * epochs, "epochs": epochs,
                                        "plan_change": "the recipe's score still climbs"}
        self.oracle.update_trial(trial.trial_id, {"score": score}, step=epochs - 1)
        trial.status = "COMPLETED"
        self.oracle.end_trial(trial)
        return trial


def test_after_a_recipe_that_took_the_budget_nothing_else_starts(tmp_path):
    run = ClimbingRun(tmp_path, budget=3600.0)
    assert run.plan.exploration == "forks"
    trials = run.run()
    assert [bracket(t) for t in trials] == [RECIPE_BRACKET]
    assert run.records[trials[0].trial_id]["epochs"] > run.plan.recipe_epochs
    assert run.oracle.create_trial("tuner0").status == "STOPPED"
    assert not run.oracle._in_bracket(FORK_BRACKET)


class FallingRun(PlannedRun):
    """Continuations score below the trial they start from, and run 2.5x faster than
    estimated (time is left after the first)."""

    def cost(self, values):
        per_epoch, score = super().cost(values)
        if values["tuner/bracket"] == REFINE_BRACKET:
            return per_epoch * 0.4, score - 0.5
        return per_epoch, score


def test_a_trial_below_the_best_is_continued_only_to_double_its_epochs(tmp_path):
    """The best continued once and fell below its start; its continuation cannot double its
    epochs in the time left, so the search stops rather than continue it (on CWFID, a
    1-epoch continuation of a 5-epoch copy of the recipe ran in the last 2 minutes)."""
    run = FallingRun(tmp_path, budget=4 * 3600, slowdown=2.0)
    trials = run.run()
    refine = [t for t in trials if t.hyperparameters.values["tuner/bracket"] == REFINE_BRACKET]
    assert len(refine) == 1
    assert run.oracle.create_trial("tuner0").status == "STOPPED"


def test_exploration_that_runs_slower_than_planned_stops_before_the_finish(tmp_path):
    """Variants take 3x their estimate: the measured times correct the estimates, and the
    trial that would run into the finishing share is not started."""
    run = PlannedRun(tmp_path, budget=10 * 3600.0, explore_slowdown=3.0)
    assert run.plan.exploration == "scratch"
    trials = run.run()
    explore = [t for t in trials if t.hyperparameters.values["tuner/bracket"] >= 0]
    finish = run.plan.budget_seconds * run.plan.shares["finish"]
    assert len(explore) >= 2
    assert max(run.ends[t.trial_id] for t in explore) <= run.deadline - finish + 1e-6
    assert run.oracle.plan["explored"]
    assert trials[-1].hyperparameters.values["tuner/bracket"] == REFINE_BRACKET


def test_recipe_only_stops_after_the_recipe(tmp_path):
    run = PlannedRun(tmp_path, recipe_only=True)
    trials = run.run()
    assert len(trials) == 1
    assert trials[0].hyperparameters.values["tuner/bracket"] == RECIPE_BRACKET
    assert run.oracle.create_trial("tuner0").status == "STOPPED"


def test_a_plan_that_gives_the_recipe_the_whole_budget_runs_it_alone(tmp_path):
    run = PlannedRun(tmp_path, budget=900.0)
    assert run.plan.recipe_only and run.plan.recipe_only_reason
    trials = run.run()
    assert len(trials) == 1
    assert trials[0].hyperparameters.values["tuner/epochs"] == run.plan.recipe_epochs
    assert run.deadline - run.now < run.plan.epoch_seconds(run.plan.recipe) + FIXED + 1e-6
    assert run.oracle.create_trial("tuner0").status == "STOPPED"


def test_measured_epochs_correct_the_plan_and_survive_a_reload(tmp_path):
    run = PlannedRun(tmp_path, slowdown=2.0)
    before = run.plan.epoch_seconds(run.plan.recipe)
    run.step()  # the recipe, at twice its estimated epoch time
    assert run.plan.epoch_seconds(run.plan.recipe) == pytest.approx(2 * before, rel=1e-3)
    again = planned_oracle()
    again.set_state(run.oracle.get_state())
    fresh = PlannedRun(tmp_path / "b", slowdown=2.0)
    again.set_search_plan(fresh.plan, fresh.space)
    assert fresh.plan.epoch_seconds(fresh.plan.recipe) == pytest.approx(2 * before, rel=1e-3)


# -- forks of the recipe: where variants cannot train from scratch long enough ------------------

def bracket(trial) -> int:
    return trial.hyperparameters.values["tuner/bracket"]


def test_a_continued_trial_starts_at_the_epoch_its_past_trials_checkpoint_holds(tmp_path):
    # A trial's checkpoint is its best epoch, here 3 before its last. Forks, the finish and
    # Hyperband's own next rounds go on from it (its schedule, Adam's moments and weight
    # average belong to it), not from the epoch where the past trial stopped.
    kinds = set()
    planned = PlannedRun(tmp_path / "planned", budget=3600.0)  # forks, then the finish
    probed = Run(make_oracle(max_epochs=40), tmp_path / "probed")  # Hyperband's rounds
    probed.oracle.set_budget(probed.now + 3600, probed.oracle.read_record)
    for run in (planned, probed):
        run.best_back = 3
        trials = []
        while (trial := run.step()).status == "COMPLETED":
            trials.append(trial)
        by_id = {t.trial_id: t.hyperparameters.values for t in trials}
        for trial in trials:
            values = trial.hyperparameters.values
            if "tuner/trial_id" not in values:
                continue
            past = by_id[values["tuner/trial_id"]]
            trained = past["tuner/epochs"] - past["tuner/initial_epoch"]
            best = max(1, trained - 3)  # epochs into the past trial
            assert values["tuner/initial_epoch"] == past["tuner/initial_epoch"] + best
            assert values["tuner/epochs"] > values["tuner/initial_epoch"]
            kinds.add("round" if values["tuner/bracket"] >= 0 else values["tuner/bracket"])
    assert kinds == {FORK_BRACKET, REFINE_BRACKET, "round"}


def test_an_hour_forks_the_recipe_then_trains_the_best_fork_further(tmp_path):
    run = PlannedRun(tmp_path, budget=3600.0)
    assert run.plan.exploration == "forks"
    trials = run.run()
    recipe = trials[0]
    assert bracket(recipe) == RECIPE_BRACKET
    forks = [t for t in trials if bracket(t) == FORK_BRACKET]
    refine = [t for t in trials if bracket(t) == REFINE_BRACKET]
    assert [bracket(t) for t in trials] == (
        [RECIPE_BRACKET] + [FORK_BRACKET] * len(forks) + [REFINE_BRACKET] * len(refine))
    assert refine
    reached = recipe.hyperparameters.values["tuner/epochs"]
    epochs = search_plan.fork_epochs(run.plan)
    # The control and MIN_VARIANTS forks, though the explore share holds more: the rest of
    # the time trains the best on.
    assert len(forks) == 1 + search_plan.MIN_VARIANTS
    lineage = run.plan.lineage_epochs()
    assert lineage > reached + epochs
    for fork in forks:  # each trains the recipe's weights on for the same epochs
        values = fork.hyperparameters.values
        assert values["tuner/trial_id"] == recipe.trial_id
        assert values["tuner/initial_epoch"] == reached
        assert values["tuner/epochs"] == reached + epochs
        # ... along the recipe's learning-rate schedule, which ends after the finish.
        assert values[search_plan.SCHEDULE_EPOCHS] == lineage
    # The control first, then variants of the recipe's training only, none twice.
    assert _config(forks[0].hyperparameters.values) == run.plan.recipe
    variants = [_config(t.hyperparameters.values) for t in forks[1:]]
    assert len({json.dumps(v, sort_keys=True) for v in variants}) == len(variants)
    for values in variants:
        changed = {k for k in set(values) | set(run.plan.recipe)
                   if values.get(k) != run.plan.recipe.get(k)}
        assert changed and changed <= set(search_plan.FORK_GROUPS), changed
        assert run.plan.admits(values) is None
    # Forks end before the finishing share; the best (the control: lr 1e-3 scores highest
    # here) is what the finish continues.
    finish = run.plan.budget_seconds * run.plan.shares["finish"]
    assert max(run.ends[t.trial_id] for t in forks) <= run.deadline - finish + 1e-6
    assert refine[0].hyperparameters.values["tuner/trial_id"] == forks[0].trial_id
    assert all(run.ends[t.trial_id] <= run.deadline + 1e-6 for t in trials)
    # The finish decays over its own epochs: it ends the schedule.
    assert all(search_plan.SCHEDULE_EPOCHS not in t.hyperparameters.values for t in refine)


class BetterForkRun(PlannedRun):
    """The last fork scores 0.2 above everything else."""

    def cost(self, values):
        per_epoch, score = super().cost(values)
        forks = [t for t in self.oracle.trials.values() if bracket(t) == FORK_BRACKET]
        if values["tuner/bracket"] == FORK_BRACKET and len(forks) == 1 + search_plan.MIN_VARIANTS:
            score += 0.2
        return per_epoch, score


def test_the_finish_continues_the_fork_that_scored_best(tmp_path):
    run = BetterForkRun(tmp_path, budget=2 * 3600.0)
    assert run.plan.exploration == "forks"
    trials = run.run()
    forks = [t for t in trials if bracket(t) == FORK_BRACKET]
    best = max(forks, key=lambda t: t.score)
    assert best is forks[-1] and _config(best.hyperparameters.values) != run.plan.recipe
    refine = [t for t in trials if bracket(t) == REFINE_BRACKET]
    assert refine[0].hyperparameters.values["tuner/trial_id"] == best.trial_id
    assert _config(refine[0].hyperparameters.values) == _config(best.hyperparameters.values)


class FocalForkRun(PlannedRun):
    """A fork that changes the loss to focal scores 0.2 above everything else."""

    def cost(self, values):
        per_epoch, score = super().cost(values)
        if values["tuner/bracket"] == FORK_BRACKET and values["loss"] == "focal":
            score += 0.2
        return per_epoch, score


class MissedClassRun(PlannedRun):
    """Every trial learns soil and weed; the recipe's `crop` IoU is `crop_iou` on its training
    crops and its validation photos."""

    crop_iou = 0.01

    def metrics(self, values):
        crop = self.crop_iou if values["tuner/bracket"] == RECIPE_BRACKET else 0.3
        return {"iou_soil": 0.98, "val_iou_soil": 0.97, "iou_weed": 0.7, "val_iou_weed": 0.6,
                "iou_crop": crop, "val_iou_crop": crop}


@pytest.mark.parametrize("crop_iou", [0.01, 0.2])
def test_a_class_the_recipe_misses_makes_its_first_fork_weigh_classes(tmp_path, crop_iou):
    """The recipe misses crop (IoU 0.01 on training and validation): the first fork after the
    control trains it with the first class-balancing loss the space offers, and says so in
    its start line; the next fork is drawn at random. At crop IoU 0.2 nothing is diagnosed."""
    run = MissedClassRun(tmp_path, budget=3600.0)
    run.crop_iou = crop_iou
    trials = run.run()
    assert run.plan.exploration == "forks"
    forks = [t.hyperparameters.values for t in trials if bracket(t) == FORK_BRACKET]
    assert len(forks) == 1 + search_plan.MIN_VARIANTS
    reasons = [v.get(search_plan.FORK_REASON) for v in forks]
    if crop_iou > search_plan.MISSED_IOU:
        assert reasons == [None] * len(forks)
        return
    assert run.plan.recipe["loss"] == "ce_dice"
    assert _config(forks[1]) == {**run.plan.recipe, "loss": "weighted_ce_dice"}
    assert search_plan.FRESH_OPTIMIZER in forks[1]  # another loss: fresh Adam moments
    assert reasons[0] is None and reasons[2] is None and "(crop:" in reasons[1]
    assert trial_role(forks[1]).startswith("a fork of trial 0000 at epoch ")
    assert "weighted_ce_dice for the classes the recipe misses (crop: IoU under 0.05" in trial_role(forks[1])


class RebalancedRecipeRun(MissedClassRun):
    """The recipe's record says it turned `weighted_ce_dice` mid-training (`autoseg.rebalance`),
    as the HyperModel records it."""

    def step(self):
        trial = super().step()
        if trial.status == "COMPLETED" and bracket(trial) == RECIPE_BRACKET:
            self.records[trial.trial_id][rebalance.RECORD_KEY] = {
                "epoch": 5, "classes": ["crop"], "loss": "weighted_ce_dice"}
        return trial


@pytest.mark.parametrize("crop_iou", [0.01, 0.2])
def test_forks_and_the_finish_of_a_rebalanced_recipe_train_with_the_loss_it_ended_with(
        tmp_path, crop_iou):
    """A recipe that turned weighted mid-training is continued with that loss: the control
    fork and the finish train `weighted_ce_dice` and keep its Adam moments (the same loss).
    Still missing crop at the end (0.01), its diagnosed fork takes the next balancing loss,
    `weighted_ce`, with fresh moments; learned (0.2), no fork has a reason."""
    run = RebalancedRecipeRun(tmp_path, budget=3600.0)
    run.crop_iou = crop_iou
    trials = run.run()
    assert run.plan.recipe["loss"] == "ce_dice" and run.plan.recipe["rebalance"] == "auto"
    forks = [t.hyperparameters.values for t in trials if bracket(t) == FORK_BRACKET]
    assert len(forks) == 1 + search_plan.MIN_VARIANTS
    control = forks[0]
    assert _config(control) == {**run.plan.recipe, "loss": "weighted_ce_dice"}
    assert search_plan.restores_optimizer(control)
    diagnosed = [v for v in forks if search_plan.FORK_REASON in v]
    if crop_iou > search_plan.MISSED_IOU:
        assert diagnosed == []
    else:
        assert [v["loss"] for v in diagnosed] == ["weighted_ce"]
        assert not search_plan.restores_optimizer(diagnosed[0])
    for fork in forks:
        assert (search_plan.FRESH_OPTIMIZER in fork) == (fork["loss"] != "weighted_ce_dice")
    refine = [t.hyperparameters.values for t in trials if bracket(t) == REFINE_BRACKET]
    past = run.oracle.trials[refine[0]["tuner/trial_id"]].hyperparameters.values
    assert refine[0]["loss"] == ("weighted_ce_dice" if past["loss"] == "ce_dice" else past["loss"])


def test_only_a_fork_that_changes_the_loss_starts_with_fresh_adam_moments(tmp_path):
    """Continued trials restore their past trial's optimizer (`plan.restores_optimizer`),
    except a fork whose loss is not the recipe's; the finish of that fork has the fork's
    loss, so it restores the fork's moments."""
    run = FocalForkRun(tmp_path, budget=3600.0)
    trials = run.run()
    recipe_loss = run.plan.recipe["loss"]
    forks = [t for t in trials if bracket(t) == FORK_BRACKET]
    assert recipe_loss != "focal" and any(t.hyperparameters.values["loss"] == "focal" for t in forks)
    for fork in forks:
        values = fork.hyperparameters.values
        changed = values["loss"] != recipe_loss
        assert (search_plan.FRESH_OPTIMIZER in values) == changed
        assert search_plan.restores_optimizer(values) == (not changed)
    refine = [t for t in trials if bracket(t) == REFINE_BRACKET]
    past = run.oracle.trials[refine[0].hyperparameters.values["tuner/trial_id"]]
    assert past.hyperparameters.values["loss"] == "focal"
    assert all(search_plan.restores_optimizer(t.hyperparameters.values) for t in refine)
    assert not search_plan.restores_optimizer(trials[0].hyperparameters.values)  # the recipe


class HighRecipeRun(PlannedRun):
    """The recipe reads 0.3 above every fork (a lucky epoch mid-schedule)."""

    def cost(self, values):
        per_epoch, score = super().cost(values)
        return per_epoch, score + (0.3 if values["tuner/bracket"] == RECIPE_BRACKET else 0.0)


def test_once_a_fork_completed_the_finish_trains_a_fork_not_the_recipe(tmp_path):
    """The control is the recipe trained on along the same schedule: the recipe's own score
    mid-schedule does not make it the one to train on, and the best fork is trained on to
    the end though the recipe read higher."""
    run = HighRecipeRun(tmp_path, budget=3600.0)
    assert run.plan.exploration == "forks"
    trials = run.run()
    recipe = trials[0]
    forks = [t for t in trials if bracket(t) == FORK_BRACKET]
    refine = [t for t in trials if bracket(t) == REFINE_BRACKET]
    assert all(recipe.score > f.score for f in forks)
    best = max(forks, key=lambda t: t.score)
    assert refine and refine[0].hyperparameters.values["tuner/trial_id"] == best.trial_id
    assert run.deadline - run.now < run.oracle._trial_seconds(
        {**refine[-1].hyperparameters.values, "tuner/initial_epoch": 0, "tuner/epochs": 1})


def test_when_no_bracket_fits_at_the_measured_costs_the_recipe_is_forked(tmp_path):
    """The plan explored from scratch, but the recipe ran 1.5x slower than estimated: no
    bracket fits before the finish any more, forks still do."""
    run = PlannedRun(tmp_path, budget=6 * 3600, slowdown=1.5)
    assert run.plan.exploration == "scratch" and not run.plan.recipe_only
    trials = run.run()
    assert "no bracket whose first round" in run.oracle.plan["skipped"]
    brackets = [bracket(t) for t in trials]
    assert brackets[0] == RECIPE_BRACKET and not any(b >= 0 for b in brackets)
    assert brackets.count(FORK_BRACKET) >= 1 + search_plan.MIN_VARIANTS
    assert brackets[-1] == REFINE_BRACKET
    # The recipe ended its own schedule: its forks decay over their own epochs, and the
    # recipe stays a candidate for the finish.
    assert not any(search_plan.SCHEDULE_EPOCHS in t.hyperparameters.values for t in trials)
    assert run.oracle._superseded() == set()


def test_a_failed_fork_does_not_take_a_forks_place(tmp_path):
    """A fork that diverges (a redrawn learning rate) or runs out of memory (a redrawn batch)
    fails: another is drawn in its place while time is left."""
    run = PlannedRun(tmp_path, budget=3600.0)
    run.step(), run.step()  # the recipe and the control
    failed = run.oracle.create_trial("tuner0")
    assert bracket(failed) == FORK_BRACKET
    failed.status = "FAILED"
    run.oracle.end_trial(failed)
    trials = run.run()
    forks = [t for t in run.oracle.trials.values() if bracket(t) == FORK_BRACKET]
    assert [t.status for t in forks] == ["COMPLETED", "FAILED", "COMPLETED", "COMPLETED"]
    assert len({json.dumps(_config(t.hyperparameters.values), sort_keys=True)
                for t in forks}) == 4  # the failed one is not drawn again
    assert bracket(trials[-1]) == REFINE_BRACKET


def reloaded(run, tmp_path):
    """`run`'s planned oracle as a new process rebuilds it from disk."""
    oracle = planned_oracle()
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.reload()
    oracle.clock = run.oracle.clock
    oracle.set_budget(run.deadline, run.oracle.read_record)
    oracle.set_search_plan(run.plan, run.space, seed=0)
    return oracle


def test_forks_resume_where_a_killed_search_stopped(tmp_path):
    run = PlannedRun(tmp_path, budget=3600.0)
    for _ in range(2):  # the recipe and the control
        run.step()
    killed = run.oracle.create_trial("tuner0")  # the first fork, killed while it trains
    assert killed.hyperparameters.values["tuner/bracket"] == FORK_BRACKET
    again = reloaded(run, tmp_path)  # a new process: the oracle and its trials from disk
    retried = again.create_trial("tuner0")  # KerasTuner retries the interrupted trial
    assert retried.trial_id == killed.trial_id
    assert retried.hyperparameters.values == killed.hyperparameters.values
    assert retried.hyperparameters.values[search_plan.SCHEDULE_EPOCHS] == run.plan.lineage_epochs()
    retried.status = "COMPLETED"
    again.update_trial(retried.trial_id, {"score": 0.5}, step=1)
    again.end_trial(retried)
    following = again.create_trial("tuner0")
    values = following.hyperparameters.values
    assert values["tuner/bracket"] == FORK_BRACKET
    done = [_config(t.hyperparameters.values) for t in again.trials.values()
            if bracket(t) == FORK_BRACKET][:-1]
    assert len(done) == 2 and _config(values) not in done
    # The control and MIN_VARIANTS forks: then the finish, though time for more forks is left.
    assert search_plan.MIN_VARIANTS == 2 and again._fits(values)
    following.status = "COMPLETED"
    again.update_trial(following.trial_id, {"score": 0.4}, step=1)
    again.end_trial(following)
    assert again.create_trial("tuner0").hyperparameters.values["tuner/bracket"] == REFINE_BRACKET


def test_a_search_killed_between_two_trials_does_not_run_the_ended_one_again(tmp_path):
    # KerasTuner's end_trial saves oracle.json before it drops the trial from
    # ongoing_trials: a kill right after a trial's end leaves the ended trial "ongoing" on
    # disk, and reload queues every ongoing trial to run again. make_tuner forgets those.
    from autoseg.tuner import _forget_finished_retries
    run = PlannedRun(tmp_path, budget=3600.0)
    ended = [run.step() for _ in range(3)][-1]
    on_disk = json.loads((tmp_path / "p" / "oracle.json").read_text())
    assert ended.trial_id in on_disk["ongoing_trials"].values()  # the window is real
    assert reloaded(run, tmp_path).create_trial("tuner0").trial_id == ended.trial_id  # KerasTuner alone
    oracle = reloaded(run, tmp_path)
    _forget_finished_retries(oracle)
    following = oracle.create_trial("tuner0")
    assert following.trial_id not in run.oracle.trials
    assert following.status == "RUNNING"


def test_a_trial_start_line_says_what_the_trial_is(tmp_path):
    run = PlannedRun(tmp_path, budget=3600.0)
    roles = [trial_role(t.hyperparameters.values) for t in run.run()]
    assert roles[0] == "the recipe"
    assert roles[1] == "a fork of trial 0000 at epoch 18" == roles[2]
    assert roles[-1].startswith("a continuation of trial ")
    assert trial_role({"tuner/bracket": 2, "tuner/trial_id": None}) == ""  # a variant


def test_a_finish_on_train_and_val_trains_the_best_on_the_validation_photos_too(tmp_path):
    plain = PlannedRun(tmp_path / "plain", budget=3600.0).run()
    run = PlannedRun(tmp_path / "widened", budget=3600.0)
    run.plan.finish_on = search_plan.TRAIN_AND_VAL
    widened = run.run()

    def finish(trials):
        return [t.hyperparameters.values for t in trials
                if t.hyperparameters.values["tuner/bracket"] == REFINE_BRACKET]

    assert finish(widened) and all(v[TRAIN_ON] == TRAIN_AND_VAL for v in finish(widened))
    assert not any(TRAIN_ON in t.hyperparameters.values for t in widened
                   if t.hyperparameters.values["tuner/bracket"] != REFINE_BRACKET)
    assert not any(TRAIN_ON in v for v in finish(plain))
    assert trial_role(finish(widened)[0]).endswith(" on the training and validation photos")
    # The same search up to the finish; the finish's epochs are costed over the validation
    # photos too, so fewer fit in the same time.
    assert len(plain) - len(finish(plain)) == len(widened) - len(finish(widened))
    first, wide = finish(plain)[0], finish(widened)[0]
    assert first["tuner/initial_epoch"] == wide["tuner/initial_epoch"]
    factor = run.plan.finish_epoch_factor()
    assert factor > 1
    epochs = first["tuner/epochs"] - first["tuner/initial_epoch"]
    assert wide["tuner/epochs"] - wide["tuner/initial_epoch"] == pytest.approx(epochs / factor, abs=1)
