"""Far-field ptychography reconstruction engine (NumPy/SciPy on CPU, CuPy on GPU).

The solver knows nothing of Bluesky: it takes frames, positions and geometry
and returns a :class:`ReconstructionResult`.
"""

from .data import Geometry, PtychoData, ReconstructionResult
from .metrics import fourier_r_factor, fourier_ring_correlation, object_error
from .reconstructor import Reconstructor
from .settings import ALGORITHMS, ReconstructionSettings
from .simulate import SimulatedData, simulate


def reconstruct(
    data: PtychoData, settings: ReconstructionSettings | None = None, progress=None
) -> ReconstructionResult:
    """Reconstruct a whole dataset with ``settings`` and return the result."""
    reconstructor = Reconstructor.from_data(data, settings)
    return reconstructor.iterate(progress=progress).result()


__all__ = [
    "ALGORITHMS",
    "Geometry",
    "PtychoData",
    "ReconstructionResult",
    "ReconstructionSettings",
    "Reconstructor",
    "SimulatedData",
    "fourier_r_factor",
    "fourier_ring_correlation",
    "object_error",
    "reconstruct",
    "simulate",
]
