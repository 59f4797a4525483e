"""The Redis mirror: the Lua script, the background writer and the read helpers, on real Redis."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from structlog.testing import capture_logs

from tagger.streams.config import Settings
from tagger.streams.embedded import EmbeddedRedis
from tagger.streams.mirror import (
    MirrorWriter,
    Outcome,
    count_members,
    read_members,
    read_rulebook,
    read_tags,
    write_rulebook,
)
from tagger.streams.mirror_lua import APPLY_SCRIPT, SEQ_TTL_MS, apply_arguments

LIFECYCLE = ("dormant", "existing", "potential")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture
def prefix(settings: Settings) -> str:
    return settings.redis_prefix


def _apply(
    client: redis.Redis, prefix: str, customer_id: str, seq: int, tags: dict[str, int]
) -> int:
    keys, args = apply_arguments(prefix, customer_id, seq, tags)
    return int(client.eval(APPLY_SCRIPT, len(keys), *keys, *args))


def _members(client: redis.Redis, prefix: str, tag: str) -> dict[str, float]:
    return dict(client.zrange(f"{prefix}tag:{tag}", 0, -1, withscores=True))


# -- the Lua script -----------------------------------------------------------


def test_apply_writes_hash_sets_and_seq(client: redis.Redis, prefix: str) -> None:
    applied = _apply(client, prefix, "c1", 1, {"existing": 1000, "active": 2000})

    assert applied == 1
    assert client.hgetall(f"{prefix}customer:c1") == {"existing": "1000", "active": "2000"}
    assert _members(client, prefix, "existing") == {"c1": 1000.0}
    assert _members(client, prefix, "active") == {"c1": 2000.0}
    assert client.get(f"{prefix}seq:c1") == "1"
    assert client.pttl(f"{prefix}seq:c1") == -1


def test_apply_twice_is_noop(client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "c1", 1, {"existing": 1000})

    again = _apply(client, prefix, "c1", 1, {"potential": 5000})

    assert again == 0
    assert read_tags(client, prefix, "c1") == {"existing": 1000}


def test_apply_ignores_stale_seq(client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "c1", 2, {"dormant": 3000})

    older = _apply(client, prefix, "c1", 1, {"existing": 1000})

    assert older == 0
    assert read_tags(client, prefix, "c1") == {"dormant": 3000}
    assert _members(client, prefix, "existing") == {}
    assert client.get(f"{prefix}seq:c1") == "2"


def test_apply_removes_dropped_tags(client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "c1", 1, {"existing": 1000, "active": 1000})

    _apply(client, prefix, "c1", 2, {"dormant": 4000, "active": 1000})

    assert read_tags(client, prefix, "c1") == {"dormant": 4000, "active": 1000}
    assert _members(client, prefix, "existing") == {}
    assert _members(client, prefix, "dormant") == {"c1": 4000.0}


def test_apply_updates_since(client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "c1", 1, {"active": 1000})

    _apply(client, prefix, "c1", 2, {"active": 7000})

    assert read_tags(client, prefix, "c1") == {"active": 7000}
    assert _members(client, prefix, "active") == {"c1": 7000.0}


def test_last_tag_removal_keeps_seq_with_ttl(client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "c1", 1, {"existing": 1000, "active": 1000})

    _apply(client, prefix, "c1", 2, {})

    assert client.exists(f"{prefix}customer:c1") == 0
    assert _members(client, prefix, "existing") == {}
    assert _members(client, prefix, "active") == {}
    assert client.get(f"{prefix}seq:c1") == "2"
    ttl_ms = client.pttl(f"{prefix}seq:c1")
    assert SEQ_TTL_MS - 60_000 < ttl_ms <= SEQ_TTL_MS
    assert sorted(client.scan_iter(f"{prefix}*")) == [f"{prefix}seq:c1"]


def test_new_tags_clear_seq_ttl(client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "c1", 1, {})

    _apply(client, prefix, "c1", 2, {"potential": 1000})

    assert client.pttl(f"{prefix}seq:c1") == -1


def test_members_newest_first(client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "a", 1, {"active": 1000})
    _apply(client, prefix, "b", 1, {"active": 3000})
    _apply(client, prefix, "c", 1, {"active": 2000})

    first = read_members(client, prefix, "active", offset=0, limit=2)
    second = read_members(client, prefix, "active", offset=2, limit=2)

    assert first == [("b", 3000), ("c", 2000)]
    assert second == [("a", 1000)]
    assert count_members(client, prefix, "active") == 3
    assert read_members(client, prefix, "active", limit=0) == []


def test_exclusive_group_never_doubled(redis_url: str, client: redis.Redis, prefix: str) -> None:
    """A reader in another connection never sees two lifecycle tags of one customer."""
    seen_doubled: list[dict[str, str]] = []
    reads = 0
    stop = threading.Event()

    def read_loop() -> None:
        nonlocal reads
        reader = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            while not stop.is_set() and reads < 100_000:
                tags = reader.hgetall(f"{prefix}customer:c1")
                reads += 1
                if sum(tag in LIFECYCLE for tag in tags) > 1:
                    seen_doubled.append(tags)
        finally:
            reader.close()

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for seq in range(1, 601):
            lifecycle = LIFECYCLE[seq % 3]
            _apply(client, prefix, "c1", seq, {lifecycle: seq, "active": 1, f"x{seq % 7}": seq})
    finally:
        stop.set()
        thread.join(timeout=10)

    assert reads > 50
    assert seen_doubled == []


def test_rulebook_round_trip(client: redis.Redis, prefix: str) -> None:
    write_rulebook(
        client,
        prefix,
        {
            "old_tag": {"group": "x", "zh": "旧", "en": "Old"},
        },
        "v1",
    )
    description = {
        "dormant": {"group": "lifecycle", "zh": "沉睡客户", "en": "Dormant"},
        "browsing_interest": {"group": "interest", "zh": "浏览兴趣：{param}", "en": "Into {param}"},
    }

    write_rulebook(client, prefix, description, "v2")
    mirrored = read_rulebook(client, prefix)

    assert mirrored["version"] == "v2"
    assert mirrored["tags"] == description


def test_rulebook_field_is_json(client: redis.Redis, prefix: str) -> None:
    write_rulebook(client, prefix, {"vip": {"group": "vip", "zh": "VIP", "en": "VIP"}}, "v1")

    raw = client.hget(f"{prefix}rulebook", "vip")

    assert raw == '{"en": "VIP", "group": "vip", "zh": "VIP"}'
    assert client.hget(f"{prefix}rulebook", "__version__") == "v1"


# -- the writer ---------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.confirmed: list[tuple[str, int]] = []
        self.outcomes: Counter[str] = Counter()

    def on_confirmed(self, customer_id: str, seq: int) -> None:
        self.confirmed.append((customer_id, seq))

    def on_outcome(self, outcome: Outcome, count: int) -> None:
        self.outcomes[outcome] += count


def _writer(settings: Settings, recorder: _Recorder) -> MirrorWriter:
    return MirrorWriter(
        settings, on_confirmed=recorder.on_confirmed, on_outcome=recorder.on_outcome
    )


async def test_writer_writes_and_confirms(
    settings: Settings, client: redis.Redis, prefix: str
) -> None:
    recorder = _Recorder()
    writer = _writer(settings, recorder)
    writer.start()

    writer.submit("c1", 1, {"existing": 1000})
    writer.submit("c2", 4, {"potential": 2000, "active": 2000})
    flushed = await writer.flush(5.0)
    await writer.stop()

    assert flushed is True
    assert read_tags(client, prefix, "c1") == {"existing": 1000}
    assert read_tags(client, prefix, "c2") == {"potential": 2000, "active": 2000}
    assert sorted(recorder.confirmed) == [("c1", 1), ("c2", 4)]
    assert recorder.outcomes == {"ok": 2}
    assert writer.pending_count == 0
    assert writer.healthy is True


async def test_writer_coalesces_per_customer(
    settings: Settings, client: redis.Redis, prefix: str
) -> None:
    recorder = _Recorder()
    writer = _writer(settings, recorder)

    writer.submit("c1", 1, {"potential": 1000})
    writer.submit("c1", 3, {"dormant": 3000})
    writer.submit("c1", 2, {"existing": 2000})
    pending = writer.pending_count
    writer.start()
    await writer.flush(5.0)
    await writer.stop()

    assert pending == 1
    assert read_tags(client, prefix, "c1") == {"dormant": 3000}
    assert recorder.confirmed == [("c1", 3)]
    assert recorder.outcomes == {"ok": 1}


async def test_writer_counts_stale(settings: Settings, client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "c1", 5, {"dormant": 5000})
    recorder = _Recorder()
    writer = _writer(settings, recorder)
    writer.start()

    writer.submit("c1", 4, {"existing": 4000})
    await writer.flush(5.0)
    await writer.stop()

    assert read_tags(client, prefix, "c1") == {"dormant": 5000}
    assert recorder.confirmed == [("c1", 4)]
    assert recorder.outcomes == {"stale": 1}


async def test_writer_reloads_flushed_script(
    settings: Settings, client: redis.Redis, prefix: str
) -> None:
    recorder = _Recorder()
    writer = _writer(settings, recorder)
    writer.start()
    writer.submit("c1", 1, {"active": 1000})
    await writer.flush(5.0)

    client.script_flush()
    writer.submit("c1", 2, {"existing": 2000})
    flushed = await writer.flush(5.0)
    await writer.stop()

    assert flushed is True
    assert read_tags(client, prefix, "c1") == {"existing": 2000}
    assert recorder.outcomes == {"ok": 2}


async def test_writer_pipelines_many_customers(
    settings: Settings, client: redis.Redis, prefix: str
) -> None:
    recorder = _Recorder()
    writer = MirrorWriter(settings, on_outcome=recorder.on_outcome, max_pipeline=50)
    writer.start()

    for number in range(1234):
        writer.submit(f"c{number}", 1, {"active": number})
    flushed = await writer.flush(10.0)
    await writer.stop()

    assert flushed is True
    assert count_members(client, prefix, "active") == 1234
    assert recorder.outcomes == {"ok": 1234}


async def test_submit_never_raises(settings: Settings) -> None:
    recorder = _Recorder()
    writer = _writer(settings, recorder)

    writer.submit("c1", 1, None)  # type: ignore[arg-type]
    await writer.stop()

    assert recorder.outcomes == {"failed": 1}
    assert writer.pending_count == 0


async def test_writer_rulebook(settings: Settings, client: redis.Redis, prefix: str) -> None:
    writer = MirrorWriter(settings)
    description = {"vip": {"group": "vip", "zh": "VIP客户", "en": "VIP"}}

    await writer.write_rulebook(description, "v9")
    await writer.stop()

    assert read_rulebook(client, prefix) == {"version": "v9", "tags": description}


async def test_writer_survives_outage(settings: Settings, embedded_redis: EmbeddedRedis) -> None:
    """Redis going away never blocks submit; queued customers converge once it is back."""
    settings = settings.with_changes(redis_url=embedded_redis.url, mirror_timeout_s=0.3)
    prefix = settings.redis_prefix
    recorder = _Recorder()
    writer = _writer(settings, recorder)
    writer.start()
    writer.submit("before", 1, {"active": 1})
    assert await writer.flush(5.0)

    with capture_logs() as logs:
        embedded_redis.stop()
        started = time.perf_counter()
        for number in range(200):
            writer.submit(f"c{number % 50}", number, {LIFECYCLE[number % 3]: number})
        submit_s = time.perf_counter() - started
        unhealthy = await _wait_until(lambda: not writer.healthy, timeout_s=5.0)
        await asyncio.sleep(1.0)  # several failed attempts, each with backoff
        pending_in_outage = writer.pending_count
        embedded_redis.start()
        flushed = await writer.flush(15.0)
    await writer.stop()

    assert submit_s < 0.1
    assert unhealthy is True
    assert pending_in_outage == 50
    assert flushed is True
    assert writer.healthy is True
    assert writer.last_error is None
    assert recorder.outcomes["retry"] > 0
    assert recorder.outcomes["ok"] == 51
    events = [entry["event"] for entry in logs]
    assert events.count("mirror writes failing, retrying with backoff") == 1
    assert events.count("mirror writes recovered") == 1
    check = redis.Redis.from_url(embedded_redis.url, decode_responses=True)
    try:
        for customer in range(50):
            last = max(n for n in range(200) if n % 50 == customer)
            assert read_tags(check, prefix, f"c{customer}") == {LIFECYCLE[last % 3]: last}
    finally:
        check.close()


async def test_stop_gives_up_when_down(settings: Settings, embedded_redis: EmbeddedRedis) -> None:
    settings = settings.with_changes(redis_url=embedded_redis.url, mirror_timeout_s=0.2)
    recorder = _Recorder()
    writer = _writer(settings, recorder)
    writer.start()
    embedded_redis.stop()

    writer.submit("c1", 1, {"active": 1})
    writer.submit("c2", 1, {"active": 1})
    started = time.perf_counter()
    await writer.stop(flush_timeout=0.5)
    stop_s = time.perf_counter() - started

    assert stop_s < 3.0
    assert recorder.outcomes["failed"] == 2
    assert recorder.confirmed == []
    assert writer.pending_count == 0


async def _wait_until(condition: object, timeout_s: float) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return False


def test_rulebook_version_field_is_plain(redis_url: str, namespace: str) -> None:
    """Pins the version field being overwritten by the rulebook's own `__version__` entry."""
    import redis as redis_sync

    from tagger.rules.rulebook import load_rulebook
    from tagger.streams.mirror import read_rulebook, write_rulebook

    rulebook = load_rulebook()
    client = redis_sync.Redis.from_url(redis_url)
    try:
        write_rulebook(client, f"{namespace}:", rulebook.describe(), rulebook.version)

        assert read_rulebook(client, f"{namespace}:")["version"] == rulebook.version
    finally:
        client.close()
