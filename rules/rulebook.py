"""The rulebook: groups and rules loaded from YAML, validated and type-checked before use."""

from __future__ import annotations

import hashlib
import os
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Final, Literal

from yaml.nodes import Node as YamlNode
from yaml.nodes import ScalarNode

from tagger.errors import RulebookError, RulebookErrors
from tagger.rules.calendar import DEFAULT_TIMEZONE, is_timezone
from tagger.rules.dependencies import DependencyError, check_references, evaluation_order
from tagger.rules.expression import ExpressionError, Node, parse_duration, parse_expression
from tagger.rules.metrics import MetricOptions
from tagger.rules.static_checks import RuleWarning, condition_warnings
from tagger.rules.typecheck import PER_FIELDS, check_condition, check_rank
from tagger.rules.yaml_source import Source, suggest
from tagger.schemas.money import CURRENCY_EXPONENTS

__all__ = [
    "LATE_POLICIES",
    "MANUAL_GROUP",
    "MANUAL_PREFIX",
    "PARAM_RE",
    "Group",
    "LatePolicy",
    "Rule",
    "Rulebook",
    "load_rulebook",
    "parse_rulebook",
]

# Tag ids: a rule id, or `rule_id:param`; the same grammar as Redis keys and
# metric labels accept without escaping.
RULE_ID_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
PARAM_RE: Final = re.compile(r"[a-z0-9_.]{1,64}")
MANUAL_PREFIX: Final = "manual:"
MANUAL_GROUP: Final = "manual"
RULEBOOK_FORMAT_VERSION: Final = 1
LANGUAGES: Final = ("zh", "en")
PARAM_PLACEHOLDER: Final = "{param}"
_DEFAULT_FILE: Final = "default.yaml"

# Late policies: the engine's handling of an event older than the watermark (see Engine.apply).
LatePolicy = Literal["apply", "late_correction", "ignore"]
LATE_POLICIES: Final[tuple[LatePolicy, ...]] = ("apply", "late_correction", "ignore")


@dataclass(frozen=True)
class Group:
    """A named set of rules. In an exclusive group a customer has at most one of its tags."""

    id: str
    exclusive: bool
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Rule:
    """One rule as written, plus its checked condition.

    `labels` of a rule with `per` are templates holding `{param}`; `line` is
    the 1-based line of the rule in its file.
    """

    id: str
    group: str
    labels: Mapping[str, str]
    description: str
    when: str
    per: str | None
    rank_by: str | None
    limit: int | None
    line: int
    condition: Node = field(repr=False, compare=False)
    rank: Node | None = field(default=None, repr=False, compare=False)
    # Hysteresis: a held tag leaves only when `leave_when` is true and `when` is false.
    leave_when: str | None = None
    leave: Node | None = field(default=None, repr=False, compare=False)
    # Re-entry cooldown in ms: a tag added at t is not added again before t + cooldown.
    cooldown_ms: int | None = None
    # IANA time zone of the rule's calendar windows, when it overrides the rulebook's.
    timezone: str | None = None


@dataclass(frozen=True)
class Rulebook:
    """A validated rulebook. `version` is the first 16 hex digits of the SHA-256 of its bytes."""

    version: str
    currency: str
    allowed_lateness_ms: int
    late_policy: LatePolicy
    groups: Mapping[str, Group]
    rules: tuple[Rule, ...]
    currency_exponent: int = 2
    file: str = ""
    # IANA time zone of calendar windows (today, this_week, this_month).
    timezone: str = DEFAULT_TIMEZONE
    # `rules` in the order to evaluate them: each after the rules whose tags
    # it reads with has_tag, else in file order. Empty means file order.
    evaluation_order: tuple[Rule, ...] = field(default=(), repr=False, compare=False)
    warnings: tuple[RuleWarning, ...] = field(default=(), repr=False, compare=False)

    def rule_for(self, tag: str) -> Rule | None:
        """Return the rule that decides `tag`, or None for a manual or unknown tag."""
        rule_id = tag.split(":", 1)[0]
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        return None

    def labels_for(self, tag: str) -> dict[str, str]:
        """Return the zh and en labels of a tag, its parameter filled in; {} for an unknown tag."""
        if tag.startswith(MANUAL_PREFIX):
            name = tag.removeprefix(MANUAL_PREFIX)
            return {"zh": f"手动：{name}", "en": f"Manual: {name}"}

        rule = self.rule_for(tag)
        if rule is None:
            return {}
        _, _, param = tag.partition(":")
        return {
            language: label.replace(PARAM_PLACEHOLDER, param)
            for language, label in rule.labels.items()
        }

    def group_for(self, tag: str) -> str | None:
        """Return the group of a tag: `manual` for manual tags, None for an unknown tag."""
        if tag.startswith(MANUAL_PREFIX):
            return MANUAL_GROUP
        rule = self.rule_for(tag)
        return rule.group if rule is not None else None

    def describe(self) -> dict[str, dict[str, str]]:
        """Return rule id → {group, zh, en} plus `__version__`, for the mirror's rulebook hash.

        Labels of a rule with `per` stay templates with `{param}`.
        """
        described: dict[str, dict[str, str]] = {
            rule.id: {"group": rule.group, **rule.labels} for rule in self.rules
        }
        described["__version__"] = {"version": self.version, "currency": self.currency}
        return described


def load_rulebook(path: str | os.PathLike[str] | None = None) -> Rulebook:
    """Load and validate a rulebook file; None loads the packaged default rulebook."""
    if path is None:
        resource = resources.files("tagger.rules").joinpath(_DEFAULT_FILE)
        raw = resource.read_bytes()
        file = f"tagger.rules/{_DEFAULT_FILE}"
    else:
        file = os.fspath(path)
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise RulebookError(f"cannot read the rulebook: {exc.strerror}", file=file) from exc

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulebookError(
            f"the rulebook is not valid UTF-8 (byte {exc.start})", file=file
        ) from exc
    return _parse(text, file=file, digest=hashlib.sha256(raw).hexdigest())


def parse_rulebook(text: str, *, file: str) -> Rulebook:
    """Validate rulebook YAML text; `file` names it in errors. Raises RulebookError."""
    return _parse(text, file=file, digest=hashlib.sha256(text.encode("utf-8")).hexdigest())


def _parse(text: str, *, file: str, digest: str) -> Rulebook:
    source = Source(text, file)
    top = source.mapping(
        source.root,
        "the rulebook",
        required=("version", "currency", "groups", "rules"),
        optional=("allowed_lateness", "late_policy", "timezone"),
    )

    version_node = top["version"][1]
    if source.integer(version_node, "version") != RULEBOOK_FORMAT_VERSION:
        source.fail(
            version_node,
            f"version: expected {RULEBOOK_FORMAT_VERSION}, found {version_node.value!r}",
        )

    currency_node = top["currency"][1]
    currency = source.string(currency_node, "currency")
    exponent = CURRENCY_EXPONENTS.get(currency)
    if exponent is None:
        source.fail(
            currency_node,
            f"currency: expected an ISO 4217 code such as CNY or USD, found {currency!r}",
        )

    lateness = 0
    if "allowed_lateness" in top:
        lateness = _duration(source, top["allowed_lateness"][1], "allowed_lateness")

    late_policy: LatePolicy = "apply"
    if "late_policy" in top:
        late_policy = _late_policy(source, top["late_policy"][1])

    timezone = DEFAULT_TIMEZONE
    if "timezone" in top:
        timezone = _timezone(source, top["timezone"][1], "timezone")

    groups = _groups(source, top["groups"][1])
    options = MetricOptions(exponent=exponent, timezone=timezone)
    rules, order, warnings = _rules(source, top["rules"][1], groups, options)
    return Rulebook(
        version=digest[:16],
        currency=currency,
        allowed_lateness_ms=lateness,
        late_policy=late_policy,
        groups=groups,
        rules=rules,
        currency_exponent=exponent,
        file=file,
        timezone=timezone,
        evaluation_order=order,
        warnings=warnings,
    )


def _timezone(source: Source, node: YamlNode, what: str) -> str:
    name = source.string(node, what)
    if not is_timezone(name):
        source.fail(
            node,
            f"{what}: expected an IANA time zone such as UTC, Asia/Shanghai or "
            f"Europe/London, found {name!r}{suggest(name, zoneinfo.available_timezones())}",
        )
    return name


def _late_policy(source: Source, node: YamlNode) -> LatePolicy:
    policy = source.string(node, "late_policy")
    for known in LATE_POLICIES:
        if policy == known:
            return known
    source.fail(
        node,
        f"late_policy: expected 'apply', 'late_correction' or 'ignore', "
        f"found {policy!r}{suggest(policy, LATE_POLICIES)}",
    )


def _duration(source: Source, node: YamlNode, what: str) -> int:
    if isinstance(node, ScalarNode):
        value = parse_duration(str(node.value))
        if value is not None:
            return value
    source.fail(
        node,
        f"{what}: expected a duration such as 0s, 5m or 1h (units ms, s, m, h, d), "
        f"found {getattr(node, 'value', node)!r}",
    )


def _groups(source: Source, node: YamlNode) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for group_id, (key_node, value_node) in source.entries(node, "groups").items():
        _check_id(source, key_node, group_id, "group id")
        entries = source.mapping(
            value_node,
            f"group {group_id!r}",
            required=("labels",),
            optional=("exclusive",),
        )
        exclusive = False
        if "exclusive" in entries:
            exclusive = source.boolean(entries["exclusive"][1], f"group {group_id!r} exclusive")
        labels = _labels(source, entries["labels"][1], f"group {group_id!r}")
        groups[group_id] = Group(group_id, exclusive, labels)

    if not groups:
        source.fail(node, "groups: expected at least one group")
    return groups


def _rules(
    source: Source, node: YamlNode, groups: Mapping[str, Group], options: MetricOptions
) -> tuple[tuple[Rule, ...], tuple[Rule, ...], tuple[RuleWarning, ...]]:
    """Parse the rules; return them, their evaluation order and their static warnings."""
    items = source.sequence(node, "rules")
    if not items:
        source.fail(node, "rules: expected at least one rule")

    rules: list[Rule] = []
    seen: dict[str, int] = {}
    # Rules are checked one by one and their errors collected, so one run of
    # `tagger rules check` reports every broken rule, not only the first.
    errors: list[RulebookError] = []
    for item in items:
        try:
            rule = _rule(source, item, groups, options)
            if rule.id in seen:
                source.fail(
                    item,
                    f"duplicate rule id {rule.id!r}: it is already defined on line {seen[rule.id]}",
                )
        except RulebookError as exc:
            errors.append(exc)
            continue
        seen[rule.id] = rule.line
        rules.append(rule)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise RulebookErrors(errors)

    located = dict(zip((rule.id for rule in rules), items, strict=True))
    try:
        check_references(rules)
        order = evaluation_order(rules, {name: group.exclusive for name, group in groups.items()})
    except DependencyError as exc:
        item = located[exc.rule_id]
        if exc.reference is None:
            source.fail(item, exc.message)
        line, column = _expression_position(source, item, exc.reference.key, exc.reference.offset)
        source.fail_at(line, column, exc.message)

    exclusive = {rule.id: rule.group for rule in rules if groups[rule.group].exclusive}
    warnings: list[RuleWarning] = []
    for rule in rules:
        expressions = [
            ("when", rule.condition, rule.when),
            ("leave_when", rule.leave, rule.leave_when),
        ]
        for key, condition, text in expressions:
            if condition is None or text is None:
                continue
            found = condition_warnings(
                condition, text, exponent=options.exponent, exclusive=exclusive
            )
            for offset, message in found:
                line, column = _expression_position(source, located[rule.id], key, offset)
                warnings.append(
                    RuleWarning(source.file, line + 1, column + 1, f"rule {rule.id!r}: {message}")
                )
    return tuple(rules), tuple(rules[index] for index in order), tuple(warnings)


def _expression_position(source: Source, item: YamlNode, key: str, offset: int) -> tuple[int, int]:
    """Return the 0-based (line, column) of `offset` in the stripped text of a rule's `key`."""
    node = source.entries(item, "a rule")[key][1]
    assert isinstance(node, ScalarNode)
    text = str(node.value)
    return source.text_position(node, offset + len(text) - len(text.lstrip()))


def _rule(
    source: Source, node: YamlNode, groups: Mapping[str, Group], defaults: MetricOptions
) -> Rule:
    entries = source.mapping(
        node,
        "a rule",
        required=("id", "group", "labels", "description", "when"),
        optional=("per", "rank_by", "limit", "leave_when", "cooldown", "timezone"),
    )
    id_node = entries["id"][1]
    rule_id = source.string(id_node, "rule id")
    _check_id(source, id_node, rule_id, "rule id")
    what = f"rule {rule_id!r}"

    group_node = entries["group"][1]
    group = source.string(group_node, f"{what} group")
    if group not in groups:
        source.fail(
            group_node,
            f"{what}: unknown group {group!r}{suggest(group, groups)}; "
            f"expected one of {', '.join(groups)}",
        )

    per: str | None = None
    if "per" in entries:
        per_node = entries["per"][1]
        per = source.string(per_node, f"{what} per")
        if per not in PER_FIELDS:
            source.fail(
                per_node,
                f"{what}: per {per!r} is not allowed{suggest(per, PER_FIELDS)}; "
                f"expected one of {', '.join(PER_FIELDS)}",
            )
        if groups[group].exclusive:
            source.fail(
                per_node,
                f"{what}: a rule with `per` gives several tags, so it cannot be in the "
                f"exclusive group {group!r}",
            )

    labels = _labels(source, entries["labels"][1], what)
    for language, label in labels.items():
        if (PARAM_PLACEHOLDER in label) != (per is not None):
            expectation = "must contain" if per is not None else "can contain only with `per`"
            source.fail(entries["labels"][1], f"{what}: label {language!r} {expectation} {{param}}")

    description = source.string(entries["description"][1], f"{what} description").strip()
    if not description:
        source.fail(entries["description"][1], f"{what}: description is empty")

    timezone: str | None = None
    if "timezone" in entries:
        timezone = _timezone(source, entries["timezone"][1], f"{what} timezone")
    options = MetricOptions(
        per=per, exponent=defaults.exponent, timezone=timezone or defaults.timezone
    )

    when_node = entries["when"][1]
    when = source.string(when_node, f"{what} when")
    condition = _expression(source, when_node, when, options, rank=False)

    rank_by: str | None = None
    rank: Node | None = None
    if "rank_by" in entries:
        rank_node = entries["rank_by"][1]
        if per is None:
            source.fail(entries["rank_by"][0], f"{what}: rank_by needs `per`")
        rank_by = source.string(rank_node, f"{what} rank_by")
        rank = _expression(source, rank_node, rank_by, options, rank=True)

    limit: int | None = None
    if "limit" in entries:
        limit_node = entries["limit"][1]
        if per is None:
            source.fail(entries["limit"][0], f"{what}: limit needs `per`")
        limit = source.integer(limit_node, f"{what} limit")
        if limit < 1:
            source.fail(limit_node, f"{what}: limit must be at least 1, found {limit}")

    leave_when, leave = _leave_when(source, entries, what, options)
    return Rule(
        id=rule_id,
        group=group,
        labels=labels,
        description=description,
        when=when.strip(),
        per=per,
        rank_by=rank_by.strip() if rank_by is not None else None,
        limit=limit,
        line=node.start_mark.line + 1,
        condition=condition,
        rank=rank,
        leave_when=leave_when,
        leave=leave,
        cooldown_ms=_cooldown(source, entries, what),
        timezone=timezone,
    )


def _leave_when(
    source: Source,
    entries: Mapping[str, tuple[YamlNode, YamlNode]],
    what: str,
    options: MetricOptions,
) -> tuple[str | None, Node | None]:
    if "leave_when" not in entries:
        return None, None
    node = entries["leave_when"][1]
    text = source.string(node, f"{what} leave_when")
    return text.strip(), _expression(source, node, text, options, rank=False)


def _cooldown(
    source: Source, entries: Mapping[str, tuple[YamlNode, YamlNode]], what: str
) -> int | None:
    if "cooldown" not in entries:
        return None
    node = entries["cooldown"][1]
    cooldown = _duration(source, node, f"{what} cooldown")
    if cooldown <= 0:
        source.fail(node, f"{what}: cooldown must be longer than 0")
    return cooldown


def _expression(
    source: Source, node: YamlNode, text: str, options: MetricOptions, *, rank: bool
) -> Node:
    stripped = text.strip()
    lead = len(text) - len(text.lstrip())
    check = check_rank if rank else check_condition
    try:
        parsed = parse_expression(stripped)
        return check(
            parsed,
            stripped,
            per=options.per,
            exponent=options.exponent,
            timezone=options.timezone,
        )
    except ExpressionError as exc:
        assert isinstance(node, ScalarNode)
        line, column = source.text_position(node, exc.offset + lead)
        source.fail_at(line, column, exc.message)


def _labels(source: Source, node: YamlNode, what: str) -> dict[str, str]:
    entries = source.mapping(node, f"{what} labels", required=LANGUAGES)
    labels: dict[str, str] = {}
    for language in LANGUAGES:
        value_node = entries[language][1]
        label = source.string(value_node, f"{what} label {language!r}").strip()
        if not label:
            source.fail(value_node, f"{what}: label {language!r} is empty")
        labels[language] = label
    return labels


def _check_id(source: Source, node: YamlNode, value: str, what: str) -> None:
    if not RULE_ID_RE.fullmatch(value):
        source.fail(
            node,
            f"invalid {what} {value!r}: expected snake_case, a lower-case letter then "
            "up to 63 lower-case letters, digits or `_`",
        )
    if value == MANUAL_GROUP:
        source.fail(node, f"invalid {what} 'manual': it is reserved for manual tags")
