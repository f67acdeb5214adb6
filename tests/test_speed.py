"""autoseg.speed's two-term cost model: an epoch's FLOPs at one rate and its activations at
another, fitted from timed steps of the recipe's model and a sibling of another width."""

from __future__ import annotations

import dataclasses

import pytest

from autoseg import plan, speed


def unet_cost(filters: int, depth: int = 4) -> speed.ModelCost:
    """A plain U-Net by hand: FLOPs grow with the width's square, activations with the width."""
    width = filters / 32
    return speed.ModelCost(
        model_name="unet", options={"depth": depth, "filters": filters, "backbone": "none"},
        key="unet", family="unet", train_flops_per_pixel=200e3 * width**2,
        infer_flops_per_pixel=200e3 * width**2, static_bytes=0,
        sample_bytes_per_pixel=1000.0 * width, params=int(2e6 * width**2),
        train_elements_per_pixel=300.0 * width, infer_elements_per_pixel=150.0 * width,
    )


def seconds_at(cost: speed.ModelCost, gflops: float, gelements: float, batch: int = 4,
               size: int = 256) -> float:
    """A training step's seconds on a machine with these two rates (float32 U-Net)."""
    pixels = size * size * batch
    return pixels * 3 * (cost.train_flops_per_pixel / gflops
                         + cost.train_elements_per_pixel / gelements) / 1e9


def test_two_widths_give_back_both_rates():
    wide, narrow = unet_cost(32), unet_cost(16)
    times = [speed.timing(c, (256, 256), 4, seconds_at(c, 60.0, 0.15)) for c in (wide, narrow)]
    gflops, gelements = speed.fit_rates(*times)
    assert gflops == pytest.approx(60.0)
    assert gelements == pytest.approx(0.15)


def test_the_two_term_model_predicts_a_narrow_unet_that_flops_alone_do_not():
    """Calibrated on the 32-filter U-Net alone, FLOPs predict the 16-filter one at a quarter
    of its time; with a sibling they predict both, and the 64-filter one too. (The rates put
    ~40 % of the 32-filter step in activations, as the EPYC's 1.4x in float32 implies.)"""
    costs = {f: unet_cost(f) for f in (16, 32, 64)}
    truth = {f: seconds_at(c, 60.0, 0.15) for f, c in costs.items()}
    timings = {f: speed.timing(c, (256, 256), 4, truth[f]) for f, c in costs.items()}

    flops_only = speed.CostModel(gflops=timings[32].flops / timings[32].seconds / 1e9)
    gflops, gelements = speed.fit_rates(timings[32], timings[16])
    both = speed.CostModel(gflops=gflops, gelements=gelements)

    def epoch(model, filters):  # one step's worth: 4 crops, no validation
        return model.epoch_seconds(costs[filters], (256, 256), 4, 0)

    assert epoch(flops_only, 32) == pytest.approx(truth[32])
    assert epoch(flops_only, 16) < 0.8 * truth[16]  # the optimism this fixes
    for filters in (16, 32, 64):
        assert epoch(both, filters) == pytest.approx(truth[filters])


@pytest.mark.parametrize("second_seconds, why", [
    (None, "one timing"),
    ("same", "a wider step no slower than the narrow one: noise, not an activation rate"),
    ("alike", "two models of the same intensity"),
])
def test_rates_keep_the_usual_ratio_when_the_timings_cannot_split_them(second_seconds, why):
    """Without a second timing that tells the terms apart, the rates keep
    `FLOPS_PER_ELEMENT` and give the first timing exactly."""
    wide = unet_cost(32)
    first = speed.timing(wide, (256, 256), 4, 2.0)
    if second_seconds is None:
        second = None
    elif second_seconds == "same":  # the narrow model as slow as the wide one
        second = speed.timing(unet_cost(16), (256, 256), 4, 2.0)
    else:  # the same model at another batch size: the same FLOPs per activation
        second = speed.timing(wide, (256, 256), 8, 4.1)
    gflops, gelements = speed.fit_rates(first, second)
    assert gflops / gelements == pytest.approx(speed.FLOPS_PER_ELEMENT), why
    model = speed.CostModel(gflops=gflops, gelements=gelements)
    assert model.epoch_seconds(wide, (256, 256), 4, 0) == pytest.approx(2.0)


def test_efficiency_scales_the_flop_term_only():
    """An architecture of efficiency 0.5 takes twice a plain U-Net's time for its FLOPs and
    the same time for its activations; a step it took is timed in those terms."""
    made_up = dataclasses.replace(unet_cost(32), model_name="segnet", key="made-up")
    model = speed.CostModel(gflops=100.0, gelements=1.0)
    flops = 256 * 256 * 4 * 3 * made_up.train_flops_per_pixel / 1e9
    elements = 256 * 256 * 4 * 3 * made_up.train_elements_per_pixel / 1e9
    seconds = model.epoch_seconds(made_up, (256, 256), 4, 0)
    assert seconds == pytest.approx(flops / (100.0 * speed.DEFAULT_EFFICIENCY) + elements / 1.0)
    timed = speed.timing(made_up, (256, 256), 4, seconds)
    assert timed.flops == pytest.approx(flops * 1e9 / speed.DEFAULT_EFFICIENCY)
    assert timed.flops / 1e9 / 100.0 + timed.elements / 1e9 / 1.0 == pytest.approx(timed.seconds)


def test_the_sibling_is_half_the_recipes_width_where_the_space_has_it():
    models = [unet_cost(f) for f in (16, 32, 64)] + [unet_cost(16, depth=5)]
    recipe = {"model_name": "unet", "unet/depth": 4, "unet/filters": 32, "unet/backbone": "none",
              "input_size": 256, "policy": "resize", "batch_size": 4}
    assert plan.calibration_sibling(recipe, models, None).options["filters"] == 16
    # No half: the nearest other width of the same depth.
    assert plan.calibration_sibling({**recipe, "unet/filters": 16}, models, None
                                    ).options["filters"] == 32
    # Nothing else of that depth: no sibling (FLOPs alone).
    only = [unet_cost(32), unet_cost(16, depth=5)]
    assert plan.calibration_sibling(recipe, only, None) is None
    # A sibling over the memory budget is not timed.
    tight = 32 * 4 * 256 * 256 * 1000 / 32 + 1  # fits 32 filters' samples (1000 B/px), not 64
    assert plan.calibration_sibling({**recipe, "unet/filters": 16},
                                    [unet_cost(16), unet_cost(64)], int(tight)) is None


def test_a_measured_model_records_its_activations(tmp_path, monkeypatch):
    """`measure_models` counts what the two-term model needs: activations grow with the width
    (about 2x from 4 to 8 filters) while FLOPs grow with its square (about 4x)."""
    from autoseg import cost_cache

    cache = cost_cache.CostCache(tmp_path / "costs.json")
    narrow, wide = speed.measure_models(
        [("unet", {"depth": 3, "filters": 4, "backbone": "none"}),
         ("unet", {"depth": 3, "filters": 8, "backbone": "none"})], num_classes=3, cache=cache)
    assert 1.6 < wide.train_elements_per_pixel / narrow.train_elements_per_pixel < 2.2
    assert 3.0 < wide.train_flops_per_pixel / narrow.train_flops_per_pixel < 4.2
    assert 0 < narrow.infer_elements_per_pixel <= narrow.train_elements_per_pixel


def test_calibration_times_the_recipe_and_its_half_width_sibling(tiny_dataset, monkeypatch):
    """`plan.calibrate` builds the recipe's model and its sibling as trials build them, times
    both, and fits the cost model to what it measured (whatever the rates come out as)."""
    from autoseg.hypermodel import AutosegHyperModel, TrainingData
    from autoseg.search_space import load_space

    space = load_space({"models": {"unet": {"depth": 3, "filters": [8, 16], "backbone": "none"}},
                        "input_size": 64, "policy": "resize", "batch_size": [2]})
    hypermodel = AutosegHyperModel(space=space, data=TrainingData.from_path(tiny_dataset))
    models = speed.measure_models([("unet", {"depth": 3, "filters": f, "backbone": "none"})
                                   for f in (8, 16)], num_classes=3)
    built, timed = [], []
    build = hypermodel.build
    monkeypatch.setattr(hypermodel, "build", lambda hp: built.append(
        hp.values["unet/filters"]) or build(hp))
    step_seconds = speed.step_seconds
    monkeypatch.setattr(speed, "step_seconds", lambda model, batch, steps=3: timed.append(
        model.count_params()) or step_seconds(model, batch, steps))
    fitted = []
    monkeypatch.setattr(speed, "fit_rates", lambda *timings: fitted.append(timings) or (7.0, 0.5))
    recipe = {"model_name": "unet", "unet/depth": 3, "unet/filters": 16, "unet/backbone": "none",
              "input_size": 64, "policy": "resize", "batch_size": 2, "loss": "ce",
              "learning_rate": 1e-3, "aug_strength": 0.0}
    costs = plan.calibrate(hypermodel, recipe, 2, models, None)
    assert built == [16, 8]
    assert timed == [models[1].params, models[0].params]  # each timed on its own model
    first, second = fitted[0]  # the recipe's step (batch 2 at 64x64, 3x the forward), then the sibling's
    assert first.flops == pytest.approx(64 * 64 * 2 * 3 * models[1].train_flops_per_pixel)
    assert second.flops == pytest.approx(64 * 64 * 2 * 3 * models[0].train_flops_per_pixel)
    assert (costs.gflops, costs.gelements) == (7.0, 0.5)
