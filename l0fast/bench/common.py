"""Shared pieces of the benchmark suite: implementations, cases, timing, memory, bandwidth, machine, malloc.

A *workload* (one module per family: :mod:`.hard_concrete`, :mod:`.calibration`,
:mod:`.layers`) builds one :class:`Case` per implementation from shared inputs,
checks every case against the l0-python reference before anything is timed,
and says how many bytes one timed unit must move at the least (``floor_bytes``,
``None`` for compute-bound work).  The runner (:mod:`.runner`) and the
pytest-benchmark suites in ``bench/`` both use these definitions.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import importlib.metadata
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

L0FAST = "l0fast"
L0 = "l0-python"
COMPILED = "torch.compile(l0-python)"
DENSE = "dense"  # the same network with plain layers, no gates: a reference row of the layer workloads
GATED_IMPLS = (L0FAST, L0, COMPILED)  # what a workload runs unless it says otherwise
IMPLS = GATED_IMPLS + (DENSE,)
REFERENCE = L0
INSTALL_HINT = "l0-python is not installed; install it with `pip install 'l0fast[bench]'` (or `pip install l0-python==0.6.2`)"


class CheckFailed(AssertionError):
    """An implementation disagrees with the reference; it is reported and not timed."""


def l0_available() -> bool:
    return importlib.util.find_spec("l0") is not None


def library(impl: str):
    """The module that serves ``impl``: ``l0fast``, l0-python's ``l0``, or ``torch.nn`` for the dense rows."""
    if impl == L0FAST:
        return importlib.import_module("l0fast")
    if impl == DENSE:
        return torch.nn
    if not l0_available():
        raise ModuleNotFoundError(INSTALL_HINT)
    return importlib.import_module("l0")


def compile_fn(fn: Callable) -> Callable:
    """``torch.compile`` with default settings (graph breaks allowed, counted by the runner)."""
    return torch.compile(fn)


@dataclass
class Case:
    """One implementation of a workload, ready to run.

    ``step()`` runs one timed unit; ``measure(timer)`` returns the milliseconds of
    one unit (default: ``timer(step)``; the calibration fit overrides it to take
    the steady-state epoch time); ``warmup()`` runs before timing (compiles,
    fills caches); ``state`` holds what the checks look at.
    """

    impl: str
    step: Callable[[], Any]
    state: dict = field(default_factory=dict)
    measure: Callable[["Timer"], float] | None = None
    warmup_steps: int = 2
    warm: Callable[[], Any] | None = None  # replaces ``warmup_steps`` calls of ``step`` when set
    notes: list[str] = field(default_factory=list)

    def time_once(self, timer: "Timer") -> float:
        return self.measure(timer) if self.measure is not None else timer(self.step)

    def warmup(self) -> None:
        if self.warm is not None:
            self.warm()
            return
        for _ in range(self.warmup_steps):
            self.step()


class Workload:
    """Base class: ``name``, ``size`` label, ``unit`` ("step", "epoch" or "forward") and the round count."""

    name: str = ""
    size: str = ""
    unit: str = "step"
    rounds: int = 5

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.size}"

    def describe(self) -> str:
        return self.key

    def prepare(self) -> None:
        """Build the inputs shared by every implementation (seeded)."""

    def build(self, impl: str) -> Case:
        raise NotImplementedError

    def check(self, ref: Case, case: Case) -> str:
        """Compare ``case`` with the reference case; raise :class:`CheckFailed`, else return a summary."""
        raise NotImplementedError

    impls: tuple[str, ...] = GATED_IMPLS  # the implementations this workload runs

    def floor_bytes(self) -> int | None:
        """Bytes one unit must move at the least (memory-bound workloads), else None."""
        return None

    def measure_floor(self, timer: "Timer") -> float | None:
        """Milliseconds of the floor measured directly (overrides ``floor_bytes`` / copy bandwidth), else None."""
        return None

    def release(self) -> None:
        """Drop the shared inputs."""


def close(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float, atol: float) -> float:
    """Raise :class:`CheckFailed` unless ``a`` and ``b`` are close; return the max abs difference."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        raise CheckFailed(f"{what}: shape {tuple(a.shape)} != reference {tuple(b.shape)}")
    diff = (a - b).abs()
    if not torch.all(diff <= atol + rtol * b.abs()):
        raise CheckFailed(f"{what}: max |diff| {diff.max().item():.3g} (rtol {rtol}, atol {atol})")
    return diff.max().item() if diff.numel() else 0.0


def near(a: float, b: float, tol: float, what: str) -> None:
    if not abs(a - b) <= tol:
        raise CheckFailed(f"{what}: {a:.6g} vs reference {b:.6g} (tolerance {tol:.3g})")


# -- timing ------------------------------------------------------------------------------------


class Timer:
    """Milliseconds of one call: ``perf_counter`` on CPU; CUDA events with synchronization on CUDA."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end))
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3


def summarize(times_ms: list[float]) -> dict:
    """Median, quartiles (IQR), min and max of the rounds."""
    ts = sorted(times_ms)
    if len(ts) >= 2:
        q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive")
    else:
        q1 = q3 = ts[0]
    return {"median_ms": statistics.median(ts), "q1_ms": q1, "q3_ms": q3, "min_ms": ts[0], "max_ms": ts[-1], "rounds": len(ts)}


def copy_bandwidth(device: torch.device | str = "cpu", mbytes: int = 256, repeats: int = 5) -> float:
    """Copy bandwidth in bytes/s: ``dst.copy_(src)`` of a ``mbytes`` MiB float32 tensor, counting read + write."""
    n = mbytes * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    timer = Timer(device)
    dst.copy_(src)
    ms = statistics.median(timer(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * n * 4 / (ms / 1e3)


# -- memory --------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class PeakMemory:
    """Peak memory above a baseline, in MiB, for the code run between ``start()`` and ``stop()``.

    CPU: the resident-set high-water mark (``VmHWM``), reset with
    ``/proc/self/clear_refs`` at ``start()``, minus the resident set at ``start()``.
    It is process-wide, so the runner measures each implementation in its own
    subprocess.  CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at
    ``start()``.  ``stop()`` returns None where neither is available.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.base = None

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            self.base = None
            return
        rss = _status_kib("VmRSS")
        self.base = None if rss is None else rss * 1024

    def stop(self) -> float | None:
        if self.base is None:
            return None
        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        hwm = _status_kib("VmHWM")
        return None if hwm is None else max(hwm * 1024 - self.base, 0) / 2**20


# -- machine ---------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# glibc's dynamic rule: the mmap threshold grows to the largest block freed (at most this), the trim threshold is twice it
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 2 * MALLOC_MMAP_THRESHOLD


def fix_malloc_thresholds() -> str:
    """Fix glibc's mmap and trim thresholds at 32 and 64 MiB, the values its dynamic rule reaches once a 32 MiB
    block has been freed, so that a timing does not depend on which workloads ran before it: early in a process
    both are small, and a step whose temporaries (an optimizer's) outgrow them faults fresh pages in every
    step (bench/compare_malloc_thresholds.py).  Returns the setting, for the report."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return "default (no mallopt: not glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    if mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD) != 1 or mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD) != 1:
        return "default (mallopt refused)"
    return f"mmap threshold {MALLOC_MMAP_THRESHOLD >> 20} MiB, trim threshold {MALLOC_TRIM_THRESHOLD >> 20} MiB"


def machine_info(device: str, threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^flags\s*:\s*(.+)$", f.read(), re.M)
        if match:
            flags = " ".join(f for f in ("avx2", "avx512f", "amx_tile") if f in match.group(1).split())
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1) if hasattr(os, "sysconf") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "l0fast": _version("l0fast"),
        "l0-python": _version("l0-python"),
        "threads": threads,
        "device": device,
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import l0fast

        info["backend"] = l0fast.backend_info()
    except Exception:  # noqa: BLE001  (informational only)
        pass
    return info
