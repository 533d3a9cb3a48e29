// Hard-concrete gates (Louizos, Welling & Kingma 2017, arXiv:1712.01312).
//
//   sample: g = clamp(sigmoid((log u - log(1-u) + clamp(a, +-20)) / beta)
//                     * (zeta - gamma) + gamma, 0, 1),   u = Philox(seed, offset + i)
//           (at the usual temperatures from one exp: GateMath::sample<k>)
//   mean:   g = clamp(sigmoid(clamp(a, +-20) / beta) * (zeta - gamma) + gamma, 0, 1)
//   backward (both): dg/da = (zeta - gamma) * s (1 - s) / beta  where 0 < g < 1 and
//                    |a| <= 20, else 0; s = (g - gamma) / (zeta - gamma) is
//                    recovered from the saved gate, so no noise is regenerated.
// Bytes per element (fp32): sample 4 read + 4 written; backward 12 read + 4 written.
#include <algorithm>

#include "buffer_pool.h"
#include "kernels.h"
#include "gate_math.h"

namespace l0fast {

at::Tensor philox_uniform_cpu(const at::Tensor& rng_state, int64_t numel) {
  TORCH_CHECK(numel >= 0, "numel must be >= 0, got ", numel);
  const auto [seed, offset] = read_rng_state(rng_state);
  auto out = empty_recycled({numel}, at::TensorOptions().dtype(at::kFloat));
  float* out_ptr = out.data_ptr<float>();
  parallel_blocks(numel, kNoiseBlock, [&](int64_t begin, int64_t end) {
    float scratch[kNoiseBlock + 8];
    const float* u = uniform_block(seed, offset + static_cast<uint64_t>(begin), end - begin, scratch);
    std::copy(u, u + (end - begin), out_ptr + begin);
  });
  return out;
}

at::Tensor hard_concrete_sample_cpu(const at::Tensor& log_alpha,
                                    const at::Tensor& rng_state, double beta,
                                    double gamma, double zeta) {
  check_log_alpha(log_alpha);
  check_gate_params(beta, gamma, zeta);
  const auto [seed, offset] = read_rng_state(rng_state);
  const auto la = log_alpha.contiguous();
  auto gate = empty_recycled(la.sizes(), la.options());
  const int64_t n = la.numel();
  std::atomic<bool> nan_found{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, la.scalar_type(), "hard_concrete_sample_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const scalar_t* la_ptr = la.data_ptr<scalar_t>();
        scalar_t* gate_ptr = gate.data_ptr<scalar_t>();
        const GateMath<opmath_t> math(beta, gamma, zeta);
        parallel_blocks(n, kNoiseBlock, [&](int64_t begin, int64_t end) {
          float scratch[kNoiseBlock + 8];
          const float* u = uniform_block(seed, offset + static_cast<uint64_t>(begin), end - begin, scratch);
          if (sample_gates(math, end - begin, u, la_ptr + begin, gate_ptr + begin)) nan_found = true;
        });
      });
  raise_if_nan(nan_found, "hard_concrete_sample");
  return gate;
}

at::Tensor hard_concrete_mean_cpu(const at::Tensor& log_alpha, double beta,
                                  double gamma, double zeta) {
  check_log_alpha(log_alpha);
  check_gate_params(beta, gamma, zeta);
  const auto la = log_alpha.contiguous();
  auto gate = empty_recycled(la.sizes(), la.options());
  const int64_t n = la.numel();
  std::atomic<bool> nan_found{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, la.scalar_type(), "hard_concrete_mean_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const scalar_t* la_ptr = la.data_ptr<scalar_t>();
        scalar_t* gate_ptr = gate.data_ptr<scalar_t>();
        const GateMath<opmath_t> math(beta, gamma, zeta);
        parallel_blocks(n, kElementBlock, [&](int64_t begin, int64_t end) {
          uint32_t nan_here = 0;
          auto group = [&](int64_t, const scalar_t* __restrict a_in,
                           scalar_t* __restrict out) L0FAST_LANE_GROUP {
            const GateMath<opmath_t> m = math;
            uint32_t nan_bits = 0;
            for (int64_t i = 0; i < kLanes; ++i) {
              const opmath_t a = static_cast<opmath_t>(a_in[i]);
              nan_bits |= is_nan_bits(a);
              out[i] = static_cast<scalar_t>(m.mean(a));
            }
            nan_here |= nan_bits;
          };
          for_each_lane_group(end - begin, group, la_ptr + begin, gate_ptr + begin);
          if (nan_here) nan_found = true;
        });
      });
  raise_if_nan(nan_found, "hard_concrete_mean");
  return gate;
}

at::Tensor hard_concrete_backward_cpu(const at::Tensor& grad_gate,
                                      const at::Tensor& gate,
                                      const at::Tensor& log_alpha, double beta,
                                      double gamma, double zeta) {
  check_log_alpha(log_alpha);
  check_gate_params(beta, gamma, zeta);
  TORCH_CHECK(grad_gate.sizes() == log_alpha.sizes() && gate.sizes() == log_alpha.sizes(),
              "grad_gate, gate and log_alpha must have one shape, got ",
              grad_gate.sizes(), ", ", gate.sizes(), ", ", log_alpha.sizes());
  const auto la = log_alpha.contiguous();
  const auto g_saved = gate.to(la.scalar_type()).contiguous();
  // A gradient broadcast from one value (e.g. of gates.sum()) is read as a
  // scalar instead of being materialized.
  const bool broadcast_grad = is_broadcast(grad_gate);
  const auto grad = (broadcast_grad ? grad_gate.as_strided({1}, {1}) : grad_gate)
                        .to(la.scalar_type()).contiguous();
  auto grad_la = empty_recycled(la.sizes(), la.options());
  const int64_t n = la.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, la.scalar_type(), "hard_concrete_backward_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const scalar_t* la_ptr = la.data_ptr<scalar_t>();
        const scalar_t* gate_ptr = g_saved.data_ptr<scalar_t>();
        const scalar_t* grad_ptr = grad.data_ptr<scalar_t>();
        scalar_t* out_ptr = grad_la.data_ptr<scalar_t>();
        const GateMath<opmath_t> math(beta, gamma, zeta);
        if (broadcast_grad) {
          const opmath_t grad_out = static_cast<opmath_t>(grad_ptr[0]);
          auto group = [=](int64_t, const scalar_t* __restrict g_in, const scalar_t* __restrict a_in,
                           scalar_t* __restrict out) L0FAST_LANE_GROUP {
            const GateMath<opmath_t> m = math;
            const opmath_t go = grad_out;
            for (int64_t i = 0; i < kLanes; ++i)
              out[i] = static_cast<scalar_t>(m.through_gate(go, g_in[i], a_in[i]));
          };
          parallel_blocks(n, kElementBlock, [&](int64_t begin, int64_t end) {
            for_each_lane_group(end - begin, group, gate_ptr + begin, la_ptr + begin, out_ptr + begin);
          });
        } else {
          auto group = [=](int64_t, const scalar_t* __restrict go_in, const scalar_t* __restrict g_in,
                           const scalar_t* __restrict a_in, scalar_t* __restrict out) L0FAST_LANE_GROUP {
            const GateMath<opmath_t> m = math;
            for (int64_t i = 0; i < kLanes; ++i)
              out[i] = static_cast<scalar_t>(m.through_gate(static_cast<opmath_t>(go_in[i]), g_in[i], a_in[i]));
          };
          parallel_blocks(n, kElementBlock, [&](int64_t begin, int64_t end) {
            for_each_lane_group(end - begin, group, grad_ptr + begin, gate_ptr + begin, la_ptr + begin,
                                out_ptr + begin);
          });
        }
      });
  return grad_la;
}

}  // namespace l0fast
