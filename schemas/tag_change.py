"""The tag-change event that the worker publishes for every tag added or removed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .contract import schema_errors

__all__ = [
    "Action",
    "ChangeSource",
    "TagChange",
    "decode_tag_change",
    "encode_tag_change",
    "validate_tag_change",
]

Action = Literal["added", "removed"]
ChangeSource = Literal["rule", "manual", "rulebook_change", "late_correction", "erasure"]


@dataclass(frozen=True, slots=True)
class TagChange:
    """One change of one customer's tags.

    `at` is the event time (epoch ms) from which the change holds;
    `emitted_at` is the wall time (epoch ms) of the first emission, kept in
    the customer's outbox so that a repeat is byte-identical.
    """

    change_id: str
    customer_id: str
    tag: str
    action: Action
    at: int
    emitted_at: int
    rulebook_version: str
    source: ChangeSource
    reason: dict[str, Any]
    group: str | None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def seq(self) -> int:
        """Return the customer's change sequence number, the last part of `change_id`."""
        return int(self.change_id.rsplit(":", 1)[1])

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a dict, sharing `reason` and copying `labels`.

        `dataclasses.asdict` copies every nested value too, and cost about a
        tenth of the worker's time in a profile of 100,000 events.
        """
        return {
            "change_id": self.change_id,
            "customer_id": self.customer_id,
            "tag": self.tag,
            "action": self.action,
            "at": self.at,
            "emitted_at": self.emitted_at,
            "rulebook_version": self.rulebook_version,
            "source": self.source,
            "reason": self.reason,
            "group": self.group,
            "labels": dict(self.labels),
        }


def encode_tag_change(change: TagChange) -> bytes:
    """Serialise a change as compact JSON with sorted keys, so a repeat is byte-identical."""
    # orjson sorts the keys of dicts, not of dataclasses.
    return orjson.dumps(change.to_dict(), option=orjson.OPT_SORT_KEYS)


def decode_tag_change(raw: bytes) -> TagChange:
    """Parse a tag-change record written by `encode_tag_change`."""
    data = orjson.loads(raw)
    return TagChange(**data)


def validate_tag_change(raw: bytes) -> None:
    """Raise ValueError unless `raw` is a tag-change record that matches tag_change.json.

    It is meant for tests and tools. The message lists every mismatch with its JSON path.
    """
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"invalid tag-change record: not JSON ({exc})") from None

    errors = schema_errors("tag_change", record)
    if errors:
        raise ValueError(f"invalid tag-change record: {'; '.join(errors)}")
