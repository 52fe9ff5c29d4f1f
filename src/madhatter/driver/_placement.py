"""Where a stage's chunks run: in the driver ("inline") or on the engine ("ship").

A stage whose steps may run in the driver starts by *probing*: its first chunks (1, 2, 4, ...
items) run in the driver while their compute time is measured, until :data:`PROBE_SECONDS` of it
is seen. If an item's compute time beats the cost of pickling it to a worker and back (see
``_sizing.py``), the stage ships from then on; otherwise it stays inline, and keeps watching: a
few slow chunks in a row move it to the engine after all. A stage that must not run in the driver
(isolation, limits, its own engine, or an engine whose tasks run in the caller anyway) ships from
the start.
"""

from __future__ import annotations

from typing import Any, Literal

from ._sizing import (
    INLINE_TARGET_SECONDS,
    PROBE_SECONDS,
    ChunkSizer,
    shipping_pays_off,
    transfer_seconds_per_item,
)

Mode = Literal["probe", "inline", "ship"]

SLOW_CHUNKS_BEFORE_SHIPPING = 3
"""A step running in the driver moves to the engine only after this many chunks in a row were
worth shipping: one chunk slowed by a busy machine must not decide (seen on W5 under load)."""


class Placement:
    """The probe/inline/ship decision of one stage, and the chunk sizes that go with it."""

    def __init__(
        self,
        sizer: ChunkSizer,
        *,
        probe: bool,
        ship_seconds: float,
        ships_data: bool,
        shares_buffers: bool = False,
    ) -> None:
        self.mode: Mode = "probe" if probe else "ship"
        self.sizer = sizer
        self._ship_seconds, self._ships_data = ship_seconds, ships_data
        self._shares_buffers = shares_buffers
        self._adaptive = probe  # a stage that probed keeps watching while it runs inline
        self._probe_items, self._probe_seconds = 0, 0.0  # what the probe has run so far
        self._transfer = 0.0  # pickling round trip per item, measured at the probe's end
        self._slow_chunks = 0
        sizer.target_seconds = INLINE_TARGET_SECONDS if probe else ship_seconds

    @property
    def shipping(self) -> bool:
        return self.mode == "ship"

    @property
    def first_probe(self) -> bool:
        """Whether the next chunk is the probe's first, whose cost nothing bounds yet."""
        return self.mode == "probe" and self._probe_items == 0

    def next_size(self) -> int:
        """The next chunk's length: doubling while probing (unless fixed), then the sizer's."""
        if self.mode == "probe" and self.sizer.fixed is None:
            return max(1, 2 * self._probe_items)  # 1, 2, 4, ... items until the probe is long enough
        return self.sizer.next_size()

    def ran_in_driver(
        self, items: list[Any], outputs: list[Any], seconds: float, *, input_done: bool
    ) -> None:
        """Learn from a chunk that ran in the driver; may switch the stage to shipping."""
        if self.mode == "probe":
            self._probe(items, outputs, seconds, input_done)
        elif self._adaptive:
            slow = shipping_pays_off(seconds / max(1, len(items)), self._transfer)
            self._slow_chunks = self._slow_chunks + 1 if slow else 0
            if self._slow_chunks >= SLOW_CHUNKS_BEFORE_SHIPPING:
                self.ship()

    def ship(self) -> None:
        """Ship from now on (the probe found it pays, or its first item outran the probe)."""
        self.mode = "ship"
        self.sizer.target_seconds = self._ship_seconds

    def _probe(self, items: list[Any], outputs: list[Any], seconds: float, input_done: bool) -> None:
        self._probe_items += len(items)
        self._probe_seconds += seconds
        if self._probe_seconds < PROBE_SECONDS and not input_done:
            return
        if self._ships_data:
            self._transfer = transfer_seconds_per_item(items, outputs, shared=self._shares_buffers)
        per_item = self._probe_seconds / max(1, self._probe_items)
        self.sizer.per_item = per_item  # the whole probe, not the noisy first tiny batches
        if shipping_pays_off(per_item, self._transfer):
            self.ship()
        else:
            self.mode = "inline"
