"""Per-call shortcuts of a train forward: each answers only where its general path would do nothing more.

- ``l0fast._C.advance_offset`` moves a plain CPU noise stream in one call, and declines (doing nothing) where
  ``advance_rng_state``'s select + add_ would be seen or does more;
- ``check_gate_params`` answers plain floats in range at once, and every other value meets the full checks.
"""

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import l0fast as l0
from l0fast._capability import _C
from l0fast.ops.hard_concrete import advance_rng_state, check_gate_params

needs_cpp = pytest.mark.skipif(_C is None, reason="the shortcut is part of the C++ extension")


class _SeesOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _SeesCalls(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@needs_cpp
def test_shortcut_moves_the_offset_and_bumps_the_version_as_add_does():
    state, reference = torch.tensor([7, 40]), torch.tensor([7, 40])
    assert _C.advance_offset(state, 2**40 + 3)
    reference.select(0, 1).add_(2**40 + 3)
    assert torch.equal(state, reference) and state._version == reference._version == 1


@needs_cpp
def test_shortcut_writes_through_a_strided_view():
    base = torch.tensor([7, -1, 40, -1])
    state = base[::2]
    assert _C.advance_offset(state, 5)
    assert base.tolist() == [7, -1, 45, -1] and base._version == 1


def _declining_cases():
    """(name, make the state, context manager around the call)."""
    plain = lambda: torch.tensor([7, 40])  # noqa: E731
    return {
        "inference mode": (plain, torch.inference_mode),
        "dispatch mode": (plain, _SeesOps),
        "torch function mode": (plain, _SeesCalls),
        "float64 state": (lambda: torch.tensor([7.0, 40.0], dtype=torch.float64), torch.no_grad),
        "three elements": (lambda: torch.tensor([7, 40, 0]), torch.no_grad),
        "2-D": (lambda: torch.tensor([[7, 40]]), torch.no_grad),
    }


@needs_cpp
@pytest.mark.parametrize("case", list(_declining_cases()))
def test_shortcut_declines_where_the_python_path_does_more(case):
    make, context = _declining_cases()[case]
    state = make()
    before = state.clone()
    with context():
        assert _C.advance_offset(state, 5) is False
    assert torch.equal(state, before) and state._version == 0


@needs_cpp
def test_shortcut_declines_an_inference_tensor_and_the_python_path_refuses_it_as_before():
    with torch.inference_mode():
        state = torch.tensor([7, 40])
    assert _C.advance_offset(state, 5) is False
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        advance_rng_state(state, 5)


@pytest.mark.parametrize("case", ["inference mode", "dispatch mode", "torch function mode"])
def test_the_stream_moves_the_same_with_or_without_the_shortcut(case):
    make, context = _declining_cases()[case]
    state = make()
    with context():
        advance_rng_state(state, 5)
    assert state.tolist() == [7, 45]


def test_a_jit_traced_module_still_moves_its_stream_at_each_call():
    """Under torch.jit.trace the shortcut declines, so the trace records the add_: the traced module draws new
    gates at each call (with the shortcut taken, it would replay the traced draw's noise forever)."""
    gates = l0.HardConcrete(6, seed=3)
    traced = torch.jit.trace(gates, (), check_trace=False)
    offset = int(gates.rng_state[1])
    first, second = traced(), traced()
    assert int(gates.rng_state[1]) == offset + 12
    assert not torch.equal(first, second)


def test_a_train_forward_moves_the_stream_by_the_number_of_gates():
    layer = l0.L0Linear(5, 3, seed=0)
    offset = int(layer.weight_gates.rng_state[1])
    layer(torch.randn(2, 5))
    layer(torch.randn(2, 5))
    assert int(layer.weight_gates.rng_state[1]) == offset + 2 * 15


BAD_GATE_PARAMS = [
    ((0.0, -0.1, 1.1), "beta"), ((-0.5, -0.1, 1.1), "beta"), ((math.inf, -0.1, 1.1), "beta"), ((math.nan, -0.1, 1.1), "beta"),
    ((0.5, 0.0, 1.1), "gamma"), ((0.5, 0.1, 1.1), "gamma"), ((0.5, -math.inf, 1.1), "gamma"), ((0.5, math.nan, 1.1), "gamma"),
    ((0.5, -0.1, 1.0), "zeta"), ((0.5, -0.1, 0.5), "zeta"), ((0.5, -0.1, math.inf), "zeta"), ((0.5, -0.1, math.nan), "zeta"),
]


@pytest.mark.parametrize("params, name", BAD_GATE_PARAMS, ids=[str(p) for p, _ in BAD_GATE_PARAMS])
def test_plain_floats_out_of_range_still_meet_the_full_checks(params, name):
    with pytest.raises(ValueError, match=name):
        check_gate_params(*params)


@pytest.mark.parametrize("params", [(0.5, -0.1, 1.1), (2 / 3, -1e-300, 1.0 + 1e-15), (1e-300, -1e300, 1e300)])
def test_plain_floats_in_range_pass(params):
    check_gate_params(*params)
