"""autoseg.speed's two-term cost model: an epoch's FLOPs at one rate and its activations at
another, fitted from timed steps of the recipe's model and a sibling of another width."""

from __future__ import annotations

import dataclasses

import pytest

from autoseg import plan, speed


def unet_cost(filters: int, depth: int = 4) -> speed.ModelCost:
    """A plain U-Net by hand: FLOPs grow with the width's square, activations with the width
    (at 32 filters, the counts benchmarks/cost_model.py printed: 425 kFLOPs, 1056 activations
    a pixel)."""
    width = filters / 32
    return speed.ModelCost(
        model_name="unet", options={"depth": depth, "filters": filters, "backbone": "none"},
        key="unet", family="unet", train_flops_per_pixel=425e3 * width**2,
        infer_flops_per_pixel=425e3 * width**2, static_bytes=0,
        sample_bytes_per_pixel=1000.0 * width, params=int(2e6 * width**2),
        train_elements_per_pixel=1056.0 * width, infer_elements_per_pixel=528.0 * width,
    )


#: The float32 fit on the EPYC (RESULTS.md): 214 GFLOP/s, 1.74 G activations/s.
GFLOPS, GELEMENTS = 214.0, 1.74


def seconds_at(cost: speed.ModelCost, gflops: float, gelements: float, batch: int = 4,
               size: int = 256) -> float:
    """A training step's seconds on a machine with these two rates (float32 U-Net)."""
    pixels = size * size * batch
    return pixels * 3 * (cost.train_flops_per_pixel / gflops
                         + cost.train_elements_per_pixel / gelements) / 1e9


def test_two_widths_give_back_both_rates():
    wide, narrow = unet_cost(32), unet_cost(16)
    times = [speed.timing(c, (256, 256), 4, seconds_at(c, GFLOPS, GELEMENTS))
             for c in (wide, narrow)]
    gflops, gelements, measured = speed.fit_rates(*times)
    assert measured
    assert gflops == pytest.approx(GFLOPS)
    assert gelements == pytest.approx(GELEMENTS)


def test_the_two_term_model_predicts_a_narrow_unet_that_flops_alone_do_not():
    """Calibrated on the 32-filter U-Net alone, FLOPs alone predict the 16-filter one 1.24x
    too fast (as benchmarks/cost_model.py measured in float32: 1.24); with the sibling, the
    two rates predict both, and the 64-filter one too."""
    costs = {f: unet_cost(f) for f in (16, 32, 64)}
    truth = {f: seconds_at(c, GFLOPS, GELEMENTS) for f, c in costs.items()}
    timings = {f: speed.timing(c, (256, 256), 4, truth[f]) for f, c in costs.items()}

    flops_only = speed.CostModel(gflops=timings[32].flops / timings[32].seconds / 1e9)
    gflops, gelements, _ = speed.fit_rates(timings[32], timings[16])
    both = speed.CostModel(gflops=gflops, gelements=gelements)

    def step(model, filters):  # one step's worth: 4 crops, no validation
        return model.epoch_seconds(costs[filters], (256, 256), 4, 0)

    assert step(flops_only, 32) == pytest.approx(truth[32])
    assert truth[16] / step(flops_only, 16) == pytest.approx(1.24, abs=0.01)
    for filters in (16, 32, 64):
        assert step(both, filters) == pytest.approx(truth[filters])


@pytest.mark.parametrize("case", [
    "one timing",
    "a narrow step under a quarter of the wide one",  # a negative activation term
    "a narrow step slower than the wide one",  # a negative FLOP term
    "two models of the same intensity",
    "a ratio of the rates 10x off the usual one",
])
def test_rates_keep_the_usual_ratio_when_the_timings_cannot_split_them(case):
    """Without a second timing that tells the terms apart, the rates keep the ratio given
    and give the first timing exactly."""
    wide, narrow = unet_cost(32), unet_cost(16)
    first = speed.timing(wide, (256, 256), 4, 2.0)
    second = {
        "one timing": None,
        "a narrow step under a quarter of the wide one": speed.timing(narrow, (256, 256), 4, 0.4),
        "a narrow step slower than the wide one": speed.timing(narrow, (256, 256), 4, 2.5),
        "two models of the same intensity": speed.timing(wide, (256, 256), 8, 4.1),
        "a ratio of the rates 10x off the usual one": speed.timing(
            narrow, (256, 256), 4, seconds_at(narrow, 214.0, 0.174) * 2.0
            / seconds_at(wide, 214.0, 0.174)),
    }[case]
    # (the last pair is exact at 1230 FLOPs an activation, 10x the ratio given)
    gflops, gelements, measured = speed.fit_rates(first, second, ratio=123.0)
    assert not measured, case
    assert gflops / gelements == pytest.approx(123.0)
    model = speed.CostModel(gflops=gflops, gelements=gelements)
    assert model.epoch_seconds(wide, (256, 256), 4, 0) == pytest.approx(2.0)


def test_the_assumed_ratio_is_the_precisions():
    assert speed.flops_per_element("mixed_bfloat16") > speed.flops_per_element("float32")
    assert speed.flops_per_element("something new") == speed.flops_per_element("float32")


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


def test_the_sibling_is_the_narrower_width_nearest_half_the_recipes():
    models = [unet_cost(f) for f in (8, 16, 32, 64)] + [unet_cost(16, depth=5)]
    recipe = {"model_name": "unet", "unet/depth": 4, "unet/filters": 32, "unet/backbone": "none",
              "input_size": 256, "policy": "resize", "batch_size": 4}
    assert plan.calibration_sibling(recipe, models, None).options["filters"] == 16
    assert plan.calibration_sibling({**recipe, "unet/filters": 64}, models, None
                                    ).options["filters"] == 32
    # Never a wider one (it would cost the calibration more than the recipe), nor another
    # depth: no sibling (the usual ratio).
    assert plan.calibration_sibling({**recipe, "unet/filters": 8}, models, None) is None
    assert plan.calibration_sibling(recipe, [unet_cost(32), unet_cost(16, depth=5)], None) is None
    # A model without filters has none.
    light = dataclasses.replace(unet_cost(16), model_name="segnet", options={"backbone": "x"})
    assert plan.calibration_sibling({"model_name": "segnet", "segnet/backbone": "x",
                                     "input_size": 256, "policy": "resize", "batch_size": 4},
                                    [light], None) is None
    # A sibling over the memory budget is not timed.
    assert plan.calibration_sibling(recipe, models, 1) is None


def test_a_plan_saved_before_the_activation_term_predicts_from_flops_alone():
    """plan.json written before this change: costs without `gelements`, models without
    activation counts. It loads and predicts as it did, FLOPs alone."""
    saved = {"gflops": 50.0, "fixed_seconds": 20.0, "efficiency": {"unet": 1.0}, "observed": {}}
    old_cost = {k: v for k, v in dataclasses.asdict(unet_cost(32)).items()
                if not k.endswith("elements_per_pixel")}
    model, cost = speed.CostModel.from_dict(saved), speed.ModelCost(**old_cost)
    assert model.gelements is None and not model.gelements_measured
    assert model.epoch_seconds(cost, (256, 256), 4, 0) == pytest.approx(
        256 * 256 * 4 * 3 * cost.train_flops_per_pixel / 50e9)


def test_a_measured_model_records_its_activations(tmp_path):
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
    monkeypatch.setattr(speed, "fit_rates",
                        lambda *timings, ratio: fitted.append(timings) or (7.0, 0.5, True))
    recipe = {"model_name": "unet", "unet/depth": 3, "unet/filters": 16, "unet/backbone": "none",
              "input_size": 64, "policy": "resize", "batch_size": 2, "loss": "ce",
              "learning_rate": 1e-3, "aug_strength": 0.0}
    costs = plan.calibrate(hypermodel, recipe, 2, models, None)
    assert built == [16, 8]
    assert timed == [models[1].params, models[0].params]  # each timed on its own model
    first, second = fitted[0]  # the recipe's step (batch 2 at 64x64, 3x the forward), the sibling's
    assert first.flops == pytest.approx(64 * 64 * 2 * 3 * models[1].train_flops_per_pixel)
    assert second.flops == pytest.approx(64 * 64 * 2 * 3 * models[0].train_flops_per_pixel)
    assert (costs.gflops, costs.gelements, costs.gelements_measured) == (7.0, 0.5, True)


@pytest.mark.parametrize("measured, says", [
    (True, "50 GFLOP/s in its convolutions, 0.40 G activations/s in its other layers"),
    (False, "0.40 G activations/s in its other layers (assumed: 125 FLOPs an activation)"),
])
def test_the_plan_says_both_rates_and_whether_the_second_was_measured(measured, says):
    from autoseg.search_space import load_space

    space = load_space({"models": {"unet": {"depth": 4, "filters": [16, 32], "backbone": "none"}},
                        "input_size": 256, "policy": "resize", "batch_size": [4]})
    data = plan.DataSummary(train_images=40, val_sizes=[(256, 256)] * 8, median_size=(256, 256),
                            class_fraction={"a": 0.9, "b": 0.1})
    costs = speed.CostModel(gflops=50.0, gelements=0.4, gelements_measured=measured)
    p = plan.make_plan(space, [unet_cost(16), unet_cost(32)], data,
                       plan.Machine(device="cpu", precision="float32"), costs, 1800, None)
    assert says in p.lines()[0]
