"""Crash points for failure tests: kill the worker at a named step of a batch.

`TAGGER_FAULT=POINT:N` makes the worker send itself SIGKILL the N-th time it
reaches POINT, as a power cut or the kernel's OOM killer would stop it. The
variable is for tests only; the worker logs a warning at start when it is set.

Points, in the order a batch reaches them (see processor.py):
- `states_written`: states are in the table, the changelog may be unsent.
- `changelog_flushed`: the changelog is acknowledged, no tag change is sent.
- `changes_published`: tag changes are acknowledged, Redis is not written and
  the input offsets are not committed.
- `batch_raises`: the batch raises an error after its states are written, as
  a bug or a producer failure would; the worker exits without committing.
"""

from __future__ import annotations

import os
import signal

import structlog

from tagger.errors import ConfigError

__all__ = ["FAULT_ENV", "POINTS", "armed_fault", "fault_point", "parse_fault"]

log = structlog.get_logger(__name__)

FAULT_ENV = "TAGGER_FAULT"
POINTS = ("states_written", "changelog_flushed", "changes_published", "batch_raises")


def parse_fault(text: str) -> tuple[str, int]:
    """Parse `POINT:N`; raise ConfigError naming the valid points."""
    point, _, count = text.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ConfigError(
            f"{FAULT_ENV}={text!r}: expected POINT:N with N >= 1 and POINT one of "
            + ", ".join(POINTS)
        )
    return point, int(count)


class _Armed:
    point: str | None = None
    remaining = 0


_armed = _Armed()
_setting = os.environ.get(FAULT_ENV, "")
if _setting:
    _armed.point, _armed.remaining = parse_fault(_setting)


def armed_fault() -> str | None:
    """Return the armed `POINT:N` setting, or None in a normal run."""
    return _setting or None


def fault_point(point: str) -> None:
    """At the N-th pass of the armed point, kill this process (or raise, for `batch_raises`)."""
    if _armed.point != point:
        return
    _armed.remaining -= 1
    if _armed.remaining > 0:
        return
    if point == "batch_raises":
        log.warning("fault point reached, raising", point=point, env=FAULT_ENV)
        raise RuntimeError(f"{FAULT_ENV} armed {point}")
    log.warning("fault point reached, killing the worker", point=point, env=FAULT_ENV)
    os.kill(os.getpid(), signal.SIGKILL)
