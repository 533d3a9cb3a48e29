"""Whether an output file can be written, checked before the long work that writes it starts (a fit, a benchmark)."""

from __future__ import annotations

import os

from .atomic import written_path


def output_path_problem(path: str, folder: str | None = None) -> str | None:
    """Why ``path`` cannot be written, in words that name the fix, or None: its folder (``folder`` instead, for
    a file in a folder the command creates itself) is missing, a file or not writable, or ``path`` is a folder.
    A symbolic link is followed, as the atomic writes follow it."""
    path = written_path(path)
    folder = folder if folder is not None else os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"its folder {folder} is a file; pass a path in a folder"
    if not os.path.isdir(folder):
        return "its folder does not exist; create it first"
    if os.path.isdir(path):
        return "a folder; pass a file path"
    if not os.access(folder, os.W_OK):
        return "its folder is not writable; write it elsewhere"
    return None


def check_output_path(path, argument: str) -> None:
    """ValueError ``argument='path': why`` where ``path`` cannot be written (:func:`output_path_problem`)."""
    problem = output_path_problem(path)
    if problem is not None:
        raise ValueError(f"{argument}={os.fspath(path)!r}: {problem}")
