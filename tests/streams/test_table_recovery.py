"""Table recovery from the changelog, before anything else builds on it.

The embedded Tansu broker reports a partition's end offset as the start of
its last record batch, and Faust's recovery stops at the reported end. These
tests fill one table in a single take() batch and another in many small
batches, restart the worker with empty local state and compare the tables.
On Tansu the worker reads changelogs to their true end with a probe, and a
test pins the broker fault that makes the probe necessary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.types import TP
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from tagger.streams.embedded import free_port
from tagger.streams.end_offsets import broker_cluster_id, needs_probe, probe_end_offsets

_APP = Path(__file__).with_name("recovery_app.py")
_KEYS = 37
_RECORDS = 600
# Generous bounds, about three times what a run here takes (a group forms in
# about 4 s with a 6 s session timeout on the embedded broker).
_FILL_TIMEOUT_S = 60.0
_DUMP_TIMEOUT_S = 60.0


def _start(
    bootstrap: str, app_id: str, mode: str, probe: str, dump: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(_APP), bootstrap, app_id, mode, probe, str(dump), str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_dump(
    process: subprocess.Popen[bytes], dump: Path, timeout_s: float, done: Any
) -> dict[str, dict[str, int]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise AssertionError(f"worker exited with {process.returncode}:\n{output[-3000:]}")
        if dump.exists():
            content: dict[str, dict[str, int]] = orjson.loads(dump.read_bytes())
            if done(content):
                return content
        time.sleep(0.2)
    raise AssertionError(
        f"no complete dump within {timeout_s} s; last: {dump.read_bytes()[:300]!r}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def filled(
    kafka_bootstrap: str, namespace: str, tmp_path: Path
) -> Iterator[tuple[str, dict[str, dict[str, int]]]]:
    """Fill both tables, stop the worker, and return the app id and the tables as counted."""
    app_id = f"{namespace}-recovery"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(f"{app_id}-{name}-in", 2, 1) for name in ("one", "many")])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=50)
    for name in ("one", "many"):
        for index in range(_RECORDS):
            producer.send(f"{app_id}-{name}-in", key=f"k{index % _KEYS}".encode(), value=b"1")
    producer.flush()
    producer.close()

    dump = tmp_path / "filled.json"
    process = _start(kafka_bootstrap, app_id, "fill", "probe", dump)
    try:
        tables = _wait_for_dump(
            process,
            dump,
            _FILL_TIMEOUT_S,
            lambda content: all(
                sum(content.get(n, {}).values()) == _RECORDS for n in ("one", "many")
            ),
        )
    finally:
        _stop(process)
    yield app_id, tables


def _recover(bootstrap: str, app_id: str, probe: str, dump: Path) -> dict[str, dict[str, int]]:
    process = _start(bootstrap, app_id, "dump", probe, dump)
    try:
        return _wait_for_dump(process, dump, _DUMP_TIMEOUT_S, lambda content: True)
    finally:
        _stop(process)


def test_recovery_restores_tables(
    kafka_bootstrap: str, filled: tuple[str, dict[str, dict[str, int]]], tmp_path: Path
) -> None:
    app_id, before = filled
    probe = "probe" if needs_probe(broker_cluster_id(kafka_bootstrap)) else "plain"

    after = _recover(kafka_bootstrap, app_id, probe, tmp_path / "recovered.json")

    assert after["one"] == before["one"]
    assert after["many"] == before["many"]
    assert sum(after["one"].values()) == _RECORDS
    assert sum(after["many"].values()) == _RECORDS


async def test_probe_finds_true_end_offset(kafka_bootstrap: str, namespace: str) -> None:
    """Pins the embedded broker's fault: its reported end is the last batch's start + 1.

    Faust's recovery applies records past that end only if they were fetched
    before it declares recovery done, so without the probe a restarted worker
    may miss the last batch of a changelog partition, depending on timing.
    """
    topic = f"{namespace}-end-offsets"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=200)
    for _ in range(5):
        producer.send(topic, value=b"single")
        producer.flush()
    for _ in range(300):
        producer.send(topic, value=b"batched")
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    reported = consumer.end_offsets([TopicPartition(topic, 0)])[TopicPartition(topic, 0)]
    consumer.close()

    probed = await probe_end_offsets(kafka_bootstrap, {TP(topic, 0): reported})

    assert probed[TP(topic, 0)] == 305
    if needs_probe(broker_cluster_id(kafka_bootstrap)):
        assert reported < 305
    else:
        assert reported == 305
