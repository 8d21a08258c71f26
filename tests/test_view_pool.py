"""The torch loader's shared output pool: a slot is reused only when nobody holds its batch."""
from __future__ import annotations

import pytest
import torch

from fastdisco.loader import view_pool
from fastdisco.loader.view_pool import NO_SLOT, ViewPool

pytestmark = pytest.mark.skipif(not view_pool.available(), reason="this torch has no storage use count")


def _pool(slots=2):
    return ViewPool(slots, 2, (2, 3, 4, 4), (48, 1, 12, 3), torch.float32)


def test_slot_is_busy_in_flight_and_while_any_tensor_on_it_lives():
    pool = _pool()
    a = pool.take()
    assert a != NO_SLOT and not pool.is_free(a)   # in flight
    b = pool.take()
    assert b not in (a, NO_SLOT)
    assert pool.take() == NO_SLOT                  # both in flight: none left
    views = pool.hand_out(a)
    assert views[0].is_shared() and views[0].data_ptr() == pool.slots[a][0].data_ptr()
    assert views[0].stride() == (48, 1, 12, 3)
    assert not pool.is_free(a)                     # the caller holds the batch
    kept = views[1][:, :1]                         # ... or just a view of one of its tensors
    del views
    assert not pool.is_free(a)
    del kept
    assert pool.is_free(a)
    assert pool.take() == a
    pool.reset()                                   # a restarted iterator: nothing in flight
    assert pool.is_free(a) and pool.is_free(b)


def test_workers_receive_the_slots_but_not_the_bookkeeping():
    import pickle

    pool = _pool()
    pool.take()
    clone = pickle.loads(pickle.dumps(pool))
    assert len(clone) == 2 and clone._in_flight == set()
