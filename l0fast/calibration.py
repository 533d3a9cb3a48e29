"""Sparse, non-negative survey calibration weights (drop-in for ``l0.calibration``).

Household ``j`` gets weight ``w_j = exp(log_weight_j) * z_j`` with a
hard-concrete gate ``z_j`` (Louizos, Welling & Kingma 2017,
arXiv:1712.01312).  Fitting minimises, with Adam,

    sum_i g_i * r_i^2 + lambda_l0 * E[#open gates] + lambda_l2 * sum_j exp(log_weight_j)^2

where ``r = (y - M @ w) / d`` with ``d = 1`` (``loss_type="mse"``), ``y + 1``
(``"relative"``) or ``max(|y|, relative_floor)`` (``"capped_relative"``), and
``g_i`` is ``1 / |group of target i|`` when ``target_groups`` is given with
``normalize_groups=True`` (times any ``group_multipliers``), else 1
(:mod:`l0fast.calibration_loss`).  M: (Q targets, N households), any of
scipy sparse, torch sparse or dense; converted once per matrix.

A model may hold one block of the households of a fit split over processes
(``household_offset``, ``n_features_total``; ``fit(process_group=...)``):
see :mod:`l0fast.distributed`.
"""

# ruff: noqa: N803 N806

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from . import checkpoint as ckpt
from .calibration_loss import check_loss_type, fit_targets, group_weights
from .diagnostics import WEIGHT_BIN_LABELS, Diagnostics, calibration_diagnostics
from .engine import AdamState, FitOptions, FitShard, make_fit
from .fit_loop import FitRun, chunk_size, refresh_last_record, run_epochs, save_checkpoint, show_progress, showing
from .household_options import as_given as household_options_as_given
from .household_options import household_options, open_kept_gates, project_active_weights
from .ops import HouseholdMajorMatrix, gated_sparse_product, hard_concrete_mean, l0_penalty
from .output_paths import check_output_path
from .rng import HasRngState, register_rng_state, sample_gates, seed_after_init
from .sparse import (
    LOG_ALPHA_BOUND,
    MatrixCache,
    _check_fit_args,
    as_target_vector,
    check_device,
    check_gate_params,
    check_positive,
    keep_prob_to_tensor,
    real_array,
    seeded_generator,
)
from .target_count import START_LAMBDA, check_count_reachable, check_target_count, snap_to_count

DEFAULT_LAMBDA_L0 = 0.01  # l0-python's


class SparseCalibrationWeights(HasRngState):
    """Non-negative calibration weights ``exp(log_weight) * gate`` with L0 sparsity.

    Args (as l0-python 0.6.2): ``n_features`` (number of weights, e.g.
    households); ``beta``, ``gamma``, ``zeta`` (gate temperature and
    stretch); ``init_keep_prob`` (scalar or (n_features,) initial P(gate
    open)); ``init_weights`` (scalar, (n_features,) or None = 1.0, must be
    >= 0); ``log_weight_jitter_sd`` (N(0, sd) added to ``log_weight`` at the
    start of ``fit``); ``log_alpha_jitter_sd`` (init jitter of ``log_alpha``);
    ``device``; ``use_gates`` (False: plain ``exp(log_weight)``); ``seed``
    (seeds both jitters and the gate-noise stream; None uses torch's global RNG).
    Keyword-only, for a shard of a fit split over processes
    (:mod:`l0fast.distributed`): ``household_offset`` (global index of this
    model's first household) and ``n_features_total`` (households of the whole
    fit); the jitters and gate noise of household ``h`` are then those of
    household ``household_offset + h`` of an unsharded model (a ``seed`` is required).

    >>> import numpy as np, scipy.sparse as sp
    >>> M = sp.random(20, 100, density=0.3, format="csr", random_state=0)
    >>> model = SparseCalibrationWeights(100, seed=0).fit(M, M @ np.ones(100), epochs=50, loss_type="relative")
    >>> model.predict(M).shape
    torch.Size([20])
    """

    LOG_ALPHA_BOUND: float = LOG_ALPHA_BOUND

    def __init__(
        self,
        n_features: int,
        beta: float = 2 / 3,
        gamma: float = -0.1,
        zeta: float = 1.1,
        init_keep_prob: float | np.ndarray = 0.5,
        init_weights: float | np.ndarray | None = None,
        log_weight_jitter_sd: float = 0.0,
        log_alpha_jitter_sd: float = 0.01,
        device: str | torch.device = "cpu",
        use_gates: bool = True,
        seed: int | None = None,
        *,
        household_offset: int = 0,
        n_features_total: int | None = None,
    ):
        super().__init__()
        check_gate_params(n_features, beta, gamma, zeta)
        self.household_offset, self.n_features_total = _check_shard(n_features, household_offset, n_features_total, seed)
        check_positive("log_weight_jitter_sd", log_weight_jitter_sd, strict=False)
        check_positive("log_alpha_jitter_sd", log_alpha_jitter_sd, strict=False)
        self.n_features = int(n_features)
        self.beta, self.gamma, self.zeta = beta, gamma, zeta
        self.log_weight_jitter_sd, self.log_alpha_jitter_sd = log_weight_jitter_sd, log_alpha_jitter_sd
        self.device, self.use_gates, self.seed = check_device(device), use_gates, seed
        self._generator = seeded_generator(seed, self.device)
        gate_seed = seed_after_init(seed, self.device)

        initial = self._initial_weights(init_weights)
        self.register_buffer("initial_weights", initial.clone(), persistent=False)  # w0 of diagnostics()
        self.log_weight = nn.Parameter(torch.log(initial + 1e-8))
        p = keep_prob_to_tensor(init_keep_prob, self.n_features, self.device)
        log_alpha = torch.log(p / (1 - p))
        if log_alpha_jitter_sd > 0:
            log_alpha = log_alpha + log_alpha_jitter_sd * self._normal_noise()
        self.log_alpha = nn.Parameter(log_alpha)
        register_rng_state(self, gate_seed(), self.device)  # after the jitter: l0's init for a given global seed
        self._matrices = MatrixCache()
        self.optimizer_state: AdamState | None = None  # Adam's state after the last fit
        self.history: list[dict] = []  # diagnostics.history_record rows, every verbose_freq epochs of every fit
        self.lambda_l0_: float | None = None  # lambda_l0 at the end of the last fit (moved by target_count)
        self._keep_mask: Tensor | None = None  # the last fit's keep (bool, n_features), or None
        self.epochs_trained = 0

    def _initial_weights(self, init_weights) -> Tensor:
        n = self.n_features
        if init_weights is None:
            return torch.ones(n, device=self.device)
        arr = real_array(init_weights, "init_weights")
        if arr.ndim != 0 and arr.shape != (n,):
            raise ValueError(f"init_weights array must have shape ({n},), got {arr.shape}")
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ValueError("init_weights must be finite and >= 0 (weights on the original scale, not log)")
        dtype = torch.get_default_dtype() if arr.ndim == 0 else torch.float32
        if arr.max() > torch.finfo(dtype).max:
            raise ValueError(f"init_weights reach {arr.max():.3g}, beyond {dtype}'s range; rescale them (divide the "
                             "weights and the targets by one factor)")
        if arr.ndim == 0:
            return torch.full((n,), float(arr), dtype=dtype, device=self.device)
        return torch.tensor(arr, dtype=dtype, device=self.device)

    def _normal_noise(self) -> Tensor:
        """N(0, 1) noise (n_features,): this shard's part of one draw for all ``n_features_total`` households."""
        noise = torch.randn(self.n_features_total, generator=self._generator, device=self.device)
        return noise[self.household_offset : self.household_offset + self.n_features].clone()

    @property
    def is_shard(self) -> bool:
        """Whether this model holds only some households of its fit."""
        return self.n_features != self.n_features_total

    def extra_repr(self) -> str:
        shard = f", households [{self.household_offset}, {self.household_offset + self.n_features}) of {self.n_features_total}" if self.is_shard else ""
        return f"n_features={self.n_features}{shard}, beta={self.beta:.4g}, gamma={self.gamma}, zeta={self.zeta}, use_gates={self.use_gates}"

    # -- l0-python compatibility: the cached matrix, as l0 exposed it
    @property
    def _cached_M_torch(self) -> Tensor | None:
        return self._matrices.coo()

    @property
    def _cached_M_shape(self) -> tuple[int, int] | None:
        op = self._matrices.operand
        return None if op is None else op.shape

    def _convert_sparse_to_torch(self, M_sparse) -> Tensor:
        """``M_sparse`` -> (n_targets, n_features) torch sparse COO tensor, cached per matrix object and content."""
        self._operand(M_sparse)
        return self._matrices.coo()

    def _operand(self, M) -> HouseholdMajorMatrix:
        return self._matrices.get(M, self.n_features, self.log_weight.device, self.log_weight.dtype, name="M")

    # -- gates and weights
    def _sample_gates(self) -> Tensor:
        """Hard-concrete gate sample (n_features,); advances the noise stream."""
        gates = sample_gates(self.log_alpha, self.rng_state, self.beta, self.gamma, self.zeta, first=self.household_offset,
                             total=self.n_features_total)
        return self._kept_open(gates)

    def _kept_open(self, gates: Tensor) -> Tensor:
        """``gates`` with the records of the last fit's ``keep`` held at 1."""
        return gates if self._keep_mask is None else torch.where(self._keep_mask, torch.ones_like(gates), gates)

    def get_deterministic_gates(self) -> Tensor:
        """Eval-mode gates ``clamp(sigmoid(log_alpha / beta) * (zeta - gamma) + gamma, 0, 1)``."""
        return self._kept_open(hard_concrete_mean(self.log_alpha, self.beta, self.gamma, self.zeta))

    def _apply(self, fn, recurse=True):
        """``nn.Module._apply`` (``.double()``, ``.to(device)``, ...) converting :attr:`optimizer_state`'s moments too,
        so a converted model's fit can go on from its Adam state (``reset_optimizer=False``), and moving the keep mask."""
        module = super()._apply(fn, recurse)
        adam = self.__dict__.get("optimizer_state")  # None, or absent while __init__ runs
        if adam is not None:
            self.optimizer_state = AdamState(adam.step, *(fn(t) for t in adam.moments().values()))
        if self.__dict__.get("_keep_mask") is not None:  # bool: moved, never converted
            self._keep_mask = self._keep_mask.to(self.log_alpha.device)
        return module

    def _gates_in_use(self) -> Tensor:
        """The deterministic gates the weights are multiplied by: 1 without gates (``use_gates=False``)."""
        return self.get_deterministic_gates() if self.use_gates else torch.ones_like(self.log_weight)

    def get_weights(self, deterministic: bool = False) -> Tensor:
        """Non-negative weights ``exp(log_weight) * gate`` (n_features,); sampled gates unless ``deterministic``."""
        if not self.use_gates:
            return torch.exp(self.log_weight)
        gates = self.get_deterministic_gates() if deterministic else self._sample_gates()
        return torch.exp(self.log_weight) * gates

    def _forward_operand(self, op: HouseholdMajorMatrix, deterministic: bool) -> Tensor:
        return gated_sparse_product(op, self.get_weights(deterministic=deterministic))

    def forward(self, M, deterministic: bool = False) -> Tensor:
        """Weighted sums ``M @ weights`` (n_targets,) for M (n_targets, n_features)."""
        return self._forward_operand(self._operand(M), deterministic)

    def get_l0_penalty(self) -> Tensor:
        """Expected number of open gates, a differentiable 0-dim tensor."""
        return l0_penalty(self.log_alpha, self.beta, self.gamma, self.zeta)

    def get_l2_penalty(self) -> Tensor:
        """``sum(exp(log_weight)^2)``, the L2 penalty on the ungated weights."""
        return torch.exp(self.log_weight).square().sum()

    def get_sparsity(self) -> float:
        """Fraction of weights whose deterministic gate is exactly 0."""
        with torch.no_grad():
            return (self.get_deterministic_gates() == 0).float().mean().item()

    def get_active_weights(self) -> dict:
        """``{"indices", "values", "count"}`` of the weights > 0 under deterministic gates."""
        with torch.no_grad():
            weights = self.get_weights(deterministic=True)
            active = weights > 0
            return {"indices": torch.where(active)[0], "values": weights[active], "count": int(active.sum())}

    # -- fitting
    def fit(
        self,
        M,
        y: np.ndarray,
        lambda_l0: float = DEFAULT_LAMBDA_L0,
        lambda_l2: float = 0.0,
        lr: float = 0.01,
        epochs: int = 1000,
        loss_type: str = "mse",
        verbose: bool = False,
        verbose_freq: int = 100,
        target_groups: np.ndarray | None = None,
        normalize_groups: bool = True,
        group_multipliers: dict[int, float] | None = None,
        *,
        relative_floor: float | None = None,
        reset_optimizer: bool = True,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        checkpoint_seconds: float | None = None,
        resume: bool = False,
        progress: bool | str = False,
        target_count: int | None = None,
        keep=None,
        weight_bounds: tuple[float, float] | None = None,
        process_group=None,
    ) -> "SparseCalibrationWeights":
        """Fit ``log_weight`` and ``log_alpha`` with Adam for ``epochs`` steps; returns ``self``.

        The arguments up to ``group_multipliers`` are l0-python 0.6.2's (see
        the module docstring for the loss).  The epochs run in the fit engine
        (:mod:`l0fast.engine`: on CPU one fused C++ pass over M per epoch)
        with ``torch.optim.Adam``'s update rule.  ``verbose`` prints the
        relative errors, sparsity and weight distribution every
        ``verbose_freq`` epochs, when :attr:`history` also gets a row.  Keyword-only:

        - ``loss_type="capped_relative"`` with ``relative_floor`` (:mod:`l0fast.calibration_loss`);
        - ``reset_optimizer``: True (l0's behaviour) starts Adam afresh and
          applies ``log_weight_jitter_sd``; False continues
          :attr:`optimizer_state` from the previous fit, so a fit run in
          several calls equals one call (except with ``target_count`` or
          ``weight_bounds``: each call ends with their snap or projection);
        - ``checkpoint`` (a path) written atomically every ``checkpoint_every``
          epochs, at the end of the first chunk of ``verbose_freq`` epochs that starts
          ``checkpoint_seconds`` or more after the last checkpoint, and at the end (:mod:`l0fast.checkpoint`); ``resume=True``
          continues the fit saved there (``epochs`` is then the total of the
          whole fit; a missing file starts it), an error if the matrix, the
          targets or the options differ;
        - ``progress``: a tqdm bar on stderr (True: when stderr is a terminal; ``"always"``) or
          ``"lines"``: a line per history row (for logs); either says where a resume starts;
        - ``target_count=K``: end with exactly K active records; ``lambda_l0`` is
          then a Lagrange multiplier the fit moves (:mod:`l0fast.target_count`),
          left in ``self.lambda_l0_``;
        - ``keep`` (bool per record: always active), ``weight_bounds=(lo, hi)``
          (active weights within ``[lo, hi]`` times ``init_weights``) and
          ``lambda_l0`` as an array (one per record; ``lambda_l0_`` and the history's ``lambda_l0`` are then
          the array's multiplier, 1): :mod:`l0fast.household_options`;
        - ``process_group``: a ``torch.distributed`` group whose processes each
          fit one block of the households (this model a shard, M its columns,
          every other argument the same on every process): :mod:`l0fast.distributed`.
        """
        scalar_lambda = {} if np.ndim(lambda_l0) else {"lambda_l0": lambda_l0}  # an array is checked with the options
        _check_fit_args(lr=lr, epochs=epochs, verbose=verbose, verbose_freq=verbose_freq, lambda_l2=lambda_l2, **scalar_lambda)
        run = FitRun(epochs, chunk_size(verbose_freq, epochs), verbose, progress,
                     *_checkpoint_args(checkpoint, checkpoint_every, checkpoint_seconds, resume), resume=resume)
        show_progress(progress)
        group = self._shard_group(process_group)
        run.group = group
        check_target_count(target_count, lambda_l0, DEFAULT_LAMBDA_L0, self.n_features_total, (self.beta, self.gamma, self.zeta))
        if not self.use_gates and (target_count is not None or keep is not None):
            raise ValueError("target_count and keep act through the gates, and this model has use_gates=False (every record "
                             "active): drop them, or build the model with use_gates=True")
        with ckpt.restored_if_diverged(self, "fit"):
            given = (lambda_l0, keep, weight_bounds)
            lambda_l0, households, self._keep_mask = household_options(self, *given)
            op, y, groups, targets = self._loss_setup(M, y, loss_type, relative_floor, target_groups, normalize_groups, group_multipliers, verbose)
            options = FitOptions(lr=lr, lambda_l0=START_LAMBDA if target_count else lambda_l0, lambda_l2=lambda_l2,
                                 gate_params=(self.beta, self.gamma, self.zeta), use_gates=self.use_gates, target_count=target_count,
                                 households=households)
            options_record = ckpt.options_fingerprint(options, self.log_weight.dtype) if group or run.checkpoint else None
            if group is not None:
                shared = {k: v for k, v in options_record.items() if k != "household options"}  # per household: each rank its own
                group.check_same({**ckpt.loss_fingerprint(loss_type, relative_floor, targets, weight_bounds), "epochs": epochs,
                                  "resume": resume, "checkpoint_every": checkpoint_every, "verbose_freq": verbose_freq,
                                  "checkpoint_seconds": checkpoint_seconds,
                                  "seed": self.seed, "log_weight_jitter_sd": self.log_weight_jitter_sd,
                                  "log_alpha_jitter_sd": self.log_alpha_jitter_sd, **shared,
                                  "per-household options": households is not None, "checkpoint given": run.checkpoint is not None,
                                  # on a file system every rank sees (each rank reads its own shard of it)
                                  "a checkpoint to resume": bool(resume and os.path.exists(run.checkpoint))},
                                 "the fit's or the model's argument")
                if run.checkpoint:
                    from .distributed import checkpoint as sharded

                    sharded.check_shared(group, run.checkpoint)
            if target_count:
                check_count_reachable(target_count, self._keep_mask, self.n_features_total, self.log_weight, group)
            if run.checkpoint:  # the fingerprint hashes M (~0.3 s per 10^7 non-zeros): only when a checkpoint needs it
                run.record = {"options": options_record, "data": ckpt.data_fingerprint(op, targets),
                              "household options as given": household_options_as_given(self, *given),
                              "data as given": ckpt.data_as_given(targets, loss_type, relative_floor, target_groups,
                                                                  normalize_groups, group_multipliers)}
            continuing = not reset_optimizer and self.optimizer_state is not None
            resuming = resume and os.path.exists(run.checkpoint)  # the same on every rank (checked above)
            if group is not None and not resuming:  # before any change: e.g. gates drawn or reseeded on one rank,
                # reset_optimizer given to some only (a resume loads every rank's state from one checkpoint)
                group.check_same({"rng_state": self.rng_state.tolist(), "epochs_trained": self.epochs_trained,
                                  "continuing Adam (reset_optimizer)": continuing,
                                  "Adam's step": self.optimizer_state.step if continuing else None}, "the model's state")
            if resuming:
                self._resume(run)
                continuing = True
            elif not continuing:
                self._jitter_log_weight()
                self.optimizer_state = AdamState.zeros_like(self.log_weight, self.log_alpha)
            if continuing and target_count and self.lambda_l0_ is not None:
                options = replace(options, lambda_l0=self.lambda_l0_)  # the multiplier goes on from where it was
            shard = None if group is None else FitShard(self.household_offset, self.n_features_total, group.exchange)
            engine = make_fit(op, targets, self.log_weight, self.log_alpha, self.rng_state, self.optimizer_state, options, shard)

            def note_multiplier():  # after every chunk: a checkpoint holds the multiplier its next epoch uses
                self.lambda_l0_ = engine.lambda_l0

            with showing(run):
                run_epochs(self, engine, op, y, groups, options, run, after_chunk=note_multiplier)
                if target_count or households is not None:
                    before_end = (run.before_end or self._before_end()) if run.checkpoint else None
                    self._finish_fit(target_count, households, group)
                    refresh_last_record(self, op, y, run, " (final weights)")
                    if run.checkpoint:  # load_checkpoint gives the model fit returns; see _resume for resuming it
                        save_checkpoint(self, run, run.epochs, before_end)
        return self

    def _before_end(self) -> dict:
        """What :meth:`_finish_fit` and the history's refresh change, as they were: a finished fit's checkpoint
        holds it, so a resume with more epochs goes on from there, as a longer fit would have."""
        return {"log_weight": self.log_weight.detach().cpu().clone(), "log_alpha": self.log_alpha.detach().cpu().clone(),
                "last_record": self.history[-1] if self.history else None}

    def _finish_fit(self, target_count, households, group) -> None:
        """The end of a fit: exactly ``target_count`` records open, active weights in their bounds, kept records
        open in log_alpha too (so a ``state_dict`` holds them).  Applied twice, the same bits."""
        if target_count:
            snap_to_count(self, target_count, self._keep_mask, group)
        if households is not None:
            project_active_weights(self, households)
        if self._keep_mask is not None:
            open_kept_gates(self, self._keep_mask)

    def _shard_group(self, process_group):
        """The ShardGroup of a sharded fit (its blocks checked), or None; ValueError for a shard without a group."""
        if process_group is None:
            if self.is_shard:
                raise ValueError(f"this model holds households [{self.household_offset}, {self.household_offset + self.n_features}) "
                                 f"of {self.n_features_total}: fit it with process_group=<the torch.distributed group of "
                                 "all the shards> (l0fast.distributed)")
            return None
        from .distributed import ShardGroup

        group = ShardGroup(process_group)
        group.check_blocks(self.household_offset, self.n_features, self.n_features_total)
        return group

    def _jitter_log_weight(self) -> None:
        if self.log_weight_jitter_sd > 0:
            with torch.no_grad():
                self.log_weight.add_(self._normal_noise() * self.log_weight_jitter_sd)

    def _resume(self, run: FitRun) -> None:
        """Load the running fit saved at ``run.checkpoint``, after checking it is this fit."""
        if run.group is None:
            state = ckpt.read(run.checkpoint)
        else:
            from .distributed import checkpoint as sharded

            state = sharded.read(run.group, run.checkpoint, (self.household_offset, self.n_features))
        saved = state["fit"]
        if not saved:
            raise ValueError(f"cannot resume from {run.checkpoint}: it holds a model (save_checkpoint), not the checkpoint of a "
                             "running fit (fit(checkpoint=...)); load it with load_checkpoint and continue it with "
                             "fit(reset_optimizer=False)")
        ckpt.check_same(ckpt.model_fingerprint(state["config"], state["initial_weights"]),
                        ckpt.model_fingerprint(self.config(), self.initial_weights), "model's settings", run.checkpoint)
        saved_dtype, dtype = saved["options"]["dtype"], run.record["options"]["dtype"]
        if saved_dtype != dtype:  # before the data: the matrix's digest is of its values in the model's dtype
            raise ValueError(f"cannot resume from {run.checkpoint}: it was written by a {saved_dtype} model, this one is "
                             f"{dtype}; convert the model (.double() or .float()) before fit")
        ckpt.check_same(saved["data"], run.record["data"], "matrix or targets", run.checkpoint,
                        parts=ckpt.data_parts(saved.get("data as given"), run.record["data as given"]))
        ckpt.check_same(saved["options"], run.record["options"], "fit options", run.checkpoint, parts={"household options": (
            saved.get("household options as given"), run.record["household options as given"])})
        if saved["done"] > run.epochs:
            raise ValueError(f"{run.checkpoint} has {saved['done']} epochs done, more than epochs={run.epochs}; pass epochs={saved['done']} or more")
        ckpt.restore(self, state, run.checkpoint)
        before_end = saved.get("before_end")
        if before_end is not None and saved["done"] < run.epochs:  # a finished fit, extended: from before its end
            with torch.no_grad():
                self.log_weight.copy_(before_end["log_weight"])
                self.log_alpha.copy_(before_end["log_alpha"])
            if before_end["last_record"] is not None:
                self.history[-1] = before_end["last_record"]
        elif before_end is not None:  # finished, resumed as it was: its next checkpoint keeps the state before its end
            run.before_end = before_end
        run.done = saved["done"]

    def config(self) -> dict:
        """The constructor arguments that rebuild this model's shape and gates (parameters aside)."""
        return {"n_features": self.n_features, "beta": self.beta, "gamma": self.gamma, "zeta": self.zeta,
                "use_gates": self.use_gates, "seed": self.seed, "log_weight_jitter_sd": self.log_weight_jitter_sd,
                "log_alpha_jitter_sd": self.log_alpha_jitter_sd, "household_offset": self.household_offset,
                "n_features_total": self.n_features_total}

    def save_checkpoint(self, path) -> None:
        """Write an exact checkpoint (:mod:`l0fast.checkpoint`) of the model, atomically: its parameters, noise position,
        Adam's state and history, which :meth:`load_checkpoint` restores and ``fit(reset_optimizer=False)`` continues.
        ``fit(resume=True)`` takes the checkpoints a fit writes (``checkpoint=``), which also record its data.
        ValueError, naming the fix, for a path that cannot be written (a folder; a missing or unwritable folder)."""
        check_output_path(path, "path")
        ckpt.write_atomic(ckpt.model_state(self, None), path)

    @classmethod
    def load_checkpoint(cls, path, device: str | torch.device = "cpu") -> "SparseCalibrationWeights":
        """A model restored from :meth:`save_checkpoint` or a fit's ``checkpoint=`` file, on ``device``.

        A sharded fit's checkpoint (its manifest) gives one model of all the households.
        """
        from .distributed import checkpoint as sharded

        state = ckpt.load(path)
        state = sharded.combine(state, path) if state.get("format") == sharded.FORMAT else ckpt.check_format(state, path)
        target = check_device(device)
        cuda = [target.index if target.index is not None else torch.cuda.current_device()] if target.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # a model of seed=None draws a seed and jitter the checkpoint replaces
            model = cls(**state["config"], device=target).to(state["log_weight"].dtype)  # a .double() model stays fp64
        ckpt.restore(model, state, path)
        return model

    def refit(self, M, y, epochs: int = 500, lr: float = 0.01, lambda_l2: float = 0.0, loss_type: str = "mse", verbose: bool = False,
              verbose_freq: int = 100, target_groups=None, normalize_groups: bool = True, group_multipliers=None, *,
              relative_floor: float | None = None, progress: bool | str = False, weight_bounds: tuple[float, float] | None = None,
              process_group=None) -> "SparseCalibrationWeights":
        """Refit the weights of the active records with their gates frozen, within ``weight_bounds`` (as in
        :meth:`fit`, not carried over from it) when given (see :mod:`l0fast.refit`); returns ``self``."""
        from .refit import refit_support

        return refit_support(self, M, y, epochs=epochs, lr=lr, lambda_l2=lambda_l2, loss_type=loss_type, verbose=verbose,
                             verbose_freq=verbose_freq, target_groups=target_groups, normalize_groups=normalize_groups,
                             group_multipliers=group_multipliers, relative_floor=relative_floor, progress=progress,
                             weight_bounds=weight_bounds, process_group=process_group)

    def _loss_setup(self, M, y, loss_type, relative_floor, target_groups, normalize_groups, group_multipliers, verbose):
        """(operand, y (Q,) fp64, group ids or None, FitTargets), validated; prints the groups line when verbose."""
        check_loss_type(loss_type, relative_floor)
        op = self._operand(M)  # converted once for the whole fit
        y = as_target_vector(y, op.num_rows, self.log_weight.device, torch.float64)
        weights, groups = group_weights(y, target_groups, normalize_groups, group_multipliers)
        if verbose:
            _print_groups(groups, normalize_groups, group_multipliers)
        return op, y, groups, fit_targets(y, loss_type, relative_floor, weights)

    def diagnostics(self, M, y, target_names=None, target_groups=None) -> Diagnostics:
        """Per-target errors and weight summaries of the deterministic weights (see :mod:`l0fast.diagnostics`)."""
        return calibration_diagnostics(self, M, y, target_names, target_groups)

    @torch.no_grad()
    def _print_progress(self, epoch: int, counts: Tensor, estimate: Tensor, y: Tensor, groups, total_loss: float) -> None:
        """l0's progress lines; ``counts``: :func:`~l0fast.diagnostics.weight_histogram` of the active weights."""
        rel = ((y - estimate) / (y + 1)).abs()
        if groups is None:
            err = f"mean_error={rel.mean().item():.4%}"
        else:
            _, inverse = np.unique(groups, return_inverse=True)
            inv = torch.as_tensor(inverse, device=rel.device)
            sums = torch.zeros(int(inverse.max()) + 1, dtype=torch.float64, device=rel.device).index_add_(0, inv, rel.double())
            err = f"mean_group_mare={(sums / torch.bincount(inv)).mean().item():.4%}"
        count = int(counts.sum())
        if count:
            dist = "[" + ", ".join(f"{lab}: {100 * c / count:.1f}%" for lab, c in zip(WEIGHT_BIN_LABELS, counts.tolist())) + "]"
        else:
            dist = "[no active weights]"
        sparse_pct = 100 * (1 - count / self.n_features_total)
        print(
            f"Epoch {epoch:4d}: {err}, max_error={rel.max().item():.1%}, total_loss={total_loss:.3f}, "
            f"active={count:4d}/{self.n_features_total} ({sparse_pct:.1f}% sparse)\n         Weight dist: {dist}"
        )

    def predict(self, M) -> Tensor:
        """Deterministic-gate weighted sums (n_targets,), without autograd."""
        with torch.no_grad():
            return self.forward(M, deterministic=True)


def _check_shard(n_features: int, household_offset, n_features_total, seed) -> tuple[int, int]:
    """(household_offset, n_features_total), validated: the block [offset, offset + n_features) within the total."""
    total = n_features if n_features_total is None else n_features_total
    for name, value in (("household_offset", household_offset), ("n_features_total", total)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if household_offset + n_features > total:
        raise ValueError(f"households [household_offset, household_offset + n_features) = [{household_offset}, "
                         f"{household_offset + n_features}) must lie within n_features_total={total}")
    if total != n_features and seed is None:
        raise ValueError("a shard of a fit (n_features_total > n_features) needs seed=<int>, the same on every process, "
                         "so that every shard draws its part of the same gates")
    return int(household_offset), int(total)


def _print_groups(groups, normalize_groups: bool, group_multipliers) -> None:
    if groups is None:
        print("Groups: none (uniform weights)")
        return
    parts = [f"{len(np.unique(groups))} groups", f"normalize={'on' if normalize_groups else 'off'}"]
    if group_multipliers is not None:
        parts.append(f"multipliers={group_multipliers}")
    print(f"Groups: {', '.join(parts)}")


def _checkpoint_args(checkpoint, checkpoint_every, checkpoint_seconds, resume) -> tuple:
    """(path or None, checkpoint_every or None, checkpoint_seconds or None), validated."""
    if checkpoint is None:
        if checkpoint_every is not None or checkpoint_seconds is not None or resume:
            raise ValueError("checkpoint_every, checkpoint_seconds and resume=True need checkpoint=<path>")
        return None, None, None
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every <= 0):
        raise ValueError(f"checkpoint_every must be a positive int (epochs), got {checkpoint_every!r}")
    if checkpoint_seconds is not None:
        check_positive("checkpoint_seconds", checkpoint_seconds, strict=False)
    check_output_path(checkpoint, "checkpoint")  # found before the fit, not when its first checkpoint is written
    return os.fspath(checkpoint), checkpoint_every, checkpoint_seconds
