# Live ptychographic reconstruction of every ptychography scan: previews every 50 frames, a final
# reconstruction after the scan, all into the catalog. This package's plans record their geometry
# in start["ptycho"]; Bluesky's own plans work too, with the keys and signals below:
#
#     (uid,) = RE(fermat_spiral_ptycho_scan(det, stage, n_points=200))
#     (uid,) = RE(bp.rel_spiral_fermat([det], stage.x, stage.y, 6, 6, 0.3, factor=1))
#     ptycho.wait(); tiled_writer.flush()
#     result = latest_final_reconstruction(catalog, uid)
#
# Other scans (counts, alignment scans: no frames with positions) are left alone.
#
# Where reconstructions run is the `runner`: here a worker process on this machine (CPU, or the GPU with
# ReconstructionSettings(device="gpu")). Elsewhere (docs/federation.md):
#
#     runner = ExecutorRunner.on_ranks(4)                  # every job over 4 MPI ranks here (one per GPU)
#
#     from distributed import Client                       # a Dask cluster
#     runner = ExecutorRunner(Client("tcp://scheduler:8786").get_executor())
#
#     from bluesky_ptycho.federation.compute import compute_executor, deployed_function_ids
#     from bluesky_ptycho.federation.globus_settings import load_globus_settings
#     globus = load_globus_settings()                      # a Globus Compute endpoint, after `globus deploy`
#     runner = ExecutorRunner(compute_executor(globus), function_ids=deployed_function_ids(globus),
#                             staging_directory="/shared/ptycho")
#
#     from bluesky_ptycho.federation.flows import GlobusFlowRunner
#     runner = GlobusFlowRunner()                          # Transfer -> Compute -> Transfer
#
# BLUESKY_PTYCHO_PUBLISH_TO (a 0MQ proxy's in address, host:port): reconstruct elsewhere instead. The
# documents go to the proxy (bluesky-0MQ-proxy), where `bluesky-ptycho serve` reads them
# (docs/deploying.md); the RunEngine then does no reconstruction work at all.
import os

from bluesky.callbacks.zmq import Publisher

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.catalog import latest_final_reconstruction, reconstructions_of  # noqa: F401
from bluesky_ptycho.federation import ExecutorRunner, LocalRunner  # noqa: F401
from bluesky_ptycho.solver import DetectorSettings, ReconstructionSettings

ptycho = PtychoCallback(
    tiled_writer,  # noqa: F821 (00-base.py)
    runner=LocalRunner(process=True),  # the solver in a worker process at lower priority
    # LSQ-ML, 3 modes, 200 iterations, positions refined (a quarter step, growing while a
    # frame is on its way): measured best; for a stage that may be off by half a scan step
    # or more, give the probe's defocus (probe_defocus=...)
    settings=ReconstructionSettings.final(),
    preview_every=50,
    # where a scan's frames and positions are, for plans that do not record start["ptycho"]
    data_key=det.image.name,  # noqa: F821 (10-devices.py)
    x_key=stage.x.name,  # noqa: F821 (10-devices.py)
    y_key=stage.y.name,  # noqa: F821 (10-devices.py)
    position_unit="um",
    # the geometry from the detector's configuration signals, recorded in every descriptor
    # (a (signal, factor) pair converts a unit: ("mono_energy", 1000.0) for an energy in keV)
    configuration_signals={
        "photon_energy_ev": det.photon_energy.name,  # noqa: F821 (10-devices.py)
        "detector_distance_m": det.detector_distance.name,  # noqa: F821 (10-devices.py)
        "detector_pixel_size_m": det.pixel_size.name,  # noqa: F821 (10-devices.py)
    },
    # each scan starts from the probe of the newest good reconstruction taken with the same energy,
    # detector distance, pixel size and frame shape (the first scan of a setting: from its own frames)
    initial_probe="latest",
    catalog=catalog,  # noqa: F821 (00-base.py)
    # raw detector frames (an Eiger's): the square reconstructed around the measured beam centre,
    # masked by the pixel mask of the detector's file; the simulated detector's frames are already cut
    detector_settings=DetectorSettings(frame_size=None, binning=1),
)
publish_to = os.environ.get("BLUESKY_PTYCHO_PUBLISH_TO")
if publish_to:
    RE.subscribe(Publisher(publish_to))  # noqa: F821 (00-base.py)
else:
    RE.subscribe(ptycho)  # noqa: F821 (00-base.py)
