"""A bounded stop: the shutdown deadline of a worker process.

On SIGTERM or SIGINT, Faust stops the worker in this order. It stops
fetching and waits until the batch in hand has been processed and
acknowledged. It commits the consumed offsets and flushes the producer. Then
it stops the app's services, where the Redis mirror flushes, and its Kafka
consumer. The worker's commit fence (`tagger.streams.input_guard`) keeps
every commit at the first record the processor has not finished, so a batch
skipped on the way out (one waiting for its rulebook version, see
`VersionGate.wait_open`) is consumed again by the next worker.

`ShutdownGuard` adds a deadline when the signal arrives: a thread that, when
the worker has not exited after `shutdown_timeout_s`, logs what is still
pending and ends the process with exit code 3 at once, so nothing else is
committed. Input not committed is consumed again, and the outbox and event
ids make that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from tagger.streams.app import TaggerRuntime

__all__ = ["SHUTDOWN_TIMED_OUT_EXIT_CODE", "ShutdownGuard"]

log = structlog.get_logger(__name__)

# Exit code of a worker that did not stop within TAGGER_SHUTDOWN_TIMEOUT_S.
SHUTDOWN_TIMED_OUT_EXIT_CODE = 3
# How long the deadline thread waits for the event loop to describe its tasks.
_SNAPSHOT_TIMEOUT_S = 1.0
_MAX_TASKS_LISTED = 8


class ShutdownGuard:
    """Arms the shutdown deadline when the worker is asked to stop."""

    def __init__(
        self,
        runtime: TaggerRuntime,
        timeout_s: float,
        *,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        self.runtime = runtime
        self.timeout_s = timeout_s
        self.exit_process = exit_process
        self.requested_at: float | None = None
        self.stopped_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop_requested(self, signum: signal.Signals) -> None:
        """Release a paused batch and arm the deadline (in the event loop)."""
        if self.requested_at is not None:
            return
        self.requested_at = time.monotonic()
        self._loop = asyncio.get_running_loop()
        log.info(
            "stop requested: finishing the batch in hand, then committing and flushing",
            signal=signum.name,
            app_id=self.runtime.settings.app_id,
            timeout_s=self.timeout_s,
        )
        if self.runtime.gate is not None:
            self.runtime.gate.abandon_waiting()
        threading.Thread(target=self._watch, name="tagger-shutdown-deadline", daemon=True).start()

    def stopped(self) -> None:
        """Record that Faust has stopped the worker.

        The deadline stays armed until the process exits, because exiting
        still joins Faust's consumer thread, which can hang when the broker is gone.
        """
        self.stopped_at = time.monotonic()

    @property
    def stop_seconds(self) -> float | None:
        """Seconds from the stop request to `stopped`, or None when either is missing."""
        if self.requested_at is None or self.stopped_at is None:
            return None
        return self.stopped_at - self.requested_at

    def _watch(self) -> None:
        time.sleep(self.timeout_s)
        log.error(
            "worker did not stop within the shutdown timeout: exiting without committing; "
            "input not committed is consumed again by the next worker",
            app_id=self.runtime.settings.app_id,
            timeout_s=self.timeout_s,
            exit_code=SHUTDOWN_TIMED_OUT_EXIT_CODE,
            pending=self.pending(),
            set_with="TAGGER_SHUTDOWN_TIMEOUT_S",
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        self.exit_process(SHUTDOWN_TIMED_OUT_EXIT_CODE)

    def pending(self) -> dict[str, Any]:
        """Describe what the stop still waits for; called from the deadline thread."""
        runtime = self.runtime
        app: Any = runtime.app
        report: dict[str, Any] = {"worker_stopped": self.stopped_at is not None}
        consumer = getattr(app, "_consumer", None)
        if consumer is not None:
            report["records_taken_not_acknowledged"] = len(
                getattr(consumer, "_unacked_messages", ())
            )
        producer = getattr(app, "_producer", None)
        if producer is not None:
            report["producer_buffered_messages"] = producer.buffer.size
        if runtime.mirror is not None:
            report["mirror_writes_unconfirmed"] = runtime.mirror.pending_count
        if runtime.gate is not None:
            report["batches_skipped_unprocessed"] = runtime.gate.abandoned_batches
        report["waiting_in"] = self._waiting_tasks()
        return report

    def _waiting_tasks(self) -> list[str]:
        """Return where the event loop's stop-related tasks wait, innermost call last."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return ["event loop closed"]
        try:
            in_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            in_loop = False
        if in_loop:
            # Waiting here for the loop would block the loop itself.
            return ["not described: called from the event loop"]
        future = asyncio.run_coroutine_threadsafe(_describe_tasks(), loop)
        try:
            return future.result(timeout=_SNAPSHOT_TIMEOUT_S)
        except Exception as exc:
            future.cancel()
            return [f"event loop did not answer within {_SNAPSHOT_TIMEOUT_S} s ({exc!r})"]


async def _describe_tasks() -> list[str]:
    current = asyncio.current_task()
    chains = []
    for task in asyncio.all_tasks():
        if task is current or task.done():
            continue
        chain = _await_chain(task.get_coro())
        if any("stop" in name or "flush" in name or "commit" in name for name in chain):
            chains.append(" > ".join(chain[-4:]))
    return sorted(set(chains))[:_MAX_TASKS_LISTED]


def _await_chain(coro: Any) -> list[str]:
    """Return the coroutines `coro` awaits, outermost first, as `Class.method` of their `self`."""
    names: list[str] = []
    while coro is not None and len(names) < 50:
        name = getattr(coro, "__qualname__", None)
        if name is None:
            break
        frame = getattr(coro, "cr_frame", None)
        owner = None if frame is None else frame.f_locals.get("self")
        if owner is not None:
            # Service.stop of a consumer thread reads AIOKafkaConsumerThread.stop.
            name = f"{type(owner).__name__}.{coro.__name__}"
        names.append(str(name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return names
