"""Faust's App, Consumer and Worker, adapted.

The app reads changelogs to their true end on Tansu. Its consumer keeps
offset commits behind a commit fence while the worker stops. The worker
reports a stop request before Faust starts stopping, and keeps the root
logger out of DEBUG.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterable
from typing import Any

import faust
import structlog
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as FaustAiokafkaConsumer
from faust.types import TP

from tagger.streams.end_offsets import EndOffsetProbingConsumer
from tagger.streams.group_leave import leave_group
from tagger.streams.logs import quiet_libraries

__all__ = ["CommitFence", "TaggerApp", "TaggerWorker"]

log = structlog.get_logger(__name__)

# How long a stopping worker waits for the broker to take its LeaveGroup.
_LEAVE_GROUP_TIMEOUT_S = 5.0

# Return the highest offset that may be committed for a topic-partition, or
# None when its commits are not limited.
CommitFence = Callable[[TP], int | None]


class _FencedCommits:
    """Consumer mixin: commit offsets no higher than the app's commit fence allows.

    Faust commits every offset its streams acknowledged. A batch the worker
    skipped is acknowledged too, once the agent requests the next one, and
    Faust registers offsets it never delivered as a gap it may commit. So a
    commit stops at the first record not processed. The worker's fence
    (`InputGuard.commit_limit`) is set when the app is built.

    NOTE: whether Faust's later commits of a partition move on after one was
    lowered here was not checked. If they do not, that input is only
    consumed again after a restart.
    """

    app: Any
    _committed_offset: Any

    def _filter_committable_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        offsets: dict[TP, int] = super()._filter_committable_offsets(tps)  # type: ignore[misc]
        fence: CommitFence | None = getattr(self.app, "commit_fence", None)
        if fence is None:
            return offsets
        allowed: dict[TP, int] = {}
        held_back: dict[str, tuple[int, int]] = {}
        for tp, offset in offsets.items():
            limit = fence(tp)
            if limit is None or offset <= limit:
                allowed[tp] = offset
                continue
            held_back[f"{tp.topic}[{tp.partition}]"] = (offset, limit)
            committed = self._committed_offset.get(tp)
            if limit > (committed if committed is not None else -1):
                allowed[tp] = limit
        if held_back:
            log.warning(
                "offset commit held back at the first unprocessed record",
                partitions={
                    name: {"acknowledged": acked, "limit": limit}
                    for name, (acked, limit) in held_back.items()
                },
            )
        return allowed


class _FetchWaitConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer thread, with the app's longest fetch wait in place of Faust's 1.5 s."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms: int | None = getattr(self.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            # faust-streaming 0.15 passes a fixed fetch_max_wait_ms=1500.
            # aiokafka reads this attribute when the consumer starts, to
            # build its fetcher, which has not happened yet.
            consumer._fetch_max_wait_ms = wait_ms
        return consumer


class _FetchWait:
    """Consumer mixin: run the consumer thread that applies the app's fetch wait."""

    loop: Any
    beacon: Any

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        consumer: Any = self
        return _FetchWaitConsumerThread(consumer, loop=self.loop, beacon=self.beacon)


class FencedConsumer(_FencedCommits, _FetchWait, FaustAiokafkaConsumer):
    """Faust's aiokafka consumer with the commit fence and the app's fetch wait."""


class FencedProbingConsumer(_FencedCommits, _FetchWait, EndOffsetProbingConsumer):
    """The end-offset probing consumer with the commit fence and the app's fetch wait."""


class TaggerApp(faust.App):
    """A Faust app whose consumer reads changelogs to their true end on Tansu and
    keeps commits behind `commit_fence`."""

    probe_end_offsets = False
    # Seconds the table recovery may read changelogs in bulk (streams/bulk_recovery.py).
    recovery_bulk_s = 0.0
    commit_fence: CommitFence | None = None
    # Maximum wait of a fetch for records (ms). None keeps Faust's 1.5 s.
    fetch_max_wait_ms: int | None = None

    def _new_transport(self) -> Any:
        transport = super()._new_transport()
        # Faust reads the consumer class from the transport instance.
        transport.Consumer = (  # type: ignore[misc]
            FencedProbingConsumer if self.probe_end_offsets else FencedConsumer
        )
        return transport

    async def _stop_consumer(self) -> None:
        # Faust has drained the streams and committed when this returns; the
        # group then gets this worker's partitions at once, not after the
        # session timeout.
        await super()._stop_consumer()
        await leave_group(self, timeout_s=_LEAVE_GROUP_TIMEOUT_S)


class TaggerWorker(faust.Worker):
    """Faust's worker without its terminal spinner, which forces the root logger to DEBUG.

    `on_stop_requested(signal)` runs once, on the first SIGTERM or SIGINT,
    before Faust starts stopping the app.
    """

    on_stop_requested: Callable[[signal.Signals], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The spinner writes terminal escapes and " OK ^" to the log when
        # stdout is no terminal.
        self.spinner = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        quiet_libraries(level or logging.INFO)

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        # mode-streaming 0.7 sets `_signal_stop_time` on the first signal and
        # ignores the later ones.
        first = not self._signal_stop_time
        if first and self.on_stop_requested is not None:
            self.on_stop_requested(signal)
        super()._schedule_shutdown(signal)
