"""Shuffle-BN across ranks (MoCo's `_batch_shuffle_ddp` / `_batch_unshuffle_ddp`), 2 gloo processes.

The probe "student" is one BatchNorm (converted to grouped BN, as build_student does) over one-hot
inputs: image j is 1 in channel j and 0 elsewhere, so output channel j of image i is non-zero
exactly when image j sat in the BN batch that normalised image i. A key row therefore names the
images its BatchNorm statistics came from, and its own channel names whose key it is.

Two layouts, 8 images on 2 ranks: groups of 2 (2 groups per rank) and groups of 4 (one group
per rank: MoCo's 8 x 32 layout in small). Before the cross-rank shuffle, keys were permuted only
inside each rank, so no key batch ever held another rank's image, and with one group per rank
every key was normalised with exactly its query's BN batch.
"""
import os
import socket
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from fastdisco.errors import UsageError
from fastdisco.models.methods import MoCoV2
from fastdisco.models.student import build_student, convert_grouped_bn, shuffled_forward

sys.path.insert(0, str(Path(__file__).parent))
from train_utils import tiny_cfg  # noqa: E402

WORLD, N_RANK = 2, 4
N_ALL = WORLD * N_RANK
SEED = 3
# A given permutation whose key pairs (groups of 2) never pair two images of one query group:
# query groups are {0,2} {1,3} on rank 0 and {4,6} {5,7} on rank 1.
PERM_GIVEN = [0, 1, 4, 5, 2, 3, 6, 7]


def _probe(group: int) -> nn.Module:
    return convert_grouped_bn(nn.Sequential(nn.BatchNorm2d(N_ALL), nn.Flatten()), group)


def _method(tmp: Path, group: int) -> MoCoV2:
    cfg = tiny_cfg(tmp, "mocov2", model={"shuffle_bn_group": group, "proj_dim": N_ALL})
    method = MoCoV2(cfg, _probe(group))
    method.train()
    method.seed_rng(SEED, torch.device("cpu"))
    return method


def _one_hot() -> torch.Tensor:
    return torch.eye(N_ALL).view(N_ALL, N_ALL, 1, 1)


def _images() -> torch.Tensor:
    return torch.randn(N_ALL, 3, 16, 16, generator=torch.Generator().manual_seed(7))


def _student(group: int) -> nn.Module:
    torch.manual_seed(0)
    cfg = tiny_cfg(Path("."), "mocov2", model={"shuffle_bn_group": group, "proj_hidden": 16, "proj_dim": 8})
    return build_student(cfg.model, "mocov2").train()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    mine = slice(rank * N_RANK, (rank + 1) * N_RANK)
    res = {}
    try:
        for group in (2, 4):
            m = _method(Path(out), group)
            x = _one_hot()[mine]
            start = m.rng_state()
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                res[f"q{group}"] = m.key_encoder(x)               # the query's BN batch (same BN, unshuffled)
                res[f"k{group}"] = m.keys(x)                      # drawn permutation
                res[f"k{group}_next"] = m.keys(x)                 # the generator moved on
            res[f"warn{group}"] = [str(w.message) for w in seen]
            m.load_rng_state(start)                               # restored: the same permutation again
            res[f"k{group}_again"] = m.keys(x)
            res[f"given{group}"] = shuffled_forward(m.key_encoder, x, perm=torch.tensor(PERM_GIVEN))
            res[f"student{group}"] = shuffled_forward(_student(group), _images()[mine], perm=torch.tensor(PERM_GIVEN))
        try:                                                      # 3 images per rank: not whole groups of 2
            _method(Path(out), 2).keys(_one_hot()[:3])
            res["refusal"] = ""
        except UsageError as e:
            res["refusal"] = str(e)
    finally:
        dist.destroy_process_group()
    torch.save(res, Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bn_batches(out: torch.Tensor) -> list[frozenset]:
    return [frozenset(torch.nonzero(row).flatten().tolist()) for row in out]


def _expected_key_batches(perm: list[int], group: int) -> list[frozenset]:
    """The BN batch of each image's key under MoCo's scheme: rank r encodes perm[r*n:(r+1)*n],
    and inside a rank grouped BN puts slice position q in group q mod (n / group)."""
    per_rank_groups = N_RANK // group
    where = {img: pos for pos, img in enumerate(perm)}
    out = []
    for i in range(N_ALL):
        r, q = divmod(where[i], N_RANK)
        out.append(frozenset(perm[r * N_RANK + p] for p in range(N_RANK) if p % per_rank_groups == q % per_rank_groups))
    return out


def _interleaved(perm: list[int], group: int) -> list[int]:
    """The one-process permutation with the same BN batches: one device with grouped BN puts
    position p in group p mod (N_ALL / group), so rank r's group g becomes group r * groups + g."""
    per_rank_groups, groups = N_RANK // group, N_ALL // group
    out = [0] * N_ALL
    for r in range(WORLD):
        for q in range(N_RANK):
            out[(q // per_rank_groups) * groups + r * per_rank_groups + q % per_rank_groups] = perm[r * N_RANK + q]
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("shuffle_ddp")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _gathered(ranks: list[dict], key: str) -> torch.Tensor:
    return torch.cat([res[key] for res in ranks])


@pytest.mark.parametrize("group", [2, 4])
def test_keys_use_the_global_permutation_of_rank_0(ranks, group):
    gen = torch.Generator().manual_seed(SEED)  # rank 0's generator: seed_rng(SEED) on every rank
    first, second = (torch.randperm(N_ALL, generator=gen).tolist() for _ in range(2))
    keys = _gathered(ranks, f"k{group}")
    # unshuffled: row i is image i's key (its own channel is the one positive entry)
    assert torch.equal(keys.argmax(1), torch.arange(N_ALL)) and bool((keys.diagonal() > 0).all())
    key_batches = _bn_batches(keys)
    assert key_batches == _expected_key_batches(first, group)
    assert _bn_batches(_gathered(ranks, f"k{group}_next")) == _expected_key_batches(second, group)
    assert torch.equal(_gathered(ranks, f"k{group}_again"), keys)  # rng_state restores the draw
    # the shuffle crosses ranks: each rank's keys include BN batches holding the other rank's images
    for r in range(WORLD):
        mine = set(range(r * N_RANK, (r + 1) * N_RANK))
        assert any(b - mine for b in key_batches[r * N_RANK:(r + 1) * N_RANK]), (r, key_batches)
    query_batches = _bn_batches(_gathered(ranks, f"q{group}"))
    assert query_batches == [frozenset(j for j in range(N_ALL) if j // N_RANK == i // N_RANK
                                       and j % (N_RANK // group) == i % (N_RANK // group)) for i in range(N_ALL)]
    assert key_batches != query_batches


@pytest.mark.parametrize("group", [2, 4])
def test_key_statistics_never_include_the_query_group_mates(ranks, group):
    keys = _gathered(ranks, f"given{group}")
    assert torch.equal(keys.argmax(1), torch.arange(N_ALL))
    key_batches = _bn_batches(keys)
    query_batches = _bn_batches(_gathered(ranks, f"q{group}"))
    assert key_batches == _expected_key_batches(PERM_GIVEN, group)
    if group == 2:  # pairs: PERM_GIVEN pairs images of different query groups only
        assert all(k & q == {i} for i, (k, q) in enumerate(zip(key_batches, query_batches))), key_batches
    else:           # one group per rank: each key batch is half its query's batch, half the other rank's
        assert all(len(k & q) == group // 2 for k, q in zip(key_batches, query_batches)), key_batches


@pytest.mark.parametrize("group", [2, 4])
def test_two_ranks_equal_one_process_with_the_same_permutation(ranks, group):
    """World size 2 == world size 1 (grouped BN emulation) given the same global permutation."""
    perm = torch.tensor(_interleaved(PERM_GIVEN, group))
    probe = _probe(group).train()
    torch.testing.assert_close(_gathered(ranks, f"given{group}"), shuffled_forward(probe, _one_hot(), perm=perm))
    student = shuffled_forward(_student(group), _images(), perm=perm)
    torch.testing.assert_close(_gathered(ranks, f"student{group}"), student, rtol=1e-4, atol=1e-5)


def test_one_group_per_rank_is_not_a_fallback_warning(ranks):
    for res in ranks:
        assert not any("GroupedBatchNorm2d" in w for w in res["warn4"]), res["warn4"]
        assert not any("GroupedBatchNorm2d" in w for w in res["warn2"]), res["warn2"]


def test_refuses_a_batch_shuffle_bn_cannot_use(ranks, tmp_path):
    for res in ranks:  # 2 ranks, 3 images each, groups of 2
        assert "model.shuffle_bn_group" in res["refusal"] and "multiple of 2 per rank" in res["refusal"]
        assert "\n" not in res["refusal"]
    m = _method(tmp_path, 4)  # one device: needs 2+ groups
    for n in (4, 6):
        with pytest.raises(UsageError, match="at least 2 groups of 4"):
            m.keys(_one_hot()[:n])
    assert m.keys(_one_hot()).shape == (N_ALL, N_ALL)
    # no BatchNorm (nothing to leak): not refused
    cfg = tiny_cfg(tmp_path, "mocov2", model={"shuffle_bn_group": 4, "proj_dim": N_ALL})
    assert MoCoV2(cfg, nn.Sequential(nn.Flatten(), nn.Linear(N_ALL, N_ALL))).keys(_one_hot()[:4]).shape == (4, N_ALL)


def test_grouped_bn_fallback_says_so():
    probe = _probe(4).train()
    with pytest.warns(UserWarning, match="GroupedBatchNorm2d: a batch of 4 is not 2\\+ groups of 4"):
        probe(_one_hot()[:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe(_one_hot())            # 2 groups: grouped, no warning
        probe.eval()(_one_hot()[:4])  # eval: running statistics, no warning
