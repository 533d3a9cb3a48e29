"""``l0fast bench`` end to end on toy sizes: every workload, l0fast and l0-python, JSON schema, table, plot."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytest.importorskip("l0", reason="l0-python is needed as the benchmark reference")

from l0fast import cli  # noqa: E402
from l0fast.bench import runner  # noqa: E402
from l0fast.bench.common import DENSE, GATED_IMPLS, L0, L0FAST, PeakMemory  # noqa: E402

WORKLOADS = {"hard_concrete", "l0_penalty", "calibration_fit", "sparse_mlp", "l0linear_eval"}


def test_registry_covers_every_workload_in_every_mode():
    for mode in runner.MODES:
        names = {w.name for w in runner.workloads(mode)}
        assert names == WORKLOADS
    quick = {w.key for w in runner.workloads("quick")}
    assert {"hard_concrete/1e5", "hard_concrete/1e6", "hard_concrete/1e7", "l0_penalty/1e7", "calibration_fit/readme",
            "calibration_fit/large", "sparse_mlp/b128", "sparse_mlp/b1024", "l0linear_eval/b1", "l0linear_eval/b32"} <= quick
    for mode, impls in (("quick", (L0FAST,)), ("standard", (L0FAST,)), ("full", GATED_IMPLS)):
        (xl,) = [w for w in runner.workloads(mode) if w.key == "calibration_fit/xl"]
        assert xl.impls == impls, mode


def test_tiny_run_writes_table_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "--tiny", "--threads", "1", "--impl", L0FAST, "--impl", L0, "--impl", DENSE, "--no-memory", "--json", str(out)]
    if _has_matplotlib():
        argv += ["--plot", str(png)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "speedup" in table and "calibration_fit" in table

    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "results"}
    machine = report["machine"]
    assert machine["threads"] == 1 and machine["torch"] and machine["cpu"] and machine["copy_bandwidth_gbs"] > 0
    if platform.libc_ver()[0] == "glibc":
        assert machine["malloc"] == "mmap threshold 32 MiB, trim threshold 64 MiB"
    rows = report["results"]
    assert {r["workload"] for r in rows} == WORKLOADS
    assert {(r["workload"], r["size"]) for r in rows} == {(w.name, w.size) for w in runner.workloads("tiny")}
    dense = [r for r in rows if r["impl"] == DENSE]
    assert {(r["workload"], r["size"]) for r in dense} == {("sparse_mlp", "b2"), ("sparse_mlp", "b8"), ("l0linear_eval", "b2")}, \
        "dense rows: layer workloads only"
    assert all(r["check"].startswith("dense layers, no gates") for r in dense)
    for r in rows:
        assert isinstance(r["workload"], str) and isinstance(r["size"], str) and r["impl"] in (L0FAST, L0, DENSE)
        assert r["status"] == "ok", r
        assert isinstance(r["median_ms"], float)
        assert r["peak_mb"] is None or isinstance(r["peak_mb"], float)
        assert r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
    assert all(r["speedup"] == pytest.approx(1.0) for r in rows if r["impl"] == L0 and r["median_ms"] > 0)
    dense_median = {(r["workload"], r["size"]): r["median_ms"] for r in dense}
    for r in rows:  # x dense: this median over the dense row's, where the workload has one
        at = (r["workload"], r["size"])
        assert r["vs_dense"] == (pytest.approx(r["median_ms"] / dense_median[at]) if at in dense_median else None), r
    assert "x dense" in table
    assert all("floor_fraction" in r for r in rows if r["workload"] in ("hard_concrete", "calibration_fit") and r["median_ms"] > 0)
    assert all(r["floor_ms"] > 0 for r in rows if r["workload"] == "calibration_fit")
    assert [(r["impl"], r["check"]) for r in rows if r["size"] == "xl-tiny"] == [(L0FAST, "unchecked (l0-python runs this size with --full only)")]
    if _has_matplotlib():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_gate_check_draws_fixed_gates_and_leaves_torchs_generator():
    """The sampled-gate check compares draws within six standard errors: on fixed draws, one verdict for
    every run (it was 3e-5 to fail per run, on whatever draws the tests before it left)."""
    import torch

    from l0fast.bench.hard_concrete import HardConcreteStep

    workload = HardConcreteStep(1000)
    workload.prepare()
    verdicts = []
    for _ in range(2):
        ref, case = workload.build(L0), workload.build(L0FAST)
        torch.rand(7)  # other draws before the check
        state = torch.get_rng_state()
        verdicts.append((workload.check(ref, case), ref.state["gates"].qz_logits.grad.clone()))
        assert torch.equal(torch.get_rng_state(), state)
    assert verdicts[0][0] == verdicts[1][0] and torch.equal(verdicts[0][1], verdicts[1][1])


def test_default_malloc_leaves_the_thresholds_and_says_so(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", "--tiny", "--threads", "1", "--impl", L0FAST, "--workload", "l0_penalty", "--no-memory", "--default-malloc", "--json", str(out)]
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["malloc"] == "default" and [r["workload"] for r in report["results"]] == ["l0_penalty"]


def test_memory_probe_subprocess_reports_a_number():
    if not _clear_refs_works():
        pytest.skip("no resettable VmHWM on this system")
    peak = runner._probe_subprocess("tiny", "l0_penalty/1e3", L0FAST, threads=1, device="cpu", log=pytest.fail)
    assert isinstance(peak, float) and peak >= 0


def _clear_refs_works() -> bool:
    meter = PeakMemory()
    meter.start()
    return meter.base is not None


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_distributed_bench_measures_one_process_and_p_processes(tmp_path, capsys):
    out = tmp_path / "distributed.json"
    assert cli.main(["bench", "--tiny", "--distributed", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["distributed"]
    assert [(r["processes"], r["threads"], len(r["peak_mb"])) for r in rows] == [(1, 2, 1), (2, 1, 2)]
    assert all(r["epoch_ms"] == r["epoch_ms"] and min(r["peak_mb"]) > 0 for r in rows)  # measured, not NaN
    assert "P=2 vs 1: epoch" in capsys.readouterr().out


def test_distributed_bench_size_comes_from_the_workload_option():
    from l0fast.bench.distributed import problem_size

    assert problem_size("standard", None) == "large" and problem_size("tiny", None) == "readme"
    assert problem_size("standard", ["xl"]) == "xl" and problem_size("standard", ["calibration_fit/readme"]) == "readme"
    with pytest.raises(SystemExit, match="must name one of"):
        problem_size("standard", ["sparse_mlp"])


def test_a_workload_filter_that_matches_nothing_names_the_workloads(capsys):
    """It printed an empty table and exited 0."""
    with pytest.raises(SystemExit, match="--workload nope: no tiny workload matches; they are: hard_concrete/"):
        cli.main(["bench", "--tiny", "--workload", "nope", "--no-memory"])
    assert "median ms" not in capsys.readouterr().out


@pytest.mark.parametrize("options, message", [
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--device", "foo"], "--device foo: l0fast bench runs on cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device cuda:x: l0fast bench runs on cpu, cuda or cuda:N"),
    (["--json", "{missing}/bench.json"], "--json {missing}/bench.json: its folder does not exist; create it first"),
    (["--plot", "{tmp}"], "--plot {tmp}: a folder; pass a file path"),
    (["--json", "{tmp}/same", "--plot", "{tmp}/same"], "--plot {tmp}/same is --json's file too; pass another path"),
    (["--distributed", "1"], "--distributed needs P >= 2 processes, got 1"),
    (["--distributed", "0"], "--distributed needs P >= 2 processes, got 0"),
    (["--distributed", "2", "--plot", "{tmp}/d.png", "--impl", L0, "--threads", "3"],
     "on CPU, P processes x 1 thread against 1 x P; drop --plot, --impl, --threads"),
])
def test_options_it_cannot_run_are_refused_before_any_timing(tmp_path, capsys, monkeypatch, options, message):
    """Each gave a traceback (a bad --json or --plot path after the whole run, losing its results), or was
    ignored: --distributed 0 ran the ordinary suite, and --distributed drew no --plot."""
    monkeypatch.setattr(runner, "bench_workload", lambda *a, **k: pytest.fail("timed before checking the options"))
    monkeypatch.setattr(runner, "copy_bandwidth", lambda *a, **k: pytest.fail("measured before checking the options"))
    fill = {"tmp": str(tmp_path), "missing": str(tmp_path / "missing")}
    argv = ["bench", "--tiny", "--no-memory", *(o.format(**fill) for o in options)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("l0fast bench: error: --") and err.count("\n") == 1 and message.format(**fill) in err, err


def test_pytest_bench_without_pytest_benchmark_names_the_install(tmp_path):
    """Each test failed with "fixture 'benchmark' not found" (pytest-benchmark comes with the bench extra only); the
    other suites of the session must still run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "pytest_benchmark").mkdir()  # hidden, even where it is installed
    (tmp_path / "pytest_benchmark" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    def pytest_run(*args):
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:benchmark", "-p", "no:cacheprovider", *args], cwd=root,
                              env=env, capture_output=True, text=True, timeout=300)

    run = pytest_run("-q", "bench/test_bench_hard_concrete.py", "-k", "1e5 and l0fast and not compile")
    assert run.returncode == 1 and "1 error" in run.stdout, run.stdout[-2000:]  # at the fixture: the test never ran
    assert "pytest bench needs pytest-benchmark: make bench, or pip install 'l0fast[bench]'" in run.stdout
    collected = pytest_run("--collect-only", "-q", "bench", "tests/test_philox.py")
    assert collected.returncode == 0 and "error" not in collected.stdout.lower(), collected.stdout[-2000:]
