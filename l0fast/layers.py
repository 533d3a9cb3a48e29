"""L0-regularized layers: weights (or channels) multiplied by Hard Concrete gates.

Gate attributes are l0-python's: ``weight_gates`` (per weight) or
``channel_gates`` (per output channel / per depthwise channel), so
``state_dict`` keys match.  ``init_sparsity`` sets the gates' ``init_mean = 1 - init_sparsity``.

No ``from __future__ import annotations`` here or in :mod:`l0fast.distributions`: ``torch.fx.symbolic_trace``
keeps a module's ``forward`` annotations in the traced module, which does not pickle with string ones.
"""

import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._capability import _C
from .distributions import HardConcrete, _check_fraction, _check_size, check_module, has_backward_hooks, layer_may_fuse
from .finite_check import check_finite
from .ops.registry import fx_tracing, in_functorch_transform, jit_tracing
from .ops.hard_concrete import check_number
from .rng import reseed, seed_after_init


class InputDtypeError(TypeError, RuntimeError):
    """An input of a dtype the layer cannot take.  Also a RuntimeError, the error torch's ``F.linear`` and
    convolutions raise for it (and so l0-python's layers): code written for either catches it."""


class InputShapeError(ValueError, RuntimeError):
    """An input of a shape the layer cannot take.  Also a RuntimeError, as :class:`InputDtypeError`."""


def _check_input(layer: str, x: Tensor, ndims: tuple[int, ...] | None, dim: int, size: int, expected: str, dtype=None,
                 gate_dtype=None) -> None:
    """:class:`InputShapeError` unless ``x.dim() in ndims`` (None: any >= 1) and ``x.shape[dim] == size`` (``expected``: the
    shape's text, ``{size}`` standing for ``size``); :class:`InputDtypeError` unless
    ``x`` is a tensor of ``dtype`` (the layer's; under autocast, which casts floating tensors other than float64,
    any such dtype when ``dtype`` is one too), or, given ``gate_dtype`` (an input multiplied by gates first, as
    L0DepthwiseConv2d's), one whose product with the gates has that dtype.  NaN and inf:
    :func:`~l0fast.finite_check.check_finite`.
    While ``torch.jit.trace`` records, sizes are traced tensors: they are not compared (F.linear or the
    convolution still refuses a wrong shape), so the trace meets no branch on them; under
    ``torch.fx.symbolic_trace`` the input is a Proxy, with nothing to check."""
    if not isinstance(x, Tensor):
        if fx_tracing():
            return
        raise TypeError(f"{layer}: input must be a torch.Tensor, got {type(x).__name__}; convert it with "
                        f"torch.as_tensor(x, dtype={dtype or torch.float32})")
    bad_ndim = x.dim() not in ndims if ndims else x.dim() == 0
    if bad_ndim or (not jit_tracing() and x.shape[dim] != size):
        raise InputShapeError(f"{layer}: expected input of shape {expected.format(size=size)}, got {tuple(x.shape)}")
    got = x.dtype if gate_dtype is None else torch.promote_types(x.dtype, gate_dtype)
    if dtype is not None and got != dtype and not (
            torch.is_autocast_enabled(x.device.type) and _autocast_casts(got) and _autocast_casts(dtype)):
        either = f" or convert the layer with .to({got})" if got.is_floating_point else ""
        raise InputDtypeError(f"{layer}: input has dtype {x.dtype} but the layer's weights are {dtype}; pass input.to({dtype}){either}")


def _gate_logits(gates: nn.Module) -> Tensor | None:
    """``gates.qz_logits``, or None for a gate module without them; read straight from its ``_parameters`` when
    registered there, as :func:`_registered` reads (``nn.Module.__getattr__`` took ~1 us of a layer's input check),
    except under ``torch.fx.symbolic_trace``, whose ``__getattr__`` gives the Proxy the checks stand aside for."""
    entries = getattr(gates, "_parameters", None)
    if entries is None or "qz_logits" not in entries or fx_tracing():
        return getattr(gates, "qz_logits", None)
    return entries["qz_logits"]


def _gated_dtype(weight: Tensor, gates: nn.Module) -> torch.dtype:
    """The dtype of ``weight * gates``: the weight's, unless the gate logits are of another dtype (a gate
    module of another kind, without ``qz_logits``: the weight's)."""
    logits = _gate_logits(gates)
    if not isinstance(logits, Tensor) or logits.dtype == weight.dtype:
        return weight.dtype
    return torch.promote_types(weight.dtype, logits.dtype)


def _check_mixed_dtypes(layer: str, x, weight: Tensor, gates: nn.Module, bias: Tensor | None, gated_input: bool = False) -> None:
    """InputDtypeError for a layer whose gate logits' dtype is not its weight's (a gate module converted alone)
    and an input that does not make its dtypes meet, naming the fix that works: the input converted, or the
    whole layer.  The weight times the gates meets the input (``gated_input``: the input times the gates meets the
    weight, as in L0DepthwiseConv2d), and the bias must have that dtype.  Autocast casts them to one dtype itself."""
    logits = _gate_logits(gates)
    if (not isinstance(x, Tensor) or not isinstance(logits, Tensor) or logits.dtype == weight.dtype
            or torch.is_autocast_enabled(x.device.type)):
        return
    needed = weight.dtype if gated_input else torch.promote_types(weight.dtype, logits.dtype)
    fixable = (bias is None or bias.dtype == needed) and (not gated_input or torch.promote_types(needed, logits.dtype) == needed)
    meets = (torch.promote_types(x.dtype, logits.dtype) if gated_input else x.dtype) == needed
    if fixable and meets:
        return
    fix = f"pass input.to({needed}), or convert the whole layer to one dtype" if fixable else "convert the whole layer to one dtype"
    example = f", e.g. .to({x.dtype})" if x.dtype.is_floating_point else ""
    raise InputDtypeError(f"{layer}: input has dtype {x.dtype}, and its weight is {weight.dtype} and its gate logits "
                          f"{logits.dtype}: {fix}{example}")


# devices whose autocast runs linear and conv2d in its own dtype (so a weight cast ahead gives the same result)
_AUTOCAST_DEVICES = ("cpu", "cuda")


def _autocast_casts(dtype: torch.dtype) -> bool:
    """Whether autocast casts a tensor of ``dtype`` to its own dtype (floating, not float64)."""
    return dtype.is_floating_point and dtype != torch.float64


def _autocast_copy(weight: Tensor, casts: dict) -> Tensor:
    """``weight`` in the autocast dtype of its device, cast once into ``casts`` (dtype -> copy): autocast casts
    a weight at every call unless it is a parameter, and the eval cache's gated weight is not.  Unchanged
    where autocast would not cast it."""
    device = "cpu" if weight.is_cpu else weight.device.type
    if device not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(device) or not _autocast_casts(weight.dtype):
        return weight
    dtype = torch.get_autocast_dtype(device)
    if dtype not in casts:
        casts[dtype] = weight.to(dtype)
    return casts[dtype]


def _check_conv_args(stride, padding) -> None:
    """ValueError unless ``stride`` is a positive int (or pair) and ``padding`` an int (or pair) >= 0, "same" or "valid"."""
    for name, value, low in (("stride", stride, 1), ("padding", padding, 0)):
        if name == "padding" and value in ("same", "valid"):
            continue
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low for v in _pair(value)):
            raise ValueError(f"{name} must be an int >= {low} or a pair of them, got {value!r}")


def _check_spatial(layer: str, x: Tensor, kernel_size: tuple[int, int], padding) -> None:
    """:class:`InputShapeError` unless the padded input is at least the kernel in both spatial dims (not while
    ``torch.jit.trace`` or ``torch.fx.symbolic_trace`` records, see :func:`_check_input`)."""
    if padding == "same" or jit_tracing() or fx_tracing():
        return
    pad = (0, 0) if padding == "valid" else _pair(padding)
    if any(x.shape[-2 + i] + 2 * pad[i] < kernel_size[i] for i in range(2)):
        raise InputShapeError(f"{layer}: input of spatial size {tuple(x.shape[-2:])} (padding {pad}) is smaller than kernel_size={kernel_size}; "
                         "pad the input or use a smaller kernel")


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    pair = (v, v) if not isinstance(v, (tuple, list)) else tuple(v)
    if len(pair) != 2:
        raise ValueError(f"kernel_size, stride and padding must be an int or a pair of ints, got {v!r}")
    return pair


def _registered(module: nn.Module, name: str, registry: str = "_parameters") -> Any:
    """``getattr(module, name)``, read straight from ``module._parameters`` (or ``_modules``) when registered there:
    nn.Module.__getattr__ runs only after the ordinary lookup has failed (~0.4 us a read, a third of what a batch-1
    eval forward adds to nn.Linear's).  A name moved out of the registry (torch.nn.utils.prune, parametrize) is read by getattr."""
    entries = module.__dict__[registry]
    return entries[name] if name in entries else getattr(module, name)


def _eval_record(weight: Tensor, gates: HardConcrete, logits: Tensor) -> Tensor:
    """What an eval cache entry's gated weight is a function of, besides the identity of ``weight`` and
    ``logits`` (``l0fast._C.eval_record``): their version counters, storage, dtypes and sizes, the gate parameters,
    and on CPU a copy of the middle row, the middle column and 16 spread elements of each, which sees a
    write through ``.data`` (no version counter sees it) when it changes any of them, as a whole row or column
    written, a random mask and an EMA update of every element do."""
    return _C.eval_record(weight, logits, gates.temperature, gates.gamma, gates.zeta)


def _untracked(weight: Tensor, logits: Tensor) -> bool:
    """Whether a product of ``weight`` and gates from ``logits`` could not be known current: functorch's
    wrapped parameters have no storage, inference tensors (made under ``torch.inference_mode``) no version
    counter that in-place changes bump, and without the C++ extension there is no record to compare."""
    return _C is None or in_functorch_transform() or weight.is_inference() or logits.is_inference()


def _gates(init_sparsity: float, temperature: float, *size: int) -> HardConcrete:
    """The layer's gates, on a placeholder stream: the layer gives them their seed after its init (:func:`reseed`
    with :func:`seed_after_init`)."""
    _check_fraction(init_sparsity, "init_sparsity")
    return HardConcrete(*size, temperature=temperature, init_mean=1.0 - init_sparsity, seed=0)


class _L0Weighted(nn.Module):
    """Shared parts of L0Linear / L0Conv2d: kaiming init and the penalties."""

    structured = False  # L0Conv2d(structured=True): one gate per output channel

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _gate_module(self) -> HardConcrete:
        return _registered(self, "channel_gates" if self.structured else "weight_gates", "_modules")

    def _gated_weight(self, weight: Tensor, gates: HardConcrete) -> Tensor:
        """``weight * gates``, one gate per weight or (structured) per output channel.  The gate module's mode
        decides, as in l0-python: sampled gates in training, their mean in eval.  In inference (mean gates,
        autograd off, not compiling or tracing (jit, fx), a gate module :func:`layer_may_fuse`) the product is computed
        once and reused until the weight, the gate logits or the gate parameters change (:func:`_eval_record`),
        and under autocast cast once too, so an eval forward costs what the plain layer costs."""
        if not layer_may_fuse(gates):  # hooks to run, or a gate module's own sampling: called, as in l0-python
            self.__dict__.pop("_eval_weight", None)
            return self._times_gates(weight, gates)
        logits = _registered(gates, "qz_logits")
        # torch._C._is_tracing is jit_tracing without the 0.09 us of torch.jit.is_tracing's wrapping, which
        # torch.compile needs to read it: it never gets here, is_compiling() being True then.
        # a dispatch mode (FakeTensorMode, FlopCounterMode, ...) sees or replaces the product: computed, not kept
        if (gates.training or torch.is_grad_enabled() or torch.compiler.is_compiling()
                or torch._C._is_tracing() or fx_tracing() or torch._C._len_torch_dispatch_stack()):
            self.__dict__.pop("_eval_weight", None)
            if (gates.training and logits.shape.numel() == weight.shape.numel() and logits.dtype == weight.dtype
                    and not has_backward_hooks(gates)):
                return gates.sample_gated(weight)  # weight * gates and the penalty from one pass
            return self._times_gates(weight, gates)
        # The entry holds the tensors it was computed from: a weight made afresh at every forward (prune,
        # parametrize) is a new object, not a new tensor that reused the freed one's storage (same data_ptr,
        # version 0).  A new dtype or device, or ``.data =``, gives new storage: data_ptr covers them.
        cached = self.__dict__.get("_eval_weight")
        if (cached is None or cached[0] is not weight or cached[1] is not logits
                or not _C.eval_record_current(weight, logits, cached[2], gates.temperature, gates.gamma, gates.zeta)):
            if _untracked(weight, logits):  # computed, not kept
                self.__dict__.pop("_eval_weight", None)
                return self._times_gates(weight, gates)
            cached = (weight, logits, _eval_record(weight, gates, logits), self._times_gates(weight, gates), {})
            self._eval_weight = cached
        # torch._C._is_any_autocast_enabled: 0.07 us, a third of the public per-device test
        return _autocast_copy(cached[3], cached[4]) if torch._C._is_any_autocast_enabled() else cached[3]

    def __getstate__(self) -> dict:
        """Pickled (``torch.save(model)``) and deep-copied without the eval cache, a tensor as large as the
        weight that the copy recomputes at its first inference forward."""
        state = super().__getstate__()
        state.pop("_eval_weight", None)
        return state

    def _times_gates(self, weight: Tensor, gates: HardConcrete) -> Tensor:
        """``weight * gates()``, one gate per weight or (structured) per output channel."""
        return weight * gates().view((-1, 1, 1, 1) if self.structured else weight.shape)

    def get_l0_penalty(self) -> Tensor:
        """Expected number of active gates (differentiable)."""
        return self._gate_module().get_penalty()

    def get_l2_penalty(self) -> Tensor:
        """``sum(weight ** 2)`` when ``use_l2``, else 0."""
        if not self.use_l2:
            return torch.tensor(0.0, device=self.weight.device)
        return (self.weight**2).sum()

    def get_sparsity(self) -> float:
        """Expected fraction of zero gates."""
        return self._gate_module().get_sparsity()


class L0Linear(_L0Weighted):
    """``y = x @ (W * g)^T + b`` with gates ``g`` of shape ``(out_features, in_features)``.

    x: (*, in_features) -> (*, out_features).

    >>> L0Linear(10, 5, init_sparsity=0.5, seed=0)(torch.randn(3, 10)).shape
    torch.Size([3, 5])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        temperature: float = 0.5,
        init_sparsity: float = 0.5,
        use_l2: bool = False,
        *,
        seed: int | None = None,
    ):
        super().__init__()
        self.in_features = _check_size(in_features, "in_features")
        self.out_features = _check_size(out_features, "out_features")
        self.use_l2 = use_l2
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.register_parameter("bias", nn.Parameter(torch.empty(out_features)) if bias else None)
        gate_seed = seed_after_init(seed, self.weight.device)
        self.weight_gates = _gates(init_sparsity, temperature, out_features, in_features)
        self.reset_parameters()
        reseed(self.weight_gates, gate_seed())

    def forward(self, input: Tensor) -> Tensor:
        weight, gates = _registered(self, "weight"), _registered(self, "weight_gates", "_modules")
        if gates.training:
            self._check_input(input, weight)  # before the gates draw their noise
        try:
            out = None if gates.training else self._cached_forward(input, weight, gates)
            if out is not None:
                return out
            out = F.linear(input, self._gated_weight(weight, gates), _registered(self, "bias"))
        except (TypeError, RuntimeError):
            self._check_input(input, weight)  # the clear error, when the input is what F.linear refused
            raise
        return check_finite("L0Linear", input, out)

    def _cached_forward(self, input: Tensor, weight: Tensor, gates: HardConcrete) -> Tensor | None:
        """The eval forward from a current eval cache entry (:meth:`_gated_weight`) in one C++ call, the record's
        comparison, F.linear and the NaN/inf check (``l0fast._C.cached_linear``): a batch-1 eval forward then costs
        what nn.Linear's does.  None, for the general path to take the call, wherever that path would do more:
        compiling or fx tracing, a tensor subclass, a gate module the layer must call (:func:`layer_may_fuse`), no
        entry or one for other tensors, and what the C++ call leaves to it (autograd, jit tracing, modes, autocast,
        a stale record, an input of another dtype or width or holding NaN or inf)."""
        cached = self.__dict__.get("_eval_weight")
        if (cached is None or type(input) is not Tensor or torch.compiler.is_compiling() or fx_tracing()
                or cached[0] is not weight or not layer_may_fuse(gates)):
            return None
        logits = _registered(gates, "qz_logits")
        if cached[1] is not logits:
            return None
        return _C.cached_linear(input, cached[3], _registered(self, "bias"), weight, logits, cached[2],
                                gates.temperature, gates.gamma, gates.zeta)

    def _check_input(self, input: Tensor, weight: Tensor) -> None:
        """InputDtypeError/InputShapeError naming the fix for an input that is not ``(*, in_features)`` of the gated
        weight's dtype.  F.linear refuses every such input too, so when the gates draw no noise (eval) this runs
        only after F.linear has failed: ~0.3 us of a batch-1 eval forward, which costs ~12 us in all."""
        gates = _registered(self, "weight_gates", "_modules")
        _check_mixed_dtypes("L0Linear", input, weight, gates, _registered(self, "bias"))
        _check_input("L0Linear", input, None, -1, self.in_features, "(*, in_features={size})", _gated_dtype(weight, gates))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class L0Conv2d(_L0Weighted):
    """``conv2d(x, W * g, b)`` with per-weight gates ``(out, in * kh * kw)`` or,
    ``structured=True``, per-output-channel gates ``(out,)`` named ``channel_gates``.

    x: (N, in_channels, H, W) or (in_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        temperature: float = 0.5,
        init_sparsity: float = 0.5,
        structured: bool = False,
        use_l2: bool = False,
        *,
        seed: int | None = None,
    ):
        super().__init__()
        self.in_channels = _check_size(in_channels, "in_channels")
        self.out_channels = _check_size(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size)
        for k in self.kernel_size:
            _check_size(k, "kernel_size")
        _check_conv_args(stride, padding)
        self.stride = stride
        self.padding = padding
        self.structured = structured
        self.use_l2 = use_l2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.register_parameter("bias", nn.Parameter(torch.empty(out_channels)) if bias else None)
        gate_seed = seed_after_init(seed, self.weight.device)
        if structured:
            self.channel_gates = _gates(init_sparsity, temperature, out_channels)
        else:
            fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
            self.weight_gates = _gates(init_sparsity, temperature, out_channels, fan_in)
        self.reset_parameters()
        reseed(self._gate_module(), gate_seed())

    def forward(self, input: Tensor) -> Tensor:
        weight = _registered(self, "weight")
        gates = self._gate_module()
        _check_mixed_dtypes("L0Conv2d", input, weight, gates, _registered(self, "bias"))
        _check_input("L0Conv2d", input, (3, 4), -3, self.in_channels, "(N, in_channels={size}, H, W)", _gated_dtype(weight, gates))
        _check_spatial("L0Conv2d", input, self.kernel_size, self.padding)
        check_finite("L0Conv2d", input)
        return F.conv2d(input, self._gated_weight(weight, gates), _registered(self, "bias"), self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias is not None}, structured={self.structured}"
        )


class L0DepthwiseConv2d(nn.Module):
    """Depthwise ``conv2d`` (``groups = in_channels``) of the channel-gated input ``x * g[c]``.

    x: (N, in_channels, H, W), or (in_channels, H, W) as a batch of one; the convolution is ``depthwise_conv``.
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        temperature: float = 0.5,
        init_sparsity: float = 0.5,
        *,
        seed: int | None = None,
    ):
        super().__init__()
        self.in_channels = _check_size(in_channels, "in_channels")
        self.kernel_size = _pair(kernel_size)
        for k in self.kernel_size:
            _check_size(k, "kernel_size")
        _check_conv_args(stride, padding)
        self.stride = stride
        self.padding = padding
        gate_seed = seed_after_init(seed, torch.empty(0).device)  # where nn.Conv2d makes its weight
        self.depthwise_conv = nn.Conv2d(
            in_channels, in_channels, self.kernel_size, stride=stride, padding=padding, groups=in_channels, bias=bias
        )
        self.channel_gates = _gates(init_sparsity, temperature, in_channels)
        reseed(self.channel_gates, gate_seed())

    def forward(self, input: Tensor) -> Tensor:
        c = self.in_channels
        weight = self.depthwise_conv.weight
        _check_mixed_dtypes("L0DepthwiseConv2d", input, weight, self.channel_gates, self.depthwise_conv.bias, gated_input=True)
        _check_input("L0DepthwiseConv2d", input, (3, 4), -3, c, "(N, in_channels={size}, H, W)", weight.dtype,
                     _gated_dtype(weight, self.channel_gates))
        _check_spatial("L0DepthwiseConv2d", input, self.kernel_size, self.padding)
        check_finite("L0DepthwiseConv2d", input)
        # (1, C, 1, 1) as l0-python: an unbatched (C, H, W) input gives a batch of one, (1, C, H', W')
        return self.depthwise_conv(input * self.channel_gates().view(1, -1, 1, 1))

    def get_l0_penalty(self) -> Tensor:
        """Expected number of active channels (differentiable)."""
        return self.channel_gates.get_penalty()

    def get_sparsity(self) -> float:
        """Expected fraction of zero channel gates."""
        return self.channel_gates.get_sparsity()

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, kernel_size={self.kernel_size}"


class SparseMLP(nn.Module):
    """Three :class:`L0Linear` layers with ReLU: ``input_dim -> hidden_dim -> hidden_dim -> output_dim``.

    x: (N, ...) flattened to (N, input_dim) -> (N, output_dim); with ``input_dim=1`` also (N,).
    """

    def __init__(
        self,
        input_dim: int = 784,
        hidden_dim: int = 256,
        output_dim: int = 10,
        init_sparsity: float = 0.5,
        temperature: float = 0.5,
        use_l2: bool = False,
    ):
        super().__init__()
        kw = dict(init_sparsity=init_sparsity, temperature=temperature, use_l2=use_l2)
        for value, name in ((input_dim, "input_dim"), (hidden_dim, "hidden_dim"), (output_dim, "output_dim")):
            _check_size(value, name)
        self.fc1 = L0Linear(input_dim, hidden_dim, **kw)
        self.fc2 = L0Linear(hidden_dim, hidden_dim, **kw)
        self.fc3 = L0Linear(hidden_dim, output_dim, **kw)
        self.use_l2 = use_l2

    def forward(self, x: Tensor) -> Tensor:
        one_value = self.fc1.in_features == 1 and isinstance(x, Tensor) and x.dim() == 1  # (N,) as l0-python: N inputs
        if not (isinstance(x, Tensor) and x.dim() >= 2 or one_value) and not fx_tracing():  # fx: a Proxy, nothing to check
            expected = f"SparseMLP: expected a batch (N, ...) of N inputs with input_dim={self.fc1.in_features} values each"
            if not isinstance(x, Tensor):  # a TypeError, as L0Linear's and L0Conv2d's
                raise TypeError(f"{expected}, got {type(x).__name__}; convert it with torch.as_tensor(x, dtype={self.fc1.weight.dtype})")
            raise InputShapeError(f"{expected}, got shape {tuple(x.shape)}")
        x = x.unsqueeze(1) if one_value else x.flatten(1)  # (N, input_dim); reshape(N, -1) refuses an empty batch
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def get_l0_loss(self) -> Tensor:
        """Sum of the L0 penalties of every gated layer."""
        loss = torch.tensor(0.0)
        for m in self.modules():
            if isinstance(m, (L0Linear, L0Conv2d, L0DepthwiseConv2d)):
                loss = loss + m.get_l0_penalty()
        return loss

    def get_l2_loss(self) -> Tensor:
        """Sum of the layers' L2 penalties (0 unless ``use_l2``)."""
        loss = torch.tensor(0.0)
        if self.use_l2:
            for m in self.modules():
                if hasattr(m, "get_l2_penalty"):
                    loss = loss + m.get_l2_penalty()
        return loss

    def get_sparsity_stats(self) -> dict[str, dict[str, Any]]:
        """``{layer name: {"sparsity": float, "active_params": float}}``."""
        return {
            name: {"sparsity": m.get_sparsity(), "active_params": m.get_l0_penalty().item()}
            for name, m in self.named_modules()
            if hasattr(m, "get_sparsity") and hasattr(m, "get_l0_penalty")
        }


@torch.no_grad()
def prune_model(model: nn.Module, threshold: float = 0.05) -> nn.Module:
    """Put ``model`` in eval mode and zero, in place, every weight (or channel) whose
    gate has ``P(gate != 0) <= threshold``.  Returns ``model``.
    """
    check_module(model)
    threshold = check_number("threshold", threshold, 0, 1)
    model.eval()
    for m in model.modules():
        if hasattr(m, "weight_gates"):
            mask = (m.weight_gates.get_active_prob() > threshold).to(m.weight.dtype)
            m.weight.mul_(mask.view(m.weight.shape) if m.weight.dim() > mask.dim() else mask)
        elif hasattr(m, "channel_gates"):
            weight = m.depthwise_conv.weight if isinstance(m, L0DepthwiseConv2d) else m.weight
            mask = (m.channel_gates.get_active_prob() > threshold).to(weight.dtype)
            weight.mul_(mask.view(-1, *(1,) * (weight.dim() - 1)))
    return model
