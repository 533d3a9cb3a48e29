// Shared checks and scalar helpers for the l0fast CPU kernels.
#pragma once
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "philox.h"

namespace l0fast {

// |log_alpha| is clamped to this bound before any gate or penalty math
// (l0-python's LOG_ALPHA_BOUND).
constexpr double kLogAlphaBound = 20.0;
// Uniform noise is clamped to [kUniformEps, 1 - kUniformEps] (fp16-safe).
constexpr float kUniformEps = 1e-6f;
// Elements per parallel chunk; also the fixed block of the penalty's
// reduction, so sums do not depend on the thread count.
constexpr int64_t kGrain = 1 << 14;

// NaN test on the bit pattern: survives -ffast-math and, returned as an
// integer to OR into a uint32_t flag, keeps the loop vectorizable.
static inline uint32_t is_nan_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<uint32_t>((bits & 0x7fffffffu) > 0x7f800000u);
}
static inline uint32_t is_nan_bits(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<uint32_t>((bits & 0x7fffffffffffffffull) > 0x7ff0000000000000ull);
}

template <typename T>
static inline T clamp_log_alpha(T x) {
  const T bound = static_cast<T>(kLogAlphaBound);
  return x < -bound ? -bound : (x > bound ? bound : x);
}

template <typename T>
static inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// Stretch s in (0, 1) to (gamma, zeta) and clamp to [0, 1].
template <typename T>
static inline T stretch_and_clamp(T s, T gamma, T zeta) {
  const T g = s * (zeta - gamma) + gamma;
  return g < T(0) ? T(0) : (g > T(1) ? T(1) : g);
}

static inline void check_log_alpha(const at::Tensor& log_alpha) {
  TORCH_CHECK(log_alpha.device().is_cpu(), "l0fast CPU kernel got a ",
              log_alpha.device(), " tensor for log_alpha");
  TORCH_CHECK(at::isFloatingType(log_alpha.scalar_type()),
              "log_alpha must be a floating-point tensor, got ",
              log_alpha.scalar_type());
}

static inline void check_gate_params(double beta, double gamma, double zeta) {
  TORCH_CHECK(beta > 0, "beta (temperature) must be > 0, got ", beta);
  TORCH_CHECK(gamma < 0, "gamma must be < 0, got ", gamma);
  TORCH_CHECK(zeta > 1, "zeta must be > 1, got ", zeta);
}

// Raise the l0fast NaN error if any chunk saw a NaN in log_alpha.
static inline void raise_if_nan(bool found, const char* where) {
  TORCH_CHECK_VALUE(!found, where, ": log_alpha contains NaN. A NaN loss or ",
                    "too large a learning rate usually causes this; reinitialise ",
                    "the gates (reset_parameters()) and lower lr.");
}

// Calls body(begin, count) for consecutive blocks of at most kNoiseBlock
// elements covering [0, n), in parallel; blocks never depend on the thread count.
template <typename Body>
static inline void for_each_noise_block(int64_t n, const Body& body) {
  const int64_t n_blocks = (n + kNoiseBlock - 1) / kNoiseBlock;
  at::parallel_for(0, n_blocks, kGrain / kNoiseBlock, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t begin = b * kNoiseBlock;
      body(begin, std::min(kNoiseBlock, n - begin));
    }
  });
}

// (seed, offset) from the int64 RNG state tensor [seed, offset].
static inline std::pair<uint64_t, uint64_t> read_rng_state(const at::Tensor& state) {
  TORCH_CHECK(state.device().is_cpu() && state.scalar_type() == at::kLong &&
                  state.numel() == 2,
              "rng_state must be a CPU int64 tensor [seed, offset], got ",
              state.scalar_type(), " of shape ", state.sizes(), " on ",
              state.device());
  const auto s = state.contiguous();
  const int64_t* p = s.data_ptr<int64_t>();
  return {static_cast<uint64_t>(p[0]), static_cast<uint64_t>(p[1])};
}

}  // namespace l0fast
