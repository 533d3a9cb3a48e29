"""Layer workloads: one ``SparseMLP`` (three ``L0Linear``, 784-256-10) training step, and an
``L0Linear`` eval-mode forward (:class:`L0LinearEval`).

Step: ``loss = cross_entropy(model(x), t) + 1e-4 * get_l0_loss()``, backward,
``Adam.step()`` (``zero_grad(set_to_none=True)`` first), at batch 32, 128 and 1024.
Dense GEMMs dominate: no bandwidth floor is reported.  The ``dense`` row is the
same step of the same network built from ``nn.Linear`` (same initial weights,
no gates, no penalty): what the gates cost on top of the layers under them.

Checks (before timing): every implementation loads l0-python's initial
``state_dict`` (strict); the eval-mode outputs, the L0 loss and the eval-mode
loss gradients match l0-python.  ``torch.compile`` traces the train-mode step,
so its check compares the train-mode loss with l0-python's (same inputs,
different gate noise) within 10%.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import COMPILED, DENSE, GATED_IMPLS, REFERENCE, Case, CheckFailed, Workload, close, compile_fn, library

LAMBDA_L0 = 1e-4


def _dense_linear(state_dict: dict, prefix: str, device: str) -> torch.nn.Linear:
    """``nn.Linear`` holding a gated layer's weight and bias (``state_dict[prefix + "weight"]``, ``[prefix + "bias"]``)."""
    out_features, in_features = state_dict[prefix + "weight"].shape
    layer = torch.nn.Linear(in_features, out_features).to(device)
    layer.load_state_dict({name: state_dict[prefix + name] for name in ("weight", "bias")})
    return layer


class _LayerWorkload(Workload):
    """Shared parts of the layer workloads: the batch size (the ``size`` label), the reference model's initial
    ``state_dict`` (torch seed 0), which every implementation loads, inputs ``x`` drawn from ``generator``
    (seeded 1), and the ``dense`` row, a reference that is not compared."""

    impls = GATED_IMPLS + (DENSE,)
    model = ""  # the model's class name in every library, built with ``*dims``

    def __init__(self, batch: int, device: str, rounds: int, dims: tuple[int, ...]):
        super().__init__(device)
        self.batch, self.rounds, self.dims = int(batch), rounds, dims
        self.size = f"b{self.batch}"
        self.release()

    def prepare(self) -> None:
        torch.manual_seed(0)
        ref = getattr(library(REFERENCE), self.model)(*self.dims)
        self.state_dict = {k: v.to(self.device) for k, v in ref.state_dict().items()}
        self.generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(self.batch, self.dims[0], generator=self.generator).to(self.device)

    def release(self) -> None:
        self.state_dict = self.generator = self.x = None

    def gated_model(self, impl: str) -> torch.nn.Module:
        """``impl``'s model holding the reference's initial state (strict)."""
        model = getattr(library(impl), self.model)(*self.dims).to(self.device)
        model.load_state_dict(self.state_dict, strict=True)
        return model

    def check(self, ref: Case, case: Case) -> str:
        if case.impl == DENSE:
            return "dense layers, no gates: not comparable, a reference row"
        return self.compare(ref, case)

    def compare(self, ref: Case, case: Case) -> str:
        """:meth:`check` of a gated implementation."""
        raise NotImplementedError


class SparseMLPStep(_LayerWorkload):
    name = "sparse_mlp"
    model = "SparseMLP"

    def __init__(self, batch: int, device: str = "cpu", rounds: int = 5, dims: tuple[int, int, int] = (784, 256, 10)):
        super().__init__(batch, device, rounds, dims)

    def describe(self) -> str:
        return f"{self.key} ({'-'.join(map(str, self.dims))}, batch {self.batch})"

    def prepare(self) -> None:
        super().prepare()
        self.t = torch.randint(0, self.dims[2], (self.batch,), generator=self.generator).to(self.device)

    def release(self) -> None:
        super().release()
        self.t = None

    def _dense(self) -> torch.nn.Module:
        """nn.Linear layers with the gated network's initial weights and biases."""
        fc1, fc2, fc3 = (_dense_linear(self.state_dict, f"fc{i}.", self.device) for i in (1, 2, 3))
        return torch.nn.Sequential(fc1, torch.nn.ReLU(), fc2, torch.nn.ReLU(), fc3)

    def build(self, impl: str) -> Case:
        model = self._dense() if impl == DENSE else self.gated_model(impl)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def loss(x, t):
            if impl == DENSE:
                return F.cross_entropy(model(x), t)
            return F.cross_entropy(model(x), t) + LAMBDA_L0 * model.get_l0_loss().to(x.device)

        fn = compile_fn(loss) if impl == COMPILED else loss
        x, t = self.x, self.t

        def step():
            opt.zero_grad(set_to_none=True)
            out = fn(x, t)
            out.backward()
            opt.step()
            return out

        return Case(impl, step, {"model": model, "loss": loss, "fn": fn, "opt": opt})

    def compare(self, ref: Case, case: Case) -> str:
        m_ref, m = ref.state["model"], case.state["model"]
        if case.impl == COMPILED:
            # with grad enabled: the graph compiled here is the one the step reuses
            l_ref, l_c = ref.state["loss"](self.x, self.t).item(), case.state["fn"](self.x, self.t).item()
            if not abs(l_c - l_ref) <= 0.1 * abs(l_ref):
                raise CheckFailed(f"train loss {l_c:.4g} vs reference {l_ref:.4g} (10%)")
            return f"train loss {l_c:.4g} vs {l_ref:.4g}"
        m_ref.eval(), m.eval()
        try:
            losses = []
            for model, loss in ((m_ref, ref.state["loss"]), (m, case.state["loss"])):
                model.zero_grad(set_to_none=True)
                value = loss(self.x, self.t)
                value.backward()
                losses.append(value.detach())
            with torch.no_grad():
                err = close(m(self.x), m_ref(self.x), "eval outputs", rtol=1e-4, atol=1e-5)
            close(losses[1], losses[0], "eval loss", rtol=1e-5, atol=1e-6)
            for (name, p_ref), p in zip(m_ref.named_parameters(), m.parameters()):
                close(p.grad, p_ref.grad, f"eval grad {name}", rtol=1e-3, atol=1e-6)
        finally:
            m_ref.train(), m.train()
            m_ref.zero_grad(set_to_none=True), m.zero_grad(set_to_none=True)
        return f"eval outputs max|diff| {err:.1e}; eval grads allclose"


class L0LinearEval(_LayerWorkload):
    """Inference: one ``L0Linear`` (784 -> 256 by default) in eval mode under ``torch.no_grad()``, against
    ``nn.Linear`` of the same size (the ``dense`` row: the layer's weight and bias, no gates).  A timed unit
    is one forward; each round times ``calls`` forwards in a row (a single one is too short to time)."""

    name = "l0linear_eval"
    unit = "forward"
    model = "L0Linear"

    def __init__(self, batch: int, device: str = "cpu", rounds: int = 5, dims: tuple[int, int] = (784, 256)):
        super().__init__(batch, device, rounds, dims)
        self.calls = max(4, 256 // self.batch)

    def describe(self) -> str:
        return f"{self.key} (L0Linear{self.dims} eval forward, no_grad, batch {self.batch}, {self.calls} per round)"

    def build(self, impl: str) -> Case:
        layer = _dense_linear(self.state_dict, "", self.device) if impl == DENSE else self.gated_model(impl)
        layer.eval()
        fn = compile_fn(layer) if impl == COMPILED else layer
        x, calls = self.x, self.calls

        def forward():
            with torch.no_grad():
                return fn(x)

        def repeated():
            with torch.no_grad():
                for _ in range(calls):
                    fn(x)

        return Case(impl, forward, {"forward": forward}, measure=lambda timer: timer(repeated) / calls)

    def compare(self, ref: Case, case: Case) -> str:
        err = close(case.state["forward"](), ref.state["forward"](), "eval outputs", rtol=1e-4, atol=1e-5)
        return f"eval outputs max|diff| {err:.1e}"
