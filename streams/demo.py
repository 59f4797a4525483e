"""`tagger demo`: broker, Redis, a worker in replay mode, a replay, and a summary."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
import structlog
from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from tagger.rules import engine_build
from tagger.rules.rulebook import Rulebook, load_rulebook
from tagger.streams.config import Settings, mask_url
from tagger.streams.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from tagger.streams.security import (
    KAFKA_SECURITY_FIELDS,
    REDIS_SECURITY_FIELDS,
    kafka_python_args,
    redis_args,
)
from tagger.streams.topics import create_topics
from tagger.streams.worker_process import WorkerProcess, caught_up_to

__all__ = ["DemoOptions", "demo_settings", "run_demo", "summarise", "with_security_from_env"]

log = structlog.get_logger(__name__)

# The demo runs on a small machine next to its own broker and Redis.
_DEMO_PARTITIONS = 4
_EXAMPLES = 6
# Parameterised tags (one per category) are folded into one row per rule,
# with this many of the most held values listed under the table.
_TOP_VALUES = 5
# A group forms in about half the session timeout on the embedded broker.
_SESSION_TIMEOUT_S = 6.0


def demo_settings(namespace: str, bootstrap: str, redis_url: str, data_dir: Path) -> Settings:
    """Return settings that keep every topic and Redis key of one demo run apart."""
    return Settings(
        kafka_bootstrap_servers=bootstrap,
        redis_url=redis_url,
        app_id=f"{namespace}-tagger",
        input_topics=(f"{namespace}-events",),
        tag_change_topic=f"{namespace}-tag-changes",
        dead_letter_topic=f"{namespace}-dead-letters",
        redis_prefix=f"{namespace}:",
        partitions=_DEMO_PARTITIONS,
        clock_mode="replay",
        web_port=free_port(),
        data_dir=str(data_dir),
        broker_session_timeout_s=_SESSION_TIMEOUT_S,
        log_level="warning",
    ).validated()


def with_security_from_env(settings: Settings) -> Settings:
    """Apply the security settings of the environment to the services they belong to.

    Kafka's apply only with KAFKA_BOOTSTRAP_SERVERS, and Redis's only with
    REDIS_URL, because the embedded broker and Redis use neither. The web
    token always applies, since the worker reads it from the same environment.
    """
    names = ["web_token"]
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        names += KAFKA_SECURITY_FIELDS
    if os.environ.get("REDIS_URL"):
        names += REDIS_SECURITY_FIELDS
    from_env = Settings.from_env()
    return settings.with_changes(**{name: getattr(from_env, name) for name in names})


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Options of one `tagger demo` run, named as the CLI options are."""

    data_file: str | None = None
    customers: int = 300
    seed: int = 7
    end_clock_span: float = 3600.0
    namespace: str | None = None
    keep_running: bool = False
    summary_json: str | None = None
    timeout_s: float = 600.0
    rulebook_path: str | None = None


def run_demo(console: Console, options: DemoOptions) -> int:
    """Run the demo and return the exit code.

    Ctrl-C, SIGTERM and SIGHUP all stop the worker, the broker and Redis;
    the worker also stops by itself if this process dies.
    """
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with contextlib.ExitStack() as stack:
            try:
                return _run(stack, console, options)
            except KeyboardInterrupt as interrupt:
                console.print("\ninterrupted: stopping the worker, broker and Redis")
                # 128 + the signal number, as shells report a process a signal ended.
                name = str(interrupt.args[0]) if interrupt.args else "SIGINT"
                return 128 + int(getattr(signal.Signals, name, signal.SIGINT))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _start_services(stack: contextlib.ExitStack, console: Console) -> tuple[str, str, bool]:
    """Return the bootstrap servers, the Redis URL, and whether either is the user's own."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    external = False
    if bootstrap:
        external = True
        console.print(f"Kafka: {bootstrap} (from KAFKA_BOOTSTRAP_SERVERS)")
    else:
        broker = stack.enter_context(EmbeddedBroker())
        bootstrap = broker.bootstrap_servers
        console.print(f"Kafka: embedded broker at {bootstrap} (memory only)")
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        external = True
        console.print(f"Redis: {_mask(redis_url)} (from REDIS_URL)")
    else:
        server = stack.enter_context(EmbeddedRedis())
        redis_url = server.url
        console.print(f"Redis: embedded redis-server at {redis_url}")
    return bootstrap, redis_url, external


def _run(stack: contextlib.ExitStack, console: Console, options: DemoOptions) -> int:
    namespace = options.namespace or f"demo-{int(time.time())}"
    bootstrap, redis_url, external = _start_services(stack, console)
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tagger-demo-")))
    settings = demo_settings(namespace, bootstrap, redis_url, workdir / "data")
    settings = with_security_from_env(settings)
    if options.rulebook_path:
        settings = settings.with_changes(rulebook_path=options.rulebook_path)
    rulebook = load_rulebook(settings.rulebook_path)
    console.print(
        f"topics and Redis keys start with {namespace}"
        + ("; they stay after the demo, delete them when done" if external else "")
    )
    console.print(
        f"rulebook {rulebook.version}: amounts are read as {rulebook.currency}"
        + (" (use --rulebook for another currency)" if options.data_file else "")
    )
    create_topics(settings)

    worker = WorkerProcess(settings, workdir / "worker.log")
    stack.callback(worker.stop)
    worker.start()
    console.print(
        f"worker: pid {worker.pid}, rules engine {engine_build()}, "
        f"status at http://127.0.0.1:{settings.web_port}/status, "
        f"log in {worker.log_path} (removed when the demo exits)",
        highlight=False,
    )
    with console.status("waiting for the worker to join its consumer group"):
        worker.wait_for(
            lambda status: len(status.get("partitions", {})) == settings.partitions,
            timeout_s=options.timeout_s,
            what="all partitions assigned",
        )

    span_ms = int(options.end_clock_span * 1000)
    report = _replay(settings, rulebook, options, span_ms)
    dead = sum(report.dead_letters.values())
    console.print(
        f"sent {report.events} events in {report.elapsed_s:.1f} s, "
        f"{_plural(dead, 'dead letter')}"
        + "".join(f", {reason}: {n}" for reason, n in sorted(report.dead_letters.items()))
    )
    console.print(
        f"end clock: {_iso(report.end_clock)} "
        f"({options.end_clock_span / 3600:g} h after the last event, "
        "so tags due just after it appear)"
    )

    started = time.monotonic()
    with console.status("waiting for the worker to catch up"):
        worker.wait_for(
            lambda status: caught_up_to(
                status, end_clock=report.end_clock, partitions=settings.partitions
            ),
            timeout_s=options.timeout_s,
            what="caught up to the end clock",
        )
    caught_up_s = time.monotonic() - started
    total_s = report.elapsed_s + caught_up_s
    console.print(
        f"all events tagged and in Redis {caught_up_s:.1f} s after the last was sent, "
        f"{report.events / total_s:,.0f} events/s from the first send"
    )

    summary = summarise(settings, rulebook)
    summary["events"] = report.events
    summary["dead_letters"] = dict(report.dead_letters)
    summary["events_per_second"] = round(report.events / total_s, 1) if total_s else None
    _print_summary(console, summary)
    if options.summary_json:
        Path(options.summary_json).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))

    if options.keep_running:
        _print_try_commands(console, settings, summary)
        while True:
            time.sleep(1)
    return 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _replay(settings: Settings, rulebook: Rulebook, options: DemoOptions, span_ms: int) -> Any:
    from tagger.streams.replay import replay_events, replay_file

    if options.data_file is not None:
        return replay_file(
            options.data_file,
            settings,
            currency=rulebook.currency,
            end_clock="auto",
            end_clock_span_ms=span_ms,
            progress=True,
        )
    from tagger.streams.simulator import simulate

    events = simulate(seed=options.seed, customers=options.customers, currency=rulebook.currency)
    return replay_events(
        events, settings, end_clock="auto", end_clock_span_ms=span_ms, progress=True
    )


def summarise(settings: Settings, rulebook: Rulebook) -> dict[str, Any]:
    """Count customers per tag in Redis and pick example tag changes from the topic."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, **redis_args(settings))
    prefix = settings.redis_prefix
    try:
        counts: dict[str, int] = {}
        holders: dict[str, set[str]] = {}
        for key in client.scan_iter(match=f"{prefix}tag:*", count=1000):
            tag = key[len(prefix) + len("tag:") :]
            counts[tag] = int(client.zcard(key))
            if ":" in tag:
                rule_id = tag.split(":", 1)[0]
                tag_members = [str(member) for member in client.zrange(key, 0, -1)]
                holders.setdefault(rule_id, set()).update(tag_members)
        customers = sum(1 for _ in client.scan_iter(match=f"{prefix}customer:*", count=1000))
    finally:
        client.close()
    parameterised = []
    for rule_id, members in sorted(holders.items()):
        values = {
            tag.split(":", 1)[1]: n for tag, n in counts.items() if tag.startswith(f"{rule_id}:")
        }
        top = sorted(values.items(), key=lambda item: (-item[1], item[0]))[:_TOP_VALUES]
        parameterised.append(
            {"rule": rule_id, "customers": len(members), "values": len(values), "top": top}
        )
    tags = []
    for tag in sorted(counts, key=lambda t: (_rule_order(rulebook, t), t)):
        labels = rulebook.labels_for(tag)
        tags.append(
            {
                "tag": tag,
                "group": rulebook.group_for(tag),
                "zh": labels.get("zh", ""),
                "en": labels.get("en", ""),
                "customers": counts[tag],
            }
        )
    return {
        "customers_with_tags": customers,
        "tags": tags,
        "parameterised": parameterised,
        "examples": _example_changes(settings),
        "redis_prefix": prefix,
        "redis_url": _mask(settings.redis_url),
    }


def _rule_order(rulebook: Rulebook, tag: str) -> int:
    rule_id = tag.split(":", 1)[0]
    for index, rule in enumerate(rulebook.rules):
        if rule.id == rule_id:
            return index
    return len(rulebook.rules)


def _example_changes(settings: Settings) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
        **kafka_python_args(settings),
    )
    try:
        partitions = consumer.partitions_for_topic(settings.tag_change_topic) or set()
        consumer.assign([TopicPartition(settings.tag_change_topic, p) for p in partitions])
        consumer.seek_to_beginning()
        examples: dict[str, dict[str, Any]] = {}
        for message in consumer:
            change = orjson.loads(message.value)
            rule = change["tag"].split(":", 1)[0]
            if change["action"] == "added" and rule not in examples:
                examples[rule] = change
            if len(examples) >= _EXAMPLES:
                break
        return list(examples.values())
    finally:
        consumer.close()


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(
        title=f"customers per tag ({summary['customers_with_tags']} customers hold a tag)"
    )
    for column in ("tag", "group", "中文", "English", "customers"):
        table.add_column(column, justify="right" if column == "customers" else "left")
    folded = {entry["rule"]: entry for entry in summary["parameterised"]}
    shown: set[str] = set()
    for row in summary["tags"]:
        rule_id = row["tag"].split(":", 1)[0]
        if rule_id not in folded:
            table.add_row(
                row["tag"], row["group"] or "", row["zh"], row["en"], str(row["customers"])
            )
        elif rule_id not in shown:
            shown.add(rule_id)
            value = row["tag"].split(":", 1)[1]
            table.add_row(
                f"{rule_id}:*",
                row["group"] or "",
                row["zh"].replace(value, "*"),
                row["en"].replace(value, "*"),
                str(folded[rule_id]["customers"]),
            )
    console.print(table)
    for entry in summary["parameterised"]:
        top = ", ".join(f"{value} ({n})" for value, n in entry["top"])
        console.print(
            f"{entry['rule']}: {entry['values']} values; most held: {top}", highlight=False
        )

    console.print("example tag changes (customer, tag, at, reason):")
    for change in summary["examples"]:
        reason = change.get("reason", {})
        values = ", ".join(f"{k} = {v}" for k, v in reason.get("values", {}).items())
        console.print(
            f"  {change['customer_id']} {change['action']} {change['tag']} "
            f"at {_iso(change['at'])}: {reason.get('when', '')}  [{values}]",
            highlight=False,
            # The square brackets would otherwise be read as rich markup and dropped.
            markup=False,
        )


def _print_try_commands(console: Console, settings: Settings, summary: dict[str, Any]) -> None:
    examples = summary["examples"]
    customer = examples[0]["customer_id"] if examples else "<customer_id>"
    held = [row["tag"] for row in summary["tags"] if row["customers"]]
    tag = "<tag>"
    if "hesitant" in held:
        tag = "hesitant"
    elif held:
        tag = held[0]
    prefix = settings.redis_prefix
    console.print("running until Ctrl-C; in another terminal, with the same virtualenv:")
    console.print(
        f"  export KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers} "
        f"REDIS_URL={_mask(settings.redis_url)} TAGGER_REDIS_PREFIX={prefix} "
        f"TAGGER_APP_ID={settings.app_id} TAGGER_PARTITIONS={settings.partitions} "
        f"TAGGER_INPUT_TOPICS={','.join(settings.input_topics)} "
        f"TAGGER_TAG_CHANGE_TOPIC={settings.tag_change_topic} "
        f"TAGGER_DEAD_LETTER_TOPIC={settings.dead_letter_topic} "
        f"TAGGER_WORKER_URL=http://127.0.0.1:{settings.web_port}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"  tagger tags {customer}", highlight=False)
    console.print(f"  tagger members {tag}", highlight=False)
    console.print("  tagger tail --from-beginning --max 5", highlight=False)
    console.print(f"  tagger explain {customer}", highlight=False)
    console.print("  tagger mirror verify", highlight=False)
    console.print(f"  tagger forget {customer}    # erases the customer", highlight=False)
    console.print("or read Redis directly:", highlight=False)
    cli = f"redis-cli -u {_mask(settings.redis_url)}"
    console.print(f"  {cli} HGETALL {prefix}customer:{customer}", highlight=False)
    console.print(f"  {cli} ZREVRANGE {prefix}tag:{tag} 0 9 WITHSCORES", highlight=False)
    console.print(f"  {cli} HGETALL {prefix}rulebook", highlight=False)


def _iso(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_ms / 1000))


def _mask(url: str) -> str:
    return mask_url(url)
