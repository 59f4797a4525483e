"""Redelivery changes nothing: a repeated event_id, and input re-consumed after kill -9."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import orjson
from kafka import KafkaProducer

from tagger.streams.config import Settings
from tagger.streams.replay import replay_events
from tagger.streams.simulator import simulate
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.events import purchase
from tests.e2e.helpers import fold_changes, mirror_members, mirror_tags, read_topic, tag_changes
from tests.reference import reference_events

_BASE = 1_709_251_200_000


def _wait_caught_up(
    worker: WorkerProcess,
    settings: Settings,
    end_clock: int | None,
    timeout_s: float = CATCH_UP_TIMEOUT_S,
) -> None:
    worker.wait_for(
        lambda status: caught_up_to(status, end_clock=end_clock, partitions=settings.partitions),
        timeout_s=timeout_s,
        what="caught up",
    )


def test_repeated_event_id_changes_nothing(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(replay_settings)
    first = purchase("shopper", _BASE, "600.00", event_id="order-1")
    report = replay_events([first], replay_settings, end_clock=_BASE + 1, progress=False)
    _wait_caught_up(worker, replay_settings, report.end_clock)
    before = tag_changes(replay_settings)

    # The same event again, as a producer retry would send it, then a clock
    # message so the test knows when the worker has read past it.
    report = replay_events([first], replay_settings, end_clock=_BASE + 2, progress=False)
    _wait_caught_up(worker, replay_settings, report.end_clock)

    after = tag_changes(replay_settings)
    assert after == before
    # 600.00 twice would be 1,200.00 and make the customer medium_value.
    assert mirror_tags(replay_settings)["shopper"]["low_value"] == _BASE
    assert "medium_value" not in mirror_tags(replay_settings)["shopper"]


def test_reconsumed_input_after_kill_changes_nothing(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Offsets are never committed during the test, so the restarted worker
    # consumes every input record again, as after a crash before a commit.
    replay_settings = replay_settings.with_changes(commit_interval_s=3600.0)
    events = simulate(seed=11, customers=60, currency="CNY")
    worker = start_worker(replay_settings)
    report = replay_events(events, replay_settings, end_clock="auto", progress=False)
    _wait_caught_up(worker, replay_settings, report.end_clock)
    first_run = read_topic(replay_settings, replay_settings.tag_change_topic)
    mirror_before = mirror_tags(replay_settings)

    worker.kill()
    restarted = start_worker(replay_settings)
    # A restart here used to hang about one time in four: Faust cleared the
    # records it had fetched and never fetched them again. The worker now
    # seeks a partition that is behind yet receives nothing for 10 s.
    _wait_caught_up(restarted, replay_settings, report.end_clock)

    second_run = read_topic(replay_settings, replay_settings.tag_change_topic)
    # The re-consumed input re-sent recorded changes, so the restart did re-read it.
    assert len(second_run) > len(first_run)
    payloads: dict[str, set[bytes]] = defaultdict(set)
    for _, value in second_run:
        change_id = tag_changes_id(value)
        payloads[change_id].add(value)
    assert {tag_changes_id(value) for _, value in first_run} == set(payloads)
    assert all(len(values) == 1 for values in payloads.values())
    assert mirror_tags(replay_settings) == mirror_before
    expected = {c: t for c, t in reference_events(events, report.end_clock).items() if t}
    assert fold_changes(tag_changes(replay_settings)) == expected
    assert mirror_members(replay_settings) == expected


def tag_changes_id(value: bytes) -> str:
    change_id: str = orjson.loads(value)["change_id"]
    return change_id


def test_restart_without_new_input_is_ready(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Pins a restarted worker counting records consumed before the restart as lag forever."""
    worker = start_worker(replay_settings)
    moved = orjson.dumps(purchase("moved", _BASE))
    producer = KafkaProducer(bootstrap_servers=replay_settings.kafka_bootstrap_servers)
    producer.send(replay_settings.input_topics[0], key=b"someone-else", value=moved)
    producer.flush()
    producer.close()
    report = replay_events(
        [purchase("direct", _BASE)], replay_settings, end_clock=_BASE + 1, progress=False
    )
    _wait_caught_up(worker, replay_settings, report.end_clock)
    worker.stop()

    restarted = start_worker(replay_settings)

    _wait_caught_up(restarted, replay_settings, report.end_clock)
    assert set(mirror_tags(replay_settings)) == {"moved", "direct"}


def test_hot_customer_state_stays_bounded(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Pins a crash loop: one customer flipping tags in one batch outgrew the 1 MiB record limit."""
    settings = replay_settings.with_changes(batch_size=5000, batch_timeout_s=2.0)
    worker = start_worker(settings)
    flips = 600
    events = []
    for index in range(flips):
        events.append(purchase("hot", _BASE + 2 * index, "1000.00", event_id=f"buy-{index}"))
        events.append(
            {
                "event_id": f"refund-{index}",
                "customer_id": "hot",
                "type": "refund",
                "ts": _BASE + 2 * index + 1,
                "amount": "1000.00",
                "currency": "CNY",
            }
        )

    report = replay_events(events, settings, end_clock=_BASE + 2 * flips, progress=False)
    _wait_caught_up(worker, settings, report.end_clock)

    medium = [c for c in tag_changes(settings) if c["tag"] == "medium_value"]
    assert len(medium) == 2 * flips
    assert len({c["change_id"] for c in medium}) == 2 * flips
    changelog = read_topic(settings, f"{settings.app_id}-customers-changelog")
    assert changelog
    # About 64 outbox entries of under 1 KB each at most.
    assert max(len(value) for _, value in changelog if value) < 128 * 1024
