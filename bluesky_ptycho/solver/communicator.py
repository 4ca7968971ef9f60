"""The communicator: how the processes (ranks) that share one scan combine what they computed.

A reconstruction keeps one communicator on its state, beside the
:class:`~.backend.ArrayBackend`. :class:`Communicator`, the default, is one
rank whose collectives return their input: a reconstruction in one process
computes exactly what it did before communicators existed.
:class:`MPICommunicator` wraps an ``mpi4py`` communicator; every rank must
make the same collective calls in the same order.

Arrays of any module go through :meth:`Communicator.sum` (NumPy arrays in
place, other arrays (CuPy, the strict test module) through host memory) and
:meth:`Communicator.exchange` (sent from host memory).
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
    """

    rank = 0
    size = 1

    def __init__(self) -> None:
        self.bytes_sent = 0

    def sum(self, array):
        """``array`` summed over the ranks, in place where it can be; returns the sum."""
        return array

    def total(self, value: float) -> float:
        """A number summed over the ranks."""
        return float(value)

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

    def sum(self, array):
        if self.size == 1:
            return array
        if isinstance(array, np.ndarray) and array.flags.c_contiguous:
            self.comm.Allreduce(self._mpi.IN_PLACE, array)
            self.bytes_sent += array.nbytes
            return array
        host = np.ascontiguousarray(to_numpy(array))
        self.comm.Allreduce(self._mpi.IN_PLACE, host)
        self.bytes_sent += host.nbytes
        array[...] = array_module(array).asarray(host)
        return array

    def total(self, value: float) -> float:
        self.bytes_sent += 8
        return float(self.comm.allreduce(float(value), op=self._mpi.SUM))

    def most(self, value: float) -> float:
        self.bytes_sent += 8
        return self.comm.allreduce(value, op=self._mpi.MAX)

    def extent(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low, high = np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, low, op=self._mpi.MIN)
        self.comm.Allreduce(self._mpi.IN_PLACE, high, op=self._mpi.MAX)
        self.bytes_sent += low.nbytes + high.nbytes
        return low, high

    def broadcast(self, value: Any) -> Any:
        return self.comm.bcast(value, root=0)

    def gather(self, value: Any) -> list[Any]:
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
