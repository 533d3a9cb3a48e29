// One Adam step (Kingma & Ba 2015) per element, with torch.optim.Adam's update
// rule (no weight decay, no amsgrad), so a fused fit follows torch's optimizer
// to float rounding:
//   m <- m + (1 - beta1) (g - m)          (torch: exp_avg.lerp_(grad, 1 - beta1))
//   v <- beta2 v + (1 - beta2) g^2
//   p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// The bias corrections are computed once per step in fp64.
#pragma once
#include <cmath>
#include <cstdint>

namespace l0fast {

struct AdamConfig {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

template <typename T>
struct AdamStep {
  T one_minus_beta1, beta2, one_minus_beta2, step_size, bias_correction2_sqrt, eps;

  // Coefficients of step number `step` (1-based).
  AdamStep(const AdamConfig& c, int64_t step)
      : one_minus_beta1(static_cast<T>(1.0 - c.beta1)),
        beta2(static_cast<T>(c.beta2)),
        one_minus_beta2(static_cast<T>(1.0 - c.beta2)),
        step_size(static_cast<T>(c.lr / (1.0 - std::pow(c.beta1, static_cast<double>(step))))),
        bias_correction2_sqrt(static_cast<T>(std::sqrt(1.0 - std::pow(c.beta2, static_cast<double>(step))))),
        eps(static_cast<T>(c.eps)) {}

  // The updated parameter; m and v are updated in place.
  T update(T param, T grad, T& m, T& v) const {
    m = m + one_minus_beta1 * (grad - m);
    v = v * beta2 + one_minus_beta2 * grad * grad;
    return param - step_size * m / (std::sqrt(v) / bias_correction2_sqrt + eps);
  }
};

}  // namespace l0fast
