"""A calibration fit sharded over processes (gloo, 2 and 3 ranks) equals the single-process fit.

Every rank builds the same seeded problem and keeps its block of households;
the concatenated shards are compared with one unsharded fit of the whole
problem: the weights to 1e-5 relative, the same active households, the same
history.  Collectives time out (tests/distributed_harness.py), so a hang fails.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from distributed_harness import run_ranks, values_of

from l0fast import SparseCalibrationWeights
from l0fast.datasets import make_survey_problem
from l0fast.distributed import ShardGroup, shard_bounds
from l0fast.engine import FitDiverged

N = 1500
PLAIN = dict(lr=0.2, epochs=120, loss_type="relative", lambda_l0=1e-5, verbose_freq=40)
OPTIONS = dict(lr=0.2, epochs=150, loss_type="relative", target_count=400, weight_bounds=(0.2, 5.0), verbose_freq=50)
REFIT = dict(epochs=60, lr=0.1, loss_type="relative", weight_bounds=(0.2, 5.0))
MODEL = dict(init_weights=100.0, seed=3, log_weight_jitter_sd=0.05)


def problem(empty: tuple[int, int] | None = None):
    """The seeded survey problem; households [empty) get no non-zeros."""
    p = make_survey_problem(N, n_regions=4, seed=0)
    M = p.M.tocsc(copy=True)
    if empty is not None:
        M[:, empty[0] : empty[1]] = 0
        M.eliminate_zeros()
    return M.tocsr(), p.y


def keep_mask():
    return np.arange(N) % 97 == 0


def fit_model(M, y, block, size_kwargs, fit_kwargs, group=None):
    start, stop = block
    model = SparseCalibrationWeights(stop - start, household_offset=start, n_features_total=N, **size_kwargs)
    extra = {} if "target_count" not in fit_kwargs else {"keep": keep_mask()[start:stop]}
    return model.fit(M[:, start:stop], y, process_group=group, **fit_kwargs, **extra)


def result(model) -> dict:
    return {"weights": model.get_weights(deterministic=True).detach().double().numpy(), "history": model.history,
            "lambda": model.lambda_l0_, "rng": model.rng_state.tolist()}


def single(fit_kwargs, empty=None, refit=False) -> dict:
    M, y = problem(empty)
    model = fit_model(M, y, (0, N), MODEL, fit_kwargs)
    if refit:
        model.refit(M, y, **REFIT)
    return result(model)


def assert_same_fit(shards: list[dict], whole: dict, rows: slice = slice(None)) -> None:
    """Same active set, weights to 1e-5, same history ``rows`` on every rank."""
    weights = np.concatenate([s["weights"] for s in shards])
    np.testing.assert_array_equal(weights > 0, whole["weights"] > 0)
    np.testing.assert_allclose(weights, whole["weights"], rtol=1e-5, atol=1e-5 * whole["weights"].max())
    for s in shards:
        history, expected = s["history"][rows], whole["history"][rows]
        assert [(r["epoch"], r["active"]) for r in history] == [(r["epoch"], r["active"]) for r in expected]
        np.testing.assert_allclose([r["loss"] for r in history], [r["loss"] for r in expected], rtol=1e-6)
        assert s["rng"] == whole["rng"]
        assert s["lambda"] == pytest.approx(whole["lambda"], rel=1e-6)


# ---------------------------------------------------------------- rank functions (spawned)


def sharded_fits(rank, size, checkpoint):
    """Three fits on an even split: plain, with every option and a refit, and one resumed from a sharded checkpoint."""
    M, y = problem()
    block = shard_bounds(N, rank, size)
    group = dist.group.WORLD
    plain = result(fit_model(M, y, block, MODEL, PLAIN, group))
    options = fit_model(M, y, block, MODEL, OPTIONS, group)
    options.refit(M[:, block[0] : block[1]], y, process_group=group, **REFIT)
    first = fit_model(M, y, block, MODEL, {**PLAIN, "epochs": 50, "checkpoint": checkpoint}, group)
    resumed = fit_model(M, y, block, MODEL, {**PLAIN, "checkpoint": checkpoint, "checkpoint_every": 40, "resume": True}, group)
    combined = SparseCalibrationWeights.load_checkpoint(checkpoint) if rank == 0 else None
    before = result(resumed)
    try:
        resumed.fit(M[:, block[0] : block[1]] * 1e30, np.full(len(y), 1e30), lr=1e6, epochs=20, process_group=group)
        diverged = None
    except FitDiverged as error:
        diverged = str(error)
    kept = result(resumed)
    return {"plain": plain, "options": result(options), "first_epochs": first.epochs_trained, "resumed": before,
            "combined": None if combined is None else result(combined),
            "files": sorted(os.listdir(os.path.dirname(checkpoint))), "diverged": diverged,
            "kept": all(np.array_equal(kept[k], before[k]) for k in ("weights", "rng")) and kept["history"] == before["history"]}


def uneven_fit(rank, size, blocks, empty, checkpoint):
    """A fit on uneven blocks, one of them without non-zeros; then a resume of a checkpoint of 2 ranks."""
    M, y = problem(empty)
    out = result(fit_model(M, y, blocks[rank], MODEL, PLAIN, dist.group.WORLD))
    try:
        fit_model(M, y, blocks[rank], MODEL, {**PLAIN, "checkpoint": checkpoint, "resume": True}, dist.group.WORLD)
    except ValueError as error:
        out["resume_error"] = str(error)
    return out


def disagreeing_fit(rank, size, what):
    M, y = problem()
    block = shard_bounds(N, rank, size)
    if what == "lr":
        fit_model(M, y, block, MODEL, {**PLAIN, "lr": 0.1 * (rank + 1)}, dist.group.WORLD)
    else:  # overlapping blocks
        fit_model(M, y, (0, block[1]), MODEL, PLAIN, dist.group.WORLD)


def on_the_triton_engine(set_attribute=setattr) -> list:
    """Serve fits with the Triton engine (CPU tensors in the interpreter; L0FAST_BACKEND is read once, at import)
    and list the TritonFits made, so that a test sees them run.  ``set_attribute``: monkeypatch.setattr in a
    test's own process."""
    import l0fast.engine as engine
    import l0fast.engine.gpu as gpu
    import l0fast.sparse as sparse

    made = []

    class Spied(gpu.TritonFit):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    for module in (engine, sparse):
        set_attribute(module, "engine_backend", lambda device: "triton")
    set_attribute(gpu, "TritonFit", Spied)
    return made


def triton_fit(rank, size):
    """A small sharded fit on the Triton engine, whose ranks' clocks would cut its chunks into other pieces (one epoch
    each on rank 0, the whole chunk on rank 1): each engine call ends in a collective, so every rank runs rank 0's."""
    import l0fast.fit_loop as fit_loop

    fit_loop.PIECE_SECONDS = 0.0 if rank == 0 else 1e9
    made = on_the_triton_engine()
    p = make_survey_problem(240, n_regions=2, seed=1)
    start, stop = shard_bounds(240, rank, size)
    model = SparseCalibrationWeights(stop - start, household_offset=start, n_features_total=240, **MODEL)
    model.fit(p.M[:, start:stop], p.y, process_group=dist.group.WORLD, **{**PLAIN, "epochs": 12, "verbose_freq": 6})
    return result(model), len(made)


def crashing_fit(rank, size):
    """Rank 1 dies in its 6th exchange; rank 0 must fail with a clear error, not hang."""
    if rank == 1:
        calls = [0]
        exchange = ShardGroup.exchange

        def dying(self, totals):
            calls[0] += 1
            if calls[0] == 6:
                os._exit(3)
            exchange(self, totals)

        ShardGroup.exchange = dying
    M, y = problem()
    fit_model(M, y, shard_bounds(N, rank, size), MODEL, PLAIN, dist.group.WORLD)


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    return values_of(run_ranks(sharded_fits, 2, str(folder / "fit.ckpt"))), str(folder / "fit.ckpt")


def test_sharded_fit_equals_the_single_process_fit(two_ranks):
    shards, _ = two_ranks
    assert_same_fit([s["plain"] for s in shards], single(PLAIN))


def test_sharded_fit_with_target_count_keep_bounds_and_refit(two_ranks):
    shards, _ = two_ranks
    whole = single(OPTIONS, refit=True)
    assert_same_fit([s["options"] for s in shards], whole)
    weights = np.concatenate([s["options"]["weights"] for s in shards])
    assert (weights > 0).sum() == OPTIONS["target_count"] + keep_mask().sum()
    ratio = weights[weights > 0] / MODEL["init_weights"]  # the refit kept the bounds
    assert (ratio >= 0.2).all() and (ratio <= 5.0).all()


def test_sharded_checkpoint_resumes_to_the_uninterrupted_fit(two_ranks):
    shards, path = two_ranks
    assert shards[0]["first_epochs"] == 50
    assert_same_fit([s["resumed"] for s in shards], single(PLAIN), rows=slice(-2, None))  # the first fit adds a row at 50
    # the manifest and one shard file per rank remain: the older shards were deleted
    assert shards[0]["files"] == ["fit.ckpt", "fit.ckpt.e120.rank0-of-2", "fit.ckpt.e120.rank1-of-2"]
    np.testing.assert_array_equal(shards[0]["combined"]["weights"],
                                  np.concatenate([s["resumed"]["weights"] for s in shards]))


def test_a_diverging_sharded_fit_raises_on_every_rank_and_keeps_every_shard(two_ranks):
    shards, _ = two_ranks
    for s in shards:
        assert s["diverged"] is not None and "became NaN" in s["diverged"] and "left as it was" in s["diverged"]
        assert s["kept"]


def test_uneven_shards_and_a_rank_without_non_zeros(two_ranks):
    _, path = two_ranks
    blocks = [(0, 200), (200, 1290), (1290, N)]
    empty = (1290, N)
    shards = values_of(run_ranks(uneven_fit, 3, blocks, empty, path))
    assert_same_fit(shards, single(PLAIN, empty=empty))
    for s in shards:
        assert "written by 2 ranks, this fit has 3" in s["resume_error"]


@pytest.mark.parametrize("what, match", [("lr", "disagree on the fit's or the model's argument 'lr'"), ("blocks", "must tile")])
def test_ranks_that_disagree_all_fail_with_the_same_clear_error(what, match):
    outcome = run_ranks(disagreeing_fit, 2, what)
    for ok, error in outcome:
        assert not ok and "ValueError" in error and match in error


def test_a_crashing_rank_ends_the_fit_with_a_clear_error():
    outcome = run_ranks(crashing_fit, 2, timeout=120, collective_timeout=20)
    ok, error = outcome[0]
    assert not ok and "RuntimeError" in error and "another rank has probably failed" in error
    assert outcome[1] == (False, "rank 1 died (exit code 3)")


def test_the_gates_of_a_shard_are_its_part_of_the_unsharded_gates():
    whole = SparseCalibrationWeights(N, seed=5, log_weight_jitter_sd=0.1)
    start, stop = 437, 1111
    shard = SparseCalibrationWeights(stop - start, seed=5, log_weight_jitter_sd=0.1, household_offset=start, n_features_total=N)
    torch.testing.assert_close(shard.log_alpha, whole.log_alpha[start:stop], rtol=0, atol=0)
    for _ in range(3):
        torch.testing.assert_close(shard.get_weights(), whole.get_weights()[start:stop], rtol=0, atol=0)
    assert torch.equal(shard.rng_state, whole.rng_state)


@pytest.mark.parametrize("kwargs, match", [
    (dict(household_offset=100, n_features_total=150), "must lie within n_features_total=150"),
    (dict(household_offset=-1, n_features_total=500), "household_offset must be an int >= 0"),
    (dict(household_offset=0, n_features_total=500, seed=None), "needs seed=<int>"),
])
def test_bad_shard_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseCalibrationWeights(100, **{"seed": 0, **kwargs})


def test_a_shard_without_a_process_group_is_an_error():
    M, y = problem()
    model = SparseCalibrationWeights(100, seed=0, household_offset=0, n_features_total=N)
    with pytest.raises(ValueError, match="fit it with process_group="):
        model.fit(M[:, :100], y, epochs=2)


def test_sharded_fit_on_the_triton_engine(monkeypatch):
    shards, fits_made = zip(*values_of(run_ranks(triton_fit, 2)))
    assert fits_made == (1, 1)
    made = on_the_triton_engine(monkeypatch.setattr)
    p = make_survey_problem(240, n_regions=2, seed=1)
    whole = SparseCalibrationWeights(240, **MODEL).fit(p.M, p.y, **{**PLAIN, "epochs": 12, "verbose_freq": 6})
    assert len(made) == 1
    assert_same_fit(list(shards), result(whole))
