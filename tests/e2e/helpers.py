"""Readers of what a worker produced: the tag-change stream, dead letters, the Redis mirror."""

from __future__ import annotations

from typing import Any

import orjson
import redis
from kafka import KafkaConsumer, TopicPartition

from tagger.streams.config import Settings


def read_topic(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes]]:
    """Return every record of `topic` as (key, value), partition by partition."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        enable_auto_commit=False,
        consumer_timeout_ms=1500,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        return [(message.key, message.value) for message in consumer]
    finally:
        consumer.close()


def tag_changes(settings: Settings) -> list[dict[str, Any]]:
    """Return every tag-change event published so far."""
    return [orjson.loads(value) for _, value in read_topic(settings, settings.tag_change_topic)]


def fold_changes(changes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Fold tag changes in per-customer sequence order into customer → tag → since."""
    ordered = sorted(
        changes, key=lambda c: (c["customer_id"], int(c["change_id"].rsplit(":", 1)[1]))
    )
    tags: dict[str, dict[str, int]] = {}
    for change in ordered:
        held = tags.setdefault(change["customer_id"], {})
        if change["action"] == "added":
            held[change["tag"]] = change["at"]
        else:
            held.pop(change["tag"], None)
    return {customer: held for customer, held in tags.items() if held}


def mirror_tags(settings: Settings) -> dict[str, dict[str, int]]:
    """Return every customer's tags from the Redis mirror's customer hashes."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    prefix = f"{settings.redis_prefix}customer:"
    try:
        result = {}
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            result[key[len(prefix) :]] = {
                tag: int(since) for tag, since in client.hgetall(key).items()
            }
        return result
    finally:
        client.close()


def mirror_members(settings: Settings) -> dict[str, dict[str, int]]:
    """Return every tag's members from the mirror's sorted sets, as customer → tag → since."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    prefix = f"{settings.redis_prefix}tag:"
    try:
        result: dict[str, dict[str, int]] = {}
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            for customer, since in client.zrange(key, 0, -1, withscores=True):
                result.setdefault(customer, {})[key[len(prefix) :]] = int(since)
        return result
    finally:
        client.close()


def assert_changes_in_sequence(settings: Settings) -> None:
    """Assert each customer's changes first appear on the topic in `seq` order.

    Consumers of the tag-change topic apply a customer's changes in offset
    order, so a change that overtook an earlier one would leave them with
    wrong tags. A repeat after a crash may come later; only first
    appearances count.
    """
    last_seq: dict[str, tuple[int, int]] = {}
    seen: set[str] = set()
    for _, value in read_topic(settings, settings.tag_change_topic):
        change = orjson.loads(value)
        change_id = change["change_id"]
        if change_id in seen:
            continue
        seen.add(change_id)
        _, epoch, seq = change_id.rsplit(":", 2)
        position = (int(epoch), int(seq))
        previous = last_seq.get(change["customer_id"])
        assert previous is None or position > previous, (
            f"{change_id} published after {change['customer_id']}:{previous}"
        )
        last_seq[change["customer_id"]] = position
