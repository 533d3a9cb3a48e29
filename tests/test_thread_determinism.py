"""Results are bitwise identical at 1, 2 and 3 threads, on every op and every public path.

The CPU kernels cut work into blocks whose boundaries depend only on the size
and compute every element with the same instructions (see csrc/common.h), so
these tests hold by construction, not by luck: many random inputs per op,
whole fits with every calibration option,
sizes that are primes or sit just above a lane group (64), a noise block
(1024) or a parallel block (16384), fp32 and fp64, and inputs that are not
64-byte aligned.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import l0fast
from l0fast.ops import REGISTRY
from threads import num_threads

THREADS = (1, 2, 3)
SIZES = (1, 63, 65, 1025, 16_385, 32_769, 65_537, 100_003)
INPUTS_PER_SIZE = 4
OPS = sorted(REGISTRY)


def _misaligned(arg):
    """A copy of a float tensor whose data starts 3 elements past an aligned address."""
    if not isinstance(arg, torch.Tensor) or not arg.is_floating_point() or arg.numel() < 2:
        return arg
    buffer = torch.empty(arg.numel() + 3, dtype=arg.dtype)
    buffer[3:] = arg.reshape(-1)
    return buffer[3:].view(arg.shape)


def _outputs(name, args):
    out = getattr(torch.ops.l0fast, name)(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    return out if isinstance(out, tuple) else (out,)


def _assert_same(results):
    first = results[0]
    for other in results[1:]:
        assert len(other) == len(first)
        for a, b in zip(first, other):
            assert torch.equal(a, b), f"max difference {(a.double() - b.double()).abs().max().item():.3g}"


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("numel", SIZES)
def test_every_op_is_bitwise_identical_at_any_thread_count(name, dtype, numel):
    for draw in range(INPUTS_PER_SIZE):
        generator = torch.Generator().manual_seed(1000 * numel + draw)
        args = REGISTRY[name].sample_inputs(numel, dtype, generator)
        results = []
        for threads in THREADS:
            with num_threads(threads):
                results.append(_outputs(name, args))
        with num_threads(2):
            results.append(_outputs(name, [_misaligned(a) for a in args]))
        _assert_same(results)


def _calibration_problem(n=40_009, q=57, seed=0):
    rng = np.random.default_rng(seed)
    M = sp.random(q, n, density=0.05, format="csr", random_state=rng)
    M = sp.vstack([M, sp.csr_matrix(np.ones((1, n)))]).tocsr()
    y = M @ rng.uniform(0.5, 2.0, n)
    return M, y


def _keep(n):
    return np.arange(n) % 11 == 0


@pytest.mark.parametrize("loss_type,options", [
    ("mse", {}),
    ("relative", {}),
    ("capped_relative", {"relative_floor": 5.0, "target_count": 3000, "keep": _keep, "weight_bounds": (0.3, 4.0)}),
    ("relative", {"lambda_l0": lambda n: np.linspace(0, 1e-3, n)}),
])
def test_whole_fit_is_bitwise_identical_at_any_thread_count(loss_type, options):
    M, y = _calibration_problem()
    n = M.shape[1]
    kwargs = {"lambda_l0": 1e-4} if "target_count" not in options else {}
    kwargs.update({k: v(n) if callable(v) else v for k, v in options.items()})
    results = []
    for threads in THREADS:
        with num_threads(threads):
            model = l0fast.SparseCalibrationWeights(n, init_weights=1.0, seed=7)
            model.fit(M, y, lr=0.1, epochs=15, loss_type=loss_type, **kwargs)
            results.append((model.log_weight.detach().clone(), model.log_alpha.detach().clone(), model.predict(M)))
    _assert_same(results)


def test_l0_linear_train_step_is_bitwise_identical_at_any_thread_count():
    x = torch.randn(37, 301, generator=torch.Generator().manual_seed(0))
    target = torch.randn(37, 129, generator=torch.Generator().manual_seed(1))
    results = []
    for threads in THREADS:
        with num_threads(threads):
            torch.manual_seed(3)
            layer = l0fast.L0Linear(301, 129, seed=5)
            optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
            for _ in range(3):
                loss = (layer(x) - target).square().mean() + 1e-3 * layer.get_l0_penalty()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            results.append(tuple(p.detach().clone() for p in layer.parameters()))
    _assert_same(results)
