"""Train a zstd dictionary for customer states from the built-in simulator's shoppers.

The worker compresses each stored state with a dictionary that ships with
the package (rules/state.py). This command makes such a dictionary: it runs
simulated shoppers through the worker's `Processor` in this process, as the
worker would in replay mode, collects the JSON of every state written, and
trains a dictionary on it. A shipped dictionary never changes, because
states written with it must stay readable, so a new one needs a new file
name and id in rules/state.py.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson
import zstandard
from prometheus_client import CollectorRegistry

from tagger.rules.rulebook import load_rulebook
from tagger.rules.state import CustomerState, state_to_json
from tagger.streams import processor as processor_module
from tagger.streams.config import Settings
from tagger.streams.metrics import TaggerMetrics
from tagger.streams.partitioning import partition_for
from tagger.streams.processor import InboundRecord, Processor
from tagger.streams.simulator import simulate

__all__ = ["collect_states", "state_dictionary"]

_PARTITIONS = 8
_BATCH_PER_PARTITION = 125


def collect_states(seeds: list[int], customers: int) -> list[bytes]:
    """Return the JSON of every state the processor writes for the simulated shoppers."""
    written: list[bytes] = []
    original: Callable[[CustomerState], bytes] = processor_module.encode_state

    def recording(state: CustomerState) -> bytes:
        # Stored uncompressed, which decode_state reads too, so that the
        # command runs before any dictionary exists.
        encoded = state_to_json(state)
        written.append(encoded)
        return encoded

    processor_module.encode_state = recording
    try:
        for seed in seeds:
            asyncio.run(_replay(simulate(seed=seed, customers=customers)))
    finally:
        processor_module.encode_state = original
    return written


async def _replay(events: list[dict[str, Any]]) -> None:
    settings = Settings().with_changes(clock_mode="replay", partitions=_PARTITIONS)
    partitions: dict[int, list[InboundRecord]] = {p: [] for p in range(_PARTITIONS)}
    for event in events:
        key = str(event["customer_id"]).encode()
        p = partition_for(key, _PARTITIONS)
        records = partitions[p]
        records.append(
            InboundRecord(
                topic=settings.input_topics[0],
                partition=p,
                offset=len(records),
                key=key,
                value=orjson.dumps(event),
            )
        )

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        return None

    processor = Processor(
        settings=settings,
        rulebook=load_rulebook(settings.rulebook_path),
        customers={},
        partitions={},
        send=send,
        metrics=TaggerMetrics.create(CollectorRegistry()),
    )
    await processor.assign(range(_PARTITIONS))
    start = 0
    longest = max(len(records) for records in partitions.values())
    while start < longest:
        batch = [
            record
            for records in partitions.values()
            for record in records[start : start + _BATCH_PER_PARTITION]
        ]
        await processor.handle_batch(batch)
        start += _BATCH_PER_PARTITION


@click.command("state-dictionary")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="File to write.")
@click.option(
    "--dict-id",
    type=click.IntRange(1),
    required=True,
    help="Dictionary id, recorded in each compressed state.",
)
@click.option("--size", type=click.IntRange(1024), default=8192, show_default=True)
@click.option("--customers", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--seeds", default="1,2,3", show_default=True, help="Simulator seeds.")
def state_dictionary(output: Path, dict_id: int, size: int, customers: int, seeds: str) -> None:
    """Train a state dictionary on simulated shoppers' states and write it to OUTPUT."""
    samples = collect_states([int(seed) for seed in seeds.split(",")], customers)
    click.echo(
        f"states written: {len(samples)}, JSON mean {statistics.mean(map(len, samples)):.0f} B"
    )
    dictionary = zstandard.train_dictionary(size, samples, dict_id=dict_id)
    compressor = zstandard.ZstdCompressor(level=3, dict_data=dictionary)
    sizes = sorted(len(compressor.compress(sample)) for sample in samples)
    click.echo(
        f"compressed with it: mean {statistics.mean(sizes):.0f} B, "
        f"p95 {sizes[int(len(sizes) * 0.95)]} B"
    )
    output.write_bytes(dictionary.as_bytes())
    click.echo(f"dictionary written: {output} ({len(dictionary.as_bytes())} B, id {dict_id})")
