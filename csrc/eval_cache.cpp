// The record of the eval cache (l0fast/layers.py): what a cached gated weight
// was computed from, compared at every inference forward in one call.
//
//   record = [version, data_ptr, dtype, kProbes elements' bits] of the weight,
//            the same of the gate logits, then the bits of the gate parameters
//            (temperature, gamma, zeta); the elements are spread evenly over
//            each tensor (its first and last among them), CPU tensors only.
//
// Version counters see in-place ops on the tensors and their views; a write
// through `.data` or a numpy view bumps none (an EMA update written as
// `p.data.mul_(d).add_(q.data, alpha=1 - d)`). The sampled elements see such a
// write when it changes any of them, as an update of every element does. CUDA
// tensors are not sampled: reading them would synchronize every forward.
#include <torch/extension.h>

#include <array>
#include <cstring>

namespace l0fast {

namespace {

constexpr int64_t kProbes = 16;
constexpr int64_t kHeader = 3;  // version, data_ptr, dtype
constexpr size_t kRecordSize = 2 * (kHeader + kProbes) + 3;
using Record = std::array<int64_t, kRecordSize>;

template <typename bits_t>
int64_t read_bits(const char* at) {
  bits_t bits;
  std::memcpy(&bits, at, sizeof(bits));
  return static_cast<int64_t>(bits);
}

// Bits of the element of t at linear (row-major) index i, zero-extended.
int64_t element_bits(const at::Tensor& t, int64_t i, bool contiguous) {
  int64_t offset = contiguous ? i : 0;
  for (int64_t d = t.dim() - 1; !contiguous && d >= 0; --d) {
    offset += (i % t.size(d)) * t.stride(d);
    i /= t.size(d);
  }
  const char* at = static_cast<const char*>(t.data_ptr()) + offset * t.element_size();
  switch (t.element_size()) {  // fixed-size copies compile to one load each
    case 1: return read_bits<uint8_t>(at);
    case 2: return read_bits<uint16_t>(at);
    case 4: return read_bits<uint32_t>(at);
    default: return read_bits<uint64_t>(at);
  }
}

// Writes t's header and, on CPU, its probes (elements 0, step, 2 step, ..., and the last) from out[at].
void describe(const at::Tensor& t, Record& out, size_t at) {
  out[at++] = static_cast<int64_t>(t._version());
  out[at++] = reinterpret_cast<int64_t>(t.data_ptr());
  out[at++] = static_cast<int64_t>(t.scalar_type());
  const int64_t n = t.numel();
  const bool sampled = t.is_cpu() && n > 0, contiguous = t.is_contiguous();
  const int64_t step = n > 1 ? (n - 1) / (kProbes - 1) : 0;
  for (int64_t k = 0; k < kProbes; ++k) {
    out[at++] = sampled ? element_bits(t, k + 1 < kProbes ? k * step : n - 1, contiguous) : 0;
  }
}

Record describe_all(const at::Tensor& weight, const at::Tensor& logits, double temperature, double gamma, double zeta) {
  TORCH_CHECK(weight.device() == logits.device(), "eval_record: weight and logits on different devices");
  Record out;
  describe(weight, out, 0);
  describe(logits, out, kHeader + kProbes);
  size_t at = 2 * (kHeader + kProbes);
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
