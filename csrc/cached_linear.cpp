// cached_linear: L0Linear's eval forward from its eval cache (l0fast/layers.py)
// in one call, so that a batch-1 inference costs what nn.Linear's does:
//
//   out = input @ gated_weight^T + bias   (input (*, in), gated_weight (out, in))
//
// when the cache's record is current, after the layer's NaN/inf check.  It
// answers nullopt wherever the layer's Python path does more than that, which
// then takes the call: autograd on, jit tracing, a torch function or dispatch
// mode, CPU autocast, an input other than a plain CPU tensor of the weight's
// dtype and width, a record that is not current (the Python path recomputes
// the entry), an input holding NaN or inf (the Python path names it).
#include <torch/extension.h>

#include <ATen/autocast_mode.h>

#include <optional>

#include "layer_checks.h"
#include "python_path.h"

namespace l0fast {

namespace {

// Whether the layer's Python path would see, record or change the call: see the top of this file.
bool call_is_watched() {
  return at::GradMode::is_enabled() || python_path_observed() || at::autocast::is_autocast_enabled(at::kCPU);
}

}  // namespace

std::optional<at::Tensor> cached_linear(const at::Tensor& input, const at::Tensor& gated_weight,
                                        const std::optional<at::Tensor>& bias, const at::Tensor& weight,
                                        const at::Tensor& logits, const at::Tensor& record, double temperature,
                                        double gamma, double zeta) {
  if (call_is_watched() || !plain_cpu(input) || !plain_cpu(gated_weight) ||
      input.scalar_type() != gated_weight.scalar_type() || input.dim() == 0 || gated_weight.dim() != 2 ||
      input.size(-1) != gated_weight.size(1) ||
      !eval_record_current(weight, logits, record, temperature, gamma, zeta)) {
    return std::nullopt;
  }
  at::Tensor out = at::linear(input, gated_weight, bias);
  if (!input_finite(input, out)) return std::nullopt;
  return out;
}

}  // namespace l0fast
