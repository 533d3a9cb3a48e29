// The fused calibration fit (calibration_fit.cpp): the state and options a
// caller passes, bound to Python as l0fast._C.FitMatrix / FitTargets /
// FitState / FitConfig.
#pragma once
#include <torch/extension.h>

#include <functional>
#include <stdexcept>

#include "adam.h"

namespace l0fast {

// Thrown when the parameters became NaN: l0fast.engine.FitDiverged (a
// ValueError) in Python.  The fit has stopped; the state holds the NaNs.
struct FitDiverged : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// M (Q x N), household-major (household_major.h).
struct FitMatrix {
  at::Tensor col_ptr, row_idx, values;  // (N+1,) int64; (nnz,) uint16|int32; (nnz,) fp32|fp64
  int64_t num_rows = 0;                 // Q
};

// Per-target data of the loss sum_i loss_weight_i ((y_i - yhat_i) inv_denom_i)^2.
struct FitTargets {
  at::Tensor y, loss_weight, inv_denom;  // (Q,) fp64 each
};

// Everything a fit carries from epoch to epoch; updated in place.
struct FitState {
  at::Tensor log_weight, log_alpha;            // (N,) parameters
  at::Tensor exp_avg_lw, exp_avg_sq_lw;        // (N,) Adam moments of log_weight
  at::Tensor exp_avg_la, exp_avg_sq_la;        // (N,) Adam moments of log_alpha
  at::Tensor gate;                             // (N,) gates of the pending epoch
  at::Tensor partials;                         // (chunks, Q) fp64 target sums of the pending epoch
  at::Tensor totals;                           // (Q + 3,) fp64, see Exchange
  at::Tensor rng_state;                        // (2,) int64 [seed, offset]
  int64_t step = 0;                            // Adam steps taken
  double lambda_l0 = 0.0;                      // the L0 multiplier of the next epoch
  bool primed = false;                         // gate and partials hold the pending epoch
};

struct FitConfig {
  double lr = 0.01, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double lambda_l2 = 0.0;
  double beta = 2.0 / 3.0, gamma = -0.1, zeta = 1.1;
  bool use_gates = true;
  // With target_count >= 0, state.lambda_l0 is a Lagrange multiplier: after
  // each epoch lambda <- clamp(lambda * exp(dual_step * clamp((sum s p - K) / max(K, 1), -1, 1)),
  // kMinLambda, kMaxLambda) (dual ascent on the expected active count, in log lambda).
  int64_t target_count = -1;
  double dual_step = 0.05;
  // Per-household options, all four (N,) like the parameters or all undefined:
  // lambda_l0_h = lambda_l0 * lambda_scale_h; keep_h = 1 holds the gate open
  // and log_alpha_h still (leave lambda_scale_h 0 there); log_weight_h is
  // projected onto [log_weight_min_h, log_weight_max_h] after every step.
  at::Tensor lambda_scale, keep, log_weight_min, log_weight_max;

  // A shard of a fit split by household over processes: the matrix holds
  // households [household_offset, household_offset + N) of households_total;
  // household h draws noise element offset + household_offset + h and a draw
  // advances the stream by households_total (-1: N, an unsharded fit).
  int64_t household_offset = 0;
  int64_t households_total = -1;

  bool has_household_options() const { return lambda_scale.defined(); }

  AdamConfig adam() const { return {lr, beta1, beta2, eps}; }
};

// After every household pass, state.totals holds this process's target sums of
// the pending epoch (Q; zero at a fit's last epoch), then sum p, sum e^2 and a
// NaN flag (1 if a parameter was NaN) of the epoch just taken.  An Exchange
// replaces them in place by their sums over all shards of a sharded fit, the
// same on every process (l0fast.distributed); the target pass, the statistics
// and lambda's dual step read the totals.  Empty: an unsharded fit.
using Exchange = std::function<void(const at::Tensor&)>;

// The multiplier after an epoch whose expected active count was sum_p (see FitConfig).
double next_lambda(double lambda, double sum_p, const FitConfig& config);

// Runs `epochs` epochs from `state`; with `finish`, the last one draws no next
// gates (the fit ends there).  Returns (epochs, 4) fp64: per epoch the data
// loss, the L0 sum sum_h s_h p_h (s_h = lambda_scale_h, 1 without household
// options), sum_h exp(log_weight_h)^2 at the epoch's parameters, and the
// epoch's lambda_l0.
at::Tensor calibration_fit_cpu(const FitMatrix& matrix, const FitTargets& targets, FitState& state,
                               const FitConfig& config, int64_t epochs, bool finish,
                               const Exchange& exchange);

}  // namespace l0fast
