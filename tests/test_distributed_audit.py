"""A sharded fit at its edges: a keep mask that only some ranks hold, stale shard and checkpoint files, ranks that
disagree on a model setting or a refit argument.

Processes as in test_distributed_fit.py (tests/distributed_harness.py, gloo); the problem and model are its.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.distributed as dist
from distributed_harness import run_ranks, values_of
from test_distributed_fit import MODEL, N, problem

from l0fast import SparseCalibrationWeights
from l0fast.distributed import ShardGroup, gather_model, load_shard, shard_bounds, write_shards
from l0fast.distributed import checkpoint as sharded

KEEP_FIT = dict(lr=0.2, epochs=40, loss_type="relative", target_count=300, verbose_freq=20)
QUICK = dict(lr=0.1, epochs=20, loss_type="relative")


def kept_records(where: str):
    """bool (N,): 20 kept records in rank 0's block ("first"), in rank 1's ("last"), or none."""
    keep = np.zeros(N, dtype=bool)
    keep[{"first": slice(0, 20), "last": slice(N - 20, N), "none": slice(0)}[where]] = True
    return keep


def summary(model) -> dict:
    return {"keep": None if model._keep_mask is None else model._keep_mask.numpy(),
            "weights": model.get_weights(deterministic=True).detach().double().numpy()}


# ---------------------------------------------------------------- rank functions (spawned)


def fit_keeping(rank, size, where, checkpoint):
    """The gathered model of a fit with keep= on every rank, whatever its block keeps, checkpointed."""
    M, y = problem()
    start, stop = shard_bounds(N, rank, size)
    model = SparseCalibrationWeights(stop - start, household_offset=start, n_features_total=N, **MODEL)
    model.fit(M[:, start:stop], y, keep=kept_records(where)[start:stop], checkpoint=checkpoint, process_group=dist.group.WORLD,
              **KEEP_FIT)
    return summary(gather_model(model, ShardGroup()))


def write_checkpoint(rank, size, path):
    sharded.write(ShardGroup(), {"rank": rank}, path, 7, (rank, 1))


def disagreeing(rank, size, call, setting, values):
    """``call`` ("model", "fit" or "refit") gets ``setting=values[rank]``."""
    M, y = problem()
    start, stop = shard_bounds(N, rank, size)
    differing = {setting: values[rank]}
    model = SparseCalibrationWeights(stop - start, household_offset=start, n_features_total=N,
                                     **{**MODEL, **(differing if call == "model" else {})})
    method = model.refit if call == "refit" else model.fit
    method(M[:, start:stop], y, process_group=dist.group.WORLD, **{**QUICK, **({} if call == "model" else differing)})


def diverging_state(rank, size, how, folder):
    """A sharded fit whose ranks' models or checkpoint paths part ways before it (``how``)."""
    M, y = problem()
    start, stop = shard_bounds(N, rank, size)
    model = SparseCalibrationWeights(stop - start, household_offset=start, n_features_total=N, **MODEL)
    fit = dict(QUICK, process_group=dist.group.WORLD)
    if how == "gates drawn on one rank" and rank == 0:
        model.get_weights()  # sampled: advances this rank's noise stream
    if how == "reset_optimizer on one rank":
        model.fit(M[:, start:stop], y, **fit)
        fit["reset_optimizer"] = rank == 0
        before = (model.log_weight.detach().clone(), model.optimizer_state.step)
        try:
            model.fit(M[:, start:stop], y, **fit)
        finally:  # refused before it changed the model (it jittered the weights and reset Adam on rank 0 first)
            assert torch.equal(model.log_weight.detach(), before[0]) and model.optimizer_state.step == before[1]
    if how == "checkpoint on one rank" and rank == 0:
        fit["checkpoint"] = os.path.join(folder, "fit.ckpt")
    if how == "a checkpoint one rank finds":
        fit.update(checkpoint=os.path.join(folder, f"rank{rank}.ckpt"), resume=True)
    model.fit(M[:, start:stop], y, **fit)


def gathered_then_continued(rank, size):
    """A float64 shard fit of 20 epochs, gathered (given the process group itself), then fitted 20 more in one piece."""
    M, y = problem()
    start, stop = shard_bounds(N, rank, size)
    model = SparseCalibrationWeights(stop - start, household_offset=start, n_features_total=N, **MODEL).double()
    model.fit(M[:, start:stop], y, process_group=dist.group.WORLD, **QUICK)
    whole = gather_model(model, dist.group.WORLD)
    facts = (whole.log_weight.dtype, whole.optimizer_state.step)
    whole.fit(M, y, reset_optimizer=False, **QUICK)
    return facts, whole.log_weight.detach().numpy()


def gather_whole(rank, size):
    dist.barrier()  # both ranks past init_process_group: a rank that left during its peer's init killed the peer
    gather_model(SparseCalibrationWeights(N, **MODEL), ShardGroup())


def outside_the_group(rank, size):
    subgroup = dist.new_group([0])  # every rank makes it; rank 1 is not in it
    if rank == 1:
        ShardGroup(subgroup)


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module", params=["first", "last", "none"])
def keeping(request, tmp_path_factory):
    """(the ranks' outcomes, their checkpoint's path, the single-process model and its checkpoint reloaded)."""
    folder = tmp_path_factory.mktemp(f"keep-{request.param}")
    outcome = run_ranks(fit_keeping, 2, request.param, str(folder / "sharded.ckpt"))
    M, y = problem()
    single = SparseCalibrationWeights(N, **MODEL).fit(M, y, keep=kept_records(request.param), checkpoint=str(folder / "single.ckpt"),
                                                      **KEEP_FIT)
    return outcome, folder / "sharded.ckpt", summary(single), summary(SparseCalibrationWeights.load_checkpoint(folder / "single.ckpt"))


def assert_same_model(got: dict, expected: dict) -> None:
    if expected["keep"] is None:
        assert got["keep"] is None
    else:
        np.testing.assert_array_equal(got["keep"], expected["keep"])
    np.testing.assert_array_equal(got["weights"] > 0, expected["weights"] > 0)
    np.testing.assert_allclose(got["weights"], expected["weights"], rtol=1e-5, atol=1e-5 * expected["weights"].max())


def test_keep_held_by_one_rank_gathers_to_the_single_process_model(keeping):
    outcome, _, single, _ = keeping
    for gathered in values_of(outcome):
        assert_same_model(gathered, single)


def test_a_checkpoint_with_keep_held_by_one_rank_combines_to_the_single_process_checkpoint(keeping):
    _, checkpoint, _, single_checkpoint = keeping
    assert_same_model(summary(SparseCalibrationWeights.load_checkpoint(checkpoint)), single_checkpoint)


def test_a_sharded_checkpoint_deletes_its_stale_files_and_only_its_own(tmp_path):
    stale = ["fit.ckpt.e5.rank0-of-3", "fit.ckpt.e5.rank2-of-3", "fit.ckpt.e5.rank1-of-2",  # earlier epochs, any rank count
             "fit.ckpt.tmp-4242", "fit.ckpt.e7.rank0-of-2.tmp-4243",  # temp files of killed writes
             "fit.ckpt.probe.rank1-of-2", "fit.ckpt.probe.rank0-of-4"]  # check_shared's, of a rank killed before removing it
    others = ["other.ckpt.e5.rank0-of-3", "fit.ckpt2.e5.rank0-of-2", "fit.ckpt.e5.e9.rank0-of-2", "fit.ckpt.bak",
              "other.ckpt.probe.rank0-of-2", "fit.ckpt.probe", "fit.ckpt.e5.probe.rank0-of-2"]
    for name in stale + others:
        (tmp_path / name).write_text("x")
    values_of(run_ranks(write_checkpoint, 2, str(tmp_path / "fit.ckpt")))
    assert sorted(os.listdir(tmp_path)) == sorted(["fit.ckpt", "fit.ckpt.e7.rank0-of-2", "fit.ckpt.e7.rank1-of-2", *others])


@pytest.mark.parametrize("call, setting, values", [
    ("model", "seed", (3, 4)),
    ("model", "log_weight_jitter_sd", (0.05, 0.1)),
    ("model", "log_alpha_jitter_sd", (0.01, 0.02)),
    ("fit", "weight_bounds", ((0.5, 2.0), None)),
    ("refit", "epochs", (20, 40)),
    ("refit", "weight_bounds", ((0.5, 2.0), (0.2, 5.0))),
    ("refit", "loss_type", ("relative", "mse")),
])
def test_ranks_that_disagree_on_a_setting_all_fail_naming_it(call, setting, values):
    what = "the refit's argument" if call == "refit" else "the fit's or the model's argument"
    for ok, error in run_ranks(disagreeing, 2, call, setting, values, timeout=90, collective_timeout=20):
        assert not ok and "ValueError" in error and f"disagree on {what} {setting!r}" in error


def test_ranks_that_disagree_on_giving_per_household_options_all_fail():
    """keep on one rank and not the other: the end of the fit would run collectives on one rank only."""
    kept = shard_bounds(N, 0, 2)[1] * [False]
    for ok, error in run_ranks(disagreeing, 2, "fit", "keep", (np.array(kept), None), timeout=90, collective_timeout=20):
        assert not ok and "disagree on the fit's or the model's argument 'per-household options'" in error


def matrix(households: int = 90):
    return sp.random(12, households, density=0.2, format="csc", random_state=0)


def test_write_shards_replaces_the_set_the_folder_held(tmp_path):
    M = matrix()
    sp.save_npz(tmp_path / "shard-00000.npz", M)  # the names write_shards gave before they held the count
    write_shards(M, str(tmp_path), 8)
    paths = write_shards(M, str(tmp_path), 2)
    assert sorted(os.listdir(tmp_path)) == ["shard-00000-of-00002.npz", "shard-00001-of-00002.npz"] == [os.path.basename(p) for p in paths]
    blocks = [load_shard(str(tmp_path), rank, 2) for rank in range(2)]
    assert [(offset, total) for _, offset, total in blocks] == [(0, 90), (45, 90)]
    assert (sp.hstack([b for b, _, _ in blocks]) != M).nnz == 0


def test_shards_in_a_folder_whose_name_holds_glob_characters_load(tmp_path, capsys):
    """'br[1]' read as a glob pattern: the folder held 0 shard files (the CLI said run fewer processes)."""
    from l0fast.cli import main

    M, folder = matrix(), str(tmp_path / "br[1]")
    write_shards(M, folder, 3)
    assert len(write_shards(M, folder, 2)) == 2 and len(os.listdir(folder)) == 2  # the set of 3 replaced
    assert (sp.hstack([load_shard(folder, rank, 2)[0] for rank in range(2)]) != M).nnz == 0
    targets = str(tmp_path / "targets.csv")
    with open(targets, "w") as f:
        f.write("name,value\n" + "".join(f"t{i},{v}\n" for i, v in enumerate(M @ np.ones(M.shape[1]) + 1)))
    assert main(["calibrate", "--matrix", folder, "--targets", targets, "--epochs", "2", "--out", str(tmp_path / "w.csv")]) == 0


@pytest.mark.parametrize("change", ["one missing", "one of another count", "another file"])
def test_a_folder_without_one_complete_set_of_shard_files_is_refused(tmp_path, change):
    write_shards(matrix(), str(tmp_path), 3)
    if change == "one missing":
        os.remove(tmp_path / "shard-00001-of-00003.npz")
    elif change == "one of another count":
        write_shards(matrix(), str(tmp_path / "two"), 2)
        os.replace(tmp_path / "two" / "shard-00001-of-00002.npz", tmp_path / "shard-00001-of-00002.npz")
    else:
        sp.save_npz(tmp_path / "M.npz", matrix())
    with pytest.raises(ValueError, match=f"{tmp_path} does not hold one complete set of shard files.*write_shards"):
        load_shard(str(tmp_path), 0, 1)


def test_shard_files_of_other_names_are_read_in_sorted_order(tmp_path):
    M = matrix()
    sp.save_npz(tmp_path / "b.npz", M[:, 30:])
    sp.save_npz(tmp_path / "a.npz", M[:, :30])
    block, offset, total = load_shard(str(tmp_path), 0, 1)
    assert (offset, total) == (0, 90) and (block != M).nnz == 0


@pytest.mark.parametrize("how, named", [
    ("gates drawn on one rank", "the model's state 'rng_state'"),
    ("reset_optimizer on one rank", "the model's state 'continuing Adam (reset_optimizer)'"),
    ("checkpoint on one rank", "the fit's or the model's argument 'checkpoint given'"),
    ("a checkpoint one rank finds", "the fit's or the model's argument 'a checkpoint to resume'"),
])
def test_ranks_whose_model_or_checkpoint_parted_ways_all_fail_naming_it(tmp_path, how, named):
    """The first two fitted a mix of models that matched no fit, silently; a checkpoint on one rank aborted in gloo
    (a collective mismatch), and a path that only one rank finds (no shared file system) resumed one rank alone."""
    (tmp_path / "rank0.ckpt").write_text("only rank 0 sees this file")
    for ok, error in run_ranks(diverging_state, 2, how, str(tmp_path), timeout=90, collective_timeout=20):
        assert not ok and "ValueError" in error and f"disagree on {named}" in error, error


def test_a_gathered_model_keeps_adam_and_the_dtype_and_goes_on_as_one_longer_fit():
    """gather_model dropped Adam's state (fit(reset_optimizer=False) restarted Adam and jittered the weights again)
    and built a float32 model of float64 shards; given a process group rather than a ShardGroup it raised
    AttributeError."""
    M, y = problem()
    single = SparseCalibrationWeights(N, **MODEL).double()
    single.fit(M, y, **QUICK)
    single.fit(M, y, reset_optimizer=False, **QUICK)
    for facts, log_weight in values_of(run_ranks(gathered_then_continued, 2)):
        assert facts == (torch.float64, 20)
        np.testing.assert_allclose(log_weight, single.log_weight.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_a_shard_group_of_a_group_this_process_is_not_in_is_refused():
    """Its rank and size read -1, and the fit failed later with an IndexError."""
    outcome = run_ranks(outside_the_group, 2, timeout=90, collective_timeout=20)
    assert outcome[0][0] and not outcome[1][0] and "process_group does not hold this process" in outcome[1][1]


def test_gathering_a_model_that_is_not_a_shard_is_refused():
    for ok, error in run_ranks(gather_whole, 2, timeout=90, collective_timeout=20):
        assert not ok and "not a shard of them: there is nothing to gather" in error


def test_shard_files_of_other_names_are_read_with_their_numbers_in_order(tmp_path):
    """Sorted as text, part-10 came before part-5 and its households were read as the earlier ones, silently;
    names whose numbers tie (part-01, part-1) go in text order, not the file system's."""
    names = {"part-0": 10, "part-5": 15, "part-10": 20, "part-1": 11, "part-01": 12}
    blocks = {name: matrix(households) for name, households in names.items()}
    for name, block in blocks.items():
        sp.save_npz(tmp_path / f"{name}.npz", block)
    M, offset, total = load_shard(str(tmp_path), 0, 1)
    assert (offset, total) == (0, sum(names.values()))
    order = ["part-0", "part-01", "part-1", "part-5", "part-10"]
    assert (M != sp.hstack([blocks[name] for name in order])).nnz == 0


def write_checkpoint_on_own_disk(rank, size, folder):
    """Each rank's ``folder/machine<rank>``: ranks on machines that share no file system."""
    os.makedirs(os.path.join(folder, f"machine{rank}"), exist_ok=True)
    write_checkpoint(rank, size, os.path.join(folder, f"machine{rank}", "fit.ckpt"))


def test_a_sharded_checkpoint_that_rank_0_cannot_see_whole_fails_every_rank_before_its_manifest(tmp_path):
    """Without a shared file system rank 0 wrote a manifest naming shards it could not see: the fit ended well, and its
    checkpoints could never be resumed."""
    outcome = run_ranks(write_checkpoint_on_own_disk, 2, str(tmp_path))
    for ok, error in outcome:
        assert not ok and "rank 0 does not see the shard files other ranks wrote (fit.ckpt.e7.rank1-of-2)" in error
        assert "a file system every rank sees" in error
    assert not (tmp_path / "machine0" / "fit.ckpt").exists()


def test_a_manifest_whose_shard_file_is_missing_names_it(tmp_path):
    """A shard deleted, or not copied beside its manifest, raised a bare FileNotFoundError."""
    path = str(tmp_path / "fit.ckpt")
    values_of(run_ranks(write_checkpoint, 2, path))
    os.remove(tmp_path / "fit.ckpt.e7.rank0-of-2")
    with pytest.raises(ValueError, match=r"fit.ckpt names .*fit.ckpt.e7.rank0-of-2 \(rank 0's shard\), which is missing"):
        sharded.combine(sharded.read_manifest(path), path)


def gather_unlike(rank, size, how):
    """gather_model of shards that are not one fit's: ``how`` says what differs."""
    start, stop = (0, N // 2) if how == "overlapping blocks" else shard_bounds(N, rank, size)
    model = SparseCalibrationWeights(stop - start, household_offset=start, n_features_total=N,
                                     **{**MODEL, "seed": 3 + rank if how == "seed" else 3})
    if how == "dtype" and rank == 1:
        model = model.double()
    return gather_model(model, ShardGroup()).n_features


@pytest.mark.parametrize("how, named", [
    ("overlapping blocks", "household blocks must tile"),
    ("seed", "disagree on the model to gather: 'settings'"),
    ("dtype", "disagree on the model to gather: 'dtype'"),
])
def test_gathering_shards_of_different_fits_fails_every_rank_naming_it(how, named):
    """Overlapping blocks joined into a model of the wrong households, another seed into a different model on each rank,
    and a float64 shard among float32 ones aborted the process in gloo."""
    for ok, error in run_ranks(gather_unlike, 2, how, timeout=90, collective_timeout=20):
        assert not ok and named in error, error


def test_a_rank_left_without_households_is_named_by_load_shard(tmp_path):
    """load_shard handed out empty blocks; the model then failed with 'n_features must be a positive int ... got 0'."""
    M = sp.random(4, 3, density=1.0, format="csc", random_state=0)
    sp.save_npz(tmp_path / "M.npz", M)
    with pytest.raises(ValueError, match=r"M.npz: rank 0 of 4 gets none of the 3 households; run at most 3 processes"):
        load_shard(str(tmp_path / "M.npz"), 0, 4)
    write_shards(M, str(tmp_path / "shards"), 5)  # two files without households
    outcomes = []
    for rank in range(4):
        try:
            outcomes.append(load_shard(str(tmp_path / "shards"), rank, 4)[0].shape[1])
        except ValueError as error:
            outcomes.append(str(error))
    assert 0 not in outcomes and any("gets none of the 3 households" in str(o) for o in outcomes), outcomes


def test_a_shard_folder_file_that_is_no_sparse_matrix_is_named(tmp_path):
    """The error named the folder and a KeyError."""
    write_shards(sp.random(4, 6, density=0.5, format="csc", random_state=0), str(tmp_path), 2)
    os.remove(tmp_path / "shard-00001-of-00002.npz")
    np.savez(tmp_path / "shard-00001-of-00002.npz", values=np.ones(3))
    with pytest.raises(ValueError, match=r"shard-00001-of-00002.npz: not a scipy sparse .npz \(KeyError\)"):
        load_shard(str(tmp_path), 0, 2)


def test_a_local_rank_beyond_the_machine_s_gpus_is_named(monkeypatch):
    """torch.cuda.set_device raised its own error."""
    from l0fast.distributed import join_from_environment

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name, value in (("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "3"), ("MASTER_ADDR", "x"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=3, and this machine has 2 CUDA devices: run at most 2 processes per "
                                         r"machine on --device cuda \(torchrun --nproc-per-node 2\)"):
        join_from_environment("cuda")


def disagreeing_on_targets(rank, size, what):
    """Rank 1 fits other targets (``what``: its y, its groups or its number of rows)."""
    M, y = problem()
    y, groups = np.array(y, dtype=np.float64), None
    if rank == 1 and what == "y":
        y[2] += 1
    if rank == 1 and what == "groups":
        groups = np.arange(len(y)) % 3
    if rank == 1 and what == "rows":
        M, y = M[:-1], y[:-1]
    start, stop = shard_bounds(N, rank, size)
    model = SparseCalibrationWeights(stop - start, household_offset=start, n_features_total=N, **MODEL)
    model.fit(M[:, start:stop], y, target_groups=groups, process_group=dist.group.WORLD, **QUICK)


@pytest.mark.parametrize("what, named", [
    ("y", "'target values (y)'"),
    ("groups", "'target loss weights (target_groups, normalize_groups, group_multipliers)'"),
    ("rows", "'number of targets (rows of M, y)' (rank 0: "),
])
def test_ranks_with_other_targets_all_fail_naming_what_differs(what, named):
    """Each read "disagree on ... 'targets' (rank 0: '<sha256>', rank 1: '<sha256>')"."""
    for ok, error in run_ranks(disagreeing_on_targets, 2, what, timeout=90, collective_timeout=20):
        assert not ok and f"disagree on the fit's or the model's argument {named}" in error, error


def fit_on_own_disk(rank, size, folder):
    """A sharded fit whose checkpoint is each rank's ``folder/machine<rank>/fit.ckpt``: ranks sharing no file system."""
    M, y = problem()
    start, stop = shard_bounds(N, rank, size)
    os.makedirs(os.path.join(folder, f"machine{rank}"), exist_ok=True)
    model = SparseCalibrationWeights(stop - start, household_offset=start, n_features_total=N, **MODEL)
    model.fit(M[:, start:stop], y, checkpoint=os.path.join(folder, f"machine{rank}", "fit.ckpt"),
              process_group=dist.group.WORLD, lr=0.2, epochs=40, verbose_freq=20)


def test_a_sharded_fit_on_disks_the_ranks_do_not_share_fails_before_its_first_epoch(tmp_path):
    """Found at the first checkpoint, the fit was lost when that was the last one (epochs=, no checkpoint_every):
    now before any epoch, and the probe files are gone."""
    outcome = run_ranks(fit_on_own_disk, 2, str(tmp_path))
    for ok, error in outcome:
        assert not ok and "rank 0 does not see the files other ranks wrote (fit.ckpt.probe.rank1-of-2)" in error
        assert "a file system every rank sees" in error and "run_epochs" not in error
    assert sorted(os.listdir(tmp_path / "machine0")) == sorted(os.listdir(tmp_path / "machine1")) == []
