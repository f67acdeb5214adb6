"""Each trial's build and fit runs in its own process (autoseg.trial_process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autoseg import devices

REPO = Path(__file__).resolve().parent.parent


def trial_processes(parent: int, spares: bool = False) -> list[int]:
    """Pids of `python -m autoseg.trial_process` children of `parent`; with `spares`, those
    started ahead for the next trial too (`autoseg.warm_process`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"autoseg.trial_process" in cmdline and (
                spares or b"--spare" not in cmdline):
            found.append(int(entry.name))
    return found


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("isolated", [True, False])
def test_the_trial_trains_in_another_process(tiny_dataset, tmp_path, monkeypatch, isolated):
    """A fit broken in this process breaks the trial only when the trial runs here."""
    from autoseg import search
    from autoseg.hypermodel import BaseSegmentationHyperModel

    def broken(self, *args, **kwargs):
        raise RuntimeError("fit ran in the search's own process")

    monkeypatch.setattr(BaseSegmentationHyperModel, "fit", broken)
    monkeypatch.setenv("AUTOSEG_TRIAL_PROCESS", "1" if isolated else "0")
    try:
        result = search.search(tiny_dataset, space="ci", out=tmp_path / "run", tuner="random",
                               max_trials=1, max_epochs=1, log=lambda line: None)
        rows = result.rows
    except Exception as exc:  # noqa: BLE001 - "no trial completed" when it ran here
        rows, error = [], str(exc)
    if isolated:
        assert [r["status"] for r in rows] == ["COMPLETED"]
        assert float(rows[0]["val_mean_iou"]) >= 0 and int(rows[0]["epochs"]) == 1
    else:
        assert not rows and "fit ran in the search's own process" in error


# Loaded by every Python process started with it on PYTHONPATH; acts in trial processes only.
_DYING_TRIAL = """
import os
with open("/proc/self/cmdline", "rb") as f:
    if b"autoseg.trial_process" in f.read():
        os.write(2, b"F0000 00:00:0.0 1 kernel.cc:42] Check failed: a native crash\\n")
        os._exit(3)
"""


def test_a_trial_process_that_dies_fails_with_the_last_lines_of_its_log(tiny_dataset, tmp_path,
                                                                       monkeypatch, capfd):
    import json

    from autoseg import search
    from autoseg.errors import RunError

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_DYING_TRIAL)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(hook), str(REPO), os.environ.get("PYTHONPATH")])))
    rundir = tmp_path / "run"
    with pytest.raises(RunError, match="no trial completed"):
        search.search(str(tiny_dataset), space="ci", out=str(rundir), tuner="random",
                      max_trials=1, max_epochs=1, log=lambda line: None)
    log = rundir / "trials" / "trial_0" / "trial.log"
    assert "kernel.cc:42] Check failed: a native crash" in log.read_text()
    # The child's own line went to its log; the search quotes it indented, in the error.
    assert not any(line.startswith("F0000") for line in capfd.readouterr().err.splitlines())
    message = json.loads((log.parent / "trial.json").read_text())["message"]
    assert (
        f"The last lines of {log}:\n"
        "    F0000 00:00:0.0 1 kernel.cc:42] Check failed: a native crash\n"
        "the trial's process exited with status 3 without a result"
    ) in message


@pytest.mark.slow
def test_a_killed_trial_process_fails_its_trial_and_the_search_goes_on(tiny_dataset, tmp_path):
    from autoseg import search

    killed = []

    def kill_first_trial():
        pid = wait_for(lambda: trial_processes(os.getpid()), 120, "the first trial's process")[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    watcher = threading.Thread(target=kill_first_trial, daemon=True)
    watcher.start()
    result = search.search(tiny_dataset, space="ci", out=tmp_path / "run", tuner="random",
                           max_trials=2, max_epochs=1, log=lambda line: None)
    watcher.join(timeout=5)
    assert killed
    statuses = {r["trial_id"]: r for r in result.rows}
    first, second = (statuses[k] for k in sorted(statuses))
    assert first["status"] == "FAILED"
    assert "killed by SIGKILL (out of memory?)" in first["message"]
    assert second["status"] == "COMPLETED"


@pytest.mark.slow
def test_the_trial_process_dies_with_the_search(tiny_dataset, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    search = subprocess.Popen(
        [sys.executable, "-m", "autoseg.cli", "search", "--dataset", str(tiny_dataset),
         "--space", "ci", "--tuner", "random", "--max-trials", "3", "--out", str(tmp_path / "run")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # The first trial's process and, on two CPUs or more, the spare beside it.
        wanted = 2 if devices.usable_cpus() >= 2 else 1

        def started():
            found = trial_processes(search.pid, spares=True)
            return found if len(found) >= wanted else None

        children = wait_for(started, 180, f"{wanted} trial processes")
        os.kill(search.pid, signal.SIGKILL)  # the search only, not its process group
        search.wait(timeout=30)
        for child in children:
            wait_for(lambda: not alive(child), 20, f"the orphaned trial process {child} to exit")
    finally:
        try:
            os.killpg(search.pid, signal.SIGKILL)  # our own group, should anything be left
        except ProcessLookupError:
            pass
