"""bluesky-tiled-plugins' ``TiledWriter``, writing each event page in one request, and reconstructions live.

The plugin unpacks an event page into single events and writes them
``batch_size`` at a time. A live writer needs ``batch_size=1`` (each preview
visible at once), so a page of N rows (a reconstruction's cost per iteration)
cost N requests: about 3 s for a final of 100 iterations on the embedded
catalog. Here a page is one batch, whatever ``batch_size`` says for events.
And a reconstruction run (a few events, each awaited by a scientist) is
written event by event whatever ``batch_size`` is, while raw scans sharing the
writer keep their batches.

Built on the plugin's per-run writer (``_RunWriter``, not public API);
``tests/test_catalog_writer.py`` counts the requests of a page, so an upgrade
that changes it fails there, not at a beamline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bluesky_tiled_plugins import TiledWriter
from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer, _RunWriter

from .documents import PLAN_NAME


class _RunWriterWithBatches(_RunWriter):
    """One run's writer that can take the next N events as one batch."""

    @contextlib.contextmanager
    def batch_of(self, n_events: int) -> Iterator[None]:
        """Within the block, ``n_events`` events make a batch (or ``batch_size``, if larger)."""
        batch_size = self._batch_size
        self._batch_size = max(batch_size, n_events)
        try:
            yield
        finally:
            self._batch_size = batch_size


class _PageAtOnceNormalizer(RunNormalizer):
    """The plugin's normaliser, which unpacks a page into events, handing them on as one batch."""

    def __init__(self, run_writer: _RunWriterWithBatches, **kwargs) -> None:
        super().__init__(**kwargs)
        self._run_writer = run_writer
        self.subscribe(run_writer)

    def event_page(self, doc: dict) -> None:
        with self._run_writer.batch_of(len(doc["seq_num"])):
            super().event_page(doc)


class CatalogWriter(TiledWriter):
    """A ``TiledWriter`` (same arguments) that writes an event page in one request, and reconstructions live.

    Legacy documents are normalised by the plugin's ``RunNormalizer``; the
    plugin's backup options are not offered (:class:`~.spool.DurableCatalogWriter`
    keeps every document on disk until the catalog holds it).
    """

    def __init__(self, client, *, batch_size: int = 1, **kwargs) -> None:
        unsupported = {"normalizer", "backup_directory", "backup_dictionary"} & set(kwargs)
        if unsupported:
            raise TypeError(f"CatalogWriter does not take {', '.join(sorted(unsupported))}")
        super().__init__(client, batch_size=batch_size, **kwargs)

    def _factory(self, name: str, doc: dict):
        live = doc.get("plan_name") == PLAN_NAME
        run_writer = _RunWriterWithBatches(
            self.client,
            batch_size=1 if live else self._batch_size,
            max_array_size=self._max_array_size,
            validate=self._validate,
            ignore_errors=self.ignore_errors,
        )
        return [
            _PageAtOnceNormalizer(run_writer, patches=self.patches, spec_to_mimetype=self.spec_to_mimetype)
        ], []
