"""Distributed search: KerasTuner's chief/worker mode, with timeouts and a watchdog.

One chief serves the oracle (KerasTuner's `oracle_chief.start_server`) and N workers run
trials (KerasTuner's `OracleClient`), all in one RUNDIR on a shared filesystem.
`autoseg search --role chief|worker --oracle HOST:PORT` sets KerasTuner's own variables
`KERASTUNER_TUNER_ID` ("chief", or the worker's id), `KERASTUNER_ORACLE_IP` and
`KERASTUNER_ORACLE_PORT` while the tuner is built and while it searches; KerasTuner's engine
does the rest. Set by hand (as KerasTuner documents), the same variables select the role too.

Who writes what in RUNDIR (nothing is written by two processes):
- the chief: `run.json`, `space.yaml`, `leaderboard.csv` (whole, after every trial end),
  `trials/oracle.json`, `trials/chief.json`, `trials/trial_<id>/trial.json`,
  `distributed/chief.json`, and `autoseg.json` of a trial whose worker stopped responding;
- a worker: its trials' checkpoints and `autoseg.json` (written before it reports the trial
  to the chief, which reads it for the leaderboard), `tensorboard/<trial>`,
  `trials/<worker id>.json` (KerasTuner's tuner state) and `distributed/<worker id>.json`.

What autoseg adds to KerasTuner's engine, and why:
- Heartbeats: every process rewrites `distributed/<id>.json` every few seconds from a thread.
  Liveness is judged by a heartbeat that *changes*, on the reader's own clock, so clocks
  need not agree across machines.
- A worker waits for the chief (at start and on every call) until the chief has shown no
  sign of life (an answer or a heartbeat) for `--oracle-timeout`, then exits with a
  `RunError`. KerasTuner waits 60 minutes per call (1.4.8; 5 minutes before, which failed
  workers whose chief took longer than that to start: keras-team/keras-tuner#990); a chief
  that is still starting beats, so a slow start no longer fails the workers either.
- The chief's watchdog ends the trial of a worker silent for longer than `--oracle-timeout`
  as FAILED ("worker <id> stopped responding") and forgets the worker: KerasTuner's server
  loop waits for every worker it has seen, so one dead worker would hold it forever.
- The chief owns the leaderboard, the time budget and the consecutive-failure rule: a
  worker's `oracle` is an `OracleClient`, which has no `trials`, `end_order` or budget.
- A restarted chief reloads the oracle (KerasTuner's reload, which queues the trials that
  were running to run again); autoseg hands each such trial back to its worker while that
  worker's heartbeat goes on, and queues it again only if the worker does not come back.
- Hyperband and grid answer IDLE while a round waits for running trials; KerasTuner's
  worker asks again at once, so a worker here pauses a second between such answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import keras_tuner as kt

from autoseg import atomic
from autoseg.errors import ConfigError, RunError
from autoseg.durations import format_duration, parse_duration
from autoseg.run_dir import RUN_FILE

ROLES = ("chief", "worker")
CHIEF_ID = "chief"
DEFAULT_ORACLE_TIMEOUT = "2m"
HEARTBEAT_DIR = "distributed"
# Beat at most this often, and at least 4 times per --oracle-timeout.
MAX_HEARTBEAT_SECONDS = 5.0
IDLE_PAUSE_SECONDS = 1.0
ENV_TUNER_ID = "KERASTUNER_TUNER_ID"
ENV_ORACLE_IP = "KERASTUNER_ORACLE_IP"
ENV_ORACLE_PORT = "KERASTUNER_ORACLE_PORT"
_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIVE_STATES = ("starting", "serving", "running")


class ChiefLostError(RunError, kt.errors.FatalError):
    """The chief stopped answering; a `FatalError`, so KerasTuner does not fail the trial."""


def plan(role: str | None = None, oracle: str | None = None, worker_id: str | None = None,
         oracle_timeout: str | float | None = None, overwrite: bool = False,
         log: Callable[[str], None] = print) -> "Cluster | None":
    """Validates the distributed options; None for a search in one process.

    Args:
        role: "chief", "worker" or None. None with KerasTuner's variables set (by hand, e.g.
            in a Kubernetes manifest) takes the role, address and id from them.
        oracle: "HOST:PORT": where the chief listens (an address of its machine, or 0.0.0.0)
            and where workers reach it.
        worker_id: A worker's name. Defaults to `worker-<hostname>-<pid>`.
        oracle_timeout: How long a worker waits for a silent chief and the chief for a
            silent worker ("2m", "90s", seconds). Defaults to 2 minutes.
        overwrite: Refused for a worker, which never deletes the chief's run.

    Raises:
        ConfigError: a bad option, naming it and the fix.
    """
    if role is None and oracle is None and worker_id is None and oracle_timeout is None:
        if ENV_ORACLE_IP not in os.environ:
            return None
        role, oracle, worker_id = _from_environment()
    if role is None:
        given = [flag for flag, value in (("--oracle", oracle), ("--worker-id", worker_id),
                                          ("--oracle-timeout", oracle_timeout)) if value is not None]
        raise ConfigError(
            f"{', '.join(given)} only make sense in a distributed search. Add --role chief "
            "(one process) or --role worker (each of the others)."
        )
    if role not in ROLES:
        raise ConfigError(f"--role {role!r} is unknown. Valid roles: {', '.join(ROLES)}.")
    if not oracle:
        raise ConfigError(
            f"--role {role} needs --oracle HOST:PORT: where the chief listens and the workers "
            "reach it, e.g. --oracle chief-node:8000."
        )
    host, port = parse_address(oracle)
    timeout = parse_duration(
        DEFAULT_ORACLE_TIMEOUT if oracle_timeout is None else oracle_timeout, option="--oracle-timeout"
    )
    if role == "chief":
        if worker_id is not None:
            raise ConfigError("--worker-id names a worker; the chief's id is always 'chief'. Drop it.")
        _check_can_listen(host, port)
        tuner_id = CHIEF_ID
    else:
        if overwrite:
            raise ConfigError(
                "--overwrite is for the chief: a worker joins the chief's run and never deletes it."
            )
        tuner_id = _check_worker_id(worker_id) if worker_id is not None else default_worker_id()
    return Cluster(role=role, host=host, port=port, tuner_id=tuner_id, timeout=timeout, log=log)


def parse_address(text: str) -> tuple[str, int]:
    """`"host:port"` or `"[::1]:port"` -> (host, port)."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", str(text).strip())
    port = int(match.group(2) or match.group(4)) if match else 0
    if not match or not 0 < port < 65536:
        raise ConfigError(
            f"--oracle {text!r} is not HOST:PORT. Use forms like chief-node:8000, 10.0.0.5:8000 "
            "or [::1]:8000 (port 1-65535)."
        )
    return match.group(1) or match.group(3), port


def default_worker_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()) or "host"
    return _check_worker_id(f"worker-{host}-{os.getpid()}", option="the default worker id")


def _check_worker_id(worker_id: str, option: str = "--worker-id") -> str:
    if not _WORKER_ID.fullmatch(worker_id or ""):
        raise ConfigError(
            f"{option} {worker_id!r} must be letters, digits, '.', '_' or '-' (it names files "
            "in RUNDIR). Received an empty or unsafe id."
        )
    if CHIEF_ID in worker_id:
        # KerasTuner treats any id containing "chief" as the chief.
        raise ConfigError(
            f"{option} {worker_id!r} contains 'chief', which KerasTuner reserves for the chief. "
            "Pass another --worker-id."
        )
    return worker_id


def _from_environment() -> tuple[str, str, str | None]:
    for name in (ENV_ORACLE_PORT, ENV_TUNER_ID):
        if not os.environ.get(name):
            raise ConfigError(
                f"{ENV_ORACLE_IP} is set but {name} is not. Set both (KerasTuner's distributed "
                "mode), or unset them and pass --role and --oracle."
            )
    tuner_id = os.environ[ENV_TUNER_ID]
    oracle = f"{os.environ[ENV_ORACLE_IP]}:{os.environ[ENV_ORACLE_PORT]}"
    if ":" in os.environ[ENV_ORACLE_IP]:
        oracle = f"[{os.environ[ENV_ORACLE_IP]}]:{os.environ[ENV_ORACLE_PORT]}"
    if CHIEF_ID in tuner_id:
        if tuner_id != CHIEF_ID:
            raise ConfigError(
                f"{ENV_TUNER_ID}={tuner_id!r}: autoseg names the chief 'chief'. Set it to chief."
            )
        return "chief", oracle, None
    return "worker", oracle, tuner_id


def _check_can_listen(host: str, port: int) -> None:
    """Fails fast, before the chief's slow start, where KerasTuner's server could not bind."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"--oracle {host}:{port}: the chief cannot resolve {host!r} ({exc}).") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Not SO_REUSEPORT: a live server on the port (gRPC sets it) must make this fail;
        # SO_REUSEADDR lets a restarted chief take its port back from TIME_WAIT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"--oracle {host}:{port}: the chief cannot listen there ({exc.strerror}). HOST "
                "must be an address of the chief's machine (or 0.0.0.0 for all of them; workers "
                "then use the chief's hostname), and PORT free: another chief may be using it."
            ) from None


# -- heartbeats ---------------------------------------------------------------------------


def heartbeat_path(rundir: Path, tuner_id: str) -> Path:
    return Path(rundir) / HEARTBEAT_DIR / f"{tuner_id}.json"


def read_heartbeat(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _signature(beat: dict | None):
    return None if beat is None else (beat.get("host"), beat.get("pid"), beat.get("beat"))


class Heartbeat:
    """Rewrites `path` every `interval` seconds from a daemon thread."""

    def __init__(self, path: Path, interval: float, **info):
        self.path = Path(path)
        self.interval = interval
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "beat": 0, **info}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, **changes) -> None:
        with self._lock:
            self.info.update(changes)
            self.info["beat"] += 1
            self.info["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            text = json.dumps(self.info, indent=1)
            try:
                atomic.write_text(self.path, text)
            except OSError:
                pass  # a filesystem hiccup: the next beat tries again

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="autoseg-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self, state: str) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.beat(state=state, trial_id=None)


class _Liveness:
    """When a peer last showed a sign of life, on this process's monotonic clock."""

    def __init__(self, path: Path):
        self.path = path
        self.last = read_heartbeat(path)
        self.since = time.monotonic()

    def alive(self) -> None:
        self.since = time.monotonic()

    def silent_for(self) -> float:
        beat = read_heartbeat(self.path)
        if _signature(beat) != _signature(self.last):
            self.last = beat
            if beat and beat.get("state") in _ALIVE_STATES:
                self.since = time.monotonic()
        return time.monotonic() - self.since


# -- the cluster --------------------------------------------------------------------------


@dataclasses.dataclass
class Cluster:
    """One process's part in a distributed search (see the module docstring)."""

    role: str
    host: str
    port: int
    tuner_id: str
    timeout: float
    log: Callable[[str], None] = print
    rundir: Path | None = None
    heartbeat: Heartbeat | None = None

    @property
    def is_chief(self) -> bool:
        return self.role == "chief"

    @property
    def is_worker(self) -> bool:
        return self.role == "worker"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def heartbeat_seconds(self) -> float:
        return min(MAX_HEARTBEAT_SECONDS, max(0.5, self.timeout / 4))

    def describe(self) -> str:
        if self.is_chief:
            return f"chief serving the oracle on {self.address}"
        return f"worker {self.tuner_id} of the chief at {self.address}"

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """KerasTuner's variables for this role, restored afterwards."""
        values = {ENV_TUNER_ID: self.tuner_id, ENV_ORACLE_IP: self.host, ENV_ORACLE_PORT: str(self.port)}
        saved = {name: os.environ.get(name) for name in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    # -- before the search ----------------------------------------------------------------
    def wait_for_chief(self, rundir: Path) -> None:
        """Blocks until the chief answers; then the run folder must be the chief's.

        Raises:
            RunError: the chief showed no sign of life for `timeout`.
            ConfigError: the chief answers but RUNDIR has no run.json (not shared).
        """
        import grpc

        liveness = _Liveness(heartbeat_path(rundir, CHIEF_ID))
        self.log(f"[search] worker {self.tuner_id}: waiting for the chief at {self.address} "
                 f"(--oracle-timeout {format_duration(self.timeout)})")
        channel = _channel(self.address)
        try:
            while True:
                try:
                    grpc.channel_ready_future(channel).result(timeout=min(2.0, self.timeout))
                    break
                except grpc.FutureTimeoutError:
                    if liveness.silent_for() > self.timeout:
                        raise RunError(self._no_chief_message(rundir)) from None
        finally:
            channel.close()
        run_file = Path(rundir) / RUN_FILE
        for _ in range(10):  # the chief writes it before it serves; a shared filesystem may lag
            if run_file.is_file():
                return
            time.sleep(1.0)
        raise ConfigError(
            f"the chief at {self.address} answers but {run_file} is missing. Workers write into the "
            "chief's run folder: put it on a filesystem every machine shares and pass the same --out."
        )

    def _no_chief_message(self, rundir: Path) -> str:
        message = (
            f"no chief answered at {self.address} within {format_duration(self.timeout)} "
            "(--oracle-timeout). Start the chief first (autoseg search ... --role chief "
            f"--oracle {self.address}), check that --oracle is the chief's host and port as "
            "seen from this machine, or wait longer with --oracle-timeout."
        )
        beat = read_heartbeat(heartbeat_path(rundir, CHIEF_ID))
        if beat and beat.get("state") not in _ALIVE_STATES:
            message += f" The chief of {rundir} {beat.get('state')} at {beat.get('time')}."
        return message

    def announce(self, rundir: Path) -> None:
        """Writes this process's first heartbeat into the run folder.

        A chief's first sign of life: its workers wait `timeout` from here for the next one,
        which comes once it builds its tuner (`building`).
        """
        self.rundir = Path(rundir)
        if self.heartbeat is None:
            self.heartbeat = Heartbeat(
                heartbeat_path(rundir, self.tuner_id), self.heartbeat_seconds, id=self.tuner_id,
                role=self.role, oracle=self.address, state="starting", trial_id=None,
            )
        self.heartbeat.beat()

    @contextlib.contextmanager
    def building(self, rundir: Path) -> Iterator[None]:
        """Around the tuner's construction: KerasTuner's variables and a running heartbeat.

        The chief beats while it builds (KerasTuner builds the hypermodel several times), so
        its workers keep waiting however long that takes. The heartbeat stops with the
        search (`search`) or here, if building fails.
        """
        if self.heartbeat is None:
            self.announce(rundir)
        self.heartbeat.start()
        try:
            with self.environment():
                yield
        except BaseException:
            self.heartbeat.stop("failed")
            raise

    def attach(self, tuner) -> None:
        """A worker's calls to the chief go through `_PatientStub` (see there)."""
        if not self.is_worker:
            return
        from keras_tuner.src import protos

        stub = protos.get_service_grpc().OracleStub(_channel(self.address))
        tuner.oracle.stub = _PatientStub(stub, self)

    # -- the search -----------------------------------------------------------------------
    def search(self, tuner, **fit_kwargs) -> None:
        """Runs KerasTuner's search in this role; the heartbeat stops with it."""
        state = "failed"
        try:
            with self.environment():
                if self.is_chief:
                    self._serve(tuner, **fit_kwargs)
                else:
                    self.heartbeat.beat(state="running")
                    tuner.search(**fit_kwargs)
            state = "finished"
        except KeyboardInterrupt:
            state = "stopped"
            raise
        finally:
            self.heartbeat.stop(state)

    def _serve(self, tuner, **fit_kwargs) -> None:
        _check_can_listen(self.host, self.port)
        service = _ChiefService(self, tuner)
        service.start()
        self.heartbeat.beat(state="serving")
        self.log(f"[search] chief serving the oracle on {self.address}; workers: autoseg search "
                 f"... --role worker --oracle <this host>:{self.port}")
        try:
            tuner.search(**fit_kwargs)  # KerasTuner's oracle_chief.start_server: blocks
        finally:
            service.stop()


def _channel(address: str):
    import grpc

    # gRPC backs off up to 2 minutes between reconnections by default: too slow to notice a
    # restarted chief.
    return grpc.insecure_channel(address, options=[
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ])


class _PatientStub:
    """KerasTuner's `OracleStub` for `OracleClient`, bounded by the chief's liveness.

    `OracleClient` calls `stub.<Rpc>(request, wait_for_ready=True, timeout=3600)`. Here a
    call waits while the chief shows signs of life (answers, or a heartbeat that changes)
    and raises `ChiefLostError` once it has been silent for `--oracle-timeout`. A call that
    timed out is sent again; the chief's oracle takes that: CreateTrial returns the trial
    the worker already has, and the chief ignores a second EndTrial.
    """

    _TRANSIENT = ("DEADLINE_EXCEEDED", "UNAVAILABLE")

    def __init__(self, stub, cluster: Cluster):
        self._stub = stub
        self._cluster = cluster
        self._liveness = _Liveness(heartbeat_path(cluster.rundir, CHIEF_ID))

    def __getattr__(self, name):
        rpc = getattr(self._stub, name)

        def call(request, wait_for_ready=True, timeout=None):
            response = self._call(name, rpc, request)
            self._after(name, request, response)
            return response

        return call

    def _call(self, name, rpc, request):
        import grpc

        timeout = self._cluster.timeout
        while True:
            silent = self._liveness.silent_for()
            if silent > timeout:
                raise ChiefLostError(
                    f"the chief at {self._cluster.address} stopped responding ({name}: no answer "
                    f"and no heartbeat for {format_duration(silent)}, "
                    f"--oracle-timeout {format_duration(timeout)}). "
                    "Restart the chief with the same command: it resumes the run, and workers "
                    "rejoin it."
                )
            try:
                response = rpc(request, wait_for_ready=True, timeout=max(1.0, timeout - silent))
            except grpc.RpcError as exc:
                code = exc.code().name if hasattr(exc, "code") else ""
                if code in self._TRANSIENT:
                    continue
                raise ChiefLostError(
                    f"the chief at {self._cluster.address} failed {name}: {code} "
                    f"{exc.details() if hasattr(exc, 'details') else exc}"
                ) from None
            self._liveness.alive()
            return response

    def _after(self, name, request, response) -> None:
        from keras_tuner.src.engine import trial as trial_module

        heartbeat = self._cluster.heartbeat
        if name == "CreateTrial":
            status = trial_module.TrialStatus.from_proto(response.trial.status)
            if status == trial_module.TrialStatus.RUNNING:
                heartbeat.beat(trial_id=response.trial.trial_id)
            elif status == trial_module.TrialStatus.IDLE:
                time.sleep(IDLE_PAUSE_SECONDS)  # a Hyperband round waits for other workers
        elif name == "EndTrial":
            heartbeat.beat(trial_id=None)


# -- the chief's side ---------------------------------------------------------------------


def _locked(func):
    """`keras_tuner.synchronized` (the same per-oracle lock), released on errors too.

    KerasTuner's decorator does not release its lock when the method raises; a hook that
    raised would then stop the chief from answering anyone.
    """
    from keras_tuner.src.engine.oracle import LOCKS, THREADS

    @functools.wraps(func)
    def wrapped(oracle, *args):
        thread = threading.current_thread().name
        acquire = THREADS[oracle] != thread
        if acquire:
            LOCKS[oracle].acquire()
            THREADS[oracle] = thread
        try:
            return func(oracle, *args)
        finally:
            if acquire:
                THREADS[oracle] = None
                LOCKS[oracle].release()

    return wrapped


@_locked
def _create_trial(oracle, service: "_ChiefService", tuner_id):
    return service.create_trial(tuner_id)


@_locked
def _end_trial(oracle, service: "_ChiefService", trial):
    return service.end_trial(trial)


@_locked
def _check_workers(oracle, service: "_ChiefService"):
    return service.check_workers()


class _ChiefService:
    """Hooks on the chief's oracle: records, budget, failures, watchdog, resume.

    The hooks replace `create_trial` and `end_trial` on the oracle instance, which
    KerasTuner's `OracleServicer` calls for the workers; like KerasTuner's own oracle
    methods they hold the oracle's lock (`keras_tuner.synchronized`'s, see `_locked`).
    """

    def __init__(self, cluster: Cluster, tuner):
        self.cluster = cluster
        self.tuner = tuner
        self.oracle = tuner.oracle
        self.rundir = cluster.rundir
        self.log = cluster.log
        self._create = self.oracle.create_trial
        self._end = self.oracle.end_trial
        self._seen: dict[str, tuple] = {}  # tuner id -> (heartbeat signature, since)
        self._restored: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restore_ongoing()
        self.oracle.create_trial = functools.partial(_create_trial, self.oracle, self)
        self.oracle.end_trial = functools.partial(_end_trial, self.oracle, self)

    def _restore_ongoing(self) -> None:
        """Hands trials that were running when the chief stopped back to their workers.

        KerasTuner's reload queued them to run again; while their worker is alive it is
        still training them, and a second worker would train the same trial in the same
        folder. A worker without a heartbeat file (a search in one process) is not waited for,
        nor is a trial that had ended (`make_tuner` took those off the queue).
        """
        state_file = Path(self.tuner.project_dir) / "oracle.json"
        try:
            ongoing = json.loads(state_file.read_text()).get("ongoing_trials", {})
        except (OSError, ValueError):
            return
        for tuner_id, trial_id in ongoing.items():
            if (tuner_id == CHIEF_ID or trial_id not in self.oracle.trials
                    or trial_id not in self.oracle._retry_queue
                    or not heartbeat_path(self.rundir, tuner_id).is_file()):
                continue
            self.oracle._retry_queue.remove(trial_id)
            self.oracle.ongoing_trials[tuner_id] = self.oracle.trials[trial_id]
            self.oracle.tuner_ids.add(tuner_id)
            self._restored.add(tuner_id)
            self.log(f"[search] resuming: trial {trial_id} is with worker {tuner_id}; waiting "
                     f"up to {format_duration(self.cluster.timeout)} for a sign of it")

    # -- the hooks (under the oracle's lock) ----------------------------------------------
    def create_trial(self, tuner_id):
        self._alive(tuner_id)
        known = tuner_id in self.oracle.tuner_ids
        if tuner_id not in self.oracle.ongoing_trials:
            self.tuner.stop_if_budget_spent()
        trial = self._create(tuner_id)
        if trial.status == "RUNNING" and trial.trial_id not in self.tuner._trial_start:
            self.tuner._trial_start[trial.trial_id] = time.time()
            self.tuner.log_trial_begin(trial, worker=tuner_id)
        elif trial.status == "STOPPED" and known:
            self.log(f"[search] worker {tuner_id}: no trial left, told to stop")
        return trial

    def end_trial(self, trial):
        oracle = self.oracle
        if trial.trial_id in oracle.end_order:
            # A second report: a call the worker sent again, or a worker the watchdog had
            # given up on. The first outcome stands.
            for tuner_id, ongoing in list(oracle.ongoing_trials.items()):
                if ongoing.trial_id == trial.trial_id:
                    oracle.ongoing_trials.pop(tuner_id)
            self.log(f"[search] trial {trial.trial_id} was already ended "
                     f"({oracle.trials[trial.trial_id].status}); a later report is ignored")
            return None
        if trial.trial_id in oracle._retry_queue:
            oracle._retry_queue.remove(trial.trial_id)  # reported finished: nothing to retry
        worker = next((t for t, o in oracle.ongoing_trials.items() if o.trial_id == trial.trial_id), None)
        if worker:
            self._alive(worker)
        result = self._end(trial)
        try:
            self.tuner.write_leaderboard()
            self.tuner.log_trial_end(trial.trial_id, worker=worker)
            self.tuner._check_failures()
        except Exception as exc:  # the worker's call must not fail for the chief's bookkeeping
            self.log(f"[search] could not update the leaderboard after trial {trial.trial_id}: {exc}")
        return result

    # -- the watchdog ---------------------------------------------------------------------
    def _alive(self, tuner_id: str) -> None:
        beat = read_heartbeat(heartbeat_path(self.rundir, tuner_id))
        self._seen[tuner_id] = (_signature(beat), time.monotonic())

    def check_workers(self) -> None:
        now = time.monotonic()
        for tuner_id in set(self.oracle.tuner_ids) | set(self.oracle.ongoing_trials):
            signature = _signature(read_heartbeat(heartbeat_path(self.rundir, tuner_id)))
            seen = self._seen.get(tuner_id)
            if seen is None or seen[0] != signature:
                if seen is not None:
                    self._restored.discard(tuner_id)  # it beats: it is alive
                self._seen[tuner_id] = (signature, now)
            elif now - seen[1] > self.cluster.timeout:
                self._give_up_on(tuner_id, now - seen[1])

    def _give_up_on(self, tuner_id: str, silent: float) -> None:
        from keras_tuner.src.engine import trial as trial_module

        from autoseg.run_dir import read_record, record_path

        oracle = self.oracle
        oracle.tuner_ids.discard(tuner_id)
        trial = oracle.ongoing_trials.get(tuner_id)
        if trial is None:
            self._seen.pop(tuner_id, None)
            self.log(f"[search] worker {tuner_id} stopped responding between trials; forgotten")
            return
        if tuner_id in self._restored:
            self._seen.pop(tuner_id, None)
            self._restored.discard(tuner_id)
            oracle.ongoing_trials.pop(tuner_id)
            oracle._retry_queue.append(trial.trial_id)
            oracle.save()
            self.log(f"[search] worker {tuner_id} did not come back after the chief restarted; "
                     f"trial {trial.trial_id} will run again")
            return
        message = f"worker {tuner_id} stopped responding (no heartbeat for {format_duration(silent)})"
        record = read_record(self.rundir, trial.trial_id)
        record.update(status="FAILED", message=message, worker=tuner_id)
        atomic.write_text(record_path(self.rundir, trial.trial_id), json.dumps(record, indent=1))
        self.log(f"[search] {message}; trial {trial.trial_id} FAILED")
        oracle.end_trial(trial_module.Trial(
            trial.hyperparameters, trial_id=trial.trial_id,
            status=trial_module.TrialStatus.FAILED, message=message,
        ))
        self._seen.pop(tuner_id, None)  # a worker that comes back starts afresh

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="autoseg-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        interval = min(2.0, self.cluster.timeout / 4)
        while not self._stop.wait(interval):
            try:
                _check_workers(self.oracle, self)
            except Exception as exc:  # keep watching: a dead watchdog hangs the chief
                self.log(f"[search] watchdog: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.oracle.create_trial = self._create
        self.oracle.end_trial = self._end
