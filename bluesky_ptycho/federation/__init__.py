"""Where reconstructions run: in this process, or (to come) on executors and Globus Flows."""

from .jobs import ReconstructionJob, Runner
from .local import LocalRunner

__all__ = ["LocalRunner", "ReconstructionJob", "Runner"]
