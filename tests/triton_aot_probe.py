"""Lower every l0fast Triton kernel to PTX for sm_90 (H100) and sm_75 (T4) without a GPU.

Run in a process without TRITON_INTERPRET; prints one line per kernel and exits 1 on a failure.
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import importlib
hc = importlib.import_module("l0fast.kernels.hard_concrete")
ph = importlib.import_module("l0fast.kernels.philox")
lp = importlib.import_module("l0fast.kernels.l0_penalty")
sp = importlib.import_module("l0fast.kernels.gated_spmv")
cb = importlib.import_module("l0fast.kernels.calibration")
def fn(k):  # unwrap autotuner
    return k.fn if type(k).__name__ == "Autotuner" else k
cases = [
  (ph._philox_uniform_kernel, {"state_ptr":"*i64","out_ptr":"*fp32","n":"i32"}, {"BLOCK_C":512}),
  (hc._sample_kernel, {"la_ptr":"*fp32","state_ptr":"*i64","gate_ptr":"*fp32","nan_ptr":"*i32","n":"i32","beta":"fp64","gamma":"fp64","zeta":"fp64"}, {"COMPUTE":tl.float32,"BLOCK_C":512}),
  (hc._sample_kernel, {"la_ptr":"*bf16","state_ptr":"*i64","gate_ptr":"*bf16","nan_ptr":"*i32","n":"i32","beta":"fp64","gamma":"fp64","zeta":"fp64"}, {"COMPUTE":tl.float32,"BLOCK_C":512}),
  (hc._mean_kernel, {"la_ptr":"*fp64","gate_ptr":"*fp64","nan_ptr":"*i32","n":"i32","beta":"fp64","gamma":"fp64","zeta":"fp64"}, {"COMPUTE":tl.float64,"BLOCK":1024}),
  (hc._backward_kernel, {"grad_ptr":"*fp32","grad_stride":"i32","gate_ptr":"*fp32","la_ptr":"*fp32","out_ptr":"*fp32","n":"i32","beta":"fp64","gamma":"fp64","zeta":"fp64"}, {"COMPUTE":tl.float32,"BLOCK":1024}),
  (lp._penalty_partials_kernel, {"la_ptr":"*fp32","partial_ptr":"*fp64","nan_ptr":"*i32","n":"i32","shift":"fp64"}, {"COMPUTE":tl.float32,"BLOCK":4096}),
  (lp._penalty_backward_kernel, {"grad_ptr":"*fp32","la_ptr":"*fp32","out_ptr":"*fp32","n":"i32","shift":"fp64"}, {"COMPUTE":tl.float32,"BLOCK":1024}),
  (sp._segment_sums_kernel, {"ptr_ptr":"*i64","idx_ptr":"*i32","val_ptr":"*fp32","x_ptr":"*fp32","out_ptr":"*fp64","n_seg":"i32"}, {"GATHER":True,"ACC":tl.float32,"BLOCK_S":8,"BLOCK_E":256}),
  (sp._segment_sums_kernel, {"ptr_ptr":"*i64","idx_ptr":"*i64","val_ptr":"*fp64","x_ptr":"*fp64","out_ptr":"*fp32","n_seg":"i32"}, {"GATHER":False,"ACC":tl.float64,"BLOCK_S":32,"BLOCK_E":64}),
  (sp._scatter_atomic_kernel, {"col_ptr":"*i64","row_ptr":"*i32","val_ptr":"*fp32","w_ptr":"*fp32","y_ptr":"*fp64","n":"i32"}, {"ACC":tl.float32,"BLOCK_S":64,"BLOCK_E":32}),
  (cb._calibration_backward_kernel, {"col_ptr":"*i64","row_ptr":"*i32","val_ptr":"*fp32","grad_y_ptr":"*fp32","lw_ptr":"*fp32","la_ptr":"*fp32","gate_ptr":"*fp32","grad_lw_ptr":"*fp32","grad_la_ptr":"*fp32","n":"i32","beta":"fp64","gamma":"fp64","zeta":"fp64","shift":"fp64","l0_scale":"fp64","l2_scale":"fp64"}, {"HAS_GATE":True,"ACC":tl.float32,"COMPUTE":tl.float32,"BLOCK_S":64,"BLOCK_E":32}),
]
failed = 0
for arch in (90, 75):
  for k, sig, const in cases:
    f = fn(k)
    sig2 = dict(sig); sig2.update({c: "constexpr" for c in const})
    try:
        src = ASTSource(f, sig2, constexprs={(f.arg_names.index(c),): v for c, v in const.items()})
        out = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
        print(arch, f.__name__, "OK", len(out.asm.get("ptx", "")))
    except Exception as e:
        failed += 1
        print(arch, f.__name__, "FAIL", type(e).__name__, str(e)[:300])
sys.exit(1 if failed else 0)
