"""An uninterrupted run of the worker's own processor, in this process, over a topic's records.

Failure tests compare what crashed and restarted workers published with
what one run that never stopped publishes. The run reads the input topic
as the worker would, partition by partition in offset order, and feeds the
same Processor the worker uses, with dicts for tables and a list for the
tag-change topic. No broker or Redis is written.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from tagger.rules.rulebook import load_rulebook
from tagger.streams.config import Settings
from tagger.streams.customers_changelog import ChangelogReader
from tagger.streams.metrics import TaggerMetrics
from tagger.streams.processor import InboundRecord, Processor
from tagger.streams.replay import ReplayReport, replay_file
from tagger.streams.topics import create_topics
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.helpers import (
    assert_changes_in_sequence,
    fold_changes,
    mirror_members,
    mirror_tags,
    read_topic,
)
from tests.e2e.test_real_data import _rulebook_in
from tests.reference import reference_rees46

_HOUR_MS = 3_600_000


def replay_backlog(
    replay_settings: Settings, sample_data: Path, tmp_path: Path
) -> tuple[Settings, Path, int]:
    """Replay the REES46 sample in USD before any worker runs, for workers with small batches.

    Returns the workers' settings (batches of 400 records, which give faults
    many batches to hit inside one replay), the sample's path, and the end
    clock of the replay.
    """
    path = sample_data / "rees46_multicat_2019-10_head.csv"
    settings = replay_settings.with_changes(
        rulebook_path=_rulebook_in("USD", tmp_path), batch_size=400
    )
    create_topics(settings)
    report = replay_file(
        path,
        settings,
        currency="USD",
        end_clock="auto",
        end_clock_span_ms=_HOUR_MS,
        progress=False,
    )
    assert report.end_clock is not None
    return settings, path, report.end_clock


def wait_caught_up(worker: WorkerProcess, settings: Settings, end_clock: int) -> None:
    """Wait until `worker` has consumed every partition up to `end_clock`."""
    worker.wait_for(
        lambda status: caught_up_to(status, end_clock=end_clock, partitions=settings.partitions),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up to the end clock",
    )


def input_records(settings: Settings) -> list[InboundRecord]:
    """Return every record of the input topics, each partition in offset order."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        enable_auto_commit=False,
        consumer_timeout_ms=1500,
    )
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in settings.input_topics
            for p in sorted(consumer.partitions_for_topic(topic) or set())
        ]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        return [
            InboundRecord(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value,
            )
            for message in consumer
        ]
    finally:
        consumer.close()


def uninterrupted_changes(settings: Settings, records: list[InboundRecord]) -> list[dict[str, Any]]:
    """Process `records` in batches of the worker's size; return the tag changes published."""
    published: list[dict[str, Any]] = []

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        if topic == settings.tag_change_topic:
            published.append(orjson.loads(value))

    processor = Processor(
        settings=settings,
        rulebook=load_rulebook(settings.rulebook_path),
        customers={},
        partitions={},
        send=send,
        metrics=TaggerMetrics.create(CollectorRegistry()),
    )

    async def run() -> None:
        await processor.assign(range(settings.partitions))
        for start in range(0, len(records), settings.batch_size):
            await processor.handle_batch(records[start : start + settings.batch_size])

    asyncio.run(run())
    return published


def without_emitted_at(change: dict[str, Any]) -> bytes:
    """Return a change's JSON without its wall-clock field, for comparing runs."""
    return orjson.dumps(
        {name: value for name, value in change.items() if name != "emitted_at"},
        option=orjson.OPT_SORT_KEYS,
    )


def assert_same_changes(
    published: list[dict[str, Any]],
    expected: list[dict[str, Any]],
    context: object,
    dump_to: Path | None = None,
) -> None:
    """Assert two runs published the same changes, `emitted_at` aside; show what differs.

    With `dump_to`, a mismatch also writes both runs' changes there as JSON lines.
    """
    mine = {without_emitted_at(change) for change in published}
    theirs = {without_emitted_at(change) for change in expected}
    if dump_to is not None and (mine != theirs or len(published) != len(expected)):
        (dump_to / "published.jsonl").write_bytes(b"\n".join(sorted(mine)))
        (dump_to / "uninterrupted.jsonl").write_bytes(b"\n".join(sorted(theirs)))
    extra = sorted(mine - theirs)[:5]
    missing = sorted(theirs - mine)[:5]
    assert mine == theirs, (
        f"{context}: {len(mine - theirs)} extra, {len(theirs - mine)} missing; "
        f"extra: {extra}; missing: {missing}"
    )
    assert len(published) == len(expected), context


class BackgroundReplay:
    """A REES46-style file replayed into the input topic by a thread, at `speed`."""

    def __init__(self, path: Path, settings: Settings, *, currency: str, speed: float) -> None:
        self.reports: list[ReplayReport] = []
        self._thread = threading.Thread(
            target=lambda: self.reports.append(
                replay_file(
                    path,
                    settings,
                    currency=currency,
                    end_clock="auto",
                    end_clock_span_ms=_HOUR_MS,
                    speed=speed,
                    progress=False,
                )
            ),
            daemon=True,
        )
        self._thread.start()

    def end_clock(self, timeout_s: float) -> int:
        """Wait for the replay to finish; return the end clock it sent."""
        self._thread.join(timeout=timeout_s)
        assert self.reports, f"the replay did not finish within {timeout_s} s"
        end_clock = self.reports[0].end_clock
        assert end_clock is not None
        return end_clock


def distinct_changes(settings: Settings) -> list[dict[str, Any]]:
    """Return each published change once, after checking that every repeat is byte-identical."""
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for _, value in read_topic(settings, settings.tag_change_topic):
        by_id[orjson.loads(value)["change_id"]].add(value)
    differing = [change_id for change_id, values in by_id.items() if len(values) > 1]
    assert not differing, f"changes repeated with other bytes: {differing[:5]}"
    return [orjson.loads(next(iter(values))) for values in by_id.values()]


def assert_same_as_uninterrupted(
    settings: Settings, path: Path, end_clock: int, context: object, dump_to: Path
) -> None:
    """Assert the REES46 outputs of a disturbed run equal an uninterrupted run and the reference.

    Checks the published changes (repeats byte-identical, first appearances
    in sequence), the Redis hashes and sets, and the tags stored in the
    customers changelog.
    """
    # A repeat is byte-identical to the first emission, emitted_at included.
    changes = distinct_changes(settings)
    assert_changes_in_sequence(settings)

    expected = uninterrupted_changes(settings, input_records(settings))
    assert_same_changes(changes, expected, context, dump_to=dump_to)

    tags = {c: t for c, t in reference_rees46(path, end_clock).items() if t}
    assert fold_changes(changes) == tags
    assert mirror_tags(settings) == tags
    assert mirror_members(settings) == tags
    with ChangelogReader(settings) as changelog:
        changelog.read_to_end()
        stored = {c: kept.tags for c, kept in changelog.customers.items() if kept.tags}
    assert stored == tags
