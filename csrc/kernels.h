// The CPU kernels of the l0fast ops, one per op of l0fast/ops/*.py (same
// arguments, except calibration_backward's host-side scales).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace l0fast {
at::Tensor philox_uniform_cpu(const at::Tensor& rng_state, int64_t numel);
at::Tensor hard_concrete_sample_cpu(const at::Tensor& log_alpha, const at::Tensor& rng_state,
                                    double beta, double gamma, double zeta);
at::Tensor hard_concrete_mean_cpu(const at::Tensor& log_alpha, double beta, double gamma,
                                  double zeta);
at::Tensor hard_concrete_backward_cpu(const at::Tensor& grad_gate, const at::Tensor& gate,
                                      const at::Tensor& log_alpha, double beta, double gamma,
                                      double zeta);
at::Tensor l0_penalty_cpu(const at::Tensor& log_alpha, double beta, double gamma, double zeta);
at::Tensor l0_penalty_backward_cpu(const at::Tensor& grad_penalty, const at::Tensor& log_alpha,
                                   double beta, double gamma, double zeta);
at::Tensor gated_spmv_cpu(const at::Tensor& col_ptr, const at::Tensor& row_idx,
                          const at::Tensor& values, const at::Tensor& weight, int64_t num_rows);
at::Tensor gated_spmv_backward_cpu(const at::Tensor& col_ptr, const at::Tensor& row_idx,
                                   const at::Tensor& values, const at::Tensor& grad_y);
// (gate, weight * gate or empty when weight is None, penalty): hard_concrete_gated.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_concrete_gated_cpu(
    const at::Tensor& log_alpha, const at::Tensor& rng_state, const std::optional<at::Tensor>& weight,
    double beta, double gamma, double zeta);
// (dL/dlog_alpha, dL/dweight or empty when weight is None).
std::tuple<at::Tensor, at::Tensor> hard_concrete_gated_backward_cpu(
    const std::optional<at::Tensor>& grad, const std::optional<at::Tensor>& grad_penalty, const at::Tensor& gate,
    const at::Tensor& log_alpha, const std::optional<at::Tensor>& weight, double beta, double gamma, double zeta);
// l0_scale and l2_scale are lambda_l0 and lambda_l2 times the penalty's upstream gradient.
std::tuple<at::Tensor, at::Tensor> calibration_backward_cpu(
    const at::Tensor& col_ptr, const at::Tensor& row_idx, const at::Tensor& values,
    const at::Tensor& grad_y, const at::Tensor& log_weight, const at::Tensor& log_alpha,
    const std::optional<at::Tensor>& gate, double beta, double gamma, double zeta,
    double l0_scale, double l2_scale);
}  // namespace l0fast
