"""The Redis mirror is repaired after Redis loses data: by the worker, and by `tagger mirror`."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import redis

from tagger.streams.config import Settings
from tagger.streams.mirror import read_rulebook
from tagger.streams.replay import replay_events
from tagger.streams.simulator import simulate
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.helpers import fold_changes, mirror_members, mirror_tags, tag_changes

# The worker checks its marker every 3 s, and the resync of 200 customers
# took under a second on the 2-core test machine. 15 s leaves room.
_REPAIR_TIMEOUT_S = 15.0
# One verify or rebuild of a few dozen customers took under 10 s here.
_COMMAND_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Result:
    """Exit code and output of one CLI run."""

    exit_code: int
    output: str


def _replay_and_wait(
    settings: Settings, worker: WorkerProcess, *, seed: int, customers: int
) -> dict[str, dict[str, int]]:
    """Replay simulated customers, wait until the worker caught up; return the folded tags."""
    events = simulate(seed=seed, customers=customers, currency="CNY")
    report = replay_events(events, settings, end_clock="auto", progress=False)
    worker.wait_for(
        lambda status: caught_up_to(
            status, end_clock=report.end_clock, partitions=settings.partitions
        ),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up",
    )
    return fold_changes(tag_changes(settings))


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def _delete_prefix(settings: Settings) -> int:
    """Delete every key under the test's prefix: FLUSHDB limited to this test's keys."""
    client = _client(settings)
    try:
        keys = list(client.scan_iter(match=f"{settings.redis_prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


def _metric(settings: Settings, name: str) -> float | None:
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_flushed_mirror_repaired_by_worker(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(replay_settings)
    expected = _replay_and_wait(replay_settings, worker, seed=23, customers=200)
    assert mirror_tags(replay_settings) == expected
    # A worker that finds no marker at start (a new Redis) resyncs once too.
    resyncs_before = _metric(replay_settings, "tagger_mirror_resyncs_total") or 0.0

    assert _delete_prefix(replay_settings) > 0
    assert mirror_tags(replay_settings) == {}

    deadline = time.monotonic() + _REPAIR_TIMEOUT_S
    while time.monotonic() < deadline and mirror_tags(replay_settings) != expected:
        time.sleep(0.5)
    assert mirror_tags(replay_settings) == expected
    assert mirror_members(replay_settings) == expected
    client = _client(replay_settings)
    try:
        assert read_rulebook(client, replay_settings.redis_prefix)["version"] is not None
    finally:
        client.close()
    assert _metric(replay_settings, "tagger_mirror_resyncs_total") == resyncs_before + 1


def _mirror_command(settings: Settings, command: str, *extra: str) -> Result:
    """Run `tagger mirror COMMAND` in a child process; stdout and stderr are in `output`.

    A child process, because the CLI configures logging for the whole process.
    """
    args = [
        sys.executable,
        "-m",
        "tagger.streams.cli",
        "mirror",
        command,
        "--bootstrap",
        settings.kafka_bootstrap_servers,
        "--app-id",
        settings.app_id,
        "--redis-url",
        settings.redis_url,
        "--redis-prefix",
        settings.redis_prefix,
        *extra,
    ]
    completed = subprocess.run(
        args, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
    )
    return Result(completed.returncode, completed.stdout + completed.stderr)


def test_verify_and_rebuild_repair_differences(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(replay_settings)
    expected = _replay_and_wait(replay_settings, worker, seed=29, customers=60)
    healthy = _mirror_command(replay_settings, "verify")
    assert healthy.exit_code == 0, healthy.output

    prefix = replay_settings.redis_prefix
    hash_only, all_keys, moved, ahead = sorted(expected)[:4]
    moved_tag = sorted(expected[moved])[0]
    client = _client(replay_settings)
    try:
        # Damage of each kind: a hash lost while its seq key stays, a
        # customer lost entirely, a wrong since in hash and set, a member no
        # table supports, a seq above the table's, and a changed label.
        # The rulebook hash and the marker stay, so the running worker sees
        # no data loss and leaves the repair to the tools.
        client.delete(f"{prefix}customer:{hash_only}")
        client.delete(f"{prefix}customer:{all_keys}", f"{prefix}seq:{all_keys}")
        client.hset(f"{prefix}customer:{moved}", moved_tag, 1)
        client.zadd(f"{prefix}tag:{moved_tag}", {moved: 1})
        client.zadd(f"{prefix}tag:vip", {"ghost": 5})
        client.set(f"{prefix}seq:{ahead}", 10**9)
        client.hset(f"{prefix}customer:{ahead}", "bogus", 7)
        client.hset(f"{prefix}rulebook", "vip", '{"en": "changed", "group": "", "zh": ""}')
    finally:
        client.close()

    damaged = _mirror_command(replay_settings, "verify")
    assert damaged.exit_code == 1, damaged.output
    for text in (
        f"missing_tag: customer {hash_only!r}",
        f"missing_tag: customer {all_keys!r}",
        f"wrong_since: customer {moved!r} tag {moved_tag!r}",
        f"wrong_member_since: customer {moved!r}",
        "stray_member: customer 'ghost' tag 'vip'",
        f"extra_tag: customer {ahead!r} tag 'bogus'",
        f"seq_ahead: customer {ahead!r}",
        "rulebook_outdated",
    ):
        assert text in damaged.output, damaged.output
    as_json = _mirror_command(replay_settings, "verify", "--json")
    assert '"seq_ahead":1' in as_json.output

    rebuilt = _mirror_command(replay_settings, "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "removed 1 tag-set members" in rebuilt.output

    again = _mirror_command(replay_settings, "verify")
    assert again.exit_code == 0, again.output
    assert mirror_tags(replay_settings) == expected
    assert mirror_members(replay_settings) == expected
