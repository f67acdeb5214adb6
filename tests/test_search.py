"""The search end to end: CLI, leaderboard, failures, budgets, resume."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoseg.cli import main

REPO = Path(__file__).resolve().parent.parent
CI_ARGS = ["--space", "ci", "--tuner", "random"]


def read_rows(rundir: Path) -> list[dict]:
    with open(rundir / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One tiny search through the CLI, shared by the tests that read its results."""
    from conftest import write_canonical_dataset

    root = tmp_path_factory.mktemp("search")
    dataset = write_canonical_dataset(root / "data", num_images=8, size=(48, 64))
    rundir = root / "run"
    code = main(["search", "--dataset", str(dataset), *CI_ARGS, "--max-trials", "2",
                 "--out", str(rundir)])
    return code, dataset, rundir


def test_search_completes_every_trial_and_writes_the_leaderboard(searched):
    code, _, rundir = searched
    assert code == 0
    rows = read_rows(rundir)
    assert [r["status"] for r in rows] == ["COMPLETED", "COMPLETED"]
    assert sorted(r["rank"] for r in rows) == ["1", "2"]
    header = list(rows[0])
    assert header[:4] == ["rank", "trial_id", "status", "val_mean_iou"]
    for column in ("model_name", "input_size", "batch_size", "loss", "aug_strength",
                   "learning_rate", "val_iou_background", "val_iou_crop", "val_iou_weed",
                   "epochs", "params", "train_seconds", "predicted_peak_memory_mb",
                   "measured_peak_memory_mb", "message"):
        assert column in header, column
    for row in rows:
        assert 0.0 <= float(row["val_mean_iou"]) <= 1.0
        assert int(row["epochs"]) == 2  # ci.yaml max_epochs
        assert int(row["params"]) > 0 and float(row["train_seconds"]) > 0
        assert float(row["predicted_peak_memory_mb"]) > 0 and float(row["measured_peak_memory_mb"]) > 0
        model = row["model_name"]
        assert row[f"{model}/depth"] == "3"
        other = "light_unet" if model == "unet" else "unet"
        assert row.get(f"{other}/depth", "") == ""  # inactive: blank


def test_search_writes_run_files_and_tensorboard_logs(searched):
    _, dataset, rundir = searched
    run = json.loads((rundir / "run.json").read_text())
    assert run["classes"] == ["background", "crop", "weed"]
    assert run["dataset"] == str(dataset.resolve())
    assert len(run["split"]["train"]) + len(run["split"]["val"]) == 8
    assert (rundir / "space.yaml").is_file()
    logs = list((rundir / "tensorboard").iterdir())
    assert len(logs) == 2  # one folder per trial
    for trial in ("0", "1"):
        record = json.loads((rundir / "trials" / f"trial_{trial}" / "autoseg.json").read_text())
        assert record["status"] == "COMPLETED"


def test_leaderboard_command_prints_the_best_trial(searched, capsys):
    _, _, rundir = searched
    assert main(["leaderboard", str(rundir)]) == 0
    out = capsys.readouterr().out
    best = min(read_rows(rundir), key=lambda r: int(r["rank"]))
    assert f"trial {best['trial_id']}" in out


def test_rerun_resumes_without_repeating_completed_trials(searched, capsys):
    _, dataset, rundir = searched
    before = read_rows(rundir)
    code = main(["search", "--dataset", str(dataset), *CI_ARGS, "--max-trials", "2",
                 "--out", str(rundir)])
    assert code == 0
    assert "resuming" in capsys.readouterr().out
    assert read_rows(rundir) == before


def test_rerun_with_another_space_is_refused(searched, capsys):
    _, dataset, rundir = searched
    code = main(["search", "--dataset", str(dataset), "--space", "quick", "--out", str(rundir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds a different search" in err and "--overwrite" in err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--space", "nope.yaml"], "neither a file nor a bundled space"),
        (["--space", "ci", "--memory-budget", "1MB"], "fits no configuration"),
        (["--space", "ci", "--time-budget", "soon"], "is not a duration"),
        (["--space", "ci", "--objective", "val_iou_tree"], "Valid objectives"),
        (["--space", "ci", "--max-trials", "0"], "--max-trials must be at least 1"),
    ],
)
def test_bad_input_fails_before_any_trial(tiny_dataset, tmp_path, capsys, args, fragment):
    rundir = tmp_path / "run"
    code = main(["search", "--dataset", str(tiny_dataset), "--out", str(rundir), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and fragment in err
    assert "Traceback" not in err
    assert not (rundir / "trials").exists()


def test_an_unknown_finish_on_is_a_clear_error(tmp_path):
    from autoseg.errors import ConfigError
    from autoseg.search import search

    with pytest.raises(ConfigError, match=r"--finish-on 'val' is unknown. Valid: train, train\+val"):
        search(tmp_path, finish_on="val", out=tmp_path / "run", log=lambda line: None)
    assert not (tmp_path / "run").exists()


def test_bayesian_without_scikit_learn_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sklearn" else real(name, *a))
    code = main(["search", "--dataset", str(tmp_path), "--tuner", "bayesian",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "needs scikit-learn" in err and "autoseg[bayesian]" in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    code = main(["search", "--dataset", str(tmp_path / "nothing"), "--space", "ci"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow  # ~40 s: several real trials; the fast lane keeps one search per path
def test_diverging_trial_fails_with_a_reason_and_the_search_goes_on(tiny_dataset, tmp_path,
                                                                    monkeypatch):
    import keras

    # The exploding loss is registered here, in this process only.
    monkeypatch.setenv("AUTOSEG_TRIAL_PROCESS", "0")

    from autoseg import registry, search
    from autoseg.losses import CrossEntropyLoss

    @keras.saving.register_keras_serializable(package="autoseg_tests")
    class ExplodingLoss(CrossEntropyLoss):
        def compute(self, one_hot, probabilities, pixel_weight, num_valid):
            return super().compute(one_hot, probabilities, pixel_weight, num_valid) * float("nan")

    if "nan_loss_for_tests" not in registry.LOSSES:
        registry.register_loss("nan_loss_for_tests")(lambda n, class_weights=None, ignore_index=255: ExplodingLoss(n, ignore_index=ignore_index))
    space = {"models": {"light_unet": {"depth": 3, "filters": 4}}, "input_size": 32,
             "policy": "resize", "batch_size": [4], "aug_strength": 0.0,
             "loss": ["nan_loss_for_tests", "ce"], "learning_rate": 0.003, "max_epochs": 1}
    result = search.search(tiny_dataset, space=space, out=tmp_path / "run", tuner="grid",
                           max_trials=2, log=lambda line: None)
    by_loss = {r["loss"]: r for r in result.rows}
    assert by_loss["nan_loss_for_tests"]["status"] == "FAILED"
    assert "loss diverged" in by_loss["nan_loss_for_tests"]["message"]
    assert by_loss["ce"]["status"] == "COMPLETED"
    assert result.best["loss"] == "ce"


def test_search_where_no_batch_size_fits_stops_before_any_trial(tiny_dataset, tmp_path, capsys):
    """The plan sees that the space's smallest batch size fits no model: exit 2, nothing
    written (before the plan, every trial ran and failed on it)."""
    from autoseg import budget

    # A budget that fits the smallest model at batch 1 but not at the space's only batch
    # size, 64.
    import keras

    from autoseg import models

    model = models.build("light_unet", 3, (32, 32, 3), depth=3, filters=4)
    need_1 = budget.estimate_training_memory(model, 1, family="unet").total_bytes
    need_64 = budget.estimate_training_memory(model, 64, family="unet").total_bytes
    assert need_64 > need_1
    keras.backend.clear_session()
    space = tmp_path / "space.yaml"
    space.write_text(
        "models: {light_unet: {depth: 3, filters: 4}}\ninput_size: 32\npolicy: resize\n"
        "batch_size: [64]\nloss: ce\naug_strength: 0.0\nlearning_rate: 0.003\nmax_epochs: 1\n"
    )
    code = main(["search", "--dataset", str(tiny_dataset), "--space", str(space), "--tuner",
                 "random", "--max-trials", "2", "--out", str(tmp_path / "run"),
                 "--memory-budget", str((need_1 + need_64) // 2)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "fits no configuration" in err and "at batch 64" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_plain_kerastuner_can_drive_the_hypermodel(tiny_dataset, tmp_path):
    """The README's plain-KerasTuner example."""
    import keras_tuner as kt

    from autoseg.hypermodel import AutosegHyperModel, TrainingData

    data = TrainingData.from_path(tiny_dataset)
    hypermodel = AutosegHyperModel(space="ci", data=data)
    tuner = kt.RandomSearch(hypermodel, objective=kt.Objective("val_mean_iou", "max"),
                            max_trials=1, directory=str(tmp_path), project_name="demo")
    tuner.search(epochs=1, verbose=0)
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "COMPLETED"
    assert 0.0 <= trial.score <= 1.0


def _out_of_memory(times: int):
    """A Keras callback that raises TensorFlow's real out-of-memory error at the first
    `times` training batches it sees (over the retry too: `fit` reuses the callback)."""
    import keras
    import tensorflow as tf

    class OutOfMemory(keras.callbacks.Callback):
        raised = 0

        def on_train_batch_begin(self, batch, logs=None):
            if self.raised < times:
                self.raised += 1
                raise tf.errors.ResourceExhaustedError(
                    None, None, "OOM when allocating tensor with shape [4,32,32,8]")

    return OutOfMemory()


@pytest.mark.parametrize("times", [1, 2])
def test_running_out_of_memory_halves_the_batch_once_then_fails_the_trial(tiny_dataset, tmp_path,
                                                                         times):
    import keras_tuner as kt

    from autoseg.hypermodel import AutosegHyperModel, TrainingData

    data = TrainingData.from_path(tiny_dataset)
    import yaml

    space = {**yaml.safe_load((REPO / "search_spaces" / "ci.yaml").read_text()), "batch_size": 4}
    hypermodel = AutosegHyperModel(space=space, data=data)
    tuner = kt.RandomSearch(hypermodel, objective=kt.Objective("val_mean_iou", "max"),
                            max_trials=1, directory=str(tmp_path), project_name="oom",
                            max_consecutive_failed_trials=1)
    try:
        tuner.search(epochs=1, verbose=0, callbacks=[_out_of_memory(times)])
    except RuntimeError:  # KerasTuner's "too many failed trials", after a failed one
        assert times == 2
    (trial,) = tuner.oracle.trials.values()
    record = hypermodel.last_fit
    if times == 1:  # retried at batch 2, and trained
        assert trial.status == "COMPLETED"
        assert record["batch_size"] == 2
        assert record["message"] == "out of memory at batch 4; retried with 2"
    else:  # out of memory at batch 2 too: the trial fails for its configuration
        assert trial.status == "FAILED"
        assert record["batch_size"] == 2 and record["configuration_failure"] is True
        assert record["message"].startswith("out of memory at batch 2: OOM when allocating")


def test_the_drawn_rare_crop_share_reaches_the_training_pipeline(tiny_dataset, tmp_path,
                                                                 monkeypatch):
    import keras_tuner as kt
    import yaml

    from autoseg.data import pipeline
    from autoseg.hypermodel import AutosegHyperModel, TrainingData

    calls = []
    real = pipeline.make_dataset

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "make_dataset", spy)
    space = {**yaml.safe_load((REPO / "search_spaces" / "ci.yaml").read_text()),
             "policy": "crop", "crop_scale": 1.0, "rare_crops": [0.5]}
    hypermodel = AutosegHyperModel(space=space, data=TrainingData.from_path(tiny_dataset))
    tuner = kt.RandomSearch(hypermodel, objective=kt.Objective("val_mean_iou", "max"),
                            max_trials=1, directory=str(tmp_path), project_name="rare")
    tuner.search(epochs=1, verbose=0)
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "COMPLETED"
    train = [c for c in calls if c["training"]]
    assert train and all(c.get("rare_crops", 0.0) == 0.5 for c in train)
    assert all(c.get("rare_crops", 0.0) == 0.0 for c in calls if not c["training"])


@pytest.mark.parametrize("widen", [False, True])
def test_the_finish_on_train_and_val_trains_on_the_validation_photos_too(tiny_dataset,
                                                                         monkeypatch, widen):
    import keras_tuner as kt

    from autoseg.data import pipeline
    from autoseg.hypermodel import AutosegHyperModel, TrainingData
    from autoseg.plan import TRAIN_AND_VAL, TRAIN_ON

    calls = []
    real = pipeline.make_dataset

    def spy(dataset, stems, **kwargs):
        calls.append((kwargs["training"], list(stems)))
        return real(dataset, stems, **kwargs)

    monkeypatch.setattr(pipeline, "make_dataset", spy)
    data = TrainingData.from_path(tiny_dataset)
    hypermodel = AutosegHyperModel(space="ci", data=data)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    if widen:  # what the planned oracle's finish sets (`Plan.finish_on`)
        hp.values[TRAIN_ON] = TRAIN_AND_VAL
    hypermodel.fit(hp, model, epochs=1, verbose=0)
    train = [stems for training, stems in calls if training]
    val = [stems for training, stems in calls if not training]
    expected = data.train_stems + (data.val_stems if widen else [])
    assert train and all(sorted(s) == sorted(expected) for s in train)
    assert val and all(sorted(s) == sorted(data.val_stems) for s in val)  # scored as before
    assert hypermodel.last_fit.get("trained_on") == (TRAIN_AND_VAL if widen else None)


#: A space of pix2pix alone: it builds its optimizer in `compile`, before a checkpoint loads.
PIX2PIX_SPACE = {
    "models": {"pix2pix": {"generator_options": {"depth": 3, "filters": 4}, "disc_filters": 4,
                           "disc_layers": 2}},
    "input_size": 32, "policy": "resize", "batch_size": 2, "loss": "ce", "aug_strength": 0.0,
    "learning_rate": 0.01, "max_epochs": 2,
}


@pytest.mark.parametrize("space", ["ci", PIX2PIX_SPACE], ids=["ci", "pix2pix"])
def test_a_trial_builds_its_optimizer_before_the_first_step_and_keeps_its_learning_rate(
        tiny_dataset, tmp_path, space):
    """The optimizer's variables exist when `fit` starts (else the first step is traced twice),
    and a continued trial trains at its own learning rate, not the decayed one saved in its
    checkpoint (which pix2pix's optimizer, built in `compile`, restores)."""
    import keras
    import keras_tuner as kt

    from autoseg.hypermodel import AutosegHyperModel, TrainingData

    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0 and not self.seen:  # the first step of this fit
                self.seen = True
                seen.append((self.model.optimizer.built,
                             float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))))

        def on_train_begin(self, logs=None):
            self.seen = False

    hypermodel = AutosegHyperModel(space=space, data=TrainingData.from_path(tiny_dataset))
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    rate = float(hp.get("learning_rate"))
    hypermodel.fit(hp, model, epochs=2, verbose=0, callbacks=[Spy()])
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) < rate  # decayed
    model.save_weights(tmp_path / "checkpoint.weights.h5")
    continued = hypermodel.build(hp)  # as trial_process continues a trial
    continued.load_weights(tmp_path / "checkpoint.weights.h5")
    hypermodel.fit(hp, continued, epochs=1, verbose=0, callbacks=[Spy()])
    assert seen == [(True, pytest.approx(rate)), (True, pytest.approx(rate))]


def test_a_continued_trial_restores_its_past_trials_adam_moments_unless_its_loss_changed(
        tiny_dataset, tmp_path):
    """A continued trial's `build` builds the optimizer, so loading the past trial's
    checkpoint restores Adam's step count and moments (a fresh Adam's first steps set the
    weights back); a fork marked `FRESH_OPTIMIZER` (another loss) starts with fresh ones."""
    import keras
    import keras_tuner as kt
    import numpy as np

    from autoseg.hypermodel import AutosegHyperModel, TrainingData
    from autoseg.plan import FRESH_OPTIMIZER

    hypermodel = AutosegHyperModel(space="ci", data=TrainingData.from_path(tiny_dataset))
    hp = kt.HyperParameters()
    past = hypermodel.build(hp)
    hypermodel.fit(hp, past, epochs=1, verbose=0)
    steps = int(keras.ops.convert_to_numpy(past.optimizer.iterations))
    assert steps > 0
    past.save_weights(tmp_path / "checkpoint.weights.h5")
    moments = [keras.ops.convert_to_numpy(v) for v in past.optimizer.variables[2:]]

    def continued(**extra):
        values = kt.HyperParameters()
        values.values.update({**hp.values, "tuner/trial_id": "0000", **extra})
        model = hypermodel.build(values)
        model.load_weights(tmp_path / "checkpoint.weights.h5")
        return model

    restored = continued()
    assert int(keras.ops.convert_to_numpy(restored.optimizer.iterations)) == steps
    for saved, now in zip(moments, restored.optimizer.variables[2:]):
        np.testing.assert_array_equal(saved, keras.ops.convert_to_numpy(now))
    fresh = continued(**{FRESH_OPTIMIZER: True})
    assert not fresh.optimizer.built  # built empty by `fit`, not from the checkpoint


def test_a_fork_trains_along_the_recipes_schedule_and_the_recipe_records_its_end(tiny_dataset):
    """The recipe of a plan that forks it records where its learning rate reaches the floor
    (`schedule_epochs`: `Plan.schedule_extension` applied to its epochs); a fork given that end
    (`SCHEDULE_EPOCHS`) starts at the recipe's rate there, not at a fresh decay's."""
    import types

    import keras
    import keras_tuner as kt

    from autoseg.hypermodel import AutosegHyperModel, TrainingData
    from autoseg.plan import RECIPE_BRACKET, SCHEDULE_EPOCHS

    firsts = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                firsts.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    hypermodel = AutosegHyperModel(space="ci", data=TrainingData.from_path(tiny_dataset))
    hypermodel.plan = types.SimpleNamespace(  # the parts of a forking Plan fit reads
        recipe_only=False, shares={"recipe": 0.4}, recipe_seconds=lambda: 1e6, passes_per_epoch=1,
        admits=lambda values: None,
        schedule_extension=lambda: (2.0, 1))
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    rate = float(hp.get("learning_rate"))
    hp.values.update({"tuner/bracket": RECIPE_BRACKET, "tuner/epochs": 2})
    hypermodel.fit(hp, model, epochs=2, verbose=0, callbacks=[Spy()])
    assert hypermodel.last_fit["schedule_epochs"] == 5  # 2 epochs x 2, and 1
    # Its second epoch is at 1/5 of the cosine, not at its middle.
    assert firsts[1] == pytest.approx(rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 5))))
    fork = kt.HyperParameters()
    hypermodel.build(fork)
    fork.values.update({"tuner/bracket": -3, "tuner/epochs": 4, "tuner/initial_epoch": 2,
                        SCHEDULE_EPOCHS: 5})
    firsts.clear()
    hypermodel.fit(fork, model, epochs=4, initial_epoch=2, verbose=0, callbacks=[Spy()])
    expected = [rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * e / 5))) for e in (2, 3)]
    assert firsts == pytest.approx(expected)
    assert hypermodel.last_fit["schedule_epochs"] == 5


# --- slow lane: resume after SIGKILL, hyperband/grid resume, time budget, memory hygiene --


def _search_cmd(dataset, rundir, *extra):
    return [sys.executable, "-m", "autoseg.cli", "search", "--dataset", str(dataset),
            "--space", "ci", "--out", str(rundir), *extra]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _kill_during_second_trial(cmd, rundir, timeout=300):
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            trials = rundir / "trials"
            done = list(trials.glob("trial_*/autoseg.json")) if trials.exists() else []
            started = list(trials.glob("trial_*/trial.json")) if trials.exists() else []
            if len(done) >= 1 and len(started) >= 2:
                time.sleep(1.0)  # well inside the second trial
                break
            if proc.poll() is not None:
                pytest.fail("the search ended before it could be killed:\n" + proc.stdout.read().decode())
            time.sleep(0.2)
        else:
            pytest.fail("the search did not reach its second trial in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.slow
# Trials each tuner plans for ci.yaml with --max-trials 3: Hyperband runs the plan's recipe,
# then its bracket, cut at 3 trials, uninterrupted as well.
@pytest.mark.parametrize("tuner, planned", [("random", 3), ("hyperband", 3), ("grid", 3),
                                            ("bayesian", 3)])
def test_search_killed_mid_trial_resumes_and_completes(tiny_dataset, tmp_path, tuner, planned):
    rundir = tmp_path / "run"
    extra = ["--tuner", tuner, "--max-trials", "3"]
    _kill_during_second_trial(_search_cmd(tiny_dataset, rundir, *extra), rundir)
    first = {r["trial_id"]: r for r in read_rows(rundir) if r["status"] == "COMPLETED"}
    assert first, "the first trial should have completed before the kill"
    done = subprocess.run(_search_cmd(tiny_dataset, rundir, *extra), env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_rows(rundir)
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids)) == planned
    assert all(r["status"] == "COMPLETED" for r in rows), rows
    for trial_id, row in first.items():  # kept, not re-run
        again = next(r for r in rows if r["trial_id"] == trial_id)
        assert again["train_seconds"] == row["train_seconds"]


@pytest.mark.slow
def test_time_budget_stops_starting_trials(tiny_dataset, tmp_path):
    from autoseg import search

    start = time.time()
    # 60 s: under a trial's ~30 s of start-up plus one epoch, the plan refuses the budget.
    result = search.search(tiny_dataset, space="ci", out=tmp_path / "run", tuner="random",
                           max_trials=50, time_budget=60, log=lambda line: None)
    elapsed = time.time() - start
    longest = max(float(r["train_seconds"]) for r in result.rows)
    assert len(result.rows) < 50
    assert elapsed < 60 + 2 * longest + 30  # the plan + the trial running at the deadline
    assert all(r["status"] in ("COMPLETED", "STOPPED") for r in result.rows)


@pytest.mark.slow
def test_memory_stays_flat_over_many_trials(tiny_dataset, tmp_path):
    """Under 15% growth from the 3rd trial to the 10th. In one process Keras keeps each fit's
    traced graphs (~50 MB a trial: 1.06 -> 2.26 GB over 20 trials here, so ~350 MB over these
    seven, past the 15%), so each trial runs in its own process."""
    script = f"""
import resource, sys
from autoseg import search
from autoseg.budget import _proc_status_bytes
rss = []
def log(line):
    if "ended" in line:
        rss.append(_proc_status_bytes("VmRSS"))
search.search({str(tiny_dataset)!r}, space="ci", out={str(tmp_path / 'run')!r}, tuner="random",
              max_trials=10, max_epochs=1, log=log)
assert len(rss) >= 8, rss  # trials that ended
print(rss[2], rss[-1])
"""
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    early, last = (int(v) for v in done.stdout.split()[-2:])
    assert last < early * 1.15, (early, last)


def test_the_python_api_is_autoseg_search(tiny_dataset, tmp_path):
    """`autoseg.search(...)` is the search, before and after `import autoseg.search`."""
    script = f"""
import autoseg
from autoseg.errors import ConfigError
for attempt in range(2):
    try:
        autoseg.search({str(tiny_dataset)!r}, space="ci", out={str(tmp_path / 'run')!r}, tuner="nope")
    except ConfigError as exc:
        assert "--tuner 'nope' is unknown" in str(exc), exc
    else:
        raise SystemExit("no ConfigError")
    import autoseg.search
from autoseg import search
assert search.search.__name__ == "search" and search.SearchResult
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.slow
def test_recipe_only_trains_the_plans_recipe_alone_and_says_so(tiny_dataset, tmp_path, capsys):
    """`--recipe-only`: one trial, the plan's recipe, its epochs fitted into the budget."""
    code = main(["search", "--dataset", str(tiny_dataset), "--space", "ci", "--time-budget",
                 "75s", "--recipe-only", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[plan] recipe (trial 0): unet" in out and "[plan] recipe only" in out
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    rows = read_rows(tmp_path / "run")
    assert [r["status"] for r in rows] in (["COMPLETED"], ["STOPPED"])
    trial = json.loads((tmp_path / "run" / "trials" / f"trial_{rows[0]['trial_id']}"
                        / "trial.json").read_text())
    values = trial["hyperparameters"]["values"]
    assert {k: values[k] for k in plan["recipe"]} == plan["recipe"]
    assert values["tuner/bracket"] == -2


def _raw_colour_folder(src: Path) -> Path:
    """A raw folder of colour masks (images/ + masks/), 6 photos of 48x64, 3 colours."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    colours = np.array([(0, 0, 0), (0, 255, 0), (255, 0, 0)], np.uint8)
    for i in range(6):
        labels = np.zeros((48, 64), np.uint8)
        labels[8:24, 8 + 4 * i:30 + 4 * i] = 1
        labels[30:44, 20:50] = 2
        image = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8) + 60 * labels[..., None]
        Image.fromarray(image.astype(np.uint8)).save(src / "images" / f"p{i}.png")
        Image.fromarray(colours[labels]).save(src / "masks" / f"p{i}.png")
    return src


@pytest.mark.slow  # ~45 s: three searches
def test_a_raw_folder_runs_under_its_own_name_and_an_edit_is_named_not_resumed(
        tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOSEG_CACHE_DIR", str(tmp_path / "cache"))
    src = _raw_colour_folder(tmp_path / "field_day")
    args = ["search", "--dataset", str(src), *CI_ARGS, "--max-trials", "1", "--max-epochs", "1"]
    assert main(args) == 0
    rundir = tmp_path / "runs" / "field_day"  # the folder's name, not its cache copy's
    run = json.loads((rundir / "run.json").read_text())
    assert run["source"] == str(src.resolve()) and run["dataset"] != run["source"]
    capsys.readouterr()
    # An annotation edit: the same command names the change and leaves the run as it was.
    mask = np.asarray(Image.open(src / "masks" / "p0.png")).copy()
    mask[2:6, 2:6] = (255, 0, 0)
    Image.fromarray(mask).save(src / "masks" / "p0.png")
    before = (rundir / "run.json").read_text()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "changed since it started" in err and str(src.resolve()) in err
    assert "--overwrite" in err and "--continue-on-new-data" in err and "Traceback" not in err
    assert (rundir / "run.json").read_text() == before
    assert not (tmp_path / "runs" / f"field_day-{Path(run['dataset']).name}").exists()
    # Continuing on the new data resumes the same run, now reading the new preparation.
    assert main(args + ["--max-trials", "2", "--continue-on-new-data"]) == 0
    out = capsys.readouterr().out
    assert "the data changed since the run started" in out and "resuming" in out
    after = json.loads((rundir / "run.json").read_text())
    assert after["dataset"] != run["dataset"] and after["source"] == run["source"]
    assert len(read_rows(rundir)) == 2
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["field_day"]


def test_a_run_folder_from_before_source_was_recorded_still_resumes():
    from autoseg.search import _data_change

    old = {"dataset": "/data/weeds", "fingerprint": {"images": 6}}
    same = {"source": "/data/weeds", "dataset": "/data/weeds", "fingerprint": {"images": 6}}
    assert _data_change(old, same) is None
    reprepared = {**same, "fingerprint": {"images": 7}}
    assert "prepared again" in _data_change(old, reprepared)
    other = {"source": "/data/other", "dataset": "/data/other", "fingerprint": {"images": 6}}
    assert _data_change(old, other) is None  # another dataset: refused as another search
