"""Triton launch hygiene (issue 14): one device per call, no host syncs per step, the
transpose built without a sort, and a penalty sum whose order ignores alignment.

Runs through the interpreter (conftest.py sets TRITON_INTERPRET=1) on CPU tensors.
"""

import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from l0fast.kernels import _common, _nan, gated_spmv, l0_penalty  # noqa: E402
from l0fast.ops import REGISTRY  # noqa: E402
from l0fast.ops.gated_spmv import example_matrix  # noqa: E402
from l0fast.ops.hard_concrete import GATE_PARAMS  # noqa: E402
from l0fast.ops.registry import triton_launcher  # noqa: E402

MOVED = {"rng_state", "grad_penalty"}  # one or two values, copied to the data's device by the launcher
TRITON_OPS = sorted(name for name, entry in REGISTRY.items() if entry.triton_name)


def _launcher(name):
    return triton_launcher(REGISTRY[name].triton_name)


def _checked_tensors(name, args):
    params = list(inspect.signature(_launcher(name)).parameters)
    return [(i, params[i]) for i, a in enumerate(args) if isinstance(a, torch.Tensor) and params[i] not in MOVED]


@pytest.mark.parametrize("name", [n for n in TRITON_OPS if n != "philox_uniform"])
def test_every_launcher_rejects_mixed_devices_naming_the_argument(name, generator):
    args = REGISTRY[name].sample_inputs(50, torch.float32, generator)
    for i, param in _checked_tensors(name, args)[1:]:
        bad = list(args)
        bad[i] = torch.empty_like(args[i], device="meta")
        with pytest.raises(ValueError, match=rf"^{param} is on meta but .* move every input to one device"):
            _launcher(name)(*bad)


def test_device_guard_makes_the_tensor_device_current():
    guard = _common.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(_common.device_guard(torch.device("cpu")), torch.cuda.device)


@pytest.mark.parametrize("name", ["gated_spmv", "gated_spmv_backward", "calibration_backward"])
def test_strided_sparse_inputs_give_the_contiguous_result(name, generator):
    args = REGISTRY[name].sample_inputs(3000, torch.float32, generator)
    strided = tuple(torch.stack([a, a], 1)[:, 0] if isinstance(a, torch.Tensor) and a.dim() == 1 else a for a in args)
    assert not strided[0].is_contiguous()
    for got, want in zip(_launcher(name)(*strided), _launcher(name)(*args)):
        assert torch.equal(got, want)


def test_nan_flag_is_read_every_k_launches_and_cleared(monkeypatch, generator):
    monkeypatch.setitem(_nan.CHECK_EVERY, "cpu", 3)
    monkeypatch.setattr(_nan.NAN_FLAGS, "_uses", {})
    reads = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or item(t))
    log_alpha = torch.randn(100, generator=generator)
    log_alpha[17] = float("nan")
    mean = _launcher("hard_concrete_mean")
    mean(log_alpha, *GATE_PARAMS)
    mean(log_alpha.nan_to_num(), *GATE_PARAMS)
    assert reads == []
    with pytest.raises(ValueError, match="flag read every 3 launches.*log_alpha contains NaN"):
        mean(log_alpha.nan_to_num(), *GATE_PARAMS)  # the NaN came two calls earlier
    assert len(reads) == 1
    for _ in range(3):
        mean(log_alpha.nan_to_num(), *GATE_PARAMS)  # cleared after raising


NO_SYNC_STEP = textwrap.dedent(
    """
    import torch, l0fast
    from l0fast.kernels import _nan
    from l0fast.ops import HouseholdMajorMatrix, calibration_objective
    import scipy.sparse as sp
    M = HouseholdMajorMatrix.from_scipy(sp.random(300, 4000, density=0.05, random_state=0))
    lw = torch.zeros(4000, requires_grad=True)
    la = torch.full((4000,), 1.0, requires_grad=True)
    state = torch.tensor([7, 0])
    def step():
        y, penalty = calibration_objective(M, lw, la, state, (2 / 3, -0.1, 1.1), 0.01, 0.001)
        ((y - 1).square().sum() + penalty).backward()
    step()  # first use validates and transposes M once (host reads, cached with M)
    _nan.CHECK_EVERY["cpu"] = 10**9  # read the NaN flag as rarely as on CUDA
    def no_sync(*_args):
        raise AssertionError("host read of a tensor inside a training step")
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        setattr(torch.Tensor, name, no_sync)
    for _ in range(3):
        step()
    print("ok")
    """
)


def test_training_step_reads_nothing_back_from_the_device():
    env = dict(os.environ, L0FAST_BACKEND="triton", TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", NO_SYNC_STEP], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("lambda_l0,calls", [(0.0, 0), (0.01, 1)])
def test_l0_penalty_is_skipped_when_its_lambda_is_zero(lambda_l0, calls, generator):
    from l0fast.ops import HouseholdMajorMatrix, calibration_objective

    col_ptr, row_idx, values, q = example_matrix(500, torch.float32, generator)
    M = HouseholdMajorMatrix(col_ptr, row_idx, values, q)
    la = torch.randn(500, generator=generator)
    with torch.profiler.profile() as prof:
        _, penalty = calibration_objective(M, torch.zeros(500), la, torch.tensor([1, 0]), GATE_PARAMS, lambda_l0, 0.0, "mean")
    assert sum(e.name == "l0fast::l0_penalty" for e in prof.events()) == calls
    assert penalty.item() == pytest.approx(lambda_l0 * torch.ops.l0fast.l0_penalty(la, *GATE_PARAMS).item())


def _sorted_target_major(col_ptr, row_idx, values, num_rows):
    """The former builder: a stable device sort by target (kept here as the reference)."""
    n, nnz = col_ptr.numel() - 1, values.numel()
    households = torch.repeat_interleave(torch.arange(n, dtype=torch.int32), col_ptr.diff(), output_size=nnz)
    order = torch.argsort(row_idx, stable=True)
    counts = torch.bincount(row_idx, minlength=num_rows)
    seg_per_row = (counts + gated_spmv.SEGMENT - 1) // gated_spmv.SEGMENT
    seg_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), seg_per_row.cumsum(0)])
    row_start = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    seg_row = torch.repeat_interleave(torch.arange(num_rows), seg_per_row)
    first = row_start[seg_row] + (torch.arange(seg_row.numel()) - seg_ptr[seg_row]) * gated_spmv.SEGMENT
    return torch.cat([first, torch.tensor([nnz])]), seg_ptr, households[order], values[order]


@pytest.mark.parametrize("seed", range(6))
def test_counting_sort_transpose_equals_the_sort(seed):
    g = torch.Generator().manual_seed(seed)
    n, q = [(0, 3), (1, 1), (7, 5), (300, 40), (2000, 9), (5000, 3)][seed]
    counts = torch.randint(0, 6, (n,), generator=g) * (torch.rand(n, generator=g) > 0.3)  # empty households
    if seed == 5:
        counts += 1  # row 0 below gets > SEGMENT entries: several segments
    col_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    nnz = int(col_ptr[-1])
    row_idx = torch.randint(0, max(1, q - 1), (nnz,), generator=g, dtype=torch.int32)  # last target empty
    if seed == 5:
        row_idx[col_ptr[:-1]] = 0
    values = torch.rand(nnz, generator=g, dtype=torch.float64)
    got = gated_spmv.build_target_major(col_ptr, row_idx, values, q)
    want = _sorted_target_major(col_ptr, row_idx, values, q)
    for g_, w in zip((got.seg_bounds, got.seg_ptr, got.households, got.values), want, strict=True):
        assert g_.dtype == w.dtype and torch.equal(g_, w)


def _penalty_in_documented_order(log_alpha, beta, gamma, zeta):
    """numpy twin of the kernel (interpreter arithmetic): lanes summed round by round, pairwise tree, torch sums blocks."""
    dtype = np.float64 if log_alpha.dtype == torch.float64 else np.float32
    a = np.clip(log_alpha.numpy().astype(dtype), -20.0, 20.0)
    x = a + dtype(-beta * np.log(-gamma / zeta))
    p = (dtype(1.0) / (dtype(1.0) + np.exp(-x))).astype(np.float64)
    lanes, rounds = l0_penalty.PENALTY_LANES, l0_penalty.PENALTY_ROUNDS
    p = np.concatenate([p, np.zeros(-len(p) % (lanes * rounds))]).reshape(-1, rounds, lanes)
    partials = []
    for block in p:
        acc = np.zeros(lanes)
        for r in range(rounds):
            acc = acc + block[r]
        while len(acc) > 1:
            acc = acc[0::2] + acc[1::2]
        partials.append(acc[0])
    return torch.tensor(partials, dtype=torch.float64).sum().to(log_alpha.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("numel", [1, 16_385, 70_001])
def test_penalty_sum_order_ignores_alignment(dtype, numel, generator):
    log_alpha = (3 * torch.randn(numel, generator=generator, dtype=torch.float64)).to(dtype)
    buffer = torch.empty(numel + 1, dtype=dtype)
    buffer[1:] = log_alpha
    misaligned = buffer[1:]
    assert misaligned.data_ptr() % 16 != 0
    aligned = _launcher("l0_penalty")(log_alpha, *GATE_PARAMS)
    assert torch.equal(aligned, _launcher("l0_penalty")(misaligned, *GATE_PARAMS))
    assert torch.equal(aligned, _penalty_in_documented_order(log_alpha, *GATE_PARAMS))


def test_opcheck_every_op_on_the_triton_backend():
    code = textwrap.dedent(
        """
        import torch, l0fast
        from l0fast.ops import REGISTRY
        for name, entry in sorted(REGISTRY.items()):
            assert entry.backends["cpu"] == "triton", name
            args = entry.sample_inputs(7, torch.float32, torch.Generator().manual_seed(0))
            torch.library.opcheck(getattr(torch.ops.l0fast, name), args)
        print("ok")
        """
    )
    env = dict(os.environ, L0FAST_BACKEND="triton", TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
