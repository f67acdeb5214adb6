"""`autoseg models [--input-size N] [--classes C]`: the architectures autoseg can search."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the architectures with their options, backbones and sizes",
        description=(
            "List every registered architecture: aliases, options with defaults, "
            "backbones, valid input sizes and the parameter count at the given size."
        ),
    )
    parser.add_argument(
        "--input-size",
        type=_positive_int,
        default=256,
        metavar="N",
        help="input height and width for the parameter counts (default: 256)",
    )
    parser.add_argument(
        "--classes",
        type=_positive_int,
        default=3,
        metavar="C",
        help="number of classes for the parameter counts (default: 3)",
    )
    parser.set_defaults(run=run)


def _format_value(value) -> str:
    return "None" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    # TensorFlow loads here, not at import: `autoseg --help` must stay fast.
    from autoseg import models
    from autoseg.registry import ARCHITECTURES

    for row in models.list_architectures():
        # The test-only backbones (`tiny`) build, but are no choice for a user.
        offered = ARCHITECTURES.get(row["name"]).user_backbones
        row["backbones"] = [b for b in row["backbones"] if b in offered]
        if "backbone" in row["choices"]:
            row["choices"]["backbone"] = [b for b in row["choices"]["backbone"] if b in offered]
        divisor = row["divisor"]
        print(f"{row['name']}  ({row['family']} family)")
        if row["description"]:
            print(f"  {row['description']}")
        aliases = [
            alias + (f" ({', '.join(f'{k}={v}' for k, v in preset.items())})" if preset else "")
            for alias, preset in row["aliases"].items()
        ]
        print(f"  aliases:    {', '.join(aliases) or '-'}")
        print(f"  backbones:  {', '.join(row['backbones']) or '-'}")
        options = []
        for key, default in row["options"].items():
            choices = row["choices"].get(key)
            text = f"{key}={_format_value(default)}"
            if choices:
                text += f" [{'|'.join(map(_format_value, choices))}]"
            options.append(text)
        print(f"  options:    {', '.join(options) or '-'}")
        depends = row["divisor_depends_on"]
        print(
            f"  input size: a multiple of {divisor}"
            + (f" with the defaults (depends on {', '.join(depends)})" if depends else "")
        )
        size = args.input_size
        if size % divisor:
            lower = size // divisor * divisor
            nearest = ", ".join(str(n) for n in (lower, lower + divisor) if n > 0)
            print(f"  parameters: - ({size} is not a valid size; nearest: {nearest})")
        else:
            count = models.count_params(row["name"], args.classes, size)
            print(f"  parameters: {count:,} at {size}x{size}, {args.classes} classes")
        print()
    return 0
