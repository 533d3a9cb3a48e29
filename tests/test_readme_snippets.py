"""The README's Python snippets run as written, so the first thing a user reads matches the code.

Each ```python block of README.md runs in a namespace holding what its prose assumes (a model, a survey
matrix ``M`` and targets ``y``, ...); a block that is added, removed or starts differently fails here by name,
so a new snippet gets a namespace and a test.  The GPU snippet runs on CPU where no GPU is present.
"""

import pathlib
import re

import numpy as np
import pytest
import torch

import l0fast
import l0fast as l0
from l0fast.datasets import make_survey_problem

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> dict[str, str]:
    """{first line: code} of every ```python block of the README."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {code.splitlines()[0]: code for code in blocks}


def _survey(n_households: int = 600):
    p = make_survey_problem(n_households, n_regions=2, seed=0)
    return {"M": p.M, "y": p.y, "names": p.target_names, "groups": p.target_groups}


def _mlp():
    torch.manual_seed(0)
    return l0.SparseMLP(12, 8, 3)


def _namespace_import():
    return {}


def _namespace_checkpointed_fit():
    survey = _survey()
    return {**survey, "model": l0.SparseCalibrationWeights(survey["M"].shape[1], seed=0)}


def _namespace_calibration_options():
    survey = _survey(12_000)  # target_count=5000 needs more households than that
    n = survey["M"].shape[1]
    return {**survey, "n_households": n, "design_weights": np.full(n, 50.0), "must_keep": np.arange(n) < 10}


def _namespace_rng_state():
    return {"model": _mlp()}


def _namespace_meta_device():
    weights = _mlp().state_dict()
    with torch.device("meta"):
        model = _mlp()
    return {"model": model, "weights": weights}


def _namespace_checkpoint():
    layer = l0.L0Linear(12, 8, seed=0)
    return {"block": layer, "x": torch.randn(4, 12, requires_grad=True)}


def _namespace_gpu():
    survey = _survey()
    return {**survey, "n_households": survey["M"].shape[1]}


# first line of each block -> (namespace factory, check run on the namespace after the block)
SNIPPETS = {
    "import l0fast as l0   # wherever `import l0` worked": (_namespace_import, lambda ns: ns["l0"] is l0fast),
    'model.fit(M, y, epochs=2000, checkpoint="fit.ckpt", checkpoint_every=100, resume=True, progress=True)': (
        _namespace_checkpointed_fit,
        lambda ns: pathlib.Path("report/report.md").is_file() and ns["model"].optimizer_state is not None,
    ),
    "import torch, l0fast as l0": (_namespace_import, lambda ns: ns["gates"].qz_logits.grad is not None),
    "model = l0.SparseCalibrationWeights(n_households, init_weights=design_weights, seed=0)": (
        _namespace_calibration_options,
        # the kept records are outside the count
        lambda ns: ns["model"].get_active_weights()["count"] == 5000 + ns["must_keep"].sum() and len(ns["report"].targets) == len(ns["y"]),
    ),
    'state = {"model": model.state_dict(), "rng": l0fast.rng_state_dict(model)}': (
        _namespace_rng_state, lambda ns: set(ns["state"]["rng"]) == {f"fc{i}.weight_gates.rng_state" for i in (1, 2, 3)},
    ),
    "model.to_empty(device=\"cpu\"); model.load_state_dict(weights)": (
        _namespace_meta_device, lambda ns: ns["model"](torch.randn(2, 12)).isfinite().all().item(),
    ),
    "from torch.utils.checkpoint import checkpoint": (_namespace_checkpoint, lambda ns: ns["y"].shape == (4, 8)),
    'model = l0.SparseCalibrationWeights(n_households).to("cuda")': (_namespace_gpu, lambda ns: ns["model"].get_weights().shape == (600,)),
}


def test_every_python_block_of_the_readme_is_run_here():
    assert sorted(_python_blocks()) == sorted(SNIPPETS), "a README snippet was added, removed or changed its first line"


@pytest.mark.parametrize("first_line", list(SNIPPETS))
def test_readme_snippet_runs(first_line, tmp_path, monkeypatch):
    code = _python_blocks()[first_line]
    if not torch.cuda.is_available():
        code = code.replace('.to("cuda")', "")
    make_namespace, check = SNIPPETS[first_line]
    namespace = {"l0": l0, "l0fast": l0fast, "torch": torch, "np": np, **make_namespace()}
    monkeypatch.chdir(tmp_path)  # snippets write fit.ckpt and report/ where they run
    exec(compile(code, f"README.md: {first_line[:40]}", "exec"), namespace)
    assert check(namespace)
