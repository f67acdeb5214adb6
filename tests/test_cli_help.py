"""`autoseg --help` and every subcommand's `--help` stay light: no TensorFlow, no Keras."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoseg.cli import COMMANDS

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
