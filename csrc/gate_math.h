// Per-element math of hard-concrete gates and their L0 penalty (Louizos,
// Welling & Kingma 2017, arXiv:1712.01312), shared by every CPU kernel.
//
//   sample:  g = clamp(sigmoid((log(u / (1 - u)) + clamp(a, +-20)) / beta) * (zeta - gamma) + gamma, 0, 1)
//   mean:    g = clamp(sigmoid(clamp(a, +-20) / beta) * (zeta - gamma) + gamma, 0, 1)
//   dg/da  = (zeta - gamma) / beta * s (1 - s), s = (g - gamma) / (zeta - gamma), where
//            0 < g < 1 and |a| <= 20, else 0 (from the saved gate: no noise needed)
//   p      = sigmoid(clamp(a, +-20) - beta * log(-gamma / zeta))   (P(gate != 0))
//   dp/da  = p (1 - p) where |a| <= 20, else 0
// The chain rule through either (through_gate, through_penalty) gives exactly 0 where the derivative is 0,
// whatever the upstream gradient (NaN and inf too), as torch's clamp and where do: a select, not a product.
//
// Copy a GateMath into a local inside a lane group: its fields then become
// loop invariants that the vectorizer can hoist.
#pragma once
#include "common.h"

namespace l0fast {

template <typename T>
static inline T clamp_log_alpha(T x) {
  const T bound = static_cast<T>(kLogAlphaBound);
  return x < -bound ? -bound : (x > bound ? bound : x);
}

// 1 / (1 + exp(-x)) with x clamped to +-80 first: under -ffast-math an exp
// that overflows (x < -88 in fp32) is not inf, and a closed gate read as open.
// sigmoid(-80) ~ 1.8e-35 is still a normal fp32 number; gates are exactly 0 or
// 1 out there either way (stretch and clamp).
template <typename T>
static inline T sigmoid(T x) {
  const T bounded = x < T(-80) ? T(-80) : (x > T(80) ? T(80) : x);
  return T(1) / (T(1) + std::exp(-bounded));
}

// Stretch s in (0, 1) to (gamma, zeta) and clamp to [0, 1].
template <typename T>
static inline T stretch_and_clamp(T s, T gamma, T zeta) {
  const T g = s * (zeta - gamma) + gamma;
  return g < T(0) ? T(0) : (g > T(1) ? T(1) : g);
}

template <typename T>
struct GateMath {
  T inv_beta, gamma, zeta, inv_range, slope_scale, penalty_shift, bound;

  GateMath(double beta, double gamma_, double zeta_)
      : inv_beta(T(1) / static_cast<T>(beta)),
        gamma(static_cast<T>(gamma_)),
        zeta(static_cast<T>(zeta_)),
        inv_range(T(1) / (zeta - gamma)),
        slope_scale((zeta - gamma) / static_cast<T>(beta)),
        penalty_shift(static_cast<T>(-beta * std::log(-gamma_ / zeta_))),
        bound(static_cast<T>(kLogAlphaBound)) {}

  bool in_bound(T a) const { return (a >= -bound) & (a <= bound); }

  // Sampled gate from a uniform u in (0, 1) (clamped to [1e-6, 1 - 1e-6] here).
  T sample(float u, T a) const {
    const float uc = u < kUniformEps ? kUniformEps : (u > 1.0f - kUniformEps ? 1.0f - kUniformEps : u);
    const T uo = static_cast<T>(uc);
    const T logit = std::log(uo / (T(1) - uo));
    return stretch_and_clamp(sigmoid((logit + clamp_log_alpha(a)) * inv_beta), gamma, zeta);
  }

  T mean(T a) const { return stretch_and_clamp(sigmoid(clamp_log_alpha(a) * inv_beta), gamma, zeta); }

  // c * dg/da, dg/da from the saved gate g; 0 where the gate is not live.
  T through_gate(T c, T g, T a) const {
    const T s = (g - gamma) * inv_range;
    const bool live = (g > T(0)) & (g < T(1)) & in_bound(a);
    return live ? c * (slope_scale * s * (T(1) - s)) : T(0);
  }

  T active_prob(T a) const { return sigmoid(clamp_log_alpha(a) + penalty_shift); }

  // c * dp/da, given p = active_prob(a); 0 where |a| > 20.
  T through_penalty(T c, T p, T a) const { return in_bound(a) ? c * (p * (T(1) - p)) : T(0); }
};

// sum of active_prob over the first `valid` of kLanes elements of a_in, in
// fp64; ORs a NaN flag of those elements into nan_bits.  One machine code for
// every kernel that sums the penalty, so their sums agree bitwise.
template <typename opmath_t, typename scalar_t>
L0FAST_ONE_MACHINE_CODE double active_prob_lanes(const GateMath<opmath_t> m, const scalar_t* __restrict a_in,
                                                 int64_t valid, uint32_t& nan_bits) {
  double sum = 0.0;
  uint32_t nan_here = 0;
  for (int64_t i = 0; i < kLanes; ++i) {
    const opmath_t a = static_cast<opmath_t>(a_in[i]);
    nan_here |= is_nan_bits(a);
    const double p = static_cast<double>(m.active_prob(a));
    sum += i < valid ? p : 0.0;
  }
  nan_bits |= nan_here;
  return sum;
}

}  // namespace l0fast
