// content_sums(values, index): the sums behind the matrix cache's content
// fingerprint (l0fast/sparse.py), in one parallel pass over the arrays as
// stored, without the fp64 copies numpy needs for them:
//   (sum_k v[k], sum_k v[k] ix[k], sum_k ix[k], sum_k v[k] p(k), sum_k ix[k] p(k))
// with p(k) in [1, 2) a pseudo-random weight of storage position k (Fibonacci
// hashing), so that values or indices trading places change the sums too.
// Sums of the index are fp64 but for sum_k ix[k] (int64). Fixed blocks, their
// partial sums added in block order: the result does not depend on the thread count.
#include <torch/extension.h>

#include "common.h"

namespace l0fast {

namespace {

constexpr int64_t kSumBlock = 1 << 16;

struct ContentSums {
  double values = 0.0, weighted = 0.0, values_placed = 0.0, index_placed = 0.0;
  int64_t index = 0;
  ContentSums& operator+=(const ContentSums& other) {
    values += other.values;
    weighted += other.weighted;
    values_placed += other.values_placed;
    index_placed += other.index_placed;
    index += other.index;
    return *this;
  }
};

// p(k) = 1 + (top 53 bits of k * 2^64 / phi) / 2^53, in [1, 2); l0fast/sparse.py's _position_weights.
inline double position_weight(int64_t k) {
  const uint64_t h = static_cast<uint64_t>(k) * 0x9E3779B97F4A7C15ull;
  return 1.0 + static_cast<double>(h >> 11) * 0x1.0p-53;
}

// The sums of entries [begin, end); one machine code for every caller (see
// L0FAST_ONE_MACHINE_CODE), so a block's sums do not depend on the thread count.
template <typename value_t, typename index_t>
L0FAST_ONE_MACHINE_CODE ContentSums block_sums(const value_t* v, const index_t* ix, int64_t begin, int64_t end) {
  ContentSums s;
  for (int64_t k = begin; k < end; ++k) {
    const double x = static_cast<double>(v[k]);
    const double p = position_weight(k);
    s.values += x;
    s.values_placed += x * p;
    if (ix != nullptr) {
      const double i = static_cast<double>(ix[k]);
      s.weighted += x * i;
      s.index_placed += i * p;
      s.index += static_cast<int64_t>(ix[k]);
    }
  }
  return s;
}

template <typename value_t, typename index_t>
ContentSums sums(const value_t* v, const index_t* ix, int64_t n) {
  return ordered_block_sum<ContentSums>(n, kSumBlock, [&](int64_t begin, int64_t end) { return block_sums(v, ix, begin, end); });
}

}  // namespace

// values: 1-D contiguous CPU float32 or float64; index: undefined (the sums of
// the index are then 0), or 1-D contiguous CPU int32 or int64 of the same length.
std::tuple<double, double, int64_t, double, double> content_sums(const at::Tensor& values, const c10::optional<at::Tensor>& index) {
  TORCH_CHECK(values.device().is_cpu() && values.dim() == 1 && values.is_contiguous(),
              "content_sums: values must be a contiguous 1-D CPU tensor");
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble,
              "content_sums: values must be float32 or float64, got ", values.scalar_type());
  const bool has_index = index.has_value() && index->defined();
  if (has_index) {
    TORCH_CHECK(index->device().is_cpu() && index->dim() == 1 && index->is_contiguous() &&
                    index->numel() == values.numel(),
                "content_sums: index must be a contiguous 1-D CPU tensor as long as values");
    TORCH_CHECK(index->scalar_type() == at::kInt || index->scalar_type() == at::kLong,
                "content_sums: index must be int32 or int64, got ", index->scalar_type());
  }
  ContentSums out;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "content_sums", [&] {
    const scalar_t* v = values.data_ptr<scalar_t>();
    const int64_t n = values.numel();
    if (!has_index) {
      out = sums<scalar_t, int32_t>(v, nullptr, n);
    } else if (index->scalar_type() == at::kInt) {
      out = sums(v, index->data_ptr<int32_t>(), n);
    } else {
      out = sums(v, index->data_ptr<int64_t>(), n);
    }
  });
  return {out.values, out.weighted, out.index, out.values_placed, out.index_placed};
}

}  // namespace l0fast
