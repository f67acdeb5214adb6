"""What a trial computes in and on: numeric precision and the distribution strategy.

- Precision (`--precision`): "float32"; "mixed" (Keras' `mixed_float16` policy: float16
  computation, float32 variables, the classifier head in float32, loss scaling by the
  `LossScaleOptimizer` that `Model.compile` wraps around the optimizer); or "bfloat16"
  (`mixed_bfloat16`: the same with bfloat16 computation, which has float32's range and needs
  no loss scaling). "auto" is mixed where a GPU is visible. On a CPU it is bfloat16 where
  the CPU computes bfloat16 natively (`avx512_bf16` or `amx_bf16`) and the architecture
  trains measurably faster in it with val mIoU within 0.01 of float32 (`BFLOAT16_MODELS`),
  else float32:
  without those instructions oneDNN emulates bfloat16, and float16 on CPU, both slower.
- Strategy (`--strategy`): "none" (one device), or "mirrored" (`tf.distribute.MirroredStrategy`:
  one replica per GPU, or per logical CPU device where no GPU is visible, each training on
  its own per-replica batch with gradients summed across replicas). "auto" is mirrored when
  more than one GPU is visible, else none.

The policy is set only while a trial's model is built and compiled (`dtype_policy`): layers
keep the policy they were built with, so nothing leaks into later code. The strategy is
handed to KerasTuner (`distribution_strategy=`), which builds and compiles every trial's model
under its scope; Keras then distributes `fit` over the replicas.

This module imports TensorFlow and Keras only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import sys
from typing import Any, Iterable, Iterator

from autoseg.errors import ConfigError

#: `--precision` values.
PRECISIONS = ("auto", "float32", "mixed", "bfloat16")

#: `--strategy` values.
STRATEGIES = ("auto", "mirrored", "none")

#: Keras dtype policy of each explicit precision (policy names map to themselves).
_POLICIES = {
    "float32": "float32",
    "mixed": "mixed_float16",
    "mixed_float16": "mixed_float16",
    "bfloat16": "mixed_bfloat16",
    "mixed_bfloat16": "mixed_bfloat16",
}

#: CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic that oneDNN uses: AVX-512
#: BF16 (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later) and AMX.
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

#: Architectures (registry names) that "auto" trains in mixed bfloat16 on a CPU with
#: `BFLOAT16_CPU_FLAGS`: those measured faster than float32 on such a CPU with val mIoU
#: within 0.01 of it on the mean over seeds, issue #13's rule (benchmarks/RESULTS.md, "bfloat16
#: on a CPU that has it" and "bfloat16 quality of SegNet, DeepLabV3+ and pix2pix"). Add one
#: with both measurements. The rule is per architecture; the encoders measured are named.
#: Speed-ups on an AMD EPYC with avx512_bf16 / an Intel Xeon with AMX, before batch norm was
#: fused (since, on the EPYC: BFLOAT16_SPEEDUP):
#: - The plain U-Net: 1.33x at 32 filters (1.47x at 64) / 1.67x, val mIoU +0.002 (last
#:   epoch) / +0.001 (best) over 3 seeds of 20 epochs at the recipe's width on CWFID
#:   (ResNet-50 encoder: speed only).
#: - DeepLabV3+ on ResNet-50: 1.39x / 1.54x, val mIoU -0.008 (last) / -0.007 (best) over 3
#:   seeds of 12 epochs, lower in all three (VGG16 and MobileNetV2 encoders not measured).
#: - SegNet with its own encoder: 1.20x / 2.05x, val mIoU -0.007 (last) / -0.002 (best) over
#:   5 seeds of 20 epochs (from -0.035 to +0.031 per seed); its ResNet-50 encoder (in the
#:   default space), VGG16 and MobileNetV2 not measured.
#: - Not light_unet: 1.31x on the EPYC since batch norm is fused (1.03x before; 0.80x with
#:   AMX before), but val mIoU -0.061 over 3 seeds of 20 epochs, lower in all three, its rare
#:   class lost ("light_unet in bfloat16" in RESULTS.md). Not pix2pix (1.70x / 2.14x, +0.077
#:   and -0.032 over 2 seeds of an adversarial training that swings up to 0.12 between epochs).
BFLOAT16_MODELS: frozenset[str] = frozenset({"unet", "segnet", "deeplabv3plus"})

#: Training img/s in mixed bfloat16 over float32, by the CPU's bfloat16 unit and architecture
#: (256², one run each). The plan's cost model multiplies an architecture's speed by it where
#: it trains in mixed bfloat16 on such a CPU; trials then correct it. U-Net's figure is at the
#: recipe's 32 filters (its gain grows with width).
#: - avx512_bf16: an AMD EPYC, with batch norm's fused kernel (RESULTS.md, "Batch
#:   normalization with the fused kernel"), which reads bfloat16 as it is and so raised every
#:   family's gain (U-Net 1.45x -> 1.62x in that run); pix2pix's is from before it ("bfloat16
#:   on a CPU that has it").
#: - amx_bf16: an Intel Xeon ("bfloat16 speed on the Intel Xeon with `amx_bf16`"), with
#:   Keras' unfused batch norm: not measured since, so low for every family.
BFLOAT16_SPEEDUP = {
    "amx_bf16": {"unet": 1.67, "segnet": 2.05, "deeplabv3plus": 1.54, "pix2pix": 2.14,
                 "light_unet": 0.80},
    "avx512_bf16": {"unet": 1.62, "segnet": 1.64, "deeplabv3plus": 1.64, "pix2pix": 1.70,
                    "light_unet": 1.31},
}


def check_precision(precision: Any) -> str:
    """Raises ConfigError unless `precision` is one of `PRECISIONS`; returns it."""
    return _check_choice("--precision", precision, PRECISIONS,
                         "auto: mixed on a GPU; on a CPU bfloat16 where it is measured "
                         "faster and the CPU has avx512_bf16 or amx_bf16, else float32")


def check_strategy(strategy: Any) -> str:
    """Raises ConfigError unless `strategy` is one of `STRATEGIES`; returns it."""
    return _check_choice("--strategy", strategy, STRATEGIES,
                         "auto: mirrored when more than one GPU is visible, else none")


def _check_choice(option: str, value: Any, valid: tuple[str, ...], hint: str) -> str:
    if value not in valid:
        raise ConfigError(f"{option} {value!r} is unknown. Valid values: {', '.join(valid)} ({hint}).")
    return value


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU.

    Importing TensorFlow only to learn there is no GPU costs seconds and ~0.5 GB:
    without a device file or with CUDA_VISIBLE_DEVICES empty, the answer is no without it.
    """
    if "tensorflow" not in sys.modules and (
        os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not glob.glob("/dev/nvidia[0-9]*")
    ):
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def gpu_count() -> int:
    """The number of GPUs TensorFlow sees (0 without importing TensorFlow where there is none)."""
    if not gpu_visible():
        return 0
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity where the OS has one (Linux), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=8)
def read_cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where there is no such file).

    Args:
        cpuinfo: The file to read. Defaults to "/proc/cpuinfo".
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(
    precision: str = "auto",
    model: str | None = None,
    cpu_flags: Iterable[str] | None = None,
) -> str:
    """The Keras dtype policy a precision stands for, for one architecture.

    Args:
        precision: "auto", "float32", "mixed" or "bfloat16" (or a policy name this returns).
            Defaults to "auto": "mixed_float16" when a GPU is visible; on a CPU,
            "mixed_bfloat16" when `model` is in `BFLOAT16_MODELS` and the CPU has one of
            `BFLOAT16_CPU_FLAGS`; else "float32".
        model: The architecture that will train (its registry name), or None
            (unknown: "auto" then never picks bfloat16). Defaults to None.
        cpu_flags: The CPU's flags; None reads them (`read_cpu_flags()`). For tests.

    Returns:
        "float32", "mixed_float16" or "mixed_bfloat16".

    Raises:
        ConfigError: an unknown precision.

    Example:
    ```python
    resolve_precision("bfloat16")  # 'mixed_bfloat16'
    resolve_precision("auto", model="unet", cpu_flags={"avx512_vnni"})  # on a CPU: 'float32'
    ```
    """
    if precision in _POLICIES:
        return _POLICIES[precision]
    check_precision(precision)
    if gpu_count():
        return "mixed_float16"
    if model not in BFLOAT16_MODELS:
        return "float32"
    flags = read_cpu_flags() if cpu_flags is None else frozenset(cpu_flags)
    return "mixed_bfloat16" if flags & BFLOAT16_CPU_FLAGS else "float32"


def training_speedup(model: str | None, policy: str) -> float:
    """How much faster an architecture trains under `policy` than in float32 on this CPU.

    `BFLOAT16_SPEEDUP` of the CPU's bfloat16 unit (AMX where it has it) for mixed bfloat16 on
    a CPU with native bfloat16, else 1 (what is not measured is left to the trials' own epoch
    times).
    """
    flags = read_cpu_flags()
    if policy != "mixed_bfloat16" or not flags & BFLOAT16_CPU_FLAGS:
        return 1.0
    unit = "amx_bf16" if "amx_bf16" in flags else "avx512_bf16"
    return BFLOAT16_SPEEDUP[unit].get(model or "", 1.0)


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Sets Keras' global dtype policy inside the block and restores the previous one after.

    Args:
        policy: A Keras policy name ("float32", "mixed_float16").
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_strategy(strategy: str = "auto"):
    """The `tf.distribute.Strategy` a strategy name stands for.

    Args:
        strategy: "auto", "mirrored" or "none". Defaults to "auto": a `MirroredStrategy` over
            the GPUs when more than one is visible, else None.

    Returns:
        A `tf.distribute.MirroredStrategy`, or None (train on the default device).
        "mirrored" without a GPU mirrors over the logical CPU devices (one replica unless
        they were configured with `tf.config.set_logical_device_configuration`).

    Raises:
        ConfigError: an unknown strategy.
    """
    check_strategy(strategy)
    gpus = gpu_count()
    if strategy == "none" or (strategy == "auto" and gpus < 2):
        return None
    import tensorflow as tf

    if gpus:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])


def num_replicas(strategy) -> int:
    """The replicas a strategy trains on in sync (1 for None)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)
