// Tests shared by the C++ shortcuts of Python paths (cached_linear.cpp,
// rng_offset.cpp): a shortcut runs only where the Python path it skips would
// do nothing more, and answers "not done" elsewhere for that path to run.
#pragma once
#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/jit/frontend/tracer.h>

namespace l0fast {

// Whether t is a dense CPU tensor and nothing more (no wrapper, subclass, conjugate or negative view, ...): its
// keys, less those every CPU tensor carries (autograd's, autocast's, ADInplaceOrView).
inline bool plain_cpu(const at::Tensor& t) {
  const c10::DispatchKeySet keys = t.key_set() - c10::autograd_dispatch_keyset - c10::autocast_dispatch_keyset -
                                   c10::DispatchKeySet(c10::DispatchKey::ADInplaceOrView);
  return keys == c10::DispatchKeySet(c10::DispatchKey::CPU);
}

// Whether something would see the ops of the Python path: a jit trace records them, a torch function mode or a
// dispatch mode sees (or replaces) them.
inline bool python_path_observed() {
  return torch::jit::tracer::isTracing() || c10::impl::TorchDispatchModeTLS::stack_len() > 0 ||
         at::impl::PythonTorchFunctionTLS::stack_len() > 0;
}

}  // namespace l0fast
