"""Filesystem conventions: where cached assets live, and outputs that appear whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from minitron.errors import MinitronError


def cache_dir() -> Path:
    """Where downloaded and converted assets live (``$MINITRON_CACHE``, default ~/.cache/minitron)."""
    return Path(os.environ.get("MINITRON_CACHE", Path.home() / ".cache" / "minitron"))


def check_output_dir(target: Path) -> None:
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MinitronError(f"{target}: output exists and is not empty; pass another --output or remove it")


@contextlib.contextmanager
def atomic_output_dir(target: str | Path, replace: bool = False):
    """Yield a temporary folder beside `target`; rename it to `target` only on success.

    A crash or an error leaves `target` untouched (absent or empty, or with `replace` its
    previous content) and removes the temporary folder, so a folder at `target` is always
    complete.
    """
    target = Path(target)
    if not replace:
        check_output_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should not be
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.previous-{os.getpid()}")
    if target.exists():
        os.rename(target, old)  # (an empty target goes the same way)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
