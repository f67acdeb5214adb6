"""`autoseg --help` and every subcommand's `--help` stay light (no TensorFlow, no Keras);
`--debug` works before and after the subcommand."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import pytest

from autoseg.cli import COMMANDS, main
from autoseg.errors import DatasetError

PROBE = """
import sys
from autoseg.cli import main
code = main({argv!r})
heavy = sorted(m for m in ("tensorflow", "keras", "keras_tuner", "albumentations") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


@pytest.mark.parametrize("command", [None, *COMMANDS], ids=["autoseg", *COMMANDS])
def test_help_imports_neither_tensorflow_nor_keras(command):
    argv = ["--help"] if command is None else [command, "--help"]
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage: autoseg" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "HEAVY=", result.stdout[-500:]
    assert "--debug" in result.stdout  # documented on every command


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "search", "--dataset", "{missing}"],
        ["search", "--dataset", "{missing}", "--debug"],
        ["search", "--debug", "--dataset", "{missing}"],
        ["info", "{missing}", "--debug"],
    ],
    ids=["before", "after", "between", "info-after"],
)
def test_debug_anywhere_shows_the_traceback(argv, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the native log a raise keeps
    missing = str(tmp_path / "no_such_dataset")
    with pytest.raises(DatasetError, match="no_such_dataset"):
        main([a.format(missing=missing) for a in argv])


@pytest.mark.parametrize("command", ["search", "info"])
def test_without_debug_the_error_is_one_line(command, tmp_path, capsys):
    missing = str(tmp_path / "no_such_dataset")
    argv = ["search", "--dataset", missing] if command == "search" else ["info", missing]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "no_such_dataset" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
