"""``l0fast bench``: l0fast vs l0-python vs torch.compile(l0-python), side by side.

For every workload the runner builds all implementations from the same seeded
inputs in one process, checks each against l0-python (a failing
implementation is reported, not timed), warms up (compiles), then alternates
the implementations round by round (the starting one rotates) and reports the
median and quartiles of the rounds.  Extra columns:

- ``speedup``: l0-python median / this median;
- ``x dense`` (JSON ``vs_dense``): this median / the ``dense`` row's median of the same workload and size,
  what the gates cost over the same network without them (layer workloads; 1.0 on the dense row itself);
- ``peak MB``: memory high-water mark above the inputs, each implementation
  measured alone in a fresh subprocess (build, warm-up, one step; ``VmHWM``
  reset through ``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``):
  model state, caches, temporaries, modules imported lazily on the first call
  (``torch.library`` custom ops import ``torch._dynamo`` then, ~140 MB) and,
  for torch.compile, the compiler's own heap (not probed in ``--quick``: null);
- malloc: glibc's mmap and trim thresholds are fixed at 32 and 64 MiB for the
  run (``--default-malloc`` leaves them), so a row does not depend on the
  workloads run before it; the memory probes keep the defaults;
- ``floor``: for memory-bound workloads, the floor divided by the median:
  100% would be a kernel running at memory speed.  The floor is measured in
  the same run: for the calibration epoch, one streaming read of the matrix's
  non-zeros (int32 index + fp32 value); for the others, the bytes the unit
  must move / the copy bandwidth measured at the start of the run.

Modes: ``--quick`` (every workload, few rounds: a few minutes on 2 cores),
default, ``--full`` (l0-python and torch.compile also at the ``xl``
calibration: ~35 s per epoch and 5 GB), ``--tiny`` (toy sizes, for tests).
The ``xl`` calibration runs l0fast alone in ``--quick`` and default modes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import torch

from ..output_paths import output_path_problem
from .calibration import CalibrationEpoch
from .common import (
    COMPILED,
    DENSE,
    GATED_IMPLS,
    IMPLS,
    INSTALL_HINT,
    L0,
    L0FAST,
    REFERENCE,
    CheckFailed,
    PeakMemory,
    Timer,
    copy_bandwidth,
    fix_malloc_thresholds,
    l0_available,
    library,
    machine_info,
    summarize,
)
from .hard_concrete import HardConcreteStep, L0PenaltyStep
from .layers import L0LinearEval, SparseMLPStep

MODES = ("tiny", "quick", "standard", "full")
THREADS = 2  # torch threads of a run, unless --threads sets them


def workloads(mode: str = "quick", device: str = "cpu") -> list:
    """The workload list of a mode (the one registry the runner, the probes and ``bench/`` share)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    d = device
    if mode == "tiny":
        return [
            HardConcreteStep(1_000, d, rounds=2),
            L0PenaltyStep(1_000, d, rounds=2),
            CalibrationEpoch("readme-tiny", d, rounds=2, epochs=(1, 2), shape=(20, 200, 0.3)),
            CalibrationEpoch("large-tiny", d, rounds=2, epochs=(1, 2), shape=(40, 2_000, 5)),
            CalibrationEpoch("xl-tiny", d, rounds=2, epochs=(1, 2), shape=(60, 3_000, 5), impls=(L0FAST,)),
            SparseMLPStep(2, d, rounds=2),
            SparseMLPStep(8, d, rounds=2),
            L0LinearEval(2, d, rounds=2, dims=(16, 8)),
        ]
    quick = mode == "quick"
    r = 5 if quick else 15
    wl = [
        HardConcreteStep(10**5, d, rounds=3 * r),
        HardConcreteStep(10**6, d, rounds=r),
        HardConcreteStep(10**7, d, rounds=r),
        L0PenaltyStep(10**7, d, rounds=r),
        CalibrationEpoch("readme", d, rounds=3 if quick else 7, epochs=(1, 6) if quick else (1, 21)),
        CalibrationEpoch("large", d, rounds=2 if quick else 5, epochs=(1, 2) if quick else (1, 4)),
    ]
    wl.append(CalibrationEpoch("xl", d, rounds=3, epochs=(1, 3), impls=GATED_IMPLS if mode == "full" else (L0FAST,)))
    wl += [SparseMLPStep(32, d, rounds=3 * r), SparseMLPStep(128, d, rounds=3 * r), SparseMLPStep(1024, d, rounds=r)]
    wl += [L0LinearEval(batch, d, rounds=3 * r) for batch in (1, 32, 128, 1024)]
    return wl


def _graph_breaks() -> dict:
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001
        return {}
    return dict(counters.get("graph_break", {}))


def _reason(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    text = lines[0][:160] if lines else ""
    explanation = next((ln for ln in lines if ln.startswith("Explanation:")), None)  # dynamo's errors
    if explanation:
        text += " -- " + explanation[len("Explanation:"):].strip()[:200]
    return f"{type(error).__name__}: {text}".rstrip(": ")


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def bench_workload(w, impls, timer: Timer, log=print) -> list[dict]:
    """Build, check, warm up and time every implementation of one workload; one result row each."""
    impls = [i for i in impls if i in w.impls]
    w.prepare()
    log(f"\n== {w.describe()}")
    if COMPILED in impls:
        torch._dynamo.reset()  # fresh, static-shape compile per workload
    ref_impl = REFERENCE if REFERENCE in impls else None
    cases, status, checks, notes, spent = {}, {}, {}, {}, {}

    def attempt(impl, action):
        breaks = _graph_breaks() if impl == COMPILED else {}
        start = time.perf_counter()
        try:
            action()
        except CheckFailed as error:
            status[impl] = f"check failed: {error}"
        except Exception as error:  # noqa: BLE001  (reported in the table, e.g. a compiler failure)
            status[impl] = ("does not compile: " if impl == COMPILED else "error: ") + _reason(error)
            if impl == ref_impl:
                raise
        spent[impl] = spent.get(impl, 0.0) + time.perf_counter() - start
        if impl == COMPILED:
            new = {k: v - breaks.get(k, 0) for k, v in _graph_breaks().items() if v > breaks.get(k, 0)}
            if new:
                first = next(iter(new)).strip().splitlines()[0][:100]
                count = sum(new.values()) + int(notes.get(impl, "0 ").split()[0])
                notes[impl] = f"{count} graph break(s), e.g. {first}"
        if impl in status:
            cases.pop(impl, None)
            log(f"   {impl}: {status[impl]}")

    def build_and_check(impl):
        cases[impl] = w.build(impl)
        if ref_impl is None:
            checks[impl] = "unchecked (l0-python " + ("runs this size with --full only)" if l0_available() else "not installed)")
        elif impl == ref_impl:
            checks[impl] = "reference"
        else:
            checks[impl] = w.check(cases[ref_impl], cases[impl])

    # every check runs on the initial state, before any warm-up step changes it
    for impl in sorted(impls, key=lambda i: i != ref_impl):  # the reference first
        attempt(impl, lambda: build_and_check(impl))
    for impl in list(cases):
        attempt(impl, lambda: cases[impl].warmup())
    for impl in cases:
        status[impl] = "ok"
        log(f"   {impl}: built, checked and warmed up in {spent[impl]:.1f} s; {checks[impl]}")

    order = [i for i in impls if i in cases]
    times = {impl: [] for impl in order}
    for r in range(w.rounds):
        for impl in order[r % len(order):] + order[: r % len(order)]:
            times[impl].append(cases[impl].time_once(timer))
    floor, floor_ms = w.floor_bytes(), w.measure_floor(timer)
    rows = []
    for impl in impls:
        row = {"workload": w.name, "size": w.size, "impl": impl, "unit": w.unit, "median_ms": None, "peak_mb": None,
               "status": status.get(impl, "skipped"), "check": checks.get(impl)}
        if impl in times:
            row.update(summarize(times[impl]))
        if floor:
            row["floor_bytes"] = floor
        if floor_ms:
            row["floor_ms"] = floor_ms
        if impl in notes:
            row["notes"] = notes[impl]
        rows.append(row)
    del cases
    w.release()
    gc.collect()
    return rows


def probe_memory(mode: str, key: str, impl: str, device: str = "cpu") -> float | None:
    """Peak MiB above the inputs of building, warming up and running one step of one implementation."""
    (w,) = [w for w in workloads(mode, device) if w.key == key]
    w.prepare()
    library(impl)  # imported before the baseline: the extension's code is not the workload's memory
    gc.collect()
    meter = PeakMemory(device)
    meter.start()
    case = w.build(impl)
    case.warmup()
    case.step()
    return meter.stop()


def _probe_subprocess(mode: str, key: str, impl: str, threads: int, device: str, log=print) -> float | None:
    cmd = [sys.executable, "-m", "l0fast", "bench", "--probe", key, impl, "--mode", mode, "--threads", str(threads), "--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
        return json.loads(line)["peak_mb"]
    except Exception as error:  # noqa: BLE001  (the column is null where not measurable)
        log(f"   memory probe {key} {impl} failed: {_reason(error)}")
        return None


def _medians_of(rows: list[dict], impl: str) -> dict[tuple[str, str], float]:
    """(workload, size) -> the positive median of ``impl``'s row there."""
    return {(r["workload"], r["size"]): r["median_ms"] for r in rows if r["impl"] == impl and r["median_ms"]}


def add_speedups(rows: list[dict], bandwidth: float | None) -> None:
    """Fill ``speedup`` and ``vs_dense`` of every row (None where not measurable) and, where the floor is known,
    ``floor_ms`` and ``floor_fraction``."""
    base, dense = _medians_of(rows, L0), _medians_of(rows, DENSE)
    for r in rows:
        b, d = base.get((r["workload"], r["size"])), dense.get((r["workload"], r["size"]))
        measured = bool(r["median_ms"]) and r["median_ms"] > 0
        r["speedup"] = b / r["median_ms"] if b and measured else None
        r["vs_dense"] = r["median_ms"] / d if d and measured else None
        if not r.get("floor_ms") and r.get("floor_bytes") and bandwidth:
            r["floor_ms"] = r["floor_bytes"] / bandwidth * 1e3
        if r.get("floor_ms") and measured:
            r["floor_fraction"] = r["floor_ms"] / r["median_ms"]


def format_table(rows: list[dict]) -> str:
    head = ("workload", "size", "impl", "median ms", "IQR ms", "speedup", "x dense", "peak MB", "floor", "note")
    lines = []
    for r in rows:
        ok = r["median_ms"] is not None
        iqr = f"{_fmt_ms(r['q1_ms'])}-{_fmt_ms(r['q3_ms'])}" if ok else "-"
        note = "; ".join(x for x in ("" if r["status"] == "ok" else r["status"], r.get("notes", "")) if x)
        lines.append((
            r["workload"], r["size"] + (f" /{r['unit']}" if r["unit"] != "step" else ""), r["impl"],
            _fmt_ms(r["median_ms"]), iqr,
            f"{r['speedup']:.1f}x" if r.get("speedup") else "-",
            f"{r['vs_dense']:.2f}x" if r.get("vs_dense") else "-",
            f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else "-",
            f"{100 * r['floor_fraction']:.0f}%" if r.get("floor_fraction") else "-",
            note[:100],
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    right = {3, 4, 5, 6, 7, 8}

    def fmt(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def write_plot(rows: list[dict], path: str, machine: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["workload"], r["size"]) for r in rows))
    impls = [i for i in (L0FAST, COMPILED) if any(r["impl"] == i and r.get("speedup") for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups) + 2), 4.5))
    width = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        values = {(r["workload"], r["size"]): r.get("speedup") or 0 for r in rows if r["impl"] == impl}
        xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(groups))]
        ys = [values.get(g, 0) for g in groups]
        bars = ax.bar(xs, ys, width, label=impl)
        for bar, y in zip(bars, ys):
            if y:
                ax.annotate(f"{y:.1f}x", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="grey", lw=1, ls="--", label="l0-python")
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), [f"{w}\n{s}" for w, s in groups], fontsize=8)
    ax.set_ylabel("speedup vs l0-python (median, log scale)")
    ax.set_title(f"l0fast bench -- {machine.get('cpu', '')}, {machine.get('threads')} threads, torch {machine.get('torch')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(mode: str = "quick", threads: int = THREADS, device: str = "cpu", impls=IMPLS, only: list[str] | None = None,
        memory: bool = True, json_path: str | None = None, plot_path: str | None = None, log=print, fix_malloc: bool = True) -> dict:
    """Run the suite; print the table; return (and optionally write) the report dict."""
    problem = device_problem(device)
    if problem:
        raise SystemExit(problem)
    torch.set_num_threads(threads)
    malloc = fix_malloc_thresholds() if fix_malloc else "default"
    impls = [i for i in IMPLS if i in impls]
    selected = [w for w in workloads(mode, device) if not only or any(s in w.key for s in only)]
    if not selected:
        keys = ", ".join(w.key for w in workloads(mode, device))
        raise SystemExit(f"--workload {' '.join(only)}: no {mode} workload matches; they are: {keys}")
    if not l0_available() and (L0 in impls or COMPILED in impls):
        log(f"note: {INSTALL_HINT}; timing l0fast alone, without checks or speedups")
        impls = [i for i in impls if i == L0FAST]
    started = time.perf_counter()
    bandwidth = copy_bandwidth(device, mbytes=16 if mode == "tiny" else 256)
    machine = machine_info(device, threads)
    machine.update(copy_bandwidth_gbs=round(bandwidth / 1e9, 2), malloc=malloc, mode=mode, command=" ".join(["l0fast", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else None)
    log(f"l0fast bench ({mode}): {machine['cpu']}, {threads} threads, torch {machine['torch']}, device {device}, copy bandwidth {bandwidth / 1e9:.1f} GB/s, malloc: {malloc}")
    timer = Timer(device)
    rows = []
    for w in selected:
        rows += bench_workload(w, impls, timer, log=log)
    log(f"\ntimed in {time.perf_counter() - started:.0f} s")
    if memory:
        log("\n== peak memory (one subprocess per implementation)")
        for r in rows:
            if r["status"] != "ok" or (mode == "quick" and r["impl"] == COMPILED):
                continue  # --quick leaves out the compiler's probes (null)
            r["peak_mb"] = _probe_subprocess(mode, f"{r['workload']}/{r['size']}", r["impl"], threads, device, log=log)
    add_speedups(rows, bandwidth)
    machine["wall_s"] = round(time.perf_counter() - started, 1)
    report = {"machine": machine, "results": rows}
    log("\n" + format_table(rows))
    log(f"\n{threads} threads, median of rounds alternating implementations; speedup = l0-python median / median; "
        f"x dense = median / the dense row's median; floor = (bytes that must move / {bandwidth / 1e9:.1f} GB/s copy bandwidth; calibration: one read of M's non-zeros) / median; wall {machine['wall_s']} s")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
        log(f"wrote {json_path}")
    if plot_path:
        write_plot(rows, plot_path, machine)
        log(f"wrote {plot_path}")
    return report


def device_problem(device: str) -> str | None:
    """Why the suite cannot run on ``device`` (the ``--device`` text), naming the fix, or None."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        return f"--device {device}: l0fast bench runs on cpu, cuda or cuda:N"
    if kind == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: torch.cuda.is_available() is False; run on cpu"
    return None


def check_options(args: argparse.Namespace) -> str | None:
    """Why these options cannot run, naming the option and the fix, or None; checked before any timing, so a
    bad output path does not lose a finished run's results."""
    if args.threads is not None and args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    if args.distributed is not None:
        if args.distributed < 2:
            return f"--distributed needs P >= 2 processes, got {args.distributed}"
        ignored = [flag for flag, given in (("--plot", args.plot), ("--impl", args.impl), ("--no-compile", args.no_compile),
                                            ("--threads", args.threads is not None), ("--device", args.device != "cpu")) if given]
        if ignored:
            return (f"--distributed times l0fast's sharded calibration fit on CPU, P processes x 1 thread against 1 x P; "
                    f"drop {', '.join(ignored)}")
    problem = device_problem(args.device)
    if problem:
        return problem
    written = {}
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if not path:
            continue
        problem, real = output_path_problem(path), os.path.realpath(path)
        if problem:
            return f"{option} {path}: {problem}"
        if real in written:
            return f"{option} {path} is {written[real]}'s file too; pass another path"
        written[real] = option
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", dest="mode", action="store_const", const="quick", help="every workload, few rounds (a few minutes)")
    group.add_argument("--full", dest="mode", action="store_const", const="full", help="l0-python and torch.compile also at the xl calibration (20,000 x 5,000,000; ~35 s an epoch, 5 GB)")
    group.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="toy sizes (smoke test)")
    group.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.set_defaults(mode="standard")
    parser.add_argument("--threads", type=int, help=f"torch threads (default {THREADS})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (CUDA events, synchronized)")
    parser.add_argument("--impl", action="append", choices=IMPLS, help="implementations to run (repeatable; default all)")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile(l0-python)")
    parser.add_argument("--workload", action="append", metavar="SUBSTRING", help="run only workloads whose name/size contains this (repeatable: any of them)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses (peak_mb null)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's mmap/trim thresholds dynamic (default: fixed at 32/64 MiB, so rows do not depend on the workloads before them)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG chart of the speedups")
    parser.add_argument("--probe", nargs=2, metavar=("KEY", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--distributed", type=int, metavar="P",
                        help="only the sharded calibration fit on 'large' (or the calibration size --workload names, e.g. xl): "
                             "P processes x 1 thread vs 1 x P (l0fast.bench.distributed)")


def run_from_args(args: argparse.Namespace) -> int:
    """The command; exit status 0, or 2 for options it cannot run (one line on stderr)."""
    problem = check_options(args)
    if problem:
        print(f"l0fast bench: error: {problem}", file=sys.stderr)
        return 2
    threads = THREADS if args.threads is None else args.threads
    if args.probe:
        torch.set_num_threads(threads)
        peak = probe_memory(args.mode, args.probe[0], args.probe[1], args.device)
        print(json.dumps({"peak_mb": peak}))
        return 0
    if args.distributed is not None:
        from . import distributed

        rows = distributed.run(args.distributed, distributed.problem_size(args.mode, args.workload))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"distributed": rows}, f, indent=1)
        return 0
    impls = args.impl or list(IMPLS)
    if args.no_compile:
        impls = [i for i in impls if i != COMPILED]
    run(args.mode, threads, args.device, impls, args.workload, not args.no_memory, args.json, args.plot,
        fix_malloc=not args.default_malloc)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="l0fast bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
