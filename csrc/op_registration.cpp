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

// {"name", registers kernel as the CPU kernel of l0fast::name}
#define L0FAST_CPU_KERNEL(name, kernel) \
  { #name, [](torch::Library& m) { m.impl(#name, TORCH_FN(kernel)); } }

const std::unordered_map<std::string, Registrar>& registrars() {
  static const std::unordered_map<std::string, Registrar> table = {
      L0FAST_CPU_KERNEL(philox_uniform, philox_uniform_cpu),
      L0FAST_CPU_KERNEL(hard_concrete_sample, hard_concrete_sample_cpu),
      L0FAST_CPU_KERNEL(hard_concrete_mean, hard_concrete_mean_cpu),
      L0FAST_CPU_KERNEL(hard_concrete_backward, hard_concrete_backward_cpu),
      L0FAST_CPU_KERNEL(l0_penalty, l0_penalty_cpu),
      L0FAST_CPU_KERNEL(l0_penalty_backward, l0_penalty_backward_cpu),
      L0FAST_CPU_KERNEL(gated_spmv, gated_spmv_cpu),
      L0FAST_CPU_KERNEL(gated_spmv_backward, gated_spmv_backward_cpu),
      L0FAST_CPU_KERNEL(hard_concrete_gated, hard_concrete_gated_cpu),
      L0FAST_CPU_KERNEL(hard_concrete_gated_backward, hard_concrete_gated_backward_cpu),
      L0FAST_CPU_KERNEL(calibration_backward, calibration_backward_op),
  };
  return table;
}
#undef L0FAST_CPU_KERNEL

}  // namespace

void register_cpu_kernel(const std::string& name) {
  const auto found = registrars().find(name);
  TORCH_CHECK(found != registrars().end(), "l0fast._C has no CPU kernel for op ", name);
  // Never destroyed: the registrations must outlive every Python reference to the ops.
  static auto* library = new torch::Library(torch::Library::IMPL, "l0fast", c10::DispatchKey::CPU, __FILE__, __LINE__);
  found->second(*library);
}

}  // namespace l0fast
