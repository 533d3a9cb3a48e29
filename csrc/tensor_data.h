// Whether a tensor's elements are in memory here: not a fake tensor's
// (torch._subclasses.FakeTensorMode), whose storage holds none.  Code that
// reads elements through data_ptr() asks first.
#pragma once
#include <torch/extension.h>

namespace l0fast {

inline bool holds_data(const at::Tensor& t) {
  return t.numel() == 0 || (t.has_storage() && t.storage().data() != nullptr);
}

}  // namespace l0fast
