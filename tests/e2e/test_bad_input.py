"""Bad input reaches the dead-letter topic with its reason; misrouted events are still applied."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import orjson
from kafka import KafkaProducer

from tagger.streams.config import Settings
from tagger.streams.partitioning import partition_for
from tagger.streams.replay import replay_events
from tagger.streams.worker_process import WorkerProcess, caught_up_to
from tests.e2e.conftest import CATCH_UP_TIMEOUT_S
from tests.e2e.events import purchase
from tests.e2e.helpers import mirror_tags, read_topic

_BASE = 1_709_251_200_000


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_bad_records_dead_lettered_and_counted(
    replay_settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = replay_settings
    worker = start_worker(settings)
    topic = settings.input_topics[0]
    good = orjson.dumps(purchase("rekeyed", _BASE))
    moved = orjson.dumps(purchase("moved", _BASE))
    wrong_partition = (partition_for(b"moved", settings.partitions) + 1) % settings.partitions
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    sends = [
        (b"k1", b"{not json", None),
        (b"k2", b"\xff\xfe\xfa", None),
        (b"k3", orjson.dumps({"event_id": "e3", "customer_id": "k3", "type": "purchase"}), None),
        (
            b"k4",
            orjson.dumps({"event_id": "e4", "customer_id": "k4", "type": "teleport", "ts": _BASE}),
            None,
        ),
        (b"k5", orjson.dumps({"type": "clock", "ts": _BASE}), None),
        (b"k6", orjson.dumps(purchase("k6", _BASE, "1,399.80")), None),
        (b"k7", orjson.dumps(purchase("k7", 4_102_000_000_000)), None),
        (b"someone-else", good, None),
        (b"moved", moved, wrong_partition),
    ]
    for key, value, partition in sends:
        producer.send(topic, key=key, value=value, partition=partition)
    producer.flush()
    producer.close()
    report = replay_events([], settings, end_clock=_BASE + 1, progress=False)
    worker.wait_for(
        lambda status: caught_up_to(
            status, end_clock=report.end_clock, partitions=settings.partitions
        ),
        timeout_s=CATCH_UP_TIMEOUT_S,
        what="caught up",
    )

    dead = [orjson.loads(value) for _, value in read_topic(settings, settings.dead_letter_topic)]
    reasons = sorted(d["reason"] for d in dead)
    assert reasons == sorted(
        [
            "invalid_json",
            "invalid_utf8",
            "missing_field",
            "unknown_type",
            "clock_with_key",
            "invalid_amount",
            "timestamp_in_future",
        ]
    )
    assert all(d["source"]["topic"] == topic for d in dead)
    assert all(isinstance(d["source"]["offset"], int) for d in dead)
    tags = mirror_tags(settings)
    assert "existing" in tags["rekeyed"]
    assert "existing" in tags["moved"]

    status, metrics = _get(settings.web_port, "/metrics")
    assert status == 200
    assert 'tagger_invalid_events_total{reason="invalid_json"} 1.0' in metrics
    assert "tagger_repartitioned_events_total 2.0" in metrics
    assert 'tagger_events_total{type="purchase"} 2.0' in metrics
    assert "faust_" in metrics
    assert _get(settings.web_port, "/healthz")[0] == 200
    assert _get(settings.web_port, "/readyz")[0] == 200
    assert _get(settings.web_port, "/table")[0] == 404
