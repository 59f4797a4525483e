"""Detection of lost Redis data: each worker's field in the `<prefix>mirror:marker` hash.

A worker adds its own field (a uuid per start) to the marker hash once it
has written the rulebook hash, and checks every few seconds, in one Lua
call, that both are still there. A missing field or rulebook hash means
Redis lost data (restarted empty, FLUSHDB, eviction, a manual delete), and
the worker then re-writes both and re-submits its customers.

Each worker has its own field, rather than all sharing one value, so that
a worker which repairs first does not hide the loss from the others.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal, cast

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tagger.streams.config import Settings
from tagger.streams.mirror_lua import rulebook_key
from tagger.streams.security import redis_args

__all__ = ["MARKER_CHECK_INTERVAL_S", "MirrorMarker", "RegisterOutcome", "marker_key"]

# How often a worker checks the marker (seconds): the mirror is whole again
# within about this long after Redis comes back empty, plus the resync.
MARKER_CHECK_INTERVAL_S = 3.0
# Fields not refreshed for this long belong to stopped workers and are
# removed when a worker registers. Live workers refresh theirs every check,
# so only a wall clock skewed by more than this removes a live worker's
# field, which costs that worker one needless resync.
_STALE_FIELD_MS = 3_600_000
# After a worker finds no marker hash, workers that register within this
# long also re-submit every customer they are assigned. Workers of a group
# restarted together join within minutes, and partitions that move later
# were already re-submitted by their previous owner.
# TODO: partitions that move to a worker starting after the window, before
# their previous owner's resync reached them, stay incomplete until a rebuild.
_RESYNC_WINDOW_MS = 600_000

RegisterOutcome = Literal["new", "resyncing", "present"]

# TODO: an eviction that removes customer hashes but keeps their seq keys and
# the marker goes unnoticed. A resync would be ignored as stale anyway, so
# only `tagger mirror rebuild` repairs that.

# KEYS[1] marker hash, KEYS[2] rulebook hash; ARGV[1] worker field, ARGV[2]
# now (epoch ms). The field is refreshed only while it exists, so a check
# never re-creates a marker that a flush removed.
_CHECK_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS[1] marker hash; ARGV[1] worker field, ARGV[2] now, ARGV[3] stale
# before, ARGV[4] end of the resync window (epoch ms). Returns the outcome.
_REGISTER_SCRIPT = """
local existed = redis.call('EXISTS', KEYS[1])
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if tonumber(fields[i + 1]) < tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if existed == 0 then
  redis.call('HSET', KEYS[1], '__resync_until__', ARGV[4])
  return 'new'
end
local resync_until = tonumber(redis.call('HGET', KEYS[1], '__resync_until__'))
if resync_until ~= nil and resync_until > tonumber(ARGV[2]) then
  return 'resyncing'
end
return 'present'
"""


def marker_key(prefix: str) -> str:
    """Hash of worker field -> last check (epoch ms), one field per running worker."""
    return f"{prefix}mirror:marker"


class MirrorMarker:
    """One worker's field in the marker hash, on its own Redis connection."""

    def __init__(self, settings: Settings, *, client: redis.asyncio.Redis | None = None) -> None:
        self.prefix = settings.redis_prefix
        self.field = uuid.uuid4().hex
        self._client = client if client is not None else _connect(settings)
        self._owns_client = client is None

    async def register(self) -> RegisterOutcome:
        """Add this worker's field, drop stale ones, and return what the hash showed.

        `new`: the hash was absent, so Redis is new or lost data while no
        worker was checking it. `resyncing`: another worker found it absent
        a short while ago. `present`: neither.
        """
        now = _now_ms()
        outcome = await self._client.eval(
            _REGISTER_SCRIPT,
            1,
            marker_key(self.prefix),
            self.field,
            str(now),
            str(now - _STALE_FIELD_MS),
            str(now + _RESYNC_WINDOW_MS),
        )
        text = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        return cast(RegisterOutcome, text)

    async def intact(self) -> bool:
        """Return True while this worker's field and the rulebook hash are both in Redis."""
        found = await self._client.eval(
            _CHECK_SCRIPT,
            2,
            marker_key(self.prefix),
            rulebook_key(self.prefix),
            self.field,
            str(_now_ms()),
        )
        return bool(found)

    async def close(self) -> None:
        """Close the connection when this object opened it."""
        if self._owns_client:
            await self._client.aclose()


def _connect(settings: Settings) -> redis.asyncio.Redis:
    # The check loop retries on its own schedule.
    return redis.asyncio.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.mirror_timeout_s,
        socket_connect_timeout=settings.mirror_timeout_s,
        retry=Retry(NoBackoff(), 0),
        **redis_args(settings),
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
