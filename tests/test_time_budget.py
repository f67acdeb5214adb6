"""TimeBudget and CosineSchedule, the callbacks that fit a trial into its time, on a fake clock."""

import types

import keras
import pytest

from autoseg import hypermodel
from autoseg.hypermodel import CosineSchedule, TimeBudget

pytestmark = pytest.mark.usefixtures("explore_at_any_budget")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(hypermodel.time, "time", fake)
    return fake


def _model():
    optimizer = types.SimpleNamespace(learning_rate=keras.Variable(1.0))
    return types.SimpleNamespace(stop_training=False, optimizer=optimizer)


def run_epochs(budget: TimeBudget, clock: Clock, seconds: list[float], schedule=None,
               scores: list[float] | None = None) -> list[int]:
    """Runs epochs of the given durations (and `val_mean_iou` scores) until the callbacks
    stop training; returns the epochs that ran."""
    model = _model()
    for callback in filter(None, (budget, schedule)):
        callback.set_model(model)
        callback.on_train_begin()
    ran = []
    for epoch, duration in enumerate(seconds):
        for callback in filter(None, (budget, schedule)):
            callback.on_epoch_begin(epoch)
        clock.now += duration
        budget.on_epoch_end(epoch, {"val_mean_iou": scores[epoch]} if scores else None)
        ran.append(epoch)
        if model.stop_training:
            break
    return ran


def test_the_deadline_is_read_from_steady_epochs_not_the_traced_first_one(clock):
    # A first epoch of 220 s (tracing), then 100 s ones; 250 s left after epoch 3.
    deadline = clock.now + 220 + 3 * 100 + 250
    budget = TimeBudget(deadline, epochs=50)
    ran = run_epochs(budget, clock, [220] + [100] * 10)
    # Epochs 4 and 5 fit (250 s left after epoch 3); the traced epoch would have stopped at 3.
    assert ran == [0, 1, 2, 3, 4, 5]
    assert budget.stopped
    assert clock.now <= deadline


def test_a_slower_recent_epoch_is_counted(clock):
    budget = TimeBudget(None, epochs=50)
    budget.epoch_seconds = [220.0, 100.0, 100.0, 130.0, 110.0]
    assert budget.next_epoch_seconds() == 130.0
    budget.epoch_seconds = [220.0, 100.0, 100.0, 100.0, 100.0, 95.0]
    assert budget.next_epoch_seconds() == 100.0  # the last three steady epochs
    budget.epoch_seconds = [220.0]
    assert budget.next_epoch_seconds() == 220.0  # nothing steady yet: the first one


def test_without_time_left_for_another_epoch_training_stops(clock):
    deadline = clock.now + 250
    budget = TimeBudget(deadline, epochs=50)
    ran = run_epochs(budget, clock, [120, 100, 100, 100])
    assert ran == [0, 1]
    assert budget.stopped and clock.now <= deadline


def test_an_allotment_sets_the_target_after_two_epochs_and_the_cosine_ends_there(clock):
    budget = TimeBudget(None, epochs=100, allotment_seconds=1000)
    schedule = CosineSchedule(100, budget=budget)
    rates = []
    model = _model()
    for callback in (budget, schedule):
        callback.set_model(model)
        callback.on_train_begin()
    epoch = 0
    while not model.stop_training:
        budget.on_epoch_begin(epoch)
        schedule.on_epoch_begin(epoch)
        rates.append(float(model.optimizer.learning_rate.numpy()))
        clock.now += 150 if epoch == 0 else 100
        budget.on_epoch_end(epoch)
        epoch += 1
    # 150 s + 8 x 100 s fit in 1000 s: 9 epochs, not the 100 asked for.
    assert epoch == 9 and budget.target == 9
    assert not budget.stopped  # the allotment ended it, not the deadline
    assert rates[0] == pytest.approx(1.0)
    # From epoch 2 on the cosine decays over 9 epochs: the last one near the floor.
    assert rates[-1] < 0.1
    assert all(a >= b for a, b in zip(rates[1:], rates[2:]))


def _reconsidering_budget(clock, reason):
    """A recipe planned for 10 epochs of 100 s (1000 s of a 2600 s budget), Keras allowed 30."""
    asked = []

    def reconsider(seconds):
        asked.append(seconds)
        return reason

    budget = TimeBudget(clock.now + 2600, epochs=10, allotment_seconds=1000,
                        reconsider=reconsider)
    budget.set_params({"epochs": 30})
    return budget, asked


def test_a_recipe_that_finds_exploring_no_longer_fits_trains_to_the_deadline(clock):
    budget, asked = _reconsidering_budget(clock, "exploring would need ~40 min")
    schedule = CosineSchedule(30, budget=budget)
    ran = run_epochs(budget, clock, [150] + [100] * 40, schedule)
    assert asked == [100.0]  # once, at the first steady epoch
    assert budget.plan_change == "exploring would need ~40 min"
    # 2600 s: 150 + 24 x 100 = 2550 s, the next epoch would pass the deadline.
    assert len(ran) == 25 and budget.target == 25
    # One schedule to the end: the last epoch's learning rate is near the floor.
    assert float(schedule.model.optimizer.learning_rate.numpy()) < 0.1


def test_a_recipe_whose_plan_still_holds_keeps_its_share(clock):
    budget, asked = _reconsidering_budget(clock, None)
    ran = run_epochs(budget, clock, [150] + [100] * 40)
    assert asked == [100.0] and budget.plan_change is None
    assert len(ran) == 9 and budget.target == 9  # 150 + 8 x 100 s fit its 1000 s


# -- the recipe of a plan that forks it: its learning rate decays over its lineage ----------

def test_a_stretched_schedule_ends_the_recipes_share_mid_decay(clock):
    """The recipe's share holds 9 epochs (as above); with a stretch of 2 its cosine decays
    over 18, so it stops at the curve's middle, where its forks train on."""
    budget = TimeBudget(None, epochs=100, allotment_seconds=1000)
    schedule = CosineSchedule(100, budget=budget, stretch=2.0)
    run_epochs(budget, clock, [150] + [100] * 40, schedule)
    assert budget.target == 9 and schedule.horizon() == 18
    last = float(schedule.model.optimizer.learning_rate.numpy())  # epoch 8 of 18
    assert 0.5 < last < 0.7


def test_a_recipe_measured_slower_keeps_its_forks_epochs_in_its_schedule(clock):
    """The share holds 9 epochs where 10 were planned: the finish's part of the lineage
    shrinks with the recipe's (stretch), a fork's 3 epochs do not (extra)."""
    budget = TimeBudget(None, epochs=10, allotment_seconds=1000)
    schedule = CosineSchedule(10, budget=budget, stretch=1.5, extra=3)
    assert schedule.horizon() == 18  # as planned: 10 x 1.5 + 3
    run_epochs(budget, clock, [150] + [100] * 40, schedule)
    assert budget.target == 9 and schedule.horizon() == 17  # round(13.5) + 3, not 18 x 0.9


def test_a_fork_trains_on_along_the_recipes_schedule(clock):
    """A fork from epoch 9 to 12 of a lineage of 18 (6 epochs past its own): its rates are
    the recipe's curve at epochs 9-11, not a decay to the floor over its own 3 epochs."""
    budget = TimeBudget(None, epochs=12)
    schedule = CosineSchedule(12, initial_epoch=9, budget=budget, extra=6)
    lineage = CosineSchedule(18)
    model, reference = _model(), _model()
    schedule.set_model(model)
    lineage.set_model(reference)
    for callback in (schedule, lineage):
        callback.on_train_begin()
    for epoch in (9, 10, 11):
        schedule.on_epoch_begin(epoch)
        lineage.on_epoch_begin(epoch)
        assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(
            float(reference.optimizer.learning_rate.numpy()))
    assert schedule.horizon() == 18
    assert float(model.optimizer.learning_rate.numpy()) > 0.3


def test_a_recipe_given_the_whole_budget_ends_its_schedule_with_itself(clock):
    """Once exploring no longer fits (`plan_change`), the stretch is dropped: one schedule to
    the deadline, as without forks."""
    budget, _ = _reconsidering_budget(clock, "exploring would need ~40 min")
    schedule = CosineSchedule(30, budget=budget, stretch=2.0)
    run_epochs(budget, clock, [150] + [100] * 40, schedule)
    assert budget.target == 25 and schedule.horizon() == 25
    assert float(schedule.model.optimizer.learning_rate.numpy()) < 0.1


# -- the recipe that still climbs at the end of its share (`autoseg.climbing`) ---------------

def _climbing_budget(clock, reason):
    """A recipe of a forking plan: 10 epochs of 100 s planned (1000 s of a 2600 s budget),
    Keras allowed 30; `climbs` answers `reason`."""
    asked = []

    def climbs(scores, seconds):
        asked.append((list(scores), seconds))
        return reason

    budget = TimeBudget(clock.now + 2600, epochs=10, allotment_seconds=1000, climbs=climbs,
                        objective="val_mean_iou")
    budget.set_params({"epochs": 30})
    return budget, asked


def test_a_recipe_still_climbing_at_its_target_trains_to_the_deadline(clock):
    budget, asked = _climbing_budget(clock, "still climbs")
    assert budget.may_take_the_budget
    schedule = CosineSchedule(30, budget=budget, stretch=2.0)
    scores = [0.3 + 0.01 * e for e in range(40)]
    ran = run_epochs(budget, clock, [150] + [100] * 40, schedule, scores=scores)
    # Asked once, at its share's last epoch (9 fit its 1000 s), with the scores so far.
    assert asked == [(scores[:9], 100.0)]
    assert budget.plan_change == "still climbs"
    assert len(ran) == 25 and budget.target == 25  # 150 + 24 x 100 s of the 2600 s
    # One schedule to the deadline, not the lineage's stretch: it ends near the floor.
    assert schedule.horizon() == 25
    assert float(schedule.model.optimizer.learning_rate.numpy()) < 0.1


def test_a_recipe_that_flattened_keeps_its_share(clock):
    budget, asked = _climbing_budget(clock, None)
    ran = run_epochs(budget, clock, [150] + [100] * 40, scores=[0.5] * 40)
    assert len(asked) == 1 and budget.plan_change is None
    assert len(ran) == 9 and budget.target == 9


def test_a_recipe_already_given_the_budget_is_not_asked_whether_it_climbs(clock):
    asked = []
    budget = TimeBudget(clock.now + 2600, epochs=10, allotment_seconds=1000,
                        reconsider=lambda seconds: "exploring would need ~40 min",
                        climbs=lambda scores, seconds: asked.append(scores),
                        objective="val_mean_iou")
    budget.set_params({"epochs": 30})
    ran = run_epochs(budget, clock, [150] + [100] * 40, scores=[0.5] * 40)
    assert budget.plan_change == "exploring would need ~40 min" and len(ran) == 25
    assert asked == []


def test_without_a_deadline_the_recipe_is_never_asked(clock):
    asked = []
    budget = TimeBudget(None, epochs=10, allotment_seconds=1000,
                        climbs=lambda scores, seconds: asked.append(scores) or "climbs")
    budget.set_params({"epochs": 30})
    assert not budget.may_take_the_budget
    ran = run_epochs(budget, clock, [150] + [100] * 40, scores=[0.5] * 40)
    assert asked == [] and len(ran) == 9


def test_the_learning_rate_never_rises_when_the_recipe_takes_the_budget(clock):
    """The recipe stops mid-curve at its share (9 epochs, lineage 18); taking the budget
    decays on from where it is, down to the floor at the new target (25)."""
    budget, _ = _climbing_budget(clock, "still climbs")
    schedule = CosineSchedule(30, budget=budget, stretch=2.0)
    rates = []
    model = _model()
    for callback in (budget, schedule):
        callback.set_model(model)
        callback.on_train_begin()
    for epoch, seconds in enumerate([150] + [100] * 40):
        budget.on_epoch_begin(epoch)
        schedule.on_epoch_begin(epoch)
        rates.append(float(model.optimizer.learning_rate.numpy()))
        clock.now += seconds
        budget.on_epoch_end(epoch, {"val_mean_iou": 0.3 + 0.01 * epoch})
        if model.stop_training:
            break
    assert len(rates) == 25
    assert all(b <= a for a, b in zip(rates, rates[1:]))
    # At the switch (epoch 9) the rate is the lineage's at epoch 9 of 18, not epoch 9 of 25.
    lineage = CosineSchedule(18)
    lineage.set_model(_model())
    lineage.on_train_begin()
    lineage.on_epoch_begin(9)
    assert rates[9] == pytest.approx(float(lineage.model.optimizer.learning_rate.numpy()))
    assert rates[-1] < 0.1


def test_a_recipe_whose_objective_is_not_logged_keeps_its_share(clock):
    """`autoseg.climbing` with a plan that forks, and logs without the objective."""
    import functools

    from autoseg import climbing
    from test_plan import CWFID_SPACE, cwfid_plan, make_space

    forking = cwfid_plan(make_space(CWFID_SPACE), budget=3600, runs_recipe=True)
    judge = functools.partial(climbing.still_climbs, forking, objective="val_dice")
    assert judge([0.3 + 0.01 * e for e in range(9)], 100.0)  # it would climb by its scores
    budget = TimeBudget(clock.now + 2600, epochs=10, allotment_seconds=1000, climbs=judge,
                        objective="val_dice")
    budget.set_params({"epochs": 30})
    ran = run_epochs(budget, clock, [150] + [100] * 40, scores=[0.3 + 0.01 * e for e in range(40)])
    assert budget.scores == [None] * 9 and budget.plan_change is None and len(ran) == 9
