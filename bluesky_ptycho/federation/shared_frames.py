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
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

logger = logging.getLogger(__name__)
# a block holds as many frames as fit in this (at least one)
BLOCK_BYTES = 64 * 2**20


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
    """

    def __init__(self, frame_shape: tuple[int, int], block_bytes: int = BLOCK_BYTES) -> None:
        self.frame_shape = tuple(frame_shape)
        self.block_bytes = block_bytes
        self._blocks: list[_Block] = []
        self._owned: list[shared_memory.SharedMemory] = []
        self._release = weakref.finalize(self, _unlink, self._owned)

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
            block.memory = _reserved(block.capacity * frame_bytes)
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
        """Free the shared memory (the owner, once the worker has taken the frames, or failed to)."""
        self.close()
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
        self._owned = []
        self._release = weakref.finalize(self, _unlink, self._owned)


def _reserved(size: int) -> shared_memory.SharedMemory:
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


def _unlink(memories: list[shared_memory.SharedMemory]) -> None:
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
