"""Why an input record was rejected: every reason in one place, so it can label a metric."""

from __future__ import annotations

from typing import Final

import orjson

__all__ = [
    "DEAD_LETTER_REASONS",
    "REASONS",
    "REPLAY_REASONS",
    "WORKER_REASONS",
    "show_value",
]

# Maximum length of the excerpt of an offending value in an error detail.
MAX_SHOWN_CHARS: Final = 100

# Reasons raised by `tagger.schemas.decode.decode_event` in `InvalidEvent.reason`.
REASONS: Final[tuple[str, ...]] = (
    "empty_record",
    "too_large",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "unknown_type",
    "invalid_timestamp",
    "timestamp_out_of_range",
    "invalid_amount",
    "amount_precision",
    "currency_mismatch",
    "invalid_customer_id",
    "clock_with_key",
    "key_mismatch",
)

# Reasons for rows of a replayed file that never became an event.
REPLAY_REASONS: Final[tuple[str, ...]] = (
    "wrong_field_count",
    "unconvertible_row",
)

# Reasons the worker adds for valid-looking records it still cannot apply:
# a record on the repartition topic in the wrong partition (its partition
# count differs from the tables'), an unexpected error while applying it,
# and an event stamped more than a day after the worker's wall clock.
WORKER_REASONS: Final[tuple[str, ...]] = (
    "misrouted",
    "processing_error",
    "timestamp_in_future",
)

# Every reason a dead-letter record may carry. dead_letter.json lists the same values.
DEAD_LETTER_REASONS: Final[tuple[str, ...]] = REASONS + REPLAY_REASONS + WORKER_REASONS


def show_value(value: object) -> str:
    """Format an offending value for an error detail: its repr, cut to 100 characters.

    Arrays and objects are shown as compact JSON so that a deeply nested value
    cannot hit Python's recursion limit in repr().
    """
    if isinstance(value, str | bytes):
        excerpt = repr(value[:MAX_SHOWN_CHARS])
        return excerpt if len(value) <= MAX_SHOWN_CHARS else excerpt + "..."
    if isinstance(value, bool | int | float) or value is None:
        return _cut(repr(value))

    try:
        return _cut(orjson.dumps(value).decode())
    except orjson.JSONEncodeError:
        return f"a {type(value).__name__}"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "..."
