"""Far-field ptychography reconstruction engine (NumPy/SciPy on CPU, CuPy on GPU).

The solver knows nothing of Bluesky: it takes frames, positions and geometry
and returns a :class:`ReconstructionResult`.
"""

from .data import Geometry, PtychoData, ReconstructionResult
from .detector import DetectorSettings
from .imperfections import ProbeDrift, StageErrors
from .metrics import fourier_r_factor, fourier_ring_correlation, object_error, position_error
from .reconstructor import Reconstructor
from .settings import ALGORITHMS, ReconstructionSettings
from .simulate import SimulatedData, simulate


def reconstruct(
    data: PtychoData, settings: ReconstructionSettings | None = None, progress=None
) -> ReconstructionResult:
    """Reconstruct a whole dataset with ``settings`` and return the result."""
    reconstructor = Reconstructor.from_data(data, settings)
    return reconstructor.iterate(progress=progress).result()


def warm_up() -> None:
    """Compile the CPU kernels, or load them from the disk cache, by running every algorithm on a tiny dataset.

    The first reconstruction of a process otherwise waits for this: about
    10 s once after installation (the compiled kernels are cached on disk for
    every later process), then about 1 s. ``bluesky-ptycho demo`` calls it
    before its scan.
    """
    sim = simulate(n_frames=8, frame_size=16, photons=None, seed=0)
    for algorithm in ALGORITHMS:
        reconstructor = Reconstructor(sim.data.geometry, ReconstructionSettings(algorithm=algorithm))
        reconstructor.add_frames(sim.data.frames, sim.data.positions)
        reconstructor.iterate(2)


__all__ = [
    "ALGORITHMS",
    "DetectorSettings",
    "Geometry",
    "ProbeDrift",
    "PtychoData",
    "ReconstructionResult",
    "ReconstructionSettings",
    "Reconstructor",
    "SimulatedData",
    "StageErrors",
    "fourier_r_factor",
    "fourier_ring_correlation",
    "object_error",
    "position_error",
    "reconstruct",
    "simulate",
    "warm_up",
]
