// Python bindings of l0fast._C: the CPU kernels are registered with the
// dispatcher (op_registration.cpp) on request of l0fast/ops/registry.py; the
// fused calibration fit is called directly (calibration_fit_bindings.cpp), as
// are content_hash (content_hash.cpp), the layers' checks (layer_checks.h) and
// L0Linear's eval forward from its cache (cached_linear.cpp) and the noise
// streams' advance (rng_offset.cpp).
#include <torch/extension.h>

#include <optional>

#include "layer_checks.h"

namespace l0fast {
void register_cpu_kernel(const std::string& name);
void bind_calibration_fit(pybind11::module_& m);
int64_t content_hash(const at::Tensor& a);
std::optional<at::Tensor> cached_linear(const at::Tensor& input, const at::Tensor& gated_weight,
                                        const std::optional<at::Tensor>& bias, const at::Tensor& weight,
                                        const at::Tensor& logits, const at::Tensor& record, double temperature,
                                        double gamma, double zeta);
bool advance_offset(const at::Tensor& rng_state, int64_t count);
}  // namespace l0fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "l0fast CPU kernels";
  m.def("register_cpu_kernel", &l0fast::register_cpu_kernel,
        "Register the C++ kernel of op l0fast::`name` for CPU tensors (its schema must be defined)");
  l0fast::bind_calibration_fit(m);
  m.def("content_hash", &l0fast::content_hash, pybind11::arg("a"),
        "sum_k mix(word(a[k]) + k * 2^64/phi) mod 2^64 of a 1-D float32/float64/int32/int64 array, as int64, one "
        "parallel pass (the matrix cache's fingerprint)");
  m.def("input_finite", &l0fast::input_finite, pybind11::arg("x"), pybind11::arg("out") = pybind11::none(),
        "The layers' NaN/inf check of a strided CPU tensor x: false when x holds NaN or inf, true otherwise or "
        "when x is not floating; out, a linear layer's output of x, answers instead when smaller and finite");
  m.def("eval_record", &l0fast::eval_record,
        "The eval cache's record of a gated weight made from weight and the gates of logits with (temperature, gamma, "
        "zeta): version counters, storage, dtypes, sizes, the parameters and, on CPU, copies of probed elements (a uint8 "
        "tensor)");
  m.def("eval_record_current", &l0fast::eval_record_current,
        "Whether eval_record(weight, logits, temperature, gamma, zeta) still equals record");
  m.def("cached_linear", &l0fast::cached_linear, pybind11::arg("input"), pybind11::arg("gated_weight"),
        pybind11::arg("bias"), pybind11::arg("weight"), pybind11::arg("logits"), pybind11::arg("record"),
        pybind11::arg("temperature"), pybind11::arg("gamma"), pybind11::arg("zeta"),
        "F.linear(input, gated_weight, bias) after the NaN/inf check when record (eval_record) is current and "
        "nothing watches the call (autograd, tracing, modes, autocast); None where L0Linear's Python path must take it");
  m.def("advance_offset", &l0fast::advance_offset, pybind11::arg("rng_state"), pybind11::arg("count"),
        "rng_state[1] += count for a plain CPU int64 [seed, offset] tensor, with its version bumped as add_ does; "
        "false (nothing done) where advance_rng_state's Python path must do it (tracing, modes, inference mode, "
        "wrappers, other devices)");
}
