"""Embedded broker and redis-server: start, respond, stop, restart on the same port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis
from kafka.admin import KafkaAdminClient

from tagger.streams.embedded import EmbeddedBroker, EmbeddedRedis, free_port

pytestmark = pytest.mark.integration


def test_free_port_is_bindable() -> None:
    port = free_port()

    assert 1024 <= port <= 65535


def test_broker_lists_topics_then_stops() -> None:
    broker = EmbeddedBroker().start()
    pid = broker.pid
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers, request_timeout_ms=5000)
    try:
        topics = admin.list_topics()
    finally:
        admin.close()

    broker.stop()

    assert isinstance(topics, list)
    assert pid is not None
    assert not _alive(pid)
    assert not broker.running


def test_broker_address_is_loopback() -> None:
    with EmbeddedBroker() as broker:
        address = broker.bootstrap_servers

    assert address.startswith("127.0.0.1:")


def test_redis_answers_ping_then_stops() -> None:
    with EmbeddedRedis() as server:
        pid = server.pid
        client = redis.Redis.from_url(server.url)
        answered = client.ping()
        client.close()

    assert answered is True
    assert pid is not None
    assert not _alive(pid)


def test_redis_restarts_on_same_port() -> None:
    with EmbeddedRedis() as server:
        port = server.port
        server.stop()
        server.start()
        client = redis.Redis.from_url(server.url)
        answered = client.ping()
        client.close()

        assert server.port == port
        assert answered is True


def test_old_redis_on_path_is_skipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A redis-server older than 6.2 on PATH is not used; the bundled one is."""
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=5.0.7 sha=00000000:0 malloc=libc bits=64'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        version = client.info("server")["redis_version"]
        client.close()

    assert tuple(int(part) for part in version.split(".")[:2]) >= (6, 2)


def test_stop_twice_is_harmless() -> None:
    server = EmbeddedRedis().start()

    server.stop()
    server.stop()

    assert server.pid is None


def test_parent_interrupt_stops_children() -> None:
    """A Ctrl-C in the parent unwinds its context managers, which stop both servers."""
    script = textwrap.dedent(
        """
        import os, time
        from tagger.streams.embedded import EmbeddedBroker, EmbeddedRedis
        try:
            with EmbeddedBroker() as broker, EmbeddedRedis() as server:
                pids = [broker.pid, server.pid]
                print("PIDS", *pids, flush=True)
                time.sleep(60)
        except KeyboardInterrupt:
            alive = []
            for pid in pids:
                try:
                    os.kill(pid, 0)
                    alive.append(pid)
                except ProcessLookupError:
                    pass
            print("ALIVE", *alive, flush=True)
        """
    )
    with _python_script(script) as (parent, output):
        child_pids = _read_numbers(output, "PIDS")

        parent.send_signal(signal.SIGINT)
        alive = _read_numbers(output, "ALIVE")

    assert len(child_pids) == 2
    assert alive == []


def test_killed_parent_leaves_no_orphan(tmp_path: Path) -> None:
    """A parent killed with SIGKILL runs no cleanup, so the kernel must stop the children."""
    script = textwrap.dedent(
        """
        import time
        from tagger.streams.embedded import EmbeddedRedis
        server = EmbeddedRedis().start()
        print("PIDS", server.pid, flush=True)
        time.sleep(60)
        """
    )
    # The killed parent cannot remove Redis's temporary folder, so it goes under tmp_path.
    with _python_script(script, tmpdir=tmp_path) as (parent, output):
        (child_pid,) = _read_numbers(output, "PIDS")

        parent.kill()
        parent.wait(timeout=10)

    assert _gone_within(child_pid, timeout_s=5.0)


@contextlib.contextmanager
def _python_script(
    script: str, tmpdir: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """Run `script` in a new interpreter; kill it on the way out whatever happened.

    `tmpdir` becomes the script's TMPDIR, where its temporary folders go.
    """
    env = None if tmpdir is None else {**os.environ, "TMPDIR": str(tmpdir)}
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    try:
        yield process, process.stdout
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()


def _read_numbers(output: IO[str], label: str) -> list[int]:
    """Numbers on the child script's next `label` line; its log lines share the pipe."""
    for line in output:
        words = line.split()
        if words and words[0] == label:
            return [int(word) for word in words[1:]]
    raise AssertionError(f"the child script exited before printing {label}")


def _alive(pid: int) -> bool:
    """True when `pid` runs; a zombie waiting for its new parent to reap it counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False
