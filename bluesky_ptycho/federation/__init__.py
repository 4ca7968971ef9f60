"""Where reconstructions run: in this process, on executors (Dask, Globus Compute), or through Globus Flows."""

from .executor import ExecutorRunner
from .jobs import ReconstructionJob, Runner
from .lanes import RemoteJobError
from .local import LocalRunner
from .remote import FrameChunk, RemoteRequest, reconstruct_files, reconstruct_remote

__all__ = [
    "ExecutorRunner",
    "FrameChunk",
    "LocalRunner",
    "ReconstructionJob",
    "RemoteJobError",
    "RemoteRequest",
    "Runner",
    "reconstruct_files",
    "reconstruct_remote",
]
