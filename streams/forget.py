"""`tagger forget`: send an erasure request, and wait until the worker group has applied it."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import kafka.errors
import structlog
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from tagger.errors import TaggerError
from tagger.schemas.erasure import ErasureRequest, encode_erasure_request
from tagger.streams.config import Settings
from tagger.streams.partitioning import partition_for
from tagger.streams.security import kafka_python_args
from tagger.streams.topics import TopicError, describe_partitions

__all__ = ["ErasureError", "SentRequest", "send_erasure_request", "wait_until_applied"]

log = structlog.get_logger(__name__)

_SEND_TIMEOUT_S = 30.0
_POLL_INTERVAL_S = 0.5


class ErasureError(TaggerError):
    """An erasure request could not be sent, or its progress could not be read."""


@dataclass(frozen=True, slots=True)
class SentRequest:
    """An erasure request the broker acknowledged, and where it was written."""

    request: ErasureRequest
    topic: str
    partition: int
    offset: int


def send_erasure_request(settings: Settings, customer_id: str) -> SentRequest:
    """Write one erasure request for `customer_id` and return where the broker put it.

    The request goes to the partition Kafka's default partitioner gives the
    customer id, which is the table partition that stores the customer.
    Raises TopicError when the erasures topic is missing or has another
    partition count than the settings, and ErasureError when the broker
    does not acknowledge the request.
    """
    topic = settings.erasure_topic
    client_args = kafka_python_args(settings)
    partitions = describe_partitions(settings.kafka_bootstrap_servers, topic, **client_args)
    if partitions is None:
        raise TopicError(
            f"erasure topic {topic!r} is missing: run `tagger topics create` "
            "with the workers' settings, or check TAGGER_APP_ID"
        )
    if partitions != settings.partitions:
        raise TopicError(
            f"erasure topic {topic!r} has {partitions} partitions, expected "
            f"{settings.partitions}: set TAGGER_PARTITIONS to the workers' value"
        )

    key = customer_id.encode()
    request = ErasureRequest(customer_id, uuid.uuid4().hex, int(time.time() * 1000))
    try:
        producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            client_id=f"{settings.app_id}-forget",
            acks="all",
            allow_auto_create_topics=False,
            **client_args,
        )
    except kafka.errors.KafkaError as exc:
        raise ErasureError(
            f"cannot reach the Kafka brokers at {settings.kafka_bootstrap_servers}: {exc}; "
            "check KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    try:
        future = producer.send(
            topic,
            key=key,
            value=encode_erasure_request(request),
            partition=partition_for(key, settings.partitions),
        )
        metadata = future.get(timeout=_SEND_TIMEOUT_S)
    except kafka.errors.KafkaError as exc:
        raise ErasureError(
            f"sending the erasure request to topic {topic!r} failed: {exc}; nothing was "
            "erased, so run the command again"
        ) from exc
    finally:
        producer.close(timeout=_SEND_TIMEOUT_S)

    sent = SentRequest(request, topic, metadata.partition, metadata.offset)
    log.info(
        "erasure request sent",
        request_id=request.request_id,
        topic=topic,
        partition=sent.partition,
        offset=sent.offset,
    )
    return sent


def wait_until_applied(settings: Settings, sent: SentRequest, timeout_s: float) -> bool:
    """Wait until the worker group's committed offset passes the request; False on timeout.

    A worker commits an offset only after the batch that contained the
    record has published its tag changes, so a committed offset past the
    request means the customer's state is deleted and its removals sent.
    """
    group = settings.app_id
    partition = TopicPartition(sent.topic, sent.partition)
    deadline = time.monotonic() + timeout_s
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            client_id=f"{settings.app_id}-forget",
            **kafka_python_args(settings),
        )
    except kafka.errors.KafkaError as exc:
        raise ErasureError(
            f"cannot reach the Kafka brokers at {settings.kafka_bootstrap_servers}: {exc}"
        ) from exc
    try:
        while True:
            if _committed(admin, group, partition) > sent.offset:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL_S)
    finally:
        admin.close()


def _committed(admin: KafkaAdminClient, group: str, partition: TopicPartition) -> int:
    """Return the group's committed offset of `partition`, or -1 when it has none."""
    try:
        offsets = admin.list_group_offsets({group: [partition]})
    except kafka.errors.KafkaError as exc:
        if exc.retriable:
            # The group's coordinator is loading or moving: ask again later.
            log.debug("committed offsets not readable yet, retrying", group=group, error=repr(exc))
            return -1
        raise ErasureError(
            f"reading the committed offsets of consumer group {group!r} failed: {exc}"
        ) from exc
    committed = offsets.get(group, {}).get(partition)
    if committed is None or committed.offset is None:
        return -1
    return int(committed.offset)
