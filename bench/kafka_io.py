"""Producing the benchmark input with aiokafka, and small helpers for child processes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from pathlib import Path

import orjson
import structlog
from aiokafka import AIOKafkaProducer

__all__ = ["ProcessTimes", "cpu_seconds", "produce", "read_result", "rss_bytes", "write_result"]

log = structlog.get_logger(__name__)

# Producer tuning for setup: large batches and a short linger, acks from all
# replicas as the worker's producer uses.
_LINGER_MS = 20
_MAX_BATCH_BYTES = 512 * 1024
# Sends awaited together; bounds the memory of futures in flight.
_SEND_WINDOW = 20_000
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


async def _produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes, int]]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=_LINGER_MS,
        max_batch_size=_MAX_BATCH_BYTES,
        client_id="bench-input",
    )
    await producer.start()
    sent = 0
    try:
        pending: list[asyncio.Future[object]] = []
        for key, value, ts in records:
            pending.append(await producer.send(topic, value=value, key=key, timestamp_ms=ts))
            sent += 1
            if len(pending) >= _SEND_WINDOW:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes, int]]) -> float:
    """Send every record (key, value, event time in ms) to `topic`; return the seconds taken.

    Records are partitioned by key with Kafka's default partitioner, as the
    worker expects of its input.
    """
    started = time.monotonic()
    sent = asyncio.run(_produce(bootstrap, topic, records))
    elapsed = time.monotonic() - started
    log.info("input produced", topic=topic, records=sent, seconds=round(elapsed, 2))
    return elapsed


def cpu_seconds(pid: int | None) -> float | None:
    """Return user plus system CPU seconds that process `pid` has used, or None when gone."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 of /proc/<pid>/stat (utime, stime), counted after the
    # command name, which may contain spaces.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_bytes(pid: int | None) -> int | None:
    """Return the resident set size of process `pid` in bytes, or None when gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class ProcessTimes:
    """CPU use of some processes, sampled as a run goes, over a window that ends now."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._samples: list[tuple[float, dict[str, float | None]]] = []

    def sample(self) -> None:
        """Record the CPU seconds each process has used so far."""
        cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._samples.append((time.monotonic(), cpu))

    def shares(self, window_s: float) -> dict[str, float | None]:
        """Return each process's CPU use over the last `window_s` seconds, in cores.

        The window starts at the sample closest to its start, so it is as
        exact as the sampling interval allows. 1.0 is one core busy.
        """
        self.sample()
        now, latest = self._samples[-1]
        start = now - window_s
        then, earliest = min(self._samples, key=lambda item: abs(item[0] - start))
        wall = now - then
        shares: dict[str, float | None] = {}
        for name in self.pids:
            before = earliest.get(name)
            after = latest.get(name)
            if before is None or after is None or wall <= 0:
                shares[name] = None
            else:
                shares[name] = round((after - before) / wall, 2)
        return shares


def write_result(path: Path, result: dict[str, object]) -> None:
    """Write a child's result atomically, so the parent never reads half a file."""
    partial = path.with_suffix(".partial")
    partial.write_bytes(orjson.dumps(result))
    partial.replace(path)


def read_result(path: Path) -> dict[str, object] | None:
    """Return a child's result, or None while it has not written one."""
    try:
        data: dict[str, object] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return data
