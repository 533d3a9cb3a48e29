// Registers the CPU kernels with the dispatcher, so that a call of
// torch.ops.l0fast.<op> on CPU tensors goes from the dispatcher straight to
// C++, as a native ATen op does.  The schemas, the reference kernels of the
// other devices and the fake kernels are defined in Python
// (l0fast/ops/registry.py), which calls register_cpu_kernel(name) for each op
// that l0fast._capability serves with C++.
#include <torch/library.h>

#include <functional>
#include <string>
#include <unordered_map>

#include "kernels.h"

namespace l0fast {
namespace {

// torch.ops.l0fast.calibration_backward: the upstream gradient of the penalty
// is a one-element CPU tensor, read here on the host.
std::tuple<at::Tensor, at::Tensor> calibration_backward_op(
    const at::Tensor& col_ptr, const at::Tensor& row_idx, const at::Tensor& values,
    const at::Tensor& grad_y, const at::Tensor& grad_penalty, const at::Tensor& log_weight,
    const at::Tensor& log_alpha, const std::optional<at::Tensor>& gate, double beta, double gamma,
    double zeta, double lambda_l0, double lambda_l2) {
  TORCH_CHECK(grad_penalty.numel() == 1, "calibration_backward: grad_penalty must hold one value, got shape ",
              grad_penalty.sizes());
  const double upstream = grad_penalty.item<double>();
  return calibration_backward_cpu(col_ptr, row_idx, values, grad_y, log_weight, log_alpha, gate, beta,
                                  gamma, zeta, lambda_l0 * upstream, lambda_l2 * upstream);
}

using Registrar = std::function<void(torch::Library&)>;

const std::unordered_map<std::string, Registrar>& registrars() {
  static const std::unordered_map<std::string, Registrar> table = {
      {"philox_uniform", [](torch::Library& m) { m.impl("philox_uniform", TORCH_FN(philox_uniform_cpu)); }},
      {"hard_concrete_sample",
       [](torch::Library& m) { m.impl("hard_concrete_sample", TORCH_FN(hard_concrete_sample_cpu)); }},
      {"hard_concrete_mean", [](torch::Library& m) { m.impl("hard_concrete_mean", TORCH_FN(hard_concrete_mean_cpu)); }},
      {"hard_concrete_backward",
       [](torch::Library& m) { m.impl("hard_concrete_backward", TORCH_FN(hard_concrete_backward_cpu)); }},
      {"l0_penalty", [](torch::Library& m) { m.impl("l0_penalty", TORCH_FN(l0_penalty_cpu)); }},
      {"l0_penalty_backward",
       [](torch::Library& m) { m.impl("l0_penalty_backward", TORCH_FN(l0_penalty_backward_cpu)); }},
      {"gated_spmv", [](torch::Library& m) { m.impl("gated_spmv", TORCH_FN(gated_spmv_cpu)); }},
      {"gated_spmv_backward",
       [](torch::Library& m) { m.impl("gated_spmv_backward", TORCH_FN(gated_spmv_backward_cpu)); }},
      {"hard_concrete_gated", [](torch::Library& m) { m.impl("hard_concrete_gated", TORCH_FN(hard_concrete_gated_cpu)); }},
      {"hard_concrete_gated_backward",
       [](torch::Library& m) { m.impl("hard_concrete_gated_backward", TORCH_FN(hard_concrete_gated_backward_cpu)); }},
      {"calibration_backward",
       [](torch::Library& m) { m.impl("calibration_backward", TORCH_FN(calibration_backward_op)); }},
  };
  return table;
}

}  // namespace

void register_cpu_kernel(const std::string& name) {
  const auto found = registrars().find(name);
  TORCH_CHECK(found != registrars().end(), "l0fast._C has no CPU kernel for op ", name);
  // Never destroyed: the registrations must outlive every Python reference to the ops.
  static auto* library = new torch::Library(torch::Library::IMPL, "l0fast", c10::DispatchKey::CPU, __FILE__, __LINE__);
  found->second(*library);
}

}  // namespace l0fast
