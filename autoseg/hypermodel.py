"""KerasTuner HyperModels over every architecture family: the only place that touches `hp`.

- `FamilyHyperModel(family, ...)` searches one family (`"unet"`, `"segnet"`, ...);
  `AutosegHyperModel` chooses `model_name` across families and delegates.
- Hyperparameter names: global ones are bare (`model_name`, `input_size`, `batch_size`,
  `loss`, `aug_strength`, `learning_rate`, `policy`, `crop_scale`); per-model options are
  `<model>/<option>` (`unet/depth`, `deeplabv3plus/backbone`) inside
  `hp.conditional_scope("model_name", [model])`. Per-model names rather than one shared
  `depth`: KerasTuner's GridSearch mis-enumerates same-named conditional hyperparameters.
- `build` draws what shapes the model (architecture, options, input size) and what
  compiles it (loss, learning rate); `fit` draws the training-time choices (batch size,
  augmentation, crop scale), batches the data itself, bounds the batch by the memory
  budget, and passes `**kwargs` (the tuner's callbacks, Hyperband's epochs) to `model.fit`.

Example (plain KerasTuner):
```python
import keras_tuner as kt
from autoseg.hypermodel import AutosegHyperModel, TrainingData
data = TrainingData.from_path("sample_dataset")
hypermodel = AutosegHyperModel(space="quick", data=data)
tuner = kt.RandomSearch(hypermodel, objective=kt.Objective("val_mean_iou", "max"),
                        max_trials=3, directory="runs", project_name="demo")
tuner.search(epochs=2)
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import math
import time
from typing import Any, Callable

import keras
import keras_tuner as kt
import numpy as np

from autoseg import budget, climbing, devices, progress, rebalance, registry, speed
from autoseg.data import pipeline
from autoseg.data.dataset import Dataset
from autoseg.data.sources import resolve_dataset
from autoseg.errors import ConfigError
from autoseg.plan import (
    REBALANCED, RECIPE_BRACKET, SCHEDULE_EPOCHS, TRAIN_AND_VAL, TRAIN_ON, continues_a_trial,
    rebalances, recipe_takes_all, restores_optimizer,
)
from autoseg.search_space import (
    Range,
    SearchSpace,
    as_values,
    format_input_size,
    load_space,
    parse_input_size,
    resolve_auto,
    trial_model_config,
)
from autoseg.weight_average import WeightAverage


@dataclasses.dataclass
class TrainingData:
    """The data and limits every trial shares.

    Attributes:
        dataset: The canonical dataset.
        train_stems, val_stems: The split (seeded; dataset.yaml `splits` win).
        seed: Seed for the split, augmentation and shuffling.
        memory_budget_bytes: Batch sizes whose predicted training memory exceeds this are
            never used. None: no bound.
        deadline: `time.time()` after which no epoch starts (None: no time budget).
    """

    dataset: Dataset
    train_stems: list[str]
    val_stems: list[str]
    seed: int = 0
    memory_budget_bytes: int | None = None
    deadline: float | None = None
    _class_weights: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_path(cls, path, val_fraction: float = 0.2, seed: int = 0, **kwargs) -> "TrainingData":
        dataset = resolve_dataset(path)
        train, val = pipeline.split_stems(dataset, val_fraction=val_fraction, seed=seed)
        return cls(dataset=dataset, train_stems=list(train), val_stems=list(val), seed=seed, **kwargs)

    def class_weights(self, method: str = "median_frequency") -> np.ndarray:
        """`pipeline.class_weights` of the training split only, kept per method."""
        if method not in self._class_weights:
            self._class_weights[method] = pipeline.class_weights(self.dataset, method,
                                                                 stems=self.train_stems)
        return self._class_weights[method]


def build_trial_model(values: dict[str, Any], num_classes: int, space: dict | None = None,
                      channels: int = 3):
    """Rebuilds (uncompiled) the model a trial trained, from its hyperparameter values.

    Args:
        values: The trial's `hyperparameters.values`.
        num_classes: Classes of the dataset.
        space: The run's resolved space (`run.json["space"]`): structured options it fixes
            (e.g. pix2pix `generator_options`) are not hyperparameters and come from here.
        channels: Input channels, the dataset's `channels` (1 grey, 3 RGB). Defaults to 3.
    """
    from autoseg import models

    config = trial_model_config(values)
    model_space = ((space or {}).get("models") or {}).get(config["model_name"]) or {}
    fixed = {k: v for k, v in model_space.items() if isinstance(v, dict) and not ({"min", "max"} <= set(v))}
    options = {**fixed, **config["options"]}
    return models.build(config["model_name"], num_classes, (*config["input_size"], channels),
                        **options)


#: A search trains for a few hundred steps. Keras' default BatchNormalization momentum
#: (0.99; 0.999 in MobileNetV2) leaves the moving statistics far from the batch statistics
#: after that few steps: on sample/ a U-Net scored val mean IoU 0.33 with its moving
#: statistics and 0.64 with batch statistics, same weights. 0.9 tracks them within ~20 steps.
BATCHNORM_MOMENTUM = 0.9


def set_batchnorm_momentum(model, momentum: float) -> None:
    """Sets the momentum of every BatchNormalization layer, nested models included."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


class FitRecord(dict):
    """What `fit` learned about a trial, for the leaderboard (a plain dict).

    Among its keys: `precision` (the Keras dtype policy), `replicas`, `batch_size` (per
    replica: what the memory budget bounds) and `global_batch_size` (batch_size x replicas:
    what the dataset is batched at).
    """


class BaseSegmentationHyperModel(kt.HyperModel):
    """Shared build/fit logic. Subclasses choose which models they search.

    Args:
        space: A `SearchSpace`, a YAML path or a bundled space name.
        data: The `TrainingData` every trial trains on.
        verbose: Keras per-epoch progress (0, 1 or 2).
        precision: "float32", "mixed" (Keras' `mixed_float16` policy while a trial's model
            is built and compiled), "bfloat16" or "auto" (per family: mixed on a GPU, mixed
            bfloat16 on a CPU with native bfloat16 for the architectures measured faster in
            it, else float32); resolved per architecture by `precision_of`; see
            `autoseg.devices`. Defaults to "float32".

    A model built under a `tf.distribute` strategy's scope (KerasTuner's
    `distribution_strategy=`) trains on its replicas: the drawn batch size is then the
    per-replica batch, bounded by the memory budget of one device, and the dataset is
    batched at per-replica batch x replicas.
    """

    #: The family this hypermodel searches; None searches every model in the space.
    family: str | None = None

    def __init__(self, space: SearchSpace | str | None, data: TrainingData, verbose: int = 0,
                 precision: str = "float32", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(space, SearchSpace):
            space = load_space(space)
        space = resolve_auto(space, data.dataset.fingerprint)
        models = {
            name: options
            for name, options in space.models.items()
            if self.family is None or registry.ARCHITECTURES.get(name).family == self.family
        }
        if not models:
            raise ConfigError(
                f"{space.source}: no model of family {self.family!r} in `models`. "
                f"Add one of: {', '.join(n for n in registry.ARCHITECTURES.names() if registry.ARCHITECTURES.get(n).family == self.family)}."
            )
        self.space = dataclasses.replace(space, models=models)
        self.data = data
        self.verbose = verbose
        devices.resolve_precision(precision)  # raises ConfigError on an unknown one
        #: What the user asked for ("auto", "float32", ...): resolved per architecture.
        self.precision_option = precision
        self.last_fit: FitRecord = FitRecord()
        #: The search's `autoseg.plan.Plan`: configurations it drops fail before training.
        self.plan = None
        #: The metric the search ranks by (the recipe judges its climb by it).
        self.objective = "val_mean_iou"
        #: Passes over the training photos in one epoch; None: the plan's (1 without one).
        #: A refit sets the trial's own.
        self.passes_per_epoch: int | None = None

    # -- declaring hyperparameters -------------------------------------------------------
    @staticmethod
    def _declare(hp, name: str, value: Any, default: Any = None):
        if isinstance(value, Range):
            if value.is_int:
                return hp.Int(name, int(value.min), int(value.max), step=value.step or 1,
                              sampling=value.sampling)
            return hp.Float(name, float(value.min), float(value.max), step=value.step,
                            sampling=value.sampling)
        if isinstance(value, list):
            if len(value) == 1:
                return hp.Fixed(name, value[0])
            return hp.Choice(name, value, default=default if default in value else None)
        if isinstance(value, dict):  # structured fixed option: not a hyperparameter
            return value
        return hp.Fixed(name, value)

    def declare_model(self, hp) -> tuple[str, dict[str, Any]]:
        """Declares `model_name` and every model's options; returns the active ones."""
        names = list(self.space.models)
        model_name = hp.Choice("model_name", names) if len(names) > 1 else hp.Fixed("model_name", names[0])
        active: dict[str, Any] = {}
        for name in names:
            spec = registry.ARCHITECTURES.get(name)
            with hp.conditional_scope("model_name", [name]):
                for option, value in self.space.models[name].items():
                    drawn = self._declare(hp, f"{name}/{option}", value, spec.defaults.get(option))
                    if name == model_name:
                        active[option] = drawn
        return model_name, active

    def declare_policy(self, hp) -> tuple[str, float, float]:
        """`(policy, crop_scale, rare_crops)`; the last two are 1.0 and 0.0 unless cropping."""
        policy = self._declare(hp, "policy", self.space.params["policy"])
        crop_scale, rare_crops = 1.0, 0.0
        with hp.conditional_scope("policy", ["crop"]):
            drawn = self._declare(hp, "crop_scale", self.space.params["crop_scale"])
            drawn_rare = self._declare(hp, "rare_crops", self.space.params["rare_crops"])
            if policy == "crop":
                crop_scale, rare_crops = float(drawn), float(drawn_rare)
        return policy, crop_scale, rare_crops

    def precision_of(self, model_name: str | None) -> str:
        """The Keras dtype policy an architecture (registry name) trains under."""
        return devices.resolve_precision(self.precision_option, model=model_name)

    def precisions(self) -> str | dict[str, str]:
        """The policy of every architecture in the space: one name when they all share it,
        else a mapping architecture -> policy (what `run.json` records as `precision`)."""
        policies = {name: self.precision_of(name) for name in sorted(self.space.models)}
        return next(iter(policies.values())) if len(set(policies.values())) == 1 else policies

    # -- KerasTuner contract -------------------------------------------------------------
    def build(self, hp) -> keras.Model:
        from autoseg import losses, metrics, models

        model_name, options = self.declare_model(hp)
        input_size = parse_input_size(self._declare(hp, "input_size", self.space.params["input_size"]))
        loss_name = self._declare(hp, "loss", self.space.params["loss"])
        learning_rate = float(self._declare(hp, "learning_rate", self.space.params["learning_rate"]))
        dataset = self.data.dataset
        # Layers keep the policy they are built with; compile wraps the optimizer in a
        # LossScaleOptimizer when the model's policy is mixed_float16.
        with devices.dtype_policy(self.precision_of(model_name)):
            model = models.build(model_name, dataset.num_classes,
                                 (*input_size, dataset.channels), **options)
            set_batchnorm_momentum(model, BATCHNORM_MOMENTUM)
            weighting = losses.CLASS_WEIGHTING.get(loss_name)
            weights = self.data.class_weights(weighting) if weighting else None
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                loss=losses.get_loss(loss_name, dataset.num_classes, class_weights=weights,
                                     ignore_index=dataset.ignore_index),
                metrics=metrics.segmentation_metrics(dataset.classes,
                                                     ignore_index=dataset.ignore_index),
                jit_compile=False,  # 2-4x slower and 2x the memory on CPU; see README
            )
        if restores_optimizer(hp.values):
            # Built before the past trial's checkpoint is loaded (by `trial_process`, or by
            # KerasTuner's Hyperband in process), so that the load restores Adam's moments.
            build_optimizer(model)
        return model

    def fit(self, hp, model, *args, **kwargs):
        """Trains `model`; draws batch size, augmentation and crop scale.

        Raises:
            keras_tuner.errors.FailedTrialError: the configuration cannot fit the memory
                budget at any batch size, is one the plan drops, ran out of memory twice, or
                diverged (NaN loss).
        """
        setup = self._draw_training(hp, model)
        epochs = int(kwargs.pop("epochs", self.space.max_epochs))
        kwargs.pop("batch_size", None)  # Keras ignores it for datasets; batching is ours
        kwargs.pop("validation_data", None)
        initial_epoch = int(kwargs.get("initial_epoch", 0))
        time_budget = TimeBudget(self.data.deadline, epochs=epochs,
                                 allotment_seconds=self._allotment(hp),
                                 reconsider=self._reconsider(hp), climbs=self._climbs(hp),
                                 objective=self.objective)
        if time_budget.may_take_the_budget:
            # Keras' loop must be able to run on if the recipe comes to take the whole budget:
            # its share is `shares["recipe"]` of it, planned at an estimated epoch time, and
            # it may run twice as fast. TimeBudget stops at its target and the deadline.
            epochs = max(epochs, math.ceil(2 * epochs / self.plan.shares["recipe"]) + 1)
        callbacks = list(kwargs.pop("callbacks", []))
        if setup.weight_ema > 0:  # first: the tuner's checkpoint must see the average
            # A continued trial's checkpoint is its past trial's average: it goes on.
            callbacks.insert(0, WeightAverage(setup.weight_ema,
                                              continued=continues_a_trial(hp.values)))
        for callback in callbacks:  # the progress line shows the epochs TimeBudget aims at
            if isinstance(callback, progress.EpochProgress):
                callback.target = lambda: time_budget.target
        # The trial's own rate: a restored optimizer (pix2pix's) holds the last fit's decayed one.
        rate = float(self._declare(hp, "learning_rate", self.space.params["learning_rate"]))
        stretch, extra = self._schedule_extension(hp)
        schedule = CosineSchedule(epochs, initial_epoch, budget=time_budget, base=rate,
                                  stretch=stretch, extra=extra)
        callbacks += [time_budget, schedule]
        if rebalances(hp.values.get("loss"), setup.rebalance, initial_epoch):
            callbacks.append(self._rebalance(model, hp.values["loss"], time_budget))
        verbose = kwargs.pop("verbose", self.verbose)
        kwargs.setdefault("shuffle", False)  # the pipeline shuffles; Keras would only warn
        start = time.time()
        history, peak = self._fit_with_retry(model, setup, epochs=epochs, callbacks=callbacks,
                                             verbose=verbose, **kwargs)
        self.last_fit["schedule_epochs"] = schedule.horizon()  # where its forks decay to
        self._record_fit(history, peak, time_budget, start)
        return history

    def _rebalance(self, model, loss: str, time_budget: "TimeBudget") -> rebalance.Rebalance:
        """The callback that weighs classes up mid-training (`autoseg.rebalance`), its weights
        the training split's for the loss `loss` turns into."""
        from autoseg import losses

        turned = REBALANCED[loss]
        strategy = getattr(model, "distribute_strategy", None)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            variable = losses.switchable_weights(model.loss)
        return rebalance.Rebalance(variable, self.data.class_weights(losses.CLASS_WEIGHTING[turned]),
                                   turned, lambda: time_budget.target, self.last_fit)

    def _schedule_extension(self, hp) -> tuple[float, int]:
        """(stretch, extra) of the trial's `CosineSchedule`: the recipe's decays over its
        lineage when the plan forks it (`Plan.schedule_extension`), a fork's to the recipe's
        end (`SCHEDULE_EPOCHS`); else (1, 0), over its own epochs."""
        if SCHEDULE_EPOCHS in hp.values:
            return 1.0, max(0, int(hp.values[SCHEDULE_EPOCHS]) - int(hp.values["tuner/epochs"]))
        if self._allotment(hp) is not None:
            return self.plan.schedule_extension() or (1.0, 0)
        return 1.0, 0

    def _reconsider(self, hp) -> Callable[[float], str | None] | None:
        """For the recipe of a plan that explores after it: `plan.recipe_takes_all` at the
        recipe's measured epoch time (see `TimeBudget`); else None."""
        if (self.plan is None or self.plan.recipe_only or self.data.deadline is None
                or hp.values.get("tuner/bracket") != RECIPE_BRACKET):
            return None
        return functools.partial(recipe_takes_all, self.plan)

    def _climbs(self, hp) -> Callable[[list, float], str | None] | None:
        """For the recipe of a plan that forks it: `climbing.still_climbs` at the end of its
        share, with its objective's scores; else None."""
        if (self.plan is None or self.data.deadline is None
                or hp.values.get("tuner/bracket") != RECIPE_BRACKET
                or not self.plan.forks_recipe):
            return None
        return functools.partial(climbing.still_climbs, self.plan, objective=self.objective)

    def _allotment(self, hp) -> float | None:
        """The training seconds the plan gives this trial: the recipe's share, else None."""
        if self.plan is None or hp.values.get("tuner/bracket") != RECIPE_BRACKET:
            return None
        return self.plan.recipe_seconds()

    def _draw_training(self, hp, model) -> "_TrainingSetup":
        """Declares the training-time hyperparameters and bounds the batch by memory."""
        input_size = tuple(int(d) for d in model.input_shape[1:3])
        policy, crop_scale, rare_crops = self.declare_policy(hp)
        aug_strength = float(self._declare(hp, "aug_strength", self.space.params["aug_strength"]))
        weight_ema = float(self._declare(hp, "weight_ema", self.space.params["weight_ema"]))
        rebalance_mode = str(self._declare(hp, "rebalance", self.space.params["rebalance"]))
        candidates = sorted(int(b) for b in as_values(self.space.params["batch_size"]))
        drawn_batch = int(self._declare(hp, "batch_size", self.space.params["batch_size"]))
        # Every replica holds the whole model and trains on its own batch: the batch size
        # (drawn, bounded, recorded as `batch_size`) is per replica, the budget per device.
        replicas = devices.num_replicas(getattr(model, "distribute_strategy", None))
        dtype = self.precision_of(hp.get("model_name"))
        record = self.last_fit = FitRecord(params=int(model.count_params()), batch_size=drawn_batch,
                                           precision=dtype, replicas=replicas)
        if self.plan is not None and "tuner/bracket" not in hp.values:
            # Other tuners draw from the whole space; the planned Hyperband only admissible ones.
            reason = self.plan.admits(hp.values)
            if reason:
                _fail(record, f"dropped by the plan: {reason}")
        family = registry.ARCHITECTURES.get(hp.get("model_name")).family
        estimate = functools.partial(budget.estimate_training_memory, model,
                                     precision=dtype, family=family)
        limit = self.data.memory_budget_bytes
        fitting = (
            budget.admissible_batch_sizes(model, candidates, limit, precision=dtype,
                                          family=family)
            if limit else candidates
        )
        if not fitting:
            need = estimate(1).total_bytes
            _fail(record, f"does not fit the memory budget: predicted {need / 2**20:.0f} MB "
                          f"at batch 1 > budget {limit / 2**20:.0f} MB")
        batch_size = max([b for b in fitting if b <= drawn_batch] or [min(fitting)])
        if batch_size != drawn_batch:
            record["message"] = f"batch {drawn_batch} is over the memory budget; trained with {batch_size}"
        passes = self.passes_per_epoch or (self.plan.passes_per_epoch if self.plan else 1)
        record["passes_per_epoch"] = int(passes)
        train_stems = list(self.data.train_stems)
        if hp.values.get(TRAIN_ON) == TRAIN_AND_VAL:  # the planned finish (`Plan.finish_on`)
            train_stems += [s for s in self.data.val_stems if s not in set(train_stems)]
            record["trained_on"] = TRAIN_AND_VAL
        return _TrainingSetup(input_size, policy, crop_scale, aug_strength, batch_size,
                              replicas, estimate, int(passes), rare_crops, weight_ema,
                              train_stems, rebalance_mode)

    def _datasets(self, setup: "_TrainingSetup", global_batch: int):
        """The training (repeated, augmented) and validation datasets of one attempt."""
        common = dict(input_size=setup.input_size, policy=setup.policy,
                      crop_scale=setup.crop_scale, batch_size=global_batch, seed=self.data.seed)
        train = pipeline.make_dataset(self.data.dataset, setup.train_stems, training=True,
                                      aug_strength=setup.aug_strength,
                                      rare_crops=setup.rare_crops, repeat=True, **common)
        val = pipeline.make_dataset(self.data.dataset, self.data.val_stems, training=False,
                                    aug_strength=0.0, **common)
        if setup.replicas > 1:
            # Keras splits each dataset batch across the replicas.
            train, val = _even_replica_batches(train, val, global_batch, setup.replicas,
                                               self.data.dataset.ignore_index)
        return train, val

    def _fit_with_retry(self, model, setup: "_TrainingSetup", **fit_kwargs):
        """`model.fit`, halving the batch once after running out of memory."""
        record, batch_size = self.last_fit, setup.batch_size
        for attempt in (0, 1):
            record["batch_size"] = batch_size
            global_batch = record["global_batch_size"] = batch_size * setup.replicas
            record["predicted_peak_memory_bytes"] = int(setup.estimate(batch_size).total_bytes)
            train, val = self._datasets(setup, global_batch)
            try:
                with budget.PeakMemory() as peak:
                    build_optimizer(model)  # inside: out of memory here is retried too
                    history = model.fit(
                        train, validation_data=val,
                        steps_per_epoch=pipeline.steps_per_pass(
                            len(setup.train_stems) * setup.passes, global_batch),
                        **fit_kwargs,
                    )
                return history, peak
            except Exception as exc:  # noqa: BLE001 - only OOM is retried
                if not _is_out_of_memory(exc):
                    raise
                if attempt == 1 or batch_size == 1:
                    _fail(record, f"out of memory at batch {batch_size}: {str(exc).splitlines()[0]}")
                batch_size = max(1, batch_size // 2)
                record["message"] = f"out of memory at batch {batch_size * 2}; retried with {batch_size}"
                gc.collect()
        raise AssertionError("unreachable")

    def _record_fit(self, history, peak, time_budget: "TimeBudget", start: float) -> None:
        """What the trial measured; fails it when the loss diverged."""
        record = self.last_fit
        record["measured_peak_memory_bytes"] = int(peak.peak_bytes)
        record["measured_growth_bytes"] = int(peak.growth_bytes)
        record["train_seconds"] = round(time.time() - start, 2)
        losses_seen = history.history.get("loss", [])
        record["epochs"] = len(losses_seen)
        record["stopped_by_budget"] = time_budget.stopped
        record["epoch_seconds"] = time_budget.epoch_seconds  # Hyperband's cost model reads it
        if time_budget.plan_change:
            record["plan_change"] = time_budget.plan_change  # the search's log shows it
        bad = [i for i, v in enumerate(losses_seen) if not math.isfinite(v)]
        if bad or not losses_seen:
            _fail(record, f"loss diverged (NaN/inf) at epoch {bad[0] + 1 if bad else 1}; "
                          "try a lower learning_rate")


@dataclasses.dataclass
class _TrainingSetup:
    """What `fit` drew for a trial: input handling, augmentation, batch, memory estimate."""

    input_size: tuple[int, int]
    policy: str
    crop_scale: float
    aug_strength: float
    batch_size: int
    replicas: int
    estimate: Any
    passes: int = 1
    rare_crops: float = 0.0
    weight_ema: float = 0.0
    train_stems: list[str] = dataclasses.field(default_factory=list)
    rebalance: str = "off"


def build_optimizer(model) -> None:
    """Creates the optimizer's variables before `model.fit` traces its training step.

    Left to the first step, Adam creates its moments inside the trace, and `tf.function` then
    traces the training step twice (once to create the variables, once to run): a 16-filter
    U-Net's trial at 256 px had 11.0 s of fixed cost before and 8.2 s after (RESULTS.md, "A
    trial's first step traced once"). Called by `build` for a continued trial that restores its
    past trial's optimizer (`plan.restores_optimizer`): Keras skips the saved optimizer
    variables of an unbuilt optimizer, and restores them into a built one. Its learning rate
    is the trial's own all the same, as `CosineSchedule` is given it. (pix2pix builds its
    optimizer in `compile`, so its continued trials always restore the saved moments.)
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        with model.distribute_strategy.scope():
            optimizer.build(model.trainable_variables)


def _even_replica_batches(train, val, global_batch: int, replicas: int, ignore_index: int):
    """The batched `(image, mask)` datasets, re-cut so that every replica gets an equal share.

    Keras splits each batch across the replicas, and TF 2.21 fails on unequal shares: the
    first batch is averaged across replicas to build the model (an unequal split cannot be),
    and a replica's empty share breaks its convolutions on CPU. So every training batch is
    full (the repeated examples rebatched, the remainder dropped: an epoch is still
    `steps_per_pass` batches), and each validation batch is padded to a multiple of
    `replicas` with black images whose masks are all `ignore_index`, which the losses and
    metrics count nowhere (the padded batch weighs a little more in `val_loss`).
    """
    import tensorflow as tf

    train = train.unbatch().batch(global_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def pad(images, masks):
        missing = -tf.shape(images)[0] % replicas
        images = tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]])
        masks = tf.pad(masks, [[0, missing], [0, 0], [0, 0]], constant_values=ignore_index)
        return images, masks

    return train, val.map(pad)


def _fail(record: FitRecord, message: str):
    """Fails the trial for a reason of its own configuration (memory, divergence).

    `configuration_failure` tells the tuner that the next trial may well succeed, so such
    failures do not count towards stopping the search.
    """
    record["message"] = message
    record["configuration_failure"] = True
    raise kt.errors.FailedTrialError(message)


def _is_out_of_memory(exc: BaseException) -> bool:
    import tensorflow as tf

    return isinstance(exc, (tf.errors.ResourceExhaustedError, MemoryError)) or (
        "out of memory" in str(exc).lower() or "oom" in type(exc).__name__.lower()
    )


#: Epochs `TimeBudget` reads the next epoch's time from (time swings with the machine's load).
STEADY_EPOCHS = 3


class TimeBudget(keras.callbacks.Callback):
    """Ends training at an epoch boundary: before the next epoch would pass the deadline, and
    at the epoch count that fits the trial's allotment of time, if it has one.

    With an allotment (the recipe's share of the budget), the epoch target is re-estimated
    from the measured epochs after the second one, and `CosineSchedule` decays over the new
    target: the recipe ends its schedule inside its share rather than being cut mid-way.
    With `reconsider` (the recipe of a plan that explores afterwards), the first steady
    epoch time goes to it; a reason back means exploring no longer fits, and the allotment
    becomes the time to the deadline: one schedule to the end of the budget. With `climbs`
    (the recipe of a plan that forks it), the epochs' `objective` scores and the steady
    epoch time go to it once the target is reached (`autoseg.climbing`); a reason back
    gives the recipe the whole budget the same way.

    Attributes:
        target: The epoch (absolute, exclusive) training ends at.
    """

    def __init__(self, deadline: float | None, epochs: int | None = None,
                 allotment_seconds: float | None = None,
                 reconsider: Callable[[float], str | None] | None = None,
                 climbs: Callable[[list, float], str | None] | None = None,
                 objective: str | None = None):
        super().__init__()
        self.deadline = deadline
        self.target = epochs
        self.allotment = allotment_seconds
        self.reconsider = reconsider
        self.climbs = climbs
        self.objective = objective
        self.scores: list[float | None] = []  # the objective after each epoch (with `climbs`)
        #: Why the allotment changed to the whole budget (`reconsider`'s or `climbs`'s
        #: reason), or None.
        self.plan_change: str | None = None
        self.stopped = False
        self._epoch_start = None
        self._train_start = None
        self.epoch_seconds: list[float] = []  # each epoch with its validation

    def on_train_begin(self, logs=None):
        self._train_start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch_start is None:
            return
        now = time.time()
        self.epoch_seconds.append(round(now - self._epoch_start, 3))
        self._reconsider()
        self._fit_allotment(epoch, now)
        if self.climbs is not None:
            self.scores.append((logs or {}).get(self.objective))
            self._judge_climb(epoch, now)
        if self.target is not None and epoch + 1 >= self.target:
            self.model.stop_training = True
        if self.deadline is None:
            return
        if now + self.next_epoch_seconds() > self.deadline:
            self.stopped = True
            self.model.stop_training = True

    def next_epoch_seconds(self) -> float:
        """What the next epoch is expected to take: the longest of the last few steady epochs
        (the first one also traces the model's functions and fills caches, ~1.5x a steady
        one on CWFID; counting it stopped a 30-minute recipe 5 minutes early)."""
        steady = speed.steady_epochs(self.epoch_seconds)[-STEADY_EPOCHS:]
        return max(steady) if steady else 0.0

    def _reconsider(self) -> None:
        if self.reconsider is None or len(self.epoch_seconds) < 2 or self.deadline is None:
            return  # the first epoch also traces: wait for a steady one
        steady = speed.steady_epoch_seconds(self.epoch_seconds)
        reason, self.reconsider = self.reconsider(steady), None  # once
        if reason:
            self._take_the_budget(reason)

    @property
    def may_take_the_budget(self) -> bool:
        """Whether the trial may come to train to the deadline (`reconsider`, `climbs`)."""
        return self.deadline is not None and (
            self.reconsider is not None or self.climbs is not None)

    def _judge_climb(self, epoch: int, now: float) -> None:
        """At the target, once: `climbs` with the scores; a reason gives the whole budget."""
        if (self.target is None or epoch + 1 < self.target or self.deadline is None
                or self.plan_change is not None or len(self.epoch_seconds) < 2):
            return
        steady = speed.steady_epoch_seconds(self.epoch_seconds)
        reason, self.climbs = self.climbs(list(self.scores), steady), None  # once
        if reason:
            self._take_the_budget(reason)
            self._fit_allotment(epoch, now)

    def _take_the_budget(self, reason: str) -> None:
        """The allotment becomes the time to the deadline, for `reason`."""
        self.plan_change = reason
        self.allotment = self.deadline - self._train_start
        # The epochs that fit are counted afresh (`_fit_allotment` only lowers a target).
        self.target = (self.params or {}).get("epochs", self.target)

    def _fit_allotment(self, epoch: int, now: float) -> None:
        if self.allotment is None or self.target is None or len(self.epoch_seconds) < 2:
            return
        steady = speed.steady_epoch_seconds(self.epoch_seconds)
        left = self._train_start + self.allotment - now
        reach = epoch + 1 + max(0, int(left // steady))
        self.target = min(self.target, max(epoch + 1, reach))


class CosineSchedule(keras.callbacks.Callback):
    """Cosine decay of the compiled learning rate over the trial's epochs, per epoch.

    A constant learning rate left the small-batch IoU swinging between epochs on CWFID;
    decaying it settles the final epochs. Hyperband's continued trials resume the schedule
    at their `initial_epoch`. With a `TimeBudget` that has an allotment, the schedule ends at
    its (re-estimated) target epoch.

    `base` is the trial's own learning rate. Without it, the schedule decays whatever rate the
    optimizer holds when training begins, which for a model whose optimizer a checkpoint
    restores (pix2pix builds its own in `compile`) is the previous fit's decayed rate.

    `stretch` and `extra` decay over `stretch` x the trial's epochs plus `extra`: the recipe
    of a plan that forks it ends its share mid-schedule, and its forks and finish train on
    along the same curve. Once the `TimeBudget` gives the recipe the whole budget
    (`plan_change`), the schedule ends with the trial again: from the point of the curve it
    had reached, down to the floor at the new target, so the rate never rises at the switch
    (over the longer horizon from the start, the same epoch would sit earlier on the curve).
    """

    def __init__(self, epochs: int, initial_epoch: int = 0, floor: float = 0.05,
                 budget: TimeBudget | None = None, base: float | None = None,
                 stretch: float = 1.0, extra: int = 0):
        super().__init__()
        self.epochs = max(1, int(epochs))
        self.floor = floor
        self.budget = budget
        self.base = None if base is None else float(base)
        self._base = self.base
        self.stretch = max(1.0, float(stretch))
        self.extra = max(0, int(extra))
        self._last_horizon: int | None = None
        #: (epoch, progress) where the trial took the whole budget, once it did.
        self._switch: tuple[int, float] | None = None

    def horizon(self) -> int:
        """The epoch (absolute) the learning rate reaches its floor at."""
        epochs = self.epochs
        if self.budget is not None and self.budget.target is not None:
            epochs = max(1, min(epochs, self.budget.target))
            if self.budget.plan_change is not None:
                return epochs
        return max(epochs, round(epochs * self.stretch) + self.extra)

    def on_train_begin(self, logs=None):
        if self.base is None:
            self._base = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def progress(self, epoch: int) -> float:
        """How far along the curve `epoch` is: 0 at the top, 1 at the floor."""
        horizon = self.horizon()
        changed = self.budget is not None and self.budget.plan_change is not None
        if changed and self._switch is None and self._last_horizon is not None:
            self._switch = (epoch, min(1.0, epoch / self._last_horizon))
        self._last_horizon = horizon
        if self._switch is None:
            return min(1.0, epoch / horizon)
        start, reached = self._switch
        return min(1.0, reached + (1 - reached) * (epoch - start) / max(1, horizon - start))

    def on_epoch_begin(self, epoch, logs=None):
        progress = self.progress(epoch)
        scale = self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
        self.model.optimizer.learning_rate.assign(self._base * scale)


class FamilyHyperModel(BaseSegmentationHyperModel):
    """Searches the models of one family (`ArchitectureSpec.family`) present in the space: a
    family needs no HyperModel class of its own."""

    def __init__(self, family: str, space, data: TrainingData, **kwargs):
        self.family = family
        super().__init__(space, data, **kwargs)


class AutosegHyperModel(BaseSegmentationHyperModel):
    """Chooses `model_name` across every family in the space and delegates build and fit
    to that family's HyperModel."""

    family = None

    def __init__(self, space, data: TrainingData, verbose: int = 0, precision: str = "float32",
                 **kwargs):
        super().__init__(space, data, verbose=verbose, precision=precision, **kwargs)
        families = {registry.ARCHITECTURES.get(n).family for n in self.space.models}
        self.delegates = {
            f: FamilyHyperModel(f, self.space, data, verbose=verbose, precision=precision)
            for f in families
        }

    def _delegate(self, model_name: str) -> FamilyHyperModel:
        return self.delegates[registry.ARCHITECTURES.get(model_name).family]

    def build(self, hp):
        model_name, _ = self.declare_model(hp)  # the whole space, every family
        return self._delegate(model_name).build(hp)

    def build_values(self, values: dict[str, Any]) -> keras.Model:
        """The model a trial with these hyperparameter values builds (the plan's
        calibration times it)."""
        hp = kt.HyperParameters()
        hp.values = dict(values)
        return self.build(hp)

    def fit(self, hp, model, *args, **kwargs):
        delegate = self._delegate(hp.get("model_name"))
        delegate.plan = self.plan
        delegate.objective = self.objective
        delegate.passes_per_epoch = self.passes_per_epoch
        try:
            return delegate.fit(hp, model, *args, **kwargs)
        finally:
            self.last_fit = delegate.last_fit


__all__ = [
    "AutosegHyperModel",
    "FamilyHyperModel",
    "TrainingData",
    "format_input_size",
]
