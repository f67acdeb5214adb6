"""Hyperband that fits its brackets into the time budget, then trains the winner further.

KerasTuner's Hyperband plans in epochs and always opens with its most exploratory bracket:
with `max_epochs: 40` that is 34 trials of 2 epochs, then 12 of 5, and so on. Each trial also
pays a fixed cost (build, tracing, validation, checkpoint; ~20-40 s on CPU), so under a
budget of tens of minutes it never gets past the short trials (RESULTS.md, CWFID).

`BudgetHyperbandOracle` is KerasTuner's `HyperbandOracle` (same brackets, rounds and
continued trials). With the search's plan (`set_search_plan`, `autoseg.plan`), the default:

1. **The recipe** is trial 0 (`tuner/bracket` `RECIPE_BRACKET`), for the plan's epochs.
2. **Explore** (with a deadline): the most exploratory bracket whose estimated cost fits the
   time left less the plan's finishing share, costed with the epoch times the plan estimates
   for the variants it will draw. Its first trial is the recipe (the control at equal
   epochs); the others are variants of the recipe (`plan.neighbour`), never a configuration
   the plan drops. A trial whose estimated time would eat into the finishing share ends the
   exploration instead of starting. **Forks** instead, when the plan chose them
   (`plan.FORK_FIDELITY`: variants from scratch cannot train long enough in its share) or no
   bracket fits at the costs the recipe measured: trials (`tuner/bracket` `FORK_BRACKET`)
   that continue the recipe's checkpoint for `plan.fork_epochs`, the first unchanged (the
   control), `plan.MIN_VARIANTS` others with training choices redrawn (`plan.FORK_GROUPS`),
   while they end before the finishing share. When the recipe misses classes (its
   per-class IoUs at its checkpoint, `plan.missed_classes`), the first of those others
   weighs classes up instead (`plan.diagnosed_fork`) and its start line says why. When the
   plan forks, the recipe's learning rate decays over its lineage (`Plan.lineage_epochs`)
   and the forks train on along it (`plan.SCHEDULE_EPOCHS`); the finish ends it. A continued trial restores its past trial's
   Adam moments, unless a fork changed the loss (`plan.restores_optimizer`). Every continued
   trial (a fork, the finish, a Hyperband round) trains with the loss its past trial ended
   with: `weighted_ce_dice` after a recipe that rebalanced (`rebalance.continued_values`).
   A recipe still climbing at the end of its share trains to the deadline instead
   (`autoseg.climbing`, in the trial): no fork then fits, and nothing else starts.
3. **Exploit**: the best completed trial is continued from its checkpoint (Hyperband's own
   continuation: `tuner/trial_id`, `tuner/initial_epoch`) for as many epochs as the time
   left allows, at its own measured epoch time, and again while time is left. The
   checkpoint is the trial's best epoch, and every continued trial (fork, finish, Hyperband
   round) starts at that epoch (`checkpoint_epoch`), not where its past trial stopped. Its cosine
   decays to the continuation's end: after the recipe's full schedule it restarts over the
   longer run; after a fork it ends the lineage's. These trials may exceed `max_epochs`.
   With the plan's `finish_on` "train+val", the continuation (`TRAIN_ON`) trains on the
   validation photos as well, its epochs costed longer by `Plan.finish_epoch_factor`.

Every trial's steady epoch time corrects the plan's cost model (`Plan.observe`).

Without a plan but with a deadline (plain KerasTuner use of this oracle), the costs come from
**probes** instead: the first `PROBES` trials are Hyperband's cheapest, and their wall and
epoch times (`epoch_seconds` in each trial's record) give the cost model for step 2. Without
a deadline or a plan it is KerasTuner's Hyperband unchanged. The plans and the measured wall
times are saved with the oracle, so a resumed search keeps them; the deadline is not (each
process's budget counts from its own start).
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import time

import keras_tuner as kt

from autoseg import plan as search_plan
from autoseg import rebalance, speed
from autoseg.search_space import hyperparameter_values

#: Share of the time left that the exploration bracket may take; the rest trains its winner.
EXPLORE_SHARE = 0.5

#: Trials measured before the plan is made.
PROBES = 3

REFINE_BRACKET = -1  # `tuner/bracket` of a continuation trial beyond the plan
RECIPE_BRACKET = search_plan.RECIPE_BRACKET
FORK_BRACKET = -3  # `tuner/bracket` of a fork of the recipe (`plan.FORK_FIDELITY`)
#: The value a trial trains on the validation photos as well with (`Plan.finish_on`).
TRAIN_ON, TRAIN_AND_VAL = search_plan.TRAIN_ON, search_plan.TRAIN_AND_VAL

#: Variants drawn to estimate the epoch time of an exploration bracket's trials.
COST_SAMPLES = 20


class BudgetHyperbandOracle(kt.oracles.HyperbandOracle):
    """`HyperbandOracle` planned against a deadline (see the module docstring).

    Args:
        explore_share: Share of the remaining time the exploration bracket may use.
        **kwargs: `HyperbandOracle`'s (objective, max_epochs, factor, seed, ...).

    Call `set_budget(deadline, record_reader)` before the search: `deadline` is a
    `time.time()` value or None, `record_reader(trial_id)` returns the trial's autoseg record
    (a dict with `epoch_seconds` and `epochs`), as `autoseg.run_dir.read_record` does.
    """

    def __init__(self, *args, explore_share: float = EXPLORE_SHARE, **kwargs):
        super().__init__(*args, **kwargs)
        self.explore_share = float(explore_share)
        self.configured_max_epochs = self.max_epochs
        self.deadline: float | None = None
        self.read_record = lambda trial_id: {}
        self.clock = time.time
        self.plan: dict | None = None
        self.wall_seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self.search_plan: search_plan.Plan | None = None
        self.space = None
        self._observed: dict | None = None
        self._rng = random.Random(0)

    def set_budget(self, deadline: float | None, read_record) -> None:
        self.deadline = deadline
        self.read_record = read_record

    def set_search_plan(self, plan: "search_plan.Plan", space, seed: int = 0) -> None:
        """Runs the recipe first and explores its variants (`autoseg.plan`)."""
        self.search_plan = plan
        self.space = space
        self._rng = random.Random(seed + len(self.trials))
        if self._observed is not None:  # what the trials before a resume measured
            plan.costs["observed"] = self._observed

    # -- timing ----------------------------------------------------------------------------
    def create_trial(self, tuner_id):
        trial = super().create_trial(tuner_id)
        if trial.status == kt.engine.trial.TrialStatus.RUNNING:
            # A distributed worker may ask again for the trial it runs: keep the first start.
            self._started.setdefault(trial.trial_id, self.clock())
        return trial

    def end_trial(self, trial):
        start = self._started.pop(trial.trial_id, None)
        if start is not None:
            self.wall_seconds[trial.trial_id] = round(self.clock() - start, 2)
        own = _epoch_seconds(self.read_record(trial.trial_id))
        if (self.search_plan is not None and own is not None and own[1] >= 2
                and trial.hyperparameters.values.get(TRAIN_ON) != TRAIN_AND_VAL):
            # Steady epochs only: the first one also traces and fills the caches.
            self.search_plan.observe(trial.hyperparameters.values, own[0])
        super().end_trial(trial)

    def measured(self) -> int:
        """Trials whose records carry epoch times (failed ones may not)."""
        return sum(_epoch_seconds(self.read_record(t)) is not None for t in self.wall_seconds)

    def costs(self) -> tuple[float, float] | None:
        """(overhead seconds per trial, seconds per epoch): means over the measured trials.

        Means, not medians: a bracket's cost is its trials' expected cost, and per-epoch
        times are skewed by the few large configurations (4x the pixels, 4x the filters).
        """
        overheads, epochs = [], []
        for trial_id, wall in self.wall_seconds.items():
            per_epoch = _epoch_seconds(self.read_record(trial_id))
            if per_epoch is None:
                continue
            seconds, count = per_epoch
            epochs.append(seconds)
            overheads.append(max(0.0, wall - seconds * count))
        if not epochs:
            return None
        return statistics.fmean(overheads), statistics.fmean(epochs)

    # -- the plan --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _at_max_epochs(self, max_epochs: int):
        """KerasTuner's bracket arithmetic (sizes, epochs, brackets) at another `max_epochs`."""
        saved, self.max_epochs = self.max_epochs, max_epochs
        try:
            yield
        finally:
            self.max_epochs = saved

    def bracket_cost(self, bracket_num: int, max_epochs: int, overhead: float,
                     per_epoch: float) -> float:
        """Estimated seconds for one bracket of Hyperband at `max_epochs`."""
        total, before = 0.0, 0
        with self._at_max_epochs(max_epochs):
            for round_num in range(self._get_num_rounds(bracket_num)):
                size = self._get_size(bracket_num, round_num)
                epochs = self._get_epochs(bracket_num, round_num)
                total += size * (overhead + (epochs - before) * per_epoch)
                before = epochs
        return total

    def choose_bracket(self, seconds: float, overhead: float, per_epoch: float,
                       min_epochs: int = 1) -> tuple[int, int]:
        """(max_epochs, bracket): the most exploratory bracket that fits `seconds` among those
        whose first round trains at least `min_epochs` epochs."""
        max_epochs = self.configured_max_epochs
        while True:
            with self._at_max_epochs(max_epochs):
                top = self._get_num_brackets() - 1
                firsts = {b: self._get_epochs(b, 0) for b in range(top + 1)}
            for bracket in range(top, -1, -1):
                if firsts[bracket] < min_epochs:
                    continue
                if self.bracket_cost(bracket, max_epochs, overhead, per_epoch) <= seconds:
                    return max_epochs, bracket
            smaller = math.ceil(max_epochs / self.factor)
            if smaller < min_epochs < max_epochs:
                smaller = min_epochs  # its one-round bracket: variants at `min_epochs`
            if smaller < self.factor or smaller == max_epochs or smaller < min_epochs:
                return max_epochs, 0  # nothing fits: the cheapest; the budget cuts it
            max_epochs = smaller

    def _make_plan(self) -> None:
        costs = self.costs()
        ended = len(self.wall_seconds)
        # PROBES measured trials; fewer only when many end without (over the memory budget).
        if costs is None or (self.measured() < PROBES and ended < 3 * PROBES):
            return
        overhead, per_epoch = costs
        left = max(0.0, self.deadline - self.clock())
        bracket = self._start_bracket(left * self.explore_share, left, overhead, per_epoch)
        # Probe trials that trained this bracket's first-round epochs from scratch join it.
        first_epochs = self._get_epochs(bracket, 0)
        self._brackets[0]["rounds"][0] = [
            {"past_id": None, "id": trial_id}
            for trial_id, trial in sorted(self.trials.items())
            if trial.hyperparameters.values.get("tuner/initial_epoch") == 0
            and trial.hyperparameters.values.get("tuner/epochs") == first_epochs
            and trial.status in ("COMPLETED", "RUNNING")
        ][: self._get_size(bracket, 0)]

    def _start_bracket(self, seconds: float, left: float, overhead: float, per_epoch: float,
                       **extra) -> int:
        """Makes the most exploratory bracket that fits `seconds` (x the workers seen) the
        only one left, records it as `self.plan`, and returns its number."""
        # Distributed workers run a bracket's trials side by side.
        workers = max(1, len(self.tuner_ids))
        max_epochs, bracket = self.choose_bracket(seconds * workers, overhead, per_epoch,
                                                  extra.get("min_epochs", 1))
        self.plan = {
            "max_epochs": max_epochs, "bracket": bracket,
            "estimate_seconds": round(self.bracket_cost(bracket, max_epochs, overhead, per_epoch), 1),
            "overhead_seconds": round(overhead, 2), "seconds_per_epoch": round(per_epoch, 3),
            "seconds_left": round(left, 1), "workers": workers, **extra,
        }
        self.max_epochs = max_epochs
        self._brackets = [{"bracket_num": bracket,
                           "rounds": [[] for _ in range(self._get_num_rounds(bracket))]}]
        # KerasTuner moves on to the next bracket when this one cannot give a trial; as its
        # last bracket of the last iteration, this one waits (IDLE) or ends (STOPPED) instead.
        self._current_bracket = 0
        self._current_iteration = 0
        self.hyperband_iterations = 1
        return bracket

    def populate_space(self, trial_id):
        if self.search_plan is not None:
            return self._populate_planned(trial_id)
        if self.deadline is None:
            return super().populate_space(trial_id)
        if self.plan is None:
            self._make_plan()
        result = self._from_checkpoint(super().populate_space(trial_id))
        if self.plan is None:
            return result
        if result["status"] == "STOPPED":
            return self._continue_best(trial_id)
        if result["status"] == "RUNNING":  # KerasTuner labels it with `_current_bracket` (0)
            result["values"]["tuner/bracket"] = self.plan["bracket"]
        return result

    # -- the planned search: recipe, variants, the best trained on ---------------------------
    def _populate_planned(self, trial_id):
        if not self._in_bracket(RECIPE_BRACKET):
            return {"status": "RUNNING", "values": {
                **self.search_plan.recipe, "tuner/epochs": self.search_plan.recipe_epochs,
                "tuner/initial_epoch": 0, "tuner/bracket": RECIPE_BRACKET, "tuner/round": 0}}
        if self.search_plan.recipe_only:
            return {"status": "IDLE" if self.ongoing_trials else "STOPPED"}
        if self.deadline is None:
            return super().populate_space(trial_id)
        if self.plan is None:
            self._plan_exploration()
        if self.plan.get("forks") and not self.plan.get("explored"):
            result = self._fork()
            if result is not None:
                return result
            self.plan["explored"] = True  # the forks ran, or the next would eat the finish
        if not self.plan.get("explored"):
            result = self._from_checkpoint(super().populate_space(trial_id))
            if result["status"] == "IDLE":
                return result
            if result["status"] == "RUNNING" and self._fits(result["values"]):
                result["values"]["tuner/bracket"] = self.plan["bracket"]
                return result
            self.plan["explored"] = True  # the rest of the bracket would eat the finish
        return self._continue_best(trial_id)

    def _from_checkpoint(self, result: dict) -> dict:
        """KerasTuner's continuation of a trial (its next Hyperband round) starts at the epoch
        the past trial's checkpoint holds (`checkpoint_epoch`), not at the past round's end,
        and trains to the round's epochs from there."""
        values = result.get("values") or {}
        past = values.get("tuner/trial_id")
        if result["status"] == "RUNNING" and past is not None:
            record = self.read_record(past)
            values.update(rebalance.continued_values(values, record))
            values["tuner/initial_epoch"] = checkpoint_epoch(self.trials[past], record)
        return result

    def _fixed_seconds(self) -> float:
        costs = self.costs()
        return costs[0] if costs else self.search_plan.cost_model.fixed_seconds

    def _trial_seconds(self, values) -> float:
        epochs = int(values["tuner/epochs"]) - int(values.get("tuner/initial_epoch", 0))
        per_epoch = self.search_plan.epoch_seconds(values) or 0.0
        return self._fixed_seconds() + epochs * per_epoch

    def _finish_seconds(self) -> float:
        budget = self.search_plan.budget_seconds or 0.0
        return budget * self.search_plan.shares["finish"]

    def _fits(self, values) -> bool:
        """Whether a trial ends before the time kept for finishing the best one."""
        left = self.deadline - self.clock() - self._finish_seconds()
        return self._trial_seconds(values) <= left

    def _plan_exploration(self) -> None:
        """The most exploratory bracket that fits the time left less the finish, costed
        with the epoch times of the variants the exploration will draw; or forks of the
        recipe, when the plan chose them or no bracket fits but they do."""
        left = max(0.0, self.deadline - self.clock() - self._finish_seconds())
        forks = {"forks": True, "explored": False}
        if self.search_plan.exploration == "forks":
            self.plan = {**forks, "seconds_left": round(left, 1)}
            return
        rng = random.Random(self._rng.random())
        samples = [search_plan.neighbour(self.search_plan.recipe, self.space, rng,
                                         self.search_plan.admits, lambda v: False)
                   for _ in range(COST_SAMPLES)]
        seconds = [self.search_plan.epoch_seconds(v) for v in samples if v]
        per_epoch = statistics.fmean(
            [s for s in seconds if s] or [self.search_plan.epoch_seconds(self.search_plan.recipe)])
        # Variants trained for fewer epochs than this are ranked by noise (`plan`'s rule).
        _, fidelity = search_plan.minimal_exploration_seconds(self.search_plan)
        self._start_bracket(left, left, self._fixed_seconds(), per_epoch, explored=False,
                            min_epochs=fidelity)
        first = self._get_epochs(self.plan["bracket"], 0)
        if self.plan["estimate_seconds"] > left or first < fidelity:
            # No bracket whose first round trains `fidelity` epochs fits at the costs the
            # recipe measured: its trials would be cut short or compared too early (on
            # CWFID, six variants of 2-3 epochs all scored below the recipe, none could be
            # told from noise), so the time goes to forks of the recipe where they fit,
            # else to training the best trial on.
            self.plan["skipped"] = (f"no bracket whose first round trains {fidelity} epochs "
                                    "fits the time left at the measured costs")
            if search_plan.minimal_fork_seconds(self.search_plan, self._fixed_seconds()) <= left:
                self.plan.update(forks)
            else:
                self.plan["explored"] = True

    def _fork(self):
        """The next fork of the recipe (the control first), or None when the recipe did not
        complete, the control and `MIN_VARIANTS` forks ran (failed ones do not count), no
        unseen fork is left or the next would run into the finishing share. Forks may run
        side by side on distributed workers: each needs only the recipe."""
        recipe = next(iter(self._in_bracket(RECIPE_BRACKET)), None)
        if recipe is not None and recipe.status == "RUNNING":
            return {"status": "IDLE"}  # another worker trains it
        if recipe is None or recipe.status != "COMPLETED" or recipe.score is None:
            return None
        trials = self._in_bracket(FORK_BRACKET)
        forks = [hyperparameter_values(t.hyperparameters.values) for t in trials]
        if sum(t.status != "FAILED" for t in trials) > search_plan.MIN_VARIANTS:
            return None  # the control and its forks ran: the rest of the time is the finish's
        record = self.read_record(recipe.trial_id)
        # The recipe as its forks train on: with the loss it ended with (`autoseg.rebalance`).
        trained = rebalance.continued_values(self.search_plan.recipe, record)
        start, reason = dict(trained), None
        if forks:
            # One fork from the recipe's scores (the first after the control); the rest random.
            diagnosed = None if any(search_plan.FORK_REASON in t.hyperparameters.values
                                    for t in trials) else search_plan.diagnosed_fork(
                start, self.space, _missed(recipe), self.search_plan.admits, lambda v: v in forks)
            if diagnosed is not None:
                start, reason = diagnosed
            else:
                start = search_plan.neighbour(start, self.space, self._rng, self.search_plan.admits,
                                              lambda v: v in forks, only=search_plan.FORK_GROUPS)
            if start is None:
                return None
        reached = checkpoint_epoch(recipe, record)
        values = {**start, "tuner/trial_id": recipe.trial_id, "tuner/initial_epoch": reached,
                  "tuner/epochs": reached + search_plan.fork_epochs(self.search_plan),
                  "tuner/bracket": FORK_BRACKET, "tuner/round": 1}
        # The recipe's schedule, when it decays past the recipe (`Plan.lineage_epochs`): the
        # fork trains on along it. Else the fork decays over its own epochs.
        horizon = int(record.get("schedule_epochs") or 0)
        if horizon > values["tuner/epochs"]:
            values[search_plan.SCHEDULE_EPOCHS] = horizon
        if start.get("loss") != trained.get("loss"):
            values[search_plan.FRESH_OPTIMIZER] = True  # the recipe's moments are another loss's
        if reason:
            values[search_plan.FORK_REASON] = reason
        if not self._fits(values):
            return None
        return {"status": "RUNNING", "values": values}

    def _random_trial(self, trial_id, bracket):
        if self.search_plan is None or bracket["rounds"][0]:
            return super()._random_trial(trial_id, bracket)
        # Each bracket opens with the recipe: the control its variants are compared with at
        # equal epochs.
        bracket["rounds"][0].append({"past_id": None, "id": trial_id})
        return {"status": "RUNNING", "values": {
            **self.search_plan.recipe, "tuner/epochs": self._get_epochs(bracket["bracket_num"], 0),
            "tuner/initial_epoch": 0, "tuner/bracket": self._current_bracket, "tuner/round": 0}}

    def _random_values(self):
        if self.search_plan is None:
            return super()._random_values()
        return search_plan.neighbour(self.search_plan.recipe, self.space, self._rng,
                                     self.search_plan.admits, self._duplicate)

    def _continue_best(self, trial_id):
        """Continues the best completed trial for the epochs the time left allows."""
        stopped = {"status": "STOPPED"}
        if self.ongoing_trials:
            return {"status": "IDLE"}
        costs = self.costs()
        best = self._best_completed()
        if costs is None or best is None:
            return stopped
        overhead = costs[0]
        record = self.read_record(best.trial_id)
        own = _epoch_seconds(record)
        per_epoch = own[0] if own else costs[1]
        widen = (self.search_plan is not None and self.search_plan.finish_on == TRAIN_AND_VAL
                 and best.hyperparameters.values.get(TRAIN_ON) != TRAIN_AND_VAL)
        if widen:  # an epoch over the validation photos too
            per_epoch *= self.search_plan.finish_epoch_factor()
        more = int((self.deadline - self.clock() - overhead) // per_epoch)
        if more < 1:
            return stopped
        values = rebalance.continued_values(best.hyperparameters.values, record)
        for key in search_plan.FORK_VALUES:  # the finish ends the schedule, with the fork's loss
            values.pop(key, None)
        reached = checkpoint_epoch(best, record)
        if more < reached and not self._is_best(best):
            # A trial below the best (the runner-up, once the best's continuation fell below
            # its start) is continued only when it can at least double its epochs: a few
            # more epochs would not lift it past the best (on CWFID, one epoch more of a
            # 5-epoch copy of the recipe ran in the last 2 minutes).
            return stopped
        values.update({
            "tuner/trial_id": best.trial_id, "tuner/initial_epoch": reached,
            "tuner/epochs": reached + more, "tuner/bracket": REFINE_BRACKET,
            "tuner/round": int(values.get("tuner/round", 0)) + 1,
        })
        if widen:
            values[TRAIN_ON] = TRAIN_AND_VAL
        return {"status": "RUNNING", "values": values}

    def _best_of(self, trials):
        """The best of `trials` that completed with a finite score, or None."""
        done = [t for t in trials
                if t.status == "COMPLETED" and t.score is not None and math.isfinite(t.score)]
        pick = max if self.objective.direction == "max" else min
        return pick(done, key=lambda t: t.score) if done else None

    def _is_best(self, trial) -> bool:
        superseded = self._superseded()
        return trial.score == self._best_of(
            t for t in self.trials.values() if t.trial_id not in superseded).score

    def _superseded(self) -> set[str]:
        """The recipe, once a fork that trains on along its schedule (`SCHEDULE_EPOCHS`)
        completed: the control is the recipe trained on along the same curve, so the
        recipe's score mid-schedule is an earlier, noisier reading of the same run, not a
        candidate to train on (on CWFID, seed 1, the recipe at epoch 13 read 0.712 and its
        control at 16 0.695: continuing the recipe threw the forks' epochs away). A recipe
        that ended its own schedule (forks chosen at run time) stays a candidate."""
        if not any(search_plan.SCHEDULE_EPOCHS in t.hyperparameters.values
                   and t.status == "COMPLETED" for t in self._in_bracket(FORK_BRACKET)):
            return set()
        return {t.trial_id for t in self._in_bracket(RECIPE_BRACKET)}

    def _in_bracket(self, bracket: int) -> list:
        """The trials whose `tuner/bracket` is `bracket`, in the order they were created."""
        return [t for t in self.trials.values()
                if t.hyperparameters.values.get("tuner/bracket") == bracket]

    def _best_completed(self):
        """The best completed trial that no earlier continuation has started from.

        A continuation that scores below its start would otherwise start the same one again.
        Nor is a `_superseded` recipe a candidate.
        """
        continued = self._superseded() | {
            t.hyperparameters.values.get("tuner/trial_id") for t in self._in_bracket(REFINE_BRACKET)
        }
        return self._best_of(t for t in self.trials.values() if t.trial_id not in continued)

    # -- state -----------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        state["autoseg_budget"] = {
            "plan": self.plan, "wall_seconds": self.wall_seconds,
            "configured_max_epochs": self.configured_max_epochs,
            "explore_share": self.explore_share,
            "observed": self.search_plan.costs.get("observed") if self.search_plan else None,
        }
        return state

    def set_state(self, state):
        super().set_state(state)
        saved = state.get("autoseg_budget") or {}
        self.plan = saved.get("plan")
        self.wall_seconds = dict(saved.get("wall_seconds") or {})
        self.configured_max_epochs = saved.get("configured_max_epochs", self.max_epochs)
        self.explore_share = saved.get("explore_share", self.explore_share)
        self._observed = saved.get("observed")


def checkpoint_epoch(trial: kt.engine.trial.Trial, record: dict) -> int:
    """`plan.checkpoint_epoch` of an oracle's trial and its record: where a trial that
    continues it starts; its planned end while no record says what it trained."""
    values = trial.hyperparameters.values
    if not record.get("epochs"):
        return int(values.get("tuner/epochs", 0))
    return search_plan.checkpoint_epoch(values, trial.best_step, record["epochs"])


def trial_role(values: dict) -> str:
    """What a trial of this oracle is, for its start line: "the recipe", "a fork of trial
    0000 at epoch 12", "a continuation of trial 0003 from epoch 15", or "" (a variant)."""
    bracket, past = values.get("tuner/bracket"), values.get("tuner/trial_id")
    if bracket == RECIPE_BRACKET:
        return "the recipe"
    if bracket == FORK_BRACKET and past is not None:
        reason = values.get(search_plan.FORK_REASON)
        return (f"a fork of trial {past} at epoch {values.get('tuner/initial_epoch')}"
                + (f", {reason}" if reason else ""))
    if past is not None:
        on = " on the training and validation photos" if values.get(TRAIN_ON) == TRAIN_AND_VAL else ""
        return f"a continuation of trial {past} from epoch {values.get('tuner/initial_epoch')}{on}"
    return ""


def _missed(trial: kt.engine.trial.Trial) -> list[str]:
    """`plan.missed_classes` of a trial's metrics at its best epoch (KerasTuner keeps each
    metric's observation there)."""
    metrics = {}
    for name in trial.metrics.metrics:
        history = trial.metrics.get_history(name)
        at = [o for o in history if o.step == trial.best_step] or history[-1:]
        if at:
            metrics[name] = float(statistics.fmean(at[0].value))
    return search_plan.missed_classes(metrics)


def _epoch_seconds(record: dict) -> tuple[float, int] | None:
    """(steady seconds per epoch, epochs trained) from a trial record, or None.

    The first epoch also traces the model's functions; the others show the steady rate.
    """
    seconds = [float(s) for s in (record.get("epoch_seconds") or []) if s is not None]
    if not seconds:
        return None
    return speed.steady_epoch_seconds(seconds), len(seconds)


class BudgetHyperband(kt.Hyperband):
    """KerasTuner's `Hyperband` tuner (continued trials load their checkpoint) over a given
    oracle, normally a `BudgetHyperbandOracle`."""

    def __init__(self, hypermodel=None, *, oracle, **kwargs):
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)
