"""The hard cap on a customer's stored state: a state over it is trimmed, counted and logged."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import orjson
import pytest
import structlog
from prometheus_client import CollectorRegistry

from tagger.errors import ConfigError
from tagger.rules.rulebook import load_rulebook
from tagger.rules.state import decode_state
from tagger.streams.config import Settings
from tagger.streams.metrics import TaggerMetrics
from tagger.streams.partitioning import partition_for
from tagger.streams.processor import InboundRecord, Processor

_BASE = 1_709_251_200_000
_MINUTE = 60_000
_CAP = 1_024
_SETTINGS = Settings(partitions=2, clock_mode="replay", max_state_bytes=_CAP)
_KEY = b"heavy"
_BATCH = 50
# A batch's tag changes stay in the state's outbox, which is never trimmed.
# A last batch of 50 of these views leaves up to 32 changes there, and the
# state then ends over the cap in some runs, by a few bytes that vary with
# the wall-clock times in the outbox. So the last batch has 10 views only.
_VIEWS = 610


def _views(count: int) -> list[InboundRecord]:
    """Page views over many categories, three of each within minutes, so states grow.

    Category names are hex digests, which compress poorly, so that the
    compressed state stays over the cap once the dedup memory is gone.
    """
    records = []
    for offset in range(count):
        name = hashlib.sha256(str(offset // 3).encode()).hexdigest()[:16]
        event = {
            "event_id": f"view-{offset}",
            "customer_id": "heavy",
            "type": "page_view",
            "ts": _BASE + offset * _MINUTE,
            "category": f"category.{name}",
        }
        records.append(
            InboundRecord(
                topic=_SETTINGS.input_topics[0],
                partition=partition_for(_KEY, _SETTINGS.partitions),
                offset=offset,
                key=_KEY,
                value=orjson.dumps(event),
            )
        )
    return records


async def _run(
    settings: Settings, records: list[InboundRecord], batch: int = _BATCH
) -> tuple[dict[bytes, bytes], Any]:
    customers: dict[bytes, bytes] = {}

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        return None

    metrics = TaggerMetrics.create(CollectorRegistry())
    processor = Processor(
        settings=settings,
        rulebook=load_rulebook(None),
        customers=customers,
        partitions={},
        send=send,
        metrics=metrics,
    )
    await processor.assign(range(settings.partitions))
    for start in range(0, len(records), batch):
        await processor.handle_batch(records[start : start + batch])
    return customers, metrics


async def test_state_over_cap_is_trimmed_and_logged() -> None:
    records = _views(_VIEWS)
    uncapped, _ = await _run(dataclasses.replace(_SETTINGS, max_state_bytes=10**6), records)
    assert len(uncapped[_KEY]) > _CAP

    with structlog.testing.capture_logs() as logs:
        customers, metrics = await _run(_SETTINGS, records)

    state = decode_state(customers[_KEY])
    assert len(customers[_KEY]) <= _CAP
    assert metrics.states_trimmed._value.get() > 0
    trims = [
        entry for entry in logs if entry["event"] == "customer state over the size cap trimmed"
    ]
    assert trims
    assert trims[0]["customer_id"] == "heavy"
    assert trims[0]["bytes_before"] > _CAP
    assert any(trim["per_values_dropped"] > 0 for trim in trims)
    held = {tag.partition(":")[2] for tag in state.tags if tag.startswith("browsing_interest:")}
    assert held
    assert held <= set(state.per["category"])


async def test_state_cap_unreachable_logged_as_error() -> None:
    # Batches of 100 views fill the outbox with more changes than the cap
    # leaves room for, once every tracked value without a held tag is gone.
    with structlog.testing.capture_logs() as logs:
        await _run(_SETTINGS, _views(_VIEWS), batch=100)

    errors = [
        entry
        for entry in logs
        if entry["event"] == "customer state still over the size cap after trimming"
    ]
    assert errors
    assert errors[0]["log_level"] == "error"
    assert errors[0]["customer_id"] == "heavy"
    assert errors[0]["bytes_after"] > _CAP


def test_cap_below_minimum_rejected() -> None:
    with pytest.raises(ConfigError, match="TAGGER_MAX_STATE_BYTES"):
        Settings(max_state_bytes=100).validated()
