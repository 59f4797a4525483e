"""Topic creation and checks against the real broker."""

from __future__ import annotations

import pytest
from kafka.admin import KafkaAdminClient

from tagger.errors import ConfigError
from tagger.streams.config import Settings
from tagger.streams.topics import (
    DEDUP_WINDOW_MS,
    TopicError,
    _created_names,
    check_topics,
    create_topics,
    describe_partitions,
    expected_topics,
)


def test_create_makes_every_topic(settings: Settings) -> None:
    created = create_topics(settings)

    assert created == sorted(
        [
            f"{settings.app_id}-events-by-customer",
            settings.erasure_topic,
            *settings.input_topics,
            settings.tag_change_topic,
            settings.dead_letter_topic,
            settings.rulebook_topic,
        ]
    )
    for topic in created:
        expected = 1 if topic == settings.rulebook_topic else 4
        assert describe_partitions(settings.kafka_bootstrap_servers, topic) == expected, topic


def test_create_twice_creates_nothing(settings: Settings) -> None:
    create_topics(settings)

    again = create_topics(settings)

    assert again == []


def test_create_adds_only_missing(settings: Settings, kafka_bootstrap: str) -> None:
    _create(kafka_bootstrap, settings.tag_change_topic, partitions=4)

    created = create_topics(settings)

    assert settings.tag_change_topic not in created
    assert settings.dead_letter_topic in created


def test_create_rejects_short_retention(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="de-duplication window"):
        create_topics(settings, retention_ms=DEDUP_WINDOW_MS - 1)


def test_check_after_create_is_clean(settings: Settings) -> None:
    create_topics(settings)

    problems = check_topics(settings)

    assert problems == []


def test_check_reports_missing(settings: Settings) -> None:
    problems = check_topics(settings)

    assert sorted(problem.topic for problem in problems) == sorted(expected_topics(settings))
    assert {problem.kind for problem in problems} == {"missing"}


def test_check_reports_partition_count(settings: Settings, kafka_bootstrap: str) -> None:
    (input_topic,) = settings.input_topics
    _create(kafka_bootstrap, input_topic, partitions=3)
    create_topics(settings)

    problems = check_topics(settings)

    assert len(problems) == 1
    problem = problems[0]
    assert problem.topic == input_topic
    assert problem.kind == "partition_count"
    assert problem.expected_partitions == 4
    assert problem.found_partitions == 3
    assert "has 3 partitions, expected 4" in problem.message


def test_check_reports_changelog_mismatch(settings: Settings, kafka_bootstrap: str) -> None:
    changelog = f"{settings.app_id}-customers-changelog"
    create_topics(settings)
    _create(kafka_bootstrap, changelog, partitions=2)

    problems = check_topics(settings)

    assert len(problems) == 1
    problem = problems[0]
    assert problem.topic == changelog
    assert problem.kind == "changelog_partition_count"
    assert problem.expected_partitions == 4
    assert problem.found_partitions == 2


def test_check_ignores_other_apps_changelogs(settings: Settings, kafka_bootstrap: str) -> None:
    create_topics(settings)
    _create(kafka_bootstrap, f"other-{settings.app_id}-customers-changelog", partitions=2)

    problems = check_topics(settings)

    assert problems == []


def test_describe_missing_topic_is_none(settings: Settings) -> None:
    found = describe_partitions(settings.kafka_bootstrap_servers, f"{settings.app_id}-absent")

    assert found is None


def _create(bootstrap: str, topic: str, *, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": -1}},
            wait_for_metadata=True,
        )
    finally:
        admin.close()


def test_create_race_is_no_error() -> None:
    """Another worker creating the same topic between our list and create is not a failure."""
    response = {
        "topics": [
            {"name": "a", "error_code": 0, "error_message": None},
            {
                "name": "b",
                "error_code": 36,
                "error_message": "Topic with this name already exists.",
            },
        ]
    }

    created = _created_names(response)

    assert created == ["a"]


def test_create_rejection_raises() -> None:
    response = {"topics": [{"name": "a", "error_code": 44, "error_message": "policy says no"}]}

    with pytest.raises(TopicError, match="PolicyViolationError"):
        _created_names(response)
