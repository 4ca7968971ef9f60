"""``bluesky-ptycho serve``: reconstruct the scans on a document bus, out of the RunEngine's process.

The service is the same :class:`~bluesky_ptycho.callbacks.PtychoCallback`
the IPython profile subscribes to the RunEngine, fed by a bus instead
(:mod:`.buses`), writing into the catalog through a
:class:`~bluesky_ptycho.catalog.DurableCatalogWriter` (runs wait on disk
while the catalog is down). What it could not reconstruct is recorded as
failed, with the reason: scans it joined mid-way, scans open when a lossy
bus dropped, and scans still running when it was stopped.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
from typing import Any

from ..callbacks import PtychoCallback
from ..catalog import DurableCatalogWriter, connect
from ..federation.jobs import Runner
from ..solver.data import ReconstructionResult
from .buses import Bus, BusHealth, make_bus
from .config import CatalogConfig, RunnerConfig, ServiceConfig

logger = logging.getLogger(__name__)


def open_catalog(config: CatalogConfig):
    """The Tiled client the configuration names (its API key from the key file, else ``TILED_API_KEY``)."""
    if config.uri is None:
        return connect(None, config.directory)
    return connect(config.uri, api_key=config.api_key())


def make_runner(config: RunnerConfig) -> Runner:
    """The runner the configuration names (docs/federation.md)."""
    from ..federation import ExecutorRunner, LocalRunner

    lanes = {} if config.max_in_flight is None else {"max_in_flight": config.max_in_flight}
    if config.kind == "local":  # a service's worker starts with it: the first preview does not wait for it
        return LocalRunner(process=config.process, **lanes).start_worker()
    if config.kind == "mpi":
        return ExecutorRunner.on_ranks(config.ranks, staging_directory=config.staging_directory, **lanes)
    if config.kind == "dask":
        from distributed import Client

        executor = Client(config.scheduler).get_executor()
    elif config.kind == "globus-compute":
        from globus_compute_sdk import Executor

        executor = Executor(endpoint_id=config.endpoint_id)
    else:
        from ..federation.flows import GlobusFlowRunner

        return GlobusFlowRunner()
    return ExecutorRunner(executor, staging_directory=config.staging_directory, **lanes)


class ReconstructionService:
    """Reconstructs every ptychography scan that comes on the bus, until :meth:`stop`.

    Parameters
    ----------
    config
        The checked configuration (:func:`~.config.load_config`).
    catalog, runner, bus
        Made from ``config`` when not given.
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        catalog: Any = None,
        runner: Runner | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.config = config
        self.catalog = open_catalog(config.catalog) if catalog is None else catalog
        # each preview is one event: written at once, not when a batch of them has gathered
        self.writer = DurableCatalogWriter(self.catalog, config.catalog.spool_directory, batch_size=1)
        self.bus = make_bus(config.bus) if bus is None else bus
        self.health = BusHealth(self.bus.description, self._outage)
        recon = config.reconstruction
        self.callback = PtychoCallback(
            self.writer,
            runner=make_runner(config.runner) if runner is None else runner,
            settings=recon.final_settings(),
            preview_settings=recon.preview_settings(),
            preview_every=recon.preview_every,
            preview_iterations=recon.preview_iterations,
            queue_previews=recon.queue_previews,
            on_result=_log_result,
            initial_probe=recon.initial_probe,
            catalog=self.catalog if recon.initial_probe == "latest" else None,
            configuration_signals=config.configuration_signals,
            detector_settings=config.detector.settings(),
            **config.geometry,
        )
        self.stopping = threading.Event()
        self._why_stopped = "stopped"

    def run(self) -> None:
        """Follow the bus until :meth:`stop`, then wind down (see :meth:`stop`)."""
        logger.info(
            "reconstruction service: bus %s, runner %s, catalog %s",
            self.bus.description,
            self.callback.runner.location,
            getattr(self.catalog, "uri", "?"),
        )
        try:
            self.bus.run(self._deliver, self.health, self.stopping)
        finally:
            self._wind_down()

    def _deliver(self, name: str, doc: dict) -> None:
        """Hand one document to the callback (which never raises)."""
        if name == "start" and self.bus.lossy:
            try:
                self.callback.end_open_scans(
                    f"the document bus lost it; the next scan, {doc.get('uid')}, began", but=doc.get("uid")
                )
            except Exception:  # the new scan is followed whatever became of the old
                logger.exception("the scans still open when scan %s began could not be ended", doc.get("uid"))
        self.callback(name, doc)

    def stop(self, why: str = "stopped") -> None:
        """Ask :meth:`run` to return (safe from a signal handler).

        Scans still taking frames are recorded as failed at once; running
        reconstructions get ``service.stop_grace_s`` to finish, then they are
        recorded as failed too. The catalog writer is flushed last.
        """
        self._why_stopped = why
        self.stopping.set()

    def _outage(self, cause: str) -> None:
        if self.bus.lossy:
            self.callback.abandon(
                f"not reconstructed: the document bus ({self.bus.description}) went down during the scan "
                f"({cause}) and its documents from then on were lost"
            )

    def _wind_down(self) -> None:
        why = self._why_stopped
        self.callback.abandon(f"not reconstructed: the reconstruction service {why} during the scan")
        grace = self.config.service.stop_grace_s
        if not self.callback.wait(grace):
            self.callback.abandon(
                f"the reconstruction service {why} and its reconstruction did not finish within {grace:g} s",
                running=True,
            )
        self.callback.runner.shutdown(wait=False)
        if self.writer.flush(60):
            self.writer.close()
        else:
            logger.warning("the catalog writer did not finish within 60 s; unwritten runs stay in its spool")
        logger.info("reconstruction service %s", why)


def _log_result(raw_uid: str, result: ReconstructionResult, final: bool) -> None:
    logger.info(
        "scan %s: %s of %d frames, %d iterations, cost %.4g, %.1f s",
        raw_uid,
        "final reconstruction" if final else "preview",
        result.n_frames,
        result.iterations,
        result.final_cost,
        result.wall_time,
    )


def log_to(path, level: str) -> None:
    """Send this process's log to ``path`` (reopened after logrotate moves it), or to standard error."""
    handler = logging.StreamHandler() if path is None else logging.handlers.WatchedFileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]  # not also to standard error: under systemd, journald would have it twice
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per catalog request otherwise
