"""Keep each input partition contiguous: read again records the consumer skipped.

faust-streaming 0.15 can drop records it has already fetched. Its recovery
seeks the input partitions to their committed offsets and then clears the
stream's queue when it resumes the streams, so records fetched in between
are lost. Its consumer then registers the missing offsets as a gap that may
be committed. Seen here: a worker restarted during a replay went on from
offset 67 to 1091 of each partition. Those events would never be applied,
and the position recorded in each customer's state would then make their
later redelivery look like a duplicate.

`InputGuard` sits between Faust and the processor. When a batch's records
of a topic-partition start after the next offset the processor expects (or,
first after an assignment, after the committed offset, or after the log's
first offset when nothing is committed), the guard reads the missing
range straight from the broker (`read`) and puts those records first, in
offset order. Offsets the broker does not have
(compaction, transaction markers, retention) are logged as an accepted gap.
`commit_limit` keeps Faust's commits at the first record not processed,
whatever Faust acknowledged.

An earlier version sought Faust's consumer back instead. Records Faust had
fetched before the seek then moved its read position on again, so Faust
dropped the records read again as already delivered. The guard took the
stale records for the result of its seek and accepted a gap that was not
one, and that input was lost.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import structlog
from faust.types import TP

from tagger.streams.processor import InboundRecord

__all__ = ["GAP_MESSAGE", "STALL_MESSAGE", "InputGuard"]

log = structlog.get_logger(__name__)

# A partition behind its input that receives no record for this long is
# sought again; a batch takes well under a second.
_STALLED_INPUT_S = 10.0
# The warnings logged with each count of tagger_errors_total{kind="input_stall"}
# and {kind="input_gap"}.
STALL_MESSAGE = "input partition behind its input receives no records, reading it again"
GAP_MESSAGE = "input records skipped by the consumer, reading them again"

Key = tuple[str, int]
# Return the records of a topic-partition from `start` up to, not including, `end`.
RangeReader = Callable[[TP, int, int], Awaitable[list[InboundRecord]]]
# Return the first offset of a topic-partition that the broker still has.
LogStart = Callable[[TP], Awaitable[int | None]]


class InputGuard:
    """Tracks the next offset to process per input topic-partition and fills gaps."""

    def __init__(
        self,
        topics: Iterable[str],
        seek: Callable[[TP, int], Awaitable[None]],
        read: RangeReader,
        on_gap: Callable[[], None] | None = None,
        committed: Callable[[TP], int | None] | None = None,
        on_stall: Callable[[], None] | None = None,
        log_start: LogStart | None = None,
    ) -> None:
        self.topics = frozenset(topics)
        self.expected: dict[Key, int] = {}
        self._seek = seek
        self._read = read
        self._on_gap = on_gap
        # Called for each partition sought again for receiving no records.
        # Under a large backlog Faust's flow control can leave a partition
        # without records that long, so these are not counted as gaps.
        self._on_stall = on_stall
        # The group's committed offset of a topic-partition, where the
        # consumer starts after an assignment, or None when there is none.
        self._committed = committed
        # Where a consumer with no committed offset starts (it resets to the earliest).
        self._log_start = log_start
        # Monotonic time a record of each topic-partition last arrived, or
        # since it was first seen behind its input with none arriving.
        self._last_arrival: dict[Key, float] = {}

    async def admit(self, records: Sequence[InboundRecord]) -> list[InboundRecord]:
        """Return the records to process now, with the records the consumer skipped read in."""
        running = dict(self.expected)
        admitted: list[InboundRecord] = []
        now = time.monotonic()
        for record in records:
            key = (record.topic, record.partition)
            self._last_arrival[key] = now
            expected = running.get(key)
            if expected is None:
                expected = await self._first_offset(TP(record.topic, record.partition))
            if expected is not None and record.offset > expected:
                admitted.extend(await self._read_skipped(record, expected))
            running[key] = max(expected or 0, record.offset + 1)
            admitted.append(record)
        return admitted

    async def _first_offset(self, tp: TP) -> int | None:
        """Return the offset the first record after an assignment must have, or None."""
        if self._committed is None:
            return None
        committed = self._committed(tp)
        if committed is not None or self._log_start is None:
            return committed
        # Nothing committed (Faust also keeps 0 as none): the consumer starts at
        # the log's first offset, so records before the first one seen were skipped.
        return await self._log_start(tp)

    async def check_stalled(self, behind: Iterable[TP]) -> None:
        """Seek input partitions that are behind their input yet receive no records.

        When Faust resumes its streams it can clear records it fetched after
        its read position moved past them. If nothing was fetched after them,
        no gap ever shows, so the partition would wait forever. Such a
        partition is sought back to the next offset to process, or to where
        its first record after the assignment is expected, or to 0.
        """
        now = time.monotonic()
        behind_keys = set()
        for tp in behind:
            key = (tp.topic, tp.partition)
            behind_keys.add(key)
            since = self._last_arrival.setdefault(key, now)
            if now - since < _STALLED_INPUT_S:
                continue
            offset = self.expected.get(key)
            if offset is None:
                offset = await self._first_offset(tp) or 0
            log.warning(
                STALL_MESSAGE,
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                waited_s=round(now - since, 1),
            )
            if self._on_stall is not None:
                self._on_stall()
            self._last_arrival[key] = now
            await self._seek(tp, offset)
        for key in [key for key in self._last_arrival if key not in behind_keys]:
            # Caught up: the wait starts again once it falls behind.
            del self._last_arrival[key]

    def processed(self, records: Sequence[InboundRecord]) -> None:
        """Record that `records` were applied: the next expected offsets move past them."""
        for record in records:
            key = (record.topic, record.partition)
            if record.offset + 1 > self.expected.get(key, -1):
                self.expected[key] = record.offset + 1

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop what is known of partitions this worker no longer owns."""
        revoked = set(partitions)
        for key in [key for key in self.expected if key[1] in revoked]:
            del self.expected[key]

    def commit_limit(self, tp: TP) -> int | None:
        """Return the highest offset of `tp` Faust may commit, or None for no limit.

        For an input topic that is the next offset to process, or -1 (commit
        nothing) before this worker processed any record of it.
        """
        if tp.topic not in self.topics:
            return None
        return self.expected.get((tp.topic, tp.partition), -1)

    async def _read_skipped(self, record: InboundRecord, expected: int) -> list[InboundRecord]:
        """Read the records of `record`'s partition from `expected` up to `record`."""
        log.warning(
            GAP_MESSAGE,
            topic=record.topic,
            partition=record.partition,
            expected_offset=expected,
            received_offset=record.offset,
        )
        if self._on_gap is not None:
            self._on_gap()
        skipped = await self._read(TP(record.topic, record.partition), expected, record.offset)
        missing = record.offset - expected - len(skipped)
        if missing:
            log.info(
                "input offsets missing on the broker, gap accepted",
                topic=record.topic,
                partition=record.partition,
                missing=missing,
                first_read=skipped[0].offset if skipped else None,
                range_start=expected,
                range_end=record.offset - 1,
            )
        return skipped
