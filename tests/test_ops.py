"""Every registered op against its pure-PyTorch reference, plus opcheck and gradcheck."""

import os
import subprocess
import sys

import pytest
import torch

import l0fast
from l0fast.ops import REGISTRY, hard_concrete_mean, hard_concrete_sample, l0_penalty
from l0fast.ops.hard_concrete import GATE_PARAMS, hard_concrete_mean_ref, hard_concrete_sample_ref
from l0fast.ops.l0_penalty import l0_penalty_ref

SIZES = [0, 1, 7, 1000, 65_537]
# Tolerance travels with the dtype.
DTYPES = [(torch.float32, 2e-6, 1e-5), (torch.float64, 1e-12, 1e-10)]
OPS = sorted(REGISTRY)


def _clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def test_cpp_backend_serves_every_op_on_cpu():
    info = l0fast.backend_info()
    assert sorted(info) == OPS
    assert all(info[name]["cpu"] == "cpp" for name in OPS), info


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_op_matches_reference(name, numel, dtype, atol, rtol, generator):
    entry = REGISTRY[name]
    args = entry.sample_inputs(numel, dtype, generator)
    outputs = getattr(torch.ops.l0fast, name)(*_clone(args))
    expected = entry.ref(*_clone(args))
    if isinstance(outputs, torch.Tensor):
        outputs, expected = (outputs,), (expected,)
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        assert got.shape == want.shape and got.dtype == want.dtype
        if name == "philox_uniform":
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, atol=atol * max(1, numel) ** 0.5 if got.ndim == 0 else atol, rtol=rtol)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("numel", [7, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(name, numel, dtype, generator):
    args = REGISTRY[name].sample_inputs(numel, dtype, generator)
    torch.library.opcheck(getattr(torch.ops.l0fast, name), args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_fp32(dtype, generator):
    log_alpha, state, *params = REGISTRY["hard_concrete_sample"].sample_inputs(4096, torch.float32, generator)
    got = torch.ops.l0fast.hard_concrete_sample(log_alpha.to(dtype), state, *params)
    want = hard_concrete_sample_ref(log_alpha.to(dtype).float(), state, *params)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=0)


def _wrapped(kind):
    beta, gamma, zeta = GATE_PARAMS
    state = torch.tensor([7, 40], dtype=torch.int64)
    return {
        "sample": (lambda a: hard_concrete_sample(a, state, beta, gamma, zeta), lambda a: hard_concrete_sample_ref(a, state, beta, gamma, zeta)),
        "mean": (lambda a: hard_concrete_mean(a, beta, gamma, zeta), lambda a: hard_concrete_mean_ref(a, beta, gamma, zeta)),
        "penalty": (lambda a: l0_penalty(a, beta, gamma, zeta), lambda a: l0_penalty_ref(a, beta, gamma, zeta)),
    }[kind]


@pytest.mark.parametrize("kind", ["sample", "mean", "penalty"])
@pytest.mark.parametrize("numel", [1, 7, 1000, 65_537])
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_backward_matches_autograd_of_reference(kind, numel, dtype, atol, rtol, generator):
    fast, ref = _wrapped(kind)
    log_alpha = REGISTRY["hard_concrete_mean"].sample_inputs(numel, dtype, generator)[0]
    a1, a2 = log_alpha.clone().requires_grad_(), log_alpha.clone().requires_grad_()
    out1, out2 = fast(a1), ref(a2)
    grad_out = torch.randn(out1.shape, generator=generator, dtype=dtype)
    out1.backward(grad_out)
    out2.backward(grad_out)
    torch.testing.assert_close(a1.grad, a2.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("kind", ["sample", "mean", "penalty"])
def test_gradcheck_fp64(kind, generator):
    fast, _ = _wrapped(kind)
    log_alpha = (2 * torch.randn(64, generator=generator, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(fast, (log_alpha,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["sample", "mean", "penalty"])
def test_gradgradcheck_fp64(kind, generator):
    """Second derivatives (backward with create_graph=True, e.g. Hessian-vector products) are exact, not the
    kernels' backward taken as a constant."""
    fast, _ = _wrapped(kind)
    log_alpha = (2 * torch.randn(64, generator=generator, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradgradcheck(fast, (log_alpha,), eps=1e-6, atol=1e-5)


def test_broadcast_gradient_of_sum_is_not_materialized_but_correct(generator):
    log_alpha = torch.randn(5000, generator=generator).requires_grad_()
    fast, ref = _wrapped("sample")
    fast(log_alpha).sum().backward()
    expected = torch.autograd.grad(ref(log_alpha).sum(), log_alpha)[0]
    torch.testing.assert_close(log_alpha.grad, expected, atol=2e-6, rtol=1e-5)


def test_recycled_buffers_never_alias_live_outputs(generator):
    log_alpha, state, *params = REGISTRY["hard_concrete_sample"].sample_inputs(1 << 20, torch.float32, generator)
    first = torch.ops.l0fast.hard_concrete_sample(log_alpha, state, *params)
    second = torch.ops.l0fast.hard_concrete_mean(log_alpha, *params)
    assert first.data_ptr() != second.data_ptr()
    first_copy = first.clone()
    third = torch.ops.l0fast.hard_concrete_mean(log_alpha * 0.5, *params)
    torch.testing.assert_close(first, first_copy, atol=0, rtol=0)
    del first
    fourth = torch.ops.l0fast.hard_concrete_sample(log_alpha, state, *params)
    torch.testing.assert_close(fourth, first_copy, atol=0, rtol=0)
    torch.testing.assert_close(third, hard_concrete_mean_ref(log_alpha * 0.5, *params))
    torch.testing.assert_close(second, hard_concrete_mean_ref(log_alpha, *params))


def test_calling_the_ops_does_not_import_dynamo():
    """CPU kernels are dispatcher kernels: the first call must not import torch._dynamo (~145 MB of RSS)."""
    import subprocess
    import sys

    code = (
        "import sys, torch, l0fast\n"
        "g = l0fast.HardConcrete(1000, seed=0); (g().sum() + g.get_penalty()).backward()\n"
        "layer = l0fast.L0Linear(8, 4, seed=0); (layer(torch.randn(2, 8)).sum() + layer.get_l0_penalty()).backward()\n"
        "layer.eval(); layer(torch.randn(2, 8))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"



def _view(a: torch.Tensor, matrix: bool) -> torch.Tensor:
    """``a``'s values in a view that is not contiguous: transposed (4, 6) -> (6, 4), or a 1-D one of stride 2."""
    if matrix:
        return a.reshape(4, 6).t()
    strided = torch.empty(2 * a.numel(), dtype=a.dtype)[::2]
    return strided.copy_(a)


@pytest.mark.parametrize("name", [name for name in OPS if name != "philox_uniform"])
def test_opcheck_on_views(name, generator):
    """The fake kernels gave outputs the strides of a transposed log_alpha where the kernels return contiguous
    ones, so torch.compile(fullgraph=True) failed its stride assertion on views (and channels_last tensors).
    Gate ops take any shape (a transposed view); the others take vectors (a strided one)."""
    matrix = name.startswith(("hard_concrete", "l0_penalty"))
    args = REGISTRY[name].sample_inputs(24, torch.float32, generator)
    viewed = (lambda a: a.numel() == 24) if matrix else (lambda a: a.numel() >= 2)
    views = tuple(_view(a, matrix) if isinstance(a, torch.Tensor) and a.is_floating_point() and viewed(a) else a for a in args)
    assert any(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in views), "no view to check"
    torch.library.opcheck(getattr(torch.ops.l0fast, name), views)


def test_gated_spmv_carries_a_nan_weight_to_the_targets_it_enters(generator):
    """The kernel skips households whose weight is 0, and under -ffast-math read a NaN weight as 0: the product
    dropped it where the reference gives NaN (and calibration_objective returned finite, wrong totals)."""
    from l0fast.ops.gated_spmv import example_matrix, gated_spmv_ref

    col_ptr, row_idx, values, q = example_matrix(50, torch.float32, generator)
    weight = torch.rand(50, generator=generator)
    weight[0] = float("nan")  # household 0 has entries (row 0 is every household's)
    got = torch.ops.l0fast.gated_spmv(col_ptr, row_idx, values, weight, q)
    want = gated_spmv_ref(col_ptr, row_idx, values, weight, q)
    assert torch.isnan(got[0]) and torch.equal(torch.isnan(got), torch.isnan(want))
    torch.testing.assert_close(got[~torch.isnan(want)], want[~torch.isnan(want)])


def test_half_gated_backward_keeps_dl_dg_in_fp32():
    """dL/d(w g) * w was rounded to fp16 before the chain rule: 300 * 400 overflowed to inf (NaN at closed gates)
    where the reference, in fp32, gives 27488."""
    from l0fast.ops.hard_concrete_gated import hard_concrete_gated_backward_ref

    log_alpha = torch.tensor([-30.0, 0.0, 30.0, 1.0], dtype=torch.float16)
    weight, grad = torch.full((4,), 400.0, dtype=torch.float16), torch.full((4,), 300.0, dtype=torch.float16)
    gate = torch.tensor([0.0, 0.0795, 1.0, 1.0], dtype=torch.float16)
    for upstream in (grad, grad[:1].expand(4)):  # one value per element, or broadcast
        got = torch.ops.l0fast.hard_concrete_gated_backward(upstream, None, gate, log_alpha, weight, *GATE_PARAMS)
        want = hard_concrete_gated_backward_ref(upstream, None, gate, log_alpha, weight, *GATE_PARAMS)
        assert torch.isfinite(got[0]).all() and got[0][1] > 1e4
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])


def test_a_malformed_buffer_cache_size_is_named():
    """std::stoull raised a bare "stoull" at the first large output, and -1 lifted the cap silently."""
    code = "import torch, l0fast; torch.ops.l0fast.hard_concrete_mean(torch.zeros(100_000), 0.5, -0.1, 1.1)"
    for value in ("abc", "", "-1", "12MB"):
        env = dict(os.environ, L0FAST_BUFFER_CACHE_MB=value)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and "L0FAST_BUFFER_CACHE_MB must be a whole number of MiB >= 0" in done.stderr, value
        assert f"got '{value}'" in done.stderr


def test_reference_backend_gives_the_contiguous_outputs_the_fakes_say():
    """The references (every device's kernel under L0FAST_BACKEND=reference, and CUDA without Triton) kept a
    transposed input's strides, where the fake kernels say contiguous."""
    code = (
        "import torch, l0fast\n"
        "from l0fast.ops import REGISTRY\n"
        "assert REGISTRY['hard_concrete_mean'].backends['cpu'] == 'reference'\n"
        "la, w = torch.randn(6, 4).t(), torch.randn(6, 4).t()\n"
        "for name, args in (('hard_concrete_mean', (la, 0.5, -0.1, 1.1)),\n"
        "                   ('hard_concrete_gated', (la, torch.tensor([1, 2]), w, 0.5, -0.1, 1.1))):\n"
        "    out = getattr(torch.ops.l0fast, name)(*args)\n"
        "    assert all(t.is_contiguous() for t in (out if isinstance(out, tuple) else (out,))), name\n"
        "    torch.library.opcheck(getattr(torch.ops.l0fast, name), args)\n"
    )
    env = dict(os.environ, L0FAST_BACKEND="reference")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# 2 / beta = 1, 2, 3, 4 take one exponential per gate and penalty (gate_math.h); the rest a log and two.
TEMPERATURES = [2.0, 1.0, 2.0 / 3.0, 0.5, 0.3, 0.1]


@pytest.mark.parametrize("beta", TEMPERATURES)
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
def test_gates_and_penalty_at_every_temperature_match_the_float64_reference(beta, dtype, atol, generator):
    from l0fast.ops.l0_penalty import l0_penalty_backward_ref

    # beyond the +-20 clamp at both ends, over several noise blocks and a partial lane group
    log_alpha = torch.linspace(-25, 25, 65_537, dtype=torch.float64)[torch.randperm(65_537, generator=generator)]
    log_alpha = log_alpha.to(dtype)
    weight = torch.randn(log_alpha.shape, generator=generator, dtype=dtype)
    state, params = torch.tensor([5, 3]), (beta, -0.1, 1.1)
    exact = log_alpha.double()  # the same values: the reference then only adds fp64 rounding

    gate = torch.ops.l0fast.hard_concrete_sample(log_alpha, state, *params)
    fused_gate, gated, penalty = torch.ops.l0fast.hard_concrete_gated(log_alpha, state, weight, *params)
    assert torch.equal(fused_gate, gate), "the fused kernel's gates must be hard_concrete_sample's, bit for bit"
    assert torch.equal(penalty, torch.ops.l0fast.l0_penalty(log_alpha, *params)), "and its penalty l0_penalty's"
    torch.testing.assert_close(gate.double(), hard_concrete_sample_ref(exact, state, *params), atol=atol, rtol=0)
    assert 0 < (gate == 0).sum() and 0 < (gate == 1).sum() and 0 < ((gate > 0) & (gate < 1)).sum()
    torch.testing.assert_close(gated, weight * gate, atol=0, rtol=0)
    torch.testing.assert_close(penalty.double(), l0_penalty_ref(exact, *params), atol=0, rtol=atol)
    grad = torch.tensor(0.75, dtype=dtype)
    torch.testing.assert_close(torch.ops.l0fast.l0_penalty_backward(grad, log_alpha, *params).double(),
                               l0_penalty_backward_ref(grad.double(), exact, *params), atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("beta,gamma,zeta", [(100.0, -2.2, 1.1), (2.0, -1e15, 1.1), (200.0, -2.0, 1.1), (0.3, -1e140, 1.1)])
def test_penalty_stays_finite_where_its_exponential_overflows(beta, gamma, zeta, dtype):
    """(-gamma / zeta)^beta t^2 overflows fp32 where beta log(-gamma / zeta) - a > 88: the penalty and its gradient
    were NaN there (1 / (1 + inf) under -ffast-math); they are bounded as sigmoid's argument is (+-80)."""
    from l0fast.ops.l0_penalty import l0_penalty_backward_ref

    log_alpha = torch.linspace(-25, 25, 1001, dtype=torch.float64).to(dtype)
    params, state = (beta, gamma, zeta), torch.tensor([1, 0])
    penalty = torch.ops.l0fast.l0_penalty(log_alpha, *params)
    _, _, fused = torch.ops.l0fast.hard_concrete_gated(log_alpha, state, None, *params)
    grad = torch.ops.l0fast.l0_penalty_backward(torch.tensor(1.0, dtype=dtype), log_alpha, *params)
    assert torch.isfinite(penalty) and torch.equal(fused, penalty) and torch.isfinite(grad).all()
    exact = log_alpha.double()
    torch.testing.assert_close(penalty.double(), l0_penalty_ref(exact, *params), rtol=1e-2, atol=1e-30)
    torch.testing.assert_close(grad.double(), l0_penalty_backward_ref(torch.tensor(1.0, dtype=torch.float64), exact, *params),
                               rtol=1e-2, atol=1e-30)
