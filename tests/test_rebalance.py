"""Class weights turned on mid-training (`autoseg.rebalance`): when a trial decides, what it
reads, what its loss then computes, and what a trial that continues it trains with."""

import keras
import numpy as np
import pytest
import yaml

from autoseg import losses, plan, rebalance
from autoseg.plan import MISSED_IOU

WEIGHTS = [0.5, 1.0, 4.0]


def test_a_trial_decides_after_a_fifth_of_its_epochs_and_only_with_room_to_act():
    assert plan.rebalance_epoch(63) == 13
    assert plan.rebalance_epoch(25) == 5
    assert plan.rebalance_epoch(20) == plan.MIN_REBALANCE_EPOCH == 4
    assert plan.rebalance_epoch(8) == 4  # reads 4, trains 4 weighted
    assert plan.rebalance_epoch(7) is None  # would read 4 and train 3 weighted
    assert plan.rebalance_epoch(None) is None and plan.rebalance_epoch(0) is None


def test_only_an_unweighted_loss_with_a_weighted_form_in_a_trial_from_scratch_decides():
    assert plan.rebalances("ce_dice", "auto", 0)
    assert not plan.rebalances("ce_dice", "off", 0)
    assert not plan.rebalances("ce_dice", "auto", 12)  # continues a trial: inherits
    for loss in ("weighted_ce_dice", "weighted_ce", "focal", "ce", "dice"):
        assert not plan.rebalances(loss, "auto", 0)


def test_a_trial_that_continues_a_rebalanced_one_trains_the_loss_it_ended_with():
    values = {"loss": "ce_dice", "rebalance": "auto", "learning_rate": 1e-3}
    switched = {"epoch": 5, "classes": ["pole"], "loss": "weighted_ce_dice"}
    assert rebalance.continued_values(values, {"rebalanced": switched}) == {
        **values, "loss": "weighted_ce_dice"}
    assert rebalance.continued_values(values, {"epochs": 20}) == values
    assert rebalance.continued_values(values, {}) is not values  # a copy


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=(2, 6, 6))
    labels[0, 0, :3] = 255  # ignored pixels stay ignored
    logits = rng.normal(size=(2, 6, 6, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, probabilities.astype("float32")


def test_switchable_weights_leave_ce_dice_unchanged_until_set_then_compute_weighted_ce_dice():
    labels, probabilities = _batch()
    loss = losses.get_loss("ce_dice", 3)
    plain = float(loss(labels, probabilities))
    variable = losses.switchable_weights(loss)
    assert losses.switchable_weights(loss) is variable  # one variable per loss
    assert float(loss(labels, probabilities)) == pytest.approx(plain, rel=1e-6)
    variable.assign(WEIGHTS)
    weighted = losses.get_loss("weighted_ce_dice", 3, class_weights=WEIGHTS)
    assert float(loss(labels, probabilities)) == pytest.approx(
        float(weighted(labels, probabilities)), rel=1e-6)
    assert float(loss(labels, probabilities)) != pytest.approx(plain, rel=1e-3)


@pytest.mark.parametrize("name", ["weighted_ce_dice", "ce", "focal"])
def test_switchable_weights_need_an_unweighted_ce_dice(name):
    with pytest.raises(ValueError, match="unweighted CrossEntropyDiceLoss"):
        losses.switchable_weights(losses.get_loss(name, 3, class_weights=WEIGHTS))


def test_a_compiled_step_reads_the_weights_set_after_it_was_traced():
    labels, probabilities = _batch(1)
    logits = np.log(probabilities)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, keras.layers.Softmax()(inputs))  # logits in, the same out
    loss = losses.get_loss("ce_dice", 3)
    model.compile(loss=loss, jit_compile=False)
    variable = losses.switchable_weights(loss)
    before = model.evaluate(logits, labels, verbose=0)  # traces the test step
    variable.assign(WEIGHTS)
    after = model.evaluate(logits, labels, verbose=0)
    weighted = losses.get_loss("weighted_ce_dice", 3, class_weights=WEIGHTS)
    assert before == pytest.approx(float(losses.get_loss("ce_dice", 3)(labels, probabilities)), rel=1e-5)
    assert after == pytest.approx(float(weighted(labels, probabilities)), rel=1e-5)


def _logs(pole_train, pole_val):
    return {"loss": 1.0, "iou_road": 0.9, "val_iou_road": 0.8,
            "iou_pole": pole_train, "val_iou_pole": pole_val}


def _callback(target=20):
    variable = keras.Variable([1.0, 1.0], trainable=False)
    lines, record = [], {}
    callback = rebalance.Rebalance(variable, [0.7, 3.0], "weighted_ce_dice", lambda: target,
                                   record, log=lines.append)
    return callback, variable, record, lines


def test_classes_missed_on_both_sides_at_the_check_epoch_turn_the_weights_on():
    callback, variable, record, lines = _callback()
    for epoch in range(3):  # before the check epoch (4): nothing is read
        callback.on_epoch_end(epoch, _logs(0.0, 0.0))
    assert variable.numpy().tolist() == [1.0, 1.0] and record == {}
    callback.on_epoch_end(3, _logs(0.01, 0.02))
    assert variable.numpy().tolist() == pytest.approx([0.7, 3.0])
    assert record == {"rebalanced": {"epoch": 4, "classes": ["pole"], "loss": "weighted_ce_dice"}}
    assert lines == [f"rebalanced after epoch 4: pole under {MISSED_IOU:g} IoU on the training "
                     "crops and validation photos, so weighted_ce_dice from here"]


@pytest.mark.parametrize("pole", [(0.2, 0.01), (0.01, 0.2), (float("nan"), 0.0)])
def test_a_class_learned_on_one_side_or_unseen_is_not_missed_and_the_trial_decides_once(pole):
    callback, variable, record, lines = _callback()
    callback.on_epoch_end(3, _logs(*pole))
    callback.on_epoch_end(4, _logs(0.0, 0.0))  # decided at epoch 4: later epochs are not read
    assert variable.numpy().tolist() == [1.0, 1.0] and record == {} and lines == []


def test_a_trial_too_short_to_act_never_reads_its_scores():
    callback, variable, record, _ = _callback(target=7)
    for epoch in range(7):
        callback.on_epoch_end(epoch, _logs(0.0, 0.0))
    assert record == {}


def test_a_short_share_that_takes_the_budget_decides_at_the_epoch_it_does():
    """A recipe whose share is 6 epochs has no room to act (`rebalance_epoch(6)` is None).
    When it takes the budget at the end of its 6th epoch (`autoseg.climbing`; TimeBudget
    comes before Rebalance in the trial's callbacks), its target becomes 30, whose check epoch
    is 6: it reads that epoch's scores, once, and trains the 24 left weighted."""
    target = [6]
    variable = keras.Variable([1.0, 1.0], trainable=False)
    record = {}
    callback = rebalance.Rebalance(variable, [0.7, 3.0], "weighted_ce_dice", lambda: target[0],
                                   record, log=lambda _: None)
    for epoch in range(5):
        callback.on_epoch_end(epoch, _logs(0.0, 0.0))
    assert record == {} and not callback.decided
    target[0] = 30
    callback.on_epoch_end(5, _logs(0.0, 0.0))
    assert record == {"rebalanced": {"epoch": 6, "classes": ["pole"], "loss": "weighted_ce_dice"}}
    assert variable.numpy().tolist() == pytest.approx([0.7, 3.0])
    callback.on_epoch_end(6, _logs(0.0, 0.0))
    assert record["rebalanced"]["epoch"] == 6


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_a_trial_that_learns_little_rebalances_through_the_hypermodel(tiny_dataset, tmp_path,
                                                                      monkeypatch, mode):
    """At a learning rate too small to learn anything, every class reads ~0.1-0.3 IoU (a
    random model's): with the bar raised to 0.5 and `rebalance: auto`, the fit reads the
    metrics Keras logs after epoch 4 (of 8), records the switch, and the loss then holds the
    training split's square-root median-frequency weights; with `off` nothing changes."""
    import keras_tuner as kt

    from autoseg.hypermodel import AutosegHyperModel, TrainingData

    monkeypatch.setattr(plan, "MISSED_IOU", 0.5)

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "models": {"unet": {"depth": 3, "filters": 4, "backbone": "none"}},
        "input_size": 32, "policy": "resize", "batch_size": 2, "loss": "ce_dice",
        "aug_strength": 0.0, "learning_rate": 1e-7, "rebalance": mode, "max_epochs": 8}))
    data = TrainingData.from_path(tiny_dataset)
    hypermodel = AutosegHyperModel(space=str(space), data=data)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    history = hypermodel.fit(hp, model, epochs=8, verbose=0)
    assert len(history.history["loss"]) == 8
    switched = hypermodel.last_fit.get("rebalanced")
    if mode == "off":
        assert switched is None and model.loss.ce.weight_variable is None
        return
    assert switched["epoch"] == 4 and switched["loss"] == "weighted_ce_dice"
    assert switched["classes"] == data.dataset.classes
    assert model.loss.ce.weight_variable.numpy().tolist() == pytest.approx(
        data.class_weights("sqrt_median_frequency"))


def test_the_searchs_log_says_a_trial_rebalanced_when_it_ends(tmp_path):
    import json
    import types

    from autoseg.run_dir import record_path
    from autoseg.tuner import SearchRunMixin

    switched = {"epoch": 13, "classes": ["pole", "sign_symbol"], "loss": "weighted_ce_dice"}
    path = record_path(tmp_path, "0000")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"epochs": 63, "rebalanced": switched}))
    lines = []
    trial = types.SimpleNamespace(status="COMPLETED", score=0.41, message=None)
    tuner = types.SimpleNamespace(rundir=tmp_path, objective_name="val_mean_iou", _trial_start={},
                                  oracle=types.SimpleNamespace(get_trial=lambda _: trial),
                                  log=lines.append, _clock=lambda: "12:00")
    SearchRunMixin.log_trial_end(tuner, "0000")
    assert lines == ["[trial 0000] ended: val_mean_iou=0.4100 (12:00)",
                     "[trial 0000] rebalanced after epoch 13: pole, sign_symbol under 0.05 IoU "
                     "on the training crops and validation photos, so weighted_ce_dice from here"]
