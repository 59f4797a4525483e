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

One more point does not stop the worker: `records_dropped:N` removes
records from the middle of the N-th batch before the input guard gets it,
as faust-streaming does when it loses records it fetched. The guard must
read them again from the broker. `first_records_dropped:N` instead removes
the first records of a topic-partition in the N-th batch that contains a
topic-partition no earlier batch contained. With nothing committed yet, the gap
then shows only against the log's first offset.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import structlog

from tagger.errors import ConfigError

__all__ = [
    "DROP_HEAD_POINT",
    "DROP_POINT",
    "FAULT_ENV",
    "POINTS",
    "armed_fault",
    "drop_records",
    "fault_point",
    "parse_fault",
]

log = structlog.get_logger(__name__)

FAULT_ENV = "TAGGER_FAULT"
POINTS = ("states_written", "changelog_flushed", "changes_published", "batch_raises")
DROP_POINT = "records_dropped"
DROP_HEAD_POINT = "first_records_dropped"
_DROP_POINTS = (DROP_POINT, DROP_HEAD_POINT)
# Records a batch needs in its first topic-partition to lose some from the
# middle. A smaller batch is not counted.
_MIN_RECORDS_TO_DROP = 3


def parse_fault(text: str) -> tuple[str, int]:
    """Parse `POINT:N`; raise ConfigError naming the valid points."""
    point, _, count = text.partition(":")
    if point not in (*POINTS, *_DROP_POINTS) or not count.isdigit() or int(count) < 1:
        raise ConfigError(
            f"{FAULT_ENV}={text!r}: expected POINT:N with N >= 1 and POINT one of "
            + ", ".join((*POINTS, *_DROP_POINTS))
        )
    return point, int(count)


class _Armed:
    point: str | None = None
    remaining = 0


_armed = _Armed()
# Topic-partitions that `drop_records` has seen a record of while armed.
_seen: set[tuple[str, int]] = set()
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


def drop_records(records: list[Any]) -> list[Any]:
    """At the N-th batch when a drop point is armed, return it without some records.

    `records_dropped` drops the second up to the middle record of the batch's
    first topic-partition, so a later record of the same batch shows the gap.
    `first_records_dropped` drops the first half, and at least one, of the
    records of a topic-partition that no earlier batch contained. The next
    record of that partition, in this batch or a later one, shows the gap.
    """
    if _armed.point not in _DROP_POINTS or _armed.remaining <= 0 or not records:
        return records
    head = _armed.point == DROP_HEAD_POINT
    chosen = _first_new_partition(records) if head else records[0]
    _seen.update((record.topic, record.partition) for record in records)
    if chosen is None:
        return records
    key = (chosen.topic, chosen.partition)
    positions = [i for i, r in enumerate(records) if (r.topic, r.partition) == key]
    if not head and len(positions) < _MIN_RECORDS_TO_DROP:
        return records
    _armed.remaining -= 1
    if _armed.remaining > 0:
        return records
    if head:
        dropped = set(positions[: max(1, len(positions) // 2)])
    else:
        dropped = set(positions[1 : 1 + len(positions) // 2])
    log.warning(
        "fault point reached, dropping records",
        point=_armed.point,
        env=FAULT_ENV,
        topic=key[0],
        partition=key[1],
        offsets=[records[i].offset for i in sorted(dropped)],
    )
    return [record for i, record in enumerate(records) if i not in dropped]


def _first_new_partition(records: list[Any]) -> Any:
    """Return the first record of the batch whose topic-partition no earlier batch contained."""
    for record in records:
        if (record.topic, record.partition) not in _seen:
            return record
    return None
