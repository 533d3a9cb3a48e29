"""Compile every l0fast Triton kernel variant a launcher can request, for sm_90 (H100) and sm_75 (T4), without a GPU.

Variants: every launch configuration (the elementwise size buckets and flags, the
penalty's reduction shape, every sparse tile width, every calibration flag, the fit's household pass),
every dtype the launcher accepts, and both argument specialisations a launch
can produce: 16-byte-aligned pointers with 32-bit sizes divisible by 16, and
unaligned pointers (views at an odd offset) with 64-bit sizes (past 2^31
elements).  Every variant is also checked for the pinned numerics: no
approximate fp32 division, fusion and flush-to-zero off.  Run in a process without TRITON_INTERPRET;
work is spread over the CPU cores; prints failures and a count, exits 1 on a
failure.
"""

import concurrent.futures
import itertools
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from l0fast.kernels import _common, calibration, calibration_fit, gated_spmv, hard_concrete, l0_penalty, philox  # noqa: E402

ARCHS = (90, 75)
FLOATS = {"fp16": tl.float32, "bf16": tl.float32, "fp32": tl.float32, "fp64": tl.float64}  # dtype -> COMPUTE
SPARSE = ("fp32", "fp64")  # the sparse product's values
# (aligned, size type): 16-byte-aligned pointers and sizes divisible by 16, or neither.
SPECIALISATIONS = ((True, "i32"), (False, "i64"))
GATE = {"beta": "fp64", "gamma": "fp64", "zeta": "fp64"}


def _household_blocks():
    lo, hi = gated_spmv.HOUSEHOLD_BLOCKS
    return [1 << b for b in range(lo.bit_length() - 1, hi.bit_length())]


def _acc(t):
    return tl.float64 if t == "fp64" else tl.float32


def _tile(block_e):
    return {"BLOCK_S": max(1, gated_spmv.TILE // block_e), "BLOCK_E": block_e}


def cases():
    """(kernel, signature with "I" for sizes, constexprs, warps) of every launch the launchers can make."""
    for _top, block, warps in _common.ELEMENTWISE_CONFIGS:
        yield philox._philox_uniform_kernel, {"state_ptr": "*i64", "out_ptr": "*fp32", "n": "I"}, {"BLOCK_C": block // 4}, warps
        for t, compute in FLOATS.items():
            c = {"COMPUTE": compute}
            sig = {"la_ptr": f"*{t}", "gate_ptr": f"*{t}", "nan_ptr": "*i32", "n": "I", **GATE}
            yield hard_concrete._mean_kernel, sig, {**c, "BLOCK": block}, warps
            sig = {"grad_ptr": f"*{t}", "la_ptr": f"*{t}", "out_ptr": f"*{t}", "n": "I", "shift": "fp64"}
            yield l0_penalty._penalty_backward_kernel, sig, {**c, "BLOCK": block}, warps
            sig = {"la_ptr": f"*{t}", "state_ptr": "*i64", "w_ptr": f"*{t}", "gate_ptr": f"*{t}", "gated_ptr": f"*{t}", "nan_ptr": "*i32",
                   "n": "I", **GATE}
            for weighted in (True, False):
                yield hard_concrete._sample_kernel, sig, {**c, "HAS_WEIGHT": weighted, "BLOCK_C": block // 4}, warps
            sig = {"grad_ptr": f"*{t}", "grad_stride": "i32", "penalty_grad_ptr": f"*{t}", **{p: f"*{t}" for p in ("gate_ptr", "la_ptr", "w_ptr",
                   "out_ptr", "grad_w_ptr")}, "n": "I", "shift": "fp64", **GATE}
            for flags in itertools.product((True, False), repeat=3):
                const = dict(zip(("HAS_GRAD", "HAS_PENALTY_GRAD", "HAS_WEIGHT"), flags))
                yield hard_concrete._backward_kernel, sig, {**c, **const, "BLOCK": block}, warps
    for t, compute in FLOATS.items():
        sig = {"la_ptr": f"*{t}", "partial_ptr": "*fp64", "nan_ptr": "*i32", "n": "I", "shift": "fp64"}
        const = {"COMPUTE": compute, "LANES": l0_penalty.PENALTY_LANES, "ROUNDS": l0_penalty.PENALTY_ROUNDS}
        yield l0_penalty._penalty_partials_kernel, sig, const, l0_penalty.PENALTY_WARPS
    warps = gated_spmv.SPARSE_WARPS
    for t in SPARSE:
        seg = gated_spmv._segment_sums_kernel
        for block_e in _household_blocks():  # backward: households
            sig = {"ptr_ptr": "*i64", "idx_ptr": "*i32", "val_ptr": f"*{t}", "x_ptr": f"*{t}", "out_ptr": f"*{t}", "n_seg": "I"}
            yield seg, sig, {"GATHER": True, "ACC": _acc(t), **_tile(block_e)}, warps
            sig = {"col_ptr": "*i64", "row_ptr": "*i32", "val_ptr": f"*{t}", "w_ptr": f"*{t}", "y_ptr": "*fp64", "n": "I"}
            yield gated_spmv._scatter_atomic_kernel, sig, {"ACC": _acc(t), **_tile(block_e)}, warps
        sig = {"ptr_ptr": "*i64", "idx_ptr": "*i32", "val_ptr": f"*{t}", "x_ptr": f"*{t}", "out_ptr": "*fp64", "n_seg": "I"}
        yield seg, sig, {"GATHER": True, "ACC": _acc(t), **_tile(gated_spmv.SEGMENT_BLOCK)}, warps
        sig = {"ptr_ptr": "*i64", "idx_ptr": "*i64", "val_ptr": "*fp64", "x_ptr": "*fp64", "out_ptr": f"*{t}", "n_seg": "I"}
        yield seg, sig, {"GATHER": False, "ACC": tl.float64, **_tile(gated_spmv.PARTIALS_BLOCK)}, warps
        sig = {
            "col_ptr": "*i64", "row_ptr": "*i32", **{p: f"*{t}" for p in ("val_ptr", "grad_y_ptr", "grad_penalty_ptr", "lw_ptr", "la_ptr",
            "gate_ptr", "grad_lw_ptr", "grad_la_ptr")}, "n": "I", **GATE, "shift": "fp64", "lambda_l0": "fp64", "lambda_l2": "fp64",
        }
        flags = [dict(zip(("HAS_GATE", "HAS_L0", "HAS_L2"), f)) for f in itertools.product((True, False), repeat=3)]
        for block_e in _household_blocks():
            for f in flags if block_e == 32 else flags[:1]:
                yield calibration._calibration_backward_kernel, sig, {**f, "ACC": _acc(t), "COMPUTE": _acc(t), **_tile(block_e)}, warps
        sig = {
            "col_ptr": "*i64", "row_ptr": "*i32", **{p: f"*{t}" for p in ("val_ptr", "grad_y_ptr", "lw_ptr", "la_ptr", "m_lw_ptr",
            "v_lw_ptr", "m_la_ptr", "v_la_ptr", "gate_ptr", "w_next_ptr")}, "state_ptr": "*i64", "sums_ptr": "*fp64",
            "lambda_ptr": "*fp64", **{p: f"*{t}" for p in ("scale_ptr", "keep_ptr", "lo_ptr", "hi_ptr")}, "n": "I", **GATE, **{s: "fp64" for s in ("shift", "two_lambda_l2", "one_minus_beta1", "beta2", "one_minus_beta2",
            "step_size", "bc2_sqrt", "eps")},
        }
        # (UPDATE, SAMPLE_NEXT, USE_GATES, OPTIONS): prime, epoch, last epoch, ungated epoch, epoch with household options
        fit_flags = [dict(zip(("UPDATE", "SAMPLE_NEXT", "USE_GATES", "OPTIONS"), f)) for f in (
            (False, True, True, False), (True, True, True, False), (True, False, True, False), (True, True, False, False),
            (True, True, True, True))]
        for block_e in _household_blocks():
            for f in fit_flags if block_e == 32 else fit_flags[1:2]:
                yield calibration_fit._household_pass_kernel, sig, {**f, "ACC": _acc(t), "COMPUTE": _acc(t), **_tile(block_e)}, warps


def compile_one(job):
    """Compile one variant; returns an error line or None."""
    index, arch, aligned, size_type = job
    kernel, sig, const, warps = list(cases())[index]
    sig = {k: (size_type if v == "I" else v) for k, v in sig.items()} | {c: "constexpr" for c in const}
    names = list(sig)
    divisible = [i for i, k in enumerate(names) if aligned and (sig[k].startswith("*") or sig[k] == size_type)]
    what = f"sm_{arch} {kernel.fn.__name__ if hasattr(kernel, 'fn') else kernel.__name__} {sig} {const} aligned={aligned}"
    try:
        src = ASTSource(kernel, sig, constexprs=const, attrs={(i,): [["tt.divisibility", 16]] for i in divisible})
        out = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, **_common.LAUNCH_OPTIONS})
    except Exception as error:  # noqa: BLE001 (report every failure, keep going)
        return f"FAIL {what}: {type(error).__name__}: {str(error)[:400]}"
    ptx = out.asm["ptx"]
    if "div.full.f32" in ptx or "div.approx.f32" in ptx or out.metadata.enable_fp_fusion or out.metadata.enable_reflect_ftz:
        return f"FAIL {what}: unpinned numerics (approximate fp32 division, fusion or flush-to-zero on)"
    return None


def main() -> int:
    jobs = [(i, arch, aligned, size) for i in range(len(list(cases()))) for arch in ARCHS for aligned, size in SPECIALISATIONS]
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        failures = [line for line in pool.map(compile_one, jobs) if line]
    print("\n".join(failures))
    print(f"{len(jobs) - len(failures)} of {len(jobs)} variants compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
