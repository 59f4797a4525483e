"""The CLI runs from a built wheel, with the rulebook and schemas as package data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def test_cli_runs_from_wheel(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(_REPO),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    wheel = next((tmp_path / "dist").glob("customer_tagger-*.whl"))
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}

    help_result = subprocess.run(
        [str(site / "bin" / "tagger"), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    packaged = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tagger, importlib.resources as r;"
            "from tagger.rules.rulebook import load_rulebook;"
            "print(tagger.__file__);"
            "print(len(load_rulebook().rules));"
            "print(sorted(p.name for p in r.files('tagger.schemas').iterdir()"
            " if p.name.endswith('.json')))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )

    assert help_result.returncode == 0, help_result.stderr
    assert "demo" in help_result.stdout
    assert packaged.returncode == 0, packaged.stderr
    module_path, rule_count, schema_files = packaged.stdout.splitlines()
    assert module_path.startswith(str(site))
    assert int(rule_count) == 12
    assert "tag_change.json" in schema_files
    assert "dead_letter.json" in schema_files


def test_cli_format_names_match_readers() -> None:
    from tagger.streams.cli import _FORMAT_NAMES
    from tagger.streams.formats import FORMATS

    assert sorted(_FORMAT_NAMES) == sorted(FORMATS)
