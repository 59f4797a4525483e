"""Fixtures for end-to-end tests: real worker processes on the session's broker and Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tagger.streams.config import Settings
from tagger.streams.topics import create_topics
from tagger.streams.worker_process import WorkerProcess

# Bounds for a worker to form its group and to catch up, about three times
# what a run on the embedded broker takes here (a group forms in about 4 s).
JOIN_TIMEOUT_S = 45.0
CATCH_UP_TIMEOUT_S = 90.0


@pytest.fixture
def replay_settings(settings: Settings) -> Settings:
    """The test's settings with the clock in replay mode."""
    return settings.with_changes(clock_mode="replay")


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes for a test; every one still running is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(
        settings: Settings, *, extra_env: dict[str, str] | None = None, wait: bool = True
    ) -> WorkerProcess:
        create_topics(settings)
        worker = WorkerProcess(
            settings, tmp_path / f"worker-{len(started)}.log", extra_env=extra_env
        )
        started.append(worker)
        worker.start()
        if wait:
            worker.wait_for(
                lambda status: (
                    len(status.get("partitions", {})) == settings.partitions
                    and all(view["index_ready"] for view in status["partitions"].values())
                ),
                timeout_s=JOIN_TIMEOUT_S,
                what="all partitions assigned and recovered",
            )
        return worker

    yield start
    for worker in started:
        worker.stop(timeout_s=20)
