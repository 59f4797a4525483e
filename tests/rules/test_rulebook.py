"""Rulebook loading: the default file, validation errors with their position, safety."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import pytest

from tagger.errors import RulebookError, RulebookErrors
from tagger.rules.rulebook import Rulebook, load_rulebook, parse_rulebook

HEADER = """\
version: 1
currency: CNY
groups:
  lifecycle: {exclusive: true, labels: {zh: 生命周期, en: Lifecycle}}
  intent: {labels: {zh: 意向, en: Intent}}
rules:
"""
GOOD_RULE = """\
  - id: buyer
    group: lifecycle
    labels: {zh: 买家, en: Buyer}
    description: Bought once.
    when: count(purchase) >= 1
"""


def _rule(**overrides: str) -> str:
    """Return a rule's YAML with some lines replaced, or removed when the value is empty."""
    lines = {
        "id": "buyer",
        "group": "lifecycle",
        "labels": "{zh: 买家, en: Buyer}",
        "description": "Bought once.",
        "when": "count(purchase) >= 1",
    }
    lines.update(overrides)
    body = "".join(f"    {key}: {value}\n" for key, value in lines.items() if value)
    return "  - " + body[4:]


def test_default_rulebook_loads(default_rulebook: Rulebook) -> None:
    ids = [rule.id for rule in default_rulebook.rules]

    assert ids == [
        "dormant",
        "existing",
        "potential",
        "high_value",
        "medium_value",
        "low_value",
        "vip",
        "hesitant",
        "browsing_interest",
        "recent_buyer",
        "campaign_participant",
        "active",
    ]


def test_default_rulebook_settings(default_rulebook: Rulebook) -> None:
    assert default_rulebook.currency == "CNY"
    assert default_rulebook.allowed_lateness_ms == 0
    assert default_rulebook.late_policy == "apply"
    assert default_rulebook.groups["lifecycle"].exclusive
    assert default_rulebook.groups["value"].exclusive


def test_every_default_rule_documented(default_rulebook: Rulebook) -> None:
    for rule in default_rulebook.rules:
        assert rule.description, rule.id
        assert set(rule.labels) == {"zh", "en"}, rule.id


def test_version_is_content_hash(default_rulebook: Rulebook) -> None:
    raw = resources.files("tagger.rules").joinpath("default.yaml").read_bytes()

    assert default_rulebook.version == hashlib.sha256(raw).hexdigest()[:16]


def test_load_from_path(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(HEADER + GOOD_RULE, encoding="utf-8")

    rulebook = load_rulebook(path)

    assert rulebook.version == parse_rulebook(HEADER + GOOD_RULE, file="x").version
    assert rulebook.file == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulebookError, match="cannot read the rulebook"):
        load_rulebook(tmp_path / "absent.yaml")


def test_labels_for_unknown_tag(default_rulebook: Rulebook) -> None:
    assert default_rulebook.labels_for("no_such_rule") == {}
    assert default_rulebook.group_for("no_such_rule") is None


def test_describe(default_rulebook: Rulebook) -> None:
    described = default_rulebook.describe()

    assert described["dormant"] == {"group": "lifecycle", "zh": "沉睡客户", "en": "Dormant"}
    assert described["browsing_interest"]["zh"] == "浏览兴趣：{param}"
    assert described["__version__"]["version"] == default_rulebook.version


# (name, YAML text, expected line, expected column, text the message contains)
ERROR_CASES = [
    ("yaml syntax", HEADER + "  - id: [unclosed\n", 8, 1, "invalid YAML"),
    ("empty file", "", None, None, "the rulebook is empty"),
    ("unknown top key", "verison: 1\n", 1, 1, "did you mean 'version'"),
    ("wrong version", HEADER.replace("version: 1", "version: 2") + GOOD_RULE, 1, 10, "expected 1"),
    ("bad currency", HEADER.replace("CNY", "XYZ") + GOOD_RULE, 2, 11, "ISO 4217"),
    ("missing rules", HEADER.replace("rules:\n", ""), 1, 1, "missing key 'rules'"),
    ("empty rules", HEADER.replace("rules:\n", "rules: []\n"), 6, 8, "at least one rule"),
    (
        "bad lateness",
        HEADER.replace("currency: CNY\n", "currency: CNY\nallowed_lateness: 5 min\n") + GOOD_RULE,
        3,
        19,
        "expected a duration",
    ),
    (
        "bad late policy",
        HEADER.replace("currency: CNY\n", "currency: CNY\nlate_policy: retract\n") + GOOD_RULE,
        3,
        14,
        "expected 'apply'",
    ),
    ("unknown rule key", HEADER + _rule(whne="x"), 12, 5, "did you mean 'when'"),
    ("missing when", HEADER + _rule(when=""), 7, 5, "missing key 'when'"),
    ("missing label", HEADER + _rule(labels="{zh: 买家}"), 9, 13, "missing key 'en'"),
    ("unknown label language", HEADER + _rule(labels="{zh: 买家, en: B, fr: A}"), 9, 29, "'fr'"),
    ("empty label", HEADER + _rule(labels="{zh: '', en: B}"), 9, 18, "label 'zh' is empty"),
    ("bad id", HEADER + _rule(id="Buyer-1"), 7, 9, "expected snake_case"),
    ("reserved id", HEADER + _rule(id="manual"), 7, 9, "reserved"),
    ("duplicate id", HEADER + GOOD_RULE + GOOD_RULE, 12, 5, "already defined on line 7"),
    ("unknown group", HEADER + _rule(group="lifecylce"), 8, 12, "did you mean 'lifecycle'"),
    ("duplicate key", HEADER + GOOD_RULE + "    id: again\n", 12, 5, "duplicate key 'id'"),
    ("per not allowed", HEADER + _rule(group="intent", per="brand"), 12, 10, "'brand'"),
    (
        "per in exclusive group",
        HEADER + _rule(per="category", labels="{zh: '{param}', en: '{param}'}"),
        12,
        10,
        "exclusive group",
    ),
    ("per label without param", HEADER + _rule(group="intent", per="category"), 9, 13, "{param}"),
    ("limit without per", HEADER + _rule(limit="5"), 12, 5, "limit needs `per`"),
    ("rank_by without per", HEADER + _rule(rank_by="count(purchase)"), 12, 5, "rank_by needs"),
    (
        "limit zero",
        HEADER
        + _rule(group="intent", per="category", labels="{zh: '{param}', en: '{param}'}", limit="0"),
        13,
        12,
        "at least 1",
    ),
    ("unknown metric", HEADER + _rule(when="coutn(purchase) >= 1"), 11, 11, "did you mean 'count'"),
    ("quoted condition", HEADER + _rule(when="'coutn(purchase) >= 1'"), 11, 12, "'coutn'"),
    ("unknown type", HEADER + _rule(when="count(purchse) >= 1"), 11, 17, "did you mean 'purchase'"),
    ("bad window", HEADER + _rule(when="count(purchase, 30x) >= 1"), 11, 27, "invalid duration"),
    ("wrong arity", HEADER + _rule(when="count() >= 1"), 11, 11, "count takes 1 or 2"),
    ("duration vs number", HEADER + _rule(when="cart_age >= 30"), 11, 11, "duration literal"),
    ("money vs count", HEADER + _rule(when="net_spend(30d) > count(purchase)"), 11, 11, "money"),
    ("not a condition", HEADER + _rule(when="count(purchase)"), 11, 11, "must be true or false"),
    ("chained comparison", HEADER + _rule(when="1 < count(purchase) < 3"), 11, 31, "chained"),
    ("trailing text", HEADER + _rule(when="count(purchase) >= 1 1"), 11, 32, "unexpected '1'"),
    ("bad character", HEADER + _rule(when="count(purchase) >= 1;"), 11, 31, "unexpected character"),
    ("string ordering", HEADER + _rule(when='attribute("a") < "b"'), 11, 11, "== and !="),
    ("null ordering", HEADER + _rule(when="since(purchase) > null"), 11, 11, "== and !="),
]


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_rulebook_error(text: str, line: int | None, column: int | None, fragment: str) -> None:
    with pytest.raises(RulebookError) as caught:
        parse_rulebook(text, file="rules.yaml")

    error = caught.value
    assert fragment in error.reason
    assert error.file == "rules.yaml"
    assert (error.line, error.column) == (line, column)


def test_error_message_names_position() -> None:
    with pytest.raises(RulebookError, match=r"^rules\.yaml:11:11: unknown metric 'coutn'"):
        parse_rulebook(HEADER + _rule(when="coutn(purchase) >= 1"), file="rules.yaml")


def test_literal_block_position() -> None:
    text = HEADER + _rule(when="|\n      count(purchase) >= 1 and\n      coutn(refund) == 0")

    with pytest.raises(RulebookError) as caught:
        parse_rulebook(text + "\n", file="rules.yaml")

    assert (caught.value.line, caught.value.column) == (13, 7)


@pytest.mark.parametrize(
    "when",
    [
        '__import__("os").system("true")',
        "__import__('os')",
        'eval("1") == 1',
        'exec("x = 1") == null',
        "count.__class__ == 1",
        'open("/etc/passwd") != null',
        "count(purchase).__globals__ == 1",
        "lambda: 1",
        "[x for x in ()]",
        "{}",
    ],
)
def test_no_code_runs(when: str) -> None:
    quoted = "'" + when.replace("'", "''") + "'"

    with pytest.raises(RulebookError):
        parse_rulebook(HEADER + _rule(when=quoted), file="rules.yaml")


def test_python_yaml_tags_rejected() -> None:
    text = HEADER + _rule(when="!!python/object/apply:os.system ['true']")

    with pytest.raises(RulebookError):
        parse_rulebook(text, file="rules.yaml")


def test_deep_nesting_rejected() -> None:
    when = "'" + "(" * 200 + "count(purchase) >= 1" + ")" * 200 + "'"

    with pytest.raises(RulebookError, match="nested more than"):
        parse_rulebook(HEADER + _rule(when=when), file="rules.yaml")


def test_errors_in_several_rules_all_reported() -> None:
    text = """\
version: 1
currency: CNY
groups:
  g: {labels: {zh: 组, en: Group}}
rules:
  - id: first
    group: g
    labels: {zh: 一, en: One}
    description: A misspelt metric.
    when: coutn(purchase) >= 1
  - id: second
    group: nope
    labels: {zh: 二, en: Two}
    description: An unknown group.
    when: count(purchase) >= 1
"""
    with pytest.raises(RulebookErrors) as caught:
        parse_rulebook(text, file="two.yaml")

    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("two.yaml:10:")
    assert "did you mean 'count'" in lines[0]
    assert lines[1].startswith("two.yaml:12:")
    assert "unknown group 'nope'" in lines[1]
    assert caught.value.line == 10
