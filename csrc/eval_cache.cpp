// The record of the eval cache (l0fast/layers.py): what a cached gated weight
// was computed from, compared at every inference forward in one call.
//
//   record = [version, data_ptr, dtype, probe sum] of the weight, the same of
//            the gate logits, then the bits of the gate parameters
//            (temperature, gamma, zeta).  The probe sum (CPU tensors only) is
//            sum_k mix(bits(x_k) + k * golden) mod 2^64 over the probed
//            elements x_k (k numbering them, from 0, kMaxLine and 2 kMaxLine in
//            each part; mix: splitmix64's finalizer, so that no change of bits,
//            a float64 sign flip of 2^63 included, cancels another but by
//            chance, ~2^-64):
//            every element of the middle row and of the middle column of the
//            tensor seen as (size(0), rest), and 16 elements spread evenly over
//            it (its first and last among them); a row or column longer than
//            kMaxLine is probed at kMaxLine points spread over it.
//
// Version counters see in-place ops on the tensors and their views; a write
// through `.data` or a numpy view bumps none (an EMA update written as
// `p.data.mul_(d).add_(q.data, alpha=1 - d)`, a pruned input feature
// `w.data[:, j] = 0`). The probes see such a write when it changes any of
// them: a whole row or column (each crosses the middle column or row), an
// update of every element. CUDA tensors are not probed: reading them would
// synchronize every forward.
#include <torch/extension.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "tensor_data.h"

namespace l0fast {

namespace {

constexpr int64_t kSpread = 16;
constexpr int64_t kMaxLine = 16384;
constexpr int64_t kHeader = 4;  // version, data_ptr, dtype, probe sum
constexpr size_t kRecordSize = 2 * kHeader + 3;
using Record = std::array<int64_t, kRecordSize>;

// Offset in elements of the element at row-major index i over dims [first_dim, dim) of a tensor.
int64_t element_offset(at::IntArrayRef sizes, at::IntArrayRef strides, int64_t i, int64_t first_dim) {
  int64_t offset = 0;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= first_dim; --d) {
    offset += (i % sizes[d]) * strides[d];
    i /= sizes[d];
  }
  return offset;
}

// Whether dims [1, dim) of t fill a block of memory without gaps or overlap (in some order): a row is then one
// contiguous block, as in a contiguous or channels-last weight.
bool rows_are_blocks(const at::Tensor& t) {
  constexpr int64_t kMaxDims = 8;  // beyond: probed element by element
  std::array<std::pair<int64_t, int64_t>, kMaxDims> dims;  // (stride, size) of the dims of size > 1
  int64_t count = 0;
  const at::IntArrayRef sizes = t.sizes(), strides = t.strides();
  for (size_t d = 1; d < sizes.size(); ++d) {
    if (sizes[d] == 1) continue;
    if (count == kMaxDims) return false;
    dims[count++] = {strides[d], sizes[d]};
  }
  std::sort(dims.begin(), dims.begin() + count);
  int64_t expected = 1;
  for (int64_t i = 0; i < count; ++i) {
    if (dims[i].first != expected) return false;
    expected *= dims[i].second;
  }
  return true;
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // 2^64 / golden ratio

// splitmix64's finalizer: every input bit moves about half the output bits.
inline uint64_t mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// sum_p mix(bits(x_p) + (first + p) golden) over `count` points of a line, x_p at offset at(p) from base; over
// kMaxLine points spread evenly along it when it is longer.
template <typename bits_t, typename At>
uint64_t line_sum(const char* base, int64_t count, uint64_t first, At at) {
  const int64_t points = std::min(count, kMaxLine);
  uint64_t sum = 0;
  for (int64_t p = 0; p < points; ++p) {
    bits_t bits;
    std::memcpy(&bits, base + at(points == count ? p : p * (count - 1) / (points - 1)) * static_cast<int64_t>(sizeof(bits_t)),
                sizeof(bits));
    sum += mix(static_cast<uint64_t>(bits) + (first + p) * kGolden);
  }
  return sum;
}

// The probe sum of a CPU tensor (see the top of this file), over elements of bits_t.
template <typename bits_t>
uint64_t probe_sum(const at::Tensor& t) {
  const char* base = static_cast<const char*>(t.data_ptr());
  const at::IntArrayRef sizes = t.sizes(), strides = t.strides();
  const int64_t n = t.numel(), rows = t.dim() > 0 ? sizes[0] : 1, cols = n / rows;
  const int64_t row_stride = t.dim() > 0 ? strides[0] : 0;
  const int64_t middle_row = rows / 2 * row_stride, middle_column = element_offset(sizes, strides, cols / 2, 1);
  const int64_t step = n > 1 ? (n - 1) / (kSpread - 1) : 0;
  // the middle row: one block of memory in a contiguous or channels-last tensor
  uint64_t sum = rows_are_blocks(t)
      ? line_sum<bits_t>(base, cols, 0, [=](int64_t p) { return middle_row + p; })
      : line_sum<bits_t>(base, cols, 0, [&](int64_t p) { return middle_row + element_offset(sizes, strides, p, 1); });
  sum += line_sum<bits_t>(base, rows, kMaxLine, [=](int64_t p) { return middle_column + p * row_stride; });
  sum += line_sum<bits_t>(base, kSpread, 2 * kMaxLine, [&](int64_t s) {
    return element_offset(sizes, strides, s + 1 < kSpread ? s * step : n - 1, 0);
  });
  return sum;
}

uint64_t probe_sum(const at::Tensor& t) {
  switch (t.element_size()) {
    case 1: return probe_sum<uint8_t>(t);
    case 2: return probe_sum<uint16_t>(t);
    case 4: return probe_sum<uint32_t>(t);
    default: return probe_sum<uint64_t>(t);
  }
}

// Writes t's header from out[at].
void describe(const at::Tensor& t, Record& out, size_t at) {
  out[at++] = static_cast<int64_t>(t._version());
  const bool data = holds_data(t);  // a fake tensor's: nothing to read (its data_ptr() points nowhere)
  out[at++] = data ? reinterpret_cast<int64_t>(t.data_ptr()) : 0;
  out[at++] = static_cast<int64_t>(t.scalar_type());
  out[at++] = data && t.is_cpu() && t.numel() > 0 ? static_cast<int64_t>(probe_sum(t)) : 0;
}

Record describe_all(const at::Tensor& weight, const at::Tensor& logits, double temperature, double gamma, double zeta) {
  TORCH_CHECK(weight.device() == logits.device(), "eval_record: weight and logits on different devices");
  Record out;
  describe(weight, out, 0);
  describe(logits, out, kHeader);
  size_t at = 2 * kHeader;
  for (const double p : {temperature, gamma, zeta}) std::memcpy(&out[at++], &p, sizeof(p));
  return out;
}

}  // namespace

// The record of a product of weight and the gates of logits with these parameters: an int64 CPU tensor.
at::Tensor eval_record(const at::Tensor& weight, const at::Tensor& logits, double temperature, double gamma,
                       double zeta) {
  const Record values = describe_all(weight, logits, temperature, gamma, zeta);
  auto record = at::empty({static_cast<int64_t>(kRecordSize)}, at::kLong);
  std::memcpy(record.data_ptr<int64_t>(), values.data(), sizeof(values));
  return record;
}

// Whether record (from eval_record) still describes weight, logits and the parameters.
bool eval_record_current(const at::Tensor& weight, const at::Tensor& logits, const at::Tensor& record,
                         double temperature, double gamma, double zeta) {
  const Record values = describe_all(weight, logits, temperature, gamma, zeta);
  return record.numel() == static_cast<int64_t>(kRecordSize) &&
         std::memcmp(record.data_ptr<int64_t>(), values.data(), sizeof(values)) == 0;
}

}  // namespace l0fast
