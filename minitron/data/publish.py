"""Cache folders that appear whole or not at all, safe when several processes build the same one.

Like ``minitron.io.atomic_output_dir`` (write beside, rename into place), plus what shared
caches need: several ranks may build the same folder at once (the first to finish wins and
the others keep its copy, which holds the same data), and a complete folder can be replaced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def building(target: Path, marker: str, replace: bool = False):
    """Yield a temporary folder beside `target`; publish it as `target` on success.

    `marker` is the file written last, whose presence means `target` is complete. With
    `replace`, a complete `target` is swapped for the new folder; without, it is kept.
    The temporary folder is removed in every case.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a shared cache should not be
    try:
        yield tmp
        _publish(tmp, target, marker, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path, marker: str, replace: bool) -> None:
    if (target / marker).is_file() and not replace:
        return  # another process finished the same folder first
    if target.exists():  # replacing, or an incomplete leftover: move the old copy away first
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / marker).is_file():  # lost a race to an equal, complete copy: fine
            raise
