"""Hard Concrete gates (Louizos, Welling & Kingma 2017, arXiv:1712.01312).

With ``a = clamp(qz_logits, -20, 20)``, ``beta = temperature``,
``gamma = -stretch`` and ``zeta = 1 + stretch``:

- train: ``g = clamp(sigmoid((log u - log(1-u) + a) / beta) * (zeta - gamma) + gamma, 0, 1)``,
  ``u ~ U(1e-6, 1 - 1e-6)`` drawn by a counter-based Philox stream (``rng_state``);
- eval:  ``g = clamp(sigmoid(a / beta) * (zeta - gamma) + gamma, 0, 1)``;
- penalty (expected L0 norm): ``sum(sigmoid(a - beta * log(-gamma / zeta)))``.
"""

import math
import numbers

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _nn_module

from ._capability import _C
from .ops import hard_concrete_mean, l0_penalty
from .ops.hard_concrete import LOG_ALPHA_BOUND, check_number, refuse_gradient
from .ops.registry import fx_tracing, use_references
from .recompute import replaying
from .rng import HasRngState, register_rng_state, sample_gated

# Leaves of torch.fx.symbolic_trace graphs: called with Proxies, they are recorded, not traced through, so a
# traced module samples from the model's stream (and advances it) and runs the kernels, as the model does.
torch.fx.wrap("sample_gated")
torch.fx.wrap("hard_concrete_mean")
torch.fx.wrap("l0_penalty")

_INIT_MEAN_EPS = 1e-6


def _memo_stands_aside() -> bool:
    """Where the penalty memo is neither kept nor read: while a graph is captured (torch.compile and export,
    torch.jit.trace, torch.fx.symbolic_trace: the graph would hold the memo's tensor as a constant), inside
    torch.func transforms (wrapped tensors, no storage to key on) and under a dispatch mode (FakeTensorMode's
    tensors hold no values)."""
    return torch.compiler.is_compiling() or use_references() or fx_tracing() or bool(torch._C._len_torch_dispatch_stack())


class _BackwardRan:
    """Called by the backward of a sampling pass (``on_backward``): records that it ran.  It refers to nothing,
    so the graph that holds it (through the pass's autograd node) and the memo that holds the graph (through
    the penalty) form no reference cycle: a graph whose backward never runs is freed with its last tensor,
    not at the next garbage collection."""

    __slots__ = ("ran",)

    def __init__(self):
        self.ran = False

    def __call__(self) -> None:
        self.ran = True


class _PenaltyOfLastSample:
    """The penalty computed in the pass that sampled the last gates, for the next ``get_penalty()`` to take while
    it is current: same logits and gate parameters (:meth:`HardConcrete._logits_record`), its backward not yet
    run.  Taken once: every later call computes a penalty of its own, as l0-python's calls do, so changing one in
    place (``p *= lam``) or backpropagating each in its own graph leaves the others as they were.
    Never copied: a deep copy or a pickle of the module gets an empty one."""

    __slots__ = ("record", "penalty", "backward_ran")

    def __init__(self, record=None):
        self.record, self.penalty, self.backward_ran = record, None, _BackwardRan()

    def take(self, gates: "HardConcrete") -> Tensor | None:
        """The pass's penalty if it is current and not taken yet (it is then taken), else None."""
        usable = (self.penalty is not None and not self.backward_ran.ran and torch.is_grad_enabled()
                  and gates._logits_unchanged(self.record))
        penalty, self.penalty = (self.penalty, None) if usable else (None, self.penalty)
        return penalty

    def __deepcopy__(self, memo) -> "_PenaltyOfLastSample":
        return _PenaltyOfLastSample()

    def __reduce__(self):
        return (_PenaltyOfLastSample, ())


# torch's hooks for every module: dicts that registering fills in place
_ALL_FORWARD_PRE, _ALL_FORWARD = _nn_module._global_forward_pre_hooks, _nn_module._global_forward_hooks
_ALL_BACKWARD_PRE, _ALL_BACKWARD = _nn_module._global_backward_pre_hooks, _nn_module._global_backward_hooks


def layer_may_fuse(gates: nn.Module) -> bool:
    """Whether a layer may compute ``weight * gates()`` without calling ``gates`` (one pass with the penalty in
    training (unless :func:`has_backward_hooks`), a cached product in eval): ``gates`` is a :class:`HardConcrete`
    that samples and averages with HardConcrete's own methods, and no forward hook (on it, or on every module)
    would see the call.  Otherwise the layer calls it, as l0-python does: a subclass's own ``forward`` or
    ``_sample_gates``, one patched into the class or set on the instance, or any module with a ``forward`` and
    ``get_penalty``, is honoured."""
    if not isinstance(gates, HardConcrete):
        return False
    cls, own = type(gates), gates.__dict__
    return ((cls.forward, cls._sample_gates, cls.sample_gated, cls._deterministic_gates) == _HARD_CONCRETE_SAMPLING
            and not ("forward" in own or "_sample_gates" in own or "sample_gated" in own or "_deterministic_gates" in own)
            and not (gates._forward_pre_hooks or gates._forward_hooks or _ALL_FORWARD_PRE or _ALL_FORWARD))


def has_backward_hooks(gates: nn.Module) -> bool:
    """Whether a module backward hook (on ``gates``, or on every module) would see a call of ``gates``."""
    return bool(gates._backward_pre_hooks or gates._backward_hooks or _ALL_BACKWARD_PRE or _ALL_BACKWARD)


def _check_size(value, name: str) -> int:
    """``int(value)``; ValueError unless a positive integer (Python or numpy, not bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_positive(value, name: str, hint: str = "") -> float:
    return check_number(name, value, 0, open_lo=True, hint=hint)


def _check_fraction(value, name: str) -> float:
    return check_number(name, value, 0, 1)


def check_module(model, name: str = "model") -> None:
    """TypeError unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (e.g. a network holding L0 layers), got {type(model).__name__}")


class HardConcrete(HasRngState):
    """A tensor of Hard Concrete gates, shape ``(input_dim,)`` or ``(input_dim, output_dim)``.

    ``forward()`` samples gates in training mode and returns their mean in eval
    mode; ``get_penalty()`` is the differentiable expected number of non-zero gates.
    ``init_mean`` sets ``qz_logits = log(m / (1 - m))`` (``None``: leave them at 0).
    ``seed`` fixes the noise stream; by default it is drawn from torch's generator.

    >>> g = HardConcrete(4, 3, temperature=0.5, init_mean=0.8, seed=0)
    >>> g().shape, g.eval()((8, 4, 5, 5)).shape
    (torch.Size([4, 3]), torch.Size([4, 3, 1, 1]))
    """

    # |qz_logits| clamp (finite in fp16/bf16, live gradients): the kernels' constant, read only; every gate and
    # penalty uses it, so overriding this attribute changes nothing
    LOG_ALPHA_BOUND: float = LOG_ALPHA_BOUND
    _UNIFORM_EPS: float = 1e-6  # noise floor, fp16-safe

    def __init__(
        self,
        input_dim: int,
        output_dim: int | None = None,
        temperature: float = 0.5,
        stretch: float = 0.1,
        init_mean: float = 0.5,
        *,
        seed: int | None = None,
    ):
        super().__init__()
        input_dim = _check_size(input_dim, "input_dim")
        refuse_gradient("temperature", temperature)
        refuse_gradient("stretch", stretch)
        temperature = _check_positive(temperature, "temperature", " (gates harden as it approaches 0; try 0.1-2.0)")
        stretch = _check_positive(stretch, "stretch", " (gamma = -stretch must be < 0 and zeta = 1 + stretch > 1; try 0.1)")
        if init_mean is not None:
            init_mean = _check_fraction(init_mean, "init_mean")
        if output_dim is None:
            self.gate_size: tuple[int, ...] = (input_dim,)
        else:
            self.gate_size = (input_dim, _check_size(output_dim, "output_dim"))
        self.qz_logits = nn.Parameter(torch.zeros(self.gate_size))
        self.temperature = temperature  # a number: a tensor is read here, so that torch.compile meets no tensor to guard on
        self.stretch = stretch
        self.gamma = -stretch
        self.zeta = 1.0 + stretch
        self.init_mean = init_mean
        register_rng_state(self, seed)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set every logit to ``log(init_mean / (1 - init_mean))`` (0 and 1 clamped by 1e-6)."""
        if self.init_mean is not None:
            m = min(max(float(self.init_mean), _INIT_MEAN_EPS), 1.0 - _INIT_MEAN_EPS)
            with torch.no_grad():
                self.qz_logits.fill_(math.log(m / (1.0 - m)))

    def forward(self, input_shape: tuple[int, ...] | None = None) -> Tensor:
        """Gates ``gate_size``, with trailing 1-dims appended up to ``len(input_shape)``."""
        if input_shape is not None and not isinstance(input_shape, (tuple, list)):
            raise TypeError(f"input_shape must be a tuple of ints such as x.shape, got {type(input_shape).__name__} {input_shape!r}")
        gates = self._sample_gates() if self.training else self._deterministic_gates()
        if input_shape is not None and len(input_shape) > gates.dim():
            gates = gates.reshape(gates.shape + (1,) * (len(input_shape) - gates.dim()))
        return gates

    def _sample_gates(self) -> Tensor:
        """Reparameterized sample; advances ``rng_state`` by ``qz_logits.numel()``."""
        return self.sample_gated()

    def sample_gated(self, weight: Tensor | None = None) -> Tensor:
        """Sampled gates, or ``weight * gates`` (weight: qz_logits' size and dtype, any shape), from one pass
        that also computes the penalty: with autograd on (outside torch.compile, torch.func transforms,
        torch.jit.trace, torch.fx.symbolic_trace and checkpoint reruns), the next ``get_penalty()`` returns that
        penalty (one backward pass serves both) unless the logits changed or the backward has run since; later
        calls compute their own.  Advances ``rng_state``."""
        logits = self.qz_logits
        memo = None
        if torch.is_grad_enabled() and not (_memo_stands_aside() or replaying()) and logits.requires_grad:
            memo = _PenaltyOfLastSample(self._logits_record(logits))
        out, penalty = sample_gated(logits, self.rng_state, self.temperature, self.gamma, self.zeta, weight=weight,
                                    on_backward=None if memo is None else memo.backward_ran)
        if memo is not None:
            memo.penalty = penalty
            self.__dict__["_penalty_memo"] = memo  # a plain attribute: skip Module.__setattr__'s checks
        return out

    def _logits_record(self, logits: Tensor):
        """What the gates and the penalty of a pass are a function of: the logits and the gate parameters, as
        a layer's eval cache records them (``l0fast.layers._eval_record``: version counter, storage, dtype and,
        on CPU, the bits of the middle row and column and a few elements, which see a ``.data`` write); without
        the C++ extension, all but the bits."""
        if _C is None:
            return (logits._version, logits.data_ptr(), logits.dtype, self.temperature, self.gamma, self.zeta)
        return _C.eval_record(logits, logits, self.temperature, self.gamma, self.zeta)

    def _logits_unchanged(self, record) -> bool:
        """Whether :meth:`_logits_record` still gives ``record``."""
        logits = self.qz_logits
        if _C is None:
            return record == self._logits_record(logits)
        return _C.eval_record_current(logits, logits, record, self.temperature, self.gamma, self.zeta)

    def _deterministic_gates(self) -> Tensor:
        """Eval gates: the stretched mean ``sigmoid(a / beta)`` (Louizos et al. eq. 11)."""
        return hard_concrete_mean(self.qz_logits, self.temperature, self.gamma, self.zeta)

    def get_penalty(self) -> Tensor:
        """Expected number of non-zero gates, a differentiable 0-dim tensor (the first call after a sampling
        pass returns that pass's penalty when it is current, see :meth:`sample_gated`)."""
        memo = getattr(self, "_penalty_memo", None)
        reusable = memo is not None and not _memo_stands_aside()
        penalty = memo.take(self) if reusable else None
        return penalty if penalty is not None else l0_penalty(self.qz_logits, self.temperature, self.gamma, self.zeta)

    def get_active_prob(self) -> Tensor:
        """``P(gate != 0)`` per gate, shape ``gate_size``."""
        a = self.qz_logits.clamp(-LOG_ALPHA_BOUND, LOG_ALPHA_BOUND)
        return torch.sigmoid(a - self.temperature * math.log(-self.gamma / self.zeta))

    @torch.no_grad()
    def get_sparsity(self) -> float:
        """Expected fraction of zero gates, ``1 - mean(P(gate != 0))``."""
        return 1.0 - self.get_active_prob().mean().item()

    @torch.no_grad()
    def get_num_active(self) -> int:
        """Number of gates with ``P(gate != 0) > 0.5``."""
        return int((self.get_active_prob() > 0.5).sum().item())

    def extra_repr(self) -> str:
        return (
            f"gate_size={self.gate_size}, temperature={self.temperature}, "
            f"stretch={self.stretch}, init_mean={self.init_mean}"
        )


# HardConcrete's own sampling methods, in layer_may_fuse's order: a layer skips calling gates that use these
_HARD_CONCRETE_SAMPLING = (HardConcrete.forward, HardConcrete._sample_gates, HardConcrete.sample_gated,
                           HardConcrete._deterministic_gates)
