// Per-element math of hard-concrete gates and their L0 penalty (Louizos,
// Welling & Kingma 2017, arXiv:1712.01312), shared by every CPU kernel.
//
//   sample:  g = clamp(sigmoid((log(u / (1 - u)) + clamp(a, +-20)) / beta) * (zeta - gamma) + gamma, 0, 1)
//   mean:    g = clamp(sigmoid(clamp(a, +-20) / beta) * (zeta - gamma) + gamma, 0, 1)
//   dg/da  = (zeta - gamma) / beta * s (1 - s), s = (g - gamma) / (zeta - gamma), where
//            0 < g < 1 and |a| <= 20, else 0 (from the saved gate: no noise needed)
//   p      = sigmoid(clamp(a, +-20) - beta * log(-gamma / zeta))   (P(gate != 0))
//   dp/da  = p (1 - p) where |a| <= 20, else 0
// One exponential serves a sampled gate and its penalty, t = exp(-clamp(a, +-20) / 2):
//   p      = 1 / (1 + (t (-gamma / zeta)^(beta / 2))^2)
//   sample = stretch_and_clamp(1 / (1 + q2^(k / 2))), q2 = (1 - u) / u * t^2 = exp(-(log(u / (1 - u)) + a)),
//            where k = 2 / beta is 1, 2, 3 or 4 (beta = 2, 1, 2/3 or 1/2: l0's defaults are 1/2 for
//            layers and gates, 2/3 for calibration); other temperatures take the log and exp above.
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
constexpr double kSigmoidBound = 80.0;
template <typename T>
static inline T sigmoid(T x) {
  const T bound = static_cast<T>(kSigmoidBound);
  const T bounded = x < -bound ? -bound : (x > bound ? bound : x);
  return T(1) / (T(1) + std::exp(-bounded));
}

// Stretch s in (0, 1) to (gamma, zeta) and clamp to [0, 1].
template <typename T>
static inline T stretch_and_clamp(T s, T gamma, T zeta) {
  const T g = s * (zeta - gamma) + gamma;
  return g < T(0) ? T(0) : (g > T(1) ? T(1) : g);
}

// k = 2 / beta where that is 1, 2, 3 or 4, else 0 (the general formula).
static inline int half_exp_power(double beta) {
  for (int k = 1; k <= 4; ++k)
    if (beta == 2.0 / k) return k;
  return 0;
}

// q2^(k / 2): at most exp(2 * (20 + log(1e6))) ~ 2e29 for |a| <= 20 and u in [1e-6, 1 - 1e-6], within fp32.
template <int k, typename T>
static inline T half_power(T q2) {
  static_assert(k >= 1 && k <= 4, "k = 2 / beta in 1..4");
  if constexpr (k == 1) return std::sqrt(q2);
  if constexpr (k == 2) return q2;
  if constexpr (k == 3) return q2 * std::sqrt(q2);
  if constexpr (k == 4) return q2 * q2;
}

template <typename T>
struct GateMath {
  T inv_beta, gamma, zeta, inv_range, slope_scale, penalty_root, root_bound, bound;
  int power;  // half_exp_power(beta)

  GateMath(double beta, double gamma_, double zeta_)
      : inv_beta(T(1) / static_cast<T>(beta)),
        gamma(static_cast<T>(gamma_)),
        zeta(static_cast<T>(zeta_)),
        inv_range(T(1) / (zeta - gamma)),
        slope_scale((zeta - gamma) / static_cast<T>(beta)),
        penalty_root(static_cast<T>(std::min(std::pow(-gamma_ / zeta_, beta / 2), std::exp((kSigmoidBound + kLogAlphaBound) / 2)))),
        root_bound(static_cast<T>(std::exp(kSigmoidBound / 2))),
        bound(static_cast<T>(kLogAlphaBound)),
        power(half_exp_power(beta)) {}

  bool in_bound(T a) const { return (a >= -bound) & (a <= bound); }

  static T clamp_uniform(float u) {
    return static_cast<T>(u < kUniformEps ? kUniformEps : (u > 1.0f - kUniformEps ? 1.0f - kUniformEps : u));
  }

  // Sampled gate from a uniform u in (0, 1) (clamped to [1e-6, 1 - 1e-6] here).
  T sample(float u, T a) const {
    const T uo = clamp_uniform(u);
    const T logit = std::log(uo / (T(1) - uo));
    return stretch_and_clamp(sigmoid((logit + clamp_log_alpha(a)) * inv_beta), gamma, zeta);
  }

  // The same gate, from t = half_exp(a) when kPower = power is not 0 (a is read only when it is 0).
  template <int kPower>
  T sample(float u, T a, T t) const {
    if constexpr (kPower == 0) {
      return sample(u, a);
    } else {
      const T uo = clamp_uniform(u);
      const T q2 = (T(1) - uo) / uo * (t * t);
      return stretch_and_clamp(T(1) / (T(1) + half_power<kPower>(q2)), gamma, zeta);
    }
  }

  T half_exp(T a) const { return std::exp(T(-0.5) * clamp_log_alpha(a)); }

  T mean(T a) const { return stretch_and_clamp(sigmoid(clamp_log_alpha(a) * inv_beta), gamma, zeta); }

  // c * dg/da, dg/da from the saved gate g; 0 where the gate is not live.
  T through_gate(T c, T g, T a) const {
    const T s = (g - gamma) * inv_range;
    const bool live = (g > T(0)) & (g < T(1)) & in_bound(a);
    return live ? c * (slope_scale * s * (T(1) - s)) : T(0);
  }

  // p = 1 / (1 + r^2), r = t (-gamma / zeta)^(beta / 2) = exp(-(a + shift) / 2) bounded by e^40 (sigmoid's
  // bound): r^2 never overflows fp32, where 1 / (1 + inf) is NaN under -ffast-math.  penalty_root is stored
  // bounded by e^50, beyond which r > e^40 for every |a| <= 20 anyway.
  T active_prob_from_half_exp(T t) const {
    const T r = t * penalty_root;
    const T bounded = r < root_bound ? r : root_bound;
    return T(1) / (T(1) + bounded * bounded);
  }
  T active_prob(T a) const { return active_prob_from_half_exp(half_exp(a)); }

  // c * dp/da, given p = active_prob(a); 0 where |a| > 20.
  T through_penalty(T c, T p, T a) const { return in_bound(a) ? c * (p * (T(1) - p)) : T(0); }
};

// Calls body(std::integral_constant<int, k>{}) with k = m.power, so that
// per-element code can branch on it at compile time.
template <typename T, typename Body>
inline void with_half_exp_power(const GateMath<T>& m, const Body& body) {
  switch (m.power) {
    case 1: return body(std::integral_constant<int, 1>{});
    case 2: return body(std::integral_constant<int, 2>{});
    case 3: return body(std::integral_constant<int, 3>{});
    case 4: return body(std::integral_constant<int, 4>{});
    default: return body(std::integral_constant<int, 0>{});
  }
}

// The lane groups below are one machine code for every kernel (see
// for_each_lane_group): gates, exponentials and penalty sums agree bitwise
// between the kernels that compute them.

// t[i] = half_exp(a[i]) for kLanes elements; returns the NaN bits of a.
template <typename opmath_t, typename scalar_t>
L0FAST_ONE_MACHINE_CODE uint32_t half_exp_lanes(const GateMath<opmath_t> m, const scalar_t* __restrict a_in,
                                                opmath_t* __restrict t_out) {
  uint32_t nan_bits = 0;
  for (int64_t i = 0; i < kLanes; ++i) {
    const opmath_t a = static_cast<opmath_t>(a_in[i]);
    nan_bits |= is_nan_bits(a);
    t_out[i] = m.half_exp(a);
  }
  return nan_bits;
}

// out[i] = sample<kPower>(u[i], a[i], t[i]) for kLanes elements (t is not read when kPower is 0); returns the
// NaN bits of a.
template <int kPower, typename opmath_t, typename scalar_t>
L0FAST_ONE_MACHINE_CODE uint32_t sample_lanes(const GateMath<opmath_t> m, const float* __restrict u_in,
                                              const scalar_t* __restrict a_in, const opmath_t* __restrict t_in,
                                              scalar_t* __restrict out) {
  uint32_t nan_bits = 0;
  for (int64_t i = 0; i < kLanes; ++i) {
    const opmath_t a = static_cast<opmath_t>(a_in[i]);
    nan_bits |= is_nan_bits(a);
    out[i] = static_cast<scalar_t>(m.template sample<kPower>(u_in[i], a, kPower == 0 ? opmath_t(0) : t_in[i]));
  }
  return nan_bits;
}

// out[i] = sample(u[i], a[i]) for i < count (count <= kNoiseBlock); given `penalty`, also
// *penalty += sum_i active_prob(a[i]) in fp64, from the exponentials the gates use (l0_penalty's lane sums,
// bitwise).  Returns the NaN bits of a.
template <typename opmath_t, typename scalar_t>
inline uint32_t sample_gates(const GateMath<opmath_t>& math, int64_t count, const float* u, const scalar_t* a,
                             scalar_t* out, double* penalty = nullptr) {
  uint32_t nan_bits = 0;
  with_half_exp_power(math, [&](auto power) {
    constexpr int k = decltype(power)::value;
    auto group = [&](int64_t valid, const float* __restrict u_in, const scalar_t* __restrict a_in,
                     scalar_t* __restrict g_out) {
      alignas(64) opmath_t t[kLanes];
      if (k != 0 || penalty != nullptr) half_exp_lanes(math, a_in, t);
      nan_bits |= sample_lanes<k>(math, u_in, a_in, static_cast<const opmath_t*>(t), g_out);
      if (penalty != nullptr) *penalty += active_prob_lanes(math, static_cast<const opmath_t*>(t), valid);
    };
    for_each_lane_group(count, group, u, a, out);
  });
  return nan_bits;
}

// sum of active_prob_from_half_exp over the first `valid` of kLanes values t, in fp64.
template <typename opmath_t>
L0FAST_ONE_MACHINE_CODE double active_prob_lanes(const GateMath<opmath_t> m, const opmath_t* __restrict t_in,
                                                 int64_t valid) {
  double sum = 0.0;
  for (int64_t i = 0; i < kLanes; ++i) {
    const double p = static_cast<double>(m.active_prob_from_half_exp(t_in[i]));
    sum += i < valid ? p : 0.0;
  }
  return sum;
}

}  // namespace l0fast
