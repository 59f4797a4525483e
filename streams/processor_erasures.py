"""The erasure steps of the processor: apply erasure requests, and keep erased customers away.

`Processor` inherits these methods; they run under its lock, inside its
batches, in offset order with the customer's events. See `ErasureRecord`
for what the erasures table keeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from tagger.errors import InvalidEvent
from tagger.rules.engine import Engine
from tagger.rules.state import CustomerState, decode_state
from tagger.schemas.erasure import decode_erasure_request
from tagger.schemas.tag_change import TagChange, encode_tag_change
from tagger.streams.clock import PartitionState
from tagger.streams.config import Settings
from tagger.streams.erasures import ErasureRecord, position_key
from tagger.streams.metrics import TaggerMetrics
from tagger.streams.mirror_lua import SEQ_TTL_MS, mirror_seq
from tagger.streams.partitioning import partition_for

if TYPE_CHECKING:
    from tagger.streams.processor import InboundRecord, _BatchWork

__all__ = ["ErasureSteps", "MirrorErase", "encode_outbox", "mirror_seq_of"]

log = structlog.get_logger(__name__)

MirrorErase = Callable[[str, int, list[str]], None]
# Erasures records read per yield to the event loop while a partition is assigned.
_CHUNK = 500


class ErasureSteps:
    """Erasure handling for `Processor`, which provides the attributes and methods below."""

    settings: Settings
    engine: Engine
    customers: Any
    erasures: Any
    metrics: TaggerMetrics
    mirror_confirmed: dict[str, int]
    mirror_erase: MirrorErase | None
    send: Callable[[str, bytes | None, bytes], Awaitable[Any]]

    def wall_now(self) -> int:  # pragma: no cover - provided by Processor
        raise NotImplementedError

    def _partition(self, p: int) -> PartitionState:  # pragma: no cover - provided by Processor
        raise NotImplementedError

    def _dead_letter(  # pragma: no cover - provided by Processor
        self, record: InboundRecord, reason: str, detail: str, work: _BatchWork
    ) -> None:
        raise NotImplementedError

    def _handle_erasure(self, record: InboundRecord, work: _BatchWork) -> None:
        """Apply one erasure request: remove the customer's tags, state and Redis keys.

        The removals are published like other changes. The erasures record
        keeps them until the broker acknowledges them, the customer's next
        epoch, and the input positions the erased state had applied.
        """
        try:
            request = decode_erasure_request(record.value, key=record.key)
        except InvalidEvent as exc:
            self._dead_letter(record, exc.reason, exc.detail, work)
            return
        key = request.customer_id.encode()
        p = record.partition
        expected_partition = partition_for(key, self.settings.partitions)
        if p != expected_partition:
            self._dead_letter(
                record,
                "misrouted",
                f"partition {p}, expected {expected_partition}: the erasures topic must have "
                "the partition count of the input topics",
                work,
            )
            return

        previous = self._erasure_record(key, work)
        if previous is not None and previous.covers(record.topic, p, record.offset):
            self._repeat_erasure(record, key, previous, work)
            return

        ps = self._partition(p)
        wall = self.wall_now()
        epoch = 0 if previous is None else previous.epoch
        positions = {} if previous is None else dict(previous.positions)
        outbox = [] if previous is None else list(previous.outbox)
        tags: list[str] = []
        state = self._erasable_state(p, key, work)
        if state is not None:
            tags = sorted(state.tags)
            changes = self.engine.erase(state, at=ps.clock, now=wall, request_id=request.request_id)
            work.queue(key, changes)
            # The changes this batch decided for the customer, removals last.
            if not state.outbox_stale:
                outbox.extend(state.outbox)
            for applied, offset in state.applied.items():
                positions[applied] = max(positions.get(applied, -1), offset)
            epoch = max(epoch, state.epoch)
            work.states.get(p, {}).pop(key, None)
        positions[position_key(record.topic, p)] = record.offset

        erasure = ErasureRecord(
            epoch=epoch + 1,
            erased_at=wall,
            request_id=request.request_id,
            positions=positions,
            outbox=outbox,
        )
        work.erasures[key] = (p, erasure)
        work.erased.add(key)
        work.mirror_erasures[key] = (mirror_seq(erasure.epoch, 0), tags)
        ps.due.set(key, None)
        self.mirror_confirmed.pop(request.customer_id, None)
        self.metrics.erasures.inc()
        # The audit trail of the erasure. Its other log lines carry the
        # request id instead of the customer id, unless a Redis write fails.
        log.info(
            "customer erased",
            customer_id=request.customer_id,
            request_id=request.request_id,
            partition=p,
            offset=record.offset,
            epoch=erasure.epoch,
            tags_removed=len(tags),
        )

    def _repeat_erasure(
        self, record: InboundRecord, key: bytes, erasure: ErasureRecord, work: _BatchWork
    ) -> None:
        """Handle a redelivered erasure request: send its changes again, erase Redis again.

        The changes are still in the record only when a crash may have come
        before the broker acknowledged them; they go out byte-identical.
        """
        work.queue(key, [TagChange(**change) for change in erasure.outbox])
        if erasure.outbox:
            work.erasures[key] = (record.partition, erasure)
        tags = sorted({str(change["tag"]) for change in erasure.outbox})
        work.mirror_erasures[key] = (mirror_seq(erasure.epoch, 0), tags)
        log.info(
            "erasure request already applied, skipped",
            request_id=erasure.request_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            changes_resent=len(erasure.outbox),
        )

    def _erasable_state(self, p: int, key: bytes, work: _BatchWork) -> CustomerState | None:
        """Return the customer's current state, from this batch or the table, or None."""
        state = work.states.get(p, {}).get(key)
        if state is not None or key in work.erased:
            return state
        raw = self.customers.get(key)
        if raw is None:
            return None
        state = decode_state(raw)
        self.engine.start_batch(state)
        return state

    def _erasure_record(self, key: bytes, work: _BatchWork) -> ErasureRecord | None:
        written = work.erasures.get(key)
        if written is not None:
            return written[1]
        raw = self.erasures.get(key)
        return None if raw is None else ErasureRecord.decode(raw)

    def _applied_before_erasure(self, record: InboundRecord, key: bytes, work: _BatchWork) -> bool:
        """Return True for a record the customer's erased state had applied (a redelivery)."""
        if key in work.states.get(record.partition, {}):
            return False
        if key not in work.erased and self.customers.get(key) is not None:
            return False
        erasure = self._erasure_record(key, work)
        return erasure is not None and erasure.covers(record.topic, record.partition, record.offset)

    def _new_state(self, key: bytes, customer_id: str, work: _BatchWork) -> CustomerState:
        """Return a new state, in the epoch after the customer's last erasure if it has one."""
        erasure = self._erasure_record(key, work)
        if erasure is None:
            return self.engine.new_state(customer_id)
        state = self.engine.new_state(customer_id, epoch=erasure.epoch)
        # Positions read before the erasure stay applied, so that their
        # redelivery is a duplicate for the new state too.
        erasure_prefix = position_key(self.settings.erasure_topic, 0).rpartition(":")[0] + ":"
        state.applied = {
            name: offset
            for name, offset in erasure.positions.items()
            if not name.startswith(erasure_prefix)
        }
        # The erasure left Redis empty for the customer, at this epoch's fence.
        state.mirrored_seq = mirror_seq(erasure.epoch, 0)
        return state

    def _write_erasures(self, work: _BatchWork) -> None:
        for key in work.erased:
            p = partition_for(key, self.settings.partitions)
            if key in work.states.get(p, {}):
                continue
            # Deleting a table key writes a tombstone to its changelog.
            # faust-streaming 0.15 sends the tombstone before it looks the
            # key up, so only a stored key is deleted.
            if self.customers.get(key) is not None:
                del self.customers[key]
        for key, (_p, erasure) in work.erasures.items():
            self.erasures[key] = erasure.encode()

    def _settle_erasures(self, erasures: dict[bytes, tuple[int, ErasureRecord]]) -> None:
        """Drop the changes of erasures records once the broker has acknowledged them."""
        for key, (_p, erasure) in erasures.items():
            if erasure.outbox:
                erasure.outbox = []
                self.erasures[key] = erasure.encode()

    async def _recover_erasures(
        self, partitions: set[int], resent: list[Awaitable[Any]]
    ) -> dict[bytes, tuple[int, ErasureRecord]]:
        """Send unacknowledged erasure changes again and repeat recent Redis erasures.

        Appends the sends to `resent` and returns the records to settle once
        they are acknowledged. Redis erasures are repeated for customers
        erased within the seq key's lifetime that have no state since,
        because a crash may have come before Redis confirmed them. A repeat
        that finds the fence in place changes nothing.
        """
        unsettled: dict[bytes, tuple[int, ErasureRecord]] = {}
        cutoff = self.wall_now() - SEQ_TTL_MS
        for index, key in enumerate(list(self.erasures.keys())):
            if index % _CHUNK == 0 and index:
                await asyncio.sleep(0)
            p = partition_for(key, self.settings.partitions)
            raw = self.erasures.get(key) if p in partitions else None
            if raw is None:
                continue
            erasure = ErasureRecord.decode(raw)
            if erasure.outbox:
                for change in erasure.outbox:
                    resent.append(
                        self.send(self.settings.tag_change_topic, key, encode_outbox(change))
                    )
                unsettled[key] = (p, erasure)
            recent = erasure.erased_at >= cutoff
            if recent and self.mirror_erase is not None and self.customers.get(key) is None:
                tags = sorted({str(change["tag"]) for change in erasure.outbox})
                self.mirror_erase(key.decode(), mirror_seq(erasure.epoch, 0), tags)
        return unsettled


def mirror_seq_of(state: CustomerState) -> int:
    """Return the `mirror_seq` of the customer's last change."""
    return mirror_seq(state.epoch, state.seq)


def encode_outbox(change: dict[str, Any]) -> bytes:
    """Encode a change kept in an outbox exactly as it was first published."""
    return encode_tag_change(TagChange(**change))
