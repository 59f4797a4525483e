"""`tagger forget` end to end: removals, Redis keys, a new epoch, and no resurrection on restart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from click.testing import CliRunner, Result

from tagger.streams.cli import cli
from tagger.streams.config import Settings
from tagger.streams.mirror_lua import SEQ_TTL_MS, mirror_seq
from tagger.streams.mirror_tools import verify
from tagger.streams.replay import replay_events
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.events import DAY, purchase
from tests.e2e.helpers import fold_changes, mirror_members, mirror_tags, tag_changes

_BASE = 1_709_251_200_000


def _wait_caught_up(worker: WorkerProcess, settings: Settings, end_clock: int | None) -> None:
    worker.wait_for(
        lambda status: caught_up_to(status, end_clock=end_clock, partitions=settings.partitions),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up",
    )


def _run_cli(settings: Settings, *args: str) -> Result:
    env = {key: value for key, value in settings.to_env().items() if value}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _ids(changes: list[dict[str, Any]], customer: str) -> list[str]:
    return [change["change_id"] for change in changes if change["customer_id"] == customer]


def _new(changes: list[dict[str, Any]], seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the changes not in `seen`; the topic is read partition by partition."""
    known = {change["change_id"] for change in seen}
    return [change for change in changes if change["change_id"] not in known]


def _assert_only_fence_left(settings: Settings, customer: str) -> None:
    """Check that Redis keeps only the customer's seq key, at the fence of epoch 1, expiring."""
    prefix = settings.redis_prefix
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        assert sorted(client.scan_iter(match=f"{prefix}*{customer}")) == [f"{prefix}seq:{customer}"]
        assert client.get(f"{prefix}seq:{customer}") == str(mirror_seq(1, 0))
        assert 0 < client.pttl(f"{prefix}seq:{customer}") <= SEQ_TTL_MS
    finally:
        client.close()


def test_forget_erases_and_starts_new_epoch(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = replay_settings
    worker = start_worker(settings)
    old_purchase = purchase("ann", _BASE, "6000.00", event_id="ann-order-1")
    report = replay_events(
        [old_purchase, purchase("ben", _BASE, "600.00")],
        settings,
        end_clock=_BASE + 1,
        progress=False,
    )
    _wait_caught_up(worker, settings, report.end_clock)
    held = set(mirror_tags(settings)["ann"])
    before = tag_changes(settings)

    # A 30 s bound for the worker to apply the request, about three times
    # the few seconds (batch, commit interval) it takes here.
    forgotten = _run_cli(settings, "forget", "ann", "--timeout", "30")

    assert forgotten.exit_code == 0, forgotten.output
    assert "done" in forgotten.output
    _wait_caught_up(worker, settings, report.end_clock)
    after = tag_changes(settings)
    removals = [change for change in _new(after, before) if change["customer_id"] == "ann"]
    assert {change["tag"] for change in removals} == held
    assert {(change["action"], change["source"]) for change in removals} == {("removed", "erasure")}
    assert not set(_ids(removals, "ann")) & set(_ids(before, "ann"))
    assert all(change_id.startswith("ann:0:") for change_id in _ids(removals, "ann"))
    assert "ann" not in mirror_tags(settings)
    assert "ann" not in mirror_members(settings)
    assert "ben" in mirror_tags(settings)
    _assert_only_fence_left(settings, "ann")
    explained = _run_cli(
        settings, "explain", "ann", "--worker", f"http://127.0.0.1:{settings.web_port}"
    )
    assert explained.exit_code != 0
    assert "not found" in explained.output
    assert not verify(settings).differences

    # The producer sends the old purchase again (same event_id and time), then
    # a new one. The erasure removed the memory of event ids, so both are
    # events of a returning customer, in epoch 1.
    report = replay_events(
        [old_purchase, purchase("ann", _BASE + DAY, "50.00", event_id="ann-order-2")],
        settings,
        end_clock=_BASE + DAY + 1,
        progress=False,
    )
    _wait_caught_up(worker, settings, report.end_clock)
    returned = _new(tag_changes(settings), after)
    returned_ids = _ids(returned, "ann")
    assert returned_ids
    assert all(change_id.startswith("ann:1:") for change_id in returned_ids)
    assert not set(returned_ids) & set(_ids(after, "ann"))
    epoch_one = [change for change in returned if change["customer_id"] == "ann"]
    assert mirror_tags(settings)["ann"] == fold_changes(epoch_one)["ann"]
    assert "high_value" in mirror_tags(settings)["ann"]

    # Restart: the tables come back from their changelogs. Nothing of epoch 0
    # comes back, and the customer's next change continues epoch 1.
    worker.stop()
    restarted = start_worker(settings)
    _wait_caught_up(restarted, settings, report.end_clock)
    # A restart may repeat recorded changes byte-identical, never add one.
    assert set(_ids(tag_changes(settings), "ann")) == set(_ids(after + returned, "ann"))
    report = replay_events(
        [purchase("ann", _BASE + 200 * DAY, "10.00", event_id="ann-order-3")],
        settings,
        end_clock=_BASE + 200 * DAY + 1,
        progress=False,
    )
    _wait_caught_up(restarted, settings, report.end_clock)
    latest = _ids(_new(tag_changes(settings), after + returned), "ann")
    assert latest
    assert all(change_id.startswith("ann:1:") for change_id in latest)
    assert not set(latest) & set(returned_ids)
    assert not verify(settings).differences
