"""The Python API: one function per CLI command, importable from `autoseg` directly.

`autoseg.search`, `autoseg.export`, ... are callable modules (`autoseg.callable_module`); their
keyword arguments are the CLI options' names (dashes as underscores) with the same defaults.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import autoseg
from autoseg.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

# API name -> (module, function) that a call of `autoseg.<name>` runs.
API = {
    "prepare": ("autoseg.data.sources", "prepare"),
    "search": ("autoseg.search", "search"),
    "leaderboard": ("autoseg.leaderboard", "leaderboard"),
    "export": ("autoseg.export", "export"),
    "predict": ("autoseg.predict", "predict"),
    "evaluate": ("autoseg.evaluate", "evaluate"),
    "load": ("autoseg.predict", "load"),
}
CALLABLE_MODULES = ("search", "leaderboard", "export", "predict", "evaluate")
# Subcommand -> the API function that takes its options (`load` takes predict's
# --format and --tile-overlap and has no command of its own).
COMMANDS = {name: API[name] for name in API if name != "load"}

# CLI options without a keyword of the same name, each with its reason. An entry maps
# (command, option name) to the keyword that stands for it, or None when there is none.
OPTION_EXCEPTIONS = {
    # A negative flag: in Python the positive keyword, `overlay=False`.
    ("predict", "no_overlay"): "overlay",
    # `log=lambda line: None` silences the search; a second switch would duplicate it.
    ("search", "quiet"): None,
}
# Keywords whose default differs from the option's, each with its reason.
DEFAULT_EXCEPTIONS = {
    # A required positional on the command line (`best|TRIAL_ID`); Python defaults to "best".
    ("export", "trial"): "best",
}


def _function(name: str):
    module, attr = API[name]
    return getattr(importlib.import_module(module), attr)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _subparser(command: str) -> argparse.ArgumentParser:
    from autoseg.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def _options(command: str) -> dict[str, argparse.Action]:
    """The command's options by Python name: a positional's dest, a flag's long name."""
    options = {}
    for action in _subparser(command)._actions:
        if isinstance(action, argparse._HelpAction) or action.dest == "debug":
            continue  # --help and --debug belong to the CLI, not to the library
        if action.option_strings:
            flag = next(s for s in action.option_strings if s.startswith("--"))
            options[flag[2:].replace("-", "_")] = action
        else:
            options[action.dest] = action
    return options


def test_import_autoseg_stays_free_of_tensorflow_and_lists_the_api():
    script = """
import sys
import autoseg
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "imported TF"
names = dir(autoseg)
assert len(names) == len(set(names)), "duplicates in dir()"
assert set(autoseg.__all__) <= set(names), set(autoseg.__all__) - set(names)
autoseg.leaderboard  # pure Python: still no TensorFlow
assert "tensorflow" not in sys.modules, "autoseg.leaderboard imported TF"
print(sorted(autoseg.__all__))
"""
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == str(sorted(
        ["build_model", "evaluate", "export", "leaderboard", "load", "load_dataset", "predict",
         "prepare", "resolve_dataset", "search"]
    ))


@pytest.mark.parametrize("name", list(API))
def test_each_name_is_callable_from_autoseg_and_by_from_import(name):
    direct = getattr(autoseg, name)
    imported = getattr(importlib.import_module("autoseg"), name)
    namespace: dict = {}
    exec(f"from autoseg import {name}", namespace)
    assert callable(direct)
    assert direct is imported is namespace[name]
    assert name in autoseg.__all__
    if name in CALLABLE_MODULES:
        assert direct is sys.modules[f"autoseg.{name}"]
        assert inspect.signature(direct) == inspect.signature(_function(name))
    else:
        assert direct is _function(name)


@pytest.mark.parametrize("name", CALLABLE_MODULES)
def test_calling_the_module_runs_its_function(name, monkeypatch):
    module = sys.modules.get(f"autoseg.{name}") or importlib.import_module(f"autoseg.{name}")
    calls = []
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append((a, k)) or "ran")
    assert getattr(autoseg, name)("x", top=3) == "ran"
    assert calls == [(("x",), {"top": 3})]


@pytest.mark.parametrize("name", CALLABLE_MODULES)
def test_the_name_survives_importing_the_submodule_first(name):
    script = f"""
import autoseg.{name}
import autoseg
from autoseg import {name} as imported
assert autoseg.{name} is imported and callable(imported), type(imported)
assert imported.{name}.__name__ == {name!r}
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_keywords_are_the_cli_options_with_the_same_defaults(command):
    parameters = inspect.signature(_function(command)).parameters
    options = _options(command)
    assert options, f"no options found for {command}: the parser introspection broke"
    for option, action in options.items():
        keyword = OPTION_EXCEPTIONS.get((command, option), option)
        if keyword is None:
            continue
        assert keyword in parameters, (
            f"`autoseg {command}` has {option!r} but autoseg.{command}() has no such keyword"
        )
        default = parameters[keyword].default
        if (command, keyword) in DEFAULT_EXCEPTIONS:
            assert default == DEFAULT_EXCEPTIONS[(command, keyword)]
        elif action.required:  # a positional, or a flag such as predict's --out
            assert default is inspect.Parameter.empty, (command, keyword, default)
        else:
            assert default == action.default, (command, keyword, default, action.default)
    # Every exception names a real option, so a stale entry fails here.
    for (cmd, option) in list(OPTION_EXCEPTIONS) + list(DEFAULT_EXCEPTIONS):
        if cmd == command:
            assert option in options or option in parameters, (cmd, option)


def test_the_readme_python_api_calls_the_seven_functions_with_real_keywords():
    import ast
    import re

    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)\n```", section, flags=re.S).group(1)
    called = set()
    for node in ast.walk(ast.parse(code)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "autoseg"):
            continue
        name = node.func.attr
        assert name in autoseg.__all__, name
        parameters = inspect.signature(getattr(autoseg, name)).parameters
        unknown = {k.arg for k in node.keywords} - set(parameters)
        assert not unknown, f"README calls autoseg.{name} with unknown keywords {unknown}"
        inspect.signature(getattr(autoseg, name)).bind(
            *[None] * len(node.args), **{k.arg: None for k in node.keywords}
        )
        called.add(name)
    assert called == set(API)


def test_export_takes_format_like_the_cli_and_formats_as_before():
    with pytest.raises(ConfigError, match="Give the formats once"):
        autoseg.export("best", run="nowhere", format="keras", formats="tflite")
    # `formats=` alone still reaches the run lookup (no such run here).
    with pytest.raises(ConfigError, match="nowhere"):
        autoseg.export("best", run="nowhere", formats="keras")


def _write_board(path: Path) -> None:
    from autoseg.leaderboard import write_leaderboard

    records = [
        {"trial_id": "0000", "status": "COMPLETED", "metrics": {"val_mean_iou": 0.4},
         "params": 1000},
        {"trial_id": "0001", "status": "COMPLETED", "metrics": {"val_mean_iou": 0.7},
         "params": 5000},
        {"trial_id": "0002", "status": "FAILED", "message": "out of memory"},
    ]
    write_leaderboard(path, records)


def test_leaderboard_reads_ranks_and_cuts_like_the_cli(tmp_path):
    _write_board(tmp_path / "leaderboard.csv")
    board = autoseg.leaderboard(tmp_path, top=2)
    assert board.path == tmp_path / "leaderboard.csv"
    assert [r["trial_id"] for r in board.rows] == ["0001", "0000"]
    assert board.best["trial_id"] == "0001" and board.objective == "val_mean_iou"
    assert board.direction == "max" and board.counts == {"COMPLETED": 2, "FAILED": 1}
    assert board.plot is None
    assert len(autoseg.leaderboard(tmp_path).rows) == 3
    table = str(board).splitlines()
    assert len(table) == 3 and table[1].split()[:3] == ["1", "0001", "COMPLETED"]
    assert table[2].split()[:2] == ["2", "0000"]
    with pytest.raises(ConfigError, match="Received: top=0"):
        autoseg.leaderboard(tmp_path, top=0)


def test_leaderboard_refuses_an_empty_csv(tmp_path):
    with open(tmp_path / "leaderboard.csv", "w", newline="") as f:
        csv.writer(f).writerow(["rank", "trial_id", "status", "val_mean_iou"])
    with pytest.raises(ConfigError, match="lists no trials yet"):
        autoseg.leaderboard(tmp_path)


@pytest.mark.slow
def test_prepare_search_leaderboard_export_predict_evaluate_in_python(tiny_dataset, tmp_path):
    """The whole workflow through `autoseg.*` alone: no `main(argv)`."""
    from autoseg.data import pipeline

    quiet = lambda line: None  # noqa: E731
    raw = tmp_path / "raw"
    shutil.copytree(tiny_dataset / "images", raw / "images")
    shutil.copytree(tiny_dataset / "masks", raw / "masks")
    (tmp_path / "labels.txt").write_text("background\ncrop\nweed\n")
    dataset = autoseg.prepare(raw, tmp_path / "data", format="index",
                              labels=tmp_path / "labels.txt", log=quiet)
    assert list(dataset.classes) == ["background", "crop", "weed"]
    assert len(dataset.stems) == 6

    result = autoseg.search(dataset.root, space="ci", out=tmp_path / "run", tuner="random",
                            max_trials=1, max_epochs=1, log=quiet)
    assert result.counts == {"COMPLETED": 1}

    board = autoseg.leaderboard(result.rundir)
    assert board.best["trial_id"] == result.best["trial_id"]
    assert board.counts == {"COMPLETED": 1}

    exported = autoseg.export("best", run=result.rundir, out=tmp_path / "model",
                              format="keras", tta="none", log=quiet)
    assert list(exported.formats) == ["keras"]
    assert exported.trial_id == board.best["trial_id"]

    model = autoseg.load(exported.out)
    image_path = sorted((dataset.root / "images").iterdir())[0]
    expected = model.predict(pipeline.read_image(image_path))
    assert expected.shape == (48, 64) and expected.max() < 3

    report = autoseg.predict(exported.out, dataset.root / "images", out=tmp_path / "pred",
                             overlay=False, log=quiet)
    assert len(report.written) == 6 and not report.failed
    assert not list((tmp_path / "pred").glob("*_overlay.png"))
    mask = np.asarray(Image.open(tmp_path / "pred" / f"{image_path.stem}_mask.png"))
    np.testing.assert_array_equal(mask, expected)

    evaluation = autoseg.evaluate(exported.out, dataset.root, out=tmp_path / "eval", log=quiet)
    assert 0.0 <= evaluation.scores["mean_iou"] <= 1.0
    assert evaluation.split_source == "the search run's validation split"
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["trial_id"] == exported.trial_id
    assert metrics["mean_iou"] == pytest.approx(evaluation.scores["mean_iou"])
