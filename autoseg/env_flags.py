"""On/off switches read from the environment (`AUTOSEG_TRIAL_PROCESS=0` and the like)."""

from __future__ import annotations

import os

ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool) -> bool:
    """The switch `name`: True for `ON` values, False for `OFF` ones (any case, spaces
    ignored), `default` when unset or anything else."""
    value = os.environ.get(name, "").strip().lower()
    if value in ON:
        return True
    if value in OFF:
        return False
    return default
