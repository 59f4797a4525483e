"""The rulebook examples in the rule-language docs load, or are rejected, as the docs state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tagger.errors import RulebookError
from tagger.rules.rulebook import parse_rulebook

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"
DOCS = ("rule-language.md", "rule-language.zh-CN.md")
_EXAMPLE_RE = re.compile(r"<!-- example: (valid|invalid) -->\n```yaml\n(.*?)```", re.DOTALL)


def _examples(name: str) -> list[tuple[str, str]]:
    text = (DOCS_DIR / name).read_text(encoding="utf-8")
    return [(match.group(1), match.group(2)) for match in _EXAMPLE_RE.finditer(text)]


@pytest.mark.parametrize("name", DOCS)
def test_doc_has_examples(name: str) -> None:
    kinds = [kind for kind, _ in _examples(name)]

    assert kinds.count("valid") >= 3
    assert kinds.count("invalid") >= 2


@pytest.mark.parametrize("name", DOCS)
def test_doc_examples(name: str) -> None:
    for index, (kind, text) in enumerate(_examples(name)):
        where = f"{name} example {index + 1}"
        if kind == "valid":
            parse_rulebook(text, file=where)
            continue
        with pytest.raises(RulebookError):
            parse_rulebook(text, file=where)


def test_translations_share_examples() -> None:
    assert _examples(DOCS[0]) == _examples(DOCS[1])
