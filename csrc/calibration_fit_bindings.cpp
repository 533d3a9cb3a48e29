// Python bindings of the fused calibration fit: l0fast._C.FitMatrix,
// FitTargets, FitState, FitConfig and calibration_fit (GIL released while it runs,
// taken again to call a Python exchange; FitDiverged raised as
// l0fast.engine.FitDiverged).
#include <pybind11/functional.h>

#include "calibration_fit.h"

namespace py = pybind11;

namespace l0fast {

void bind_calibration_fit(py::module_& m) {
  py::class_<FitMatrix>(m, "FitMatrix")
      .def(py::init<at::Tensor, at::Tensor, at::Tensor, int64_t>(), py::arg("col_ptr"),
           py::arg("row_idx"), py::arg("values"), py::arg("num_rows"))
      .def_readonly("col_ptr", &FitMatrix::col_ptr)
      .def_readonly("row_idx", &FitMatrix::row_idx)
      .def_readonly("values", &FitMatrix::values)
      .def_readonly("num_rows", &FitMatrix::num_rows);
  py::class_<FitTargets>(m, "FitTargets")
      .def(py::init<at::Tensor, at::Tensor, at::Tensor>(), py::arg("y"), py::arg("loss_weight"),
           py::arg("inv_denom"))
      .def_readonly("y", &FitTargets::y)
      .def_readonly("loss_weight", &FitTargets::loss_weight)
      .def_readonly("inv_denom", &FitTargets::inv_denom);
  py::class_<FitState>(m, "FitState")
      .def(py::init<>())
      .def_readwrite("log_weight", &FitState::log_weight)
      .def_readwrite("log_alpha", &FitState::log_alpha)
      .def_readwrite("exp_avg_lw", &FitState::exp_avg_lw)
      .def_readwrite("exp_avg_sq_lw", &FitState::exp_avg_sq_lw)
      .def_readwrite("exp_avg_la", &FitState::exp_avg_la)
      .def_readwrite("exp_avg_sq_la", &FitState::exp_avg_sq_la)
      .def_readwrite("gate", &FitState::gate)
      .def_readwrite("partials", &FitState::partials)
      .def_readwrite("totals", &FitState::totals)
      .def_readwrite("rng_state", &FitState::rng_state)
      .def_readwrite("step", &FitState::step)
      .def_readwrite("lambda_l0", &FitState::lambda_l0)
      .def_readwrite("primed", &FitState::primed);
  py::class_<FitConfig>(m, "FitConfig")
      .def(py::init<>())
      .def_readwrite("lr", &FitConfig::lr)
      .def_readwrite("beta1", &FitConfig::beta1)
      .def_readwrite("beta2", &FitConfig::beta2)
      .def_readwrite("eps", &FitConfig::eps)
      .def_readwrite("lambda_l2", &FitConfig::lambda_l2)
      .def_readwrite("beta", &FitConfig::beta)
      .def_readwrite("gamma", &FitConfig::gamma)
      .def_readwrite("zeta", &FitConfig::zeta)
      .def_readwrite("use_gates", &FitConfig::use_gates)
      .def_readwrite("target_count", &FitConfig::target_count)
      .def_readwrite("dual_step", &FitConfig::dual_step)
      .def_readwrite("lambda_scale", &FitConfig::lambda_scale)
      .def_readwrite("keep", &FitConfig::keep)
      .def_readwrite("log_weight_min", &FitConfig::log_weight_min)
      .def_readwrite("log_weight_max", &FitConfig::log_weight_max)
      .def_readwrite("household_offset", &FitConfig::household_offset)
      .def_readwrite("households_total", &FitConfig::households_total);
  py::register_local_exception_translator([](std::exception_ptr raised) {
    try {
      if (raised) std::rethrow_exception(raised);
    } catch (const FitDiverged& error) {
      const auto cls = py::module_::import("l0fast.engine.state").attr("FitDiverged");
      PyErr_SetString(cls.ptr(), error.what());
    }
  });
  m.def("calibration_fit", &calibration_fit_cpu, py::arg("matrix"), py::arg("targets"), py::arg("state"),
        py::arg("config"), py::arg("epochs"), py::arg("finish"), py::arg("exchange") = Exchange(),
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace l0fast
