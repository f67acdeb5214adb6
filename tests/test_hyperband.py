"""Hyperband under a time budget: the plan from measured costs, and the winner trained on."""

from __future__ import annotations

import csv
import json
import time

import keras_tuner as kt
import pytest

from autoseg.hyperband import PROBES, REFINE_BRACKET, BudgetHyperbandOracle


class Run:
    """Drives an oracle as one tuner would, on a fake clock: each trial of n epochs costs
    `overhead + n * per_epoch` seconds, and its score is `quality(x) + epochs / 1000`."""

    def __init__(self, oracle, tmp_path, overhead=25.0, per_epoch=10.0, first_epoch_extra=5.0,
                 refine=None):
        self.refine = refine  # (seconds per epoch, score) of continuations beyond the plan
        self.oracle = oracle
        self.now = 1000.0
        self.overhead, self.per_epoch, self.first_extra = overhead, per_epoch, first_epoch_extra
        self.records: dict[str, dict] = {}
        oracle.clock = lambda: self.now
        oracle._set_project_dir(str(tmp_path), "p")
        if hasattr(oracle, "set_budget"):
            oracle.set_budget(None, lambda trial_id: self.records.get(trial_id, {}))

    def step(self):
        """Runs one trial; returns it (status STOPPED when the oracle gives none)."""
        trial = self.oracle.create_trial("tuner0")
        if trial.status != "RUNNING":
            return trial
        values = trial.hyperparameters.values
        epochs = values["tuner/epochs"] - values["tuner/initial_epoch"]
        per_epoch, score = self.per_epoch, 1 - abs(values["x"] - 0.3) + values["tuner/epochs"] / 1000
        if self.refine and values["tuner/bracket"] == REFINE_BRACKET:
            per_epoch, score = self.refine
        seconds = [per_epoch + self.first_extra] + [per_epoch] * (epochs - 1)
        self.now += self.overhead + sum(seconds)
        self.records[trial.trial_id] = {"epoch_seconds": seconds, "epochs": epochs}
        self.oracle.update_trial(trial.trial_id, {"score": score}, step=values["tuner/epochs"] - 1)
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
def test_a_budgeted_hyperband_search_trains_its_best_trial_on(tiny_dataset, tmp_path):
    """A real search: probes, a planned bracket, then the winner continued past max_epochs."""
    from autoseg.search import search

    rundir = tmp_path / "run"
    start = time.time()
    search(str(tiny_dataset), space="ci", out=str(rundir), tuner="hyperband", max_epochs=3,
           time_budget="150s", log=lambda line: None)
    elapsed = time.time() - start
    plan = json.loads((rundir / "trials" / "oracle.json").read_text())["autoseg_budget"]["plan"]
    assert plan and plan["seconds_per_epoch"] > 0 and plan["max_epochs"] <= 3
    trials = {}
    for path in (rundir / "trials").glob("trial_*/trial.json"):
        trial = json.loads(path.read_text())
        record = json.loads((path.parent / "autoseg.json").read_text())
        trials[trial["trial_id"]] = (trial["hyperparameters"]["values"], record)
    for values, record in trials.values():
        assert len(record["epoch_seconds"]) == record["epochs"] > 0
    refined = [values for values, _ in trials.values() if values["tuner/bracket"] == REFINE_BRACKET]
    assert refined, "no trial continued the best one"
    assert max(v["tuner/epochs"] for v in refined) > 3  # past max_epochs: the budget bounds it
    with open(rundir / "leaderboard.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(trials)
    assert elapsed < 150 + 90  # pre-flight, and the trial running at the deadline
