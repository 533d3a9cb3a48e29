"""Every registered op against its pure-PyTorch reference, plus opcheck and gradcheck."""

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
def test_opcheck(name, numel, generator):
    args = REGISTRY[name].sample_inputs(numel, torch.float32, generator)
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
