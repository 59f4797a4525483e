"""Mapping of the security settings to each client library's arguments, and their validation.

These tests check arguments only: no TLS or SASL broker runs here.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import faust
import pytest

from tagger.errors import ConfigError
from tagger.streams.config import Settings
from tagger.streams.security import (
    aiokafka_args,
    faust_app_args,
    kafka_python_args,
    redis_args,
    ssl_context,
)

_PASSWORD = "s3cret-Pa55"
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _sasl(protocol: str, mechanism: str = "PLAIN", **changes: Any) -> Settings:
    return Settings(
        security_protocol=protocol,  # type: ignore[arg-type]
        sasl_mechanism=mechanism,  # type: ignore[arg-type]
        sasl_username="tagger",
        sasl_password=_PASSWORD,  # type: ignore[arg-type]
        **changes,
    ).validated()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def test_defaults_add_no_arguments() -> None:
    settings = Settings().validated()

    assert faust_app_args(settings) == {}
    assert aiokafka_args(settings) == {}
    assert kafka_python_args(settings) == {}
    assert redis_args(settings) == {}


def test_explicit_plaintext_adds_no_arguments() -> None:
    settings = Settings(security_protocol="PLAINTEXT").validated()

    assert faust_app_args(settings) == {}
    assert kafka_python_args(settings) == {}


@pytest.mark.parametrize("mechanism", _MECHANISMS)
def test_sasl_plaintext_arguments(mechanism: str) -> None:
    settings = _sasl("SASL_PLAINTEXT", mechanism)
    expected = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "tagger",
        "sasl_plain_password": _PASSWORD,
    }

    assert aiokafka_args(settings) == expected
    assert kafka_python_args(settings) == expected


@pytest.mark.parametrize("mechanism", _MECHANISMS)
def test_sasl_ssl_arguments(mechanism: str) -> None:
    settings = _sasl("SASL_SSL", mechanism)

    for args in (aiokafka_args(settings), kafka_python_args(settings)):
        context = args.pop("ssl_context")
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert args == {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": "tagger",
            "sasl_plain_password": _PASSWORD,
        }


@pytest.mark.parametrize("mechanism", _MECHANISMS)
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_faust_sasl_credentials(protocol: str, mechanism: str) -> None:
    credentials = faust_app_args(_sasl(protocol, mechanism))["broker_credentials"]

    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == protocol
    assert credentials.mechanism.value == mechanism
    assert credentials.username == "tagger"
    assert credentials.password == _PASSWORD
    assert (credentials.ssl_context is not None) == (protocol == "SASL_SSL")


def test_faust_ssl_credentials() -> None:
    credentials = faust_app_args(Settings(security_protocol="SSL").validated())[
        "broker_credentials"
    ]

    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol.value == "SSL"
    assert isinstance(credentials.context, ssl.SSLContext)


def test_ssl_arguments_have_no_sasl() -> None:
    args = kafka_python_args(Settings(security_protocol="SSL").validated())

    assert set(args) == {"security_protocol", "ssl_context"}
    assert args["security_protocol"] == "SSL"


def test_hostname_check_on_by_default() -> None:
    context = ssl_context(Settings(security_protocol="SSL").validated())

    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_hostname_check_can_be_off() -> None:
    settings = Settings(security_protocol="SSL", ssl_check_hostname=False).validated()

    context = ssl_context(settings)

    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_ssl_context_loads_ca_and_client_cert(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    settings = Settings(
        security_protocol="SSL",
        ssl_cafile=str(cert),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    ).validated()

    context = ssl_context(settings)

    subjects = [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()]
    assert subjects == [{"commonName": "127.0.0.1"}]


def test_invalid_ca_file_names_env_var(tmp_path: Path) -> None:
    empty = tmp_path / "ca.pem"
    empty.write_text("not a certificate\n")
    settings = Settings(security_protocol="SSL", ssl_cafile=str(empty)).validated()

    with pytest.raises(ConfigError, match="TAGGER_SSL_CAFILE"):
        ssl_context(settings)


def test_invalid_client_cert_names_env_var(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    wrong = tmp_path / "cert.pem"
    wrong.write_text("not a certificate\n")
    settings = Settings(
        security_protocol="SSL", ssl_cafile=str(certificate[0]), ssl_certfile=str(wrong)
    ).validated()

    with pytest.raises(ConfigError, match="TAGGER_SSL_CERTFILE"):
        ssl_context(settings)


@pytest.mark.parametrize(
    ("changes", "env_var"),
    [
        ({"security_protocol": "TLS"}, "TAGGER_SECURITY_PROTOCOL"),
        ({"security_protocol": "sasl_ssl"}, "TAGGER_SECURITY_PROTOCOL"),
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "tagger"},
            "TAGGER_SASL_PASSWORD",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "tagger"},
            "TAGGER_SASL_PASSWORD",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "tagger", "sasl_password": ""},
            "TAGGER_SASL_PASSWORD",
        ),
        ({"security_protocol": "SASL_SSL", "sasl_password": _PASSWORD}, "TAGGER_SASL_USERNAME"),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "GSSAPI",
                "sasl_username": "tagger",
                "sasl_password": _PASSWORD,
            },
            "TAGGER_SASL_MECHANISM",
        ),
        ({"sasl_username": "tagger", "sasl_password": _PASSWORD}, "TAGGER_SECURITY_PROTOCOL"),
        (
            {"security_protocol": "SSL", "sasl_username": "t", "sasl_password": _PASSWORD},
            "TAGGER_SECURITY_PROTOCOL",
        ),
        ({"ssl_cafile": __file__}, "TAGGER_SECURITY_PROTOCOL"),
        (
            {"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
            "TAGGER_SSL_CAFILE",
        ),
        (
            {"security_protocol": "SSL", "ssl_keyfile": __file__},
            "TAGGER_SSL_CERTFILE",
        ),
        ({"redis_password": _PASSWORD, "redis_url": f"redis://:{_PASSWORD}@h/0"}, "REDIS_URL"),
        (
            {"redis_username": "u", "redis_password": "p", "redis_url": "redis://u2@h/0"},
            "TAGGER_REDIS_USERNAME",
        ),
        ({"redis_username": "tagger"}, "TAGGER_REDIS_PASSWORD"),
        ({"redis_ssl_ca_certs": __file__}, "rediss://"),
        (
            {"redis_url": "rediss://h:6380/0", "redis_ssl_ca_certs": "/nonexistent/ca.pem"},
            "TAGGER_REDIS_SSL_CA_CERTS",
        ),
    ],
)
def test_invalid_combination_rejected(changes: dict[str, Any], env_var: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(**changes).validated()

    assert env_var in str(caught.value)
    assert _PASSWORD not in str(caught.value)


def test_redis_arguments_from_fields(certificate: tuple[Path, Path]) -> None:
    settings = Settings(
        redis_url="rediss://redis.example:6380/0",
        redis_username="tagger",
        redis_password=_PASSWORD,  # type: ignore[arg-type]
        redis_ssl_ca_certs=str(certificate[0]),
    ).validated()

    assert redis_args(settings) == {
        "username": "tagger",
        "password": _PASSWORD,
        "ssl_ca_certs": str(certificate[0]),
    }


def test_redis_url_credentials_left_to_redis_py() -> None:
    settings = Settings(redis_url=f"rediss://tagger:{_PASSWORD}@redis.example:6380/0").validated()

    assert redis_args(settings) == {}


def test_redis_url_and_arguments_build_tls_client(certificate: tuple[Path, Path]) -> None:
    import redis

    settings = Settings(
        redis_url="rediss://redis.example:6380/0",
        redis_password=_PASSWORD,  # type: ignore[arg-type]
        redis_ssl_ca_certs=str(certificate[0]),
    ).validated()

    client = redis.Redis.from_url(settings.redis_url, **redis_args(settings))
    kwargs = client.connection_pool.connection_kwargs

    assert client.connection_pool.connection_class is redis.SSLConnection
    assert kwargs["password"] == _PASSWORD
    assert kwargs["ssl_ca_certs"] == str(certificate[0])


def test_password_read_from_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(_PASSWORD + "\n")
    env = {
        "TAGGER_SECURITY_PROTOCOL": "SASL_SSL",
        "TAGGER_SASL_MECHANISM": "SCRAM-SHA-512",
        "TAGGER_SASL_USERNAME": "tagger",
        "TAGGER_SASL_PASSWORD_FILE": str(secret_file),
        "TAGGER_REDIS_PASSWORD_FILE": str(secret_file),
    }

    settings = Settings.from_env(env)

    assert kafka_python_args(settings)["sasl_plain_password"] == _PASSWORD
    assert redis_args(settings)["password"] == _PASSWORD


def test_password_file_missing_names_env_var(tmp_path: Path) -> None:
    env = {"TAGGER_REDIS_PASSWORD_FILE": str(tmp_path / "absent")}

    with pytest.raises(ConfigError, match="TAGGER_REDIS_PASSWORD_FILE"):
        Settings.from_env(env)


def test_password_and_file_both_rejected(tmp_path: Path) -> None:
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(_PASSWORD)
    env = {"TAGGER_SASL_PASSWORD": _PASSWORD, "TAGGER_SASL_PASSWORD_FILE": str(secret_file)}

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    assert "TAGGER_SASL_PASSWORD_FILE" in str(caught.value)
    assert _PASSWORD not in str(caught.value)


def test_security_settings_from_env() -> None:
    env = {
        "TAGGER_SECURITY_PROTOCOL": "SSL",
        "TAGGER_SSL_CHECK_HOSTNAME": "false",
        "TAGGER_WEB_TOKEN": "token-1",
    }

    settings = Settings.from_env(env)

    assert settings.security_protocol == "SSL"
    assert settings.ssl_check_hostname is False
    assert settings.web_token is not None
    assert settings.web_token.reveal() == "token-1"


def test_to_env_round_trips_secrets() -> None:
    settings = _sasl("SASL_SSL", "SCRAM-SHA-256", web_token="token-1")

    rebuilt = Settings.from_env(settings.to_env())

    assert rebuilt == settings


def test_demo_takes_security_only_for_external_services(monkeypatch: pytest.MonkeyPatch) -> None:
    from tagger.streams.demo import demo_settings, with_security_from_env

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9093")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("TAGGER_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TAGGER_SASL_USERNAME", "tagger")
    monkeypatch.setenv("TAGGER_SASL_PASSWORD", _PASSWORD)
    monkeypatch.setenv("TAGGER_REDIS_PASSWORD", _PASSWORD)
    monkeypatch.setenv("TAGGER_WEB_TOKEN", "token-1")
    plain = demo_settings("demo-1", "kafka.example:9093", "redis://127.0.0.1:1/0", Path("d"))

    settings = with_security_from_env(plain)

    assert kafka_python_args(settings)["sasl_plain_password"] == _PASSWORD
    assert redis_args(settings) == {}
    assert settings.web_token is not None


def test_to_env_hides_parent_secrets(tmp_path: Path) -> None:
    """A child rebuilt from to_env() must not pick up a secret only the parent's env has."""
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(_PASSWORD)
    parent = {"TAGGER_REDIS_PASSWORD_FILE": str(secret_file), "TAGGER_WEB_TOKEN": "token-1"}

    child = Settings.from_env({**parent, **Settings().to_env()})

    assert child.redis_password is None
    assert child.web_token is None


@pytest.mark.parametrize("name", ["security.md", "security.zh-CN.md"])
def test_docs_name_only_real_env_vars(name: str) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / name).read_text(encoding="utf-8")
    known = set(Settings().to_env())

    named = set(re.findall(r"\b(?:TAGGER_[A-Z_]*[A-Z]|REDIS_URL|KAFKA_BOOTSTRAP_SERVERS)\b", text))

    assert named - known == set()


def test_store_from_env_round_trips() -> None:
    settings = Settings.from_env({"TAGGER_STORE": "rocksdb://"})

    assert settings.extra["store"] == "rocksdb://"
    assert Settings.from_env(settings.to_env()) == settings


def test_store_unset_leaves_memory_default() -> None:
    settings = Settings.from_env({})

    assert "store" not in settings.extra
    assert settings.to_env()["TAGGER_STORE"] == ""


def test_invalid_store_names_env_var() -> None:
    with pytest.raises(ConfigError, match="TAGGER_STORE") as caught:
        Settings.from_env({"TAGGER_STORE": "aerospike://"})

    assert "rocksdb://" in str(caught.value)
