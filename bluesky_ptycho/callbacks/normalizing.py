"""Legacy Resource/Datum turned into StreamResource/StreamDatum, and nothing else done to a scan's documents.

bluesky-tiled-plugins' ``RunNormalizer`` gives frames one read path
(StreamResource/StreamDatum, whatever the detector's ophyd wrote), but it
also copies every event deeply and checks it against event-model's schema:
for frames inline in the events that costs more than the callback's own
work (330 frames/s of 64 x 64 where the callback alone takes 3,000).
:class:`LegacyNormalizer` keeps the conversion and hands on, as they came,
the events and event pages that carry no Datum reference (frames inline, or
in a StreamDatum, whose events hold only the positions): there is nothing in
them to convert, and the RunEngine (or the bus's publisher) composed and
checked them.
"""

from __future__ import annotations

from bluesky_tiled_plugins.writing.tiled_writer import RESERVED_DATA_KEYS, RunNormalizer


class LegacyNormalizer(RunNormalizer):
    """A ``RunNormalizer`` that passes through untouched the events that refer to no legacy Datum."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._external: dict[str, set[str]] = {}  # descriptor uid -> its external keys; absent: normalise all

    def descriptor(self, doc: dict) -> None:
        keys = doc["data_keys"]
        if not set(RESERVED_DATA_KEYS) & set(keys):  # those the plugin renames, in events too
            self._external[doc["uid"]] = {name for name, key in keys.items() if "external" in key}
        super().descriptor(doc)

    def _untouched(self, doc: dict) -> bool:
        """Whether the event (page) ``doc`` carries no Datum reference (a StreamDatum's frames are not in it)."""
        external = self._external.get(doc["descriptor"])
        return external is not None and not external & doc["data"].keys()

    def event(self, doc: dict) -> None:
        if self._untouched(doc):
            self.dispatcher.process("event", doc)
        else:
            super().event(doc)

    def event_page(self, doc: dict) -> None:
        if self._untouched(doc):
            self.dispatcher.process("event_page", doc)
        else:
            super().event_page(doc)
