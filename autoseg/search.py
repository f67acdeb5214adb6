"""`autoseg.search(...)`: a resumable, budgeted search over the model zoo.

Everything that would fail every trial (a bad dataset, a bad space, a memory budget that
fits nothing) is found here, before `tuner.search` starts.

The run folder's layout is `autoseg.run_dir`'s.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from autoseg import atomic, warm_process
from autoseg.callable_module import make_callable
from autoseg.durations import parse_duration
from autoseg.errors import ConfigError, RunError
from autoseg.run_dir import LEADERBOARD_FILE, PLAN_FILE, RUN_FILE, SPACE_FILE, TENSORBOARD_DIR


@dataclasses.dataclass
class SearchResult:
    """What a search leaves behind.

    Attributes:
        rundir: The run folder.
        rows: The leaderboard rows (dicts as in `leaderboard.read_leaderboard`).
        best: The best COMPLETED (or budget-STOPPED) row; never a FAILED one.
        counts: Trials by status.
        worker_id: Set when this process was a distributed worker: then `rows` are the
            chief's leaderboard as it stood, and `best` may be None.
    """

    rundir: Path
    rows: list[dict]
    best: dict | None
    counts: dict[str, int]
    worker_id: str | None = None


def default_rundir(dataset_path: str | Path) -> Path:
    """`runs/<folder name>` of the dataset the user gave: a raw folder keeps its own name
    (its prepared copy's name carries a hash of its contents, which an edit changes)."""
    return Path("runs") / Path(dataset_path).resolve().name


@dataclasses.dataclass
class SearchOptions:
    """Everything a search is asked to do (`search`'s arguments; stored in `run.json`)."""

    dataset: str
    space: Any = None
    out: str | None = None
    tuner: str = "hyperband"
    max_trials: int | None = None
    max_epochs: int | None = None
    time_budget: str | float | None = None
    memory_budget: str | int | None = None
    precision: str = "auto"
    strategy: str = "auto"
    objective: str = "val_mean_iou"
    seed: int = 0
    overwrite: bool = False
    continue_on_new_data: bool = False
    verbose: bool = False
    val_fraction: float = 0.2
    val_groups: str | None = None
    recipe_only: bool = False
    finish_on: str = "train"
    explore: str = "auto"
    role: str | None = None
    oracle: str | None = None
    worker_id: str | None = None
    oracle_timeout: str | float | None = None

    def stored(self) -> dict[str, Any]:
        """The options as `run.json` keeps them (a space given as a dict is in `space`)."""
        values = {k: str(v) if isinstance(v, Path) else v
                  for k, v in dataclasses.asdict(self).items()}
        if isinstance(values["space"], dict):
            values["space"] = "<dict>"  # run.json keeps the resolved space under "space"
        return values


def search(
    dataset: str | Path,
    space: str | Path | dict | None = None,
    out: str | Path | None = None,
    tuner: str = "hyperband",
    max_trials: int | None = None,
    max_epochs: int | None = None,
    time_budget: str | float | None = None,
    memory_budget: str | int | None = None,
    precision: str = "auto",
    strategy: str = "auto",
    objective: str = "val_mean_iou",
    seed: int = 0,
    overwrite: bool = False,
    continue_on_new_data: bool = False,
    verbose: bool = False,
    val_fraction: float = 0.2,
    log: Callable[[str], None] = print,
    role: str | None = None,
    oracle: str | None = None,
    worker_id: str | None = None,
    oracle_timeout: str | float | None = None,
    val_groups: str | None = None,
    recipe_only: bool = False,
    finish_on: str = "train",
    explore: str = "auto",
) -> SearchResult:
    """Searches architectures and training settings for a dataset.

    The search first makes its plan (`autoseg.plan`): a recipe it would bet on without
    searching, which trains first (trial 0), and the configurations that can train enough
    epochs in the time budget; the others never run. It prints the plan as `[plan]` lines and
    keeps it in `RUNDIR/plan.json`.

    Args:
        dataset: A prepared dataset or any raw folder `autoseg prepare` understands.
        space: A search-space YAML, a bundled name (default, quick, ci) or a dict.
            Defaults to "default".
        out: The run folder. Defaults to `runs/<name of the dataset folder given>` (a raw
            folder's own name, not that of the prepared copy in the cache).
        tuner: hyperband (default), bayesian, random or grid.
        max_trials: Trials at most. Defaults to 10 (Hyperband: its brackets decide).
        max_epochs: Epochs per trial at most; overrides the space's `max_epochs`.
        time_budget: No trial starts after it is spent ("30m", "2h", seconds); the plan
            and the data's preparation count in it.
        memory_budget: Training memory per trial ("8GB"). Defaults to the GPU's free
            memory, else available RAM, times a safety factor. With several replicas it
            bounds each device: the batch size is then per replica.
        precision: "float32", "mixed" (float16 computation, float32 weights and head, loss
            scaling), "bfloat16", or "auto": mixed when a GPU is visible; on a CPU with
            native bfloat16, bfloat16 for the architectures measured faster at equal quality
            (`autoseg.devices.BFLOAT16_MODELS`); else float32. Defaults to "auto".
        strategy: "mirrored" (one replica per GPU; per logical CPU device without a GPU),
            "none", or "auto": mirrored when more than one GPU is visible. The dataset is
            batched at the per-replica batch size x replicas. Defaults to "auto".
        objective: The validation metric to maximise. Defaults to "val_mean_iou".
        seed: Seed for the split, the tuner and augmentation.
        overwrite: Start afresh; otherwise the same command resumes the run.
        continue_on_new_data: Resume although the data changed since the run started (an
            annotation edited, a raw folder prepared again): later trials train and validate
            on the new data, earlier ones keep their scores. Without it such a resume is
            refused, naming what changed.
        verbose: Keras per-epoch progress.
        val_fraction: Share of the images held out for validation (unless dataset.yaml
            lists the split). Defaults to 0.2.
        log: Where progress lines go.
        role: "chief" or "worker" for a distributed search (docs/cluster.md): the chief
            serves KerasTuner's oracle and writes the leaderboard, workers run the trials in
            the same `out` on a shared filesystem. Defaults to one process (or the role in
            KerasTuner's `KERASTUNER_*` variables, when set).
        oracle: "HOST:PORT" where the chief listens and the workers reach it.
        worker_id: A worker's name. Defaults to `worker-<hostname>-<pid>`.
        oracle_timeout: How long a worker waits for a silent chief, and the chief for a
            silent worker (whose trial then FAILS). Defaults to "2m".
        val_groups: A regular expression whose first group (or whole match) on an image's
            stem names its group (a video sequence, a field day): validation takes whole
            groups, so near-duplicate photos never sit on both sides. Defaults to None (a
            random split of the images).
        recipe_only: Train the plan's recipe for the whole budget and nothing else: the
            one good configuration a search must beat (Hyperband only).
        finish_on: What the best trial trains on when the planned Hyperband trains it
            further at the end of a time budget: "train" (the training photos), or
            "train+val" (the validation photos as well; the leaderboard, `autoseg.json` and
            the "Best:" line then say that its validation score is not held out).
            Defaults to "train".
        explore: "auto": the planned Hyperband explores around its recipe only when the
            recipe alone would train `plan.EXPLORE_AFTER_IMAGES` crops in the budget (below
            that, measured, the recipe's own epochs were worth more); else the recipe gets
            the whole budget. "always": wherever exploring fits. Defaults to "auto".

    Returns:
        A `SearchResult`. A worker's holds the leaderboard as the chief left it.

    Raises:
        ConfigError, DatasetError, BudgetError: before any trial starts.
        RunError: no trial completed (the first failure's reason is in the message).

    Example:
    ```python
    result = autoseg.search("sample", space="quick", time_budget="10m")
    print(result.best["val_mean_iou"])
    ```
    """
    options = SearchOptions(
        dataset=dataset, space=space, out=out, tuner=tuner, max_trials=max_trials,
        max_epochs=max_epochs, time_budget=time_budget, memory_budget=memory_budget,
        precision=precision, strategy=strategy, objective=objective, seed=seed,
        overwrite=overwrite, continue_on_new_data=continue_on_new_data, verbose=verbose,
        val_fraction=val_fraction, val_groups=val_groups,
        recipe_only=recipe_only, finish_on=finish_on, explore=explore,
        role=role, oracle=oracle, worker_id=worker_id, oracle_timeout=oracle_timeout,
    )
    return run_search(options, log=log)


@dataclasses.dataclass
class _Run:
    """What the steps of a search hand on to each other."""

    options: SearchOptions
    log: Callable[[str], None]
    deadline: float | None = None
    budget_seconds: float | None = None
    memory_limit: int | None = None
    cluster: Any = None
    dataset: Any = None
    space: Any = None
    rundir: Path | None = None
    config: dict | None = None
    resuming: bool = False
    data: Any = None
    hypermodel: Any = None
    distribution: Any = None
    plan: Any = None


def run_search(options: SearchOptions, log: Callable[[str], None] = print) -> SearchResult:
    """`search` with its options in a `SearchOptions`: validate, load, plan, then tune."""
    run = _Run(options=options, log=log)
    _validate(run)
    _load_inputs(run)
    _prepare_run(run)
    try:
        _make_training_data(run)
        _make_plan(run)
    except BaseException:
        if not run.resuming and run.rundir.is_dir() and not any(run.rundir.iterdir()):
            run.rundir.rmdir()  # nothing half-written: the folder this call made
        raise
    _write_run_files(run)
    return _tune(run)


def plan_only(options: SearchOptions, log: Callable[[str], None] = print):
    """The plan `run_search` would make with `options`, printed; nothing is trained or written."""
    from autoseg import plan

    run = _Run(options=options, log=log)
    _validate(run)
    _load_inputs(run)
    run.rundir = Path(options.out) if options.out else default_rundir(options.dataset)
    run.config = _run_config(run.dataset, run.space, options)
    _make_training_data(run)
    run.plan = plan.plan_search(run.hypermodel, run.budget_seconds, run.memory_limit, log=log,
                                finish_on=options.finish_on, explore=options.explore)
    for line in run.plan.lines():
        log(line)
    return run.plan


def _validate(run: _Run) -> None:
    """Checks the options that need no data; starts the clock of the time budget."""
    from autoseg import budget, devices
    from autoseg.plan import EXPLORE_MODES, FINISH_ON
    from autoseg.tuner import TUNERS

    options = run.options
    run.budget_seconds = parse_duration(options.time_budget)
    run.deadline = time.time() + run.budget_seconds if run.budget_seconds else None
    if options.recipe_only and options.tuner != "hyperband":
        raise ConfigError("--recipe-only runs the plan's recipe through the hyperband tuner; "
                          f"drop --tuner {options.tuner}.")
    for name, valid in (("finish_on", FINISH_ON), ("explore", EXPLORE_MODES)):
        if getattr(options, name) not in valid:
            raise ConfigError(f"{_flag(name)} {getattr(options, name)!r} is unknown. Valid: "
                              f"{', '.join(valid)}.")
    if options.tuner not in TUNERS:
        raise ConfigError(f"--tuner {options.tuner!r} is unknown. Valid tuners: {', '.join(TUNERS)}.")
    if options.tuner == "bayesian" and importlib.util.find_spec("sklearn") is None:
        raise ConfigError("--tuner bayesian needs scikit-learn, which is not installed: "
                          "pip install \"autoseg[bayesian]\" (or scikit-learn), or choose "
                          "another --tuner.")
    devices.check_precision(options.precision)
    devices.check_strategy(options.strategy)
    for flag, value in (("--max-trials", options.max_trials), ("--max-epochs", options.max_epochs)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1. Received: {value}.")
    if not options.objective.startswith("val_"):
        raise ConfigError(
            f"--objective {options.objective!r} must be a validation metric such as "
            "val_mean_iou, val_dice or val_iou_<class>."
        )
    explicit = budget.parse_size(options.memory_budget) if options.memory_budget else None
    run.memory_limit = budget.memory_budget_bytes(explicit)


def _load_inputs(run: _Run) -> None:
    """The cluster role, the dataset and the space resolved for it."""
    from autoseg import distributed, search_space
    from autoseg.data.dataset import check_trainable
    from autoseg.data.sources import resolve_dataset

    options = run.options
    run.cluster = distributed.plan(options.role, options.oracle, options.worker_id,
                                   options.oracle_timeout, overwrite=options.overwrite, log=run.log)
    run.dataset = resolve_dataset(options.dataset)
    check_trainable(run.dataset)
    loaded = search_space.load_space(options.space)
    if options.max_epochs:
        loaded = dataclasses.replace(loaded, max_epochs=options.max_epochs)
    run.space = search_space.resolve_auto(loaded, run.dataset.fingerprint)
    _check_objective(options.objective, run.dataset.classes)


def _prepare_run(run: _Run) -> None:
    """The run folder: created, resumed (the same search only) or started afresh."""
    options, cluster = run.options, run.cluster
    run.rundir = Path(options.out) if options.out else default_rundir(options.dataset)
    run.config = _run_config(run.dataset, run.space, options)
    if cluster and cluster.is_worker:
        cluster.wait_for_chief(run.rundir)  # then run.json is the chief's: checked, never written
    run.resuming = _prepare_rundir(run.rundir, run.config, options.overwrite,
                                   options.continue_on_new_data)
    if run.resuming and options.continue_on_new_data:
        change = _data_change(json.loads((run.rundir / RUN_FILE).read_text()), run.config)
        if change:
            run.log(f"[search] the data changed since the run started ({change}): later "
                    "trials train and validate on the new data (--continue-on-new-data)")
    if cluster:
        cluster.announce(run.rundir)  # a chief's first heartbeat: its workers wait while it starts


def _make_training_data(run: _Run) -> None:
    """The split, the data every trial shares, the device strategy and the HyperModel."""
    import keras

    from autoseg import devices
    from autoseg.data import pipeline
    from autoseg.hypermodel import AutosegHyperModel, TrainingData

    options = run.options
    keras.utils.set_random_seed(options.seed)
    train, val = pipeline.split_stems(run.dataset, val_fraction=options.val_fraction,
                                      seed=options.seed, **_group_option(options))
    run.config["split"] = {"train": list(train), "val": list(val)}
    run.data = TrainingData(run.dataset, list(train), list(val), seed=options.seed,
                            memory_budget_bytes=run.memory_limit, deadline=run.deadline)
    run.distribution = devices.make_strategy(options.strategy)
    run.hypermodel = AutosegHyperModel(run.space, run.data, verbose=1 if options.verbose else 0,
                                       precision=options.precision)
    run.hypermodel.objective = options.objective  # the recipe's climb is judged by it
    # The Keras policy (float32, mixed_float16, mixed_bfloat16), or one per family under auto.
    run.config["precision"] = run.hypermodel.precisions()
    run.config["strategy"] = "mirrored" if run.distribution is not None else "none"
    run.config["replicas"] = devices.num_replicas(run.distribution)


def _describe_precision(precision: str | dict[str, str]) -> str:
    """`run.json`'s precision as a phrase: "float32", or "unet mixed_bfloat16, ..."."""
    if isinstance(precision, str):
        return precision
    return ", ".join(f"{family} {policy}" for family, policy in precision.items())


def _group_option(options: SearchOptions) -> dict[str, Any]:
    return {"group_pattern": options.val_groups} if options.val_groups else {}


#: The options a plan keeps (`Plan` fields of the same names): a resumed run follows its
#: kept plan, whatever the rerun says.
PLANNED_OPTIONS = ("finish_on", "explore")


def _flag(name: str) -> str:
    """The command-line flag of a `SearchOptions` field: `finish_on` -> `--finish-on`."""
    return "--" + name.replace("_", "-")


def _make_plan(run: _Run) -> None:
    """The plan (`autoseg.plan`): made once, kept in RUNDIR/plan.json for a resumed run."""
    from autoseg import plan

    path = run.rundir / PLAN_FILE
    if run.resuming and path.is_file():
        run.plan = plan.Plan.from_dict(json.loads(path.read_text()))
        run.log(f"[plan] kept from {path}")
        for name in PLANNED_OPTIONS:
            given, kept = getattr(run.options, name), getattr(run.plan, name)
            if given != kept:
                run.log(f"[plan] {_flag(name)} {given} ignored: the kept plan has {kept}; "
                        "--overwrite plans afresh")
    else:
        run.plan = plan.plan_search(run.hypermodel, run.budget_seconds, run.memory_limit,
                                    log=run.log, recipe_only=run.options.recipe_only,
                                    runs_recipe=run.options.tuner == "hyperband",
                                    finish_on=run.options.finish_on,
                                    explore=run.options.explore)
        if not (run.cluster and run.cluster.is_worker):
            atomic.write_text(path, json.dumps(run.plan.to_dict(), indent=1))
    run.hypermodel.plan = run.plan
    for line in run.plan.lines():
        run.log(line)


def _write_run_files(run: _Run) -> None:
    if not (run.cluster and run.cluster.is_worker):
        atomic.write_text(run.rundir / SPACE_FILE, run.space.to_yaml())
        atomic.write_text(run.rundir / RUN_FILE, json.dumps(run.config, indent=1))


def _tune(run: _Run) -> SearchResult:
    """Runs the tuner over the space (the recipe first) and reads the leaderboard back."""
    import keras

    from autoseg.tuner import make_tuner

    options, cluster, data = run.options, run.cluster, run.data
    replicas = run.config["replicas"]
    run.log(
        (f"[search] {cluster.describe()}: " if cluster else "[search] ")
        + f"{'resuming' if run.resuming else 'starting'} {options.tuner} search on "
        f"{run.dataset.root} ({len(data.train_stems)} train / {len(data.val_stems)} val images, "
        f"{run.dataset.num_classes} classes) -> {run.rundir}; memory budget "
        f"{run.memory_limit / 2**30:.1f} GB"
        + (f" per device, {replicas} replicas" if replicas > 1 else "")
        + f", {_describe_precision(run.config['precision'])}"
        + (f", time budget {run.budget_seconds / 60:.0f} min" if run.budget_seconds else "")
    )
    kt_tuner = make_tuner(
        options.tuner, run.hypermodel, rundir=run.rundir, objective=options.objective,
        direction="max", max_trials=options.max_trials, max_epochs=run.space.max_epochs,
        seed=options.seed, overwrite=False, deadline=run.deadline,
        class_names=run.dataset.classes, log=run.log, cluster=cluster, plan=run.plan,
        distribution_strategy=run.distribution,  # KerasTuner builds each trial under its scope
    )
    fit_kwargs: dict[str, Any] = {
        "callbacks": [keras.callbacks.TensorBoard(log_dir=str(run.rundir / TENSORBOARD_DIR),
                                                  write_graph=False, profile_batch=0)],
        "verbose": 1 if options.verbose else 0,
    }
    if options.tuner != "hyperband":
        fit_kwargs["epochs"] = run.space.max_epochs
    try:
        if cluster:
            cluster.search(kt_tuner, **fit_kwargs)
            if cluster.is_worker:
                return _result(run.rundir, options.objective, worker_id=cluster.tuner_id)
        else:
            kt_tuner.search(**fit_kwargs)
    finally:
        warm_process.close()  # the next trial's process, started for a trial that never came
    kt_tuner.write_leaderboard()
    return _result(run.rundir, options.objective)


def _check_objective(objective: str, classes: list[str]) -> None:
    from autoseg.metrics import class_metric_names

    valid = ["val_mean_iou", "val_dice", "val_pixel_accuracy"] + [
        f"val_{name}" for name in class_metric_names(classes)
    ]
    if objective not in valid:
        raise ConfigError(f"--objective {objective!r} is unknown. Valid objectives: {', '.join(valid)}.")


def _run_config(ds, space, options: SearchOptions) -> dict:
    return {
        "source": str(Path(options.dataset).resolve()),  # what the user gave (a raw folder)
        "dataset": str(Path(ds.root).resolve()),  # the prepared dataset trials read
        "classes": list(ds.classes),
        "palette": [list(c) for c in ds.palette],
        "ignore_index": ds.ignore_index,
        "channels": ds.channels,
        "intensity": ds.intensity,
        "fingerprint": ds.fingerprint,
        "space": space.to_yaml_dict(),
        "tuner": options.tuner,
        "objective": options.objective,
        "seed": options.seed,
        "val_fraction": options.val_fraction,
        "val_groups": options.val_groups,
        "options": options.stored(),
    }


def _prepare_rundir(rundir: Path, config: dict, overwrite: bool,
                    continue_on_new_data: bool = False) -> bool:
    """Returns True when resuming. Refuses to resume a different search, and a search whose
    data changed unless `continue_on_new_data`."""
    run_file = rundir / RUN_FILE
    if overwrite and rundir.exists():
        shutil.rmtree(rundir)
    if not rundir.exists():
        rundir.mkdir(parents=True)
        return False
    if not run_file.is_file():
        if any(rundir.iterdir()):
            raise ConfigError(
                f"{rundir} exists and is not an autoseg run. Choose another --out or pass --overwrite."
            )
        return False
    previous = json.loads(run_file.read_text())
    change = _data_change(previous, config)
    if change and not continue_on_new_data:
        raise ConfigError(
            f"The data of the run in {rundir} changed since it started: {change}. Pass "
            "--overwrite to start afresh on the new data, or --continue-on-new-data to go on "
            "with its trials (later ones train and validate on the new data)."
        )
    for key in ("classes", "space", "tuner", "objective", "seed") + (() if change else ("dataset",)):
        if previous.get(key) != config.get(key):
            raise ConfigError(
                f"{rundir} holds a different search ({key} differs: was {previous.get(key)!r}). "
                "Pass --overwrite to start afresh, or --out for a new run folder."
            )
    return True


def _data_change(previous: dict, config: dict) -> str | None:
    """What changed in the data of the same source since `previous` (a run.json), or None
    (also when the source differs: that is another search)."""
    same_source = previous.get("source", previous.get("dataset")) == config["source"]
    if previous.get("dataset") != config["dataset"]:
        if same_source:
            return (f"{config['source']} now prepares into {config['dataset']} (was "
                    f"{previous.get('dataset')}): its files changed")
        return None
    if previous.get("fingerprint") and previous["fingerprint"] != config["fingerprint"]:
        return f"the fingerprint of {config['dataset']} differs (it was prepared again)"
    return None


def _result(rundir: Path, objective: str, worker_id: str | None = None) -> SearchResult:
    from autoseg import leaderboard

    board = rundir / LEADERBOARD_FILE
    rows = leaderboard.read_leaderboard(board) if worker_id is None or board.is_file() else []
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    best = leaderboard.best_row(rows, objective, "max")
    if worker_id is not None:  # the chief's result, not a worker's, says whether the search failed
        return SearchResult(rundir=rundir, rows=rows, best=best, counts=counts, worker_id=worker_id)
    if best is None:
        failed = [r for r in rows if r["status"] == "FAILED"]
        reason = failed[0].get("message") if failed else "no trial ran (the time budget may be too short)"
        raise RunError(
            f"no trial completed in {rundir} ({', '.join(f'{v} {k}' for k, v in counts.items()) or 'no trials'}). "
            f"First failure: {reason}"
        )
    return SearchResult(rundir=rundir, rows=rows, best=best, counts=counts)


# `autoseg.search(...)` runs `search(...)` although `autoseg.search` is this module.
make_callable(__name__, "search")
