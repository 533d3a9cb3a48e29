// Expected L0 norm of hard-concrete gates (Louizos et al. 2017, eq. 12):
//
//   penalty = sum_i sigmoid(clamp(a_i, +-20) - beta * log(-gamma / zeta))
//   d penalty / d a_i = p_i (1 - p_i) where |a_i| <= 20, else 0.
//
// The sum accumulates in fp64 over fixed blocks of kGrain elements, added in
// block order: the result does not depend on the thread count.
// Bytes per element (fp32): forward 4 read; backward 4 read + 4 written.
#include "buffer_pool.h"
#include "common.h"

#include <vector>

namespace l0fast {

at::Tensor l0_penalty_cpu(const at::Tensor& log_alpha, double beta, double gamma,
                          double zeta) {
  check_log_alpha(log_alpha);
  check_gate_params(beta, gamma, zeta);
  const auto la = log_alpha.contiguous();
  const int64_t n = la.numel();
  const int64_t n_blocks = (n + kGrain - 1) / kGrain;
  std::vector<double> block_sums(n_blocks, 0.0);
  std::atomic<bool> nan_found{false};
  const double shift = -beta * std::log(-gamma / zeta);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, la.scalar_type(), "l0_penalty_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const scalar_t* la_ptr = la.data_ptr<scalar_t>();
        const opmath_t c = static_cast<opmath_t>(shift);
        at::parallel_for(0, n_blocks, 1, [&](int64_t first, int64_t last) {
          for (int64_t b = first; b < last; ++b) {
            const int64_t begin = b * kGrain;
            const int64_t end = std::min(n, begin + kGrain);
            double acc = 0.0;
            uint32_t nan_here = 0;
            for (int64_t i = begin; i < end; ++i) {
              const opmath_t a = static_cast<opmath_t>(la_ptr[i]);
              nan_here |= is_nan_bits(a);
              acc += static_cast<double>(sigmoid(clamp_log_alpha(a) + c));
            }
            block_sums[b] = acc;
            if (nan_here) nan_found = true;
          }
        });
      });
  raise_if_nan(nan_found, "l0_penalty");
  double total = 0.0;
  for (const double s : block_sums) total += s;
  return at::scalar_tensor(total, la.options());
}

at::Tensor l0_penalty_backward_cpu(const at::Tensor& grad_penalty,
                                   const at::Tensor& log_alpha, double beta,
                                   double gamma, double zeta) {
  check_log_alpha(log_alpha);
  check_gate_params(beta, gamma, zeta);
  TORCH_CHECK(grad_penalty.numel() == 1, "grad_penalty must hold one value, got ",
              grad_penalty.numel());
  const auto la = log_alpha.contiguous();
  auto grad_la = empty_recycled(la.sizes(), la.options());
  const int64_t n = la.numel();
  const double shift = -beta * std::log(-gamma / zeta);
  const double grad_out = grad_penalty.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, la.scalar_type(), "l0_penalty_backward_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const scalar_t* la_ptr = la.data_ptr<scalar_t>();
        scalar_t* out_ptr = grad_la.data_ptr<scalar_t>();
        const opmath_t c = static_cast<opmath_t>(shift);
        const opmath_t go = static_cast<opmath_t>(grad_out);
        const opmath_t bound = static_cast<opmath_t>(kLogAlphaBound);
        at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const opmath_t a = static_cast<opmath_t>(la_ptr[i]);
            const opmath_t p = sigmoid(clamp_log_alpha(a) + c);
            const bool live = (a >= -bound) & (a <= bound);
            out_ptr[i] = static_cast<scalar_t>(live ? go * p * (opmath_t(1) - p) : opmath_t(0));
          }
        });
      });
  return grad_la;
}

}  // namespace l0fast
