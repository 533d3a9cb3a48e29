"""Eval-mode gated weights are computed once and reused until a parameter changes."""

import numpy as np
import pytest
import torch
import torch.nn.utils.parametrize
import torch.nn.utils.prune

import l0fast.distributions as distributions
from l0fast import HardConcrete, L0Conv2d, L0Linear


def _count_means(monkeypatch):
    calls = []
    mean = distributions.hard_concrete_mean
    monkeypatch.setattr(distributions, "hard_concrete_mean", lambda *a: calls.append(1) or mean(*a))
    return calls


@pytest.mark.parametrize("make,x", [
    (lambda: L0Linear(20, 7, seed=0), torch.randn(5, 20)),
    (lambda: L0Conv2d(3, 4, 3, seed=0), torch.randn(2, 3, 8, 8)),
    (lambda: L0Conv2d(3, 4, 3, structured=True, seed=0), torch.randn(2, 3, 8, 8)),
])
def test_inference_reuses_the_gated_weight_until_a_parameter_changes(monkeypatch, make, x):
    layer = make().eval()
    calls = _count_means(monkeypatch)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first) and len(calls) == 1
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.train()
    layer(x).sum().backward()
    optimizer.step()
    layer.eval()
    with torch.no_grad():
        after = layer(x)
        assert len(calls) == 2 and not torch.equal(after, first), "an optimizer step must invalidate the cache"
        fresh = make().eval()
        fresh.load_state_dict(layer.state_dict())
        assert torch.equal(fresh(x), layer(x))
        layer._gate_module().temperature = 0.3
        layer(x)
        assert len(calls) == 4, "a new temperature must invalidate the cache"  # (the fresh layer made one)


def test_eval_with_autograd_on_still_gives_gradients():
    layer = L0Linear(6, 3, seed=0).eval()
    with torch.no_grad():
        layer(torch.randn(2, 6))  # fills the cache
    assert "_eval_weight" in vars(layer)
    layer(torch.randn(2, 6)).sum().backward()
    assert layer.weight.grad is not None and layer.weight_gates.qz_logits.grad is not None
    assert "_eval_weight" not in vars(layer), "a forward with autograd on releases the cache's memory (README)"


class _Negate(torch.nn.Module):
    def forward(self, weight):
        return -weight


def _prune(layer):
    torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.5)
    torch.nn.utils.prune.l1_unstructured(layer, "bias", amount=0.5)
    return layer.weight_orig


def _parametrize(layer):
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", _Negate())
    torch.nn.utils.parametrize.register_parametrization(layer, "bias", _Negate())
    return layer.parametrizations.weight.original


@pytest.mark.parametrize("replace", [_prune, _parametrize])
@pytest.mark.parametrize("make,x,op", [
    (lambda: L0Linear(20, 7, seed=0), torch.randn(5, 20), torch.nn.functional.linear),
    (lambda: L0Conv2d(3, 4, 3, seed=0), torch.randn(2, 3, 8, 8), torch.nn.functional.conv2d),
])
def test_a_weight_replaced_by_prune_or_parametrize_is_the_one_used(make, x, op, replace):
    """The layers read weight and bias from the parameter registry when they are there; prune and parametrize
    move them out (a masked or transformed tensor made at every forward), and that tensor must be the one used."""
    layer = make()
    original = replace(layer)
    layer.eval()
    with torch.no_grad():
        expected = op(x, layer.weight * layer.weight_gates().view_as(layer.weight), layer.bias)
        assert torch.equal(layer(x), expected) and torch.equal(layer(x), expected)
        original.mul_(2.0)  # a new weight on the next forward, through the cache
        assert torch.allclose(layer(x), op(x, layer.weight * layer.weight_gates().view_as(layer.weight), layer.bias))
    layer.train()
    layer(x).sum().backward()
    assert original.grad is not None and original.grad.abs().sum() > 0


def test_a_new_weight_on_the_freed_ones_storage_is_not_taken_for_the_cached_one():
    """prune and parametrize make the weight afresh at every forward, and the new tensor may land on the freed
    one's storage: same data_ptr, version 0.  Emulated deterministically with tensors over one numpy buffer."""
    layer = L0Linear(20, 7, seed=0).eval()
    storage = layer.weight.detach().numpy().copy()
    del layer._parameters["weight"]  # as torch.nn.utils.prune does
    x = torch.randn(5, 20)
    with torch.no_grad():
        for scale in (1.0, -2.0):
            storage *= scale
            layer.weight = torch.from_numpy(storage)  # a new tensor object on the same memory, version 0
            assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight * layer.weight_gates(), layer.bias))


@pytest.mark.parametrize("make,x,op", [
    (lambda: L0Linear(20, 7, seed=0), torch.randn(5, 20), torch.nn.functional.linear),
    (lambda: L0Conv2d(3, 4, 3, seed=0), torch.randn(2, 3, 8, 8), torch.nn.functional.conv2d),
    (lambda: L0Conv2d(3, 4, 3, structured=True, seed=0), torch.randn(2, 3, 8, 8), torch.nn.functional.conv2d),
])
@pytest.mark.parametrize("grad", [True, False])
def test_the_gate_modules_mode_decides_as_in_l0_python(make, x, op, grad):
    """l0-python's layers call their gate module, whose own mode picks sampled or mean gates.  A layer in
    training with its gates in eval uses the mean gates and draws no noise; a layer in eval with its gates in
    training samples afresh at every call, also under no_grad (nothing is cached)."""
    layer = make()
    gates = layer._gate_module()
    shape = (-1, 1, 1, 1) if layer.structured else layer.weight.shape
    with torch.set_grad_enabled(grad):
        layer.train()
        gates.eval()
        state = gates.rng_state.clone()
        mean_gated = layer.weight * gates().view(shape)
        assert torch.equal(layer(x), op(x, mean_gated, layer.bias))
        assert torch.equal(gates.rng_state, state), "mean gates draw no noise"
        layer.eval()
        gates.train()
        outputs = []
        for _ in range(2):
            state = gates.rng_state.clone()
            out = layer(x)
            gates.rng_state.copy_(state)  # the same noise again for the reference
            outputs.append(out)
            assert torch.equal(out, op(x, layer.weight * gates().view(shape), layer.bias))
        assert not torch.equal(outputs[0], outputs[1]), "each call samples new gates"


@pytest.mark.parametrize("make,x", [
    (lambda: L0Linear(20, 7, seed=0), torch.randn(5, 20)),
    (lambda: L0Conv2d(3, 4, 3, structured=True, seed=0), torch.randn(2, 3, 8, 8)),
])
def test_pickles_and_copies_leave_the_cache_behind(make, x, tmp_path):
    """torch.save(model) and copy.deepcopy do not carry the cached gated weight (as large as the weight);
    the copy computes it again and gives the same output."""
    import copy

    layer = make().eval()
    torch.save(layer, tmp_path / "fresh.pt")
    with torch.no_grad():
        out = layer(x)
    assert "_eval_weight" in layer.__dict__
    torch.save(layer, tmp_path / "used.pt")
    grown = (tmp_path / "used.pt").stat().st_size - (tmp_path / "fresh.pt").stat().st_size
    assert grown < layer.weight.nbytes, f"the file grew by {grown} bytes: the gated weight went with it"
    loaded = torch.load(tmp_path / "used.pt", weights_only=False)
    for twin in (loaded, copy.deepcopy(layer)):
        assert "_eval_weight" not in twin.__dict__
        with torch.no_grad():
            assert torch.equal(twin(x), out)
    assert "_eval_weight" in layer.__dict__, "the original keeps its cache"


def test_compiled_inference_follows_a_changed_weight():
    """A compiled eval forward (fullgraph) gives the eager output, also after the weight and the gate logits
    changed in place."""
    import torch._dynamo

    from l0fast import SparseMLP

    torch._dynamo.reset()
    model = SparseMLP(20, 16, 3).eval()
    x = torch.randn(4, 20)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
        model.fc2.weight.mul_(-2.0)
        model.fc3.weight_gates.qz_logits.add_(1.5)
        changed = model(x)
        assert torch.equal(compiled(x), changed)


@pytest.mark.parametrize("make,x,op", [
    (lambda: L0Linear(20, 7, seed=0), torch.randn(5, 20), torch.nn.functional.linear),
    (lambda: L0Conv2d(3, 4, 3, seed=0), torch.randn(2, 3, 8, 8), torch.nn.functional.conv2d),
    (lambda: L0Conv2d(3, 4, 3, structured=True, seed=0), torch.randn(2, 3, 8, 8), torch.nn.functional.conv2d),
])
@pytest.mark.parametrize("mode", ["train", "eval", "eval, no_grad"])
def test_hooks_on_the_gate_module_run_at_every_forward(make, x, op, mode):
    """As in l0-python, where a layer calls its gate module: a forward hook on the gates runs once per layer
    forward and its output is the gates used, in training (no fused pass) and in inference (no cache)."""
    layer = make().train(mode == "train")
    calls = []
    layer._gate_module().register_forward_hook(lambda module, args, out: calls.append(1) or torch.zeros_like(out))
    with torch.set_grad_enabled(mode != "eval, no_grad"):
        for n in (1, 2):
            assert torch.equal(layer(x), op(x, torch.zeros_like(layer.weight), layer.bias))
            assert len(calls) == n


class _MaskedGates(HardConcrete):
    """A subclass with a forward of its own: gates times a mask buffer (all zero here)."""

    def forward(self, input_shape=None):
        return super().forward(input_shape) * self.mask


class _NoiselessGates(HardConcrete):
    """A subclass that samples its mean."""

    def _sample_gates(self):
        return self._deterministic_gates()


class _DuckGates(torch.nn.Module):
    """Not a HardConcrete: a forward and a penalty."""

    def __init__(self, size):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(size))

    def forward(self, input_shape=None):
        return torch.sigmoid(self.logits)  # 0.5

    def get_penalty(self):
        return torch.sigmoid(self.logits).sum()


@pytest.mark.parametrize("mode", ["train", "eval", "eval, no_grad"])
@pytest.mark.parametrize("where", ["class", "instance"])
@pytest.mark.parametrize("method", ["forward", "_sample_gates", "_deterministic_gates"])
def test_a_gate_method_patched_after_a_forward_is_called_as_in_l0_python(monkeypatch, mode, where, method):
    """A straight-through estimator or a mask patched into HardConcrete (or set on one gate module) after the
    layer has run: the layer calls it from then on, instead of its fused pass or its cached product."""
    x = torch.randn(5, 6)
    train, grad = mode == "train", mode != "eval, no_grad"
    with torch.set_grad_enabled(grad):
        layer = L0Linear(6, 4, seed=0).train(train)
        layer(x)  # fills the eval cache
        if method == "forward":
            def patched(gates, input_shape=None):
                return torch.zeros(gates.gate_size)
        else:
            def patched(gates):
                return torch.zeros(gates.gate_size)
        if where == "class":
            monkeypatch.setattr(HardConcrete, method, patched)
        else:
            setattr(layer.weight_gates, method, patched.__get__(layer.weight_gates))
        sampled = method != "_deterministic_gates" if train else method != "_sample_gates"
        expected_weight = torch.zeros(4, 6) if sampled else None
        out = layer(x)
        if expected_weight is not None:
            assert torch.equal(out, torch.nn.functional.linear(x, expected_weight, layer.bias))
        else:  # the other mode's method: the layer's own gates, as before the patch
            assert not torch.equal(out, torch.nn.functional.linear(x, torch.zeros(4, 6), layer.bias))


@pytest.mark.parametrize("mode", ["train", "eval", "eval, no_grad"])
def test_a_gate_module_with_its_own_sampling_or_a_global_hook_is_called_as_in_l0_python(mode):
    """The layer calls a gate module whose class samples differently (a subclass's forward or _sample_gates,
    or any module with a forward and get_penalty), and calls every gate module while a hook registered for
    all modules is set, instead of its fused pass or its cached product."""
    x = torch.randn(5, 6)
    train, grad = mode == "train", mode != "eval, no_grad"
    with torch.set_grad_enabled(grad):
        layer = L0Linear(6, 4, seed=0).train(train)
        layer.weight_gates = _MaskedGates(4, 6, seed=0).train(train)
        layer.weight_gates.register_buffer("mask", torch.zeros(4, 6))
        assert torch.equal(layer(x), torch.nn.functional.linear(x, torch.zeros(4, 6), layer.bias))
        layer.weight_gates = _NoiselessGates(4, 6, seed=0).train(train)
        assert torch.equal(layer(x), layer(x)), "no noise"
        layer.weight_gates = _DuckGates((4, 6)).train(train)
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight * 0.5, layer.bias))
        assert torch.equal(layer.get_l0_penalty(), torch.tensor(12.0))
        layer.weight_gates = HardConcrete(4, 6, seed=0).train(train)
        seen = []
        hook = torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: seen.append(type(module)))
        try:
            layer(x), layer(x)
        finally:
            hook.remove()
        assert seen == [HardConcrete, L0Linear] * 2


@pytest.mark.parametrize("make,x,op", [
    (lambda: L0Linear(20, 7, seed=0), torch.randn(5, 20), torch.nn.functional.linear),
    (lambda: L0Conv2d(3, 4, 3, seed=0), torch.randn(2, 3, 8, 8), torch.nn.functional.conv2d),
    (lambda: L0Conv2d(3, 4, 3, structured=True, seed=0), torch.randn(2, 3, 8, 8), torch.nn.functional.conv2d),
])
def test_autocast_inference_casts_the_gated_weight_once(make, x, op):
    """Under autocast the cached gated weight is cast to the autocast dtype once and reused (autocast itself
    caches casts of parameters only), with the output autocast gives; a changed weight is cast afresh; a
    float64 layer, which autocast does not cast, stays float64."""
    layer = make().eval()
    shape = (-1, 1, 1, 1) if layer.structured else layer.weight.shape
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = op(x, layer.weight * layer._gate_module()().view(shape), layer.bias)
        out = layer(x)
        cast = layer._eval_weight[4][torch.bfloat16]
        assert out.dtype == torch.bfloat16 and torch.equal(out, want)
        assert torch.equal(layer(x), want) and layer._eval_weight[4][torch.bfloat16] is cast, "cast once, reused"
        layer.weight.mul_(0.5)
        want = op(x, layer.weight * layer._gate_module()().view(shape), layer.bias)
        assert torch.equal(layer(x), want) and layer._eval_weight[4][torch.bfloat16] is not cast
    with torch.no_grad():
        assert torch.equal(layer(x), op(x, layer.weight * layer._gate_module()().view(shape), layer.bias)), "no autocast: fp32"
        layer.double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x.double()).dtype == torch.float64


@pytest.mark.parametrize("make,x", [
    (lambda: L0Linear(20, 7, seed=0), torch.randn(5, 20)),
    (lambda: L0Conv2d(3, 4, 3, seed=0), torch.randn(2, 3, 8, 8)),
    (lambda: L0Conv2d(3, 4, 3, structured=True, seed=0), torch.randn(2, 3, 8, 8)),
])
def test_parameters_made_under_inference_mode_are_gated_afresh_each_call(make, x):
    """Inference tensors have no version counter, so a product of them cannot be known current: it is not
    kept, and a weight changed in place is the one used (l0-python's layers, which keep nothing, run too)."""
    reference = make().eval()
    with torch.inference_mode():
        layer = make().eval()
        layer.load_state_dict(reference.state_dict())
        with torch.no_grad():
            want = reference(x)
        assert torch.equal(layer(x), want) and "_eval_weight" not in vars(layer)
        bias = layer.bias.view(-1, *[1] * (want.dim() - 2))
        layer.weight.mul_(2)
        torch.testing.assert_close(layer(x), 2 * want - bias)


def test_a_cache_is_dropped_when_the_parameters_become_inference_tensors():
    """``.to()`` under inference mode puts inference tensors behind the same Parameter objects: they keep a
    version counter that in-place changes under inference mode do not bump, so nothing may be kept."""
    layer, x = L0Linear(8, 3, seed=0).eval(), torch.randn(2, 8, dtype=torch.float64)
    with torch.no_grad():
        layer(x.float())
    assert "_eval_weight" in vars(layer)
    with torch.inference_mode():
        layer.to(torch.float64)
        first = layer(x)
        layer.weight.mul_(2)
        assert "_eval_weight" not in vars(layer)
        torch.testing.assert_close(layer(x), 2 * first - layer.bias)


def _ema_through_data(layer, target, decay=0.9):
    """The EMA update as often written: through ``.data``, which bumps no version counter."""
    for p, q in zip(layer.parameters(), target.parameters()):
        p.data.mul_(decay).add_(q.data, alpha=1 - decay)


@pytest.mark.parametrize("make,x", [
    (lambda: L0Linear(20, 7, seed=0), torch.randn(5, 20)),
    (lambda: L0Conv2d(3, 4, 3, seed=0), torch.randn(2, 3, 8, 8)),
    (lambda: L0Conv2d(3, 4, 3, structured=True, seed=0), torch.randn(2, 3, 8, 8)),
    (lambda: L0Conv2d(3, 4, 3, seed=0).to(memory_format=torch.channels_last), torch.randn(2, 3, 8, 8)),
])
@pytest.mark.parametrize("write", ["ema", "copy", "logits", "numpy"])
def test_writes_that_bump_no_version_counter_are_seen(make, x, write):
    """``.data`` and numpy views write without bumping the version counter; the cache's sampled elements see
    writes that change many elements (an EMA model evaluated between updates, weights loaded in place)."""
    layer, other = make().eval(), make().eval()
    with torch.no_grad():
        for p in other.parameters():
            p.normal_()
        layer(x)  # fills the cache
        if write == "ema":
            _ema_through_data(layer, other)
        elif write == "copy":
            layer.weight.data.copy_(other.weight)
        elif write == "logits":
            layer._gate_module().qz_logits.data.copy_(other._gate_module().qz_logits)
        else:
            layer.weight.detach().numpy()[...] *= -1.0
        fresh = make().eval()
        fresh.load_state_dict(layer.state_dict())
        assert torch.equal(layer(x), fresh(x))


def _prune_through_data(tensor: torch.Tensor, write: str, index: int, seed: int) -> None:
    """l0-python users' pruning idioms, through ``.data`` (no version counter bumped): a whole row (an output
    unit or channel), a whole column of the tensor seen as (size(0), rest) (an input feature), every
    element of an input channel, a random 5% of the elements."""
    data = tensor.data
    if write == "row":
        data[index % data.shape[0]] = 0
    elif write == "column":  # unraveled: a channels-last weight has no (size(0), rest) view
        data[(slice(None), *np.unravel_index(index % (data.numel() // data.shape[0]), data.shape[1:]))] = 0
    elif write == "input channel":
        data[:, index % data.shape[1]] = 0
    else:
        mask = torch.rand(data.shape, generator=torch.Generator().manual_seed(seed)) > 0.05
        data.mul_(mask)


_LINEAR = [(lambda: L0Linear(64, 32, seed=0), (5, 64)), (lambda: L0Linear(37, 9, seed=0), (5, 37))]
_CONV = [(lambda: L0Conv2d(6, 5, 3, seed=0), (2, 6, 8, 8)),
         (lambda: L0Conv2d(6, 5, 3, seed=0).to(memory_format=torch.channels_last), (2, 6, 8, 8))]


@pytest.mark.parametrize("make,shape,write", [(make, shape, write) for make, shape in _LINEAR + _CONV for write in ("row", "column", "mask")]
                         + [(make, shape, "input channel") for make, shape in _CONV])
@pytest.mark.parametrize("target", ["weight", "logits"])
def test_rows_columns_and_masks_written_through_data_are_seen(make, shape, write, target):
    """Any row, any column and a random mask written through ``.data`` between two no-grad forwards: the
    cache's probes cover the middle row and the middle column, which each of those crosses."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for index in range(12):  # each row, column and channel of the smaller layers, and twelve masks
        layer = make().eval()
        tensor = layer.weight if target == "weight" else layer._gate_module().qz_logits
        with torch.no_grad():
            tensor.data.add_(torch.randn(tensor.shape, generator=torch.Generator().manual_seed(index)))  # no zeros
            layer(x)  # fills the cache
            _prune_through_data(tensor, write, index, seed=index)
            fresh = make().eval()
            fresh.load_state_dict(layer.state_dict())
            assert torch.equal(layer(x), fresh(x)), (write, index)


def test_without_the_extension_eval_forwards_gate_at_every_call(monkeypatch):
    """The cache's record is a C++ call: without l0fast._C nothing is kept, and eval forwards stay exact."""
    import l0fast.layers

    monkeypatch.setattr(l0fast.layers, "_C", None)
    layer, x = L0Linear(8, 3, seed=0).eval(), torch.randn(2, 8)
    with torch.no_grad():
        first = layer(x)
        assert "_eval_weight" not in vars(layer)
        layer.weight.data.mul_(2)
        torch.testing.assert_close(layer(x), 2 * first - layer.bias)


@pytest.mark.parametrize("make,shape", _LINEAR[:1] + _CONV[:1])
def test_fake_tensor_mode_gives_shapes_and_leaves_the_cache_real(make, shape):
    """Memory and flop estimators run real modules on fake inputs (FakeTensorMode): no value to check or cache
    (the input check read a fake tensor's missing data: a crash), and a later real forward is the real one."""
    from torch._subclasses import FakeTensorMode

    layer, real = make().eval(), torch.randn(shape)
    with torch.no_grad():
        before = layer(real)
    expected = tuple(before.shape)
    for training, grad in ((False, False), (False, True), (True, True)):
        layer.train(training)
        with FakeTensorMode(allow_non_fake_inputs=True), torch.set_grad_enabled(grad):
            out = layer(torch.randn(shape))
            assert type(out).__name__ == "FakeTensor" and tuple(out.shape) == expected
    layer.eval()
    with torch.no_grad():
        after = layer(real)
    assert type(after) is torch.Tensor and torch.equal(after, before)


@pytest.mark.parametrize("write", ["neg", "abs", "neg rows"])
def test_float64_sign_flips_through_data_are_seen(write):
    """A float64 sign flip changes the bits by 2^63: summed with odd weights, two of them cancelled (mod 2^64)
    and the cache kept a stale product; each element's bits are mixed before the sum."""
    x = torch.randn(3, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for seed in range(8):
        layer = L0Linear(64, 32, seed=seed).double().eval()
        with torch.no_grad():
            layer(x)
            if write == "neg":
                layer.weight.data.neg_()
            elif write == "abs":
                layer.weight.data.abs_()
            else:
                layer.weight.data[::2].neg_()
            fresh = L0Linear(64, 32, seed=seed).double().eval()
            fresh.load_state_dict(layer.state_dict())
            assert torch.equal(layer(x), fresh(x)), seed


def test_the_penalty_memo_sees_float64_logits_negated_through_data():
    gates = HardConcrete(32, 16, seed=0).double()
    gates.qz_logits.data.normal_(generator=torch.Generator().manual_seed(0))
    gates()  # leaves its penalty for the next get_penalty
    gates.qz_logits.data.neg_()
    torch.testing.assert_close(gates.get_penalty(), gates.get_active_prob().sum(), rtol=1e-12, atol=0)


def test_a_module_built_under_fake_tensor_mode_runs_on_fake_inputs_after_it():
    """Parameters made under FakeTensorMode hold no data: the eval cache's record and the input check read none
    (they read a null pointer: a crash), and the fake tensors re-enter their mode."""
    from torch._subclasses import FakeTensorMode

    with FakeTensorMode():
        layer, x = L0Linear(6, 4, seed=0), torch.randn(3, 6)
    for training in (True, False):
        layer.train(training)
        with torch.no_grad():
            out = layer(x)
        assert type(out).__name__ == "FakeTensor" and tuple(out.shape) == (3, 4)


def test_a_sparse_input_with_nan_raises_under_a_dispatch_mode():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(3, 6)
    x[0, 0] = float("nan")
    with FlopCounterMode(display=False), pytest.raises(ValueError, match="L0Linear: input contains NaN or inf"):
        L0Linear(6, 4, seed=0).eval()(x.to_sparse())


def _cached_linear(layer: L0Linear, x):
    """``l0fast._C.cached_linear`` on ``layer``'s eval cache entry: its output, or None (the Python path's call)."""
    from l0fast._capability import _C

    weight, gates = layer.weight, layer.weight_gates
    entry = layer._eval_weight
    return _C.cached_linear(x, entry[3], layer.bias, weight, gates.qz_logits, entry[2], gates.temperature, gates.gamma,
                            gates.zeta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 37), (5, 37), (2, 3, 37), (37,), (0, 37)])
@pytest.mark.parametrize("bias", [True, False])
def test_the_eval_forward_from_the_cache_is_the_general_paths(monkeypatch, dtype, shape, bias):
    """L0Linear's eval forward from a current cache entry, one C++ call: the same bits as the general path's
    ``F.linear`` on the cached product, for odd widths, batch shapes, both float dtypes, with and without bias."""
    layer = L0Linear(37, 9, bias=bias, seed=0).to(dtype).eval()
    general = L0Linear(37, 9, bias=bias, seed=0).to(dtype).eval()
    general.load_state_dict(layer.state_dict())
    monkeypatch.setattr(general, "_cached_forward", lambda *args: None)
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = general(x)
        layer(x)  # fills the cache
        out = _cached_linear(layer, x)
        assert out is not None, "a plain call is answered from the cache"
        assert torch.equal(out, want) and torch.equal(layer(x), want)
        assert torch.equal(out, torch.nn.functional.linear(x, layer._eval_weight[3], layer.bias))


class _Seen(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.funcs = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.funcs.append(func)
        return func(*args, **(kwargs or {}))


class _Passing(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _stale(layer, x):
    layer.weight.data[:, 3] = 0.0
    return x


_LEFT_TO_PYTHON = {  # name: (context, input from the layer and a plain input)
    "autograd on": (torch.enable_grad, lambda layer, x: x),
    "CPU autocast": (lambda: torch.autocast("cpu", dtype=torch.bfloat16), lambda layer, x: x),
    "torch function mode": (_Seen, lambda layer, x: x),
    "dispatch mode": (_Passing, lambda layer, x: x),
    "other dtype": (torch.no_grad, lambda layer, x: x.double()),
    "other width": (torch.no_grad, lambda layer, x: x[:, :-1]),
    "0-dim input": (torch.no_grad, lambda layer, x: x[0, 0]),
    "negative view": (torch.no_grad, lambda layer, x: x._neg_view()),
    "NaN": (torch.no_grad, lambda layer, x: x.index_fill(1, torch.tensor([4]), float("nan"))),
    "stale record": (torch.no_grad, _stale),
}


@pytest.mark.parametrize("case", list(_LEFT_TO_PYTHON))
def test_the_cached_call_leaves_to_the_python_path_what_it_does_more(case):
    """``l0fast._C.cached_linear`` answers None wherever the layer's general path sees, records or refuses more
    than ``F.linear`` on the cached product: the layer then takes that path, and its output is the general one."""
    context, make_input = _LEFT_TO_PYTHON[case]
    layer = L0Linear(8, 3, seed=0).eval()
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer(x)  # fills the cache
        assert _cached_linear(layer, x) is not None
        x = make_input(layer, x)
        with context():  # inside no_grad: only "autograd on" turns it on
            assert _cached_linear(layer, x) is None


def test_a_jit_trace_records_the_python_paths_call():
    layer = L0Linear(8, 3, seed=0).eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        layer(x)  # fills the cache
        answers = []
        torch.jit.trace(lambda y: answers.append(_cached_linear(layer, y)) or y * 2, (x,), check_trace=False)
    assert answers == [None]


def test_a_torch_function_mode_sees_the_eval_forwards_linear():
    """The forward from the cache is C++: under a torch function mode the layer takes the Python path, so the mode
    sees ``F.linear`` as it does in l0-python and nn.Linear."""
    layer, x = L0Linear(8, 3, seed=0).eval(), torch.randn(2, 8)
    with torch.no_grad():
        layer(x)  # fills the cache
        with _Seen() as seen:
            out = layer(x)
    assert torch.nn.functional.linear in seen.funcs and torch.equal(out, layer(x))


class _Tagged(torch.Tensor):
    """A tensor subclass that records the torch functions called on it."""

    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs)


def test_a_tensor_subclass_sees_the_eval_forwards_linear():
    layer, x = L0Linear(8, 3, seed=0).eval(), torch.randn(2, 8)
    with torch.no_grad():
        want = layer(x)  # fills the cache
        _Tagged.seen = []
        out = layer(x.as_subclass(_Tagged))
    assert torch.nn.functional.linear in _Tagged.seen and torch.equal(out.as_subclass(torch.Tensor), want)
