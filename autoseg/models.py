"""Every registered architecture: build one by name, with its options validated, and list them.

Importing this module registers every architecture (`autoseg.architectures`). `build`,
`resolve`, `input_divisor` and `check_input_shape` live in `autoseg.builder` (which an
architecture may import, as pix2pix does for its generator) and are re-exported here;
`describe`, `list_architectures` and the README's model table are this module's own.
"""

from __future__ import annotations

from typing import Any, Mapping

import autoseg.architectures  # noqa: F401  (registers every architecture)
from autoseg.backbones import backbone_names
from autoseg.builder import build, check_input_shape, divisor_options, input_divisor, resolve
from autoseg.registry import ARCHITECTURES

__all__ = ["build", "check_input_shape", "count_params", "describe", "input_divisor",
           "list_architectures", "model_table_markdown", "resolve"]


def count_params(name: str, num_classes: int, input_size=256, **options: Any) -> int:
    """The number of weights of `build(name, ...)` at `input_size` (int or (H, W))."""
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    return int(build(name, num_classes, (height, width, 3), **options).count_params())


def describe(name: str) -> dict[str, Any]:
    """One row for listing an architecture.

    Returns:
        A dict with `name`, `family`, `aliases` (`{alias: preset options}`), `backbones`,
        `options` (defaults), `choices`, `divisor` (with the default options),
        `divisor_depends_on` (options that change it) and `description`.
    """
    spec, _ = ARCHITECTURES.resolve(name)
    defaults = dict(spec.defaults)
    return {
        "name": spec.name,
        "family": spec.family,
        "aliases": {
            alias: preset
            for alias, (target, preset) in sorted(ARCHITECTURES.aliases().items())
            if target == spec.name
        },
        "backbones": list(spec.backbones),
        "options": defaults,
        "choices": {key: list(values) for key, values in spec.choices.items()},
        "divisor": int(spec.input_divisor(defaults)),
        "divisor_depends_on": divisor_options(spec, defaults),
        "description": spec.description,
    }


def list_architectures() -> list[dict[str, Any]]:
    """`describe()` of every registered architecture, sorted by name."""
    return [describe(name) for name in ARCHITECTURES.names()]


def _alias_text(alias: str, preset: Mapping[str, Any]) -> str:
    if not preset:
        return f"`{alias}`"
    return f"`{alias}` ({', '.join(f'{k}={v}' for k, v in preset.items())})"


def model_table_markdown(input_size: int = 256, num_classes: int = 3) -> str:
    """The README's model table, generated from the registry.

    Columns: model, aliases (with their preset options), backbones (without test-only
    ones), parameters at `input_size`² with the default options (and default backbone),
    and the input divisor.
    """
    real_backbones = set(backbone_names(include_test_backbones=False)) | {"none"}
    lines = [
        f"| Model | Aliases | Backbones | Parameters ({input_size}², {num_classes} classes) "
        "| Input size multiple of |",
        "|---|---|---|---:|---|",
    ]
    for row in list_architectures():
        aliases = ", ".join(_alias_text(a, p) for a, p in row["aliases"].items()) or "-"
        backbones = [b for b in row["backbones"] if b in real_backbones]
        default_backbone = row["options"].get("backbone")
        backbone_text = (
            ", ".join(f"**{b}**" if b == default_backbone else b for b in backbones) or "-"
        )
        params = count_params(row["name"], num_classes, input_size)
        divisor = str(row["divisor"])
        if row["divisor_depends_on"]:
            divisor += f" (varies with {', '.join(row['divisor_depends_on'])})"
        lines.append(
            f"| `{row['name']}` | {aliases} | {backbone_text} | {params:,} | {divisor} |"
        )
    return "\n".join(lines) + "\n"
