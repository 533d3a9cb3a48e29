// The calibration fit loop, fused: whole epochs of Adam on the survey-calibration
// objective in one call, one pass over the matrix per epoch.
//
// Objective (SparseCalibrationWeights.fit, as l0-python 0.6.2):
//   L = sum_i c_i r_i^2 + lambda_l0 sum_h p_h + lambda_l2 sum_h e_h^2
// (lambda_l0 fixed, or a Lagrange multiplier of a target count: FitConfig)
//   r_i = (y_i - yhat_i) * inv_denom_i,   yhat = M @ (e * g),   e = exp(log_weight)
// with g the hard-concrete gates sampled from the Philox stream and
// p_h = P(g_h != 0) (gate_math.h); without gates g = 1.
//
// One epoch, the target sums of its gates being already accumulated ("primed"):
//  1. target pass (Q): yhat_i = the target sums (the chunk partials added in
//     chunk order, then over the shards of a sharded fit: Exchange);
//     loss = sum_i c_i r_i^2, grad_y_i = -2 c_i r_i inv_denom_i            (fp64)
//  2. household pass, block by block, each household's entries read once:
//     gw_h = sum_k v_k grad_y[row_k]                                         (fp64)
//     dL/dlog_weight_h = gw_h e_h g_h + 2 lambda_l2 e_h^2
//     dL/dlog_alpha_h  = gw_h e_h dg_h + lambda_l0 dp_h     (dg from the saved gate)
//     an Adam step of both (adam.h); then, unless it is the fit's last epoch,
//     the next epoch's gate g'_h (next Philox draw), w'_h = exp(log_weight'_h) g'_h,
//     and the scatter of v_k w'_h into the next epoch's fp64 chunk accumulators
//     while the block's entries are still in cache.
// Households fall into fixed chunks (HouseholdChunks, from N, Q and nnz), each with
// its own accumulator: results do not depend on the thread count.  The state
// (parameters, Adam moments and step, gates, target sums, RNG position) lives
// in tensors the caller owns, so a fit may run in several calls (progress,
// checkpoints) with bitwise-identical results: the next-gate step is one
// function, shared by the household pass and `prime`.
//
// Bytes moved per epoch (fp32, uint16 rows): 6 per non-zero read once; per
// household 8 (col_ptr) + 28 read (log_weight, log_alpha, 4 moments, gate) and
// 28 written; 8 Q (chunks + 1) for the target sums.
#include "calibration_fit.h"

#include <atomic>
#include <vector>

#include "gate_math.h"
#include "household_major.h"

namespace l0fast {

namespace {

constexpr int64_t kTargetBlock = 4096;
constexpr int64_t kStats = 4;  // per epoch: data loss, sum p, sum e^2, lambda_l0

template <typename scalar_t>
const scalar_t* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t, typename index_t>
class FusedFit {
  using opmath_t = at::opmath_type<scalar_t>;

 public:
  FusedFit(const FitMatrix& matrix, const FitTargets& targets, FitState& state, const FitConfig& config,
           const Exchange& exchange)
      : state_(state),
        config_(config),
        exchange_(exchange),
        n_(matrix.col_ptr.numel() - 1),
        q_(matrix.num_rows),
        nnz_(matrix.values.numel()),
        last_row_(q_ > 0 ? static_cast<uint32_t>(q_ - 1) : 0),
        chunks_(n_, q_, household_entries(matrix.col_ptr)),
        math_(config.beta, config.gamma, config.zeta),
        cp_(matrix.col_ptr.data_ptr<int64_t>()),
        ri_(matrix.row_idx.data_ptr<index_t>()),
        va_(matrix.values.data_ptr<scalar_t>()),
        y_(targets.y.data_ptr<double>()),
        c_(targets.loss_weight.data_ptr<double>()),
        inv_denom_(targets.inv_denom.data_ptr<double>()),
        lw_(state.log_weight.data_ptr<scalar_t>()),
        la_(state.log_alpha.data_ptr<scalar_t>()),
        m_lw_(state.exp_avg_lw.data_ptr<scalar_t>()),
        v_lw_(state.exp_avg_sq_lw.data_ptr<scalar_t>()),
        m_la_(state.exp_avg_la.data_ptr<scalar_t>()),
        v_la_(state.exp_avg_sq_la.data_ptr<scalar_t>()),
        gate_(state.gate.data_ptr<scalar_t>()),
        partials_(state.partials.data_ptr<double>()),
        totals_(state.totals.data_ptr<double>()),
        scale_(optional_ptr<scalar_t>(config.lambda_scale)),
        keep_(optional_ptr<scalar_t>(config.keep)),
        lo_(optional_ptr<scalar_t>(config.log_weight_min)),
        hi_(optional_ptr<scalar_t>(config.log_weight_max)),
        grad_y_(static_cast<size_t>(q_)),
        block_sums_(static_cast<size_t>(2 * ((n_ + kNoiseBlock - 1) / kNoiseBlock))) {}

  // Accumulates the target sums of the gates drawn from the current RNG position.
  void prime() {
    over_blocks(true, [&](int64_t h0, int64_t count, double* acc, uint64_t seed, uint64_t offset) {
      scalar_t w_next[kNoiseBlock];
      next_weights(h0, count, w_next, seed, offset);
      scatter(h0, count, w_next, acc);
    });
    finish_pass(true, 0.0, 0.0);
  }

  // Loss of the pending epoch's data term; fills grad_y_.
  double target_pass() {
    return ordered_block_sum<double>(q_, kTargetBlock, [&](int64_t begin, int64_t end) { return target_block(begin, end); });
  }

  // Targets [begin, end) of the target pass; returns their share of the loss.
  L0FAST_ONE_MACHINE_CODE double target_block(int64_t begin, int64_t end) {
    double sum = 0.0;
    for (int64_t r = begin; r < end; ++r) {
      const double residual = (y_[r] - totals_[r]) * inv_denom_[r];
      sum += c_[r] * residual * residual;
      grad_y_[r] = -2.0 * c_[r] * residual * inv_denom_[r];
    }
    return sum;
  }

  // Gradient and Adam step for every household; with sample_next, the next
  // epoch's gates and target sums.  Returns (sum p, sum e^2) at the old
  // parameters, over all shards.
  std::pair<double, double> household_pass(bool sample_next) {
    const AdamStep<opmath_t> adam(config_.adam(), ++state_.step);
    over_blocks(sample_next, [&](int64_t h0, int64_t count, double* acc, uint64_t seed, uint64_t offset) {
      scalar_t gw[kNoiseBlock];
      if (q_ > 0) gather_households<scalar_t, index_t, false>(cp_, ri_, va_, grad_y_.data(), gw, h0, h0 + count, nnz_, last_row_);
      if (q_ == 0) std::fill(gw, gw + count, scalar_t(0));
      adam_block(h0, count, gw, adam);
      if (sample_next) {
        scalar_t w_next[kNoiseBlock];
        next_weights(h0, count, w_next, seed, offset);
        scatter(h0, count, w_next, acc);
      }
    });
    double sum_p = 0.0, sum_e2 = 0.0;
    for (size_t b = 0; b < block_sums_.size(); b += 2) {
      sum_p += block_sums_[b];
      sum_e2 += block_sums_[b + 1];
    }
    finish_pass(sample_next, sum_p, sum_e2);
    return {totals_[q_], totals_[q_ + 1]};
  }

 private:
  // body(h0, count, acc, seed, offset) for every block of households, chunk by
  // chunk in parallel; acc is the chunk's accumulator, zeroed first if `scatters`.
  template <typename Body>
  void over_blocks(bool scatters, const Body& body) {
    const auto [seed, stream_offset] = read_rng_state(state_.rng_state);
    const uint64_t offset = stream_offset + static_cast<uint64_t>(config_.household_offset);
    at::parallel_for(0, chunks_.count, 1, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        double* acc = partials_ + c * q_;
        if (scatters) std::fill(acc, acc + q_, 0.0);
        const int64_t end = chunks_.end(c, n_);
        for (int64_t h0 = chunks_.begin(c); h0 < end; h0 += kNoiseBlock)
          body(h0, std::min(kNoiseBlock, end - h0), acc, seed, offset);
      }
    });
  }

  // After a pass: the totals (see Exchange), errors, and the RNG advanced past the gates drawn.
  void finish_pass(bool drew_gates, double sum_p, double sum_e2) {
    if (drew_gates) {
      reduce_chunks(partials_, chunks_.count, q_, totals_);
    } else {
      std::fill(totals_, totals_ + q_, 0.0);
    }
    totals_[q_] = sum_p;
    totals_[q_ + 1] = sum_e2;
    totals_[q_ + 2] = nan_found_ ? 1.0 : 0.0;
    if (exchange_) exchange_(state_.totals);
    if (totals_[q_ + 2] != 0.0) {
      throw FitDiverged(c10::str("log_weight or log_alpha became NaN (or their gradients overflowed) after ", state_.step - 1,
                                 " Adam steps; lower lr (the learning rate), rescale the targets (loss_type='relative' "
                                 "divides each by its value), or fit in float64 (model.double())"));
    }
    if (drew_gates && config_.use_gates) {
      state_.rng_state.data_ptr<int64_t>()[1] += config_.households_total >= 0 ? config_.households_total : n_;
    }
    state_.primed = drew_gates;
  }

  void scatter(int64_t h0, int64_t count, const scalar_t* w, double* acc) {
    if (q_ > 0) scatter_households<scalar_t, index_t, false>(cp_, ri_, va_, w, acc, h0, h0 + count, nnz_, last_row_);
  }

  // gate_h <- g'_h (sampled with gates, else 1) and w_h = exp(log_weight_h) g'_h
  // for the `count` households from h0.
  void next_weights(int64_t h0, int64_t count, scalar_t* w, uint64_t seed, uint64_t offset) {
    const GateMath<opmath_t> math = math_;
    if (config_.use_gates) {
      float noise[kNoiseBlock + 8];
      const float* u = uniform_block(seed, offset + static_cast<uint64_t>(h0), count, noise);
      // the hard_concrete_sample kernel's gates, bitwise (NaN is caught after the Adam step)
      sample_gates(math, count, u, la_ + h0, gate_ + h0);
      auto weights = [](int64_t, const scalar_t* __restrict lw_in, const scalar_t* __restrict g_in,
                        scalar_t* __restrict w_out) L0FAST_LANE_GROUP {
        for (int64_t i = 0; i < kLanes; ++i)
          w_out[i] = static_cast<scalar_t>(std::exp(static_cast<opmath_t>(lw_in[i])) * static_cast<opmath_t>(g_in[i]));
      };
      // kept households: the gate is 1 (the draw is still consumed: the stream stays the same)
      auto kept = [](int64_t, const scalar_t* __restrict lw_in, const scalar_t* __restrict keep_in,
                     scalar_t* __restrict g_io, scalar_t* __restrict w_out) L0FAST_LANE_GROUP {
        for (int64_t i = 0; i < kLanes; ++i) {
          const opmath_t g = keep_in[i] != scalar_t(0) ? opmath_t(1) : static_cast<opmath_t>(g_io[i]);
          g_io[i] = static_cast<scalar_t>(g);
          w_out[i] = static_cast<scalar_t>(std::exp(static_cast<opmath_t>(lw_in[i])) * g);
        }
      };
      if (keep_ != nullptr) {
        for_each_lane_group(count, kept, lw_ + h0, keep_ + h0, gate_ + h0, w);
      } else {
        for_each_lane_group(count, weights, lw_ + h0, static_cast<const scalar_t*>(gate_ + h0), w);
      }
    } else {
      auto group = [](int64_t, const scalar_t* __restrict lw_in, scalar_t* __restrict g_out,
                      scalar_t* __restrict w_out) L0FAST_LANE_GROUP {
        for (int64_t i = 0; i < kLanes; ++i) {
          g_out[i] = scalar_t(1);
          w_out[i] = static_cast<scalar_t>(std::exp(static_cast<opmath_t>(lw_in[i])));
        }
      };
      for_each_lane_group(count, group, lw_ + h0, gate_ + h0, w);
    }
  }

  // One household's chain rule and Adam step, in place; its share of the L0 sum (scale * p) and e^2
  // at the old parameters.  kOptions: lambda scaled per household (scale), a kept household's
  // log_alpha and its moments left as they are, log_weight projected onto [lo, hi].
  template <bool kOptions>
  static inline void update_household(const GateMath<opmath_t>& m, const AdamStep<opmath_t>& opt, opmath_t gw,
                                      opmath_t g, opmath_t lambda_l0, opmath_t scale, opmath_t two_lambda_l2,
                                      opmath_t keep, opmath_t lo, opmath_t hi, scalar_t& lw, scalar_t& la,
                                      scalar_t& m_lw, scalar_t& v_lw, scalar_t& m_la, scalar_t& v_la,
                                      opmath_t& l0_share, opmath_t& e2, uint32_t& nan_bits) {
    const opmath_t a = static_cast<opmath_t>(la);
    const opmath_t log_w = static_cast<opmath_t>(lw);
    nan_bits |= is_nan_bits(a) | is_nan_bits(log_w);
    const opmath_t e = std::exp(log_w);
    const opmath_t gwe = gw * e;
    const opmath_t p = m.active_prob(a);
    const opmath_t grad_la = m.through_gate(gwe, g, a) + m.through_penalty(lambda_l0 * scale, p, a);
    const opmath_t grad_lw = gwe * g + two_lambda_l2 * e * e;
    opmath_t mo = m_lw, ve = v_lw;
    opmath_t new_lw = opt.update(log_w, grad_lw, mo, ve);
    if (kOptions) new_lw = std::min(std::max(new_lw, lo), hi);
    lw = static_cast<scalar_t>(new_lw);
    m_lw = static_cast<scalar_t>(mo);
    v_lw = static_cast<scalar_t>(ve);
    const opmath_t m_old = m_la, v_old = v_la;
    mo = m_old;
    ve = v_old;
    const opmath_t new_la = opt.update(a, grad_la, mo, ve);
    const bool frozen = kOptions && keep != opmath_t(0);
    la = static_cast<scalar_t>(frozen ? a : new_la);
    m_la = static_cast<scalar_t>(frozen ? m_old : mo);
    v_la = static_cast<scalar_t>(frozen ? v_old : ve);
    l0_share = scale * p;  // a kept household's scale is 0
    e2 = e * e;
  }

  // The chain rule and the Adam step of `count` households from h0, given gw = M^T grad_y.
  void adam_block(int64_t h0, int64_t count, const scalar_t* gw, const AdamStep<opmath_t>& adam) {
    const GateMath<opmath_t> math = math_;
    const opmath_t lambda_l0 = static_cast<opmath_t>(state_.lambda_l0);
    const opmath_t two_lambda_l2 = static_cast<opmath_t>(2.0 * config_.lambda_l2);
    double sum_p = 0.0, sum_e2 = 0.0;
    uint32_t nan_here = 0;
    auto plain = [&](int64_t valid, const scalar_t* __restrict gw_in, const scalar_t* __restrict g_in,
                     scalar_t* __restrict lw, scalar_t* __restrict la, scalar_t* __restrict m_lw,
                     scalar_t* __restrict v_lw, scalar_t* __restrict m_la,
                     scalar_t* __restrict v_la) L0FAST_LANE_GROUP {
      const GateMath<opmath_t> m = math;
      const AdamStep<opmath_t> opt = adam;
      const opmath_t c0 = lambda_l0, c2 = two_lambda_l2;
      double p_sum = 0.0, e2_sum = 0.0;
      uint32_t nan_bits = 0;
      for (int64_t i = 0; i < kLanes; ++i) {
        opmath_t p, e2;
        update_household<false>(m, opt, static_cast<opmath_t>(gw_in[i]), static_cast<opmath_t>(g_in[i]), c0,
                                opmath_t(1), c2, opmath_t(0), opmath_t(0), opmath_t(0), lw[i], la[i], m_lw[i],
                                v_lw[i], m_la[i], v_la[i], p, e2, nan_bits);
        p_sum += i < valid ? static_cast<double>(p) : 0.0;
        e2_sum += i < valid ? static_cast<double>(e2) : 0.0;
      }
      sum_p += p_sum;
      sum_e2 += e2_sum;
      nan_here |= nan_bits;
    };
    auto options = [&](int64_t valid, const scalar_t* __restrict gw_in, const scalar_t* __restrict g_in,
                       const scalar_t* __restrict scale, const scalar_t* __restrict keep,
                       const scalar_t* __restrict lo, const scalar_t* __restrict hi, scalar_t* __restrict lw,
                       scalar_t* __restrict la, scalar_t* __restrict m_lw, scalar_t* __restrict v_lw,
                       scalar_t* __restrict m_la, scalar_t* __restrict v_la) L0FAST_LANE_GROUP {
      const GateMath<opmath_t> m = math;
      const AdamStep<opmath_t> opt = adam;
      const opmath_t c0 = lambda_l0, c2 = two_lambda_l2;
      double p_sum = 0.0, e2_sum = 0.0;
      uint32_t nan_bits = 0;
      for (int64_t i = 0; i < kLanes; ++i) {
        opmath_t p, e2;
        update_household<true>(m, opt, static_cast<opmath_t>(gw_in[i]), static_cast<opmath_t>(g_in[i]), c0,
                               static_cast<opmath_t>(scale[i]), c2, static_cast<opmath_t>(keep[i]),
                               static_cast<opmath_t>(lo[i]), static_cast<opmath_t>(hi[i]), lw[i], la[i], m_lw[i],
                               v_lw[i], m_la[i], v_la[i], p, e2, nan_bits);
        p_sum += i < valid ? static_cast<double>(p) : 0.0;
        e2_sum += i < valid ? static_cast<double>(e2) : 0.0;
      }
      sum_p += p_sum;
      sum_e2 += e2_sum;
      nan_here |= nan_bits;
    };
    const scalar_t* gate = gate_ + h0;
    if (scale_ != nullptr) {
      for_each_lane_group(count, options, gw, gate, scale_ + h0, keep_ + h0, lo_ + h0, hi_ + h0, lw_ + h0, la_ + h0,
                          m_lw_ + h0, v_lw_ + h0, m_la_ + h0, v_la_ + h0);
    } else {
      for_each_lane_group(count, plain, gw, gate, lw_ + h0, la_ + h0, m_lw_ + h0, v_lw_ + h0, m_la_ + h0, v_la_ + h0);
    }
    const size_t b = static_cast<size_t>(2 * (h0 / kNoiseBlock));
    block_sums_[b] = sum_p;
    block_sums_[b + 1] = sum_e2;
    if (nan_here) nan_found_ = true;
  }

  FitState& state_;
  const FitConfig& config_;
  const Exchange& exchange_;
  const int64_t n_, q_, nnz_;
  const uint32_t last_row_;
  const HouseholdChunks chunks_;
  const GateMath<opmath_t> math_;
  const int64_t* cp_;
  const index_t* ri_;
  const scalar_t* va_;
  const double *y_, *c_, *inv_denom_;
  scalar_t *lw_, *la_, *m_lw_, *v_lw_, *m_la_, *v_la_, *gate_;
  double* partials_;
  double* totals_;
  const scalar_t *scale_, *keep_, *lo_, *hi_;  // household options (config), or null
  std::vector<double> grad_y_;
  std::vector<double> block_sums_;  // (sum p, sum e^2) per block of kNoiseBlock households
  std::atomic<bool> nan_found_{false};
};

void check_state(const FitMatrix& matrix, const FitTargets& targets, FitState& state, const FitConfig& config) {
  check_household_major(matrix.col_ptr, matrix.row_idx, matrix.values);
  const int64_t n = matrix.col_ptr.numel() - 1;
  const int64_t q = matrix.num_rows;
  TORCH_CHECK(q >= 0 && q <= INT32_MAX, "num_rows must be in [0, 2^31), got ", q);
  raise_if_malformed(q == 0 && matrix.values.numel() != 0);
  for (const auto* t : {&targets.y, &targets.loss_weight, &targets.inv_denom}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kDouble && t->dim() == 1 &&
                    t->numel() == q && t->is_contiguous(),
                "targets, loss weights and inverse denominators must be contiguous CPU fp64 (", q,
                ",) tensors");
  }
  for (const auto* t : {&state.log_weight, &state.log_alpha, &state.exp_avg_lw, &state.exp_avg_sq_lw,
                        &state.exp_avg_la, &state.exp_avg_sq_la}) {
    check_vector(*t, matrix.values, n, "a fit parameter or Adam moment");
    TORCH_CHECK(t->is_contiguous(), "fit parameters and Adam moments must be contiguous");
  }
  if (config.has_household_options()) {
    for (const auto* t : {&config.lambda_scale, &config.keep, &config.log_weight_min, &config.log_weight_max}) {
      check_vector(*t, matrix.values, n, "a household option");
      TORCH_CHECK(t->is_contiguous(), "household options must be contiguous");
    }
  }
  read_rng_state(state.rng_state);
  TORCH_CHECK(state.rng_state.is_contiguous(), "rng_state must be contiguous");
  TORCH_CHECK(config.household_offset >= 0 &&
                  (config.households_total == -1 || config.households_total >= config.household_offset + n),
              "a shard's households [", config.household_offset, ", ", config.household_offset + n,
              ") must lie in [0, households_total=", config.households_total, ")");
  const HouseholdChunks chunks(n, q, household_entries(matrix.col_ptr));
  const bool fresh = !state.gate.defined() || state.gate.numel() != n ||
                     state.gate.scalar_type() != matrix.values.scalar_type() || !state.partials.defined() ||
                     state.partials.sizes() != at::IntArrayRef({chunks.count, q}) || !state.totals.defined() ||
                     state.totals.numel() != q + 3;
  if (fresh) {
    state.gate = at::empty({n}, matrix.values.options());
    state.partials = at::empty({chunks.count, q}, matrix.values.options().dtype(at::kDouble));
    state.totals = at::empty({q + 3}, matrix.values.options().dtype(at::kDouble));
    state.primed = false;
  }
}

}  // namespace

double next_lambda(double lambda, double sum_p, const FitConfig& config) {
  if (config.target_count < 0) return lambda;
  constexpr double kMinLambda = 1e-12, kMaxLambda = 1e12;
  const double k = static_cast<double>(config.target_count);
  const double excess = std::min(1.0, std::max(-1.0, (sum_p - k) / std::max(k, 1.0)));
  const double moved = lambda * std::exp(config.dual_step * excess);
  return std::min(kMaxLambda, std::max(kMinLambda, moved));
}

at::Tensor calibration_fit_cpu(const FitMatrix& matrix, const FitTargets& targets, FitState& state,
                               const FitConfig& config, int64_t epochs, bool finish,
                               const Exchange& exchange) {
  TORCH_CHECK(epochs >= 0, "epochs must be >= 0, got ", epochs);
  check_gate_params(config.beta, config.gamma, config.zeta);
  check_state(matrix, targets, state, config);
  auto stats = at::zeros({epochs, kStats}, at::TensorOptions().dtype(at::kDouble));
  if (epochs == 0) return stats;
  const auto col_ptr = matrix.col_ptr.contiguous();
  const auto row_idx = matrix.row_idx.contiguous();
  const auto values = matrix.values.contiguous();
  const FitMatrix contiguous{col_ptr, row_idx, values, matrix.num_rows};
  double* out = stats.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "calibration_fit_cpu", [&] {
    dispatch_row_index(row_idx, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      // checked once here: the epoch loop's gather and scatter run unchecked
      const int64_t q = matrix.num_rows;
      raise_if_malformed(q > 0 && !household_major_is_valid(col_ptr.data_ptr<int64_t>(), row_idx.data_ptr<index_t>(),
                                                            col_ptr.numel() - 1, values.numel(),
                                                            static_cast<uint32_t>(q - 1)));
      FusedFit<scalar_t, index_t> fit(contiguous, targets, state, config, exchange);
      if (!state.primed) fit.prime();
      for (int64_t t = 0; t < epochs; ++t) {
        double* row = out + kStats * t;
        row[0] = fit.target_pass();
        row[3] = state.lambda_l0;
        const auto [sum_p, sum_e2] = fit.household_pass(!(finish && t == epochs - 1));
        row[1] = sum_p;
        row[2] = sum_e2;
        state.lambda_l0 = next_lambda(state.lambda_l0, sum_p, config);
      }
    });
  });
  return stats;
}

}  // namespace l0fast
