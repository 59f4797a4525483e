"""Settings of the worker and the CLI: one frozen object, each field with its env var."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from tagger.errors import ConfigError

__all__ = [
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "STORES",
    "ClockMode",
    "SaslMechanism",
    "Secret",
    "SecurityProtocol",
    "Settings",
    "mask_url",
    "read_secret",
]

ClockMode = Literal["live", "replay"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SECURITY_PROTOCOLS: tuple[str, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# Fields holding a secret: masked in repr() and redacted(), and readable from
# the file named by `<ENV VAR>_FILE`, as container secrets are mounted.
_SECRET_FIELDS = ("sasl_password", "redis_password", "web_token")
_MASK = "***"
# A state cap below this would trim customers with ordinary histories.
_MIN_STATE_CAP = 1_024

# Table stores the worker accepts in TAGGER_STORE, as faust-streaming store URLs.
# `rocksdb://` needs the rocksdict package. The store is kept in `extra["store"]`,
# which the app reads; unset means Faust's in-memory store.
STORES: tuple[str, ...] = ("memory://", "rocksdb://")
_STORE_ENV = "TAGGER_STORE"

# Kafka topic names: Kafka's own limit of 249 characters from [a-zA-Z0-9._-].
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _env_name(name: str) -> str:
    return "TAGGER_" + name.upper()


@dataclass(frozen=True, slots=True)
class Secret:
    """A password or token: `str()` and `repr()` show `***`; `reveal()` returns the value."""

    value: str = field(repr=False)

    def reveal(self) -> str:
        """Return the secret itself, only to hand it to a client library."""
        return self.value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker or a CLI command needs to reach Kafka and Redis.

    Each field reads the env var `TAGGER_<FIELD>` (see `from_env`), except
    `kafka_bootstrap_servers` (KAFKA_BOOTSTRAP_SERVERS) and `redis_url`
    (REDIS_URL), which follow the names other tools use. TAGGER_STORE (one
    of STORES) sets `extra["store"]`, the Faust table store.
    """

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    app_id: str = "customer-tagger"
    input_topics: tuple[str, ...] = ("customer-events",)
    tag_change_topic: str = "customer-tag-changes"
    dead_letter_topic: str = "customer-events-dead-letters"
    partitions: int = 8
    redis_prefix: str = "tagger:"
    rulebook_path: str | None = None
    clock_mode: ClockMode = "live"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: str = "./tagger-data"
    # A batch is up to `batch_size` records, or what arrived within
    # `batch_timeout_s` of its first one. Under load batches fill at once;
    # at a light load the timeout is added to every event's latency.
    batch_size: int = 1000
    batch_timeout_s: float = 0.01
    # The hard cap on one customer's stored state (bytes). A state above it
    # is trimmed (see Processor._trim) and the trim is logged. The rulebook's
    # own bounds keep states far below: a test that floods one customer with
    # events over 3,000 categories reached 17.9 KB.
    max_state_bytes: int = 65_536
    # Maximum wait of a fetch for new records (ms). 0 picks 10 ms on the
    # embedded Tansu broker, which responds to a fetch only when this wait
    # ends, and Faust's 1,500 ms elsewhere. Kafka responds as soon as a
    # record arrives, so there the wait only spaces out an idle consumer's fetches.
    fetch_max_wait_ms: int = 0
    broker_session_timeout_s: float = 30.0
    standby_replicas: int = 0
    # How often consumed offsets are committed (seconds); after a crash the
    # worker re-reads at most this much input, which the outbox makes harmless.
    commit_interval_s: float = 1.0
    mirror_timeout_s: float = 1.0
    wall_clock_offset_ms: int = 0
    log_level: str = "info"
    # "auto" turns on the end-offset workaround only when the broker's
    # cluster id shows it is the embedded Tansu broker.
    broker_end_offset_fix: Literal["auto", "on", "off"] = "auto"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    redis_username: str | None = None
    redis_password: Secret | None = None
    redis_ssl_ca_certs: str | None = None
    # Bearer token every web view but /healthz requires when it is set.
    web_token: Secret | None = None
    # Table recovery logs its progress at most this often (seconds), and
    # warns "recovery stalled" when no changelog record arrived for
    # `recovery_stall_s` while records remain.
    recovery_log_interval_s: float = 10.0
    recovery_stall_s: float = 30.0
    # Table recovery first reads the changelogs with a plain consumer for at
    # most this long (seconds), then Faust reads the rest (see
    # streams/bulk_recovery.py); 0 leaves it all to Faust.
    recovery_bulk_s: float = 60.0
    # After SIGTERM or SIGINT, a worker that has not stopped within this many
    # seconds logs what is still pending and exits with code 3, committing
    # nothing more. Below the 30 s that Docker Compose (stop_grace_period here)
    # and Kubernetes wait before SIGKILL, so the worker's own report comes first.
    shutdown_timeout_s: float = 25.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Plain strings passed in code (tests, `with_changes`) become Secrets.
        for name in _SECRET_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Secret(value))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.redacted().items())
        return f"Settings({shown})"

    @property
    def repartition_topic(self) -> str:
        """Internal topic for records that arrive on the wrong partition or with the wrong key."""
        return f"{self.app_id}-events-by-customer"

    @property
    def erasure_topic(self) -> str:
        """Internal topic of erasure requests (`tagger forget`), keyed like the input topics."""
        return f"{self.app_id}-erasures"

    @property
    def rulebook_topic(self) -> str:
        """One-partition topic recording which rulebook version the group runs."""
        return f"{self.app_id}-rulebook"

    def with_changes(self, **changes: Any) -> Settings:
        """Return a copy with some fields replaced, validated again."""
        return replace(self, **changes).validated()

    def validated(self) -> Settings:
        """Return self after checking every field; raise ConfigError naming the env var."""
        topics = (*self.input_topics, self.tag_change_topic, self.dead_letter_topic)
        for topic in topics:
            if not _TOPIC_NAME.match(topic):
                raise ConfigError(
                    f"invalid topic name {topic!r}: use 1-249 characters of [A-Za-z0-9._-]"
                )
        if not self.input_topics:
            raise ConfigError(f"no input topic is set: set {_env_name('input_topics')}")
        if self.partitions < 1:
            raise ConfigError(
                f"invalid partition count {self.partitions}: "
                f"set {_env_name('partitions')} to 1 or more"
            )
        if self.clock_mode not in ("live", "replay"):
            raise ConfigError(
                f"invalid clock mode {self.clock_mode!r}: set {_env_name('clock_mode')} "
                "to 'live' or 'replay'"
            )
        if self.batch_size < 1:
            raise ConfigError(f"invalid batch size {self.batch_size}: must be 1 or more")
        if self.max_state_bytes < _MIN_STATE_CAP:
            raise ConfigError(
                f"invalid state cap {self.max_state_bytes} bytes: set "
                f"{_env_name('max_state_bytes')} to {_MIN_STATE_CAP} or more"
            )
        if self.fetch_max_wait_ms < 0:
            raise ConfigError(
                f"invalid fetch wait {self.fetch_max_wait_ms} ms: set "
                f"{_env_name('fetch_max_wait_ms')} to 0 (automatic) or more"
            )
        for name in ("recovery_log_interval_s", "recovery_stall_s", "shutdown_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(
                    f"invalid value {value} for {_env_name(name)}: must be more than 0 seconds"
                )
        if not self.recovery_bulk_s >= 0:
            raise ConfigError(
                f"invalid value {self.recovery_bulk_s} for {_env_name('recovery_bulk_s')}: "
                "must be 0 seconds or more"
            )
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"invalid Redis URL {self.redacted()['redis_url']!r}: set REDIS_URL to "
                "redis://host:port/db, rediss:// for TLS, or unix:///path/to/socket"
            )
        if "{" in self.redis_prefix or "}" in self.redis_prefix:
            raise ConfigError(f"invalid Redis prefix {self.redis_prefix!r}: keys carry no braces")
        store = self.extra.get("store", STORES[0])
        if store not in STORES:
            raise ConfigError(
                f"invalid table store {store!r}: set {_STORE_ENV} to one of {', '.join(STORES)}"
            )
        _check_kafka_security(self)
        _check_redis_security(self)
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from the environment, then apply explicit overrides (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name == "extra":
                continue
            if spec.name == "kafka_bootstrap_servers":
                raw = env.get("KAFKA_BOOTSTRAP_SERVERS")
            elif spec.name == "redis_url":
                raw = env.get("REDIS_URL")
            elif spec.name in _SECRET_FIELDS:
                raw = read_secret(env, _env_name(spec.name))
            else:
                raw = env.get(_env_name(spec.name))
            if raw is None or raw == "":
                continue
            values[spec.name] = _convert(spec.name, raw, getattr(cls(), spec.name))
        store = env.get(_STORE_ENV)
        if store:
            values["extra"] = {"store": store.strip()}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values).validated()

    def to_env(self) -> dict[str, str]:
        """Return env vars that make `from_env` rebuild these settings, for child processes.

        An unset field becomes an empty variable, which `from_env` skips, so
        a value in the parent's own environment cannot reach the child.
        """
        env: dict[str, str] = {_STORE_ENV: str(self.extra.get("store", ""))}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "extra":
                continue
            if spec.name == "kafka_bootstrap_servers":
                name = "KAFKA_BOOTSTRAP_SERVERS"
            elif spec.name == "redis_url":
                name = "REDIS_URL"
            else:
                name = _env_name(spec.name)
            if spec.name in _SECRET_FIELDS:
                env[f"{name}_FILE"] = ""
            if value is None:
                env[name] = ""
            elif isinstance(value, Secret):
                # A child process needs the secret itself; env vars are not logged.
                env[name] = value.reveal()
            elif isinstance(value, tuple):
                env[name] = ",".join(value)
            else:
                env[name] = str(value)
        return env

    def redacted(self) -> dict[str, Any]:
        """Return the settings as a dict with every secret shown as `***`, for logs."""
        shown = {spec.name: getattr(self, spec.name) for spec in fields(self)}
        shown["redis_url"] = mask_url(self.redis_url)
        for name in _SECRET_FIELDS:
            if shown[name] is not None:
                shown[name] = _MASK
        shown.pop("extra", None)
        return shown


def mask_url(url: str) -> str:
    """Return `url` with the password of its user info and any password query value as `***`."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url

    # The user info ends at the last "@" before the query, so a password with
    # an unescaped "/" or "@" is still masked whole.
    query_start = rest.find("?")
    end = len(rest) if query_start < 0 else query_start
    at = rest.rfind("@", 0, end)
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{_MASK}{rest[at:]}"
    return f"{scheme}://" + re.sub(r"((?:^|[?&])[^=&]*password[^=&]*=)[^&]*", rf"\1{_MASK}", rest)


def _check_kafka_security(settings: Settings) -> None:
    protocol = settings.security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            f"invalid Kafka security protocol {protocol!r}: set "
            f"{_env_name('security_protocol')} to one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    if settings.sasl_mechanism not in SASL_MECHANISMS:
        raise ConfigError(
            f"invalid SASL mechanism {settings.sasl_mechanism!r}: set "
            f"{_env_name('sasl_mechanism')} to one of {', '.join(SASL_MECHANISMS)}"
        )

    if protocol.startswith("SASL_"):
        if not settings.sasl_username:
            raise ConfigError(
                f"missing SASL user name for security protocol {protocol}: "
                f"set {_env_name('sasl_username')}"
            )
        if settings.sasl_password is None or not settings.sasl_password.reveal():
            raise ConfigError(
                f"missing SASL password for security protocol {protocol}: set "
                f"{_env_name('sasl_password')} or {_env_name('sasl_password')}_FILE"
            )
    else:
        for name in ("sasl_username", "sasl_password"):
            if getattr(settings, name) is not None:
                raise ConfigError(
                    f"{_env_name(name)} is set but security protocol {protocol} uses no SASL: "
                    f"set {_env_name('security_protocol')} to SASL_SSL or SASL_PLAINTEXT"
                )

    uses_tls = protocol in ("SSL", "SASL_SSL")
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, name)
        if path is None:
            continue
        if not uses_tls:
            raise ConfigError(
                f"{_env_name(name)} is set but security protocol {protocol} uses no TLS: "
                f"set {_env_name('security_protocol')} to SSL or SASL_SSL"
            )
        if not Path(path).is_file():
            raise ConfigError(f"file {path!r} not found: check {_env_name(name)}")
    if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
        raise ConfigError(
            f"{_env_name('ssl_keyfile')} is set without a certificate: "
            f"set {_env_name('ssl_certfile')} too"
        )


def _check_redis_security(settings: Settings) -> None:
    url_user, url_password = _url_credentials(settings.redis_url)
    if settings.redis_password is not None and url_password:
        raise ConfigError(
            "the Redis password is set twice: remove it from REDIS_URL or unset "
            f"{_env_name('redis_password')}"
        )
    if settings.redis_username is not None and url_user:
        raise ConfigError(
            "the Redis user name is set twice: remove it from REDIS_URL or unset "
            f"{_env_name('redis_username')}"
        )
    if settings.redis_username is not None and settings.redis_password is None:
        raise ConfigError(
            f"{_env_name('redis_username')} is set without a password: set "
            f"{_env_name('redis_password')} or {_env_name('redis_password')}_FILE"
        )

    ca_certs = settings.redis_ssl_ca_certs
    if ca_certs is None:
        return
    if not settings.redis_url.startswith("rediss://"):
        raise ConfigError(
            f"{_env_name('redis_ssl_ca_certs')} is set but REDIS_URL does not use TLS: "
            "start REDIS_URL with rediss://"
        )
    if not Path(ca_certs).is_file():
        raise ConfigError(f"file {ca_certs!r} not found: check {_env_name('redis_ssl_ca_certs')}")


def _url_credentials(url: str) -> tuple[str, str]:
    """Return the user name and password in the user info of a URL ("" when absent)."""
    _scheme, _separator, rest = url.partition("://")
    query_start = rest.find("?")
    at = rest.rfind("@", 0, len(rest) if query_start < 0 else query_start)
    if at < 0:
        return "", ""
    user, _colon, password = rest[:at].partition(":")
    return user, password


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """Return the secret in env var `name`, or in the file that `<name>_FILE` names."""
    file_name = f"{name}_FILE"
    path = env.get(file_name)
    if not path:
        return env.get(name)
    if env.get(name):
        raise ConfigError(f"both {name} and {file_name} are set: unset one of them")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the secret file {path!r}: {exc.strerror}; check {file_name}"
        ) from exc
    # Files written with `echo` or an editor end with a newline that is not
    # part of the secret.
    return text.rstrip("\r\n")


def _convert(name: str, raw: str, default: Any) -> Any:
    try:
        if name == "rulebook_path":
            return raw
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"invalid value {raw!r} for {_env_name(name)}: {exc}") from exc
    return raw
