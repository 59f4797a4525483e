"""`hesitant` and `dormant` fire with no further event from the customer, in both clock modes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tagger.streams.config import Settings
from tagger.streams.replay import replay_events
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.events import DAY, MINUTE, cart, purchase
from tests.e2e.helpers import tag_changes

# 2024-03-01T00:00:00Z: event times in these tests are fixed, far from today.
_BASE = 1_709_251_200_000
# Live firing waits for 2 s without events plus a 1 s clock lag; this bound
# is about three times that, plus the time to poll the topic.
_LIVE_FIRE_TIMEOUT_S = 30.0


def _changes_of(changes: list[dict[str, Any]], customer: str, tag: str) -> list[dict[str, Any]]:
    return [c for c in changes if c["customer_id"] == customer and c["tag"] == tag]


def test_replay_mode_fires_on_clock_message(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    cart_at = _BASE
    bought_at = _BASE - 200 * DAY
    events = [
        purchase("returning", bought_at),
        cart("carter", cart_at),
        cart("buyer", cart_at),
        purchase("buyer", cart_at + 30 * MINUTE - 1),
        cart("edge", cart_at),
        purchase("edge", cart_at + 30 * MINUTE),
    ]
    worker = start_worker(replay_settings)

    report = replay_events(events, replay_settings, end_clock=_BASE + DAY, progress=False)
    worker.wait_for(
        lambda status: caught_up_to(
            status, end_clock=report.end_clock, partitions=replay_settings.partitions
        ),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up to the end clock",
    )

    changes = tag_changes(replay_settings)
    hesitant = _changes_of(changes, "carter", "hesitant")
    assert [(c["action"], c["at"]) for c in hesitant] == [("added", cart_at + 30 * MINUTE)]
    assert _changes_of(changes, "buyer", "hesitant") == []
    # A change due at d holds from d: a purchase at exactly the deadline comes after it.
    edge = _changes_of(changes, "edge", "hesitant")
    assert [(c["action"], c["at"]) for c in edge] == [
        ("added", cart_at + 30 * MINUTE),
        ("removed", cart_at + 30 * MINUTE),
    ]
    dormant = _changes_of(changes, "returning", "dormant")
    assert [(c["action"], c["at"]) for c in dormant] == [("added", bought_at + 90 * DAY)]


def test_live_mode_fires_on_wall_clock(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    offset_ms = _BASE - int(time.time() * 1000)
    live = settings.with_changes(clock_mode="live", wall_clock_offset_ms=offset_ms)
    start_worker(live)

    shifted_now = int(time.time() * 1000) + offset_ms
    cart_at = shifted_now - 30 * MINUTE + 4_000
    bought_at = shifted_now - 90 * DAY + 4_000
    replay_events(
        [
            cart("carter", cart_at),
            cart("buyer", cart_at),
            purchase("buyer", shifted_now),
            purchase("returning", bought_at),
        ],
        live,
        end_clock=None,
        progress=False,
    )

    deadline = time.monotonic() + _LIVE_FIRE_TIMEOUT_S
    while time.monotonic() < deadline:
        changes = tag_changes(live)
        if _changes_of(changes, "carter", "hesitant") and _changes_of(
            changes, "returning", "dormant"
        ):
            break
        time.sleep(0.5)
    hesitant = _changes_of(changes, "carter", "hesitant")
    assert [(c["action"], c["at"]) for c in hesitant] == [("added", cart_at + 30 * MINUTE)]
    dormant = _changes_of(changes, "returning", "dormant")
    assert [(c["action"], c["at"]) for c in dormant] == [("added", bought_at + 90 * DAY)]
    assert _changes_of(changes, "buyer", "hesitant") == []
