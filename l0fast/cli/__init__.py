"""The ``l0fast`` command: ``l0fast calibrate --matrix M.npz --targets t.csv ...`` and ``l0fast bench ...``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="l0fast", description="l0fast command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark l0fast against l0-python and torch.compile(l0-python)",
                           description="Benchmark l0fast against l0-python 0.6.2 and torch.compile(l0-python), side by side.")
    from ..bench.runner import add_arguments, run_from_args

    add_arguments(bench)
    bench.set_defaults(func=run_from_args)
    from . import calibrate

    calibrate.add_arguments(sub.add_parser("calibrate", help="calibrate survey weights from files (resumable, with a report)",
                                           description=calibrate.__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
