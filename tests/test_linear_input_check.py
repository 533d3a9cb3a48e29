"""L0Linear's input check: the same clear error in every mode, raised in training before the gates draw noise.

Outside training the check runs only after ``F.linear`` has refused the input (it costs a tenth of a
batch-1 eval forward), so these cases also show that ``F.linear`` refuses every input the check refuses.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from l0fast import L0Linear

BAD_INPUTS = {
    "int64": (lambda: torch.ones(4, 2, dtype=torch.int64), TypeError, r"input has dtype torch\.int64.*input\.to\(torch\.float32\)"),
    "float64": (lambda: torch.ones(4, 2, dtype=torch.float64), TypeError, r"input has dtype torch\.float64"),
    "float16": (lambda: torch.ones(4, 2, dtype=torch.float16), TypeError, r"input has dtype torch\.float16"),
    "bool": (lambda: torch.ones(4, 2, dtype=torch.bool), TypeError, r"input has dtype torch\.bool"),
    "complex64": (lambda: torch.ones(4, 2, dtype=torch.complex64), TypeError, r"input has dtype torch\.complex64"),
    "numpy": (lambda: np.ones((4, 2), dtype=np.float32), TypeError, r"input must be a torch\.Tensor"),
    "list": (lambda: [[1.0, 2.0]], TypeError, r"input must be a torch\.Tensor"),
    "0-dim": (lambda: torch.tensor(1.0), ValueError, r"in_features=2"),
    "last dim 3": (lambda: torch.ones(1, 3), ValueError, r"in_features=2"),
    "empty last dim": (lambda: torch.ones(5, 0), ValueError, r"in_features=2"),
}
MODES = {"train": (True, True), "eval": (False, True), "eval, no_grad": (False, False)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_the_clear_error_in_every_mode(case, mode):
    make_input, error, message = BAD_INPUTS[case]
    training, grad = MODES[mode]
    layer = L0Linear(2, 3, seed=0).train(training)
    rng_state = layer.weight_gates.rng_state.clone()
    with torch.set_grad_enabled(grad), pytest.raises(error, match=message):
        layer(make_input())
    assert torch.equal(layer.weight_gates.rng_state, rng_state), "a refused input must not advance the noise stream"


@pytest.mark.parametrize("mode", MODES)
def test_autocast_does_not_cast_float64(mode):
    training, grad = MODES[mode]
    layer = L0Linear(2, 3, seed=0).train(training)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match=r"input has dtype torch\.float64"):
            layer(torch.ones(4, 2, dtype=torch.float64))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_accepts_another_floating_dtype_in_every_mode(mode, dtype):
    """Under autocast the input may be any dtype autocast casts (floating, not float64), in training and in eval."""
    training, grad = MODES[mode]
    layer = L0Linear(6, 4, seed=0).train(training)
    x = torch.randn(3, 6).to(dtype)
    state = layer.weight_gates.rng_state.clone()
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        layer.weight_gates.rng_state.copy_(state)  # the same gates again for the reference
        expected = F.linear(x, layer.weight * layer.weight_gates(), layer.bias)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
