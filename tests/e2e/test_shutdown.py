"""SIGTERM stops a worker within a bound and loses no input: mid-replay and paused."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tagger.rules.rulebook import load_rulebook
from tagger.streams.config import Settings
from tagger.streams.replay import replay_events
from tagger.streams.rulebook_versions import Activation, activate, rulebook_text
from tagger.streams.simulator import simulate
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.helpers import fold_changes, tag_changes
from tests.reference import reference_events

# Liveness bound of a stop after SIGTERM, idle, mid-replay or paused: three
# times the slowest measured here (about 1.6 s from the signal to the exit,
# on the embedded broker).
STOP_BOUND_S = 5.0
_PAUSED_VERSION = "paused-for-test"


def _stop_timed(worker: WorkerProcess, timeout_s: float = 60.0) -> tuple[int | None, float]:
    started = time.monotonic()
    code = worker.stop(timeout_s=timeout_s)
    return code, time.monotonic() - started


def _gate_open(status: dict[str, Any]) -> bool:
    return bool(status.get("active_rulebook_version") == status.get("rulebook_version"))


def _wait_log_line(worker: WorkerProcess, *parts: str, timeout_s: float) -> None:
    """Wait until one line of the worker's log contains every one of `parts`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in worker.log_path.read_text(errors="replace").splitlines():
            if all(part in line for part in parts):
                return
        time.sleep(0.05)
    raise AssertionError(f"no line with {parts} within {timeout_s} s:\n{worker.log_tail()}")


def _wait_reference(worker: WorkerProcess, settings: Settings, events: Any, end_clock: int) -> None:
    """Wait until `worker` is caught up, then compare every tag change with the reference."""
    worker.wait_for(
        lambda status: caught_up_to(status, end_clock=end_clock, partitions=4),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up",
    )
    expected = {c: t for c, t in reference_events(events, end_clock).items() if t}
    assert fold_changes(tag_changes(settings)) == expected


def test_sigterm_mid_replay_loses_nothing(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    events = simulate(seed=31, customers=200)
    first = start_worker(replay_settings)
    first.wait_for(_gate_open, timeout_s=30, what="rulebook version active")
    report = replay_events(events, replay_settings, end_clock="auto", progress=False)
    assert report.end_clock is not None
    at_signal = first.wait_for(
        lambda status: any(view["clock"] > 0 for view in status["partitions"].values()),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="processing started",
    )
    code, seconds = _stop_timed(first)

    print(f"stop mid-replay: {seconds:.2f} s")
    assert not caught_up_to(at_signal, end_clock=report.end_clock, partitions=4)
    assert code == 0
    assert seconds < STOP_BOUND_S
    log_text = first.log_path.read_text()
    assert "stop requested" in log_text
    # Every batch taken was processed, so no commit had to be held back.
    assert "offset commit held back" not in log_text
    # Faust's terminal spinner is off: no cursor escapes in a log file.
    assert "\x1b[" not in log_text

    second = start_worker(replay_settings)
    _wait_reference(second, replay_settings, events, report.end_clock)


def test_sigterm_paused_worker_skips_batch(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    events = simulate(seed=32, customers=100)
    half = len(events) // 2
    first_half_end = int(events[half - 1]["ts"])
    first = start_worker(replay_settings)
    first.wait_for(_gate_open, timeout_s=30, what="rulebook version active")
    # The first half is processed and committed. NOTE: a worker that joins a
    # group with no committed offset sometimes never fetches on the embedded
    # broker (see test_delivery.py), so the group gets committed offsets first.
    replay_events(events[:half], replay_settings, end_clock=first_half_end, progress=False)
    first.wait_for(
        lambda status: caught_up_to(status, end_clock=first_half_end, partitions=4),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="first half caught up",
    )
    time.sleep(2 * replay_settings.commit_interval_s)

    # Another rulebook version becomes active, so the worker keeps the next
    # batch unprocessed, waiting for its own version, when SIGTERM arrives.
    activate(
        replay_settings,
        Activation(
            version=_PAUSED_VERSION,
            activated_at=int(time.time() * 1000),
            source="test",
            rulebook_text="",
            activated_by="test",
        ),
    )
    first.wait_for(
        lambda status: status.get("active_rulebook_version") == _PAUSED_VERSION,
        timeout_s=30,
        what="paused by another active version",
    )
    report = replay_events(events[half:], replay_settings, end_clock="auto", progress=False)
    assert report.end_clock is not None
    _wait_log_line(
        first,
        "waiting for the rulebook version to be activated",
        f"rulebook version {_PAUSED_VERSION} is active",
        timeout_s=30,
    )
    code, seconds = _stop_timed(first)

    print(f"stop while paused: {seconds:.2f} s")
    assert code == 0
    assert seconds < STOP_BOUND_S
    log_text = first.log_path.read_text()
    assert "skipped unprocessed and uncommitted" in log_text
    assert "offset commit held back" in log_text

    # The held records were not committed: a worker on the active version
    # again consumes them, and every tag change the reference expects is there.
    activate(replay_settings, Activation.of(load_rulebook(None), rulebook_text(None), by="test"))
    second = start_worker(replay_settings)
    _wait_reference(second, replay_settings, events, report.end_clock)
