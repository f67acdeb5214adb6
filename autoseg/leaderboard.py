"""The search leaderboard: one CSV row per trial, ranked by the objective.

The search calls `write_leaderboard` after every trial with one record per trial:

```python
{"trial_id": "0003", "status": "COMPLETED",            # or FAILED, RUNNING, STOPPED
 "hyperparameters": {"model_name": "unet", ...},        # only the active ones
 "metrics": {"val_mean_iou": 0.71, "val_iou_crop": 0.64, "val_loss": 0.3, ...},
 "epochs": 12, "params": 1940000, "train_seconds": 83.2,
 "predicted_peak_memory_bytes": 2.1e9, "measured_peak_memory_bytes": 1.9e9,
 "message": "why it failed", "worker": "worker0"}      # every key may be missing
```

`read_leaderboard` gives the rows back as strings; `best_row`, `pareto_front` and
`plot_leaderboard` accept either kind of row. Ranks are recomputed from status and objective,
never taken on trust: a FAILED trial is never "best", even when it is the only one.

Pure Python and `csv`: no TensorFlow or Keras here. matplotlib is imported only to plot.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import io
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from autoseg import atomic
from autoseg.callable_module import make_callable
from autoseg.errors import ConfigError, RunError
from autoseg.run_dir import LEADERBOARD_FILE, read_ensembles


# Global hyperparameters, in the order a reader scans them; the rest follow sorted.
HYPERPARAMETER_ORDER = (
    "model_name",
    "backbone",
    "depth",
    "input_size",
    "policy",
    "crop_scale",
    "rare_crops",
    "batch_size",
    "loss",
    "aug_strength",
    "learning_rate",
    "weight_ema",
    "rebalance",
)
# Statuses whose objective is a real result. STOPPED trials (early stopping, Hyperband)
# trained and were evaluated, so they compete; FAILED and RUNNING ones do not.
RANKED_STATUSES = frozenset({"COMPLETED", "STOPPED"})
HEAD_COLUMNS = ("rank", "trial_id", "status")
TAIL_COLUMNS = (
    "epochs",
    "params",
    "train_seconds",
    "predicted_peak_memory_mb",
    "measured_peak_memory_mb",
)
#: The keys of a trial's own record (`trials/trial_<id>/autoseg.json`) that a leaderboard row
#: reads as they are; `tuner.collect_rows` passes exactly these on.
RECORD_FIELDS = ("epochs", "params", "train_seconds", "predicted_peak_memory_bytes",
                 "measured_peak_memory_bytes", "worker", "trained_on", "rebalanced")
# A hyperparameter whose name is taken by another column (e.g. an `epochs` budget next to
# the epochs actually run) is written as `hp:<name>`.
HYPERPARAMETER_PREFIX = "hp:"
# Longer messages (tracebacks) keep their last line; the whole text stays in the trial folder.
MESSAGE_MAX_CHARS = 300
MESSAGE_CUT_HINT = "(cut; the full text is in the trial folder)"
_MIB = 1024 * 1024
_SEARCH_FIRST = "Run `autoseg search --dataset PATH` first"


def leaderboard_rows(
    rows: Iterable[Mapping[str, Any]],
    objective: str = "val_mean_iou",
    direction: str = "max",
    class_names: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """Turns trial records into ranked, sorted leaderboard rows (what the CSV holds).

    Args:
        rows: One record per trial (see the module docstring); missing keys are blank.
        objective: The metric that ranks trials. Defaults to `"val_mean_iou"`.
        direction: `"max"` or `"min"`. Defaults to `"max"`.
        class_names: Class names, to order the `val_iou_<class>` columns. Defaults to None
            (sorted by name).

    Returns:
        A list of dicts, one per trial, every dict with the same keys in column order, all
        values strings. Ranked rows come first by rank, then the rest by trial id.

    Raises:
        ConfigError: `direction` is neither "max" nor "min".
    """
    return _build(list(rows), objective, direction, class_names)[1]


def _build(
    records: Sequence[Mapping[str, Any]],
    objective: str,
    direction: str,
    class_names: Sequence[str] | None,
) -> tuple[list[str], list[dict[str, str]]]:
    _check_direction(direction)
    columns, hp_columns, val_metrics = _columns(records, objective, class_names)
    ranks = _ranks(records, objective, direction)
    table = []
    for record, rank in zip(records, ranks):
        metrics = record.get("metrics") or {}
        hps = record.get("hyperparameters") or {}
        cells = {
            "rank": "" if rank is None else str(rank),
            "trial_id": _text(record.get("trial_id")),
            "status": _text(record.get("status")),
            objective: _number(metrics.get(objective), 4),
        }
        for name, column in hp_columns.items():
            cells[column] = _hyperparameter(hps.get(name))
        for name in val_metrics:
            cells[name] = _number(metrics.get(name), 4)
        cells.update(
            epochs=_number(record.get("epochs"), 0),
            params=_number(record.get("params"), 0),
            train_seconds=_number(record.get("train_seconds"), 1),
            predicted_peak_memory_mb=_number(
                _scale(record.get("predicted_peak_memory_bytes"), 1 / _MIB), 0
            ),
            measured_peak_memory_mb=_number(
                _scale(record.get("measured_peak_memory_bytes"), 1 / _MIB), 0
            ),
            trained_on=_text(record.get("trained_on")),
            rebalanced=_rebalanced(record.get("rebalanced")),
            worker=_text(record.get("worker")),
            message=flatten_message(record.get("message")),
        )
        table.append({column: cells.get(column, "") for column in columns})
    order = sorted(
        range(len(records)),
        key=lambda i: (ranks[i] is None, ranks[i] or 0, _trial_sort_key(records[i])),
    )
    return columns, [table[i] for i in order]


def write_leaderboard(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any]],
    objective: str = "val_mean_iou",
    direction: str = "max",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Writes the leaderboard CSV whole (a temporary file, then `os.replace`).

    Columns: `rank, trial_id, status, <objective>`, the hyperparameters seen in any trial
    (blank where inactive), the other `val_*` metrics, `epochs, params, train_seconds,
    predicted_peak_memory_mb, measured_peak_memory_mb` (MiB, 2**20 bytes), `trained_on` (when
    a trial trained on more than the training photos: "train+val", whose objective is then
    not held out), `rebalanced` (when a trial turned its loss weighted mid-training,
    `autoseg.rebalance`: "weighted_ce_dice after epoch 12"), `worker` (when any trial names one) and `message`. Rank is 1..n over COMPLETED and STOPPED trials with a
    finite objective, best first; blank for the others.

    Args:
        path: The CSV to write; parent folders are created.
        rows: One record per trial (see the module docstring).
        objective: The metric that ranks trials. Defaults to `"val_mean_iou"`.
        direction: `"max"` or `"min"`. Defaults to `"max"`.
        class_names: Orders the `val_iou_<class>` columns. Defaults to None.

    Returns:
        The path written.

    Raises:
        ConfigError: `direction` is neither "max" nor "min".

    Example:
    ```python
    write_leaderboard("runs/demo/leaderboard.csv", records, class_names=["background", "crop"])
    ```
    """
    columns, table = _build(list(rows), objective, direction, class_names)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic.write_text(path, buffer.getvalue())
    return Path(path)


def read_leaderboard(path: str | os.PathLike) -> list[dict[str, str]]:
    """Reads a leaderboard CSV back: one dict per trial, keys in column order, values strings.

    Raises:
        ConfigError: the file does not exist or is not a leaderboard.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist. {_SEARCH_FIRST}, or pass the run folder.")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [dict(row) for row in reader]
        header = reader.fieldnames or []
    if header and (len(header) < 4 or tuple(header[:3]) != HEAD_COLUMNS):
        raise ConfigError(
            f"{path} is not an autoseg leaderboard: its header starts with "
            f"{','.join(header[:4])!r}, expected 'rank,trial_id,status,<objective>'."
        )
    return rows


def objective_column(rows: Sequence[Mapping[str, str]]) -> str:
    """Returns the objective's name: the fourth column of a leaderboard.

    Raises:
        ConfigError: the rows are empty or do not start with `rank, trial_id, status`.
    """
    keys = list(rows[0]) if rows else []
    if len(keys) < 4 or tuple(keys[:3]) != HEAD_COLUMNS:
        raise ConfigError(
            "These rows are not leaderboard rows: expected columns 'rank,trial_id,status,"
            f"<objective>', received {keys[:4]}."
        )
    return keys[3]


def infer_direction(rows: Sequence[Mapping[str, str]], objective: str) -> str:
    """Reads the direction back from a written leaderboard's ranks.

    Rank 1 holds the best value, so comparing it with the last rank gives the direction.
    When every ranked value is equal the direction changes nothing; the name decides
    (`*loss*` and `*error*` are minimised).
    """
    ranked = sorted(
        (int(row["rank"]), value)
        for row in rows
        if str(row.get("rank", "")).strip().isdigit()
        and (value := _objective_value(row, objective)) is not None
    )
    if len(ranked) >= 2 and ranked[0][1] != ranked[-1][1]:
        return "max" if ranked[0][1] > ranked[-1][1] else "min"
    return "min" if ("loss" in objective or "error" in objective) else "max"


def best_row(
    rows: Iterable[Mapping[str, Any]], objective: str = "val_mean_iou", direction: str = "max"
) -> Mapping[str, Any] | None:
    """Returns the best COMPLETED (or STOPPED) row with a finite objective, or None.

    Accepts leaderboard rows (strings) or trial records. A FAILED or RUNNING row is never
    returned, whatever its objective, even when it is the only row.

    Raises:
        ConfigError: `direction` is neither "max" nor "min".
    """
    ranked = ranked_rows(rows, objective, direction)
    return ranked[0] if ranked else None


def ranked_rows(
    rows: Iterable[Mapping[str, Any]], objective: str = "val_mean_iou", direction: str = "max"
) -> list[Mapping[str, Any]]:
    """The COMPLETED (or STOPPED) rows with a finite objective, best first (`best_row`'s order).

    Raises:
        ConfigError: `direction` is neither "max" nor "min".
    """
    _check_direction(direction)
    candidates = [row for row in rows if _rankable(row, objective)]
    return sorted(candidates, key=lambda row: _best_first_key(row, objective, direction))


def pareto_front(
    rows: Iterable[Mapping[str, Any]], objective: str = "val_mean_iou", direction: str = "max"
) -> list[Mapping[str, Any]]:
    """Returns the rows no other row beats on both size and objective.

    A row dominates another when it has no more parameters and an objective at least as
    good, and is strictly better in one of the two. Only COMPLETED and STOPPED rows with a
    finite objective and a known parameter count take part.

    Returns:
        The non-dominated rows, fewest parameters first.

    Raises:
        ConfigError: `direction` is neither "max" nor "min".
    """
    _check_direction(direction)
    sign = -1.0 if direction == "max" else 1.0
    points = []
    for row in rows:
        params = _to_float(row.get("params"))
        if _rankable(row, objective) and params is not None and math.isfinite(params):
            points.append((params, sign * _objective_value(row, objective), row))
    front = []
    for params, cost, row in points:
        dominated = any(
            p <= params and c <= cost and (p < params or c < cost) for p, c, _ in points
        )
        if not dominated:
            front.append((params, cost, row))
    front.sort(key=lambda point: (point[0], point[1]))
    return [row for _, _, row in front]


def format_table(
    rows: Sequence[Mapping[str, str]],
    top: int | None = None,
    columns: Sequence[str] | None = None,
    width: int = 120,
) -> str:
    """Formats leaderboard rows as an aligned text table for the terminal.

    Args:
        rows: Leaderboard rows, as `read_leaderboard` or `leaderboard_rows` return them.
        top: Show only the first `top` rows. Defaults to None (all).
        columns: Column names to show. Defaults to rank, trial, status, the objective,
            model_name, backbone, input_size, batch_size, loss, epochs, params, seconds and
            message (those present).
        width: The message column is cut so that a line fits this many characters.
            Defaults to 120.

    Returns:
        The table, one line per row after a header line, plus a line saying how many rows
        `top` left out.

    Raises:
        ConfigError: a name in `columns` is not a column of the rows.
    """
    if not rows:
        return "(no trials)"
    present = list(rows[0])
    if columns is None:
        objective = objective_column(rows)
        # `backbone` gathers the per-model `<model>/backbone` columns.
        present += ["backbone"] if any(backbone_of(row) for row in rows) else []
        wanted = [c for c in _TABLE_DEFAULT if c in present]
        wanted.insert(3, objective)
        if not any(row.get("message") for row in rows):
            wanted = [c for c in wanted if c != "message"]
    else:
        unknown = [c for c in columns if c not in present]
        if unknown:
            raise ConfigError(
                f"Unknown leaderboard column(s) {', '.join(unknown)}. "
                f"Valid columns: {', '.join(present)}."
            )
        wanted = list(columns)
    shown = list(rows[: top if top is not None else len(rows)])
    headers = [_TABLE_HEADERS.get(c, c) for c in wanted]
    cells = [
        [_table_cell(c, backbone_of(row) if c == "backbone" else row.get(c, "")) for c in wanted]
        for row in shown
    ]
    right = [
        c not in _TEXT_COLUMNS and all(_to_float(r[i]) is not None or r[i] == "" for r in cells)
        for i, c in enumerate(wanted)
    ]
    widths = []
    for i, c in enumerate(wanted):
        widest = max([len(headers[i])] + [len(r[i]) for r in cells])
        widths.append(min(widest, _TABLE_MAX_WIDTH.get(c, widest)))
    # Two spaces between columns, one where that would push the message off the screen.
    gap = "  "
    if "message" in wanted:
        i = wanted.index("message")
        others = sum(w for j, w in enumerate(widths) if j != i)
        if others + 2 * (len(widths) - 1) + _MESSAGE_MIN_WIDTH > width:
            gap = " "
        room = width - others - len(gap) * (len(widths) - 1)
        widths[i] = min(widths[i], max(_MESSAGE_MIN_WIDTH, room))
    lines = []
    for line in [headers] + cells:
        parts = []
        for i, text in enumerate(line):
            text = cut(text, widths[i])
            parts.append(text.rjust(widths[i]) if right[i] else text.ljust(widths[i]))
        lines.append(gap.join(parts).rstrip())
    if len(shown) < len(rows):
        lines.append(f"({len(rows) - len(shown)} more trials not shown)")
    return "\n".join(lines)


def plot_leaderboard(
    rows: Iterable[Mapping[str, Any]],
    out_png: str | os.PathLike,
    objective: str = "val_mean_iou",
    direction: str = "max",
) -> Path:
    """Plots the objective against the parameter count (log scale), Pareto front marked.

    FAILED and RUNNING trials, and trials without a finite objective or parameter count,
    are left out. The PNG is written whole (a temporary file, then `os.replace`).

    Returns:
        The path written.

    Raises:
        ConfigError: matplotlib is not installed, or `direction` is invalid.
        RunError: no trial has a result to plot.
    """
    _check_direction(direction)
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib: pip install 'autoseg[plot]'") from exc
    records = list(rows)
    points = _plot_points(records, objective)
    if not points:
        raise RunError(
            f"Nothing to plot: no COMPLETED trial has a finite {objective} and parameter "
            f"count (of {len(records)} trials)."
        )
    front = pareto_front([row for _, _, row in points], objective, direction)
    # A Figure without pyplot draws with Agg and leaves the global backend alone.
    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    _draw_objective_against_size(fig.add_subplot(), points, front, objective, direction)
    out = Path(out_png)
    _save_png(fig, out)
    return out


def _plot_points(
    records: list[Mapping[str, Any]], objective: str
) -> list[tuple[float, float, Mapping[str, Any]]]:
    """`(params, objective, row)` of each ranked row with a finite, positive parameter count."""
    return [
        (params, _objective_value(row, objective), row)
        for row in records
        if _rankable(row, objective)
        and (params := _to_float(row.get("params"))) is not None
        and math.isfinite(params)
        and params > 0
    ]


def _draw_objective_against_size(
    ax,
    points: list[tuple[float, float, Mapping[str, Any]]],
    front: list[Mapping[str, Any]],
    objective: str,
    direction: str,
) -> None:
    """Draws every trial, and the Pareto front as labelled steps, on a log-scale axis."""
    ax.scatter(
        [p for p, _, _ in points],
        [v for _, v, _ in points],
        s=28,
        color="tab:blue",
        alpha=0.6,
        label=f"trials ({len(points)})",
    )
    front_x = [_to_float(row.get("params")) for row in front]
    front_y = [_objective_value(row, objective) for row in front]
    ax.plot(front_x, front_y, color="tab:red", linewidth=1.2, drawstyle="steps-post")
    ax.scatter(
        front_x,
        front_y,
        s=60,
        color="tab:red",
        edgecolors="black",
        zorder=3,
        label=f"Pareto front ({len(front)})",
    )
    for x, y, row in zip(front_x, front_y, front):
        label = _model_name(row) or f"trial {_text(row.get('trial_id'))}"
        ax.annotate(label, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)  # room for the labels of the end points
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel(f"{objective} ({'higher' if direction == 'max' else 'lower'} is better)")
    ax.set_title(f"{objective} against model size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _save_png(fig, out: Path) -> None:
    """Writes `fig` to `out` whole: a temporary file beside it, then `os.replace`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def find_leaderboard(
    rundir: str | os.PathLike | None = None, runs_dir: str | os.PathLike = "runs"
) -> Path:
    """Returns the leaderboard CSV of a run folder, or of the latest run.

    Args:
        rundir: A run folder (or the CSV itself). Defaults to None: the folder under
            `runs_dir` whose leaderboard.csv was written last.
        runs_dir: Where runs live. Defaults to `"runs"` (relative to the working folder).

    Raises:
        ConfigError: there is no such run folder or no leaderboard in it.
    """
    if rundir is not None:
        rundir = Path(rundir)
        if rundir.is_file():
            return rundir
        if not rundir.is_dir():
            raise ConfigError(
                f"Run folder {rundir} does not exist. {_SEARCH_FIRST}, or pass an existing "
                f"run folder (they live under ./{runs_dir})."
            )
        path = rundir / LEADERBOARD_FILE
        if not path.is_file():
            raise ConfigError(
                f"{path} does not exist: {rundir} holds no search results. {_SEARCH_FIRST}."
            )
        return path
    runs = Path(runs_dir)
    found = [p for p in runs.glob(f"*/{LEADERBOARD_FILE}") if p.is_file()] if runs.is_dir() else []
    if not found:
        raise ConfigError(
            f"No run folder under ./{runs} holds a {LEADERBOARD_FILE}. {_SEARCH_FIRST}, or "
            "pass the run folder: autoseg leaderboard RUNDIR."
        )
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)))


def flatten_message(message: Any) -> str:
    """Puts a message on one line; a long one (a traceback) keeps only its last line.

    Example: a 40-line traceback becomes
    `"ValueError: bad shape (cut; the full text is in the trial folder)"`.
    """
    if message is None:
        return ""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = " | ".join(lines)
    is_traceback = bool(lines) and lines[0].startswith("Traceback (most recent call last)")
    if len(text) <= MESSAGE_MAX_CHARS and not is_traceback:
        return text
    last = lines[-1]
    room = MESSAGE_MAX_CHARS - len(MESSAGE_CUT_HINT) - 1
    return f"{cut(last, room)} {MESSAGE_CUT_HINT}"


def backbone_of(row: Mapping[str, Any]) -> str:
    """Returns a trial's backbone: its `<model_name>/backbone` hyperparameter ("" if none).

    Accepts leaderboard rows (strings) or trial records. Backbones are per-model
    hyperparameters (`unet/backbone`, `deeplabv3plus/backbone`); a bare `backbone` (a
    HyperModel of one's own) is read too.

    Example: `backbone_of({"model_name": "unet", "unet/backbone": "resnet50"})` is
    `"resnet50"`.
    """
    hps = row.get("hyperparameters")
    values = hps if isinstance(hps, Mapping) else row
    model = _text(values.get("model_name"))
    for name in (f"{model}/backbone", "backbone"):
        value = _text(values.get(name))
        if value:
            return value
    return ""


def format_params(value: Any) -> str:
    """Writes a parameter count short: 1940000 -> "1.9M", 850000 -> "850K"."""
    count = _to_float(value)
    if count is None:
        return _text(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M")):
        if abs(count) >= limit:
            return f"{count / limit:.1f}{suffix}"
    if abs(count) >= 1e3:
        return f"{count / 1e3:.0f}K"
    return f"{count:.0f}"


# --- internals ------------------------------------------------------------------------

_TABLE_DEFAULT = (
    "rank",
    "trial_id",
    "status",
    "model_name",
    "backbone",
    "input_size",
    "batch_size",
    "loss",
    "epochs",
    "params",
    "train_seconds",
    "message",
)
_TABLE_HEADERS = {
    "rank": "#",
    "trial_id": "trial",
    "model_name": "model",
    "input_size": "input",
    "batch_size": "batch",
    "train_seconds": "seconds",
}
_TABLE_MAX_WIDTH = {"model_name": 14, "backbone": 14, "loss": 12, "status": 9, "trial_id": 8}
_MESSAGE_MIN_WIDTH = 20
_TEXT_COLUMNS = frozenset({"trial_id", "status", "message", "model_name", "backbone", "loss"})


def held_out_note(row: Mapping[str, Any]) -> str:
    """What a "Best:" line adds for a trial that trained on its validation photos ("" for
    one that did not)."""
    if _text(row.get("trained_on")) != "train+val":
        return ""
    return " (trained on the validation photos too: its val score is not held out)"


def _table_cell(column: str, value: str) -> str:
    if column == "params":
        return format_params(value)
    if column == "train_seconds":
        seconds = _to_float(value)
        return value if seconds is None else f"{seconds:.0f}"
    return _text(value)


def _rebalanced(switched: Any) -> str:
    """`rebalanced` of a trial's record (`autoseg.rebalance`) as a cell: "weighted_ce_dice
    after epoch 12", or "" when the trial did not switch."""
    if not isinstance(switched, Mapping) or not switched.get("loss"):
        return ""
    return f"{switched['loss']} after epoch {switched.get('epoch')}"


def _columns(
    records: Sequence[Mapping[str, Any]], objective: str, class_names: Sequence[str] | None
) -> tuple[list[str], dict[str, str], list[str]]:
    """Returns the CSV columns, hyperparameter -> column name, and the val_* metric columns."""
    hp_names: set[str] = set()
    metric_names: set[str] = set()
    has_worker = has_trained_on = has_rebalanced = False
    for record in records:
        hp_names.update(record.get("hyperparameters") or {})
        metric_names.update(record.get("metrics") or {})
        has_worker = has_worker or bool(_text(record.get("worker")))
        has_trained_on = has_trained_on or bool(_text(record.get("trained_on")))
        has_rebalanced = has_rebalanced or bool(record.get("rebalanced"))
    val_metrics = sorted(m for m in metric_names if m.startswith("val_") and m != objective)
    per_class = [f"val_iou_{name}" for name in class_names or ()]
    val_metrics = [m for m in per_class if m in val_metrics] + [
        m for m in val_metrics if m not in per_class
    ]
    tail = (list(TAIL_COLUMNS) + (["trained_on"] if has_trained_on else [])
            + (["rebalanced"] if has_rebalanced else [])
            + (["worker"] if has_worker else []) + ["message"])
    taken = set(HEAD_COLUMNS) | {objective} | set(val_metrics) | set(tail)
    hp_order = [n for n in HYPERPARAMETER_ORDER if n in hp_names] + sorted(
        hp_names - set(HYPERPARAMETER_ORDER)
    )
    hp_columns = {n: (HYPERPARAMETER_PREFIX + n if n in taken else n) for n in hp_order}
    columns = [*HEAD_COLUMNS, objective, *hp_columns.values(), *val_metrics, *tail]
    return columns, hp_columns, val_metrics


def _ranks(records: Sequence[Mapping[str, Any]], objective: str, direction: str) -> list:
    ranked = sorted(
        (i for i, record in enumerate(records) if _rankable(record, objective)),
        key=lambda i: _best_first_key(records[i], objective, direction),
    )
    ranks: list[int | None] = [None] * len(records)
    for rank, i in enumerate(ranked, start=1):
        ranks[i] = rank
    return ranks


def _best_first_key(row: Mapping[str, Any], objective: str, direction: str) -> tuple:
    value = _objective_value(row, objective)
    # Written values are rounded, so ties fall back on the rank the writer gave.
    rank = _to_float(row.get("rank"))
    return (
        -value if direction == "max" else value,
        rank if rank is not None else math.inf,
        _trial_sort_key(row),
    )


def _rankable(row: Mapping[str, Any], objective: str) -> bool:
    status = _text(row.get("status")).upper()
    value = _objective_value(row, objective)
    return status in RANKED_STATUSES and value is not None and math.isfinite(value)


def _objective_value(row: Mapping[str, Any], objective: str) -> float | None:
    metrics = row.get("metrics")
    if isinstance(metrics, Mapping):
        return _to_float(metrics.get(objective))
    return _to_float(row.get(objective))


def _model_name(row: Mapping[str, Any]) -> str:
    hps = row.get("hyperparameters")
    if isinstance(hps, Mapping):
        return _text(hps.get("model_name"))
    return _text(row.get("model_name"))


def _trial_sort_key(row: Mapping[str, Any]) -> tuple:
    trial_id = _text(row.get("trial_id"))
    # Natural order: "9" before "10", whatever the zero padding.
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", trial_id)
        if part
    )


def _check_direction(direction: str) -> None:
    if direction not in ("max", "min"):
        raise ConfigError(
            f"direction must be 'max' or 'min'. Received: direction={direction!r}."
        )


def _to_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _scale(value: Any, factor: float) -> float | None:
    number = _to_float(value)
    return None if number is None else number * factor


def _number(value: Any, decimals: int) -> str:
    number = _to_float(value)
    if number is None:
        return _text(value)
    if not math.isfinite(number):
        return str(number)  # "nan", "inf": a diverged trial should show as such
    return f"{number:.{decimals}f}"


def _hyperparameter(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".6g")
    return _text(value)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def cut(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending in "..." when cut."""
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


@dataclasses.dataclass
class Leaderboard:
    """A search's leaderboard as `leaderboard()` reads it; `str()` gives the CLI's table.

    Attributes:
        path: The CSV read.
        rows: Its rows in the CSV's order (ranked trials by rank, then the others by trial
            id), only the first `top` when `top` was given; values are strings.
        objective: The column that ranks trials.
        direction: "max" or "min".
        best: The best COMPLETED or STOPPED row of the whole CSV, or None.
        counts: How many trials have each status, over the whole CSV.
        plot: The PNG written, or None.
        ensembles: The top-K ensembles exported from the run (`autoseg export --ensemble`),
            as `RUNDIR/ensembles.json` keeps them; `ensemble_line` describes one.
    """

    path: Path
    rows: list[dict[str, str]]
    objective: str
    direction: str
    best: dict[str, str] | None
    counts: dict[str, int]
    plot: Path | None = None
    ensembles: list[dict] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        return format_table(self.rows)


def leaderboard(
    rundir: str | os.PathLike | None = None,
    *,
    top: int | None = None,
    plot: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike = "runs",
) -> Leaderboard:
    """Reads a search's leaderboard, as `autoseg leaderboard` shows it.

    Args:
        rundir: A run folder or its leaderboard CSV. Defaults to None: the run under
            `runs_dir` whose leaderboard was written last.
        top: Keep only the `top` best rows. Defaults to None (all).
        plot: Also plot the objective against the parameter count into this PNG, Pareto
            front marked (needs matplotlib). Defaults to None.
        runs_dir: Where runs live. Defaults to "runs".

    Returns:
        A `Leaderboard`.

    Raises:
        ConfigError: no such run or leaderboard, a leaderboard without trials yet, or
            `top` below 1.

    Example:
    ```python
    board = autoseg.leaderboard("runs/weeds", top=5)
    print(board)                      # the table
    board.best["trial_id"], board.best[board.objective]
    ```
    """
    if top is not None and top < 1:
        raise ConfigError(f"top must be a positive whole number. Received: top={top!r}.")
    path = find_leaderboard(rundir, runs_dir)
    rows = read_leaderboard(path)
    if not rows:
        raise ConfigError(
            f"{path} lists no trials yet. {_SEARCH_FIRST}, or wait for the running search to "
            "finish its first trial."
        )
    objective = objective_column(rows)
    direction = infer_direction(rows, objective)
    counts = dict(collections.Counter(row.get("status") or "?" for row in rows))
    written = plot_leaderboard(rows, plot, objective, direction) if plot is not None else None
    return Leaderboard(
        path=path, rows=rows[:top] if top else rows, objective=objective, direction=direction,
        best=best_row(rows, objective, direction), counts=counts, plot=written,
        ensembles=read_ensembles(path.parent),
    )


def ensemble_line(entry: Mapping[str, Any]) -> str:
    """`Ensemble of trials 0003, 0001 (exports/x): val mIoU 0.7412 at full resolution on 8
    photos; its members alone 0.7301, 0.7012; with flips h 0.7455`."""
    def number(value):
        parsed = _to_float(value)
        return "?" if parsed is None else f"{parsed:.4f}"

    members = [str(m) for m in entry.get("members") or []]
    own = entry.get("members_val_mean_iou_full_res") or {}
    text = f"Ensemble of trials {', '.join(members)} ({entry.get('out', '?')}): "
    if entry.get("val_mean_iou_full_res") is None:
        return text + "not scored (the run's validation photos were not readable)"
    text += (f"val mIoU {number(entry['val_mean_iou_full_res'])} at full resolution on "
             f"{entry.get('val_images', '?')} photos; its members alone "
             + ", ".join(number(own.get(m)) for m in members))
    if entry.get("tta", "none") != "none" and entry.get("tta_val_mean_iou_full_res") is not None:
        text += f"; with flips {entry['tta']} {number(entry['tta_val_mean_iou_full_res'])}"
    return text


# `autoseg.leaderboard(...)` runs `leaderboard(...)` although `autoseg.leaderboard` is this
# module.
make_callable(__name__, "leaderboard")
