"""No password or token appears in repr, str, redacted settings, log lines or config errors."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import structlog

from tagger.errors import ConfigError
from tagger.streams.config import Secret, Settings, mask_url
from tagger.streams.worker import build_runtime

_PASSWORD = "s3cret-Pa55"
_TOKEN = "t0ken-Xy9"


def _with_secrets_in_fields() -> Settings:
    return Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="tagger",
        sasl_password=_PASSWORD,  # type: ignore[arg-type]
        redis_username="tagger",
        redis_password=_PASSWORD,  # type: ignore[arg-type]
        web_token=_TOKEN,  # type: ignore[arg-type]
    ).validated()


def _with_password_in_url() -> Settings:
    return Settings(
        redis_url=f"rediss://tagger:{_PASSWORD}@redis.example:6380/0",
        web_token=_TOKEN,  # type: ignore[arg-type]
    ).validated()


_SETTINGS = [_with_secrets_in_fields, _with_password_in_url]


def _assert_no_secret(text: str) -> None:
    assert _PASSWORD not in text
    assert _TOKEN not in text


@pytest.mark.parametrize("make", _SETTINGS)
def test_repr_masks_secrets(make: Any) -> None:
    settings = make()

    _assert_no_secret(repr(settings))
    _assert_no_secret(str(settings))
    assert "***" in repr(settings)


@pytest.mark.parametrize("make", _SETTINGS)
def test_redacted_masks_secrets(make: Any) -> None:
    shown = make().redacted()

    _assert_no_secret(json.dumps(shown))
    assert shown["web_token"] == "***"


def test_redacted_shows_unset_secret_as_none() -> None:
    shown = Settings().redacted()

    assert shown["sasl_password"] is None
    assert shown["redis_password"] is None
    assert shown["web_token"] is None


def test_secret_repr_and_str_masked() -> None:
    secret = Secret(_PASSWORD)

    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert f"{secret}" == "***"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://:{_PASSWORD}@h:6379/0", "redis://:***@h:6379/0"),
        (f"rediss://tagger:{_PASSWORD}@h:6380/0", "rediss://tagger:***@h:6380/0"),
        ("redis://tagger@h/0", "redis://tagger@h/0"),
        ("redis://:pa/ss@word@h/0", "redis://:***@h/0"),
        (f"redis://h/0?password={_PASSWORD}&db=1", "redis://h/0?password=***&db=1"),
        (
            f"unix:///run/redis.sock?db=0&password={_PASSWORD}",
            "unix:///run/redis.sock?db=0&password=***",
        ),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "changes",
    [
        {"redis_url": f"http://tagger:{_PASSWORD}@h/0"},
        {"redis_url": f"redis://:{_PASSWORD}@h/0", "redis_password": _PASSWORD},
        {"redis_url": f"redis://:{_PASSWORD}@h/0", "redis_ssl_ca_certs": __file__},
        {"security_protocol": "PLAINTEXT", "sasl_password": _PASSWORD},
        {"security_protocol": "SSL", "sasl_username": "u", "sasl_password": _PASSWORD},
        {"redis_url": f"redis://:{_PASSWORD}@h/0", "partitions": 0},
        {"web_token": _TOKEN, "partitions": 0},
    ],
)
def test_config_errors_never_show_secrets(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(**changes).validated()

    _assert_no_secret(str(caught.value))


def test_rendered_log_line_masks_secrets() -> None:
    output = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(output),
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    )

    for make in _SETTINGS:
        logger.info("worker configured", settings=make().redacted())
    lines = output.getvalue().splitlines()

    assert len(lines) == 2
    for line in lines:
        _assert_no_secret(line)


@pytest.mark.parametrize(
    "changes",
    [
        {"redis_password": _PASSWORD, "web_token": _TOKEN},
        {"redis_url_password": _PASSWORD, "web_token": _TOKEN},
    ],
)
def test_worker_configured_line_masks_secrets(settings: Settings, changes: dict[str, Any]) -> None:
    """build_runtime logs its settings; the line must carry no password or token."""
    url_password = changes.pop("redis_url_password", None)
    if url_password is not None:
        changes["redis_url"] = settings.redis_url.replace(
            "redis://", f"redis://:{url_password}@", 1
        )
    secured = settings.with_changes(**changes)

    with structlog.testing.capture_logs() as captured:
        build_runtime(secured)
    configured = [entry for entry in captured if entry["event"] == "worker configured"]

    assert len(configured) == 1
    _assert_no_secret(json.dumps(configured[0], default=str))
    _assert_no_secret(repr(configured[0]))
