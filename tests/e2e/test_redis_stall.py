"""A Redis server that stops responding does not stall consumption or destabilise the group."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

from tagger.streams.config import Settings
from tagger.streams.embedded import EmbeddedRedis, free_port
from tagger.streams.replay import replay_events
from tagger.streams.simulator import simulate
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S, JOIN_TIMEOUT_S
from tests.e2e.helpers import fold_changes, mirror_members, mirror_tags, tag_changes
from tests.reference import reference_events

# Longer than the test settings' 6 s broker session timeout, so a worker
# whose heartbeats waited for Redis would be expelled from its group.
_PAUSE_S = 10.0
_SLICES_DURING_PAUSE = 5
_STATUS_POLL_S = 0.5
# Lines that mean the group rebalanced or a consumer missed heartbeats: the
# worker's own "partition revoked", aiokafka's heartbeat warnings ("Heartbeat
# failed for group ... because it is rebalancing", "Heartbeat failed: local
# member_id was not recognized; resetting and re-joining group", "Heartbeat
# session expired") and Faust's "Thread keepalive is not responding". A
# worker stopped with SIGSTOP for 10 s beside a second one logs all of them
# on the embedded broker. A lone member is not expelled there while it is
# stopped, which is why the test runs two workers.
_REBALANCE_LINE = re.compile(
    r"partition revoked|rebalanc|heartbeat (failed|session expired)|re-joining group"
    r"|keepalive is not responding",
    re.IGNORECASE,
)
# The mirror logs one warning when writes start failing and one line when
# they recover; the marker check adds one warning. A per-event or per-retry
# line would give dozens in a 10 s outage.
_MAX_MIRROR_LINES = 4


def _settled(status: dict[str, Any], partitions: int) -> bool:
    views = status.get("partitions", {})
    return len(views) == partitions and all(view["index_ready"] for view in views.values())


def _assigned(status: dict[str, Any] | None) -> int:
    return 0 if status is None else len(status.get("partitions", {}))


def test_redis_pause_keeps_group_and_counts(
    replay_settings: Settings,
    embedded_redis: EmbeddedRedis,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = replay_settings.with_changes(redis_url=embedded_redis.url)
    assert settings.broker_session_timeout_s < _PAUSE_S
    share = settings.partitions // 2
    first_worker = start_worker(settings)
    second_worker = start_worker(settings.with_changes(web_port=free_port()), wait=False)
    workers = (first_worker, second_worker)
    for worker in workers:
        worker.wait_for(
            lambda status: _settled(status, share),
            timeout_s=JOIN_TIMEOUT_S,
            what="half of the partitions assigned and recovered",
        )

    events = simulate(seed=37, customers=120, currency="CNY")
    first, during, last = _split(events, [0.4, 0.3])
    replay_events(first, settings, end_clock=None, progress=False)
    for worker in workers:
        worker.wait_for(
            lambda status: caught_up_to(status, end_clock=None, partitions=share),
            timeout_s=CATCH_UP_TIMEOUT_S,
            what="first part caught up and mirrored",
        )
    log_offsets = [worker.log_path.stat().st_size for worker in workers]
    changes_before = len(tag_changes(settings))

    redis_pid = embedded_redis.pid
    assert redis_pid is not None
    statuses: list[dict[str, Any] | None] = []
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        paused_at = time.monotonic()
        slices = _split(during, [1 / _SLICES_DURING_PAUSE] * (_SLICES_DURING_PAUSE - 1))
        for part in slices:
            replay_events(part, settings, end_clock=None, progress=False)
            statuses.extend(worker.status() for worker in workers)
        while time.monotonic() - paused_at < _PAUSE_S:
            statuses.extend(worker.status() for worker in workers)
            time.sleep(_STATUS_POLL_S)
        changes_during = len(tag_changes(settings))
        last_paused = [worker.status() for worker in workers]
        paused_for = time.monotonic() - paused_at
    finally:
        os.kill(redis_pid, signal.SIGCONT)

    assert paused_for >= _PAUSE_S
    assert all(_assigned(status) == share for status in statuses), statuses
    assert changes_during > changes_before
    # The outage was real: each writer saw failures and held customers back.
    for status in last_paused:
        assert status is not None
        assert status["mirror"]["healthy"] is False
        assert status["mirror"]["pending"] > 0

    report = replay_events(last, settings, end_clock="auto", progress=False)
    for worker in workers:
        worker.wait_for(
            lambda status: caught_up_to(status, end_clock=report.end_clock, partitions=share),
            timeout_s=CATCH_UP_TIMEOUT_S,
            what="caught up and mirrored after Redis resumed",
        )

    expected = {c: t for c, t in reference_events(events, report.end_clock).items() if t}
    assert fold_changes(tag_changes(settings)) == expected
    assert mirror_tags(settings) == expected
    assert mirror_members(settings) == expected

    for worker, offset in zip(workers, log_offsets, strict=True):
        lines = worker.log_path.read_bytes()[offset:].decode(errors="replace").splitlines()
        rebalance_lines = [line for line in lines if _REBALANCE_LINE.search(line)]
        assert rebalance_lines == []
        mirror_lines = [
            line for line in lines if "mirror writes" in line or "mirror marker check" in line
        ]
        assert 1 <= len(mirror_lines) <= _MAX_MIRROR_LINES, mirror_lines
        assert worker.status() is not None


def _split(items: list[Any], shares: list[float]) -> list[list[Any]]:
    """Cut `items` into consecutive parts of the given shares; the last part takes the rest."""
    parts: list[list[Any]] = []
    start = 0
    for share in shares:
        end = start + int(len(items) * share)
        parts.append(items[start:end])
        start = end
    parts.append(items[start:])
    return parts
