// Fused backward of the survey-calibration objective (one pass over M^T per epoch).
//
// Forward (composed in l0fast/ops/calibration.py):
//   y = M @ (e * g),  e = exp(log_weight),  g = hard-concrete gate of log_alpha,
//   penalty = l0_scale * sum_h p_h + l2_scale * sum_h e_h^2,
//   p_h = sigmoid(clamp(log_alpha_h, +-20) - beta * log(-gamma / zeta)).
// Backward, with grad_y = dL/dy and the penalty scales already multiplied by dL/dpenalty:
//   gw_h             = sum_{k in h} values_k * grad_y[row_k]        (gather, fp64)
//   dL/dlog_weight_h = gw_h * e_h * g_h + 2 * l2_scale * e_h^2
//   dL/dlog_alpha_h  = gw_h * e_h * dg_h + l0_scale * p_h (1 - p_h) [|log_alpha_h| <= 20]
// dg_h comes from the saved gate as in hard_concrete_backward (no noise is
// regenerated).  Without gates (use_gates=False) g = 1 and dg = 0.
// Bytes moved (fp32): 8 per non-zero read, 12 per household read (col_ptr half,
// log_weight, log_alpha, gate) and 8 written; grad_y (Q values) stays in cache.
#include <tuple>

#include "buffer_pool.h"
#include "kernels.h"
#include "gate_math.h"
#include "household_major.h"

namespace l0fast {

namespace {

// The epilogue of `count` households: grad_lw holds M^T grad_y on entry and
// dL/dlog_weight on exit; grad_la receives dL/dlog_alpha.  gate may be null
// (no gates: g = 1, which passes no gradient to log_alpha).
template <typename scalar_t, typename opmath_t>
void chain_rule_block(const scalar_t* lw, const scalar_t* la, const scalar_t* gate,
                      scalar_t* grad_lw, scalar_t* grad_la, int64_t count,
                      const GateMath<opmath_t>& math, opmath_t l0_scale, opmath_t l2_scale) {
  // One household, given its gate g (gated: false without gates).
  auto household = [](const GateMath<opmath_t>& m, opmath_t c0, opmath_t c2, opmath_t lw_h, opmath_t a,
                      opmath_t g, bool gated, scalar_t& glw, scalar_t& gla) {
    const opmath_t gw = static_cast<opmath_t>(glw);
    const opmath_t e = std::exp(lw_h);
    const opmath_t through_gate = gated ? m.through_gate(gw * e, g, a) : opmath_t(0);
    gla = static_cast<scalar_t>(through_gate + m.through_penalty(c0, m.active_prob(a), a));
    glw = static_cast<scalar_t>(gw * e * g + c2 * e * e);
  };
  const opmath_t c2_value = opmath_t(2) * l2_scale;
  if (gate != nullptr) {
    auto group = [&](int64_t, const scalar_t* __restrict lw_in, const scalar_t* __restrict la_in,
                     const scalar_t* __restrict g_in, scalar_t* __restrict glw,
                     scalar_t* __restrict gla) L0FAST_LANE_GROUP {
      const GateMath<opmath_t> m = math;
      const opmath_t c0 = l0_scale, c2 = c2_value;
      for (int64_t h = 0; h < kLanes; ++h) {
        const opmath_t a = static_cast<opmath_t>(la_in[h]);
        const opmath_t g = static_cast<opmath_t>(g_in[h]);
        household(m, c0, c2, static_cast<opmath_t>(lw_in[h]), a, g, true, glw[h], gla[h]);
      }
    };
    for_each_lane_group(count, group, lw, la, gate, grad_lw, grad_la);
  } else {
    auto group = [&](int64_t, const scalar_t* __restrict lw_in, const scalar_t* __restrict la_in,
                     scalar_t* __restrict glw, scalar_t* __restrict gla) L0FAST_LANE_GROUP {
      const GateMath<opmath_t> m = math;
      const opmath_t c0 = l0_scale, c2 = c2_value;
      for (int64_t h = 0; h < kLanes; ++h)
        household(m, c0, c2, static_cast<opmath_t>(lw_in[h]), static_cast<opmath_t>(la_in[h]),
                  opmath_t(1), false, glw[h], gla[h]);
    };
    for_each_lane_group(count, group, lw, la, grad_lw, grad_la);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> calibration_backward_cpu(
    const at::Tensor& col_ptr, const at::Tensor& row_idx, const at::Tensor& values,
    const at::Tensor& grad_y, const at::Tensor& log_weight, const at::Tensor& log_alpha,
    const c10::optional<at::Tensor>& gate, double beta, double gamma, double zeta,
    double l0_scale, double l2_scale) {
  check_household_major(col_ptr, row_idx, values);
  check_gate_params(beta, gamma, zeta);
  const int64_t n = col_ptr.numel() - 1;
  check_vector(log_weight, values, n, "log_weight");
  check_vector(log_alpha, values, n, "log_alpha");
  const bool has_gate = gate.has_value() && gate->defined();
  if (has_gate) check_vector(*gate, values, n, "gate");
  TORCH_CHECK(grad_y.dim() == 1, "grad_y must be 1-D, got shape ", grad_y.sizes());
  const auto cp = col_ptr.contiguous();
  const auto ri = row_idx.contiguous();
  const auto va = values.contiguous();
  const auto lw = log_weight.contiguous();
  const auto la = log_alpha.contiguous();
  const auto g = has_gate ? gate->contiguous() : at::Tensor();
  const auto gy = grad_y.to(at::kDouble).contiguous();  // (Q,): stays in cache
  const int64_t q = gy.numel();
  const int64_t nnz = va.numel();
  raise_if_malformed(q == 0 && nnz != 0);
  const uint32_t last_row = q > 0 ? static_cast<uint32_t>(q - 1) : 0;
  auto grad_lw = empty_recycled({n}, va.options());
  auto grad_la = empty_recycled({n}, va.options());
  std::atomic<bool> malformed{false};

  AT_DISPATCH_FLOATING_TYPES(va.scalar_type(), "calibration_backward_cpu", [&] {
    dispatch_row_index(ri, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      using opmath_t = at::opmath_type<scalar_t>;
      const int64_t* cp_ptr = cp.data_ptr<int64_t>();
      const index_t* ri_ptr = ri.data_ptr<index_t>();
      const scalar_t* va_ptr = va.data_ptr<scalar_t>();
      const double* gy_ptr = gy.data_ptr<double>();
      const scalar_t* lw_ptr = lw.data_ptr<scalar_t>();
      const scalar_t* la_ptr = la.data_ptr<scalar_t>();
      const scalar_t* g_ptr = has_gate ? g.data_ptr<scalar_t>() : nullptr;
      scalar_t* glw_ptr = grad_lw.data_ptr<scalar_t>();
      scalar_t* gla_ptr = grad_la.data_ptr<scalar_t>();
      const GateMath<opmath_t> math(beta, gamma, zeta);
      // Block by block, so the gathered M^T grad_y is still in cache for the epilogue.
      parallel_blocks(n, kNoiseBlock, [&](int64_t b, int64_t e) {
        if (q > 0 && gather_households(cp_ptr, ri_ptr, va_ptr, gy_ptr, glw_ptr + b, b, e, nnz, last_row))
          malformed = true;
        if (q == 0) std::fill(glw_ptr + b, glw_ptr + e, scalar_t(0));
        chain_rule_block(lw_ptr + b, la_ptr + b, has_gate ? g_ptr + b : nullptr, glw_ptr + b,
                         gla_ptr + b, e - b, math, static_cast<opmath_t>(l0_scale),
                         static_cast<opmath_t>(l2_scale));
      });
    });
  });
  raise_if_malformed(malformed);
  return {grad_lw, grad_la};
}

}  // namespace l0fast
