"""State size and changelog recovery, measured after the worker stage caught up.

State size comes from the raw records of the customers table's changelog.
Recovery runs a second worker with the same app id and an empty data folder,
so it rebuilds its tables from the changelog topics.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import statistics
import time
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
import structlog
import zstandard
from kafka import TopicPartition

from bench.kafka_io import ProcessTimes, rss_bytes
from bench.worker_stage import get_path, start_worker, stop_worker, worker_pid
from tagger.rules.state import state_json
from tagger.streams.config import Settings
from tagger.streams.customers_changelog import changelog_topic
from tagger.streams.embedded import free_port
from tagger.streams.readers import standalone_consumer

if TYPE_CHECKING:
    from bench.runner import Context

__all__ = [
    "RECOVERY_LOG_INTERVAL_S",
    "dir_bytes",
    "measure_recovery",
    "measure_state",
    "recovery_cpu",
    "recovery_figures",
    "recovery_lines",
    "recovery_phases",
]

log = structlog.get_logger(__name__)

_POLL_TIMEOUT_MS = 300
_MAX_RECORDS_PER_POLL = 5_000
# The embedded broker reports some end offsets too low, so reading stops only
# after this many empty polls in a row past the reported ends.
_EMPTY_POLLS_TO_STOP = 3
# Reading gives up after this many empty polls in a row (about a minute).
_STALLED_POLLS = 200
_POLL_INTERVAL_S = 0.1
# How long to wait for the `recovery finished` log line after the partitions are ready.
_RECOVERY_LINE_WAIT_S = 15.0
# How long a recovered worker may take to become ready (its due-time index
# built) before the measurement stops waiting and reports it as not ready.
_READY_AFTER_RECOVERY_S = 60.0
# Recovery progress log interval of the recovering worker (seconds). Its
# sampler reads Faust's recovery state twice as often, so the recovery
# seconds it logs are accurate to about 0.1 s.
RECOVERY_LOG_INTERVAL_S = 0.2
# One `key=value` field of a console log line (structlog's ConsoleRenderer).
_FIELD = re.compile(r"(\w+)=(\S+)")
# The ISO 8601 UTC time at the start of a console log line.
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+)Z ")
# The table whose progress lines `recovery_phases` reads: both recoveries restore it.
_PHASE_TABLE = "customers"


def dir_bytes(path: Path) -> int:
    """Return the bytes of every file under `path`, 0 when it does not exist."""
    if not path.exists():
        return 0
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def measure_state(
    settings: Settings, worker_rss_bytes: int | None, *, rss_at_start: int | None = None
) -> dict[str, Any]:
    """Read the customers changelog from the start and return its size figures.

    Bytes per customer are key plus value bytes of the last record of each
    key. A record with a null value (a tombstone) deletes its customer.
    `worker_rss_bytes` is the worker's RSS at the end of its stage and
    `rss_at_start` when it started consuming, which give the growth per customer.
    The local store's size is the worker's data folder after it stopped:
    RocksDB files with `rocksdb://`, next to nothing with `memory://`.
    """
    topic = changelog_topic(settings)
    consumer = standalone_consumer(settings, "bench-state")
    # Key -> value of the last record of each customer.
    latest: dict[bytes, bytes] = {}
    records = 0
    total_bytes = 0
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            raise click.ClickException(
                f"changelog topic {topic!r} not found: the worker wrote no state"
            )
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        empty = 0
        while True:
            batch = consumer.poll(timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_RECORDS_PER_POLL)
            if batch:
                empty = 0
                for partition_records in batch.values():
                    for record in partition_records:
                        records += 1
                        key = bytes(record.key or b"")
                        value = record.value
                        total_bytes += len(key) + (len(value) if value is not None else 0)
                        if value is None:
                            latest.pop(key, None)
                        else:
                            latest[key] = bytes(value)
                continue
            empty += 1
            passed = all(consumer.position(tp) >= int(end) for tp, end in ends.items())
            if empty >= _EMPTY_POLLS_TO_STOP and passed:
                break
            if empty >= _STALLED_POLLS:
                raise click.ClickException(
                    f"reading {topic!r} stalled before its end offsets: is the broker up?"
                )
    finally:
        consumer.close()

    sizes = sorted(len(key) + len(value) for key, value in latest.items())
    figures: dict[str, Any] = {
        "changelog_topic": topic,
        "changelog_records": records,
        "changelog_bytes": total_bytes,
        "customers": len(sizes),
        "store": settings.extra.get("store", "memory://"),
        "data_dir_bytes": dir_bytes(Path(settings.data_dir)),
    }
    if sizes:
        figures["data_dir_bytes_per_customer"] = round(figures["data_dir_bytes"] / len(sizes), 1)
        figures["bytes_per_customer"] = {
            "mean": round(statistics.fmean(sizes), 1),
            "p50": _percentile(sizes, 0.50),
            "p95": _percentile(sizes, 0.95),
            "max": sizes[-1],
        }
        if worker_rss_bytes is not None:
            # The whole process's RSS, base included, scaled linearly: an
            # overestimate below 100,000 customers.
            figures["rss_bytes_per_100k_customers"] = round(worker_rss_bytes * 100_000 / len(sizes))
        if worker_rss_bytes is not None and rss_at_start is not None:
            growth = worker_rss_bytes - rss_at_start
            figures["rss_growth_per_100k_customers"] = round(growth * 100_000 / len(sizes))
        figures["field_bytes_per_customer"] = _field_bytes(latest.values())
    log.info("changelog read", topic=topic, records=records, customers=len(sizes))
    return figures


def _field_bytes(values: Iterable[bytes]) -> dict[str, float]:
    """Return the mean bytes per customer of each top-level field of the JSON state.

    A field's bytes are its compact JSON `"name":value,` before compression,
    so the figures add up to the JSON text's size less one byte, not to the
    stored size. Values that are not JSON objects once decompressed are
    counted under `(not an object)`.
    """
    totals: dict[str, int] = {}
    count = 0
    for value in values:
        count += 1
        try:
            data = orjson.loads(state_json(value))
        except (orjson.JSONDecodeError, zstandard.ZstdError, zlib.error):
            data = None
        if not isinstance(data, dict):
            totals["(not an object)"] = totals.get("(not an object)", 0) + len(value)
            continue
        for name, field in data.items():
            size = len(orjson.dumps({name: field})) - 1
            totals[name] = totals.get(name, 0) + size
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)
    return {name: round(total / count, 1) for name, total in ranked}


def _percentile(sorted_values: list[int], fraction: float) -> int:
    """Return the nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def measure_recovery(
    context: Context,
    settings: Settings,
    customers: int,
    *,
    timeout_s: float,
    name: str = "recovery",
    extra_env: dict[str, str] | None = None,
    profile_output: Path | None = None,
) -> dict[str, Any]:
    """Start a second worker on the same app id with an empty data folder and time its recovery.

    `seconds_to_ready` runs from the process start to the first /status poll
    that shows every partition assigned and its index ready (group join
    included). The restored count and rate come from the worker's
    `recovery finished` log lines for active tables. RSS is sampled at the
    first /status response (tables still empty) and when ready, and the growth
    between them is scaled to 100,000 customers. `name` names the data folder
    and log, `extra_env` adds env vars (Faust reads its own settings from
    them), and `profile_output` runs the worker under py-spy.
    """
    data_dir = Path(context.workdir / f"{name}-data")
    data_dir.mkdir(parents=True, exist_ok=True)
    recovery_settings = dataclasses.replace(
        settings,
        data_dir=str(data_dir),
        web_port=free_port(),
        recovery_log_interval_s=RECOVERY_LOG_INTERVAL_S,
    )
    log_path = context.workdir / f"{name}-worker.log"
    profiled = profile_output is not None
    started = time.monotonic()
    process = start_worker(
        recovery_settings, log_path, profile_output=profile_output, extra_env=extra_env
    )
    try:
        times = ProcessTimes({"worker": worker_pid(process, profiled), **context.server_pids})
        ready = _wait_ready(
            context, recovery_settings, process, started, timeout_s, profiled, times, log_path
        )
        finished = _wait_recovery_lines(log_path)
        # A worker that builds its index quickly can report ready before its
        # sampler logs `recovery finished`; the window then ends a little late.
        cpu = ready.cpu if ready.cpu is not None else recovery_cpu(times, finished)
    finally:
        stop_worker(process, profiled=profiled)

    figures: dict[str, Any] = {
        "store": recovery_settings.extra.get("store", "memory://"),
        "seconds_to_ready": None if ready.seconds is None else round(ready.seconds, 2),
        "cpu_cores_while_recovering": cpu,
        "rss_bytes_before_recovery": ready.rss_before,
        "rss_bytes_after_recovery": ready.rss_after,
        "data_dir_bytes": dir_bytes(data_dir),
    }
    if ready.rss_before is not None and ready.rss_after is not None and customers:
        growth = ready.rss_after - ready.rss_before
        figures["rss_growth_per_100k_customers"] = round(growth * 100_000 / customers)
    if finished:
        figures.update(recovery_figures(finished))
    else:
        log.warning("no recovery finished line in the worker log", log=str(log_path))
    figures["phases"] = recovery_phases(log_path)
    return figures


def recovery_figures(finished: list[dict[str, str]]) -> dict[str, Any]:
    """Return restored records, seconds and records/s from `recovery finished` lines.

    There is more than one line when a rebalance started a second recovery.
    """
    restored = sum(int(line.get("restored", 0)) for line in finished)
    recovery_seconds = sum(float(line.get("seconds", 0)) for line in finished)
    return {
        "recoveries": len(finished),
        "restored": restored,
        "recovery_seconds": round(recovery_seconds, 2),
        "records_per_s": round(restored / recovery_seconds, 1) if recovery_seconds else None,
    }


@dataclasses.dataclass(slots=True)
class _Ready:
    # Seconds from the process start to ready, or None when it never became ready.
    seconds: float | None
    rss_before: int | None
    rss_after: int | None
    # CPU use over the recovery, or None when no `recovery finished` line came first.
    cpu: dict[str, float | None] | None


def _wait_ready(
    context: Context,
    settings: Settings,
    process: Any,
    started: float,
    timeout_s: float,
    profiled: bool,
    times: ProcessTimes,
    log_path: Path,
) -> _Ready:
    deadline = started + timeout_s
    rss_before: int | None = None
    cpu: dict[str, float | None] | None = None
    while time.monotonic() < deadline:
        times.sample()
        if cpu is None:
            cpu = recovery_cpu(times, recovery_lines(log_path))
            if cpu is not None:
                deadline = min(deadline, time.monotonic() + _READY_AFTER_RECOVERY_S)
        if process.poll() is not None:
            raise click.ClickException(
                f"recovery worker exited with code {process.returncode}; see {log_path}"
            )
        body = get_path(settings, "/status")
        status = orjson.loads(body) if body else None
        if status is not None and rss_before is None:
            rss_before = rss_bytes(worker_pid(process, profiled))
        partitions = (status or {}).get("partitions", {})
        ready = len(partitions) >= context.partitions and all(
            view["index_ready"] for view in partitions.values()
        )
        if ready:
            return _Ready(
                time.monotonic() - started,
                rss_before,
                rss_bytes(worker_pid(process, profiled)),
                cpu,
            )
        time.sleep(_POLL_INTERVAL_S)
    if cpu is None:
        raise click.ClickException(f"recovery worker was not ready within {timeout_s:.0f} s")
    # A worker that restored its tables but never became ready (a failure
    # after recovery, shown in its log) still leaves the recovery figures.
    log.warning(
        "recovery finished but the worker did not become ready",
        seconds=_READY_AFTER_RECOVERY_S,
        log=str(log_path),
    )
    return _Ready(None, rss_before, rss_bytes(worker_pid(process, profiled)), cpu)


def recovery_cpu(
    times: ProcessTimes, finished: list[dict[str, str]]
) -> dict[str, float | None] | None:
    """Return CPU use over the last recovery once its `recovery finished` line is logged.

    Called on every poll, so the window ends within a poll interval plus the
    recovery sampler's interval (about 0.2 s in all) of the recovery's end.
    """
    if not finished:
        return None
    return times.shares(float(finished[-1].get("seconds", 0)))


def _wait_recovery_lines(log_path: Path) -> list[dict[str, str]]:
    """Wait for the `recovery finished` line, which the worker logs up to a sample interval
    (about a second) after its partitions are ready."""
    deadline = time.monotonic() + _RECOVERY_LINE_WAIT_S
    while True:
        lines = recovery_lines(log_path)
        if lines or time.monotonic() >= deadline:
            return lines
        time.sleep(_POLL_INTERVAL_S)


def recovery_lines(log_path: Path) -> list[dict[str, str]]:
    """Return the fields of each `recovery finished` line for active tables in the log."""
    lines = []
    for line in log_path.read_text(errors="replace").splitlines():
        if "recovery finished" not in line:
            continue
        fields = dict(_FIELD.findall(line))
        if fields.get("kind") == "active":
            lines.append(fields)
    return lines


def recovery_phases(log_path: Path) -> dict[str, float] | None:
    """Split the customers table's recovery into waiting and reading, from its progress lines.

    Between two consecutive `recovery progress` lines (0.2 s apart) the
    recovery is reading when its restored count grew, waiting for the first
    record while that count is still 0, and stalled otherwise (records
    remain but none arrived). The time from the last line to the end, under
    one interval, is not counted. Returns None without two progress lines.
    """
    points: list[tuple[float, int]] = []
    for line in log_path.read_text(errors="replace").splitlines():
        if "recovery progress" not in line:
            continue
        stamp = _TIMESTAMP.match(line)
        fields = dict(_FIELD.findall(line))
        if stamp is None or fields.get("kind") != "active":
            continue
        if fields.get("table") != _PHASE_TABLE or not fields.get("restored", "").isdigit():
            continue
        moment = datetime.fromisoformat(stamp[1]).replace(tzinfo=UTC).timestamp()
        points.append((moment, int(fields["restored"])))
    if len(points) < 2:
        return None
    first_wait = stalled = reading = 0.0
    for (before, restored_before), (after, restored_after) in itertools.pairwise(points):
        interval = after - before
        if restored_after > restored_before:
            reading += interval
        elif restored_after == 0:
            first_wait += interval
        else:
            stalled += interval
    restored = points[-1][1] - points[0][1]
    return {
        "waiting_for_first_record_s": round(first_wait, 2),
        "stalled_s": round(stalled, 2),
        "reading_s": round(reading, 2),
        "records_per_s_while_reading": round(restored / reading, 1) if reading else 0.0,
    }
