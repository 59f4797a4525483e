"""Declarative rulebook tests: YAML cases of events and the tag changes they must give.

A fixtures file sits next to its rulebook as `<name>.tests.yaml`. Each case
replays its events through a fresh engine with the worker's clock, in replay
mode, and compares the tag changes and final tags with what the case expects.
docs/rulebook-guide.md describes the format.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import orjson
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tagger.errors import InvalidEvent, RulebookError
from tagger.rules.engine import Engine
from tagger.rules.explain import format_duration
from tagger.rules.expression import DURATION_UNITS
from tagger.rules.preview import Replay
from tagger.rules.rulebook import MANUAL_PREFIX, PARAM_RE, Rulebook
from tagger.rules.yaml_source import Source, suggest
from tagger.schemas.decode import decode_event
from tagger.schemas.events import EVENT_TYPES, Event
from tagger.schemas.tag_change import Action, TagChange
from tagger.schemas.timestamps import format_timestamp, parse_timestamp

__all__ = [
    "FIXTURES_SUFFIX",
    "Case",
    "CaseResult",
    "ExpectedChange",
    "FixtureReport",
    "fixtures_path_for",
    "load_fixtures",
    "parse_fixtures",
    "run_case",
    "run_fixtures",
]

FIXTURES_SUFFIX: Final = ".tests.yaml"
_DEFAULT_FIXTURES: Final = "default" + FIXTURES_SUFFIX
# Every field of the published input event format; a misspelled one would
# otherwise be ignored by the decoder and the case would test something else.
_EVENT_FIELDS: Final = (
    "event_id",
    "customer_id",
    "type",
    "ts",
    "product_id",
    "category",
    "price",
    "quantity",
    "order_id",
    "amount",
    "currency",
    "campaign_id",
    "attributes",
    "tag",
    "operator",
)
_OFFSET_RE: Final = re.compile(r"([+-])((?:\d+(?:ms|s|m|h|d))+)")
_OFFSET_TERM_RE: Final = re.compile(r"(\d+)(ms|s|m|h|d)")
_ACTIONS: Final[tuple[Action, ...]] = ("added", "removed")
_INT_TAG: Final = "tag:yaml.org,2002:int"
_FLOAT_TAG: Final = "tag:yaml.org,2002:float"
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_NULL_TAG: Final = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class ExpectedChange:
    """One tag change a case expects: `at` is the epoch ms from which it holds."""

    customer: str
    tag: str
    action: Action
    at: int


@dataclass(frozen=True)
class Case:
    """One test case of a fixtures file, with its times resolved to epoch ms.

    `expect` None means the case does not check changes; `watch` None means
    it checks every tag. `line` is the 1-based line of the case in `file`.
    """

    name: str
    file: str
    line: int
    start: int | None
    events: tuple[Event, ...]
    clock: int | None
    watch: tuple[str, ...] | None
    expect: tuple[ExpectedChange, ...] | None
    expect_tags: Mapping[str, frozenset[str]] | None


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case: no failures means it passed."""

    case: Case
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """True when every expectation of the case held."""
        return not self.failures


@dataclass(frozen=True)
class FixtureReport:
    """The outcome of every case of one fixtures file, in file order."""

    file: str
    results: tuple[CaseResult, ...]

    @property
    def passed(self) -> int:
        """Number of cases that passed."""
        return sum(1 for result in self.results if result.passed)

    @property
    def failed(self) -> int:
        """Number of cases that failed."""
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        """True when every case passed."""
        return self.failed == 0

    def render_text(self) -> str:
        """Return each failed case with its differences, then a summary line, in English."""
        lines: list[str] = []
        for result in self.results:
            if result.passed:
                continue
            case = result.case
            lines.append(f"FAILED {case.file}:{case.line}: case {case.name!r}")
            lines.extend("  " + line for failure in result.failures for line in failure.split("\n"))
        lines.append(f"{self.file}: {self.passed} passed, {self.failed} failed")
        return "\n".join(lines)


def fixtures_path_for(rulebook_path: str | os.PathLike[str]) -> Path:
    """Return the fixtures file that belongs to a rulebook: `rules.yaml` → `rules.tests.yaml`."""
    path = Path(rulebook_path)
    stem = path.name.removesuffix(path.suffix) if path.suffix in (".yaml", ".yml") else path.name
    return path.with_name(stem + FIXTURES_SUFFIX)


def run_fixtures(
    rulebook: Rulebook, fixtures_path: str | os.PathLike[str] | None = None
) -> FixtureReport:
    """Run every case of a fixtures file against `rulebook`.

    `fixtures_path` None runs the packaged fixtures of the default rulebook.
    Raises RulebookError, with file, line and column, when the file does not
    validate; a case whose expectations fail is reported, not raised.
    """
    cases = load_fixtures(rulebook, fixtures_path)
    results = tuple(run_case(rulebook, case) for case in cases)
    return FixtureReport(_file_name(fixtures_path), results)


def load_fixtures(
    rulebook: Rulebook, fixtures_path: str | os.PathLike[str] | None = None
) -> tuple[Case, ...]:
    """Read and validate a fixtures file; None reads the packaged default fixtures."""
    file = _file_name(fixtures_path)
    if fixtures_path is None:
        text = resources.files("tagger.rules").joinpath(_DEFAULT_FIXTURES).read_text("utf-8")
        return parse_fixtures(text, rulebook, file=file)

    try:
        with open(fixtures_path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise RulebookError(f"cannot read the fixtures: {exc.strerror}", file=file) from exc
    except UnicodeDecodeError as exc:
        raise RulebookError(
            f"the fixtures are not valid UTF-8 (byte {exc.start})", file=file
        ) from exc
    return parse_fixtures(text, rulebook, file=file)


def parse_fixtures(text: str, rulebook: Rulebook, *, file: str) -> tuple[Case, ...]:
    """Validate fixtures YAML text against `rulebook`; `file` names it in errors."""
    if not text.strip():
        raise RulebookError(
            "the fixtures file is empty: expected a mapping with `cases:`", file=file
        )

    source = Source(text, file)
    top = source.mapping(
        source.root, "the fixtures", required=("cases",), optional=("start", "customer")
    )
    reader = _CaseReader(source, rulebook)
    default_start = reader.time(top["start"][1], None, "start") if "start" in top else None
    default_customer = reader.customer(top["customer"][1]) if "customer" in top else None

    cases: list[Case] = []
    names: dict[str, int] = {}
    for node in source.sequence(top["cases"][1], "cases"):
        case = reader.case(node, default_start, default_customer)
        if case.name in names:
            source.fail(
                node,
                f"duplicate case name {case.name!r}: it is already used on line {names[case.name]}",
            )
        names[case.name] = case.line
        cases.append(case)
    return tuple(cases)


def run_case(rulebook: Rulebook, case: Case) -> CaseResult:
    """Replay one case through a fresh engine and compare what it decides with the expectations."""
    replay = Replay(Engine(rulebook))
    changes: list[TagChange] = []
    for event in case.events:
        changes.extend(replay.apply(event))
    changes.extend(replay.finish(case.clock))

    failures: list[str] = []
    if case.expect is not None:
        failures.extend(_compare_changes(case, changes))
    if case.expect_tags is not None:
        for customer, expected in case.expect_tags.items():
            state = replay.states.get(customer)
            held = {tag for tag in state.tags if _watched(case, tag)} if state else set()
            failure = _compare_tags(customer, expected, held)
            if failure:
                failures.append(failure)
    return CaseResult(case, tuple(failures))


def _compare_changes(case: Case, changes: Iterable[TagChange]) -> list[str]:
    expected: dict[str, list[str]] = {}
    for change in case.expect or ():
        expected.setdefault(change.customer, []).append(
            _describe(change.tag, change.action, change.at, case.start)
        )
    actual: dict[str, list[str]] = {}
    for tag_change in changes:
        if _watched(case, tag_change.tag):
            actual.setdefault(tag_change.customer_id, []).append(
                _describe(tag_change.tag, tag_change.action, tag_change.at, case.start)
            )

    failures: list[str] = []
    customers = list(expected) + sorted(actual.keys() - expected.keys())
    for customer in customers:
        want = expected.get(customer, [])
        got = actual.get(customer, [])
        if want == got:
            continue
        lines = [f"customer {customer}: tag changes differ (- expected, + actual):"]
        lines.extend("  " + line for line in _diff(want, got))
        failures.append("\n".join(lines))
    return failures


def _compare_tags(customer: str, expected: frozenset[str], held: set[str]) -> str:
    missing = sorted(expected - held)
    unexpected = sorted(held - expected)
    if not missing and not unexpected:
        return ""
    parts = [f"customer {customer}: final tags differ"]
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected {', '.join(unexpected)}")
    parts.append(f"held {', '.join(sorted(held)) or 'none'}")
    return "; ".join(parts)


def _diff(expected: Sequence[str], actual: Sequence[str]) -> list[str]:
    """Return the lines of both lists, marked ` `, `-` or `+`, in the order they differ."""
    lines: list[str] = []
    matcher = difflib.SequenceMatcher(a=expected, b=actual, autojunk=False)
    for operation, a_start, a_end, b_start, b_end in matcher.get_opcodes():
        if operation == "equal":
            lines.extend("  " + line for line in expected[a_start:a_end])
            continue
        lines.extend("- " + line for line in expected[a_start:a_end])
        lines.extend("+ " + line for line in actual[b_start:b_end])
    return lines


def _describe(tag: str, action: str, at: int, start: int | None) -> str:
    return f"{tag} {action} at {_format_time(at, start)}"


def _format_time(at: int, start: int | None) -> str:
    """Write a time as an offset from the case start when it has one, else as RFC 3339."""
    if start is None:
        return format_timestamp(at)
    offset = at - start
    return ("-" if offset < 0 else "+") + format_duration(abs(offset))


def _watched(case: Case, tag: str) -> bool:
    if case.watch is None:
        return True
    rule_id = tag.split(":", 1)[0]
    return tag in case.watch or (rule_id in case.watch and not tag.startswith(MANUAL_PREFIX))


def _file_name(fixtures_path: str | os.PathLike[str] | None) -> str:
    if fixtures_path is None:
        return f"tagger.rules/{_DEFAULT_FIXTURES}"
    return os.fspath(fixtures_path)


class _CaseReader:
    """Reads the cases of one fixtures file, raising RulebookError at the offending node."""

    def __init__(self, source: Source, rulebook: Rulebook) -> None:
        self.source = source
        self.rulebook = rulebook
        self.rule_ids = [rule.id for rule in rulebook.rules]

    def case(self, node: Node, default_start: int | None, default_customer: str | None) -> Case:
        entries = self.source.mapping(
            node,
            "a case",
            required=("name", "given"),
            optional=("start", "customer", "clock", "watch", "expect", "expect_tags"),
        )
        name = self.source.string(entries["name"][1], "case name").strip()
        if not name:
            self.source.fail(entries["name"][1], "case name is empty")
        what = f"case {name!r}"
        if "expect" not in entries and "expect_tags" not in entries:
            self.source.fail(node, f"{what}: expected `expect:`, `expect_tags:` or both")

        start = default_start
        if "start" in entries:
            start = self.time(entries["start"][1], None, f"{what} start")
        customer = default_customer
        if "customer" in entries:
            customer = self.customer(entries["customer"][1])

        events = tuple(
            self.event(item, index, start, customer, what)
            for index, item in enumerate(self.source.sequence(entries["given"][1], f"{what} given"))
        )
        clock = (
            self.time(entries["clock"][1], start, f"{what} clock") if "clock" in entries else None
        )

        watch: tuple[str, ...] | None = None
        if "watch" in entries:
            items = self.source.sequence(entries["watch"][1], f"{what} watch")
            watch = tuple(self.tag(item, f"{what} watch") for item in items)

        expect: tuple[ExpectedChange, ...] | None = None
        if "expect" in entries:
            items = self.source.sequence(entries["expect"][1], f"{what} expect")
            expect = tuple(self.change(item, start, customer, what) for item in items)

        expect_tags: dict[str, frozenset[str]] | None = None
        if "expect_tags" in entries:
            expect_tags = self.final_tags(entries["expect_tags"][1], what)

        return Case(
            name=name,
            file=self.source.file,
            line=node.start_mark.line + 1,
            start=start,
            events=events,
            clock=clock,
            watch=watch,
            expect=expect,
            expect_tags=expect_tags,
        )

    def event(
        self, node: Node, index: int, start: int | None, customer: str | None, what: str
    ) -> Event:
        required = ("type", "ts") if customer is not None else ("type", "ts", "customer_id")
        optional = [name for name in _EVENT_FIELDS if name not in required]
        entries = self.source.mapping(node, f"{what} event", required=required, optional=optional)

        type_node = entries["type"][1]
        event_type = self.source.string(type_node, f"{what} event type")
        if event_type not in EVENT_TYPES:
            self.source.fail(
                type_node,
                f"{what}: unknown event type {event_type!r}{suggest(event_type, EVENT_TYPES)}; "
                f"expected one of {', '.join(EVENT_TYPES)}",
            )

        record: dict[str, Any] = {
            "event_id": f"fixture-{index + 1}",
            "customer_id": customer,
            "ts": self.time(entries["ts"][1], start, f"{what} event ts"),
        }
        if event_type in ("purchase", "refund"):
            record["currency"] = self.rulebook.currency
        for key, (_, value_node) in entries.items():
            if key == "customer_id":
                record[key] = self.customer(value_node)
            elif key != "ts":
                record[key] = _plain(value_node)

        try:
            decoded = decode_event(orjson.dumps(record), key=None, currency=self.rulebook.currency)
        except InvalidEvent as exc:
            self.source.fail(node, f"{what}: invalid event ({exc.reason}): {exc.detail}")
        assert isinstance(decoded, Event)  # the type was checked above, so it is no clock
        return decoded

    def change(
        self, node: Node, start: int | None, customer: str | None, what: str
    ) -> ExpectedChange:
        required = (
            ("tag", "action", "at") if customer is not None else ("customer", "tag", "action", "at")
        )
        optional = ("customer",) if customer is not None else ()
        entries = self.source.mapping(
            node, f"{what} expected change", required=required, optional=optional
        )
        if "customer" in entries:
            customer = self.customer(entries["customer"][1])
        assert customer is not None

        action_node = entries["action"][1]
        action = self.source.string(action_node, f"{what} action")
        if action not in _ACTIONS:
            self.source.fail(
                action_node,
                f"{what}: action {action!r}{suggest(action, _ACTIONS)}: expected added or removed",
            )
        return ExpectedChange(
            customer=customer,
            tag=self.tag(entries["tag"][1], what),
            action="added" if action == "added" else "removed",
            at=self.time(entries["at"][1], start, f"{what} at"),
        )

    def final_tags(self, node: Node, what: str) -> dict[str, frozenset[str]]:
        final: dict[str, frozenset[str]] = {}
        for _, (key_node, value_node) in self.source.entries(node, f"{what} expect_tags").items():
            customer = self.customer(key_node)
            items = self.source.sequence(value_node, f"{what} expect_tags of {customer}")
            final[customer] = frozenset(self.tag(item, what) for item in items)
        return final

    def tag(self, node: Node, what: str) -> str:
        """Read a tag id: a rule id, `rule_id:param` of a `per` rule, or `manual:name`."""
        tag = self.source.string(node, f"{what} tag")
        if tag.startswith(MANUAL_PREFIX):
            if not PARAM_RE.fullmatch(tag.removeprefix(MANUAL_PREFIX)):
                self.source.fail(node, f"{what}: invalid manual tag {tag!r}")
            return tag

        rule_id, colon, param = tag.partition(":")
        rule = next((rule for rule in self.rulebook.rules if rule.id == rule_id), None)
        if rule is None:
            self.source.fail(
                node,
                f"{what}: unknown tag {tag!r}{suggest(rule_id, self.rule_ids)}; "
                f"expected a rule id of the rulebook or manual:<name>",
            )
        if colon and rule.per is None:
            self.source.fail(
                node, f"{what}: rule {rule_id!r} has no `per`, so its tag is {rule_id!r}"
            )
        if colon and not PARAM_RE.fullmatch(param):
            self.source.fail(
                node, f"{what}: invalid parameter {param!r}: expected 1 to 64 of [a-z0-9_.]"
            )
        return tag

    def customer(self, node: Node) -> str:
        if not isinstance(node, ScalarNode) or node.tag in (_NULL_TAG, _BOOL_TAG, _FLOAT_TAG):
            self.source.fail(node, f"customer id: expected a string, found {_shown(node)}")
        return str(node.value)

    def time(self, node: Node, start: int | None, what: str) -> int:
        """Read a time: RFC 3339 with an offset, epoch ms, or `+DURATION` after the case start."""
        if not isinstance(node, ScalarNode):
            self.source.fail(node, f"{what}: expected a time, found {_shown(node)}")
        text = str(node.value)
        offset = _OFFSET_RE.fullmatch(text)
        if offset is not None:
            if start is None:
                self.source.fail(
                    node, f"{what}: the relative time {text!r} needs `start:` in the case or file"
                )
            size = sum(
                int(amount) * DURATION_UNITS[unit]
                for amount, unit in _OFFSET_TERM_RE.findall(offset.group(2))
            )
            return start + size if offset.group(1) == "+" else start - size

        value: object = int(text) if node.tag == _INT_TAG and text.isdigit() else text
        try:
            return parse_timestamp(value, field=what)
        except InvalidEvent as exc:
            self.source.fail(
                node,
                f"{exc.detail}; a relative time is `+` and durations such as +30m or +1d2h",
            )


def _plain(node: Node) -> Any:
    """Convert a YAML node to the JSON value the event format expects.

    A YAML float becomes its text, so an amount such as 1000.10 reaches the
    decoder as an exact decimal string, never as a binary float.
    """
    if isinstance(node, MappingNode):
        return {str(key.value): _plain(value) for key, value in node.value}
    if isinstance(node, SequenceNode):
        return [_plain(item) for item in node.value]
    text = str(node.value)
    if node.tag == _NULL_TAG:
        return None
    if node.tag == _BOOL_TAG:
        return text.lower() in ("true", "yes", "on")
    if node.tag == _INT_TAG and text.lstrip("+-").isdigit():
        return int(text)
    return text


def _shown(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return repr(node.value)
