# RunEngine and catalog: every raw scan and every reconstruction goes into one Tiled catalog.
#
# BLUESKY_PTYCHO_CATALOG: a Tiled URI or profile name (e.g. an NSLS-II style databroker 2
# deployment); unset, the embedded local catalog under the user data directory is used
# (BLUESKY_PTYCHO_CATALOG_DIR moves it). Detectors write their HDF5 files under
# BLUESKY_PTYCHO_FRAMES_DIR (default: the user data directory), which the embedded catalog may read.
import os

from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky_tiled_plugins import TiledWriter

from bluesky_ptycho.catalog import connect, default_frames_directory

frames_directory = os.environ.get("BLUESKY_PTYCHO_FRAMES_DIR") or default_frames_directory()
catalog = connect(
    os.environ.get("BLUESKY_PTYCHO_CATALOG"),
    os.environ.get("BLUESKY_PTYCHO_CATALOG_DIR"),
    readable_storage=[frames_directory],
)
tiled_writer = TiledWriter(catalog, batch_size=10)  # small batches: a running scan is visible live

RE = RunEngine()
RE.subscribe(tiled_writer)
bec = BestEffortCallback()
bec.disable_plots()
RE.subscribe(bec)
