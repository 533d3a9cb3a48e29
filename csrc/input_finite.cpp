// input_finite(x, out): the layers' NaN/inf input check on CPU, one call per
// forward (l0fast/finite_check.py).  False when the CPU tensor x holds a NaN or
// an inf (all exponent bits set); true for a non-floating x and a fake one.  out, a linear
// layer's output of x, answers instead when it is smaller and finite.  One pass
// over the bits, on one thread below kSerialElements (a layer's check must not
// wake the other threads for a few microseconds of work).
#include <torch/extension.h>

#include <atomic>

#include "layer_checks.h"
#include "tensor_data.h"

namespace l0fast {

namespace {

constexpr int64_t kSerialElements = 1 << 18;

// True unless some x[k] has all of `exponent`'s bits set (bits_t: the unsigned
// integer of the float's width).
template <typename bits_t>
bool exponents_not_all_ones(const bits_t* x, int64_t begin, int64_t end, bits_t exponent) {
  bits_t bad = 0;
  for (int64_t k = begin; k < end; ++k) bad |= static_cast<bits_t>((x[k] & exponent) == exponent);
  return bad == 0;
}

template <typename bits_t>
bool all_finite_bits(const at::Tensor& t, bits_t exponent) {
  const auto* x = reinterpret_cast<const bits_t*>(t.data_ptr());
  std::atomic<bool> finite{true};
  at::parallel_for(0, t.numel(), kSerialElements, [&](int64_t begin, int64_t end) {
    if (!exponents_not_all_ones(x, begin, end, exponent)) finite = false;
  });
  return finite;
}

// x: a floating-point CPU tensor.
bool all_finite(const at::Tensor& x) {
  const auto t = x.contiguous();
  switch (t.element_size()) {
    case 2:
      return all_finite_bits<uint16_t>(t, t.scalar_type() == at::kBFloat16 ? 0x7f80 : 0x7c00);
    case 4:
      return all_finite_bits<uint32_t>(t, 0x7f800000u);
    default:
      return all_finite_bits<uint64_t>(t, 0x7ff0000000000000ull);
  }
}

}  // namespace

bool input_finite(const at::Tensor& x, const std::optional<at::Tensor>& out) {
  TORCH_CHECK(x.device().is_cpu() && x.layout() == at::kStrided, "input_finite: expected a strided CPU tensor, got ",
              x.layout(), " on ", x.device());
  if (!x.is_floating_point() || !holds_data(x)) return true;  // a fake tensor: no values to check
  if (out.has_value() && out->numel() < x.numel() && out->is_floating_point() && out->device().is_cpu() &&
      out->layout() == at::kStrided && holds_data(*out) && all_finite(*out)) {
    return true;
  }
  return all_finite(x);
}

}  // namespace l0fast
