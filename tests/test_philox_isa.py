"""csrc/philox.h's vector paths (AVX-512, AVX2) and its scalar one, each built on its own with -march flags,
give the NumPy stream bit for bit -- whichever of them this machine's l0fast._C was built with."""

import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from philox_numpy import stream_uniforms

ROOT = Path(__file__).resolve().parent.parent
# (seed, first, count): counts around the vector widths (4, 8, 32 blocks) and their tails; offsets not
# a multiple of 4; counters across the 2^32 boundary; the largest seed.
CALLS = [
    (0, 0, 1024),
    (0xDEADBEEF12345, 3, 1000),
    (2**62 + 5, 2**34 - 61, 1024),
    (42, 2**34 + 1, 37),
    (2**64 - 1, 2**40 + 2, 130),
    (7, 1, 1),
    (9, 2, 33),
    (11, 5, 250),
]


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


# variant -> (its flags, the lanes per register philox.h must pick under them given the CPU's flags)
VARIANTS = {
    "native": (["-march=native"], lambda cpu: 8 if "avx512f" in cpu else (4 if "avx2" in cpu else 1)),
    "native without AVX-512": (["-march=native", "-mno-avx512f"], lambda cpu: 4 if "avx2" in cpu else 1),
    "native without AVX2": (["-march=native", "-mno-avx2"], lambda cpu: 1),
}


@pytest.fixture(scope="module")
def compiler():
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the vector paths of csrc/philox.h are x86 ones")  # elsewhere the scalar path is the ops'
    cxx = os.environ.get("CXX", "c++").split()
    assert shutil.which(cxx[0]), f"no C++ compiler {cxx[0]!r}: the build of l0fast._C needs one too"
    return cxx


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_philox_path_gives_the_numpy_stream(variant, compiler, tmp_path):
    flags, expected_lanes = VARIANTS[variant]
    exe = tmp_path / "philox_driver"
    subprocess.run(
        [*compiler, "-O3", "-ffast-math", "-std=c++17", *flags, f"-I{ROOT / 'csrc'}",
         str(ROOT / "tests" / "philox_driver.cpp"), "-o", str(exe)],
        check=True, capture_output=True,
    )
    calls = "".join(f"{seed} {first} {count}\n" for seed, first, count in CALLS)
    out = subprocess.run([str(exe)], input=calls.encode(), check=True, capture_output=True).stdout
    lanes = int(np.frombuffer(out[:4], dtype=np.int32)[0])
    assert lanes == expected_lanes(_cpu_flags()), f"{variant}: built the {lanes}-lane path"
    got = np.frombuffer(out[4:], dtype=np.float32)
    assert got.size == sum(count for *_, count in CALLS)
    at = 0
    for seed, first, count in CALLS:
        want = stream_uniforms(seed, first, count)
        assert np.array_equal(got[at : at + count], want), (variant, seed, first, count)
        at += count
