// The record of the eval cache (l0fast/layers.py): what a cached gated weight
// was computed from, compared at every inference forward in one call.
//
//   record = bytes of [version, data_ptr, dtype, numel, probe bytes] of the
//            weight, the same of the gate logits, the bits of the gate
//            parameters (temperature, gamma, zeta), then copies of the probed
//            elements of the weight and of the logits (CPU tensors only):
//            every element of the middle row and of the middle column of the
//            tensor seen as (size(0), rest), and 16 elements spread evenly over
//            it (its first and last among them); a row or column longer than
//            kMaxLine is probed at kMaxLine points spread over it.
//
// Version counters see in-place ops on the tensors and their views; a write
// through `.data` or a numpy view bumps none (an EMA update written as
// `p.data.mul_(d).add_(q.data, alpha=1 - d)`, a pruned input feature
// `w.data[:, j] = 0`). The probes see such a write when it changes the bits
// of any of them: a whole row or column (each crosses the middle column or
// row), an update of every element. CUDA tensors are not probed: reading them
// would synchronize every forward; nor are complex128 ones (16-byte elements).
#include <torch/extension.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "layer_checks.h"
#include "tensor_data.h"

namespace l0fast {

namespace {

constexpr int64_t kSpread = 16;
constexpr int64_t kMaxLine = 16384;
constexpr size_t kHeader = 5;  // version, data_ptr, dtype, numel, probe bytes
constexpr size_t kHeadSize = 2 * kHeader + 3;
using Head = std::array<int64_t, kHeadSize>;

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

// Where the probed elements go: copied into a record (Copy), or compared with a record's copies (Compare:
// diff ORs the XOR of each pair, so the loops run without branches).
struct Copy {
  char* to;
  template <typename bits_t> void put(bits_t x) { std::memcpy(to, &x, sizeof(x)); to += sizeof(x); }
  void put_block(const char* from, size_t bytes) { std::memcpy(to, from, bytes); to += bytes; }
};
struct Compare {
  const char* from;
  uint64_t diff = 0;
  template <typename bits_t> void put(bits_t x) {
    bits_t y;
    std::memcpy(&y, from, sizeof(y));
    from += sizeof(y);
    diff |= static_cast<uint64_t>(x ^ y);
  }
  void put_block(const char* block, size_t bytes) { diff |= std::memcmp(block, from, bytes) != 0; from += bytes; }
};

// Puts the elements of a line of `count` elements, the p-th at element offset at(p) from base; kMaxLine points
// spread evenly along it when it is longer.
template <typename bits_t, typename Sink, typename At>
void put_line(const char* base, int64_t count, Sink& sink, At at) {
  const int64_t points = std::min(count, kMaxLine);
  const bits_t* elements = reinterpret_cast<const bits_t*>(base);
  for (int64_t p = 0; p < points; ++p) sink.template put<bits_t>(elements[at(points == count ? p : p * (count - 1) / (points - 1))]);
}

// The number of probed elements of a tensor: the middle row and column, then the spread elements.
int64_t probe_count(const at::Tensor& t) {
  const int64_t n = t.numel(), rows = t.dim() > 0 ? t.size(0) : 1;
  return std::min(n / rows, kMaxLine) + std::min(rows, kMaxLine) + kSpread;
}

// Puts the probed elements of a CPU tensor of bits_t elements (see the top of this file).
template <typename bits_t, typename Sink>
void put_probes(const at::Tensor& t, Sink& sink) {
  const char* base = static_cast<const char*>(t.data_ptr());
  const at::IntArrayRef sizes = t.sizes(), strides = t.strides();
  const int64_t n = t.numel(), rows = t.dim() > 0 ? sizes[0] : 1, cols = n / rows;
  const int64_t row_stride = t.dim() > 0 ? strides[0] : 0;
  const int64_t middle_row = rows / 2 * row_stride, middle_column = element_offset(sizes, strides, cols / 2, 1);
  const int64_t step = n > 1 ? (n - 1) / (kSpread - 1) : 0;
  if (rows_are_blocks(t) && cols <= kMaxLine) {  // the middle row: one block of memory
    sink.put_block(base + middle_row * static_cast<int64_t>(sizeof(bits_t)), cols * sizeof(bits_t));
  } else {
    put_line<bits_t>(base, cols, sink, [&](int64_t p) { return middle_row + element_offset(sizes, strides, p, 1); });
  }
  put_line<bits_t>(base, rows, sink, [=](int64_t p) { return middle_column + p * row_stride; });
  put_line<bits_t>(base, kSpread, sink, [&](int64_t s) {
    return element_offset(sizes, strides, s + 1 < kSpread ? s * step : n - 1, 0);
  });
}

template <typename Sink>
void put_probes(const at::Tensor& t, Sink& sink) {
  switch (t.element_size()) {
    case 1: return put_probes<uint8_t>(t, sink);
    case 2: return put_probes<uint16_t>(t, sink);
    case 4: return put_probes<uint32_t>(t, sink);
    default: return put_probes<uint64_t>(t, sink);  // 8: probed() leaves out wider elements
  }
}

// Whether t's elements are probed: a CPU tensor's of elements up to 8 bytes, not empty and not fake (whose
// data_ptr() points nowhere).
bool probed(const at::Tensor& t) { return holds_data(t) && t.is_cpu() && t.numel() > 0 && t.element_size() <= 8; }

// Bytes of the probed elements of t in a record.
int64_t probe_bytes(const at::Tensor& t) { return probed(t) ? probe_count(t) * t.element_size() : 0; }

// Writes t's header from head[at].
void describe(const at::Tensor& t, Head& head, size_t at) {
  head[at++] = static_cast<int64_t>(t._version());
  head[at++] = holds_data(t) ? reinterpret_cast<int64_t>(t.data_ptr()) : 0;
  head[at++] = static_cast<int64_t>(t.scalar_type());
  head[at++] = t.numel();
  head[at++] = probe_bytes(t);
}

// The record's size in bytes: the header, then the probed elements its header counts.
int64_t record_bytes(const Head& head) {
  return static_cast<int64_t>(sizeof(head)) + head[kHeader - 1] + head[2 * kHeader - 1];
}

// Puts the probed elements of weight, then of logits.
template <typename Sink>
void put_all_probes(const at::Tensor& weight, const at::Tensor& logits, Sink& sink) {
  for (const at::Tensor* t : {&weight, &logits})
    if (probed(*t)) put_probes(*t, sink);
}

Head head_of(const at::Tensor& weight, const at::Tensor& logits, double temperature, double gamma, double zeta) {
  TORCH_CHECK(weight.device() == logits.device(), "eval_record: weight and logits on different devices");
  Head head;
  describe(weight, head, 0);
  describe(logits, head, kHeader);
  size_t at = 2 * kHeader;
  for (const double p : {temperature, gamma, zeta}) std::memcpy(&head[at++], &p, sizeof(p));
  return head;
}

}  // namespace

// The record of a product of weight and the gates of logits with these parameters: a uint8 CPU tensor.
at::Tensor eval_record(const at::Tensor& weight, const at::Tensor& logits, double temperature, double gamma,
                       double zeta) {
  const Head head = head_of(weight, logits, temperature, gamma, zeta);
  auto record = at::empty({record_bytes(head)}, at::kByte);
  Copy sink{static_cast<char*>(record.data_ptr())};
  sink.put_block(reinterpret_cast<const char*>(head.data()), sizeof(head));
  put_all_probes(weight, logits, sink);
  return record;
}

// Whether record (from eval_record) still describes weight, logits and the parameters.
bool eval_record_current(const at::Tensor& weight, const at::Tensor& logits, const at::Tensor& record,
                         double temperature, double gamma, double zeta) {
  const Head head = head_of(weight, logits, temperature, gamma, zeta);
  if (record.numel() != record_bytes(head) || std::memcmp(record.data_ptr(), head.data(), sizeof(head)) != 0) return false;
  Compare sink{static_cast<const char*>(record.data_ptr()) + sizeof(head)};
  put_all_probes(weight, logits, sink);
  return sink.diff == 0;
}

}  // namespace l0fast
