"""Settings of the worker and the CLI: one frozen object, each field with its env var."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from tagger.errors import ConfigError

__all__ = ["ClockMode", "Settings"]

ClockMode = Literal["live", "replay"]

# Kafka topic names: Kafka's own limit of 249 characters from [a-zA-Z0-9._-].
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _env_name(name: str) -> str:
    return "TAGGER_" + name.upper()


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker or a CLI command needs to reach Kafka and Redis.

    Each field reads the env var `TAGGER_<FIELD>` (see `from_env`), except
    `kafka_bootstrap_servers` (KAFKA_BOOTSTRAP_SERVERS) and `redis_url`
    (REDIS_URL), which follow the names other tools use.
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
    batch_size: int = 1000
    batch_timeout_s: float = 0.05
    broker_session_timeout_s: float = 30.0
    standby_replicas: int = 0
    mirror_timeout_s: float = 1.0
    wall_clock_offset_ms: int = 0
    log_level: str = "info"
    # "auto" turns on the end-offset workaround only when the broker's
    # cluster id shows it is the embedded Tansu broker.
    broker_end_offset_fix: Literal["auto", "on", "off"] = "auto"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def repartition_topic(self) -> str:
        """Internal topic for records that arrive on the wrong partition or with the wrong key."""
        return f"{self.app_id}-events-by-customer"

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
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"invalid Redis URL {self.redacted()['redis_url']!r}: set REDIS_URL to "
                "redis://host:port/db, rediss:// for TLS, or unix:///path/to/socket"
            )
        if "{" in self.redis_prefix or "}" in self.redis_prefix:
            raise ConfigError(f"invalid Redis prefix {self.redis_prefix!r}: keys carry no braces")
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
            else:
                raw = env.get(_env_name(spec.name))
            if raw is None or raw == "":
                continue
            values[spec.name] = _convert(spec.name, raw, getattr(cls(), spec.name))
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values).validated()

    def to_env(self) -> dict[str, str]:
        """Return env vars that make `from_env` rebuild these settings, for child processes."""
        env: dict[str, str] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "extra" or value is None:
                continue
            if spec.name == "kafka_bootstrap_servers":
                name = "KAFKA_BOOTSTRAP_SERVERS"
            elif spec.name == "redis_url":
                name = "REDIS_URL"
            else:
                name = _env_name(spec.name)
            env[name] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env

    def redacted(self) -> dict[str, Any]:
        """Return the settings as a dict with any password in a URL masked, for logs."""
        shown = {spec.name: getattr(self, spec.name) for spec in fields(self)}
        shown["redis_url"] = re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", self.redis_url)
        shown.pop("extra", None)
        return shown


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
