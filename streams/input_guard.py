"""Keep each input partition contiguous: read again records the consumer skipped.

faust-streaming 0.15 can drop records it has already fetched. Its recovery
seeks the input partitions to their committed offsets and then clears the
stream's queue when it resumes the streams, so records fetched in between
are lost. Its consumer then registers the missing offsets as a gap that may
be committed. Seen here: a worker restarted during a replay went on from
offset 67 to 1091 of each partition. Those events would never be applied,
and the position recorded in each customer's state would then make their
later redelivery look like a duplicate.

`InputGuard` sits between Faust and the processor. A batch whose records of
a topic-partition start after the next offset the processor expects loses
those records, the consumer is sought back to the expected offset, and
records are dropped until it arrives. When the records after the seek start
at the same offset again, the missing offsets do not exist (compaction or
transaction markers), and the guard accepts the gap. `commit_limit` keeps
Faust's commits at the first record not processed, whatever Faust acknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import structlog
from faust.types import TP

from tagger.streams.processor import InboundRecord

__all__ = ["InputGuard"]

log = structlog.get_logger(__name__)

# A seek whose records have not arrived after this long is sent again.
_SEEK_RETRY_S = 2.0
# A partition behind its input that receives no record for this long is
# sought again; a batch takes well under a second.
_STALLED_INPUT_S = 10.0

Key = tuple[str, int]


@dataclass(slots=True)
class _Seek:
    expected: int
    first_seen: int
    sent_at: float


class InputGuard:
    """Tracks the next offset to process per input topic-partition and repairs gaps."""

    def __init__(
        self,
        topics: Iterable[str],
        seek: Callable[[TP, int], Awaitable[None]],
        on_gap: Callable[[], None] | None = None,
    ) -> None:
        self.topics = frozenset(topics)
        self.expected: dict[Key, int] = {}
        self._seek = seek
        self._on_gap = on_gap
        self._seeking: dict[Key, _Seek] = {}
        # Monotonic time a record of each topic-partition last arrived, or
        # since it was first seen behind its input with none arriving.
        self._last_arrival: dict[Key, float] = {}

    async def admit(self, records: Sequence[InboundRecord]) -> list[InboundRecord]:
        """Return the records to process now; seek back where the batch skipped records."""
        running = dict(self.expected)
        admitted: list[InboundRecord] = []
        now = time.monotonic()
        for record in records:
            key = (record.topic, record.partition)
            self._last_arrival[key] = now
            expected = running.get(key)
            if expected is None or record.offset <= expected:
                self._seeking.pop(key, None)
                running[key] = max(expected or 0, record.offset + 1)
                admitted.append(record)
                continue
            pending = self._seeking.get(key)
            if pending is not None and pending.expected == expected:
                if record.offset == pending.first_seen:
                    # The seek found nothing before this offset: a real gap.
                    log.info(
                        "input offsets missing on the broker, gap accepted",
                        topic=record.topic,
                        partition=record.partition,
                        missing_from=expected,
                        missing_to=record.offset - 1,
                    )
                    del self._seeking[key]
                    running[key] = record.offset + 1
                    admitted.append(record)
                    continue
                if time.monotonic() - pending.sent_at < _SEEK_RETRY_S:
                    continue
            await self._seek_back(record, expected)
        return admitted

    async def retry(self) -> None:
        """Seek again where the records of an earlier seek have not arrived in time.

        Records the consumer fetched before a seek can still arrive after it,
        and Faust then drops the records read again as already delivered.
        """
        now = time.monotonic()
        for (topic, partition), pending in list(self._seeking.items()):
            if now - pending.sent_at < _SEEK_RETRY_S:
                continue
            log.warning(
                "input records still missing, seeking again",
                topic=topic,
                partition=partition,
                expected_offset=pending.expected,
            )
            pending.sent_at = now
            await self._seek(TP(topic, partition), pending.expected)

    async def check_stalled(
        self, behind: Iterable[TP], committed: Callable[[TP], int | None]
    ) -> None:
        """Seek input partitions that are behind their input yet receive no records.

        When Faust resumes its streams it can clear records it fetched after
        its read position moved past them. If nothing was fetched after them,
        no gap ever shows, so the partition would wait forever. Such a
        partition is sought back to the next offset to process, or to its
        committed offset, or to its start.
        """
        now = time.monotonic()
        behind_keys = set()
        for tp in behind:
            key = (tp.topic, tp.partition)
            behind_keys.add(key)
            since = self._last_arrival.setdefault(key, now)
            if now - since < _STALLED_INPUT_S or key in self._seeking:
                continue
            offset = self.expected.get(key)
            if offset is None:
                offset = committed(tp) or 0
            log.warning(
                "input partition behind its input receives no records, reading it again",
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                waited_s=round(now - since, 1),
            )
            if self._on_gap is not None:
                self._on_gap()
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
        for key in [key for key in self._seeking if key[1] in revoked]:
            del self._seeking[key]

    def commit_limit(self, tp: TP) -> int | None:
        """Return the highest offset of `tp` Faust may commit, or None for no limit.

        For an input topic that is the next offset to process, or -1 (commit
        nothing) before this worker processed any record of it.
        """
        if tp.topic not in self.topics:
            return None
        return self.expected.get((tp.topic, tp.partition), -1)

    async def _seek_back(self, record: InboundRecord, expected: int) -> None:
        key = (record.topic, record.partition)
        log.warning(
            "input records skipped by the consumer, reading them again",
            topic=record.topic,
            partition=record.partition,
            expected_offset=expected,
            received_offset=record.offset,
        )
        if self._on_gap is not None:
            self._on_gap()
        pending = self._seeking.get(key)
        first_seen = record.offset
        if pending is not None and pending.expected == expected:
            first_seen = min(first_seen, pending.first_seen)
        self._seeking[key] = _Seek(expected, first_seen, time.monotonic())
        await self._seek(TP(record.topic, record.partition), expected)
