"""Every customer's current tags and seq, read from the customers table's changelog topic."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from kafka import TopicPartition

from tagger.errors import MirrorError
from tagger.rules.state import decode_state
from tagger.streams.config import Settings
from tagger.streams.mirror_lua import mirror_seq
from tagger.streams.readers import standalone_consumer
from tagger.streams.topics import TopicError

__all__ = ["ChangelogReader", "TableCustomer", "changelog_topic"]

# The embedded Tansu broker reports some end offsets too low (see
# `end_offsets`). So the reader passes every reported end and then stops
# after this many empty polls in a row. One fetch returns at least one whole
# batch, so an empty poll means nothing more was there.
_EMPTY_POLLS_TO_STOP = 3
_POLL_TIMEOUT_MS = 300
_MAX_RECORDS_PER_POLL = 5_000
# Reading gives up when it has not reached the reported end offsets after
# this many empty polls in a row (about a minute).
_STALLED_POLLS = 200
# Progress is reported at most this often (seconds).
_PROGRESS_INTERVAL_S = 2.0

Progress = Callable[[int, int, int], None]


@dataclass(frozen=True, slots=True)
class TableCustomer:
    """One customer as stored in the table: `mirror_seq` and tag -> since (epoch ms).

    `seq` combines the epoch and the change sequence as the mirror's seq key does.
    """

    seq: int
    tags: dict[str, int]


def changelog_topic(settings: Settings) -> str:
    """Return the changelog topic of the customers table, `<app_id>-customers-changelog`."""
    return f"{settings.app_id}-customers-changelog"


class ChangelogReader:
    """Reads the customers changelog from the beginning, with no consumer group.

    `customers` contains the last record of each key: a record with a null
    value deletes its customer. `read_to_end` may be called again to catch
    up with records written since the last call.
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = changelog_topic(settings)
        self.customers: dict[str, TableCustomer] = {}
        self.records = 0
        self._consumer = standalone_consumer(settings, "mirror-tools")
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            self._consumer.close()
            raise TopicError(
                f"changelog topic {self.topic!r} does not exist: check TAGGER_APP_ID "
                "(the topic is named <app_id>-customers-changelog), or start a worker first"
            )
        self._partitions = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._partitions)
        self._consumer.seek_to_beginning(*self._partitions)

    def read_to_end(self, progress: Progress | None = None) -> int:
        """Read until the topic's end and return how many records this call read.

        `progress(records, estimated_total, customers)` runs every few
        seconds; `estimated_total` comes from the reported end offsets.
        """
        reported = self._consumer.end_offsets(self._partitions)
        estimated_total = sum(int(offset) for offset in reported.values())
        read = 0
        empty = 0
        last_report = time.monotonic()
        while True:
            batch = self._consumer.poll(
                timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_RECORDS_PER_POLL
            )
            if batch:
                empty = 0
                for records in batch.values():
                    for record in records:
                        self._apply(record)
                        read += 1
            else:
                empty += 1
                if empty >= _EMPTY_POLLS_TO_STOP and self._passed(reported):
                    break
                if empty >= _STALLED_POLLS:
                    raise TopicError(
                        f"reading {self.topic!r} stalled before its reported end offsets "
                        f"{_offsets(reported)}: is the broker healthy?"
                    )
            if progress is not None and time.monotonic() - last_report >= _PROGRESS_INTERVAL_S:
                last_report = time.monotonic()
                progress(self.records, estimated_total, len(self.customers))
        # A catch-up call that found nothing new has nothing to report.
        if progress is not None and (read or self.records == 0):
            progress(self.records, max(estimated_total, self.records), len(self.customers))
        return read

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _apply(self, record: Any) -> None:
        self.records += 1
        if record.key is None:
            return
        customer_id = bytes(record.key).decode("utf-8", errors="replace")
        if record.value is None:
            self.customers.pop(customer_id, None)
            return
        try:
            state = decode_state(record.value)
        except (ValueError, KeyError, TypeError) as exc:
            raise MirrorError(
                f"customer state at {record.topic}/{record.partition}@{record.offset} "
                f"(customer {customer_id!r}) could not be decoded: {exc}"
            ) from exc
        self.customers[customer_id] = TableCustomer(
            mirror_seq(state.epoch, state.seq), dict(state.tags)
        )

    def _passed(self, reported: dict[TopicPartition, int]) -> bool:
        return all(self._consumer.position(tp) >= int(end) for tp, end in reported.items())


def _offsets(reported: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{tp.partition}:{offset}" for tp, offset in sorted(reported.items()))
