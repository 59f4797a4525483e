"""Fixtures for the pure rule tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rule_helpers import Customer

from tagger.rules.engine import Engine
from tagger.rules.rulebook import Rulebook, load_rulebook, parse_rulebook


@pytest.fixture(scope="session")
def default_rulebook() -> Rulebook:
    return load_rulebook()


@pytest.fixture
def customer(default_rulebook: Rulebook) -> Customer:
    """A new customer under the default rulebook."""
    return Customer(Engine(default_rulebook))


@pytest.fixture
def rulebook_from() -> Callable[[str], Rulebook]:
    """Build a rulebook from the rules part of a YAML file, under one non-exclusive group."""

    def build(rules_yaml: str, *, header: str = "") -> Rulebook:
        text = (
            "version: 1\ncurrency: CNY\n"
            + header
            + "groups:\n  test: {labels: {zh: 测试, en: Test}}\n"
            + "  tier: {exclusive: true, labels: {zh: 等级, en: Tier}}\n"
            + "rules:\n"
            + rules_yaml
        )
        return parse_rulebook(text, file="test.yaml")

    return build
