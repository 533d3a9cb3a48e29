"""``run_in_own_session``: ``subprocess.run`` in a session of its own, so that a timeout ends the children it
started too (torchrun's workers, Triton's compile workers), which would otherwise go on, orphaned, loading the
machine for the tests after it."""

import os
import signal
import subprocess


def run_in_own_session(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command`` (stdout and stderr captured as text); on a timeout, SIGKILL its whole process group and
    raise subprocess.TimeoutExpired."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **kwargs)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)
