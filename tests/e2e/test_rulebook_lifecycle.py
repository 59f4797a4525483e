"""Rulebook versions: a worker consumes only under the active version; activation re-evaluates."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from tagger.streams.config import Settings
from tagger.streams.replay import replay_events
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.events import purchase
from tests.e2e.helpers import mirror_tags, tag_changes

_BASE = 1_709_251_200_000
_HOUR = 3_600_000
# How long the test watches a paused worker to see that it consumes nothing;
# it processes a clock message in well under a second when it consumes.
_PAUSED_WATCH_S = 4.0


def _write_rulebooks(folder: Path) -> tuple[str, str]:
    v1 = files("tagger.rules").joinpath("default.yaml").read_text(encoding="utf-8")
    v2 = v1.replace("when: net_spend(180d) >= 1000.00", "when: net_spend(180d) >= 500.00", 1)
    assert v2 != v1
    paths = []
    for name, text in (("v1.yaml", v1), ("v2.yaml", v2)):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))
    return paths[0], paths[1]


def _activate(settings: Settings, path: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tagger.streams.cli", "rules", "activate", path],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _readyz(settings: Settings) -> tuple[int, dict[str, Any]]:
    import orjson

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/readyz", timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def _wait(worker: WorkerProcess, settings: Settings, end_clock: int) -> None:
    worker.wait_for(
        lambda status: caught_up_to(status, end_clock=end_clock, partitions=settings.partitions),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up",
    )


def _changes(settings: Settings, customer: str, tag: str) -> list[dict[str, Any]]:
    return [c for c in tag_changes(settings) if c["customer_id"] == customer and c["tag"] == tag]


def test_activation_switches_version_and_reevaluates(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    v1, v2 = _write_rulebooks(tmp_path)
    settings_v1 = replay_settings.with_changes(rulebook_path=v1)
    settings_v2 = replay_settings.with_changes(rulebook_path=v2)
    worker = start_worker(settings_v1)
    replay_events(
        [purchase("a", _BASE, "600.00")], settings_v1, end_clock=_BASE + _HOUR, progress=False
    )
    _wait(worker, settings_v1, _BASE + _HOUR)
    assert "low_value" in mirror_tags(settings_v1)["a"]

    # A new version is activated: the worker still on v1 stops consuming.
    _activate(settings_v1, v2)
    deadline = time.monotonic() + 30
    while _readyz(settings_v1)[0] != 503 and time.monotonic() < deadline:
        time.sleep(0.3)
    status, body = _readyz(settings_v1)
    assert status == 503
    assert any("is active for group" in reason for reason in body["reasons"])
    replay_events(
        [purchase("b", _BASE + _HOUR, "50.00")],
        settings_v1,
        end_clock=_BASE + 2 * _HOUR,
        progress=False,
    )
    time.sleep(_PAUSED_WATCH_S)
    assert "b" not in mirror_tags(settings_v1)
    worker.stop()

    # A worker on v2 consumes, and re-evaluates `a` at its partition's clock.
    worker = start_worker(settings_v2)
    _wait(worker, settings_v2, _BASE + 2 * _HOUR)
    assert "b" in mirror_tags(settings_v2)
    medium = _changes(settings_v2, "a", "medium_value")
    assert [(c["action"], c["source"], c["at"]) for c in medium] == [
        ("added", "rulebook_change", _BASE + _HOUR)
    ]
    low = _changes(settings_v2, "a", "low_value")
    assert [(c["action"], c["source"]) for c in low] == [
        ("added", "rule"),
        ("removed", "rulebook_change"),
    ]
    assert mirror_tags(settings_v2)["a"] == {
        "existing": _BASE,
        "medium_value": _BASE + _HOUR,
        "recent_buyer": _BASE,
        "active": _BASE,
    }
    worker.stop()

    # Back to v1: the customer is re-admitted to low_value under a new change id.
    _activate(settings_v2, v1)
    worker = start_worker(settings_v1)
    _wait(worker, settings_v1, _BASE + 2 * _HOUR)
    low = _changes(settings_v1, "a", "low_value")
    assert [(c["action"], c["source"]) for c in low] == [
        ("added", "rule"),
        ("removed", "rulebook_change"),
        ("added", "rulebook_change"),
    ]
    assert len({c["change_id"] for c in low}) == 3
    assert "low_value" in mirror_tags(settings_v1)["a"]
    assert "medium_value" not in mirror_tags(settings_v1)["a"]
