"""Each trial's build and fit in a fresh Python process, so a long search keeps its memory.

Keras 3.15 / TF 2.21 keep every `model.fit`'s traced graphs alive after
`keras.backend.clear_session()` and `gc.collect()`: ~45-60 MB per trial, in plain Keras too
(upstream: keras-team/keras#17458, tensorflow/tensorflow#61791, still open). Over a search of
a hundred trials that is gigabytes. A process per trial returns all of it to the system.

The search's process keeps KerasTuner's loop, the oracle and every file it writes; the trial's
process does what KerasTuner's `Tuner.run_trial` does for one execution: build the model
(Hyperband's continued trials load their past trial's checkpoint), fit it through the
HyperModel with the given callbacks plus KerasTuner's `SaveBestEpoch` checkpoint, save the
build config, and send back the history, the HyperModel's `last_fit` record and the
hyperparameters `fit` declared (batch size, augmentation), which join the trial's. A
`FailedTrialError` (over the memory budget, diverged) comes back as one. The trial's process
dies with the search's process (`PR_SET_PDEATHSIG`), so a killed search leaves no orphan.
Its output (TensorFlow's native log: absl and C++ lines, see `autoseg.native_log`) goes to
`trial.log` in the trial's folder, whose last lines are in the error when the process dies
without a result; with the HyperModel's `verbose` (`search --verbose`) it goes to the search's
own stdout and stderr instead.

A fresh interpreter spends ~4.5 s importing TensorFlow and Keras: with two CPUs or more, the
next trial's process is started beside this one's and imports then (`autoseg.warm_process`).
Trials run in the search's own process when `AUTOSEG_TRIAL_PROCESS=0`, when the tuner has a
`tf.distribute` strategy (it cannot cross a process boundary), or from plain KerasTuner code.
Architectures, losses or metrics registered at run time (not by importing autoseg) exist
only in the search's process: use `AUTOSEG_TRIAL_PROCESS=0` with those.

Unlike KerasTuner's own `run_trial`, the optimizer, loss and metrics given to the tuner's
constructor (`_override_compile_args`) are not applied: autoseg's HyperModels compile.

Run as `python -m autoseg.trial_process SPEC RESULT PARENT_PID` (pickles from `run_trial`), or
as a spare with `--spare PARENT_PID` (`autoseg.warm_process`).
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from autoseg import native_log, progress, warm_process
from autoseg.env_flags import env_flag

ENV_SWITCH = "AUTOSEG_TRIAL_PROCESS"
SCRATCH_PREFIX = ".process-"
#: The trial process's output (TensorFlow's native log among it), in the trial's folder.
LOG_FILE = "trial.log"


def enabled() -> bool:
    """Whether trials run in their own process (`AUTOSEG_TRIAL_PROCESS`, default 1)."""
    return env_flag(ENV_SWITCH, default=True)


def run_trial(tuner, trial, *args, **kwargs):
    """KerasTuner's `Tuner.run_trial` for one execution, with build and fit in a child process.

    Returns:
        `[keras.callbacks.History]`, as KerasTuner's own run_trial does.

    Raises:
        keras_tuner.errors.FailedTrialError: the trial's configuration failed (the child's
            `last_fit` record, with the reason, is on `tuner.hypermodel.last_fit`).
        RuntimeError: anything else, with the child's traceback, or its exit status.
    """
    spec = _trial_spec(tuner, trial, args, kwargs)
    trial_dir = _clean_trial_dir(tuner, trial.trial_id)
    verbose = spec["kwargs"].get("verbose", getattr(tuner.hypermodel, "verbose", 0))
    log_path = None if verbose else trial_dir / LOG_FILE
    # Keras' own progress bar shows with `verbose`.
    relay = None if verbose else progress.attach(tuner, trial, trial_dir, spec["kwargs"]["callbacks"])
    # A resumed search runs the trial again: its error quotes this run's lines only.
    log_start = _start_log(log_path, trial.trial_id) if log_path is not None else 0
    code, result = _run_child(tuner, spec, trial_dir, log_path, relay)
    if result is None:
        raise _death_error(tuner, code, log_path, log_start)
    return [_trial_history(tuner, trial, result, log_path)]


def _trial_spec(tuner, trial, args: tuple, kwargs: dict) -> dict:
    """What the trial's process needs: the HyperModel, the hyperparameters, the fit's
    arguments with the tuner's callbacks (TensorBoard's pointed at the trial, plus
    `SaveBestEpoch`), Hyperband's epochs and the files to read and write."""
    from keras_tuner.src.engine import tuner_utils

    kwargs = dict(kwargs)
    callbacks = tuner._deepcopy_callbacks(kwargs.pop("callbacks", []))
    # KerasTuner's `_configure_tensorboard_dir`, less its HParams callback, whose summary
    # writer cannot be pickled: the trial's process adds that one.
    hparams_dirs = []
    for callback in callbacks:
        if callback.__class__.__name__ == "TensorBoard":
            callback.log_dir = tuner._get_tensorboard_dir(callback.log_dir, trial.trial_id, 0)
            hparams_dirs.append(callback.log_dir)
    callbacks.append(tuner_utils.SaveBestEpoch(objective=tuner.oracle.objective,
                                               filepath=tuner._get_checkpoint_fname(trial.trial_id)))
    values = trial.hyperparameters.values
    if "tuner/epochs" in values:  # what KerasTuner's Hyperband.run_trial passes on
        kwargs["epochs"] = values["tuner/epochs"]
        kwargs["initial_epoch"] = values["tuner/initial_epoch"]
    past = values.get("tuner/trial_id")
    return {
        "hypermodel": tuner.hypermodel,
        "hyperparameters": trial.hyperparameters,
        "trial_id": trial.trial_id,
        "hparams_dirs": hparams_dirs,
        "past_checkpoint": tuner._get_checkpoint_fname(past) if past else None,
        "build_config": tuner._get_build_config_fname(trial.trial_id),
        "args": args,
        "kwargs": {**kwargs, "callbacks": callbacks},
    }


def _clean_trial_dir(tuner, trial_id: str) -> Path:
    """The trial's folder, made if new, without the scratch folders of a killed search."""
    trial_dir = Path(tuner.get_trial_dir(trial_id))
    trial_dir.mkdir(parents=True, exist_ok=True)
    for stale in trial_dir.glob(f"{SCRATCH_PREFIX}*"):  # left by a search that was killed
        shutil.rmtree(stale, ignore_errors=True)
    return trial_dir


def _run_child(tuner, spec: dict, trial_dir: Path, log_path: Path | None,
               relay: progress.Relay | None) -> tuple[int, dict | None]:
    """Runs the trial's process on `spec`; returns its exit code and its result (None when
    it wrote none)."""
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=trial_dir) as scratch:
        spec_path, result_path = Path(scratch) / "spec.pkl", Path(scratch) / "result.pkl"
        spec_path.write_bytes(pickle.dumps(spec))
        process = _start(str(spec_path), str(result_path), log_path)
        if log_path is not None and warm_process.worth_starting(tuner):
            warm_process.start()  # imports beside this trial's start-up, for the next trial
        code = _wait(process, relay)
        result = pickle.loads(result_path.read_bytes()) if result_path.is_file() else None
    return code, result


def _death_error(tuner, code: int, log_path: Path | None, log_start: int) -> Exception:
    """The error for a trial's process that died without a result, with its log's last lines;
    records it on `tuner.hypermodel.last_fit`."""
    import keras_tuner as kt

    from autoseg.hypermodel import FitRecord

    message = _death(code)
    if log_path is not None:
        message = native_log.quote_tail(log_path, message, start=log_start)
    tuner.hypermodel.last_fit = FitRecord(message=message)
    if code == -signal.SIGKILL:  # the kernel's OOM killer: this configuration's own
        tuner.hypermodel.last_fit["configuration_failure"] = True
        return kt.errors.FailedTrialError(message)
    return RuntimeError(message)


def _trial_history(tuner, trial, result: dict, log_path: Path | None):
    """Takes the trial's process's result into the search's process: its `last_fit` record
    and drawn hyperparameters; raises its error, else returns its `keras.callbacks.History`."""
    import keras
    import keras_tuner as kt

    from autoseg.hypermodel import FitRecord

    tuner.hypermodel.last_fit = FitRecord(result.get("record") or {})
    # What `fit` drew (batch size, augmentation, crop scale) was declared on the child's copy.
    drawn = result["hyperparameters"]
    trial.hyperparameters.merge(drawn, overwrite=False)
    trial.hyperparameters.values.update(drawn.values)
    if "error" in result:
        if result["failed_trial"]:
            raise kt.errors.FailedTrialError(result["error"])
        where = "in the trial's process" + (f" (its log: {log_path})" if log_path else "")
        if result["fatal"]:  # KerasTuner stops the search on these
            raise kt.errors.FatalError(f"{where}:\n{result['traceback']}")
        raise RuntimeError(f"{where}:\n{result['traceback']}")
    history = keras.callbacks.History()
    history.history = result["history"]
    history.epoch = list(range(len(next(iter(result["history"].values()), []))))
    return history


def _start_log(log_path: Path, trial_id: str) -> int:
    """Appends a header line for this run of the trial; returns the offset after it."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"--- trial {trial_id}, {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        return log.tell()


def _start(spec_path: str, result_path: str, log_path: Path | None) -> subprocess.Popen:
    """The trial's process: the waiting spare (`autoseg.warm_process`) given this trial, or a
    fresh one. Its stdout and stderr go to `log_path` (None: ours)."""
    command = [sys.executable, "-m", "autoseg.trial_process", spec_path, result_path,
               str(os.getpid())]
    if log_path is None:
        return subprocess.Popen(command)
    spare = warm_process.take()
    if spare is not None:
        try:
            return spare.hand(spec_path, result_path, str(log_path))
        except OSError:  # it died since `take` looked: a fresh process, as without one
            spare.close()
    # Unbuffered, so that Python's lines and TensorFlow's native ones keep their order and
    # nothing is lost in a buffer when the process is killed.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a", encoding="utf-8") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait(process: subprocess.Popen, relay: progress.Relay | None) -> int:
    """Waits for the trial's process, `relay` showing its progress meanwhile; returns its
    exit status."""
    try:
        return progress.wait(process, relay)
    except BaseException:  # as subprocess.call: an interrupted search ends its trial
        process.kill()
        process.wait()
        raise


def _death(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"the trial's process was killed by {name}{hint}"
    return f"the trial's process exited with status {code} without a result"


def _die_with_parent(parent: int) -> None:
    """Asks Linux to SIGKILL this process when its parent dies (no-op elsewhere), and exits
    if the parent died before the request (the child is then someone else's)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _preload() -> None:
    """The imports of a trial's process: most of its start-up."""
    import autoseg  # noqa: F401 - sets TF's log level and albumentations' switch first
    import autoseg.hypermodel  # noqa: F401 - the spec's HyperModel
    import autoseg.losses  # noqa: F401 - the registries the search's process has filled
    import autoseg.metrics  # noqa: F401
    import autoseg.models  # noqa: F401
    import keras_tuner  # noqa: F401
    from tensorboard.plugins.hparams import api  # noqa: F401 - the search's TensorBoard


def _work(spec_path: str, result_path: str) -> int:
    """Builds and fits the trial of `spec_path`; writes its result to `result_path`."""
    import keras_tuner as kt
    from keras_tuner.src import utils as kt_utils

    from autoseg import atomic

    spec = pickle.loads(Path(spec_path).read_bytes())
    hypermodel, hp = spec["hypermodel"], spec["hyperparameters"]
    result: dict = {}
    try:
        if spec["hparams_dirs"]:
            from keras_tuner.src.engine import tuner_utils
            from tensorboard.plugins.hparams import api as hparams_api

            hparams = tuner_utils.convert_hyperparams_to_hparams(hp, hparams_api)
            spec["kwargs"]["callbacks"] += [
                hparams_api.KerasCallback(writer=logdir, hparams=hparams, trial_id=spec["trial_id"])
                for logdir in spec["hparams_dirs"]
            ]
        model = hypermodel.build(hp)
        if spec["past_checkpoint"]:  # Hyperband's continued trial
            model.load_weights(spec["past_checkpoint"])
        history = hypermodel.fit(hp, model, *spec["args"], **spec["kwargs"])
        kt_utils.save_json(spec["build_config"], model.get_build_config())
        result["history"] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the search
        result["error"] = str(exc)
        result["failed_trial"] = isinstance(exc, kt.errors.FailedTrialError)
        result["fatal"] = isinstance(exc, kt.errors.FatalError)
        result["traceback"] = traceback.format_exc()
    result["record"] = dict(getattr(hypermodel, "last_fit", None) or {})
    result["hyperparameters"] = hp
    atomic.write_bytes(Path(result_path), pickle.dumps(result))
    return 0


def _child(spec_path: str, result_path: str, parent: int) -> int:
    _die_with_parent(parent)
    _preload()
    return _work(spec_path, result_path)


def _spare(parent: int) -> int:
    """A trial's process started ahead (`autoseg.warm_process`): imports, then waits for its
    trial; exits 0 without one."""
    _die_with_parent(parent)
    _preload()
    job = warm_process.job()
    return 0 if job is None else _work(*job)


if __name__ == "__main__":
    if sys.argv[1] == warm_process.FLAG:
        sys.exit(_spare(int(sys.argv[2])))
    sys.exit(_child(sys.argv[1], sys.argv[2], int(sys.argv[3])))
