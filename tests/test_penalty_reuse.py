"""get_penalty() reuses the penalty of the pass that sampled the gates, only while that is still right."""

import copy
import gc
import io
import weakref

import pytest
import torch
import torch.nn.functional as F

import l0fast
from l0fast.ops import l0_penalty


def _layer():
    return l0fast.L0Linear(12, 5, seed=3)


def _fresh_penalty(layer):
    gates = layer.weight_gates
    return l0_penalty(gates.qz_logits, gates.temperature, gates.gamma, gates.zeta)


def test_penalty_after_a_training_forward_is_the_one_of_that_pass_once():
    layer = _layer()
    layer(torch.randn(4, 12))
    first, second = layer.get_l0_penalty(), layer.get_l0_penalty()
    assert torch.equal(first, _fresh_penalty(layer)) and torch.equal(second, first)
    assert type(first.grad_fn).__name__ == "HardConcreteGatedBackward", "the pass's penalty"
    assert second is not first and type(second.grad_fn).__name__ == "L0PenaltyBackward", "a later call's own"


def test_a_pass_whose_backward_ran_leaves_no_penalty_to_take():
    """The task loss's backward runs the pass's node: its penalty is then computed afresh, not taken."""
    layer = _layer()
    layer(torch.randn(4, 12)).sum().backward()
    penalty = layer.get_l0_penalty()
    assert type(penalty.grad_fn).__name__ == "L0PenaltyBackward"
    assert torch.equal(penalty, _fresh_penalty(layer))


def test_a_penalty_changed_in_place_changes_no_later_one():
    """The memo handed out its one tensor at every call: ``reg = get_l0_penalty(); reg *= 1e-3`` made every later
    penalty, compute_l0_penalty and get_active_parameter_count 1,000 times too small."""
    model = l0fast.SparseMLP(12, 8, 3)
    model(torch.randn(4, 12))
    expected = [_fresh_penalty(layer) for layer in (model.fc1, model.fc2, model.fc3)]
    reg = model.fc1.get_l0_penalty()
    reg *= 1e-3
    total = model.fc2.get_l0_penalty()
    total += model.fc3.get_l0_penalty()
    assert torch.equal(model.fc1.get_l0_penalty(), expected[0]) and torch.equal(model.fc2.get_l0_penalty(), expected[1])
    assert torch.equal(l0fast.compute_l0_penalty(model), expected[0] + expected[1] + expected[2])
    assert l0fast.get_active_parameter_count(model) == sum(int(e) for e in expected)


def test_penalties_taken_before_a_backward_backpropagate_one_by_one():
    """The memo gave both calls one tensor, whose second backward raised "backward through the graph a second
    time"; l0-python's two calls build two graphs."""
    layer = _layer()
    layer(torch.randn(4, 12))
    first, second = layer.get_l0_penalty(), layer.get_l0_penalty()
    first.backward()
    once = layer.weight_gates.qz_logits.grad.clone()
    second.backward()
    expected = torch.autograd.grad(_fresh_penalty(layer), layer.weight_gates.qz_logits)[0]
    torch.testing.assert_close(once, expected)
    torch.testing.assert_close(layer.weight_gates.qz_logits.grad, 2 * expected)


def test_penalty_is_recomputed_once_the_logits_change_or_the_backward_ran():
    layer = _layer()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    out = layer(torch.randn(4, 12))
    used = layer.get_l0_penalty()
    (out.sum() + used).backward()
    after_backward = layer.get_l0_penalty()
    assert after_backward is not used and type(after_backward.grad_fn).__name__ == "L0PenaltyBackward"
    opt.step()
    layer(torch.randn(4, 12))
    with torch.no_grad():
        layer.weight_gates.qz_logits.add_(0.25)  # an in-place edit after the forward
    changed = layer.get_l0_penalty()
    assert torch.equal(changed, _fresh_penalty(layer))
    layer.weight_gates.temperature = 0.9  # so does another temperature
    assert torch.equal(layer.get_l0_penalty(), _fresh_penalty(layer))
    layer(torch.randn(4, 12))
    layer.weight_gates.qz_logits.data.fill_(-5.0)  # a write no version counter sees
    assert torch.equal(layer.get_l0_penalty(), _fresh_penalty(layer))


def test_penalty_without_autograd_or_in_eval_is_computed_fresh():
    layer = _layer()
    with torch.no_grad():
        layer(torch.randn(4, 12))
        assert layer.get_l0_penalty().grad_fn is None
    layer.eval()
    layer(torch.randn(4, 12))
    assert type(layer.get_l0_penalty().grad_fn).__name__ == "L0PenaltyBackward"


@pytest.mark.parametrize("make", [lambda: l0fast.SparseMLP(20, 16, 3), lambda: l0fast.L0Conv2d(3, 4, 3, seed=1),
                                  lambda: l0fast.L0Conv2d(3, 4, 3, structured=True, seed=1)])
def test_training_with_the_reused_penalty_equals_training_with_fresh_penalties(make):
    """Same seed, same steps: the parameters agree whether get_penalty() reuses the sampling pass or not."""
    torch.manual_seed(0)
    models = [make(), None]
    models[1] = copy.deepcopy(models[0])
    x = torch.randn(6, 20) if isinstance(models[0], l0fast.SparseMLP) else torch.randn(6, 3, 8, 8)
    results = []
    for reuse, model in zip((True, False), models):
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(4):
            opt.zero_grad()
            out = model(x)
            if not reuse:
                for m in model.modules():
                    if isinstance(m, l0fast.HardConcrete):
                        m._penalty_memo.backward_ran()
            penalty = model.get_l0_loss() if isinstance(model, l0fast.SparseMLP) else model.get_l0_penalty()
            (F.mse_loss(out, torch.zeros_like(out)) + 0.01 * penalty).backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backward", [True, False])
def test_a_replaced_pass_is_freed_without_waiting_for_the_garbage_collector(backward):
    """The cached penalty and its graph form no reference cycle: once the next forward replaces them (with or
    without a backward in between), the old pass's penalty and saved gates go with their last reference."""
    layer = _layer()
    gc.collect()
    gc.disable()
    try:
        out = layer(torch.randn(4, 12))
        penalty = layer.get_l0_penalty()
        if backward:
            (out.sum() + penalty).backward()
        freed = weakref.ref(penalty)
        del out, penalty
        layer(torch.randn(4, 12))
        assert freed() is None
    finally:
        gc.enable()


def test_a_module_after_a_forward_can_be_copied_and_saved():
    layer = _layer()
    layer(torch.randn(4, 12))
    layer.get_l0_penalty()
    clone = copy.deepcopy(layer)
    torch.testing.assert_close(clone.get_l0_penalty(), _fresh_penalty(layer))
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded.get_l0_penalty(), _fresh_penalty(layer))


def test_compiled_training_step_equals_eager():
    """torch.compile traces the one-pass gate step of a layer (no penalty reuse while compiling)."""
    import torch._dynamo

    torch._dynamo.reset()
    eager = _layer()
    compiled_layer = copy.deepcopy(eager)
    x = torch.randn(4, 12)

    def step(layer):
        return (layer(x) ** 2).sum() + 0.1 * layer.get_l0_penalty()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        want, got = step(eager), compiled(compiled_layer)
        grads_want = torch.autograd.grad(want, list(eager.parameters()))
        grads_got = torch.autograd.grad(got, list(compiled_layer.parameters()))
        torch.testing.assert_close(got, want)
        for a, b in zip(grads_got, grads_want):
            torch.testing.assert_close(a, b)
    assert torch.equal(eager.weight_gates.rng_state, compiled_layer.weight_gates.rng_state)


def _separate_and_joint_grads(make, x, order):
    """Gradients of ``task + penalty`` by one backward, and by one backward per term in ``order`` with the
    penalty taken right after the forward (two graphs in l0-python), from two copies of one module."""
    joint = make()
    separate = copy.deepcopy(joint)
    grads = []
    for model, how in ((joint, "joint"), (separate, order)):
        out = model(x) if isinstance(model, l0fast.L0Linear) else model()
        task, penalty = (out ** 2).sum(), 0.3 * (model.get_l0_penalty() if isinstance(model, l0fast.L0Linear) else model.get_penalty())
        if how == "joint":
            (task + penalty).backward()
        else:
            first, second = (task, penalty) if how == "task first" else (penalty, task)
            first.backward()
            if how == "penalty first" and isinstance(model, l0fast.L0Linear):
                assert model.weight.grad is None, "the penalty does not reach the weight"
            second.backward()
        grads.append([p.grad for p in model.parameters()])
    return grads


@pytest.mark.parametrize("order", ["task first", "penalty first"])
@pytest.mark.parametrize("make", [_layer, lambda: l0fast.HardConcrete(7, 3, seed=2)], ids=["L0Linear", "HardConcrete"])
def test_task_and_penalty_backward_separately_equal_one_backward(make, order):
    """A penalty read before the task loss's backward (one autograd node serves both) can be backpropagated
    in its own call, before or after the task loss, as in l0-python, with the joint backward's gradients."""
    joint, separate = _separate_and_joint_grads(make, torch.randn(4, 12), order)
    for a, b in zip(separate, joint):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_pass_backpropagated_through_both_outputs_refuses_a_third_backward_and_in_place_changes():
    gates = l0fast.HardConcrete(7, seed=2)
    sample = gates()
    penalty = gates.get_penalty()
    sample.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        sample.sum().backward()
    penalty.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        penalty.backward()
    sample = gates()
    penalty = gates.get_penalty()
    sample.sum().backward()
    with torch.no_grad():
        gates.qz_logits.add_(1.0)  # an optimizer step between the two backwards
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        penalty.backward()
