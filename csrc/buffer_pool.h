// Recycled allocation of large op outputs.
#pragma once
#include <torch/extension.h>

namespace l0fast {

// at::empty, except that buffers of 64 KiB or more come from, and return to,
// a pool of freed l0fast outputs.  Reusing a buffer skips the page faults a
// fresh large allocation pays on first touch (glibc maps allocations above
// 32 MiB anew each time), and keeps a training step's outputs out of the
// malloc heap, where, freed and reallocated around ATen's own temporaries (an
// optimizer's), they fragmented it: SparseMLP(784, 256, 10) grew by 34 MB over
// 6,000 steps with 1 MiB as the bound, and stays flat with 64 KiB.  The pool
// keeps at most L0FAST_BUFFER_CACHE_MB (default 1024; 0 disables) of idle
// buffers.
at::Tensor empty_recycled(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace l0fast
