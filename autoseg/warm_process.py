"""The next trial's process, started while this one starts: its imports are done when it begins.

A trial's fresh process (`autoseg.trial_process`) spends ~4.5 s importing TensorFlow, Keras and
KerasTuner before it builds anything: most of a trial's start-up on a 2-core CPU, and the work
of one core. So when a trial's process starts, the search starts one more beside it, the
*spare*: it imports the same modules on the other core while the trial's own process imports,
then waits on its stdin, idle. The next trial hands it its job instead of starting a fresh
process, and a new spare starts beside it. Every trial still runs in a process no trial ran in
before (what keeps a long search's memory, see `autoseg.trial_process`); only its imports
happened earlier.

A spare holds ~0.3 GB of private memory (and ~0.4 GB of shared libraries it shares with the
trial's process) while it waits: it comes out of the margin the automatic memory budget
leaves (`budget.memory_budget_bytes`), and `AUTOSEG_SPARE_PROCESS=0` starts none.

No spare is started when it cannot pay: on one usable CPU (its imports would take the
running trial's CPU instead of an idle core's), for verbose trials (their output goes to the
search's terminal, not to a log), or when no trial is likely to follow (the oracle has all
its trials, the time budget is spent). A spare is not used, and a fresh process is started,
when it has died or when the environment, the working directory or the interpreter are no
longer the ones it started with. The search closes its spare when it ends (`close`), and a
spare dies with the search's process (PR_SET_PDEATHSIG) like a trial's.

Its output until it takes a job (TensorFlow's native lines at import) waits in a scratch file
without a name (unlinked as soon as the spare has it open), copied into the trial's log when it
does, where a fresh process would have written it.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading

from autoseg import devices
from autoseg.env_flags import env_flag

#: The trial process's first argument when it starts as a spare.
FLAG = "--spare"
#: `0` starts no spare: ~0.3 GB of private memory less while a trial trains.
ENV_SWITCH = "AUTOSEG_SPARE_PROCESS"

_spare: Spare | None = None
_lock = threading.Lock()


class Spare:
    """A trial's process started ahead, importing, then waiting for its job on stdin."""

    def __init__(self) -> None:
        self.key = _key()
        # The spare's output until its job: a file open for reading and writing whose name is
        # gone once the spare has it, so that nothing is left behind however the spare ends.
        fd, path = tempfile.mkstemp(prefix="autoseg-spare-", suffix=".log")
        try:
            # Unbuffered, as a fresh trial's process (`trial_process._start`).
            self.process = subprocess.Popen(
                [sys.executable, "-m", "autoseg.trial_process", FLAG, str(os.getpid())],
                stdin=subprocess.PIPE, stdout=fd, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            os.close(fd)
            os.unlink(path)

    def usable(self) -> bool:
        """Alive, and started where a fresh process would start now."""
        return self.process.poll() is None and self.key == _key()

    def hand(self, spec_path: str, result_path: str, log_path: str) -> subprocess.Popen:
        """Gives this spare its trial; returns its process, which runs the trial and exits."""
        self.process.stdin.write((json.dumps([spec_path, result_path, log_path]) + "\n").encode())
        self.process.stdin.close()  # the spare copies its output into the log
        return self.process

    def close(self) -> None:
        """Ends a spare that took no job (it holds nothing but its imports)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdin.close()


def _key() -> tuple:
    """What a trial's process inherits from the search's process and reads at its start."""
    return sys.executable, os.getcwd(), tuple(sorted(os.environ.items()))


def take() -> Spare | None:
    """The waiting spare if it is usable (it is then the caller's), else None."""
    global _spare
    with _lock:  # searches in two threads of one process share the spare
        spare, _spare = _spare, None
    if spare is not None and not spare.usable():
        spare.close()
        spare = None
    return spare


def start() -> None:
    """Starts a spare for the next trial, unless one waits already."""
    global _spare
    with _lock:
        if _spare is None:
            _spare = Spare()


def close() -> None:
    """Ends the waiting spare, if any (the end of a search)."""
    global _spare
    with _lock:
        spare, _spare = _spare, None
    if spare is not None:
        spare.close()


atexit.register(close)


def worth_starting(tuner) -> bool:
    """Whether a spare can save the next trial's imports: not switched off (`ENV_SWITCH`),
    two usable CPUs or more, and a trial likely to follow the one starting (the oracle short
    of its trials, budget left)."""
    if not env_flag(ENV_SWITCH, default=True) or devices.usable_cpus() < 2:
        return False
    if getattr(tuner, "budget_spent", lambda: False)():
        return False
    oracle = tuner.oracle
    max_trials, trials = getattr(oracle, "max_trials", None), getattr(oracle, "trials", None)
    return not (max_trials and trials is not None and len(trials) >= max_trials)


def job() -> tuple[str, str] | None:
    """The spare's side, once its imports are done: waits for its job on stdin and sends its
    output on to the job's log. Returns the trial's spec and result paths, or None at the
    end of input (the search closed it)."""
    line = sys.stdin.readline()
    if not line:
        return None
    spec_path, result_path, log_path = json.loads(line)
    _redirect(log_path)
    return spec_path, result_path


def _redirect(log_path: str) -> None:
    """This process's stdout and stderr (one nameless scratch file, see `Spare`) to the trial's
    log, after what it wrote there so far."""
    sys.stdout.flush()
    sys.stderr.flush()
    head = os.pread(1, os.fstat(1).st_size, 0)
    with open(log_path, "ab") as log:
        log.write(head)
        log.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
