// The household-major layout of a calibration matrix M (Q targets x N
// households, stored as the CSR of M^T) and the checks and gather shared by
// the kernels that read it.  Row (target) indices are uint16 when Q <= 65,536
// (6 bytes per fp32 non-zero instead of 8), else int32; col_ptr is int64.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#if defined(__AVX__) && defined(__FMA__)
#include <immintrin.h>
#define L0FAST_AVX_FMA 1
#else
#define L0FAST_AVX_FMA 0
#endif

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
  TORCH_CHECK(row_idx.scalar_type() == at::kInt || row_idx.scalar_type() == at::kUInt16,
              "row_idx must be int32 or uint16, got ", row_idx.scalar_type());
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble,
              "values must be float32 or float64, got ", values.scalar_type());
  TORCH_CHECK(col_ptr.numel() >= 1, "col_ptr must have N + 1 >= 1 entries");
  TORCH_CHECK(row_idx.numel() == values.numel(), "row_idx has ", row_idx.numel(),
              " entries but values has ", values.numel());
}

// Calls body(index_t{}) with index_t the C++ type of row_idx (int32_t or uint16_t).
template <typename Body>
inline void dispatch_row_index(const at::Tensor& row_idx, const Body& body) {
  if (row_idx.scalar_type() == at::kUInt16) {
    body(uint16_t{});
  } else {
    body(int32_t{});
  }
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


#if L0FAST_AVX_FMA
// (double) v[0..3] in one 256-bit register.
inline __m256d widen4(const float* v) { return _mm256_cvtps_pd(_mm_loadu_ps(v)); }
inline __m256d widen4(const double* v) { return _mm256_loadu_pd(v); }
#endif

// Four fp64 accumulators: add() puts double(v[j]) * *g[j] into chain j.  With
// AVX and FMA the four values are converted by one instruction and multiplied-
// added two lanes at a time (25% less time in the gather than entry by entry),
// each entry still one fused multiply-add, as the compiler makes of the scalar
// form.
struct FourChains {
#if L0FAST_AVX_FMA
  __m128d lo = _mm_setzero_pd(), hi = _mm_setzero_pd();
  template <typename scalar_t>
  void add(const scalar_t* v, const double* g0, const double* g1, const double* g2, const double* g3) {
    const __m256d x = widen4(v);
    lo = _mm_fmadd_pd(_mm256_castpd256_pd128(x), _mm_loadh_pd(_mm_load_sd(g0), g1), lo);
    hi = _mm_fmadd_pd(_mm256_extractf128_pd(x, 1), _mm_loadh_pd(_mm_load_sd(g2), g3), hi);
  }
  void store(double* s) const {
    _mm_storeu_pd(s, lo);
    _mm_storeu_pd(s + 2, hi);
  }
#else
  double c[4] = {0.0, 0.0, 0.0, 0.0};
  template <typename scalar_t>
  void add(const scalar_t* v, const double* g0, const double* g1, const double* g2, const double* g3) {
    c[0] += static_cast<double>(v[0]) * *g0;
    c[1] += static_cast<double>(v[1]) * *g1;
    c[2] += static_cast<double>(v[2]) * *g2;
    c[3] += static_cast<double>(v[3]) * *g3;
  }
  void store(double* s) const { std::copy(c, c + 4, s); }
#endif
};

// add(j, double(v[j]) * w) for j = 0..3, the four products taken as one vector
// multiply where AVX is available: converting and multiplying entry by entry
// cost the scatter ~20% more.
template <typename scalar_t, typename Add>
inline void add_scaled4(const scalar_t* v, double w, const Add& add) {
#if L0FAST_AVX_FMA
  const __m256d p = _mm256_mul_pd(widen4(v), _mm256_set1_pd(w));
  const __m128d lo = _mm256_castpd256_pd128(p);
  const __m128d hi = _mm256_extractf128_pd(p, 1);
  add(0, _mm_cvtsd_f64(lo));
  add(1, _mm_cvtsd_f64(_mm_unpackhi_pd(lo, lo)));
  add(2, _mm_cvtsd_f64(hi));
  add(3, _mm_cvtsd_f64(_mm_unpackhi_pd(hi, hi)));
#else
  for (int j = 0; j < 4; ++j) add(j, static_cast<double>(v[j]) * w);
#endif
}

// out[h - h_begin] = sum_k values[k] * grad_y[row_idx[k]] for h in [h_begin,
// h_end); returns true if an entry was malformed.  Households are short (tens
// of entries), so each is summed in four interleaved fp64 accumulators (entry
// k into k mod 4, then (s0 + s1) + (s2 + s3)): independent load chains, no
// per-household vector reduction, and an order fixed by the code, so results
// do not depend on the thread count.  (Left to the compiler, this loop became
// emulated vector gathers plus a horizontal sum per household: 2.3x slower;
// AVX-512 gathers, 8 entries per instruction, are slower here than scalar loads.)
//
// kChecked = false skips every check, for callers that validated the matrix
// with household_major_is_valid first (the fit loop: once per call).
template <typename scalar_t, typename index_t, bool kChecked = true>
L0FAST_ONE_MACHINE_CODE bool gather_households(const int64_t* __restrict cp, const index_t* __restrict ri,
                              const scalar_t* __restrict va, const double* __restrict gy,
                              scalar_t* __restrict out, int64_t h_begin, int64_t h_end,
                              int64_t nnz, uint32_t last_row) {
  constexpr int64_t kPrefetchAhead = 1024;  // entries
  uint32_t oob = 0;
  bool bad = false;
  // Out-of-range rows read a valid slot instead, and are reported.
  auto row = [&](int64_t k) {
    const uint32_t r = static_cast<uint32_t>(ri[k]);
    if (!kChecked) return r;
    oob |= static_cast<uint32_t>(r > last_row);
    return std::min(r, last_row);
  };
  auto term = [&](int64_t k) { return static_cast<double>(va[k]) * gy[row(k)]; };
  for (int64_t h = h_begin; h < h_end; ++h) {
    const int64_t begin = cp[h];
    const int64_t end = cp[h + 1];
    if (kChecked && (begin < 0 || end < begin || end > nnz)) {
      bad = true;
      out[h - h_begin] = scalar_t(0);
      continue;
    }
    // entries kPrefetchAhead further on (4 KB of fp32 values): the stream runs ahead of
    // the loads (a prefetch never faults, so past the arrays' end is harmless)
    __builtin_prefetch(va + begin + kPrefetchAhead);
    __builtin_prefetch(ri + begin + kPrefetchAhead);
    FourChains chains;
    int64_t k = begin;
    for (; k + 4 <= end; k += 4) chains.add(va + k, gy + row(k), gy + row(k + 1), gy + row(k + 2), gy + row(k + 3));
    double s[4];
    chains.store(s);
    // the last (end - k) < 4 entries, into chains 0, 1, 2 as above; written out, not as a
    // loop: a tail loop here became a masked vector epilogue that cost 20% of the gather
    if (k < end) s[0] += term(k);
    if (k + 1 < end) s[1] += term(k + 1);
    if (k + 2 < end) s[2] += term(k + 2);
    out[h - h_begin] = static_cast<scalar_t>((s[0] + s[1]) + (s[2] + s[3]));
  }
  return bad || oob != 0;
}

// True when col_ptr (n + 1) is non-decreasing within [0, nnz] and every row
// index is <= last_row: what the unchecked gather and scatter rely on.
template <typename index_t>
bool household_major_is_valid(const int64_t* cp, const index_t* ri, int64_t n, int64_t nnz, uint32_t last_row) {
  if (cp[0] < 0 || cp[n] > nnz) return false;
  std::atomic<bool> ok{true};
  parallel_blocks(n, kGrain, [&](int64_t begin, int64_t end) {
    bool good = true;
    for (int64_t h = begin; h < end; ++h) good &= cp[h] <= cp[h + 1];
    if (!good) ok = false;
  });
  if (!ok) return false;
  parallel_blocks(cp[n] - cp[0], 1 << 20, [&](int64_t begin, int64_t end) {
    uint32_t high = 0;
    for (int64_t k = cp[0] + begin; k < cp[0] + end; ++k) high = std::max(high, static_cast<uint32_t>(ri[k]));
    if (high > last_row) ok = false;
  });
  return ok;
}

// The entries of a household-major matrix, col_ptr[N] - col_ptr[0] (its
// offsets may start past entry 0); col_ptr as check_household_major accepts it.
inline int64_t household_entries(const at::Tensor& col_ptr) {
  const int64_t* p = col_ptr.data_ptr<int64_t>();
  return p[(col_ptr.numel() - 1) * col_ptr.stride(0)] - p[0];
}

// A fixed partition of N households into chunks, each scattering into its own
// fp64 accumulator of the Q target sums: at most kMaxChunks chunks of whole
// noise blocks, each worth (in entries, a household's own work counted as
// kHouseholdWork entries) at least kAccumulatorShare * Q, so that zeroing and
// adding up the accumulators stays small beside the chunk's work.  Chosen
// from N, Q and the number of entries alone, never from the thread count.
// ("large", "xl": 62 and 64 chunks; the README's 10,000 households: 10.)
struct HouseholdChunks {
  static constexpr int64_t kMaxChunks = 64;
  static constexpr double kAccumulatorShare = 32.0;
  static constexpr double kHouseholdWork = 8.0;
  int64_t count, length;

  HouseholdChunks(int64_t n, int64_t q, int64_t entries) {
    const int64_t n_blocks = std::max<int64_t>(1, (n + kNoiseBlock - 1) / kNoiseBlock);
    const double per_household = n > 0 ? static_cast<double>(std::max<int64_t>(entries, 0)) / static_cast<double>(n) : 0.0;
    const double min_households = std::min(static_cast<double>(n_blocks) * kNoiseBlock,
                                           kAccumulatorShare * static_cast<double>(q) / (per_household + kHouseholdWork));
    const int64_t min_blocks = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(min_households / kNoiseBlock)));
    const int64_t wanted = std::max<int64_t>(1, std::min(kMaxChunks, n_blocks / min_blocks));
    length = (n_blocks + wanted - 1) / wanted * kNoiseBlock;
    count = std::max<int64_t>(1, (n + length - 1) / length);
  }
  int64_t begin(int64_t c) const { return c * length; }
  int64_t end(int64_t c, int64_t n) const { return std::min(n, (c + 1) * length); }
};

// acc[row_idx[k]] += values[k] * w[h - h_begin] for the entries of households
// [h_begin, h_end), in order; households with weight 0 (closed gates) are
// skipped.  Returns true if an entry was malformed (the caller then raises:
// acc is not to be used).  The open households of each run of kOpenRun are
// listed first, without branches, and then scattered: a branch per household
// on a gate closed at random mispredicted often enough to cost ~7% with 18%
// of the gates closed.  Entries go four at a time (add_scaled4), the last
// (length mod 4) one by one.
template <typename scalar_t, typename index_t, bool kChecked = true>
L0FAST_ONE_MACHINE_CODE bool scatter_households(const int64_t* __restrict cp, const index_t* __restrict ri,
                               const scalar_t* __restrict va, const scalar_t* __restrict w,
                               double* __restrict acc, int64_t h_begin, int64_t h_end,
                               int64_t nnz, uint32_t last_row) {
  constexpr int64_t kOpenRun = 1024;
  bool bad = false;
  uint32_t oob = 0;
  // Out-of-range rows write a valid slot instead, and are reported; malformed
  // ranges are reported and skipped.
  auto slot = [&](int64_t k) -> double& {
    const uint32_t r = static_cast<uint32_t>(ri[k]);
    if (!kChecked) return acc[r];
    oob |= static_cast<uint32_t>(r > last_row);
    return acc[std::min(r, last_row)];
  };
  int32_t open[kOpenRun];
  for (int64_t run = h_begin; run < h_end; run += kOpenRun) {
    const int64_t run_end = std::min(h_end, run + kOpenRun);
    int64_t n_open = 0;
    for (int64_t h = run; h < run_end; ++h) {
      bool listed = !is_zero_bits(w[h - h_begin]);  // a NaN weight is listed: its NaN reaches y
      if (kChecked) {  // every household's range is checked, open or not
        const bool malformed = cp[h] < 0 || cp[h + 1] < cp[h] || cp[h + 1] > nnz;
        bad |= malformed;
        listed &= !malformed;
      }
      open[n_open] = static_cast<int32_t>(h - run);
      n_open += listed;
    }
    for (int64_t i = 0; i < n_open; ++i) {
      const int64_t h = run + open[i];
      const int64_t begin = cp[h];
      const int64_t end = cp[h + 1];
      const double wh = static_cast<double>(w[h - h_begin]);
      int64_t k = begin;
      for (; k + 4 <= end; k += 4) add_scaled4(va + k, wh, [&](int j, double p) { slot(k + j) += p; });
      for (; k < end; ++k) slot(k) += static_cast<double>(va[k]) * wh;
    }
  }
  return bad || oob != 0;
}

// sum_c partials[c * q + r]: the chunk accumulators of target r, added in chunk order.
L0FAST_ONE_MACHINE_CODE inline double chunk_sum(const double* partials, int64_t n_chunks, int64_t q, int64_t r) {
  double s = 0.0;
  for (int64_t c = 0; c < n_chunks; ++c) s += partials[c * q + r];
  return s;
}

// out[r] = chunk_sum(partials, n_chunks, q, r) for r in [0, q).
template <typename out_t>
inline void reduce_chunks(const double* partials, int64_t n_chunks, int64_t q, out_t* out) {
  parallel_blocks(q, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) out[r] = static_cast<out_t>(chunk_sum(partials, n_chunks, q, r));
  });
}

}  // namespace l0fast
