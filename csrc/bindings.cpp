// Python bindings of l0fast._C: the CPU kernels are registered with the
// dispatcher (op_registration.cpp) on request of l0fast/ops/registry.py; the
// fused calibration fit is called directly (calibration_fit_bindings.cpp).
#include <torch/extension.h>

namespace l0fast {
void register_cpu_kernel(const std::string& name);
void bind_calibration_fit(pybind11::module_& m);
}  // namespace l0fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "l0fast CPU kernels";
  m.def("register_cpu_kernel", &l0fast::register_cpu_kernel,
        "Register the C++ kernel of op l0fast::`name` for CPU tensors (its schema must be defined)");
  l0fast::bind_calibration_fit(m);
}
