"""autoseg.plan: the recipe, the admissible space, variants of the recipe, estimates.

No model is built: every `speed.ModelCost` is written by hand with plausible FLOPs and
memory per pixel (a 4-level, 32-filter U-Net at ~200 kFLOPs and ~1.25 kB a pixel), and the
machine runs a plain U-Net at 50 GFLOP/s. Each rule is checked on what the plan says (the
recipe's values, the kept and dropped configurations, the reasons), over a range of
fingerprints (CWFID-like, a huge photo, a 1 % class, CamVid's 11 classes) and budgets
(none, 2 minutes, an hour, ten hours, a memory budget that fits only batch 1).
"""

from __future__ import annotations

import json
import math
import random

import pytest
import yaml

from autoseg import plan, speed
from autoseg.errors import BudgetError
from autoseg.search_space import (
    Range,
    as_values,
    model_option_grid,
    trial_model_config,
    parse_input_size,
    resolve_auto,
    validate_space,
)

pytestmark = pytest.mark.usefixtures("explore_at_any_budget")

GFLOPS = 50.0
#: A trial's fixed cost in these plans, set here rather than read from
#: `speed.DEFAULT_FIXED_SECONDS` (a calibrated figure that moves with the code's speed).
FIXED = 30.0


#: The architectures' efficiencies in these plans, set here rather than read from
#: `speed.EFFICIENCY` (measured figures that move with the machine and the code): SegNet and
#: DeepLabV3+ slower than a U-Net for their FLOPs.
EFFICIENCY = {"unet": 1.0, "unet/resnet50": 0.88, "light_unet": 0.1, "segnet": 0.88,
              "segnet/resnet50": 0.88, "deeplabv3plus/resnet50": 0.38, "pix2pix": 0.98}


def cost_model(gflops: float = GFLOPS) -> speed.CostModel:
    """A fresh cost model at `gflops` with the tests' fixed cost and efficiencies."""
    return speed.CostModel(gflops=gflops, fixed_seconds=FIXED, efficiency=dict(EFFICIENCY))


MiB = 2**20
CPU = plan.Machine(device="cpu", precision="float32", cores=2)
GPU = plan.Machine(device="gpu", precision="mixed_float16", cores=8)

CWFID_SIZE = (966, 1296)  # (H, W) of a CWFID photo
CWFID_FRACTIONS = {"soil": 0.90, "crop": 0.016, "weed": 0.084}


# --- hand-made costs --------------------------------------------------------------------------

_DEPTH_FACTOR = {3: 0.8, 4: 1.0, 5: 1.2}
# Forward FLOPs per input pixel at 64 filters and 4 levels (backbone "none"), or of the
# whole encoder-decoder with a backbone.
_BASE_FLOPS = {
    ("unet", "none"): 800e3,
    ("unet", "resnet50"): 450e3,
    ("segnet", "none"): 1.2e6,
    ("segnet", "resnet50"): 500e3,
    ("deeplabv3plus", "resnet50"): 700e3,
    ("light_unet", "none"): 60e3,
}
_FAMILY = {"light_unet": "unet"}


def flops_per_pixel(model_name: str, options: dict) -> float:
    backbone = options.get("backbone", "resnet50" if model_name == "deeplabv3plus" else "none")
    base = _BASE_FLOPS[(model_name, backbone)]
    if backbone != "none":
        return base
    filters = options.get("filters", 16 if model_name == "light_unet" else 64)
    return base * (filters / 64) ** 2 * _DEPTH_FACTOR[options.get("depth", 4)]


def model_cost(model_name: str, options: dict) -> speed.ModelCost:
    flops = flops_per_pixel(model_name, options)
    # Activations grow with the width (not its square); weights with FLOPs.
    width = options.get("filters", 64) / 64 if options.get("backbone", "none") == "none" else 1.5
    return speed.ModelCost(
        model_name=model_name, options=dict(options),
        key=speed.config_key(model_name, options), family=_FAMILY.get(model_name, model_name),
        train_flops_per_pixel=flops, infer_flops_per_pixel=flops,
        static_bytes=int(40 * MiB * flops / 200e3),
        sample_bytes_per_pixel=2500.0 * width * _DEPTH_FACTOR[options.get("depth", 4)],
        params=int(2e6 * flops / 200e3),
    )


def models_of(space) -> list[speed.ModelCost]:
    """A cost for every model configuration of `space`, as `speed.measure_models` gives."""
    return [model_cost(m, combo) for m, options in space.models.items()
            for combo in model_option_grid(options)]


def make_space(spec: dict, median=CWFID_SIZE, fractions=CWFID_FRACTIONS):
    fingerprint = {"image_size": {"median": list(median)}, "class_pixel_fraction": fractions}
    return resolve_auto(validate_space(spec, "test"), fingerprint)


def summary(train=40, val=8, size=CWFID_SIZE, fractions=CWFID_FRACTIONS) -> plan.DataSummary:
    return plan.DataSummary(train_images=train, val_sizes=[size] * val, median_size=size,
                            class_fraction=dict(fractions))


def tiles(photo, scale, tile):
    """Tiles of `tile` px that cover a photo scaled by `scale` (counted here, not by the
    pipeline): ceil along each side."""
    return math.ceil(round(photo[0] * scale) / tile) * math.ceil(round(photo[1] * scale) / tile)


def expected_epoch(cost: speed.ModelCost, size: int, train: int, val_units: int,
                   gflops: float = GFLOPS) -> float:
    """One epoch by hand: training forward+backward (3x), validation forward (1x)."""
    rate = gflops * 1e9 * EFFICIENCY.get(cost.key, speed.DEFAULT_EFFICIENCY)
    return size * size * cost.train_flops_per_pixel * (3 * train + val_units) / rate


def window(p: plan.Plan) -> float:
    """Seconds a winner gets (exploration and finishing) minus one trial's fixed cost."""
    return p.budget_seconds * (1 - plan.RECIPE_SHARE) - p.cost_model.fixed_seconds


def is_recipe(p: plan.Plan, values: dict) -> bool:
    return all(p.recipe.get(k) == v for k, v in values.items())


def assert_admission_rule(p: plan.Plan) -> None:
    """Kept iff the configuration reaches `min_epochs` in a winner's window (and fits); the
    recipe's own configuration is always kept."""
    assert p.kept or p.dropped
    assert sum(is_recipe(p, e["config"]) for e in p.kept) == 1
    for entry in p.kept:
        seconds = p.epoch_seconds(entry["config"])
        assert is_recipe(p, entry["config"]) or window(p) // seconds >= p.min_epochs, entry
    for entry in p.dropped:
        seconds = p.epoch_seconds(entry["config"])
        if "memory budget" not in entry["reason"]:
            assert window(p) // seconds < p.min_epochs, entry


def key(values: dict) -> str:
    return json.dumps(values, sort_keys=True)


# A CWFID-like space: U-Nets of two widths and depths, SegNet, DeepLabV3+ ResNet-50.
CWFID_SPACE = {
    "models": {"unet": {"depth": [4, 5], "filters": [32, 64]}, "segnet": {},
               "deeplabv3plus": {"backbone": "resnet50"}},
    "input_size": [128, 256],
    "policy": "crop",
    "crop_scale": [0.5],
    "batch_size": [2, 4, 8],
}


@pytest.fixture(autouse=True)
def one_pass_per_epoch(monkeypatch):
    """The hand-computed epochs below are one pass over the training photos; the passes an
    epoch takes have their own tests (which set `MAX_PASSES` back)."""
    monkeypatch.setattr(plan, "MAX_PASSES", 1)


@pytest.fixture
def cwfid_space():
    return make_space(CWFID_SPACE)


def cwfid_plan(space, budget, train=40, memory_limit=None, machine=CPU, runs_recipe=False):
    """The plan with the recipe / explore / finish shares whatever the budget (as for a tuner
    that does not run the recipe first), unless `runs_recipe`: the admission rules. When the
    plan gives the recipe the whole budget has its own tests below."""
    return plan.make_plan(space, models_of(space), summary(train=train), machine,
                          cost_model(), budget, memory_limit,
                          runs_recipe=runs_recipe)


# --- recipe_scale and nearest -----------------------------------------------------------------

@pytest.mark.parametrize("median, scale", [
    ((966, 1296), 0.5),       # CWFID: short side 483 px
    ((360, 480), 1.0),        # CamVid: never enlarged
    ((100, 120), 1.0),
    ((3000, 4000), 0.25),     # short side 750 px
    ((4000, 3000), 0.25),     # orientation does not matter
    ((10**5, 10**5), 1 / 16), # the smallest scale
], ids=["cwfid", "camvid", "small", "huge", "portrait", "enormous"])
def test_recipe_scale(median, scale):
    assert plan.recipe_scale(median) == scale
    if scale > 1 / 16:  # the scaled short side lands near TARGET_SHORT_SIDE
        assert min(median) * scale <= plan.TARGET_SHORT_SIDE * 1.25


def test_nearest_choices_ranges_and_strings():
    assert plan.nearest(0.25, [0.125, 0.25, 0.5, 1.0]) == 0.25
    assert plan.nearest(0.35, [0.125, 0.5, 1.0]) == 0.5
    assert plan.nearest(1e-3, [1e-4, 5e-3], log_scale=True) == 5e-3  # 5x beats 10x
    assert plan.nearest(1e-3, [1e-4, 5e-3]) == 1e-4  # linearly, 1e-4 is nearer
    assert plan.nearest(4, 8) == 8  # a fixed value
    assert plan.nearest(1e-3, Range(1e-4, 3e-3, sampling="log")) == 1e-3
    assert plan.nearest(1e-3, Range(3e-4, 5e-4)) == 5e-4  # clipped to the range
    clipped = plan.nearest(300, Range(16, 128))
    assert clipped == 128 and isinstance(clipped, int)
    assert plan.nearest("ce_dice", ["ce", "ce_dice"]) == "ce_dice"
    assert plan.nearest("ce_dice", ["focal", "ce"]) == "focal"  # absent: the first


# --- the recipe on a range of fingerprints ----------------------------------------------------

def test_cwfid_recipe_and_its_epoch_time(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=3600)
    r = p.recipe
    assert (r["model_name"], r["unet/depth"], r["unet/filters"]) == ("unet", 4, 32)
    assert (r["input_size"], r["policy"], r["crop_scale"]) == (256, "crop", 0.5)
    assert (r["loss"], r["aug_strength"], r["batch_size"]) == ("ce_dice", 0.5, 4)
    assert r["learning_rate"] == pytest.approx(1e-3)
    assert r["rare_crops"] == 0.0  # uniform crops; the space's 0.33 is for exploration
    # 8 photos at half size (483x648) are 2x3 tiles of 256 px each.
    cost = model_cost("unet", {"depth": 4, "filters": 32})
    seconds = expected_epoch(cost, 256, train=40, val_units=8 * tiles(CWFID_SIZE, 0.5, 256))
    assert seconds == pytest.approx(44.04, abs=0.01)
    assert p.epoch_seconds(r) == pytest.approx(seconds, rel=1e-6)
    # The recipe trains for 40 % of the hour, less a trial's fixed cost.
    assert p.recipe_epochs == int((3600 * plan.RECIPE_SHARE - FIXED) // seconds) == 32
    assert p.min_epochs == 32  # 40 photos: 4000 crops would take 100 epochs, more than 32
    assert p.admits(r) is None
    assert_admission_rule(p)


def test_tiny_budget_drops_most_configurations():
    space = make_space(CWFID_SPACE)
    data = summary(train=20)  # 28 s an epoch for the recipe
    p = plan.make_plan(space, models_of(space), data, CPU, cost_model(),
                       120, None, runs_recipe=False)
    assert p.recipe_epochs == 1  # small, never 0
    assert p.min_epochs == 1
    assert window(p) == pytest.approx(120 * 0.6 - FIXED)
    total = len(p.kept) + len(p.dropped)
    assert total == 12  # 6 models x 2 input sizes
    assert len(p.dropped) > total / 2
    assert p.admits(p.recipe) is None
    for entry in p.dropped:
        seconds = p.epoch_seconds(entry["config"])
        reach = int(window(p) // seconds)
        assert reach < 1 and seconds > window(p)
        assert f"~{seconds:.0f} s an epoch: {reach} epochs at most in 72 s (needs 1)" \
            == entry["reason"]
        assert p.admits(entry["config"]) == entry["reason"]
    kept = {(e["config"]["model_name"], e["config"].get("unet/filters")) for e in p.kept}
    assert kept == {("unet", 32)}  # only the narrow U-Nets train an epoch in 42 s
    assert_admission_rule(p)


def test_tiny_budget_keeps_the_recipe_even_when_it_is_slow(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=120)
    recipe_seconds = p.epoch_seconds(p.recipe)
    assert recipe_seconds > window(p)  # 44 s: no epoch in a winner's 42 s...
    assert p.recipe_epochs == 1
    assert p.admits(p.recipe) is None  # ...but trial 0 is never dropped
    kept = sorted(e["epoch_seconds"] for e in p.kept)
    assert kept == pytest.approx([20.45, 24.54, 44.04], abs=0.01)  # 128 px U-Nets, recipe
    slower = [e for e in p.dropped if e["epoch_seconds"] > recipe_seconds]
    assert slower and all("0 epochs at most in 72 s (needs 1)" in e["reason"] for e in slower)
    assert_admission_rule(p)


def test_huge_photo_recipe_crops_at_a_quarter_scale():
    median = (3000, 4000)
    space = make_space({"models": {"unet": {"filters": [16, 32, 64]}},
                        "policy": ["resize", "crop"], "crop_scale": [0.125, 0.25, 0.5, 1.0]},
                       median=median)
    assert space.input_sizes() == [(128, 128), (256, 256)]
    data = summary(train=30, val=4, size=median)
    p = plan.make_plan(space, models_of(space), data, CPU, cost_model(),
                       3600, None, runs_recipe=False)
    r = p.recipe
    assert (r["policy"], r["input_size"], r["crop_scale"]) == ("crop", 256, 0.25)
    # A 750x1000 photo is 3x4 tiles of 256 px.
    cost = model_cost("unet", {"filters": 32})
    assert p.epoch_seconds(r) == pytest.approx(
        expected_epoch(cost, 256, 30, 4 * tiles(median, 0.25, 256)), rel=1e-6)
    assert tiles(median, 0.25, 256) == 12
    # Every configuration of the space is in the plan: 3 models x (2 resized + 2 x 4 crops).
    assert len(p.kept) + len(p.dropped) == 3 * (2 + 2 * 4)
    assert_admission_rule(p)


def test_huge_photo_with_auto_policy_crops():
    median = (3000, 4000)
    space = make_space({"models": {"unet": {"filters": 32}}, "crop_scale": [0.25, 0.5]},
                       median=median)
    assert space.params["policy"] == "crop"
    recipe, _ = plan.choose_recipe(space, models_of(space), summary(size=median), CPU, None)
    assert (recipe["policy"], recipe["crop_scale"]) == ("crop", 0.25)


def test_rare_class_recipe_uses_ce_dice():
    fractions = {"background": 0.95, "rare": 0.01, "other": 0.04}
    space = make_space({"models": {"unet": {"filters": 32}}}, fractions=fractions)
    assert "ce_dice" in space.params["loss"] and "focal" in space.params["loss"]
    recipe, _ = plan.choose_recipe(space, models_of(space), summary(fractions=fractions),
                                   CPU, None)
    assert recipe["loss"] == "ce_dice"
    assert summary(fractions=fractions).rarest == ("rare", 0.01)


def test_rare_class_recipe_without_ce_dice_takes_a_loss_of_the_space():
    fractions = {"background": 0.95, "rare": 0.01, "other": 0.04}
    space = make_space({"models": {"unet": {"filters": 32}}, "loss": ["ce", "focal"]},
                       fractions=fractions)
    recipe, _ = plan.choose_recipe(space, models_of(space), summary(fractions=fractions),
                                   CPU, None)
    assert recipe["loss"] in ("ce", "focal")
    p = plan.make_plan(space, models_of(space), summary(fractions=fractions), CPU,
                       cost_model(), None, None, runs_recipe=False)
    assert p.recipe["loss"] == recipe["loss"]


def test_rare_class_recipe_loss_does_not_depend_on_list_order():
    fractions = {"background": 0.95, "rare": 0.01, "other": 0.04}
    losses = []
    for order in (["ce", "focal"], ["focal", "ce"]):
        space = make_space({"models": {"unet": {"filters": 32}}, "loss": order},
                           fractions=fractions)
        recipe, _ = plan.choose_recipe(space, models_of(space), summary(fractions=fractions),
                                       CPU, None)
        losses.append(recipe["loss"])
    assert losses[0] == losses[1]  # not the first listed...
    assert losses[0] == "focal"  # ...but the one that weighs the rare class


def test_camvid_eleven_classes():
    median = (360, 480)
    names = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
             "pedestrian", "bicyclist"]
    shares = [0.16, 0.24, 0.005, 0.30, 0.07, 0.11, 0.01, 0.025, 0.045, 0.02, 0.015]
    fractions = dict(zip(names, shares))
    space = make_space({"models": {"unet": {"filters": [16, 32]}, "segnet": {}},
                        "policy": ["resize", "crop"], "crop_scale": [0.5, 1.0]},
                       median=median, fractions=fractions)
    assert space.input_sizes() == [(128, 128), (256, 256)]
    assert "ce_dice" in space.params["loss"]  # the 0.5 % poles make the data imbalanced
    data = plan.DataSummary(train_images=150, val_sizes=[median] * 34, median_size=median,
                            class_fraction=fractions)
    assert plan.recipe_scale(median) == 1.0
    p = plan.make_plan(space, models_of(space), data, CPU, cost_model(),
                       1800, None, runs_recipe=False)
    r = p.recipe
    # 32 filters train too few passes in the recipe's 12 minutes: the plan halves them.
    assert (r["model_name"], r["unet/filters"]) == ("unet", 16)
    assert len(p.recipe_steps) == 1 and "filters=32" in p.recipe_steps[0]
    assert (r["policy"], r["input_size"], r["crop_scale"]) == ("crop", 256, 1.0)
    assert (r["loss"], r["aug_strength"], r["batch_size"]) == ("ce_dice", 0.5, 4)
    # A 360x480 frame is 2x2 tiles of 256 px.
    cost = model_cost("unet", {"filters": 16})
    assert p.epoch_seconds(r) == pytest.approx(expected_epoch(cost, 256, 150, 34 * 4),
                                               rel=1e-6)
    assert p.min_epochs == min(p.recipe_epochs, math.ceil(plan.ENOUGH_IMAGES / 150))
    assert_admission_rule(p)
    text = "\n".join(p.lines())
    assert "rarest class pole 0.5 % of pixels" in text
    assert "median 480x360" in text


def test_large_dataset_caps_min_epochs_and_lowers_augmentation(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=10 * 3600, train=2000)
    assert p.recipe["aug_strength"] == 0.25
    assert p.recipe_epochs == 9
    # 2000 photos: 4000 crops are 2 epochs, so MIN_EPOCHS (3) is what a configuration needs.
    assert p.min_epochs == plan.MIN_EPOCHS == 3
    assert_admission_rule(p)


def test_no_time_budget_drops_nothing(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=None)
    assert p.min_epochs is None
    assert p.recipe_epochs == cwfid_space.max_epochs == 30
    assert p.dropped == []
    assert len(p.kept) == 6 * 2  # 4 U-Nets, SegNet, DeepLabV3+ at 2 input sizes
    assert p.winner_seconds() is None
    assert all(p.admits(e["config"]) is None for e in p.kept)
    lines = p.lines()
    assert "[plan] keeps all 12 configurations" in lines
    assert not any("exploring" in line for line in lines)


# --- memory ----------------------------------------------------------------------------------

def test_memory_for_batch_1_only():
    space = make_space({**CWFID_SPACE, "batch_size": [1, 2, 4, 8]})
    models = models_of(space)
    recipe_cost = model_cost("unet", {"depth": 4, "filters": 32})
    limit = int(recipe_cost.memory_bytes((256, 256), 1) * 1.2)
    assert recipe_cost.memory_bytes((256, 256), 2) > limit
    p = plan.make_plan(space, models, summary(), CPU, cost_model(), None,
                       limit, runs_recipe=False)
    assert (p.recipe["model_name"], p.recipe["input_size"], p.recipe["batch_size"]) \
        == ("unet", 256, 1)
    assert p.machine["memory_budget_bytes"] == limit
    # Dropped exactly when batch 1 is over the budget, and the reason says so.
    by_key = {(c.model_name, json.dumps(c.options, sort_keys=True)): c for c in models}
    for entry in p.kept + p.dropped:
        config = trial_model_config(entry["config"])
        cost = by_key[(config["model_name"], json.dumps(config["options"], sort_keys=True))]
        need = cost.memory_bytes(config["input_size"], 1)
        reason = entry.get("reason")
        assert (reason is not None) == (need > limit), entry
        if reason:
            assert reason == (f"needs ~{need / MiB:.0f} MB at batch 1, over the memory "
                              f"budget of {limit / MiB:.0f} MB")
    assert p.dropped and p.kept


def test_memory_for_batch_1_falls_back_to_a_smaller_input():
    space = make_space({**CWFID_SPACE, "batch_size": [1, 2, 4]})
    cost = model_cost("unet", {"depth": 4, "filters": 32})
    limit = cost.memory_bytes((128, 128), 1) + 1
    assert cost.memory_bytes((256, 256), 1) > limit
    recipe, batch = plan.choose_recipe(space, models_of(space), summary(), CPU, limit)
    assert (recipe["model_name"], recipe["input_size"], batch) == ("unet", 128, 1)


def test_memory_budget_that_fits_nothing_raises(cwfid_space):
    with pytest.raises(BudgetError) as info:
        cwfid_plan(cwfid_space, budget=600, memory_limit=10 * MiB)
    message = str(info.value)
    assert "the memory budget 10 MB fits no configuration" in message
    assert "at batch 2" in message and "input 128" in message
    assert "--memory-budget" in message


def test_memory_budget_error_quotes_the_smallest_batch_of_the_space():
    space = make_space({**CWFID_SPACE, "batch_size": [2, 4]})
    models = models_of(space)
    smallest = min(models, key=lambda c: c.memory_bytes((128, 128), 1))
    limit = (smallest.memory_bytes((128, 128), 1) + smallest.memory_bytes((128, 128), 2)) // 2
    with pytest.raises(BudgetError) as info:
        plan.choose_recipe(space, models, summary(), CPU, limit)
    need = smallest.memory_bytes((128, 128), 2)
    assert need > limit
    assert f"needs {need / MiB:.0f} MB at batch 2" in str(info.value)


def test_time_budget_that_admits_nothing_raises(cwfid_space):
    with pytest.raises(BudgetError, match="time budget"):
        cwfid_plan(cwfid_space, budget=30)


# --- a recipe the budget can train -----------------------------------------------------------

# CamVid-like: 133 training frames of 480x360 resized, 51 validation frames.
STEP_SPACE = {"models": {"unet": {"filters": [16, 32, 64]}}, "input_size": [128, 192, 256],
              "policy": "resize", "batch_size": [2, 4, 8]}
STEP_MEDIAN = (360, 480)


def step_plan(budget, spec=STEP_SPACE, median=STEP_MEDIAN, train=133):
    """The recipe alone for the whole budget (`--recipe-only`, one pass an epoch)."""
    space = make_space(spec, median=median)
    data = plan.DataSummary(train_images=train, val_sizes=[median] * 51, median_size=median,
                            class_fraction=dict(CWFID_FRACTIONS))
    return plan.make_plan(space, models_of(space), data, CPU, cost_model(),
                          budget, None, recipe_only=True)


def budget_for(epochs: float, values: dict, spec=STEP_SPACE, median=STEP_MEDIAN,
               train=133) -> float:
    """The budget in which the recipe-only plan trains `values` for `epochs` epochs."""
    reference = step_plan(None, spec, median, train)
    return reference.cost_model.fixed_seconds + epochs * reference.epoch_seconds(values)


def recipe_of(p: plan.Plan) -> tuple:
    return p.recipe["unet/filters"], p.recipe["input_size"]


def test_a_budget_that_trains_the_preferred_recipe_enough_keeps_it():
    preferred = step_plan(None).recipe
    assert recipe_of(step_plan(None)) == (32, 256)
    p = step_plan(budget_for(plan.MIN_RECIPE_PASSES + 0.5, preferred))
    assert recipe_of(p) == (32, 256)
    assert p.recipe_epochs == plan.MIN_RECIPE_PASSES and p.recipe_steps == []
    assert "a cheaper recipe" not in "\n".join(p.lines())


def test_a_short_budget_halves_the_filters_first():
    preferred = step_plan(None).recipe
    p = step_plan(budget_for(plan.MIN_RECIPE_PASSES - 0.5, preferred))
    assert recipe_of(p) == (16, 256)  # 16 filters: ~4x the epochs, enough
    assert p.recipe_epochs >= plan.MIN_RECIPE_PASSES
    assert p.recipe_steps == [f"{plan.describe(preferred)}: {plan.MIN_RECIPE_PASSES - 1} passes"]
    assert p.recipe["batch_size"] == preferred["batch_size"]
    assert p.recipe["loss"] == preferred["loss"]
    text = "\n".join(p.lines())
    assert "filters=16" in text.splitlines()[1]  # the recipe line names the cheaper recipe
    assert (f"[plan] a cheaper recipe, for at least {plan.MIN_RECIPE_PASSES} passes over the "
            f"training photos in its time: {p.recipe_steps[0]}; the recipe above: "
            f"{p.recipe_epochs} passes") in text
    assert plan.Plan.from_dict(json.loads(json.dumps(p.to_dict()))).recipe_steps \
        == p.recipe_steps


def test_a_shorter_budget_then_shrinks_a_resized_input_down_to_the_floor():
    narrow = {**step_plan(None).recipe, "unet/filters": 16}
    p = step_plan(budget_for(plan.MIN_RECIPE_PASSES - 0.5, narrow))
    assert recipe_of(p) == (16, 192)
    assert len(p.recipe_steps) == 2
    smallest = {**narrow, "input_size": 128}
    p = step_plan(budget_for(3.5, smallest))
    assert recipe_of(p) == (16, 128)  # not below MIN_RECIPE_SIZE, though short of passes
    assert p.recipe_epochs == 3 and len(p.recipe_steps) == 3


def test_a_budget_too_short_for_the_preferred_recipe_runs_a_cheaper_one():
    preferred = step_plan(None).recipe
    cheaper = {**preferred, "unet/filters": 16}
    budget = budget_for(0.5, preferred)  # not one epoch of 32 filters; ~2 of 16
    assert budget >= budget_for(1, cheaper)
    p = step_plan(budget)
    assert recipe_of(p)[0] == 16
    assert p.recipe_steps[0] == f"{plan.describe(preferred)}: not one epoch"
    with pytest.raises(BudgetError, match="time budget"):  # not even the cheapest fits
        step_plan(budget_for(0.5, {**cheaper, "input_size": 128}))


def test_a_forked_recipe_counts_the_passes_of_its_lineage():
    """When the plan forks, the recipe's weights train on through a fork and the finish
    along its one schedule: the passes that decide a step down are the lineage's, not those
    of its 40 % alone (which would step CamVid's 16-filter recipe down from 256 to 128 px)."""
    spec = {**STEP_SPACE, "models": {"unet": {"filters": [16, 32]}}, "input_size": 256}
    space = make_space(spec, median=STEP_MEDIAN)
    data = plan.DataSummary(train_images=133, val_sizes=[STEP_MEDIAN] * 51,
                            median_size=STEP_MEDIAN, class_fraction=dict(CWFID_FRACTIONS))

    def planned(epochs):  # a budget in which the recipe alone trains that many epochs
        budget = budget_for(epochs, step_plan(None, spec).recipe, spec)
        return plan.make_plan(space, models_of(space), data, CPU, cost_model(), budget, None)

    p = planned(45)
    assert p.exploration == "forks" and p.passes_per_epoch == 1
    assert recipe_of(p) == (32, 256) and p.recipe_steps == []
    assert p.recipe_epochs < plan.MIN_RECIPE_PASSES <= p.lineage_epochs() == p.recipe_passes()
    # A lineage short of them steps down: 22 passes in 30 epochs' time.
    p = planned(30)
    assert recipe_of(p) == (16, 256)
    assert p.recipe_steps == ["unet filters=32, resized to 256: 22 passes"]


def test_the_filters_never_go_below_the_floor():
    spec = {**STEP_SPACE, "models": {"unet": {"filters": [8, 16]}}, "input_size": 256}
    p = step_plan(budget_for(2.5, {**step_plan(None, spec).recipe}, spec=spec), spec=spec)
    assert recipe_of(p) == (16, 256)  # 8 filters are in the space, under MIN_RECIPE_FILTERS
    assert p.recipe_steps == []


def test_a_crop_recipe_keeps_its_crop_size():
    spec = {**CWFID_SPACE, "models": {"unet": {"filters": [16, 32]}}}
    reference = step_plan(None, spec, median=CWFID_SIZE, train=32)
    preferred = reference.recipe
    assert (preferred["policy"], recipe_of(reference)) == ("crop", (32, 256))
    p = step_plan(budget_for(2.5, preferred, spec, CWFID_SIZE, 32), spec, CWFID_SIZE, 32)
    assert recipe_of(p) == (16, 256)
    assert len(p.recipe_steps) == 1  # 128 px crops are in the space: not a step


def test_a_large_dataset_is_enough_at_enough_images():
    # 2000 photos: 3 epochs are 6000 crops, past ENOUGH_IMAGES, though 3 passes < 12.
    preferred = step_plan(None, train=2000).recipe
    p = step_plan(budget_for(3.5, preferred, train=2000), train=2000)
    assert recipe_of(p) == (32, 256) and p.recipe_steps == []
    p = step_plan(budget_for(1.5, preferred, train=2000), train=2000)
    assert recipe_of(p)[0] == 16  # 2000 crops: short of 4000


def test_without_a_budget_the_recipe_is_the_preferred_one():
    p = step_plan(None)
    assert recipe_of(p) == (32, 256) and p.recipe_steps == []


# --- machine and family preferences -----------------------------------------------------------

GPU_SPACE = {"models": {"unet": {"filters": [16, 32, 64]}}, "input_size": [256, 512],
             "policy": "resize", "batch_size": [2, 4, 8, 16]}


def test_gpu_prefers_64_filters_batch_8_and_512_px():
    space = make_space(GPU_SPACE)
    recipe, batch = plan.choose_recipe(space, models_of(space), summary(), GPU, None)
    assert (recipe["unet/filters"], batch, recipe["batch_size"]) == (64, 8, 8)
    assert recipe["input_size"] == 512


def test_cpu_prefers_32_filters_batch_4_and_256_px():
    space = make_space(GPU_SPACE)
    recipe, batch = plan.choose_recipe(space, models_of(space), summary(), CPU, None)
    assert (recipe["unet/filters"], batch, recipe["input_size"]) == (32, 4, 256)


@pytest.mark.parametrize("models, expected", [
    ({"segnet": {}, "deeplabv3plus": {}, "light_unet": {}}, "segnet"),
    ({"light_unet": {}, "deeplabv3plus": {}}, "deeplabv3plus"),
    ({"pix2pix": {}, "light_unet": {}}, "light_unet"),
    ({"unet": {"backbone": ["resnet50", "none"]}}, "unet"),
    ({"unet": {"backbone": "resnet50"}, "segnet": {"backbone": "none"}}, "segnet"),
], ids=["segnet-without-unet", "deeplab-next", "light-unet-over-pix2pix",
        "no-backbone-over-resnet50", "from-scratch-first"])
def test_family_preference(models, expected):
    space = make_space({"models": models, "input_size": 256})
    costs = [model_cost(m, c) if m != "pix2pix" else
             speed.ModelCost("pix2pix", c, "pix2pix", "pix2pix", 900e3, 800e3, 10 * MiB,
                             3000.0, 5_000_000) for m, o in space.models.items()
             for c in model_option_grid(o)]
    recipe, _ = plan.choose_recipe(space, costs, summary(), CPU, None)
    assert recipe["model_name"] == expected
    backbone = recipe.get(f"{expected}/backbone")
    assert backbone in (None, "none")


# --- neighbour -------------------------------------------------------------------------------

def groups_changed(start: dict, variant: dict) -> set[str]:
    """The groups `neighbour` redraws that differ between `start` and `variant` (a policy
    change brings or removes the crop scale and the rare-crop share, so it counts once)."""
    changed = set()
    for name in set(start) | set(variant):
        if start.get(name) == variant.get(name):
            continue
        group = "model" if name == "model_name" or "/" in name else name
        changed.add(group)
    if "policy" in changed:
        changed.discard("crop_scale")
        changed.discard("rare_crops")
    return changed


def assert_in_space(values: dict, space) -> None:
    for name, value in values.items():
        if "/" in name:
            model, option = name.split("/", 1)
            assert values["model_name"] == model, (name, values)
            candidates = space.models[model][option]
        elif name == "model_name":
            assert value in space.models
            continue
        else:
            candidates = space.params[name]
        if isinstance(candidates, Range):
            assert candidates.min <= value <= candidates.max, (name, value)
        elif name == "input_size":
            assert parse_input_size(value) in space.input_sizes()
        else:
            assert value in as_values(candidates), (name, value)


NEIGHBOUR_SPACE = {
    "models": {"unet": {"depth": [3, 4], "filters": [16, 32]}, "segnet": {"depth": [4, 5]}},
    "input_size": [128, 256],
    "policy": ["resize", "crop"],
    "crop_scale": [0.25, 0.5, 1.0],
    "batch_size": [2, 4, 8],
    "loss": ["ce", "ce_dice", "focal"],
    "aug_strength": [0.0, 0.25, 0.5],
    "learning_rate": {"min": 1e-4, "max": 3e-3, "sampling": "log"},
}


def draw_variants(start, space, admits, count=60, seed=0) -> list[dict]:
    """`count` successive variants of `start`, each unseen by the ones before."""
    seen: set[str] = set()
    rng = random.Random(seed)
    variants = []
    for _ in range(count):
        variant = plan.neighbour(start, space, rng, admits, lambda v: key(v) in seen)
        assert variant is not None
        assert key(variant) not in seen
        seen.add(key(variant))
        variants.append(variant)
    return variants


def test_neighbour_variants_are_close_admissible_and_unseen():
    space = make_space(NEIGHBOUR_SPACE)
    p = plan.make_plan(space, models_of(space), summary(), CPU, cost_model(),
                       3600, None, runs_recipe=False)
    start = dict(p.recipe)
    assert start["policy"] == "crop"
    assert p.dropped  # SegNet and the wide U-Nets cannot reach 32 epochs

    # Unrestricted, the draws include focal losses and what the plan drops...
    free = draw_variants(start, space, lambda v: None)
    assert any(v["loss"] == "focal" for v in free)
    assert any(p.admits(v) is not None for v in free)

    # ...restricted, never.
    def admits(values):  # no focal loss, and nothing the plan drops
        return "no focal" if values["loss"] == "focal" else p.admits(values)

    counts = {1: 0, 2: 0}
    for variant in draw_variants(start, space, admits):
        changed = groups_changed(start, variant)
        assert 1 <= len(changed) <= 2, (changed, variant)
        counts[len(changed)] += 1
        assert variant["loss"] != "focal"
        assert p.admits(variant) is None
        assert_in_space(variant, space)
        assert variant["learning_rate"] <= start["learning_rate"] * 5 * (1 + 1e-9)
    assert counts[1] and counts[2]  # both one- and two-group variants occur
    assert start == p.recipe  # the start is not modified


def test_neighbour_only_redraws_the_groups_it_is_given():
    """Forks of the recipe keep its model, input size and policy."""
    space = make_space(NEIGHBOUR_SPACE)
    start, _ = plan.choose_recipe(space, models_of(space), summary(), CPU, None)
    assert start["policy"] == "crop"
    seen: set[str] = set()
    rng = random.Random(0)
    changed = set()
    for _ in range(30):
        variant = plan.neighbour(start, space, rng, lambda v: None, lambda v: key(v) in seen,
                                 only=plan.FORK_GROUPS)
        assert variant is not None
        seen.add(key(variant))
        groups = groups_changed(start, variant)
        assert groups and groups <= set(plan.FORK_GROUPS), groups
        changed |= groups
    assert changed == {"loss", "aug_strength", "learning_rate", "batch_size", "crop_scale"}
    # With nothing of `only` in the space to redraw, there is no variant.
    assert plan.neighbour(start, space, rng, lambda v: None, lambda v: False,
                          only=("rare_crops",)) is None


def effective(values: dict) -> str:
    """`values` as the trial trains it: the crop scale counts only with the crop policy."""
    if values.get("policy") != "crop":
        values = {k: v for k, v in values.items() if k not in ("crop_scale", "rare_crops")}
    return key(values)


def test_neighbour_never_returns_one_configuration_twice():
    space = make_space(NEIGHBOUR_SPACE)
    p = plan.make_plan(space, models_of(space), summary(), CPU, cost_model(),
                       3600, None, runs_recipe=False)
    assert p.recipe["policy"] == "crop"
    seen: set[str] = set()
    trained: list[str] = []
    rng = random.Random(0)
    for _ in range(40):
        variant = plan.neighbour(p.recipe, space, rng, p.admits, lambda v: key(v) in seen)
        seen.add(key(variant))
        assert ("crop_scale" in variant) == (variant["policy"] == "crop"), variant
        assert ("rare_crops" in variant) == (variant["policy"] == "crop"), variant
        trained.append(effective(variant))
    assert len(set(trained)) == len(trained)


def test_neighbour_exhausts_a_small_space_then_returns_none():
    space = make_space({"models": {"unet": {"filters": [16, 32]}}, "input_size": [128, 256],
                        "policy": "resize", "batch_size": [2, 4], "loss": ["ce", "ce_dice"],
                        "aug_strength": 0.5, "learning_rate": 1e-3})
    start, _ = plan.choose_recipe(space, models_of(space), summary(), CPU, None)
    seen: set[str] = set()
    rng = random.Random(1)
    while (variant := plan.neighbour(start, space, rng, lambda v: None,
                                     lambda v: key(v) in seen)) is not None:
        assert key(variant) not in seen
        seen.add(key(variant))
    # 4 binary groups (model, input size, loss, batch): 4 one-group and 6 two-group variants.
    assert len(seen) == 4 + 6
    assert all(1 <= len(groups_changed(start, json.loads(s))) <= 2 for s in seen)


def test_neighbour_returns_none_when_nothing_is_possible():
    fixed = make_space({"models": {"unet": {"filters": 32}}, "input_size": 256,
                        "policy": "resize", "batch_size": 4, "loss": "ce_dice",
                        "aug_strength": 0.5, "learning_rate": 1e-3})
    start, _ = plan.choose_recipe(fixed, models_of(fixed), summary(), CPU, None)
    rng = random.Random(0)
    assert plan.neighbour(start, fixed, rng, lambda v: None, lambda v: False) is None
    space = make_space(NEIGHBOUR_SPACE)
    start, _ = plan.choose_recipe(space, models_of(space), summary(), CPU, None)
    assert plan.neighbour(start, space, rng, lambda v: "never", lambda v: False,
                          attempts=50) is None
    assert plan.neighbour(start, space, rng, lambda v: None, lambda v: True,
                          attempts=50) is None


# --- estimates: observe, persistence, lines ---------------------------------------------------

def _values(model_name, options, size=256):
    return plan.config_values(model_name, options, (size, size), "crop", 0.5)


def test_observe_corrects_that_key_and_moves_others_by_the_geometric_mean(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=3600)
    unet_small = _values("unet", {"depth": 5, "filters": 64}, 128)
    segnet = _values("segnet", {})
    deeplab = _values("deeplabv3plus", {"backbone": "resnet50"})
    before = {k: p.epoch_seconds(v) for k, v in
              {"recipe": p.recipe, "unet_small": unet_small, "segnet": segnet,
               "deeplab": deeplab}.items()}

    p.observe(p.recipe, 2 * before["recipe"])
    # Every U-Net (one key, "unet") doubles; other keys follow every trial's mean (2).
    assert p.epoch_seconds(p.recipe) == pytest.approx(2 * before["recipe"])
    assert p.epoch_seconds(unet_small) == pytest.approx(2 * before["unet_small"])
    assert p.epoch_seconds(segnet) == pytest.approx(2 * before["segnet"])
    assert p.epoch_seconds(p.recipe, corrected=False) == pytest.approx(before["recipe"])

    p.observe(segnet, 8 * before["segnet"])
    assert p.epoch_seconds(segnet) == pytest.approx(8 * before["segnet"])
    assert p.epoch_seconds(p.recipe) == pytest.approx(2 * before["recipe"])
    assert p.epoch_seconds(deeplab) == pytest.approx(4 * before["deeplab"])  # sqrt(2 x 8)
    assert p.costs["observed"] == {"unet": [2.0], "segnet": [8.0]}


def test_observe_changes_what_the_plan_admits(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=3600)
    segnet = _values("segnet", {})
    deeplab = _values("deeplabv3plus", {"backbone": "resnet50"})
    segnet_before, deeplab_before = p.epoch_seconds(segnet), p.epoch_seconds(deeplab)
    assert window(p) // segnet_before < 32 and "needs 32" in p.admits(segnet)
    # The U-Nets run as predicted, SegNet 10x faster than predicted: SegNet is admitted now.
    p.observe(p.recipe, p.epoch_seconds(p.recipe))
    p.observe(segnet, 0.1 * segnet_before)
    assert p.required_epochs() == 32
    assert p.epoch_seconds(segnet) == pytest.approx(0.1 * segnet_before)
    assert window(p) // p.epoch_seconds(segnet) >= 32
    assert p.admits(segnet) is None
    # DeepLabV3+ moves by the mean of both, sqrt(0.1): still too slow.
    assert p.epoch_seconds(deeplab) == pytest.approx(math.sqrt(0.1) * deeplab_before)
    assert "needs 32" in p.admits(deeplab)


def test_observe_on_the_recipe_rescales_the_epochs_required(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=3600)
    unet_deep = _values("unet", {"depth": 5, "filters": 32})
    assert p.admits(unet_deep) is None
    p.observe(p.recipe, 3 * p.epoch_seconds(p.recipe))
    # The recipe now takes 132 s an epoch: 1410 s of its share train 10 epochs, and a
    # configuration must reach 10, not 32.
    assert p.epoch_seconds(p.recipe) == pytest.approx(3 * 44.04, abs=0.01)
    assert p.required_epochs() == 10
    assert p.admits(unet_deep) is None  # 3x slower too (same key): 13 epochs in 2130 s
    assert window(p) // p.epoch_seconds(unet_deep) == 13
    assert p.admits(p.recipe) is None


def test_plan_round_trips_through_json(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=1800, memory_limit=2000 * MiB)
    p.observe(p.recipe, 1.5 * p.epoch_seconds(p.recipe))
    q = plan.Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q.recipe == p.recipe and q.min_epochs == p.min_epochs
    assert q.recipe_epochs == p.recipe_epochs
    assert q.costs["observed"] == {"unet": [1.5]}
    assert p.dropped
    for entry in p.kept + p.dropped:
        values = entry["config"]
        assert q.epoch_seconds(values) == pytest.approx(p.epoch_seconds(values), rel=1e-12)
        assert q.admits(values) == p.admits(values)
    assert q.lines() == p.lines()


def test_a_recipe_that_does_not_rebalance_says_nothing_of_it():
    space = make_space({**CWFID_SPACE, "rebalance": "off"})
    p = plan.make_plan(space, models_of(space), summary(), CPU, cost_model(), 1800, None)
    assert "if it then misses classes" not in "\n".join(p.lines())


def test_plan_lines_name_the_recipe_the_drops_and_a_reason(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=1800)
    lines = p.lines(limit=2)
    assert all(line.startswith("[plan]") for line in lines)
    text = "\n".join(lines)
    assert "data: 40 train / 8 val photos, median 1296x966" in text
    assert "rarest class crop 1.6 % of pixels" in text
    assert ("recipe (trial 0): unet depth=4 filters=32, 256 crops at 0.5 scale, ce_dice, "
            "aug 0.5, lr 0.001 cosine, batch 4") in text
    assert f"{p.recipe_epochs} epochs in 12 min (40 % of the budget)" in text
    assert p.recipe["rebalance"] == "auto" and p.recipe_epochs >= 8
    assert (f", weighted_ce_dice from epoch {plan.rebalance_epoch(p.recipe_epochs)} if it then "
            "misses classes: ") in text
    total = len(p.kept) + len(p.dropped)
    assert f"drops {len(p.dropped)} of {total} configurations" in text
    cheapest = min(p.dropped, key=lambda d: d["epoch_seconds"])
    assert f"{plan.describe(cheapest['config'])}: {cheapest['reason']}" in text
    assert sum("s an epoch:" in line for line in lines) == 2  # `limit` examples
    assert "exploring variants of the recipe" in text


# --- the recipe takes the whole budget while exploring does not pay ----------------------------

def test_an_hour_on_a_cpu_explores_by_forking_the_recipe(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=3600, runs_recipe=True)
    seconds = p.epoch_seconds(p.recipe)  # 44 s
    assert not p.recipe_only and p.exploration == "forks"
    assert p.recipe_epochs == int((0.4 * 3600 - FIXED) // seconds) == 32
    # min_epochs 32 (the recipe's 40 %): the recipe and 2 variants from scratch for 16
    # epochs each (half its 32) need more than exploration's 24 minutes; the control and 2
    # forks of the recipe, 7 epochs each (a fifth of its 32), fit.
    needed, epochs = plan.minimal_exploration_seconds(p)
    assert epochs == 16 and needed > 0.4 * 3600
    assert plan.fork_epochs(p) == 7
    assert plan.minimal_fork_seconds(p) == pytest.approx(3 * (FIXED + 7 * seconds))
    assert plan.minimal_fork_seconds(p) <= 0.4 * 3600
    # The recipe's learning rate decays over its lineage: its 32 epochs, a fork's 7 and
    # the finish's, the time after the recipe less the 3 forks' and the finish's start-up.
    after = 0.6 * 3600 - 3 * (FIXED + 7 * seconds) - FIXED
    finish = int(after // seconds)
    assert p.lineage_epochs() == 32 + 7 + finish
    # The finish's share grows with the recipe's epochs (both follow its epoch time); the
    # fork's 7 do not.
    assert p.schedule_extension() == (pytest.approx((32 + finish) / 32), 7)
    assert p.after_forks_seconds() == pytest.approx(0.6 * 3600 - 3 * (FIXED + 7 * seconds))
    text = "\n".join(p.lines())
    assert "forking the recipe" in text and "7 epochs each" in text
    assert f"decays over its lineage, {p.lineage_epochs()} epochs" in text
    assert "variants from scratch need ~" in text and "exploring variants" not in text


def test_a_budget_too_short_for_forks_gives_the_recipe_the_whole_budget(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=900, runs_recipe=True)
    seconds = p.epoch_seconds(p.recipe)
    assert p.recipe_only and p.shares == plan.RECIPE_ONLY and p.exploration == "scratch"
    assert p.recipe_epochs == int((900 - FIXED) // seconds)
    assert p.schedule_extension() is None and p.lineage_epochs() is None  # its own schedule
    # The recipe's 40 % holds 7 epochs: the control and 2 forks of 3 epochs (MIN_EPOCHS)
    # need more than exploration's 6 minutes.
    shares = cwfid_plan(cwfid_space, budget=900, runs_recipe=False)
    assert plan.fork_epochs(shares) == plan.MIN_EPOCHS
    assert plan.minimal_fork_seconds(shares) > 0.4 * 900
    text = "\n".join(p.lines())
    assert "recipe only: exploring needs ~" in text and "the recipe gets the whole budget" in text
    assert f"{p.recipe_epochs} epochs in 15 min (100 % of the budget)" in text
    assert "exploring" not in text.replace("exploring needs", "")


def test_a_long_budget_explores_once_the_recipe_has_enough_crops(cwfid_space):
    # Six hours: the recipe's 40 % holds 195 epochs, more than 4000 crops' worth (100):
    # variants compared at 50 epochs fit.
    p = cwfid_plan(cwfid_space, budget=6 * 3600, runs_recipe=True)
    assert not p.recipe_only and p.recipe_only_reason is None
    assert p.min_epochs == 100
    needed, epochs = plan.minimal_exploration_seconds(p)
    assert epochs == 50 and needed <= p.budget_seconds * p.shares["explore"]
    assert "exploring variants of the recipe" in "\n".join(p.lines())


def test_the_decision_follows_the_machine_not_the_budget_alone(cwfid_space):
    # The same hour on a machine 10x faster: the recipe reaches its 4000 crops in its share.
    fast = plan.make_plan(cwfid_space, models_of(cwfid_space), summary(), CPU,
                          cost_model(10 * GFLOPS), 3600, None)
    assert not fast.recipe_only and fast.exploration == "scratch"
    slow = plan.make_plan(cwfid_space, models_of(cwfid_space), summary(), CPU,
                          cost_model(), 3600, None)
    assert not slow.recipe_only and slow.exploration == "forks"
    slower = plan.make_plan(cwfid_space, models_of(cwfid_space), summary(), CPU,
                            cost_model(GFLOPS / 4), 3600, None)
    assert slower.recipe_only


def test_a_recipe_measured_slower_than_planned_takes_the_whole_budget(cwfid_space):
    # Six hours explore at the planned epoch time (test above); at 5x that time neither
    # variants from scratch nor forks of the recipe fit.
    p = cwfid_plan(cwfid_space, budget=6 * 3600, runs_recipe=True)
    planned = p.epoch_seconds(p.recipe)
    costs = json.dumps(p.costs)
    assert plan.recipe_takes_all(p, planned) is None
    reason = plan.recipe_takes_all(p, 5 * planned)
    assert reason and f"measured {5 * planned:.0f} s an epoch" in reason
    assert "the recipe trains to the end of the budget" in reason
    # The search's plan is left as it was (its oracle observes the trial when it ends).
    assert json.dumps(p.costs) == costs and not p.recipe_only
    # A plan that is the recipe alone, or has no budget, has nothing to re-check.
    alone = cwfid_plan(cwfid_space, budget=900, runs_recipe=True)
    assert plan.recipe_takes_all(alone, 10 * planned) is None


def test_a_recipe_measured_slower_than_planned_forks_where_scratch_variants_no_longer_fit(
        cwfid_space):
    # Six hours at 2x the planned epoch time: variants from scratch (34 epochs each) no
    # longer fit the exploration share, forks of the recipe (20) still do, so the recipe
    # keeps its share.
    p = cwfid_plan(cwfid_space, budget=6 * 3600, runs_recipe=True)
    assert plan.fork_epochs(p) == 20  # a fifth of min_epochs, 4000 crops' worth
    slower = 2 * p.epoch_seconds(p.recipe)
    measured = plan.Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    measured.observe(measured.recipe, slower)
    share = p.budget_seconds * p.shares["explore"]
    assert plan.minimal_exploration_seconds(measured)[0] > share
    assert plan.minimal_fork_seconds(measured) <= share
    assert plan.recipe_takes_all(p, slower) is None


def test_the_recipe_only_decision_survives_json(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=900, runs_recipe=True)
    q = plan.Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q.recipe_only and q.recipe_only_reason == p.recipe_only_reason
    assert q.lines() == p.lines()
    # A plan.json written before the field existed still loads.
    old = p.to_dict()
    del old["recipe_only_reason"]
    assert plan.Plan.from_dict(old).recipe_only_reason is None


def test_the_fork_decision_survives_json(cwfid_space):
    p = cwfid_plan(cwfid_space, budget=3600, runs_recipe=True)
    q = plan.Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q.exploration == "forks" and q.exploration_reason == p.exploration_reason
    assert q.lines() == p.lines()
    old = p.to_dict()  # a plan.json written before forks existed
    del old["exploration"], old["exploration_reason"]
    assert plan.Plan.from_dict(old).exploration == "scratch"


# --- passes per epoch: validation at most a fifth of an epoch -----------------------------------

@pytest.mark.parametrize("train, passes", [(40, 2), (32, 2), (64, 1), (8, 8), (3, 8)])
def test_an_epoch_passes_enough_times_that_validation_is_a_fifth(monkeypatch, cwfid_space,
                                                                train, passes):
    monkeypatch.setattr(plan, "MAX_PASSES", 8)
    p = cwfid_plan(cwfid_space, budget=3600, train=train)
    assert p.passes_per_epoch == passes
    assert p.epoch_crops == train * passes
    # Forward units: training 3 per crop, validation 1 per tile (48 tiles of 256 px).
    validation = 8 * tiles(CWFID_SIZE, 0.5, 256)
    share = validation / (3 * train * passes + validation)
    assert share <= plan.VALIDATION_SHARE or passes == 8
    if passes > 1:  # one pass fewer would validate for more than a fifth
        assert validation / (3 * train * (passes - 1) + validation) > plan.VALIDATION_SHARE
    cost = model_cost("unet", {"depth": 4, "filters": 32})
    assert p.epoch_seconds(p.recipe) == pytest.approx(
        expected_epoch(cost, 256, train=train * passes, val_units=validation), rel=1e-6)
    text = "\n".join(p.lines())
    assert (f"an epoch is {passes} passes over the training photos" in text) == (passes > 1)


def test_without_a_time_budget_an_epoch_is_one_pass(monkeypatch, cwfid_space):
    monkeypatch.setattr(plan, "MAX_PASSES", 8)
    assert cwfid_plan(cwfid_space, budget=None).passes_per_epoch == 1


def test_recipe_takes_the_spaces_rare_crop_share_nearest_none():
    space = make_space({"models": {"unet": {"filters": 32}}, "rare_crops": [0.5, 0.25, 0.75]})
    recipe, _ = plan.choose_recipe(space, models_of(space), summary(), CPU, None)
    assert (recipe["policy"], recipe["rare_crops"]) == ("crop", 0.25)
    resized = make_space({"models": {"unet": {"filters": 32}}, "policy": "resize"})
    recipe, _ = plan.choose_recipe(resized, models_of(resized), summary(), CPU, None)
    assert "rare_crops" not in recipe  # no crops, no share


def test_neighbour_redraws_the_rare_crop_share_when_the_space_offers_several():
    space = make_space(dict(NEIGHBOUR_SPACE, rare_crops=[0.0, 0.33, 0.66]))
    p = plan.make_plan(space, models_of(space), summary(), CPU, cost_model(),
                       3600, None, runs_recipe=False)
    rng = random.Random(0)
    variants = [plan.neighbour(p.recipe, space, rng, p.admits, lambda v: False)
                for _ in range(60)]
    shares = {v["rare_crops"] for v in variants if v["policy"] == "crop"}
    assert shares == {0.0, 0.33, 0.66}


@pytest.mark.parametrize("offered, want", [(None, "auto"), ("off", "off"), (["off", "auto"], "auto")])
def test_recipe_rebalances_when_the_space_lets_it(offered, want):
    config = {"models": {"unet": {"filters": 32}}} | ({"rebalance": offered} if offered else {})
    space = make_space(config)
    recipe, _ = plan.choose_recipe(space, models_of(space), summary(), CPU, None)
    assert recipe["rebalance"] == want == plan.RECIPE_REBALANCE or want == "off"


def test_recipe_takes_the_spaces_weight_average_nearest_its_own():
    plain = make_space({"models": {"unet": {"filters": 32}}})
    recipe, _ = plan.choose_recipe(plain, models_of(plain), summary(), CPU, None)
    assert recipe["weight_ema"] == 0  # the space's default: no averaging
    space = make_space({"models": {"unet": {"filters": 32}}, "weight_ema": [1, 4]})
    recipe, _ = plan.choose_recipe(space, models_of(space), summary(), CPU, None)
    want = 1 if plan.RECIPE_WEIGHT_EMA <= 2.5 else 4
    assert recipe["weight_ema"] == want
    p = plan.make_plan(space, models_of(space), summary(), CPU, cost_model(), 3600, None,
                       runs_recipe=False)
    assert f"weights averaged over {want} epochs" in "\n".join(p.lines())
    from autoseg.search_space import bundled_space_path

    offered = yaml.safe_load(bundled_space_path("default").read_text())["weight_ema"]
    space = make_space({"models": {"unet": {"filters": 32}}, "weight_ema": offered})
    recipe, _ = plan.choose_recipe(space, models_of(space), summary(), CPU, None)
    assert offered == [0, 2] and recipe["weight_ema"] == plan.RECIPE_WEIGHT_EMA == 2


def test_a_fork_may_redraw_the_weight_average():
    space = make_space(dict(NEIGHBOUR_SPACE, weight_ema=[0, 2]))
    p = plan.make_plan(space, models_of(space), summary(), CPU, cost_model(),
                       3600, None, runs_recipe=False)
    rng = random.Random(0)
    forks = [plan.neighbour(p.recipe, space, rng, p.admits, lambda v: False,
                            only=plan.FORK_GROUPS) for _ in range(60)]
    assert {f["weight_ema"] for f in forks} == {0, 2}


def test_a_finish_on_train_and_val_is_in_the_plan_line_and_kept_on_resume():
    space = make_space(CWFID_SPACE)
    made = plan.make_plan(space, models_of(space), summary(train=32, val=8), CPU, cost_model(),
                          6 * 3600.0, None)
    assert made.finish_on == plan.TRAIN
    assert made.finish_epoch_factor() == pytest.approx(40 / 32)
    assert not any("validation photos" in line for line in made.lines())
    made.finish_on = plan.TRAIN_AND_VAL
    assert any(line.endswith("training the best further on the training and validation photos")
               for line in made.lines()), made.lines()
    again = plan.Plan.from_dict(json.loads(json.dumps(made.to_dict())))
    assert again.finish_on == plan.TRAIN_AND_VAL
    older = made.to_dict()
    del older["finish_on"]  # a plan.json written before the option
    assert plan.Plan.from_dict(older).finish_on == plan.TRAIN


# --- forks drawn from the recipe's scores ----------------------------------------------------

def test_missed_classes_are_under_the_bar_on_both_sides():
    metrics = {"iou_pole": 0.0, "val_iou_pole": 0.0,            # missed
               "iou_sign": 0.3, "val_iou_sign": 0.01,           # learned, does not generalise
               "iou_fence": 0.02, "val_iou_fence": 0.2,
               "iou_rider": float("nan"), "val_iou_rider": 0.0,  # absent from the crops
               "val_iou_bus": 0.0,                               # no training figure
               "iou_sky": 0.9, "val_iou_sky": 0.8, "val_mean_iou": 0.0}
    assert plan.missed_classes(metrics) == ["pole"]
    assert plan.missed_classes({}) == []


def test_a_diagnosed_fork_takes_the_first_balancing_loss_the_space_offers():
    space = make_space({"models": {"unet": {"filters": 32}}})
    assert "weighted_ce_dice" in space.params["loss"]  # CWFID's 1.6 % crop: imbalanced
    recipe, _ = plan.choose_recipe(space, models_of(space), summary(), CPU, None)
    admit_all, unseen = (lambda v: None), (lambda v: False)
    assert plan.diagnosed_fork(recipe, space, [], admit_all, unseen) is None
    values, reason = plan.diagnosed_fork(recipe, space, ["crop"], admit_all, unseen)
    assert values == {**recipe, "loss": "weighted_ce_dice"} and "(crop:" in reason
    # Seen (or not admitted): the next balancing loss.
    values, _ = plan.diagnosed_fork(recipe, space, ["crop"], admit_all,
                                    lambda v: v["loss"] == "weighted_ce_dice")
    assert values["loss"] == "weighted_ce"
    values, _ = plan.diagnosed_fork(recipe, space, ["crop"],
                                    lambda v: "no" if v["loss"] != "focal" else None, unseen)
    assert values["loss"] == "focal"
    # A space without them: nothing to diagnose with.
    plain = make_space({"models": {"unet": {"filters": 32}}, "loss": ["ce", "ce_dice"]})
    assert plan.diagnosed_fork(recipe, plain, ["crop"], admit_all, unseen) is None
