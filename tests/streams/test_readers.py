"""Read side: customer tags and tag members from the mirror, and the tag-change tail."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from kafka import KafkaProducer

from tagger.errors import MirrorError
from tagger.streams.config import Settings
from tagger.streams.embedded import free_port
from tagger.streams.mirror import write_rulebook
from tagger.streams.mirror_lua import APPLY_SCRIPT, apply_arguments
from tagger.streams.readers import (
    MemberView,
    TagView,
    customer_tags,
    describe_tag,
    tag_members,
    tail_changes,
)
from tagger.streams.topics import TopicError, create_topics

RULEBOOK = {
    "dormant": {"group": "lifecycle", "zh": "沉睡客户", "en": "Dormant"},
    "browsing_interest": {
        "group": "interest",
        "zh": "浏览兴趣：{param}",
        "en": "Browsing interest: {param}",
    },
}


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[KafkaProducer]:
    # A long linger puts records sent together into one batch, which is the
    # case where the embedded broker reports a partition's end too low.
    sender = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=100)
    yield sender
    sender.close()


def _apply(client: redis.Redis, settings: Settings, customer_id: str, tags: dict[str, int]) -> None:
    keys, args = apply_arguments(settings.redis_prefix, customer_id, 1, tags)
    client.eval(APPLY_SCRIPT, len(keys), *keys, *args)


def _send_changes(producer: KafkaProducer, topic: str, changes: list[dict[str, object]]) -> None:
    for change in changes:
        producer.send(topic, key=b"c1", value=json.dumps(change).encode(), partition=0)
    producer.flush()


# -- mirror reads -------------------------------------------------------------


def test_customer_tags_with_labels(settings: Settings, client: redis.Redis) -> None:
    write_rulebook(client, settings.redis_prefix, RULEBOOK, "v1")
    _apply(
        client,
        settings,
        "c1",
        {"dormant": 1_569_888_000_000, "browsing_interest:electronics.smartphone": 1000},
    )

    views = customer_tags(settings, "c1")

    assert views == [
        TagView(
            tag="browsing_interest:electronics.smartphone",
            since_ms=1000,
            since="1970-01-01T00:00:01.000Z",
            group="interest",
            zh="浏览兴趣：electronics.smartphone",
            en="Browsing interest: electronics.smartphone",
        ),
        TagView(
            tag="dormant",
            since_ms=1_569_888_000_000,
            since="2019-10-01T00:00:00.000Z",
            group="lifecycle",
            zh="沉睡客户",
            en="Dormant",
        ),
    ]


def test_customer_tags_unknown_customer(settings: Settings) -> None:
    views = customer_tags(settings, "nobody")

    assert views == []


def test_describe_manual_and_unknown_tags() -> None:
    manual = describe_tag("manual:call_back", RULEBOOK)
    unknown = describe_tag("retired_rule", RULEBOOK)
    unknown_param = describe_tag("retired_rule:x", RULEBOOK)

    assert manual == ("manual", "call_back", "call_back")
    assert unknown == ("", "retired_rule", "retired_rule")
    assert unknown_param == ("", "retired_rule:x", "retired_rule:x")


def test_tag_members_page_and_total(settings: Settings, client: redis.Redis) -> None:
    for number in range(5):
        _apply(client, settings, f"c{number}", {"dormant": 1000 * number})

    page = tag_members(settings, "dormant", offset=1, limit=2)

    assert page.total == 5
    assert page.members == [
        MemberView("c3", 3000, "1970-01-01T00:00:03.000Z"),
        MemberView("c2", 2000, "1970-01-01T00:00:02.000Z"),
    ]


def test_tag_members_rejects_bad_page(settings: Settings) -> None:
    with pytest.raises(ValueError, match="invalid page"):
        tag_members(settings, "dormant", offset=0, limit=0)


def test_unreachable_redis_raises_mirror_error(settings: Settings) -> None:
    unreachable = settings.with_changes(redis_url=f"redis://127.0.0.1:{free_port()}/0")

    with pytest.raises(MirrorError, match="REDIS_URL"):
        customer_tags(unreachable, "c1")


# -- tail ---------------------------------------------------------------------


def test_tail_from_beginning(settings: Settings, producer: KafkaProducer) -> None:
    create_topics(settings)
    topic = settings.tag_change_topic
    _send_changes(producer, topic, [{"change_id": "c1:0:1"}, {"change_id": "c1:0:2"}])
    producer.send(topic, key=b"c1", value=b"not json", partition=0)
    producer.send(topic, key=b"c1", value=b"[1, 2]", partition=0)
    _send_changes(producer, topic, [{"change_id": "c1:0:3"}])

    changes = list(tail_changes(settings, from_beginning=True, max_messages=3, timeout_s=10))

    assert [change["change_id"] for change in changes] == ["c1:0:1", "c1:0:2", "c1:0:3"]


def test_tail_from_end_skips_old(settings: Settings, producer: KafkaProducer) -> None:
    create_topics(settings)
    topic = settings.tag_change_topic
    _send_changes(producer, topic, [{"change_id": "old:1"}, {"change_id": "old:2"}])

    def send_new() -> None:
        time.sleep(1.5)
        _send_changes(producer, topic, [{"change_id": "new:1"}, {"change_id": "new:2"}])

    sender = threading.Thread(target=send_new)
    sender.start()
    try:
        changes = list(tail_changes(settings, from_beginning=False, max_messages=2, timeout_s=10))
    finally:
        sender.join(timeout=10)

    assert [change["change_id"] for change in changes] == ["new:1", "new:2"]


def test_tail_stops_at_timeout(settings: Settings) -> None:
    create_topics(settings)
    started = time.monotonic()

    changes = list(tail_changes(settings, from_beginning=True, timeout_s=0.5))

    assert changes == []
    assert time.monotonic() - started < 3.0


def test_tail_stops_on_ctrl_c(settings: Settings) -> None:
    create_topics(settings)
    interrupt = threading.Timer(1.0, os.kill, args=(os.getpid(), signal.SIGINT))
    started = time.monotonic()

    interrupt.start()
    try:
        changes = list(tail_changes(settings, from_beginning=True, timeout_s=10))
    finally:
        interrupt.cancel()

    assert changes == []
    assert time.monotonic() - started < 5.0


def test_tail_missing_topic_raises(settings: Settings) -> None:
    with pytest.raises(TopicError, match="does not exist"):
        next(tail_changes(settings, from_beginning=True, timeout_s=1))
