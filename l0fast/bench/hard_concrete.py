"""Gate workloads: a HardConcrete training step, and the L0 penalty alone.

``hard_concrete``: one training step of ``HardConcrete(n)`` -- sampled forward,
``loss = gates.sum() + get_penalty()``, backward (``qz_logits.grad`` reset to
None each step).  Floor: read the logits, write the gates, read the saved
state in backward, write the gradient: 16 bytes per gate.

``l0_penalty``: ``get_penalty()`` forward and backward.  Floor: read the
logits once, write the gradient once: 8 bytes per gate.

Checks (before timing, same logits in every implementation): eval-mode gates
and the penalty match l0-python; the sampled gates and the step's gradient
match it in distribution (mean, fraction of exact 0 and 1 gates, within six
standard errors).
"""

from __future__ import annotations

import math

import torch

from ..rng import reseed_rng_state
from .common import COMPILED, Case, CheckFailed, Workload, close, compile_fn, library, near


def _size_label(n: int) -> str:
    exp = int(round(math.log10(n)))
    return f"1e{exp}" if 10**exp == n else f"{n:,}"


class _GateWorkload(Workload):
    def __init__(self, n: int, device: str = "cpu", rounds: int = 5):
        super().__init__(device)
        self.n, self.rounds, self.size = int(n), rounds, _size_label(n)
        self.logits = None

    def describe(self) -> str:
        return f"{self.key} ({self.n:,} gates)"

    def prepare(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.logits = (1.5 * torch.randn(self.n, generator=g)).to(self.device)

    def release(self) -> None:
        self.logits = None

    def _module(self, impl: str):
        gates = library(impl).HardConcrete(self.n, temperature=0.5).to(self.device)
        with torch.no_grad():
            gates.qz_logits.copy_(self.logits)
        return gates.train()


class HardConcreteStep(_GateWorkload):
    name = "hard_concrete"

    def build(self, impl: str) -> Case:
        gates = self._module(impl)

        def loss():
            return gates().sum() + gates.get_penalty()

        fn = compile_fn(loss) if impl == COMPILED else loss

        def step():
            gates.qz_logits.grad = None
            fn().backward()

        return Case(impl, step, {"gates": gates, "step": step})

    def check(self, ref: Case, case: Case) -> str:
        """:meth:`_check` on fixed draws (both libraries' noise seeded), so that a six-standard-error check
        gives the same answer at every run; torch's generator is left as it was."""
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.device.type == "cuda" else []):
            torch.manual_seed(1)  # not 0, the logits' seed: noise from their stream is not independent of them
            reseed_rng_state(case.state["gates"])  # l0fast's stream (l0-python's gates draw from torch's)
            return self._check(ref, case)

    def _check(self, ref: Case, case: Case) -> str:
        g_ref, g = ref.state["gates"], case.state["gates"]
        n, notes = self.n, []
        with torch.no_grad():
            g_ref.eval(), g.eval()
            err = close(g(), g_ref(), "eval gates", rtol=1e-5, atol=1e-6)
            close(g.get_penalty(), g_ref.get_penalty(), "penalty", rtol=1e-5, atol=1e-3)
            notes.append(f"eval gates max|diff| {err:.1e}")
            g_ref.train(), g.train()
        tol = 6 * 0.5 / math.sqrt(n) + 1e-4
        if case.impl != COMPILED:  # eager forward: compare the sampled gates themselves
            with torch.no_grad():
                s_ref, s = g_ref(), g()
            for stat, f in (("mean", torch.mean), ("P(0)", lambda t: (t == 0).float().mean()), ("P(1)", lambda t: (t == 1).float().mean())):
                near(f(s).item(), f(s_ref).item(), tol, f"sampled gates {stat}")
        ref.state["step"](), case.state["step"]()
        d_ref, d = g_ref.qz_logits.grad, g.qz_logits.grad
        if d is None or not torch.isfinite(d).all():
            raise CheckFailed("step gradient missing or not finite")
        near(d.mean().item(), d_ref.mean().item(), 6 * d_ref.std().item() / math.sqrt(n) + 1e-6, "step gradient mean")
        return "; ".join(notes + [f"sampled stats within {tol:.1e}"])

    def floor_bytes(self) -> int:
        return 16 * self.n


class L0PenaltyStep(_GateWorkload):
    name = "l0_penalty"

    def build(self, impl: str) -> Case:
        gates = self._module(impl)
        fn = compile_fn(gates.get_penalty) if impl == COMPILED else gates.get_penalty

        def step():
            gates.qz_logits.grad = None
            fn().backward()

        return Case(impl, step, {"gates": gates, "step": step})

    def check(self, ref: Case, case: Case) -> str:
        ref.state["step"](), case.state["step"]()
        g_ref, g = ref.state["gates"], case.state["gates"]
        close(g.qz_logits.grad, g_ref.qz_logits.grad, "penalty gradient", rtol=1e-4, atol=1e-7)
        with torch.no_grad():
            p_ref, p = g_ref.get_penalty().item(), g.get_penalty().item()
        near(p, p_ref, 1e-5 * abs(p_ref) + 1e-3, "penalty")
        return f"penalty {p:.6g} vs {p_ref:.6g}; gradient allclose"

    def floor_bytes(self) -> int:
        return 8 * self.n
