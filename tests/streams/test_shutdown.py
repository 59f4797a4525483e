"""The commit fence and the shutdown deadline, without a broker."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from tagger.streams.config import Settings
from tagger.streams.faust_app import _FencedCommits
from tagger.streams.shutdown import SHUTDOWN_TIMED_OUT_EXIT_CODE, ShutdownGuard

_INPUT = "events"


@dataclass
class _Processor:
    processed_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass
class _Gate:
    abandoned_batches: int = 0
    abandoning: bool = False

    def abandon_waiting(self) -> None:
        self.abandoning = True


@dataclass
class _App:
    commit_fence: Any = None


@dataclass
class _Runtime:
    """The parts of TaggerRuntime that ShutdownGuard reads."""

    settings: Settings = field(default_factory=lambda: Settings(input_topics=(_INPUT,)))
    app: _App = field(default_factory=_App)
    processor: _Processor = field(default_factory=_Processor)
    gate: _Gate = field(default_factory=_Gate)
    mirror: Any = None

    def input_partitions(self, partition: int) -> list[TP]:
        return [TP(_INPUT, partition), TP("app-events-by-customer", partition)]


class _AckedOffsets:
    """Stands in for Faust's consumer: every acknowledged offset is committable."""

    def __init__(self, app: _App, acked: dict[TP, int], committed: dict[TP, int]) -> None:
        self.app = app
        self.acked = acked
        self._committed_offset = committed

    def _filter_committable_offsets(self, tps: Any) -> dict[TP, int]:
        return dict(self.acked)


class _FencedConsumer(_FencedCommits, _AckedOffsets):
    pass


def test_fence_holds_commits_at_limit() -> None:
    app = _App()
    processed, skipped, untouched = TP(_INPUT, 0), TP(_INPUT, 1), TP("other", 0)
    consumer = _FencedConsumer(
        app, acked={processed: 60, skipped: 30, untouched: 7}, committed={skipped: 20}
    )
    assert consumer._filter_committable_offsets([]) == {processed: 60, skipped: 30, untouched: 7}

    limits = {processed: 42, skipped: 20}
    app.commit_fence = limits.get

    assert consumer._filter_committable_offsets([]) == {processed: 42, untouched: 7}


async def test_deadline_exits_with_code_3() -> None:
    runtime = _Runtime()
    codes: list[int] = []
    guard = ShutdownGuard(runtime, 0.2, exit_process=codes.append)  # type: ignore[arg-type]

    guard.stop_requested(signal.SIGTERM)
    # The deadline thread requests this loop's tasks, so keep it running.
    for _ in range(50):
        if codes:
            break
        await asyncio.sleep(0.05)

    assert codes == [SHUTDOWN_TIMED_OUT_EXIT_CODE]
    assert runtime.gate.abandoning
    pending = await asyncio.to_thread(guard.pending)
    assert pending["worker_stopped"] is False
    assert pending["batches_skipped_unprocessed"] == 0


async def test_second_stop_request_changes_nothing() -> None:
    runtime = _Runtime()
    guard = ShutdownGuard(runtime, 60.0, exit_process=lambda code: None)  # type: ignore[arg-type]

    guard.stop_requested(signal.SIGTERM)
    first = guard.requested_at
    guard.stop_requested(signal.SIGINT)

    assert guard.requested_at == first
