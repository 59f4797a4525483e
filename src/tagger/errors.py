"""Exceptions of customer-tagger.

TaggerError
├── ConfigError        a setting is missing or invalid; names the field and its env var
├── RulebookError      a rulebook does not validate; carries file, line, column and reason
│   └── RulebookErrors several rules failed at once; carries each error
├── InvalidEvent       an input record failed decoding or validation; carries a fixed `reason`
└── MirrorError        the Redis mirror could not be written or read
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InvalidEvent",
    "MirrorError",
    "RulebookError",
    "RulebookErrors",
    "TaggerError",
]


class TaggerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(TaggerError):
    """A setting is missing or invalid."""


class RulebookError(TaggerError):
    """A rulebook failed to load or validate."""

    def __init__(
        self, reason: str, *, file: str, line: int | None = None, column: int | None = None
    ) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        self.column = column
        where = file
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {reason}")


class RulebookErrors(RulebookError):
    """Several errors in one rulebook, found in independent rules and reported together.

    `file`, `line`, `column` and `reason` are those of the first error.
    """

    def __init__(self, errors: list[RulebookError]) -> None:
        first = errors[0]
        super().__init__(first.reason, file=first.file, line=first.line, column=first.column)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


class InvalidEvent(TaggerError):
    """An input record is not a valid event.

    `reason` is one of `tagger.schemas.decode.REASONS`, so it can label a
    metric; `detail` says which field and value failed, for people.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class MirrorError(TaggerError):
    """The Redis mirror failed."""
