"""Ruff and mypy --strict are clean on the installed package and the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean() -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed: pip install '.[test]'")

    result = subprocess.run(
        ["ruff", "check", "src", "schemas", "rules", "streams", "tests", "bench"],
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-5000:]


def test_mypy_strict_clean(tmp_path: Path) -> None:
    # The source folders install as one package, `tagger`; mypy sees the same
    # layout through a tree of links, whatever the install mode.
    package = tmp_path / "tagger"
    package.mkdir()
    for path in (_REPO / "src" / "tagger").iterdir():
        (package / path.name).symlink_to(path)
    for name in ("schemas", "rules", "streams"):
        (package / name).symlink_to(_REPO / name)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "-p",
            "tagger",
            "--config-file",
            str(_REPO / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-5000:]
