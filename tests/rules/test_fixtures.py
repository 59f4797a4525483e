"""Declarative rulebook tests: the default rulebook's fixtures pass, and wrong ones fail clearly."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tagger.errors import RulebookError
from tagger.rules.fixtures import (
    Case,
    fixtures_path_for,
    load_fixtures,
    parse_fixtures,
    run_case,
    run_fixtures,
)
from tagger.rules.rulebook import Rulebook, parse_rulebook

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"
GUIDES = ("rulebook-guide.md", "rulebook-guide.zh-CN.md")
_GUIDE_EXAMPLE_RE = re.compile(
    r"<!-- example: (rulebook|fixtures) -->\n```yaml\n(.*?)```", re.DOTALL
)
START = "2024-03-01T10:00:00Z"
START_MS = 1_709_287_200_000


def test_default_fixtures_pass(default_rulebook: Rulebook) -> None:
    report = run_fixtures(default_rulebook)

    assert report.ok, report.render_text()
    assert report.passed >= 30


def test_default_fixtures_cover_every_tag(default_rulebook: Rulebook) -> None:
    seen: set[tuple[str, str]] = set()
    for case in load_fixtures(default_rulebook):
        for change in case.expect or ():
            seen.add((change.tag.split(":", 1)[0], change.action))

    for rule in default_rulebook.rules:
        assert (rule.id, "added") in seen, f"no fixture adds {rule.id}"
        assert (rule.id, "removed") in seen, f"no fixture removes {rule.id}"


def test_wrong_time_fails_with_diff(default_rulebook: Rulebook) -> None:
    case = _one_case(
        default_rulebook,
        """
      - name: hesitant too early
        given:
          - {type: add_to_cart, ts: +0s, product_id: p1}
        clock: +1h
        watch: [hesitant]
        expect:
          - {tag: hesitant, action: added, at: +29m}
        """,
    )

    result = run_case(default_rulebook, case)

    assert not result.passed
    assert result.failures == (
        "customer c1: tag changes differ (- expected, + actual):\n"
        "  - hesitant added at +29m\n"
        "  + hesitant added at +30m",
    )


def test_report_names_case_and_line(default_rulebook: Rulebook, tmp_path: Path) -> None:
    path = tmp_path / "rules.tests.yaml"
    path.write_text(
        _fixtures_text(
            """
      - name: passes
        given: []
        expect: []
      - name: misses a change
        given:
          - {type: page_view, ts: +0s}
        watch: [active]
        expect: []
        """
        ),
        encoding="utf-8",
    )

    report = run_fixtures(default_rulebook, path)

    text = report.render_text()
    assert not report.ok
    assert f"FAILED {path}:7: case 'misses a change'" in text
    assert "  + active added at +0s" in text
    assert text.endswith("1 passed, 1 failed")


def test_unexpected_customer_fails(default_rulebook: Rulebook) -> None:
    case = _one_case(
        default_rulebook,
        """
      - name: other customer
        given:
          - {type: page_view, ts: +0s}
          - {customer_id: c2, type: page_view, ts: +0s}
        watch: [active]
        expect:
          - {tag: active, action: added, at: +0s}
        """,
    )

    result = run_case(default_rulebook, case)

    assert result.failures == (
        "customer c2: tag changes differ (- expected, + actual):\n  + active added at +0s",
    )


def test_final_tags_mismatch(default_rulebook: Rulebook) -> None:
    case = _one_case(
        default_rulebook,
        """
      - name: tier
        given:
          - {type: purchase, ts: +0s, amount: 1000.00}
        watch: [low_value, medium_value, high_value]
        expect_tags:
          c1: [low_value]
        """,
    )

    result = run_case(default_rulebook, case)

    assert result.failures == (
        "customer c1: final tags differ; missing low_value; unexpected medium_value; "
        "held medium_value",
    )


def test_watch_by_rule_matches_params(default_rulebook: Rulebook) -> None:
    case = _one_case(
        default_rulebook,
        """
      - name: interest
        given:
          - {type: page_view, ts: +0s, category: shoes}
          - {type: page_view, ts: +1s, category: shoes}
          - {type: page_view, ts: +2s, category: shoes}
        watch: [browsing_interest]
        expect:
          - {tag: "browsing_interest:shoes", action: added, at: +2s}
        """,
    )

    assert run_case(default_rulebook, case).passed


def test_end_clock_fires_due(default_rulebook: Rulebook) -> None:
    case = _one_case(
        default_rulebook,
        """
      - name: clock
        given:
          - {type: add_to_cart, ts: +0s, product_id: p1}
        clock: +30m
        watch: [hesitant]
        expect:
          - {tag: hesitant, action: added, at: +30m}
        """,
    )

    assert run_case(default_rulebook, case).passed


def test_lateness_holds_until_clock(rulebook_from: Callable[..., Rulebook]) -> None:
    rulebook = rulebook_from(
        "  - id: active\n"
        "    group: test\n"
        "    labels: {zh: 活跃, en: Active}\n"
        "    description: A page view in the last day.\n"
        "    when: count(page_view, 1d) >= 1\n",
        header="allowed_lateness: 5m\n",
    )
    held, fired = (
        _one_case(
            rulebook,
            f"""
      - name: lateness
        given:
          - {{type: page_view, ts: +0s}}
        {clock}
        expect:
          - {{tag: active, action: added, at: +0s}}
        """,
        )
        for clock in ("", "clock: +5m")
    )

    # The event waits for the watermark, 5 minutes behind the clock, so only
    # a case that moves the clock 5 minutes on sees the tag.
    assert not run_case(rulebook, held).passed
    assert run_case(rulebook, fired).passed


def test_times_absolute_and_relative(default_rulebook: Rulebook) -> None:
    case = _one_case(
        default_rulebook,
        f"""
      - name: times
        given:
          - {{type: page_view, ts: "+1d2h3m4s5ms"}}
          - {{type: page_view, ts: 2024-03-01T18:00:00+08:00}}
          - {{type: page_view, ts: {START_MS + 5}}}
        clock: -1ms
        expect: []
        """,
    )

    times = [event.ts for event in case.events]
    assert times[0] == START_MS + 93_784_005
    assert times[1] == START_MS
    assert times[2] == START_MS + 5
    assert case.clock == START_MS - 1


def test_amount_is_exact_decimal(default_rulebook: Rulebook) -> None:
    case = _one_case(
        default_rulebook,
        """
      - name: money
        given:
          - {type: purchase, ts: +0s, amount: 1000.10}
        expect: []
        """,
    )

    assert case.events[0].amount == 100_010
    assert case.events[0].currency == "CNY"


def test_event_ids_default_per_case(default_rulebook: Rulebook) -> None:
    case = _one_case(
        default_rulebook,
        """
      - name: ids
        given:
          - {type: page_view, ts: +0s}
          - {type: page_view, ts: +0s, event_id: mine}
        expect: []
        """,
    )

    assert [event.event_id for event in case.events] == ["fixture-1", "mine"]


@pytest.mark.parametrize(
    ("case_yaml", "message"),
    [
        (
            "- {name: x, given: [{type: page_view, ts: +0s}], expect: [{tag: hesitnt, "
            "action: added, at: +0s}]}",
            "unknown tag 'hesitnt' (did you mean 'hesitant'?)",
        ),
        (
            "- {name: x, given: [{type: page_view, ts: +0s, categroy: shoes}], expect: []}",
            "unknown key 'categroy' (did you mean 'category'?)",
        ),
        (
            "- {name: x, given: [{type: page_veiw, ts: +0s}], expect: []}",
            "unknown event type 'page_veiw' (did you mean 'page_view'?)",
        ),
        (
            "- {name: x, given: [{type: purchase, ts: +0s, amount: -1}], expect: []}",
            "invalid event (",
        ),
        (
            "- {name: x, given: [{type: page_view, ts: 30m}], expect: []}",
            "a relative time is `+` and durations such as +30m",
        ),
        (
            "- {name: x, given: [], expect: [{tag: active, action: add, at: +0s}]}",
            "action 'add' (did you mean 'added'?)",
        ),
        (
            "- {name: x, given: [], expect: [{tag: 'active:x', action: added, at: +0s}]}",
            "rule 'active' has no `per`",
        ),
        ("- {name: x, given: []}", "expected `expect:`, `expect_tags:` or both"),
        (
            "- {name: x, given: [], expect: []}\n- {name: x, given: [], expect: []}",
            "duplicate case name 'x'",
        ),
    ],
)
def test_invalid_fixtures_rejected(
    default_rulebook: Rulebook, case_yaml: str, message: str
) -> None:
    text = f"start: {START}\ncustomer: c1\ncases:\n" + _indent(case_yaml, 2)

    with pytest.raises(RulebookError) as raised:
        parse_fixtures(text, default_rulebook, file="bad.tests.yaml")

    assert message in raised.value.reason
    assert raised.value.line is not None


def test_relative_time_needs_start(default_rulebook: Rulebook) -> None:
    text = "cases:\n  - {name: x, customer: c1, given: [{type: page_view, ts: +0s}], expect: []}\n"

    with pytest.raises(RulebookError) as raised:
        parse_fixtures(text, default_rulebook, file="bad.tests.yaml")

    assert "needs `start:`" in raised.value.reason
    assert (raised.value.line, raised.value.column) == (2, 59)


def test_empty_file_rejected(default_rulebook: Rulebook) -> None:
    with pytest.raises(RulebookError, match="empty"):
        parse_fixtures("\n", default_rulebook, file="empty.tests.yaml")


def test_fixtures_path_for() -> None:
    assert fixtures_path_for("/srv/rules/shop.yaml") == Path("/srv/rules/shop.tests.yaml")
    assert fixtures_path_for("shop.yml") == Path("shop.tests.yaml")


@pytest.mark.parametrize("name", GUIDES)
def test_guide_examples(name: str, tmp_path: Path) -> None:
    examples = _GUIDE_EXAMPLE_RE.findall((DOCS_DIR / name).read_text(encoding="utf-8"))
    rulebook: Rulebook | None = None
    ran = 0
    for index, (kind, text) in enumerate(examples):
        where = f"{name} example {index + 1}"
        if kind == "rulebook":
            rulebook = parse_rulebook(text, file=where)
            continue
        assert rulebook is not None, f"{where}: fixtures before any rulebook example"
        path = tmp_path / f"example{index + 1}.tests.yaml"
        path.write_text(text, encoding="utf-8")
        report = run_fixtures(rulebook, path)
        assert report.ok, report.render_text()
        ran += 1

    assert ran >= 1


def test_guides_have_same_examples() -> None:
    english, chinese = (
        [kind for kind, _ in _GUIDE_EXAMPLE_RE.findall((DOCS_DIR / name).read_text("utf-8"))]
        for name in GUIDES
    )

    # The Chinese guide translates case names and comments, so only the kinds are compared.
    assert english == chinese


def _one_case(rulebook: Rulebook, cases_yaml: str) -> Case:
    cases = parse_fixtures(_fixtures_text(cases_yaml), rulebook, file="case.tests.yaml")
    assert len(cases) == 1
    return cases[0]


def _fixtures_text(cases_yaml: str) -> str:
    body = "\n".join(line[4:] for line in cases_yaml.strip("\n").splitlines())
    return f"start: {START}\ncustomer: c1\ncases:\n{body}\n"


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines()) + "\n"
