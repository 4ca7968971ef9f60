"""A worker's replies come back through a block of shared memory the runner's side owns."""

from __future__ import annotations

from multiprocessing import shared_memory

import numpy as np
import pytest

from bluesky_ptycho.federation.shared_replies import GROWTH, ReplyArea, pack


def reply(canvas: int) -> tuple[bool, dict]:
    rng = np.random.default_rng(canvas)
    obj = (rng.random((canvas, canvas)) + 1j * rng.random((canvas, canvas))).astype(np.complex64)
    return True, {"object": obj, "positions": rng.random((7, 2)), "name": "preview"}


def test_a_reply_larger_than_the_block_travels_pickled_and_the_block_grows_for_the_next():
    area, mapped = ReplyArea(), {}
    first = reply(64)
    packed = pack(first, area.block, mapped)
    assert packed.sizes == () and packed.needed == first[1]["object"].nbytes + first[1]["positions"].nbytes
    ok, result = area.unpack(packed)
    assert ok and np.array_equal(result["object"], first[1]["object"]) and result["name"] == "preview"
    name, size = area.block
    assert size == int(packed.needed * GROWTH)

    second = reply(70)  # the canvas grew, within the block
    packed = pack(second, area.block, mapped)
    assert packed.needed == 0 and sum(packed.sizes) == second[1]["object"].nbytes + 7 * 2 * 8
    assert len(packed.pickle) < 1000  # the arrays are not in the pipe
    _, result = area.unpack(packed)
    mapped[name].buf[:] = bytes(mapped[name].size)  # the worker writes its next reply
    assert np.array_equal(result["object"], second[1]["object"])
    assert np.array_equal(result["positions"], second[1]["positions"]) and result["object"].flags.writeable

    third = reply(200)  # outgrew the block: pickled, and a larger block replaces it
    _, result = area.unpack(pack(third, area.block, mapped))
    assert np.array_equal(result["object"], third[1]["object"]) and area.block[0] != name
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name)  # the old block is freed
    pack(reply(100), area.block, mapped)
    assert list(mapped) == [area.block[0]]  # the worker let go of the old one
    area.close()
    assert area.block is None


def test_a_reply_without_arrays_needs_no_block():
    area = ReplyArea()
    packed = pack((False, ValueError("bad dataset")), area.block, {})
    assert packed.needed == 0 and area.block is None
    ok, error = area.unpack(packed)
    assert not ok and str(error) == "bad dataset"
