"""Every Triton launcher against its pure-PyTorch reference and the C++ path, through the interpreter.

conftest.py sets TRITON_INTERPRET=1 before triton is imported, so the kernels
run on CPU tensors; sizes stay <= 10^5 and blocks are large to keep this fast.
"""

import pytest
import torch

pytest.importorskip("triton")

from l0fast.ops import REGISTRY  # noqa: E402
from l0fast.ops.gated_spmv import example_matrix  # noqa: E402
from l0fast.ops.hard_concrete import GATE_PARAMS  # noqa: E402
from l0fast.ops.registry import triton_launcher  # noqa: E402

SIZES = [0, 1, 7, 1000, 65_537]
TRITON_OPS = sorted(name for name, entry in REGISTRY.items() if entry.triton_name)
# Tolerance travels with the dtype (sums get atol * sqrt(n)).
DTYPES = [(torch.float32, 2e-6, 1e-5), (torch.float64, 1e-12, 1e-10)]


def _clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _launcher(name):
    return triton_launcher(REGISTRY[name].triton_name)


def _as_tuple(out):
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def test_every_op_has_a_triton_kernel():
    assert TRITON_OPS == sorted(REGISTRY), "ops without l0fast.kernels launchers"


@pytest.mark.parametrize("name", TRITON_OPS)
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("dtype,atol,rtol", [DTYPES[0]])
def test_triton_matches_reference(name, numel, dtype, atol, rtol, generator):
    entry = REGISTRY[name]
    args = entry.sample_inputs(numel, dtype, generator)
    got = _as_tuple(_launcher(name)(*_clone(args)))
    want = _as_tuple(entry.ref(*_clone(args)))
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        if name == "philox_uniform":
            assert torch.equal(g, w)
        elif name.startswith("gated_spmv") or name == "calibration_backward":  # sums of ~numel terms
            torch.testing.assert_close(g, w, atol=atol * w.abs().max().item() if w.numel() else atol, rtol=rtol)
        else:
            torch.testing.assert_close(g, w, atol=atol * max(1, numel) ** 0.5 if g.ndim == 0 else atol, rtol=rtol)


@pytest.mark.parametrize("name", TRITON_OPS)
def test_triton_fp64_matches_reference(name, generator):
    entry = REGISTRY[name]
    _, atol, rtol = DTYPES[1]
    args = entry.sample_inputs(1000, torch.float64, generator)
    for g, w in zip(_as_tuple(_launcher(name)(*_clone(args))), _as_tuple(entry.ref(*_clone(args))), strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=atol * max(1.0, w.abs().max().item()), rtol=rtol)


@pytest.mark.parametrize(
    "seed,offset,numel",
    [(0, 0, 4096), (0xDEADBEEF12345, 3, 1001), (2**62 + 5, 2**33 - 7, 513), (42, 2**34 + 1, 17), (7, 2, 65_537), (9, 5, 1)],
)
def test_uniforms_bit_identical_to_cpp(seed, offset, numel):
    state = torch.tensor([seed, offset], dtype=torch.int64)
    assert torch.equal(_launcher("philox_uniform")(state, numel), torch.ops.l0fast.philox_uniform(state, numel))


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 2**32 * 4 + 3])
def test_gates_equal_cpp_to_rounding_with_same_zeros_and_ones(offset, generator):
    log_alpha = REGISTRY["hard_concrete_sample"].sample_inputs(65_537, torch.float32, generator)[0]
    state = torch.tensor([1234567, offset], dtype=torch.int64)
    got = _launcher("hard_concrete_sample")(log_alpha, state, *GATE_PARAMS)
    want = torch.ops.l0fast.hard_concrete_sample(log_alpha, state, *GATE_PARAMS)
    assert (got - want).abs().max().item() <= 2e-6
    for exact in (0.0, 1.0):
        differ = (got == exact) != (want == exact)
        assert (got - want)[differ].abs().max().item() <= 2e-6 if differ.any() else True
        assert differ.sum().item() <= 2, "only rounding ties may differ"
    mean = _launcher("hard_concrete_mean")(log_alpha, *GATE_PARAMS)
    torch.testing.assert_close(mean, torch.ops.l0fast.hard_concrete_mean(log_alpha, *GATE_PARAMS), atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_gates_compute_in_fp32(dtype, generator):
    log_alpha, state, *params = REGISTRY["hard_concrete_sample"].sample_inputs(4096, torch.float32, generator)
    got = _launcher("hard_concrete_sample")(log_alpha.to(dtype), state, *params)
    want = torch.ops.l0fast.hard_concrete_sample(log_alpha.to(dtype), state, *params)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=0)


def test_half_gated_backward_keeps_dl_dg_in_fp32_as_cpp():
    """dL/d(w g) * w was rounded to fp16 before the chain rule: 300 * 400 overflowed (NaN at every gate)."""
    log_alpha = torch.tensor([-30.0, 0.0, 30.0, 1.0], dtype=torch.float16)
    weight, grad = torch.full((4,), 400.0, dtype=torch.float16), torch.full((4,), 300.0, dtype=torch.float16)
    gate = torch.tensor([0.0, 0.0795, 1.0, 1.0], dtype=torch.float16)
    got = _launcher("hard_concrete_gated_backward")(grad, None, gate, log_alpha, weight, *GATE_PARAMS)
    want = torch.ops.l0fast.hard_concrete_gated_backward(grad, None, gate, log_alpha, weight, *GATE_PARAMS)
    assert torch.isfinite(got[0]).all() and got[0][1] > 1e4
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_broadcast_gradient_is_read_as_a_scalar(generator):
    _, gate, log_alpha, *params = REGISTRY["hard_concrete_backward"].sample_inputs(5000, torch.float32, generator)
    grad = torch.tensor(0.7).expand(5000)
    got = _launcher("hard_concrete_backward")(grad, gate, log_alpha, *params)
    torch.testing.assert_close(got, torch.ops.l0fast.hard_concrete_backward(grad.contiguous(), gate, log_alpha, *params))


@pytest.mark.parametrize("name", ["hard_concrete_sample", "hard_concrete_mean", "l0_penalty"])
def test_nan_log_alpha_raises_like_cpp(name, generator):
    args = list(REGISTRY[name].sample_inputs(100, torch.float32, generator))
    args[0][17] = float("nan")
    with pytest.raises(ValueError, match="log_alpha contains NaN"):
        _launcher(name)(*args)


def _spmv_problem(generator, numel=20_000):
    col_ptr, row_idx, values, q = example_matrix(numel, torch.float32, generator)
    weight = torch.rand(numel, generator=generator) * 3
    weight[::4] = 0.0
    return col_ptr, row_idx, values, weight, q


def test_sparse_product_matches_cpp_and_is_deterministic(generator):
    col_ptr, row_idx, values, weight, q = _spmv_problem(generator)
    forward = _launcher("gated_spmv")
    y = forward(col_ptr, row_idx, values, weight, q)
    torch.testing.assert_close(y, torch.ops.l0fast.gated_spmv(col_ptr, row_idx, values, weight, q), rtol=1e-6, atol=1e-3)
    assert torch.equal(y, forward(col_ptr, row_idx, values, weight, q))  # cached layout, same order
    y_atomic = forward(col_ptr, row_idx, values, weight, q, deterministic=False)
    torch.testing.assert_close(y_atomic, y, rtol=1e-6, atol=1e-3)
    grad_y = torch.randn(q, generator=generator)
    grad_w = _launcher("gated_spmv_backward")(col_ptr, row_idx, values, grad_y)
    torch.testing.assert_close(grad_w, torch.ops.l0fast.gated_spmv_backward(col_ptr, row_idx, values, grad_y), rtol=1e-5, atol=1e-5)


def test_sparse_product_layout_follows_in_place_edits(generator):
    col_ptr, row_idx, values, weight, q = _spmv_problem(generator, 2000)
    forward = _launcher("gated_spmv")
    forward(col_ptr, row_idx, values, weight, q)
    values.mul_(2)  # bumps the version counter: the cached target-major copy is rebuilt
    torch.testing.assert_close(forward(col_ptr, row_idx, values, weight, q), torch.ops.l0fast.gated_spmv(col_ptr, row_idx, values, weight, q))


def test_long_rows_are_split_into_segments(generator):
    """One target holding every household (many segments) next to empty and one-entry targets."""
    from l0fast.kernels.gated_spmv import SEGMENT

    n = 3 * SEGMENT + 5
    col_ptr = torch.arange(0, 2 * n + 1, 2, dtype=torch.int64)
    row_idx = torch.stack([torch.zeros(n, dtype=torch.int32), 2 + torch.arange(n, dtype=torch.int32) % 3], 1).reshape(-1)
    values = torch.rand(2 * n, generator=generator)
    weight = torch.rand(n, generator=generator)
    got = _launcher("gated_spmv")(col_ptr, row_idx, values, weight, 6)
    torch.testing.assert_close(got, torch.ops.l0fast.gated_spmv(col_ptr, row_idx, values, weight, 6), rtol=1e-6, atol=1e-4)
    assert got[1] == 0 and got[5] == 0


def test_a_block_with_absolute_offsets_matches_cpp(generator):
    """A block of households of a larger matrix keeps its offsets (col_ptr past 0), and entries outside the
    block are not the block's (here out of range): the Triton product equals the C++ one, as does its backward."""
    col_ptr, row_idx, values, weight, q = _spmv_problem(generator, 2000)
    first, last = 300, 1700
    block = col_ptr[first : last + 1].clone()
    row_idx = row_idx.clone()
    row_idx[: int(block[0])] = q + 5  # outside the block: never read
    args = (block, row_idx, values, weight[first:last], q)
    torch.testing.assert_close(_launcher("gated_spmv")(*args), torch.ops.l0fast.gated_spmv(*args), rtol=1e-6, atol=1e-4)
    grad_y = torch.randn(q, generator=generator)
    torch.testing.assert_close(_launcher("gated_spmv_backward")(block, row_idx, values, grad_y),
                               torch.ops.l0fast.gated_spmv_backward(block, row_idx, values, grad_y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["row_too_big", "negative_row", "col_ptr_decreasing"])
def test_malformed_matrix_raises(bad, generator):
    col_ptr, row_idx, values, weight, q = _spmv_problem(generator, 100)
    if bad == "row_too_big":
        row_idx[3] = q
    elif bad == "negative_row":
        row_idx[3] = -1
    else:
        col_ptr[5] = col_ptr[7] + 1
    with pytest.raises(ValueError, match="malformed"):
        _launcher("gated_spmv")(col_ptr, row_idx, values, weight, q)
    with pytest.raises(ValueError, match="malformed"):
        _launcher("gated_spmv_backward")(col_ptr, row_idx, values, torch.zeros(q))


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("upstream", [NAN, INF, -INF])
def test_a_nan_or_inf_upstream_gradient_reaches_live_gates_only_in_every_implementation(upstream):
    """Where a gate is closed, open or its |log_alpha| > 20, or a penalty's |log_alpha| > 20, the gradient is
    exactly 0 whatever comes from upstream (torch's clamp passes none there): the reference, C++ and Triton agree
    (Triton multiplied the upstream value by a 0 slope: NaN in closed gates' log_alpha on CUDA only)."""
    la = torch.tensor([0.0, 0.0, 25.0, 0.5, -30.0])
    gate = torch.tensor([0.0, 1.0, 1.0, 0.5, 0.0])  # closed, open, |log_alpha| > 20, live, |log_alpha| > 20
    grad, grad_scalar = torch.full((5,), upstream), torch.tensor(upstream)
    gate_live, penalty_live = torch.tensor([0, 0, 0, 1, 0]).bool(), torch.tensor([1, 1, 0, 1, 0]).bool()
    cases = {  # op: (arguments, which gradient of log_alpha, the elements the upstream value reaches)
        "hard_concrete_backward": ((grad, gate, la, *GATE_PARAMS), 0, gate_live),
        "hard_concrete_gated_backward": ((grad, grad_scalar, gate, la, torch.full((5,), 2.0), *GATE_PARAMS), 0, penalty_live),
        "l0_penalty_backward": ((grad_scalar, la, *GATE_PARAMS), 0, penalty_live),
        "calibration_backward": ((torch.arange(6), torch.zeros(5, dtype=torch.int32), torch.ones(5), grad[:1],
                                  torch.tensor(1.0), torch.zeros(5), la, gate, *GATE_PARAMS, 0.0, 0.0), 1, gate_live),
    }
    for name, (args, which, reached) in cases.items():
        assert REGISTRY[name].backends["cpu"] == "cpp"  # what torch.ops.l0fast runs on CPU tensors
        outputs = {"reference": REGISTRY[name].ref(*_clone(args)),
                   "cpp": getattr(torch.ops.l0fast, name)(*_clone(args)), "triton": _launcher(name)(*_clone(args))}
        for impl, out in outputs.items():
            grad_la = _as_tuple(out)[which]
            assert torch.equal(grad_la[~reached], torch.zeros(int((~reached).sum()))), (name, impl, grad_la)
            assert not torch.isfinite(grad_la[reached]).any(), (name, impl, grad_la)
