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
#include "household_major.h"

namespace l0fast {

namespace {

template <typename scalar_t, bool kHasGate>
void chain_rule_block(const scalar_t* __restrict lw, const scalar_t* __restrict la,
                      const scalar_t* __restrict gate, scalar_t* __restrict grad_lw,
                      scalar_t* __restrict grad_la, int64_t begin, int64_t end, double beta,
                      double gamma, double zeta, double l0_scale, double l2_scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t g0 = static_cast<opmath_t>(gamma);
  const opmath_t z0 = static_cast<opmath_t>(zeta);
  const opmath_t inv_range = opmath_t(1) / (z0 - g0);
  const opmath_t gate_scale = (z0 - g0) / static_cast<opmath_t>(beta);
  const opmath_t shift = static_cast<opmath_t>(-beta * std::log(-gamma / zeta));
  const opmath_t bound = static_cast<opmath_t>(kLogAlphaBound);
  const opmath_t c0 = static_cast<opmath_t>(l0_scale);
  const opmath_t c2 = static_cast<opmath_t>(2.0 * l2_scale);
  for (int64_t h = begin; h < end; ++h) {
    const opmath_t gw = static_cast<opmath_t>(grad_lw[h]);  // holds M^T grad_y on entry
    const opmath_t a = static_cast<opmath_t>(la[h]);
    const opmath_t e = std::exp(static_cast<opmath_t>(lw[h]));
    const bool in_bound = (a >= -bound) & (a <= bound);
    const opmath_t p = sigmoid(clamp_log_alpha(a) + shift);
    const opmath_t dp = in_bound ? p * (opmath_t(1) - p) : opmath_t(0);
    opmath_t g = opmath_t(1), dg = opmath_t(0);
    if constexpr (kHasGate) {
      g = static_cast<opmath_t>(gate[h]);
      const opmath_t s = (g - g0) * inv_range;
      const bool live = (g > opmath_t(0)) & (g < opmath_t(1)) & in_bound;
      dg = live ? gate_scale * s * (opmath_t(1) - s) : opmath_t(0);
    }
    grad_la[h] = static_cast<scalar_t>(gw * e * dg + c0 * dp);
    grad_lw[h] = static_cast<scalar_t>(gw * e * g + c2 * e * e);
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
    const int64_t* cp_ptr = cp.data_ptr<int64_t>();
    const int32_t* ri_ptr = ri.data_ptr<int32_t>();
    const scalar_t* va_ptr = va.data_ptr<scalar_t>();
    const double* gy_ptr = gy.data_ptr<double>();
    const scalar_t* lw_ptr = lw.data_ptr<scalar_t>();
    const scalar_t* la_ptr = la.data_ptr<scalar_t>();
    const scalar_t* g_ptr = has_gate ? g.data_ptr<scalar_t>() : nullptr;
    scalar_t* glw_ptr = grad_lw.data_ptr<scalar_t>();
    scalar_t* gla_ptr = grad_la.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t h_begin, int64_t h_end) {
      // Block by block, so the gathered M^T grad_y is still in cache for the epilogue.
      for (int64_t b = h_begin; b < h_end; b += kNoiseBlock) {
        const int64_t e = std::min(h_end, b + kNoiseBlock);
        if (q > 0 && gather_households(cp_ptr, ri_ptr, va_ptr, gy_ptr, glw_ptr, b, e, nnz, last_row))
          malformed = true;
        if (q == 0) std::fill(glw_ptr + b, glw_ptr + e, scalar_t(0));
        if (has_gate) {
          chain_rule_block<scalar_t, true>(lw_ptr, la_ptr, g_ptr, glw_ptr, gla_ptr, b, e, beta,
                                           gamma, zeta, l0_scale, l2_scale);
        } else {
          chain_rule_block<scalar_t, false>(lw_ptr, la_ptr, g_ptr, glw_ptr, gla_ptr, b, e, beta,
                                            gamma, zeta, l0_scale, l2_scale);
        }
      }
    });
  });
  raise_if_malformed(malformed);
  return {grad_lw, grad_la};
}

}  // namespace l0fast
