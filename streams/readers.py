"""Read side for people and scripts: a customer's tags, a tag's members, the tag-change stream."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import kafka.errors
import redis
import redis.exceptions
import structlog
from kafka import KafkaConsumer, TopicPartition

from tagger.errors import MirrorError
from tagger.schemas.timestamps import format_timestamp
from tagger.streams.config import Settings
from tagger.streams.end_offsets import broker_cluster_id, needs_probe
from tagger.streams.mirror import count_members, read_members, read_rulebook, read_tags
from tagger.streams.security import kafka_python_args, redis_args
from tagger.streams.topics import TopicError

__all__ = [
    "MemberPage",
    "MemberView",
    "TagView",
    "customer_tags",
    "describe_tag",
    "standalone_consumer",
    "tag_members",
    "tail_changes",
]

# A person is waiting on these reads, not a stream of events, so they get a
# longer socket timeout than the worker's mirror writes.
READ_TIMEOUT_S = 5.0
# Upper bound of one consumer poll, so a deadline or Ctrl-C is noticed soon.
_POLL_MS = 500
_MANUAL_PREFIX = "manual:"

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TagView:
    """One tag a customer holds, with its labels from the mirrored rulebook."""

    tag: str
    since_ms: int
    since: str
    group: str
    zh: str
    en: str


@dataclass(frozen=True, slots=True)
class MemberView:
    """One customer holding a tag, and since when (epoch ms and RFC 3339 UTC)."""

    customer_id: str
    since_ms: int
    since: str


@dataclass(frozen=True, slots=True)
class MemberPage:
    """One page of a tag's members, newest first, with the total member count."""

    tag: str
    members: list[MemberView]
    total: int
    offset: int
    limit: int


def customer_tags(settings: Settings, customer_id: str) -> list[TagView]:
    """Return the customer's current tags from the Redis mirror, sorted by group and tag."""
    with _redis(settings) as client:
        tags = read_tags(client, settings.redis_prefix, customer_id)
        rulebook = read_rulebook(client, settings.redis_prefix)["tags"] if tags else {}

    views = []
    for tag, since_ms in tags.items():
        group, zh, en = describe_tag(tag, rulebook)
        views.append(TagView(tag, since_ms, format_timestamp(since_ms), group, zh, en))
    return sorted(views, key=lambda view: (view.group, view.tag))


def describe_tag(tag: str, rulebook: dict[str, dict[str, str]]) -> tuple[str, str, str]:
    """Return the group, zh and en labels of `tag`.

    A parameterised tag (`rule_id:param`) takes its rule's labels with
    `{param}` filled in. A manual tag (`manual:<name>`) or a tag the
    rulebook does not describe is labelled with its own name.
    """
    described = rulebook.get(tag)
    if described is not None:
        return described["group"], described["zh"], described["en"]

    if tag.startswith(_MANUAL_PREFIX):
        name = tag.removeprefix(_MANUAL_PREFIX)
        return "manual", name, name

    rule_id, separator, param = tag.partition(":")
    described = rulebook.get(rule_id) if separator else None
    if described is None:
        return "", tag, tag
    return (
        described["group"],
        described["zh"].replace("{param}", param),
        described["en"].replace("{param}", param),
    )


def tag_members(settings: Settings, tag: str, *, offset: int = 0, limit: int = 50) -> MemberPage:
    """Return one page of the customers holding `tag`, newest first, and their total."""
    if offset < 0 or limit < 1:
        raise ValueError(
            f"invalid page offset={offset} limit={limit}: need offset >= 0, limit >= 1"
        )

    with _redis(settings) as client:
        page = read_members(client, settings.redis_prefix, tag, offset=offset, limit=limit)
        total = count_members(client, settings.redis_prefix, tag)

    members = [MemberView(member, since, format_timestamp(since)) for member, since in page]
    return MemberPage(tag=tag, members=members, total=total, offset=offset, limit=limit)


@contextlib.contextmanager
def _redis(settings: Settings) -> Iterator[redis.Redis]:
    """Open a client for reads and translate Redis errors into MirrorError naming the URL."""
    client = redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=READ_TIMEOUT_S,
        socket_connect_timeout=READ_TIMEOUT_S,
        **redis_args(settings),
    )
    try:
        yield client
    except redis.exceptions.RedisError as exc:
        url = settings.redacted()["redis_url"]
        raise MirrorError(
            f"reading the Redis mirror at {url} failed: {exc}; check REDIS_URL"
        ) from exc
    finally:
        client.close()


def tail_changes(
    settings: Settings,
    *,
    from_beginning: bool,
    max_messages: int | None = None,
    timeout_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield tag-change events as they arrive on the tag-change topic.

    Reads every partition with a consumer outside any group, from the start
    of the topic or from its end. Stops after `max_messages` events, after
    `timeout_s` seconds in all, or on Ctrl-C, whichever comes first. A record
    that is not a JSON object is logged and skipped. Raises TopicError when
    the topic does not exist or the brokers cannot be reached.
    """
    topic = settings.tag_change_topic
    consumer = standalone_consumer(settings, "tail")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(_partitions(consumer, topic))]
        consumer.assign(partitions)
        started_ms = int(time.time() * 1000)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
        for partition in partitions:
            # Resolve the seek now, so events produced after this call are included.
            consumer.position(partition)
        filtered = set() if from_beginning else _partitions_with_low_end(settings, partitions)

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        yielded = 0
        while max_messages is None or yielded < max_messages:
            poll_ms = _POLL_MS
            if deadline is not None:
                poll_ms = min(poll_ms, int((deadline - time.monotonic()) * 1000))
                if poll_ms <= 0:
                    return
            for partition, records in sorted(consumer.poll(timeout_ms=poll_ms).items()):
                for record in records:
                    if partition in filtered:
                        if record.timestamp < started_ms:
                            continue
                        filtered.discard(partition)
                    change = _decode(record)
                    if change is None:
                        continue
                    yield change
                    yielded += 1
                    if max_messages is not None and yielded >= max_messages:
                        return
    except KeyboardInterrupt:
        return
    finally:
        consumer.close()


def standalone_consumer(settings: Settings, purpose: str) -> KafkaConsumer:
    """Create a kafka-python consumer with no group, for reading topics from the CLI.

    Raises TopicError naming KAFKA_BOOTSTRAP_SERVERS when no broker answers.
    """
    try:
        return KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            client_id=f"{settings.app_id}-{purpose}",
            group_id=None,
            enable_auto_commit=False,
            **kafka_python_args(settings),
        )
    except kafka.errors.KafkaError as exc:
        raise TopicError(
            f"cannot reach the Kafka brokers at {settings.kafka_bootstrap_servers}: {exc}; "
            "check KAFKA_BOOTSTRAP_SERVERS"
        ) from exc


def _partitions(consumer: KafkaConsumer, topic: str) -> set[int]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise TopicError(f"tag-change topic {topic!r} does not exist: run `tagger topics create`")
    return set(partitions)


def _partitions_with_low_end(
    settings: Settings, partitions: list[TopicPartition]
) -> set[TopicPartition]:
    """Return the partitions whose reported end offset may fall inside their last batch.

    The embedded Tansu broker reports the first offset of a partition's last
    batch as its end, so a tail from the end would start with records
    written before it began. On the partitions returned here, the tail skips
    records older than itself until the first newer one. Apache Kafka
    reports the true end, so there this returns nothing.
    """
    mode = settings.broker_end_offset_fix
    if mode == "off":
        return set()
    if mode == "auto":
        cluster_id = broker_cluster_id(
            settings.kafka_bootstrap_servers, **kafka_python_args(settings)
        )
        if not needs_probe(cluster_id):
            return set()
    return set(partitions)


def _decode(record: Any) -> dict[str, Any] | None:
    try:
        change = json.loads(record.value)
    except (TypeError, ValueError) as exc:
        change = None
        error = repr(exc)
    else:
        error = "not a JSON object"
    if isinstance(change, dict):
        return change

    log.warning(
        "skipped an invalid tag-change record",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        error=error,
    )
    return None
