"""Run l0-python 0.6.2's own test suite against l0fast: the definition of "drop-in".

Downloads the l0-python sdist from PyPI (once, into ``.l0_suite/``), then runs
its ``tests/`` with ``l0`` and its submodules aliased to l0fast's.

    python tests/run_l0_suite.py [extra pytest args]
"""

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

VERSION = "0.6.2"
ROOT = Path(__file__).resolve().parent.parent / ".l0_suite"
SUBMODULES = ["calibration", "distributions", "gates", "layers", "penalties", "sparse"]


def suite_dir() -> Path:
    tests = ROOT / f"l0_python-{VERSION}" / "tests"
    if not tests.is_dir():
        ROOT.mkdir(exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"l0-python=={VERSION}", "-d", str(ROOT)],
            check=True,
        )
        with tarfile.open(ROOT / f"l0_python-{VERSION}.tar.gz") as archive:
            archive.extractall(ROOT, filter="data")
    return tests


class AliasL0ToL0fast:
    """Pytest plugin: ``import l0`` (and ``l0.<submodule>``) yields l0fast."""

    def pytest_configure(self, config):
        import importlib

        import l0fast

        sys.modules["l0"] = l0fast
        for name in SUBMODULES:
            sys.modules[f"l0.{name}"] = importlib.import_module(f"l0fast.{name}")


if __name__ == "__main__":
    args = [str(suite_dir()), "-p", "no:cacheprovider", "-o", "addopts=", "-rs", *sys.argv[1:]]
    sys.exit(pytest.main(args, plugins=[AliasL0ToL0fast()]))
