"""Training-memory estimate -> admissible batch sizes.

The idea is nnU-Net's (`static_estimate_VRAM_usage`): bound the batch size by a memory
estimate before training, so a trial never starts with a batch that cannot fit. Here the
estimate is linear, and its constants were measured on the machines autoseg runs on:

    total = fixed + overhead + parameter_bytes + batch * per_sample
    overhead        = base + per_variable * trainable variables
    parameter_bytes = 4 * params * 4 bytes          (weights, gradients, Adam's two slots)
    per_sample      = factor * activation_elements * bytes_per_element

`activation_elements` is the per-sample sum of every layer output's elements: what the
forward pass keeps for the backward pass, give or take. `factor` absorbs what that count
misses (outputs that are freed early, per-op temporaries, gradient buffers alive at the peak).

Calibration (``python benchmarks/memory.py``; CPU, TF 2.21, Keras 3.15, float32, Adam,
`model.fit` of 2 steps on a tf.data dataset, peak RSS growth over build + compile + fit, one
fresh process per configuration):

    __CALIBRATION__

Within a family the measured growth is linear in batch; what differs between families is
the per-op temporaries the layer outputs do not show. Those families get their own factor in
`FAMILY_ACTIVATION_FACTORS`, keyed by `ArchitectureSpec.family`.

Only CPU was measured (no GPU here). On a GPU the same formula is used against the device's
free memory; the host-side constants (`FIXED_BYTES`, `TRAINING_OVERHEAD_BYTES`) then make it
conservative.

This module imports TensorFlow and Keras only inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from typing import Any, Iterable

from autoseg.errors import BudgetError, ConfigError

#: Per-sample activation bytes = factor x layer-output bytes, for families without their own.
ACTIVATION_FACTOR = 1.0

#: Families whose measured factor differs from `ACTIVATION_FACTOR` (see the module docstring).
FAMILY_ACTIVATION_FACTORS: dict[str, float] = {}

#: Resident memory of a training process before any model exists: Python, TensorFlow, Keras,
#: the tf.data runtime (RSS measured after those imports and building the dataset).
FIXED_BYTES = 700 * 2**20

#: What building and fitting any model adds regardless of its size and batch (the
#: least-squares intercept of the calibration).
TRAINING_OVERHEAD_BYTES = 30 * 2**20

#: What each trainable variable adds regardless of its size and the batch: the traced train
#: step holds forward, gradient and optimizer ops per variable, and their kernels' state.
#: Measured: models of 40 to 240 variables at 32 px grow by 150 to 730 MB whatever their
#: parameter count, so this term, not the parameters, dominates small models.
OVERHEAD_BYTES_PER_VARIABLE = int(2.8 * 2**20)

#: Bytes per parameter during training: weights, gradients, Adam's two moment slots (float32).
PARAMETER_COPIES = 4
_BYTES_PER_ELEMENT = {"float32": 4, "mixed_float16": 2, "mixed_bfloat16": 2}

_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(value: str | int) -> int:
    """Parses a memory size into bytes.

    Args:
        value: A positive int (bytes) or a string: a number and a unit among B, KB, MB, GB,
            TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024), case-insensitive.
            A bare number string is bytes.

    Returns:
        The size in bytes.

    Raises:
        ConfigError: `value` is not a positive size in one of these forms.

    Example:
    >>> parse_size("8GB"), parse_size("512MiB"), parse_size("1.5GiB")
    (8000000000, 536870912, 1610612736)
    """
    forms = "a positive number of bytes or a string such as '8GB', '512MB', '1.5GiB' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"A memory size must be {forms}. Received: {value!r}.")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"A memory size must be {forms}. Received: {value!r}.")
        return value
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS and unit != "":
        raise ConfigError(f"A memory size must be {forms}. Received: {value!r}.")
    size = float(match.group(1)) * _UNITS.get(unit, 1)
    if size < 1:
        raise ConfigError(f"A memory size must be {forms}. Received: {value!r} (under 1 byte).")
    return int(round(size))


def activation_elements(model: Any) -> int:
    """The per-sample sum of the elements of every layer output of `model`.

    Every call of every layer or op in the model's graph counts (a layer called twice counts
    twice); InputLayers do not. A nested model counts as its own layers, not as its outputs.

    What training touches beyond the model's own graph counts too. A model whose
    `train_step` runs sub-models outside its graph says so with a `training_passes`
    attribute, a list of `(sub_model, calls_per_step)`. Without one, a `discriminator`
    attribute (the Pix2Pix contract: the graph is the generator; each step runs the
    discriminator on a real and on a fake (image, mask) pair, both backpropagated) counts
    twice. A subclassed model without a graph counts each tracked sub-model that has one.

    Args:
        model: A built Keras model with a fixed input size.

    Returns:
        The number of elements, for one sample.

    Raises:
        ConfigError: the model is not built, or a layer output has an unknown dimension
            (a model built for a variable input size).

    Example:
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    >>> activation_elements(model)  # 6 * 6 * 4
    144
    """
    return _activation_elements(model, name=getattr(model, "name", "model"))


def _graph_of(model: Any):
    """The functional graph (object with `_nodes_by_depth`) of `model`, or None."""
    if hasattr(model, "_nodes_by_depth"):
        return model
    functional = getattr(model, "_functional", None)  # a Sequential built with an input
    if functional is not None and hasattr(functional, "_nodes_by_depth"):
        return functional
    return None


def _training_passes(model: Any) -> list:
    """`(sub_model, calls_per_step)` that training runs outside the model's own graph."""
    passes = getattr(model, "training_passes", None)
    if passes is not None:
        return list(passes)
    discriminator = getattr(model, "discriminator", None)
    if discriminator is not None and _graph_of(discriminator) is not None:
        return [(discriminator, 2)]  # Pix2Pix: on the real and on the fake pair
    return []


def _activation_elements(model: Any, name: str) -> int:
    graph = _graph_of(model)
    extra = _training_passes(model)
    if graph is None and not extra:
        extra = [(sub, 1) for sub in getattr(model, "layers", []) if _graph_of(sub) is not None]
        if not extra:
            raise ConfigError(
                f"Cannot count the activations of {name!r} ({type(model).__name__}): it is "
                "neither a built functional/Sequential model nor a model made of them. "
                "Build it with a fixed input shape (e.g. `keras.Input((128, 128, 3))`)."
            )
    total = sum(calls * _activation_elements(sub, f"{name}/{sub.name}") for sub, calls in extra)
    if graph is None:
        return total
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            operation = node.operation
            if node.is_input or type(operation).__name__ == "InputLayer":
                continue
            if operation is not None and operation is not model and _graph_of(operation) is not None:
                total += _activation_elements(operation, f"{name}/{operation.name}")
                continue
            for tensor in node.outputs:
                shape = tuple(tensor.shape)[1:]
                if any(d is None for d in shape):
                    raise ConfigError(
                        f"Cannot count the activations of {name!r}: layer "
                        f"{getattr(operation, 'name', operation)!r} has output shape "
                        f"{tuple(tensor.shape)} with an unknown dimension. Build the model "
                        "for a fixed input size (e.g. `input_shape=(128, 128, 3)`)."
                    )
                total += math.prod(int(d) for d in shape)
    return total


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory of training one model at one batch size.

    Attributes:
        batch_size: The batch size estimated for.
        activation_elements: Per-sample layer-output elements (`activation_elements`).
        factor: The activation factor used.
        fixed_bytes: The process before any model exists (`FIXED_BYTES`).
        overhead_bytes: What building and fitting the model adds whatever the batch:
            `TRAINING_OVERHEAD_BYTES + OVERHEAD_BYTES_PER_VARIABLE * trainable variables`.
        parameter_bytes: Weights, gradients and Adam's two slots: 4 x params x 4 bytes.
        per_sample_bytes: factor x activation elements x bytes per element.
        total_bytes: The predicted peak resident memory of the training process.
        growth_bytes: `total_bytes - fixed_bytes`: what the model adds to the process.
    """

    batch_size: int
    activation_elements: int
    factor: float
    fixed_bytes: int
    overhead_bytes: int
    parameter_bytes: int
    per_sample_bytes: int
    total_bytes: int = dataclasses.field(init=False)
    growth_bytes: int = dataclasses.field(init=False)

    def __post_init__(self):
        growth = self.overhead_bytes + self.parameter_bytes + self.batch_size * self.per_sample_bytes
        object.__setattr__(self, "growth_bytes", int(growth))
        object.__setattr__(self, "total_bytes", int(self.fixed_bytes + growth))


def activation_factor(family: str | None = None) -> float:
    """The calibrated activation factor of a family (`ACTIVATION_FACTOR` if it has none)."""
    return FAMILY_ACTIVATION_FACTORS.get(family, ACTIVATION_FACTOR) if family else ACTIVATION_FACTOR


def _check_batch(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"A batch size must be a positive integer. Received: batch_size={batch_size!r}.")
    return batch_size


def _bytes_per_element(precision: str) -> int:
    if precision not in _BYTES_PER_ELEMENT:
        raise ConfigError(
            f"Unknown precision {precision!r}. Valid: {', '.join(_BYTES_PER_ELEMENT)}."
        )
    return _BYTES_PER_ELEMENT[precision]


def _estimate(elements: int, params: int, variables: int, batch_size: int, precision: str,
              factor: float | None, family: str | None) -> MemoryEstimate:
    factor = activation_factor(family) if factor is None else float(factor)
    if not factor > 0:
        raise ConfigError(f"The activation factor must be positive. Received: factor={factor!r}.")
    return MemoryEstimate(
        batch_size=_check_batch(batch_size),
        activation_elements=int(elements),
        factor=factor,
        fixed_bytes=FIXED_BYTES,
        overhead_bytes=TRAINING_OVERHEAD_BYTES + OVERHEAD_BYTES_PER_VARIABLE * int(variables),
        parameter_bytes=PARAMETER_COPIES * int(params) * 4,
        per_sample_bytes=int(round(factor * elements * _bytes_per_element(precision))),
    )


def estimate_training_memory(
    model: Any,
    batch_size: int,
    *,
    precision: str = "float32",
    factor: float | None = None,
    family: str | None = None,
) -> MemoryEstimate:
    """Predicts the peak memory of training `model` with Adam at `batch_size`.

    Args:
        model: A built Keras model with a fixed input size.
        batch_size: The training batch size.
        precision: "float32", "mixed_float16" or "mixed_bfloat16" (activations take 2 bytes;
            parameters stay float32). Defaults to "float32".
        factor: The activation factor. Defaults to None: the family's calibrated factor.
        family: The model's family (`ArchitectureSpec.family`), which selects its factor.
            Defaults to None (`ACTIVATION_FACTOR`).

    Returns:
        A `MemoryEstimate`.

    Raises:
        ConfigError: a bad batch size, precision or factor, or a model whose activations
            cannot be counted.

    Example:
    ```python
    model = autoseg.models.build("unet", 3, (128, 128, 3))
    estimate = estimate_training_memory(model, 8, family="unet")
    print(f"{estimate.total_bytes / 2**30:.1f} GiB")
    ```
    """
    return _estimate(activation_elements(model), model.count_params(),
                     len(model.trainable_weights), batch_size, precision, factor, family)


def admissible_batch_sizes(
    model: Any,
    candidates: Iterable[int],
    budget_bytes: int,
    precision: str = "float32",
    *,
    factor: float | None = None,
    family: str | None = None,
) -> list[int]:
    """The candidate batch sizes whose predicted total memory fits `budget_bytes`.

    Args:
        model: A built Keras model with a fixed input size.
        candidates: Batch sizes to consider.
        budget_bytes: The memory the training process may use in total
            (`memory_budget_bytes()`).
        precision, factor, family: As for `estimate_training_memory`.

    Returns:
        The admissible batch sizes, ascending and without repeats; empty if none fits.
    """
    counts = activation_elements(model), model.count_params(), len(model.trainable_weights)
    fitting = {
        b for b in (_check_batch(c) for c in candidates)
        if _estimate(*counts, b, precision, factor, family).total_bytes <= budget_bytes
    }
    return sorted(fitting)


def _proc_status_bytes(key: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _meminfo_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


_CGROUP_FILES = (  # (limit, usage): cgroup v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)
_CLEAR_REFS = "/proc/self/clear_refs"


def _cgroup_headroom_bytes() -> int | None:
    """What the container's memory limit still allows, or None without a limit."""
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:  # no limit
            return None
        return max(0, int(limit) - usage)
    return None


def _gpu_visible() -> bool:
    # Importing TensorFlow only to learn there is no GPU costs seconds and ~0.5 GB.
    if "tensorflow" not in sys.modules and (
        os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not glob.glob("/dev/nvidia[0-9]*")
    ):
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _nvidia_smi_total_bytes() -> int | None:
    """Total memory of the first visible GPU per nvidia-smi, or None."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    command = [exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    if visible:
        command.append(f"--id={visible}")
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20, check=True).stdout
        return int(float(out.strip().splitlines()[0])) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def available_memory_bytes() -> tuple[int, str]:
    """The memory training in this process could use, and where the figure comes from.

    On a GPU ("gpu"): the device total from nvidia-smi less what TensorFlow holds on it
    (`get_memory_info("GPU:0")["current"]`); other processes on the same GPU are not seen.
    On CPU ("meminfo"): this process's resident memory plus the kernel's MemAvailable,
    capped by what the container's cgroup memory limit still allows.

    Returns:
        `(bytes, source)`, source "gpu" or "meminfo".

    Raises:
        BudgetError: a GPU is visible but its total memory cannot be read (no nvidia-smi).
    """
    if _gpu_visible():
        import tensorflow as tf

        total = _nvidia_smi_total_bytes()
        if total is None:
            raise BudgetError(
                "A GPU is visible but its memory cannot be read (nvidia-smi is missing or "
                "failed). Give the memory budget explicitly, e.g. `--memory-budget 10GiB`."
            )
        used = int(tf.config.experimental.get_memory_info("GPU:0")["current"])
        return max(0, total - used), "gpu"
    rss = _proc_status_bytes("VmRSS")
    available = _meminfo_available_bytes()
    headroom = _cgroup_headroom_bytes()
    if headroom is not None:
        available = min(available, headroom)
    return rss + available, "meminfo"


def memory_budget_bytes(explicit: str | int | None = None, safety: float = 0.8) -> int:
    """The memory budget of training: an explicit size, or a share of what is available.

    Args:
        explicit: A size for `parse_size` ("8GB"); used as given, without `safety`.
            Defaults to None: `safety` x `available_memory_bytes()`.
        safety: The share of the available memory to use, in (0, 1]. Defaults to 0.8.

    Returns:
        The budget in bytes.

    Raises:
        ConfigError: a bad `explicit` or `safety`.
        BudgetError: no explicit budget and the available memory cannot be read.
    """
    if explicit is not None:
        return parse_size(explicit)
    if isinstance(safety, bool) or not isinstance(safety, (int, float)) or not 0 < safety <= 1:
        raise ConfigError(f"`safety` must be a number in (0, 1]. Received: safety={safety!r}.")
    available, _ = available_memory_bytes()
    return int(available * safety)


class PeakMemory:
    """Context manager measuring the peak memory growth of a block.

    On CPU ("rss") it resets the kernel's peak-RSS counter (writing "5" to
    /proc/self/clear_refs) and reads VmRSS on entry and VmHWM on exit; where clear_refs is
    not writable it samples VmRSS every `interval` seconds instead, which can miss a peak
    shorter than that. On a GPU ("gpu") it resets TensorFlow's allocator statistics and
    reads their peak. The counter is per process: concurrent blocks disturb each other.

    Args:
        device: "cpu" or "gpu". Defaults to None: "gpu" if TensorFlow is imported and sees
            a GPU, else "cpu".
        interval: Sampling period of the fallback, in seconds. Defaults to 0.02.

    Attributes:
        start_bytes: Memory in use on entry.
        peak_bytes: The highest memory in use during the block.
        growth_bytes: `peak_bytes - start_bytes` (never negative).
        source: "rss" or "gpu".

    Example:
    ```python
    with PeakMemory() as peak:
        model.fit(dataset, epochs=1)
    print(f"fit grew the process by {peak.growth_bytes / 2**20:.0f} MiB")
    ```
    """

    def __init__(self, device: str | None = None, interval: float = 0.02):
        if device not in (None, "cpu", "gpu"):
            raise ConfigError(f"`device` must be None, 'cpu' or 'gpu'. Received: device={device!r}.")
        self.device = device
        self.interval = interval
        self.start_bytes = self.peak_bytes = self.growth_bytes = 0
        self.source = None
        self._sampler = None
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        device = self.device
        if device is None:
            device = "gpu" if "tensorflow" in sys.modules and _gpu_visible() else "cpu"
        if device == "gpu":
            import tensorflow as tf

            self.source = "gpu"
            tf.config.experimental.reset_memory_stats("GPU:0")
            self.start_bytes = int(tf.config.experimental.get_memory_info("GPU:0")["current"])
            return self
        self.source = "rss"
        self._sampler = None
        self._stop.clear()
        try:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")
        except OSError:
            self._start_sampler()
        self.start_bytes = _proc_status_bytes("VmRSS")
        return self

    def _start_sampler(self) -> None:
        self._sampled_peak = _proc_status_bytes("VmRSS")

        def sample():
            while not self._stop.wait(self.interval):
                self._sampled_peak = max(self._sampled_peak, _proc_status_bytes("VmRSS"))

        self._sampler = threading.Thread(target=sample, name="autoseg-peak-memory", daemon=True)
        self._sampler.start()

    def __exit__(self, *exc_info) -> None:
        if self.source == "gpu":
            import tensorflow as tf

            self.peak_bytes = int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak_bytes = max(self._sampled_peak, _proc_status_bytes("VmRSS"))
        else:
            self.peak_bytes = _proc_status_bytes("VmHWM")
        self.growth_bytes = max(0, self.peak_bytes - self.start_bytes)
