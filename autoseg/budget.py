"""Training-memory estimate -> admissible batch sizes.

The idea is nnU-Net's (`static_estimate_VRAM_usage`): bound the batch size by a memory
estimate before training, so a trial never starts with a batch that cannot fit. Here the
estimate is linear, and its constants were measured on the machines autoseg runs on:

    total = fixed + overhead + parameter_bytes + batch * per_sample
    overhead        = base + per_variable * trainable variables
    parameter_bytes = 4 * params * 4 bytes          (weights, gradients, Adam's two slots)
    per_sample      = factor * (activation_elements + temporary_elements) * bytes_per_element

`activation_elements` is the per-sample sum of every layer output's elements: what the
forward pass keeps for the backward pass, give or take. `temporary_elements` adds the large
per-op temporaries that no layer outputs (dilated convolutions' space-to-batch copies).
`factor` absorbs the rest (outputs freed early, smaller temporaries, gradient buffers alive
at the peak).

The constants (`FIXED_BYTES`, the overhead, `FAMILY_ACTIVATION_FACTORS`,
`BACKBONE_ACTIVATION_SCALES`) come from `benchmarks/memory.py` (peak-RSS growth over build,
compile and two `fit` steps, one fresh process per configuration, least squares over the
runs). `benchmarks/RESULTS.md`, "Training memory", holds the calibration: its commands, the
fitted values, the held-out check and why the families differ. Briefly: DeepLabV3+'s dilated
convolutions make space-to-batch copies that no layer outputs (`temporary_elements`);
SegNet's index pooling builds full-resolution temporaries of its own; pix2pix counts its
discriminator twice; small models are dominated by the per-variable overhead.

Within a family the measured growth is linear in batch. Only CPU was measured (no GPU here).
On a GPU the same formula is compared with the device's free memory; the host-side
constants (`FIXED_BYTES`, the overhead) then make it conservative.

Precision (`precision=`): the calibration is float32, 4 bytes per activation element.
Under mixed precision (`mixed_float16` on a GPU, `mixed_bfloat16` on a CPU with bf16
instructions, see `autoseg.devices`) layer outputs and temporaries are 16-bit, so
`bytes_per_element` is 2 and the per-sample term halves; parameters, gradients and Adam's
slots stay float32 (`parameter_bytes` unchanged), as do the factor and the overhead. The
16-bit case is not calibrated: what it leaves out is small, the float32 classifier head
(`num_classes` channels), BatchNormalization's float32 statistics and the per-step 16-bit
copies of the weights (2 bytes per parameter).

Replicas (`tf.distribute.MirroredStrategy`): every device holds the whole model and trains on
its own per-replica batch, so the estimate at the per-replica batch size is compared with one
device's budget. (Logical CPU devices, as the tests use, share one memory: the estimate then
understates the process by the other replicas' share.)

This module imports TensorFlow and Keras only inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from typing import Any, Iterable

from autoseg import devices, model_contract
from autoseg.errors import BudgetError, ConfigError

#: Per-sample bytes = factor x (layer-output + temporary) bytes, for families not below: the
#: one common factor of the calibration fit (benchmarks/RESULTS.md, "Training memory").
ACTIVATION_FACTOR = 0.87

#: The factor of each measured family (`ArchitectureSpec.family`), from the same fit with one
#: factor per family. Why they differ: see benchmarks/RESULTS.md, "Training memory".
FAMILY_ACTIVATION_FACTORS: dict[str, float] = {
    # U-Net: 0.84 in the fit on AVX-512 CPUs; on an AVX2-only EPYC a wide U-Net (16 filters,
    # 128 px, batch 8) measured 1.28x the 0.84 prediction (oneDNN's AVX2 convolutions keep
    # more scratch; 585 MiB against 432). 1.1 covers both: about 1.1-1.17x there, ~0.86x on
    # the fitted machines (the test bounds are 0.75-1.25).
    "unet": 1.1,
    "segnet": 0.99,
    "deeplabv3plus": 1.01,
    # pix2pix: 0.83 in the fit; its generator is a U-Net, and on the AVX2-only EPYC it
    # measured 1.27x the 0.83 prediction (635 MiB against 502, 16 filters, 128 px, batch 8,
    # in the two-process test suite). At 1.0 the test passes there alone; on the fitted
    # machines it predicts ~1.2x what they measured (0.97x at 0.83): the safe side.
    "pix2pix": 1.0,
}

#: Backbones whose models measure above their family's factor: the factor is scaled by this.
#: MobileNetV2 measured 1.09-1.26x (four runs, DeepLabV3+ at 128 px; the inverted residuals'
#: 6x expansions and depthwise convolutions keep temporaries the layer outputs do not show).
BACKBONE_ACTIVATION_SCALES: dict[str, float] = {"mobilenetv2": 1.15}

#: Resident memory of a training process before any model exists: Python, TensorFlow, Keras,
#: the tf.data runtime (RSS measured after those imports and building the dataset).
FIXED_BYTES = 640 * 2**20

#: What building and fitting any model adds regardless of its size and batch (the
#: least-squares intercept of the calibration).
TRAINING_OVERHEAD_BYTES = 43 * 2**20

#: What each trainable variable adds regardless of its size and the batch: the traced train
#: step holds forward, gradient and optimizer ops per variable, and their kernels' state.
#: Measured: at 32 px, models of 44 to 241 variables grow by 150 to 680 MiB beyond their
#: parameter bytes whatever their parameter count: this term dominates small models.
OVERHEAD_BYTES_PER_VARIABLE = int(2.41 * 2**20)

#: Bytes per parameter during training: weights, gradients, Adam's two moment slots (float32).
PARAMETER_COPIES = 4

#: Bytes per activation element of each precision (a Keras dtype policy name): mixed
#: precision computes in 16 bits and keeps its variables in float32 (module docstring).
BYTES_PER_ACTIVATION_ELEMENT = {"float32": 4, "mixed_float16": 2, "mixed_bfloat16": 2}

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
    forms = (
        "a positive number of bytes or a string such as '8GB', '512MB', '1.5GiB' "
        "(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
    )
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


def _training_nodes(model: Any, name: str, calls: int = 1):
    """Yields `(node, calls_per_step, model_name)` for every layer call training runs."""
    graph = _graph_of(model)
    extra = [(sub, calls) for sub, calls in model_contract.training_passes(model)
             if _graph_of(sub) is not None]
    if graph is None and not extra:
        extra = [(sub, 1) for sub in getattr(model, "layers", []) if _graph_of(sub) is not None]
        if not extra:
            raise ConfigError(
                f"Cannot count the activations of {name!r} ({type(model).__name__}): it is "
                "neither a built functional/Sequential model nor a model made of them. "
                "Build it with a fixed input shape (e.g. `keras.Input((128, 128, 3))`)."
            )
    for sub, sub_calls in extra:
        yield from _training_nodes(sub, f"{name}/{sub.name}", calls * sub_calls)
    if graph is None:
        return
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            operation = node.operation
            if node.is_input or type(operation).__name__ == "InputLayer":
                continue
            nested = operation is not model and _graph_of(operation) is not None
            if operation is not None and nested:
                yield from _training_nodes(operation, f"{name}/{operation.name}", calls)
            else:
                yield node, calls, name


def _sample_shape(tensor, node, name: str) -> tuple[int, ...]:
    shape = tuple(tensor.shape)[1:]
    if any(d is None for d in shape):
        raise ConfigError(
            f"Cannot count the activations of {name!r}: layer "
            f"{getattr(node.operation, 'name', node.operation)!r} has output shape "
            f"{tuple(tensor.shape)} with an unknown dimension. Build the model "
            "for a fixed input size (e.g. `input_shape=(128, 128, 3)`)."
        )
    return tuple(int(d) for d in shape)


def _activation_elements(model: Any, name: str) -> int:
    return sum(
        calls * math.prod(_sample_shape(tensor, node, model_name))
        for node, calls, model_name in _training_nodes(model, name)
        for tensor in node.outputs
    )


def temporary_elements(model: Any) -> int:
    """Per-sample elements of the per-op temporaries that the layer outputs do not show.

    Counted today: dilated convolutions. TensorFlow runs a convolution with
    `dilation_rate` r > 1 as space-to-batch, a dense convolution, batch-to-space. The
    space-to-batch copy of the input is padded on each side by the dilated kernel's reach and
    then up to a multiple of r, and both it and the convolution's padded output are kept for
    the backward pass. On a small feature map with a large rate this dwarfs the layer's output:
    DeepLabV3+'s ASPP at rate 18 on an 8x8 map of 2048 channels copies the input into a
    54x54 one, 45 times its size. (Depthwise and separable convolutions: likewise, with the
    depthwise channels.) autoseg's own atrous layers run less or none of it: only the taps
    that reach the map, and no space-to-batch where TensorFlow dilates natively
    (`autoseg.backbones.space_to_batch_convolution`).

    Args:
        model: A built Keras model with a fixed input size.

    Returns:
        The number of elements, for one sample (0 for a model without dilated convolutions).

    Raises:
        ConfigError: as for `activation_elements`.
    """
    from autoseg.backbones import space_to_batch_convolution

    total = 0
    for node, calls, _ in _training_nodes(model, getattr(model, "name", "model")):
        layer = node.operation
        rates = getattr(layer, "dilation_rate", None)
        kernel = getattr(layer, "kernel_size", None)
        if rates is None or kernel is None or all(int(r) == 1 for r in _as_tuple(rates)):
            continue
        channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
        x = tuple(node.input_tensors[0].shape)[1:]
        spatial, in_channels = (x[1:], x[0]) if channels_first else (x[:-1], x[-1])
        kernel, rates = space_to_batch_convolution(layer, spatial)
        if all(int(r) == 1 for r in rates):  # autoseg's atrous layers, natively or 1x1
            continue
        rates, kernel = _as_tuple(rates, len(spatial)), _as_tuple(kernel, len(spatial))
        reach = [(k - 1) * r for k, r in zip(kernel, rates)]
        same = str(getattr(layer, "padding", "valid")).lower() == "same"
        pad = reach if same else [0] * len(reach)
        padded = [-(-(size + p) // r) * r for size, p, r in zip(spatial, pad, rates)]
        batched_out = [p - q for p, q in zip(padded, reach)]
        if hasattr(layer, "depth_multiplier"):  # depthwise / separable: the depthwise part
            mid_channels = in_channels * int(layer.depth_multiplier)
        else:
            mid_channels = int(node.outputs[0].shape[1 if channels_first else -1])
        total += calls * (math.prod(padded) * in_channels + math.prod(batched_out) * mid_channels)
        if hasattr(layer, "pointwise_kernel") or type(layer).__name__.startswith("Separable"):
            total += calls * math.prod(spatial) * mid_channels  # depthwise result, not an output
    return total


def _as_tuple(value, rank: int | None = None) -> tuple[int, ...]:
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),)
    return values * rank if rank and len(values) == 1 else values


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory of training one model at one batch size.

    Attributes:
        batch_size: The batch size estimated for.
        activation_elements: Per-sample layer-output elements (`activation_elements`).
        temporary_elements: Per-sample per-op temporaries (`temporary_elements`).
        factor: The activation factor used.
        fixed_bytes: The process before any model exists (`FIXED_BYTES`).
        overhead_bytes: What building and fitting the model adds whatever the batch:
            `TRAINING_OVERHEAD_BYTES + OVERHEAD_BYTES_PER_VARIABLE * trainable variables`.
        parameter_bytes: Weights, gradients and Adam's two slots: 4 x params x 4 bytes
            (float32 under mixed precision too).
        per_sample_bytes: factor x (activation + temporary elements) x `bytes_per_element`.
        bytes_per_element: Bytes per activation element: 4 (float32) or 2 (mixed precision).
        total_bytes: The predicted peak resident memory of the training process.
        growth_bytes: `total_bytes - fixed_bytes`: what the model adds to the process.
    """

    batch_size: int
    activation_elements: int
    temporary_elements: int
    factor: float
    fixed_bytes: int
    overhead_bytes: int
    parameter_bytes: int
    per_sample_bytes: int
    bytes_per_element: int = 4
    total_bytes: int = dataclasses.field(init=False)
    growth_bytes: int = dataclasses.field(init=False)

    def __post_init__(self):
        growth = (
            self.overhead_bytes + self.parameter_bytes + self.batch_size * self.per_sample_bytes
        )
        object.__setattr__(self, "growth_bytes", int(growth))
        object.__setattr__(self, "total_bytes", int(self.fixed_bytes + growth))


def activation_factor(family: str | None = None) -> float:
    """The calibrated activation factor of a family (`ACTIVATION_FACTOR` if it has none)."""
    return FAMILY_ACTIVATION_FACTORS.get(family, ACTIVATION_FACTOR) if family else ACTIVATION_FACTOR


def _factor(model: Any, factor: float | None, family: str | None) -> float | None:
    """The given factor, else the family's, scaled for the model's backbone.

    The backbone is `model_contract.backbone_of(model)`.
    """
    if factor is not None:
        return factor
    backbone = model_contract.backbone_of(model)
    if backbone in BACKBONE_ACTIVATION_SCALES:
        return activation_factor(family) * BACKBONE_ACTIVATION_SCALES[backbone]
    return None


def _check_batch(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"A batch size must be a positive integer. Received: batch_size={batch_size!r}."
        )
    return batch_size


def _bytes_per_element(precision: str) -> int:
    if precision not in BYTES_PER_ACTIVATION_ELEMENT:
        raise ConfigError(
            f"Unknown precision {precision!r}. Valid: {', '.join(BYTES_PER_ACTIVATION_ELEMENT)}."
        )
    return BYTES_PER_ACTIVATION_ELEMENT[precision]


def _model_counts(model: Any) -> tuple[int, int, int, int]:
    """`(activation elements, temporary elements, parameters, trainable variables)`."""
    return (activation_elements(model), temporary_elements(model), int(model.count_params()),
            len(model.trainable_weights))


def _estimate(elements: int, temporaries: int, params: int, variables: int, batch_size: int,
              precision: str, factor: float | None, family: str | None) -> MemoryEstimate:
    factor = activation_factor(family) if factor is None else float(factor)
    if not factor > 0:
        raise ConfigError(f"The activation factor must be positive. Received: factor={factor!r}.")
    element_bytes = _bytes_per_element(precision)
    return MemoryEstimate(
        batch_size=_check_batch(batch_size),
        activation_elements=int(elements),
        temporary_elements=int(temporaries),
        factor=factor,
        fixed_bytes=FIXED_BYTES,
        overhead_bytes=TRAINING_OVERHEAD_BYTES + OVERHEAD_BYTES_PER_VARIABLE * int(variables),
        parameter_bytes=PARAMETER_COPIES * int(params) * 4,
        per_sample_bytes=int(round(factor * (elements + temporaries) * element_bytes)),
        bytes_per_element=element_bytes,
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
        precision: The Keras dtype policy training runs under: "float32" (4 bytes per
            activation element, the calibrated case), "mixed_float16" or "mixed_bfloat16"
            (2 bytes; parameters and optimizer state stay float32; not calibrated, see the
            module docstring). Defaults to "float32".
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
    return _estimate(*_model_counts(model), batch_size, precision, _factor(model, factor, family),
                     family)


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
    counts = _model_counts(model)
    factor = _factor(model, factor, family)
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
    if devices.gpu_visible():
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
            raise ConfigError(
                f"`device` must be None, 'cpu' or 'gpu'. Received: device={device!r}."
            )
        self.device = device
        self.interval = interval
        self.start_bytes = self.peak_bytes = self.growth_bytes = 0
        self.source = None
        self._sampler = None
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        device = self.device
        if device is None:
            device = "gpu" if "tensorflow" in sys.modules and devices.gpu_visible() else "cpu"
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
