"""Shared fixtures: a real broker and Redis per session, one namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tagger.streams.config import Settings
from tagger.streams.embedded import EmbeddedBroker, EmbeddedRedis, free_port

# Fixtures that reach a real broker or Redis; a test using any of them is
# marked `integration` so `-m "not integration"` runs only the pure tests.
_INTEGRATION_FIXTURES = frozenset({"kafka_bootstrap", "redis_url", "embedded_redis"})
_DATA_FIXTURES = frozenset({"sample_data"})
_REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the services and data their fixtures need."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & _INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if used & _DATA_FIXTURES:
            item.add_marker(pytest.mark.data)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers: KAFKA_BOOTSTRAP_SERVERS when set, else an embedded broker."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Redis URL: REDIS_URL when set, else an embedded redis-server on a free port."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield configured
        return

    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def embedded_redis() -> Iterator[EmbeddedRedis]:
    """A private redis-server that the test may stop and start again on the same port."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    """Short unique id, used as topic-name and Redis key prefix so tests never share data."""
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
def settings(kafka_bootstrap: str, redis_url: str, namespace: str, tmp_path: Path) -> Settings:
    """Settings that point at the session's broker and Redis, with this test's namespace."""
    return Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        app_id=f"{namespace}-app",
        input_topics=(f"{namespace}-events",),
        tag_change_topic=f"{namespace}-tag-changes",
        dead_letter_topic=f"{namespace}-dead-letters",
        redis_prefix=f"{namespace}:",
        partitions=4,
        broker_session_timeout_s=6.0,
        web_port=free_port(),
        data_dir=str(tmp_path / "data"),
    ).validated()


@pytest.fixture
def sample_data() -> Path:
    """Folder of real sample data: TAGGER_SAMPLE_DATA, else `shared/data` next to the repository."""
    configured = os.environ.get("TAGGER_SAMPLE_DATA")
    folder = Path(configured) if configured else _REPO_ROOT.parent / "shared" / "data"
    if not folder.is_dir():
        pytest.skip(f"sample data folder {folder} is absent: set TAGGER_SAMPLE_DATA to use it")
    return folder
