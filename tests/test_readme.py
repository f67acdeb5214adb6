"""The README's Quickstart and CI stay in step."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_quickstart_has_exactly_two_commands():
    commands = quickstart_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = quickstart_commands()[1]
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_demo_command_uses_files_that_exist():
    demo = quickstart_commands()[0]
    for path in re.findall(r"--space (\S+)", demo) + re.findall(r"--dataset (\S+)", demo):
        assert (REPO / path).exists(), path
    for step in ("autoseg search", "autoseg export best", "autoseg predict"):
        assert step in demo
    overlay = re.search(r"!\[[^\]]*\]\(([^)]+)\)", (REPO / "README.md").read_text())
    assert overlay and (REPO / overlay.group(1)).is_file()
