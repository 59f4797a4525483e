"""The marker hash from which a worker detects that Redis lost data."""

from __future__ import annotations

import redis

from tagger.streams.config import Settings
from tagger.streams.mirror_lua import rulebook_key
from tagger.streams.mirror_marker import MirrorMarker, marker_key


def _settings(redis_url: str, namespace: str) -> Settings:
    return Settings(redis_url=redis_url, redis_prefix=f"{namespace}:")


async def test_register_reports_new_then_resyncing(redis_url: str, namespace: str) -> None:
    settings = _settings(redis_url, namespace)
    first, second = MirrorMarker(settings), MirrorMarker(settings)
    try:
        assert await first.register() == "new"
        assert await second.register() == "resyncing"
    finally:
        await first.close()
        await second.close()


async def test_register_reports_present_after_window(redis_url: str, namespace: str) -> None:
    settings = _settings(redis_url, namespace)
    client = redis.Redis.from_url(redis_url)
    client.hset(marker_key(settings.redis_prefix), mapping={"other": 1, "__resync_until__": 1})
    marker = MirrorMarker(settings)
    try:
        assert await marker.register() == "present"
        # Fields older than an hour belong to stopped workers.
        assert not client.hexists(marker_key(settings.redis_prefix), "other")
    finally:
        await marker.close()
        client.close()


async def test_intact_until_marker_or_rulebook_gone(redis_url: str, namespace: str) -> None:
    settings = _settings(redis_url, namespace)
    client = redis.Redis.from_url(redis_url)
    marker = MirrorMarker(settings)
    try:
        client.hset(rulebook_key(settings.redis_prefix), "__version__", "v1")
        await marker.register()
        assert await marker.intact()

        client.delete(rulebook_key(settings.redis_prefix))
        assert not await marker.intact()

        client.hset(rulebook_key(settings.redis_prefix), "__version__", "v1")
        client.delete(marker_key(settings.redis_prefix))
        assert not await marker.intact()
        # The check never re-creates a marker that a flush removed.
        assert not client.exists(marker_key(settings.redis_prefix))
    finally:
        await marker.close()
        client.close()
