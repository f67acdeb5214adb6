"""TensorFlow's native log (C++ and absl lines on stderr): into a file, off the terminal.

TensorFlow 2.21 logs through absl from its shared libraries' static initialisers, before it
reads `TF_CPP_MIN_LOG_LEVEL`: `import tensorflow` on a machine without CUDA prints
`WARNING: All log messages before absl::InitializeLog() is called are written to STDERR`,
a oneDNN notice and "Could not find cuda drivers" (twice: two libraries log) at any level
and with any of TensorFlow's switches; the first op adds `failed call to cuInit`, and some
pix2pix graphs grappler's `remapper failed`. They are harmless but read like a crash, and
only the file descriptor catches them all: `stderr_to` points descriptor 2 at a log file
while Python's `sys.stderr` keeps writing where it did, so autoseg's own messages, Python
warnings and tracebacks still reach the user.

The CLI runs every command inside `stderr_to` (unless `search --verbose`); each trial's
process (`autoseg.trial_process`) writes its whole output to its trial folder's `trial.log`,
and `tail` puts that log's last lines into the error when the process dies.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Iterator

#: Lines of a log that an error message quotes.
TAIL_LINES = 20
#: Bytes read from the end of a log for its tail: a trial's log can be long.
_TAIL_BYTES = 16384


@contextlib.contextmanager
def stderr_to(path: str | os.PathLike) -> Iterator[None]:
    """Sends what native code writes to stderr (descriptor 2) to `path`, for the block.

    Python's `sys.stderr`, when it writes to descriptor 2 (a terminal, a pipe), is replaced
    for the block by a stream on a copy of the old descriptor, so Python's own output is
    unchanged; a `sys.stderr` that writes elsewhere (pytest's capture) is left alone.
    Child processes started in the block inherit the log as their stderr.

    Args:
        path: The log file; appended to, created if missing.

    Example:
    ```python
    with stderr_to("tf.log"):
        import tensorflow as tf  # its absl lines go to tf.log
        print("shown", file=sys.stderr)
    ```
    """
    _flush(sys.stderr)
    terminal = os.dup(2)
    log = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    python_stderr = sys.stderr
    replacement = None
    try:
        os.dup2(log, 2)
        if _writes_to_descriptor(python_stderr, 2):
            replacement = io.TextIOWrapper(
                io.FileIO(os.dup(terminal), "w"),
                encoding=getattr(python_stderr, "encoding", None) or "utf-8",
                errors="backslashreplace",
                line_buffering=True,
            )
            sys.stderr = replacement
        yield
    finally:
        _flush(sys.stderr)
        os.dup2(terminal, 2)
        os.close(terminal)
        os.close(log)
        if replacement is not None:
            if sys.stderr is replacement:
                sys.stderr = python_stderr
            replacement.close()


def tail(path: str | os.PathLike, lines: int = TAIL_LINES, start: int = 0) -> str:
    """Returns the last `lines` non-blank lines of a log ("" if it is missing or empty).

    Args:
        path: The log file.
        lines: How many lines at most. Defaults to `TAIL_LINES`.
        start: Ignore what comes before this byte offset (an earlier run's lines).
            Defaults to 0.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            offset = max(start, f.tell() - _TAIL_BYTES)
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    found = text.splitlines()
    if offset > start:  # the read began inside a line
        found = found[1:]
    kept = [line.rstrip() for line in found if line.strip()]
    return "\n".join(kept[-lines:])


def quote_tail(
    path: str | os.PathLike, reason: str, lines: int = TAIL_LINES, start: int = 0
) -> str:
    """`reason` after the last lines of the log at `path` (from byte `start`), as an error.

    The reason comes last, as in a traceback, so a one-line summary of the message (the
    leaderboard's) is the reason rather than a log line.
    """
    text = tail(path, lines, start)
    if not text:
        return reason
    indented = "\n".join(f"    {line}" for line in text.splitlines())
    return f"The last lines of {Path(path)}:\n{indented}\n{reason}"


def _writes_to_descriptor(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False


def _flush(stream) -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        stream.flush()
