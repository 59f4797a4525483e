"""Run a worker as a child process and follow it through its /status view.

The demo uses it to run the worker beside the replay, and the tests use it
to start, stop, kill and restart real worker processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

from tagger.errors import TaggerError
from tagger.streams.config import Settings
from tagger.streams.embedded import die_with_parent_hook

__all__ = ["WorkerProcess", "WorkerProcessError", "caught_up_to"]

log = structlog.get_logger(__name__)

_POLL_INTERVAL_S = 0.2


class WorkerProcessError(TaggerError):
    """The worker process exited early or did not reach the expected state in time."""


class WorkerProcess:
    """One `tagger worker` child process with its own log file."""

    def __init__(
        self, settings: Settings, log_path: Path, *, extra_env: dict[str, str] | None = None
    ):
        self.settings = settings
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Return the child's pid while it runs."""
        return None if self._process is None else self._process.pid

    def start(self) -> WorkerProcess:
        """Start the child; return at once (use `wait_for` to wait for a state)."""
        env = {**os.environ, **self.settings.to_env(), **self.extra_env, "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tagger.streams.cli", "worker"],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            # A worker whose parent (the demo, a test) dies stops cleanly.
            preexec_fn=die_with_parent_hook(signal.SIGTERM),  # noqa: PLW1509 - only calls prctl
        )
        log.info("worker process started", pid=self._process.pid, log=str(self.log_path))
        return self

    def status(self) -> dict[str, Any] | None:
        """Return the worker's /status view, or None while it does not answer."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.settings.web_port}/status")
        token = self.settings.web_token
        if token is not None:
            request.add_header("Authorization", f"Bearer {token.reveal()}")
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                data: dict[str, Any] = orjson.loads(response.read())
                return data
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_for(
        self,
        condition: Callable[[dict[str, Any]], bool],
        *,
        timeout_s: float,
        what: str,
        on_poll: Callable[[dict[str, Any] | None], None] | None = None,
    ) -> dict[str, Any]:
        """Poll /status until `condition` holds; raise WorkerProcessError on exit or timeout."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            last = self.status()
            if on_poll is not None:
                on_poll(last)
            if last is not None and condition(last):
                return last
            time.sleep(_POLL_INTERVAL_S)
        raise WorkerProcessError(
            f"worker did not reach '{what}' within {timeout_s:.0f} s; last status: "
            f"{orjson.dumps(last).decode() if last else 'none'}; log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Send SIGTERM and wait; kill after `timeout_s`. Return the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker did not stop in time, killing", pid=process.pid, timeout_s=timeout_s
                )
                process.kill()
                process.wait()
        self._close()
        log.info("worker process stopped", pid=process.pid, returncode=process.returncode)
        return process.returncode

    def kill(self) -> None:
        """Kill the child with SIGKILL, as a crash would."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._close()
        log.info("worker process killed", pid=process.pid)

    def wait_exit(self, timeout_s: float) -> int | None:
        """Wait for the child to exit by itself; return its exit code, or None on timeout."""
        process = self._process
        if process is None:
            return None
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self._close()
        return code

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the worker's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_alive(self) -> None:
        process = self._process
        if process is None:
            raise WorkerProcessError("worker process was not started")
        if process.poll() is not None:
            raise WorkerProcessError(
                f"worker exited with code {process.returncode}; log tail:\n{self.log_tail()}"
            )

    def _close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def caught_up_to(status: dict[str, Any], *, end_clock: int | None, partitions: int) -> bool:
    """Return True when `partitions` partitions are assigned, processed to their end,
    past `end_clock` (when given), and nothing waits for the Redis mirror."""
    assigned = status.get("partitions", {})
    if len(assigned) < partitions:
        return False
    for view in assigned.values():
        if not view["index_ready"] or not view["caught_up"]:
            return False
        if end_clock is not None and view["clock"] < end_clock:
            return False
    return bool(status["mirror"]["pending"] == 0)
