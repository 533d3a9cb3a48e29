"""How much of a gated network's training step over the dense one is its optimizer's, whatever computes the gates.

A gated layer holds one gate logit per weight, so the user's Adam updates
twice the parameters of the plain network: work that no implementation of
the gates can remove.  This script times, alternating in one process as
``l0fast bench`` does (same step, same malloc thresholds), the ``sparse_mlp``
step (``SparseMLP(784, 256, 10)``, Adam, ``loss + 1e-4 * get_l0_loss()``) of

- ``dense``: the same network of ``nn.Linear`` layers (the bench's dense row);
- ``dense + logits' Adam``: that step, with the gate logits added to its Adam
  as parameters holding a fixed gradient (no gate is sampled, no penalty
  taken): the floor of any gated implementation of this step;
- ``floor + gate kernels``: that step running l0fast's gate kernels too, the
  forward one on each layer's weight and gate logits and the backward one on
  the dense weight's gradient, whose gradients Adam then applies: l0fast's
  step less everything around its kernels (autograd nodes, Python, checks);
- ``l0fast`` and ``l0-python`` (when installed).

It prints the median ms per step, the ratio to the dense step, for the
gated rows the part of their ratio above the floor (what the gates cost), and
the step's three phases: the forward (the loss, penalty included), the
backward and the optimizer step, each timed within every step; then what
l0fast's step spends outside its gate kernels, phase by phase.

    python bench/compare_optimizer_floor.py --batch 128 --rounds 15
"""

import argparse
import statistics
import time

import torch

from l0fast.bench.common import DENSE, L0FAST, REFERENCE, Case, fix_malloc_thresholds, l0_available
from l0fast.bench.layers import LAMBDA_L0, SparseMLPStep
from l0fast.ops.hard_concrete import advance_rng_state

FLOOR = "dense + logits' Adam"
KERNELS = "floor + gate kernels"
PHASES = ("forward", "backward", "optimizer")


def step_in_phases(state: dict, x: torch.Tensor, t: torch.Tensor) -> list[float]:
    """One training step of a case (``state``: ``fn(x, t)`` the loss, ``opt`` its optimizer, and optionally
    ``set_grads()``, run after the backward); the seconds of its forward, backward and optimizer step."""
    state["opt"].zero_grad(set_to_none=True)
    marks = [time.perf_counter()]
    loss = state["fn"](x, t)
    marks.append(time.perf_counter())
    loss.backward()
    if "set_grads" in state:
        state["set_grads"]()
    marks.append(time.perf_counter())
    state["opt"].step()
    marks.append(time.perf_counter())
    return [end - start for start, end in zip(marks, marks[1:])]


def _dense_and_logits(workload: SparseMLPStep) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """The dense network of the workload and its gated network's initial gate logits, as parameters."""
    model = workload.build(DENSE).state["model"]
    logits = [torch.nn.Parameter(v.clone()) for k, v in workload.state_dict.items() if k.endswith("qz_logits")]
    return model, logits


def _state(model: torch.nn.Module, logits: list, fn, set_grads, **extra) -> dict:
    """A case's state for :func:`step_in_phases`: Adam on the dense network's parameters and the logits."""
    return {"model": model, "logits": logits, "fn": fn, "set_grads": set_grads,
            "opt": torch.optim.Adam([*model.parameters(), *logits], lr=1e-3), **extra}


def floor_case(workload: SparseMLPStep) -> Case:
    """The dense step whose Adam also updates the gated network's initial gate logits, each holding a fixed
    gradient (standard normal * 1e-3, drawn once) set again after the backward."""
    model, logits = _dense_and_logits(workload)
    generator = torch.Generator().manual_seed(2)
    grads = [1e-3 * torch.randn(p.shape, generator=generator).to(p.device) for p in logits]

    def set_grads():
        for p, g in zip(logits, grads):
            p.grad = g

    state = _state(model, logits, lambda x, t: torch.nn.functional.cross_entropy(model(x), t), set_grads, grads=grads)
    return Case(FLOOR, lambda: step_in_phases(state, workload.x, workload.t), state)


def kernels_case(workload: SparseMLPStep) -> Case:
    """The floor step running l0fast's gate kernels on each layer: in the forward,
    ``gate, weight * gate, penalty = hard_concrete_gated(logits, rng_state, weight)``; after the backward,
    ``hard_concrete_gated_backward(dL/dW, LAMBDA_L0, gate, logits, weight)`` from the dense weight's gradient
    ``dL/dW``, whose outputs become the logits' and the weight's gradients.  The dense layers multiply by the
    ungated weight: only the kernels' work is added (with the gate parameters of an l0fast network and its noise
    streams, freshly seeded).  The streams advance as the layers' do: the same gates at every step would leave
    the second moments of always-closed weights at exactly 0, on which ATen's sqrt runs ~30x slower (on the
    2-core Xeon), and Adam's step 1.5x."""
    model, logits = _dense_and_logits(workload)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    gated = workload.gated_model(L0FAST)
    gates = [gated.fc1.weight_gates, gated.fc2.weight_gates, gated.fc3.weight_gates]
    params = [(g.temperature, g.gamma, g.zeta) for g in gates]
    rng_states = [g.rng_state.clone() for g in gates]
    grad_penalty = torch.tensor(LAMBDA_L0, device=workload.x.device)
    saved_gates = []

    def fn(x, t):
        saved_gates.clear()
        for linear, la, rng_state, p in zip(linears, logits, rng_states, params):
            gate, _, _ = torch.ops.l0fast.hard_concrete_gated(la.detach(), rng_state, linear.weight.detach(), *p)
            advance_rng_state(rng_state, la.numel())  # fresh gates every step, as the layers draw
            saved_gates.append(gate)
        return torch.nn.functional.cross_entropy(model(x), t)

    def set_grads():
        for linear, la, gate, p in zip(linears, logits, saved_gates, params):
            la.grad, linear.weight.grad = torch.ops.l0fast.hard_concrete_gated_backward(
                linear.weight.grad, grad_penalty, gate, la.detach(), linear.weight.detach(), *p)

    state = _state(model, logits, fn, set_grads, linears=linears, params=params, rng_states=rng_states,
                   saved_gates=saved_gates)
    return Case(KERNELS, lambda: step_in_phases(state, workload.x, workload.t), state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15, help="rounds alternating the steps (median over them)")
    parser.add_argument("--steps", type=int, default=10, help="steps timed one after another in a round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for name in ("batch", "rounds", "steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    malloc = fix_malloc_thresholds()
    workload = SparseMLPStep(args.batch)
    workload.prepare()
    cases = [workload.build(DENSE), floor_case(workload), kernels_case(workload), workload.build(L0FAST)]
    if l0_available():
        cases.append(workload.build(REFERENCE))
    x, t = workload.x, workload.t
    for case in cases:
        for _ in range(20):
            step_in_phases(case.state, x, t)
    # per case, per round: the mean seconds of each phase over the round's steps
    rounds = {case.impl: [] for case in cases}
    for r in range(args.rounds):
        for case in cases[r % len(cases):] + cases[: r % len(cases)]:
            steps = [step_in_phases(case.state, x, t) for _ in range(args.steps)]
            rounds[case.impl].append([1e3 * sum(phase) / args.steps for phase in zip(*steps)])
    median = {impl: statistics.median(map(sum, rs)) for impl, rs in rounds.items()}
    phases = {impl: [statistics.median(phase) for phase in zip(*rs)] for impl, rs in rounds.items()}
    dense, floor = median[DENSE], median[FLOOR]
    print(f"SparseMLP(784, 256, 10) + Adam, batch {args.batch}, {args.threads} threads, median of {args.rounds} rounds "
          f"of {args.steps} steps; malloc: {malloc}")
    print(f"{'step':<22} {'ms':>8} {'/ dense':>8} {'above the floor':>16} " + " ".join(f"{p + ' ms':>12}" for p in PHASES))
    for impl, ms in median.items():
        above = f"{(ms - floor) / dense:+.2f}" if impl not in (DENSE, FLOOR) else "-"
        print(f"{impl:<22} {ms:8.3f} {ms / dense:8.2f} {above:>16} " + " ".join(f"{p:12.3f}" for p in phases[impl]))
    outside = [a - b for a, b in zip(phases[L0FAST], phases[KERNELS])]
    print(f"l0fast outside its gate kernels: {(median[L0FAST] - median[KERNELS]) / dense:+.2f} x dense; "
          + ", ".join(f"{p} {ms:+.3f} ms" for p, ms in zip(PHASES, outside)))


if __name__ == "__main__":
    main()
