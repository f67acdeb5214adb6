"""The next trial's process starts, and imports, while this one starts (autoseg.warm_process)."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from autoseg import warm_process
from test_trial_process import trial_processes

REPO = Path(__file__).resolve().parent.parent

#: Loaded by every Python process started with it on PYTHONPATH: a trial's process (a spare
#: or not) says which it is at its start, before its imports.
_ANNOUNCE = """
import os, sys
with open("/proc/self/cmdline", "rb") as f:
    cmdline = f.read()
if b"autoseg.trial_process" in cmdline:
    kind = "spare" if b"--spare" in cmdline else "fresh"
    print(f"ANNOUNCE {kind} {os.getpid()}", flush=True)
"""


def _tuner(max_trials=None, trials=0, spent=False):
    oracle = SimpleNamespace(max_trials=max_trials, trials={str(i): None for i in range(trials)})
    return SimpleNamespace(oracle=oracle, budget_spent=lambda: spent)


def test_a_spare_is_worth_starting_with_two_cpus_a_trial_to_follow_and_not_switched_off(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert warm_process.worth_starting(_tuner(max_trials=3, trials=1))
    assert warm_process.worth_starting(_tuner())  # Hyperband's brackets decide: unknown
    assert not warm_process.worth_starting(_tuner(max_trials=3, trials=3))  # the last one
    assert not warm_process.worth_starting(_tuner(max_trials=3, trials=1, spent=True))
    # A worker's oracle client has neither max_trials nor trials: trials follow.
    assert warm_process.worth_starting(SimpleNamespace(oracle=SimpleNamespace()))
    monkeypatch.setenv("AUTOSEG_SPARE_PROCESS", "0")
    assert not warm_process.worth_starting(_tuner(max_trials=3, trials=1))
    monkeypatch.delenv("AUTOSEG_SPARE_PROCESS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not warm_process.worth_starting(_tuner(max_trials=3, trials=1))


def test_a_spare_started_in_another_environment_is_not_used_and_ends(monkeypatch):
    warm_process.close()
    warm_process.start()
    spare = warm_process._spare
    # Its output goes to a file whose name is gone already: nothing is left however it ends.
    assert os.readlink(f"/proc/{spare.process.pid}/fd/1").endswith("(deleted)")
    monkeypatch.setenv("AUTOSEG_TEST_CHANGED", "1")  # what a fresh process would now inherit
    assert warm_process.take() is None
    assert spare.process.poll() is not None
    monkeypatch.delenv("AUTOSEG_TEST_CHANGED")
    warm_process.start()
    spare = warm_process._spare
    assert spare.usable()
    warm_process.close()  # the end of a search
    assert spare.process.poll() is not None
    assert warm_process.take() is None


@pytest.mark.slow  # ~40 s: three trials
def test_the_next_trial_runs_in_the_spare_started_beside_the_trial_before(
        tiny_dataset, tmp_path, monkeypatch):
    """Three trials: the first in a fresh process, the next two each in the spare started
    while the trial before them ran, whose output before its job heads the trial's log."""
    from autoseg import search

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_ANNOUNCE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(hook), str(REPO), os.environ.get("PYTHONPATH")])))
    seen, spares = set(), set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            every = trial_processes(os.getpid(), spares=True)
            seen.update(every)
            spares.update(set(every) - set(trial_processes(os.getpid())))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = search.search(tiny_dataset, space="ci", out=tmp_path / "run", tuner="random",
                               max_trials=3, max_epochs=1, log=lambda line: None)
    finally:
        done.set()
        watcher.join(timeout=5)
    assert [r["status"] for r in result.rows] == ["COMPLETED"] * 3
    announced = []
    for trial in sorted((tmp_path / "run" / "trials").glob("trial_*")):
        log = (trial / "trial.log").read_text()
        found = re.findall(r"^ANNOUNCE (\w+) (\d+)$", log, re.MULTILINE)
        assert len(found) == 1, log[-2000:]
        # The process's first line comes first, before anything of the trial's own.
        assert log.splitlines()[1] == f"ANNOUNCE {found[0][0]} {found[0][1]}"
        announced.append((found[0][0], int(found[0][1])))
    assert [kind for kind, _ in announced] == ["fresh", "spare", "spare"]
    assert {pid for _, pid in announced[1:]} <= spares  # seen as spares
    assert len({pid for _, pid in announced}) == 3  # a process of its own each
    # The last trial started no spare (no trial followed), and none is left.
    assert set(seen) == {pid for _, pid in announced}
    assert warm_process._spare is None and not trial_processes(os.getpid(), spares=True)


@pytest.mark.slow
@pytest.mark.parametrize("cpus, verbose", [({0}, False), ({0, 1}, True)],
                         ids=["one cpu", "verbose"])
def test_a_search_on_one_cpu_or_verbose_starts_no_spare(tiny_dataset, tmp_path, monkeypatch,
                                                        cpus, verbose):
    from autoseg import search

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus)
    started = []
    monkeypatch.setattr(warm_process, "start", lambda: started.append(1))
    result = search.search(tiny_dataset, space="ci", out=tmp_path / "run", tuner="random",
                           max_trials=2, max_epochs=1, verbose=verbose, log=lambda line: None)
    assert [r["status"] for r in result.rows] == ["COMPLETED"] * 2
    assert not started
