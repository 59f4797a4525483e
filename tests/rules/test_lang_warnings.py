"""Static warnings: conditions that can never be true or are always true."""

from __future__ import annotations

import pytest
from lang_helpers import HEADER, book, rule_yaml

from tagger.rules.rulebook import parse_rulebook
from tagger.rules.static_checks import RuleWarning, check_warnings


def _messages(*whens: str) -> list[str]:
    return [warning.message for warning in check_warnings(book(*whens))]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("count(purchase) >= 0", "always true"),
        ("count(purchase, 30d) < 0", "never true"),
        ("count(purchase) == 0 - 1", "never true"),
        ("count(purchase) > 0 - 1", "always true"),
        ("0 <= count(purchase)", "always true"),
        ("count(purchase) == 1.5", "never true"),
        ("count(purchase) >= 5 and count(purchase) < 3", "never true"),
        ("count(purchase) > 2 and count(purchase) < 3", "never true"),
        ("count(purchase) >= 3 or count(purchase) < 5", "always true"),
        ("count(purchase) == 0 or count(purchase) >= 1", "always true"),
        ("net_spend(30d) < 0", "never true"),
        ("net_spend(30d) >= 0.00", "always true"),
        ("net_spend(30d) > 10.00 and net_spend(30d) < 10.01", "never true"),
        ("sum(purchase.amount, 30d) < 0", "never true"),
        ("count_distinct(page_view.category, 7d) > 128", "never true"),
        ("count_distinct(page_view.category, 7d) <= 128", "always true"),
        ("max(purchase.amount, 30d) < 0", "never true"),
        ("since(purchase) >= 30d and since(purchase) < 1d", "never true"),
        ("not count(purchase) >= 0", "always true"),
    ],
)
def test_constant_conditions(when: str, expected: str) -> None:
    messages = _messages(when)

    assert len(messages) == 1
    assert expected in messages[0]


@pytest.mark.parametrize(
    "when",
    [
        "count(purchase) >= 1",
        "count(purchase) >= 1 and count(purchase) < 3",
        "count(purchase) > 2 or count(purchase) < 2",
        "count(purchase, 7d) >= 5 and count(purchase, 30d) < 3",
        "max(purchase.amount, 30d) >= 0",
        "max(purchase.amount, 30d) >= 1.00 or max(purchase.amount, 30d) < 1.00",
        "since(purchase) >= 0ms",
        'attribute("level") == "vip" or attribute("level") != "vip"',
        "net_spend(30d) > 10.00 and net_spend(30d) < 10.02",
    ],
)
def test_no_warning(when: str) -> None:
    assert _messages(when) == []


def test_exclusive_tags_never_both() -> None:
    rules = (
        rule_yaml("gold", "count(purchase) >= 5", group="tier")
        + rule_yaml("silver", "count(purchase) >= 1", group="tier")
        + rule_yaml("odd", 'has_tag("gold") and has_tag("silver")')
    )

    warnings = check_warnings(parse_rulebook(HEADER + "rules:\n" + rules, file="t.yaml"))

    assert [warning.message for warning in warnings] == [
        'rule \'odd\': `has_tag("gold") and has_tag("silver")` is never true: a customer '
        "holds one tag of a group"
    ]


def test_warning_position() -> None:
    warnings = check_warnings(
        book("count(purchase, 7d) >= 1", "count(refund) >= 1 and count(purchase) < 0")
    )

    assert warnings == [
        RuleWarning(
            file="test.yaml",
            line=16,
            column=12 + len("count(refund) >= 1 and "),
            message="rule 'r1': `count(purchase) < 0` is never true: a count is a whole "
            "number, at least 0",
        )
    ]


def test_warning_text() -> None:
    warning = RuleWarning("rules.yaml", 3, 9, "rule 'r0': `x` is never true")

    assert str(warning) == "rules.yaml:3:9: warning: rule 'r0': `x` is never true"


def test_default_rulebook_has_no_warnings(default_rulebook: object) -> None:
    assert check_warnings(default_rulebook) == []  # type: ignore[arg-type]
