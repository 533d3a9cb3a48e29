"""Models shared by the graph-capture tests (torch.export, torch.jit.trace, torch.fx.symbolic_trace)."""

from __future__ import annotations

import torch

import l0fast

# (id, factory, input shape); every gated layer kind, and a model of three layers
MODELS = [
    ("L0Linear", lambda: l0fast.L0Linear(6, 4, seed=0), (3, 6)),
    ("SparseMLP", lambda: l0fast.SparseMLP(6, 5, 3), (4, 6)),
    ("L0Conv2d", lambda: l0fast.L0Conv2d(2, 3, 3, seed=1), (2, 2, 6, 6)),
    ("L0Conv2d-structured", lambda: l0fast.L0Conv2d(2, 3, 3, structured=True, seed=2), (2, 2, 6, 6)),
    ("L0DepthwiseConv2d", lambda: l0fast.L0DepthwiseConv2d(2, 3, seed=3), (2, 2, 6, 6)),
]
# pytest.mark.parametrize(**MODEL_PARAMS) over MODELS
MODEL_PARAMS = dict(argnames="factory,shape", argvalues=[m[1:] for m in MODELS], ids=[m[0] for m in MODELS])


class PenaltyOfForward(torch.nn.Module):
    """``0 * layer(x).sum() + layer.get_l0_penalty()``: the penalty asked for after a forward, as in a training
    loss, with the layer's output in the graph."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x).sum() * 0 + self.layer.get_l0_penalty()


def assert_follows_the_parameters(captured, model: torch.nn.Module, x: torch.Tensor) -> None:
    """``captured(x)`` equals ``model(x)``, also after every parameter is scaled in place: the captured module
    holds the model's parameters, not copies, and no cached product as a constant."""
    with torch.no_grad():
        torch.testing.assert_close(captured(x), model(x))
        for p in model.parameters():
            p.mul_(1.5)
        torch.testing.assert_close(captured(x), model(x))


def warm_eval_model(factory, shape) -> tuple[torch.nn.Module, torch.Tensor]:
    """(model in eval mode, input) after one inference forward: its eval cache is warm, and a captured graph
    must not hold the cached product as a constant."""
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(shape)
    with torch.no_grad():
        model(x)
    return model, x
