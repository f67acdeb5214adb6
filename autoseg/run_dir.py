"""The run folder: the one place that knows where a search keeps what.

```
RUNDIR/run.json          dataset, classes, palette, split, seed, tuner, objective, options
RUNDIR/plan.json         the plan (`autoseg.plan`): recipe, kept and dropped configurations
RUNDIR/space.yaml        the resolved search space
RUNDIR/leaderboard.csv   one row per trial, rewritten atomically after every trial
RUNDIR/trials/           KerasTuner's project (its oracle and tuner state), and per trial:
RUNDIR/trials/trial_<id>/trial.json                KerasTuner's trial: values, metrics, status
RUNDIR/trials/trial_<id>/checkpoint.weights.h5     the weights of the trial's best epoch
RUNDIR/trials/trial_<id>/autoseg.json              autoseg's record: epochs, seconds, memory
RUNDIR/tensorboard/      TensorBoard logs, one folder per trial
RUNDIR/ensembles.json    the top-K ensembles exported from the run, with their scores
```

`autoseg.search` writes `run.json`, `plan.json` and `space.yaml`; `autoseg.tuner` the
leaderboard and the trial records; KerasTuner its project; `autoseg.export` reads them and
writes only `ensembles.json` (which `autoseg leaderboard` shows).
The model folder an export writes has its own owner, `autoseg.model_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path

from autoseg import atomic
from autoseg.errors import ConfigError

RUN_FILE = "run.json"
PLAN_FILE = "plan.json"
SPACE_FILE = "space.yaml"
LEADERBOARD_FILE = "leaderboard.csv"
TRIALS_DIR = "trials"
TENSORBOARD_DIR = "tensorboard"
TRIAL_FILE = "trial.json"
CHECKPOINT_FILE = "checkpoint.weights.h5"
RECORD_FILE = "autoseg.json"
ENSEMBLES_FILE = "ensembles.json"


def is_run(path: str | Path) -> bool:
    """Whether `path` is a run folder (it holds `run.json`)."""
    return (Path(path) / RUN_FILE).is_file()


def load_run(rundir: str | Path) -> dict:
    """Reads RUNDIR/run.json (for export and the leaderboard).

    Raises:
        ConfigError: `rundir` holds no run.json.
    """
    path = Path(rundir) / RUN_FILE
    if not path.is_file():
        raise ConfigError(f"{rundir} is not an autoseg run: {path} is missing.")
    return json.loads(path.read_text())


def trial_dir(rundir: str | Path, trial_id: str) -> Path:
    """`RUNDIR/trials/trial_<id>`: one trial's files."""
    return Path(rundir) / TRIALS_DIR / f"trial_{trial_id}"


def trial_path(rundir: str | Path, trial_id: str) -> Path:
    """KerasTuner's `trial.json` of one trial."""
    return trial_dir(rundir, trial_id) / TRIAL_FILE


def checkpoint_path(rundir: str | Path, trial_id: str) -> Path:
    """The weights of one trial's best epoch (KerasTuner's `SaveBestEpoch`)."""
    return trial_dir(rundir, trial_id) / CHECKPOINT_FILE


def record_path(rundir: str | Path, trial_id: str) -> Path:
    """`RUNDIR/trials/trial_<id>/autoseg.json`: autoseg's record of one trial."""
    return trial_dir(rundir, trial_id) / RECORD_FILE


def read_record(rundir: str | Path, trial_id: str) -> dict:
    """autoseg's record of one trial; {} when it has none yet (or an unreadable one)."""
    try:
        return json.loads(record_path(rundir, trial_id).read_text())
    except (OSError, ValueError):
        return {}


def read_ensembles(rundir: str | Path) -> list[dict]:
    """The ensembles exported from the run (`record_ensemble`), oldest first; [] when none
    (or an unreadable file)."""
    try:
        entries = json.loads((Path(rundir) / ENSEMBLES_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def record_ensemble(rundir: str | Path, entry: dict) -> None:
    """Adds an exported ensemble to `RUNDIR/ensembles.json` (atomically), replacing an
    earlier export of the same members."""
    kept = [e for e in read_ensembles(rundir) if e.get("members") != entry.get("members")]
    atomic.write_text(Path(rundir) / ENSEMBLES_FILE, json.dumps(kept + [entry], indent=1))
