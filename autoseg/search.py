"""`autoseg.search(...)`: a resumable, budgeted search over the model zoo.

Everything that would fail every trial (a bad dataset, a bad space, a memory budget that
fits nothing) is found here, before `tuner.search` starts.

RUNDIR layout:
```
RUNDIR/run.json          dataset, classes, palette, split, seed, tuner, objective (export reads it)
RUNDIR/space.yaml        the resolved search space
RUNDIR/leaderboard.csv   one row per trial, rewritten atomically after every trial
RUNDIR/trials/           KerasTuner's project: trial_<id>/{trial.json, checkpoint, autoseg.json}
RUNDIR/tensorboard/      TensorBoard logs, one folder per trial
```
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

from autoseg import atomic
from autoseg.errors import BudgetError, ConfigError, RunError

RUN_FILE = "run.json"


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


def parse_duration(value: str | int | float | None, option: str = "--time-budget") -> float | None:
    """`"30m"`, `"1h30m"`, `"90s"`, `"2h"`, `600` (seconds) -> seconds; errors name `option`."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"{option} must be positive. Received: {value!r}.")
        return float(value)
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return parse_duration(float(text), option)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ConfigError(
            f"{option} {value!r} is not a duration. Use forms like 90s, 30m, 1h30m or seconds."
        )
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"{option} must be positive. Received: {value!r}.")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> `"1h5m3s"`, `"2m"`, `"3s"`: the form `parse_duration` reads back."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


def default_rundir(dataset_path: str | Path) -> Path:
    return Path("runs") / Path(dataset_path).resolve().name


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
    verbose: bool = False,
    val_fraction: float = 0.2,
    log: Callable[[str], None] = print,
    role: str | None = None,
    oracle: str | None = None,
    worker_id: str | None = None,
    oracle_timeout: str | float | None = None,
) -> SearchResult:
    """Searches architectures and training settings for a dataset.

    Args:
        dataset: A prepared dataset or any raw folder `autoseg prepare` understands.
        space: A search-space YAML, a bundled name (default, quick, ci) or a dict.
            Defaults to "default".
        out: The run folder. Defaults to `runs/<dataset name>`.
        tuner: hyperband (default), bayesian, random or grid.
        max_trials: Trials at most. Defaults to 10 (Hyperband: its brackets decide).
        max_epochs: Epochs per trial at most; overrides the space's `max_epochs`.
        time_budget: No trial starts after it is spent ("30m", "2h", seconds).
        memory_budget: Training memory per trial ("8GB"). Defaults to the GPU's free
            memory, else available RAM, times a safety factor. With several replicas it
            bounds each device: the batch size is then per replica.
        precision: "float32", "mixed" (float16 computation, float32 weights and head, loss
            scaling) or "auto": mixed when a GPU is visible, float32 on CPU. Defaults to
            "auto".
        strategy: "mirrored" (one replica per GPU; per logical CPU device without a GPU),
            "none", or "auto": mirrored when more than one GPU is visible. The dataset is
            batched at the per-replica batch size x replicas. Defaults to "auto".
        objective: The validation metric to maximise. Defaults to "val_mean_iou".
        seed: Seed for the split, the tuner and augmentation.
        overwrite: Start afresh; otherwise the same command resumes the run.
        verbose: Keras per-epoch progress.
        log: Where progress lines go.
        role: "chief" or "worker" for a distributed search (docs/cluster.md): the chief
            serves KerasTuner's oracle and writes the leaderboard, workers run the trials in
            the same `out` on a shared filesystem. Defaults to one process (or the role in
            KerasTuner's `KERASTUNER_*` variables, when set).
        oracle: "HOST:PORT" where the chief listens and the workers reach it.
        worker_id: A worker's name. Defaults to `worker-<hostname>-<pid>`.
        oracle_timeout: How long a worker waits for a silent chief, and the chief for a
            silent worker (whose trial then FAILS). Defaults to "2m".

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
    from autoseg import budget, devices, search_space
    from autoseg.tuner import TUNERS, make_tuner

    if tuner not in TUNERS:
        raise ConfigError(f"--tuner {tuner!r} is unknown. Valid tuners: {', '.join(TUNERS)}.")
    devices.check_precision(precision)
    devices.check_strategy(strategy)
    if max_trials is not None and max_trials < 1:
        raise ConfigError(f"--max-trials must be at least 1. Received: {max_trials}.")
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"--max-epochs must be at least 1. Received: {max_epochs}.")
    if not objective.startswith("val_"):
        raise ConfigError(
            f"--objective {objective!r} must be a validation metric such as val_mean_iou, "
            "val_dice or val_iou_<class>."
        )
    budget_seconds = parse_duration(time_budget)
    limit = budget.memory_budget_bytes(budget.parse_size(memory_budget) if memory_budget else None)

    from autoseg import distributed
    from autoseg.data.dataset import resolve_dataset

    cluster = distributed.plan(role, oracle, worker_id, oracle_timeout, overwrite=overwrite, log=log)
    ds = resolve_dataset(dataset)
    loaded = search_space.load_space(space)
    if max_epochs:
        loaded = dataclasses.replace(loaded, max_epochs=max_epochs)
    resolved = search_space.resolve_auto(loaded, ds.fingerprint)
    _check_objective(objective, ds.classes)

    rundir = Path(out) if out else default_rundir(ds.root)
    config = _run_config(ds, resolved, tuner, objective, seed, val_fraction)
    if cluster and cluster.is_worker:
        cluster.wait_for_chief(rundir)  # then run.json is the chief's: checked, never written
    resuming = _prepare_rundir(rundir, config, overwrite)
    if cluster:
        cluster.announce(rundir)  # a chief's first heartbeat: its workers wait while it starts

    # Heavy imports only once the input is known to be good.
    import keras

    from autoseg.hypermodel import AutosegHyperModel, TrainingData
    from autoseg.data import pipeline

    keras.utils.set_random_seed(seed)
    train, val = pipeline.split_stems(ds, val_fraction=val_fraction, seed=seed)
    config["split"] = {"train": list(train), "val": list(val)}
    deadline = time.time() + budget_seconds if budget_seconds else None
    data = TrainingData(ds, list(train), list(val), seed=seed, memory_budget_bytes=limit,
                        deadline=deadline)
    distribution = devices.make_strategy(strategy)
    replicas = devices.num_replicas(distribution)
    hypermodel = AutosegHyperModel(resolved, data, verbose=1 if verbose else 0,
                                   precision=devices.resolve_precision(precision))
    config["precision"] = hypermodel.precision  # the Keras policy: float32, mixed_float16
    config["strategy"] = "mirrored" if distribution is not None else "none"
    config["replicas"] = replicas
    _preflight_memory(hypermodel, limit)

    if not (cluster and cluster.is_worker):
        atomic.write_text(rundir / "space.yaml", resolved.to_yaml())
        atomic.write_text(rundir / RUN_FILE, json.dumps(config, indent=1))
    log(
        (f"[search] {cluster.describe()}: " if cluster else "[search] ")
        + f"{'resuming' if resuming else 'starting'} {tuner} search on {ds.root} "
        f"({len(train)} train / {len(val)} val images, {ds.num_classes} classes) -> {rundir}; "
        f"memory budget {limit / 2**30:.1f} GB"
        + (f" per device, {replicas} replicas" if replicas > 1 else "")
        + f", {hypermodel.precision}"
        + (f", time budget {budget_seconds / 60:.0f} min" if budget_seconds else "")
    )
    kt_tuner = make_tuner(
        tuner, hypermodel, rundir=rundir, objective=objective, direction="max",
        max_trials=max_trials, max_epochs=resolved.max_epochs, seed=seed,
        overwrite=False, deadline=deadline, class_names=ds.classes, log=log, cluster=cluster,
        distribution_strategy=distribution,  # KerasTuner builds each trial under its scope
    )
    fit_kwargs: dict[str, Any] = {
        "callbacks": [keras.callbacks.TensorBoard(log_dir=str(rundir / "tensorboard"),
                                                  write_graph=False, profile_batch=0)],
        "verbose": 1 if verbose else 0,
    }
    if tuner != "hyperband":
        fit_kwargs["epochs"] = resolved.max_epochs
    if cluster:
        cluster.search(kt_tuner, **fit_kwargs)
        if cluster.is_worker:
            return _result(rundir, objective, worker_id=cluster.tuner_id)
    else:
        kt_tuner.search(**fit_kwargs)
    kt_tuner.write_leaderboard()
    return _result(rundir, objective)


def _check_objective(objective: str, classes: list[str]) -> None:
    from autoseg.metrics import class_metric_names

    valid = ["val_mean_iou", "val_dice", "val_pixel_accuracy"] + [
        f"val_{name}" for name in class_metric_names(classes)
    ]
    if objective not in valid:
        raise ConfigError(f"--objective {objective!r} is unknown. Valid objectives: {', '.join(valid)}.")


def _run_config(ds, space, tuner, objective, seed, val_fraction) -> dict:
    return {
        "dataset": str(Path(ds.root).resolve()),
        "classes": list(ds.classes),
        "palette": [list(c) for c in ds.palette],
        "ignore_index": ds.ignore_index,
        "fingerprint": ds.fingerprint,
        "space": space.to_yaml_dict(),
        "tuner": tuner,
        "objective": objective,
        "seed": seed,
        "val_fraction": val_fraction,
    }


def _prepare_rundir(rundir: Path, config: dict, overwrite: bool) -> bool:
    """Returns True when resuming. Refuses to resume a different search."""
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
    for key in ("dataset", "classes", "space", "tuner", "objective", "seed"):
        if previous.get(key) != config.get(key):
            raise ConfigError(
                f"{rundir} holds a different search ({key} differs: was {previous.get(key)!r}). "
                "Pass --overwrite to start afresh, or --out for a new run folder."
            )
    return True


def _preflight_memory(hypermodel, limit: int | None) -> None:
    """Raises BudgetError when not even the smallest model at batch 1 fits the budget."""
    import keras

    from autoseg import budget, models, registry, search_space

    if not limit:
        return
    space = hypermodel.space
    smallest = min(space.input_sizes(), key=lambda s: s[0] * s[1])
    cheapest = None
    for name, options in space.models.items():
        spec = registry.ARCHITECTURES.get(name)
        for combo in search_space.model_option_grid(options)[:1]:
            model = models.build(name, hypermodel.data.dataset.num_classes, (*smallest, 3), **combo)
            need = budget.estimate_training_memory(
                model, 1, precision=hypermodel.precision, family=spec.family
            ).total_bytes
            cheapest = need if cheapest is None else min(cheapest, need)
            del model
            keras.backend.clear_session()
    if cheapest is not None and cheapest > limit:
        raise BudgetError(
            f"the memory budget {limit / 2**20:.0f} MB fits no configuration: the smallest "
            f"needs {cheapest / 2**20:.0f} MB at batch 1 and input {smallest[1]}x{smallest[0]}. "
            "Raise --memory-budget or list smaller models/input sizes in the space."
        )


def _result(rundir: Path, objective: str, worker_id: str | None = None) -> SearchResult:
    from autoseg import leaderboard

    board = rundir / "leaderboard.csv"
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


def load_run(rundir: str | Path) -> dict:
    """Reads RUNDIR/run.json (for export and the leaderboard)."""
    path = Path(rundir) / RUN_FILE
    if not path.is_file():
        raise ConfigError(f"{rundir} is not an autoseg run: {path} is missing.")
    return json.loads(path.read_text())


class _CallableModule(types.ModuleType):
    """Lets `autoseg.search(...)` call `search()` although `autoseg.search` is this module."""

    def __call__(self, *args, **kwargs) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
