"""The `tagger` command line: worker, topics, replay, demo and the read commands."""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
import structlog
from rich.console import Console
from rich.table import Table

from tagger.errors import TaggerError
from tagger.streams.config import Settings
from tagger.streams.logs import configure_logging

__all__ = ["main"]

log = structlog.get_logger(__name__)
console = Console()
err_console = Console(stderr=True)

# Options shared by every command that talks to Kafka or Redis. Each has an
# env twin, shown in --help, and overrides it when given.
_COMMON = [
    click.option(
        "--bootstrap",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        show_envvar=True,
        help="Kafka bootstrap servers, host:port[,host:port].",
    ),
    click.option(
        "--redis-url",
        envvar="REDIS_URL",
        show_envvar=True,
        help="Redis URL, e.g. redis://127.0.0.1:6379/0.",
    ),
    click.option(
        "--app-id",
        envvar="TAGGER_APP_ID",
        show_envvar=True,
        help="Faust app id: consumer group and changelog topic prefix.",
    ),
    click.option(
        "--input-topic",
        "input_topics",
        multiple=True,
        help="Input topic; repeat for several. Env: TAGGER_INPUT_TOPICS (comma-separated).",
    ),
    click.option(
        "--tag-change-topic",
        envvar="TAGGER_TAG_CHANGE_TOPIC",
        show_envvar=True,
        help="Topic the tag-change events go to.",
    ),
    click.option(
        "--dead-letter-topic",
        envvar="TAGGER_DEAD_LETTER_TOPIC",
        show_envvar=True,
        help="Topic invalid input records go to.",
    ),
    click.option(
        "--partitions",
        type=int,
        envvar="TAGGER_PARTITIONS",
        show_envvar=True,
        help="Partition count of the input topics and tables.",
    ),
    click.option(
        "--redis-prefix",
        envvar="TAGGER_REDIS_PREFIX",
        show_envvar=True,
        help="Prefix of every Redis key the mirror writes.",
    ),
    click.option(
        "--rulebook",
        "rulebook_path",
        envvar="TAGGER_RULEBOOK_PATH",
        show_envvar=True,
        type=click.Path(exists=True, dir_okay=False),
        help="Rulebook YAML file (default: the packaged default rulebook).",
    ),
    click.option(
        "--log-level",
        envvar="TAGGER_LOG_LEVEL",
        show_envvar=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
        help="Log level.",
    ),
]


def _common_options(function: Any) -> Any:
    for option in reversed(_COMMON):
        function = option(function)
    return function


def _settings(**options: Any) -> Settings:
    overrides = {
        "kafka_bootstrap_servers": options.pop("bootstrap", None),
        "redis_url": options.pop("redis_url", None),
        "app_id": options.pop("app_id", None),
        "input_topics": tuple(options.pop("input_topics", ()) or ()) or None,
        "tag_change_topic": options.pop("tag_change_topic", None),
        "dead_letter_topic": options.pop("dead_letter_topic", None),
        "partitions": options.pop("partitions", None),
        "redis_prefix": options.pop("redis_prefix", None),
        "rulebook_path": options.pop("rulebook_path", None),
        "log_level": options.pop("log_level", None),
    }
    overrides.update(options)
    return Settings.from_env(**overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Real-time customer tags from Kafka events."""


def main() -> None:
    """Run the CLI; a TaggerError becomes one clear message and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TaggerError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


# -- worker and topics ---------------------------------------------------------


@cli.command()
@_common_options
@click.option(
    "--clock-mode",
    type=click.Choice(["live", "replay"]),
    envvar="TAGGER_CLOCK_MODE",
    show_envvar=True,
    help="live: idle partitions follow the wall clock; "
    "replay: only events and clock messages move it.",
)
@click.option(
    "--web-port",
    type=int,
    envvar="TAGGER_WEB_PORT",
    show_envvar=True,
    help="Port of /metrics, /healthz, /readyz and /status.",
)
@click.option(
    "--web-host",
    envvar="TAGGER_WEB_HOST",
    show_envvar=True,
    help="Address the web server binds (default 127.0.0.1).",
)
@click.option(
    "--data-dir",
    envvar="TAGGER_DATA_DIR",
    show_envvar=True,
    help="Folder for Faust's local table state.",
)
def worker(**options: Any) -> None:
    """Run a worker: consume events, tag customers, publish changes, mirror to Redis."""
    settings = _settings(**options)
    configure_logging(settings.log_level)
    from tagger.streams.worker import run_worker

    run_worker(settings)


@cli.group()
def topics() -> None:
    """Create or check the topics the worker uses."""


@topics.command("create")
@_common_options
def topics_create(**options: Any) -> None:
    """Create the input, repartition, tag-change and dead-letter topics where missing."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.topics import create_topics

    created = create_topics(settings)
    console.print(f"created: {', '.join(created) if created else 'nothing (all exist)'}")


@topics.command("check")
@_common_options
def topics_check(**options: Any) -> None:
    """Report missing topics and partition counts that do not match; exit 1 on any problem."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.topics import check_topics

    problems = check_topics(settings)
    for problem in problems:
        console.print(f"[red]problem:[/red] {problem}", highlight=False)
    if problems:
        sys.exit(1)
    console.print("topics ok")


# -- replay ----------------------------------------------------------------------


def _parse_end_clock(value: str | None) -> Any:
    if value is None or value == "none":
        return None
    if value == "auto":
        return "auto"
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r}: expected auto, none, epoch ms or an RFC 3339 time with offset"
        ) from exc
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r}: the time needs an offset such as Z or +08:00")
    return int(parsed.timestamp() * 1000)


@cli.command()
@_common_options
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["rees46", "uci", "jsonl"]),
    help="Input format (default: detected from the header or first line).",
)
@click.option("--currency", help="Currency for formats that carry none (default: the rulebook's).")
@click.option(
    "--assume-sorted",
    is_flag=True,
    help="Send in file order instead of sorting by (time, line) first.",
)
@click.option(
    "--end-clock",
    default="none",
    show_default=True,
    help="After the last event, move every partition's clock to this time: "
    "'auto' (last event + --end-clock-span), epoch ms, RFC 3339, or 'none'.",
)
@click.option(
    "--end-clock-span",
    default=3600.0,
    show_default=True,
    type=float,
    help="Seconds past the last event used by --end-clock auto.",
)
@click.option(
    "--speed",
    type=float,
    help="Replay this many times faster than event time (default: as fast as possible).",
)
def replay(
    file: str,
    fmt: str | None,
    currency: str | None,
    assume_sorted: bool,
    end_clock: str,
    end_clock_span: float,
    speed: float | None,
    **options: Any,
) -> None:
    """Send a file of REES46, UCI Online Retail or JSONL events to the input topic."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.rules.rulebook import load_rulebook
    from tagger.streams.replay import replay_file

    if currency is None:
        currency = load_rulebook(settings.rulebook_path).currency
    report = replay_file(
        file,
        settings,
        fmt=fmt,
        currency=currency,
        assume_sorted=assume_sorted,
        end_clock=_parse_end_clock(end_clock),
        end_clock_span_ms=int(end_clock_span * 1000),
        speed=speed,
        progress=True,
    )
    console.print(
        f"sent {report.events} events and {sum(report.dead_letters.values())} dead letters "
        f"from {report.rows} rows in {report.elapsed_s:.1f} s"
        + (f"; end clock {_iso(report.end_clock)}" if report.end_clock else "")
    )
    for reason, count in sorted(report.dead_letters.items()):
        console.print(f"  dead letters ({reason}): {count}")


# -- reading tags ---------------------------------------------------------------------


def _iso(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat(timespec="seconds")


@cli.command()
@_common_options
@click.argument("customer")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tags(customer: str, as_json: bool, **options: Any) -> None:
    """Show a customer's current tags, with since and labels, from Redis."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.readers import customer_tags

    views = customer_tags(settings, customer)
    if as_json:
        rows = [dataclasses.asdict(view) for view in views]
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    if not views:
        console.print(f"customer {customer!r} holds no tags")
        return
    table = Table("tag", "since (UTC)", "中文", "English", "group")
    for view in views:
        table.add_row(view.tag, view.since, view.zh, view.en, view.group or "")
    console.print(table)


@cli.command()
@_common_options
@click.argument("tag")
@click.option("--offset", default=0, show_default=True, help="Members to skip (newest first).")
@click.option("--limit", default=50, show_default=True, help="Members per page.")
def members(tag: str, offset: int, limit: int, **options: Any) -> None:
    """List the customers holding TAG, newest first, a page at a time."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.readers import tag_members

    page = tag_members(settings, tag, offset=offset, limit=limit)
    table = Table("customer", "since (UTC)")
    for member in page.members:
        table.add_row(member.customer_id, member.since)
    console.print(table)
    shown_to = offset + len(page.members)
    console.print(f"{offset + 1 if page.members else offset}-{shown_to} of {page.total}")
    if shown_to < page.total:
        console.print(f"next page: --offset {shown_to} --limit {limit}")


@cli.command()
@_common_options
@click.option("--from-beginning", is_flag=True, help="Start at the oldest change kept.")
@click.option("--max", "max_messages", type=int, help="Stop after this many changes.")
@click.option("--timeout", "timeout_s", type=float, help="Stop after this many idle seconds.")
def tail(
    from_beginning: bool, max_messages: int | None, timeout_s: float | None, **options: Any
) -> None:
    """Follow tag-change events as JSON lines, from now on or from the beginning."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.readers import tail_changes

    try:
        for change in tail_changes(
            settings, from_beginning=from_beginning, max_messages=max_messages, timeout_s=timeout_s
        ):
            sys.stdout.write(orjson.dumps(change).decode() + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return


# -- rules -------------------------------------------------------------------------------


@cli.group()
def rules() -> None:
    """Check, activate and inspect rulebooks."""


@rules.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def rules_check(file: str) -> None:
    """Validate a rulebook; print each error with file, line and column."""
    from tagger.rules.rulebook import load_rulebook

    rulebook = load_rulebook(Path(file))
    console.print(
        f"{file}: ok, version {rulebook.version}, {len(rulebook.rules)} rules, "
        f"currency {rulebook.currency}"
    )


@rules.command("activate")
@_common_options
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def rules_activate(file: str, **options: Any) -> None:
    """Make FILE the rulebook the worker group runs; workers on another version stop consuming."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.rules.rulebook import load_rulebook
    from tagger.streams.rulebook_versions import Activation, activate, read_active, rulebook_text
    from tagger.streams.topics import create_topics

    rulebook = load_rulebook(Path(file))
    create_topics(settings)
    previous = read_active(settings)
    if previous is not None and previous.version == rulebook.version:
        console.print(f"version {rulebook.version} is already active for {settings.app_id}")
        return
    activate(settings, Activation.of(rulebook, rulebook_text(file), by="tagger rules activate"))
    console.print(
        f"activated version {rulebook.version} ({file}) for group {settings.app_id}"
        + (f"; replaces {previous.version} ({previous.source})" if previous else "")
    )
    console.print(
        "workers running this version consume and re-evaluate every customer; "
        "workers on another version stop consuming until restarted with this file"
    )


@rules.command("status")
@_common_options
def rules_status(**options: Any) -> None:
    """Show the rulebook version the worker group runs."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.rulebook_versions import read_active

    active = read_active(settings)
    if active is None:
        console.print(f"no rulebook version is recorded for group {settings.app_id}")
        sys.exit(1)
    console.print(
        f"group {settings.app_id}: version {active.version} from {active.source}, "
        f"activated {_iso(active.activated_at)} by {active.activated_by}"
    )


# -- demo --------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Replay this file (REES46, UCI or JSONL) instead of the built-in simulator.",
)
@click.option(
    "--customers",
    default=300,
    show_default=True,
    help="Simulated customers when no --data is given.",
)
@click.option("--seed", default=7, show_default=True, help="Simulator seed.")
@click.option(
    "--end-clock-span",
    default=3600.0,
    show_default=True,
    type=float,
    help="Seconds past the last event that the end clock moves to, so that tags "
    "falling due just after the data ends appear.",
)
@click.option(
    "--namespace",
    default=None,
    help="Prefix of topics, app id and Redis keys (default: demo-<time>).",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Keep the worker, broker and Redis running after the summary, until Ctrl-C.",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False),
    help="Also write the summary as JSON to this file.",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=600.0,
    show_default=True,
    help="Give up when the worker has not caught up after this many seconds.",
)
def demo(**options: Any) -> None:
    """Run the whole path on an embedded broker and Redis and print a summary."""
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.demo import run_demo

    sys.exit(run_demo(console=console, **options))


if __name__ == "__main__":
    main()
