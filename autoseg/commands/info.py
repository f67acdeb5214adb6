"""`autoseg info DATASET`: the dataset's fingerprint as a table."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="show a prepared dataset's classes, sizes and class balance",
        description="Show a prepared dataset's image sizes, channels, bit depth and value "
        "range, intensity rule, and per-class pixel fractions and image counts (its "
        "fingerprint; computed if dataset.yaml has none).",
    )
    parser.add_argument("dataset", metavar="DATASET", help="a prepared dataset folder")
    parser.add_argument(
        "--recompute", action="store_true",
        help="recompute the fingerprint from the masks instead of reading dataset.yaml",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from autoseg.data.dataset import compute_fingerprint, load_dataset

    dataset = load_dataset(args.dataset)
    fingerprint = dataset.fingerprint
    stale = _stale_class_names(dataset, fingerprint)
    if stale:
        print(
            f"Note: the fingerprint in {dataset.root / 'dataset.yaml'} counts classes "
            f"{', '.join(stale)}, not the classes listed (renamed?): recounted from the masks."
        )
    if args.recompute or not fingerprint or stale:
        fingerprint = compute_fingerprint(dataset)
    print(f"Dataset {dataset.root}")
    print(format_fingerprint(dataset, fingerprint))
    return 0


def _stale_class_names(dataset, fingerprint: dict[str, Any] | None) -> list[str]:
    """The fingerprint's class names when they are not the dataset's (classes renamed)."""
    counted = (fingerprint or {}).get("class_pixel_fraction")
    if isinstance(counted, dict) and list(counted) != list(dataset.classes):
        return [str(name) for name in counted]
    return []


def rename_hint(dataset) -> str:
    """How to rename the classes of `dataset`: what `load_dataset` reads, or `prepare` again."""
    return (
        f"Rename classes: edit the `classes:` list in {dataset.root / 'dataset.yaml'} (one "
        "name per mask value, in the order above), or prepare the source again with "
        "--labels FILE (one name a line) or, for colour masks, --palette FILE."
    )


def _size(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return "?"


def _depth(fingerprint: dict[str, Any]) -> str:
    """`16-bit (uint16), values 100..4100`, from the fingerprint's dtype and range."""
    dtypes = fingerprint.get("pixel_dtype")
    if not isinstance(dtypes, list) or not dtypes:
        return "? (fingerprint from an older autoseg: run `autoseg info --recompute`)"
    parts = []
    for name in dtypes:
        try:
            bits = np.dtype(name).itemsize * 8
        except TypeError:
            parts.append(str(name))
            continue
        kind = "float" if np.dtype(name).kind == "f" else "bit"
        parts.append(f"{bits}-{kind} ({name})")
    value_range = fingerprint.get("value_range")
    if isinstance(value_range, list) and len(value_range) == 2:
        parts[-1] += f", values {value_range[0]:g}..{value_range[1]:g}"
    return "; ".join(parts)


def format_fingerprint(dataset, fingerprint: dict[str, Any]) -> str:
    """Renders a fingerprint as lines of text: a summary, one row per class, how to rename.

    Args:
        dataset: The `Dataset` (for class order, palette, ignore index, channels and
            intensity rule).
        fingerprint: As returned by `compute_fingerprint`.
    """
    from autoseg.data.intensity import describe_rule

    sizes = fingerprint.get("image_size") or {}
    channels = fingerprint.get("channels")
    channel_text = ", ".join(map(str, channels)) if isinstance(channels, list) else str(channels)
    model_channels = dataset.channels
    lines = [
        f"Images    {fingerprint.get('num_images', '?')}",
        f"Size      {_size(sizes.get('min'))} min, {_size(sizes.get('median'))} median, "
        f"{_size(sizes.get('max'))} max (height x width)",
        f"Channels  {channel_text} (models take {model_channels}: "
        f"{'grey' if model_channels == 1 else 'RGB'})",
        f"Depth     {_depth(fingerprint)}",
        f"Scaling   {describe_rule(dataset.intensity)}",
        f"Ignored   {100 * float(fingerprint.get('ignore_fraction', 0.0)):.2f} % of pixels "
        f"(mask value {dataset.ignore_index})",
        "",
    ]
    fractions = fingerprint.get("class_pixel_fraction") or {}
    image_counts = fingerprint.get("class_image_count") or {}
    width = max([len("class"), *(len(c) for c in dataset.classes)])
    lines.append(
        f"{'index':>5}  {'class':<{width}}  {'colour':<15}  {'pixels %':>8}  {'images':>6}"
    )
    for i, name in enumerate(dataset.classes):
        colour = "(" + ", ".join(map(str, dataset.palette[i])) + ")"
        fraction = fractions.get(name)
        percent = f"{100 * fraction:.2f}" if isinstance(fraction, (int, float)) else "?"
        lines.append(
            f"{i:>5}  {name:<{width}}  {colour:<15}  {percent:>8}  {image_counts.get(name, '?'):>6}"
        )
    lines += ["", rename_hint(dataset)]
    return "\n".join(lines)
