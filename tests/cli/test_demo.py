"""The README's demo command, shortened: it runs and its summary matches Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import redis

# A demo run here takes about 15 s (group join, replay, catch-up); the bound
# is about three times that.
_DEMO_TIMEOUT_S = 60.0


def test_demo_summary_matches_redis(
    kafka_bootstrap: str, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    summary_path = tmp_path / "summary.json"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url}

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tagger.streams.cli",
            "demo",
            "--customers",
            "40",
            "--namespace",
            namespace,
            "--summary-json",
            str(summary_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=_DEMO_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "customers per tag" in result.stdout
    assert "example tag changes" in result.stdout
    # Each example shows the metric values behind it.
    assert "[count(activity) = 1, count(purchase) = 0]" in result.stdout
    summary = orjson.loads(summary_path.read_bytes())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    counts = {row["tag"]: row["customers"] for row in summary["tags"]}
    in_redis = {
        key.removeprefix(f"{namespace}:tag:"): client.zcard(key)
        for key in client.scan_iter(match=f"{namespace}:tag:*")
    }
    assert counts == in_redis
    assert summary["customers_with_tags"] == sum(
        1 for _ in client.scan_iter(match=f"{namespace}:customer:*")
    )
    assert {"potential", "existing", "hesitant", "vip", "dormant"} <= set(counts)
    assert all(row["zh"] and row["en"] for row in summary["tags"])
    assert summary["examples"]
    client.close()
