"""Files that are either the old version or the new one: write to a temp file beside, then rename."""

from __future__ import annotations

import contextlib
import os
import signal
import threading


def written_path(path) -> str:
    """The file a write to ``path`` replaces: the one a symbolic link points to, else ``path``."""
    return os.path.realpath(path) if os.path.islink(path) else os.fspath(path)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb"):
    """Open a temp file beside ``path``; on success it is flushed, synced and renamed over ``path``.

    A crash or an exception inside the block leaves ``path`` as it was and removes the temp file; the temp
    files of ``path`` that processes killed mid-write left (``kill -9``) go at the next successful write.
    Ctrl-C waits for the write to end (:func:`interrupts_held`).  A symbolic link is followed: the file it
    points to is replaced, the link kept.
    """
    path = written_path(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with interrupts_held():
        try:
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _remove_orphans(path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


@contextlib.contextmanager
def interrupts_held():
    """A Ctrl-C (SIGINT) during the block raises KeyboardInterrupt when the block ends, not inside it: a write
    interrupted half-way is lost anyway, and torch.save's zip writer then raises an error of its own in place of
    the KeyboardInterrupt, so a caller could not tell the user's Ctrl-C.  Only in the main thread, and only
    while SIGINT has Python's default handler (a program's own handler is left alone)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def _remove_orphans(path: str) -> None:
    """Remove ``<path>.tmp-<pid>`` files whose process no longer runs on this machine; best effort (a file this
    process may not remove, or a folder it may not list, is left: the write itself has succeeded)."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = name + ".tmp-"
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            pid = entry[len(prefix):] if entry.startswith(prefix) else ""
            if pid.isdigit() and not _running(int(pid)):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, entry))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's
        return True
    return True
