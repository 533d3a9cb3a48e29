"""bench/compare_optimizer_floor.py: the floor step updates the gate logits with Adam and nothing else, each
phase of a step is timed where it runs, and the script's table names every step with its ratio to the dense one
and its phases."""

import importlib.util
import pathlib
import time

import pytest
import torch

from l0fast.bench.common import DENSE, L0, L0FAST, l0_available
from l0fast.bench.layers import SparseMLPStep

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "compare_optimizer_floor.py"


def _script():
    spec = importlib.util.spec_from_file_location("compare_optimizer_floor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_step_is_adam_on_the_gate_logits():
    script = _script()
    workload = SparseMLPStep(3, dims=(6, 5, 4))
    workload.prepare()
    case = script.floor_case(workload)
    logits, grads, model = case.state["logits"], case.state["grads"], case.state["model"]
    initial = {k: v for k, v in workload.state_dict.items() if k.endswith("qz_logits")}
    assert [p.shape for p in logits] == [v.shape for v in initial.values()] and len(logits) == 3
    before = [p.detach().clone() for p in logits]
    weights_before = [p.detach().clone() for p in model.parameters()]
    case.step()
    for p, p0, g in zip(logits, before, grads):
        # Adam's first step moves each parameter by lr against the sign of its gradient (|g| >> eps), to the
        # float32 rounding of logits of a few units
        torch.testing.assert_close(p.detach() - p0, -1e-3 * torch.sign(g), rtol=0, atol=1e-6)
    assert all(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), weights_before)), "the dense step runs too"
    case.step()
    assert all(p.grad is g for p, g in zip(logits, grads)), "the same fixed gradient every step"


class _SleepingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, seconds):
        ctx.seconds = seconds
        return x.sum()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(ctx.seconds)
        return grad.expand(3), None


class _SleepingOptimizer:
    def __init__(self, seconds, calls):
        self.seconds, self.calls = seconds, calls

    def zero_grad(self, set_to_none=True):
        self.calls.append("zero_grad")

    def step(self):
        self.calls.append("step")
        time.sleep(self.seconds)


@pytest.mark.parametrize("slow", range(3))
def test_each_phase_is_timed_where_it_runs(slow):
    script = _script()
    sleeps = [0.05 if i == slow else 0.0 for i in range(3)]
    calls = []
    x = torch.ones(3, requires_grad=True)

    def fn(inputs, targets):
        calls.append("fn")
        time.sleep(sleeps[0])
        return _SleepingBackward.apply(inputs * targets, sleeps[1])

    state = {"fn": fn, "opt": _SleepingOptimizer(sleeps[2], calls), "set_grads": lambda: calls.append("set_grads")}
    phases = script.step_in_phases(state, x, torch.full((3,), 2.0))
    assert calls == ["zero_grad", "fn", "set_grads", "step"]
    assert x.grad.tolist() == [2.0, 2.0, 2.0], "the backward ran"
    assert phases[slow] >= 0.05 and phases[slow] == max(phases), phases


def test_table_rows_ratios_and_phases(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["compare_optimizer_floor.py", "--batch", "2", "--rounds", "1", "--steps", "2",
                                     "--threads", "1"])
    script = _script()
    script.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-6:] == ["forward", "ms", "backward", "ms", "optimizer", "ms"]
    rows = {line[:22].strip(): line[22:].split() for line in lines[2:]}
    expected = [DENSE, script.FLOOR, L0FAST] + ([L0] if l0_available() else [])
    assert list(rows) == expected
    assert rows[DENSE][1] == "1.00" and rows[DENSE][2] == rows[script.FLOOR][2] == "-"
    for impl in expected:
        ms, ratio = map(float, rows[impl][:2])
        assert ms > 0 and ratio == pytest.approx(ms / float(rows[DENSE][0]), abs=0.006)
        phases = list(map(float, rows[impl][3:]))
        # one round: the step's median is the sum of its phases' (each printed to 3 decimals)
        assert len(phases) == 3 and min(phases) > 0 and sum(phases) == pytest.approx(ms, abs=0.003)
    floor_ms = float(rows[script.FLOOR][0])
    for impl in expected[2:]:
        assert float(rows[impl][2]) == pytest.approx((float(rows[impl][0]) - floor_ms) / float(rows[DENSE][0]), abs=0.006)


@pytest.mark.parametrize("flag", ["--batch", "--rounds", "--steps", "--threads"])
def test_refuses_counts_below_one(monkeypatch, capsys, flag):
    monkeypatch.setattr("sys.argv", ["compare_optimizer_floor.py", flag, "0"])
    with pytest.raises(SystemExit):
        _script().main()
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
