"""Map the security settings to the arguments of each Kafka and Redis client library.

Every client the project creates takes its TLS and authentication arguments
from here: Faust's app (`broker_credentials`), aiokafka clients, kafka-python
clients and redis-py clients. With the default settings (PLAINTEXT, no Redis
credentials beyond the URL) every function returns no arguments, so the
clients behave as they do without this module.

TODO: no Kafka broker with TLS or SASL and no Redis with TLS was available to
test against, so only the argument mapping is tested; a handshake or login
against a real secured cluster has never run.
"""

from __future__ import annotations

import ssl
from typing import Any

from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from tagger.errors import ConfigError
from tagger.streams.config import Settings

__all__ = [
    "KAFKA_SECURITY_FIELDS",
    "REDIS_SECURITY_FIELDS",
    "aiokafka_args",
    "faust_aiokafka_args",
    "faust_app_args",
    "kafka_python_args",
    "redis_args",
    "ssl_context",
]

# The Settings fields each mapping below reads, for callers that copy them.
KAFKA_SECURITY_FIELDS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
REDIS_SECURITY_FIELDS = ("redis_username", "redis_password", "redis_ssl_ca_certs")


def faust_app_args(settings: Settings) -> dict[str, Any]:
    """Return the `faust.App` keyword arguments for the Kafka security settings."""
    # Imported here so that CLI commands that never start Faust load faster.
    import faust

    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return {}
    if protocol == "SSL":
        return {"broker_credentials": faust.SSLCredentials(ssl_context(settings))}

    # faust.SASLCredentials picks SASL_SSL when given a context, else SASL_PLAINTEXT.
    credentials = faust.SASLCredentials(
        username=settings.sasl_username,
        password=_sasl_password(settings),
        mechanism=settings.sasl_mechanism,
        ssl_context=ssl_context(settings) if protocol == "SASL_SSL" else None,
    )
    return {"broker_credentials": credentials}


def faust_aiokafka_args(conf: Any) -> dict[str, Any]:
    """Return the bootstrap servers and security arguments of a Faust app's conf, for aiokafka.

    A consumer of the worker's own then connects as Faust's own consumer
    does, whose credentials faust-streaming derives from `broker_credentials`.
    """
    return {
        "bootstrap_servers": [f"{url.host}:{url.port}" for url in conf.broker_consumer],
        **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
    }


def aiokafka_args(settings: Settings) -> dict[str, Any]:
    """Return the keyword arguments of AIOKafkaConsumer and AIOKafkaProducer."""
    return _kafka_args(settings)


def kafka_python_args(settings: Settings) -> dict[str, Any]:
    """Return the keyword arguments of kafka-python's admin client, producer and consumer.

    kafka-python takes the same argument names as aiokafka for these settings
    (kafka-python 3.0, aiokafka 0.14), and both take a ready SSL context, so
    the two libraries verify the broker in exactly the same way.
    """
    return _kafka_args(settings)


def redis_args(settings: Settings) -> dict[str, Any]:
    """Return the keyword arguments that `Redis.from_url(settings.redis_url, ...)` needs.

    redis-py itself applies credentials found in the URL. The settings reject
    a user name or password given both in the URL and in a field.
    """
    args: dict[str, Any] = {}
    if settings.redis_username is not None:
        args["username"] = settings.redis_username
    if settings.redis_password is not None:
        args["password"] = settings.redis_password.reveal()
    if settings.redis_ssl_ca_certs is not None:
        # Only rediss:// URLs reach here (see Settings.validated): redis-py's
        # plain connection class rejects TLS arguments.
        args["ssl_ca_certs"] = settings.redis_ssl_ca_certs
    return args


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Build the TLS context for the Kafka brokers: CA file, client certificate, hostname check.

    Without `ssl_cafile` the system's trusted CAs verify the broker. With
    `ssl_check_hostname` off the certificate chain is still verified, but any
    host name in it is accepted.
    """
    try:
        context = ssl.create_default_context(cafile=settings.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load CA certificates from {settings.ssl_cafile!r}: {exc}; "
            "check TAGGER_SSL_CAFILE"
        ) from exc
    context.check_hostname = settings.ssl_check_hostname
    if settings.ssl_certfile is not None:
        try:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client certificate {settings.ssl_certfile!r} "
                f"(key {settings.ssl_keyfile!r}): {exc}; "
                "check TAGGER_SSL_CERTFILE and TAGGER_SSL_KEYFILE"
            ) from exc
    return context


def _kafka_args(settings: Settings) -> dict[str, Any]:
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return {}

    args: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        args["ssl_context"] = ssl_context(settings)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        args["sasl_mechanism"] = settings.sasl_mechanism
        args["sasl_plain_username"] = settings.sasl_username
        args["sasl_plain_password"] = _sasl_password(settings)
    return args


def _sasl_password(settings: Settings) -> str:
    if settings.sasl_password is None:
        raise ConfigError(
            f"missing SASL password for security protocol {settings.security_protocol}: "
            "set TAGGER_SASL_PASSWORD or TAGGER_SASL_PASSWORD_FILE"
        )
    return settings.sasl_password.reveal()
