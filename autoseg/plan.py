"""The plan: what a search does with its time, decided from the data, the machine and the budget.

nnU-Net's lesson on small data: a recipe derived from the dataset and the hardware beats a
blind search. A search here therefore starts from one configuration it would bet on without
searching (the recipe, trial 0), drops every configuration that cannot train enough epochs
in the budget before it runs, and explores variants of the recipe with the rest.

- **The recipe** (`choose_recipe`): a plain U-Net (4 levels, 32 filters on a CPU, 64 on a
  GPU) where the space has one, else the nearest family; random crops of the photo scaled so
  that its short side is about `TARGET_SHORT_SIDE` px, at the largest input size up to 256 px
  (CPU) or 512 px (GPU), placed uniformly (`RECIPE_RARE_CROPS`; the share placed over a
  rare-class pixel, nnU-Net's foreground oversampling, is left to exploration); CE + soft Dice (the rare classes decide the mean IoU); augmentation
  0.5 on small datasets; Adam at 1e-3 with a cosine decay; batch 4 (8 on a GPU) or the largest
  that fits the memory budget; as many epochs as `RECIPE_SHARE` of the budget allows. Every
  value is the space's nearest to these.
- **A recipe the budget can train** (`cheaper_recipe`): when those epochs are fewer than
  `MIN_RECIPE_PASSES` passes over the training photos (or `ENOUGH_IMAGES` crops, whichever
  is fewer), the plan steps down to a cheaper recipe that trains more of them: half the
  filters (down to `MIN_RECIPE_FILTERS`, where the space offers them), then the next smaller
  input size of a `resize` recipe (down to `MIN_RECIPE_SIZE`). A crop recipe keeps its crop
  size: a smaller crop is cheaper per pass because it shows less of each photo.
- **The admissible space**: a configuration is kept when, in the time a winner gets
  (exploration and finishing), it can train at least `min_epochs` epochs: as many as the
  recipe gets, capped at what `ENOUGH_IMAGES` training crops take. Others are dropped with
  their reason.
- **Shares of the budget**: the recipe `RECIPE_SHARE`, finishing the best trial
  `FINISH_SHARE` (its continuation; train+val and test-time augmentation will use it too),
  exploration the rest. When the exploration share cannot train the recipe and two variants
  from scratch for half of `min_epochs` each (`minimal_exploration_seconds`), exploration
  forks the recipe instead (`FORK_FIDELITY`): the control and variants of its training
  choices, each training its weights on for a fifth of its epochs, along the recipe's
  learning-rate schedule, which then decays over the recipe's whole lineage (the recipe, a
  fork and the finish: `Plan.lineage_epochs`); a recipe still climbing at the end of its
  share is not forked but trains to the end of the budget (`autoseg.climbing`). When not
  even those fit (`minimal_fork_seconds`), the recipe gets the whole budget: while the recipe is short of
  `ENOUGH_IMAGES` crops, more epochs are worth more than what variants teach. On CWFID at
  30 minutes on a 2-core CPU, the recipe trained for 40 % and continued for 20 % of the
  budget scored 0.095 mIoU below the recipe trained once for all of it
  (benchmarks/RESULTS.md), and variants compared after a few epochs rank noise (crop IoU is
  near 0 for every configuration before ~5 epochs).

- **Exploring at all** (`explore`, `EXPLORE_AFTER_IMAGES`): by default the plan explores
  only when the recipe alone would train at least `EXPLORE_AFTER_IMAGES` crops in the whole
  budget; below that the recipe gets the whole budget, whatever else would fit. A recipe's
  gains come as its learning rate decays, so one flat mid-schedule is not done, and every
  exploration measured at CPU budgets cost the returned model more epochs than it found.
  `explore="always"` explores wherever the rules above let it.

Costs come from `autoseg.speed`: FLOPs, activations and memory of each model
configuration, a FLOP rate and an activation rate calibrated on the recipe's model and a
narrower sibling (`calibrate`), corrected by every trial that runs. `Plan` is saved as
`RUNDIR/plan.json` and kept on resume.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from typing import Any, Callable

from autoseg import speed
from autoseg.errors import BudgetError
from autoseg.search_space import (
    REBALANCE_MODES,
    Range,
    SearchSpace,
    as_values,
    format_input_size,
    model_option_grid,
    parse_input_size,
    trial_model_config,
)

#: What the best trial trains on at the end (`Plan.finish_on`): the training photos, or
#: the validation photos as well.
TRAIN, TRAIN_AND_VAL = "train", "train+val"
FINISH_ON = (TRAIN, TRAIN_AND_VAL)
#: The trial value that makes a trial train on `TRAIN_AND_VAL` (set by the oracle's finish).
TRAIN_ON = "tuner/train_on"
#: The trial value of a fork: the epoch its learning-rate schedule ends at, the recipe's
#: (`Plan.lineage_epochs`; the recipe's record holds it as `schedule_epochs`).
SCHEDULE_EPOCHS = "tuner/schedule_epochs"
#: The trial value of a fork whose loss differs from the recipe's: it starts with fresh Adam
#: moments. Every other continued trial restores its past trial's (`restores_optimizer`).
FRESH_OPTIMIZER = "tuner/fresh_optimizer"
#: The trial value of a fork drawn from the recipe's scores (`diagnosed_fork`): why.
FORK_REASON = "tuner/fork_reason"
#: The trial values only a fork has; the finish that trains a fork on drops them.
FORK_VALUES = (SCHEDULE_EPOCHS, FRESH_OPTIMIZER, FORK_REASON)


def continues_a_trial(values: dict) -> bool:
    """Whether a trial starts from a past trial's checkpoint (Hyperband's `tuner/trial_id`)."""
    return bool(values.get("tuner/trial_id"))


def checkpoint_epoch(values: dict, best_step: int, trained: int | None = None) -> int:
    """The epoch (absolute, counted from the start of the trial's lineage) at whose end the
    checkpoint of a trial with these `values` was taken: its best epoch (KerasTuner's
    `SaveBestEpoch`; `best_step` counts epochs from the start of its fit), at most the
    `trained` epochs its record says it trained (the budget may cut them short). A trial
    that continues it starts there, for the learning-rate schedule, Adam's moments and the
    weight average go on from the weights they belong to; a refit from scratch trains that
    many epochs."""
    best = int(best_step or 0) + 1
    if trained:
        best = min(best, int(trained))
    return int(values.get("tuner/initial_epoch", 0)) + best


def restores_optimizer(values: dict) -> bool:
    """Whether a trial continues a past trial's optimizer state along with its weights.

    A fresh Adam's first steps move every weight by about the learning rate, whatever its
    gradient's noise: the recipe's checkpoint trained on for one epoch read 0.264 val mIoU
    with a fresh Adam against 0.295 restored on CamVid (the checkpoint: 0.293), 0.546 against
    0.691 on CWFID (RESULTS.md, "Adam's moments and the weight average across a lineage").
    Restored moments do not apply when the loss changes: Adam scales each step by its
    gradients' past magnitude, which another loss changes, and forgets it over ~1000 steps
    (`beta_2` 0.999).
    """
    return continues_a_trial(values) and not values.get(FRESH_OPTIMIZER)

#: Shares of the time budget: the recipe (trial 0) and finishing the best trial; the rest
#: explores variants of the recipe.
RECIPE_SHARE = 0.4
FINISH_SHARE = 0.2

#: Training crops after which more epochs add little: caps `min_epochs` for long budgets.
ENOUGH_IMAGES = 4000
MIN_EPOCHS = 3
#: With a time budget, an epoch is long enough (whole passes over the training photos, at
#: most `MAX_PASSES`) that the recipe's validation after it takes at most this share of its
#: compute. One pass of CWFID's 32 training crops cost 96 crop-units against 48 validation
#: tiles: a third of every epoch went to validating.
VALIDATION_SHARE = 0.2
MAX_PASSES = 8

#: Exploration compares the recipe (the control) with at least this many variants, each for
#: at least `1 / EXPLORE_FIDELITY` of the recipe's epochs (and `MIN_EPOCHS`); else it forks
#: the recipe, or none runs. Variants from scratch for a third of the recipe's epochs never
#: found anything at 30-60 minutes on a CPU: on CWFID a 5-epoch SegNet scored 0.32 and the
#: 5-epoch control 0.63 against the recipe's 0.69 at 13 (RESULTS.md, the bfloat16 run at 30
#: minutes), at 2-3 epochs 0.31-0.64 against 0.68 at 17 (60 minutes).
MIN_VARIANTS = 2
EXPLORE_FIDELITY = 2

#: When variants cannot train from scratch long enough to be compared, exploration forks the
#: recipe instead: each fork trains the recipe's weights on for `1 / FORK_FIDELITY` of its
#: epochs (at least `MIN_EPOCHS`) with one or two of its training choices (`FORK_GROUPS`)
#: redrawn, and the control trains them on unchanged: the control and `MIN_VARIANTS` forks,
#: then the finish trains the best on to the end of the budget. The recipe's learning rate
#: then decays over its whole lineage (`Plan.lineage_epochs`: the recipe, a fork, the
#: finish) rather than within its share: the forks continue its schedule, the finish ends it,
#: and the model the search returns has trained on one schedule, as the recipe alone would
#: (a second schedule on the same weights lost to one long one on CWFID: 0.578 against
#: 0.673, RESULTS.md, #11 arms at 30 minutes). On CWFID, variants trained from
#: scratch for 2-3 epochs scored 0.31-0.64 against the recipe's 0.68 at 17 epochs: none
#: could be told from noise (RESULTS.md, 60 minutes on both cores).
FORK_FIDELITY = 5
#: A class the recipe misses (`missed_classes`) scores under this IoU on its training crops
#: and on the validation photos.
MISSED_IOU = 0.05
#: The losses that weigh rare classes up, in the order a fork for missed classes takes them
#: (`diagnosed_fork`). On CamVid the recipe's ce_dice never predicted pole or sign, even on
#: its training frames (IoU 0.000 after 63 epochs); `weighted_ce_dice` as the recipe scored
#: 0.369 against 0.343 (pole 0.12, sign 0.17); `weighted_ce` 0.304 (building 0.44 -> 0.14).
#: On CWFID, where the recipe misses no class, `weighted_ce_dice` lost 0.024 (crop 0.47 ->
#: 0.43): the loss is a choice the data's scores make, not its class shares (RESULTS.md).
CLASS_BALANCING_LOSSES = ("weighted_ce_dice", "weighted_ce", "focal")
FORK_GROUPS = ("loss", "aug_strength", "learning_rate", "batch_size", "crop_scale", "rare_crops",
               "weight_ema")

#: The recipe scales photos so that their short side is at most about this (power-of-two
#: scales): CWFID's 966 px photos at 0.5, CamVid's 360 px frames at 1.
TARGET_SHORT_SIDE = 600

#: The recipe's families, best bet first: from scratch, a plain U-Net wins on small data.
FAMILY_PREFERENCE = ("unet", "segnet", "deeplabv3plus", "light_unet", "pix2pix")

#: The recipe should train at least this many passes over the training photos (or
#: `ENOUGH_IMAGES` crops, whichever is fewer) in its time (its lineage's, when the plan forks
#: it: `Plan.recipe_passes`); below that, the plan steps down to
#: a cheaper recipe (`cheaper_recipe`), at most to `MIN_RECIPE_FILTERS` filters and
#: `MIN_RECIPE_SIZE` px. Measured on one AVX2 core (RESULTS.md, one seed each): CWFID at 20
#: minutes, the U-Net of 32 filters trained 12 passes (0.643 full-res mIoU), of 16 filters
#: 42 (0.722); CamVid at 30 minutes, 32 filters at 256 px 6 passes (0.239), 16 filters 16
#: (0.282), 32 filters at 192 px 10 (0.275), 16 filters at 128 px 75 (0.339, against 0.303
#: at 256 px in the same run). The recipe of 32 filters reached ~0.70–0.73 on CWFID after
#: 26–53 passes.
MIN_RECIPE_PASSES = 24
MIN_RECIPE_FILTERS = 16
MIN_RECIPE_SIZE = 128

#: `tuner/bracket` of the recipe, trial 0 of a planned search.
RECIPE_BRACKET = -2


@dataclasses.dataclass
class DataSummary:
    """What the plan needs of the dataset and its split."""

    train_images: int
    val_sizes: list[tuple[int, int]]  # (H, W) of each validation photo
    median_size: tuple[int, int]
    class_fraction: dict[str, float]
    channels: int = 3

    @property
    def rarest(self) -> tuple[str, float] | None:
        known = {k: v for k, v in self.class_fraction.items() if v is not None}
        return min(known.items(), key=lambda kv: kv[1]) if known else None


@dataclasses.dataclass
class Machine:
    device: str  # "cpu" or "gpu"
    precision: str  # the Keras policy of the recipe
    cores: int = 1


@dataclasses.dataclass
class Plan:
    """The plan of one search (saved as `plan.json`).

    Attributes:
        budget_seconds: The time budget (None: none).
        shares: `{"recipe", "explore", "finish"}` shares of the budget.
        recipe: The recipe's hyperparameter values (the names the HyperModels declare).
        recipe_epochs: Epochs the recipe trains.
        min_epochs: Epochs a configuration must reach in a winner's time to be kept (None
            without a budget).
        kept, dropped: Configurations (`{"config", "epoch_seconds", ...}`), the dropped
            with a `reason`.
        models: The `speed.ModelCost` of every model configuration, as dicts.
        costs: The `speed.CostModel`, as a dict.
        data: The `DataSummary`, as a dict.
        machine: The `Machine`, as a dict.
        batch_sizes: The space's batch size candidates.
        recipe_only_reason: Why the plan gives the recipe the whole budget, when it does
            without being asked to (`--recipe-only`).
        passes_per_epoch: Passes over the training photos (one random crop of each) that
            make one epoch of every trial: enough that validating the recipe's tiles after
            each epoch takes at most `VALIDATION_SHARE` of it (with a time budget; else 1).
        recipe_steps: The recipes the plan stepped down from, each with the passes it
            would have trained (`cheaper_recipe`), preferred first; empty when it did not.
        exploration: How variants of the recipe are explored: "scratch" (Hyperband over
            variants trained from scratch) or "forks" (`FORK_FIDELITY`).
        exploration_reason: Why the plan forks, when it does.
        finish_on: What the best trial trains on as it is trained further at the end:
            `TRAIN` (the training photos) or `TRAIN_AND_VAL` (the validation photos too: the
            finished model's validation score is then not held out).
        explore: "auto": exploration runs only once the recipe alone would train
            `EXPLORE_AFTER_IMAGES` crops in the budget; "always": wherever it fits.
    """

    budget_seconds: float | None
    shares: dict[str, float]
    recipe: dict[str, Any]
    recipe_epochs: int
    min_epochs: int | None
    kept: list[dict]
    dropped: list[dict]
    models: list[dict]
    costs: dict
    data: dict
    machine: dict
    batch_sizes: list[int]
    recipe_only_reason: str | None = None
    passes_per_epoch: int = 1
    recipe_steps: list[str] = dataclasses.field(default_factory=list)
    exploration: str = "scratch"
    exploration_reason: str | None = None
    finish_on: str = "train"
    explore: str = "auto"

    # -- estimates -------------------------------------------------------------------------
    @property
    def cost_model(self) -> speed.CostModel:
        """The cost model `costs` holds (a view: `observe` writes through `costs`)."""
        return speed.CostModel.from_dict(self.costs)

    def _summary(self) -> DataSummary:
        data = dict(self.data)
        data["val_sizes"] = [tuple(s) for s in data["val_sizes"]]
        data["median_size"] = tuple(data["median_size"])
        return DataSummary(**data)

    def model_cost(self, model_name: str, options: dict[str, Any]) -> speed.ModelCost | None:
        for entry in self.models:
            if entry["model_name"] == model_name and _same(entry["options"], options):
                return speed.ModelCost(**entry)
        return None

    def epoch_seconds(self, values: dict[str, Any], corrected: bool = True) -> float | None:
        """Estimated seconds of one epoch of the configuration in `values`, or None when its
        model is not one the plan measured."""
        config = trial_model_config(values)
        cost = self.model_cost(config["model_name"], config["options"])
        if cost is None:
            return None
        return self.cost_model.epoch_seconds(
            cost, config["input_size"], self.epoch_crops,
            validation_units(self._summary(), config), corrected=corrected)

    @property
    def epoch_crops(self) -> int:
        """Training crops (or resized photos) in one epoch."""
        return self.data["train_images"] * self.passes_per_epoch

    def finish_epoch_factor(self) -> float:
        """How much longer an epoch is with the validation photos trained on as well."""
        train = self.data["train_images"]
        return (train + len(self.data["val_sizes"])) / train if train else 1.0

    @property
    def recipe_only(self) -> bool:
        return self.shares.get("explore", 0) == 0 and self.shares.get("finish", 0) == 0

    def recipe_seconds(self) -> float | None:
        """The training time the recipe gets (its share, less a trial's fixed cost)."""
        if self.budget_seconds is None:
            return None
        return self.budget_seconds * self.shares["recipe"] - self.cost_model.fixed_seconds

    def share_epochs(self) -> int:
        """Epochs of the recipe that fit its share at the current estimates (at least 1)."""
        return max(1, int(self.recipe_seconds() // self.epoch_seconds(self.recipe)))

    def budget_crops(self, epoch_seconds: float | None = None) -> int | None:
        """Training crops the recipe alone would train in the whole budget.

        Args:
            epoch_seconds: The recipe's epoch time. Defaults to the current estimate.

        Returns:
            Whole epochs after a trial's fixed cost, in crops; None without a time budget.
        """
        if self.budget_seconds is None:
            return None
        seconds = self.epoch_seconds(self.recipe) if epoch_seconds is None else epoch_seconds
        epochs = (self.budget_seconds - self.cost_model.fixed_seconds) // max(seconds, 1e-9)
        return int(max(0, epochs) * self.epoch_crops)

    def recipe_passes(self) -> int:
        """Passes over the training photos the recipe's weights train: `recipe_epochs`
        epochs, or its lineage's when the plan forks it (`lineage_epochs`: the forks and the
        finish train them on along its one schedule)."""
        return (self.lineage_epochs() or self.recipe_epochs) * self.passes_per_epoch

    def recipe_trains_enough(self) -> bool:
        """The recipe trains `MIN_RECIPE_PASSES` passes, or `ENOUGH_IMAGES` crops."""
        images = self.data["train_images"]
        return self.recipe_passes() * images >= min(MIN_RECIPE_PASSES * images, ENOUGH_IMAGES)

    def required_epochs(self) -> int | None:
        """Epochs a configuration must reach in a winner's time: as many as the recipe gets in
        its share at the current estimates, at most `ENOUGH_IMAGES` crops' worth."""
        if self.budget_seconds is None:
            return None
        recipe = self.share_epochs()
        enough = math.ceil(ENOUGH_IMAGES / max(1, self.epoch_crops))
        return max(1, min(recipe, max(MIN_EPOCHS, enough)))

    def lineage_epochs(self) -> int | None:
        """When the plan forks: the epochs the recipe's learning rate decays over, those of
        its lineage at the recipe's estimated epoch time: its own, one fork's and the
        finish's (`after_forks_seconds` less the finish's fixed cost; its epochs the longer
        on train+val). None when the recipe's schedule ends with its share."""
        extension = self.schedule_extension()
        if extension is None:
            return None
        stretch, extra = extension
        return round(self.recipe_epochs * stretch) + extra

    def schedule_extension(self) -> tuple[float, int] | None:
        """(stretch, extra): the recipe's learning rate decays over `stretch` x its epochs
        plus `extra` (`hypermodel.CosineSchedule`): the finish's epochs grow and shrink with
        the recipe's (both follow its measured epoch time), a fork's are fixed. None, over
        its own epochs, unless the plan forks."""
        after = self.after_forks_seconds()
        if after is None:
            return None
        epoch = self.epoch_seconds(self.recipe)
        if self.finish_on == TRAIN_AND_VAL:
            epoch *= self.finish_epoch_factor()
        finish = max(0, int((after - self.cost_model.fixed_seconds) // epoch))
        return (self.recipe_epochs + finish) / self.recipe_epochs, fork_epochs(self)

    @property
    def forks_recipe(self) -> bool:
        """Whether the recipe's share is followed by forks of it (`FORK_FIDELITY`)."""
        return self.budget_seconds is not None and not self.recipe_only \
            and self.exploration == "forks"

    def after_forks_seconds(self) -> float | None:
        """When the plan forks: the seconds the finish has, those after the recipe's share
        less the control's and `MIN_VARIANTS` forks'. None when it does not fork."""
        if not self.forks_recipe:
            return None
        return self.budget_seconds * (1 - self.shares["recipe"]) - minimal_fork_seconds(self)

    def winner_seconds(self) -> float | None:
        if self.budget_seconds is None:
            return None
        return self.budget_seconds * (self.shares["explore"] + self.shares["finish"])

    def admits(self, values: dict[str, Any]) -> str | None:
        """None when the configuration in `values` may run, else the reason it may not."""
        config = trial_model_config(values)
        cost = self.model_cost(config["model_name"], config["options"])
        if cost is None:
            return None  # not measured (a space changed on resume): let it run
        return _rejection(self, cost, config)

    def observe(self, values: dict[str, Any], measured_epoch_seconds: float) -> None:
        """Corrects the cost model with a trial's steady epoch time."""
        config = trial_model_config(values)
        predicted = self.epoch_seconds(values, corrected=False)
        if predicted:
            key = speed.config_key(config["model_name"], config["options"])
            costs = self.cost_model
            costs.observe(key, predicted, measured_epoch_seconds)
            self.costs = costs.to_dict()

    # -- persistence and display -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        data = {"explore": "always", **data}  # a plan saved before `explore` explored so
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def lines(self, limit: int = 4) -> list[str]:
        """The `[plan]` lines a search prints first."""
        return plan_lines(self, limit)


# --------------------------------------------------------------------------------------------
# Configurations: the values that decide a model's cost.


def config_values(model_name: str, options: dict[str, Any], input_size, policy: str,
                  crop_scale: float) -> dict[str, Any]:
    values = {"model_name": model_name}
    values.update({f"{model_name}/{k}": v for k, v in options.items() if not isinstance(v, dict)})
    values.update({"input_size": format_input_size(tuple(input_size)), "policy": policy})
    if policy == "crop":
        values["crop_scale"] = crop_scale
    return values


def describe(values: dict[str, Any]) -> str:
    """`"unet depth=4 filters=32, 256 crops at 0.5 scale"`."""
    config = trial_model_config(values)
    options = " ".join(f"{k}={v}" for k, v in config["options"].items() if not isinstance(v, dict))
    size = format_input_size(config["input_size"])
    where = (f"{size} crops at {config['crop_scale']:g} scale" if config["policy"] == "crop"
             else f"resized to {size}")
    if config["policy"] == "crop" and values.get("rare_crops"):
        where += f" ({float(values['rare_crops']) * 100:.0f} % over a rare-class pixel)"
    return f"{config['model_name']}{' ' + options if options else ''}, {where}"


def validation_units(data: DataSummary, config: dict[str, Any]) -> int:
    """Model inputs one validation pass runs: a tile count (crop) or one per photo (resize)."""
    if config["policy"] != "crop":
        return len(data.val_sizes)
    from autoseg.data.pipeline import scaled_size, tile_positions

    th, tw = config["input_size"]
    total = 0
    for h, w in data.val_sizes:
        sh, sw = scaled_size(h, w, config["crop_scale"])
        total += len(tile_positions(sh, sw, th, tw))
    return total


def _same(a: dict, b: dict) -> bool:
    norm = lambda d: {k: (v.lower() if isinstance(v, str) else v) for k, v in d.items()
                      if not isinstance(v, dict)}
    return norm(a) == norm(b)


def _rejection(plan: Plan, cost: speed.ModelCost, config: dict[str, Any]) -> str | None:
    smallest = min(plan.batch_sizes)
    limit = plan.machine.get("memory_budget_bytes")
    if limit and cost.memory_bytes(config["input_size"], smallest) > limit:
        need = cost.memory_bytes(config["input_size"], smallest)
        return (f"needs ~{need / 2**20:.0f} MB at batch {smallest}, over the memory budget "
                f"of {limit / 2**20:.0f} MB")
    window = plan.winner_seconds()
    if window is None or plan.min_epochs is None:
        return None
    values = config_values(config["model_name"], config["options"], config["input_size"],
                           config["policy"], config["crop_scale"])
    if all(plan.recipe.get(k) == v for k, v in values.items()):
        return None  # the recipe's own configuration
    seconds = plan.epoch_seconds(values)
    reach = int(max(0.0, window - plan.cost_model.fixed_seconds) // seconds)
    needed = plan.required_epochs()
    if reach < needed:
        return (f"~{seconds:.0f} s an epoch: {reach} epochs at most in "
                f"{_minutes(window)} (needs {needed})")
    return None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


# --------------------------------------------------------------------------------------------
# The recipe.


def nearest(target: Any, value: Any, log_scale: bool = False) -> Any:
    """The space's value nearest `target`: a choice, a fixed value or a clipped range."""
    if isinstance(value, Range):
        clipped = min(max(target, value.min), value.max)
        return int(round(clipped)) if value.is_int else float(clipped)
    candidates = as_values(value)
    if isinstance(target, str) or not all(isinstance(c, (int, float)) for c in candidates):
        return target if target in candidates else candidates[0]
    distance = (lambda c: abs(math.log(c / target))) if log_scale else (lambda c: abs(c - target))
    return min(candidates, key=distance)


def recipe_scale(median_size: tuple[int, int]) -> float:
    """The power-of-two scale that brings the median photo's short side near
    `TARGET_SHORT_SIDE` (never enlarges)."""
    scale = 1.0
    while min(median_size) * scale > TARGET_SHORT_SIDE * 1.25 and scale > 1 / 16:
        scale /= 2
    return scale


def _model_rank(cost: speed.ModelCost, device: str) -> tuple:
    family = FAMILY_PREFERENCE.index(cost.model_name) if cost.model_name in FAMILY_PREFERENCE \
        else len(FAMILY_PREFERENCE)
    options = cost.options
    backbone = options.get("backbone", "none")
    filters = options.get("filters")
    width = 32 if device == "cpu" else 64
    return (
        backbone not in (None, "none"),  # from scratch: no pretrained encoder to gain from
        family,
        abs(int(options.get("depth", 4)) - 4),
        abs(math.log2(filters / width)) if isinstance(filters, (int, float)) else 0,
    )


def choose_recipe(space: SearchSpace, models: list[speed.ModelCost], data: DataSummary,
                  machine: Machine, memory_limit: int | None) -> tuple[dict[str, Any], int]:
    """The recipe's hyperparameter values and batch size (see the module docstring).

    Raises:
        BudgetError: no model of the space fits the memory budget at any batch size.
    """
    params = space.params
    cap = 256 if machine.device == "cpu" else 512
    sizes = sorted(space.input_sizes(), key=lambda s: s[0] * s[1])
    fitting_sizes = [s for s in sizes if max(s) <= cap] or sizes[:1]
    scale = recipe_scale(data.median_size)
    policies = as_values(params["policy"])
    batches = sorted(int(b) for b in as_values(params["batch_size"]))
    target_batch = 4 if machine.device == "cpu" else 8
    for cost in sorted(models, key=lambda c: _model_rank(c, machine.device)):
        for size in reversed(fitting_sizes):
            crop_scale = float(nearest(scale, params["crop_scale"], log_scale=True))
            scaled_short = min(data.median_size) * crop_scale
            wants_crop = scaled_short > min(size) or "resize" not in policies
            policy = "crop" if wants_crop and "crop" in policies else policies[0]
            fits = [b for b in batches
                    if not memory_limit or cost.memory_bytes(size, b) <= memory_limit]
            if not fits:
                continue
            batch = max([b for b in fits if b <= target_batch] or [min(fits)])
            values = config_values(cost.model_name, cost.options, size, policy, crop_scale)
            values.update({
                "loss": _recipe_loss(params["loss"]),
                "aug_strength": float(nearest(0.5 if data.train_images < 1000 else 0.25,
                                              params["aug_strength"])),
                "learning_rate": float(nearest(1e-3, params["learning_rate"], log_scale=True)),
                "batch_size": batch,
                "weight_ema": nearest(RECIPE_WEIGHT_EMA, params["weight_ema"]),
                "rebalance": nearest(RECIPE_REBALANCE, params["rebalance"]),
            })
            if policy == "crop":
                values["rare_crops"] = float(nearest(RECIPE_RARE_CROPS, params["rare_crops"]))
            return values, batch
    batch = batches[0]
    smallest = min(models, key=lambda c: c.memory_bytes(sizes[0], batch))
    raise BudgetError(
        f"the memory budget {memory_limit / 2**20:.0f} MB fits no configuration: the smallest "
        f"({smallest.model_name}) needs {smallest.memory_bytes(sizes[0], batch) / 2**20:.0f} MB "
        f"at batch {batch} and input {format_input_size(sizes[0])}. Raise --memory-budget or "
        "list smaller models, input sizes or batch sizes in the space."
    )


def cheaper_recipe(recipe: dict[str, Any], space: SearchSpace, models: list[speed.ModelCost],
                   memory_limit: int | None) -> dict[str, Any] | None:
    """The next recipe down from `recipe` for a budget that trains it too little, or None:
    the same model with half the filters, where the space measured that model (not below
    `MIN_RECIPE_FILTERS`); else, for a `resize` recipe, the space's next smaller input size
    (not below `MIN_RECIPE_SIZE`). Everything else is kept: loss, augmentation, learning
    rate, batch size (a cheaper model needs less memory)."""
    config = trial_model_config(recipe)
    filters = config["options"].get("filters")
    half = [m for m in narrower_widths(recipe, models, memory_limit)
            if m.options["filters"] == filters // 2 >= MIN_RECIPE_FILTERS]
    if half:
        return {**recipe, f"{config['model_name']}/filters": filters // 2}
    if recipe["policy"] != "resize":
        return None
    area = config["input_size"][0] * config["input_size"][1]
    smaller = [s for s in space.input_sizes() if s[0] * s[1] < area and min(s) >= MIN_RECIPE_SIZE]
    if not smaller:
        return None
    return {**recipe, "input_size": format_input_size(max(smaller, key=lambda s: s[0] * s[1]))}


#: The share of the recipe's training crops placed over a rare-class pixel (policy crop):
#: none. nnU-Net's third lost 0.039 mIoU (crop IoU 0.052) on CWFID at 30 minutes on one
#: core (RESULTS.md, one seed), so the recipe crops uniformly and a space that offers a
#: share (the default space: 0.33) lets exploration try it.
RECIPE_RARE_CROPS = 0.0

#: The recipe's weight averaging horizon in epochs (`autoseg.weight_average`), the space's
#: nearest value (the default space offers 0 and 2, so forks may try without). On CWFID
#: (RESULTS.md, two seeds, 20 minutes) it raised the mean val mIoU of the last 10 epochs by
#: 0.043 and 0.016 and cut their spread by half or more; the best epoch's score moved +0.034 and -0.016.
RECIPE_WEIGHT_EMA = 2

#: The recipe weighs classes up when its own scores show it misses some (`autoseg.rebalance`).
RECIPE_REBALANCE = "auto"

#: The recipe's loss, best first: CE + soft Dice (nnU-Net's), then losses that weigh rare
#: classes up, then plain CE.
LOSS_PREFERENCE = ("ce_dice", "dice", "focal", "weighted_ce", "tversky", "jaccard", "ce")


def _recipe_loss(value: Any) -> str:
    offered = as_values(value)
    return next((loss for loss in LOSS_PREFERENCE if loss in offered), offered[0])


# --------------------------------------------------------------------------------------------
# The plan.


def enumerate_configurations(space: SearchSpace, models: list[speed.ModelCost]) -> list[dict]:
    """The cost-deciding values of every configuration of the space (ranges: ends, middle)."""
    configs = []
    for cost in models:
        for size in space.input_sizes():
            for policy in as_values(space.params["policy"]):
                scales = as_values(space.params["crop_scale"]) if policy == "crop" else [1.0]
                for scale in scales:
                    configs.append(config_values(cost.model_name, cost.options, size, policy,
                                                 float(scale)))
    return configs


#: With `explore="auto"` (the default), the plan explores only when the recipe alone would
#: train at least this many crops in the whole budget; below it, the recipe gets the whole
#: budget. At 30-60 minutes on a CPU (~2,000-10,000 crops), the search that explored lost
#: to the recipe trained on one schedule for the whole budget in 15 of 21 runs on CWFID and
#: CamVid, by 0.011 mIoU on average; at 60 minutes on CWFID the recipe still gained at its
#: last epoch (~9,700 crops), though its score had been flat mid-schedule, while the rate was
#: high (benchmarks/RESULTS.md, issue #11). Twice the most measured; `explore="always"`
#: explores wherever it fits.
EXPLORE_AFTER_IMAGES = 20000
#: The values of `explore`: "auto" (`EXPLORE_AFTER_IMAGES`) or "always".
EXPLORE_MODES = ("auto", "always")


#: The shares of `recipe_only`: the recipe for the whole budget, no search.
RECIPE_ONLY = {"recipe": 1.0, "explore": 0.0, "finish": 0.0}


def make_plan(space: SearchSpace, models: list[speed.ModelCost], data: DataSummary,
              machine: Machine, costs: speed.CostModel, budget_seconds: float | None,
              memory_limit: int | None, recipe_only: bool = False,
              runs_recipe: bool = True, explore: str = "auto") -> Plan:
    """The plan for a resolved space (see the module docstring).

    Args:
        space: The resolved search space.
        models: `speed.measure_models` of every model configuration of the space.
        data: The dataset and split.
        machine: Device and precision.
        costs: The calibrated cost model.
        budget_seconds: The time budget, or None.
        memory_limit: The memory budget in bytes, or None.
        recipe_only: The recipe gets the whole budget and nothing else runs (a baseline).
        runs_recipe: The tuner runs the recipe first (the planned Hyperband), so the plan may
            give it the whole budget when exploring does not fit. Other tuners only skip
            the dropped configurations.
        explore: "auto" (the default) or "always": `Plan.explore`.

    Raises:
        BudgetError: nothing fits the memory budget, or not one epoch of the cheapest recipe
            fits the time budget.
    """
    def attempt(recipe: dict[str, Any]) -> tuple[Plan | None, BudgetError | None]:
        try:
            return _plan_for(recipe, space, models, data, machine, costs, budget_seconds,
                             memory_limit, recipe_only, runs_recipe, explore), None
        except BudgetError as error:  # not one epoch of this recipe fits the budget
            return None, error

    current, _ = choose_recipe(space, models, data, machine, memory_limit)
    plan, error = attempt(current)
    steps = []
    while budget_seconds is not None and (plan is None or not plan.recipe_trains_enough()):
        cheaper = cheaper_recipe(current, space, models, memory_limit)
        if cheaper is None:
            break
        trained = f"{plan.recipe_passes()} passes" if plan else "not one epoch"
        steps.append(f"{describe(current)}: {trained}")
        current = cheaper
        plan, error = attempt(current)
    if plan is None:
        raise error
    plan.recipe_steps = steps
    return plan


def _plan_for(recipe: dict[str, Any], space: SearchSpace, models: list[speed.ModelCost],
              data: DataSummary, machine: Machine, costs: speed.CostModel,
              budget_seconds: float | None, memory_limit: int | None, recipe_only: bool,
              runs_recipe: bool, explore: str = "auto") -> Plan:
    """`make_plan` for a given recipe."""
    shares = dict(RECIPE_ONLY) if recipe_only else {
        "recipe": RECIPE_SHARE, "explore": 1 - RECIPE_SHARE - FINISH_SHARE, "finish": FINISH_SHARE}
    plan = Plan(
        budget_seconds=budget_seconds, shares=shares, recipe=recipe,
        recipe_epochs=space.max_epochs, min_epochs=None, kept=[], dropped=[],
        models=[dataclasses.asdict(m) for m in models], costs=costs.to_dict(),
        data=dataclasses.asdict(data),
        machine={**dataclasses.asdict(machine), "memory_budget_bytes": memory_limit},
        batch_sizes=sorted(int(b) for b in as_values(space.params["batch_size"])),
        explore=explore,
    )
    if budget_seconds is not None:
        plan.passes_per_epoch = passes_per_epoch(data, recipe)
        seconds = plan.epoch_seconds(recipe)
        if budget_seconds - costs.fixed_seconds < seconds:
            raise BudgetError(
                f"the time budget of {budget_seconds:.0f} s is too short: one epoch of the "
                f"recipe ({describe(recipe)}) takes ~{seconds:.0f} s after a trial's "
                f"~{costs.fixed_seconds:.0f} s of start-up. Give a longer --time-budget or a "
                "space with smaller models or input sizes."
            )
        plan.recipe_epochs = plan.share_epochs()
        plan.min_epochs = plan.required_epochs()
    for values in enumerate_configurations(space, models):
        entry = {"config": values, "epoch_seconds": round(plan.epoch_seconds(values), 2)}
        reason = plan.admits(values)
        if reason:
            plan.dropped.append({**entry, "reason": reason})
        else:
            plan.kept.append(entry)
    if budget_seconds is not None and runs_recipe and not plan.recipe_only:
        _recipe_only_unless_exploration_fits(plan)
    return plan


def passes_per_epoch(data: DataSummary, recipe: dict[str, Any]) -> int:
    """Whole passes over the training photos that keep the recipe's validation (forward
    only) within `VALIDATION_SHARE` of an epoch's compute (training is 3x the forward)."""
    validation = validation_units(data, trial_model_config(recipe))
    crops = validation * (1 - VALIDATION_SHARE) / (3 * VALIDATION_SHARE)
    return max(1, min(MAX_PASSES, math.ceil(crops / max(1, data.train_images))))


def minimal_exploration_seconds(plan: Plan) -> tuple[float, int]:
    """(seconds, epochs): the least exploration worth running: the recipe and `MIN_VARIANTS`
    variants at a median kept configuration's epoch time, each trained for `epochs`, a
    `1 / EXPLORE_FIDELITY` of `min_epochs` (the recipe's epochs, capped at `ENOUGH_IMAGES`
    crops' worth). Below the cap an epoch is worth more than what a variant teaches, so the
    recipe takes the time; beyond it (long budgets, fast machines) exploring pays."""
    epochs = max(MIN_EPOCHS, math.ceil((plan.min_epochs or plan.recipe_epochs) / EXPLORE_FIDELITY))
    recipe = plan.epoch_seconds(plan.recipe)
    # The kept configurations' times as planned, corrected by what trials measured since.
    scale = plan.cost_model.correction()
    variants = sorted(k["epoch_seconds"] * scale for k in plan.kept) or [recipe]
    typical = variants[len(variants) // 2]
    fixed = plan.cost_model.fixed_seconds
    seconds = (fixed + epochs * recipe) + MIN_VARIANTS * (fixed + epochs * typical)
    return seconds, epochs


def fork_epochs(plan: Plan) -> int:
    """Epochs each fork of the recipe trains on: `1 / FORK_FIDELITY` of the recipe's epochs
    (capped at `ENOUGH_IMAGES` crops' worth, as `min_epochs`), at least `MIN_EPOCHS`."""
    return max(MIN_EPOCHS, math.ceil((plan.min_epochs or plan.recipe_epochs) / FORK_FIDELITY))


def minimal_fork_seconds(plan: Plan, fixed_seconds: float | None = None) -> float:
    """The least fork exploration worth running: the control and `MIN_VARIANTS` forks, each
    `fork_epochs` of the recipe after a trial's fixed cost (`fixed_seconds`, as measured;
    defaults to the cost model's)."""
    fixed = plan.cost_model.fixed_seconds if fixed_seconds is None else fixed_seconds
    return (1 + MIN_VARIANTS) * (fixed + fork_epochs(plan) * plan.epoch_seconds(plan.recipe))


def recipe_takes_all(plan: Plan, measured_epoch_seconds: float) -> str | None:
    """Re-checks the plan while its recipe trains: at the recipe's measured epoch time, the
    reason exploring no longer fits its share, or None. With a reason, the recipe should
    train to the end of the budget in one schedule: a second schedule on the same weights
    (the finishing continuation) lost to one long one on CWFID (RESULTS.md, issue #11 arms
    at 30 minutes: 0.578 against 0.673)."""
    if plan.budget_seconds is None or plan.recipe_only:
        return None
    plan = Plan.from_dict(copy.deepcopy(plan.to_dict()))  # the search's own observes trials
    plan.observe(plan.recipe, measured_epoch_seconds)
    too_few = _too_few_crops(plan, measured_epoch_seconds)
    if too_few:
        return f"{too_few}; the recipe trains to the end of the budget"
    needed, epochs = minimal_exploration_seconds(plan)
    share = plan.budget_seconds * plan.shares["explore"]
    if needed <= share or minimal_fork_seconds(plan) <= share:
        return None
    return (f"the recipe measured {measured_epoch_seconds:.0f} s an epoch: exploring would "
            f"need ~{_minutes(minimal_fork_seconds(plan))} (the recipe forked {MIN_VARIANTS} "
            f"ways and continued, {fork_epochs(plan)} epochs each), more than its "
            f"{_minutes(share)}; the recipe trains to the end of the budget")


def _too_few_crops(plan: Plan, epoch_seconds: float | None = None) -> str | None:
    """Why exploring cannot pay (`EXPLORE_AFTER_IMAGES`), with `explore="auto"`, or None."""
    crops = plan.budget_crops(epoch_seconds)
    if plan.explore != "auto" or crops is None or crops >= EXPLORE_AFTER_IMAGES:
        return None
    at = (f"~{plan.epoch_seconds(plan.recipe):.0f}" if epoch_seconds is None
          else f"{epoch_seconds:.0f}")
    return (f"the recipe alone trains ~{crops} crops in the budget ({at} s an epoch), fewer "
            f"than {EXPLORE_AFTER_IMAGES}, where every epoch it gets is worth more than what "
            "exploring teaches (`--explore always` explores anyway)")


def _recipe_only_unless_exploration_fits(plan: Plan) -> None:
    """Gives the recipe the whole budget when exploring cannot pay (`_too_few_crops`) or fits
    neither from scratch nor as forks; else sets how the plan explores."""
    too_few = _too_few_crops(plan)
    if too_few:
        _recipe_gets_the_budget(plan, too_few)
        return
    needed, epochs = minimal_exploration_seconds(plan)
    share = plan.budget_seconds * plan.shares["explore"]
    if needed <= share:
        return
    scratch = (f"variants from scratch need ~{_minutes(needed)} (the recipe and "
               f"{MIN_VARIANTS} variants, {epochs} epochs each)")
    forks = minimal_fork_seconds(plan)
    if forks <= share:
        plan.exploration = "forks"
        plan.exploration_reason = (
            f"{scratch}, more than its {_minutes(share)}; {MIN_VARIANTS} forks and the "
            f"control need ~{_minutes(forks)}")
        return
    _recipe_gets_the_budget(plan, (
        f"exploring needs ~{_minutes(needed)} (the recipe and {MIN_VARIANTS} variants, "
        f"{epochs} epochs each) or, forking the recipe, ~{_minutes(forks)} (the control and "
        f"{MIN_VARIANTS} forks, {fork_epochs(plan)} epochs each), more than its "
        f"{_minutes(share)}"))


def _recipe_gets_the_budget(plan: Plan, why: str) -> None:
    """Makes `plan` the recipe alone (`RECIPE_ONLY`) for the reason `why`."""
    plan.recipe_only_reason = f"{why}: the recipe gets the whole budget"
    plan.shares = dict(RECIPE_ONLY)
    plan.recipe_epochs = plan.share_epochs()


def plan_lines(plan: Plan, limit: int = 4) -> list[str]:
    data, machine, recipe = plan.data, plan.machine, plan.recipe
    h, w = data["median_size"]
    rare = plan._summary().rarest
    costs = plan.cost_model
    lines = [
        f"[plan] data: {data['train_images']} train / {len(data['val_sizes'])} val photos, "
        f"median {w}x{h}"
        + (f", rarest class {rare[0]} {rare[1] * 100:.1f} % of pixels" if rare else "")
        + f"; {machine['device']} ({machine['cores']} cores), {machine['precision']}, "
        f"a plain U-Net trains at {costs.gflops:.0f} GFLOP/s"
        + (f" in its convolutions, {costs.gelements:.2f} G activations/s in its other layers"
           + ("" if costs.gelements_measured else
              f" (assumed: {costs.gflops / costs.gelements:.0f} FLOPs an activation)")
           if costs.gelements else "")
    ]
    seconds = plan.epoch_seconds(recipe)
    budget = plan.budget_seconds
    share = (f" in {_minutes(budget * plan.shares['recipe'])} "
             f"({plan.shares['recipe'] * 100:.0f} % of the budget)" if budget else "")
    lines.append(
        f"[plan] recipe (trial 0): {describe(recipe)}, {recipe['loss']}, aug "
        f"{recipe['aug_strength']:g}, lr {recipe['learning_rate']:.2g} cosine, batch "
        f"{recipe['batch_size']}"
        + (f", weights averaged over {recipe['weight_ema']:g} epochs" if recipe.get("weight_ema") else "")
        + _rebalance_note(recipe, plan.recipe_epochs)
        + f": ~{seconds:.0f} s an epoch, {plan.recipe_epochs} epochs{share}"
    )
    if plan.recipe_steps:
        lines.append(
            f"[plan] a cheaper recipe, for at least {MIN_RECIPE_PASSES} passes over the "
            "training photos in its time: " + "; ".join(plan.recipe_steps)
            + f"; the recipe above: {plan.recipe_passes()} passes")
    if plan.passes_per_epoch > 1:
        lines.append(
            f"[plan] an epoch is {plan.passes_per_epoch} passes over the training photos (a "
            f"random crop of each), so that validating after it takes at most "
            f"{VALIDATION_SHARE * 100:.0f} % of it")
    total = len(plan.kept) + len(plan.dropped)
    if plan.recipe_only:
        lines.append(f"[plan] recipe only: {plan.recipe_only_reason or 'as asked'}; "
                     "nothing else runs")
        return lines
    if plan.dropped:
        lines.append(f"[plan] drops {len(plan.dropped)} of {total} configurations "
                     f"(all in plan.json), e.g.:")
        by_cost = sorted(plan.dropped, key=lambda d: d["epoch_seconds"])
        for entry in by_cost[:limit]:
            lines.append(f"[plan]   {describe(entry['config'])}: {entry['reason']}")
    else:
        lines.append(f"[plan] keeps all {total} configurations")
    if budget:
        lines.append(_exploration_line(plan, seconds))
    return lines


def _rebalance_note(recipe: dict[str, Any], epochs: int) -> str:
    """What the recipe line says of `rebalance` (`autoseg.rebalance`), or ""."""
    at = rebalance_epoch(epochs)
    if at is None or not rebalances(recipe.get("loss"), recipe.get("rebalance"), 0):
        return ""
    return f", {REBALANCED[recipe['loss']]} from epoch {at} if it then misses classes"


def _exploration_line(plan: Plan, recipe_seconds: float) -> str:
    """The `[plan]` line of what follows the recipe (a plan with a budget)."""
    budget, costs = plan.budget_seconds, plan.cost_model
    explore = budget * plan.shares["explore"]
    finish = _minutes(budget * plan.shares["finish"])
    further = "training the best further"
    if plan.finish_on == TRAIN_AND_VAL:
        further += " on the training and validation photos"
    if plan.exploration == "forks":
        forks = minimal_fork_seconds(plan)
        rest = plan.after_forks_seconds()
        return (f"[plan] then ~{_minutes(forks)} forking the recipe: its weights trained on "
                f"for {fork_epochs(plan)} epochs each, unchanged (the control) and "
                f"{MIN_VARIANTS} ways with its {', '.join(FORK_GROUPS)} redrawn "
                f"({plan.exploration_reason}); and ~{_minutes(rest)} "
                f"{further}. The recipe's learning rate decays over its lineage, "
                f"{plan.lineage_epochs()} epochs: the recipe, a fork and the finish. "
                "If the recipe's score still climbs at the end of its share, it trains to the "
                "end of the budget instead (`autoseg.climbing`)")
    kept = [k["epoch_seconds"] for k in plan.kept] or [recipe_seconds]
    typical = sorted(kept)[len(kept) // 2]
    return (f"[plan] then {_minutes(explore)} exploring variants of the recipe (Hyperband, "
            f"~{explore / (typical + costs.fixed_seconds):.0f} epochs' worth at a median "
            f"~{typical:.0f} s an epoch), and {finish} {further}")


# --------------------------------------------------------------------------------------------
# Exploring around the recipe.


def neighbour(start: dict[str, Any], space: SearchSpace, rng: random.Random,
              admits: Callable[[dict], str | None], seen: Callable[[dict], bool],
              attempts: int = 200, only: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """A variant of `start` with one or two of its choices redrawn from the space.

    The groups redrawn: the model (another model configuration, or one option of this one),
    input size, policy, crop scale, loss, augmentation, learning rate, batch size; only those
    in `only` when given (a fork keeps the model). Returns None when `attempts` draws found
    no admissible, unseen variant.
    """
    groups = [g for g in _mutable_groups(start, space) if only is None or g in only]
    if not groups:
        return None
    for _ in range(attempts):
        count = 1 if rng.random() < 0.6 or len(groups) == 1 else 2
        values = dict(start)
        for group in rng.sample(groups, count):
            values = _redraw(values, group, space, rng)
        if values.get("policy") != "crop":
            values.pop("crop_scale", None)
            values.pop("rare_crops", None)
        if values == start or seen(values) or admits(values) is not None:
            continue
        return values
    return None


#: The unweighted losses a trial may turn weighted mid-training (`autoseg.rebalance`), and the
#: loss each becomes.
REBALANCED = {"ce_dice": "weighted_ce_dice"}
#: The share of the epochs a trial aims at that it trains before it reads its scores.
REBALANCE_SHARE = 0.2
#: The earliest epoch read (1-based): on CWFID, crop is under 0.05 IoU after one epoch and
#: learned (0.24 on the training crops) after four.
MIN_REBALANCE_EPOCH = 4


def rebalance_epoch(target_epochs: int | None) -> int | None:
    """The epoch (1-based) whose scores decide whether a trial that aims at `target_epochs`
    rebalances (`autoseg.rebalance`); None when it trains too few epochs for the weights to
    act on at least as many as it read (a variant of 7 epochs would read 4 and train 3)."""
    if not target_epochs:
        return None
    at = max(MIN_REBALANCE_EPOCH, math.ceil(REBALANCE_SHARE * target_epochs))
    return at if 2 * at <= target_epochs else None


def rebalances(loss: str | None, mode: str | None, initial_epoch: int) -> bool:
    """Whether a trial with this loss and `rebalance` value decides from its scores: a loss
    with a weighted form, `auto`, and a trial that starts from scratch (one that continues a
    trial trains with the loss its past trial ended with: `rebalance.continued_values`)."""
    return mode == REBALANCE_MODES[0] and loss in REBALANCED and int(initial_epoch) == 0


def missed_classes(metrics: dict[str, float]) -> list[str]:
    """The classes a trial does not learn, from its metrics at its checkpoint: IoU under
    `MISSED_IOU` both on its training crops (`iou_<class>`) and on the validation photos
    (`val_iou_<class>`). A class absent from one side (NaN there) is not judged. A class the
    model does not predict even on the photos it trains on is the loss's to fix, not
    generalisation's."""
    missed = []
    for key, value in metrics.items():
        if not key.startswith("val_iou_"):
            continue
        name = key.removeprefix("val_iou_")
        train = metrics.get(f"iou_{name}")
        if train is None or not (math.isfinite(value) and math.isfinite(train)):
            continue
        if value < MISSED_IOU and train < MISSED_IOU:
            missed.append(name)
    return missed


def diagnosed_fork(start: dict[str, Any], space: SearchSpace, missed: list[str],
                   admits: Callable[[dict], str | None],
                   seen: Callable[[dict], bool]) -> tuple[dict[str, Any], str] | None:
    """The fork one would try first after reading the recipe's per-class scores, and why: with
    classes `missed`, `start` with the first of `CLASS_BALANCING_LOSSES` the space offers
    (other than its own loss). None without missed classes, or when no such fork is
    admissible and unseen (the next forks are drawn at random, `neighbour`)."""
    if not missed:
        return None
    offered = as_values(space.params["loss"])
    for loss in CLASS_BALANCING_LOSSES:
        values = {**start, "loss": loss}
        if loss in offered and loss != start.get("loss") and not seen(values) \
                and admits(values) is None:
            return values, (f"{loss} for the classes the recipe misses ({', '.join(missed)}: "
                            f"IoU under {MISSED_IOU:g} on its training crops and validation photos)")
    return None


def _mutable_groups(values: dict[str, Any], space: SearchSpace) -> list[str]:
    groups = []
    combos = [(m, c) for m, o in space.models.items() for c in model_option_grid(o)]
    if len(combos) > 1:
        groups.append("model")
    for key in ("input_size", "policy", "loss", "aug_strength", "learning_rate", "batch_size",
                "weight_ema"):
        value = space.params[key]
        if isinstance(value, Range) or len(as_values(value)) > 1:
            groups.append(key)
    for key in ("crop_scale", "rare_crops"):
        value = space.params[key]
        if values.get("policy") == "crop" and (isinstance(value, Range) or len(as_values(value)) > 1):
            groups.append(key)
    return groups


def _redraw(values: dict[str, Any], group: str, space: SearchSpace,
            rng: random.Random) -> dict[str, Any]:
    values = dict(values)
    if group == "model":
        combos = [(m, c) for m, o in space.models.items() for c in model_option_grid(o)]
        model_name, options = rng.choice(combos)
        values = {k: v for k, v in values.items() if not k.startswith(f"{values['model_name']}/")}
        values["model_name"] = model_name
        values.update({f"{model_name}/{k}": v for k, v in options.items() if not isinstance(v, dict)})
        return values
    value = space.params[group]
    if isinstance(value, Range):
        if group == "learning_rate":  # a factor of up to 5 either way, inside the range
            drawn = values[group] * 5 ** rng.uniform(-1, 1)
        else:
            drawn = rng.uniform(value.min, value.max)
        values[group] = nearest(drawn, value)
    else:
        others = [v for v in as_values(value) if v != values.get(group)]
        if others:
            values[group] = rng.choice(others)
    if group == "input_size":
        values[group] = format_input_size(parse_input_size(values[group]))
    if group == "policy":
        if values["policy"] == "crop":
            values["crop_scale"] = nearest(1.0, space.params["crop_scale"])
            values["rare_crops"] = nearest(RECIPE_RARE_CROPS, space.params["rare_crops"])
        else:
            values.pop("crop_scale", None)
            values.pop("rare_crops", None)
    return values


# --------------------------------------------------------------------------------------------
# Measuring: what a search runs before its plan.


def data_summary(data) -> DataSummary:
    """The `DataSummary` of a `hypermodel.TrainingData`."""
    from autoseg.data import pipeline

    dataset = data.dataset
    fingerprint = dataset.fingerprint or {}
    val_sizes = pipeline.image_sizes(dataset, data.val_stems)
    median = ((fingerprint.get("image_size") or {}).get("median")
              or sorted(val_sizes)[len(val_sizes) // 2])
    channels = max(fingerprint.get("channels") or [3])
    return DataSummary(
        train_images=len(data.train_stems), val_sizes=[tuple(s) for s in val_sizes],
        median_size=tuple(median), class_fraction=dict(fingerprint.get("class_pixel_fraction") or {}),
        channels=int(channels),
    )


def plan_search(hypermodel, budget_seconds: float | None, memory_limit: int | None,
                log: Callable[[str], None] | None = None, recipe_only: bool = False,
                runs_recipe: bool = True, finish_on: str = TRAIN, explore: str = "auto") -> Plan:
    """Measures the space's models and this machine, then makes the plan.

    Builds every model configuration once (FLOPs, memory), chooses the recipe, and times a
    few training steps of it and of a narrower sibling (`calibrate`); `AUTOSEG_GFLOPS` set
    to a number skips the timing: that FLOP rate, and activations at the recipe precision's
    `speed.FLOPS_PER_ELEMENT` (a plan then predicts more time than from FLOPs alone).
    `finish_on` becomes `Plan.finish_on`, `explore` `Plan.explore`.
    """
    import os

    from autoseg import cost_cache, devices

    space = hypermodel.space
    combos = [(m, c) for m, o in space.models.items() for c in model_option_grid(o)]
    if log:
        log(f"[plan] measuring {len(combos)} model configurations and this machine's speed")
    data = data_summary(hypermodel.data)
    cache = cost_cache.CostCache.default()
    models = speed.measure_models(combos, hypermodel.data.dataset.num_classes,
                                  precision_of=hypermodel.precision_of,
                                  channels=hypermodel.data.dataset.channels, cache=cache)
    if log and cache.hits:
        log(f"[plan] {cache.hits} of {len(combos)} model measurements from {cache.path}")
    machine = Machine(device="gpu" if devices.gpu_count() else "cpu", precision="float32",
                      cores=devices.usable_cpus())
    recipe, batch = choose_recipe(space, models, data, machine, memory_limit)
    machine.precision = hypermodel.precision_of(recipe["model_name"])
    gflops = os.environ.get("AUTOSEG_GFLOPS")
    ratio = speed.flops_per_element(machine.precision)
    costs = (speed.CostModel(gflops=float(gflops), gelements=float(gflops) / ratio) if gflops
             else calibrate(hypermodel, recipe, batch, models, memory_limit))
    plan = make_plan(space, models, data, machine, costs,
                     budget_seconds, memory_limit, recipe_only=recipe_only,
                     runs_recipe=runs_recipe, explore=explore)
    plan.finish_on = finish_on
    return plan


def calibration_sibling(recipe: dict[str, Any], models: list[speed.ModelCost],
                        memory_limit: int | None) -> speed.ModelCost | None:
    """The recipe's model at a narrower width, to time beside it (`calibrate`): the space's
    width nearest half the recipe's, below it (a narrower model costs the calibration less
    than the recipe itself); None when the space has none or its model has no `filters`."""
    filters = trial_model_config(recipe)["options"].get("filters")
    return min(narrower_widths(recipe, models, memory_limit),
               key=lambda m: abs(math.log2(m.options["filters"] / (filters / 2))), default=None)


def narrower_widths(recipe: dict[str, Any], models: list[speed.ModelCost],
                    memory_limit: int | None) -> list[speed.ModelCost]:
    """The recipe's model at the space's narrower widths (`filters`, its other options
    the same) that fit the memory budget at the recipe's input size and batch; none when
    its model has no `filters`."""
    config = trial_model_config(recipe)
    name, options = config["model_name"], config["options"]
    filters = options.get("filters")
    if not isinstance(filters, int):
        return []
    batch = int(recipe["batch_size"])
    return [m for m in models if m.model_name == name
            and isinstance(m.options.get("filters"), int) and m.options["filters"] < filters
            and _same({**m.options, "filters": filters}, options)
            and (not memory_limit or m.memory_bytes(config["input_size"], batch) <= memory_limit)]


def calibrate(hypermodel, recipe: dict[str, Any], batch: int, models: list[speed.ModelCost],
              memory_limit: int | None) -> speed.CostModel:
    """The cost model of this machine, from a few timed training steps.

    Times the recipe's model and its `calibration_sibling`, each built as a trial builds
    it, and fits a FLOP rate and an activation rate to them (`speed.fit_rates`); without a
    sibling, or when the two timings do not split, the rates keep the usual ratio of the
    recipe's precision (`speed.FLOPS_PER_ELEMENT`).

    Args:
        hypermodel: The search's `AutosegHyperModel`.
        recipe: The recipe's hyperparameter values.
        batch: Its batch size.
        models: The space's measured model configurations.
        memory_limit: The memory budget in bytes, or None.
    """
    import keras

    config = trial_model_config(recipe)
    cost = next(m for m in models if m.model_name == config["model_name"]
                and _same(m.options, config["options"]))
    sibling = calibration_sibling(recipe, models, memory_limit)
    costs = speed.CostModel(gflops=1.0)
    timings = []
    for model_cost in [cost] + ([sibling] if sibling else []):
        values = dict(recipe)
        if model_cost is sibling:
            values[f"{sibling.model_name}/filters"] = sibling.options["filters"]
        model = hypermodel.build_values(values)
        seconds = speed.step_seconds(model, batch)
        timings.append(speed.timing(model_cost, config["input_size"], batch, seconds,
                                    costs.efficiency))
        del model
        keras.backend.clear_session()
    costs.gflops, costs.gelements, costs.gelements_measured = speed.fit_rates(
        *timings, ratio=speed.flops_per_element(cost.precision))
    return costs
