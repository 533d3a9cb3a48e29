// advance_offset: a gate module's noise stream moves on by count elements,
//
//   rng_state[1] += count   (rng_state: [seed, offset], int64)
//
// in one call, as l0fast/ops/hard_concrete.py's advance_rng_state does with a
// select and an add_ (~5 us of a small layer's ~60 us train forward).  It
// answers false, doing nothing, wherever that Python path does more, which
// then takes the call: a jit trace or a mode to see its ops, inference mode
// or an inference tensor, a state other than a plain CPU int64 tensor of
// shape (2,) (functorch's wrappers, other devices).
#include <torch/extension.h>

#include "python_path.h"

namespace l0fast {

bool advance_offset(const at::Tensor& rng_state, int64_t count) {
  if (python_path_observed() || c10::InferenceMode::is_enabled() || !plain_cpu(rng_state) ||
      rng_state.is_inference() || rng_state.scalar_type() != at::kLong || rng_state.dim() != 1 ||
      rng_state.size(0) != 2) {
    return false;
  }
  rng_state.data_ptr<int64_t>()[rng_state.stride(0)] += count;
  rng_state.unsafeGetTensorImpl()->bump_version();  // as add_ does: what saved the state sees it changed
  return true;
}

}  // namespace l0fast
