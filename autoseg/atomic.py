"""Write outputs whole: into a temporary sibling, then `os.replace`.

A failed or interrupted command leaves no half-made file or folder behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from autoseg.errors import ConfigError


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically writes `text` to `path`."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically writes `data` to `path` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private (0600); outputs are not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def check_output_dir(out: str | os.PathLike, overwrite: bool, option: str = "--out") -> Path:
    """Refuses an existing non-empty output folder unless `overwrite`.

    Raises:
        ConfigError: `out` exists, is not empty (or is a file) and `overwrite` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        if out.is_file() or any(out.iterdir()):
            raise ConfigError(
                f"{option} {out} already exists and is not empty. Choose another folder "
                "or pass --overwrite to replace it."
            )
    return out


@contextlib.contextmanager
def output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder that replaces `out` only if the block succeeds.

    Example:
    ```python
    with output_dir("data/ds", overwrite=True) as tmp:
        (tmp / "dataset.yaml").write_text("...")
    ```
    """
    out = check_output_dir(out, overwrite).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private (0700); outputs are not
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
