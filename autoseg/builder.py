"""Build a registered architecture by name, with its options validated.

`build("unet_resnet", num_classes=3, input_shape=(256, 256, 3))` resolves names and aliases
case-insensitively through the registry, rejects unknown options and invalid values with a
`ConfigError` that lists the valid ones, and checks the input size against the
architecture's divisor before building anything.

This module needs only the registry, not the architectures: an architecture that wraps
another (pix2pix around its generator) builds it through here. Users import
`autoseg.models`, which also registers every architecture.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import keras

from autoseg.errors import ConfigError
from autoseg.registry import ARCHITECTURES, ArchitectureSpec


def resolve(name: str, **options: Any) -> tuple[ArchitectureSpec, dict[str, Any]]:
    """Resolves a name or alias and validates options without building anything.

    Args:
        name: An architecture name or alias, case-insensitive.
        **options: Options overriding the defaults (and an alias's presets).

    Returns:
        `(spec, options)` where `options` holds every option of the architecture: the
        defaults, then the alias's presets, then `options`.

    Raises:
        ConfigError: unknown name, unknown option, a value outside `spec.choices`, or a
            value of the wrong type.
    """
    spec, preset = ARCHITECTURES.resolve(name)
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        valid = ", ".join(f"{key}={value!r}" for key, value in spec.defaults.items())
        raise ConfigError(
            f"Unknown option(s) {', '.join(unknown)} for architecture {spec.name!r}. "
            f"Valid options (defaults): {valid or 'none'}."
        )
    merged = {**spec.defaults, **preset, **options}
    for key, value in merged.items():
        _check_type(spec, key, value)
        allowed = spec.choices.get(key)
        if allowed is not None and _normalise(value) not in [_normalise(a) for a in allowed]:
            raise ConfigError(
                f"Invalid {key} for architecture {spec.name!r}. Received: {key}={value!r}. "
                f"Valid values: {', '.join(map(repr, allowed))}."
            )
        if allowed is not None and isinstance(value, str):
            merged[key] = next(a for a in allowed if _normalise(a) == _normalise(value))
    return spec, merged


def _normalise(value):
    return value.lower() if isinstance(value, str) else value


def _check_type(spec: ArchitectureSpec, key: str, value) -> None:
    """Checks `value` against the type of the option's default (None accepts anything)."""
    default = spec.defaults[key]
    if default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, numbers.Integral):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif isinstance(default, numbers.Real):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"Option {key} of architecture {spec.name!r} must be of type {type(default).__name__} "
            f"(default {default!r}). Received: {key}={value!r}"
        )


def input_divisor(name: str, **options: Any) -> int:
    """The number that input height and width must be multiples of, for these options."""
    spec, merged = resolve(name, **options)
    return int(spec.input_divisor(merged))


def divisor_options(spec: ArchitectureSpec, options: Mapping[str, Any]) -> list[str]:
    """The options (among those with choices) whose value changes the input divisor."""
    current = spec.input_divisor(options)
    relevant = []
    for key, allowed in spec.choices.items():
        for value in allowed:
            try:
                if spec.input_divisor({**options, key: value}) != current:
                    relevant.append(key)
                    break
            except Exception:  # a divisor function that cannot take this combination
                continue
    return relevant


def check_input_shape(spec: ArchitectureSpec, options: Mapping[str, Any], input_shape) -> tuple:
    """Validates `(H, W, 3)` against the divisor; returns it as a tuple of ints.

    Raises:
        ConfigError: a malformed shape, or H or W not a multiple of the divisor; the
            message names the nearest valid sizes.
    """
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if (
        shape is None
        or len(shape) != 3
        or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in shape)
        or shape[2] not in (1, 3)
    ):
        raise ConfigError(
            f"input_shape must be (height, width, 3) for RGB or (height, width, 1) for grey "
            f"images, with positive integer sizes. "
            f"Received: input_shape={input_shape!r}"
        )
    divisor = int(spec.input_divisor(options))
    for axis, size in (("height", shape[0]), ("width", shape[1])):
        if size % divisor:
            label = "size" if shape[0] == shape[1] else axis
            lower = size // divisor * divisor
            nearest = [n for n in (lower, lower + divisor) if n > 0]
            context = ", ".join(f"{k} {options[k]}" for k in divisor_options(spec, options))
            raise ConfigError(
                f"input {label} {size} is not a multiple of {divisor} for {spec.name}"
                + (f" with {context}" if context else "")
                + f"; nearest valid sizes: {', '.join(map(str, nearest))}."
            )
    return tuple(int(v) for v in shape)


def build(
    name: str, num_classes: int, input_shape: tuple = (256, 256, 3), **options: Any
) -> keras.Model:
    """Builds a registered architecture.

    Args:
        name: Architecture name or alias (e.g. "unet", "unet_resnet"), case-insensitive.
        num_classes: Number of classes (>= 2; softmax output).
        input_shape: `(H, W, 3)`. Defaults to (256, 256, 3).
        **options: Architecture options; `describe(name)["options"]` lists them.

    Returns:
        A functional `keras.Model` named after the architecture: float32 RGB 0..255 in,
        `(H, W, num_classes)` float32 softmax probabilities out.

    Raises:
        ConfigError: unknown name or option, invalid value, or an input size that is not a
            multiple of the architecture's divisor.

    Example:
    ```python
    model = build("unet", num_classes=3, input_shape=(128, 128, 3), depth=3, filters=16)
    ```
    """
    spec, merged = resolve(name, **options)
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 2
    ):
        raise ConfigError(
            f"num_classes must be an integer >= 2 (background counts as a class). "
            f"Received: num_classes={num_classes!r}"
        )
    shape = check_input_shape(spec, merged, input_shape)
    model = spec.builder(int(num_classes), shape, **merged)
    if model.name != spec.name:
        model = keras.Model(model.inputs, model.outputs, name=spec.name)
    return model
