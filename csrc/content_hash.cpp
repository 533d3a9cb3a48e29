// content_hash(a): the hash of one stored array behind the matrix cache's
// content fingerprint (l0fast/sparse.py), in one parallel pass:
//   sum_k mix(word(a[k]) + k c)  mod 2^64
// with word(x) a float's bit pattern (zero-extended) or an integer's value
// (sign-extended), c = 2^64 / phi (odd)
// and mix splitmix64's finalizer, a bijection of 64-bit words.  For a given
// position k each term is a bijection of the entry, so changing any one entry
// changes the hash, exactly, however small the change and however large the
// other values (sums of the values themselves lose a small change to rounding);
// entries that trade places change it too, but for a 2^-64 chance.  Integer
// sums wrap exactly: the result does not depend on the thread count.
#include <ATen/Dispatch_v2.h>
#include <torch/extension.h>

#include <cstring>

#include "common.h"

namespace l0fast {

namespace {

constexpr int64_t kHashBlock = 1 << 16;
constexpr uint64_t kPositionStep = 0x9E3779B97F4A7C15ull;

inline uint64_t mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

template <typename T>
inline uint64_t word_of(T x) {
  if constexpr (std::is_floating_point_v<T>) {
    std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t> bits;
    std::memcpy(&bits, &x, sizeof bits);
    return bits;
  } else {
    return static_cast<uint64_t>(static_cast<int64_t>(x));
  }
}

// sum_k mix(word(a[k]) + k c) over [begin, end), mod 2^64.
template <typename T>
uint64_t block_hash(const T* a, int64_t begin, int64_t end) {
  uint64_t h = 0;
  for (int64_t k = begin; k < end; ++k) h += mix(word_of(a[k]) + static_cast<uint64_t>(k) * kPositionStep);
  return h;
}

}  // namespace

// a: 1-D contiguous CPU float32, float64, int32 or int64; the hash is returned as int64 (its bits).
int64_t content_hash(const at::Tensor& a) {
  TORCH_CHECK(a.device().is_cpu() && a.dim() == 1 && a.is_contiguous(), "content_hash: a must be a contiguous 1-D CPU tensor");
  uint64_t h = 0;
  // blocks in parallel; their wrapping sums are exact, so their order would not matter either
  AT_DISPATCH_V2(a.scalar_type(), "content_hash", AT_WRAP([&] {
    const scalar_t* data = a.data_ptr<scalar_t>();
    h = ordered_block_sum<uint64_t>(a.numel(), kHashBlock, [&](int64_t begin, int64_t end) { return block_hash(data, begin, end); });
  }), AT_EXPAND(AT_FLOATING_TYPES), at::kInt, at::kLong);
  return static_cast<int64_t>(h);
}

}  // namespace l0fast
