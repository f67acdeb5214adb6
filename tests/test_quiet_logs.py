"""TensorFlow's native log (absl and C++ lines) stays off the terminal unless `--verbose`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoseg import native_log
from autoseg.leaderboard import flatten_message
from autoseg.trial_process import LOG_FILE

REPO = Path(__file__).resolve().parent.parent

#: What TensorFlow logs natively on a machine without a GPU: absl's pre-initialisation
#: warning, `I0000 00:00:1796171252.104485    3921 port.cc:153] ...` lines, and the notices
#: and errors they carry.
TF_LOG_LINE = re.compile(
    r"absl::InitializeLog"
    r"|^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w.]+:\d+\]"
    r"|oneDNN custom operations|cuda drivers|cuInit|remapper failed|cpu_feature_guard"
    r"|^WARNING:(tensorflow|absl):",
    re.MULTILINE,
)

_SEARCH = "import sys\nfrom autoseg.cli import main\nsys.exit(main({argv!r}))\n"


def _search_command(dataset: Path, rundir: Path, epochs: int, *extra: str) -> tuple[list, dict]:
    """`(command, environment)` of a one-trial search through `autoseg.cli.main` in a fresh
    process, with TensorFlow's default log settings."""
    argv = ["search", "--dataset", str(dataset), "--space", "ci", "--tuner", "random",
            "--max-trials", "1", "--max-epochs", str(epochs), "--out", str(rundir), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_")}  # the defaults
    return [sys.executable, "-c", _SEARCH.format(argv=argv)], env


def _search(dataset: Path, rundir: Path, *extra: str) -> subprocess.CompletedProcess:
    """A one-trial, one-epoch search, its output captured."""
    command, env = _search_command(dataset, rundir, 1, *extra)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow  # ~35 s: a real search in a subprocess
def test_a_search_prints_no_tensorflow_log_line(tiny_dataset, tmp_path):
    rundir = tmp_path / "run"
    result = _search(tiny_dataset, rundir)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert TF_LOG_LINE.search(output) is None, output[-3000:]
    assert "Best: trial" in result.stdout
    # The trial's progress reached the user (a line per epoch: the output is not a terminal).
    assert re.search(r"^\[trial 0\]  epoch 1/1  loss \d+\.\d{3}  val mIoU \d\.\d{3} \(best "
                     r"\d\.\d{3}\)  \d+ s/epoch  trial ends in ~0 s$", result.stdout, re.MULTILINE), \
        result.stdout
    # TensorFlow did log (so the check above means something): into the trial's log.
    logs = sorted(rundir.rglob(LOG_FILE))
    assert [p.parent.name for p in logs] == ["trial_0"], logs
    # One trial name everywhere: its start, progress and end lines, its folder (above) and
    # the leaderboard's trial_id all say "0".
    assert re.search(r"^\[trial 0\] started \(1(/1)?\): ", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^\[trial 0\] ended in \d+s: val_mean_iou=", result.stdout, re.MULTILINE)
    assert (rundir / "leaderboard.csv").read_text().splitlines()[1].split(",")[1] == "0"
    assert logs[0].parent.parent == rundir / "trials"
    assert "absl::InitializeLog" in logs[0].read_text()
    # The search's own process logged too; a successful command leaves no log behind.
    assert "TensorFlow's own log" not in result.stderr


@pytest.mark.slow
def test_verbose_shows_tensorflow_and_keras_output(tiny_dataset, tmp_path):
    rundir = tmp_path / "run"
    result = _search(tiny_dataset, rundir, "--verbose")
    assert result.returncode == 0, result.stderr[-3000:]
    assert TF_LOG_LINE.search(result.stderr) is not None, result.stderr[-3000:]
    assert re.search(r"/step - .*val_mean_iou: ", result.stdout), result.stdout[-3000:]  # Keras
    assert not list(rundir.rglob(LOG_FILE))


@pytest.mark.slow
def test_quiet_prints_the_leaderboard_and_nothing_else(tiny_dataset, tmp_path):
    result = _search(tiny_dataset, tmp_path / "run", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best: trial" in result.stdout
    for chatter in ("[plan]", "[search]", "[trial", "epoch 1/1"):
        assert chatter not in result.stdout + result.stderr, result.stdout


def _search_on_a_terminal(dataset: Path, rundir: Path, epochs: int) -> tuple[int, str]:
    """A one-trial search with stdout and stderr on a pseudo-terminal, as a person sees it:
    `(exit code, everything the terminal received)`."""
    import pty
    import select

    command, env = _search_command(dataset, rundir, epochs)
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave)
    os.close(slave)
    received = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 900)
            if not ready:
                proc.kill()
                raise AssertionError(f"no output for 900 s: {received[-2000:]!r}")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not data:
                break
            received += data
    finally:
        os.close(master)
    return proc.wait(timeout=60), received.decode(errors="replace")


@pytest.mark.slow
def test_on_a_terminal_one_progress_line_updates_with_an_eta_and_no_tensorflow_line(
        tiny_dataset, tmp_path):
    code, screen = _search_on_a_terminal(tiny_dataset, tmp_path / "run", epochs=2)
    assert code == 0, screen[-3000:]
    assert "Best: trial" in screen
    assert TF_LOG_LINE.search(screen.replace("\r\n", "\n")) is None, screen[-3000:]
    # The progress line is rewritten in place (carriage return, erase line), never a new
    # line per update; after the first epoch it carries the trial's ETA...
    updates = re.findall(r"\r\x1b\[K(\[trial 0\]  epoch [^\r\n]*)", screen)
    assert updates, screen[-3000:]
    assert any(re.fullmatch(r"\[trial 0\]  epoch [12]/2 .*trial ends in ~\d+ (s|min).*", u)
               for u in updates), updates
    assert not re.search(r"^\[trial 0\]  epoch", screen, re.MULTILINE)  # no plain lines
    # ...and is erased before the trial's end line.
    assert re.search(r"\r\x1b\[K\[trial 0\] ended in \d+s", screen), screen[-3000:]


def test_verbose_and_quiet_exclude_each_other(tmp_path):
    result = _search(tmp_path, tmp_path / "run", "--quiet", "--verbose")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


_COMMAND = textwrap.dedent(
    """
    import os, sys
    import autoseg.commands.info as info

    def run(args):
        os.write(2, b"E0000 00:00:0.0 1 kernel.cc:7] native noise\\n")
        print("python says", file=sys.stderr)
        if sys.argv[1] == "fail":
            raise RuntimeError("boom")
        return 0

    info.run = run
    from autoseg.cli import main
    sys.exit(main(["info", "anything"]))
    """
)


@pytest.mark.parametrize("outcome", ["succeed", "fail"])
def test_the_cli_keeps_tensorflows_log_only_when_a_command_fails(tmp_path, outcome):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", _COMMAND, outcome], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.splitlines()
    logs = sorted(tmp_path.glob("autoseg-*.log"))
    if outcome == "succeed":
        assert result.returncode == 0 and lines == ["python says"]
        assert logs == []
    else:
        assert result.returncode == 1
        assert lines == ["python says", "Error: RuntimeError: boom",
                         "(run with --debug for the traceback)",
                         f"TensorFlow's own log of this command: {logs[0]}"]
        assert logs[0].read_text() == "E0000 00:00:0.0 1 kernel.cc:7] native noise\n"


# --- the file-descriptor switch ---------------------------------------------------------------

_STDERR_TO = textwrap.dedent(
    """
    import os, subprocess, sys
    from autoseg import native_log
    os.write(2, b"native before\\n")
    with native_log.stderr_to(sys.argv[1]):
        os.write(2, b"native inside\\n")
        print("python inside", file=sys.stderr)
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'child inside\\\\n')"])
    os.write(2, b"native after\\n")
    print("python after", file=sys.stderr)
    """
)


def test_stderr_to_moves_native_writes_and_keeps_pythons(tmp_path):
    log = tmp_path / "native.log"
    log.write_text("earlier\n")
    result = subprocess.run([sys.executable, "-c", _STDERR_TO, str(log)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "native before", "python inside", "native after", "python after"
    ]
    assert log.read_text().splitlines() == ["earlier", "native inside", "child inside"]


def test_stderr_to_leaves_a_captured_sys_stderr_alone(tmp_path, capsys):
    log = tmp_path / "native.log"
    before = sys.stderr
    with native_log.stderr_to(log):
        assert sys.stderr is before  # pytest's capture does not write to descriptor 2
        os.write(2, b"native\n")
        print("python", file=sys.stderr)
    assert sys.stderr is before
    assert log.read_text() == "native\n"
    assert capsys.readouterr().err == "python\n"


# --- a log's last lines in an error -------------------------------------------------------


def test_tail_keeps_the_last_lines_from_an_offset(tmp_path):
    log = tmp_path / "trial.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)) + "\n\n")
    assert native_log.tail(log, lines=3) == "line 27\nline 28\nline 29"
    assert native_log.tail(log).splitlines()[0] == "line 10"  # 20 by default
    start = len("".join(f"line {i}\n" for i in range(28)))
    assert native_log.tail(log, start=start) == "line 28\nline 29"
    assert native_log.tail(tmp_path / "missing.log") == ""


def test_tail_of_a_long_log_starts_on_a_whole_line(tmp_path):
    log = tmp_path / "trial.log"
    log.write_text("x" * 50_000 + "\n" + "".join(f"line {i}\n" for i in range(5)))
    assert native_log.tail(log) == "\n".join(f"line {i}" for i in range(5))


def test_quote_tail_ends_with_the_reason(tmp_path):
    log = tmp_path / "trial.log"
    log.write_text("F0000 00:00:0.0 1 kernel.cc:42] Check failed: x\n")
    message = native_log.quote_tail(log, "the trial's process exited with status 3")
    assert message == (
        f"The last lines of {log}:\n"
        "    F0000 00:00:0.0 1 kernel.cc:42] Check failed: x\n"
        "the trial's process exited with status 3"
    )
    assert native_log.quote_tail(tmp_path / "empty.log", "reason") == "reason"
    # The leaderboard's one-line summary of a long message is its reason.
    log.write_text("".join(f"a native log line number {i}\n" for i in range(20)))
    long = native_log.quote_tail(log, "killed by SIGKILL (out of memory?)")
    assert flatten_message(long).startswith("killed by SIGKILL (out of memory?)")
