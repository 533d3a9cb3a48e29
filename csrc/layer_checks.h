// The layers' per-call checks on CPU, shared by their bindings (bindings.cpp)
// and the eval forward of L0Linear (cached_linear.cpp).
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace l0fast {
// False when the CPU tensor x holds NaN or inf (input_finite.cpp).
bool input_finite(const at::Tensor& x, const std::optional<at::Tensor>& out);
// The eval cache's record of weight * gates(logits) and whether it is still current (eval_cache.cpp).
at::Tensor eval_record(const at::Tensor& weight, const at::Tensor& logits, double temperature, double gamma, double zeta);
bool eval_record_current(const at::Tensor& weight, const at::Tensor& logits, const at::Tensor& record, double temperature,
                         double gamma, double zeta);
}  // namespace l0fast
