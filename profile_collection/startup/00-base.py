# RunEngine and catalog: every raw scan and every reconstruction goes into one Tiled catalog.
#
# BLUESKY_PTYCHO_CATALOG: a Tiled URI or profile name (e.g. an NSLS-II style databroker 2
# deployment); unset, the embedded local catalog under the user data directory is used
# (BLUESKY_PTYCHO_CATALOG_DIR moves it). Detectors write their HDF5 files under
# BLUESKY_PTYCHO_FRAMES_DIR (default: the user data directory), which the embedded catalog may read.
# BLUESKY_PTYCHO_SPOOL_DIR: where runs wait while the catalog is unreachable.
# BLUESKY_PTYCHO_MD_DIR: where the RunEngine's metadata (RE.md, with the scan_id counter) is kept.
import os

import bluesky.plan_stubs as bps  # noqa: F401 (for the user)
import bluesky.plans as bp  # noqa: F401 (for the user)
import platformdirs
from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.utils import PersistentDict

from bluesky_ptycho.catalog import DurableCatalogWriter, connect, default_frames_directory

frames_directory = os.environ.get("BLUESKY_PTYCHO_FRAMES_DIR") or default_frames_directory()
catalog = connect(
    os.environ.get("BLUESKY_PTYCHO_CATALOG"),
    os.environ.get("BLUESKY_PTYCHO_CATALOG_DIR"),
    readable_storage=[frames_directory],
)
# Writes go to the catalog from a background thread (small batches: a running scan is visible
# live; each reconstruction preview is written as it comes). If the catalog fails, runs are kept on disk (BLUESKY_PTYCHO_SPOOL_DIR) and written when
# it answers again, or with `bluesky-ptycho catalog replay`. tiled_writer.flush() waits for it.
tiled_writer = DurableCatalogWriter(catalog, os.environ.get("BLUESKY_PTYCHO_SPOOL_DIR"), batch_size=10)

RE = RunEngine()
# RE.md survives the session, so scan_id keeps counting from one session to the next
RE.md = PersistentDict(
    os.environ.get("BLUESKY_PTYCHO_MD_DIR")
    or os.path.join(platformdirs.user_data_dir("bluesky-ptycho"), "runengine-metadata")
)
RE.subscribe(tiled_writer)
bec = BestEffortCallback()
bec.disable_plots()
RE.subscribe(bec)
