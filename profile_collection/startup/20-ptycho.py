# Live ptychographic reconstruction of every scan that records start["ptycho"]:
# previews every 50 frames, a final reconstruction after the scan, all into the catalog.
#
#     (uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=200))
#     ptycho.wait(); tiled_writer.flush()
#     result = latest_final_reconstruction(catalog, uid)
#
# Where reconstructions run is the `runner`: here a worker process on this machine (CPU, or the GPU with
# ReconstructionSettings(device="gpu")). Elsewhere (docs/federation.md):
#
#     from distributed import Client                       # a Dask cluster
#     runner = ExecutorRunner(Client("tcp://scheduler:8786").get_executor())
#
#     from globus_compute_sdk import Executor              # a Globus Compute endpoint
#     runner = ExecutorRunner(Executor(endpoint_id="..."), staging_directory="/shared/ptycho")
#
#     from bluesky_ptycho.federation.flows import GlobusFlowRunner
#     runner = GlobusFlowRunner()                          # Transfer -> Compute -> Transfer
from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import latest_final_reconstruction, reconstructions_of  # noqa: F401
from bluesky_ptycho.federation import ExecutorRunner, LocalRunner  # noqa: F401
from bluesky_ptycho.solver import ReconstructionSettings

ptycho = PtychoCallback(
    tiled_writer,  # noqa: F821 (00-base.py)
    runner=LocalRunner(process=True),  # the solver in a worker process at lower priority
    settings=ReconstructionSettings(algorithm="rpie", iterations=100),
    preview_every=50,
    # each scan starts from the probe of the newest good reconstruction taken with the same energy,
    # detector distance, pixel size and frame shape (the first scan of a setting: from its own frames)
    initial_probe="latest",
    catalog=catalog,  # noqa: F821 (00-base.py)
)
RE.subscribe(ptycho)  # noqa: F821 (00-base.py)
