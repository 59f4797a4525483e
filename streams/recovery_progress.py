"""Progress and stall reports while a worker restores its tables from their changelogs.

Faust restores every table partition a worker is assigned, active or
standby, by reading its changelog topic before the worker consumes input.
`RecoveryProgress` samples Faust's recovery state. It logs one "recovery
progress" line per table at most every `recovery_log_interval_s`. It warns
"recovery stalled" when no changelog position moved for `recovery_stall_s`
while records remain or an end offset is still unknown, as with a broker that
stopped responding. It only reads that state, so recovery itself runs as
Faust wrote it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import mode
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = [
    "ChangelogPosition",
    "RecoveryMetrics",
    "RecoveryProgress",
    "RecoveryTracker",
    "Report",
    "read_positions",
]

log = structlog.get_logger(__name__)

Kind = Literal["active", "standby"]


@dataclass(frozen=True, slots=True)
class ChangelogPosition:
    """How far one changelog partition of a table has been read.

    `offset` is the offset of the last record applied, or -1 before the
    first one. `end` is the offset of the partition's last record, or -1 for
    an empty partition. Either is None until Faust has read it from the broker.
    `start` is the offset this recovery started after, where the recovery
    service records it; otherwise the first offset sampled counts as the start.
    """

    table: str
    topic: str
    partition: int
    offset: int | None
    end: int | None
    start: int | None = None

    @property
    def remaining(self) -> int | None:
        """Records left to read, or None while the offset or the end is unknown."""
        if self.offset is None or self.end is None:
            return None
        return max(0, self.end - self.offset)

    @property
    def name(self) -> str:
        """The partition as `topic[partition]`, for logs."""
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True, slots=True)
class Report:
    """One log line the tracker requests: its level, message and fields."""

    level: Literal["info", "warning", "error"]
    event: str
    fields: dict[str, Any]


@dataclass(slots=True)
class _Round:
    started_at: float
    last_change_at: float
    last_log_at: float
    restored_at_last_log: dict[str, int] = field(default_factory=dict)
    start_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    snapshot: tuple[tuple[str, int, int | None, int | None], ...] = ()
    stalled: bool = False
    # True once a line has given the records to restore. Faust may learn the
    # end offsets only after the recovery has started.
    total_logged: bool = False


class RecoveryTracker:
    """Turns samples of one kind of recovery (active or standby) into reports.

    Pure logic: `observe` takes the time and the positions and returns what
    to log, so tests can drive it without Faust.
    """

    def __init__(self, kind: Kind, *, log_interval_s: float, stall_s: float) -> None:
        self.kind = kind
        self.log_interval_s = log_interval_s
        self.stall_s = stall_s
        self.stalls = 0
        self._round: _Round | None = None

    @property
    def stalled(self) -> bool:
        """True while the current recovery is reported as stalled."""
        return self._round is not None and self._round.stalled

    def observe(
        self, now: float, recovering: bool, positions: Iterable[ChangelogPosition]
    ) -> list[Report]:
        """Record one sample taken at `now` (monotonic seconds); return the reports it causes."""
        current = sorted(positions, key=lambda p: (p.table, p.topic, p.partition))
        state = self._round
        if not recovering:
            if state is None:
                return []
            self._round = None
            _note_starts(state, current)
            return [self._finished(now, state, current)]

        reports: list[Report] = []
        new_round = state is None
        if state is None:
            state = self._round = _Round(started_at=now, last_change_at=now, last_log_at=now)
        _note_starts(state, current)
        if new_round:
            reports.append(self._started(state, current))
        if not state.total_logged:
            total = _sum_known(self._total(state, p) for p in current)
            state.total_logged = total is not None
            # The "recovery started" line already gives a total known at the start.
            if total is not None and not new_round:
                reports.append(
                    Report(
                        "info",
                        "recovery size known",
                        {
                            "kind": self.kind,
                            "records_to_restore": total,
                            "seconds": round(now - state.started_at, 2),
                        },
                    )
                )

        snapshot = tuple((p.topic, p.partition, p.offset, p.end) for p in current)
        if snapshot != state.snapshot:
            state.snapshot = snapshot
            state.last_change_at = now
            if state.stalled:
                state.stalled = False
                reports.append(
                    Report(
                        "info",
                        "recovery resumed",
                        {"kind": self.kind, "restored": self._restored(state, current)},
                    )
                )

        waiting = [p for p in current if p.remaining is None or p.remaining > 0]
        idle_s = now - state.last_change_at
        if waiting and idle_s >= self.stall_s:
            if not state.stalled:
                state.stalled = True
                self.stalls += 1
                reports.append(self._stall(idle_s, waiting))
                state.last_log_at = now
            elif now - state.last_log_at >= self.log_interval_s:
                reports.append(self._stall(idle_s, waiting))
                state.last_log_at = now
        elif now - state.last_log_at >= self.log_interval_s:
            reports.extend(self._progress(now, state, current))
            state.last_log_at = now
        return reports

    def remaining_by_table(self, positions: Iterable[ChangelogPosition]) -> dict[str, int]:
        """Return the records left per table, counting partitions whose end is known."""
        remaining: dict[str, int] = {}
        for position in positions:
            remaining.setdefault(position.table, 0)
            remaining[position.table] += position.remaining or 0
        return remaining

    def _started(self, state: _Round, current: list[ChangelogPosition]) -> Report:
        # Counted from each partition's start, as the later lines count, so
        # that a bulk read already under way counts in full.
        totals = [self._total(state, p) for p in current]
        fields: dict[str, Any] = {
            "kind": self.kind,
            "tables": {
                table: [p.partition for p in current if p.table == table]
                for table in sorted({p.table for p in current})
            },
            "records_to_restore": _sum_known(totals),
        }
        unknown = sum(1 for total in totals if total is None)
        if unknown:
            # A "recovery size known" line follows once Faust has read the missing end offsets.
            fields["partitions_not_yet_sized"] = unknown
        return Report("info", "recovery started", fields)

    def _progress(
        self, now: float, state: _Round, current: list[ChangelogPosition]
    ) -> list[Report]:
        elapsed = max(now - state.last_log_at, 1e-9)
        reports = []
        for table in sorted({p.table for p in current}):
            mine = [p for p in current if p.table == table]
            restored = self._restored(state, mine)
            since_last = restored - state.restored_at_last_log.get(table, 0)
            state.restored_at_last_log[table] = restored
            remaining = _sum_known(p.remaining for p in mine)
            reports.append(
                Report(
                    "info",
                    "recovery progress",
                    {
                        "kind": self.kind,
                        "table": table,
                        "restored": restored,
                        "remaining": remaining,
                        "total": None if remaining is None else restored + remaining,
                        # Records per second since the previous line.
                        "rate_per_s": round(since_last / elapsed, 1),
                        # Per partition: records left / records to restore in this recovery.
                        "partitions": {
                            str(p.partition): f"{_show(p.remaining)}/{_show(self._total(state, p))}"
                            for p in mine
                        },
                    },
                )
            )
        return reports

    def _stall(self, idle_s: float, waiting: list[ChangelogPosition]) -> Report:
        return Report(
            "warning",
            "recovery stalled",
            {
                "kind": self.kind,
                "seconds_without_progress": round(idle_s, 1),
                "partitions": {p.name: {"offset": p.offset, "end": p.end} for p in waiting},
                "hint": "no changelog record or end offset arrived; check that the broker "
                "answers (the worker keeps waiting and reports again)",
            },
        )

    def _finished(self, now: float, state: _Round, current: list[ChangelogPosition]) -> Report:
        seconds = now - state.started_at
        restored = self._restored(state, current)
        fields: dict[str, Any] = {
            "kind": self.kind,
            "restored": restored,
            "seconds": round(seconds, 2),
            "rate_per_s": round(restored / max(seconds, 1e-9), 1),
        }
        unread = [p for p in current if p.remaining is None or p.remaining > 0]
        if self.kind == "active" and unread:
            # faust-streaming 0.15 ends a recovery whose offset requests
            # failed as if nothing were left, as seen here with a paused
            # broker. A later rebalance restored the rest in those runs.
            fields["partitions_not_read_to_end"] = {
                p.name: {"offset": p.offset, "end": p.end} for p in unread
            }
            return Report("error", "recovery ended before every record was restored", fields)
        return Report("info", "recovery finished", fields)

    def _restored(self, state: _Round, positions: Iterable[ChangelogPosition]) -> int:
        restored = 0
        for position in positions:
            start = state.start_offsets.get((position.topic, position.partition))
            if start is not None and position.offset is not None:
                restored += max(0, position.offset - start)
        return restored

    def _total(self, state: _Round, position: ChangelogPosition) -> int | None:
        start = state.start_offsets.get((position.topic, position.partition))
        if start is None or position.end is None:
            return None
        return max(0, position.end - start)


def _note_starts(state: _Round, positions: Iterable[ChangelogPosition]) -> None:
    """Record each partition's start offset the first time it is known."""
    for position in positions:
        key = (position.topic, position.partition)
        if key not in state.start_offsets:
            start = position.start if position.start is not None else position.offset
            if start is not None:
                state.start_offsets[key] = start


def _sum_known(values: Iterable[int | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def _show(value: int | None) -> str:
    return "?" if value is None else str(value)


def read_positions(recovery: Any, kind: Kind) -> list[ChangelogPosition]:
    """Return the changelog positions of Faust's recovery service for one kind.

    Reads `active_tps`/`standby_tps`, `tp_to_table` and the offset and
    highwater counters of `faust.tables.recovery.Recovery` (faust-streaming
    0.15). Those counters hold the last offset read and the last offset in
    the topic, -1 when there is none. The active kind also reads the start
    offsets that `BulkRecovery` records: its bulk read can move the offsets
    on between two samples.
    """
    if kind == "active":
        tps, offsets, ends = (
            recovery.active_tps,
            recovery.active_offsets,
            recovery.active_highwaters,
        )
        starts = getattr(recovery, "start_offsets", {})
    else:
        tps, offsets, ends = (
            recovery.standby_tps,
            recovery.standby_offsets,
            recovery.standby_highwaters,
        )
        starts = {}
    positions = []
    for tp in list(tps):
        table = recovery.tp_to_table.get(tp)
        positions.append(
            ChangelogPosition(
                table=str(getattr(table, "name", tp.topic)),
                topic=tp.topic,
                partition=tp.partition,
                offset=_offset(offsets.get(tp)),
                end=_offset(ends.get(tp)),
                start=_offset(starts.get(tp)),
            )
        )
    return positions


def _offset(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True, slots=True)
class RecoveryMetrics:
    """Recovery gauges and counters, registered on the worker's registry."""

    stalls: Counter
    remaining: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RecoveryMetrics:
        """Register the recovery metrics on `registry` and return them."""
        return cls(
            stalls=Counter(
                "tagger_recovery_stalls_total",
                "Times table recovery made no progress for TAGGER_RECOVERY_STALL_S while "
                "records remained, by kind (active or standby).",
                ["kind"],
                registry=registry,
            ),
            remaining=Gauge(
                "tagger_recovery_records_remaining",
                "Changelog records left to restore, by table and kind; 0 when not recovering.",
                ["table", "kind"],
                registry=registry,
            ),
        )


class RecoveryProgress(mode.Service):
    """Samples Faust's table recovery and logs progress and stalls.

    Start it before the app (as a service of the worker): Faust starts the
    app's own services only after the first recovery has finished.
    """

    def __init__(
        self,
        app: Any,
        *,
        log_interval_s: float,
        stall_s: float,
        metrics: RecoveryMetrics | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.metrics = metrics
        self.trackers = {
            kind: RecoveryTracker(kind, log_interval_s=log_interval_s, stall_s=stall_s)
            for kind in ("active", "standby")
        }
        self.sample_interval_s = min(1.0, log_interval_s / 2, stall_s / 4)

    async def on_start(self) -> None:
        log.info(
            "recovery progress reports started",
            log_interval_s=self.trackers["active"].log_interval_s,
            stall_s=self.trackers["active"].stall_s,
        )
        self.add_future(self._run())

    async def _run(self) -> None:
        while not self.should_stop:
            try:
                self.sample(time.monotonic())
            except Exception as exc:
                # Reading Faust's state must never stop the worker.
                log.warning("recovery progress sample failed", error=repr(exc))
            await self.sleep(self.sample_interval_s)

    def sample(self, now: float) -> None:
        """Read the recovery state once, log what the trackers report, update the metrics."""
        tables = self.app.tables
        # Faust creates its recovery service when the app starts.
        recovery = getattr(tables, "_recovery", None)
        if recovery is None:
            return
        active = read_positions(recovery, "active")
        standby = read_positions(recovery, "standby")
        recovering = {
            "active": bool(recovery.in_recovery),
            # Standbys catch up after the actives and keep following afterwards;
            # Faust marks them ready once they first reach the end.
            "standby": bool(standby) and bool(tables.actives_ready) and not tables.standbys_ready,
        }
        for kind, positions in (("active", active), ("standby", standby)):
            tracker = self.trackers[kind]
            stalls_before = tracker.stalls
            for report in tracker.observe(now, recovering[kind], positions):
                emit = {"info": log.info, "warning": log.warning, "error": log.error}[report.level]
                emit(report.event, **report.fields)
            if self.metrics is None:
                continue
            if tracker.stalls > stalls_before:
                self.metrics.stalls.labels(kind).inc(tracker.stalls - stalls_before)
            remaining = tracker.remaining_by_table(positions) if recovering[kind] else {}
            for table in {p.table for p in positions} | set(remaining):
                self.metrics.remaining.labels(table, kind).set(remaining.get(table, 0))
