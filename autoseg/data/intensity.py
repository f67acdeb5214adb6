"""The rule that brings images deeper than 8 bits to the models' 0..255 float range.

Models take float32 pixel values in 0..255 (each backbone normalises from there). 8-bit
images are used as they are, with no rule. Images of more than 8 bits (12- and 16-bit
microscopy or camera images, float TIFFs) would lose their contrast if cut to 8 bits (a
12-bit image of values 100..4100 becomes 0..16), so `prepare` measures the dataset and
records a rule in `dataset.yaml`:

```yaml
intensity: {rule: percentile_clip, low: 112.0, high: 4087.0, percentiles: [0.5, 99.5],
            dtype: uint16}
```

`percentile_clip` maps `low` to 0 and `high` to 255 linearly and clips outside: `low` and
`high` are the 0.5th and 99.5th percentiles of a sample of every image's pixels, so a few
hot or dead pixels do not squeeze the range (nnU-Net normalises non-CT images from the same
percentiles). One range serves every channel, so the colours of an RGB image keep their
balance. Training, `predict`, `evaluate` and every exported format apply the same rule: the
exported `autoseg.json` carries it under `intensity`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np

from autoseg.errors import DatasetError

RULE = "percentile_clip"
PERCENTILES = (0.5, 99.5)
#: Pixel values sampled per image for the percentiles (all of them when fewer).
SAMPLE_PER_IMAGE = 100_000
_KEYS = {"rule", "low", "high", "percentiles", "dtype"}


def sample_values(image: np.ndarray, rng: np.random.Generator, count: int = SAMPLE_PER_IMAGE) -> np.ndarray:
    """Up to `count` pixel values of `image` (every channel), drawn without replacement."""
    values = np.asarray(image).reshape(-1)
    if values.size <= count:
        return values.astype(np.float64)
    return values[rng.choice(values.size, count, replace=False)].astype(np.float64)


def percentiles(samples: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """The `PERCENTILES` of the finite sampled values (None when there are none)."""
    values = np.concatenate([np.asarray(v, np.float64).ravel() for v in samples] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    low, high = np.percentile(values, PERCENTILES)
    return float(low), float(high)


def make_rule(low: float, high: float, value_range: Sequence[float], dtype: str) -> dict[str, Any]:
    """The `percentile_clip` rule from a dataset's percentiles.

    Args:
        low, high: The 0.5th and 99.5th percentiles of the pixel values (`percentiles`).
        value_range: `[min, max]` over every pixel, used when the percentiles coincide.
        dtype: The images' NumPy dtype name, e.g. "uint16".

    Returns:
        The rule as plain Python values (for `yaml.safe_dump`).
    """
    low, high = float(low), float(high)
    if not high > low:  # an (almost) constant dataset: the full range, or any unit step
        low, high = float(value_range[0]), float(value_range[1])
        if not high > low:
            high = low + 1.0
    return {"rule": RULE, "low": low, "high": high, "percentiles": list(PERCENTILES),
            "dtype": str(dtype)}


def check_rule(rule: Any, where: str) -> dict[str, Any] | None:
    """Validates a rule read from `where` (a dataset.yaml or autoseg.json); None is no rule.

    Raises:
        DatasetError: an unknown rule or key, or `low`/`high` that are not finite numbers
            with `low < high`.
    """
    if rule is None:
        return None
    example = (f"Expected e.g. `intensity: {{rule: {RULE}, low: 100, high: 4000}}` "
               "(written by `autoseg prepare`).")
    if not isinstance(rule, dict) or rule.get("rule") != RULE:
        raise DatasetError(
            f"{where}: `intensity` must be a mapping with rule: {RULE}. "
            f"Received: {rule!r:.200}. {example}"
        )
    unknown = sorted(set(rule) - _KEYS)
    if unknown:
        raise DatasetError(
            f"{where}: unknown key(s) {unknown} in `intensity`. Valid keys: {sorted(_KEYS)}."
        )
    bounds = []
    for key in ("low", "high"):
        value = rule.get(key)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise DatasetError(
                f"{where}: intensity.{key} must be a finite number. Received: {value!r}. {example}"
            )
        bounds.append(float(value))
    if not bounds[0] < bounds[1]:
        raise DatasetError(
            f"{where}: intensity.low must be below intensity.high. "
            f"Received: low={bounds[0]}, high={bounds[1]}."
        )
    return {**rule, "low": bounds[0], "high": bounds[1]}


def apply_rule(image: np.ndarray, rule: dict[str, Any]) -> np.ndarray:
    """Scales raw pixel values to float32 0..255: `(v - low) / (high - low) * 255`, clipped."""
    low, high = float(rule["low"]), float(rule["high"])
    scaled = (np.asarray(image, np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0, out=scaled)


def describe_rule(rule: dict[str, Any] | None) -> str:
    """One line for people: what the rule does."""
    if rule is None:
        return "none (8-bit pixels used as they are)"
    low, high = rule["percentiles"] if "percentiles" in rule else ("?", "?")
    return (f"{rule['rule']}: {rule['low']:g}..{rule['high']:g} -> 0..255, clipped "
            f"(the {low}th and {high}th percentiles of the pixels)")
