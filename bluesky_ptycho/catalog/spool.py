"""Catalog writes that never block the RunEngine and never lose a run.

:class:`DurableCatalogWriter` is a document callback for ``RE.subscribe`` or
``PtychoCallback(...)``. It queues each document and returns at once; a
background thread first appends the document to an on-disk spool (a write-ahead
log: JSON lines, arrays as ``.npy`` files), then hands it to a :class:`~.tiled_writer.CatalogWriter`.
When the catalog has taken a run's stop document, the run's spool is deleted.
When a write fails (the server is down, the network is gone), the rest of that
run goes to the spool only, and complete spooled runs are written again when
the catalog answers (tried every ``retry_interval`` seconds), or by
``bluesky-ptycho catalog replay``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

logger = logging.getLogger(__name__)

ARRAY_KEY = "__ndarray__"
DOCUMENTS = "documents.jsonl"
STOP_TAIL_BYTES = 65536  # more than any stop document


def default_spool_directory() -> Path:
    """Where runs the catalog could not take wait: ``<user data dir>/bluesky-ptycho/spool``."""
    return Path(platformdirs.user_data_dir("bluesky-ptycho")) / "spool"


class DocumentSpool:
    """Runs kept on disk, one directory per run: ``<run uid>/documents.jsonl`` and ``arrays/*.npy``."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_spool_directory()
        self._arrays: dict[str, int] = {}

    def append(self, run_uid: str, name: str, doc: dict) -> None:
        """Append one document of run ``run_uid`` (flushed to disk before returning)."""
        run = self.directory / run_uid
        (run / "arrays").mkdir(parents=True, exist_ok=True)
        encoded = self._encode(run, doc)
        with open(run / DOCUMENTS, "a") as file:
            file.write(json.dumps({"name": name, "doc": encoded}) + "\n")
            file.flush()

    def _encode(self, run: Path, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: self._encode(run, item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._encode(run, item) for item in value]
        if isinstance(value, np.ndarray):
            count = self._arrays.get(run.name, 0)
            self._arrays[run.name] = count + 1
            relative = f"arrays/{count:07d}.npy"
            np.save(run / relative, value, allow_pickle=False)
            return {ARRAY_KEY: relative}
        if isinstance(value, np.generic):
            return value.item()
        return value

    def _decode(self, run: Path, value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {ARRAY_KEY}:
                return np.load(run / value[ARRAY_KEY], allow_pickle=False)
            return {key: self._decode(run, item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._decode(run, item) for item in value]
        return value

    def runs(self) -> list[str]:
        """uids of the spooled runs, oldest first."""
        if not self.directory.exists():
            return []
        found = [path for path in self.directory.iterdir() if (path / DOCUMENTS).exists()]
        return [path.name for path in sorted(found, key=lambda path: (path / DOCUMENTS).stat().st_mtime)]

    def _records(self, run_uid: str) -> Iterator[tuple[str, dict]]:
        """The documents of a spooled run as stored (arrays as references to their files)."""
        with open(self.directory / run_uid / DOCUMENTS) as file:
            for line in file:
                if line.strip():
                    record = json.loads(line)
                    yield record["name"], record["doc"]

    def documents(self, run_uid: str) -> Iterator[tuple[str, dict]]:
        """The documents of a spooled run, in order, arrays restored."""
        run = self.directory / run_uid
        for name, doc in self._records(run_uid):
            yield name, self._decode(run, doc)

    def is_complete(self, run_uid: str) -> bool:
        """True when the spool holds the run's stop document (its last line; only the file's tail is read)."""
        with open(self.directory / run_uid / DOCUMENTS, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - STOP_TAIL_BYTES))
            lines = file.read().splitlines()
        return bool(lines) and lines[-1].startswith(b'{"name": "stop"')

    def close_run(self, run_uid: str, reason: str) -> None:
        """Append a stop document (exit_status "fail", ``reason``) to a run that never got one."""
        counts: dict[str, int] = {}
        streams: dict[str, str] = {}
        run = self.directory / run_uid
        for name, doc in self._records(run_uid):  # counting loads no frames, only a page's seq_nums
            if name == "descriptor":
                streams[doc["uid"]] = doc.get("name", "primary")
            elif name in ("event", "event_page"):
                stream = streams.get(doc["descriptor"], "primary")
                events = len(self._decode(run, doc["seq_num"])) if name == "event_page" else 1
                counts[stream] = counts.get(stream, 0) + events
        stop = {
            "uid": str(uuid.uuid4()),
            "time": time.time(),
            "run_start": run_uid,
            "exit_status": "fail",
            "reason": reason,
            "num_events": counts,
        }
        self.append(run_uid, "stop", stop)

    def remove(self, run_uid: str) -> None:
        """Forget a run (once the catalog holds it)."""
        shutil.rmtree(self.directory / run_uid, ignore_errors=True)
        self._arrays.pop(run_uid, None)


def _run_of(name: str, doc: dict, runs_of: dict[str, str]) -> str | None:
    """The uid of the run a document belongs to; remembers descriptors and resources."""
    if name == "start":
        return doc["uid"]
    if name in ("stop", "descriptor", "resource", "stream_resource"):
        run = doc.get("run_start")
        if name != "stop" and run is not None:
            runs_of[doc["uid"]] = run
        return run
    parent = {
        "event": "descriptor",
        "event_page": "descriptor",
        "datum": "resource",
        "datum_page": "resource",
        "stream_datum": "stream_resource",
    }.get(name)
    return None if parent is None else runs_of.get(doc.get(parent, ""))


def replay_run(
    catalog, spool: DocumentSpool, run_uid: str, writer_factory: Callable[[Any], Callable]
) -> None:
    """Write a spooled run into ``catalog`` (replacing a partial copy there) and drop it from the spool."""
    if run_uid in catalog:
        catalog[run_uid].delete(recursive=True, external_only=False)
    writer = writer_factory(catalog)
    for name, doc in spool.documents(run_uid):
        writer(name, doc)
    spool.remove(run_uid)
    logger.info("run %s written to the catalog from the spool", run_uid)


INCOMPLETE_REASON = "the session ended before the run's stop document; recovered from the spool"


def replay_spool(
    catalog,
    spool: DocumentSpool,
    writer_factory: Callable[[Any], Callable] | None = None,
    incomplete: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """Write every complete spooled run into ``catalog``.

    With ``incomplete``, runs without a stop document (their session ended,
    or crashed, in the middle) are written too, closed as failed with
    :data:`INCOMPLETE_REASON`; only for a spool no running session uses.

    Returns
    -------
    written, failed
        uids written; uid -> error for those that could not be.
    """
    writer_factory = writer_factory or _tiled_writer
    written, failed = [], {}
    for run_uid in spool.runs():
        if not spool.is_complete(run_uid):
            if not incomplete:
                continue
            spool.close_run(run_uid, INCOMPLETE_REASON)
        try:
            replay_run(catalog, spool, run_uid, writer_factory)
            written.append(run_uid)
        except Exception as error:
            failed[run_uid] = f"{type(error).__name__}: {error}"
    return written, failed


def _tiled_writer(catalog) -> Callable:
    from .tiled_writer import CatalogWriter  # bluesky-tiled-plugins takes a second to import

    return CatalogWriter(catalog, batch_size=1)


class DurableCatalogWriter:
    """Writes documents to a Tiled catalog from a background thread, spooling what the catalog cannot take.

    Parameters
    ----------
    catalog
        A Tiled client (``bluesky_ptycho.catalog.connect()``).
    spool_directory
        Where runs wait for the catalog (default :func:`default_spool_directory`).
    retry_interval
        Seconds between attempts to write spooled runs while the catalog is down.
    writer_factory
        ``f(catalog) -> callback``; default ``CatalogWriter(catalog, batch_size=...)``.
    batch_size
        Events per write of the default :class:`~.tiled_writer.CatalogWriter` (small: the run is visible
        live); it writes reconstruction runs event by event whatever this is.
    """

    def __init__(
        self,
        catalog,
        spool_directory: str | Path | None = None,
        *,
        retry_interval: float = 30.0,
        writer_factory: Callable[[Any], Callable] | None = None,
        batch_size: int = 5,
    ) -> None:
        from .tiled_writer import CatalogWriter

        self.catalog = catalog
        self.spool = DocumentSpool(spool_directory)
        self.retry_interval = retry_interval
        self._writer_factory = writer_factory or (lambda client: CatalogWriter(client, batch_size=batch_size))
        self._writer = self._writer_factory(catalog)
        self._queue: queue.Queue[tuple[str, dict] | None] = queue.Queue()
        self._runs_of: dict[str, str] = {}
        self._failed_runs: set[str] = set()
        self._thread = threading.Thread(target=self._work, name="ptycho-catalog-writer", daemon=True)
        self._thread.start()

    def __call__(self, name: str, doc: dict) -> None:
        """Queue a document; returns at once and never raises."""
        self._queue.put((name, doc))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued document is written or spooled; False if ``timeout`` passed first."""
        done = threading.Event()
        self._queue.put(("__flush__", {"event": done}))
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the background thread."""
        self._queue.put(None)
        self._thread.join()

    @property
    def pending_runs(self) -> list[str]:
        """uids of the runs waiting in the spool."""
        return self.spool.runs()

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.retry_interval)
            except queue.Empty:
                self._replay()
                continue
            if item is None:
                return
            name, doc = item
            if name == "__flush__":
                doc["event"].set()
                continue
            try:
                self._write(name, doc)
            except Exception:
                logger.exception("could not spool a %r document; it is lost", name)

    def _write(self, name: str, doc: dict) -> None:
        run = _run_of(name, doc, self._runs_of)
        if run is None:
            logger.warning("a %r document of no known run was dropped", name)
            return
        self.spool.append(run, name, doc)
        if name == "stop":  # its descriptors and resources will not be referred to again
            self._runs_of = {uid: owner for uid, owner in self._runs_of.items() if owner != run}
        if run in self._failed_runs:
            if name == "stop":
                self._failed_runs.discard(run)
            return
        try:
            self._writer(name, doc)
            if name == "start" and run not in self.catalog:
                # event-model's RunRouter turns an error on a start document into a warning
                raise ConnectionError(f"the catalog did not create run {run}")
        except Exception as error:
            logger.warning(
                "the catalog did not take a %r document of run %s (%s: %s); the run is kept in %s",
                name,
                run,
                type(error).__name__,
                error,
                self.spool.directory / run,
            )
            if name != "stop":
                self._failed_runs.add(run)
            return
        if name == "stop":
            self.spool.remove(run)
            self._replay()  # the catalog answers: write what waited

    def _replay(self) -> None:
        waiting = [
            run for run in self.spool.runs() if run not in self._failed_runs and self.spool.is_complete(run)
        ]
        for run in waiting:
            try:
                replay_run(self.catalog, self.spool, run, self._writer_factory)
            except Exception as error:
                logger.info("spooled runs wait for the catalog (%s: %s)", type(error).__name__, error)
                return
