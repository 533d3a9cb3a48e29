// The household-major layout of a calibration matrix M (Q targets x N
// households, stored as the CSR of M^T) and the checks and gather shared by
// the kernels that read it.
#pragma once
#include <algorithm>

#include "common.h"

namespace l0fast {

inline void check_household_major(const at::Tensor& col_ptr, const at::Tensor& row_idx,
                           const at::Tensor& values) {
  for (const auto* t : {&col_ptr, &row_idx, &values}) {
    TORCH_CHECK(t->device().is_cpu(), "l0fast CPU kernel got a ", t->device(),
                " tensor");
    TORCH_CHECK(t->dim() == 1, "col_ptr, row_idx and values must be 1-D, got shape ",
                t->sizes());
  }
  TORCH_CHECK(col_ptr.scalar_type() == at::kLong, "col_ptr must be int64, got ",
              col_ptr.scalar_type());
  TORCH_CHECK(row_idx.scalar_type() == at::kInt, "row_idx must be int32, got ",
              row_idx.scalar_type());
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble,
              "values must be float32 or float64, got ", values.scalar_type());
  TORCH_CHECK(col_ptr.numel() >= 1, "col_ptr must have N + 1 >= 1 entries");
  TORCH_CHECK(row_idx.numel() == values.numel(), "row_idx has ", row_idx.numel(),
              " entries but values has ", values.numel());
}

inline void check_vector(const at::Tensor& v, const at::Tensor& values, int64_t n,
                  const char* name) {
  TORCH_CHECK(v.device().is_cpu(), "l0fast CPU kernel got a ", v.device(), " tensor for ",
              name);
  TORCH_CHECK(v.dim() == 1 && v.numel() == n, name, " must have shape (", n,
              ",), got ", v.sizes());
  TORCH_CHECK(v.scalar_type() == values.scalar_type(), name, " has dtype ",
              v.scalar_type(), " but values has ", values.scalar_type());
}

inline void raise_if_malformed(bool bad) {
  TORCH_CHECK_VALUE(!bad, "gated_spmv: malformed household-major matrix (col_ptr not ",
                    "non-decreasing within [0, nnz], or a row index outside ",
                    "[0, num_rows)); build it with HouseholdMajorMatrix.from_scipy");
}


// grad_w[h] = sum_k values[k] * grad_y[row_idx[k]] for h in [h_begin, h_end);
// returns true if an entry was malformed.  Kept a plain reduction so that the
// compiler vectorizes it (AVX-512 gathers); the summation order it picks is
// fixed at compile time, so results stay independent of the thread count.
template <typename scalar_t>
inline bool gather_households(const int64_t* __restrict cp, const int32_t* __restrict ri,
                       const scalar_t* __restrict va, const double* __restrict gy,
                       scalar_t* __restrict out, int64_t h_begin, int64_t h_end,
                       int64_t nnz, uint32_t last_row) {
  uint32_t oob = 0;
  bool bad = false;
  for (int64_t h = h_begin; h < h_end; ++h) {
    const int64_t begin = cp[h];
    const int64_t end = cp[h + 1];
    if (begin < 0 || end < begin || end > nnz) {
      bad = true;
      out[h] = scalar_t(0);
      continue;
    }
    double s = 0.0;
    for (int64_t k = begin; k < end; ++k) {
      // Out-of-range rows read a valid slot instead, and are reported.
      const uint32_t r = static_cast<uint32_t>(ri[k]);
      oob |= static_cast<uint32_t>(r > last_row);
      s += static_cast<double>(va[k]) * gy[std::min(r, last_row)];
    }
    out[h] = static_cast<scalar_t>(s);
  }
  return bad || oob != 0;
}


}  // namespace l0fast
