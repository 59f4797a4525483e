"""A worker with empty local state restores its tables from the changelogs, and reports progress.

The test runs on a broker of its own. It pauses the broker (SIGSTOP) while
the second worker restores, to check that a stalled recovery is reported
instead of hanging silently, and resumes it (SIGCONT). At the end it kills
the broker and checks that SIGTERM still ends the worker, at the shutdown
deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer

from tagger.streams.config import Settings
from tagger.streams.embedded import EmbeddedBroker
from tagger.streams.replay import replay_events
from tagger.streams.shutdown import SHUTDOWN_TIMED_OUT_EXIT_CODE
from tagger.streams.simulator import simulate
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S, JOIN_TIMEOUT_S
from tests.e2e.helpers import read_topic

_STALL_S = 1.0
_LOG_INTERVAL_S = 0.25
# A report must come within three times the stall interval of the pause.
# The broker is resumed as soon as it comes (about 1.5 s here), within the
# 6 s session timeout of the test settings.
_PAUSE_S = 3 * _STALL_S
# With the broker paused while the worker requests offsets, faust-streaming 0.15 may
# end the recovery instead of waiting; that is reported as an error.
_REPORTS = ("recovery stalled", "recovery ended before every record was restored")
# Liveness bound of a stop after SIGTERM: three times the slowest measured
# here (about 1.6 s from the signal to the exit, on the embedded broker).
_STOP_BOUND_S = 5.0
# The deadline set here, and three times the exit time measured with the
# broker gone (5.0 s: the deadline itself plus a few milliseconds).
_SHORT_SHUTDOWN_TIMEOUT_S = 5.0
_DEADLINE_EXIT_BOUND_S = 15.0


@pytest.fixture
def private_broker() -> Iterator[EmbeddedBroker]:
    """A broker of this test alone, which it may pause."""
    with EmbeddedBroker() as broker:
        yield broker
        # A broker left paused by a failed assertion could not stop.
        if broker.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker.pid, signal.SIGCONT)


def _explain_all(settings: Settings, customers: list[str]) -> dict[str, Any]:
    """Return the worker's /explain body of every customer: its state as the rules see it."""
    bodies = {}
    for customer in customers:
        url = f"http://127.0.0.1:{settings.web_port}/explain/{customer}"
        try:
            with urllib.request.urlopen(url, timeout=5.0) as response:
                bodies[customer] = orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            bodies[customer] = {"status": exc.code}
    return bodies


def _log_lines(worker: WorkerProcess, event: str) -> list[str]:
    return [line for line in worker.log_path.read_text().splitlines() if f"] {event} " in line]


def _field(line: str, name: str) -> str:
    found = re.search(rf"\b{name}=(\S+)", line)
    assert found is not None, f"no {name}= in {line!r}"
    return found.group(1)


def _wait_for_line(worker: WorkerProcess, *events: str, timeout_s: float) -> str:
    """Wait until the worker logs one of `events`; return the first such line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in events:
            lines = _log_lines(worker, event)
            if lines:
                return lines[0]
        time.sleep(0.05)
    raise AssertionError(f"none of {events} logged within {timeout_s} s:\n{worker.log_tail()}")


def test_recovery_stall_then_broker_loss(
    replay_settings: Settings,
    private_broker: EmbeddedBroker,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Any,
) -> None:
    settings = replay_settings.with_changes(
        kafka_bootstrap_servers=private_broker.bootstrap_servers,
        recovery_log_interval_s=_LOG_INTERVAL_S,
        recovery_stall_s=_STALL_S,
        shutdown_timeout_s=_SHORT_SHUTDOWN_TIMEOUT_S,
    )
    events = simulate(seed=41, customers=200)
    customers = sorted({event["customer_id"] for event in events})
    first = start_worker(settings)
    report = replay_events(events, settings, end_clock="auto", progress=False)
    first.wait_for(
        lambda status: caught_up_to(status, end_clock=report.end_clock, partitions=4),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up",
    )
    before = _explain_all(settings, customers)
    started = time.monotonic()
    code = first.stop(timeout_s=60)
    stop_seconds = time.monotonic() - started

    print(f"idle stop: {stop_seconds:.2f} s")
    assert code == 0
    assert stop_seconds < _STOP_BOUND_S
    # Counted before the second worker starts, which writes its partition records.
    changelog_records = sum(
        len(read_topic(settings, topic)) for topic in _changelog_topics(settings)
    )

    # A fresh data folder: nothing local survives, everything comes from the changelogs.
    restarted_settings = settings.with_changes(data_dir=str(tmp_path / "fresh-data"))
    second = start_worker(restarted_settings, wait=False)
    _wait_for_line(second, "recovery started", timeout_s=JOIN_TIMEOUT_S)
    assert private_broker.pid is not None
    os.kill(private_broker.pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        reported = _wait_for_line(second, *_REPORTS, timeout_s=_PAUSE_S)
    finally:
        os.kill(private_broker.pid, signal.SIGCONT)

    print(f"reported {time.monotonic() - paused_at:.2f} s after the pause: {reported[:120]}")
    # The report names the changelog partitions with their offsets.
    assert f"{settings.app_id}-customers-changelog[" in reported
    assert "'end':" in reported
    second.wait_for(
        lambda status: caught_up_to(status, end_clock=report.end_clock, partitions=4),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="recovered and caught up",
    )
    after = _explain_all(restarted_settings, customers)
    assert after == before
    assert all("explanations" in body for body in after.values())

    _check_recovery_counts(second, changelog_records)

    # With the broker gone, the stop cannot finish: the deadline ends it.
    os.kill(private_broker.pid, signal.SIGKILL)
    time.sleep(1.0)
    started = time.monotonic()
    code = second.stop(timeout_s=60)
    stop_seconds = time.monotonic() - started

    print(f"stop with the broker gone: {stop_seconds:.2f} s")
    assert code == SHUTDOWN_TIMED_OUT_EXIT_CODE
    assert stop_seconds < _DEADLINE_EXIT_BOUND_S
    timed_out = _log_lines(second, "worker did not stop within the shutdown timeout:")
    assert len(timed_out) == 1
    # The line names what the stop still waited for.
    assert "ConsumerThread.stop" in timed_out[0]


def _check_recovery_counts(worker: WorkerProcess, changelog_records: int) -> None:
    """Check the progress lines, and that the restored count matches the changelogs."""
    progress = _log_lines(worker, "recovery progress")
    assert any("table=customers" in line for line in progress)
    finished = _log_lines(worker, "recovery finished")
    assert finished, worker.log_tail()
    rounds = _log_lines(worker, "recovery started")
    ended = finished + _log_lines(worker, "recovery ended before every record was restored")
    restored = sum(int(_field(line, "restored")) for line in ended)
    # The tables are read by the bulk reader (streams/bulk_recovery.py), not
    # record by record through Faust's consumer.
    bulk = _log_lines(worker, "changelog bulk read finished")
    assert bulk, worker.log_tail()
    if len(rounds) == 1:
        assert restored == changelog_records
        assert int(_field(bulk[0], "applied")) == changelog_records
    else:
        # A rebalance after the pause started another recovery, which may
        # read again what the first one read.
        assert restored >= changelog_records


def _changelog_topics(settings: Settings) -> list[str]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","))
    try:
        return sorted(
            topic
            for topic in consumer.topics()
            if topic.startswith(f"{settings.app_id}-") and topic.endswith("-changelog")
        )
    finally:
        consumer.close()
