# Live ptychographic reconstruction of every scan that records start["ptycho"]:
# previews every 50 frames, a final reconstruction after the scan, all into the catalog.
#
#     (uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=200))
#     ptycho.wait()
#     result = latest_final_reconstruction(catalog, uid)
#
# Where reconstructions run is the `runner`: here this process (CPU, or the GPU with
# ReconstructionSettings(device="gpu")). Runners for Dask clusters, Globus Compute endpoints and
# Globus Flows are not in this release yet; any object with the `Runner` interface of
# bluesky_ptycho.federation (`submit(job) -> Future`, `shutdown()`, `location`) plugs in here.
from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import latest_final_reconstruction, reconstructions_of  # noqa: F401
from bluesky_ptycho.federation import LocalRunner
from bluesky_ptycho.solver import ReconstructionSettings

ptycho = PtychoCallback(
    tiled_writer,  # noqa: F821 (00-base.py)
    runner=LocalRunner(),
    settings=ReconstructionSettings(algorithm="rpie", iterations=100),
    preview_every=50,
)
RE.subscribe(ptycho)  # noqa: F821 (00-base.py)
