"""Where autoseg keeps what it caches for a user: `$XDG_CACHE_HOME/autoseg`, by default
`~/.cache/autoseg` (prepared datasets: `autoseg.data.sources`; model measurements:
`autoseg.cost_cache`)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """`$XDG_CACHE_HOME/autoseg`, or `~/.cache/autoseg`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoseg"
