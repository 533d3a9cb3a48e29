"""L0FAST_BACKEND forcing, each case in a fresh interpreter so the variable is read at import."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from own_session import run_in_own_session

pytest.importorskip("triton")

PROBE = textwrap.dedent(
    """
    import sys, torch, scipy.sparse as sp, l0fast
    info = l0fast.backend_info()
    out = {"info": info}
    if sys.argv[2] == "run":
        torch.manual_seed(0)
        hc = l0fast.HardConcrete(50_000, seed=123)
        with torch.no_grad():
            hc.qz_logits.copy_(3 * torch.randn(50_000))
            hc.qz_logits[:2] = torch.tensor([25.0, -25.0])
        gates = hc()
        (gates * torch.linspace(-1, 1, 50_000)).sum().backward()
        out.update(gates=gates.detach(), grad=hc.qz_logits.grad,
                   uniforms=torch.ops.l0fast.philox_uniform(torch.tensor([123, 3]), 50_001))
        M = sp.random(300, 4000, density=0.05, random_state=0, format="csr")
        model = l0fast.SparseCalibrationWeights(4000, seed=7)
        y = model(M)
        loss = (y - torch.linspace(0, 10, 300)).square().sum() + 0.01 * model.get_l0_penalty()
        loss.backward()
        out.update(y=y.detach(), grad_lw=model.log_weight.grad, grad_la=model.log_alpha.grad)
    torch.save(out, sys.argv[1])
    """
)


def _probe(tmp_path, backend, interpret="1", run=False):
    env = {k: v for k, v in os.environ.items() if k not in ("L0FAST_BACKEND", "TRITON_INTERPRET")}
    env["L0FAST_BACKEND"] = backend
    env["TRITON_INTERPRET"] = interpret
    path = tmp_path / f"{backend}-{interpret}.pt"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), "run" if run else "info"], env=env, capture_output=True, text=True, timeout=300
    )
    return result, (torch.load(path) if result.returncode == 0 else None)


def test_triton_and_cpp_agree_on_seeded_models(tmp_path):
    res_t, tri = _probe(tmp_path, "triton", run=True)
    assert res_t.returncode == 0, res_t.stderr
    res_c, cpp = _probe(tmp_path, "cpp", run=True)
    assert res_c.returncode == 0, res_c.stderr
    assert set(v["cpu"] for v in tri["info"].values()) == {"triton"}
    assert set(v["cpu"] for v in cpp["info"].values()) == {"cpp"}
    assert torch.equal(tri["uniforms"], cpp["uniforms"])
    assert (tri["gates"] - cpp["gates"]).abs().max().item() <= 2e-6
    assert torch.equal(tri["gates"] == 0, cpp["gates"] == 0) and torch.equal(tri["gates"] == 1, cpp["gates"] == 1)
    torch.testing.assert_close(tri["grad"], cpp["grad"], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(tri["y"], cpp["y"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(tri["grad_lw"], cpp["grad_lw"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(tri["grad_la"], cpp["grad_la"], atol=1e-3, rtol=1e-4)


def test_reference_backend_serves_everything(tmp_path):
    result, out = _probe(tmp_path, "reference")
    assert result.returncode == 0, result.stderr
    assert all(v == {"cpu": "reference", "cuda": "reference"} for v in out["info"].values())


def test_cpp_backend_refuses_cuda(tmp_path):
    result, out = _probe(tmp_path, "cpp")
    assert result.returncode == 0, result.stderr
    assert all(v["cpu"] == "cpp" and v["cuda"].startswith("unavailable") for v in out["info"].values())


def test_triton_on_cpu_without_interpreter_raises_on_use(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(L0FAST_BACKEND="triton", TRITON_INTERPRET="0")
    code = "import torch, l0fast; torch.ops.l0fast.hard_concrete_mean(torch.zeros(3), 0.5, -0.1, 1.1)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "BackendError" in result.stderr and "L0FAST_BACKEND" in result.stderr and "TRITON_INTERPRET=1" in result.stderr


def test_unknown_backend_names_the_variable(tmp_path):
    env = dict(os.environ, L0FAST_BACKEND="cuda-please")
    result = subprocess.run([sys.executable, "-c", "import l0fast"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "L0FAST_BACKEND='cuda-please'" in result.stderr


def test_kernels_lower_to_ptx_for_h100_and_t4():
    """The interpreter does not check GPU lowering: compile every kernel to PTX (no GPU needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    probe = os.path.join(os.path.dirname(__file__), "triton_aot_probe.py")
    # a hang guard, not a speed test (a loaded machine took > 300 s)
    done = run_in_own_session([sys.executable, probe], timeout=900, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_forced_triton_traces_with_compile_fullgraph(tmp_path):
    code = textwrap.dedent(
        """
        import torch, l0fast
        from l0fast.ops import hard_concrete_sample, l0_penalty
        state = torch.tensor([5, 3])
        f = lambda a: hard_concrete_sample(a, state, 2 / 3, -0.1, 1.1).sum() + l0_penalty(a, 2 / 3, -0.1, 1.1)
        a = torch.randn(1000, requires_grad=True)
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(a)
        got.backward()
        assert torch.allclose(got, f(a.detach()))
        """
    )
    env = dict(os.environ, L0FAST_BACKEND="triton", TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


# pytest on test files in a process whose ops all run on one backend (read once, at import)
PYTEST_ON_BACKEND = """
import sys, pytest, l0fast
served = {info["cpu"] for info in l0fast.backend_info().values()}
assert served == {sys.argv[1]}, served
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-k", sys.argv[2], *sys.argv[3:]]))
"""


def _pytest_on_backend(backend: str, selection: str, *files: str) -> None:
    env = dict(os.environ, L0FAST_BACKEND=backend, TRITON_INTERPRET="1")
    here = os.path.dirname(__file__)
    done = run_in_own_session([sys.executable, "-c", PYTEST_ON_BACKEND, backend, selection, *files], timeout=600,
                              env=env, cwd=here)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


def test_gradcheck_and_autograd_backward_on_the_triton_kernels():
    """fp64 gradcheck, gradgradcheck and the autograd backward against the reference's, of the ops on Triton."""
    _pytest_on_backend("triton", "gradcheck or (backward_matches_autograd and not 65537)", "test_ops.py")


def test_fused_engines_follow_a_loop_of_pure_pytorch_ops():
    """The reference engine loops over torch.ops.l0fast, which the C++ kernels serve by default: here the
    pure-PyTorch references serve them, so the fused C++ and Triton loops meet an independent reference (fp64)."""
    _pytest_on_backend("reference", "follow and 1e-09 or several", "test_fit_engine.py", "test_household_options.py",
                       "test_triton_fit.py")
