"""Whether a planned search explores at all (`plan.EXPLORE_AFTER_IMAGES`, `--explore`): below
that many crops of the recipe alone in the budget, the recipe takes the whole budget."""

import copy

import pytest

from autoseg import plan
from autoseg.errors import ConfigError
from test_plan import CPU, CWFID_SPACE, GPU, FIXED, cost_model, make_space, models_of, summary


def cwfid(budget, machine=CPU, gflops=50.0, explore="auto", train=40):
    space = make_space(CWFID_SPACE)
    return plan.make_plan(space, models_of(space), summary(train=train), machine,
                          cost_model(gflops), budget, None, explore=explore)


def whole_budget_crops(p, epoch_seconds=None):
    """By hand: whole epochs of the recipe in the budget, less a trial's fixed cost."""
    seconds = epoch_seconds or p.epoch_seconds(p.recipe)
    return int((p.budget_seconds - FIXED) // seconds) * p.passes_per_epoch * 40


@pytest.mark.parametrize("budget", [1800, 3600])
def test_a_cpu_hour_or_less_gives_the_recipe_the_whole_budget_and_says_why(budget):
    p = cwfid(budget)
    crops = whole_budget_crops(p)
    assert p.budget_crops() == crops < plan.EXPLORE_AFTER_IMAGES
    assert p.recipe_only and p.shares == plan.RECIPE_ONLY and not p.forks_recipe
    assert p.recipe_epochs == int((budget - FIXED) // p.epoch_seconds(p.recipe))
    assert p.schedule_extension() is None  # one schedule, its own
    text = "\n".join(p.lines())
    assert (f"[plan] recipe only: the recipe alone trains ~{crops} crops in the budget "
            f"(~{p.epoch_seconds(p.recipe):.0f} s an epoch), fewer than "
            f"{plan.EXPLORE_AFTER_IMAGES}") in text
    assert "`--explore always` explores anyway): the recipe gets the whole budget" in text
    assert "forking the recipe" not in text


@pytest.mark.parametrize("budget", [3600, 2 * 3600])
def test_explore_always_plans_exploration_where_it_fits_as_before(budget):
    p = cwfid(budget, explore="always")
    assert not p.recipe_only and p.exploration == "forks" and p.forks_recipe
    assert p.budget_crops() < plan.EXPLORE_AFTER_IMAGES  # the same budget as above


def test_a_budget_whose_crops_pass_the_threshold_explores():
    # The shortest budget past the threshold at this machine's epoch time, and one epoch less.
    probe = cwfid(3600)
    seconds = probe.epoch_seconds(probe.recipe)
    per_epoch = probe.passes_per_epoch * 40
    epochs = -(-plan.EXPLORE_AFTER_IMAGES // per_epoch)
    enough = cwfid(FIXED + epochs * seconds + 1)
    assert enough.budget_crops() >= plan.EXPLORE_AFTER_IMAGES and not enough.recipe_only
    short = cwfid(FIXED + (epochs - 1) * seconds + 1)
    assert short.budget_crops() < plan.EXPLORE_AFTER_IMAGES and short.recipe_only


def test_the_decision_follows_the_machine_a_faster_one_explores_in_the_same_hour():
    slow, fast = cwfid(3600), cwfid(3600, machine=GPU, gflops=5000.0)
    assert slow.recipe_only and slow.budget_crops() < plan.EXPLORE_AFTER_IMAGES
    assert not fast.recipe_only and fast.budget_crops() >= plan.EXPLORE_AFTER_IMAGES


def test_a_recipe_measured_slower_than_planned_takes_the_budget_when_its_crops_fall_short():
    p = cwfid(8 * 3600)
    planned = p.epoch_seconds(p.recipe)
    assert not p.recipe_only and p.budget_crops() >= plan.EXPLORE_AFTER_IMAGES
    assert plan.recipe_takes_all(p, planned) is None
    slower = 3 * planned  # a third of the crops: under the threshold
    crops = whole_budget_crops(p, slower)
    assert crops < plan.EXPLORE_AFTER_IMAGES
    reason = plan.recipe_takes_all(p, slower)
    assert reason == (f"the recipe alone trains ~{crops} crops in the budget ({slower:.0f} s an "
                      f"epoch), fewer than {plan.EXPLORE_AFTER_IMAGES}, where every epoch it "
                      "gets is worth more than what exploring teaches (`--explore always` "
                      "explores anyway); the recipe trains to the end of the budget")
    always = cwfid(8 * 3600, explore="always")
    assert not (plan.recipe_takes_all(always, slower) or "").startswith("the recipe alone trains")


def test_explore_is_kept_in_the_plan_file_and_an_older_plan_explored():
    p = cwfid(3600)
    assert plan.Plan.from_dict(copy.deepcopy(p.to_dict())).explore == "auto"
    older = {k: v for k, v in p.to_dict().items() if k != "explore"}
    assert plan.Plan.from_dict(older).explore == "always"  # saved before the option existed


def test_an_unknown_explore_value_is_refused_before_anything_runs(tiny_dataset, tmp_path):
    import autoseg

    with pytest.raises(ConfigError, match="--explore 'sometimes' is unknown. Valid: auto, always"):
        autoseg.search(tiny_dataset, out=tmp_path / "run", time_budget="1m", explore="sometimes")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("explore", ["auto", "always"])
def test_autoseg_plan_prints_the_decision_the_option_makes(tiny_dataset, capsys, monkeypatch,
                                                           explore):
    from autoseg.cli import main

    monkeypatch.setenv("AUTOSEG_GFLOPS", "0.5")  # a slow machine, and no timing here
    code = main(["plan", str(tiny_dataset), "--space", "ci", "--time-budget", "5m",
                 "--explore", explore])
    out = capsys.readouterr().out
    assert code == 0, out
    decided = "[plan] recipe only: the recipe alone trains ~" in out
    assert decided == (explore == "auto"), out


@pytest.mark.parametrize("explore", ["auto", "always"])
def test_search_hands_its_explore_option_to_the_plan(tiny_dataset, tmp_path, monkeypatch,
                                                    explore):
    import autoseg

    seen = {}

    class Planned(Exception):
        pass

    def plan_search(*args, **kwargs):
        seen.update(kwargs)
        raise Planned

    monkeypatch.setattr(plan, "plan_search", plan_search)
    with pytest.raises(Planned):
        autoseg.search(tiny_dataset, out=tmp_path / "run", time_budget="1m", explore=explore)
    assert seen["explore"] == explore


def test_the_threshold_quoted_in_the_help_and_the_readme_is_the_code_s():
    import argparse
    from pathlib import Path

    from autoseg.commands import search as search_command

    parser = argparse.ArgumentParser()
    search_command.add_parser(parser.add_subparsers())
    help_text = " ".join(parser._subparsers._group_actions[0].choices["search"].format_help().split())
    assert f"at least {plan.EXPLORE_AFTER_IMAGES} crops" in help_text
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert f"at least {plan.EXPLORE_AFTER_IMAGES} crops in the whole budget" in readme
    assert f"fewer than {plan.EXPLORE_AFTER_IMAGES}," in readme


def test_the_command_lines_choices_are_the_plans():
    from autoseg.commands import search as search_command

    assert search_command.EXPLORE_CHOICES == plan.EXPLORE_MODES
    assert search_command.FINISH_ON_CHOICES == plan.FINISH_ON


def test_a_resumed_run_says_which_options_its_kept_plan_overrides(tmp_path):
    import json
    import types

    from autoseg import search
    from autoseg.run_dir import PLAN_FILE

    kept = cwfid(3600, explore="always")
    (tmp_path / PLAN_FILE).write_text(json.dumps(kept.to_dict()))
    lines = []
    run = search._Run(options=search.SearchOptions(dataset="data", finish_on="train+val"),
                      log=lines.append, rundir=tmp_path, resuming=True,
                      hypermodel=types.SimpleNamespace())
    search._make_plan(run)
    assert run.plan.explore == "always" and run.plan.finish_on == "train"
    told = [line for line in lines if "ignored" in line]
    assert lines[:3] == [f"[plan] kept from {tmp_path / PLAN_FILE}", *told] and told == [
        "[plan] --finish-on train+val ignored: the kept plan has train; --overwrite plans afresh",
        "[plan] --explore auto ignored: the kept plan has always; --overwrite plans afresh"]
    assert lines[3:] == kept.lines()
    lines.clear()
    run.options = search.SearchOptions(dataset="data", explore="always")
    search._make_plan(run)
    assert lines == [f"[plan] kept from {tmp_path / PLAN_FILE}", *kept.lines()]
