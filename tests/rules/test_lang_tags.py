"""Tag membership: has_tag, the order rules run in, cycles and unknown tags."""

from __future__ import annotations

import pytest
from lang_helpers import HEADER, rule_yaml
from rule_helpers import DAY, MINUTE, T0, Customer

from tagger.errors import RulebookError
from tagger.rules.engine import Engine
from tagger.rules.rulebook import Rulebook, parse_rulebook

PURCHASE = {"amount": 100, "currency": "CNY"}
BROWSING = (
    "  - id: browsing\n"
    "    group: test\n"
    "    labels: {zh: '浏览：{param}', en: 'Browsing: {param}'}\n"
    "    description: A test rule.\n"
    "    per: category\n"
    "    when: count(page_view, 7d) >= 2\n"
)


def _book(*rules: str) -> Rulebook:
    return parse_rulebook(HEADER + "rules:\n" + "".join(rules), file="t.yaml")


def _customer(*rules: str) -> Customer:
    return Customer(Engine(_book(*rules)))


def test_dependent_before_dependency_in_file() -> None:
    customer = _customer(
        rule_yaml("loyal_buyer", 'has_tag("buyer") and count(purchase) >= 2'),
        rule_yaml("buyer", "count(purchase) >= 1"),
    )

    customer.send("purchase", T0, **PURCHASE)
    customer.send("purchase", T0 + 1, **PURCHASE)

    assert customer.tags == {"buyer", "loyal_buyer"}


def test_same_instant_same_batch() -> None:
    customer = _customer(
        rule_yaml("not_recent", 'not has_tag("recent")'),
        rule_yaml("recent", "count(purchase, 1d) >= 1"),
    )
    customer.send("purchase", T0, **PURCHASE)

    changes = customer.tick(T0 + DAY)

    assert [(change.tag, change.action, change.at) for change in changes] == [
        ("recent", "removed", T0 + DAY),
        ("not_recent", "added", T0 + DAY),
    ]


def test_evaluation_order_is_stable() -> None:
    rulebook = _book(
        rule_yaml("a", 'has_tag("c")'),
        rule_yaml("b", "count(purchase) >= 1"),
        rule_yaml("c", "count(purchase) >= 1"),
    )

    assert [rule.id for rule in rulebook.evaluation_order] == ["b", "c", "a"]


def test_default_rulebook_keeps_file_order(default_rulebook: Rulebook) -> None:
    assert default_rulebook.evaluation_order == default_rulebook.rules


def test_per_tag_wildcard() -> None:
    customer = _customer(BROWSING, rule_yaml("browser", 'has_tag("browsing:*")'))
    customer.send("page_view", T0, category="shoes")

    assert "browser" not in customer.tags
    customer.send("page_view", T0 + 1, category="shoes")
    assert customer.tags == {"browsing:shoes", "browser"}


def test_per_tag_value() -> None:
    customer = _customer(BROWSING, rule_yaml("shoe_fan", 'has_tag("browsing:shoes")'))
    customer.send("page_view", T0, category="hats")
    customer.send("page_view", T0 + 1, category="hats")

    assert "shoe_fan" not in customer.tags
    customer.send("page_view", T0 + 2, category="shoes")
    customer.send("page_view", T0 + 3, category="shoes")
    assert "shoe_fan" in customer.tags


def test_manual_tag() -> None:
    customer = _customer(rule_yaml("priority", 'has_tag("manual:key_account")'))

    customer.send("tag_assign", T0, tag="key_account")
    assert customer.tags == {"manual:key_account", "priority"}
    customer.send("tag_unassign", T0 + 1, tag="key_account")
    assert customer.tags == set()


def test_manual_wildcard() -> None:
    customer = _customer(rule_yaml("curated", 'has_tag("manual:*")'))

    customer.send("tag_assign", T0, tag="anything")

    assert "curated" in customer.tags


def test_due_change_reaches_dependents() -> None:
    customer = _customer(
        rule_yaml("hesitant", "cart_age >= 30m"),
        rule_yaml("nudge", 'has_tag("hesitant") and count(campaign_join) == 0'),
    )
    customer.send("add_to_cart", T0, product_id="p1")

    changes = customer.tick(T0 + 30 * MINUTE)

    assert [(change.tag, change.at) for change in changes] == [
        ("hesitant", T0 + 30 * MINUTE),
        ("nudge", T0 + 30 * MINUTE),
    ]


def test_exclusive_group_first_match_wins() -> None:
    customer = _customer(
        rule_yaml("gold", 'has_tag("big")', group="tier"),
        rule_yaml("silver", "count(purchase) >= 1", group="tier"),
        rule_yaml("big", "count(purchase) >= 2"),
    )
    customer.send("purchase", T0, **PURCHASE)
    assert customer.tags == {"silver"}

    customer.send("purchase", T0 + 1, **PURCHASE)
    assert customer.tags == {"gold", "big"}


def test_reason_shows_tag_value() -> None:
    customer = _customer(
        rule_yaml("buyer", "count(purchase) >= 1"),
        rule_yaml("loyal", 'has_tag("buyer")'),
    )

    customer.send("purchase", T0, **PURCHASE)

    loyal = next(change for change in customer.changes if change.tag == "loyal")
    assert loyal.reason["values"] == {'has_tag("buyer")': True}


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            (rule_yaml("a", 'has_tag("b")'), rule_yaml("b", 'has_tag("a")')),
            "cycle: rule 'a' -> 'b' -> 'a'",
        ),
        ((rule_yaml("a", 'has_tag("a")'),), "cycle: rule 'a' -> 'a'"),
        (
            (
                rule_yaml("a", 'has_tag("c")', group="tier"),
                rule_yaml("b", "count(purchase) >= 1", group="tier"),
                rule_yaml("c", 'has_tag("b")'),
            ),
            "cycle: rule 'a' -> 'c' -> 'b' -> 'a' \\(earlier in the exclusive group 'tier'\\)",
        ),
    ],
)
def test_cycles_rejected(rules: tuple[str, ...], message: str) -> None:
    with pytest.raises(RulebookError, match=message):
        _book(*rules)


def test_cycle_error_position() -> None:
    with pytest.raises(RulebookError) as caught:
        _book(
            rule_yaml("a", 'count(purchase) >= 1 or has_tag("b")'), rule_yaml("b", 'has_tag("a")')
        )

    # The cycle closes at rule b's has_tag, on line 16, column 12.
    assert (caught.value.line, caught.value.column) == (16, 12)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ('has_tag("buyr")', "names no rule of this rulebook \\(did you mean 'buyer'\\?\\)"),
        ('has_tag("browsing")', 'write has_tag\\("browsing:\\*"\\)'),
        ('has_tag("buyer:x")', "has no `per`"),
        ('has_tag("manual")', "needs a name"),
        ('has_tag("Buyer")', "invalid tag"),
        ("has_tag(buyer)", "needs a tag as a string"),
        ('has_tag("buyer") == 1', "cannot compare"),
    ],
)
def test_tag_reference_errors(when: str, message: str) -> None:
    with pytest.raises(RulebookError, match=message):
        _book(BROWSING, rule_yaml("buyer", "count(purchase) >= 1"), rule_yaml("x", when))


def test_has_tag_rejected_in_per_rule() -> None:
    rule = BROWSING.replace("count(page_view, 7d) >= 2", 'has_tag("buyer")')

    with pytest.raises(RulebookError, match="has_tag is not available in a rule with `per"):
        _book(rule, rule_yaml("buyer", "count(purchase) >= 1"))
