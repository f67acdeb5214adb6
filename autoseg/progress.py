"""A trial's progress as it trains: epoch k/N, loss, val mIoU, seconds an epoch, ETAs.

A trial trains in its own process (`autoseg.trial_process`), whose output goes to its log
file. `EpochProgress`, a Keras callback in that process, appends one JSON line per epoch
(and, at most every `BATCH_EVERY_SECONDS`, one per batch) to `progress.jsonl` in the trial's
folder. In the search's process, `Relay` reads the new lines while it waits for the trial
(or, for a trial trained in the search's own process, as `LiveRelay` calls it from the
fit's callbacks) and shows them: on a terminal one line updated in place (with the batch within the epoch),
otherwise one plain line per epoch through the search's `log`:

```
[trial 0003]  epoch 7/42  loss 0.213  val mIoU 0.612 (best 0.630)  81 s/epoch  trial ends in ~47 min  search in ~52 min
```

The trial's ETA is its epochs left (its target, which `TimeBudget` may lower) at the median
steady epoch time, at most the time to the search's deadline; the search's is the deadline,
or the trials left at the mean trial time when the tuner knows how many it will run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import keras

from autoseg import speed

#: The file in a trial's folder.
PROGRESS_FILE = "progress.jsonl"
#: Batch lines are written at most this often.
BATCH_EVERY_SECONDS = 2.0
#: The objective shown as "val mIoU".
VAL_KEY = "val_mean_iou"


class EpochProgress(keras.callbacks.Callback):
    """Appends the trial's progress to `path` (JSON lines; see the module docstring)."""

    def __init__(self, path: str | os.PathLike, batch_every: float = BATCH_EVERY_SECONDS,
                 clock: Callable[[], float] = time.time):
        super().__init__()
        self.path = Path(path)
        self.batch_every = batch_every
        self.clock = clock
        self._epoch_start = None
        self._last_batch = 0.0
        self._epoch = 0
        #: The trial's epoch target as training sets it (`TimeBudget.target`), or None: the
        #: `epochs` Keras was given.
        self.target: Callable[[], int | None] | None = None

    def _write(self, event: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")

    def _target(self) -> int | None:
        epochs = self.target() if self.target else None
        epochs = epochs or (self.params or {}).get("epochs")
        return int(epochs) if epochs else None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        if now - self._last_batch < self.batch_every:
            return
        self._last_batch = now
        self._write({"kind": "batch", "epoch": self._epoch, "epochs": self._target(),
                     "step": batch + 1, "steps": (self.params or {}).get("steps"), "t": now,
                     "loss": _number((logs or {}).get("loss"))})

    def on_epoch_end(self, epoch, logs=None):
        now = self.clock()
        logs = logs or {}
        seconds = now - self._epoch_start if self._epoch_start is not None else None
        self._write({"kind": "epoch", "epoch": epoch, "epochs": self._target(), "t": now,
                     "seconds": seconds, "loss": _number(logs.get("loss")),
                     "val": _number(logs.get(VAL_KEY)),
                     "stopping": bool(getattr(self.model, "stop_training", False))})


def trial_number(trial_id, default: Any = None) -> Any:
    """The 1-based number a trial is shown with (KerasTuner's ids count from 0), or `default`
    for an id that is not a count (a worker's OracleClient cannot count trials)."""
    return int(trial_id) + 1 if str(trial_id).isdigit() else default


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Relay:
    """Shows a trial's `progress.jsonl` as it grows (see the module docstring).

    Args:
        path: The trial's progress file.
        label: What the line starts with, e.g. "[trial 0003]" (the trial's id).
        log: Where plain lines go (one per epoch) when `tty` is False.
        deadline: The search's deadline (time.time() seconds), or None.
        search_left: Seconds the search has left besides this trial when there is no
            deadline (the trials after this one at the mean trial time), or None.
        tty: Update one line in place on `stream` instead of logging a line per epoch.
    """

    def __init__(self, path: str | os.PathLike, label: str, log: Callable[[str], None],
                 deadline: float | None = None, search_left: float | None = None,
                 tty: bool = False, stream=None, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.label = label
        self.log = log
        self.deadline = deadline
        self.search_left = search_left
        self.tty = tty
        self.stream = stream or sys.stdout
        self.clock = clock
        self._offset = 0
        self._partial = ""
        self._epochs: list[dict] = []
        self._batch: dict | None = None
        self._shown = False

    def poll(self) -> None:
        """Reads what the trial wrote since the last call and shows it."""
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self._offset)
                text = f.read()
                self._offset = f.tell()
        except OSError:
            return
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()  # a line the trial is still writing
        new_epoch = False
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("kind") == "epoch":
                self._epochs.append(event)
                self._batch = None
                new_epoch = True
            elif event.get("kind") == "batch":
                self._batch = event
        if self.tty and (new_epoch or self._batch is not None):
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
            self._shown = True
        elif new_epoch:
            self.log(self.line())

    def close(self) -> None:
        """Reads the last lines, and ends the updated line on a terminal."""
        self.poll()
        if self.tty and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()

    # -- the line ------------------------------------------------------------------------
    def steady_seconds(self) -> float | None:
        """The median epoch time, the first (traced) epoch left out once there are others."""
        seconds = [e["seconds"] for e in self._epochs if e.get("seconds")]
        return speed.steady_epoch_seconds(seconds)

    def trial_left(self, now: float) -> float | None:
        if not self._epochs:
            return None
        last = self._epochs[-1]
        per_epoch = self.steady_seconds()
        if per_epoch is None or not last.get("epochs"):
            return None
        left = 0.0 if last.get("stopping") else (last["epochs"] - last["epoch"] - 1) * per_epoch
        if self.deadline is not None:
            left = min(left, max(0.0, self.deadline - now))
        return left

    def search_eta(self, now: float, trial_left: float | None) -> float | None:
        if self.deadline is not None:
            return max(0.0, self.deadline - now)
        if self.search_left is None or trial_left is None:
            return None
        return trial_left + self.search_left

    def line(self) -> str:
        now = self.clock()
        parts = [self.label]
        last = self._epochs[-1] if self._epochs else None
        if self._batch is not None:
            b = self._batch
            epochs = f"/{b['epochs']}" if b.get("epochs") else ""
            steps = f" step {b['step']}/{b['steps']}" if b.get("steps") else ""
            parts.append(f"epoch {b['epoch'] + 1}{epochs}{steps}")
        elif last is not None:
            epochs = f"/{last['epochs']}" if last.get("epochs") else ""
            parts.append(f"epoch {last['epoch'] + 1}{epochs}")
        if last is not None:
            if last.get("loss") is not None:
                parts.append(f"loss {last['loss']:.3f}")
            vals = [e["val"] for e in self._epochs if e.get("val") is not None]
            if vals:
                parts.append(f"val mIoU {vals[-1]:.3f} (best {max(vals):.3f})")
            steady = self.steady_seconds()
            if steady:
                parts.append(f"{steady:.0f} s/epoch")
        left = self.trial_left(now)
        if left is not None:
            parts.append(f"trial ends in ~{_duration(left)}")
        search = self.search_eta(now, left)
        if search is not None:
            parts.append(f"search in ~{_duration(search)}")
        return "  ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def attach(tuner, trial, trial_dir: Path, callbacks: list) -> Relay | None:
    """Adds the callback that writes the trial's progress file to `callbacks`; returns the
    relay that shows it through the search's log (an autoseg tuner's; else None)."""
    path = Path(trial_dir) / PROGRESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a resumed search runs the trial again
    callbacks.append(EpochProgress(path))
    log = getattr(tuner, "log", None)
    if log is None:
        return None
    left = getattr(tuner, "seconds_left_after", None)
    return Relay(path, f"[trial {trial.trial_id}]", log, deadline=getattr(tuner, "deadline", None),
                 search_left=left(trial) if left else None,
                 tty=log is print and sys.stdout.isatty())


class LiveRelay(keras.callbacks.Callback):
    """Shows `relay` while the trial trains in the search's own process: trials that do not
    get a process of their own (a tf.distribute strategy, several executions a trial,
    `AUTOSEG_TRIAL_PROCESS=0`). Put it after the `EpochProgress` that writes the file.

    Args:
        relay: What `attach` returned.
        every: Seconds between reads of the file within an epoch (its batch lines).
    """

    def __init__(self, relay: Relay, every: float = BATCH_EVERY_SECONDS,
                 clock: Callable[[], float] = time.time):
        super().__init__()
        self.relay = relay
        self.every = every
        self.clock = clock
        self._last = 0.0

    def __deepcopy__(self, memo):
        # KerasTuner deep-copies the callbacks of each execution; the relay's stream and log
        # cannot be, and one relay serves them all.
        return self

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        if now - self._last >= self.every:
            self._last = now
            self.relay.poll()

    def on_epoch_end(self, epoch, logs=None):
        self.relay.poll()

    def on_train_end(self, logs=None):
        self.relay.close()


def wait(process, relay: Relay | None, every: float = 1.0) -> int:
    """Waits for `process` (a `subprocess.Popen`), showing `relay` every `every` seconds;
    returns its exit status."""
    while True:
        try:
            code = process.wait(timeout=every)
        except Exception as exc:  # noqa: BLE001 - subprocess.TimeoutExpired
            if type(exc).__name__ != "TimeoutExpired":
                raise
            if relay is not None:
                relay.poll()
            continue
        if relay is not None:
            relay.close()
        return code
