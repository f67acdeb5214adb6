"""The on-disk cache of model measurements (`speed.ModelCost`), so that a search does not
build every model of its space again.

A plan builds each model configuration of the space once to count its FLOPs and memory
(`speed.measure_models`): 23 builds of the default space, ~30 s on a 2-core CPU, repeated by
every search. The measurement depends only on the configuration, the number of classes and
input channels, the precision it trains in, and the code that builds and measures it; the
cache keys each entry on all of them (the code as a digest of autoseg's own source files and
the Keras version), so an entry is never reused after any of them changes.

The file is `$AUTOSEG_MODEL_CACHE`, default `~/.cache/autoseg/model_costs.json` (under
`$XDG_CACHE_HOME` when set); `AUTOSEG_MODEL_CACHE=off` turns it off. It is a cache: an
unreadable or foreign file counts as empty and is rewritten, atomically; two searches that
write at once lose at most each other's new entries.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from autoseg.user_cache import cache_home

#: Entries kept, newest last: a few spaces' worth, a file of well under a megabyte.
MAX_ENTRIES = 500
OFF = "off"


def cache_path() -> Path | None:
    """The cache file, or None when `AUTOSEG_MODEL_CACHE=off`."""
    value = os.environ.get("AUTOSEG_MODEL_CACHE")
    if value == OFF:
        return None
    return Path(value) if value else cache_home() / "model_costs.json"


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of autoseg's source files and the Keras version: what builds and measures."""
    import keras

    package = Path(__file__).resolve().parent
    digest = hashlib.sha256(keras.__version__.encode())
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def entry_key(model_name: str, options: dict[str, Any], num_classes: int, channels: int,
              precision: str) -> str:
    """The key of one measurement."""
    what = {"model_name": model_name, "options": options, "num_classes": num_classes,
            "channels": channels, "precision": precision, "code": code_digest()}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


class CostCache:
    """The entries of the cache file, read once; `save` writes them back when changed."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict[str, Any]] = self._read() if path else {}
        self.hits = 0
        self._changed = False

    @classmethod
    def default(cls) -> "CostCache":
        return cls(cache_path())

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        found = self.entries.get(key)
        if found is not None:
            self.hits += 1
        return found

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.entries.pop(key, None)
        self.entries[key] = value
        while len(self.entries) > MAX_ENTRIES:
            self.entries.pop(next(iter(self.entries)))
        self._changed = True

    def save(self) -> None:
        """Writes the entries when they changed; a cache that cannot be written is skipped."""
        from autoseg import atomic

        if self.path is None or not self._changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.path, json.dumps({"entries": self.entries}))
        except OSError:
            return
        self._changed = False
