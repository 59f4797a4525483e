"""Erasing a customer from the Redis mirror: the Lua script and the writer, on real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tagger.streams.config import Settings
from tagger.streams.mirror import MirrorWriter
from tagger.streams.mirror_lua import (
    APPLY_SCRIPT,
    ERASE_SCRIPT,
    MAX_EPOCH,
    MAX_SEQ,
    SEQ_TTL_MS,
    apply_arguments,
    erase_arguments,
    mirror_seq,
)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture
def prefix(settings: Settings) -> str:
    return settings.redis_prefix


def _apply(client: redis.Redis, prefix: str, customer: str, seq: int, tags: dict[str, int]) -> int:
    keys, args = apply_arguments(prefix, customer, seq, tags)
    return int(client.eval(APPLY_SCRIPT, len(keys), *keys, *args))


def _erase(client: redis.Redis, prefix: str, customer: str, fence: int, tags: list[str]) -> int:
    keys, args = erase_arguments(prefix, customer, fence, tags)
    return int(client.eval(ERASE_SCRIPT, len(keys), *keys, *args))


def _customer_keys(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(client.scan_iter(match=f"{prefix}*"))


def test_mirror_seq_is_exact_at_limits() -> None:
    assert mirror_seq(0, 7) == 7
    assert mirror_seq(1, 0) == 2**32
    assert mirror_seq(MAX_EPOCH, MAX_SEQ) == 2**53 - 1
    assert float(mirror_seq(MAX_EPOCH, MAX_SEQ)) == mirror_seq(MAX_EPOCH, MAX_SEQ)
    with pytest.raises(ValueError, match="out of range"):
        mirror_seq(MAX_EPOCH + 1, 0)
    with pytest.raises(ValueError, match="out of range"):
        mirror_seq(0, MAX_SEQ + 1)


def test_erase_deletes_hash_and_memberships(client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "c1", 3, {"vip": 1000, "active": 2000})
    _apply(client, prefix, "c2", 1, {"vip": 1500})
    # A member the hash lacks, as Redis Cluster can leave behind.
    client.zadd(f"{prefix}tag:recent_buyer", {"c1": 900})

    erased = _erase(client, prefix, "c1", mirror_seq(1, 0), ["recent_buyer"])

    assert erased == 1
    assert client.exists(f"{prefix}customer:c1") == 0
    assert client.zscore(f"{prefix}tag:vip", "c1") is None
    assert client.zscore(f"{prefix}tag:active", "c1") is None
    assert client.zscore(f"{prefix}tag:recent_buyer", "c1") is None
    assert client.zscore(f"{prefix}tag:vip", "c2") == 1500
    assert client.get(f"{prefix}seq:c1") == str(2**32)
    assert 0 < client.pttl(f"{prefix}seq:c1") <= SEQ_TTL_MS
    assert f"{prefix}customer:c1" not in _customer_keys(client, prefix)


def test_fence_rejects_old_epoch_write(client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "c1", 3, {"vip": 1000})
    _erase(client, prefix, "c1", mirror_seq(1, 0), [])

    late = _apply(client, prefix, "c1", mirror_seq(0, 4), {"vip": 1000, "active": 2000})

    assert late == 0
    assert client.exists(f"{prefix}customer:c1") == 0
    assert client.zscore(f"{prefix}tag:vip", "c1") is None


def test_new_epoch_write_is_accepted(client: redis.Redis, prefix: str) -> None:
    _apply(client, prefix, "c1", 3, {"vip": 1000})
    _erase(client, prefix, "c1", mirror_seq(1, 0), [])

    applied = _apply(client, prefix, "c1", mirror_seq(1, 1), {"active": 5000})

    assert applied == 1
    assert client.hgetall(f"{prefix}customer:c1") == {"active": "5000"}
    assert client.get(f"{prefix}seq:c1") == str(2**32 + 1)
    assert client.pttl(f"{prefix}seq:c1") == -1


def test_erase_after_new_epoch_changes_nothing(client: redis.Redis, prefix: str) -> None:
    _erase(client, prefix, "c1", mirror_seq(1, 0), [])
    _apply(client, prefix, "c1", mirror_seq(1, 2), {"active": 5000})

    repeated = _erase(client, prefix, "c1", mirror_seq(1, 0), ["active"])

    assert repeated == 0
    assert client.hgetall(f"{prefix}customer:c1") == {"active": "5000"}
    assert client.zscore(f"{prefix}tag:active", "c1") == 5000


def test_large_epoch_compares_exactly(client: redis.Redis, prefix: str) -> None:
    fence = mirror_seq(MAX_EPOCH, 0)
    _erase(client, prefix, "c1", fence, [])

    assert _apply(client, prefix, "c1", fence - 1, {"vip": 1}) == 0
    assert _apply(client, prefix, "c1", fence + 1, {"vip": 1}) == 1
    assert client.get(f"{prefix}seq:c1") == str(fence + 1)


async def test_writer_erase_replaces_queued_write(
    settings: Settings, client: redis.Redis, prefix: str
) -> None:
    writer = MirrorWriter(settings)
    writer.submit("c1", 1, {"vip": 1000})
    writer.start()
    assert await writer.flush(5.0)
    # Queued before the task runs again: the old epoch's write, then the erasure.
    writer.submit("c1", 2, {"vip": 1000, "active": 3000})
    writer.erase("c1", mirror_seq(1, 0), ["vip"])
    writer.submit("c1", 3, {"vip": 1000})

    assert await writer.flush(5.0)
    await writer.stop()

    assert client.exists(f"{prefix}customer:c1") == 0
    assert client.zscore(f"{prefix}tag:vip", "c1") is None
    assert client.zscore(f"{prefix}tag:active", "c1") is None
    assert client.get(f"{prefix}seq:c1") == str(2**32)
