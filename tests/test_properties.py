"""Runs each hypothesis property of ``tests/properties.py`` in its own subprocess (a crash is a failure)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("hypothesis")
pytest.importorskip("l0")

HERE = os.path.dirname(os.path.abspath(__file__))
PROPERTIES = [
    "gate_ops_match_references",
    "modules_match_l0",
    "calibration_predict_matches_dense_product",
    "temperature_schedule_matches_l0",
    "bad_numbers_name_the_argument",
]


@pytest.mark.parametrize("name", PROPERTIES)
def test_property(name):
    proc = subprocess.run([sys.executable, "-c", f"import properties; properties.{name}()"], cwd=HERE,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
