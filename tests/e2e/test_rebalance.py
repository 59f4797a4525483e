"""Rebalance: two workers with standby replicas; one stops and starts again while events flow.

The tag changes, the Redis mirror and the stored states must equal those of
an uninterrupted run, so a takeover neither loses a change nor decides one
twice. A time-driven change fired by two workers would carry two
`emitted_at` values under one `change_id`, which the byte-identity check
catches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tagger.streams.config import Settings
from tagger.streams.embedded import free_port
from tagger.streams.topics import create_topics
from tagger.streams.worker_process import WorkerProcess
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S, JOIN_TIMEOUT_S
from tests.e2e.test_real_data import _rulebook_in
from tests.e2e.uninterrupted import BackgroundReplay, assert_same_as_uninterrupted

_HOUR_MS = 3_600_000
# The sample spans 2 h 50 min of event time; this speed sends it in about 20 s.
_SPEED = 510.0


def _covered(workers: list[WorkerProcess], partitions: int, end_clock: int | None) -> bool:
    """Return True when the workers together own every partition, each caught up."""
    seen: dict[str, dict[str, Any]] = {}
    for worker in workers:
        status = worker.status()
        if status is None:
            return False
        if status["mirror"]["pending"]:
            return False
        seen.update(status.get("partitions", {}))
    if len(seen) < partitions:
        return False
    for view in seen.values():
        if not view["index_ready"] or not view["caught_up"]:
            return False
        if end_clock is not None and view["clock"] < end_clock:
            return False
    return True


def _wait_covered(
    workers: list[WorkerProcess], partitions: int, end_clock: int | None, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _covered(workers, partitions, end_clock):
            return
        time.sleep(0.5)
    tails = "\n".join(worker.log_tail(15) for worker in workers)
    raise AssertionError(f"workers did not cover every partition in {timeout_s} s:\n{tails}")


@pytest.mark.data
def test_stop_and_start_while_events_flow_changes_nothing(
    replay_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    sample_data: Path,
    tmp_path: Path,
) -> None:
    path = sample_data / "rees46_multicat_2019-10_head.csv"
    settings = replay_settings.with_changes(
        rulebook_path=_rulebook_in("USD", tmp_path), standby_replicas=1
    )
    create_topics(settings)
    first = start_worker(settings, wait=False)
    second = start_worker(settings.with_changes(web_port=free_port()), wait=False)
    _wait_covered([first, second], settings.partitions, None, JOIN_TIMEOUT_S)

    replay = BackgroundReplay(path, settings, currency="USD", speed=_SPEED)
    time.sleep(5.0)
    assert second.stop() == 0
    time.sleep(5.0)
    third = start_worker(settings.with_changes(web_port=free_port()), wait=False)
    end_clock = replay.end_clock(timeout_s=120)
    _wait_covered([first, third], settings.partitions, end_clock, CATCH_UP_TIMEOUT_S)

    assert_same_as_uninterrupted(settings, path, end_clock, "stop and start", tmp_path)
