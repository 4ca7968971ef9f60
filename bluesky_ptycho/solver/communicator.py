"""The communicator: how the processes (ranks) that share one scan combine what they computed.

A reconstruction keeps one communicator on its state, beside the
:class:`~.backend.ArrayBackend`. :class:`Communicator`, the default, is one
rank whose collectives return their input: a reconstruction in one process
computes exactly what it did before communicators existed.
:class:`MPICommunicator` wraps an ``mpi4py`` communicator; every rank must
make the same collective calls in the same order.

Arrays of any module go through :meth:`Communicator.sum` (NumPy arrays in
place, other arrays (CuPy, the strict test module) through host memory) and
:meth:`Communicator.exchange` (sent from host memory). Sums wanted at the
same point go through one collective (:meth:`Communicator.sum_together`,
:meth:`Communicator.totals`): over many ranks a small all-reduce costs its
messages' latency, whatever its bytes, and the algorithms make some after
every batch. An :class:`MPICommunicator` of one rank makes no reductions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module, to_numpy

MPI_MISSING = (
    "a reconstruction over several ranks needs mpi4py and an MPI library: "
    "pip install 'bluesky-ptycho[mpi]' (mpi4py with the MPICH wheel)"
)


# the tag of exchange()'s messages: one exchange at a time, matched in order between two ranks
EXCHANGE_TAG = 17


class Communicator:
    """One process: rank 0 of 1, every collective the identity.

    Attributes
    ----------
    rank, size
        This process's rank and the number of ranks.
    bytes_sent
        Bytes this rank contributed to collectives so far (0 in one process).
    collectives
        Collective operations this rank took part in so far (0 in one process).
    """

    rank = 0
    size = 1

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.collectives = 0

    def sum(self, array):
        """``array`` summed over the ranks, in place where it can be; returns the sum."""
        return self.sum_together(array)[0]

    def sum_together(self, *arrays) -> tuple:
        """Each of ``arrays`` (any array module, real or complex) summed over the ranks in one collective.

        In place where it can be; returns the sums.
        """
        return arrays

    def total(self, value: float) -> float:
        """A number summed over the ranks."""
        return self.totals(value)[0]

    def totals(self, *values: float) -> tuple[float, ...]:
        """Numbers each summed over the ranks, in one collective."""
        return tuple(float(value) for value in values)

    def most(self, value: float) -> float:
        """The largest of the ranks' ``value`` (an int stays an int)."""
        return value

    def extent(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Element-wise minimum of ``low`` and maximum of ``high`` over the ranks (host arrays)."""
        return low, high

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        return value

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        return [value]

    def exchange(self, sends: dict[int, Any], receives: dict[int, np.ndarray]) -> None:
        """Send ``sends[rank]`` (any array module) to each rank named; fill ``receives[rank]`` (NumPy, contiguous) from each.

        Every rank that sends to another must be in that one's ``receives``
        with an array of the same shape and dtype. One process has no one to
        exchange with.
        """

    def node(self) -> tuple[int, int]:
        """This rank's rank among the ranks on its node, and how many run there (they share its cores and GPUs)."""
        return 0, 1

    def first(self, ranks: int) -> Communicator | None:
        """The first ``ranks`` ranks as a communicator of their own, None on the others (collective).

        One process is its own first rank.
        """
        return self

    def describe(self) -> str:
        """In words, for the record."""
        return "one process"


class MPICommunicator(Communicator):
    """The ranks of an ``mpi4py`` communicator (default: ``MPI.COMM_WORLD``).

    Raises
    ------
    RuntimeError
        Where mpi4py (or its MPI library) cannot be imported.
    """

    def __init__(self, comm=None) -> None:
        super().__init__()
        try:
            from mpi4py import MPI
        except ImportError as error:  # mpi4py or libmpi missing
            raise RuntimeError(f"{MPI_MISSING} ({error})") from None
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def _all_reduce(self, buffer: np.ndarray, op=None) -> np.ndarray:
        """``buffer`` (contiguous NumPy) reduced over the ranks in place (default: summed); one rank's is itself."""
        if self.size == 1:
            return buffer
        self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM if op is None else op)
        self.bytes_sent += buffer.nbytes
        self.collectives += 1
        return buffer

    def sum_together(self, *arrays) -> tuple:
        if self.size == 1:
            return arrays
        if len(arrays) == 1 and isinstance(arrays[0], np.ndarray) and arrays[0].flags.c_contiguous:
            self._all_reduce(arrays[0])
            return arrays
        hosts = [np.ascontiguousarray(to_numpy(array)) for array in arrays]
        # one buffer of reals: a complex array's real and imaginary parts side by side
        parts = [host.reshape(-1).view(host.real.dtype) for host in hosts]
        common = np.result_type(*parts)
        summed = self._all_reduce(np.concatenate([part.astype(common, copy=False) for part in parts]))
        start = 0
        for array, part, host in zip(arrays, parts, hosts, strict=True):
            values = summed[start : start + part.size].astype(part.dtype).view(host.dtype).reshape(host.shape)
            array[...] = values if isinstance(array, np.ndarray) else array_module(array).asarray(values)
            start += part.size
        return arrays

    def totals(self, *values: float) -> tuple[float, ...]:
        return tuple(float(value) for value in self._all_reduce(np.array(values, dtype=np.float64)))

    def most(self, value: float) -> float:
        if self.size == 1:
            return value
        self.bytes_sent += 8
        self.collectives += 1
        return self.comm.allreduce(value, op=self._mpi.MAX)

    def extent(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # the lowest low and the highest high in one collective: the minimum of (low, -high)
        lowest = self._all_reduce(np.concatenate([low, -np.asarray(high)]).astype(np.float64), self._mpi.MIN)
        return lowest[: len(low)], -lowest[len(low) :]

    def broadcast(self, value: Any) -> Any:
        self.collectives += 1
        return self.comm.bcast(value, root=0)

    def gather(self, value: Any) -> list[Any]:
        self.collectives += 1
        return self.comm.allgather(value)

    def exchange(self, sends: dict[int, Any], receives: dict[int, np.ndarray]) -> None:
        outgoing = {rank: np.ascontiguousarray(to_numpy(array)) for rank, array in sends.items()}
        requests = [
            self.comm.Irecv(buffer, source=rank, tag=EXCHANGE_TAG) for rank, buffer in receives.items()
        ]
        requests += [
            self.comm.Isend(buffer, dest=rank, tag=EXCHANGE_TAG) for rank, buffer in outgoing.items()
        ]
        self._mpi.Request.Waitall(requests)
        self.bytes_sent += sum(buffer.nbytes for buffer in outgoing.values())

    def node(self) -> tuple[int, int]:
        node = self.comm.Split_type(self._mpi.COMM_TYPE_SHARED)
        try:
            return node.Get_rank(), node.Get_size()
        finally:
            node.Free()

    def first(self, ranks: int) -> MPICommunicator | None:
        if ranks >= self.size:
            return self
        part = self.comm.Split(0 if self.rank < ranks else self._mpi.UNDEFINED, self.rank)
        return None if part == self._mpi.COMM_NULL else MPICommunicator(part)

    def abort(self, code: int = 1) -> None:
        """End every rank at once (after an error on this one: the others would wait in a collective forever)."""
        self.comm.Abort(code)

    def describe(self) -> str:
        library = self._mpi.Get_library_version().splitlines()[0].strip()
        return f"{self.size} MPI ranks ({library})"
