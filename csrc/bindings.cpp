// Python bindings of the l0fast CPU kernels; torch.library registration of the
// ops happens in l0fast/ops/*.py, which call these functions.
#include <torch/extension.h>

namespace l0fast {
at::Tensor philox_uniform_cpu(const at::Tensor& rng_state, int64_t numel);
at::Tensor hard_concrete_sample_cpu(const at::Tensor& log_alpha,
                                    const at::Tensor& rng_state, double beta,
                                    double gamma, double zeta);
at::Tensor hard_concrete_mean_cpu(const at::Tensor& log_alpha, double beta,
                                  double gamma, double zeta);
at::Tensor hard_concrete_backward_cpu(const at::Tensor& grad_gate,
                                      const at::Tensor& gate,
                                      const at::Tensor& log_alpha, double beta,
                                      double gamma, double zeta);
at::Tensor l0_penalty_cpu(const at::Tensor& log_alpha, double beta, double gamma,
                          double zeta);
at::Tensor l0_penalty_backward_cpu(const at::Tensor& grad_penalty,
                                   const at::Tensor& log_alpha, double beta,
                                   double gamma, double zeta);
at::Tensor gated_spmv_cpu(const at::Tensor& col_ptr, const at::Tensor& row_idx,
                          const at::Tensor& values, const at::Tensor& weight,
                          int64_t num_rows);
at::Tensor gated_spmv_backward_cpu(const at::Tensor& col_ptr, const at::Tensor& row_idx,
                                   const at::Tensor& values, const at::Tensor& grad_y);
std::tuple<at::Tensor, at::Tensor> calibration_backward_cpu(
    const at::Tensor& col_ptr, const at::Tensor& row_idx, const at::Tensor& values,
    const at::Tensor& grad_y, const at::Tensor& log_weight, const at::Tensor& log_alpha,
    const c10::optional<at::Tensor>& gate, double beta, double gamma, double zeta,
    double l0_scale, double l2_scale);
void bind_calibration_fit(pybind11::module_& m);
}  // namespace l0fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "l0fast CPU kernels";
  m.def("philox_uniform", &l0fast::philox_uniform_cpu);
  m.def("hard_concrete_sample", &l0fast::hard_concrete_sample_cpu);
  m.def("hard_concrete_mean", &l0fast::hard_concrete_mean_cpu);
  m.def("hard_concrete_backward", &l0fast::hard_concrete_backward_cpu);
  m.def("l0_penalty", &l0fast::l0_penalty_cpu);
  m.def("l0_penalty_backward", &l0fast::l0_penalty_backward_cpu);
  m.def("gated_spmv", &l0fast::gated_spmv_cpu);
  m.def("gated_spmv_backward", &l0fast::gated_spmv_backward_cpu);
  m.def("calibration_backward", &l0fast::calibration_backward_cpu);
  l0fast::bind_calibration_fit(m);
}
