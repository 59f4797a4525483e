"""Logging set-up: structlog key/value lines on stderr, beside the standard library's records."""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging", "quiet_libraries"]

# Libraries whose DEBUG records cost time on every fetch and send even when
# nothing prints them, because Faust leaves the root logger at DEBUG.
_NOISY_LIBRARIES = ("aiokafka", "kafka", "faust", "mode", "aiohttp", "asyncio")


def configure_logging(
    level: str = "info", *, json: bool = False, quiet_kafka: bool = False
) -> None:
    """Configure structlog and the root logger once, from the CLI entry point."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=numeric, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    quiet_libraries(numeric)
    if quiet_kafka:
        # kafka-python logs each refused connection while a broker starts and
        # each slow poll; CLI commands report their own failures instead.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


def quiet_libraries(level: int) -> None:
    """Set the root logger to `level` and the noisy libraries' loggers to `level` or WARNING.

    Whichever is higher applies to the libraries, at level DEBUG too.
    """
    logging.getLogger().setLevel(level)
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
