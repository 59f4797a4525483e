"""The idle rulebook of the benchmark loads: one rule, labelled in both languages."""

from __future__ import annotations

from pathlib import Path

from tagger.rules.rulebook import load_rulebook

_IDLE = Path(__file__).resolve().parent.parent / "bench" / "rulebooks" / "idle.yaml"


def test_idle_rulebook_loads() -> None:
    rulebook = load_rulebook(_IDLE)

    assert [rule.id for rule in rulebook.rules] == ["never"]
    assert set(rulebook.rules[0].labels) == {"zh", "en"}
    assert "1000000000" in rulebook.rules[0].when
