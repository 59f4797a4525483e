"""Replay of a data file or a list of events into the input topic, with an end clock."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import orjson
import structlog
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn

from tagger.errors import ConfigError, TaggerError
from tagger.schemas.dead_letter import dead_letter_record
from tagger.streams.config import Settings
from tagger.streams.formats import BadRow, ConvertedEvent, detect_format, event_time_ms, read_items
from tagger.streams.security import kafka_python_args

__all__ = ["EndClock", "ReplayError", "ReplayReport", "replay_events", "replay_file"]

EndClock = int | Literal["auto"] | None

# One hour past the last event: long enough for a 30-minute cart rule to fire.
DEFAULT_END_CLOCK_SPAN_MS: Final = 3_600_000
# Producer tuning: a short linger fills batches during a fast replay without
# holding a paced one back noticeably.
LINGER_MS: Final = 20
BATCH_BYTES: Final = 256 * 1024
# How long a send may block on metadata or a full buffer before replay fails.
MAX_BLOCK_MS: Final = 30_000
# How long the final flush may wait for the broker to acknowledge everything.
FLUSH_TIMEOUT_S: Final = 120.0
# With --speed, the longest single pause: a quiet night in the data then
# costs seconds of wall time, not hours.
MAX_PAUSE_S: Final = 10.0
# Progress goes to the log this often when stderr is not a terminal.
LOG_INTERVAL_S: Final = 10.0
# The bar redraws at most this often, so drawing never slows the replay.
BAR_INTERVAL_S: Final = 0.2
# Bad rows logged one by one; the rest are only counted, so a broken file
# cannot flood the log.
LOGGED_BAD_ROWS: Final = 10

_log = structlog.get_logger(__name__)


class ReplayError(TaggerError):
    """A replay could not reach its topics or the broker did not acknowledge its records."""


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """Counts of one replay: rows read, events sent by type, dead letters by reason, times."""

    source: str | None  # the file replayed; None for replay_events
    format: str | None
    rows: int  # data rows read (file header and blank lines not counted)
    events: int  # events sent to the input topic
    dead_letters: Mapping[str, int]  # records sent to the dead-letter topic, by reason
    events_by_type: Mapping[str, int]
    first_ts: int | None  # event time of the first event sent, epoch ms
    last_ts: int | None
    end_clock: int | None  # clock sent to every input partition at the end
    elapsed_s: float

    @property
    def dead_letter_count(self) -> int:
        """Total records sent to the dead-letter topic."""
        return sum(self.dead_letters.values())

    @property
    def events_per_s(self) -> float:
        """Events sent per wall-clock second, acknowledgements included."""
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-ready values."""
        return {
            "source": self.source,
            "format": self.format,
            "rows": self.rows,
            "events": self.events,
            "dead_letters": dict(self.dead_letters),
            "events_by_type": dict(self.events_by_type),
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "end_clock": self.end_clock,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
        }


def replay_file(
    path: str | Path,
    settings: Settings,
    *,
    fmt: str | None = None,
    currency: str,
    assume_sorted: bool = False,
    end_clock: EndClock,
    end_clock_span_ms: int = DEFAULT_END_CLOCK_SPAN_MS,
    speed: float | None = None,
    progress: bool = True,
) -> ReplayReport:
    """Replay a data file into the first input topic and its bad rows into dead letters.

    Events are sent in (ts, line) order, which means holding them all in
    memory, unless `assume_sorted` streams them in file order. `end_clock`
    "auto" is the last event time plus `end_clock_span_ms`. Returns once the
    broker has acknowledged every record; raises ReplayError when it did not.
    """
    name = detect_format(path) if fmt is None else fmt
    items = read_items(path, fmt=name, currency=currency)
    file = str(path)
    with _Sender(settings, speed=speed, progress=progress, label=file) as sender:
        if assume_sorted:
            for item in items:
                sender.count_rows(item)
                if isinstance(item, BadRow):
                    sender.send_bad_row(file, item)
                else:
                    sender.send_event(item)
        else:
            for event in _sorted_events(items, sender, file):
                sender.send_event(event)
        return sender.finish(end_clock, end_clock_span_ms, source=file, fmt=name)


def replay_events(
    events: Iterable[Mapping[str, Any]],
    settings: Settings,
    *,
    end_clock: EndClock,
    end_clock_span_ms: int = DEFAULT_END_CLOCK_SPAN_MS,
    speed: float | None = None,
    progress: bool = True,
) -> ReplayReport:
    """Send events in the input format, in the order given, through the same path as a file.

    Each event is keyed by its `customer_id`; `ts` (epoch ms or RFC 3339)
    drives `speed` and the "auto" end clock.
    """
    with _Sender(settings, speed=speed, progress=progress, label="events") as sender:
        last_ts = 0
        for number, event in enumerate(events, start=1):
            ts = event_time_ms(event.get("ts"))
            last_ts = last_ts if ts is None else ts
            customer_id = event.get("customer_id")
            kind = event.get("type")
            converted = ConvertedEvent(
                line=number,
                ts=last_ts,
                customer_id=customer_id if isinstance(customer_id, str) else None,
                type=kind if isinstance(kind, str) else "unknown",
                value=orjson.dumps(event),
            )
            sender.count_rows(converted)
            sender.send_event(converted)
        return sender.finish(end_clock, end_clock_span_ms, source=None, fmt=None)


def _sorted_events(
    items: Iterator[ConvertedEvent | BadRow], sender: _Sender, file: str
) -> list[ConvertedEvent]:
    # Bad rows need no order, so they go out while the file is read.
    # TODO: sort externally (sorted runs on disk, then a merge); until then a
    # file whose events do not fit in memory needs assume_sorted.
    events: list[ConvertedEvent] = []
    for item in items:
        sender.count_rows(item)
        if isinstance(item, BadRow):
            sender.send_bad_row(file, item)
        else:
            events.append(item)
    events.sort(key=lambda event: (event.ts, event.line))
    return events


@dataclass(slots=True)
class _Tally:
    rows: int = 0
    events: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    events_by_type: Counter[str] = field(default_factory=Counter)
    first_ts: int | None = None
    last_ts: int | None = None
    acked: int = 0
    failed: int = 0
    first_error: BaseException | None = None


class _Sender:
    """The producing path shared by file and event replays: pacing, progress, acks."""

    def __init__(
        self, settings: Settings, *, speed: float | None, progress: bool, label: str
    ) -> None:
        if speed is not None and speed <= 0:
            raise ConfigError(f"invalid replay speed {speed}: use a factor above 0, or none")
        self._settings = settings
        self._topic = settings.input_topics[0]
        self._speed = speed
        self._label = label
        self._tally = _Tally()
        self._started = time.monotonic()
        self._pace_origin: tuple[float, int] | None = None
        self._next_log = self._started + LOG_INTERVAL_S
        self._next_draw = 0.0
        self._partitions = _partition_counts(settings)
        self._producer = _producer(settings)
        self._progress: Progress | None = None
        self._task: Any = None
        if progress and sys.stderr.isatty():
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._progress.add_task(self._describe(), total=None)
            self._progress.start()
        _log.info("replay started", source=label, topic=self._topic, speed=speed)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        # On an error the records in the buffer are dropped, not waited for.
        self._producer.close(timeout=0 if exc is not None else FLUSH_TIMEOUT_S)

    def count_rows(self, item: ConvertedEvent | BadRow) -> None:
        self._tally.rows += item.rows
        self._report_progress()

    def send_event(self, event: ConvertedEvent) -> None:
        self._pace(event.ts)
        key = None if event.customer_id is None else event.customer_id.encode()
        self._send(self._topic, key=key, value=event.value)

        tally = self._tally
        tally.events += 1
        tally.events_by_type[event.type] += 1
        if tally.first_ts is None:
            tally.first_ts = event.ts
        tally.last_ts = event.ts if tally.last_ts is None else max(tally.last_ts, event.ts)
        self._report_progress()

    def send_bad_row(self, file: str, row: BadRow) -> None:
        record = dead_letter_record(
            row.reason, row.detail, source={"file": file, "line": row.line}, key=None, raw=row.raw
        )
        self._send(self._settings.dead_letter_topic, key=None, value=record)
        tally = self._tally
        tally.dead_letters[row.reason] += 1
        dead_letters = sum(tally.dead_letters.values())
        if dead_letters <= LOGGED_BAD_ROWS:
            _log.warning(
                "row sent to dead letters",
                file=file,
                line=row.line,
                reason=row.reason,
                detail=row.detail,
            )
        if dead_letters == LOGGED_BAD_ROWS:
            _log.warning("further bad rows are only counted", file=file)

    def finish(
        self, end_clock: EndClock, span_ms: int, *, source: str | None, fmt: str | None
    ) -> ReplayReport:
        tally = self._tally
        clock = self._end_clock(end_clock, span_ms)
        if clock is not None:
            self._send_clocks(clock)
        self._flush()
        elapsed = time.monotonic() - self._started

        report = ReplayReport(
            source=source,
            format=fmt,
            rows=tally.rows,
            events=tally.events,
            dead_letters=dict(tally.dead_letters),
            events_by_type=dict(tally.events_by_type),
            first_ts=tally.first_ts,
            last_ts=tally.last_ts,
            end_clock=clock,
            elapsed_s=elapsed,
        )
        self._report_progress(force=True)
        _log.info("replay finished", **report.to_dict())
        return report

    def _end_clock(self, end_clock: EndClock, span_ms: int) -> int | None:
        last_ts = self._tally.last_ts
        if end_clock == "auto":
            if last_ts is None:
                _log.warning("no end clock sent: the replay sent no event", source=self._label)
                return None
            return last_ts + span_ms
        if end_clock is not None and last_ts is not None and end_clock < last_ts:
            # Clocks never move backwards, so this message changes nothing.
            _log.warning("end clock is before the last event", end_clock=end_clock, last_ts=last_ts)
        return end_clock

    def _send_clocks(self, clock: int) -> None:
        value = orjson.dumps({"type": "clock", "ts": clock})
        for topic in self._settings.input_topics:
            for partition in range(self._partitions[topic]):
                self._send(topic, key=None, value=value, partition=partition)
        _log.info("end clock sent", end_clock=clock, topics=list(self._settings.input_topics))

    def _send(
        self, topic: str, *, key: bytes | None, value: bytes, partition: int | None = None
    ) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value, partition=partition)
        except KafkaError as exc:
            raise ReplayError(f"sending to topic {topic!r} failed: {exc}") from exc
        future.add_callback(self._on_ack)
        future.add_errback(self._on_error)

    def _on_ack(self, _metadata: object) -> None:
        # Runs on the producer's I/O thread, the only writer of these two counters.
        self._tally.acked += 1

    def _on_error(self, exc: BaseException) -> None:
        self._tally.failed += 1
        if self._tally.first_error is None:
            self._tally.first_error = exc

    def _flush(self) -> None:
        try:
            self._producer.flush(timeout=FLUSH_TIMEOUT_S)
        except KafkaError as exc:
            raise ReplayError(
                f"the broker did not acknowledge every record within {FLUSH_TIMEOUT_S:.0f} s: {exc}"
            ) from exc
        tally = self._tally
        if tally.failed:
            raise ReplayError(
                f"replay incomplete: the broker rejected {tally.failed} records and acknowledged "
                f"{tally.acked} (first error: {tally.first_error}). Replaying the file again "
                "repeats the acknowledged events, and workers skip a repeated event_id only "
                "within their dedup window, so replay into fresh topics instead"
            ) from tally.first_error

    def _pace(self, ts: int) -> None:
        if self._speed is None:
            return
        now = time.monotonic()
        if self._pace_origin is None:
            self._pace_origin = (now, ts)
            return

        origin_wall, origin_ts = self._pace_origin
        due = origin_wall + (ts - origin_ts) / 1000 / self._speed
        pause = due - now
        if pause > MAX_PAUSE_S:
            # Shift the schedule so later events keep their spacing after the cut.
            self._pace_origin = (origin_wall - (pause - MAX_PAUSE_S), origin_ts)
            pause = MAX_PAUSE_S
        if pause > 0:
            time.sleep(pause)

    def _report_progress(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._progress is not None:
            if force or now >= self._next_draw:
                self._progress.update(self._task, description=self._describe())
                self._next_draw = now + BAR_INTERVAL_S
            return
        if force or now < self._next_log:
            return
        self._next_log = now + LOG_INTERVAL_S
        tally = self._tally
        _log.info(
            "replay progress",
            source=self._label,
            rows=tally.rows,
            events=tally.events,
            dead_letters=sum(tally.dead_letters.values()),
            events_per_s=round(self._rate(), 1),
        )

    def _describe(self) -> str:
        tally = self._tally
        return (
            f"{self._label}: rows read {tally.rows:,} · events sent {tally.events:,} · "
            f"dead letters {sum(tally.dead_letters.values()):,} · "
            f"{self._rate():,.0f} events/s"
        )

    def _rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return self._tally.events / elapsed if elapsed > 0 else 0.0


def _producer(settings: Settings) -> KafkaProducer:
    try:
        return KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            client_id="tagger-replay",
            acks="all",
            linger_ms=LINGER_MS,
            batch_size=BATCH_BYTES,
            max_block_ms=MAX_BLOCK_MS,
            allow_auto_create_topics=False,
            **kafka_python_args(settings),
        )
    except KafkaError as exc:
        raise ReplayError(
            f"cannot connect to Kafka at {settings.kafka_bootstrap_servers}: {exc}"
        ) from exc


def _partition_counts(settings: Settings) -> dict[str, int]:
    """Return the partition count of every input topic and check the dead-letter topic exists."""
    topics = [*settings.input_topics, settings.dead_letter_topic]
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            client_id="tagger-replay",
            **kafka_python_args(settings),
        )
    except KafkaError as exc:
        raise ReplayError(
            f"cannot connect to Kafka at {settings.kafka_bootstrap_servers}: {exc}"
        ) from exc
    try:
        described = admin.describe_topics(topics)
    except KafkaError as exc:
        raise ReplayError(f"cannot describe topics {topics}: {exc}") from exc
    finally:
        admin.close()

    counts = {entry["name"]: len(entry["partitions"]) for entry in described}
    missing = [topic for topic in topics if not counts.get(topic)]
    if missing:
        raise ReplayError(
            f"topics {missing} do not exist on {settings.kafka_bootstrap_servers}: "
            "create them with `tagger topics create`"
        )
    for topic in settings.input_topics:
        if counts[topic] != settings.partitions:
            _log.warning(
                "input topic partition count differs from the settings",
                topic=topic,
                partitions=counts[topic],
                expected=settings.partitions,
            )
    return counts
