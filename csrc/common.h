// Shared checks and scalar helpers for the l0fast CPU kernels.
#pragma once
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "philox.h"

namespace l0fast {

// |log_alpha| is clamped to this bound before any gate or penalty math
// (l0-python's LOG_ALPHA_BOUND).
constexpr double kLogAlphaBound = 20.0;
// Uniform noise is clamped to [kUniformEps, 1 - kUniformEps] (fp16-safe).
constexpr float kUniformEps = 1e-6f;
// Elements per parallel chunk (at least).
constexpr int64_t kGrain = 1 << 14;
// Block of elementwise work (no reduction, so no fixed partition to keep):
// small, so that the threads get nearly equal shares of a tensor.
constexpr int64_t kElementBlock = 1 << 10;

// NaN test on the bit pattern: survives -ffast-math and, returned as an
// integer to OR into a uint32_t flag, keeps the loop vectorizable.
static inline uint32_t is_nan_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<uint32_t>((bits & 0x7fffffffu) > 0x7f800000u);
}
// x == +0 or -0, on the bit pattern: under -ffast-math `x != 0` may read a NaN as 0.
template <typename T>
static inline bool is_zero_bits(T x) {
  using bits_t = std::conditional_t<sizeof(T) == 8, uint64_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>>;
  static_assert(sizeof(T) == sizeof(bits_t), "a 2, 4 or 8 byte floating type");
  bits_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<bits_t>(bits << 1) == 0;
}
static inline uint32_t is_nan_bits(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<uint32_t>((bits & 0x7fffffffffffffffull) > 0x7ff0000000000000ull);
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

// ---------------------------------------------------------------- fixed partition
// Results must not depend on the thread count, by construction:
//  1. work is cut into blocks whose boundaries depend only on the size
//     (`parallel_blocks`); threads take whole blocks;
//  2. every element goes through the same instructions: elementwise loops run
//     exactly kLanes iterations (a compile-time count, a multiple of every SIMD
//     width), and the last, partial group of a block runs the same code on
//     zero-padded scratch (`for_each_lane_group`).  A vectorized body beside a
//     scalar remainder would compute exp/log differently (SIMD vs libm).

// Elements per lane group: 4 AVX-512 registers of fp32, 8 of fp64.
constexpr int64_t kLanes = 64;
// Neither inlined nor cloned: every caller runs the very same machine code.
// Under -ffast-math each inlined copy of a reduction may be reassociated
// differently (at::parallel_for alone inlines its body twice: one thread /
// several), so any function whose rounding must not depend on its caller
// carries this.
#define L0FAST_ONE_MACHINE_CODE __attribute__((noinline, noclone))
// Attribute of a lane-group lambda, so full and padded groups run the same
// code.  Read captured values into locals before the loop: the vectorizer
// then sees loop invariants.
#define L0FAST_LANE_GROUP L0FAST_ONE_MACHINE_CODE

// Calls body(begin, end) for the blocks [b * block, min(n, (b + 1) * block)),
// in parallel over blocks; at least kGrain elements per thread.
template <typename Body>
inline void parallel_blocks(int64_t n, int64_t block, const Body& body) {
  const int64_t n_blocks = (n + block - 1) / block;
  at::parallel_for(0, n_blocks, std::max<int64_t>(1, kGrain / block), [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) body(b * block, std::min(n, (b + 1) * block));
  });
}

// parts[0] + parts[1] + ..., in order; one machine code for every caller
// (ordered_block_sum, inlined into each kernel), so kernels that sum the same
// blocks (hard_concrete_gated's penalty and l0_penalty) agree bitwise.
template <typename T>
L0FAST_ONE_MACHINE_CODE T add_in_order(const std::vector<T>& parts) {
  T total{};
  for (const T& p : parts) total += p;
  return total;
}

// The sum of block_sum(begin, end) over the blocks of parallel_blocks(n, block),
// computed in parallel and added in block order (T: double, or any type with
// += and a zero default): the result does not depend on the thread count.
template <typename T, typename BlockSum>
inline T ordered_block_sum(int64_t n, int64_t block, const BlockSum& block_sum) {
  std::vector<T> sums(static_cast<size_t>((n + block - 1) / block), T{});
  parallel_blocks(n, block, [&](int64_t begin, int64_t end) { sums[begin / block] = block_sum(begin, end); });
  return add_in_order(sums);
}

// One pointer argument of a lane group, padded to kLanes elements: its valid
// elements are copied in (the rest are zero) and, unless it points to const,
// copied back out, so outputs may also be read (in-out).
template <typename P>
class PaddedLanes {
  using T = std::remove_const_t<std::remove_pointer_t<P>>;

 public:
  PaddedLanes(P src, int64_t valid) : src_(src), valid_(valid) {
    std::fill(std::copy(src, src + valid, data_), data_ + kLanes, T(0));
  }
  P get() { return data_; }
  void write_back() {
    if constexpr (!std::is_const_v<std::remove_pointer_t<P>>) std::copy(data_, data_ + valid_, src_);
  }

 private:
  alignas(64) T data_[kLanes];
  P src_;
  int64_t valid_;
};

// Calls group(valid, (ptrs + i)...) for i = 0, kLanes, 2 kLanes, ... < count;
// `group` computes exactly kLanes elements (valid of them real: reductions
// mask the rest).  The partial last group runs on PaddedLanes scratch.
// Mark `group` L0FAST_LANE_GROUP so that one copy of its code serves both calls.
template <typename Group, typename... P>
inline void for_each_lane_group(int64_t count, const Group& group, P... ptrs) {
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) group(kLanes, (ptrs + i)...);
  if (i == count) return;
  std::tuple<PaddedLanes<P>...> pads{PaddedLanes<P>(ptrs + i, count - i)...};
  std::apply([&](auto&... pad) { group(count - i, pad.get()...); }, pads);
  std::apply([](auto&... pad) { (pad.write_back(), ...); }, pads);
}

// True when t is one value broadcast to its shape (every stride 0, e.g. the
// gradient of x.sum()): kernels then read it once instead of materializing it.
static inline bool is_broadcast(const at::Tensor& t) {
  return t.numel() > 0 && std::all_of(t.strides().begin(), t.strides().end(), [](int64_t s) { return s == 0; });
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
  // the reference and Triton shift a signed offset, this kernel an unsigned one: they part ways below 0
  TORCH_CHECK_VALUE(p[1] >= 0, "rng_state's offset (a noise position) must be >= 0, got ", p[1]);
  return {static_cast<uint64_t>(p[0]), static_cast<uint64_t>(p[1])};
}

}  // namespace l0fast
