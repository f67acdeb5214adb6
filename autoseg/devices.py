"""What a trial computes in and on: numeric precision and the distribution strategy.

- Precision (`--precision`): "float32", or "mixed" (Keras' `mixed_float16` policy: float16
  computation, float32 variables, the classifier head in float32, loss scaling by the
  `LossScaleOptimizer` that `Model.compile` wraps around the optimizer). "auto" is mixed
  where a GPU is visible and float32 on CPU, where float16 computation is slower.
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
from typing import Any, Iterator

from autoseg.errors import ConfigError

#: `--precision` values.
PRECISIONS = ("auto", "float32", "mixed")

#: `--strategy` values.
STRATEGIES = ("auto", "mirrored", "none")

#: Keras dtype policy of each explicit precision (policy names map to themselves).
_POLICIES = {"float32": "float32", "mixed": "mixed_float16", "mixed_float16": "mixed_float16"}


def check_precision(precision: Any) -> str:
    """Raises ConfigError unless `precision` is one of `PRECISIONS`; returns it."""
    return _check_choice("--precision", precision, PRECISIONS, "auto: mixed on a GPU, float32 on CPU")


def check_strategy(strategy: Any) -> str:
    """Raises ConfigError unless `strategy` is one of `STRATEGIES`; returns it."""
    return _check_choice("--strategy", strategy, STRATEGIES,
                         "auto: mirrored when more than one GPU is visible, else none")


def _check_choice(option: str, value: Any, valid: tuple[str, ...], hint: str) -> str:
    if value not in valid:
        raise ConfigError(f"{option} {value!r} is unknown. Valid values: {', '.join(valid)} ({hint}).")
    return value


def gpu_count() -> int:
    """The number of GPUs TensorFlow sees (0 without importing TensorFlow where there is none)."""
    from autoseg.budget import _gpu_visible

    if not _gpu_visible():
        return 0
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision: str = "auto") -> str:
    """The Keras dtype policy name a precision stands for.

    Args:
        precision: "auto", "float32" or "mixed" (or a policy name this returns).
            Defaults to "auto": "mixed_float16" when a GPU is visible, else "float32".

    Returns:
        "float32" or "mixed_float16".

    Raises:
        ConfigError: an unknown precision.
    """
    if precision in _POLICIES:
        return _POLICIES[precision]
    check_precision(precision)
    return "mixed_float16" if gpu_count() else "float32"


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
