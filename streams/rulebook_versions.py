"""The rulebook version a consumer group runs, recorded in a one-partition Kafka topic.

Every worker of a group must apply the same rulebook, or two workers would
tag the same customer by different rules as partitions move between them. The
topic `<app id>-rulebook` holds activation records; the newest one names the
active version. A worker consumes only while its own rulebook's version is the
active one: a worker started with a new rulebook waits until `tagger rules
activate` records that version, and workers still on the old version then stop
consuming. The first worker of a new group activates its own version.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as SyncTopicPartition

from tagger.rules.rulebook import Rulebook
from tagger.streams.config import Settings
from tagger.streams.security import aiokafka_args, kafka_python_args

__all__ = [
    "Activation",
    "BatchAbandoned",
    "VersionGate",
    "activate",
    "read_active",
    "rulebook_text",
]

log = structlog.get_logger(__name__)

_ACTIVE_KEY = b"active"
# The topic is read until this many polls in a row return nothing, because the
# embedded broker's reported end offset cannot be trusted.
_EMPTY_POLLS_AT_END = 2
_POLL_TIMEOUT_MS = 500


class BatchAbandoned(Exception):
    """Raised by `VersionGate.wait_open` when the worker stops while a batch waits.

    The batch was not processed. The agent skips it, and the worker's commit
    fence keeps its offsets uncommitted, so the next worker consumes it.
    """


@dataclass(frozen=True, slots=True)
class Activation:
    """One activation record: which rulebook version the group runs from when."""

    version: str
    activated_at: int
    source: str
    rulebook_text: str
    activated_by: str

    def encode(self) -> bytes:
        """Serialise for the version topic."""
        return orjson.dumps(
            {
                "version": self.version,
                "activated_at": self.activated_at,
                "source": self.source,
                "rulebook_text": self.rulebook_text,
                "activated_by": self.activated_by,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Activation:
        """Parse a record written by `encode`."""
        data = orjson.loads(raw)
        return cls(
            version=str(data["version"]),
            activated_at=int(data["activated_at"]),
            source=str(data.get("source", "")),
            rulebook_text=str(data.get("rulebook_text", "")),
            activated_by=str(data.get("activated_by", "")),
        )

    @classmethod
    def of(cls, rulebook: Rulebook, text: str, *, by: str) -> Activation:
        """Build the record that activates `rulebook`."""
        return cls(
            version=rulebook.version,
            activated_at=int(time.time() * 1000),
            source=str(rulebook.file),
            rulebook_text=text,
            activated_by=by,
        )


def read_active(settings: Settings) -> Activation | None:
    """Return the group's newest activation record, or None when there is none (kafka-python)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        enable_auto_commit=False,
        consumer_timeout_ms=1500,
        **kafka_python_args(settings),
    )
    try:
        partition = SyncTopicPartition(settings.rulebook_topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        newest: Activation | None = None
        for message in consumer:
            if message.key == _ACTIVE_KEY and message.value:
                newest = Activation.decode(message.value)
        return newest
    finally:
        consumer.close()


def activate(settings: Settings, activation: Activation) -> None:
    """Record `activation` as the group's active version and wait for the broker's ack."""
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        acks="all",
        **kafka_python_args(settings),
    )
    try:
        producer.send(
            settings.rulebook_topic, key=_ACTIVE_KEY, value=activation.encode(), partition=0
        )
        producer.flush()
    finally:
        producer.close()
    log.info(
        "rulebook version activated",
        app_id=settings.app_id,
        version=activation.version,
        source=activation.source,
    )


class VersionGate:
    """Follows the version topic and opens while this worker's version is the active one.

    `on_activated(previous)` runs, awaited, each time the gate opens, so the
    worker can re-evaluate customers decided under another rulebook version.
    """

    def __init__(
        self,
        settings: Settings,
        rulebook: Rulebook,
        rulebook_text: str,
        on_activated: Callable[[str | None], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.rulebook = rulebook
        self.rulebook_text = rulebook_text
        self.on_activated = on_activated
        self.active: Activation | None = None
        self._open = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # Batches given up because the worker stopped while they waited.
        self.abandoned_batches = 0

    @property
    def is_open(self) -> bool:
        """True while this worker's rulebook version is the group's active one."""
        return self._open.is_set()

    @property
    def reason(self) -> str | None:
        """Why the gate is closed, for /readyz; None while it is open."""
        if self.is_open:
            return None
        if self.active is None:
            return "the group's active rulebook version is not known yet"
        if self.active.version == self.rulebook.version:
            return f"rulebook version {self.active.version} is active, the worker starts consuming"
        return (
            f"rulebook version {self.active.version} is active for group {self.settings.app_id}, "
            f"this worker runs {self.rulebook.version}: restart it with the active rulebook, "
            "or run `tagger rules activate` with this one"
        )

    async def wait_open(self) -> None:
        """Return once this worker may consume; raise BatchAbandoned once it is stopping.

        A batch waits here unacknowledged. `abandon_waiting` ends the wait, so
        a paused worker stops at once. The caller must then skip the batch,
        and the commit fence must be up, or Faust would commit the skipped
        batch's offsets once the agent moves on.

        NOTE: only stopping ends the wait. A rebalance that revokes a paused
        worker's partitions still waits for the batch held here.
        """
        if self._open.is_set():
            return
        if not self._stopping.is_set():
            log.warning("waiting for the rulebook version to be activated", reason=self.reason)
            opened = asyncio.ensure_future(self._open.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({opened, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                opened.cancel()
                stopping.cancel()
            if self._open.is_set():
                return
        self.abandoned_batches += 1
        if self.abandoned_batches == 1:
            log.warning(
                "worker stopping while batches wait for the rulebook version: they are "
                "skipped unprocessed and uncommitted, the next worker consumes them",
                version=self.rulebook.version,
                reason=self.reason,
            )
        raise BatchAbandoned(f"worker stopping before rulebook {self.rulebook.version} was active")

    def abandon_waiting(self) -> None:
        """Make the waiting and every later `wait_open` raise BatchAbandoned while closed."""
        self._stopping.set()

    async def start(self) -> None:
        """Read the topic to its end, activate this version if there is none, then follow it."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tagger-version-gate")
        await self._ready.wait()

    async def stop(self) -> None:
        """Stop following the topic."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            **aiokafka_args(self.settings),
        )
        await consumer.start()
        try:
            partition = TopicPartition(self.settings.rulebook_topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            await self._read_to_end(consumer)
            if self.active is None:
                await self._bootstrap()
                await self._read_to_end(consumer)
            await self._update()
            self._ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
                if self._apply(batch):
                    await self._update()
        finally:
            self._ready.set()
            await consumer.stop()

    async def _read_to_end(self, consumer: AIOKafkaConsumer) -> None:
        empty = 0
        while empty < _EMPTY_POLLS_AT_END:
            batch = await consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
            empty = 0 if self._apply(batch) else empty + 1

    def _apply(self, batch: dict[Any, Any]) -> bool:
        changed = False
        for records in batch.values():
            for record in records:
                if record.key == _ACTIVE_KEY and record.value:
                    self.active = Activation.decode(record.value)
                    changed = True
        return changed

    async def _bootstrap(self) -> None:
        activation = Activation.of(self.rulebook, self.rulebook_text, by=_worker_name())
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            acks="all",
            **aiokafka_args(self.settings),
        )
        await producer.start()
        try:
            await producer.send_and_wait(
                self.settings.rulebook_topic,
                key=_ACTIVE_KEY,
                value=activation.encode(),
                partition=0,
            )
        finally:
            await producer.stop()
        log.info(
            "no rulebook version recorded for the group, activated this worker's",
            app_id=self.settings.app_id,
            version=activation.version,
        )

    async def _update(self) -> None:
        active = self.active
        if active is not None and active.version == self.rulebook.version:
            if not self._open.is_set():
                log.info("rulebook version is active, consuming", version=active.version)
                self._open.set()
                # Customers decided under another version are re-evaluated;
                # partitions assigned later are handled when they are assigned.
                if self.on_activated is not None:
                    await self.on_activated(None)
            return
        was_open = self._open.is_set()
        self._open.clear()
        if was_open or not self._ready.is_set():
            log.warning("rulebook version is not active, not consuming", reason=self.reason)


def rulebook_text(path: str | None) -> str:
    """Return the text of the rulebook file at `path`, or of the packaged default."""
    if path is None:
        return resources.files("tagger.rules").joinpath("default.yaml").read_text(encoding="utf-8")
    return Path(path).read_text(encoding="utf-8")


def _worker_name() -> str:
    return f"worker@{socket.gethostname()}"
