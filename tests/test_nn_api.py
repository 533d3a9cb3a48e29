"""l0fast's gates, layers and penalties against l0-python 0.6.2 (``import l0``), plus seeding and validation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import l0fast
from l0fast import distributions, gates, layers, penalties

try:
    import l0 as ref
except ImportError:  # l0-python is a bench extra
    ref = None
needs_l0 = pytest.mark.skipif(ref is None, reason="needs l0-python 0.6.2 (pip install l0-python==0.6.2)")

# (class name, args, kwargs, input shape or None): one entry per gated module of l0's API.
MODULES = [
    ("HardConcrete", (7,), dict(temperature=0.3, init_mean=0.8), None),
    ("HardConcrete", (5, 6), dict(temperature=1.3, stretch=0.2, init_mean=None), None),
    ("L0Gate", (50,), dict(temperature=0.3, init_mean=0.7), None),
    ("SampleGate", (100, 10), {}, None),
    ("FeatureGate", (40, 5), {}, None),
    ("HybridGate", (60,), dict(target_items=20), None),
    ("L0Linear", (10, 5), dict(init_sparsity=0.3, use_l2=True), (4, 10)),
    ("L0Linear", (10, 5), dict(bias=False), (2, 3, 10)),
    ("L0Conv2d", (3, 4, 3), dict(padding=1), (2, 3, 8, 8)),
    ("L0Conv2d", (3, 4, (3, 2)), dict(structured=True, stride=2), (2, 3, 9, 9)),
    ("L0DepthwiseConv2d", (6, 3), {}, (2, 6, 7, 7)),
    ("SparseMLP", (12, 8, 3), {}, (4, 3, 4)),
]
IDS = [f"{name}-{i}" for i, (name, *_rest) in enumerate(MODULES)]


def _pair(name, args, kwargs):
    """(l0 module, l0fast module) with l0's parameters copied into ours, both in eval mode."""
    torch.manual_seed(0)
    theirs = getattr(ref, name)(*args, **kwargs)
    with torch.no_grad():  # non-trivial, identical logits everywhere
        for pname, p in theirs.named_parameters():
            if pname.endswith("qz_logits"):
                p.copy_(torch.randn_like(p) * 3)
    ours = getattr(l0fast, name)(*args, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs.eval(), ours.eval()


def _hard_concretes(module):
    return [m for m in module.modules() if type(m).__name__ == "HardConcrete"]


@needs_l0
@pytest.mark.parametrize("name,args,kwargs,shape", MODULES, ids=IDS)
def test_state_dict_round_trip(name, args, kwargs, shape):
    theirs, ours = _pair(name, args, kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    fresh = getattr(ref, name)(*args, **kwargs)
    fresh.load_state_dict(ours.state_dict(), strict=True)
    for key, value in theirs.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@needs_l0
@pytest.mark.parametrize("name,args,kwargs,shape", MODULES, ids=IDS)
def test_eval_gates_outputs_and_penalties_match_l0(name, args, kwargs, shape):
    theirs, ours = _pair(name, args, kwargs)
    for a, b in zip(_hard_concretes(theirs), _hard_concretes(ours), strict=True):
        assert (a() - b()).abs().max() < 1e-6
        torch.testing.assert_close(b.get_penalty(), a.get_penalty(), rtol=1e-5, atol=0)
        torch.testing.assert_close(b.get_active_prob(), a.get_active_prob(), rtol=1e-6, atol=1e-7)
        assert b.get_sparsity() == pytest.approx(a.get_sparsity(), rel=1e-5, abs=1e-7)
        assert b.get_num_active() == a.get_num_active()
    if shape is not None:
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    for fn in ("compute_l0_penalty", "compute_l2_penalty", "compute_l0l2_penalty"):
        torch.testing.assert_close(getattr(penalties, fn)(ours), getattr(ref, fn)(theirs), rtol=1e-5, atol=0)
    assert penalties.get_active_parameter_count(ours) == ref.get_active_parameter_count(theirs)
    got, want = penalties.get_sparsity_stats(ours), ref.get_sparsity_stats(theirs)
    assert got.keys() == want.keys()
    for layer, row in want.items():
        assert got[layer] == pytest.approx(row, rel=1e-5), layer


@needs_l0
@pytest.mark.parametrize(
    "name,args,kwargs,shape", [m for m in MODULES if m[3]], ids=[i for i, m in zip(IDS, MODULES) if m[3]]
)
def test_eval_gradients_match_l0(name, args, kwargs, shape):
    theirs, ours = _pair(name, args, kwargs)
    x = torch.randn(shape)
    for model in (theirs, ours):
        ((model(x) ** 2).sum() + penalties.compute_l0_penalty(model)).backward()
    for (pname, a), b in zip(theirs.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=pname)


@needs_l0
@pytest.mark.parametrize(
    "name,args,kwargs,shape", [m for m in MODULES if m[3]], ids=[i for i, m in zip(IDS, MODULES) if m[3]]
)
def test_training_with_gates_in_eval_matches_l0(name, args, kwargs, shape):
    """A model in training whose gate modules are in eval (the mask held at the mean gates while the weights
    train): in l0-python the gate module's own mode decides, so outputs and gradients are eval's."""
    theirs, ours = _pair(name, args, kwargs)
    x = torch.randn(shape)
    outputs = []
    for model in (theirs, ours):
        model.train()
        for gate in _hard_concretes(model):
            gate.eval()
        outputs.append(model(x))
        (outputs[-1] ** 2).sum().backward()
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    for (pname, a), b in zip(theirs.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=pname)


@needs_l0
@pytest.mark.parametrize("logit,temperature", [(0.7, 0.5), (-1.5, 0.2), (2.0, 1.5)])
def test_train_gates_distribution_matches_l0(logit, temperature):
    n = 200_000
    torch.manual_seed(1)
    theirs, ours = ref.HardConcrete(n, temperature=temperature), l0fast.HardConcrete(n, temperature=temperature, seed=1)
    with torch.no_grad():
        theirs.qz_logits.fill_(logit), ours.qz_logits.fill_(logit)
    a, b = theirs.train()().detach(), ours.train()().detach()
    assert b.min() >= 0 and b.max() <= 1
    assert abs(b.mean() - a.mean()) < 0.01
    for atom in (0.0, 1.0):
        assert abs((b == atom).float().mean() - (a == atom).float().mean()) < 0.01
    assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3


def test_train_gradients_flow_to_logits_and_weights():
    layer = l0fast.L0Linear(6, 4, seed=3).train()
    layer(torch.randn(5, 6)).pow(2).sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    assert layer.weight_gates.qz_logits.grad.abs().sum() > 0
    gate = l0fast.HardConcrete(30, seed=3)
    gate.get_penalty().backward()
    assert gate.qz_logits.grad.abs().min() > 0


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_sparse_mlp_takes_an_empty_batch(train):
    """A batch of no inputs gives no outputs (l0-python's reshape(N, -1) refuses N = 0)."""
    model = l0fast.SparseMLP(12, 5, 3).train(train)
    for x in (torch.randn(0, 12), torch.randn(0, 3, 4)):
        out = model(x)
        assert out.shape == (0, 3)
        (out.sum() + model.get_l0_loss()).backward()


@pytest.mark.parametrize("make,shape", [
    (lambda: l0fast.SparseMLP(12, 5, 3), (4, 12)),
    (lambda: l0fast.L0Conv2d(2, 3, 3), (1, 2, 5, 5)),
    (lambda: l0fast.L0Conv2d(2, 3, 3, structured=True), (1, 2, 5, 5)),
    (lambda: l0fast.L0DepthwiseConv2d(2, 3), (1, 2, 5, 5)),
], ids=["SparseMLP", "L0Conv2d", "L0Conv2d-structured", "L0DepthwiseConv2d"])
@pytest.mark.parametrize("mode", ["train", "eval", "inference"])
def test_models_on_the_meta_device_give_shapes(make, shape, mode):
    """Shape inference on the meta device (no values), as with l0-python's plain torch ops: the NaN checks
    have nothing to read (they read a value back before)."""
    model = make()
    want = model.train(mode == "train")(torch.randn(shape)).shape
    model = model.to("meta")
    with torch.set_grad_enabled(mode != "inference"):
        out = model(torch.randn(shape, device="meta"))
        assert out.device.type == "meta" and out.shape == want
        if mode != "inference":
            penalty = model.get_l0_loss() if isinstance(model, l0fast.SparseMLP) else model.get_l0_penalty()
            (out.sum() + penalty).backward()


def test_a_model_built_on_the_meta_device_materializes_as_the_readme_says():
    """Construction under ``torch.device("meta")`` draws the seeds from torch's CPU generator (it called
    .item() on a meta tensor before); after to_empty, load_state_dict and fresh seeds the model trains."""
    torch.manual_seed(0)
    reference = l0fast.SparseMLP(12, 5, 3)
    with torch.device("meta"):
        model = l0fast.SparseMLP(12, 5, 3)
    assert model.fc1.weight.is_meta and model.fc1.weight_gates.rng_state.is_meta
    model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    for name, buf in model.named_buffers():
        if name.endswith("rng_state"):
            buf.copy_(l0fast.rng.new_rng_state())
    l0fast.load_rng_state_dict(reference, l0fast.rng_state_dict(model))
    x = torch.randn(4, 12)
    assert torch.equal(model(x), reference(x))
    (model(x).sum() + model.get_l0_loss()).backward()


def test_seed_reproduces_gates_and_stream_advances():
    a, b = l0fast.HardConcrete(5, 7, seed=123), l0fast.HardConcrete(5, 7, seed=123)
    first = a()
    assert torch.equal(first, b())
    second = a()
    assert not torch.equal(first, second)
    assert torch.equal(second, b())
    assert not torch.equal(l0fast.HardConcrete(5, 7, seed=124)(), first)


def test_manual_seed_before_construction_reproduces_gates():
    def run():
        torch.manual_seed(7)
        model = l0fast.SparseMLP(12, 8, 3).train()
        return [m.weight_gates() for m in (model.fc1, model.fc2, model.fc3)]

    for x, y in zip(run(), run(), strict=True):
        assert torch.equal(x, y)
    torch.manual_seed(8)
    assert not torch.equal(l0fast.SparseMLP(12, 8, 3).fc1.weight_gates(), run()[0])


RANDOM_INIT_BUILDERS = {
    "SparseMLP": lambda lib: lib.SparseMLP(20, 16, 3),
    "L0Linear x2": lambda lib: torch.nn.Sequential(lib.L0Linear(5, 4, bias=False), lib.L0Linear(4, 2)),
    "L0Conv2d": lambda lib: lib.L0Conv2d(3, 4, 3),
    "L0Conv2d structured": lambda lib: lib.L0Conv2d(3, 4, (3, 2), structured=True),
    "L0DepthwiseConv2d": lambda lib: lib.L0DepthwiseConv2d(3, 3, bias=False),
    "SparseCalibrationWeights": lambda lib: lib.SparseCalibrationWeights(50),
    "SparseL0Linear": lambda lib: lib.SparseL0Linear(30),
}


@needs_l0
@pytest.mark.parametrize("name", RANDOM_INIT_BUILDERS)
def test_manual_seed_gives_l0s_initial_weights_and_leaves_the_generator_where_l0_does(name):
    """The gates' seeds are read from the generator after each module's random init, not drawn from it: the
    same torch.manual_seed builds l0-python's weights and logits, and the draws after the model are l0's too."""
    build = RANDOM_INIT_BUILDERS[name]
    torch.manual_seed(11)
    ours, ours_next = build(l0fast), torch.rand(3)
    torch.manual_seed(11)
    theirs, theirs_next = build(ref), torch.rand(3)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert torch.equal(ours_next, theirs_next)
    seeds = [int(s[0]) for s in l0fast.rng_state_dict(ours).values()]
    assert len(set(seeds)) == len(seeds)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.uint8, torch.bool, torch.int64])
def test_depthwise_takes_inputs_that_its_gates_promote_as_l0(dtype):
    """l0-python multiplies the input by the float gates before the convolution, so any input the product
    promotes to the layer's dtype is taken (L0Linear and L0Conv2d, like torch, refuse it)."""
    layer = l0fast.L0DepthwiseConv2d(2, 3, seed=0).eval()
    x = torch.randint(0, 2, (1, 2, 5, 5)).to(dtype)
    out = layer(x)
    assert out.dtype == torch.float32 and torch.equal(out, layer(x.to(torch.float32)))
    with pytest.raises(RuntimeError, match="input has dtype torch.float64.*pass input.to\\(torch.float32\\)"):
        layer(x.to(torch.float64))  # the product is float64: torch's RuntimeError class, l0fast's message


def test_input_errors_are_runtime_errors_as_torchs_and_suggest_only_what_works():
    """l0-python's layers leave a wrong input to torch, which raises RuntimeError: l0fast's errors, which name the
    fix, are RuntimeErrors too (and ValueError/TypeError)."""
    for call in (lambda: l0fast.L0Linear(2, 3)(torch.ones(1, 3)), lambda: l0fast.SparseMLP(4, 3, 2)(torch.ones(4)),
                 lambda: l0fast.L0Conv2d(1, 1, 3)(torch.ones(1, 1, 2, 2))):
        with pytest.raises(RuntimeError) as error:
            call()
        assert isinstance(error.value, ValueError) and type(error.value) is l0fast.InputShapeError
    with pytest.raises(RuntimeError, match="input has dtype torch.int64.*input.to\\(torch.float32\\)$"):
        l0fast.L0Linear(2, 3)(torch.ones(4, 2, dtype=torch.int64))  # no 'convert the layer to int64'
    with pytest.raises(TypeError, match="or convert the layer with .to\\(torch.float64\\)"):
        l0fast.L0Conv2d(1, 1, 3)(torch.ones(1, 1, 5, 5, dtype=torch.float64))
    layer = l0fast.L0Linear(2, 3, bias=False)
    layer.weight_gates.double()  # float64 gates: the gated weight is float64, so is the input it takes
    with pytest.raises(TypeError, match="gate logits torch.float64: pass input.to\\(torch.float64\\), or convert the whole"):
        layer(torch.ones(4, 2))
    assert layer(torch.ones(4, 2, dtype=torch.float64)).dtype == torch.float64


def test_modules_whose_init_draws_nothing_still_get_streams_of_their_own():
    """An init without randomness (no jitter; a subclass with a deterministic init) leaves the generator's state
    as it was: the seeds are then drawn, so two such modules built one after the other do not share a stream."""

    class ZeroInit(l0fast.L0Linear):
        def reset_parameters(self):
            torch.nn.init.zeros_(self.weight)

    torch.manual_seed(0)
    a, b = ZeroInit(4, 3).train(), ZeroInit(4, 3).train()
    seed_a = int(a.weight_gates.rng_state[0])
    assert seed_a != int(b.weight_gates.rng_state[0])
    assert not torch.equal(a.weight_gates(), b.weight_gates())
    torch.manual_seed(0)
    assert ZeroInit(4, 3).weight_gates.rng_state.tolist() == [seed_a, 0]  # drawn from torch's generator
    assert l0fast.L0Linear(4, 3, seed=5).weight_gates.rng_state.tolist() == [5, 0]
    flat = [l0fast.SparseCalibrationWeights(6, log_alpha_jitter_sd=0.0) for _ in range(2)]
    assert flat[0].rng_state[0] != flat[1].rng_state[0]


def test_rng_state_is_not_persistent_and_can_be_restored():
    gate = l0fast.L0Gate(20, seed=5)
    assert "gates.rng_state" not in gate.state_dict()
    saved = l0fast.rng_state_dict(gate)
    first = gate.get_gates()
    l0fast.load_rng_state_dict(gate, saved)
    assert torch.equal(gate.get_gates(), first)


def test_reseeded_copies_draw_their_own_gates_and_torch_manual_seed_reproduces_them():
    import copy

    model = l0fast.SparseMLP(8, 6, 2)
    copies = [copy.deepcopy(model) for _ in range(3)]
    shared = [c.fc1.weight_gates() for c in copies]
    assert all(torch.equal(draw, shared[0]) for draw in shared), "copies share their original's streams"
    torch.manual_seed(4)
    for c in copies:
        l0fast.reseed_rng_state(c)
    draws = [c.fc1.weight_gates() for c in copies]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert all(c.fc2.weight_gates.rng_state[1] == 0 for c in copies)
    torch.manual_seed(4)
    again = copy.deepcopy(model)
    l0fast.reseed_rng_state(again)
    assert torch.equal(again.fc1.weight_gates(), draws[0])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        l0fast.reseed_rng_state("model")


def test_hybrid_select_reproducible_in_training_mode():
    hybrid = l0fast.HybridGate(500, target_items=100, temperature=0.2).train()
    data = torch.randn(500, 3)
    _, idx1, kind1 = hybrid.select(data, random_seed=42)
    _, idx2, kind2 = hybrid.select(data, random_seed=42)
    assert torch.equal(idx1, idx2) and (kind1 == kind2).all()
    assert torch.equal(torch.sort(idx1).values, idx1) and len(set(idx1.tolist())) == len(idx1)
    _, idx3, _ = hybrid.select(data, random_seed=43)
    assert not torch.equal(idx1, idx3)


@needs_l0
@pytest.mark.parametrize("shape, dim", [((1, 2), 0), ((4, 1), -1), ((2, 1, 3), 1)])
def test_apply_gates_broadcasts_a_size_one_dimension_as_l0(shape, dim):
    """l0-python views the gates along dim and multiplies: a size-1 dimension broadcasts to one entry per gate."""
    x = torch.randn(shape)
    ours, theirs = l0fast.L0Gate(5, seed=0).eval(), ref.L0Gate(5).eval()
    theirs.load_state_dict(ours.state_dict())
    expected = theirs.apply_gates(x, dim=dim)
    assert expected.shape[dim] == 5
    torch.testing.assert_close(ours.apply_gates(x, dim=dim), expected, rtol=1e-6, atol=0)


@needs_l0
@pytest.mark.parametrize("target_items", [20, 39])
def test_hybrid_target_above_n_items_selects_every_item_as_l0(target_items):
    """l0-python takes target_items > n_items while its L0 share int(target_items * l0_fraction) fits: the
    random part then takes every item the gate left."""
    data = torch.randn(10, 2)
    theirs = ref.HybridGate(10, target_items=target_items).select(data, random_seed=0)
    ours = l0fast.HybridGate(10, target_items=target_items).select(data, random_seed=0)
    assert ours[1].tolist() == theirs[1].tolist() == list(range(10))
    assert torch.equal(ours[0], data) and set(ours[2]) <= {"l0", "random"} and len(ours[2]) == 10


@needs_l0
@pytest.mark.parametrize("schedule", ["linear", "exponential", "cosine"])
def test_temperature_schedule_matches_l0(schedule):
    ours = penalties.TemperatureScheduler(1.7, 0.05, 30, schedule)
    theirs = ref.TemperatureScheduler(1.7, 0.05, 30, schedule)
    for epoch in range(0, 40, 3):
        assert ours.get_temperature(epoch) == pytest.approx(theirs.get_temperature(epoch), rel=1e-12)


def test_update_temperatures_reaches_every_gate():
    model = torch.nn.ModuleDict(dict(a=l0fast.L0Linear(3, 2), b=l0fast.L0Conv2d(2, 2, 1, structured=True),
                                     c=l0fast.L0Gate(4), d=l0fast.HardConcrete(3)))
    penalties.update_temperatures(model, 0.37)
    hcs = [m for m in model.modules() if isinstance(m, distributions.HardConcrete)]
    assert len(hcs) == 4 and all(m.temperature == 0.37 for m in hcs)


def test_numpy_integers_are_taken_for_sizes_strides_and_seeds():
    """As in l0-python (a hyper-parameter grid from numpy): sizes and seeds are stored as Python ints."""
    import numpy as np

    gates = l0fast.HardConcrete(np.int64(3), np.int32(2), seed=np.int64(9))
    assert gates.gate_size == (3, 2) and all(type(n) is int for n in gates.gate_size)
    assert torch.equal(gates(), l0fast.HardConcrete(3, 2, seed=9)())
    layer = l0fast.L0Linear(np.int64(6), np.int64(4), seed=0)
    assert (layer.in_features, layer.out_features) == (6, 4) and layer(torch.randn(2, 6)).shape == (2, 4)
    conv = l0fast.L0Conv2d(3, 4, np.int64(3), stride=np.int64(2), seed=0)
    assert conv(torch.randn(1, 3, 5, 5)).shape == (1, 4, 2, 2)
    data = torch.randn(40, 2)
    hybrid = l0fast.HybridGate(40, target_items=10, seed=0)
    assert torch.equal(hybrid.select(data, random_seed=np.int64(3))[1], hybrid.select(data, random_seed=3)[1])


def test_one_element_tensors_are_taken_as_hyper_parameters():
    """A learned or scheduled value (a Lagrange multiplier, a temperature) passed as a tensor, as l0-python
    takes it: a multiplier keeps its gradient; stored settings become floats."""
    model = l0fast.SparseMLP(8, 6, 2)
    multiplier = torch.tensor(1e-3, requires_grad=True)
    penalties.compute_l0l2_penalty(model, l0_lambda=multiplier).backward()
    torch.testing.assert_close(multiplier.grad, penalties.compute_l0_penalty(model).detach())
    penalties.update_temperatures(model, torch.tensor(0.3))
    assert type(model.fc1.weight_gates.temperature) is float and model.fc1.weight_gates.temperature == pytest.approx(0.3)
    gates = l0fast.HardConcrete(4, temperature=torch.tensor(0.5), stretch=torch.tensor(0.2, dtype=torch.float64))
    assert (gates.temperature, gates.stretch) == (0.5, 0.2) and gates().shape == (4,)
    assert penalties.TemperatureScheduler(2.0, 0.5, 10, "linear").get_temperature(torch.tensor(5)) == 1.25
    assert l0fast.prune_model(model, torch.tensor(0.1)) is model
    for bad in (torch.tensor([0.1, 0.2]), torch.tensor(True), torch.tensor(0.1j)):
        with pytest.raises(TypeError, match="threshold must be a real number"):
            l0fast.prune_model(model, bad)


@pytest.mark.parametrize("cast", [lambda m: m.type(torch.float64), lambda m: m.type("torch.DoubleTensor")])
def test_type_conversion_keeps_the_noise_stream_int64(cast):
    """nn.Module.type converts every buffer; the stream position stays int64 and exact (as after .double())."""
    torch.manual_seed(0)
    model = l0fast.SparseMLP(8, 6, 2)
    position = model.fc1.weight_gates.rng_state.clone()
    twin = l0fast.SparseMLP(8, 6, 2)
    twin.load_state_dict(model.state_dict())
    l0fast.load_rng_state_dict(twin, l0fast.rng_state_dict(model))
    cast(model), twin.double()
    assert model.fc1.weight_gates.rng_state.dtype == torch.int64 and torch.equal(model.fc1.weight_gates.rng_state, position)
    x = torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(model(x), twin(x))
    calibration = l0fast.SparseCalibrationWeights(10, seed=2 ** 62 + 1)
    assert cast(calibration).rng_state.tolist() == [2 ** 62 + 1, 0]


@pytest.mark.parametrize("train", [True, False])
def test_unbatched_and_one_value_inputs_are_shaped_as_in_l0_python(train):
    """L0DepthwiseConv2d on (C, H, W) gives a batch of one, (1, C, H', W'); SparseMLP(input_dim=1) takes (N,)."""
    torch.manual_seed(0)
    conv = l0fast.L0DepthwiseConv2d(3, 3, seed=0).train(train)
    x = torch.randn(3, 8, 8)
    rng = l0fast.rng_state_dict(conv)
    out = conv(x)
    l0fast.load_rng_state_dict(conv, rng)
    assert out.shape == (1, 3, 6, 6) and torch.equal(out, conv(x[None]))
    mlp = l0fast.SparseMLP(1, 4, 2).train(train)
    rng = l0fast.rng_state_dict(mlp)
    t = torch.linspace(-1, 1, 5)
    out = mlp(t)
    l0fast.load_rng_state_dict(mlp, rng)
    assert out.shape == (5, 2) and torch.equal(out, mlp(t[:, None]))


@pytest.mark.parametrize("structured", [False, True])
def test_prune_model_zeroes_low_probability_weights(structured):
    conv = l0fast.L0Conv2d(2, 6, 3, structured=structured, seed=0)
    gate = conv.channel_gates if structured else conv.weight_gates
    with torch.no_grad():
        gate.qz_logits.copy_(torch.linspace(-15, 5, gate.qz_logits.numel()).view_as(gate.qz_logits))
    pruned = gate.get_active_prob() <= 0.05
    assert 0 < pruned.sum() < pruned.numel()
    kept = conv.weight.detach().clone()
    layers.prune_model(conv)
    mask = pruned.view(6, *(1,) * 3) if structured else pruned.view_as(conv.weight)
    assert torch.equal(conv.weight, torch.where(mask, torch.zeros_like(kept), kept))
    assert not conv.training


def test_prune_model_depthwise():  # l0-python raises AttributeError here
    conv = l0fast.L0DepthwiseConv2d(4, 3, seed=0)
    with torch.no_grad():
        conv.channel_gates.qz_logits.copy_(torch.tensor([-20.0, 3.0, -20.0, 3.0]))
    layers.prune_model(conv)
    w = conv.depthwise_conv.weight
    assert (w[[0, 2]] == 0).all() and (w[[1, 3]] != 0).all()


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: distributions.HardConcrete(4, temperature=0.0), "temperature"),
        (lambda: distributions.HardConcrete(4, temperature=-1.0), "temperature"),
        (lambda: distributions.HardConcrete(4, stretch=0.0), "stretch"),
        (lambda: distributions.HardConcrete(4, init_mean=1.5), "init_mean"),
        (lambda: distributions.HardConcrete(4, init_mean=-0.1), "init_mean"),
        (lambda: distributions.HardConcrete(0), "input_dim"),
        (lambda: distributions.HardConcrete(3, -2), "output_dim"),
        (lambda: distributions.HardConcrete(3, seed=-1), "seed"),
        (lambda: layers.L0Linear(0, 3), "in_features"),
        (lambda: layers.L0Linear(3, 0), "out_features"),
        (lambda: layers.L0Linear(3, 2, init_sparsity=1.2), "init_sparsity"),
        (lambda: layers.L0Conv2d(0, 2, 3), "in_channels"),
        (lambda: layers.L0Conv2d(2, 2, 0), "kernel_size"),
        (lambda: layers.L0DepthwiseConv2d(-1, 3), "in_channels"),
        (lambda: layers.SparseMLP(input_dim=0), "input_dim"),
        (lambda: gates.SampleGate(10, 20), "target_samples"),
        (lambda: gates.SampleGate(0, 0), "n_samples"),
        (lambda: gates.FeatureGate(10, -1), "max_features"),
        (lambda: gates.L0Gate(0), "size"),
        (lambda: gates.HybridGate(10, target_items=-3), "target_items"),
        (lambda: gates.HybridGate(10, l0_fraction=-0.1), "l0_fraction"),
        (lambda: gates.HybridGate(10, l0_fraction=0.5, random_fraction=0.6), "l0_fraction \\+ random_fraction"),
        (lambda: penalties.TemperatureScheduler(schedule="step"), "schedule.*linear.*exponential.*cosine"),
        (lambda: penalties.TemperatureScheduler(anneal_epochs=-1), "anneal_epochs"),
        (lambda: penalties.TemperatureScheduler(initial_temp=0.0), "initial_temp"),
        (lambda: penalties.TemperatureScheduler(final_temp=-0.1), "final_temp"),
    ],
)
def test_invalid_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_init_mean_edges_are_clamped_not_fatal():
    hi, lo, none = (distributions.HardConcrete(3, init_mean=m) for m in (1.0, 0.0, None))
    assert torch.isfinite(hi.qz_logits).all() and (hi.qz_logits > 10).all() and (lo.qz_logits < -10).all()
    assert (none.qz_logits == 0).all() and hi.init_mean == 1.0


@pytest.mark.parametrize(
    "layer,x,match",
    [
        (lambda: layers.L0Linear(4, 2), torch.randn(3, 5), r"in_features=4.*got \(3, 5\)"),
        (lambda: layers.L0Linear(4, 2), torch.tensor(1.0), r"in_features=4.*got \(\)"),
        (lambda: layers.L0Conv2d(3, 2, 3), torch.randn(2, 4, 8, 8), r"in_channels=3.*got \(2, 4, 8, 8\)"),
        (lambda: layers.L0Conv2d(3, 2, 3), torch.randn(2, 1, 3, 8, 8), r"in_channels=3.*got \(2, 1, 3, 8, 8\)"),
        (lambda: layers.L0DepthwiseConv2d(3, 3), torch.randn(8, 8), r"in_channels=3.*got \(8, 8\)"),
        (lambda: layers.SparseMLP(12, 8, 3), torch.randn(2, 13), r"in_features=12.*got \(2, 13\)"),
        (lambda: layers.L0Linear(4, 2), torch.tensor([[0.0, float("nan"), 1.0, 2.0]]), "NaN"),
        (lambda: layers.L0Conv2d(1, 1, 1), torch.full((1, 1, 2, 2), float("nan")), "NaN"),
    ],
)
def test_bad_layer_inputs_raise(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer()(x)


def test_nan_logits_raise():
    gate = distributions.HardConcrete(3)
    with torch.no_grad():
        gate.qz_logits[1] = float("nan")
    for call in (gate, gate.eval(), gate.get_penalty):
        with pytest.raises(ValueError, match="NaN"):
            call()


def test_selections_take_numpy_data_as_l0_python_does():
    """They refused a numpy array (l0-python indexes it and returns a numpy array's rows or columns)."""
    table = np.arange(24.0).reshape(6, 4)
    with torch.no_grad():
        sample = l0fast.SampleGate(6, 3, seed=0).eval()
        sample.gates.qz_logits.copy_(torch.tensor([5.0, -5, 5, -5, -5, 5]))
        feature = l0fast.FeatureGate(4, 2, seed=0).eval()
        feature.gates.qz_logits.copy_(torch.tensor([-5.0, 5, 5, -5]))
    rows, idx = sample.select_samples(table)
    assert isinstance(rows, np.ndarray) and idx.tolist() == [0, 2, 5] and np.array_equal(rows, table[[0, 2, 5]])
    rows, weights, idx = sample.select_weighted_samples(table, torch.ones(6))
    assert isinstance(rows, np.ndarray) and np.array_equal(rows, table[idx.numpy()]) and idx.tolist() == [0, 2, 5]
    columns, idx = feature.select_features(table)
    assert isinstance(columns, np.ndarray) and np.array_equal(columns, table[:, [1, 2]]) and idx.tolist() == [1, 2]
    columns, names = feature.select_features_with_names(table, list("abcd"))
    assert np.array_equal(columns, table[:, [1, 2]]) and names == ["b", "c"]
    hybrid = l0fast.HybridGate(6, 0.5, 0.5, 4, seed=0).eval()
    rows, idx, kind = hybrid.select(table, random_seed=0)
    assert isinstance(rows, np.ndarray) and np.array_equal(rows, table[idx.numpy()]) and len(kind) == len(idx)
    with pytest.raises(TypeError, match="data must be a torch.Tensor or a numpy array, got list"):
        sample.select_samples(table.tolist())


def test_l0_python_settings_that_were_refused():
    """anneal_epochs=0 (no annealing: final_temp throughout) and a threshold outside [0, 1] are l0-python's."""
    assert [penalties.TemperatureScheduler(2.0, 0.5, anneal_epochs=0).get_temperature(e) for e in (0, 3)] == [0.5, 0.5]
    assert type(penalties.TemperatureScheduler(2, 1, anneal_epochs=4).get_temperature(9)) is float
    gate = l0fast.L0Gate(5, seed=0).eval()
    assert gate.get_active_indices(threshold=-1).tolist() == [0, 1, 2, 3, 4]
    assert gate.get_active_indices(threshold=2).tolist() == []


def test_penalty_tracker_logs_a_tensor_that_requires_grad_quietly_and_refuses_text():
    tracker = l0fast.PenaltyTracker()
    penalty = l0fast.HardConcrete(4, seed=0).get_penalty()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float() of it warned "Converting a tensor with requires_grad=True"
        tracker.log("l0", penalty)
    assert tracker.get_stats("l0")["mean"] == pytest.approx(float(penalty.detach()))
    with pytest.raises(TypeError, match="value for 'l0' must be a number, got str"):
        tracker.log("l0", "1.5")  # was accepted, and came back as text


def test_the_log_alpha_bound_is_one_constant_for_every_gate_function():
    """An overridden LOG_ALPHA_BOUND moved get_active_prob's clamp but not the kernels': get_penalty() then
    disagreed with get_active_prob().sum() (1.9704 and 1.8003 with a bound of 1)."""
    gates = l0fast.HardConcrete(2, seed=0)
    gates.LOG_ALPHA_BOUND = 1.0
    with torch.no_grad():
        gates.qz_logits.fill_(3.0)
    torch.testing.assert_close(gates.get_penalty(), gates.get_active_prob().sum())
    assert gates.get_active_prob()[0] > torch.sigmoid(torch.tensor(1.0 - 0.5 * math.log(0.1 / 1.1))), "clamped at 20, not 1"


def test_a_temperature_tensor_is_read_when_set_so_compile_needs_no_guard_on_it():
    """Kept as a tensor, it made torch.compile(fullgraph=True) fail ("Could not guard on data-dependent
    expression"); the README says a schedule written into it in place is not followed."""
    T = torch.tensor(0.5)
    layer = l0fast.L0Linear(8, 4, temperature=T, seed=0)
    assert type(layer.weight_gates.temperature) is float
    T.fill_(2.0)
    assert layer.weight_gates.temperature == 0.5
    step = torch.compile(lambda x: layer(x).sum() + layer.get_l0_penalty(), fullgraph=True, backend="aot_eager")
    assert torch.isfinite(step(torch.randn(3, 8)))


def test_a_temperature_schedule_compiles_one_graph_per_value_without_breaks():
    """check_number's math.isfinite broke the graph at the first new temperature (fullgraph=True failed); each
    value is still a graph of its own, the kernels taking it as a number (README, torch.compile)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    layer = l0fast.L0Linear(8, 4, temperature=1.0, seed=0)
    step = torch.compile(lambda x: layer(x).sum() + layer.get_l0_penalty(), fullgraph=True, backend="aot_eager")
    for temperature in (1.0, 0.5, 0.25):
        l0fast.update_temperatures(layer, temperature)
        assert torch.isfinite(step(torch.randn(3, 8)))
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 3
    for bad in (float("nan"), 0.0, True):  # still checked while compiling (an early return let them through)
        layer.weight_gates.temperature = bad
        with pytest.raises((ValueError, TypeError), match="beta \\(hard-concrete temperature\\) must be a"):
            torch.compile(lambda x: layer(x).sum(), backend="aot_eager")(torch.randn(3, 8))
