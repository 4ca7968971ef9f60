"""Which runs a callback saw from their start: the documents of the others are held back, each such run reported once.

A callback that joins a document stream late (a service started in the
middle of a scan, a bus that lost documents while it was down) receives
descriptors, events and stops of runs whose start it never had, and a bus
that redelivers after a reconnect may repeat a start or a stop. Routing
those would fail on every document, or start a second reconstruction of
one scan; :class:`RunArrivals` lets through only the documents of runs
seen from their start, once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

logger = logging.getLogger(__name__)
# runs remembered (started, stopped, missed): far more than a bus reorders across
REMEMBERED = 10_000


class _Recent(OrderedDict):
    """A dictionary that forgets its oldest keys beyond ``REMEMBERED``."""

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        if len(self) > REMEMBERED:
            self.popitem(last=False)


class RunArrivals:
    """Admits the documents of runs whose start came; reports each run first seen without it.

    Parameters
    ----------
    on_missed
        ``f(run_uid, descriptor)``, called once for each run whose documents
        arrive without its start: with its first descriptor, or None when
        the first document seen is its stop.
    """

    def __init__(self, on_missed: Callable[[str, dict | None], None]) -> None:
        self.on_missed = on_missed
        self._runs: _Recent = _Recent()  # run uid -> "open", "stopped" or "missed"
        self._missed_parents: _Recent = _Recent()  # descriptors and resources of missed runs

    def admit(self, name: str, doc: dict) -> bool:
        """Whether ``doc`` goes on to the run's callbacks."""
        if name == "start":
            if doc["uid"] in self._runs:
                logger.warning("a second start document for run %s (redelivered?): ignored", doc["uid"])
                return False
            self._runs[doc["uid"]] = "open"
            return True
        parent = doc.get("descriptor") or doc.get("resource") or doc.get("stream_resource")
        if name in ("event", "event_page", "datum", "datum_page", "stream_datum"):
            return parent not in self._missed_parents
        run = doc.get("run_start")
        if run is None:  # a legacy resource need not name its run: the router places it
            return True
        state = self._runs.get(run)
        if state == "open":
            if name == "stop":
                self._runs[run] = "stopped"
            return True
        if state == "stopped":
            logger.warning("a %s document for run %s after its stop (redelivered?): ignored", name, run)
            return False
        if name != "stop":
            self._missed_parents[doc["uid"]] = run
        if state is None:
            self._runs[run] = "missed"
            self.on_missed(run, doc if name == "descriptor" else None)
        return False
