"""Files that are either the old version or the new one: write to a temp file beside, then rename."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb"):
    """Open a temp file beside ``path``; on success it is flushed, synced and renamed over ``path``.

    A crash or an exception inside the block leaves ``path`` as it was and removes the temp file.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
