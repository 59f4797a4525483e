"""Kafka topics of the tagger: create them with their partition counts and check them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import kafka.errors
import structlog
from kafka.admin import KafkaAdminClient

from tagger.errors import ConfigError, TaggerError
from tagger.streams.config import Settings
from tagger.streams.security import kafka_python_args

__all__ = [
    "DEDUP_WINDOW_MS",
    "INPUT_RETENTION_MS",
    "OUTPUT_RETENTION_MS",
    "TopicError",
    "TopicProblem",
    "TopicProblemKind",
    "check_topics",
    "create_topics",
    "describe_partitions",
    "expected_topics",
]

_DAY_MS = 24 * 60 * 60 * 1000
# Maximum time an event id is remembered for de-duplication. A redelivery
# must still be readable from the input topic while its id is remembered,
# so input retention may not be shorter.
DEDUP_WINDOW_MS = 10 * 60 * 1000
# Input and repartition retention: 7 days, so a worker that was down over a
# weekend, or a rebuild of the tables, can still read what it missed.
INPUT_RETENTION_MS = 7 * _DAY_MS
# Tag changes and dead letters: 30 days, so downstream consumers and people
# fixing rejected events have a month to read them.
OUTPUT_RETENTION_MS = 30 * _DAY_MS
# Kafka's error code for a topic that does not exist.
_UNKNOWN_TOPIC_OR_PARTITION = 3
_TOPIC_ALREADY_EXISTS = 36
# Replication factor -1 requests the broker's `default.replication.factor`
# (Kafka 2.4 and newer), so one setting works on one broker and on many.
_BROKER_DEFAULT_REPLICATION = -1
_REQUEST_TIMEOUT_MS = 30_000

TopicProblemKind = Literal["missing", "partition_count", "changelog_partition_count"]

log = structlog.get_logger(__name__)


class TopicError(TaggerError):
    """A topic could not be created or described."""


@dataclass(frozen=True, slots=True)
class TopicProblem:
    """A topic that is missing or has a partition count the tagger cannot use."""

    topic: str
    kind: TopicProblemKind
    expected_partitions: int
    found_partitions: int | None

    @property
    def message(self) -> str:
        """One sentence for people: what is wrong and what to do."""
        if self.kind == "missing":
            return (
                f"topic {self.topic!r} is missing: run `tagger topics create` "
                f"(expected {self.expected_partitions} partitions)"
            )
        if self.kind == "partition_count":
            return (
                f"topic {self.topic!r} has {self.found_partitions} partitions, expected "
                f"{self.expected_partitions}: set TAGGER_PARTITIONS to match or recreate the topic"
            )
        return (
            f"changelog topic {self.topic!r} has {self.found_partitions} partitions but the "
            f"input topics have {self.expected_partitions}: a table partition must match an "
            "input partition, so delete the changelog (the tables rebuild from the input) "
            "or recreate the input topics"
        )

    def __str__(self) -> str:
        return self.message


def expected_topics(settings: Settings) -> dict[str, int]:
    """Map each topic the tagger reads or writes, changelogs aside, to its partition count."""
    names = [
        *settings.input_topics,
        settings.repartition_topic,
        settings.erasure_topic,
        settings.tag_change_topic,
        settings.dead_letter_topic,
    ]
    counts = dict.fromkeys(names, settings.partitions)
    # Activation records need one total order, so one partition.
    counts[settings.rulebook_topic] = 1
    return counts


def create_topics(
    settings: Settings,
    *,
    retention_ms: int = INPUT_RETENTION_MS,
    output_retention_ms: int = OUTPUT_RETENTION_MS,
    replication_factor: int = _BROKER_DEFAULT_REPLICATION,
) -> list[str]:
    """Create the missing topics of `settings` and return the names created.

    Input, repartition and erasure topics get `retention_ms`, the tag-change and
    dead-letter topics `output_retention_ms` (-1 keeps records forever).
    Topics that exist already are left as they are: `check_topics` reports
    a wrong partition count. Raises ConfigError when `retention_ms` is
    shorter than the de-duplication window, and TopicError when the broker
    rejects a topic or cannot be reached.
    """
    if retention_ms != -1 and retention_ms < DEDUP_WINDOW_MS:
        raise ConfigError(
            f"input retention {retention_ms} ms is shorter than the de-duplication window "
            f"({DEDUP_WINDOW_MS} ms): redelivered events could no longer be read; use a "
            "longer retention"
        )

    # Erasure requests are input too: one must stay readable until a worker applies it.
    input_names = {*settings.input_topics, settings.repartition_topic, settings.erasure_topic}
    requests: dict[str, dict[str, Any]] = {}
    for name, partitions in expected_topics(settings).items():
        retention = retention_ms if name in input_names else output_retention_ms
        if name == settings.rulebook_topic:
            # The newest activation record must outlive any retention period.
            retention = -1
        requests[name] = {
            "num_partitions": partitions,
            "replication_factor": replication_factor,
            "configs": {"retention.ms": str(retention), "cleanup.policy": "delete"},
        }

    with _admin(
        settings.kafka_bootstrap_servers, settings.app_id, kafka_python_args(settings)
    ) as admin:
        try:
            existing = set(admin.list_topics())
            missing = {name: spec for name, spec in requests.items() if name not in existing}
            if not missing:
                return []
            response = admin.create_topics(missing, raise_errors=False, wait_for_metadata=True)
        except kafka.errors.KafkaError as exc:
            raise TopicError(
                f"creating topics {sorted(requests)} on {settings.kafka_bootstrap_servers} "
                f"failed: {exc}"
            ) from exc

    created = _created_names(response)
    log.info("topics created", topics=created, partitions=settings.partitions)
    return created


def _created_names(response: dict[str, Any]) -> list[str]:
    """Return the names a CreateTopics response reports as created.

    A topic that another process created in the meantime is no error.
    """
    created: list[str] = []
    for result in response["topics"]:
        code = result["error_code"]
        if code == 0:
            created.append(result["name"])
        elif code != _TOPIC_ALREADY_EXISTS:
            error = kafka.errors.for_code(code).__name__
            raise TopicError(
                f"the broker rejected topic {result['name']!r}: {error} "
                f"({result.get('error_message') or 'no message'})"
            )
    return sorted(created)


def check_topics(settings: Settings) -> list[TopicProblem]:
    """List the problems with the tagger's topics; an empty list means all is well.

    Reports missing topics, topics whose partition count differs from
    `settings.partitions`, and changelog topics of the app (named
    `<app_id>-…-changelog`) whose partition count differs from the input
    topics'. Raises TopicError when the broker cannot be reached.
    """
    expected = expected_topics(settings)
    with _admin(
        settings.kafka_bootstrap_servers, settings.app_id, kafka_python_args(settings)
    ) as admin:
        try:
            names = admin.list_topics()
            changelogs = sorted(
                name
                for name in names
                if name.startswith(f"{settings.app_id}-") and name.endswith("-changelog")
            )
            counts = _partition_counts(admin, [*expected, *changelogs])
        except kafka.errors.KafkaError as exc:
            raise TopicError(
                f"describing topics on {settings.kafka_bootstrap_servers} failed: {exc}"
            ) from exc

    problems: list[TopicProblem] = []
    for topic, partitions in expected.items():
        found = counts.get(topic)
        if found is None:
            problems.append(TopicProblem(topic, "missing", partitions, None))
        elif found != partitions:
            problems.append(TopicProblem(topic, "partition_count", partitions, found))

    input_partitions = _input_partitions(settings, counts)
    for topic in changelogs:
        found = counts.get(topic)
        if found is not None and found != input_partitions:
            problems.append(
                TopicProblem(topic, "changelog_partition_count", input_partitions, found)
            )
    return problems


def _input_partitions(settings: Settings, counts: dict[str, int | None]) -> int:
    """Return the input topics' partition count when they all exist and agree, else the setting."""
    found = {counts.get(topic) for topic in settings.input_topics}
    if len(found) == 1:
        (only,) = found
        if only is not None:
            return only
    return settings.partitions


def describe_partitions(bootstrap: str, topic: str, **client_args: Any) -> int | None:
    """Return the partition count of `topic`, or None when it does not exist.

    `client_args` are extra kafka-python arguments, such as those of
    `security.kafka_python_args`.
    """
    with _admin(bootstrap, "tagger", client_args) as admin:
        try:
            return _partition_counts(admin, [topic])[topic]
        except kafka.errors.KafkaError as exc:
            raise TopicError(f"describing topic {topic!r} on {bootstrap} failed: {exc}") from exc


def _partition_counts(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int | None]:
    if not topics:
        return {}

    counts: dict[str, int | None] = dict.fromkeys(topics)
    for described in admin.describe_topics(topics):
        code = described["error_code"]
        partitions = described.get("partitions") or []
        if code == _UNKNOWN_TOPIC_OR_PARTITION:
            continue
        if code != 0 and not partitions:
            error = kafka.errors.for_code(code).__name__
            raise TopicError(f"describing topic {described['name']!r} failed: {error}")
        counts[described["name"]] = len(partitions)
    return counts


@contextlib.contextmanager
def _admin(bootstrap: str, app_id: str, client_args: dict[str, Any]) -> Iterator[KafkaAdminClient]:
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id=f"{app_id}-admin",
            request_timeout_ms=_REQUEST_TIMEOUT_MS,
            **client_args,
        )
    except kafka.errors.KafkaError as exc:
        raise TopicError(
            f"cannot reach the Kafka brokers at {bootstrap}: {exc}; check KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    try:
        yield admin
    finally:
        admin.close()
