// Gated sparse product of survey calibration, y = M @ w with w = exp(log_weight) * gate.
//
// M (Q targets x N households) is stored household-major, i.e. as the CSR of
// M^T: household h owns entries k in [col_ptr[h], col_ptr[h+1]), each with a
// target row_idx[k] (uint16 when Q <= 65,536, else int32) and a value values[k].
//
//   forward:  y[r]          = sum_h sum_{k in h, row_idx[k] == r} values[k] * w[h]
//   backward: grad_w[h]     = sum_{k in h} values[k] * grad_y[row_idx[k]]
//
// Forward scatters into fp64 accumulators, one per chunk of a FIXED partition
// of households (HouseholdChunks, chosen from N, Q and nnz alone); chunk partials are then added in chunk order, so y does
// not depend on the thread count.  Households with w[h] == 0 (closed gates) are
// skipped, so values must be finite.  Backward is a gather, one fp64 sum per
// household (vectorized with gathers): trivially parallel and deterministic.
// Row indices are range-checked in the hot loops (skipped or clamped, then reported), and
// col_ptr per household, so a malformed matrix raises instead of corrupting memory.
// Bytes moved per non-zero (fp32 values, uint16 | int32 rows): forward 2|4 + 4
// read, plus 8 + 4 per household (col_ptr, w) and 8 * Q * chunks of scratch;
// backward 2|4 + 4 read per non-zero (grad_y stays in cache), plus 8 + 4 per
// household (col_ptr read, grad_w written).
#include <algorithm>
#include <atomic>

#include "buffer_pool.h"
#include "kernels.h"
#include "household_major.h"

namespace l0fast {

at::Tensor gated_spmv_cpu(const at::Tensor& col_ptr, const at::Tensor& row_idx,
                          const at::Tensor& values, const at::Tensor& weight,
                          int64_t num_rows) {
  check_household_major(col_ptr, row_idx, values);
  const int64_t n = col_ptr.numel() - 1;
  check_vector(weight, values, n, "weight");
  TORCH_CHECK(num_rows >= 0 && num_rows <= INT32_MAX, "num_rows must be in [0, 2^31), got ",
              num_rows);
  const auto cp = col_ptr.contiguous();
  const auto ri = row_idx.contiguous();
  const auto va = values.contiguous();
  const auto w = weight.contiguous();
  const int64_t q = num_rows;
  const int64_t nnz = va.numel();
  auto y = empty_recycled({q}, w.options());
  if (q == 0) {  // no targets: any stored entry has an out-of-range row
    raise_if_malformed(nnz != 0);
    return y;
  }
  const uint32_t last_row = static_cast<uint32_t>(q - 1);
  const HouseholdChunks chunks(n, q, household_entries(cp));
  auto partials = empty_recycled({chunks.count, q}, w.options().dtype(at::kDouble));
  double* part_ptr = partials.data_ptr<double>();
  std::atomic<bool> malformed{false};

  AT_DISPATCH_FLOATING_TYPES(va.scalar_type(), "gated_spmv_cpu", [&] {
    dispatch_row_index(ri, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const int64_t* cp_ptr = cp.data_ptr<int64_t>();
      const index_t* ri_ptr = ri.data_ptr<index_t>();
      const scalar_t* va_ptr = va.data_ptr<scalar_t>();
      const scalar_t* w_ptr = w.data_ptr<scalar_t>();
      at::parallel_for(0, chunks.count, 1, [&](int64_t first, int64_t last) {
        for (int64_t c = first; c < last; ++c) {
          double* acc = part_ptr + c * q;
          std::fill(acc, acc + q, 0.0);
          if (scatter_households(cp_ptr, ri_ptr, va_ptr, w_ptr + chunks.begin(c), acc, chunks.begin(c),
                                 chunks.end(c, n), nnz, last_row))
            malformed = true;
        }
      });
    });
    raise_if_malformed(malformed);
    reduce_chunks(part_ptr, chunks.count, q, y.data_ptr<scalar_t>());
  });
  return y;
}

at::Tensor gated_spmv_backward_cpu(const at::Tensor& col_ptr, const at::Tensor& row_idx,
                                   const at::Tensor& values, const at::Tensor& grad_y) {
  check_household_major(col_ptr, row_idx, values);
  TORCH_CHECK(grad_y.dim() == 1, "grad_y must be 1-D, got shape ", grad_y.sizes());
  check_vector(grad_y, values, grad_y.numel(), "grad_y");
  const int64_t n = col_ptr.numel() - 1;
  const auto cp = col_ptr.contiguous();
  const auto ri = row_idx.contiguous();
  const auto va = values.contiguous();
  const auto gy = grad_y.to(at::kDouble).contiguous();  // (Q,): stays in cache
  const int64_t q = gy.numel();
  const int64_t nnz = va.numel();
  auto grad_w = empty_recycled({n}, va.options());
  if (q == 0) {  // no targets: any stored entry has an out-of-range row
    raise_if_malformed(nnz != 0);
    return grad_w.zero_();
  }
  const uint32_t last_row = static_cast<uint32_t>(q - 1);
  std::atomic<bool> malformed{false};

  AT_DISPATCH_FLOATING_TYPES(va.scalar_type(), "gated_spmv_backward_cpu", [&] {
    dispatch_row_index(ri, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const int64_t* cp_ptr = cp.data_ptr<int64_t>();
      const index_t* ri_ptr = ri.data_ptr<index_t>();
      const scalar_t* va_ptr = va.data_ptr<scalar_t>();
      const double* gy_ptr = gy.data_ptr<double>();
      scalar_t* out_ptr = grad_w.data_ptr<scalar_t>();
      parallel_blocks(n, kGrain, [&](int64_t h_begin, int64_t h_end) {
        if (gather_households(cp_ptr, ri_ptr, va_ptr, gy_ptr, out_ptr + h_begin, h_begin, h_end, nnz,
                              last_row))
          malformed = true;
      });
    });
  });
  raise_if_malformed(malformed);
  return grad_w;
}

}  // namespace l0fast
