"""`tagger explain` reads a customer's state from the worker that owns it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import orjson

from tagger.streams.config import Settings
from tagger.streams.replay import replay_events
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.events import MINUTE, cart

_BASE = 1_709_251_200_000


def _explain(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tagger.streams.cli",
            "explain",
            *args,
            "--worker",
            f"http://127.0.0.1:{settings.web_port}",
        ],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_explain_shows_deciding_values(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(replay_settings)
    report = replay_events(
        [cart("carter", _BASE)], replay_settings, end_clock=_BASE + 31 * MINUTE, progress=False
    )
    worker.wait_for(
        lambda status: caught_up_to(
            status, end_clock=report.end_clock, partitions=replay_settings.partitions
        ),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up",
    )

    as_json = _explain(replay_settings, "carter", "hesitant", "--json")
    as_text = _explain(replay_settings, "carter")
    unknown = _explain(replay_settings, "nobody")

    assert as_json.returncode == 0, as_json.stderr
    body = orjson.loads(as_json.stdout)
    [hesitant] = body["explanations"]
    assert hesitant["held"] is True
    assert hesitant["since"] == _BASE + 30 * MINUTE
    assert hesitant["values"]["cart_age"] == 31 * MINUTE
    assert as_text.returncode == 0, as_text.stderr
    assert "hesitant" in as_text.stdout
    assert "potential" in as_text.stdout
    assert unknown.returncode != 0
    assert "not found" in unknown.stderr
