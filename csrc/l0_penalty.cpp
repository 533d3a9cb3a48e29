// Expected L0 norm of hard-concrete gates (Louizos et al. 2017, eq. 12):
//
//   penalty = sum_i sigmoid(clamp(a_i, +-20) - beta * log(-gamma / zeta))
//   d penalty / d a_i = p_i (1 - p_i) where |a_i| <= 20, else 0.
//
// The sum accumulates in fp64 over fixed blocks of kNoiseBlock elements (the
// gate kernel's, which sums the same penalty beside its gates), added in block
// order: the result does not depend on the thread count.
// Bytes per element (fp32): forward 4 read; backward 4 read + 4 written.
#include "buffer_pool.h"
#include "kernels.h"
#include "gate_math.h"

namespace l0fast {

at::Tensor l0_penalty_cpu(const at::Tensor& log_alpha, double beta, double gamma,
                          double zeta) {
  check_log_alpha(log_alpha);
  check_gate_params(beta, gamma, zeta);
  const auto la = log_alpha.contiguous();
  const int64_t n = la.numel();
  double total = 0.0;
  std::atomic<bool> nan_found{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, la.scalar_type(), "l0_penalty_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const scalar_t* la_ptr = la.data_ptr<scalar_t>();
        const GateMath<opmath_t> math(beta, gamma, zeta);
        total = ordered_block_sum<double>(n, kNoiseBlock, [&](int64_t begin, int64_t end) {
          double acc = 0.0;
          uint32_t nan_here = 0;
          auto group = [&](int64_t valid, const scalar_t* __restrict a_in) {
            alignas(64) opmath_t t[kLanes];
            nan_here |= half_exp_lanes(math, a_in, t);
            acc += active_prob_lanes(math, static_cast<const opmath_t*>(t), valid);
          };
          for_each_lane_group(end - begin, group, la_ptr + begin);
          if (nan_here) nan_found = true;
          return acc;
        });
      });
  raise_if_nan(nan_found, "l0_penalty");
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
  const double grad_value = grad_penalty.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, la.scalar_type(), "l0_penalty_backward_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const scalar_t* la_ptr = la.data_ptr<scalar_t>();
        scalar_t* out_ptr = grad_la.data_ptr<scalar_t>();
        const GateMath<opmath_t> math(beta, gamma, zeta);
        const opmath_t grad_out = static_cast<opmath_t>(grad_value);
        auto group = [=](int64_t, const scalar_t* __restrict a_in, scalar_t* __restrict out)
                         L0FAST_LANE_GROUP {
          const GateMath<opmath_t> m = math;
          const opmath_t go = grad_out;
          for (int64_t i = 0; i < kLanes; ++i) {
            const opmath_t a = static_cast<opmath_t>(a_in[i]);
            out[i] = static_cast<scalar_t>(m.through_penalty(go, m.active_prob(a), a));
          }
        };
        parallel_blocks(n, kElementBlock, [&](int64_t begin, int64_t end) {
          for_each_lane_group(end - begin, group, la_ptr + begin, out_ptr + begin);
        });
      });
  return grad_la;
}

}  // namespace l0fast
