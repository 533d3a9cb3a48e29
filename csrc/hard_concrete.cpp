// Hard-concrete gates (Louizos, Welling & Kingma 2017, arXiv:1712.01312).
//
//   sample: g = clamp(sigmoid((log u - log(1-u) + clamp(a, +-20)) / beta)
//                     * (zeta - gamma) + gamma, 0, 1),   u = Philox(seed, offset + i)
//   mean:   g = clamp(sigmoid(clamp(a, +-20) / beta) * (zeta - gamma) + gamma, 0, 1)
//   backward (both): dg/da = (zeta - gamma) * s (1 - s) / beta  where 0 < g < 1 and
//                    |a| <= 20, else 0; s = (g - gamma) / (zeta - gamma) is
//                    recovered from the saved gate, so no noise is regenerated.
// Bytes per element (fp32): sample 4 read + 4 written; backward 12 read + 4 written.
#include <algorithm>

#include "buffer_pool.h"
#include "common.h"

namespace l0fast {

at::Tensor philox_uniform_cpu(const at::Tensor& rng_state, int64_t numel) {
  TORCH_CHECK(numel >= 0, "numel must be >= 0, got ", numel);
  const auto [seed, offset] = read_rng_state(rng_state);
  auto out = empty_recycled({numel}, at::TensorOptions().dtype(at::kFloat));
  float* out_ptr = out.data_ptr<float>();
  for_each_noise_block(numel, [&](int64_t begin, int64_t count) {
    float scratch[kNoiseBlock + 8];
    const float* u = uniform_block(seed, offset + static_cast<uint64_t>(begin), count, scratch);
    for (int64_t i = 0; i < count; ++i) out_ptr[begin + i] = u[i];
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
        const opmath_t inv_beta = opmath_t(1) / static_cast<opmath_t>(beta);
        const opmath_t g0 = static_cast<opmath_t>(gamma);
        const opmath_t z0 = static_cast<opmath_t>(zeta);
        for_each_noise_block(n, [&](int64_t begin, int64_t count) {
          float scratch[kNoiseBlock + 8];
          const float* u = uniform_block(seed, offset + static_cast<uint64_t>(begin), count, scratch);
          const scalar_t* la_blk = la_ptr + begin;
          scalar_t* gate_blk = gate_ptr + begin;
          uint32_t nan_here = 0;
          for (int64_t i = 0; i < count; ++i) {
            const float ui = u[i] < kUniformEps ? kUniformEps : (u[i] > 1.0f - kUniformEps ? 1.0f - kUniformEps : u[i]);
            const opmath_t a = static_cast<opmath_t>(la_blk[i]);
            nan_here |= is_nan_bits(a);
            const opmath_t uo = static_cast<opmath_t>(ui);
            const opmath_t logit = std::log(uo / (opmath_t(1) - uo));
            const opmath_t s = sigmoid((logit + clamp_log_alpha(a)) * inv_beta);
            gate_blk[i] = static_cast<scalar_t>(stretch_and_clamp(s, g0, z0));
          }
          if (nan_here) nan_found = true;
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
        const opmath_t inv_beta = opmath_t(1) / static_cast<opmath_t>(beta);
        const opmath_t g0 = static_cast<opmath_t>(gamma);
        const opmath_t z0 = static_cast<opmath_t>(zeta);
        at::parallel_for(0, n, kGrain, [=, &nan_found](int64_t begin, int64_t end) {
          uint32_t nan_here = 0;
          for (int64_t i = begin; i < end; ++i) {
            const opmath_t a = static_cast<opmath_t>(la_ptr[i]);
            nan_here |= is_nan_bits(a);
            const opmath_t s = sigmoid(clamp_log_alpha(a) * inv_beta);
            gate_ptr[i] = static_cast<scalar_t>(stretch_and_clamp(s, g0, z0));
          }
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
  const bool broadcast_grad = grad_gate.numel() > 0 && std::all_of(
      grad_gate.strides().begin(), grad_gate.strides().end(), [](int64_t s) { return s == 0; });
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
        const opmath_t g0 = static_cast<opmath_t>(gamma);
        const opmath_t z0 = static_cast<opmath_t>(zeta);
        const opmath_t inv_range = opmath_t(1) / (z0 - g0);
        const opmath_t scale = (z0 - g0) / static_cast<opmath_t>(beta);
        const opmath_t bound = static_cast<opmath_t>(kLogAlphaBound);
        auto chain_rule = [=](auto grad_at) {
          at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
              const opmath_t g = static_cast<opmath_t>(gate_ptr[i]);
              const opmath_t a = static_cast<opmath_t>(la_ptr[i]);
              const opmath_t s = (g - g0) * inv_range;
              const bool live = (g > opmath_t(0)) & (g < opmath_t(1)) & (a >= -bound) & (a <= bound);
              const opmath_t d = live ? scale * s * (opmath_t(1) - s) : opmath_t(0);
              out_ptr[i] = static_cast<scalar_t>(grad_at(i) * d);
            }
          });
        };
        if (broadcast_grad) {
          const opmath_t go = static_cast<opmath_t>(grad_ptr[0]);
          chain_rule([go](int64_t) { return go; });
        } else {
          chain_rule([grad_ptr](int64_t i) { return static_cast<opmath_t>(grad_ptr[i]); });
        }
      });
  return grad_la;
}

}  // namespace l0fast
