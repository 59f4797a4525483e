"""Tests of replay against a real broker: keys, partitions, order, dead letters, end clock."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from tagger.streams.config import Settings
from tagger.streams.partitioning import partition_for
from tagger.streams.replay import ReplayError, replay_events, replay_file

pytestmark = pytest.mark.integration

PARTITIONS = 4
# Long enough for the embedded broker to hand back a few dozen records.
CONSUME_TIMEOUT_S = 20.0
REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)

Record = tuple[int, bytes | None, dict[str, Any]]


@pytest.fixture
def replay_settings(kafka_bootstrap: str, namespace: str) -> Iterator[Settings]:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        input_topics=(f"{namespace}-events",),
        dead_letter_topic=f"{namespace}-dead-letters",
        partitions=PARTITIONS,
    ).validated()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics(
            [
                NewTopic(settings.input_topics[0], PARTITIONS, 1),
                NewTopic(settings.dead_letter_topic, PARTITIONS, 1),
            ]
        )
    finally:
        admin.close()
    yield settings


def consume(bootstrap: str, topic: str) -> list[Record]:
    """Read a whole topic as (partition, key, JSON value), by partition, then offset."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, number) for number in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: dict[int, list[Record]] = {number: [] for number in range(PARTITIONS)}
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(consumer.position(tp) >= end[tp] for tp in partitions):
                break
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for record in batch:
                    records[tp.partition].append(
                        (tp.partition, record.key, orjson.loads(record.value))
                    )
    finally:
        consumer.close()
    return [record for number in range(PARTITIONS) for record in records[number]]


def rees46_file(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "rees46.csv"
    path.write_text("\n".join((REES46_HEADER, *rows)) + "\n", encoding="utf-8")
    return path


def test_replay_file_keys_events(replay_settings: Settings, tmp_path: Path) -> None:
    path = rees46_file(
        tmp_path,
        "2019-10-01 00:00:00 UTC,view,1,9,,b,1.00,u1,s1",
        "2019-10-01 00:00:01 UTC,view,1,9,,b,1.00,u2,s2",
        "2019-10-01 00:00:02 UTC,cart,1,9,,b,1.00,u3,s3",
    )

    replay_file(path, replay_settings, currency="CNY", end_clock=None, progress=False)
    records = consume(replay_settings.kafka_bootstrap_servers, replay_settings.input_topics[0])

    assert len(records) == 3
    for partition, key, value in records:
        assert key == value["customer_id"].encode()
        assert partition == partition_for(value["customer_id"].encode(), PARTITIONS)


def test_replay_file_sorts_by_time(replay_settings: Settings, tmp_path: Path) -> None:
    path = rees46_file(
        tmp_path,
        "2019-10-01 00:00:05 UTC,view,1,9,,b,1.00,u1,s1",
        "2019-10-01 00:00:01 UTC,view,2,9,,b,1.00,u1,s1",
        "2019-10-01 00:00:05 UTC,view,3,9,,b,1.00,u1,s1",
        "2019-10-01 00:00:03 UTC,view,4,9,,b,1.00,u1,s1",
    )

    replay_file(path, replay_settings, currency="CNY", end_clock=None, progress=False)
    records = consume(replay_settings.kafka_bootstrap_servers, replay_settings.input_topics[0])

    assert [value["product_id"] for _, _, value in records] == ["2", "4", "1", "3"]


def test_replay_file_assume_sorted_keeps_order(replay_settings: Settings, tmp_path: Path) -> None:
    path = rees46_file(
        tmp_path,
        "2019-10-01 00:00:05 UTC,view,1,9,,b,1.00,u1,s1",
        "2019-10-01 00:00:01 UTC,view,2,9,,b,1.00,u1,s1",
    )

    replay_file(
        path, replay_settings, currency="CNY", assume_sorted=True, end_clock=None, progress=False
    )
    records = consume(replay_settings.kafka_bootstrap_servers, replay_settings.input_topics[0])

    assert [value["product_id"] for _, _, value in records] == ["1", "2"]


def test_replay_file_dead_letters_bad_rows(replay_settings: Settings, tmp_path: Path) -> None:
    truncated = "2019-10-01 02:50:00 UTC,view,10900305,2053,,elenberg,25.71,5204"
    path = rees46_file(tmp_path, "2019-10-01 00:00:00 UTC,view,1,9,,b,1.00,u1,s1", truncated)

    report = replay_file(path, replay_settings, currency="CNY", end_clock=None, progress=False)
    [(_, key, record)] = consume(
        replay_settings.kafka_bootstrap_servers, replay_settings.dead_letter_topic
    )

    assert report.dead_letters == {"wrong_field_count": 1}
    assert key is None
    assert record["reason"] == "wrong_field_count"
    assert record["source"] == {"file": str(path), "line": 3}
    assert base64.b64decode(record["raw_b64"]) == truncated.encode()


def test_replay_file_report(replay_settings: Settings, tmp_path: Path) -> None:
    path = rees46_file(
        tmp_path,
        "2019-10-01 00:00:00 UTC,view,1,9,,b,1.00,u1,s1",
        "2019-10-01 00:00:10 UTC,purchase,1,9,,b,1.00,u1,s1",
        "2019-10-01 00:00:20 UTC,purchase,1,9,,b,0.00,u1,s1",
    )

    report = replay_file(path, replay_settings, currency="CNY", end_clock="auto", progress=False)

    assert report.format == "rees46"
    assert report.rows == 3
    assert report.events == 2
    assert report.events_by_type == {"page_view": 1, "purchase": 1}
    assert report.dead_letters == {"unconvertible_row": 1}
    assert report.first_ts == 1569888000000
    assert report.last_ts == 1569888010000
    assert report.end_clock == 1569888010000 + 3_600_000


def test_end_clock_reaches_every_partition(replay_settings: Settings, tmp_path: Path) -> None:
    path = rees46_file(tmp_path, "2019-10-01 00:00:00 UTC,view,1,9,,b,1.00,u1,s1")

    replay_file(
        path,
        replay_settings,
        currency="CNY",
        end_clock="auto",
        end_clock_span_ms=60_000,
        progress=False,
    )
    records = consume(replay_settings.kafka_bootstrap_servers, replay_settings.input_topics[0])
    clocks = [
        (partition, key, value) for partition, key, value in records if "event_id" not in value
    ]

    assert clocks == [
        (partition, None, {"type": "clock", "ts": 1569888060000}) for partition in range(PARTITIONS)
    ]
    assert records[-1][2]["type"] == "clock"


def test_no_end_clock_sends_none(replay_settings: Settings, tmp_path: Path) -> None:
    path = rees46_file(tmp_path, "2019-10-01 00:00:00 UTC,view,1,9,,b,1.00,u1,s1")

    report = replay_file(path, replay_settings, currency="CNY", end_clock=None, progress=False)
    records = consume(replay_settings.kafka_bootstrap_servers, replay_settings.input_topics[0])

    assert report.end_clock is None
    assert len(records) == 1


def test_replay_events_with_end_clock(replay_settings: Settings) -> None:
    events = [
        {"event_id": f"e{n}", "customer_id": f"c{n}", "type": "page_view", "ts": 1000 + n}
        for n in range(6)
    ]

    report = replay_events(events, replay_settings, end_clock=5000, progress=False)
    records = consume(replay_settings.kafka_bootstrap_servers, replay_settings.input_topics[0])
    sent = sorted(value["event_id"] for _, _, value in records if "event_id" in value)
    clocks = [value["ts"] for _, _, value in records if value.get("type") == "clock"]

    assert report.events == 6
    assert report.end_clock == 5000
    assert sent == [f"e{n}" for n in range(6)]
    assert clocks == [5000] * PARTITIONS


def test_speed_paces_events(replay_settings: Settings) -> None:
    events = [
        {"event_id": f"e{n}", "customer_id": "c1", "type": "page_view", "ts": n * 1000}
        for n in range(3)
    ]

    started = time.monotonic()
    replay_events(events, replay_settings, end_clock=None, speed=4.0, progress=False)
    elapsed = time.monotonic() - started

    # 2 s of event time at 4x takes at least 0.5 s.
    assert elapsed >= 0.5


def test_missing_topic_rejected(kafka_bootstrap: str, namespace: str) -> None:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        input_topics=(f"{namespace}-absent",),
        dead_letter_topic=f"{namespace}-absent-dead-letters",
    ).validated()

    with pytest.raises(ReplayError, match="tagger topics create"):
        replay_events([], settings, end_clock=None, progress=False)


def test_speed_must_be_positive(replay_settings: Settings) -> None:
    with pytest.raises(Exception, match="invalid replay speed 0"):
        replay_events([], replay_settings, end_clock=None, speed=0, progress=False)


def test_oversized_event_fails_replay(replay_settings: Settings) -> None:
    event = {
        "event_id": "e1",
        "customer_id": "c1",
        "type": "page_view",
        "ts": 1,
        "pad": "x" * 2**21,
    }

    with pytest.raises(ReplayError, match="sending to topic"):
        replay_events([event], replay_settings, end_clock=None, progress=False)
