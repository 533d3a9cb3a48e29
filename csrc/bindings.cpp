// Python bindings of l0fast._C: the CPU kernels are registered with the
// dispatcher (op_registration.cpp) on request of l0fast/ops/registry.py; the
// fused calibration fit is called directly (calibration_fit_bindings.cpp), as
// are content_sums (content_sums.cpp) and input_finite (input_finite.cpp).
#include <torch/extension.h>

namespace l0fast {
void register_cpu_kernel(const std::string& name);
void bind_calibration_fit(pybind11::module_& m);
std::tuple<double, double, int64_t> content_sums(const at::Tensor& values, const c10::optional<at::Tensor>& index);
bool input_finite(const at::Tensor& x, const c10::optional<at::Tensor>& out);
}  // namespace l0fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "l0fast CPU kernels";
  m.def("register_cpu_kernel", &l0fast::register_cpu_kernel,
        "Register the C++ kernel of op l0fast::`name` for CPU tensors (its schema must be defined)");
  l0fast::bind_calibration_fit(m);
  m.def("content_sums", &l0fast::content_sums, pybind11::arg("values"), pybind11::arg("index") = pybind11::none(),
        "(sum(values), sum(values * index)) in fp64 and sum(index) in int64, one parallel pass (the matrix cache's fingerprint)");
  m.def("input_finite", &l0fast::input_finite, pybind11::arg("x"), pybind11::arg("out") = pybind11::none(),
        "The layers' NaN/inf check of a strided CPU tensor x: false when x holds NaN or inf, true otherwise or "
        "when x is not floating; out, a linear layer's output of x, answers instead when smaller and finite");
}
