// The training step of a gated module from one pass over log_alpha: sampled
// hard-concrete gates, the gated weight and the L0 penalty together, and the
// gradients of all three in one backward pass.
//
//   forward:  g_i = sample(u_i, a_i)                    (hard_concrete.cpp)
//             y_i = w_i * g_i                           (when a weight is given)
//             penalty = sum_i p_i, p_i = active_prob(a_i) (l0_penalty.cpp, same sum bitwise)
//             g_i and p_i from one exponential of a_i at the usual temperatures (gate_math.h)
//   backward: dL/da_i = c_i * dg_i/da_i + dL/dpenalty * dp_i/da_i,
//             c_i = dL/dy_i * w_i with a weight, else dL/dg_i;
//             dL/dw_i = dL/dy_i * g_i
//
// Bytes per element (fp32), without / with a weight: forward 4 / 8 read and
// 4 / 8 written; backward 12 / 16 read and 4 / 8 written (one read less when
// the upstream gradient is broadcast from one value, e.g. of gates.sum()).
#include <algorithm>

#include "buffer_pool.h"
#include "gate_math.h"
#include "kernels.h"

namespace l0fast {
namespace {

void check_weight(const std::optional<at::Tensor>& weight, const at::Tensor& log_alpha) {
  if (!weight) return;
  TORCH_CHECK(weight->device().is_cpu(), "l0fast CPU kernel got a ", weight->device(), " tensor for weight");
  TORCH_CHECK(weight->numel() == log_alpha.numel() && weight->scalar_type() == log_alpha.scalar_type(),
              "weight must have log_alpha's number of elements and dtype, got ", weight->sizes(), " ",
              weight->scalar_type(), " and ", log_alpha.sizes(), " ", log_alpha.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_concrete_gated_cpu(
    const at::Tensor& log_alpha, const at::Tensor& rng_state, const std::optional<at::Tensor>& weight,
    double beta, double gamma, double zeta) {
  check_log_alpha(log_alpha);
  check_gate_params(beta, gamma, zeta);
  check_weight(weight, log_alpha);
  const auto [seed, offset] = read_rng_state(rng_state);
  const auto la = log_alpha.contiguous();
  const auto w = weight ? weight->contiguous() : at::Tensor();
  auto gate = empty_recycled(la.sizes(), la.options());
  auto gated = weight ? empty_recycled(w.sizes(), w.options()) : at::empty({0}, la.options());
  const int64_t n = la.numel();
  double total = 0.0;
  std::atomic<bool> nan_found{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, la.scalar_type(), "hard_concrete_gated_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* la_ptr = la.data_ptr<scalar_t>();
    const scalar_t* w_ptr = weight ? w.data_ptr<scalar_t>() : nullptr;
    scalar_t* gate_ptr = gate.data_ptr<scalar_t>();
    scalar_t* gated_ptr = weight ? gated.data_ptr<scalar_t>() : nullptr;
    const GateMath<opmath_t> math(beta, gamma, zeta);
    auto multiply = [](int64_t, const scalar_t* __restrict w_in, const scalar_t* __restrict g_in,
                       scalar_t* __restrict out) L0FAST_LANE_GROUP {
      for (int64_t i = 0; i < kLanes; ++i)
        out[i] = static_cast<scalar_t>(static_cast<opmath_t>(w_in[i]) * static_cast<opmath_t>(g_in[i]));
    };
    // The penalty is summed in l0_penalty's blocks, from the exponentials the gates use.
    total = ordered_block_sum<double>(n, kNoiseBlock, [&](int64_t begin, int64_t end) {
      float scratch[kNoiseBlock + 8];
      const float* u = uniform_block(seed, offset + static_cast<uint64_t>(begin), end - begin, scratch);
      double penalty = 0.0;
      if (sample_gates(math, end - begin, u, la_ptr + begin, gate_ptr + begin, &penalty)) nan_found = true;
      if (w_ptr) for_each_lane_group(end - begin, multiply, w_ptr + begin, gate_ptr + begin, gated_ptr + begin);
      return penalty;
    });
  });
  raise_if_nan(nan_found, weight ? "hard_concrete_gated (gated weight)" : "hard_concrete_gated");
  return {gate, gated, at::scalar_tensor(total, la.options())};
}

std::tuple<at::Tensor, at::Tensor> hard_concrete_gated_backward_cpu(
    const std::optional<at::Tensor>& grad, const std::optional<at::Tensor>& grad_penalty, const at::Tensor& gate,
    const at::Tensor& log_alpha, const std::optional<at::Tensor>& weight, double beta, double gamma, double zeta) {
  check_log_alpha(log_alpha);
  check_gate_params(beta, gamma, zeta);
  check_weight(weight, log_alpha);
  TORCH_CHECK(gate.numel() == log_alpha.numel(), "gate must have log_alpha's number of elements, got ", gate.sizes(),
              " and ", log_alpha.sizes());
  TORCH_CHECK(!grad || grad->numel() == log_alpha.numel(), "grad must have log_alpha's number of elements, got ",
              grad->sizes());
  TORCH_CHECK(!grad_penalty || grad_penalty->numel() == 1, "grad_penalty must hold one value, got ",
              grad_penalty->sizes());
  const auto la = log_alpha.contiguous();
  const auto g_saved = gate.to(la.scalar_type()).contiguous();
  const auto w = weight ? weight->contiguous() : at::Tensor();
  // No upstream gradient reads as a broadcast zero; a broadcast one is read once.
  const bool broadcast = !grad || is_broadcast(*grad);
  const auto upstream = !grad ? at::zeros({1}, la.options())
                              : (broadcast ? grad->as_strided({1}, {1}) : *grad).to(la.scalar_type()).contiguous();
  const double penalty_scale = grad_penalty ? grad_penalty->item<double>() : 0.0;
  auto grad_la = empty_recycled(la.sizes(), la.options());
  auto grad_w = weight ? empty_recycled(w.sizes(), w.options()) : at::empty({0}, la.options());
  const int64_t n = la.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, la.scalar_type(), "hard_concrete_gated_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* la_ptr = la.data_ptr<scalar_t>();
    const scalar_t* g_ptr = g_saved.data_ptr<scalar_t>();
    const scalar_t* up_ptr = upstream.data_ptr<scalar_t>();
    const scalar_t* w_ptr = weight ? w.data_ptr<scalar_t>() : nullptr;
    scalar_t* out_ptr = grad_la.data_ptr<scalar_t>();
    scalar_t* grad_w_ptr = weight ? grad_w.data_ptr<scalar_t>() : nullptr;
    const GateMath<opmath_t> math(beta, gamma, zeta);
    const opmath_t scale = static_cast<opmath_t>(penalty_scale);
    // dL/da from c_i (the upstream gradient through the gate), held in opmath: a half's c = dL/dy * w would
    // overflow where the reference's fp32 one does not (for fp32 and fp64 it is the value stored before).
    auto chain = [=](int64_t, const opmath_t* __restrict c_in, const scalar_t* __restrict g_in,
                     const scalar_t* __restrict a_in, scalar_t* __restrict out) L0FAST_LANE_GROUP {
      const GateMath<opmath_t> m = math;
      const opmath_t s = scale;
      for (int64_t i = 0; i < kLanes; ++i) {
        const opmath_t a = static_cast<opmath_t>(a_in[i]);
        const opmath_t through_gate = m.through_gate(c_in[i], static_cast<opmath_t>(g_in[i]), a);
        out[i] = static_cast<scalar_t>(through_gate + m.through_penalty(s, m.active_prob(a), a));
      }
    };
    // c_i = dL/dy_i * w_i and dL/dw_i = dL/dy_i * g_i.
    auto weighted = [](int64_t, const scalar_t* __restrict up_in, const scalar_t* __restrict w_in,
                       const scalar_t* __restrict g_in, opmath_t* __restrict c_out, scalar_t* __restrict gw_out)
                        L0FAST_LANE_GROUP {
      for (int64_t i = 0; i < kLanes; ++i) {
        const opmath_t up = static_cast<opmath_t>(up_in[i]);
        c_out[i] = up * static_cast<opmath_t>(w_in[i]);
        gw_out[i] = static_cast<scalar_t>(up * static_cast<opmath_t>(g_in[i]));
      }
    };
    // The same with one upstream value for every element.
    const opmath_t up0 = broadcast ? static_cast<opmath_t>(up_ptr[0]) : opmath_t(0);
    auto weighted_broadcast = [=](int64_t, const scalar_t* __restrict w_in, const scalar_t* __restrict g_in,
                                  opmath_t* __restrict c_out, scalar_t* __restrict gw_out) L0FAST_LANE_GROUP {
      const opmath_t up = up0;
      for (int64_t i = 0; i < kLanes; ++i) {
        c_out[i] = up * static_cast<opmath_t>(w_in[i]);
        gw_out[i] = static_cast<scalar_t>(up * static_cast<opmath_t>(g_in[i]));
      }
    };
    parallel_blocks(n, kElementBlock, [&](int64_t begin, int64_t end) {
      const int64_t count = end - begin;
      alignas(64) opmath_t c[kElementBlock];
      if (broadcast && w_ptr) {
        for_each_lane_group(count, weighted_broadcast, w_ptr + begin, g_ptr + begin, c, grad_w_ptr + begin);
      } else if (broadcast) {
        std::fill(c, c + count, up0);
      } else if (w_ptr) {
        for_each_lane_group(count, weighted, up_ptr + begin, w_ptr + begin, g_ptr + begin, c, grad_w_ptr + begin);
      } else {
        std::transform(up_ptr + begin, up_ptr + end, c, [](scalar_t up) { return static_cast<opmath_t>(up); });
      }
      for_each_lane_group(count, chain, static_cast<const opmath_t*>(c), g_ptr + begin, la_ptr + begin, out_ptr + begin);
    });
  });
  return {grad_la, grad_w};
}

}  // namespace l0fast
