"""Typed reading of a composed YAML document that keeps every value's line and column."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tagger.errors import RulebookError

__all__ = ["Source", "suggest"]

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"


class Source:
    """One YAML file as a node tree, with helpers that raise RulebookError at the node's mark.

    Lines and columns in errors are 1-based, as editors show them.
    """

    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self.text = text
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or "invalid YAML"
            line = mark.line + 1 if mark is not None else None
            column = mark.column + 1 if mark is not None else None
            raise RulebookError(
                f"invalid YAML: {problem}", file=file, line=line, column=column
            ) from exc
        except yaml.YAMLError as exc:
            raise RulebookError(f"invalid YAML: {exc}", file=file) from exc
        if root is None:
            raise RulebookError(
                "the rulebook is empty: expected a mapping with `rules:`", file=file
            )
        self.root: Node = root

    def fail(self, node: Node, reason: str) -> NoReturn:
        """Raise RulebookError at the start of `node`."""
        raise RulebookError(
            reason,
            file=self.file,
            line=node.start_mark.line + 1,
            column=node.start_mark.column + 1,
        )

    def fail_at(self, line: int, column: int, reason: str) -> NoReturn:
        """Raise RulebookError at a 0-based line and column."""
        raise RulebookError(reason, file=self.file, line=line + 1, column=column + 1)

    def entries(self, node: Node, what: str) -> dict[str, tuple[Node, Node]]:
        """Return a mapping's entries as key → (key node, value node), rejecting duplicate keys."""
        if not isinstance(node, MappingNode):
            self.fail(node, f"{what}: expected a mapping, found {_describe(node)}")

        entries: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, f"a key of {what}")
            if key in entries:
                self.fail(key_node, f"{what}: duplicate key {key!r}")
            entries[key] = (key_node, value_node)
        return entries

    def mapping(
        self,
        node: Node,
        what: str,
        *,
        required: Iterable[str],
        optional: Iterable[str] = (),
    ) -> dict[str, tuple[Node, Node]]:
        """Return a mapping's entries like `entries`, checking its keys.

        Rejects missing required keys and unknown keys, with a suggestion for
        a misspelling.
        """
        entries = self.entries(node, what)
        required = tuple(required)
        allowed = (*required, *optional)
        for key, (key_node, _) in entries.items():
            if key not in allowed:
                self.fail(
                    key_node,
                    f"{what}: unknown key {key!r}{suggest(key, allowed)}; "
                    f"expected {_join(allowed)}",
                )

        for key in required:
            if key not in entries:
                self.fail(node, f"{what}: missing key {key!r}")
        return entries

    def sequence(self, node: Node, what: str) -> list[Node]:
        """Return a sequence's items."""
        if not isinstance(node, SequenceNode):
            self.fail(node, f"{what}: expected a list, found {_describe(node)}")
        return list(node.value)

    def string(self, node: Node, what: str) -> str:
        """Return a plain or quoted string scalar."""
        if not isinstance(node, ScalarNode) or node.tag != _STR_TAG:
            self.fail(node, f"{what}: expected a string, found {_describe(node)}")
        return str(node.value)

    def integer(self, node: Node, what: str) -> int:
        """Return a decimal integer scalar."""
        if not isinstance(node, ScalarNode) or node.tag != _INT_TAG:
            self.fail(node, f"{what}: expected an integer, found {_describe(node)}")
        text = str(node.value).replace("_", "")
        if not text.lstrip("+-").isdigit():
            self.fail(node, f"{what}: expected a decimal integer, found {node.value!r}")
        return int(text)

    def boolean(self, node: Node, what: str) -> bool:
        """Return `true` or `false`."""
        if not isinstance(node, ScalarNode) or node.tag != _BOOL_TAG:
            self.fail(node, f"{what}: expected true or false, found {_describe(node)}")
        return str(node.value).lower() in ("true", "yes", "on")

    def text_position(self, node: ScalarNode, offset: int) -> tuple[int, int]:
        """Map an index into a string scalar's value to a 0-based (line, column) in the file.

        Exact for one-line scalars and for literal blocks (`|`); for other
        multi-line scalars, whose line breaks YAML folds, it returns the
        scalar's start.
        """
        mark = node.start_mark
        value = str(node.value)
        if "\n" not in value.rstrip("\n") and node.style in (None, "'", '"'):
            if mark.line != node.end_mark.line:
                return mark.line, mark.column
            quote = 1 if node.style in ("'", '"') else 0
            return mark.line, mark.column + quote + offset
        if node.style == "|":
            return self._literal_block_position(node, offset)
        return mark.line, mark.column

    def _literal_block_position(self, node: ScalarNode, offset: int) -> tuple[int, int]:
        value = str(node.value)
        lines_before = value.count("\n", 0, offset)
        column_in_line = offset - (value.rfind("\n", 0, offset) + 1)
        first_line = node.start_mark.line + 1
        file_lines = self.text.splitlines()
        indent = 0
        for line in file_lines[first_line:]:
            if line.strip():
                indent = len(line) - len(line.lstrip(" "))
                break
        return first_line + lines_before, indent + column_in_line


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return ` (did you mean 'x'?)` for a close match of `word`, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return ""


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing"
    return repr(node.value)


def _join(words: Iterable[str]) -> str:
    return ", ".join(repr(word) for word in words)
