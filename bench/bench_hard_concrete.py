"""HardConcrete train step side by side: l0fast vs l0-python 0.6.2 (and torch.compile'd l0).

One step = train-mode forward, ``gates.sum() + get_penalty()``, backward, with
``qz_logits.grad`` reset to None each step. Implementations alternate round by
round in one process at a pinned thread count; the median of the rounds is
reported, with the speedup over l0-python.

    python bench/bench_hard_concrete.py --size 10000000 --threads 2 --rounds 9
"""

import argparse
import statistics
import time

import torch


def make_step(module, compile_it=False):
    module.train()

    def step():
        module.qz_logits.grad = None
        loss = module().sum() + module.get_penalty()
        loss.backward()

    return torch.compile(step) if compile_it else step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(l0-python)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import l0
    import l0fast

    steps = {"l0fast": make_step(l0fast.HardConcrete(args.size)), "l0-python": make_step(l0.HardConcrete(args.size))}
    if args.compile:
        steps["torch.compile(l0-python)"] = make_step(l0.HardConcrete(args.size), compile_it=True)
    for step in steps.values():  # warm-up (and compile)
        step()
        step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["l0-python"])
    print(f"HardConcrete({args.size:,}) train fwd+bwd+penalty, {args.threads} threads, {args.rounds} rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:26s} median {med * 1e3:8.1f} ms  (min {min(ts) * 1e3:7.1f})  speedup x{base / med:5.1f}")


if __name__ == "__main__":
    main()
