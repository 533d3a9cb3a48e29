"""L0-regularized linear regression on sparse inputs, and the sparse product
shared with :mod:`l0fast.calibration`.

``SparseL0Linear`` predicts ``y = X @ (weight * gate) + bias`` with one
hard-concrete gate per feature (Louizos, Welling & Kingma 2017,
arXiv:1712.01312), trained with ``mse + lambda_reg * E[L0]``.

Sparse matrices are converted once into the household-major layout of
:mod:`l0fast.ops.gated_spmv` (the CSR of ``X^T``: int32 row indices, uint16 on CPU up to 65,536 rows), whose
C++ kernels compute both the product and its gradient.  The conversion is
cached per matrix *object* and checked against a content fingerprint, so a
different matrix that happens to have the same shape and nnz is never served
a stale conversion.
"""

# ruff: noqa: N803 N806

from __future__ import annotations

import warnings
import weakref

import numpy as np
import torch
from scipy import sparse as sp
from torch import Tensor, nn

from ._capability import _C
from .engine import engine_backend
from .engine.state import kept_if_diverged, raise_if_diverged
from .ops import HouseholdMajorMatrix, gated_sparse_product, hard_concrete_mean, l0_penalty
from .ops.gated_spmv import check_real_dtype
from .ops.hard_concrete import LOG_ALPHA_BOUND, check_number
from .ops.hard_concrete import check_gate_params as _check_beta_gamma_zeta
from .ops.registry import in_functorch_transform
from .rng import HasRngState, register_rng_state, sample_gates, seed_after_init

_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------- validation


def check_gate_params(n_features, beta: float, gamma: float, zeta: float) -> None:
    """ValueError unless ``n_features >= 1``, ``beta > 0``, ``gamma < 0`` and ``zeta > 1`` (finite)."""
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features <= 0:
        raise ValueError(f"n_features must be a positive int (the number of weights/columns), got {n_features!r}")
    _check_beta_gamma_zeta(beta, gamma, zeta)


def check_device(device) -> torch.device:
    """``torch.device(device)``; ValueError naming ``device`` if it is malformed or absent on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device={device!r} is not available here ({torch.cuda.device_count()} CUDA devices); use device='cpu'")
    return dev


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed`` (None: none, draws use torch's default generator)."""
    if seed is None:
        return None
    if device.type == "meta":
        raise ValueError("seed= on the meta device: its tensors hold no values, so there is nothing to draw; build the model "
                         "with device='cpu' or 'cuda', or without seed=")
    return torch.Generator(device=device).manual_seed(int(seed))


def real_array(value, name: str) -> np.ndarray:
    """``value`` (scalar, list, numpy or torch) as a float64 numpy array; TypeError naming ``name`` unless real numbers."""
    if isinstance(value, Tensor):
        check_real_dtype(value.dtype, name)
        return value.detach().cpu().double().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind in "OSU":  # objects (e.g. a pandas object column) or strings: numbers only
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must hold real numbers, got {value!r:.80}") from err
    check_real_dtype(arr.dtype, name)
    return arr.astype(np.float64)


def keep_prob_to_tensor(init_keep_prob, n_features: int, device) -> Tensor:
    """init_keep_prob (scalar or (n_features,)) -> float32 (n_features,) clamped to [1e-6, 1 - 1e-6]."""
    arr = real_array(init_keep_prob, "init_keep_prob")
    if np.isnan(arr).any() or (arr < 0).any() or (arr > 1).any():
        raise ValueError("init_keep_prob must lie in [0, 1] (the initial probability of keeping each weight)")
    if arr.ndim == 0:
        p = torch.full((n_features,), float(arr), device=device)
    elif arr.shape != (n_features,):
        raise ValueError(f"init_keep_prob array must have shape ({n_features},), got {arr.shape}")
    else:
        p = torch.tensor(arr, dtype=torch.float32, device=device)
    return p.clamp(1e-6, 1 - 1e-6)


def check_positive(name: str, value, *, strict: bool = True) -> None:
    """TypeError unless a real number; ValueError unless finite and ``> 0`` (``>= 0`` with ``strict=False``)."""
    check_number(name, value, 0, open_lo=strict)


def as_target_vector(y, n_rows: int, device, dtype) -> Tensor:
    """Targets (list, numpy or torch) -> finite 1-D tensor of length ``n_rows >= 1`` (a copy, never a view of ``y``)."""
    if n_rows == 0:
        raise ValueError("M has no rows (targets): fitting needs at least one target")
    values = real_array(y, "y")
    t = torch.tensor(values, dtype=dtype, device=device)
    t = t.reshape(-1) if t.dim() == 2 and 1 in t.shape else t
    if t.dim() != 1 or t.numel() != n_rows:
        raise ValueError(f"y must be a vector with one entry per row of the matrix ({n_rows}), got shape {tuple(t.shape)}")
    if not np.isfinite(values).all():
        raise ValueError("y contains NaN or inf; drop or impute those targets before fitting")
    if not torch.isfinite(t).all():
        raise ValueError(f"y reaches {np.abs(values).max():.3g}, beyond {dtype}'s range; rescale the targets, or "
                         "convert the model with .double()")
    return t


# --------------------------------------------------------------------------- sparse operand


def _check_scipy(M, name: str) -> None:
    """ValueError if the index arrays are out of range or indptr is not monotone (the dtype: :meth:`MatrixCache.get`)."""
    try:
        if hasattr(M, "indptr"):
            M.check_format(full_check=True)
        elif M.format == "coo" and M.nnz and not (0 <= M.row.min() and M.row.max() < M.shape[0] and 0 <= M.col.min() and M.col.max() < M.shape[1]):
            raise ValueError("a row or column index lies outside the shape")
    except (ValueError, IndexError) as err:
        raise ValueError(f"{name} is a malformed scipy matrix ({err}); rebuild it with scipy's constructors") from err


def _to_scipy_compressed(M, name: str) -> sp.csr_matrix | sp.csc_matrix:
    """Any matrix -> scipy CSR (CSC stays CSC: the household-major layout is built from either) of real values.  Scipy matrices are checked whole first (index arrays in
    range, indptr monotone: a corrupt one would crash scipy's own conversion); unsorted or duplicate
    indices are fine (duplicates are summed); float16/bfloat16 become float32 exactly; complex raises (torch
    and scipy matrices: :meth:`MatrixCache.get` checks their dtype before anything reads them)."""
    if sp.issparse(M):
        _check_scipy(M, name)
        return M if M.format in ("csr", "csc") else M.tocsr()
    if isinstance(M, Tensor):
        M = _stored_arrays(M, name)  # sparse: never densified
        if isinstance(M, tuple):
            fmt, shape, data, (index, other) = M
            if fmt == "coo":  # (index, other) = (rows, cols)
                return sp.csr_matrix((data, (index, other)), shape=shape)
            return (sp.csr_matrix if fmt == "csr" else sp.csc_matrix)((data, index, other), shape=shape)
    arr = np.asarray(M)
    arr = real_array(arr, name) if arr.dtype.kind in "OSUc" else arr
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (targets x features), got shape {arr.shape}")
    return sp.csr_matrix(arr.astype(np.float32) if arr.dtype == np.float16 else arr)


_FINGERPRINT_CHUNK = 1 << 20


def _as_tensor(a: np.ndarray) -> Tensor:
    """A zero-copy tensor view of ``a`` (read-only arrays too: the view is only read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(a)


_POSITION_STEP = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / phi, odd


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 words (wrapping arithmetic): a bijection of 64-bit words."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _words(a: np.ndarray) -> np.ndarray:
    """The uint64 words :func:`_array_hash` hashes: a float's bit pattern (float32 zero-extended; other floats as
    float64), an integer's or bool's value (sign-extended)."""
    if a.dtype.kind == "f":
        a = np.ascontiguousarray(a, dtype=a.dtype if a.dtype in (np.float32, np.float64) else np.float64)
        return a.view(np.uint32).astype(np.uint64) if a.dtype == np.float32 else a.view(np.uint64)
    return a.astype(np.int64).view(np.uint64)


def _array_hash(a: np.ndarray) -> int:
    """``sum_k mix(word(a[k]) + k * 2^64/phi) mod 2^64`` of a 1-D array, for the matrix cache's fingerprint: one
    parallel C++ pass over the array as stored (float32/float64/int32/int64, contiguous), else numpy a chunk at
    a time, with the same result.  For a given position k each term is a bijection of the entry, so changing any
    one entry changes the hash, exactly, however small the change and however large the others (a sum of the
    values loses a small change to rounding); entries trading places change it too, but for a 2^-64 chance."""
    if _C is not None and a.dtype in (np.float32, np.float64, np.int32, np.int64) and a.flags.c_contiguous:
        return _C.content_hash(_as_tensor(a)) % 2**64
    total = 0
    with np.errstate(over="ignore"):
        for start in range(0, len(a), _FINGERPRINT_CHUNK):
            words = _words(a[start : start + _FINGERPRINT_CHUNK])
            placed = words + np.arange(start, start + len(words), dtype=np.uint64) * _POSITION_STEP
            total += int(_mix(placed).sum(dtype=np.uint64))
    return total % 2**64


def _stored_arrays(M: Tensor, name: str):
    """A torch matrix's stored arrays as numpy views (no copy on CPU, except float16 and bfloat16, which numpy
    lacks): the array of a dense tensor, ``(format, shape, values, index arrays)`` of a sparse one, in scipy's
    order (csr: indices, indptr; csc: indices, indptr; coo, coalesced: rows, cols).  What :func:`_fingerprint`
    hashes (a version counter would not do: writes through ``.data`` or a numpy view bump none, and inference
    tensors have none) and :func:`_to_scipy_compressed` converts."""
    if M.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (shape only, no values); pass the real matrix")
    M = M.detach().cpu()
    if M.dtype in (torch.float16, torch.bfloat16):
        M = M.float()
    shape = tuple(M.shape)
    if M.layout == torch.strided:
        return M.numpy()
    if M.layout == torch.sparse_csr:
        return "csr", shape, M.values().numpy(), (M.col_indices().numpy(), M.crow_indices().numpy())
    if M.layout == torch.sparse_csc:
        return "csc", shape, M.values().numpy(), (M.row_indices().numpy(), M.ccol_indices().numpy())
    M = (M if M.layout == torch.sparse_coo else M.to_sparse_coo()).coalesce()  # BSR/BSC too; duplicates summed
    if M.sparse_dim() != 2 or M.dense_dim() != 0:
        raise ValueError(f"{name} must be a 2-D matrix, got a sparse tensor of shape {shape}")
    rows, cols = M.indices().numpy()
    return "coo", shape, M.values().numpy(), (rows, cols)


def _sparse_fingerprint(fmt: str, shape: tuple, data: np.ndarray, index_arrays) -> tuple:
    """Format, shape, nnz and the :func:`_array_hash` of the values and of each index array."""
    return (fmt, tuple(shape), len(data), _array_hash(data),
            *(_array_hash(idx) for idx in index_arrays if idx is not None and len(idx)))


def _fingerprint(M, name: str) -> tuple:
    """Cheap O(nnz) content summary: shape, nnz and position-keyed hashes of the stored arrays (a torch
    tensor's: :func:`_stored_arrays`).  A GPU tensor is not read back (a copy of the matrix at every call):
    its version counter stands in, which writes through ``.data`` bump not, as for the layers' eval cache."""
    if isinstance(M, Tensor) and M.is_cuda and not M.is_inference():
        return (M.layout, tuple(M.shape), M._version, M.device)
    if isinstance(M, Tensor):
        stored = _stored_arrays(M, name)
        return (M.layout,) + (_sparse_fingerprint(*stored) if isinstance(stored, tuple) else _fingerprint(stored, name))
    if sp.issparse(M):
        if M.format not in ("csr", "csc", "coo"):  # bsr, dia, lil, dok: their stored arrays are not flat; hashed as COO
            M = M.tocoo()
        return _sparse_fingerprint(M.format, M.shape, M.data, [getattr(M, a, None) for a in ("indices", "indptr", "row", "col")])
    arr = np.asarray(M)
    flat = np.ascontiguousarray((real_array(arr, name) if arr.dtype.kind in "OSUc" else arr).reshape(-1))
    return (arr.shape, arr.dtype.kind, _array_hash(flat))


class MatrixCache:
    """Remembers the last matrix converted to a :class:`~l0fast.ops.HouseholdMajorMatrix`.

    A hit needs the *same live object* (weak reference) with the same content
    fingerprint, device and dtype; anything else is converted afresh.
    """

    def __init__(self) -> None:
        self._ref = None
        self._key = None
        self.operand: HouseholdMajorMatrix | None = None
        self._coo: Tensor | None = None

    def __reduce__(self):
        """Pickled (``torch.save(model)``) and copied empty: the weak reference to the caller's matrix cannot be
        pickled, and a loaded model converts the first matrix it is given."""
        return (MatrixCache, ())

    def coo(self) -> Tensor | None:
        """The cached matrix as a coalesced sparse COO tensor (built on first request)."""
        if self.operand is not None and self._coo is None:
            self._coo = self.operand.to_sparse_coo()
        return self._coo

    def get(self, M, n_cols: int, device, dtype, name: str = "M") -> HouseholdMajorMatrix:
        """The operand for ``M``.  Inside torch.func transforms too: the matrix is data, converted outside the
        transform (whose wrapped tensors the C++ fingerprint and conversion could not read)."""
        if in_functorch_transform():
            with torch._C._DisableFuncTorch():
                return self._get(M, n_cols, device, dtype, name)
        return self._get(M, n_cols, device, dtype, name)

    def _get(self, M, n_cols: int, device, dtype, name: str) -> HouseholdMajorMatrix:
        if dtype not in (torch.float32, torch.float64):  # the model's
            raise TypeError(f"the model is {dtype}, but its products with {name} run in float32 or float64: convert "
                            "the model with .float() or .double()")
        op = self.operand
        if op is not None and isinstance(M, Tensor) and M is self._coo:
            return op
        if isinstance(M, Tensor) or sp.issparse(M):  # before the hashes: complex values would be cast, with a warning
            check_real_dtype(M.dtype, name)
        if sp.issparse(M) and M.ndim != 2:  # scipy's sparse arrays may be 1-D
            raise ValueError(f"{name} must be a 2-D matrix, got a {M.ndim}-D scipy sparse array of shape {M.shape}; "
                             f"reshape it to (rows, {n_cols})")
        key = (_fingerprint(M, name), torch.device(device), dtype)  # one O(nnz) pass, hit or miss
        if self._ref is not None and self._ref() is M and self._key == key:
            return op
        op = self._convert(M, n_cols, device, dtype, name)
        try:
            self._ref = weakref.ref(M)
            self._key = key
        except TypeError:  # not weak-referenceable (e.g. a list): never cached
            self._ref, self._key = None, None
        self.operand, self._coo = op, None
        return op

    @staticmethod
    def _convert(M, n_cols: int, device, dtype, name: str) -> HouseholdMajorMatrix:
        matrix = _to_scipy_compressed(M, name)
        if matrix.shape[1] != n_cols:
            transposed = f" ({name}.T: its {n_cols} rows are the households)" if matrix.shape[0] == n_cols else ""
            raise ValueError(f"{name} has {matrix.shape[1]} columns but the model has n_features={n_cols}; pass a (n_targets, "
                             f"{n_cols}) matrix{transposed}")
        compact = engine_backend(torch.device(device).type) == "cpp"  # uint16 rows: C++ kernels only
        return HouseholdMajorMatrix.from_scipy(matrix, dtype, compact_rows=compact, name=name).to(device)


# --------------------------------------------------------------------------- model


class SparseL0Linear(HasRngState):
    """Linear regression ``y = X @ (weight * z) + bias`` with hard-concrete gates ``z`` on the features.

    Args (as l0-python 0.6.2): ``n_features``; ``fit_intercept``; ``beta``,
    ``gamma``, ``zeta`` (gate temperature and stretch); ``init_keep_prob``
    (initial P(gate open)); ``device``; ``seed`` (seeds the ``log_alpha`` init
    jitter and the gate-noise stream; ``None`` draws from torch's global RNG).

    >>> import numpy as np, scipy.sparse as sp
    >>> X = sp.random(100, 20, density=0.2, format="csr", random_state=0)
    >>> model = SparseL0Linear(20, seed=0).fit(X, X @ np.arange(20.0), epochs=50)
    >>> model.predict(X).shape
    torch.Size([100])
    """

    LOG_ALPHA_BOUND: float = LOG_ALPHA_BOUND  # the kernels' clamp of |log_alpha|: a constant, read only

    def __init__(
        self,
        n_features: int,
        fit_intercept: bool = True,
        beta: float = 2 / 3,
        gamma: float = -0.1,
        zeta: float = 1.1,
        init_keep_prob: float = 0.5,
        device: str | torch.device = "cpu",
        seed: int | None = None,
    ):
        super().__init__()
        check_gate_params(n_features, beta, gamma, zeta)
        self.n_features, self.fit_intercept = int(n_features), fit_intercept
        self.beta, self.gamma, self.zeta = beta, gamma, zeta
        self.device, self.seed = check_device(device), seed
        self._generator = seeded_generator(seed, self.device)
        gate_seed = seed_after_init(seed, self.device)

        self.weight = nn.Parameter(torch.zeros(self.n_features, device=self.device))
        if fit_intercept:
            self.bias = nn.Parameter(torch.zeros(1, device=self.device))
        else:
            self.register_parameter("bias", None)
        if np.ndim(init_keep_prob) != 0:
            raise ValueError(f"init_keep_prob must be a scalar probability for SparseL0Linear, got shape {np.shape(init_keep_prob)}")
        keep_prob_to_tensor(init_keep_prob, 1, "cpu")  # validates the range
        p = min(max(float(init_keep_prob), 1e-6), 1 - 1e-6)
        mu = torch.log(torch.tensor(p / (1 - p))).item()
        noise = torch.randn(self.n_features, generator=self._generator, device=self.device)
        self.log_alpha = nn.Parameter(mu + 0.01 * noise)
        register_rng_state(self, gate_seed(), self.device)  # after the jitter: l0's init for a given global seed
        self._matrices = MatrixCache()

    @property
    def _cached_X_torch(self) -> Tensor | None:
        """The last converted input as a sparse COO tensor (l0-python compatibility)."""
        return self._matrices.coo()

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, fit_intercept={self.fit_intercept}, beta={self.beta:.4g}, gamma={self.gamma}, zeta={self.zeta}"

    def _convert_sparse_to_torch(self, X_sparse) -> Tensor:
        """``X_sparse`` -> (n_samples, n_features) torch sparse COO tensor, cached per matrix object and content."""
        self._operand(X_sparse)
        return self._matrices.coo()

    def _operand(self, X) -> HouseholdMajorMatrix:
        return self._matrices.get(X, self.n_features, self.weight.device, self.weight.dtype, name="X")

    def _sample_gates(self) -> Tensor:
        """Hard-concrete gate sample (n_features,); advances the noise stream."""
        return sample_gates(self.log_alpha, self.rng_state, self.beta, self.gamma, self.zeta)

    def get_deterministic_gates(self) -> Tensor:
        """Eval-mode gates ``clamp(sigmoid(log_alpha / beta) * (zeta - gamma) + gamma, 0, 1)``."""
        return hard_concrete_mean(self.log_alpha, self.beta, self.gamma, self.zeta)

    def _intercept(self) -> bool:
        """Whether predictions add ``bias``: ``fit_intercept`` (which may be switched off after construction, as
        in l0-python) and a bias to add."""
        return bool(self.fit_intercept) and self.bias is not None

    def _predictions(self, product, deterministic: bool) -> Tensor:
        """``product(weight * z) + bias`` (n_samples,): ``product`` multiplies X by a vector (n_features,)."""
        gates = self.get_deterministic_gates() if deterministic else self._sample_gates()
        y = product(self.weight * gates)
        return y + self.bias if self._intercept() else y

    def _forward_operand(self, op: HouseholdMajorMatrix, deterministic: bool) -> Tensor:
        return self._predictions(lambda gated: gated_sparse_product(op, gated), deterministic)

    def forward(self, X, deterministic: bool = False) -> Tensor:
        """Predictions (n_samples,) for X (n_samples, n_features): scipy sparse, torch sparse or dense.  A torch X
        that requires grad gets its gradient, from torch's matrix product (the fused one gives X none)."""
        op = self._operand(X)  # checks X, also where torch's product serves
        if isinstance(X, Tensor) and X.requires_grad and torch.is_grad_enabled():
            X = X.to(self.weight.device, self.weight.dtype)
            return self._predictions(lambda gated: (X @ gated.unsqueeze(1)).squeeze(1), deterministic)
        return self._forward_operand(op, deterministic)

    def get_l0_penalty(self) -> Tensor:
        """Expected number of open gates, a differentiable 0-dim tensor."""
        return l0_penalty(self.log_alpha, self.beta, self.gamma, self.zeta)

    def get_sparsity(self) -> float:
        """Fraction of features whose deterministic gate is below 0.01."""
        with torch.no_grad():
            return (self.get_deterministic_gates() < 0.01).float().mean().item()

    def get_selected_features(self, threshold: float = 0.01) -> Tensor:
        """Indices of features whose deterministic gate exceeds ``threshold``."""
        check_number("threshold", threshold, 0, 1)
        with torch.no_grad():
            return torch.where(self.get_deterministic_gates() > threshold)[0]

    def fit(self, X_sparse, y, lambda_reg: float = 0.01, lr: float = 0.01, epochs: int = 1000, verbose: bool = False, verbose_freq: int = 100) -> "SparseL0Linear":
        """Adam on ``mean((y - X @ (weight * z) - bias)^2) + lambda_reg * E[L0]``.

        Re-initializes ``weight ~ N(0, 0.1)`` and ``bias = mean(y)`` first, as l0-python does.
        """
        _check_fit_args(lr=lr, epochs=epochs, verbose=verbose, verbose_freq=verbose_freq, lambda_reg=lambda_reg)
        op = self._operand(X_sparse)
        y = as_target_vector(y, op.num_rows, self.weight.device, self.weight.dtype)
        state = [*self.named_parameters(), ("rng_state", self.rng_state)]
        before = {name: t.detach().clone() for name, t in state}  # put back if the fit diverges

        def put_back(saved: dict) -> None:
            with torch.no_grad():
                for name, t in state:
                    t.copy_(saved[name])

        nn.init.normal_(self.weight, 0, 0.1)
        if self._intercept():
            self.bias.data.fill_(y.mean())
        params = [self.weight, self.log_alpha] + ([self.bias] if self._intercept() else [])
        optimizer = torch.optim.Adam(params, lr=lr)
        steps, refused = 0, None
        try:
            for epoch in range(epochs):
                mse = (y - self._forward_operand(op, deterministic=False)).pow(2).mean()
                l0 = self.get_l0_penalty()
                loss = mse + lambda_reg * l0
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
                if verbose and (epoch + 1) % verbose_freq == 0:
                    n_active = int((self.get_deterministic_gates().detach() > 0.01).sum())
                    print(f"Epoch {epoch + 1:4d}: loss={loss.item():.4f}, mse={mse.item():.4f}, l0={l0.item():.2f}, active={n_active}")
        except ValueError as error:  # the gate ops refuse NaN logits: divergence, if the parameters are NaN
            refused = error
        with kept_if_diverged("SparseL0Linear.fit", lambda: before, put_back):
            # one host read per fit; Adam's second moments overflowed to inf freeze their parameters
            moments = [optimizer.state[p]["exp_avg_sq"] for p in params if p in optimizer.state]
            raise_if_diverged(torch.zeros(0, 1), params + moments, steps, "weight or log_alpha",
                              "lower lr (the learning rate) or rescale y")
        if refused is not None:
            raise refused
        return self

    def predict(self, X_sparse) -> Tensor:
        """Deterministic-gate predictions (n_samples,), without autograd."""
        with torch.no_grad():
            return self.forward(X_sparse, deterministic=True)


def _check_fit_args(*, lr, epochs, verbose, verbose_freq, **lambdas) -> None:
    check_positive("lr", lr)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if verbose and (isinstance(verbose_freq, bool) or not isinstance(verbose_freq, (int, np.integer)) or verbose_freq <= 0):
        raise ValueError(f"verbose_freq must be a positive int when verbose=True, got {verbose_freq!r}")
    for name, value in lambdas.items():
        check_positive(name, value, strict=False)
