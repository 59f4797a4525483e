"""Security settings on a real worker: explicit PLAINTEXT, and the web views' bearer token."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

from tagger.streams.config import Settings
from tagger.streams.replay import replay_events
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.events import MINUTE, cart
from tests.e2e.helpers import mirror_tags

_BASE = 1_709_251_200_000
_TOKEN = "e2e-t0ken"


def test_explicit_plaintext_worker_tags(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = replay_settings.with_changes(security_protocol="PLAINTEXT")
    worker = start_worker(settings, extra_env={"TAGGER_SECURITY_PROTOCOL": "PLAINTEXT"})

    report = replay_events(
        [cart("plain", _BASE)], settings, end_clock=_BASE + 31 * MINUTE, progress=False
    )
    worker.wait_for(
        lambda status: caught_up_to(
            status, end_clock=report.end_clock, partitions=settings.partitions
        ),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up",
    )

    assert "hesitant" in mirror_tags(settings)["plain"]


def test_web_token_required_except_healthz(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = replay_settings.with_changes(web_token=_TOKEN)
    worker = start_worker(settings)
    report = replay_events(
        [cart("carter", _BASE)], settings, end_clock=_BASE + 31 * MINUTE, progress=False
    )
    worker.wait_for(
        lambda status: caught_up_to(
            status, end_clock=report.end_clock, partitions=settings.partitions
        ),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up",
    )
    port = settings.web_port

    assert _status(port, "/metrics") == 401
    assert _status(port, "/metrics", "wrong-token") == 401
    assert _status(port, "/metrics", _TOKEN) == 200
    assert _status(port, "/status") == 401
    assert _status(port, "/readyz", _TOKEN) == 200
    assert _status(port, "/explain/carter") == 401
    assert _status(port, "/healthz") == 200
    assert _status(port, "/healthz", _TOKEN) == 200

    with_token = _explain(port, {"TAGGER_WEB_TOKEN": _TOKEN})
    without_token = _explain(port, {})

    assert with_token.returncode == 0, with_token.stderr
    assert "hesitant" in with_token.stdout
    assert without_token.returncode != 0
    assert "bearer token" in without_token.stderr
    assert _TOKEN not in worker.log_tail(lines=400)


def _status(port: int, path: str, token: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _explain(port: int, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TAGGER_WEB")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tagger.streams.cli",
            "explain",
            "carter",
            "--worker",
            f"http://127.0.0.1:{port}",
        ],
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
