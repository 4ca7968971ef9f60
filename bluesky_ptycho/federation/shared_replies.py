"""A local worker process's replies through shared memory: a result's arrays copied twice, never pickled or piped.

A preview's result holds the object canvas: 20-75 MB for a scan of 2,000 to
10,000 frames of 256². Pickled, sent through the worker's pipe and unpickled,
it cost 0.5-1 s here on a loaded 2-core machine, most of a preview's delay
beyond its own iterations. Instead, the worker pickles its reply with
protocol 5 and its arrays out of band (:func:`pack`), copying them into a
block of shared memory that the runner's side owns (:class:`ReplyArea`); only
the small rest travels through the pipe, and the runner's side copies the
arrays out (:meth:`ReplyArea.unpack`) before it sends the next job, so the
worker may write the block again. Both sides keep the block mapped from job
to job: pages once touched do not fault again.

A reply larger than the block travels pickled, whole, and the block is made
larger for the next.
"""

from __future__ import annotations

import pickle
import weakref
from dataclasses import dataclass, field
from multiprocessing import shared_memory

import numpy as np

from ..solver.pages import ordinary_empty
from .shared_frames import reserved_block, unlink_blocks

# a new block's size over the reply that did not fit: room for the canvas to grow
GROWTH = 1.5


@dataclass(frozen=True)
class Packed:
    """A reply as it travels: the pickle, and where its arrays lie in the block (or what it would have needed)."""

    pickle: bytes
    sizes: tuple[int, ...] = ()  # of the out-of-band buffers, one after the other from the block's start
    needed: int = 0  # bytes of arrays that did not fit the block: travelled in ``pickle``


@dataclass
class ReplyArea:
    """The block of shared memory a worker writes its replies' arrays into: made, grown and freed here.

    :attr:`block` (name and size, or None before any reply needed one) goes
    with each job to the worker.
    """

    _memories: list[shared_memory.SharedMemory] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._free = weakref.finalize(self, unlink_blocks, self._memories)

    @property
    def block(self) -> tuple[str, int] | None:
        return (self._memories[0].name, self._memories[0].size) if self._memories else None

    def unpack(self, packed: Packed) -> object:
        """The reply, its arrays copied out of the block (which the worker may then write again)."""
        if packed.needed:
            self._grow(int(packed.needed * GROWTH))
        if not packed.sizes:
            return pickle.loads(packed.pickle)
        view, buffers, start = self._memories[0].buf, [], 0
        for size in packed.sizes:
            buffer = ordinary_empty((size,), np.uint8)
            buffer[...] = np.frombuffer(view, np.uint8, size, start)
            buffers.append(buffer)
            start += size
        return pickle.loads(packed.pickle, buffers=buffers)

    def _grow(self, size: int) -> None:
        try:
            memory = reserved_block(size)
        except OSError:  # no room in /dev/shm: replies keep travelling pickled
            return
        self.close()
        self._memories.append(memory)

    def close(self) -> None:
        """Free the block (a worker that still maps it keeps its pages until it unmaps)."""
        unlink_blocks(self._memories)


def pack(
    reply: object, block: tuple[str, int] | None, mapped: dict[str, shared_memory.SharedMemory]
) -> Packed:
    """``reply`` for the pipe, its arrays written into ``block`` where they fit (the worker's side).

    ``mapped`` keeps the blocks this worker has mapped, by name, from reply
    to reply; a block no longer sent is unmapped.
    """
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(reply, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    total = sum(raw.nbytes for raw in raws)
    if not raws:
        return Packed(header)
    if block is None or total > block[1]:
        return Packed(pickle.dumps(reply, protocol=5), needed=total)
    name = block[0]
    for old in [n for n in mapped if n != name]:
        mapped.pop(old).close()
    if name not in mapped:
        mapped[name] = shared_memory.SharedMemory(name)
    view, start = mapped[name].buf, 0
    for raw in raws:
        view[start : start + raw.nbytes] = raw
        start += raw.nbytes
    return Packed(header, tuple(raw.nbytes for raw in raws))
