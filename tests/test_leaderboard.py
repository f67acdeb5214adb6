"""The search leaderboard: CSV contract, ranking, Pareto front, plot and CLI."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoseg import cli
from autoseg import leaderboard as lb
from autoseg.errors import ConfigError, RunError

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "hypermodel.py", line 90, in fit\n'
    "    model.fit(dataset)\n"
    + "".join(f'  File "frame{i}.py", line {i}\n    call()\n' for i in range(40))
    + "ResourceExhaustedError: OOM when allocating tensor with shape [64,512,512,32]"
)


def _records():
    """Six trials: the statuses, inactive per-model hyperparameters, a NaN objective, a
    traceback. Backbones are per-model hyperparameters, as the search writes them."""
    return [
        {
            "trial_id": "0000",
            "status": "COMPLETED",
            "hyperparameters": {
                "learning_rate": 0.0003,
                "unet/filters": 32,
                "model_name": "unet",
                "unet/backbone": "resnet50",
                "input_size": 256,
                "batch_size": 8,
                "loss": "dice_ce",
            },
            "metrics": {
                "val_mean_iou": 0.712345,
                "val_iou_weed": 0.51,
                "val_iou_crop": 0.6,
                "val_iou_background": 0.9,
                "val_dice": 0.8,
                "val_loss": 0.31234,
                "mean_iou": 0.8,
                "loss": 0.2,
            },
            "epochs": 12,
            "params": 1_940_000,
            "train_seconds": 83.24,
            "predicted_peak_memory_bytes": 2.1e9,
            "measured_peak_memory_bytes": 1.9e9,
            "worker": "worker0",
        },
        {
            "trial_id": "0001",
            "status": "FAILED",
            # A failed trial with the best objective on record must still not rank.
            "hyperparameters": {"model_name": "segnet", "input_size": 512, "batch_size": 64},
            "metrics": {"val_mean_iou": 0.99},
            "message": TRACEBACK,
        },
        {
            "trial_id": "0002",
            "status": "COMPLETED",
            "hyperparameters": {
                "model_name": "deeplabv3plus",
                "deeplabv3plus/backbone": "mobilenetv2",
                "input_size": 256,
                "batch_size": 16,
                "loss": "dice_ce",
                "learning_rate": 1e-4,
            },
            "metrics": {"val_mean_iou": 0.75, "val_iou_crop": 0.65, "val_loss": 0.25},
            "epochs": 20,
            "params": 23_500_000,
            "train_seconds": 400.0,
        },
        {
            "trial_id": "0003",
            "status": "COMPLETED",
            "hyperparameters": {"model_name": "light_unet", "input_size": 128},
            "metrics": {"val_mean_iou": float("nan")},
            "params": 300_000,
        },
        {
            "trial_id": "0004",
            "status": "STOPPED",
            "hyperparameters": {"model_name": "light_unet", "input_size": 128},
            "metrics": {"val_mean_iou": 0.6},
            "epochs": 3,
            "params": 310_000,
            "message": "early stopping\nat epoch 3",
        },
        {"trial_id": "0005", "status": "RUNNING", "hyperparameters": {"model_name": "pix2pix"}},
    ]


def _loss_records():
    """The same trials with val_loss equal to val_mean_iou, to rank by a minimised objective."""
    records = _records()
    for record in records:
        metrics = record.setdefault("metrics", {})
        metrics["val_loss"] = metrics.get("val_mean_iou")
    return records


EXPECTED_HEADER = [
    "rank", "trial_id", "status", "val_mean_iou",
    "model_name", "input_size", "batch_size", "loss", "learning_rate",
    "deeplabv3plus/backbone", "unet/backbone", "unet/filters",
    "val_iou_background", "val_iou_crop", "val_iou_weed", "val_dice", "val_loss",
    "epochs", "params", "train_seconds", "predicted_peak_memory_mb", "measured_peak_memory_mb",
    "worker", "message",
]  # fmt: skip


def _write(tmp_path, records=None, **kwargs) -> Path:
    path = tmp_path / "run" / "leaderboard.csv"
    kwargs.setdefault("class_names", ["background", "crop", "weed"])
    lb.write_leaderboard(path, _records() if records is None else records, **kwargs)
    return path


def _read_csv(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    return reader.fieldnames, {row["trial_id"]: row for row in rows}


# --- the CSV ---------------------------------------------------------------------------


def test_header_order(tmp_path):
    header, _ = _read_csv(_write(tmp_path))
    assert header == EXPECTED_HEADER


def test_class_names_order_the_per_class_columns(tmp_path):
    header, _ = _read_csv(_write(tmp_path, class_names=["weed", "crop", "background"]))
    assert header[12:15] == ["val_iou_weed", "val_iou_crop", "val_iou_background"]
    header, _ = _read_csv(_write(tmp_path, class_names=None))
    assert header[12:17] == [
        "val_dice", "val_iou_background", "val_iou_crop", "val_iou_weed", "val_loss"
    ]  # fmt: skip


def test_values_and_blank_cells(tmp_path):
    _, rows = _read_csv(_write(tmp_path))
    unet = rows["0000"]
    assert unet["val_mean_iou"] == "0.7123"
    assert unet["val_loss"] == "0.3123"
    assert unet["learning_rate"] == "0.0003"
    assert unet["unet/filters"] == "32"
    assert unet["params"] == "1940000"
    assert unet["epochs"] == "12"
    assert unet["train_seconds"] == "83.2"
    assert unet["predicted_peak_memory_mb"] == str(round(2.1e9 / 2**20))
    assert unet["measured_peak_memory_mb"] == str(round(1.9e9 / 2**20))
    assert unet["worker"] == "worker0"
    # Inactive hyperparameters and missing metrics are blank, not "None" or "nan".
    light = rows["0004"]
    assert light["unet/backbone"] == light["unet/filters"] == light["learning_rate"] == ""
    assert light["val_iou_crop"] == light["val_loss"] == light["train_seconds"] == ""
    assert light["worker"] == ""
    assert rows["0002"]["unet/filters"] == ""
    assert rows["0002"]["val_dice"] == ""
    assert rows["0002"]["learning_rate"] == "0.0001"
    # Training metrics (not val_*) are not columns.
    assert "mean_iou" not in unet and "loss" in unet and unet["loss"] == "dice_ce"


def test_messages_are_one_line_and_tracebacks_cut(tmp_path):
    path = _write(tmp_path)
    text = path.read_text()
    assert len(text.splitlines()) == 1 + 6  # no newline leaked into a cell
    _, rows = _read_csv(path)
    failed = rows["0001"]["message"]
    assert failed.startswith("ResourceExhaustedError: OOM when allocating")
    assert lb.MESSAGE_CUT_HINT in failed
    assert "Traceback" not in failed and "frame3" not in failed
    assert rows["0004"]["message"] == "early stopping | at epoch 3"
    assert lb.flatten_message("x" * 1000).endswith(lb.MESSAGE_CUT_HINT)
    assert len(lb.flatten_message("x" * 1000)) <= lb.MESSAGE_MAX_CHARS
    assert lb.flatten_message(None) == ""


def test_ranks_and_row_order(tmp_path):
    _, rows = _read_csv(_write(tmp_path))
    ranks = {trial: row["rank"] for trial, row in rows.items()}
    # FAILED (despite 0.99), NaN objective and RUNNING are unranked; STOPPED competes.
    assert ranks == {"0002": "1", "0000": "2", "0004": "3", "0001": "", "0003": "", "0005": ""}
    assert list(rows) == ["0002", "0000", "0004", "0001", "0003", "0005"]
    assert rows["0003"]["val_mean_iou"] == "nan"


def test_min_direction_reverses_ranks(tmp_path):
    records = _loss_records()
    path = _write(tmp_path, records, objective="val_loss", direction="min")
    header, rows = _read_csv(path)
    assert header[3] == "val_loss" and header.count("val_loss") == 1
    assert "val_mean_iou" in header[4:]
    assert [t for t, r in rows.items() if r["rank"]] == ["0004", "0000", "0002"]


def test_unranked_rows_sort_by_trial_id_naturally(tmp_path):
    records = [{"trial_id": t, "status": "FAILED"} for t in ("10", "9", "100")]
    _, rows = _read_csv(_write(tmp_path, records))
    assert list(rows) == ["9", "10", "100"]


def test_worker_column_only_when_a_trial_names_one(tmp_path):
    records = [r for r in _records() if r["trial_id"] != "0000"]
    header, _ = _read_csv(_write(tmp_path, records))
    assert "worker" not in header
    assert header[-1] == "message"


def test_a_trial_trained_on_train_and_val_says_so_in_its_column_and_best_line(tmp_path):
    records = _records()
    header, _ = _read_csv(_write(tmp_path, records))
    assert "trained_on" not in header
    records[0]["trained_on"] = "train+val"
    header, rows = _read_csv(_write(tmp_path, records))
    assert header[-3:] == ["trained_on", "worker", "message"]
    assert rows[records[0]["trial_id"]]["trained_on"] == "train+val"
    assert all(rows[r["trial_id"]]["trained_on"] == "" for r in records[1:])
    assert "not held out" in lb.held_out_note(rows[records[0]["trial_id"]])
    assert lb.held_out_note(rows[records[1]["trial_id"]]) == ""


def test_a_trial_that_rebalanced_says_when_in_its_column(tmp_path):
    records = _records()
    header, _ = _read_csv(_write(tmp_path, records))
    assert "rebalanced" not in header
    records[0]["rebalanced"] = {"epoch": 12, "classes": ["pole"], "loss": "weighted_ce_dice"}
    header, rows = _read_csv(_write(tmp_path, records))
    assert header[-3:] == ["rebalanced", "worker", "message"]
    assert rows[records[0]["trial_id"]]["rebalanced"] == "weighted_ce_dice after epoch 12"
    assert all(rows[r["trial_id"]]["rebalanced"] == "" for r in records[1:])


def test_hyperparameter_named_like_a_column_is_prefixed(tmp_path):
    records = [
        {
            "trial_id": "0",
            "status": "COMPLETED",
            "hyperparameters": {"epochs": 50, "model_name": "unet"},
            "metrics": {"val_mean_iou": 0.5},
            "epochs": 7,
        }
    ]
    header, rows = _read_csv(_write(tmp_path, records))
    assert header.count("epochs") == 1
    assert rows["0"]["hp:epochs"] == "50" and rows["0"]["epochs"] == "7"


def test_bad_direction_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="direction=.*'up'"):
        _write(tmp_path, direction="up")


def test_read_back_with_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(_write(tmp_path), dtype={"trial_id": str})
    assert list(frame.columns) == EXPECTED_HEADER
    assert frame.loc[frame.trial_id == "0002", "rank"].item() == 1
    assert math.isnan(frame.loc[frame.trial_id == "0001", "rank"].item())


def test_read_leaderboard_round_trip_and_errors(tmp_path):
    path = _write(tmp_path)
    rows = lb.read_leaderboard(path)
    assert list(rows[0]) == EXPECTED_HEADER
    assert [r["trial_id"] for r in rows] == ["0002", "0000", "0004", "0001", "0003", "0005"]
    assert lb.objective_column(rows) == "val_mean_iou"
    assert lb.infer_direction(rows, "val_mean_iou") == "max"
    with pytest.raises(ConfigError, match="autoseg search --dataset PATH"):
        lb.read_leaderboard(tmp_path / "absent.csv")
    other = tmp_path / "other.csv"
    other.write_text("a,b,c,d\n1,2,3,4\n")
    with pytest.raises(ConfigError, match="not an autoseg leaderboard"):
        lb.read_leaderboard(other)


def test_infer_direction_from_ranks(tmp_path):
    rows = lb.read_leaderboard(_write(tmp_path, direction="min"))
    assert lb.infer_direction(rows, "val_mean_iou") == "min"


# --- atomic writes ---------------------------------------------------------------------


def test_write_leaves_no_temporary_files(tmp_path):
    path = _write(tmp_path)
    _write(tmp_path)  # overwrite
    assert sorted(p.name for p in path.parent.iterdir()) == ["leaderboard.csv"]


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = _write(tmp_path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        lb.write_leaderboard(path, _records()[:1])
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["leaderboard.csv"]


# --- best row and Pareto front ---------------------------------------------------------


def test_best_row_on_records_and_read_rows(tmp_path):
    best = lb.best_row(_records(), "val_mean_iou", "max")
    assert best["trial_id"] == "0002"
    rows = lb.read_leaderboard(_write(tmp_path))
    assert lb.best_row(rows, "val_mean_iou", "max")["trial_id"] == "0002"
    assert lb.best_row(rows, "val_mean_iou", "min")["trial_id"] == "0004"


def test_best_row_never_returns_a_failed_row():
    failed = {"trial_id": "0", "status": "FAILED", "metrics": {"val_mean_iou": 0.9}}
    assert lb.best_row([failed], "val_mean_iou", "max") is None
    running = {"trial_id": "1", "status": "RUNNING", "metrics": {"val_mean_iou": 0.95}}
    nan = {"trial_id": "2", "status": "COMPLETED", "metrics": {"val_mean_iou": float("nan")}}
    assert lb.best_row([failed, running, nan], "val_mean_iou", "max") is None
    assert lb.best_row([], "val_mean_iou", "max") is None
    # As read back from a CSV, where the failed row still has a value.
    as_read = {"rank": "", "trial_id": "0", "status": "FAILED", "val_mean_iou": "0.9000"}
    assert lb.best_row([as_read], "val_mean_iou", "max") is None


def test_best_row_breaks_rounded_ties_by_the_written_rank():
    rows = [
        {"rank": "2", "trial_id": "0001", "status": "COMPLETED", "v": "0.5000"},
        {"rank": "1", "trial_id": "0007", "status": "COMPLETED", "v": "0.5000"},
    ]
    assert lb.best_row(rows, "v", "max")["trial_id"] == "0007"


def _point(trial, params, value, status="COMPLETED"):
    return {"trial_id": trial, "status": status, "params": params, "metrics": {"obj": value}}


PARETO_SET = [
    _point("small", 1e5, 0.50),
    _point("mid", 1e6, 0.70),
    _point("mid_worse", 2e6, 0.65),  # bigger and worse than "mid": dominated
    _point("same_size_worse", 1e6, 0.60),  # as big as "mid", worse: dominated
    _point("big", 1e7, 0.80),
    _point("huge_equal", 5e7, 0.80),  # bigger, not better: dominated
    _point("failed_tiny", 1e3, 0.99, "FAILED"),  # would dominate everything; excluded
    _point("no_params", None, 0.95),
]


def test_pareto_front_max():
    front = lb.pareto_front(PARETO_SET, "obj", "max")
    assert [row["trial_id"] for row in front] == ["small", "mid", "big"]


def test_pareto_front_min():
    front = lb.pareto_front(PARETO_SET, "obj", "min")
    assert [row["trial_id"] for row in front] == ["small"]
    extra = PARETO_SET + [_point("tiny_bad", 1e4, 0.9)]
    front = lb.pareto_front(extra, "obj", "min")
    assert [row["trial_id"] for row in front] == ["tiny_bad", "small"]


def test_pareto_front_on_read_rows(tmp_path):
    rows = lb.read_leaderboard(_write(tmp_path))
    front = lb.pareto_front(rows, "val_mean_iou", "max")
    assert [row["trial_id"] for row in front] == ["0004", "0000", "0002"]


# --- terminal table --------------------------------------------------------------------


def test_format_table(tmp_path):
    rows = lb.read_leaderboard(_write(tmp_path))
    table = lb.format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 1 + 6
    assert max(len(line) for line in lines) <= 120
    assert lines[0].split()[:4] == ["#", "trial", "status", "val_mean_iou"]
    assert lines[1].split()[:4] == ["1", "0002", "COMPLETED", "0.7500"]
    # The backbone column gathers the per-model `<model>/backbone` columns.
    assert lines[0].split()[4:6] == ["model", "backbone"]
    assert lines[1].split()[4:6] == ["deeplabv3plus", "mobilenetv2"]
    assert lines[2].split()[4:6] == ["unet", "resnet50"]
    assert "23.5M" in lines[1] and "1.9M" in lines[2] and "310K" in lines[3]
    assert "learning_rate" not in lines[0]  # not a default column
    assert "ResourceExhausted" in lines[4]
    top = lb.format_table(rows, top=2).splitlines()
    assert len(top) == 1 + 2 + 1 and top[-1] == "(4 more trials not shown)"
    chosen = lb.format_table(rows, columns=["trial_id", "learning_rate"]).splitlines()
    assert chosen[0].split() == ["trial", "learning_rate"]
    assert chosen[2].split() == ["0000", "0.0003"]
    with pytest.raises(ConfigError, match="Unknown leaderboard column.*nope"):
        lb.format_table(rows, columns=["nope"])


def test_backbone_of_reads_the_drawn_models_backbone(tmp_path):
    records = _records()
    assert [lb.backbone_of(r) for r in records] == ["resnet50", "", "mobilenetv2", "", "", ""]
    rows = {row["trial_id"]: row for row in lb.read_leaderboard(_write(tmp_path))}
    assert lb.backbone_of(rows["0000"]) == "resnet50"
    assert lb.backbone_of(rows["0002"]) == "mobilenetv2"
    assert lb.backbone_of(rows["0004"]) == ""  # light_unet has none
    # Another model's backbone is not this trial's.
    assert lb.backbone_of({"model_name": "segnet", "unet/backbone": "vgg16"}) == ""
    # A HyperModel of one's own may name it `backbone`.
    assert lb.backbone_of({"model_name": "mine", "backbone": "vgg16"}) == "vgg16"


def test_format_params():
    assert lb.format_params(1_940_000) == "1.9M"
    assert lb.format_params("23500000") == "23.5M"
    assert lb.format_params(850_000) == "850K"
    assert lb.format_params(512) == "512"
    assert lb.format_params("") == ""


# --- plot ------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = lb.plot_leaderboard(_records(), tmp_path / "plots" / "lb.png", "val_mean_iou", "max")
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    assert sorted(p.name for p in out.parent.iterdir()) == ["lb.png"]


def test_plot_excludes_failed_trials(tmp_path):
    pytest.importorskip("matplotlib")
    failed = [r for r in _records() if r["status"] in ("FAILED", "RUNNING")]
    with pytest.raises(RunError, match="Nothing to plot"):
        lb.plot_leaderboard(failed, tmp_path / "lb.png", "val_mean_iou", "max")
    assert not (tmp_path / "lb.png").exists()


def test_plot_failure_keeps_the_previous_png(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    out = tmp_path / "lb.png"
    out.write_bytes(b"previous")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        lb.plot_leaderboard(_records(), out, "val_mean_iou", "max")
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["lb.png"]


def test_plot_without_matplotlib_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ConfigError, match=r"pip install 'autoseg\[plot\]'"):
        lb.plot_leaderboard(_records(), tmp_path / "lb.png", "val_mean_iou", "max")


# --- CLI -------------------------------------------------------------------------------


def _available_commands() -> tuple[str, ...]:
    # Sibling subcommands are written in parallel; a missing one must not hide this one.
    return tuple(
        name for name in cli.COMMANDS if importlib.util.find_spec(f"autoseg.commands.{name}")
    )


@pytest.fixture
def main(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", _available_commands())
    return cli.main


def test_leaderboard_is_a_registered_command():
    assert "leaderboard" in cli.COMMANDS


def test_cli_prints_table_and_best(tmp_path, main, capsys):
    _write(tmp_path)
    assert main(["leaderboard", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert (
        "Best: trial 0002 with val_mean_iou = 0.7500 "
        "(deeplabv3plus, backbone mobilenetv2, 23.5M params)" in out.splitlines()[-1]
    )
    assert "Trial 0001 FAILED: ResourceExhaustedError" in out
    assert "6 trials: 3 COMPLETED, 1 FAILED, 1 RUNNING, 1 STOPPED" in out
    # The first line is the leaderboard's path, as long as the path is (never cut).
    assert out.splitlines()[0].startswith(str(tmp_path / "run"))
    assert max(len(line) for line in out.splitlines()[1:]) <= 120, out


def test_cli_min_objective(tmp_path, main, capsys):
    records = _loss_records()
    _write(tmp_path, records, objective="val_loss", direction="min")
    assert main(["leaderboard", str(tmp_path / "run" / "leaderboard.csv"), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "Best: trial 0004 with val_loss = 0.6000" in out
    assert "lower is better" in out


def test_cli_defaults_to_the_latest_run(tmp_path, main, capsys, monkeypatch):
    records = _records()
    lb.write_leaderboard(tmp_path / "runs" / "new" / "leaderboard.csv", records[2:3])
    lb.write_leaderboard(tmp_path / "runs" / "old" / "leaderboard.csv", records[:1])
    (tmp_path / "runs" / "no_results").mkdir()
    old_time = time.time() - 3600
    os.utime(tmp_path / "runs" / "old" / "leaderboard.csv", (old_time, old_time))
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard"]) == 0
    out = capsys.readouterr().out
    assert "Best: trial 0002" in out and str(Path("runs", "new", "leaderboard.csv")) in out


def test_cli_plot(tmp_path, main, capsys):
    pytest.importorskip("matplotlib")
    _write(tmp_path)
    out_png = tmp_path / "lb.png"
    assert main(["leaderboard", str(tmp_path / "run"), "--plot", str(out_png)]) == 0
    assert f"Wrote {out_png}" in capsys.readouterr().out
    assert out_png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("nothing", "No run folder under ./runs holds a leaderboard.csv"),
        ("missing_rundir", "Run folder gone does not exist"),
        ("rundir_without_csv", "empty_run/leaderboard.csv does not exist"),
        ("header_only", "lists no trials yet"),
    ],
)
def test_cli_without_a_leaderboard(tmp_path, main, capsys, monkeypatch, setup, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_run").mkdir()
    argv = {
        "nothing": ["leaderboard"],
        "missing_rundir": ["leaderboard", "gone"],
        "rundir_without_csv": ["leaderboard", "empty_run"],
        "header_only": ["leaderboard", "header_only"],
    }[setup]
    if setup == "header_only":
        lb.write_leaderboard(tmp_path / "header_only" / "leaderboard.csv", [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and expected in err
    assert "autoseg search --dataset PATH" in err


def test_cli_rejects_a_bad_top(tmp_path, main, capsys):
    assert main(["leaderboard", str(tmp_path), "--top", "0"]) == 2
    assert "--top: must be a positive whole number" in capsys.readouterr().err


def test_cli_imports_no_tensorflow_or_keras(tmp_path):
    _write(tmp_path)
    code = (
        "import importlib.util, sys\n"
        "import autoseg.cli as cli\n"
        "cli.COMMANDS = tuple(n for n in cli.COMMANDS\n"
        "    if importlib.util.find_spec(f'autoseg.commands.{n}'))\n"
        "assert cli.main(['leaderboard', '--help']) == 0\n"
        f"assert cli.main(['leaderboard', {str(tmp_path / 'run')!r}]) == 0\n"
        "heavy = sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('tensorflow', 'keras', 'keras_tuner'))\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage: autoseg leaderboard [-h] [--top N] [--plot FILE.png] [--debug] [RUNDIR]" in (
        result.stdout
    )
    assert "HEAVY []" in result.stdout


def test_an_exported_ensemble_is_kept_once_per_member_set_and_described(tmp_path):
    from autoseg import run_dir

    assert run_dir.read_ensembles(tmp_path) == []
    entry = {"members": ["3", "1"], "out": "exports/a", "val_images": 8,
             "val_mean_iou_full_res": 0.74123, "members_val_mean_iou_full_res": {"3": 0.7301, "1": 0.7},
             "tta": "h", "tta_val_mean_iou_full_res": 0.7455}
    run_dir.record_ensemble(tmp_path, {**entry, "out": "exports/old"})
    run_dir.record_ensemble(tmp_path, {**entry, "members": ["3", "2"]})
    run_dir.record_ensemble(tmp_path, entry)  # the same members again: replaces the first
    kept = run_dir.read_ensembles(tmp_path)
    assert [(e["members"], e["out"]) for e in kept] == [(["3", "2"], "exports/a"),
                                                        (["3", "1"], "exports/a")]
    assert lb.ensemble_line(entry) == (
        "Ensemble of trials 3, 1 (exports/a): val mIoU 0.7412 at full resolution on 8 photos; "
        "its members alone 0.7301, 0.7000; with flips h 0.7455")
    unscored = {**entry, "val_mean_iou_full_res": None, "tta": "none"}
    assert "not scored" in lb.ensemble_line(unscored)
    (tmp_path / run_dir.ENSEMBLES_FILE).write_text("{broken")
    assert run_dir.read_ensembles(tmp_path) == []


def test_the_search_passes_a_trials_trained_on_from_its_record_to_the_leaderboard(tmp_path):
    # The search builds its rows with tuner.collect_rows from the oracle's trials and the
    # records the trials wrote; a finish on train+val must reach the CSV from there.
    import json

    import keras_tuner as kt

    from autoseg.run_dir import record_path
    from autoseg.tuner import collect_rows

    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_mean_iou", "max"),
                                           max_trials=2)
    oracle._set_project_dir(str(tmp_path / "trials"), "")
    switched = {"epoch": 5, "classes": ["pole"], "loss": "weighted_ce_dice"}
    for trial_id, trained_on in (("0000", None), ("0001", "train+val")):
        trial = kt.engine.trial.Trial(kt.HyperParameters(), trial_id=trial_id, status="COMPLETED")
        trial.hyperparameters.Fixed("model_name", "unet")
        trial.metrics.register("val_mean_iou", "max")
        trial.metrics.update("val_mean_iou", 0.5 + int(trial_id) / 10, step=0)
        trial.best_step = 0
        oracle.trials[trial_id] = trial
        path = record_path(tmp_path, trial_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"epochs": 3} | ({"trained_on": trained_on} if trained_on else
                                  {"rebalanced": switched})
        path.write_text(json.dumps(record))
    rows = collect_rows(oracle, tmp_path, "val_mean_iou")
    header, table = _read_csv(_write(tmp_path, rows))
    assert "trained_on" in header
    assert table["0001"]["trained_on"] == "train+val" and table["0000"]["trained_on"] == ""
    assert table["0000"]["rebalanced"] == "weighted_ce_dice after epoch 5"
    assert "not held out" in lb.held_out_note(lb.best_row(list(table.values())))
