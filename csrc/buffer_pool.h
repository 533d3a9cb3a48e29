// Recycled allocation of large op outputs.
#pragma once
#include <torch/extension.h>

namespace l0fast {

// at::empty, except that buffers of 1 MiB or more come from, and return to,
// a pool of freed l0fast outputs.  Reusing a buffer skips the page faults a
// fresh large allocation pays on first touch (glibc maps allocations above
// 32 MiB anew each time).  The pool keeps at most L0FAST_BUFFER_CACHE_MB
// (default 1024; 0 disables) of idle buffers.
at::Tensor empty_recycled(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace l0fast
