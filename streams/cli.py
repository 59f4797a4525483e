"""The `tagger` command line: worker, topics, replay, demo and the read commands."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

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
# Off a terminal (pipes, CI logs) rich would wrap at 80 columns and cut tag
# ids; a wide console keeps every line whole.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

# Options shared by commands that talk to Kafka or Redis, in groups so that each
# command shows only those it uses. Each has an env twin, shown in --help.
_KAFKA = [
    click.option(
        "--bootstrap",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        show_envvar=True,
        help="Kafka bootstrap servers, host:port[,host:port].",
    ),
    click.option(
        "--app-id",
        envvar="TAGGER_APP_ID",
        show_envvar=True,
        help="Faust app id: consumer group and changelog topic prefix.",
    ),
]
_TOPICS = [
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
]
_REDIS = [
    click.option(
        "--redis-url",
        envvar="REDIS_URL",
        show_envvar=True,
        help="Redis URL, e.g. redis://127.0.0.1:6379/0.",
    ),
    click.option(
        "--redis-prefix",
        envvar="TAGGER_REDIS_PREFIX",
        show_envvar=True,
        help="Prefix of every Redis key the mirror writes.",
    ),
]
_RULEBOOK = [
    click.option(
        "--rulebook",
        "rulebook_path",
        envvar="TAGGER_RULEBOOK_PATH",
        show_envvar=True,
        type=click.Path(exists=True, dir_okay=False),
        help="Rulebook YAML file (default: the packaged default rulebook).",
    ),
]
_LOG = [
    click.option(
        "--log-level",
        envvar="TAGGER_LOG_LEVEL",
        show_envvar=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
        help="Log level.",
    ),
]


# The replay formats, listed without importing the readers at start-up.
_FORMAT_NAMES = ["rees46", "uci", "jsonl", "taobao", "cdnow"]

_Command = TypeVar("_Command", bound=Callable[..., Any])


def _options(*groups: list[Any]) -> Callable[[_Command], _Command]:
    def decorate(function: _Command) -> _Command:
        for group in reversed(groups):
            for option in reversed(group):
                function = option(function)
        return function

    return decorate


def _settings(**options: Any) -> Settings:
    # Click has already read the env twins, so a missing value here means the
    # built-in default; say so, because it may reach an unrelated local server.
    defaults = Settings()
    for option, env, default in (
        ("bootstrap", "KAFKA_BOOTSTRAP_SERVERS", defaults.kafka_bootstrap_servers),
        ("redis_url", "REDIS_URL", defaults.redis_url),
    ):
        if option in options and options[option] is None:
            err_console.print(f"note: {env} is not set; using {default}", highlight=False)
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
        # Without standalone mode, Click returns the code of a `click.exceptions.Exit`.
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TaggerError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)


# -- worker and topics ---------------------------------------------------------


@cli.command()
@_options(_KAFKA, _TOPICS, _REDIS, _RULEBOOK, _LOG)
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
    """Run a worker: consume events, tag customers, publish changes, mirror to Redis.

    Every setting also reads an environment variable; the options below
    override them. The others, with their defaults:

    \b
    TAGGER_BATCH_SIZE=1000              records per batch
    TAGGER_BATCH_TIMEOUT_S=0.01         max wait for a batch to fill, seconds
    TAGGER_BROKER_SESSION_TIMEOUT_S=30  consumer group session timeout, seconds
    TAGGER_STANDBY_REPLICAS=0           standby copies of each table partition
    TAGGER_STORE=memory://              table store: memory:// or rocksdb://
    TAGGER_MAX_STATE_BYTES=65536        hard cap on one customer's stored state
    TAGGER_COMMIT_INTERVAL_S=1.0        how often consumed offsets are committed, seconds
    TAGGER_MIRROR_TIMEOUT_S=1.0         Redis socket timeout of the mirror, seconds
    TAGGER_BROKER_END_OFFSET_FIX=auto   read changelogs to their true end: auto|on|off
    TAGGER_FETCH_MAX_WAIT_MS=0          longest fetch wait, ms; 0 = 10 on Tansu, else Faust's 1500
    TAGGER_WALL_CLOCK_OFFSET_MS=0       shift the wall clock (tests only)
    TAGGER_SHUTDOWN_TIMEOUT_S=25        exit with code 3 when a stop takes longer, seconds
    TAGGER_RECOVERY_LOG_INTERVAL_S=10   table recovery progress log interval, seconds
    TAGGER_RECOVERY_STALL_S=30          warn when recovery makes no progress this long, seconds
    TAGGER_RECOVERY_BULK_S=60           read changelogs in bulk at most this long, 0 = off, seconds

    Security (see docs/security.md); a secret also reads from <VAR>_FILE:

    \b
    TAGGER_SECURITY_PROTOCOL=PLAINTEXT  PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL
    TAGGER_SASL_MECHANISM=PLAIN         PLAIN|SCRAM-SHA-256|SCRAM-SHA-512
    TAGGER_SASL_USERNAME, TAGGER_SASL_PASSWORD   SASL user name and password
    TAGGER_SSL_CAFILE                   CA certificates (PEM) of the brokers
    TAGGER_SSL_CERTFILE, TAGGER_SSL_KEYFILE      client certificate and key (PEM)
    TAGGER_SSL_CHECK_HOSTNAME=true      match the broker certificate's host name
    TAGGER_REDIS_USERNAME, TAGGER_REDIS_PASSWORD Redis ACL user and password
    TAGGER_REDIS_SSL_CA_CERTS           CA certificates (PEM) for a rediss:// URL
    TAGGER_WEB_TOKEN                    bearer token for every view but /healthz
    """
    settings = _settings(**options)
    configure_logging(settings.log_level)
    from tagger.streams.worker import run_worker

    run_worker(settings)


@cli.group()
def topics() -> None:
    """Create or check the topics the worker uses."""


@topics.command("create")
@_options(_KAFKA, _TOPICS, _LOG)
def topics_create(**options: Any) -> None:
    """Create the input, repartition, erasure, tag-change and dead-letter topics where missing."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.topics import create_topics

    created = create_topics(settings)
    console.print(f"created: {', '.join(created) if created else 'nothing (all exist)'}")


@topics.command("check")
@_options(_KAFKA, _TOPICS, _LOG)
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
@_options(_KAFKA, _TOPICS, _RULEBOOK)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(_FORMAT_NAMES),
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

    rulebook_currency = load_rulebook(settings.rulebook_path).currency
    if currency is None:
        currency = rulebook_currency
    elif currency != rulebook_currency:
        raise click.ClickException(
            f"--currency {currency} differs from the rulebook's currency {rulebook_currency}: "
            "workers running that rulebook would dead-letter every purchase as "
            "currency_mismatch. Set TAGGER_RULEBOOK_PATH to a rulebook in "
            f"{currency} (for the workers too), or leave out --currency"
        )
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
@_options(_REDIS)
@click.argument("customer")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tags(customer: str, as_json: bool, **options: Any) -> None:
    """Show a customer's current tags, with since and labels, from Redis."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.readers import customer_tags

    if not customer:
        raise click.BadParameter("the customer id is empty", param_hint="CUSTOMER")
    views = customer_tags(settings, customer)
    if as_json:
        rows = [dataclasses.asdict(view) for view in views]
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    if not views:
        console.print(f"customer {customer!r} holds no tags")
        _hint_if_no_rulebook(settings)
        return
    table = Table("tag", "since (UTC)", "中文", "English", "group")
    for view in views:
        table.add_row(view.tag, view.since, view.zh, view.en, view.group or "")
    console.print(table)


@cli.command()
@_options(_REDIS)
@click.argument("tag")
@click.option(
    "--offset",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Members to skip (newest first).",
)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=1, max=10_000),
    help="Members per page.",
)
def members(tag: str, offset: int, limit: int, **options: Any) -> None:
    """List the customers holding TAG, newest first, a page at a time."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.readers import tag_members

    page = tag_members(settings, tag, offset=offset, limit=limit)
    if page.total == 0 and _hint_if_no_rulebook(settings, tag=tag):
        # A misspelt tag is the caller's error: exit 2, so that scripts can tell.
        raise click.exceptions.Exit(2)
    table = Table("customer", "since (UTC)")
    for member in page.members:
        table.add_row(member.customer_id, member.since)
    console.print(table)
    shown_to = offset + len(page.members)
    console.print(f"{offset + 1 if page.members else offset}-{shown_to} of {page.total}")
    if shown_to < page.total:
        console.print(f"next page: --offset {shown_to} --limit {limit}")


def _hint_if_no_rulebook(settings: Settings, *, tag: str | None = None) -> bool:
    """Explain an empty result: a wrong Redis URL or prefix, or a misspelt tag.

    Return True when `tag` is not in the mirrored rulebook.
    """
    import difflib

    import redis

    from tagger.streams.mirror import read_rulebook
    from tagger.streams.security import redis_args

    client = redis.Redis.from_url(settings.redis_url, **redis_args(settings))
    try:
        described = read_rulebook(client, settings.redis_prefix)
    finally:
        client.close()
    if described["version"] is None:
        err_console.print(
            f"note: no rulebook labels under prefix {settings.redis_prefix!r} in "
            f"{Settings(redis_url=settings.redis_url).redacted()['redis_url']}: is REDIS_URL or "
            "TAGGER_REDIS_PREFIX wrong, or has no worker started yet?",
            highlight=False,
        )
        return False
    known = set(described["tags"])
    if tag is not None and "{param}" in described["tags"].get(tag, {}).get("en", ""):
        # Members of a parameterised rule have `<rule>:<value>` tags, never the rule id.
        err_console.print(
            f"note: {tag!r} is one tag per value: ask for {tag}:<value>, "
            f"as `tagger tags CUSTOMER` lists them",
            highlight=False,
        )
        return False
    if tag is None or tag in known or tag.split(":", 1)[0] in known or tag.startswith("manual:"):
        return False
    close = difflib.get_close_matches(tag, sorted(known), n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    err_console.print(f"error: the rulebook has no tag {tag!r}{suggestion}", highlight=False)
    return True


@cli.command()
@_options(_KAFKA, _TOPICS)
@click.option("--from-beginning", is_flag=True, help="Start at the oldest change kept.")
@click.option(
    "--max", "max_messages", type=click.IntRange(min=1), help="Stop after this many changes."
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many seconds.",
)
def tail(
    from_beginning: bool, max_messages: int | None, timeout_s: float | None, **options: Any
) -> None:
    """Follow tag-change events as JSON lines, from now on or from the beginning."""
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.readers import tail_changes

    printed = 0
    try:
        for change in tail_changes(
            settings, from_beginning=from_beginning, max_messages=max_messages, timeout_s=timeout_s
        ):
            sys.stdout.write(orjson.dumps(change).decode() + "\n")
            sys.stdout.flush()
            printed += 1
    except KeyboardInterrupt:
        return
    if printed == 0 and timeout_s is not None:
        # On standard error, so that standard output contains JSON lines only.
        err_console.print(
            f"no tag changes on {settings.tag_change_topic} within {timeout_s:g} s"
            + ("" if from_beginning else " (--from-beginning shows earlier ones)"),
            highlight=False,
        )


# -- erasure -----------------------------------------------------------------------------


@cli.command()
@_options(_KAFKA, [_TOPICS[3]])
@click.argument("customer")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the worker group has applied the request.",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds --wait waits before it gives up.",
)
def forget(customer: str, wait: bool, timeout_s: float, **options: Any) -> None:
    """Erase CUSTOMER: delete its state, tags and Redis keys (a data-subject request).

    Sends an erasure request to the topic <app_id>-erasures. The worker that
    owns the customer publishes a `removed` change with source `erasure` for
    every tag it held and deletes its state and Redis keys. It also starts a
    new epoch for the id, so that a returning customer's change ids are new.
    Exits 1 when --wait times out; the request then stays queued and is
    applied when a worker runs.
    """
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.errors import InvalidEvent
    from tagger.schemas.decode import parse_customer_id
    from tagger.streams.forget import send_erasure_request, wait_until_applied

    try:
        parse_customer_id(customer)
    except InvalidEvent as exc:
        raise click.BadParameter(exc.detail, param_hint="CUSTOMER") from exc
    sent = send_erasure_request(settings, customer)
    console.print(
        f"erasure request {sent.request.request_id} for customer {customer!r} sent to "
        f"{sent.topic} (partition {sent.partition}, offset {sent.offset})",
        highlight=False,
    )
    if not wait:
        console.print(
            "not waiting: the worker group applies it in order with the customer's events"
        )
        return
    if wait_until_applied(settings, sent, timeout_s):
        console.print(
            f"done: worker group {settings.app_id!r} erased customer {customer!r}; its Redis "
            "keys are deleted by the mirror writer right after",
            highlight=False,
        )
        return
    err_console.print(
        f"timed out after {timeout_s:g} s: worker group {settings.app_id!r} has not applied "
        f"the request yet. It stays queued in {sent.topic} and is applied when a worker "
        "of the group runs. Do not send it again: a second request erases the customer "
        "again, including anything it did after the first one",
        highlight=False,
    )
    sys.exit(1)


# -- explain ----------------------------------------------------------------------------


@cli.command()
@click.argument("customer")
@click.argument("tag", required=False)
@click.option(
    "--worker",
    "worker_url",
    envvar="TAGGER_WORKER_URL",
    show_envvar=True,
    default="http://127.0.0.1:6066",
    show_default=True,
    help="Web address of a worker; a worker that does not own the customer "
    "names the one that does.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def explain(customer: str, tag: str | None, worker_url: str, as_json: bool) -> None:
    """Explain why a customer holds (or not) each tag, from the worker's state."""
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    from tagger.streams.config import read_secret

    query = urllib.parse.urlencode({"tag": tag} if tag else {})
    # The worker requires the token on every view but /healthz when it has one.
    token = read_secret(os.environ, "TAGGER_WEB_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for _attempt in range(2):
        url = f"{worker_url.rstrip('/')}/explain/{urllib.parse.quote(customer, safe='')}"
        try:
            request = urllib.request.Request(url + (f"?{query}" if query else ""), headers=headers)
            with urllib.request.urlopen(request, timeout=10) as r:
                body = orjson.loads(r.read())
                break
        except urllib.error.HTTPError as exc:
            body = orjson.loads(exc.read() or b"{}")
            if exc.code == 409 and body.get("owner"):
                worker_url = body["owner"]
                continue
            raise click.ClickException(
                body.get("error", f"the worker answered {exc.code}")
            ) from exc
        except urllib.error.URLError as exc:
            raise click.ClickException(
                f"cannot reach the worker at {worker_url}: {exc.reason}; "
                "set --worker or TAGGER_WORKER_URL"
            ) from exc
    else:
        raise click.ClickException(f"no worker owns customer {customer!r}")
    if as_json:
        sys.stdout.write(orjson.dumps(body).decode() + "\n")
        return
    console.print(body["text"], highlight=False)


# -- rules -------------------------------------------------------------------------------


@cli.group()
def rules() -> None:
    """Check, activate and inspect rulebooks."""


@rules.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def rules_check(file: str) -> None:
    """Validate a rulebook; print each error with file, line and column, then any warning."""
    from tagger.rules.rulebook import load_rulebook

    rulebook = load_rulebook(Path(file))
    warnings = _rule_warnings(rulebook)
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    console.print(
        f"{file}: ok, version {rulebook.version}, {len(rulebook.rules)} rules, "
        f"currency {rulebook.currency}, {len(warnings)} warnings"
    )


def _rule_warnings(rulebook: Any) -> list[str]:
    from tagger.rules.static_checks import check_warnings

    return [str(warning) for warning in check_warnings(rulebook)]


@rules.command("test")
@click.argument("file", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option(
    "--fixtures",
    type=click.Path(exists=True, dir_okay=False),
    help="Fixtures file (default: FILE with .tests.yaml in place of .yaml).",
)
def rules_test(file: str | None, fixtures: str | None) -> None:
    """Run a rulebook's declarative fixtures; with no FILE, the default rulebook's."""
    from tagger.rules.fixtures import fixtures_path_for, run_fixtures
    from tagger.rules.rulebook import load_rulebook

    rulebook = load_rulebook(Path(file) if file else None)
    if fixtures is None and file is not None:
        fixtures = str(fixtures_path_for(file))
        if not Path(fixtures).exists():
            raise click.ClickException(
                f"no fixtures file {fixtures}: write one (see docs/rulebook-guide.md) "
                "or name it with --fixtures"
            )
    report = run_fixtures(rulebook, fixtures)
    console.print(report.render_text(), highlight=False)
    if not report.ok:
        sys.exit(1)


@rules.command("preview")
@click.argument("new_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--history",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Events to replay: REES46, UCI, Taobao, CDNOW or JSONL.",
)
@click.option(
    "--current",
    "current_file",
    type=click.Path(exists=True, dir_okay=False),
    envvar="TAGGER_RULEBOOK_PATH",
    show_envvar=True,
    help="The rulebook in use now (default: the packaged default rulebook).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(_FORMAT_NAMES),
    help="Format of --history (default: detected).",
)
@click.option(
    "--end-clock-span",
    default=3600.0,
    show_default=True,
    type=float,
    help="Seconds past the last event to move the clock to at the end.",
)
@click.option(
    "--diff",
    "diff_path",
    type=click.Path(dir_okay=False),
    help="Write every customer whose tags differ to this JSONL file.",
)
def rules_preview(
    new_file: str,
    history: str,
    current_file: str | None,
    fmt: str | None,
    end_clock_span: float,
    diff_path: str | None,
) -> None:
    """Replay a history through the current and a new rulebook and show what would change.

    Touches no topic and no Redis key.
    """
    from tagger.rules.preview import preview
    from tagger.rules.rulebook import load_rulebook
    from tagger.schemas.decode import decode_event
    from tagger.schemas.events import Event
    from tagger.streams.formats import ConvertedEvent, read_items

    current = load_rulebook(Path(current_file) if current_file else None)
    new = load_rulebook(Path(new_file))
    converted = sorted(
        (
            item
            for item in read_items(history, fmt=fmt, currency=current.currency)
            if isinstance(item, ConvertedEvent)
        ),
        key=lambda item: (item.ts, item.line),
    )
    events: list[Event] = []
    skipped = 0
    for item in converted:
        try:
            decoded = decode_event(item.value, key=None, currency=current.currency)
        except TaggerError:
            skipped += 1
            continue
        if isinstance(decoded, Event):
            events.append(decoded)
    end_clock = events[-1].ts + int(end_clock_span * 1000) if events else None
    with console.status(f"replaying {len(events)} events through both rulebooks"):
        report = preview(current, new, events, end_clock=end_clock)
    console.print(report.render_text(), highlight=False)
    from tagger.rules.history import history_gaps

    for gap in history_gaps(current, new):
        console.print(f"note: {gap}", highlight=False)
    if skipped:
        console.print(f"{skipped} invalid events were left out", highlight=False)
    if diff_path:
        with open(diff_path, "wb") as out:
            for row in report.rows():
                out.write(orjson.dumps(row.to_json()) + b"\n")
        console.print(f"full diff written to {diff_path}")


@rules.command("activate")
@_options(_KAFKA, _TOPICS)
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
    if previous is not None and previous.rulebook_text:
        from tagger.rules.history import history_gaps
        from tagger.rules.rulebook import parse_rulebook

        old = parse_rulebook(previous.rulebook_text, file=previous.source or "active rulebook")
        for gap in history_gaps(old, rulebook):
            console.print(f"[yellow]note:[/yellow] {gap}", highlight=False)
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
@_options(_KAFKA)
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


# -- mirror ------------------------------------------------------------------------------


@cli.group()
def mirror() -> None:
    """Check the Redis mirror against the customers table, and repair it."""


_MIRROR_OUTPUT = [
    click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON."),
    click.option(
        "--examples",
        default=20,
        show_default=True,
        type=click.IntRange(min=0),
        help="Differences to list, after the counts by kind.",
    ),
]


@mirror.command("verify")
@_options(_KAFKA, _REDIS, _RULEBOOK, _MIRROR_OUTPUT)
def mirror_verify(as_json: bool, examples: int, **options: Any) -> None:
    """Compare Redis with the customers table's changelog; exit 1 when they differ.

    Safe while workers run. Reads the changelog topic <app_id>-customers-changelog
    from the beginning, every customer hash, tag set and seq key under the prefix,
    and the rulebook hash.
    """
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.mirror_tools import verify

    report = verify(settings, progress=_changelog_progress)
    if as_json:
        sys.stdout.write(orjson.dumps(report.to_json()).decode() + "\n")
    else:
        _print_differences(report, examples)
    if report.differences:
        sys.exit(1)


@mirror.command("rebuild")
@_options(_KAFKA, _REDIS, _RULEBOOK, _MIRROR_OUTPUT)
def mirror_rebuild(as_json: bool, examples: int, **options: Any) -> None:
    """Repair every difference verify finds, from the customers table's changelog.

    Safe while workers run: a customer a worker writes meanwhile is left to
    the worker. Customers whose seq in Redis is above the table's are written
    with the table's seq, since the table is the truth.
    """
    settings = _settings(**options)
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.mirror_tools import rebuild

    report = rebuild(settings, progress=_changelog_progress)
    if as_json:
        sys.stdout.write(orjson.dumps(report.to_json()).decode() + "\n")
        return
    _print_differences(report.found, examples)
    console.print(
        f"rewrote {report.customers_rewritten} customers, removed {report.members_removed} "
        f"tag-set members" + (", re-wrote the rulebook hash" if report.rulebook_written else ""),
        highlight=False,
    )
    if report.customers_skipped:
        console.print(
            f"{len(report.customers_skipped)} customers changed while rebuilding and were left "
            f"to the workers (first: {report.customers_skipped[0]!r}); run verify again",
            highlight=False,
        )


def _changelog_progress(records: int, estimated_total: int, customers: int) -> None:
    err_console.print(
        f"changelog: {records} of about {estimated_total} records read, {customers} customers",
        highlight=False,
    )


def _print_differences(report: Any, examples: int) -> None:
    console.print(
        f"customers table: {report.customers} customers from {report.changelog_records} "
        f"changelog records; rulebook {report.rulebook_version} from {report.rulebook_source}",
        highlight=False,
    )
    if not report.differences:
        console.print("the mirror matches the customers table")
        return
    console.print(f"{len(report.differences)} differences:", highlight=False)
    for kind, count in report.counts().items():
        console.print(f"  {kind}: {count}", highlight=False)
    for difference in report.differences[:examples]:
        console.print(f"  {difference.describe()}", highlight=False)
    if len(report.differences) > examples:
        console.print(f"  … {len(report.differences) - examples} more (--json lists all)")


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
@click.option(
    "--rulebook",
    "rulebook_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Rulebook YAML file (default: the packaged one, in CNY); its currency is the data's.",
)
def demo(**options: Any) -> None:
    """Run the whole path on an embedded broker and Redis and print a summary."""
    configure_logging("warning", quiet_kafka=True)
    from tagger.streams.demo import DemoOptions, run_demo

    sys.exit(run_demo(console, DemoOptions(**options)))


if __name__ == "__main__":
    main()
