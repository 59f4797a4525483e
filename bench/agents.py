"""Comparison consumers, each run as its own process by `bench.runner`.

- `raw`: aiokafka consume, orjson decode, dict update, one produced record per
  20 inputs: what the broker and client allow, the denominator of the ratios.
- `faust --mode bare`: a Faust agent that iterates the topic and does nothing else.
- `faust --mode reference`: a Faust agent that takes batches like the worker,
  decodes each event and writes one Table entry per distinct customer per batch.
- `faust --mode publishing`: the reference agent that then publishes records
  in the worker's order: changelog acknowledged first, then the outputs,
  acknowledged before the next batch. `--outputs-per-event` sets how many,
  spread evenly over the events, so that the broker carries as many records
  as the worker's tag changes. The latency stage offers it the worker's
  load, to measure what Faust and the broker alone add to the latency.
- `recovery`: a plain Faust app with one Table, the worker's customers table,
  that restores it from the changelog with faust-streaming's default recovery.

The first three write a JSON result (events, seconds from first to last event)
to `--result`. `publishing` writes no result: it writes `--ready-file` once
its partitions are assigned and recovered. `recovery` logs `recovery
finished` lines as the worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import click
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry

from bench.kafka_io import write_result
from tagger.streams.app import PRODUCER_BUFFER_RECORDS, PRODUCER_LINGER_MS, fetch_max_wait_ms
from tagger.streams.end_offsets import broker_cluster_id, needs_probe
from tagger.streams.faust_app import TaggerApp, TaggerWorker
from tagger.streams.faust_sensor import install_faust_sensor
from tagger.streams.gc_pauses import tune_gc
from tagger.streams.logs import configure_logging
from tagger.streams.processor import send_in_order
from tagger.streams.recovery_progress import RecoveryProgress

log = structlog.get_logger(__name__)

# The raw loop produces one output record per this many inputs, about the
# ratio of tag changes to events in the samples.
OUTPUT_EVERY = 20
_RAW_MAX_RECORDS = 5_000
_RAW_FETCH_MAX_BYTES = 64 * 1024 * 1024


@click.group()
def main() -> None:
    """Run one comparison consumer (called by `python -m bench run`)."""


@main.command()
@click.option("--bootstrap", required=True, help="Kafka bootstrap servers, host:port.")
@click.option("--topic", required=True, help="Input topic.")
@click.option("--out-topic", required=True, help="Topic of the produced records.")
@click.option("--group", required=True, help="Consumer group id.")
@click.option("--events", type=int, required=True, help="Events to consume before stopping.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, help="Give up after (s).")
@click.option("--result", type=click.Path(path_type=Path), required=True, help="Result file.")
def raw(
    bootstrap: str,
    topic: str,
    out_topic: str,
    group: str,
    events: int,
    timeout_s: float,
    result: Path,
) -> None:
    """Consume, decode, update a dict and produce with aiokafka at its best settings."""
    write_result(
        result, asyncio.run(_raw_loop(bootstrap, topic, out_topic, group, events, timeout_s))
    )


async def _raw_loop(
    bootstrap: str, topic: str, out_topic: str, group: str, events: int, timeout_s: float
) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=_RAW_MAX_RECORDS,
        fetch_max_bytes=_RAW_FETCH_MAX_BYTES,
        max_partition_fetch_bytes=_RAW_FETCH_MAX_BYTES // 8,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024
    )
    await consumer.start()
    await producer.start()
    log.info("raw loop started", topic=topic, group=group, events=events)
    state: dict[str, int] = {}
    consumed = 0
    first: float | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while consumed < events and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=_RAW_MAX_RECORDS)
            pending = []
            for records in batches.values():
                if first is None and records:
                    first = time.monotonic()
                for record in records:
                    event = orjson.loads(record.value)
                    customer = event["customer_id"]
                    state[customer] = state.get(customer, 0) + 1
                    consumed += 1
                    if consumed % OUTPUT_EVERY == 0:
                        output = orjson.dumps({"customer_id": customer, "n": state[customer]})
                        pending.append(await producer.send(out_topic, output, key=record.key))
            if pending:
                await asyncio.gather(*pending)
        await producer.flush()
        last = time.monotonic()
        await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()
    seconds = last - first if first is not None else 0.0
    log.info("raw loop finished", consumed=consumed, seconds=round(seconds, 2))
    return {"events": consumed, "seconds": seconds, "customers": len(state)}


def _prepare(bootstrap: str, data_dir: Path) -> None:
    """Set up what every Faust comparison shares with the worker before its app is built.

    The worker runs on uvloop where it is installed, and reads changelogs to
    their true end on the embedded broker; so do its comparisons.
    """
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    TaggerApp.probe_end_offsets = needs_probe(broker_cluster_id(bootstrap))
    data_dir.mkdir(parents=True, exist_ok=True)


@main.command()
@click.option("--mode", type=click.Choice(["bare", "reference", "publishing"]), required=True)
@click.option("--bootstrap", required=True, help="Kafka bootstrap servers, host:port.")
@click.option("--topic", required=True, help="Input topic.")
@click.option("--app-id", required=True, help="Faust app id (the consumer group).")
@click.option("--partitions", type=int, default=8, help="Partitions of topic and table.")
@click.option("--batch-size", type=int, default=1000, help="take_events batch size.")
@click.option("--within", type=float, default=0.05, help="take_events wait (s).")
@click.option("--session-timeout", type=float, default=10.0, help="Broker session timeout (s).")
@click.option("--commit-interval", type=float, default=1.0, help="Offset commit interval (s).")
@click.option(
    "--fetch-wait-ms", type=int, default=0, help="TAGGER_FETCH_MAX_WAIT_MS, as the worker reads it."
)
@click.option("--web-port", type=int, required=True, help="Port of the Faust web server.")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
@click.option(
    "--events", type=int, default=None, help="Events to consume before reporting (bare, reference)."
)
@click.option(
    "--result", type=click.Path(path_type=Path), default=None, help="Result file (bare, reference)."
)
@click.option("--out-topic", default=None, help="Topic of the published records (publishing).")
@click.option(
    "--outputs-per-event",
    type=click.FloatRange(min=0.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Records published per event on average (publishing).",
)
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path),
    default=None,
    help="File written once partitions are assigned and recovered (publishing).",
)
def faust(
    mode: str,
    bootstrap: str,
    topic: str,
    app_id: str,
    partitions: int,
    batch_size: int,
    within: float,
    session_timeout: float,
    commit_interval: float,
    fetch_wait_ms: int,
    web_port: int,
    data_dir: Path,
    events: int | None,
    result: Path | None,
    out_topic: str | None,
    outputs_per_event: float,
    ready_file: Path | None,
) -> None:
    """Run a comparison Faust agent with the worker's app settings until stopped."""
    if mode == "publishing" and (out_topic is None or ready_file is None):
        raise click.UsageError("--mode publishing needs --out-topic and --ready-file")
    if mode != "publishing" and (events is None or result is None):
        raise click.UsageError(f"--mode {mode} needs --events and --result")
    _prepare(bootstrap, data_dir)
    # _prepare turns the end-offset probe on exactly for the embedded Tansu broker.
    TaggerApp.fetch_max_wait_ms = fetch_max_wait_ms(
        fetch_wait_ms, tansu=TaggerApp.probe_end_offsets
    )
    # The same app arguments as tagger.streams.app.build_app, minus the security options.
    app = TaggerApp(
        app_id,
        broker=[f"kafka://{server}" for server in bootstrap.split(",")],
        store="memory://",
        datadir=str(data_dir),
        topic_partitions=partitions,
        topic_disable_leader=True,
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=min(3.0, session_timeout / 3),
        broker_commit_interval=commit_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=PRODUCER_LINGER_MS,
        table_standby_replicas=0,
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=web_port,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
    )
    app.producer.buffer.max_messages = PRODUCER_BUFFER_RECORDS
    source = app.topic(
        topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
    table = app.Table(
        "customers",
        default=None,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        use_partitioner=True,
    )
    progress: dict[str, Any] = {"count": 0, "first": None}

    def count(done: int) -> None:
        if progress["first"] is None:
            progress["first"] = time.monotonic()
        before = progress["count"]
        progress["count"] = before + done
        assert events is not None and result is not None
        if before < events <= progress["count"]:
            seconds = time.monotonic() - progress["first"]
            log.info("faust agent consumed every event", mode=mode, seconds=round(seconds, 2))
            write_result(result, {"events": progress["count"], "seconds": seconds})

    if mode == "bare":

        @app.agent(source, name=f"{app_id}.bare")
        async def bare(stream: Any) -> None:
            async for _value in stream:
                count(1)

    elif mode == "publishing":
        assert out_topic is not None and ready_file is not None
        _add_publishing_agent(
            app,
            source,
            table,
            batch_size=batch_size,
            within=within,
            out_topic=out_topic,
            outputs_per_event=outputs_per_event,
            ready_file=ready_file,
        )
    else:

        @app.agent(source, name=f"{app_id}.reference")
        async def reference(stream: Any) -> None:
            async for batch in stream.take_events(batch_size, within=within):
                latest: dict[bytes, bytes] = {}
                for event in batch:
                    decoded = orjson.loads(event.message.value)
                    latest[event.message.key] = decoded["customer_id"].encode()
                for key, value in latest.items():
                    table[key] = value
                count(len(batch))

    install_faust_sensor(app, CollectorRegistry())
    # The worker tunes its garbage collector once its app is built, and so does the agent.
    tune_gc()
    worker = TaggerWorker(app, loglevel="info", redirect_stdouts=False, override_logging=False)
    log.info("faust agent starting", mode=mode, app_id=app_id, topic=topic)
    worker.execute_from_commandline()


class OutputSpread:
    """Records to publish per event, spread evenly so that they average `per_event`."""

    def __init__(self, per_event: float) -> None:
        self.per_event = per_event
        # Records owed: each event adds `per_event`, each record published takes one.
        self._owed = 0.0

    def next_event(self) -> int:
        """Return how many records the next event publishes."""
        self._owed += self.per_event
        records = int(self._owed)
        self._owed -= records
        return records

    @classmethod
    def total(cls, events: int, per_event: float) -> int:
        """Return how many records `events` events publish in all."""
        spread = cls(per_event)
        return sum(spread.next_event() for _ in range(events))


def _add_publishing_agent(
    app: TaggerApp,
    source: Any,
    table: Any,
    *,
    batch_size: int,
    within: float,
    out_topic: str,
    outputs_per_event: float,
    ready_file: Path,
) -> None:
    """Add the publishing agent to `app`, and write `ready_file` after each rebalance."""
    spread = OutputSpread(outputs_per_event)

    @app.agent(source, name=f"{app.conf.id}.publishing")
    async def publishing(stream: Any) -> None:
        async for batch in stream.take_events(batch_size, within=within):
            latest: dict[bytes, bytes] = {}
            outputs: list[tuple[bytes, bytes]] = []
            for event in batch:
                decoded = orjson.loads(event.message.value)
                latest[event.message.key] = decoded["customer_id"].encode()
                output = {"customer_id": decoded["customer_id"], "at": decoded["ts"]}
                outputs.extend([(event.message.key, orjson.dumps(output))] * spread.next_event())
            for key, value in latest.items():
                table[key] = value
            # The worker's order: states durable before any output is sent.
            await app.producer.flush()
            await send_in_order(
                [
                    app.producer.send(
                        out_topic, key, value, partition=None, timestamp=None, headers=None
                    )
                    for key, value in outputs
                ]
            )

    @app.on_rebalance_complete.connect
    async def on_ready(sender: Any, **kwargs: Any) -> None:
        # A few bytes, once per rebalance: not worth a thread.
        ready_file.write_text("ready\n")  # noqa: ASYNC240
        log.info("publishing agent ready", app_id=app.conf.id)


@main.command()
@click.option("--bootstrap", required=True, help="Kafka bootstrap servers, host:port.")
@click.option("--app-id", required=True, help="App id of the worker whose changelog is restored.")
@click.option("--partitions", type=int, default=8, help="Partitions of the changelog.")
@click.option(
    "--store",
    type=click.Choice(["memory://", "rocksdb://"]),
    default="memory://",
    show_default=True,
    help="Faust store of the table.",
)
@click.option("--session-timeout", type=float, default=10.0, help="Broker session timeout (s).")
@click.option(
    "--recovery-buffer-size",
    type=int,
    default=None,
    help="The Table's recovery_buffer_size (records applied per store batch); "
    "Faust's default (1000) when unset.",
)
@click.option(
    "--log-interval",
    type=float,
    default=0.2,
    show_default=True,
    help="Recovery progress log interval (s); recovery is sampled twice as often.",
)
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
def recovery(
    bootstrap: str,
    app_id: str,
    partitions: int,
    store: str,
    session_timeout: float,
    recovery_buffer_size: int | None,
    log_interval: float,
    data_dir: Path,
) -> None:
    """Restore the worker's customers table with a plain Faust app until stopped.

    The app has the worker's app id and one Table named like the worker's
    customers table, so it reads `<app id>-customers-changelog`. Recovery
    settings are Faust's defaults, and Faust reads its settings' env vars
    (such as CONSUMER_MAX_FETCH_SIZE) as usual, so a caller can try others.
    Apart from the table, only three things differ from a bare `faust.App`.
    The consumer reads changelogs to their true end on the embedded broker,
    as the worker's does, so both restore the same records. The session
    timeout is short, so that the group forms sooner. The web server is off.
    Recovery is timed by the worker's own sampler (`RecoveryProgress`),
    which only reads Faust's recovery state.
    """
    configure_logging("info")
    _prepare(bootstrap, data_dir)
    app = TaggerApp(
        app_id,
        broker=[f"kafka://{server}" for server in bootstrap.split(",")],
        store=store,
        datadir=str(data_dir),
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=min(3.0, session_timeout / 3),
        web_enabled=False,
    )
    table_options: dict[str, Any] = {}
    if recovery_buffer_size is not None:
        table_options["recovery_buffer_size"] = recovery_buffer_size
    app.Table(
        "customers",
        default=None,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        **table_options,
    )
    progress = RecoveryProgress(app, log_interval_s=log_interval, stall_s=30.0)
    worker = TaggerWorker(
        app, progress, loglevel="info", redirect_stdouts=False, override_logging=False
    )
    log.info(
        "plain Faust recovery starting",
        app_id=app_id,
        store=store,
        recovery_buffer_size=recovery_buffer_size,
    )
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
