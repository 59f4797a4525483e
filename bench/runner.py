"""`python -m bench run`: produce the input once, then measure each consumer on it in turn.

Stages, each its own process on the same input topic: the raw aiokafka loop,
the bare Faust agent, the reference Faust agent and the worker (optionally
under py-spy). CPU use of the broker and Redis is reported beside each figure,
because on a small machine they share the cores with the measured process.
The scale stages, `scale2` (two workers against one) and `customers` (the
worker over several customer counts), produce inputs of their own. The
latency stage runs last, on topics of its own (see `bench.latency_stage`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
import structlog

from bench.data import BaseEvent, BenchInput, default_data_dir, load_base_events
from bench.kafka_io import ProcessTimes, produce, read_result, rss_bytes
from bench.latency_stage import DEFAULT_RATE, measure_latency
from bench.recovery_stage import Variant
from bench.report import print_table, ratios
from bench.state_dictionary import state_dictionary
from tagger.rules import engine_build
from tagger.streams.config import Settings
from tagger.streams.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from tagger.streams.logs import configure_logging
from tagger.streams.topics import create_topics

__all__ = ["main"]

log = structlog.get_logger(__name__)

STAGES = ("raw", "bare", "reference", "worker", "latency", "faust-latency", "scale2", "customers")
# Stages that offer a load of their own and run last, at the same rate.
_LATENCY_STAGES = ("latency", "faust-latency")
# Stages whose figures are not one consumer's rate, kept beside "stages" in the JSON.
# They produce inputs of their own and take long, so they run only when named.
_SCALE_STAGES = ("scale2", "customers")
_DEFAULT_STAGES = tuple(stage for stage in STAGES if stage not in _SCALE_STAGES)
_STORES = {"memory": "memory://", "rocksdb": "rocksdb://"}
# Every stage gives up after this long, so a stuck consumer cannot hang the run.
_STAGE_TIMEOUT_S = 1800.0
_POLL_INTERVAL_S = 0.1
# A group on the embedded broker forms in about half the session timeout.
_SESSION_TIMEOUT_S = 10.0


@dataclass(slots=True)
class Context:
    """The servers, input topic and work folder that every stage uses."""

    bootstrap: str
    redis_url: str
    run_id: str
    topic: str
    events: int
    customers: int
    workdir: Path
    server_pids: dict[str, int | None]
    partitions: int = 8
    store: str = "memory://"
    # TAGGER_FETCH_MAX_WAIT_MS of the worker and the Faust agents; 0 is the worker's default.
    fetch_wait_ms: int = 0
    # Rulebook of every worker; None is the default rulebook.
    rulebook_path: str | None = None

    def worker_settings(self, name: str) -> Settings:
        """Return settings of a worker reading the benchmark input in replay clock mode."""
        prefix = f"{self.run_id}-{name}"
        return Settings(
            kafka_bootstrap_servers=self.bootstrap,
            redis_url=self.redis_url,
            app_id=f"{prefix}-app",
            input_topics=(self.topic,),
            tag_change_topic=f"{prefix}-tag-changes",
            dead_letter_topic=f"{prefix}-dead-letters",
            redis_prefix=f"{prefix}:",
            partitions=self.partitions,
            clock_mode="replay",
            web_port=free_port(),
            data_dir=str(self.workdir / f"{name}-data"),
            broker_session_timeout_s=_SESSION_TIMEOUT_S,
            log_level="info",
            fetch_max_wait_ms=self.fetch_wait_ms,
            rulebook_path=self.rulebook_path,
            extra={"store": self.store},
        ).validated()


@click.group()
def main() -> None:
    """Benchmarks of the customer tagger (run on demand, never as tests)."""


@main.command()
@click.option("--events", type=int, default=1_000_000, show_default=True, help="Input events.")
@click.option(
    "--customers", type=int, default=100_000, show_default=True, help="Distinct customers."
)
@click.option(
    "--quick",
    is_flag=True,
    help="Shortcut for --events 100000 --customers 10000; overrides both options.",
)
@click.option(
    "--stages",
    default=",".join(_DEFAULT_STAGES),
    show_default=True,
    help="Comma-separated stages to run: raw, bare, reference, worker, latency, "
    "faust-latency (the latency load on a Faust agent that publishes in the worker's "
    "order, see --faust-latency-outputs), scale2, customers.",
)
@click.option(
    "--latency-rate",
    type=click.FloatRange(min=1.0),
    default=None,
    help="Offered load of both latency stages in events/s. Default: half the worker "
    f"stage's events/s when it ran in the same command, else {DEFAULT_RATE:.0f}.",
)
@click.option(
    "--latency-seconds",
    type=click.FloatRange(min=1.0),
    default=30.0,
    show_default=True,
    help="How long each latency stage offers its load, in seconds.",
)
@click.option(
    "--latency-warmup-seconds",
    "latency_warmup_s",
    type=click.FloatRange(min=0.0),
    default=3.0,
    show_default=True,
    help="Seconds of the same load offered first and left out of the latency figures.",
)
@click.option(
    "--faust-latency-outputs",
    "faust_latency_outputs",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Records the faust-latency stage's agent publishes per event. Default: the "
    "latency stage's tag changes per event when it ran in the same command, else 1.",
)
@click.option(
    "--store",
    type=click.Choice(sorted(_STORES)),
    default="memory",
    show_default=True,
    help="Table store of the worker stage (TAGGER_STORE).",
)
@click.option(
    "--recovery-store",
    type=click.Choice(sorted(_STORES)),
    default=None,
    help="Table store of both recoveries after the worker stage; --store when unset.",
)
@click.option(
    "--recovery-try",
    "recovery_tries",
    multiple=True,
    metavar="NAME=VALUE",
    help="After the recovery comparison, restore again with one Faust setting changed: "
    "an env var Faust reads (CONSUMER_MAX_FETCH_SIZE=8388608) or recovery_buffer_size=N "
    "(plain Faust app only). Repeatable.",
)
@click.option(
    "--recovery-runs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Times the worker and the plain Faust app each recover, in turns; "
    "the comparison uses medians.",
)
@click.option(
    "--profile-recovery",
    "recovery_profile_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also run both recoveries under py-spy and write their collapsed stacks here.",
)
@click.option(
    "--standby-replicas",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="TAGGER_STANDBY_REPLICAS of every worker in the scale2 stage.",
)
@click.option(
    "--customer-counts",
    default="100000,1000000",
    show_default=True,
    help="Comma-separated customer counts of the customers stage, at --events events each.",
)
@click.option(
    "--events-per-customer",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Customers stage: give each count this many events per customer instead of "
    "--events, so that every count has the same input shape.",
)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Run the worker under py-spy and write its collapsed stacks to this file.",
)
@click.option(
    "--fetch-wait-ms",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="TAGGER_FETCH_MAX_WAIT_MS of the worker stages and the Faust agents; "
    "0 is the worker's default (10 ms on the embedded broker, else Faust's 1,500).",
)
@click.option(
    "--rulebook",
    "rulebook_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Rulebook of every worker stage instead of the default one, such as "
    "bench/rulebooks/idle.yaml (one rule that never fires).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write every figure, with the date, machine and input, to this JSON file.",
)
def run(
    events: int,
    customers: int,
    quick: bool,
    stages: str,
    profile_path: Path | None,
    json_path: Path | None,
    latency_rate: float | None,
    latency_seconds: float,
    latency_warmup_s: float,
    faust_latency_outputs: float | None,
    store: str,
    recovery_store: str | None,
    recovery_tries: tuple[str, ...],
    recovery_runs: int,
    recovery_profile_dir: Path | None,
    standby_replicas: int,
    customer_counts: str,
    events_per_customer: float | None,
    fetch_wait_ms: int,
    rulebook_path: Path | None,
) -> None:
    """Start the embedded broker and Redis (or use KAFKA_BOOTSTRAP_SERVERS and REDIS_URL),
    produce the input, run each stage and print events/s and ratios."""
    configure_logging("info", quiet_kafka=True)
    if quick:
        events, customers = 100_000, 10_000
    selected = [stage.strip() for stage in stages.split(",") if stage.strip()]
    unknown = sorted(set(selected) - set(STAGES))
    if unknown:
        raise click.BadParameter(
            f"unknown stages {unknown}: use {', '.join(STAGES)}", param_hint="'--stages'"
        )
    if profile_path is not None or recovery_profile_dir is not None:
        from bench.worker_stage import py_spy_path

        py_spy_path()
    options = _ScaleOptions(
        recovery_store=_STORES[recovery_store or store],
        variants=[Variant.parse(text) for text in recovery_tries],
        recovery_runs=recovery_runs,
        recovery_profile_dir=recovery_profile_dir,
        standby_replicas=standby_replicas,
        customer_counts=_parse_counts(customer_counts),
        events_per_customer=events_per_customer,
        latency=_LatencyLoad(
            latency_rate, latency_seconds, latency_warmup_s, faust_latency_outputs
        ),
    )

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="tagger-bench-") as tmp:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        redis_url = os.environ.get("REDIS_URL")
        pids: dict[str, int | None] = {}
        if not bootstrap:
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap_servers
            pids["broker"] = broker.pid
        if not redis_url:
            redis_server = stack.enter_context(EmbeddedRedis())
            redis_url = redis_server.url
            pids["redis"] = redis_server.pid
        run_id = "bench" + uuid.uuid4().hex[:6]
        context = Context(
            bootstrap=bootstrap,
            redis_url=redis_url,
            run_id=run_id,
            topic=f"{run_id}-events",
            events=events,
            customers=customers,
            workdir=Path(tmp),
            server_pids=pids,
            store=_STORES[store],
            fetch_wait_ms=fetch_wait_ms,
            rulebook_path=None if rulebook_path is None else str(rulebook_path.resolve()),
        )
        figures = _run_stages(context, selected, profile_path, options)

    print_table(figures)
    if json_path is not None:
        json_path.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        log.info("figures written", path=str(json_path))


@dataclass(frozen=True, slots=True)
class _LatencyLoad:
    """The latency stages' options: offered events/s (None: derived), seconds, warm-up,
    and the Faust agent's records per event (None: derived)."""

    rate: float | None
    seconds: float
    warmup_s: float
    outputs_per_event: float | None


@dataclass(frozen=True, slots=True)
class _ScaleOptions:
    """Options of the recovery comparison, the scale stages and the latency stage."""

    recovery_store: str
    variants: list[Variant]
    recovery_runs: int
    recovery_profile_dir: Path | None
    standby_replicas: int
    customer_counts: list[int]
    events_per_customer: float | None
    latency: _LatencyLoad


def _parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"invalid customer counts {text!r}: {exc}") from exc
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"invalid customer counts {text!r}: use counts of 1 or more")
    return counts


def _run_stages(
    context: Context, selected: list[str], profile_path: Path | None, options: _ScaleOptions
) -> dict[str, Any]:
    base, source = load_base_events(default_data_dir())
    bench_input = BenchInput(base, context.events, context.customers)
    # Creating the worker's topics creates the input topic with its partition count.
    create_topics(context.worker_settings("worker"))
    # The scale and latency stages make their own inputs, so a run of only those
    # skips this one.
    produce_seconds: float | None = None
    if set(selected) - {*_SCALE_STAGES, *_LATENCY_STAGES}:
        produce_seconds = produce(context.bootstrap, context.topic, bench_input.records())

    figures: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "input": {
            "source": source,
            "events": context.events,
            "customers": context.customers,
            "sample_copies": bench_input.cycles,
            "customers_per_sample_customer": bench_input.split,
            "partitions": context.partitions,
            "produce_events_per_s": (
                round(context.events / produce_seconds) if produce_seconds else None
            ),
            "store": context.store,
            "rulebook": context.rulebook_path or "default",
        },
        "stages": {},
    }
    runners: dict[str, Callable[[Context], dict[str, Any]]] = {
        "raw": _run_raw,
        "bare": lambda ctx: _run_faust(ctx, "bare"),
        "reference": lambda ctx: _run_faust(ctx, "reference"),
        "worker": lambda ctx: _run_worker(ctx, profile_path),
        "latency": lambda ctx: _run_latency(ctx, figures, base, options.latency),
        "faust-latency": lambda ctx: _run_latency(
            ctx, figures, base, options.latency, target="publishing"
        ),
    }
    scale_runners: dict[str, Callable[[Context], dict[str, Any]]] = {
        "scale2": lambda ctx: _run_scale2(ctx, bench_input, options.standby_replicas),
        "customers": lambda ctx: _run_customers(
            ctx, base, options.customer_counts, options.events_per_customer
        ),
    }
    log.info("stages starting", stages=selected, engine=figures["machine"]["engine"])
    for stage in selected:
        if stage in _LATENCY_STAGES:
            # Run last, so that their rate can follow the worker stage's.
            continue
        if stage == "customers" and options.events_per_customer is not None:
            log.info("stage starting", stage=stage, events_per_customer=options.events_per_customer)
        else:
            log.info("stage starting", stage=stage, events=context.events)
        if stage in _SCALE_STAGES:
            figures[stage] = scale_runners[stage](context)
            continue
        figures["stages"][stage] = runners[stage](context)
        log.info("stage finished", stage=stage, **figures["stages"][stage])
    figures["ratios"] = ratios(figures["stages"])
    # A profiling run skips state and recovery, so that it stays short.
    if "worker" in figures["stages"] and profile_path is None:
        _run_state(context, figures, options)
    if "latency" in selected:
        figures["latency"] = runners["latency"](context)
        log.info("latency measured", **figures["latency"])
    if "faust-latency" in selected:
        figures["faust_latency"] = runners["faust-latency"](context)
        log.info("Faust agent latency measured", **figures["faust_latency"])
    return figures


def _run_latency(
    context: Context,
    figures: dict[str, Any],
    base: list[BaseEvent],
    load: _LatencyLoad,
    target: str = "worker",
) -> dict[str, Any]:
    rate, rate_source = load.rate, "option"
    worker_rate = figures["stages"].get("worker", {}).get("events_per_s")
    if rate is None and worker_rate:
        rate, rate_source = worker_rate / 2, "half the worker stage"
    elif rate is None:
        rate, rate_source = DEFAULT_RATE, "default"
    log.info(
        "stage starting",
        stage="latency" if target == "worker" else "faust-latency",
        rate=rate,
        seconds=load.seconds,
        warmup_s=load.warmup_s,
    )
    outputs_per_event, outputs_source = 1.0, "default"
    worker_latency = figures.get("latency")
    if load.outputs_per_event is not None:
        outputs_per_event, outputs_source = load.outputs_per_event, "option"
    elif target == "publishing" and worker_latency and worker_latency["events"]:
        # As many records on the broker as the worker's tag changes at this load.
        outputs_per_event = worker_latency["topic"]["count"] / worker_latency["events"]
        outputs_source = "the latency stage's tag changes per event"
    result = measure_latency(
        context,
        rate=rate,
        seconds=load.seconds,
        warmup_s=load.warmup_s,
        base=base,
        timeout_s=_STAGE_TIMEOUT_S,
        target=target,
        outputs_per_event=outputs_per_event,
    )
    if target == "publishing":
        result["outputs_per_event"] = round(outputs_per_event, 3)
        result["outputs_source"] = outputs_source
    return {"rate_source": rate_source, **result}


def _run_state(context: Context, figures: dict[str, Any], options: _ScaleOptions) -> None:
    from bench.recovery_stage import compare_recovery
    from bench.state_stage import measure_recovery, measure_state

    settings = context.worker_settings("worker")
    worker = figures["stages"]["worker"]
    figures["state"] = measure_state(
        settings, worker.get("rss_bytes"), rss_at_start=worker.get("rss_bytes_at_start")
    )
    log.info("state measured", **figures["state"])
    # The changelog is the same whatever store wrote it, so both recoveries may use another.
    settings = dataclasses.replace(settings, extra={"store": options.recovery_store})
    figures["recovery"] = measure_recovery(
        context, settings, figures["state"]["customers"], timeout_s=_STAGE_TIMEOUT_S
    )
    log.info("recovery measured", **figures["recovery"])
    figures["recovery_comparison"] = compare_recovery(
        context,
        settings,
        figures["recovery"],
        figures["state"]["customers"],
        runs=options.recovery_runs,
        variants=options.variants,
        profile_dir=options.recovery_profile_dir,
        timeout_s=_STAGE_TIMEOUT_S,
    )


def _run_scale2(context: Context, bench_input: BenchInput, standby_replicas: int) -> dict[str, Any]:
    from bench.scale_stage import measure_scale2

    return measure_scale2(
        context,
        bench_input.records,
        standby_replicas=standby_replicas,
        timeout_s=_STAGE_TIMEOUT_S,
    )


def _run_customers(
    context: Context, base: list[BaseEvent], counts: list[int], per_customer: float | None
) -> dict[str, Any]:
    from bench.scale_stage import measure_customers

    return measure_customers(
        context, base, counts, events_per_customer=per_customer, timeout_s=_STAGE_TIMEOUT_S
    )


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # The worker stages run this install's engine: "mypyc" or "python".
        "engine": engine_build(),
    }


def start_child(
    command: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` with its output appended to `log_path`, and log its pid."""
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
    log.info("child started", pid=process.pid, command=command[:4], log=str(log_path))
    return process


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("child did not stop in time, killing", pid=process.pid)
            process.kill()
            process.wait()
    log.info("child stopped", pid=process.pid, returncode=process.returncode)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_result(
    process: subprocess.Popen[bytes], result: Path, log_path: Path, times: ProcessTimes
) -> dict[str, Any]:
    deadline = time.monotonic() + _STAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        times.sample()
        data = read_result(result)
        if data is not None:
            return dict(data)
        if process.poll() is not None:
            raise click.ClickException(
                f"child {process.pid} exited with code {process.returncode} before reporting; "
                f"log tail:\n{_tail(log_path)}"
            )
        time.sleep(_POLL_INTERVAL_S)
    raise click.ClickException(f"child {process.pid} reported nothing in {_STAGE_TIMEOUT_S:.0f} s")


def _rate(events: int, seconds: float) -> float:
    return round(events / seconds, 1) if seconds > 0 else 0.0


def _run_raw(context: Context) -> dict[str, Any]:
    result = context.workdir / "raw.json"
    log_path = context.workdir / "raw.log"
    process = start_child(
        [
            sys.executable,
            "-m",
            "bench.agents",
            "raw",
            "--bootstrap",
            context.bootstrap,
            "--topic",
            context.topic,
            "--out-topic",
            f"{context.run_id}-raw-out",
            "--group",
            f"{context.run_id}-raw",
            "--events",
            str(context.events),
            "--result",
            str(result),
        ],
        log_path,
    )
    times = ProcessTimes({"consumer": process.pid, **context.server_pids})
    try:
        data = _wait_result(process, result, log_path, times)
        cpu = times.shares(float(data["seconds"]))
    finally:
        _stop(process)
    return {
        "events": data["events"],
        "seconds": round(float(data["seconds"]), 2),
        "events_per_s": _rate(int(data["events"]), float(data["seconds"])),
        "cpu_cores": cpu,
    }


def faust_agent_command(
    mode: str,
    settings: Settings,
    *,
    events: int | None = None,
    result: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """Return the command of a comparison Faust agent with the worker's `settings`.

    `settings.input_topics[0]` is the agent's input topic. `events` and
    `result` are for the agents that report a count, and are left out when None.
    """
    reporting = []
    if events is not None and result is not None:
        reporting = ["--events", str(events), "--result", str(result)]
    return [
        sys.executable,
        "-m",
        "bench.agents",
        "faust",
        "--mode",
        mode,
        "--bootstrap",
        settings.kafka_bootstrap_servers,
        "--topic",
        settings.input_topics[0],
        "--app-id",
        settings.app_id,
        "--partitions",
        str(settings.partitions),
        "--batch-size",
        str(settings.batch_size),
        "--within",
        str(settings.batch_timeout_s),
        "--session-timeout",
        str(settings.broker_session_timeout_s),
        "--commit-interval",
        str(settings.commit_interval_s),
        "--fetch-wait-ms",
        str(settings.fetch_max_wait_ms),
        "--web-port",
        str(settings.web_port),
        "--data-dir",
        settings.data_dir,
        *reporting,
        *extra,
    ]


def _run_faust(context: Context, mode: str) -> dict[str, Any]:
    result = context.workdir / f"{mode}.json"
    log_path = context.workdir / f"{mode}.log"
    settings = context.worker_settings(mode)
    process = start_child(
        faust_agent_command(mode, settings, events=context.events, result=result), log_path
    )
    times = ProcessTimes({"consumer": process.pid, **context.server_pids})
    try:
        data = _wait_result(process, result, log_path, times)
        cpu = times.shares(float(data["seconds"]))
        rss = rss_bytes(process.pid)
    finally:
        _stop(process)
    return {
        "events": data["events"],
        "seconds": round(float(data["seconds"]), 2),
        "events_per_s": _rate(int(data["events"]), float(data["seconds"])),
        "cpu_cores": cpu,
        "rss_bytes": rss,
    }


def _run_worker(context: Context, profile_path: Path | None) -> dict[str, Any]:
    from bench.worker_stage import measure_worker

    return measure_worker(context, profile_path, timeout_s=_STAGE_TIMEOUT_S)


main.add_command(state_dictionary)
