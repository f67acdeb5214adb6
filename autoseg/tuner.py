"""KerasTuner's own tuners, with what a segmentation search needs on top.

`make_tuner(kind, ...)` returns a `RandomSearch`, `BayesianOptimization`, `Hyperband` or
`GridSearch` whose class also mixes in `SearchRunMixin`:
- a time budget: once spent, no trial starts (a running trial stops at an epoch boundary,
  through the HyperModel's `TimeBudget` callback);
- a record per trial (`trial_<id>/autoseg.json`: status, reason, batch size used, memory
  predicted and measured, epochs, seconds) and `leaderboard.csv` rewritten after each trial;
- a line per trial start and end with the elapsed time and an ETA from the budget;
- failures that are the configuration's own (over the memory budget, diverged) do not
  count towards stopping the search; three other failures in a row stop it (KerasTuner's
  rule), since those usually mean every trial will fail;
- each trial's build and fit in its own process (`autoseg.trial_process`: Keras keeps every
  fit's traced graphs, ~50 MB a trial), and `keras.backend.clear_session()` and
  `gc.collect()` between trials for those that run in this one.

In a distributed search (`autoseg.distributed`) a worker's `oracle` is KerasTuner's
`OracleClient`, which has no `trials`, `end_order` or settable `max_trials`: on a worker the
mixin only runs trials and writes their records; the chief, which runs none, calls
`stop_if_budget_spent`, `write_leaderboard`, `_check_failures` and the log lines from hooks on
its oracle.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import time
from pathlib import Path

import keras
import keras_tuner as kt

from autoseg import atomic, leaderboard, progress, rebalance, trial_process
from autoseg.hyperband import BudgetHyperband, BudgetHyperbandOracle, trial_role
from autoseg.durations import format_duration
from autoseg.run_dir import LEADERBOARD_FILE, TRIALS_DIR, read_record, record_path
from autoseg.search_space import hyperparameter_values

TUNERS = ("hyperband", "bayesian", "random", "grid")
MAX_CONSECUTIVE_FAILURES = 3


class SearchRunMixin:
    """Budget, records, leaderboard and progress for a KerasTuner tuner (mixed in first)."""

    def _setup_run(self, rundir: Path, deadline: float | None, class_names, objective: str,
                   planned_trials: int | None, log=print):
        self.rundir = Path(rundir)
        self.deadline = deadline
        self.class_names = list(class_names)
        self.objective_name = objective
        self.planned_trials = planned_trials
        self.log = log
        self.search_start = time.time()
        self._trial_start: dict[str, float] = {}
        self._started_here = 0

    # -- the time budget -----------------------------------------------------------------
    def budget_spent(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def pre_create_trial(self):
        super().pre_create_trial()
        if not self._is_worker():  # a worker's budget is the chief's to enforce
            self.stop_if_budget_spent()

    def stop_if_budget_spent(self) -> None:
        if self.budget_spent():
            # The oracle stops when it has max_trials trials: no new trial is created.
            self.oracle.max_trials = len(self.oracle.trials)
            self.oracle._retry_queue = []

    # -- per-trial hooks -----------------------------------------------------------------
    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self._trial_start[trial.trial_id] = time.time()
        self._started_here += 1
        self.log_trial_begin(trial)

    def log_trial_begin(self, trial, worker: str | None = None) -> None:
        # One name everywhere: the trial id, as in the leaderboard, trials/trial_<id> and the
        # export's folder. The count (ids count the trials created before, from 0) is extra;
        # a worker's OracleClient cannot count trials.
        number = progress.trial_number(trial.trial_id)
        total = f"/{self.planned_trials}" if self.planned_trials else ""
        count = f" ({number}{total})" if number is not None else ""
        config = ", ".join(
            f"{k}={_short(v)}" for k, v in hyperparameter_values(trial.hyperparameters.values).items()
        )
        where = f" on {worker}" if worker else ""
        role = trial_role(trial.hyperparameters.values)
        role = f" as {role}" if role else ""
        self.log(f"[trial {trial.trial_id}] started{where}{count}{role}: {config} "
                 f"({self._clock()})")

    def seconds_left_after(self, trial) -> float | None:
        """Without a deadline: the trials planned after `trial` at the mean time of the
        trials this process ran before it, or None (no plan, or no trial ended yet)."""
        if self.deadline is not None or not self.planned_trials or self._started_here < 2:
            return None
        number = progress.trial_number(trial.trial_id)
        if number is None:
            return None
        started = self._trial_start.get(trial.trial_id, time.time())
        mean = (started - self.search_start) / (self._started_here - 1)
        return max(0, self.planned_trials - number) * mean

    def run_trial(self, trial, *args, **kwargs):
        self.hypermodel.last_fit = {}
        if (trial_process.enabled() and self.distribution_strategy is None
                and self.executions_per_trial == 1):
            return trial_process.run_trial(self, trial, *args, **kwargs)
        if not kwargs.get("verbose", getattr(self.hypermodel, "verbose", 0)):
            # The same progress lines as a trial in its own process (Keras' bar with verbose).
            callbacks = list(kwargs.get("callbacks") or [])
            relay = progress.attach(self, trial, Path(self.get_trial_dir(trial.trial_id)), callbacks)
            if relay is not None:
                callbacks.append(progress.LiveRelay(relay))
            kwargs["callbacks"] = callbacks
        return super().run_trial(trial, *args, **kwargs)

    def on_trial_end(self, trial):
        record = dict(getattr(self.hypermodel, "last_fit", {}) or {})
        if trial.status != "COMPLETED" and not record.get("message"):
            record["message"] = _last_line(trial.message)
        record["status"] = trial.status
        # Only a distributed search has workers worth naming (KerasTuner's tuner id).
        record["worker"] = self.tuner_id if os.environ.get("KERASTUNER_TUNER_ID") else None
        # Written before the oracle hears of the end: a distributed chief writes the
        # leaderboard as it does, and the message only travels here (not in KerasTuner's proto).
        self._write_record(trial.trial_id, record)
        super().on_trial_end(trial)  # oracle.end_trial + save: the trial's status is final
        final = self.oracle.get_trial(trial.trial_id)
        worker = self._is_worker()
        if final.status != record["status"]:
            record["status"] = final.status
            if worker and final.status != "COMPLETED" and not record.get("message"):
                # The chief gave up on this worker and ended the trial before it reported.
                record["message"] = (f"the chief had ended this trial as {final.status} before "
                                     "this worker reported it (see the chief's log)")
            self._write_record(trial.trial_id, record)
        if not worker:
            self.write_leaderboard()
        self.log_trial_end(trial.trial_id, final=final)
        keras.backend.clear_session()
        gc.collect()
        if not worker:
            self._check_failures()

    def log_trial_end(self, trial_id: str, final=None, worker: str | None = None) -> None:
        final = final or self.oracle.get_trial(trial_id)
        record = read_record(self.rundir, trial_id)
        score = final.score if final.status == "COMPLETED" else None
        start = self._trial_start.pop(trial_id, None)  # unknown to a restarted chief
        outcome = (
            f"{self.objective_name}={score:.4f}" if score is not None and math.isfinite(score)
            else f"{final.status}: {record.get('message') or _last_line(final.message)}"
        )
        where = f" on {worker}" if worker else ""
        took = f" in {time.time() - start:.0f}s" if start is not None else ""
        self.log(f"[trial {trial_id}] ended{where}{took}: {outcome} ({self._clock()})")
        if record.get("plan_change"):
            self.log(f"[plan] changed during trial {trial_id}: {record['plan_change']}")
        if record.get(rebalance.RECORD_KEY):
            self.log(f"[trial {trial_id}] {rebalance.describe(record[rebalance.RECORD_KEY])}")

    def _write_record(self, trial_id: str, record: dict) -> None:
        atomic.write_text(record_path(self.rundir, trial_id),
                          json.dumps(record, indent=1, default=_json_default))

    # -- records -------------------------------------------------------------------------
    def trial_rows(self) -> list[dict]:
        return collect_rows(self.oracle, self.rundir, self.objective_name)

    def write_leaderboard(self) -> None:
        leaderboard.write_leaderboard(
            self.rundir / LEADERBOARD_FILE, self.trial_rows(),
            objective=self.objective_name, direction=self.oracle.objective.direction,
            class_names=self.class_names,
        )

    def _check_failures(self) -> None:
        streak = 0
        for trial_id in self.oracle.end_order:
            trial = self.oracle.trials[trial_id]
            if trial.status != "FAILED":
                streak = 0
                continue
            # A configuration's own failure (over the memory budget, diverged, out of
            # memory) says nothing about the next trial; anything else likely repeats.
            if not read_record(self.rundir, trial_id).get("configuration_failure"):
                streak += 1
        if streak >= MAX_CONSECUTIVE_FAILURES:
            self.oracle.max_trials = len(self.oracle.trials)
            self.oracle._retry_queue = []
            self.log(f"[search] {streak} trials failed in a row; stopping the search.")

    def _clock(self) -> str:
        elapsed = time.time() - self.search_start
        text = f"elapsed {format_duration(elapsed)}"
        if self.deadline is not None:
            text += f", budget left {format_duration(max(0.0, self.deadline - time.time()))}"
        return text


def collect_rows(oracle, rundir: Path, objective: str) -> list[dict]:
    """Leaderboard rows from the oracle's trials and the trial records on disk."""
    rows = []
    for trial_id, trial in sorted(oracle.trials.items()):
        record = read_record(rundir, trial_id)
        status = trial.status
        if status == "COMPLETED" and record.get("stopped_by_budget"):
            status = "STOPPED"
        elif status in ("INVALID", "FAILED"):
            status = "FAILED"
        elif status not in ("COMPLETED",):
            status = "RUNNING"
        metrics = {}
        if trial.status == "COMPLETED":
            step = trial.best_step
            for name, observations in trial.metrics.metrics.items():
                value = _value_at(observations, step)
                if value is not None:
                    metrics[name] = value
        hps = hyperparameter_values(trial.hyperparameters.values)
        if record.get("batch_size") is not None and "batch_size" in hps:
            hps["batch_size"] = record["batch_size"]  # what was used, which the budget may lower
        rows.append({
            "trial_id": trial_id,
            "status": status,
            "hyperparameters": hps,
            "metrics": metrics,
            **{key: record.get(key) for key in leaderboard.RECORD_FIELDS},
            "message": record.get("message") or (_last_line(trial.message) if status == "FAILED" else ""),
        })
    return rows


def _value_at(observations, step):
    history = observations.get_history()
    if not history:
        return None
    for obs in history:
        if obs.step == step:
            return float(obs.value[0]) if isinstance(obs.value, list) else float(obs.value)
    obs = history[-1]
    return float(obs.value[0]) if isinstance(obs.value, list) else float(obs.value)


def _last_line(message) -> str:
    lines = [line.strip() for line in str(message or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _json_default(value):
    try:
        return value.item()
    except AttributeError:
        return str(value)


class ResumableGridSearchOracle(kt.oracles.GridSearchOracle):
    """KerasTuner's GridSearchOracle, with its grid order saved so a search can resume.

    KerasTuner 1.4.8 keeps the order of tried combinations (`_ordered_ids`) and the trials
    whose successor is still to be drawn (`_populate_next`) only in memory; a resumed grid
    search then fails with `KeyError: '<trial id>'` in `populate_space`. This saves both
    with the oracle's state.
    """

    def get_state(self):
        state = super().get_state()
        ordered = self._ordered_ids
        state["autoseg_grid"] = {
            "memory": list(ordered._memory),
            "next_index": {str(k): v for k, v in ordered._next_index.items()},
            "last_index": ordered._last_index,
            "populate_next": list(self._populate_next),
        }
        return state

    def set_state(self, state):
        super().set_state(state)
        grid = state.get("autoseg_grid")
        if not grid:
            return
        ordered = self._ordered_ids
        ordered._memory = list(grid["memory"])
        ordered._data_to_index = {data: i for i, data in enumerate(ordered._memory)}
        ordered._next_index.clear()
        ordered._next_index.update(
            {None if k == "None" else int(k): v for k, v in grid["next_index"].items()}
        )
        ordered._last_index = grid["last_index"]
        self._populate_next = list(grid["populate_next"])

    def end_trial(self, trial):
        super().end_trial(trial)
        self.save()  # the parent queues the trial after saving; keep that on disk too


def _adopt_tuner_state(project_dir: Path, tuner_id: str) -> None:
    """Lets a run started in one process resume as a distributed chief, and back.

    KerasTuner reloads the oracle only when `<project>/<tuner id>.json` exists ("tuner0"
    in one process, "chief" distributed); without it, it would start afresh over the
    existing trials. That file holds the tuner's (empty) state, so a copy of the other one
    does.
    """
    own = project_dir / f"{tuner_id}.json"
    if own.exists() or not (project_dir / "oracle.json").is_file():
        return
    for other in ("tuner0", "chief"):
        source = project_dir / f"{other}.json"
        if source.is_file():
            atomic.write_text(own, source.read_text())
            return


def _forget_finished_retries(oracle) -> None:
    """Keeps a reloaded oracle from running an ended trial again.

    KerasTuner's `end_trial` saves the oracle before it drops the trial from
    `ongoing_trials`; a process stopped in between leaves an ended trial there, and
    `reload` queues every ongoing trial to run again.
    """
    ended = set(oracle.end_order)
    oracle._retry_queue = [trial_id for trial_id in oracle._retry_queue if trial_id not in ended]


def make_tuner(kind: str, hypermodel, *, rundir: Path, objective: str, direction: str,
               max_trials: int | None, max_epochs: int, seed: int, overwrite: bool,
               deadline: float | None, class_names, log=print, cluster=None, plan=None,
               **tuner_kwargs):
    """Builds a KerasTuner tuner of `kind` writing under `rundir/trials`.

    Args:
        kind: hyperband | bayesian | random | grid.
        max_trials: Trials at most (Hyperband: None lets its brackets decide).
        max_epochs: Epochs per trial at most (Hyperband's `max_epochs`).
        cluster: An `autoseg.distributed.Cluster` for a distributed search, else None.
        plan: The search's `autoseg.plan.Plan`: Hyperband runs its recipe first and explores
            the recipe's variants; every tuner's trials skip what it drops (the HyperModel).
    """
    base = {
        "hyperband": BudgetHyperband,  # with BudgetHyperbandOracle below
        "bayesian": kt.BayesianOptimization,
        "random": kt.RandomSearch,
        "grid": kt.Tuner,  # with ResumableGridSearchOracle below
    }[kind]
    cls = type(f"Autoseg{kind.title()}", (SearchRunMixin, base), {})
    kwargs = dict(
        hypermodel=hypermodel,
        objective=kt.Objective(objective, direction),
        seed=seed,
        directory=str(rundir),
        project_name=TRIALS_DIR,
        overwrite=overwrite,
        # Our own rule (see SearchRunMixin._check_failures) replaces KerasTuner's, which
        # would also count configurations that merely exceed the memory budget.
        max_consecutive_failed_trials=10**9,
        **tuner_kwargs,
    )
    if kind == "hyperband":
        kwargs["oracle"] = BudgetHyperbandOracle(
            objective=kwargs.pop("objective"), max_epochs=max_epochs, factor=3,
            seed=kwargs.pop("seed"),
            max_consecutive_failed_trials=kwargs.pop("max_consecutive_failed_trials"),
        )
    elif kind == "grid":
        kwargs["oracle"] = ResumableGridSearchOracle(
            objective=kwargs.pop("objective"), max_trials=max_trials or 10, seed=kwargs.pop("seed"),
            max_consecutive_failed_trials=kwargs.pop("max_consecutive_failed_trials"),
        )
    else:
        kwargs["max_trials"] = max_trials or 10
    with cluster.building(rundir) if cluster else contextlib.nullcontext():
        if not (cluster and cluster.is_worker):
            _adopt_tuner_state(Path(rundir) / TRIALS_DIR, os.environ.get("KERASTUNER_TUNER_ID", "tuner0"))
        tuner = cls(**kwargs)
        if cluster:
            cluster.attach(tuner)
        if not (cluster and cluster.is_worker):
            _forget_finished_retries(tuner.oracle)
    if kind == "hyperband" and not (cluster and cluster.is_worker):
        tuner.oracle.set_budget(deadline, functools.partial(read_record, Path(rundir)))
        if plan is not None:
            tuner.oracle.set_search_plan(plan, hypermodel.space, seed=seed)
        if max_trials:
            tuner.oracle.max_trials = max_trials  # Hyperband's brackets, cut at max_trials
    planned = max_trials if kind != "hyperband" else (max_trials or None)
    tuner._setup_run(rundir, deadline, class_names, objective, planned, log=log)
    return tuner

