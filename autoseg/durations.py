"""Durations as users write them (`30m`, `1h30m`, `90s`, seconds) and as autoseg prints them."""

from __future__ import annotations

import re

from autoseg.errors import ConfigError


def parse_duration(value: str | int | float | None, option: str = "--time-budget") -> float | None:
    """`"30m"`, `"1h30m"`, `"90s"`, `"2h"`, `600` (seconds) -> seconds; errors name `option`."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"{option} must be positive. Received: {value!r}.")
        return float(value)
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return parse_duration(float(text), option)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ConfigError(
            f"{option} {value!r} is not a duration. Use forms like 90s, 30m, 1h30m or seconds."
        )
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"{option} must be positive. Received: {value!r}.")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> `"1h5m3s"`, `"2m"`, `"3s"`: the form `parse_duration` reads back."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"
