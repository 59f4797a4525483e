"""The rules package stays pure: no I/O libraries and no stream code among its imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
FORBIDDEN = ("faust", "kafka", "aiokafka", "redis", "tagger.streams", "mode", "socket", "asyncio")


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            modules.append(node.module)
    return modules


@pytest.mark.parametrize("path", sorted(RULES_DIR.glob("*.py")), ids=lambda path: path.name)
def test_no_io_imports(path: Path) -> None:
    for module in _imported_modules(path):
        for forbidden in FORBIDDEN:
            assert module != forbidden, f"{path.name} imports {module}"
            assert not module.startswith(forbidden + "."), f"{path.name} imports {module}"


def test_scan_finds_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import redis.asyncio\nfrom faust import App\n", encoding="utf-8")

    assert _imported_modules(sample) == ["redis.asyncio", "faust"]
