"""The bulk changelog reader, on a real broker: what it applies, where it stops, what it leaves.

Records are written to a two-partition topic with kafka-python, then read
into a stand-in for Faust's memory store: the reader touches only its
`data` and `_key_partition` dicts. The end-to-end recovery test
(tests/e2e/test_recovery.py) checks a whole worker restored this way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import faust
import pytest
from faust.types import TP

from tagger.streams.bulk_recovery import BulkReader, bulk_readable
from tests.streams.topic_data import Records, fill_topic


@dataclass
class _Store:
    data: dict[bytes, bytes] = field(default_factory=dict)
    _key_partition: dict[bytes, int] = field(default_factory=dict)


_RECORDS: Records = {
    0: [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"c", b"1"), (b"b", None), (b"d", b"1")],
    1: [(b"x", b"1"), (b"y", b"1"), (b"x", None), (b"x", b"3")],
}


@pytest.fixture
def changelog(kafka_bootstrap: str, namespace: str) -> str:
    topic = f"{namespace}-bulk-changelog"
    fill_topic(kafka_bootstrap, topic, 2, _RECORDS)
    return topic


def _app(kafka_bootstrap: str, namespace: str) -> faust.App:
    first_server = kafka_bootstrap.split(",", maxsplit=1)[0]
    return faust.App(f"{namespace}-bulk", broker=f"kafka://{first_server}")


def _replay(records: list[tuple[bytes, bytes | None]], upto: int) -> dict[bytes, bytes]:
    """The table the records at offsets 0..upto make, applied one by one."""
    table: dict[bytes, bytes] = {}
    for key, value in records[: upto + 1]:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def _read(
    app: faust.App,
    stores: dict[TP, _Store],
    ends: dict[TP, int],
    offsets: dict[TP, int],
    *,
    stop_after_first_records: bool = False,
    max_records_per_poll: int = 10_000,
) -> BulkReader:
    reader: BulkReader

    def clock() -> float:
        # Time passes only once records were applied, so the deadline ends
        # the read after the first poll that returned any.
        return 10.0 if stop_after_first_records and reader.applied else 0.0

    reader = BulkReader(
        app,
        stores,  # type: ignore[arg-type]
        ends,
        offsets,
        clock=clock,
        max_records_per_poll=max_records_per_poll,
    )
    asyncio.run(reader.run(deadline=5.0))
    return reader


def test_bulk_read_stops_at_end(kafka_bootstrap: str, namespace: str, changelog: str) -> None:
    first, second = TP(changelog, 0), TP(changelog, 1)
    store = _Store()
    # Partition 0 is read up to offset 4 (the tombstone of b"b"), partition 1
    # from after offset 0 to its end.
    offsets = {first: -1, second: 0}
    store.data[b"x"] = b"1"
    store._key_partition[b"x"] = 1
    ends = {first: 4, second: 3}

    reader = _read(_app(kafka_bootstrap, namespace), {first: store, second: store}, ends, offsets)

    expected = _replay(_RECORDS[0], 4) | _replay(_RECORDS[1], 3)
    assert store.data == expected
    assert store._key_partition == {b"a": 0, b"c": 0, b"y": 1, b"x": 1}
    assert offsets == {first: 4, second: 3}
    assert reader.applied == 5 + 3
    # Offset 5 (b"d") came after the end and was left for Faust's reader.
    assert b"d" not in store.data


def test_stopped_read_resumes_from_offsets(
    kafka_bootstrap: str, namespace: str, changelog: str
) -> None:
    app = _app(kafka_bootstrap, namespace)
    tp = TP(changelog, 0)
    end = len(_RECORDS[0]) - 1
    store = _Store()
    offsets = {tp: -1}

    # The read ends after one poll of at most two records.
    first = _read(
        app, {tp: store}, {tp: end}, offsets, stop_after_first_records=True, max_records_per_poll=2
    )

    assert 0 < first.applied <= 2
    stopped_at = offsets[tp]
    assert stopped_at == first.applied - 1
    assert store.data == _replay(_RECORDS[0], stopped_at)

    rest = _read(app, {tp: store}, {tp: end}, offsets)

    assert first.applied + rest.applied == end + 1
    assert offsets[tp] == end
    assert store.data == _replay(_RECORDS[0], end)


def test_bulk_readable_needs_raw_memory_table(namespace: str) -> None:
    app = faust.App(f"{namespace}-qualify", broker="kafka://127.0.0.1:9", store="memory://")
    raw = app.Table("raw", key_type=bytes, value_type=bytes)
    json_values = app.Table("json_values", key_type=bytes)
    assert bulk_readable(raw)
    assert not bulk_readable(json_values)
    assert not bulk_readable(None)


def test_new_rebalance_stops_bulk_read(
    kafka_bootstrap: str, namespace: str, changelog: str
) -> None:
    tp = TP(changelog, 0)
    store = _Store()
    offsets = {tp: -1}
    reader = BulkReader(
        _app(kafka_bootstrap, namespace),
        {tp: store},  # type: ignore[dict-item]
        {tp: len(_RECORDS[0]) - 1},
        offsets,
        rebalancing=lambda: True,
    )

    asyncio.run(reader.run(deadline=1e18))

    # Faust dropped the revoked partitions' offsets: nothing may be written back.
    assert reader.interrupted
    assert reader.applied == 0
    assert store.data == {}
    assert offsets == {tp: -1}
