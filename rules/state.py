"""Per-customer state: what the engine keeps between events, and its compact JSON encoding."""

from __future__ import annotations

import functools
import threading
import zlib
from dataclasses import dataclass, field, fields
from decimal import Decimal
from importlib.resources import files
from typing import Any, Final

import orjson
import zstandard

from tagger.schemas.events import AttributeValue, Event

__all__ = [
    "COMPRESS_ABOVE_BYTES",
    "READABLE_STATE_VERSIONS",
    "STATE_DICTIONARY_FILE",
    "STATE_DICTIONARY_ID",
    "STATE_VERSION",
    "CustomerState",
    "Scope",
    "ScopeCache",
    "decode_state",
    "encode_state",
    "state_json",
    "state_to_json",
]

# Written into every encoded state; decode_state reads each version ever written.
# Version 2 added pending events and cooldown times, which version 1 workers would
# silently drop, so they reject it instead. Version 3 states may be compressed.
STATE_VERSION: Final = 3
READABLE_STATE_VERSIONS: Final = (1, 2, 3)
# An encoded state longer than this is stored compressed with zstd and a
# dictionary, behind a marker byte that no JSON text starts with. On the
# benchmark input a state of about 1.5 KB took 3.6 µs to compress and
# shrank to about 290 bytes. Most of a busy customer's state is the outbox of
# tag changes, whose keys, rule texts and labels the dictionary holds.
COMPRESS_ABOVE_BYTES: Final = 128
_ZSTD: Final = b"\x02"
_ZSTD_LEVEL: Final = 3
# The dictionary ships with the package and never changes: states written
# with it must stay readable. A new dictionary gets a new file and id, and
# decode_state keeps reading the old ones.
STATE_DICTIONARY_FILE: Final = "state-1.zdict"
STATE_DICTIONARY_ID: Final = 20261205
# Earlier workers deflated states above 960 bytes behind this marker.
_DEFLATED: Final = b"\x01"


@functools.cache
def _dictionary() -> bytes:
    """Return the shipped state dictionary, checked against the id states are written with."""
    raw = files("tagger.rules").joinpath(STATE_DICTIONARY_FILE).read_bytes()
    found = zstandard.ZstdCompressionDict(raw).dict_id()
    if found != STATE_DICTIONARY_ID:
        raise RuntimeError(
            f"state dictionary {STATE_DICTIONARY_FILE} has id {found}, expected "
            f"{STATE_DICTIONARY_ID}: reinstall the package"
        )
    return raw


# zstd compressors and decompressors must not be shared between threads, so
# each thread that encodes or decodes states gets its own pair.
_local = threading.local()


def _codecs() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    pair: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None = getattr(
        _local, "codecs", None
    )
    if pair is None:
        dictionary = zstandard.ZstdCompressionDict(_dictionary())
        pair = (
            zstandard.ZstdCompressor(level=_ZSTD_LEVEL, dict_data=dictionary),
            zstandard.ZstdDecompressor(dict_data=dictionary),
        )
        _local.codecs = pair
    return pair


@dataclass
class ScopeCache:
    """Results of a scope's `per` rules at `time`, valid until `due` or the scope's next event.

    `matches` maps the id of each rule whose condition is true to its
    (rank, time of the newest counted event). `staying` does the same for
    rules with `leave_when` whose `when` and `leave_when` are both false, so
    that a value already tagged keeps its tag. Kept in memory only: it is not
    encoded, and a decoded state recomputes it.
    """

    time: int
    due: int | None
    matches: dict[str, tuple[int | Decimal, int]]
    staying: dict[str, tuple[int | Decimal, int]] = field(default_factory=dict)


@dataclass
class Scope:
    """Aggregates of one customer's events, or of those with one value of a `per` field.

    `series` maps a series key (an event type, `activity` or `spend`) to
    `[time_ms, value]` entries in ascending time. `counts` and `last` map an
    event type to its lifetime count and last-seen time. `newest` is the time
    of the newest event folded in.
    """

    series: dict[str, list[list[int]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    newest: int | None = None
    cache: ScopeCache | None = field(default=None, compare=False, repr=False)
    # --- Aggregates of field metrics and sequences (written by rules/aggregates.py) ---
    # count_distinct key → value as text → times it was seen: the newest at
    # or before the last evaluation, then any later ones.
    distinct: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # last(...) key → [time, value] of the newest event that had the field.
    latest: dict[str, list[Any]] = field(default_factory=dict)
    # Sequence key → [time of the latest first event or None, ascending times
    # of second events at or after it].
    sequences: dict[str, list[Any]] = field(default_factory=dict)
    # --- end of field metrics and sequences ---


@dataclass
class CustomerState:
    """Everything the engine keeps about one customer. Times are epoch ms, UTC.

    The worker owns `mirrored_seq` and `pseq`; the engine owns the rest.
    """

    customer_id: str
    epoch: int = 0
    seq: int = 0
    clock: int = 0
    tags: dict[str, int] = field(default_factory=dict)
    due: int | None = None
    applied: dict[str, int] = field(default_factory=dict)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    mirrored_seq: int = 0
    pseq: int = 0
    rulebook_version: str = ""
    # Dedup memory: (event_id hash, wall time recorded) pairs, oldest first.
    recent: list[tuple[str, int]] = field(default_factory=list)
    totals: Scope = field(default_factory=Scope)
    # `per` field → parameter value → that value's aggregates.
    per: dict[str, dict[str, Scope]] = field(default_factory=dict)
    # Cart: product id → time it was first added.
    cart: dict[str, int] = field(default_factory=dict)
    last_purchase: int | None = None
    # Customer attribute → (value, event time it was set at).
    attributes: dict[str, tuple[AttributeValue, int]] = field(default_factory=dict)
    # Set by start_batch: the outbox is cleared before the next change is added,
    # so that a redelivered event can still re-emit the changes it recorded.
    outbox_stale: bool = False
    # Events within the allowed lateness, pending until the watermark reaches them:
    # (time to apply at, event), ascending, in arrival order at equal times.
    pending: list[tuple[int, Event]] = field(default_factory=list)
    # Tag → time it was last added, for rules with a cooldown, while it runs.
    last_added: dict[str, int] = field(default_factory=dict)


def encode_state(state: CustomerState) -> bytes:
    """Serialise a state for the table: `state_to_json`, compressed above `COMPRESS_ABOVE_BYTES`."""
    encoded = state_to_json(state)
    if len(encoded) > COMPRESS_ABOVE_BYTES:
        compressed: bytes = _codecs()[0].compress(encoded)
        return _ZSTD + compressed
    # orjson 3.13 returns bytes objects that keep about 4 KiB allocated
    # whatever their length. Tables keep one per customer, so it is copied
    # to its own size.
    return bytes(memoryview(encoded))


def state_to_json(state: CustomerState) -> bytes:
    """Serialise a state as compact JSON; fields holding their default value are left out."""
    data: dict[str, Any] = {"v": STATE_VERSION, "c": state.customer_id}
    optional: dict[str, Any] = {
        "e": state.epoch,
        "s": state.seq,
        "k": state.clock,
        "t": state.tags,
        "d": state.due,
        "a": state.applied,
        "o": state.outbox,
        "m": state.mirrored_seq,
        "p": state.pseq,
        "r": state.rulebook_version,
        "h": "".join(digest for digest, _ in state.recent),
        "ht": _delta_encode([recorded for _, recorded in state.recent]),
        "g": _encode_scope(state.totals),
        "q": {
            name: {value: _encode_scope(scope) for value, scope in scopes.items()}
            for name, scopes in state.per.items()
        },
        "ct": state.cart,
        "lp": state.last_purchase,
        "at": {name: list(entry) for name, entry in state.attributes.items()},
        "os": state.outbox_stale,
        "pe": [_encode_pending(time, event) for time, event in state.pending],
        "la": state.last_added,
    }
    for key, value in optional.items():
        if value:
            data[key] = value
    # Annotated, because mypyc compiles this module in pip's build environment,
    # where orjson and zstandard are not installed and so have no types.
    encoded: bytes = orjson.dumps(data)
    return encoded


def state_json(raw: bytes) -> bytes:
    """Return the JSON text of a state as `encode_state` stored it, decompressed if it was."""
    marker = raw[:1]
    if marker == _ZSTD:
        return bytes(_codecs()[1].decompress(raw[1:]))
    if marker == _DEFLATED:
        return zlib.decompress(raw[1:], -zlib.MAX_WBITS)
    return raw


def decode_state(raw: bytes) -> CustomerState:
    """Parse a state written by `encode_state` of this or any earlier state version."""
    data = orjson.loads(state_json(raw))
    version = data.get("v") if isinstance(data, dict) else None
    if version not in READABLE_STATE_VERSIONS:
        raise ValueError(
            f"unknown customer state version {version!r}: this worker reads versions "
            f"{', '.join(map(str, READABLE_STATE_VERSIONS))}; upgrade the worker"
        )

    return CustomerState(
        customer_id=data["c"],
        epoch=data.get("e", 0),
        seq=data.get("s", 0),
        clock=data.get("k", 0),
        tags=data.get("t", {}),
        due=data.get("d"),
        applied=data.get("a", {}),
        outbox=data.get("o", []),
        mirrored_seq=data.get("m", 0),
        pseq=data.get("p", 0),
        rulebook_version=data.get("r", ""),
        recent=_decode_recent(data.get("h", ""), data.get("ht", [])),
        totals=_decode_scope(data.get("g", {})),
        per={
            name: {value: _decode_scope(scope) for value, scope in scopes.items()}
            for name, scopes in data.get("q", {}).items()
        },
        cart=data.get("ct", {}),
        last_purchase=data.get("lp"),
        attributes={name: (entry[0], entry[1]) for name, entry in data.get("at", {}).items()},
        outbox_stale=data.get("os", False),
        pending=[_decode_pending(entry, data["c"]) for entry in data.get("pe", [])],
        last_added=data.get("la", {}),
    )


_EVENT_FIELDS: Final = tuple(item.name for item in fields(Event) if item.name != "customer_id")


def _encode_pending(time: int, event: Event) -> list[Any]:
    # The event's fields without customer_id, which the state has, and
    # without None values; the apply time only when it is not the event time.
    encoded = {}
    for name in _EVENT_FIELDS:
        value = getattr(event, name)
        if value is not None:
            encoded[name] = dict(value) if name == "attributes" else value
    return [encoded] if time == event.ts else [encoded, time]


def _decode_pending(entry: list[Any], customer_id: str) -> tuple[int, Event]:
    event = Event(customer_id=customer_id, **entry[0])
    time = entry[1] if len(entry) > 1 else event.ts
    return time, event


def _delta_encode(times: list[int]) -> list[int]:
    deltas: list[int] = []
    previous = 0
    for time in times:
        deltas.append(time - previous)
        previous = time
    return deltas


def _decode_recent(digests: str, deltas: list[int]) -> list[tuple[str, int]]:
    # Digests are fixed-width hex, concatenated.
    width = len(digests) // len(deltas) if deltas else 0
    recent: list[tuple[str, int]] = []
    time = 0
    for index, delta in enumerate(deltas):
        time += delta
        recent.append((digests[index * width : (index + 1) * width], time))
    return recent


def _encode_scope(scope: Scope) -> dict[str, Any]:
    # Series are delta-coded because they are most of a busy customer's state.
    encoded: dict[str, Any] = {}
    if scope.series:
        encoded["s"] = {key: _encode_series(entries) for key, entries in scope.series.items()}
    if scope.counts:
        encoded["n"] = scope.counts
    if scope.last:
        encoded["l"] = scope.last
    # `newest` is left out when the series or last times already show it.
    if scope.newest is not None and scope.newest != _newest_recorded(scope):
        encoded["w"] = scope.newest
    # Field metrics and sequences; a state written before they existed has
    # none of these keys and decodes with them empty.
    if scope.distinct:
        encoded["dv"] = scope.distinct
    if scope.latest:
        encoded["lv"] = scope.latest
    if scope.sequences:
        encoded["sq"] = scope.sequences
    return encoded


def _newest_recorded(scope: Scope) -> int | None:
    times = [entries[-1][0] for entries in scope.series.values() if entries]
    times.extend(scope.last.values())
    return max(times, default=None)


def _encode_series(entries: list[list[int]]) -> list[int | list[int]]:
    # An entry is its time delta alone when its value is 1, the usual case,
    # else [time delta, value].
    flat: list[int | list[int]] = []
    previous = 0
    for time, value in entries:
        flat.append(time - previous if value == 1 else [time - previous, value])
        previous = time
    return flat


def _decode_scope(data: dict[str, Any]) -> Scope:
    scope = Scope(
        series={key: _decode_series(flat) for key, flat in data.get("s", {}).items()},
        counts=data.get("n", {}),
        last=data.get("l", {}),
        distinct=data.get("dv", {}),
        latest=data.get("lv", {}),
        sequences=data.get("sq", {}),
    )
    scope.newest = data.get("w", _newest_recorded(scope))
    return scope


def _decode_series(flat: list[int | list[int]]) -> list[list[int]]:
    entries: list[list[int]] = []
    time = 0
    for item in flat:
        delta, value = (item, 1) if isinstance(item, int) else (item[0], item[1])
        time += delta
        entries.append([time, value])
    return entries
