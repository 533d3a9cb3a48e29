"""Build l0fast, with the C++ CPU kernels in ``l0fast._C`` unless L0FAST_BUILD_CPP=0 or no C++ compiler is found.

Install with ``pip install --no-build-isolation -e .`` (torch must already be
installed: build isolation would pull a multi-GB CUDA torch).
"""

import glob
import os
import shutil
import warnings

from setuptools import setup

CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-march=native", "-ffast-math", "-mprefer-vector-width=512", "-std=c++17"]


def extensions():
    if os.environ.get("L0FAST_BUILD_CPP", "1") == "0":
        return [], {}
    compiler = os.environ.get("CXX", "c++")
    if shutil.which((compiler.split() or ["c++"])[0]) is None:
        warnings.warn(f"no C++ compiler ({compiler!r} is not on the PATH): l0fast installs without its C++ kernels, which "
                      "the PyTorch references stand in for; install g++ (or set CXX) and reinstall for them")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext = CppExtension(
        "l0fast._C",
        sorted(glob.glob("csrc/*.cpp")),
        extra_compile_args=CXX_FLAGS,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    package_dir={"l0fast": "l0fast"},
)
