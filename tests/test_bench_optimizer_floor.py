"""bench/compare_optimizer_floor.py: the floor step updates the gate logits with Adam and nothing else, the
kernels' step adds l0fast's gate kernels and applies their gradients, each phase of a step is timed where it runs,
and the script's table names every step with its ratio to the dense one and its phases."""

import importlib.util
import pathlib

import pytest
import torch

from l0fast.bench.common import DENSE, L0, L0FAST, l0_available
from l0fast.bench.layers import LAMBDA_L0, SparseMLPStep
from l0fast.ops.hard_concrete_gated import hard_concrete_gated_backward_ref, hard_concrete_gated_ref

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "compare_optimizer_floor.py"


def _script():
    spec = importlib.util.spec_from_file_location("compare_optimizer_floor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_workload() -> SparseMLPStep:
    """A prepared ``SparseMLPStep`` small enough to check values on: batch 3, a 6-5-4 network."""
    workload = SparseMLPStep(3, dims=(6, 5, 4))
    workload.prepare()
    return workload


def test_floor_step_is_adam_on_the_gate_logits():
    script = _script()
    workload = _tiny_workload()
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


def test_kernels_step_applies_the_gate_kernels_gradients():
    script = _script()
    workload = _tiny_workload()
    state = script.kernels_case(workload).state
    linears, logits, params, gates = state["linears"], state["logits"], state["params"], state["saved_gates"]
    assert len(linears) == len(logits) == 3 and [la.shape for la in logits] == [m.weight.shape for m in linears]
    for _ in range(2):  # the second step from Adam-updated parameters
        state["opt"].zero_grad(set_to_none=True)
        state["fn"](workload.x, workload.t).backward()
        dense_grads = [m.weight.grad.clone() for m in linears]
        weights = [m.weight.detach().clone() for m in linears]
        state["set_grads"]()
        for m, la, gate, p, up, w in zip(linears, logits, gates, params, dense_grads, weights):
            # the reference backward from the gate the forward saved (its draw: the next test)
            assert ((gate >= 0) & (gate <= 1)).all() and gate.shape == la.shape
            expected_la, expected_w = hard_concrete_gated_backward_ref(up, torch.tensor(LAMBDA_L0), gate, la.detach(), w, *p)
            torch.testing.assert_close(la.grad, expected_la)
            torch.testing.assert_close(m.weight.grad, expected_w)
        state["opt"].step()


def test_kernels_step_draws_its_gates_from_its_streams_and_advances_them():
    script = _script()
    workload = _tiny_workload()
    state = script.kernels_case(workload).state
    gated = workload.gated_model(L0FAST).fc1.weight_gates
    assert state["params"][0] == (gated.temperature, gated.gamma, gated.zeta)
    for _ in range(2):
        before = [r.clone() for r in state["rng_states"]]
        state["fn"](workload.x, workload.t)
        for m, la, gate, p, r0, r in zip(state["linears"], state["logits"], state["saved_gates"], state["params"], before,
                                         state["rng_states"]):
            expected, _, _ = hard_concrete_gated_ref(la.detach(), r0, m.weight.detach(), *p)
            torch.testing.assert_close(gate, expected)
            assert r[0] == r0[0] and r[1] == r0[1] + la.numel(), "the stream moves past the gates drawn"


class _Clock:
    """Stands in for the script's ``time`` module: ``perf_counter`` reads a clock that only ``sleep`` moves."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class _SleepingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sleep):
        ctx.sleep = sleep
        return x.sum()

    @staticmethod
    def backward(ctx, grad):
        ctx.sleep()
        return grad.expand(3), None


class _SleepingOptimizer:
    def __init__(self, sleep, calls):
        self.sleep, self.calls = sleep, calls

    def zero_grad(self, set_to_none=True):
        self.calls.append("zero_grad")

    def step(self):
        self.calls.append("step")
        self.sleep()


@pytest.mark.parametrize("slow", range(3))
def test_each_phase_is_timed_where_it_runs(slow, monkeypatch):
    script = _script()
    clock = _Clock()
    monkeypatch.setattr(script, "time", clock)
    sleeps = [0.05 if i == slow else 0.0 for i in range(3)]
    calls = []
    x = torch.ones(3, requires_grad=True)

    def fn(inputs, targets):
        calls.append("fn")
        clock.sleep(sleeps[0])
        return _SleepingBackward.apply(inputs * targets, lambda: clock.sleep(sleeps[1]))

    state = {"fn": fn, "opt": _SleepingOptimizer(lambda: clock.sleep(sleeps[2]), calls),
             "set_grads": lambda: calls.append("set_grads")}
    phases = script.step_in_phases(state, x, torch.full((3,), 2.0))
    assert calls == ["zero_grad", "fn", "set_grads", "step"]
    assert x.grad.tolist() == [2.0, 2.0, 2.0], "the backward ran"
    assert phases == sleeps, phases


def test_table_rows_ratios_and_phases(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["compare_optimizer_floor.py", "--batch", "2", "--rounds", "1", "--steps", "2",
                                     "--threads", "1"])
    script = _script()
    script.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-6:] == ["forward", "ms", "backward", "ms", "optimizer", "ms"]
    rows = {line[:22].strip(): line[22:].split() for line in lines[2:-1]}
    expected = [DENSE, script.FLOOR, script.KERNELS, L0FAST] + ([L0] if l0_available() else [])
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
    # l0fast's step less the kernels' step, in all and phase by phase
    outside = lines[-1].replace(";", "").replace(",", "").split()
    assert outside[:5] == ["l0fast", "outside", "its", "gate", "kernels:"] and outside[6:8] == ["x", "dense"]
    l0fast_ms, kernels_ms = (list(map(float, rows[impl][:1] + rows[impl][3:])) for impl in (L0FAST, script.KERNELS))
    assert float(outside[5]) == pytest.approx((l0fast_ms[0] - kernels_ms[0]) / float(rows[DENSE][0]), abs=0.006)
    assert outside[8::3] == list(script.PHASES)
    for printed, a, b in zip(outside[9::3], l0fast_ms[1:], kernels_ms[1:]):
        assert float(printed) == pytest.approx(a - b, abs=0.0015)


@pytest.mark.parametrize("flag", ["--batch", "--rounds", "--steps", "--threads"])
def test_refuses_counts_below_one(monkeypatch, capsys, flag):
    monkeypatch.setattr("sys.argv", ["compare_optimizer_floor.py", flag, "0"])
    with pytest.raises(SystemExit):
        _script().main()
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
