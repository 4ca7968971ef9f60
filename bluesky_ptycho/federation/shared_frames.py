"""Frames for a local worker process in shared memory: written once as they arrive, read there in place.

Inline frames (in the event documents) that a :class:`~.local.LocalRunner`
hands to its worker process would otherwise be stacked into one array,
pickled, sent through a pipe and unpickled: four copies of every frame, made
on the RunEngine's side of the pipe while the scan runs. A
:class:`SharedFrames` takes each frame into a block of POSIX shared memory
as it arrives (the only copy); the job carries the blocks' names, and the
worker maps them and stores the frames from there.

Each block's memory is reserved when it is made (``posix_fallocate``): a
full ``/dev/shm`` (a container's default is 64 MB) is then refused at once,
and the frames are held in this process's memory and pickled instead, rather
than the RunEngine's process being killed by SIGBUS on its next write.

A fresh block costs a page fault for every 4 KiB the frames first touch
(0.27 ms a frame of 256² here, half of what the callback costs for an inline
frame): blocks come from a :class:`BlockPool` that keeps them mapped once the
worker has taken their frames, so later frames are only copied in.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

logger = logging.getLogger(__name__)
# a block holds as many frames as fit in this (at least one)
BLOCK_BYTES = 64 * 2**20
# what a BlockPool keeps of the blocks given back: one preview's frames of 2,000 x 256² uint16
KEEP_BYTES = 4 * BLOCK_BYTES


class BlockPool:
    """Blocks of shared memory given back after use, kept mapped (up to ``keep_bytes``) to be taken again.

    Thread-safe: blocks are taken where frames arrive and given back where
    jobs end. :meth:`close` (or collection) frees the blocks kept.
    """

    def __init__(self, keep_bytes: int = KEEP_BYTES) -> None:
        self.keep_bytes = keep_bytes
        self._lock = threading.Lock()
        self._free: list[shared_memory.SharedMemory] = []
        self._close = weakref.finalize(self, unlink_blocks, self._free)

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            return sum(memory.size for memory in self._free)

    def take(self, size: int) -> shared_memory.SharedMemory:
        """A block of ``size`` bytes: one given back, else a new reserved one (OSError: there is not room)."""
        with self._lock:
            for i, memory in enumerate(self._free):
                if memory.size == size:
                    return self._free.pop(i)
        return reserved_block(size)

    def give_back(self, memories: list[shared_memory.SharedMemory]) -> None:
        """Keep ``memories`` (emptied from the list) for reuse; those beyond ``keep_bytes`` are freed."""
        with self._lock:
            while memories:
                memory = memories.pop()
                if sum(kept.size for kept in self._free) + memory.size <= self.keep_bytes:
                    self._free.append(memory)
                else:
                    unlink_blocks([memory])

    def close(self) -> None:
        """Free the blocks kept (those in use are freed when given back)."""
        with self._lock:
            self.keep_bytes = 0
            self._close()


@dataclass
class _Block:
    """``count`` frames of ``dtype`` in shared memory ``name`` (None: in ``array``, this process's memory)."""

    dtype: np.dtype
    capacity: int
    count: int = 0
    name: str | None = None
    array: np.ndarray | None = None  # while mapped (or held here)
    memory: shared_memory.SharedMemory | None = None


class SharedFrames:
    """The frames of one job, in blocks of shared memory, in the order they were appended.

    Made and appended to where the frames arrive (the owner, which releases
    the memory: :meth:`release`, or when the object is collected); pickled
    as the blocks' names; :meth:`arrays` maps them where it is unpickled, and
    :meth:`close` unmaps them there.

    Parameters
    ----------
    frame_shape
        (h, w) of every frame.
    block_bytes
        The size a block is made for.
    pool
        Where blocks are taken from and given back to on release (None:
        each is made and freed).
    """

    def __init__(
        self, frame_shape: tuple[int, int], block_bytes: int = BLOCK_BYTES, pool: BlockPool | None = None
    ) -> None:
        self.frame_shape = tuple(frame_shape)
        self.block_bytes = block_bytes
        self._pool = pool
        self._blocks: list[_Block] = []
        self._owned: list[shared_memory.SharedMemory] = []
        let_go = unlink_blocks if pool is None else pool.give_back
        self._release = weakref.finalize(self, let_go, self._owned)

    def __len__(self) -> int:
        return sum(block.count for block in self._blocks)

    @property
    def in_shared_memory(self) -> bool:
        """Whether every block is in shared memory (none had to be held here)."""
        return all(block.name is not None for block in self._blocks)

    def append(self, frame: np.ndarray) -> None:
        """Copy one frame (h, w) in; a frame of a type the current block cannot hold exactly starts a new one."""
        if frame.shape != self.frame_shape:
            raise ValueError(f"a frame of shape {frame.shape} among frames of {self.frame_shape}")
        block = self._blocks[-1] if self._blocks else None
        if block is None or block.count == block.capacity or not np.can_cast(frame.dtype, block.dtype):
            block = self._new_block(frame.dtype)
        block.array[block.count] = frame
        block.count += 1

    def _new_block(self, dtype: np.dtype) -> _Block:
        frame_bytes = int(np.prod(self.frame_shape)) * np.dtype(dtype).itemsize
        block = _Block(np.dtype(dtype), max(1, self.block_bytes // frame_bytes))
        shape = (block.capacity, *self.frame_shape)
        try:
            size = block.capacity * frame_bytes
            block.memory = reserved_block(size) if self._pool is None else self._pool.take(size)
        except OSError as error:
            logger.warning(
                "no shared memory for %d frames (%s): they travel to the worker pickled",
                block.capacity,
                error,
            )
            block.capacity = min(block.capacity, max(1, BLOCK_BYTES // frame_bytes))
            block.array = np.empty((block.capacity, *self.frame_shape), dtype)
        else:
            self._owned.append(block.memory)
            block.name = block.memory.name
            block.array = np.ndarray(shape, dtype, buffer=block.memory.buf)
        self._blocks.append(block)
        return block

    def arrays(self) -> list[np.ndarray]:
        """The frames, block by block: (n, h, w) arrays, mapped from shared memory (until :meth:`close`)."""
        for block in self._blocks:
            if block.array is None:
                block.memory = shared_memory.SharedMemory(block.name)
                shape = (block.capacity, *self.frame_shape)
                block.array = np.ndarray(shape, block.dtype, buffer=block.memory.buf)
        return [block.array[: block.count] for block in self._blocks]

    def close(self) -> None:
        """Unmap the blocks here (where the frames were read); the owner's :meth:`release` frees them."""
        for block in self._blocks:
            if block.name is not None and block.memory is not None:
                block.array = None
                try:
                    block.memory.close()
                except BufferError:  # an array still refers to it: unmapped once that is gone
                    pass
                block.memory = None

    def release(self) -> None:
        """Free the shared memory, or give it back to the pool (the owner, once the worker has taken the frames)."""
        for block in self._blocks:
            block.array = block.memory = None
        self._release()

    def __getstate__(self) -> dict:
        blocks = [
            _Block(b.dtype, b.capacity, b.count, b.name, None if b.name else b.array[: b.count])
            for b in self._blocks
        ]
        return {"frame_shape": self.frame_shape, "block_bytes": self.block_bytes, "blocks": blocks}

    def __setstate__(self, state: dict) -> None:
        self.frame_shape, self.block_bytes = state["frame_shape"], state["block_bytes"]
        self._blocks = state["blocks"]
        for block in self._blocks:
            if block.name is None:  # held in the sender's memory: came whole
                block.capacity = block.count
        self._pool = None
        self._owned = []
        self._release = weakref.finalize(self, unlink_blocks, self._owned)


def reserved_block(size: int) -> shared_memory.SharedMemory:
    """A new block of shared memory whose pages are reserved now (OSError: there is not room)."""
    memory = shared_memory.SharedMemory(create=True, size=size)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(memory._fd, 0, size)  # the pages a later write would otherwise fault in
    except OSError:
        memory.close()
        memory.unlink()
        raise
    return memory


def unlink_blocks(memories: list[shared_memory.SharedMemory]) -> None:
    while memories:
        memory = memories.pop()
        try:
            memory.close()
        except BufferError:  # the owner's arrays of it are being collected too: unmapped with them
            pass
        try:
            memory.unlink()
        except FileNotFoundError:
            pass
